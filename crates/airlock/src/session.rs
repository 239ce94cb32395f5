//! Sessions (`docs/sessions.md`): one VM kept for one tenant across calls,
//! its language's persistent interpreter running cell after cell
//! (`ExecMode::Cell`: Python globals, a Node context, a bash process), files
//! in its home, installed packages.
//!
//! - [`crate::Scheduler::session`] starts one: from the memory template of
//!   its shape when templates are on and it has no network (as a run
//!   does), else by a cold boot.
//! - **One call at a time.** [`Session::exec`] and the file and package
//!   calls each hold the session while they run; a second call meanwhile
//!   is refused at once with [`SessionError::Busy`] (never queued: the
//!   caller decides whether to wait, and a slow cell cannot pile up
//!   callers). [`Session::canceller`] interrupts the running cell from
//!   anywhere; [`Session::close`] ends the session even mid-call.
//! - **Lifetime.** A watchdog task the session owns closes it once it has
//!   been idle for [`SessionOptions::idle_timeout`] (default
//!   [`DEFAULT_IDLE_TIMEOUT`], 10 min; a running call is never idle) or
//!   has lived for [`SessionOptions::max_lifetime`] (default
//!   [`DEFAULT_MAX_LIFETIME`], 1 h; a running call is cut). After that,
//!   and after [`Session::close`], every call returns
//!   [`SessionError::Closed`] with the reason.
//! - **Ownership.** Dropping a [`Session`] destroys its VM (through the
//!   manager's reaper) and stops its watchdog.

mod lifetime;
mod pause;

pub use pause::PauseOptions;

pub use crate::close::CloseReason;

use crate::error::{ExecError, InputError, PackageError, Result, SessionError};
use crate::files::{validate_guest_dir, validate_guest_path, FileInfo, DEFAULT_FILE_MODE};
use crate::observer::{Discard, RunObserver};
use crate::request::{validate_code, validate_env, validate_timeout, DEFAULT_TIMEOUT};
use crate::source::{FileSink, FileSource, ProcessInput, SandboxVm, SideChannel};
use crate::spec::{CaBundle, SandboxSpec};
use crate::task::BoxFuture;
use crate::teardown::TeardownReport;
use crate::vm::ExecOutcome;
use crate::{ms, Scheduler};
use airlock_protocol::{ExecMode, ExecRequest, FileEntry, Language};
use lifetime::{Activity, Verdict};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{watch, Mutex as AsyncMutex, MutexGuard as AsyncMutexGuard};
use tokio::task::JoinHandle;

/// Default idle timeout of a session: closed after 10 minutes without a call.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Default maximum lifetime of a session: closed 1 hour after it started.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// Longest accepted idle timeout or lifetime (a day).
pub const MAX_SESSION_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// What a session is started with: its sandbox and its lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// The sandbox: tenant, shape, network (a session with one boots
    /// cold), packages (installed into a layer before it starts; see
    /// [`Session::install_packages`] for later ones).
    pub spec: SandboxSpec,
    /// Closed after this long without a call (default
    /// [`DEFAULT_IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
    /// Closed this long after it started, even mid-call (default
    /// [`DEFAULT_MAX_LIFETIME`]).
    pub max_lifetime: Duration,
}

impl SessionOptions {
    /// Options with the defaults: the default spec of `language`
    /// ([`SandboxSpec::new`]), 10 min idle timeout, 1 h lifetime.
    pub fn new(language: Language) -> Self {
        Self::in_sandbox(SandboxSpec::new(language))
    }

    /// Options for a sandbox of `spec`, with the default lifetimes.
    pub fn in_sandbox(spec: SandboxSpec) -> Self {
        Self {
            spec,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_lifetime: DEFAULT_MAX_LIFETIME,
        }
    }

    /// The language of its interpreter.
    pub fn language(&self) -> Language {
        self.spec.shape.language
    }

    /// Checks every field; the first problem is returned.
    ///
    /// # Errors
    /// [`InputError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), InputError> {
        self.spec.validate()?;
        for (field, value) in [
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
        ] {
            if value.is_zero() || value > MAX_SESSION_LIFETIME {
                return Err(InputError::invalid(
                    field,
                    format!(
                        "{value:?} is outside 1 ms ..= {} s",
                        MAX_SESSION_LIFETIME.as_secs()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// One cell to run in a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellRequest {
    /// The source code of the cell.
    pub code: String,
    /// Deadline of the cell; past it the cell is interrupted (SIGINT first,
    /// then killed, which loses the interpreter's state).
    pub timeout: Duration,
    /// Extra environment variables for the cell.
    pub env: BTreeMap<String, String>,
}

impl CellRequest {
    /// A cell with the default timeout ([`DEFAULT_TIMEOUT`]) and no
    /// environment.
    pub fn new(code: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            timeout: DEFAULT_TIMEOUT,
            env: BTreeMap::new(),
        }
    }

    /// Checks the code, timeout and environment as a run's.
    ///
    /// # Errors
    /// [`InputError::Invalid`] naming the field.
    pub fn validate(&self) -> Result<(), InputError> {
        validate_code(&self.code)?;
        validate_timeout(self.timeout)?;
        validate_env(&self.env)
    }
}

/// What a cell did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CellResult {
    /// Standard output (lossy UTF-8 in JSON).
    #[serde(serialize_with = "crate::request::lossy")]
    pub stdout: Vec<u8>,
    /// Standard error (lossy UTF-8 in JSON).
    #[serde(serialize_with = "crate::request::lossy")]
    pub stderr: Vec<u8>,
    /// The cell's exit code: 0, 1 after an uncaught exception, 130 when
    /// interrupted, 128+N for a signal.
    pub exit_code: i32,
    /// Whether the cell's timeout interrupted it.
    pub timed_out: bool,
    /// Whether the interpreter had to be killed: the state of earlier cells
    /// is gone, the next cell starts a fresh interpreter.
    pub state_lost: bool,
    /// Whether stdout was cut at its cap.
    pub stdout_truncated: bool,
    /// Whether stderr was cut at its cap.
    pub stderr_truncated: bool,
    /// Wall time of the call as the host saw it, in milliseconds.
    pub duration_ms: u64,
    /// The values the cell showed, in order (its last expression's value,
    /// `display()`, figures): MIME bundles, `docs/outputs.md`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<airlock_protocol::ExecResult>,
    /// The cell's uncaught exception (its traceback is on stderr too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<airlock_protocol::CellError>,
}

impl CellResult {
    fn new(outcome: ExecOutcome, duration_ms: u64) -> Self {
        Self {
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            exit_code: outcome.completion.exit_code,
            timed_out: outcome.completion.timed_out,
            state_lost: outcome.completion.state_lost,
            stdout_truncated: outcome.completion.stdout_truncated,
            stderr_truncated: outcome.completion.stderr_truncated,
            duration_ms,
            results: outcome.results,
            error: outcome.error,
        }
    }
}

impl Scheduler {
    /// Starts a session: validates `options`, opens its sandbox as a run
    /// does (package layer, a VM from the pool, template or cold boot,
    /// the CA bundle with a network), starts the language's persistent
    /// interpreter, and starts the watchdog of its idle timeout and
    /// lifetime.
    ///
    /// # Errors
    /// [`SessionError::Input`] for refused options (nothing started),
    /// [`SessionError::Packages`], [`SessionError::Boot`], [`SessionError::Exec`].
    pub async fn session(&self, options: SessionOptions) -> Result<Session, SessionError> {
        options.validate()?;
        let started = Instant::now();
        let opened = self
            .open::<SessionError>(&options.spec, BTreeMap::new(), &mut Discard)
            .await?;
        // The interpreter of a restored VM runs already; a cold one's
        // starts now rather than on the first cell. A failure here is not
        // fatal: the first cell starts it.
        if let Err(e) = opened.vm.warm_repl().await {
            tracing::warn!(vm_id = opened.vm.id(), error = %e, "warming the interpreter failed");
        }
        Ok(Session::start(
            opened.vm,
            &options,
            SessionExtras {
                start_ms: ms(started.elapsed()),
                base_env: opened.env,
                ca: self.ca_bundle_of(&options.spec),
                node: self.config().node_name.clone(),
                packages: opened.disk.map(|disk| disk.image),
                resumed: None,
            },
        ))
    }
}

/// A session's id: `s-<vm id>`, or `s-<node>-<vm id>` in a cluster, so
/// a proxy routes by it (the VM id is 16 hex digits, the node a DNS label).
fn session_id(node: Option<&str>, vm_id: &str) -> String {
    match node {
        Some(node) => format!("s-{node}-{vm_id}"),
        None => format!("s-{vm_id}"),
    }
}

/// What a session is started with besides its VM and options.
struct SessionExtras {
    start_ms: u64,
    /// Variables every cell gets (the CA bundle's, with a network).
    base_env: BTreeMap<String, String>,
    /// The CA bundle an install trusts.
    ca: CaBundle,
    /// The host's node name, carried by the id ([`crate::Config::node_name`]).
    node: Option<String>,
    /// The package layer image attached (a pause records it).
    packages: Option<std::path::PathBuf>,
    /// The id and start time a resumed session keeps.
    resumed: Option<(String, SystemTime)>,
}

/// What a pause or a fork needs to know of the sandbox a session was
/// started with.
#[derive(Debug, Clone)]
struct SandboxFacts {
    shape: crate::spec::MachineShape,
    packages: Option<std::path::PathBuf>,
    has_network: bool,
    mounts: usize,
    idle_timeout: Duration,
    max_lifetime: Duration,
}

/// A VM kept across calls, with its persistent interpreter (see the module
/// docs). `Send + Sync`; every method takes `&self`. Dropping it destroys
/// the VM.
pub struct Session {
    inner: Arc<Inner>,
    watchdog: JoinHandle<()>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("language", &self.inner.language)
            .field("closed", &self.inner.closed_reason())
            .finish_non_exhaustive()
    }
}

/// What a session and its watchdog share.
struct Inner {
    id: String,
    tenant: String,
    language: Language,
    created_at: SystemTime,
    start_ms: u64,
    /// Variables every cell gets under its own (the CA bundle's).
    base_env: BTreeMap<String, String>,
    /// The CA bundle installs trust.
    ca: CaBundle,
    /// Deadline of an install into the VM (the spec's
    /// [`crate::spec::InstallLimits::timeout`]).
    install_timeout: std::time::Duration,
    /// Where the VM's boot (or restore) time went.
    boot_timings: crate::vm::BootTimings,
    /// The guest ports served on the host.
    exposed: Vec<crate::network::ExposedAddr>,
    /// What a pause or a fork needs of its sandbox.
    facts: SandboxFacts,
    /// The VM; `None` once closed. Held by the call that runs (busy).
    vm: AsyncMutex<Option<Box<dyn SandboxVm>>>,
    /// The VM's side channel, as last seen while the VM was free or held
    /// by a call ([`Session::run_process_beside`]).
    side: Mutex<Option<Arc<dyn SideChannel>>>,
    /// Why the session ended, once it has (the first reason wins).
    closed: Mutex<Option<CloseReason>>,
    /// Set once the session ends: a running call stops at once.
    shutdown: watch::Sender<bool>,
    /// When the session was last used, and whether a call runs now.
    activity: Mutex<Activity>,
    /// Wakes the watchdog when a call ends (its idle clock restarts).
    used: tokio::sync::Notify,
    /// Bumped by [`SessionCanceller::cancel`]; a running cell watches it.
    cancel: Arc<watch::Sender<u64>>,
}

impl Session {
    fn start(vm: Box<dyn SandboxVm>, options: &SessionOptions, extras: SessionExtras) -> Self {
        let SessionExtras {
            start_ms,
            base_env,
            ca,
            node,
            packages,
            resumed,
        } = extras;
        let now = Instant::now();
        let (id, created_at) =
            resumed.unwrap_or_else(|| (session_id(node.as_deref(), vm.id()), SystemTime::now()));
        let facts = SandboxFacts {
            shape: options.spec.shape,
            packages,
            has_network: options
                .spec
                .network
                .with_secret_hosts(&options.spec.secrets)
                .mode()
                != airlock_gvproxy::NetworkMode::None,
            mounts: options.spec.mounts.len(),
            idle_timeout: options.idle_timeout,
            max_lifetime: options.max_lifetime,
        };
        let inner = Arc::new(Inner {
            id,
            tenant: options.spec.tenant.clone(),
            language: options.language(),
            created_at,
            facts,
            start_ms,
            base_env,
            ca,
            install_timeout: options.spec.install.timeout,
            boot_timings: vm.boot_timings().clone(),
            exposed: vm.exposed().to_vec(),
            side: Mutex::new(vm.side_channel()),
            vm: AsyncMutex::new(Some(vm)),
            closed: Mutex::new(None),
            shutdown: watch::channel(false).0,
            activity: Mutex::new(Activity::new(
                now,
                SystemTime::now(),
                options.idle_timeout,
                options.max_lifetime,
            )),
            used: tokio::sync::Notify::new(),
            cancel: Arc::new(watch::channel(0).0),
        });
        let watchdog = tokio::spawn(watch_lifetime(Arc::downgrade(&inner)));
        tracing::info!(session_id = inner.id, language = %inner.language, start_ms, "session started");
        Self { inner, watchdog }
    }

    /// The session id (`s-` and its VM's id).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The language of its interpreter.
    pub fn language(&self) -> Language {
        self.inner.language
    }

    /// Who it is for.
    pub fn tenant(&self) -> &str {
        &self.inner.tenant
    }

    /// Its machine shape (image, memory, vCPUs, disk).
    pub fn shape(&self) -> crate::spec::MachineShape {
        self.inner.facts.shape
    }

    /// When it started.
    pub fn created_at(&self) -> SystemTime {
        self.inner.created_at
    }

    /// How long the session took to start (boot or restore, and warming
    /// the interpreter), in milliseconds.
    pub fn start_ms(&self) -> u64 {
        self.inner.start_ms
    }

    /// Where its VM's boot time went; `restore` is set when the VM was
    /// restored from a memory template rather than booted cold.
    pub fn boot_timings(&self) -> &crate::vm::BootTimings {
        &self.inner.boot_timings
    }

    /// The guest ports served on the host (`NetworkRequest::exposes`).
    pub fn exposed(&self) -> &[crate::network::ExposedAddr] {
        &self.inner.exposed
    }

    /// When a call last ended (or the session started, before any call).
    pub fn last_used(&self) -> SystemTime {
        lock(&self.inner.activity).last_used_wall()
    }

    /// Whether the session has ended: every call is refused.
    pub fn is_closed(&self) -> bool {
        self.inner.closed_reason().is_some()
    }

    /// Why the session ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.inner.closed_reason()
    }

    /// Runs a cell of the persistent interpreter, streaming its output to
    /// `observer` as it comes. An exception in the cell is its exit code 1
    /// (the session goes on); a timeout interrupts it (`timed_out`), and
    /// `state_lost` says whether the interpreter had to be killed.
    ///
    /// # Errors
    /// [`SessionError::Input`] for a refused cell, [`SessionError::Busy`]
    /// while another call runs, [`SessionError::Closed`] after the end,
    /// else the VM's errors (a VM that died closes the session).
    pub async fn exec(
        &self,
        request: CellRequest,
        observer: &mut dyn RunObserver,
    ) -> Result<CellResult, SessionError> {
        self.exec_as(ExecMode::Cell, self.inner.language, request, observer)
            .await
    }

    /// Runs a cell of `language`'s persistent interpreter in this
    /// session's VM: the agent keeps one interpreter per language, so a
    /// session of one language can hold a second, separate state in
    /// another (E2B's code contexts). The language must be in the VM's
    /// image.
    ///
    /// # Errors
    /// As [`Session::exec`].
    pub async fn exec_in(
        &self,
        language: Language,
        request: CellRequest,
        observer: &mut dyn RunObserver,
    ) -> Result<CellResult, SessionError> {
        self.exec_as(ExecMode::Cell, language, request, observer)
            .await
    }

    /// Runs `request.code` as a new process of `language` (`bash -c`,
    /// `python3 -c`, ...) in the session's VM, beside its interpreter:
    /// nothing survives it but what it wrote to disk. One call at a time,
    /// as every call; [`Session::canceller`] interrupts it.
    ///
    /// # Errors
    /// As [`Session::exec`].
    pub async fn run_process(
        &self,
        language: Language,
        request: CellRequest,
        observer: &mut dyn RunObserver,
    ) -> Result<CellResult, SessionError> {
        self.exec_as(ExecMode::Process, language, request, observer)
            .await
    }

    async fn exec_as(
        &self,
        mode: ExecMode,
        language: Language,
        request: CellRequest,
        observer: &mut dyn RunObserver,
    ) -> Result<CellResult, SessionError> {
        request.validate()?;
        let mut call = self.inner.begin()?;
        let started = Instant::now();
        let mut cancels = self.inner.cancel.subscribe();
        cancels.mark_unchanged();
        let interrupt = async move {
            // A dropped sender (the session is going away) is no cancel.
            if cancels.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let exec = ExecRequest {
            mode,
            language,
            code: request.code,
            timeout_ms: u64::try_from(request.timeout.as_millis()).unwrap_or(u64::MAX),
            env: crate::packages::ca::with_ca_env(request.env, self.inner.base_env.clone()),
            cwd: None,
        };
        let vm = call.vm();
        let outcome = self
            .inner
            .until_shutdown(vm.exec_interruptible(
                exec,
                &mut |piece| crate::observer::forward(observer, piece),
                Box::pin(interrupt),
            ))
            .await?;
        let outcome = call.check_vm(outcome).await?;
        Ok(CellResult::new(outcome, ms(started.elapsed())))
    }

    /// Runs `request.code` as a new process of `language` beside whatever
    /// else runs in the session (a cell, a file transfer, other such
    /// processes): E2B's background commands. It does not make the
    /// session busy, and [`Session::canceller`] does not reach it: it is
    /// interrupted when `interrupt` completes (SIGINT to its group, then
    /// the kill a timeout gets; exit code 130). It keeps the session from
    /// idling out while it runs, and ends when the session does. With
    /// `input` its stdin is a pipe fed from it (else `/dev/null`); its code
    /// must then fit in an argument.
    ///
    /// # Errors
    /// [`SessionError::Input`] for a refused request,
    /// [`SessionError::Closed`] after the end, [`SessionError::Exec`] when
    /// the agent fails or the VM goes away.
    pub async fn run_process_beside(
        &self,
        language: Language,
        request: CellRequest,
        observer: &mut dyn RunObserver,
        interrupt: BoxFuture<'_, ()>,
        input: Option<ProcessInput>,
    ) -> Result<CellResult, SessionError> {
        request.validate()?;
        let side = self.inner.side_channel()?;
        let started = Instant::now();
        let exec = ExecRequest {
            mode: if input.is_some() {
                ExecMode::PipedProcess
            } else {
                ExecMode::Process
            },
            language,
            code: request.code,
            timeout_ms: u64::try_from(request.timeout.as_millis()).unwrap_or(u64::MAX),
            env: crate::packages::ca::with_ca_env(request.env, self.inner.base_env.clone()),
            cwd: None,
        };
        lock(&self.inner.activity).begin_call();
        let _ends = EndsCall(&self.inner);
        let outcome = self
            .inner
            .until_shutdown(side.exec(
                exec,
                &mut |piece| crate::observer::forward(observer, piece),
                interrupt,
                input,
            ))
            .await??;
        Ok(CellResult::new(outcome, ms(started.elapsed())))
    }

    /// A handle that interrupts the running cell (Ctrl-C), usable from any
    /// task or thread while [`Session::exec`] runs. A cancel while no cell
    /// runs does nothing.
    pub fn canceller(&self) -> SessionCanceller {
        SessionCanceller {
            cancel: Arc::clone(&self.inner.cancel),
        }
    }

    /// Writes a file into the sandbox home (atomically: it appears whole
    /// or not at all; missing directories are made), checked end to end by
    /// sha256.
    ///
    /// # Errors
    /// [`SessionError::Input`] for a refused path, [`ExecError::File`] when the
    /// agent refuses or fails it, [`SessionError::Busy`],
    /// [`SessionError::Closed`].
    pub async fn write_file(&self, path: &str, bytes: &[u8]) -> Result<FileInfo, SessionError> {
        let size = bytes.len() as u64;
        let mut source = bytes;
        self.write_file_from(path, Some(size), &mut source, size)
            .await
    }

    /// Writes a file into the sandbox home from `source`, streamed a chunk
    /// at a time (a request body, a host file: never held whole), as
    /// [`Session::write_file`] otherwise. `size` is announced when known;
    /// more than `max_bytes` from the source fails as soon as it passes
    /// the cap. A write that fails or is dropped half way leaves no file.
    /// The session is busy for the whole transfer.
    ///
    /// # Errors
    /// As [`Session::write_file`]; [`ExecError::File`] with a
    /// `FileTooLarge` source past `max_bytes`, a `HostStream` one when
    /// `source` fails.
    pub async fn write_file_from(
        &self,
        path: &str,
        size: Option<u64>,
        source: FileSource<'_>,
        max_bytes: u64,
    ) -> Result<FileInfo, SessionError> {
        validate_guest_path("path", path)?;
        let mut call = self.inner.begin()?;
        let vm = call.vm();
        let upload = vm.upload_from(path, DEFAULT_FILE_MODE, size, source, max_bytes);
        Ok(self.inner.until_shutdown(upload).await??)
    }

    /// Reads a file of the sandbox home (at most 128 MiB), checked end to
    /// end by sha256. A symlink leading out of the home is refused.
    ///
    /// # Errors
    /// As [`Session::write_file`].
    pub async fn read_file(&self, path: &str) -> Result<(Vec<u8>, FileInfo), SessionError> {
        self.read_file_at_most(path, u64::MAX).await
    }

    /// As [`Session::read_file`], holding at most `max_bytes` of the file
    /// (and 128 MiB): a larger one fails with a `FileTooLarge` source as
    /// soon as it passes the limit (a server's one file size cap).
    ///
    /// # Errors
    /// As [`Session::write_file`].
    pub async fn read_file_at_most(
        &self,
        path: &str,
        max_bytes: u64,
    ) -> Result<(Vec<u8>, FileInfo), SessionError> {
        validate_guest_path("path", path)?;
        let mut call = self.inner.begin()?;
        let vm = call.vm();
        Ok(self
            .inner
            .until_shutdown(vm.download(path, max_bytes))
            .await??)
    }

    /// Reads a file of the sandbox home into `sink`, each chunk as it
    /// arrives (a response body, a host file: never held whole), checked
    /// by sha256 at the end. A file over `max_bytes` fails before any of
    /// it reaches `sink` (its size is known when the guest opens it).
    /// After an error, what `sink` got is not the file: a caller streaming
    /// it on must cut its output, not end it cleanly. The session is busy
    /// for the whole transfer.
    ///
    /// # Errors
    /// As [`Session::read_file_at_most`]; a `HostStream` source when
    /// `sink` fails.
    pub async fn read_file_into(
        &self,
        path: &str,
        max_bytes: u64,
        sink: FileSink<'_>,
    ) -> Result<FileInfo, SessionError> {
        validate_guest_path("path", path)?;
        let mut call = self.inner.begin()?;
        let vm = call.vm();
        let download = vm.download_into(path, max_bytes, sink);
        Ok(self.inner.until_shutdown(download).await??)
    }

    /// Refuses at once, as a call would, when the session is busy with
    /// another call or has ended: what a server checks before it reads an
    /// upload's body. The answer may be stale by the time the call
    /// starts; the call checks again.
    ///
    /// # Errors
    /// [`SessionError::Busy`], [`SessionError::Closed`].
    pub fn check_ready(&self) -> Result<(), SessionError> {
        let inner = &self.inner;
        if let Some(reason) = inner.closed_reason() {
            return Err(inner.closed_error(reason));
        }
        // Not a call: the idle clock is left alone.
        let vm = inner.vm.try_lock().map_err(|_| SessionError::Busy {
            session_id: inner.id.clone(),
        })?;
        if vm.is_none() {
            let reason = inner.closed_reason().unwrap_or(CloseReason::Closed);
            return Err(inner.closed_error(reason));
        }
        Ok(())
    }

    /// Ends `language`'s persistent interpreter in this session's VM: its
    /// globals and imports go, and the next cell of it starts fresh (not
    /// reported as `state_lost`: it was asked for). E2B's restart of a
    /// code context. A call like `exec`.
    ///
    /// # Errors
    /// [`SessionError::Busy`], [`SessionError::Closed`], the VM's errors.
    pub async fn reset_interpreter(&self, language: Language) -> Result<(), SessionError> {
        let mut call = self.inner.begin()?;
        let vm = call.vm();
        let reset = self.inner.until_shutdown(vm.reset_repl(language)).await?;
        call.check_vm(reset).await
    }

    /// Lists a directory of the sandbox home (`""` or `"."`: the home),
    /// sorted by name; symlinks are shown, not followed.
    ///
    /// # Errors
    /// As [`Session::write_file`].
    pub async fn list_files(&self, dir: &str) -> Result<Vec<FileEntry>, SessionError> {
        validate_guest_dir("dir", dir)?;
        let mut call = self.inner.begin()?;
        let vm = call.vm();
        Ok(self.inner.until_shutdown(vm.list_files(dir)).await??)
    }

    /// Installs pinned packages (`name==version` for pip, `name@version`
    /// for npm) into the session's home with the language's package
    /// manager; the result reads like a cell's. The session needs a
    /// network that allows the language's registries (packages known when
    /// it starts go in [`SessionOptions::packages`] instead, with no
    /// network).
    ///
    /// # Errors
    /// [`InputError::PackageSpec`] for a refused spec, [`PackageError::Install`]
    /// without a network, else as [`Session::exec`].
    pub async fn install_packages(&self, packages: &[String]) -> Result<CellResult, SessionError> {
        crate::packages::PackageList::parse(self.inner.language, packages)?;
        let mut call = self.inner.begin()?;
        let started = Instant::now();
        let vm = call.vm();
        let outcome = self
            .inner
            .until_shutdown(vm.install(packages, &self.inner.ca, self.inner.install_timeout))
            .await?;
        let outcome = call.check_vm(outcome).await?;
        Ok(CellResult::new(outcome, ms(started.elapsed())))
    }

    /// Ends the session: a running call is stopped, the VM destroyed; every
    /// later call returns [`SessionError::Closed`]. Safe to call twice (the
    /// second reports nothing left).
    pub async fn close(&self) -> TeardownReport {
        self.inner.close(CloseReason::Closed).await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.watchdog.abort();
        // The VM goes with `inner` (its drop hands it to the reaper) once
        // the watchdog's upgrade, if any, is gone too.
    }
}

/// Interrupts the running cell of a session: `Clone + Send + Sync`, cheap.
/// It does not keep the session alive.
#[derive(Debug, Clone)]
pub struct SessionCanceller {
    cancel: Arc<watch::Sender<u64>>,
}

impl SessionCanceller {
    /// Asks the running cell to stop (SIGINT first, then a kill, which loses
    /// the state: see [`CellResult::state_lost`]); its [`Session::exec`]
    /// returns its result (exit code 130 when interrupted). Does nothing
    /// when no cell runs.
    pub fn cancel(&self) {
        self.cancel.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A call that does not hold the VM ([`Session::run_process_beside`]):
/// marks the session used again when dropped.
struct EndsCall<'a>(&'a Inner);

impl Drop for EndsCall<'_> {
    fn drop(&mut self) {
        lock(&self.0.activity).end_call(Instant::now(), SystemTime::now());
        self.0.used.notify_one();
    }
}

/// One call holding the session; marks it used again when dropped.
struct Call<'a> {
    inner: &'a Inner,
    vm: AsyncMutexGuard<'a, Option<Box<dyn SandboxVm>>>,
}

impl Call<'_> {
    /// The session's VM (present: [`Inner::begin`] checked).
    fn vm(&mut self) -> &mut dyn SandboxVm {
        match self.vm.as_mut() {
            Some(vm) => vm.as_mut(),
            None => unreachable!("Inner::begin hands out calls only while the VM is there"),
        }
    }

    /// A VM that died during the call ends the session.
    async fn check_vm<T, E: Into<SessionError>>(
        &mut self,
        result: Result<T, E>,
    ) -> Result<T, SessionError> {
        let result = result.map_err(Into::into);
        if let Err(
            SessionError::Exec(ExecError::VmDied { .. })
            | SessionError::Packages(PackageError::Exec(ExecError::VmDied { .. })),
        ) = &result
        {
            self.inner.mark_closed(CloseReason::VmDied);
            if let Some(mut vm) = self.vm.take() {
                vm.destroy().await;
            }
        }
        result
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        lock(&self.inner.activity).end_call(Instant::now(), SystemTime::now());
        self.inner.used.notify_one();
    }
}

impl Inner {
    fn closed_reason(&self) -> Option<CloseReason> {
        *lock(&self.closed)
    }

    fn closed_error(&self, reason: CloseReason) -> SessionError {
        SessionError::Closed {
            session_id: self.id.clone(),
            reason,
        }
    }

    /// Takes the session for one call: refused at once when another call
    /// holds it (busy) or when it has ended.
    fn begin(&self) -> Result<Call<'_>, SessionError> {
        if let Some(reason) = self.closed_reason() {
            return Err(self.closed_error(reason));
        }
        let vm = self.vm.try_lock().map_err(|_| SessionError::Busy {
            session_id: self.id.clone(),
        })?;
        if vm.is_none() {
            let reason = self.closed_reason().unwrap_or(CloseReason::Closed);
            return Err(self.closed_error(reason));
        }
        lock(&self.activity).begin_call();
        *lock(&self.side) = vm.as_ref().and_then(|vm| vm.side_channel());
        Ok(Call { inner: self, vm })
    }

    /// The VM's side channel: fresh from the VM when no call holds it,
    /// else the one the running call's start saw (the same VM).
    fn side_channel(&self) -> Result<Arc<dyn SideChannel>, SessionError> {
        if let Some(reason) = self.closed_reason() {
            return Err(self.closed_error(reason));
        }
        if let Ok(vm) = self.vm.try_lock() {
            *lock(&self.side) = vm.as_ref().and_then(|vm| vm.side_channel());
        }
        lock(&self.side)
            .clone()
            .ok_or_else(|| self.closed_error(self.closed_reason().unwrap_or(CloseReason::Closed)))
    }

    /// Runs `fut` unless the session ends first (then
    /// [`SessionError::Closed`], and `fut` is dropped).
    async fn until_shutdown<T>(
        &self,
        fut: impl std::future::Future<Output = T>,
    ) -> Result<T, SessionError> {
        let mut shutdown = self.shutdown.subscribe();
        tokio::select! {
            value = fut => Ok(value),
            _ = shutdown.wait_for(|&down| down) => {
                Err(self.closed_error(self.closed_reason().unwrap_or(CloseReason::Closed)))
            }
        }
    }

    /// Records why the session ended (the first reason wins) and stops a
    /// running call.
    fn mark_closed(&self, reason: CloseReason) {
        let mut closed = lock(&self.closed);
        if closed.is_none() {
            *closed = Some(reason);
            tracing::info!(session_id = self.id, %reason, "session closed");
        }
        drop(closed);
        // The agent's client goes with the VM, not with this handle.
        *lock(&self.side) = None;
        self.shutdown.send_replace(true);
    }

    /// Ends the session for `reason` and destroys the VM (waiting for a
    /// running call to stop, which it does at once).
    async fn close(&self, reason: CloseReason) -> TeardownReport {
        self.mark_closed(reason);
        let vm = self.vm.lock().await.take();
        match vm {
            Some(mut vm) => vm.destroy().await,
            None => TeardownReport::nothing_left(self.id.clone()),
        }
    }
}

/// The watchdog: closes the session when it has been idle too long or has
/// lived too long. Ends with the session (it holds only a weak reference).
async fn watch_lifetime(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let verdict = lock(&strong.activity).verdict(Instant::now());
        match verdict {
            Verdict::Expired(reason) => {
                let report = strong.close(reason).await;
                for problem in &report.problems {
                    tracing::warn!(session_id = strong.id, problem, "teardown problem");
                }
                return;
            }
            Verdict::CheckAt(at) => {
                let woken = async {
                    strong.used.notified().await;
                };
                let mut shutdown = strong.shutdown.subscribe();
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    () = woken => {}
                    _ = shutdown.wait_for(|&down| down) => return,
                }
            }
        }
        drop(strong);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
