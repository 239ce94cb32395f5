//! The VM builder (steps 3 to 8 of "A VM's life" in `docs/architecture.md`):
//! one small function per step, and a [`BootGuard`] holding what the steps
//! made so far. A failed step tears the half-built VM down before the error
//! is returned; a cancelled boot (the future dropped) hands it to the
//! reaper. Either way it is the one teardown of `teardown.rs`.

use crate::config::Config;
use crate::disk::{DiskAcquired, DiskSource};
use crate::error::{BootError, Result};
use crate::guest::Agent;
use crate::images::Images;
use crate::launcher::{Launcher, MachinePlan};
use crate::machine::VmOptions;
use crate::ms;
use crate::network::VmNetwork;
use crate::slots::Slot;
use crate::teardown::{Reaper, VmParts};
use crate::vm::{BootTimings, Booted, Running, Vm};
use crate::workdir::WorkDir;
use airlock_gvproxy::NetworkMode;
use airlock_limits::{Limiter, Limits, VmGroup, VmShape};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

/// What building a VM uses, lent by its manager.
pub struct BootContext<'a> {
    /// Run dir, kill grace, `--debug` console, egress test settings.
    pub config: &'a Config,
    /// The root disks.
    pub images: &'a Images,
    /// How the machine is started.
    pub launcher: &'a dyn Launcher,
    /// Where overlays come from.
    pub disks: &'a dyn DiskSource,
    /// The limits backend.
    pub limiter: &'a Limiter,
    /// The accelerator (it sizes the limits group's memory).
    pub accel: airlock_limits::Accel,
    /// Who tears down what is dropped.
    pub reaper: &'a Reaper,
    /// The manager's registry of live QEMUs and gvproxies.
    pub processes: &'a std::sync::Arc<crate::process::ProcessRegistry>,
}

/// A VM whose agent answered, not yet handed out.
#[derive(Debug)]
pub struct Built {
    guard: BootGuard,
    agent: Agent,
    timings: BootTimings,
    language: airlock_protocol::Language,
}

/// A half-built VM: whatever its steps made so far. Dropped unfinished, it
/// hands everything to the reaper.
#[derive(Debug)]
pub struct BootGuard {
    vm_id: String,
    workdir: WorkDir,
    parts: Option<VmParts>,
    reaper: Reaper,
    grace: Duration,
}

impl BootGuard {
    fn new(vm_id: String, workdir: WorkDir, reaper: Reaper, grace: Duration) -> Self {
        Self {
            parts: Some(VmParts::new(vm_id.clone(), workdir.clone())),
            vm_id,
            workdir,
            reaper,
            grace,
        }
    }

    /// What was made so far.
    fn parts(&mut self) -> &mut VmParts {
        let (vm_id, workdir) = (&self.vm_id, &self.workdir);
        self.parts
            .get_or_insert_with(|| VmParts::new(vm_id.clone(), workdir.clone()))
    }

    /// Takes the parts out: the guard no longer tears them down.
    fn disarm(mut self) -> VmParts {
        let taken = self.parts.take();
        taken.unwrap_or_else(|| VmParts::new(self.vm_id.clone(), self.workdir.clone()))
    }

    /// Tears the half-built VM down now (a step failed).
    async fn abandon(self) {
        let grace = self.grace;
        let reaper = self.reaper.clone();
        let report = reaper.tear_down(self.disarm(), grace).await;
        tracing::debug!(?report, "half-built VM torn down");
        for problem in &report.problems {
            tracing::warn!(
                vm_id = report.vm_id,
                problem,
                "teardown after a failed boot"
            );
        }
    }
}

impl Drop for BootGuard {
    fn drop(&mut self) {
        if let Some(parts) = self.parts.take() {
            self.reaper.hand_over(parts);
        }
    }
}

/// A fresh random VM id (16 hex digits).
pub fn new_vm_id() -> String {
    use rand::Rng;
    format!("{:016x}", rand::thread_rng().gen::<u64>())
}

/// Builds one VM, up to its agent's answer, by `deadline`. On error,
/// everything made is torn down before the error is returned.
///
/// # Errors
/// The failing step's error.
pub async fn build(
    ctx: &BootContext<'_>,
    options: &VmOptions,
    deadline: Instant,
) -> Result<Built, BootError> {
    let base = ctx.images.disk(options.image())?.path.clone();
    let vm_id = new_vm_id();
    let workdir = WorkDir::create_owned(&ctx.config.run_dir, &vm_id, &options.tenant).await?;
    let mut guard = BootGuard::new(vm_id, workdir, ctx.reaper.clone(), ctx.config.kill_grace);
    match run_steps(ctx, options, &base, deadline, &mut guard).await {
        Ok((agent, timings)) => Ok(Built {
            guard,
            agent,
            timings,
            language: options.language,
        }),
        Err(e) => {
            guard.abandon().await;
            Err(e)
        }
    }
}

async fn run_steps(
    ctx: &BootContext<'_>,
    options: &VmOptions,
    base: &Path,
    deadline: Instant,
    guard: &mut BootGuard,
) -> Result<(Agent, BootTimings), BootError> {
    let vm_id = guard.vm_id.clone();
    let workdir = guard.workdir.clone();
    let mut timings = BootTimings::default();

    // Both disks and the limits group at once: none needs another, and a
    // disk may wait (a fork's child waits for its parent's saved disk:
    // `pause/gate.rs`). All are awaited to the end, so that a failed one
    // never leaves another half made: the work dir holds what the disks
    // made, the guard the group.
    let (disk, workspace_base, group) = tokio::join!(
        take_overlay(ctx.disks, base, &workdir),
        take_workspace(ctx, options, &workdir),
        create_group(ctx, options, &vm_id)
    );
    let group = group.map(|group| guard.parts().group.insert(group).clone());
    let disk = disk?;
    timings.overlay_ms = ms(disk.elapsed);
    timings.overlay_pool_hit = disk.pool_hit;
    let workspace_base = workspace_base?;
    let group = group?;

    let mut network = start_network(ctx, options, &vm_id, &workdir, &group).await?;
    if let Some(network) = &mut network {
        network.track(ctx.processes, &vm_id);
    }
    let network_socket = network.as_ref().map(VmNetwork::qemu_socket);
    let gvproxy_pid = network.as_ref().map(VmNetwork::gvproxy_pid);
    guard.parts().network = network;
    if let Some(pid) = gvproxy_pid {
        // For the sweep, should this process die (`sweep.rs`).
        workdir.record_process("gvproxy", pid).await?;
    }

    let plan = machine_plan(
        ctx.config,
        options,
        &vm_id,
        &workdir,
        base,
        network_socket,
        workspace_base,
    );
    let spawn_start = Instant::now();
    let mut process = ctx.launcher.spawn(&plan, &group).await?;
    process.track(ctx.processes, &vm_id);
    timings.spawn_ms = ms(spawn_start.elapsed());
    let qemu_pid = process.pid();
    let parts = guard.parts();
    if ctx.config.debug_console {
        // Owned by the VM: aborted at teardown.
        parts.console_echo = Some(tokio::spawn(echo_console(workdir.console_log())));
    }
    let process = parts.process.insert(process);
    workdir.record_process("qemu", qemu_pid).await?;

    let ready_start = Instant::now();
    let agent = ctx.launcher.reach_agent(&plan, process, deadline).await?;
    timings.guest_ready_ms = ms(ready_start.elapsed());
    timings.restore = agent.restore;
    tracing::info!(
        vm_id,
        launcher = ctx.launcher.name(),
        language = %options.language,
        image = %options.image(),
        ready_ms = timings.guest_ready_ms,
        agent = agent.info.version,
        "guest ready"
    );
    Ok((agent, timings))
}

/// Step 3a: the VM's copy-on-write root disk, in its work dir.
async fn take_overlay(
    disks: &dyn DiskSource,
    base: &Path,
    workdir: &WorkDir,
) -> Result<DiskAcquired, BootError> {
    disks.acquire(base, &workdir.overlay()).await
}

/// Step 3a': the workspace disk, when the VM has one: an overlay (from
/// the pool, as the root disk's) over the launcher's base (a template's
/// own disk) or the blank ext4 base of its size (made once per size).
/// Returns the base.
async fn take_workspace(
    ctx: &BootContext<'_>,
    options: &VmOptions,
    workdir: &WorkDir,
) -> Result<Option<PathBuf>, BootError> {
    if options.disk_mib == 0 {
        return Ok(None);
    }
    if let Some(placed) = ctx.launcher.place_workspace(workdir) {
        return placed.await.map(Some);
    }
    let base = match ctx.launcher.workspace_base() {
        Some(base) => base.to_path_buf(),
        None => crate::disk::workspace_base(&ctx.config.workspace_dir, options.disk_mib).await?,
    };
    let taken = ctx.disks.acquire(&base, &workdir.workspace()).await?;
    tracing::debug!(
        disk_mib = options.disk_mib,
        elapsed_ms = ms(taken.elapsed),
        pool_hit = taken.pool_hit,
        "workspace disk taken"
    );
    Ok(Some(base))
}

/// Step 3b: the limits group the VM's processes start in. Made on the
/// blocking pool (it makes cgroupfs dirs and writes their files); if the
/// boot is cancelled meanwhile, the group is removed there, as the boot's
/// guard never got it.
async fn create_group(
    ctx: &BootContext<'_>,
    options: &VmOptions,
    vm_id: &str,
) -> Result<VmGroup, BootError> {
    let limits = Limits::for_vm(VmShape {
        guest_memory_mib: u64::from(options.memory_mib),
        vcpus: options.vcpus,
        accel: ctx.accel,
        network: options.network.mode() != NetworkMode::None,
    });
    let (limiter, tenant, vm) = (
        ctx.limiter.clone(),
        options.tenant.clone(),
        vm_id.to_owned(),
    );
    let (made, wait) = tokio::sync::oneshot::channel();
    // Not awaited through its handle: the channel carries the group, and
    // the task ends by itself once the group is made (and, unwanted,
    // removed).
    drop(tokio::task::spawn_blocking(move || {
        let created = limiter.create(&tenant, &vm, &limits);
        if let Err(Ok(group)) = made.send(created) {
            let removed = group.remove(airlock_limits::DEFAULT_REMOVE_TIMEOUT);
            tracing::debug!(
                vm_id = vm,
                ?removed,
                "limits group of a cancelled boot removed"
            );
        }
    }));
    let created = wait.await.map_err(|_| BootError::TaskFailed {
        task: "create a limits group",
        message: format!("vm {vm_id}: the task ended without a group (it panicked)"),
    })?;
    created.map_err(BootError::limits(Some(vm_id), "create its limits group"))
}

/// Step 4: gvproxy (and the egress proxy) when the VM has a network; first,
/// because QEMU 7.2 connects once and never again. gvproxy starts in the
/// VM's limits group.
async fn start_network(
    ctx: &BootContext<'_>,
    options: &VmOptions,
    vm_id: &str,
    workdir: &WorkDir,
    group: &VmGroup,
) -> Result<Option<VmNetwork>, BootError> {
    if options.network.mode() == NetworkMode::None {
        return Ok(None);
    }
    let hook = group.pre_exec_hook().map_err(BootError::limits(
        Some(vm_id),
        "prepare the network's limits hook",
    ))?;
    let setup: airlock_gvproxy::ChildSetup = Box::new(move |cmd| hook.install(cmd));
    let network = VmNetwork::start(
        vm_id,
        &workdir.path().join("net"),
        &options.network,
        Some(setup),
        options.secrets.as_ref(),
        &ctx.config.egress_test,
        ctx.config.egress_allow_documentation_ranges,
    )
    .await?;
    Ok(Some(network))
}

/// Step 5's input: what the launcher starts.
fn machine_plan(
    config: &Config,
    options: &VmOptions,
    vm_id: &str,
    workdir: &WorkDir,
    base: &Path,
    network_socket: Option<PathBuf>,
    workspace_base: Option<PathBuf>,
) -> MachinePlan {
    MachinePlan {
        vm_id: vm_id.to_owned(),
        memory_mib: options.memory_mib,
        vcpus: options.vcpus,
        workdir: workdir.clone(),
        root_base: base.to_path_buf(),
        network_socket,
        verbose_console: config.debug_console,
        packages: options.packages.clone(),
        translation_cache_mib: options.image().translation_cache_mib(),
        workspace_base,
        mounts: options.mounts.clone(),
    }
}

impl Built {
    /// The finished VM, holding `slot`, after `attempts` attempts that
    /// waited `queued` for the slot.
    pub async fn into_vm(self, slot: Slot, attempts: u32) -> Result<Vm, BootError> {
        let Built {
            guard,
            agent,
            mut timings,
            language,
        } = self;
        timings.queue_ms = ms(slot.queued());
        timings.attempts = attempts;
        let (vm_id, workdir, reaper, grace) = (
            guard.vm_id.clone(),
            guard.workdir.clone(),
            guard.reaper.clone(),
            guard.grace,
        );
        let mut parts = guard.disarm();
        let (Some(process), Some(group)) = (parts.process.take(), parts.group.take()) else {
            let report = reaper.tear_down(parts, grace).await;
            tracing::warn!(?report, "a built VM without its machine or group");
            return Err(BootError::TaskFailed {
                task: "boot",
                message: format!("vm {vm_id}: the machine or its limits group went missing"),
            });
        };
        Ok(Vm::new(Booted {
            id: vm_id,
            language,
            workdir,
            agent: agent.info,
            timings,
            kill_grace: grace,
            reaper,
            running: Running {
                process,
                client: std::sync::Arc::new(agent.client),
                group,
                slot,
                network: parts.network.take(),
                console_echo: parts.console_echo.take(),
            },
        }))
    }
}

/// Copies what the guest writes to its console log to stderr, as it comes
/// (`--debug`). Ends when aborted (at teardown).
async fn echo_console(path: PathBuf) {
    use std::os::unix::fs::MetadataExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The log is in the VM's work dir, which a jailed QEMU owns: no link
    // is followed.
    let mut options = tokio::fs::OpenOptions::new();
    options
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits());
    let open = || options.open(&path);
    let mut file = loop {
        match open().await {
            Ok(f) => break f,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut stderr = tokio::io::stderr();
    let mut buf = vec![0u8; 8192];
    loop {
        match file.read(&mut buf).await {
            Ok(0) => {
                // At the end: a rotated log (`capped_log.rs`) goes on in a
                // new file at the same path.
                let inode = |m: std::io::Result<std::fs::Metadata>| m.ok().map(|m| m.ino());
                let current = inode(file.metadata().await);
                let at_path = inode(tokio::fs::symlink_metadata(&path).await);
                if at_path.is_some() && at_path != current {
                    if let Ok(f) = open().await {
                        file = f;
                        continue;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(n) => {
                let _ = stderr.write_all(&buf[..n]).await;
            }
            Err(_) => return,
        }
    }
}
