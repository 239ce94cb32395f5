//! The boot pipeline every VM goes through (`docs/architecture.md`, "Inside the orchestrator"):
//! a slot (backpressure), then build attempts retried under one deadline,
//! then the VM. Host-independent: the launcher and the disk source are
//! seams, so this is tested without VMs.

use crate::builder::{build, BootContext};
use crate::config::Config;
use crate::disk::DiskSource;
use crate::error::{BootError, Result};
use crate::images::Images;
use crate::launcher::Launcher;
use crate::machine::VmOptions;
use crate::process::ProcessRegistry;
use crate::retry::{retry, Retried, RetryPolicy};
use crate::slots::Slots;
use crate::teardown::Reaper;
use crate::vm::Vm;
use airlock_limits::Limiter;
use std::sync::Arc;
use std::time::Duration;

/// What a [`VmFactory`] is made of.
pub struct FactoryParts {
    /// The configuration (validated).
    pub config: Config,
    /// The root disks.
    pub images: Images,
    /// How machines are started.
    pub launcher: Arc<dyn Launcher>,
    /// Where overlays come from.
    pub disks: Arc<dyn DiskSource>,
    /// The limits backend.
    pub limiter: Limiter,
    /// The accelerator in use.
    pub accel: airlock_limits::Accel,
}

/// Boots VMs: slots, retries, the builder, the reaper.
pub struct VmFactory {
    config: Config,
    images: Images,
    launcher: Arc<dyn Launcher>,
    disks: Arc<dyn DiskSource>,
    limiter: Limiter,
    accel: airlock_limits::Accel,
    slots: Slots,
    retry: RetryPolicy,
    reaper: Reaper,
    /// Every live QEMU and gvproxy of this factory's VMs; what is left is
    /// killed when the factory (the manager) drops.
    processes: Arc<ProcessRegistry>,
}

impl std::fmt::Debug for VmFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmFactory")
            .field("launcher", &self.launcher.name())
            .field("slots", &self.slots)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl VmFactory {
    /// A factory; starts its reaper (call inside a tokio runtime).
    pub fn new(parts: FactoryParts) -> Self {
        let slots = Slots::new(parts.config.max_concurrent_vms, parts.config.queue_timeout);
        let retry = RetryPolicy::from_config(&parts.config);
        Self {
            config: parts.config,
            images: parts.images,
            launcher: parts.launcher,
            disks: parts.disks,
            limiter: parts.limiter,
            accel: parts.accel,
            slots,
            retry,
            reaper: Reaper::start(),
            processes: Arc::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The guest images.
    pub fn images(&self) -> &Images {
        &self.images
    }

    /// The limits backend.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// Boots a VM and waits for its agent: takes a slot first (waiting in
    /// line while all are taken), retries transient failures with jittered
    /// backoff under one deadline, fails at once on permanent ones. The
    /// slot is the VM's until it is destroyed.
    ///
    /// # Errors
    /// [`crate::BootError::ShutDown`], [`crate::BootError::QueueTimeout`], or the
    /// last boot error.
    pub async fn boot(&self, options: &VmOptions) -> Result<Vm, BootError> {
        self.boot_with(options, self.launcher.as_ref()).await
    }

    /// [`VmFactory::boot`] with another launcher (a restore from a memory
    /// template, or a template's own boot): same slots, retries and
    /// teardown.
    ///
    /// # Errors
    /// As [`VmFactory::boot`].
    pub async fn boot_with(
        &self,
        options: &VmOptions,
        launcher: &dyn Launcher,
    ) -> Result<Vm, BootError> {
        self.boot_waiting(options, launcher, Duration::ZERO).await
    }

    /// [`VmFactory::boot_with`] for a launcher that first waits, up to
    /// `wait`, for its machine to exist (a fork's child, built while its
    /// parent is saved: `pause/gate.rs`): each attempt may take that much
    /// longer, so that a long save does not eat the child's own boot time.
    ///
    /// # Errors
    /// As [`VmFactory::boot`].
    pub async fn boot_waiting(
        &self,
        options: &VmOptions,
        launcher: &dyn Launcher,
        wait: Duration,
    ) -> Result<Vm, BootError> {
        let policy = RetryPolicy {
            attempt_timeout: self.retry.attempt_timeout.saturating_add(wait),
            ..self.retry
        };
        let slot = self.slots.acquire().await?;
        let ctx = BootContext {
            config: &self.config,
            images: &self.images,
            launcher,
            disks: self.disks.as_ref(),
            limiter: &self.limiter,
            accel: self.accel,
            reaper: &self.reaper,
            processes: &self.processes,
        };
        let Retried { result, attempts } =
            retry(&policy, |_, deadline| build(&ctx, options, deadline)).await;
        result?.into_vm(slot, attempts).await
    }

    /// Slots free now.
    pub(crate) fn slots_available(&self) -> usize {
        self.slots.available()
    }

    /// Refuses further boots; waits (at most `timeout`) for the teardowns
    /// of dropped VMs. Returns whether they all finished.
    pub async fn shutdown(&self, timeout: Duration) -> bool {
        self.slots.close();
        self.reaper.flush(timeout).await
    }

    /// Kills every process still registered (what teardowns left after
    /// [`VmFactory::shutdown`] gave up); returns how many.
    pub fn kill_stragglers(&self) -> usize {
        self.processes.kill_all().len()
    }
}

/// The fake launcher and its set-up, shared with other modules' tests
/// (sessions).
#[cfg(test)]
pub(crate) mod tests;
