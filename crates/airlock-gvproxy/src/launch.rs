//! Starting gvproxy for one VM and tearing it down.
//!
//! [`GvproxyLauncher::launch`]: make gvproxy's directory (0700, owned by
//! the user gvproxy will run as), write the config (when the version takes
//! one), spawn gvproxy in its own process group inside fresh namespaces
//! (see [`crate::netns`]) as an unprivileged user (see
//! [`crate::privileges`]), its output going to a file, wait for its sockets
//! by inotify events under a deadline, then push DNS zones and port
//! forwards over its API. [`GvproxyHandle::stop`] kills the group (TERM,
//! then KILL after a grace) and removes the sockets.

use crate::api::GvproxyApi;
use crate::config::{
    command_line, dns_zones, expose_requests, render_yaml, Addressing, GvproxyPaths, GvproxySpec,
};
use crate::netns::{self, Cover, NamespaceKind, NamespacePlan, StepReader};
use crate::privileges::{ExecPlan, PrivilegeDrop, RunAs};
use crate::watch::DirWatch;
use crate::{GvproxyBinary, GvproxyError};
use airlock_sys_util::{
    retry_until, signal_group, tail_text, Backoff, ChildExit, IoError, IoResultExt,
};
use nix::sys::signal::Signal;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Most bytes of gvproxy's logs quoted in an error.
const LOG_TAIL_BYTES: usize = 2048;

/// How long to wait for the group to die after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(2);

/// Waits between API calls refused because gvproxy is not listening yet.
const REFUSED_BACKOFF: Backoff = Backoff::new(Duration::from_millis(2), Duration::from_millis(50));

/// Work the caller adds to gvproxy's `Command` before it is spawned, e.g.
/// installing the limits group's pre-exec hook
/// (`Box::new(move |cmd| hook.install(cmd))`). It runs before this crate's
/// own pre-exec set-up, so a hook that joins a cgroup does so before the
/// namespaces change (and as root). It must only add pre-exec hooks or
/// environment variables (never `env_clear`): the program, its arguments,
/// stdio and process group are this crate's.
pub type ChildSetup = Box<dyn FnOnce(&mut std::process::Command) + Send>;

/// How the caller forks gvproxy, when it must be done its way: e.g. from
/// one long-lived thread, since gvproxy's parent-death signal (which this
/// crate sets in the child, after the privilege drop) fires when the
/// forking *thread* ends. It gets the finished `Command` and spawns it as
/// is. Pre-exec hooks it adds never run: this crate's own hook ends in
/// gvproxy's exec.
pub type SpawnWith = std::sync::Arc<
    dyn Fn(
            tokio::process::Command,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = io::Result<tokio::process::Child>> + Send>,
        > + Send
        + Sync,
>;

/// How gvproxy is started and stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchOptions {
    /// How long gvproxy may take to open its sockets.
    pub ready_timeout: Duration,
    /// Deadline of each API call.
    pub api_timeout: Duration,
    /// Time between SIGTERM and SIGKILL at stop.
    pub stop_grace: Duration,
    /// How to make the namespaces; `None`: by the effective uid.
    pub namespace: Option<NamespaceKind>,
    /// Who gvproxy runs as after a privileged set-up
    /// ([`NamespaceKind::Privileged`]); `None`: [`crate::DEFAULT_USER`]
    /// (`nobody`). A uid dedicated to gvproxy is better: no other process
    /// then shares it. In a user namespace gvproxy keeps the caller's uid
    /// and this is not used.
    pub run_as: Option<RunAs>,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        Self {
            ready_timeout: Duration::from_secs(10),
            api_timeout: Duration::from_secs(5),
            stop_grace: Duration::from_secs(2),
            namespace: None,
            run_as: None,
        }
    }
}

impl LaunchOptions {
    /// Checks that every duration is non-zero and at most 5 minutes, and
    /// that `run_as` is not root.
    ///
    /// # Errors
    /// [`GvproxyError::InvalidOptions`].
    pub fn validate(&self) -> Result<(), GvproxyError> {
        if let Some(run_as) = self.run_as {
            run_as.validate()?;
        }
        for (name, value) in [
            ("ready_timeout", self.ready_timeout),
            ("api_timeout", self.api_timeout),
            ("stop_grace", self.stop_grace),
        ] {
            if value.is_zero() || value > Duration::from_secs(300) {
                return Err(GvproxyError::InvalidOptions {
                    reason: format!("{name} {value:?} is outside (0, 5 min]"),
                });
            }
        }
        Ok(())
    }
}

/// Starts gvproxy processes.
#[derive(Clone)]
pub struct GvproxyLauncher {
    binary: GvproxyBinary,
    options: LaunchOptions,
    spawn_with: Option<SpawnWith>,
}

impl std::fmt::Debug for GvproxyLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GvproxyLauncher")
            .field("binary", &self.binary)
            .field("options", &self.options)
            .field("spawn_with", &self.spawn_with.is_some())
            .finish()
    }
}

/// A guest port exposed by gvproxy on a unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposedPort {
    /// The guest port.
    pub guest_port: u16,
    /// The host port asked for (`None`: the bridge chooses).
    pub host_port: Option<u16>,
    /// The socket gvproxy listens on.
    pub socket: PathBuf,
}

/// What [`GvproxyHandle::stop`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopReport {
    /// The VM.
    pub vm_id: String,
    /// The handle was already stopped: nothing was done.
    pub already_stopped: bool,
    /// gvproxy had exited before the stop (crash or killed by someone).
    pub exited_before_stop: bool,
    /// How gvproxy ended; `None` when that could not be learnt.
    pub exit: Option<ChildExit>,
    /// SIGKILL was needed after the grace.
    pub forced: bool,
    /// Files removed.
    pub removed: Vec<PathBuf>,
    /// What could not be done (teardown goes on regardless).
    pub problems: Vec<String>,
}

/// A running gvproxy. Stop it with [`GvproxyHandle::stop`]; dropping it
/// kills the process group with SIGKILL and removes the sockets.
#[derive(Debug)]
pub struct GvproxyHandle {
    vm_id: String,
    pid: u32,
    child: tokio::process::Child,
    netns: OwnedFd,
    paths: GvproxyPaths,
    exposed: Vec<ExposedPort>,
    addressing: Addressing,
    api: GvproxyApi,
    stop_grace: Duration,
    ready_after: Duration,
    stopped: bool,
}

impl GvproxyLauncher {
    /// A launcher for `binary`.
    ///
    /// # Errors
    /// [`GvproxyError::InvalidOptions`].
    pub fn new(binary: GvproxyBinary, options: LaunchOptions) -> Result<Self, GvproxyError> {
        options.validate()?;
        Ok(Self {
            binary,
            options,
            spawn_with: None,
        })
    }

    /// The same launcher, forking gvproxy with `spawn` (see [`SpawnWith`])
    /// instead of a plain spawn on the calling thread.
    pub fn with_spawn(self, spawn: SpawnWith) -> Self {
        Self {
            spawn_with: Some(spawn),
            ..self
        }
    }

    /// The binary.
    pub fn binary(&self) -> &GvproxyBinary {
        &self.binary
    }

    /// Starts gvproxy for `spec` and returns once its QEMU socket listens
    /// and its DNS zones and forwards are in place. `child_setup` runs on
    /// the `Command` first (see [`ChildSetup`]).
    ///
    /// # Errors
    /// Spec errors; [`GvproxyError::Netns`] when the namespaces cannot be
    /// made and [`GvproxyError::DropPrivileges`] when its privileges cannot
    /// be dropped (gvproxy is then never run); spawn, readiness and API
    /// errors (gvproxy is stopped before returning them).
    pub async fn launch(
        &self,
        spec: &GvproxySpec,
        child_setup: Option<ChildSetup>,
    ) -> Result<GvproxyHandle, GvproxyError> {
        spec.validate()?;
        let (kind, run_as) = self.namespace_and_user(spec.vm_id()).await?;
        prepare_dir(&spec.paths, spec, run_as).await?;
        let spec = resolve_dir(spec).await?;
        let version = self.binary.version;
        let addressing = Addressing::for_version(spec.vm_id(), version);
        if version.takes_config_file() {
            write_config(&spec, addressing, run_as).await?;
        }
        let (stdout, stderr) = open_output(&spec.paths).await?;
        let watch = DirWatch::new(spec.paths.dir())?;
        let args = command_line(&spec, version);
        let mut cmd = self.command(&args, spec.paths.dir(), stdout, stderr, child_setup);
        let child = ChildPlan {
            vm_id: spec.vm_id().to_owned(),
            kind,
            run_as,
            program: self.binary.path.clone(),
            args,
            env: child_env(&cmd),
            dir: spec.paths.dir().to_owned(),
        };
        let steps = child.install(&mut cmd).await?;
        let started = Instant::now();
        let child = self
            .spawn(cmd, &steps, spec.vm_id(), &privilege_drop(run_as))
            .await?;
        let (child, netns) = open_netns(child, spec.vm_id(), &spec.paths).await?;
        let handle = GvproxyHandle {
            vm_id: spec.vm_id().to_owned(),
            pid: child.id().unwrap_or_default(),
            child,
            netns,
            exposed: exposed_ports(&spec),
            paths: spec.paths.clone(),
            addressing,
            api: GvproxyApi::new(
                spec.vm_id(),
                spec.paths.api_socket(),
                self.options.api_timeout,
            ),
            stop_grace: self.options.stop_grace,
            ready_after: Duration::ZERO,
            stopped: false,
        };
        let push_zones = !version.takes_config_file();
        handle
            .ready_or_stopped(
                &spec,
                watch,
                started,
                self.options.ready_timeout,
                push_zones,
            )
            .await
    }

    /// Which namespaces gvproxy gets (the option, else what this process
    /// may make) and, when Airlock is root, the user it runs as (the
    /// option, else the default unprivileged user).
    async fn namespace_and_user(
        &self,
        vm_id: &str,
    ) -> Result<(NamespaceKind, Option<RunAs>), GvproxyError> {
        let kind = self
            .options
            .namespace
            .unwrap_or_else(NamespaceKind::for_current_user);
        let run_as = match (kind, self.options.run_as) {
            (NamespaceKind::UserNamespace, _) => None,
            (NamespaceKind::Privileged, Some(run_as)) => Some(run_as),
            (NamespaceKind::Privileged, None) => {
                Some(blocking(vm_id, RunAs::default_user).await.and_then(|r| r)?)
            }
        };
        Ok((kind, run_as))
    }

    /// gvproxy's command: its arguments, run in `dir` in its own process
    /// group, its output to the log file; the caller's `child_setup` runs
    /// on it first.
    fn command(
        &self,
        args: &[OsString],
        dir: &Path,
        stdout: std::fs::File,
        stderr: std::fs::File,
        child_setup: Option<ChildSetup>,
    ) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.binary.path);
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        if let Some(setup) = child_setup {
            setup(&mut cmd);
        }
        cmd
    }

    /// Forks gvproxy (the caller's way when it gave one, see [`SpawnWith`]).
    /// A failure is reported as the last pre-exec step the child reached:
    /// the exec, the privilege drop or a namespace step.
    async fn spawn(
        &self,
        cmd: std::process::Command,
        steps: &StepReader,
        vm_id: &str,
        privileges: &PrivilegeDrop,
    ) -> Result<tokio::process::Child, GvproxyError> {
        let cmd = tokio::process::Command::from(cmd);
        let spawned = match &self.spawn_with {
            Some(spawn) => spawn(cmd).await,
            None => {
                let mut cmd = cmd;
                cmd.spawn()
            }
        };
        spawned.map_err(|source| match steps.last_step() {
            None | Some(netns::EXEC_STEP) => GvproxyError::Spawn {
                vm_id: vm_id.to_owned(),
                program: self.binary.path.clone(),
                source,
            },
            Some(netns::DROP_STEP) => GvproxyError::DropPrivileges {
                vm_id: vm_id.to_owned(),
                target: privileges.describe(),
                source,
            },
            Some(step) => GvproxyError::Netns {
                vm_id: vm_id.to_owned(),
                step,
                source,
            },
        })
    }
}

impl GvproxyHandle {
    /// Finishes the start ([`GvproxyHandle::finish_start`]) and returns the
    /// handle; on failure stops gvproxy first, then returns the error.
    async fn ready_or_stopped(
        mut self,
        spec: &GvproxySpec,
        watch: DirWatch,
        started: Instant,
        ready_timeout: Duration,
        push_zones: bool,
    ) -> Result<Self, GvproxyError> {
        match self
            .finish_start(spec, watch, started, ready_timeout, push_zones)
            .await
        {
            Ok(()) => {
                tracing::info!(
                    vm_id = %self.vm_id,
                    pid = self.pid,
                    mode = %spec.policy.mode,
                    ready_ms = self.ready_after.as_millis() as u64,
                    "gvproxy ready"
                );
                Ok(self)
            }
            Err(e) => {
                let report = self.stop().await;
                tracing::warn!(vm_id = %self.vm_id, error = %e, ?report, "gvproxy start failed");
                Err(e)
            }
        }
    }

    /// Waits for gvproxy's sockets (by inotify, under the ready deadline),
    /// checks it got its own network namespace, then pushes its DNS zones
    /// (versions without a config file) and port forwards over its API.
    async fn finish_start(
        &mut self,
        spec: &GvproxySpec,
        watch: DirWatch,
        started: Instant,
        ready_timeout: Duration,
        push_zones: bool,
    ) -> Result<(), GvproxyError> {
        if netns::is_own_netns(self.netns.as_fd()).unwrap_or(true) {
            return Err(GvproxyError::Netns {
                vm_id: self.vm_id.clone(),
                step: "check the namespace",
                source: io::Error::other("gvproxy shares this process's network namespace"),
            });
        }
        let deadline = tokio::time::Instant::from_std(started + ready_timeout);
        for socket in [self.paths.api_socket(), self.paths.qemu_socket()] {
            self.wait_for_file(&watch, &socket, deadline, ready_timeout)
                .await?;
        }
        // The socket file appears at bind(), just before listen(): retry a
        // refused first call until the deadline. Versions with `-config`
        // read their zones from the file.
        if push_zones {
            for zone in dns_zones(&spec.policy, self.addressing) {
                retry_refused(deadline, || self.api.add_dns_zone(&zone)).await?;
            }
        }
        for request in expose_requests(spec, self.addressing) {
            retry_refused(deadline, || self.api.expose(&request)).await?;
        }
        self.ready_after = started.elapsed();
        Ok(())
    }

    async fn wait_for_file(
        &mut self,
        watch: &DirWatch,
        file: &Path,
        deadline: tokio::time::Instant,
        ready_timeout: Duration,
    ) -> Result<(), GvproxyError> {
        loop {
            if tokio::fs::symlink_metadata(file).await.is_ok() {
                return Ok(());
            }
            tokio::select! {
                changed = watch.changed() => {
                    if let Err(e) = changed {
                        return Err(IoError::new("watch", self.paths.dir(), e).into());
                    }
                }
                status = self.child.wait() => {
                    let status = status
                        .map(|s| ChildExit::from(s).to_string())
                        .unwrap_or_else(|e| e.to_string());
                    return Err(GvproxyError::Exited {
                        vm_id: self.vm_id.clone(),
                        status,
                        log_tail: log_tail(&self.paths).await,
                    });
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(GvproxyError::NotReady {
                        vm_id: self.vm_id.clone(),
                        deadline: ready_timeout,
                        waiting_for: file.to_path_buf(),
                        log_tail: log_tail(&self.paths).await,
                    });
                }
            }
        }
    }

    /// The VM.
    pub fn vm_id(&self) -> &str {
        &self.vm_id
    }

    /// gvproxy's pid (also its process group).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The socket QEMU's `-netdev stream` connects to. gvproxy listens on
    /// it already, and accepts one connection.
    pub fn qemu_socket(&self) -> PathBuf {
        self.paths.qemu_socket()
    }

    /// gvproxy's API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.paths.api_socket()
    }

    /// A client of gvproxy's API.
    pub fn api(&self) -> &GvproxyApi {
        &self.api
    }

    /// The files of this gvproxy (sockets, logs).
    pub fn paths(&self) -> &GvproxyPaths {
        &self.paths
    }

    /// The addresses of the virtual network.
    pub fn addressing(&self) -> Addressing {
        self.addressing
    }

    /// The exposed guest ports and their unix sockets.
    pub fn exposed_ports(&self) -> &[ExposedPort] {
        &self.exposed
    }

    /// gvproxy's network namespace (an fd of `/proc/<pid>/ns/net` opened
    /// right after spawn). Bind listeners in it with
    /// [`crate::bind_tcp_in_netns`].
    pub fn netns_fd(&self) -> BorrowedFd<'_> {
        self.netns.as_fd()
    }

    /// Time from spawn to ready (sockets up, zones and forwards pushed).
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// Stops gvproxy: SIGTERM to its process group, SIGKILL after the
    /// grace, then removes its sockets and pid file (logs stay). Never
    /// fails and is idempotent: problems are listed in the report.
    pub async fn stop(&mut self) -> StopReport {
        let mut report = StopReport {
            vm_id: self.vm_id.clone(),
            ..StopReport::default()
        };
        if self.stopped {
            report.already_stopped = true;
            return report;
        }
        self.stopped = true;
        match self.child.try_wait() {
            Ok(Some(status)) => {
                report.exited_before_stop = true;
                report.exit = Some(ChildExit::from(status));
            }
            Ok(None) => {
                kill_group(self.pid, Signal::SIGTERM);
                match tokio::time::timeout(self.stop_grace, self.child.wait()).await {
                    Ok(status) => report.exit = status.map(ChildExit::from).ok(),
                    Err(_) => {
                        report.forced = true;
                        kill_group(self.pid, Signal::SIGKILL);
                        match tokio::time::timeout(KILL_WAIT, self.child.wait()).await {
                            Ok(status) => report.exit = status.map(ChildExit::from).ok(),
                            Err(_) => report.problems.push(format!(
                                "gvproxy (pid {}) still runs {KILL_WAIT:?} after SIGKILL",
                                self.pid
                            )),
                        }
                    }
                }
            }
            Err(e) => report
                .problems
                .push(format!("cannot check gvproxy's status: {e}")),
        }
        for file in self.files_to_remove() {
            match tokio::fs::remove_file(&file).await {
                Ok(()) => report.removed.push(file),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => report
                    .problems
                    .push(format!("remove {}: {e}", file.display())),
            }
        }
        tracing::info!(
            vm_id = %self.vm_id,
            pid = self.pid,
            exit = %report.exit.map_or_else(|| "unknown".to_owned(), |x| x.to_string()),
            forced = report.forced,
            removed = report.removed.len(),
            problems = report.problems.len(),
            "gvproxy stopped"
        );
        report
    }

    fn files_to_remove(&self) -> Vec<PathBuf> {
        let mut files = vec![
            self.paths.api_socket(),
            self.paths.qemu_socket(),
            self.paths.pid_file(),
        ];
        files.extend(self.exposed.iter().map(|e| e.socket.clone()));
        files
    }
}

impl Drop for GvproxyHandle {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            kill_group(self.pid, Signal::SIGKILL);
        }
        let mut report = StopReport::default();
        remove_files(&self.files_to_remove(), &mut report);
        tracing::warn!(
            vm_id = %self.vm_id,
            pid = self.pid,
            "gvproxy handle dropped without stop(): killed its group"
        );
    }
}

/// Removes `files` synchronously (for `Drop`; `stop` does it with tokio).
fn remove_files(files: &[PathBuf], report: &mut StopReport) {
    for file in files {
        match std::fs::remove_file(file) {
            Ok(()) => report.removed.push(file.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => report
                .problems
                .push(format!("remove {}: {e}", file.display())),
        }
    }
}

/// The spec with gvproxy's directory resolved to its real path (no
/// symlink): the namespace set-up works on it, so must gvproxy's
/// arguments, resolved in its own mount namespace.
async fn resolve_dir(spec: &GvproxySpec) -> Result<Cow<'_, GvproxySpec>, GvproxyError> {
    let canonical = tokio::fs::canonicalize(spec.paths.dir())
        .await
        .with_path("resolve", spec.paths.dir())?;
    if canonical == spec.paths.dir() {
        return Ok(Cow::Borrowed(spec));
    }
    let resolved = GvproxySpec {
        paths: GvproxyPaths::new(canonical),
        ..spec.clone()
    };
    resolved.validate()?;
    Ok(Cow::Owned(resolved))
}

/// Writes gvproxy's config file (for versions that take one), owned by
/// gvproxy's user.
async fn write_config(
    spec: &GvproxySpec,
    addressing: Addressing,
    run_as: Option<RunAs>,
) -> Result<(), GvproxyError> {
    let file = spec.paths.config_file();
    tokio::fs::write(&file, render_yaml(spec, addressing))
        .await
        .with_path("write", &file)?;
    if let Some(run_as) = run_as {
        chown(&file, run_as).await?;
    }
    Ok(())
}

/// gvproxy's output file, opened twice: its standard output and error.
async fn open_output(paths: &GvproxyPaths) -> Result<(std::fs::File, std::fs::File), GvproxyError> {
    let stdout = tokio::fs::File::create(paths.output_file())
        .await
        .with_path("create", paths.output_file())?
        .into_std()
        .await;
    let stderr = stdout.try_clone().with_path("dup", paths.output_file())?;
    Ok((stdout, stderr))
}

/// Opens the network namespace of the just-spawned gvproxy, at once: it
/// outlives gvproxy while this fd (and any listener bound in it) lives.
/// When it cannot be opened, gvproxy is exiting or gone (a dead process
/// has no namespaces): it is killed and reaped, and its end reported.
async fn open_netns(
    mut child: tokio::process::Child,
    vm_id: &str,
    paths: &GvproxyPaths,
) -> Result<(tokio::process::Child, OwnedFd), GvproxyError> {
    let pid = child.id().unwrap_or_default();
    match netns::open_netns_of(pid) {
        Ok(fd) => Ok((child, fd)),
        Err(e) => {
            // If it was not exiting, our SIGKILL says so.
            kill_group(pid, Signal::SIGKILL);
            // Bounded: a child stuck in the kernel must not hang a boot.
            let exit = tokio::time::timeout(KILL_WAIT, child.wait())
                .await
                .ok()
                .and_then(Result::ok)
                .map(ChildExit::from);
            let mut status = exit.map(|x| x.to_string()).unwrap_or_default();
            if exit == Some(ChildExit::Signal(libc::SIGKILL)) {
                status = format!("{status}; cannot open /proc/{pid}/ns/net: {e}");
            }
            Err(GvproxyError::Exited {
                vm_id: vm_id.to_owned(),
                status,
                log_tail: log_tail(paths).await,
            })
        }
    }
}

/// The guest ports `spec` exposes, each with the socket gvproxy listens on.
fn exposed_ports(spec: &GvproxySpec) -> Vec<ExposedPort> {
    spec.policy
        .exposes
        .iter()
        .map(|e| ExposedPort {
            guest_port: e.guest_port,
            host_port: e.host_port,
            socket: spec.paths.expose_socket(e.guest_port),
        })
        .collect()
}

/// Sends `signal` to the process group `pid` (gvproxy leads its group). A
/// group already gone is fine; a failure is logged (teardown goes on).
fn kill_group(pid: u32, signal: Signal) {
    if let Err(error) = signal_group(pid, signal) {
        tracing::debug!(pid, %signal, %error, "cannot signal gvproxy's group");
    }
}

/// What the child gives up: everything, as `run_as` when Airlock is root.
fn privilege_drop(run_as: Option<RunAs>) -> PrivilegeDrop {
    run_as.map_or(PrivilegeDrop::CapabilitiesOnly, PrivilegeDrop::ToUser)
}

/// What the child is prepared from (in the parent, off the runtime).
struct ChildPlan {
    vm_id: String,
    kind: NamespaceKind,
    run_as: Option<RunAs>,
    program: PathBuf,
    args: Vec<OsString>,
    env: BTreeMap<OsString, OsString>,
    dir: PathBuf,
}

impl ChildPlan {
    /// Opens the binary, finds what to cover for gvproxy's user and builds
    /// the pre-exec plan. Blocking.
    fn prepare(self) -> Result<(NamespacePlan, StepReader), GvproxyError> {
        let exec = ExecPlan::new(&self.program, &self.args, self.env).map_err(|source| {
            GvproxyError::Spawn {
                vm_id: self.vm_id.clone(),
                program: self.program.clone(),
                source,
            }
        })?;
        let netns = |source| GvproxyError::Netns {
            vm_id: self.vm_id.clone(),
            step: "prepare",
            source,
        };
        let cover = match self.run_as {
            Some(run_as) => {
                Cover::needed(&self.dir, run_as, |p| std::fs::metadata(p)).map_err(netns)?
            }
            None => None,
        };
        let privileges = privilege_drop(self.run_as);
        NamespacePlan::new(self.kind, &self.dir, cover, privileges, exec).map_err(netns)
    }

    /// Prepares the plan off the runtime and installs it on `cmd`, last
    /// (its pre-exec hook execs gvproxy itself). Returns what tells which
    /// pre-exec step the child reached, for spawn errors.
    async fn install(self, cmd: &mut std::process::Command) -> Result<StepReader, GvproxyError> {
        let vm_id = self.vm_id.clone();
        let (plan, steps) = blocking(&vm_id, move || self.prepare())
            .await
            .and_then(|r| r)?;
        plan.install(cmd);
        Ok(steps)
    }
}

/// The environment `cmd` would give its child: this process's, with the
/// `Command`'s changes (`env`, `env_remove`; a [`ChildSetup`] must not
/// call `env_clear`, which cannot be seen). The child is exec'd by
/// [`crate::privileges`], not by `std`, so it needs it spelt out.
fn child_env(cmd: &std::process::Command) -> BTreeMap<OsString, OsString> {
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    for (name, value) in cmd.get_envs() {
        match value {
            Some(value) => env.insert(name.to_owned(), value.to_owned()),
            None => env.remove(name),
        };
    }
    env
}

/// Runs blocking `f` (user lookups, opening and stat'ing files) on tokio's
/// blocking pool.
async fn blocking<T, F>(vm_id: &str, f: F) -> Result<T, GvproxyError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| GvproxyError::Netns {
            vm_id: vm_id.to_owned(),
            step: "prepare",
            source: io::Error::other(e),
        })
}

/// Gives `path` to `run_as` (gvproxy's user).
async fn chown(path: &Path, run_as: RunAs) -> Result<(), GvproxyError> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || {
        std::os::unix::fs::chown(&owned, Some(run_as.uid), Some(run_as.gid))
    })
    .await
    .map_err(io::Error::other)
    .and_then(|r| r)
    .with_path("chown", path)?;
    Ok(())
}

/// Makes the directory (0700, owned by `run_as` when given: gvproxy's
/// sockets, pid file and log are created there by gvproxy itself) and
/// removes stale files of a previous run (its log included: gvproxy's
/// user may not be able to append to an older one).
async fn prepare_dir(
    paths: &GvproxyPaths,
    spec: &GvproxySpec,
    run_as: Option<RunAs>,
) -> Result<(), GvproxyError> {
    let dir = paths.dir();
    tokio::fs::create_dir_all(dir)
        .await
        .with_path("create", dir)?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .await
        .with_path("chmod", dir)?;
    if let Some(run_as) = run_as {
        chown(dir, run_as).await?;
    }
    let mut stale = vec![
        paths.api_socket(),
        paths.qemu_socket(),
        paths.pid_file(),
        paths.log_file(),
    ];
    stale.extend(spec.expose_sockets().into_iter().map(|(_, s)| s));
    for file in stale {
        match tokio::fs::remove_file(&file).await {
            Ok(()) => tracing::debug!(path = %file.display(), "removed a stale gvproxy file"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(IoError::new("remove stale", &file, e).into()),
        }
    }
    Ok(())
}

/// Calls `call` until gvproxy stops refusing the connection (its socket
/// file appears at bind(), just before listen()) or `deadline` is near.
async fn retry_refused<F, Fut>(deadline: tokio::time::Instant, call: F) -> Result<(), GvproxyError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), GvproxyError>>,
{
    let refused = |e: &GvproxyError| matches!(e, GvproxyError::Api { reason, .. } if reason.contains("Connection refused"));
    retry_until(&REFUSED_BACKOFF, deadline, call, refused).await
}

/// The ends of gvproxy's log and output, for error messages.
async fn log_tail(paths: &GvproxyPaths) -> String {
    let mut parts = Vec::new();
    for file in [paths.log_file(), paths.output_file()] {
        if let Ok(text) = tokio::fs::read_to_string(&file).await {
            let text = text.trim();
            if !text.is_empty() {
                parts.push(tail_text(text, LOG_TAIL_BYTES / 2));
            }
        }
    }
    if parts.is_empty() {
        "(empty)".into()
    } else {
        parts.join(" | ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_are_valid() {
        assert!(LaunchOptions::default().validate().is_ok());
    }

    #[test]
    fn child_env_applies_the_commands_changes() {
        let mut cmd = std::process::Command::new("true");
        cmd.env("AIRLOCK_TEST_SET", "1").env_remove("PATH");
        let env = child_env(&cmd);
        assert_eq!(
            env.get(std::ffi::OsStr::new("AIRLOCK_TEST_SET")),
            Some(&"1".into())
        );
        assert!(!env.contains_key(std::ffi::OsStr::new("PATH")));
    }

    #[test]
    fn root_run_as_is_refused() {
        let o = LaunchOptions {
            run_as: Some(RunAs { uid: 0, gid: 0 }),
            ..LaunchOptions::default()
        };
        assert!(o.validate().unwrap_err().to_string().contains("root"));
    }

    #[test]
    fn zero_or_huge_durations_are_refused() {
        let o = LaunchOptions {
            ready_timeout: Duration::ZERO,
            ..LaunchOptions::default()
        };
        assert!(o.validate().is_err());
        let o = LaunchOptions {
            stop_grace: Duration::from_secs(301),
            ..LaunchOptions::default()
        };
        assert!(o.validate().unwrap_err().to_string().contains("stop_grace"));
    }

    #[test]
    fn removing_missing_files_is_not_a_problem() {
        let mut report = StopReport::default();
        remove_files(
            &[PathBuf::from("/nonexistent-airlock-test/x.sock")],
            &mut report,
        );
        assert!(report.removed.is_empty() && report.problems.is_empty());
    }
}
