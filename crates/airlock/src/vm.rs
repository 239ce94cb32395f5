//! One VM's life (design section 3): [`VmManager::boot`] makes a [`Vm`]
//! whose agent answers, [`Vm::destroy`] removes every trace of it.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::guest::{self, backoff, GuestPaths};
use crate::host::Host;
use crate::images::Images;
use crate::ms;
use crate::network::{ExposedAddr, NetworkReport, VmNetwork};
use crate::process::{file_tail, QemuProcess, Termination};
use crate::workdir::{self, WorkDir};
use airlock_gvproxy::NetworkMode;
use airlock_limits::{Limiter, Limits, VmGroup, VmShape};
use airlock_overlay::{OverlayPool, PoolConfig};
use airlock_protocol::client::{AgentInfo, Client, ExecEvent};
use airlock_protocol::{Completion, ExecRequest, Language, ProtocolError};
use airlock_qemu::NetworkAttachment;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Command;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Extra time the host waits for an exec beyond its timeout and the agent's
/// kill grace, before it declares the guest stuck.
const EXEC_HOST_MARGIN: Duration = Duration::from_secs(10);

/// What a VM is booted with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmOptions {
    /// Who the VM is for (its limits group is `airlock/<tenant>/<vm>`).
    pub tenant: String,
    /// Which root disk.
    pub language: Language,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Network (default none: no network device).
    pub network: crate::network::NetworkRequest,
}

/// Where a VM's boot time went, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BootTimings {
    /// Waiting for a free VM slot (backpressure).
    pub queue_ms: u64,
    /// Taking the disk overlay.
    pub overlay_ms: u64,
    /// Whether the overlay came from the pool.
    pub overlay_pool_hit: bool,
    /// Starting QEMU.
    pub spawn_ms: u64,
    /// From QEMU started to the agent's answer.
    pub guest_ready_ms: u64,
    /// Attempts made.
    pub attempts: u32,
}

/// What destroying a VM did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TeardownReport {
    /// The VM.
    pub vm_id: String,
    /// How QEMU was stopped (`None`: it was never started or already gone).
    pub termination: Option<Termination>,
    /// Whether the work dir was removed (`false`: it was already gone).
    pub workdir_removed: bool,
    /// Resource use read from the limits group just before removal.
    pub usage: Usage,
    /// What the network did (`None`: the VM had none).
    pub network: Option<NetworkReport>,
    /// Problems met (teardown never fails; it reports).
    pub problems: Vec<String>,
    /// Time it took, in ms.
    pub elapsed_ms: u64,
}

/// Resource use of a VM's processes (QEMU), from its limits group. `None`
/// where the backend does not measure it (rlimits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Highest memory charged to the group, in MiB.
    pub peak_memory_mib: Option<u64>,
    /// CPU time used, in ms.
    pub cpu_ms: Option<u64>,
    /// Processes killed by the OOM killer.
    pub oom_kills: Option<u64>,
}

/// Boots and tracks VMs; cheap to clone.
#[derive(Clone)]
pub struct VmManager {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    images: Images,
    host: Host,
    overlays: OverlayPool,
    limiter: Limiter,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for VmManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmManager")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl VmManager {
    /// Validates the configuration, finds the images, probes the host,
    /// sweeps what a crashed run left, and starts the overlay pool.
    ///
    /// # Errors
    /// [`Error::Config`], [`Error::ImagesMissing`],
    /// [`Error::MissingDependency`], [`Error::Io`].
    pub async fn start(config: Config) -> Result<Self> {
        config.validate()?;
        let images = Images::load(&config.images_dir)?;
        let host = Host::probe(&images).await?;
        let swept = workdir::sweep_stale(&config.run_dir);
        if !swept.is_empty() {
            tracing::info!(count = swept.len(), "removed stale VM work dirs");
        }
        let vms_dir = WorkDir::vms_dir(&config.run_dir);
        std::fs::create_dir_all(&vms_dir).map_err(|e| Error::io("create", &vms_dir, e))?;
        // One pool per manager (a pool locks its dir), named after our pid;
        // pools of processes that are gone are swept.
        let pools = config.run_dir.join("overlays");
        workdir::sweep_dead_process_dirs(&pools);
        let overlays = OverlayPool::new(PoolConfig {
            pool_dir: pools.join(format!("{}-{}", std::process::id(), new_vm_id())),
            work_root: Some(vms_dir),
            target_per_base: config.overlay_pool_target,
            ..PoolConfig::default()
        })
        .await?;
        let limiter =
            tokio::task::spawn_blocking(|| Limiter::probe(&airlock_limits::ProbeConfig::default()))
                .await
                .map_err(|e| Error::Config(format!("limits probe failed: {e}")))?;
        let swept = limiter
            .sweep_stale_async(airlock_limits::SweepOptions::default())
            .await;
        tracing::debug!(?swept, "swept stale limits groups");
        let slots = Arc::new(Semaphore::new(config.max_concurrent_vms));
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                images,
                host,
                overlays,
                limiter,
                slots,
            }),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// What the host offers (accelerator, QEMU).
    pub fn host(&self) -> &Host {
        &self.inner.host
    }

    /// The limits backend in use.
    pub fn limiter(&self) -> &Limiter {
        &self.inner.limiter
    }

    /// The overlay pool.
    pub fn overlays(&self) -> &OverlayPool {
        &self.inner.overlays
    }

    /// Boots a VM and waits for its agent. Waits for a free slot first
    /// (at most `max_concurrent_vms` VMs live at once); retries transient
    /// boot failures with jittered backoff; fails at once on permanent ones.
    ///
    /// # Errors
    /// The last boot error.
    pub async fn boot(&self, options: &VmOptions) -> Result<Vm> {
        let queued = Instant::now();
        let permit = Arc::clone(&self.inner.slots)
            .acquire_owned()
            .await
            .map_err(|_| Error::Config("the VM manager is shut down".into()))?;
        let queue_ms = ms(queued.elapsed());
        let attempts = self.inner.config.boot_attempts;
        let mut attempt = 1;
        loop {
            match self.boot_once(options).await {
                Ok(mut vm) => {
                    vm.timings.queue_ms = queue_ms;
                    vm.timings.attempts = attempt;
                    vm.permit = Some(permit);
                    return Ok(vm);
                }
                Err(e) if e.is_transient() && attempt < attempts => {
                    let wait = backoff(attempt, Duration::from_millis(200), Duration::from_secs(2));
                    tracing::warn!(attempt, error = %e, retry_in_ms = ms(wait), "transient boot failure: retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn boot_once(&self, options: &VmOptions) -> Result<Vm> {
        let inner = &self.inner;
        let vm_id = new_vm_id();
        let workdir = WorkDir::create(&inner.config.run_dir, &vm_id)?;
        // From here on, dropping `vm` (error or cancellation) cleans up.
        let mut vm = Vm {
            id: vm_id.clone(),
            workdir,
            qemu: None,
            network: None,
            group: None,
            client: None,
            agent: None,
            permit: None,
            console_echo: None,
            timings: BootTimings::default(),
            kill_grace: inner.config.kill_grace,
            language: options.language,
        };
        let base = inner.images.rootfs(options.language)?;
        let acquired = inner.overlays.acquire(base, vm.workdir.overlay()).await?;
        vm.timings.overlay_ms = ms(acquired.elapsed);
        vm.timings.overlay_pool_hit = acquired.pool_hit;

        let spawn_start = Instant::now();
        let mut spec = inner
            .host
            .vm_spec(&vm_id, options, &inner.images, &vm.workdir, base);
        // With --debug the whole kernel log is worth its console time.
        spec.quiet_kernel = !inner.config.debug_console;
        let limits = Limits::for_vm(VmShape {
            guest_memory_mib: u64::from(options.memory_mib),
            vcpus: options.vcpus,
            accel: match inner.host.caps.accel {
                airlock_qemu::Accel::Kvm => airlock_limits::Accel::Kvm,
                airlock_qemu::Accel::Tcg => airlock_limits::Accel::Tcg,
            },
            network: options.network.mode() != NetworkMode::None,
        });
        let group = vm
            .group
            .insert(inner.limiter.create(&options.tenant, &vm_id, &limits)?);
        if options.network.mode() != NetworkMode::None {
            // gvproxy first (QEMU 7.2 connects once and never again), in the
            // VM's limits group from its first instruction.
            let hook = group.pre_exec_hook()?;
            let setup: airlock_gvproxy::ChildSetup = Box::new(move |cmd| hook.install(cmd));
            let network = VmNetwork::start(
                &vm_id,
                &vm.workdir.path().join("net"),
                &options.network,
                Some(setup),
                &inner.config.egress_test,
            )
            .await?;
            spec.network = NetworkAttachment::Stream {
                socket: network.qemu_socket(),
            };
            vm.network = Some(network);
        }
        let argv = inner.host.argv(&spec)?;
        let mut cmd = Command::new(&inner.host.qemu_binary);
        cmd.args(&argv);
        // QEMU joins its group between fork and exec: limited from its
        // first instruction.
        vm.group
            .as_ref()
            .ok_or_else(|| Error::Config("limits group missing".into()))?
            .prepare_tokio_command(&mut cmd)?;
        let qemu = QemuProcess::spawn(cmd, &vm_id, &vm.workdir.qemu_log())?;
        let pid_file = vm.workdir.pid_file();
        std::fs::write(&pid_file, qemu.pid().to_string())
            .map_err(|e| Error::io("write", &pid_file, e))?;
        vm.timings.spawn_ms = ms(spawn_start.elapsed());
        let qemu = vm.qemu.insert(qemu);
        tracing::debug!(vm_id, pid = qemu.pid(), "QEMU started");
        if inner.config.debug_console {
            vm.console_echo = Some(tokio::spawn(echo_console(vm.workdir.console_log())));
        }

        let ready_start = Instant::now();
        let (cmd_socket, event_socket, console_log) = (
            vm.workdir.cmd_socket(),
            vm.workdir.event_socket(),
            vm.workdir.console_log(),
        );
        let paths = GuestPaths {
            vm_id: &vm_id,
            cmd_socket: &cmd_socket,
            event_socket: &event_socket,
            console_log: &console_log,
        };
        let (client, agent) = guest::wait_ready(&paths, qemu, inner.config.boot_timeout).await?;
        vm.timings.guest_ready_ms = ms(ready_start.elapsed());
        tracing::info!(vm_id, language = %options.language, ready_ms = vm.timings.guest_ready_ms, agent = agent.version, "guest ready");
        vm.client = Some(client);
        vm.agent = Some(agent);
        Ok(vm)
    }

    /// Stops the overlay pool (deleting pooled overlays). VMs still alive
    /// keep their own overlays until destroyed.
    pub async fn shutdown(&self) {
        self.inner.slots.close();
        let report = self.inner.overlays.stop().await;
        tracing::debug!(?report, "overlay pool stopped");
        // The pool leaves its (empty, unlocked) dir behind: remove it.
        let dir = self.inner.overlays.pool_dir().to_path_buf();
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the overlay pool dir");
            }
        }
    }
}

/// Copies what the guest writes to its console log to stderr, as it comes
/// (`--debug`). Ends when aborted (at teardown).
async fn echo_console(path: std::path::PathBuf) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut file = loop {
        match tokio::fs::File::open(&path).await {
            Ok(f) => break f,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let mut stderr = tokio::io::stderr();
    let mut buf = vec![0u8; 8192];
    loop {
        match file.read(&mut buf).await {
            Ok(0) => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(n) => {
                let _ = stderr.write_all(&buf[..n]).await;
            }
            Err(_) => return,
        }
    }
}

fn new_vm_id() -> String {
    use rand::Rng;
    format!("{:016x}", rand::thread_rng().gen::<u64>())
}

/// A booted VM whose agent answers. Destroy it with [`Vm::destroy`];
/// dropping it also kills QEMU and removes its files (synchronously).
pub struct Vm {
    id: String,
    workdir: WorkDir,
    qemu: Option<QemuProcess>,
    network: Option<VmNetwork>,
    group: Option<VmGroup>,
    client: Option<Client>,
    agent: Option<AgentInfo>,
    permit: Option<OwnedSemaphorePermit>,
    console_echo: Option<tokio::task::JoinHandle<()>>,
    timings: BootTimings,
    kill_grace: Duration,
    language: Language,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("id", &self.id)
            .field("workdir", &self.workdir)
            .finish_non_exhaustive()
    }
}

/// Output of an exec, collected.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutcome {
    /// Everything on stdout.
    pub stdout: Vec<u8>,
    /// Everything on stderr.
    pub stderr: Vec<u8>,
    /// How it ended.
    pub completion: Completion,
}

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Vm {
    /// The VM id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The language of its root disk.
    pub fn language(&self) -> Language {
        self.language
    }

    /// Where its boot time went.
    pub fn boot_timings(&self) -> &BootTimings {
        &self.timings
    }

    /// What the agent said about itself.
    pub fn agent(&self) -> Option<&AgentInfo> {
        self.agent.as_ref()
    }

    /// The VM's work dir.
    pub fn workdir(&self) -> &WorkDir {
        &self.workdir
    }

    /// The exposed guest ports and their host addresses.
    pub fn exposed(&self) -> &[ExposedAddr] {
        self.network.as_ref().map_or(&[], VmNetwork::exposed)
    }

    /// gvproxy's pid, when the VM has a network.
    pub fn gvproxy_pid(&self) -> Option<u32> {
        self.network.as_ref().map(VmNetwork::gvproxy_pid)
    }

    /// QEMU's pid, while it runs.
    pub fn qemu_pid(&self) -> Option<u32> {
        self.qemu.as_ref().map(QemuProcess::pid)
    }

    /// The protocol client (for file operations and sessions).
    ///
    /// # Errors
    /// [`Error::Protocol`] after the VM was destroyed.
    pub fn client(&self) -> Result<&Client> {
        self.client.as_ref().ok_or_else(|| Error::Protocol {
            vm_id: self.id.clone(),
            source: ProtocolError::Closed,
        })
    }

    /// Runs code, handing output to `on_output` as it arrives, racing QEMU's
    /// death (a dead VM is reported with its logs, never as a hang).
    ///
    /// # Errors
    /// [`Error::VmDied`] (QEMU exited), [`Error::Protocol`] (the agent
    /// refused or failed, or the host-side deadline passed).
    pub async fn exec(
        &mut self,
        request: ExecRequest,
        mut on_output: impl FnMut(OutputStream, &[u8]) + Send,
    ) -> Result<ExecOutcome> {
        let vm_id = self.id.clone();
        let protocol = |source| Error::Protocol {
            vm_id: vm_id.clone(),
            source,
        };
        let (Some(client), Some(qemu)) = (self.client.as_ref(), self.qemu.as_mut()) else {
            return Err(protocol(ProtocolError::Closed));
        };
        // The agent enforces the timeout (plus its 2 s kill grace); the
        // host deadline only guards against a stuck guest.
        let deadline = Duration::from_millis(request.timeout_ms) + EXEC_HOST_MARGIN;
        let run = async {
            let mut stream = client.exec(request).await?;
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            while let Some(event) = stream.next().await? {
                match event {
                    ExecEvent::Stdout(b) => {
                        on_output(OutputStream::Stdout, &b);
                        stdout.extend_from_slice(&b);
                    }
                    ExecEvent::Stderr(b) => {
                        on_output(OutputStream::Stderr, &b);
                        stderr.extend_from_slice(&b);
                    }
                    ExecEvent::Complete(completion) => {
                        return Ok(ExecOutcome {
                            stdout,
                            stderr,
                            completion,
                        })
                    }
                }
            }
            Err(ProtocolError::Closed)
        };
        let died =
            |qemu: &QemuProcess, status: std::io::Result<std::process::ExitStatus>| Error::VmDied {
                vm_id: self.id.clone(),
                when: "during exec",
                status: status.map_or_else(|e| e.to_string(), |s| s.to_string()),
                stderr_tail: qemu.stderr_tail(),
                console_tail: file_tail(&self.workdir.console_log()),
            };
        let result = tokio::select! {
            result = tokio::time::timeout(deadline, run) => result,
            status = qemu.wait() => return Err(died(qemu, status)),
        };
        match result {
            Ok(Ok(outcome)) => Ok(outcome),
            // The channel may close a moment before QEMU's exit is seen:
            // a dead VM is reported as such, with its logs.
            Ok(Err(e @ (ProtocolError::Closed | ProtocolError::Io(_)))) => {
                match tokio::time::timeout(Duration::from_secs(2), qemu.wait()).await {
                    Ok(status) => Err(died(qemu, status)),
                    Err(_) => Err(protocol(e)),
                }
            }
            Ok(Err(e)) => Err(protocol(e)),
            Err(_) => Err(protocol(ProtocolError::Timeout {
                what: "exec".into(),
                after: deadline,
            })),
        }
    }

    /// Stops QEMU (TERM, then KILL after the grace) and removes the work
    /// dir. Never fails, safe to call twice; reports what it did.
    pub async fn destroy(&mut self) -> TeardownReport {
        let start = Instant::now();
        let mut problems = Vec::new();
        self.client = None;
        if let Some(echo) = self.console_echo.take() {
            echo.abort();
        }
        let termination = match self.qemu.as_mut() {
            Some(qemu) => Some(qemu.terminate(self.kill_grace).await),
            None => None,
        };
        self.qemu = None;
        let network = match self.network.as_mut() {
            Some(network) => {
                let report = network.stop().await;
                problems.extend(report.problems.iter().cloned());
                Some(report)
            }
            None => None,
        };
        self.network = None;
        let mut usage = Usage::default();
        if let Some(group) = self.group.take() {
            match group.stats() {
                Ok(stats) => {
                    usage = Usage {
                        peak_memory_mib: stats.memory_peak_bytes.map(|b| b / (1024 * 1024)),
                        cpu_ms: stats.cpu_usage.map(ms),
                        oom_kills: stats.oom_kills,
                    }
                }
                Err(e) => problems.push(format!("read limits stats: {e}")),
            }
            let removed = group
                .remove_async(airlock_limits::DEFAULT_REMOVE_TIMEOUT)
                .await;
            problems.extend(removed.errors);
        }
        let workdir_removed = match self.workdir.remove() {
            Ok(existed) => existed,
            Err(e) => {
                problems.push(format!("remove {}: {e}", self.workdir.path().display()));
                false
            }
        };
        self.permit = None;
        let report = TeardownReport {
            vm_id: self.id.clone(),
            termination,
            workdir_removed,
            usage,
            network,
            problems,
            elapsed_ms: ms(start.elapsed()),
        };
        tracing::debug!(vm_id = self.id, ?report, "VM destroyed");
        report
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Cancellation or an early return: QemuProcess's own drop kills the
        // process group; the files go now, synchronously (a few small files).
        self.client = None;
        if let Some(echo) = self.console_echo.take() {
            echo.abort();
        }
        let had_qemu = self.qemu.take().is_some();
        if let Some(group) = self.group.take() {
            let report = group.remove(airlock_limits::DEFAULT_REMOVE_TIMEOUT);
            for problem in report.errors {
                tracing::warn!(vm_id = self.id, problem, "limits group removal on drop");
            }
        }
        if had_qemu || self.workdir.path().exists() {
            if let Err(e) = self.workdir.remove() {
                tracing::warn!(vm_id = self.id, error = %e, "cannot remove work dir on drop");
            }
        }
    }
}
