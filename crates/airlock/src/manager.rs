//! [`VmManager`]: the orchestrator's entry to VMs. It probes the host once,
//! sweeps what dead Airlock processes left (`sweep.rs`), starts the overlay
//! pool, and boots VMs
//! through the [`VmFactory`] with the QEMU launcher.

use crate::config::Config;
use crate::error::{BootError, Result};
use crate::factory::{FactoryParts, VmFactory};
use crate::flight::SingleFlight;
use crate::host::Host;
use crate::images::Images;
use crate::machine::VmOptions;
use crate::qemu_launcher::QemuLauncher;
use crate::sweep;
use crate::task::blocking;
use crate::vm::Vm;
use crate::workdir::WorkDir;
use airlock_limits::Limiter;
use airlock_overlay::{OverlayPool, PoolConfig};
use airlock_qemu::BootImages;
use std::sync::Arc;
use std::time::Duration;

/// Longest wait at shutdown for the teardowns of dropped VMs.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(30);

/// Boots and tracks VMs; cheap to clone.
#[derive(Clone)]
pub struct VmManager {
    inner: Arc<Inner>,
}

struct Inner {
    factory: VmFactory,
    host: Host,
    overlays: OverlayPool,
    /// One install per package layer at a time.
    layer_flights: SingleFlight,
}

impl std::fmt::Debug for VmManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmManager")
            .field("config", self.config())
            .finish_non_exhaustive()
    }
}

impl VmManager {
    /// Validates the configuration, finds the images, probes the host,
    /// sweeps what a crashed run left, and starts the overlay pool.
    ///
    /// # Errors
    /// [`crate::Error::Config`], [`BootError::ImagesMissing`], [`BootError::Qemu`] (no
    /// QEMU), [`BootError::Overlay`], [`BootError::Io`].
    pub async fn start(config: Config) -> Result<Self> {
        config.validate()?;
        let dir = config.images_dir.clone();
        let images = blocking("load the images manifest", move || Images::load(&dir)).await??;
        let mut host = Host::probe(&images).await?;
        host.jail = config.jail.resolve();
        host.console_log_max_bytes = config.console_log_max_bytes;
        let limiter = blocking("probe the limits backend", || {
            Limiter::probe(&airlock_limits::ProbeConfig::default())
        })
        .await?;
        // What dead Airlock processes left: their VMs' processes, groups
        // and work dirs (`sweep.rs`), then empty groups, then their pools.
        let (run_dir, sweeper) = (config.run_dir.clone(), limiter.clone());
        let swept = blocking("sweep orphaned VMs", move || {
            sweep::sweep_orphans(&run_dir, Some(&sweeper))
        })
        .await?;
        if !swept.is_empty() {
            tracing::info!(
                work_dirs = swept.removed.len(),
                killed = swept.killed.len(),
                groups = swept.groups_removed.len(),
                problems = ?swept.problems,
                "swept what dead Airlock processes left"
            );
        }
        let swept = limiter
            .sweep_stale_async(airlock_limits::SweepOptions::default())
            .await;
        tracing::debug!(?swept, "swept stale limits groups");
        let vms_dir = WorkDir::vms_dir(&config.run_dir);
        tokio::fs::create_dir_all(&vms_dir)
            .await
            .map_err(|e| BootError::io("create", &vms_dir, e))?;
        // One pool per manager (a pool locks its dir), named after our pid
        // and start time; pools of processes that are gone are swept.
        let pools = config.run_dir.join("overlays");
        let swept_pools = pools.clone();
        let forks = config.run_dir.join(crate::pause::FORKS_DIR);
        let pool_name = blocking("sweep overlay pools", move || {
            crate::process_dirs::sweep_dead_process_dirs(&swept_pools);
            // And what forks of dead processes left (`Session::fork`).
            crate::process_dirs::sweep_dead_process_dirs(&forks);
            crate::process_dirs::process_dir_name(&crate::builder::new_vm_id())
        })
        .await?
        .map_err(|e| BootError::io("name the overlay pool after", "/proc/self/stat", e))?;
        let overlays = OverlayPool::new(PoolConfig {
            pool_dir: pools.join(pool_name),
            work_root: Some(vms_dir),
            target_per_base: config.overlay_pool_target,
            ..PoolConfig::default()
        })
        .await
        .map_err(BootError::overlay(None, "start the overlay pool"))?;
        let accel = match host.caps.accel {
            airlock_qemu::Accel::Kvm => airlock_limits::Accel::Kvm,
            airlock_qemu::Accel::Tcg => airlock_limits::Accel::Tcg,
        };
        let launcher = QemuLauncher::new(
            host.clone(),
            BootImages {
                kernel: images.kernel.clone(),
                initramfs: images.initramfs.clone(),
            },
        );
        let factory = VmFactory::new(FactoryParts {
            config,
            images,
            launcher: Arc::new(launcher),
            disks: Arc::new(overlays.clone()),
            limiter,
            accel,
        });
        Ok(Self {
            inner: Arc::new(Inner {
                factory,
                host,
                overlays,
                layer_flights: SingleFlight::default(),
            }),
        })
    }

    /// Removes the overlay pool dir this process made under `run_dir`, if
    /// any: after a [`VmManager::start`] (or [`crate::Scheduler::start`])
    /// that was interrupted and dropped. Blocking (small directory work).
    pub fn remove_own_pool_dirs(run_dir: &std::path::Path) {
        crate::process_dirs::remove_own_process_dirs(&run_dir.join("overlays"));
    }

    /// The single flight of package layer installs: one per layer at a
    /// time, whoever asks.
    pub(crate) fn layer_flights(&self) -> &SingleFlight {
        &self.inner.layer_flights
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        self.inner.factory.config()
    }

    /// What the host offers (accelerator, QEMU).
    pub fn host(&self) -> &Host {
        &self.inner.host
    }

    /// The limits backend in use.
    pub fn limiter(&self) -> &Limiter {
        self.inner.factory.limiter()
    }

    /// The overlay pool.
    pub fn overlays(&self) -> &OverlayPool {
        &self.inner.overlays
    }

    /// Boots a VM and waits for its agent. Waits for a free slot first
    /// (at most `max_concurrent_vms` VMs live at once); retries transient
    /// boot failures with jittered backoff under one deadline; fails at
    /// once on permanent ones.
    ///
    /// # Errors
    /// [`BootError::ShutDown`], [`BootError::QueueTimeout`], or the last boot error.
    pub async fn boot(&self, options: &VmOptions) -> Result<Vm, BootError> {
        self.inner.factory.boot(options).await
    }

    /// [`VmManager::boot`] through another launcher (memory templates).
    ///
    /// # Errors
    /// As [`VmManager::boot`].
    pub(crate) async fn boot_with(
        &self,
        options: &VmOptions,
        launcher: &dyn crate::launcher::Launcher,
    ) -> Result<Vm, BootError> {
        self.inner.factory.boot_with(options, launcher).await
    }

    /// [`VmManager::boot_with`] for a launcher that first waits up to
    /// `wait` for its machine ([`crate::factory::VmFactory::boot_waiting`]).
    ///
    /// # Errors
    /// As [`VmManager::boot`].
    pub(crate) async fn boot_waiting(
        &self,
        options: &VmOptions,
        launcher: &dyn crate::launcher::Launcher,
        wait: std::time::Duration,
    ) -> Result<Vm, BootError> {
        self.inner
            .factory
            .boot_waiting(options, launcher, wait)
            .await
    }

    /// VM slots free now (of [`Config::max_concurrent_vms`]).
    pub fn free_slots(&self) -> usize {
        self.inner.factory.slots_available()
    }

    /// The guest images in use.
    pub fn images(&self) -> &Images {
        self.inner.factory.images()
    }

    /// Refuses further boots, waits for the teardown of VMs that were
    /// dropped, and stops the overlay pool (deleting pooled overlays). VMs
    /// still alive keep their own overlays until destroyed. When the
    /// teardowns did not end in time, their processes still registered are
    /// killed; returns how many were.
    pub async fn shutdown(&self) -> usize {
        let mut stragglers = 0;
        if !self.inner.factory.shutdown(SHUTDOWN_FLUSH).await {
            tracing::warn!("teardowns of dropped VMs still running at shutdown");
            // Only now: signalling while the reaper reaps could reach a
            // reused group id.
            stragglers = self.inner.factory.kill_stragglers();
        }
        let report = self.inner.overlays.stop().await;
        tracing::debug!(?report, "overlay pool stopped");
        // The pool leaves its (empty, unlocked) dir behind: remove it.
        let dir = self.inner.overlays.pool_dir().to_path_buf();
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the overlay pool dir");
            }
        }
        stragglers
    }
}
