//! Fakes of the VM-source seam, for tests here and in the crates above
//! (feature `testing`): a [`Scheduler`] built from them runs code, starts
//! sessions and moves files with no QEMU, no host probe and no image.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use airlock::testing::FakeSetup;
//! use airlock::{Language, RunRequest};
//!
//! let fakes = FakeSetup::new();
//! let result = fakes.scheduler.run(RunRequest::new(Language::Python, "hello")).await.unwrap();
//! assert_eq!(result.stdout, b"hello");
//! assert_eq!(fakes.cold.live(), 0); // destroyed after the run
//! # }
//! ```
//!
//! What a [`FakeVm`] does with code (each a whole program):
//!
//! | code                 | result                                                      |
//! |----------------------|-------------------------------------------------------------|
//! | `exit N`             | exit code `N`, no output                                    |
//! | `stderr TEXT`        | `TEXT` and a newline on stderr, exit 0                      |
//! | `env NAME`           | the value of `NAME` in the exec's environment on stdout     |
//! | `bytes XX N C`       | `N` bytes of hex `XX` on stdout, in chunks of `C`, yielding between chunks |
//! | `hang`               | runs until its timeout (`timed_out`, exit 137, state lost in a cell) or an interrupt (exit 130) |
//! | `lose-state`         | exit 137, `state_lost`                                      |
//! | `die`                | [`ExecError::VmDied`]                                       |
//! | lines of `show TEXT`, `result MIME DATA`, `raise NAME VALUE` | results, in order: `show` the main result (`text/plain` TEXT), `result` a displayed one (`{MIME: DATA}`, DATA as is: base64 for binary types), `raise` a cell error (traceback on stderr, exit 1) |
//! | anything else        | echoed on stdout, exit 0                                    |
//!
//! Files live in memory per VM (an upload whose path starts with `hang`
//! never finishes); installs succeed on a VM with a network
//! (echoing the packages) and fail without one, as the real ones do.

use crate::error::{BootError, ExecError, PackageError};
use crate::files::FileInfo;
use crate::machine::VmOptions;
use crate::network::ExposedAddr;
use crate::observer::{RunObserver, Stage};
use crate::packages::install::{InstallLimits, PackagesReport};
use crate::packages::PackageList;
use crate::scheduler::{Scheduler, SchedulerParts};
use crate::source::{FileSink, FileSource, ProcessInput, SideChannel, StdinChunk};
use crate::source::{
    OutputSink, PackagePreparer, PreparedPackages, SandboxVm, SourceKind, VmSource,
};
use crate::spec::{CaBundle, MachineShape};
use crate::task::BoxFuture;
use crate::teardown::TeardownReport;
use crate::vm::{BootTimings, ExecOutcome, ExecProgress, OutputStream};
use crate::{Config, PackageDisk};
use airlock_gvproxy::NetworkMode;
use airlock_protocol::{
    CellError, Completion, ErrorKind, ExecMode, ExecRequest, ExecResult, FileEntry, FileKind,
    Language, ProtocolError,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Makes the error of a scripted failure (errors are not `Clone`).
pub type MakeError<E> = Box<dyn FnOnce() -> E + Send>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a fake source and its VMs share and record.
#[derive(Default)]
struct SourceState {
    /// Failures of the next acquires, in order.
    boot_errors: Mutex<VecDeque<MakeError<BootError>>>,
    /// The options of every acquire that succeeded, in order.
    acquired: Mutex<Vec<VmOptions>>,
    /// Every exec any of its VMs ran, in order.
    execs: Mutex<Vec<ExecRequest>>,
    /// Every install any of its VMs ran (the package lists).
    installs: Mutex<Vec<Vec<String>>>,
    /// VMs destroyed (each counted once).
    destroyed: AtomicUsize,
    /// Interpreter warm-ups asked for.
    warmed: AtomicUsize,
    /// Interpreter resets, in order.
    resets: Mutex<Vec<Language>>,
    /// Ids handed out so far.
    next_id: AtomicU64,
    /// How long an acquire takes.
    boot_delay: Mutex<Duration>,
}

/// A [`VmSource`] of [`FakeVm`]s: records what it was asked for and fails
/// when told to. Cheap to clone (clones share the record).
#[derive(Clone)]
pub struct FakeVmSource {
    name: &'static str,
    state: Arc<SourceState>,
}

impl std::fmt::Debug for FakeVmSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeVmSource")
            .field("name", &self.name)
            .field("acquired", &self.acquired().len())
            .field("live", &self.live())
            .finish()
    }
}

impl Default for FakeVmSource {
    fn default() -> Self {
        Self::new("fake")
    }
}

impl FakeVmSource {
    /// A source whose VM ids start with `name` (`cold-1`, `pool-2`).
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            state: Arc::default(),
        }
    }

    /// The next acquire fails with `error()` (queued: several calls fail
    /// several acquires).
    pub fn fail_next_boot(&self, error: impl FnOnce() -> BootError + Send + 'static) {
        lock(&self.state.boot_errors).push_back(Box::new(error));
    }

    /// Every acquire takes `delay` (to test cancellation and busy rules).
    pub fn set_boot_delay(&self, delay: Duration) {
        *lock(&self.state.boot_delay) = delay;
    }

    /// The options of every VM handed out, in order.
    pub fn acquired(&self) -> Vec<VmOptions> {
        lock(&self.state.acquired).clone()
    }

    /// VMs handed out and not destroyed yet (dropping a fake VM does not
    /// destroy it: a leak shows here).
    pub fn live(&self) -> usize {
        self.acquired().len() - self.state.destroyed.load(Ordering::SeqCst)
    }

    /// Every exec its VMs ran, in order.
    pub fn execs(&self) -> Vec<ExecRequest> {
        lock(&self.state.execs).clone()
    }

    /// Every package install its VMs ran, in order.
    pub fn installs(&self) -> Vec<Vec<String>> {
        lock(&self.state.installs).clone()
    }

    /// Interpreter resets asked of its VMs, in order.
    pub fn resets(&self) -> Vec<Language> {
        lock(&self.state.resets).clone()
    }

    /// Interpreter warm-ups asked of its VMs.
    pub fn warmed(&self) -> usize {
        self.state.warmed.load(Ordering::SeqCst)
    }
}

impl VmSource for FakeVmSource {
    fn acquire<'a>(
        &'a self,
        options: &'a VmOptions,
        observer: &'a mut dyn RunObserver,
    ) -> BoxFuture<'a, Result<Box<dyn SandboxVm>, BootError>> {
        Box::pin(async move {
            observer.stage(Stage::Booting);
            let delay = *lock(&self.state.boot_delay);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let failure = lock(&self.state.boot_errors).pop_front();
            if let Some(make) = failure {
                return Err(make());
            }
            let n = self.state.next_id.fetch_add(1, Ordering::SeqCst) + 1;
            lock(&self.state.acquired).push(options.clone());
            let vm = FakeVm::new(
                format!("{}-{n}", self.name),
                options,
                Arc::clone(&self.state),
            );
            Ok(Box::new(vm) as Box<dyn SandboxVm>)
        })
    }
}

/// A fake VM (see the module docs for what it does with code).
pub struct FakeVm {
    id: String,
    options: VmOptions,
    timings: BootTimings,
    exposed: Vec<ExposedAddr>,
    files: Mutex<BTreeMap<String, Vec<u8>>>,
    destroyed: bool,
    dead: bool,
    /// Set when the VM is destroyed or dies: its side channels fail then.
    ended: Arc<AtomicBool>,
    state: Arc<SourceState>,
}

impl std::fmt::Debug for FakeVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeVm").field("id", &self.id).finish()
    }
}

impl FakeVm {
    fn new(id: String, options: &VmOptions, state: Arc<SourceState>) -> Self {
        let exposed = options
            .network
            .exposes
            .iter()
            .map(|e| ExposedAddr {
                guest_port: e.guest_port,
                host: SocketAddr::from((
                    options
                        .network
                        .expose_address
                        .unwrap_or(Ipv4Addr::LOCALHOST.into()),
                    e.host_port.unwrap_or(e.guest_port),
                )),
            })
            .collect();
        Self {
            id,
            options: options.clone(),
            timings: BootTimings {
                attempts: 1,
                ..BootTimings::default()
            },
            exposed,
            files: Mutex::default(),
            destroyed: false,
            dead: false,
            ended: Arc::new(AtomicBool::new(false)),
            state,
        }
    }

    fn file_error(&self, path: &str, action: &'static str, kind: ErrorKind) -> ExecError {
        ExecError::File {
            vm_id: self.id.clone(),
            path: path.to_owned(),
            action,
            source: ProtocolError::Guest {
                kind,
                message: format!("{path}: fake {kind:?}"),
            },
        }
    }

    fn gone(&self) -> Option<ExecError> {
        (self.destroyed || self.dead).then(|| ExecError::Protocol {
            vm_id: self.id.clone(),
            source: ProtocolError::Closed,
        })
    }
}

/// A completion with `exit_code` and nothing else of note.
pub fn completion(exit_code: i32) -> Completion {
    Completion {
        exit_code,
        timed_out: false,
        duration_ms: 1,
        spawn_ms: 0,
        stdout_truncated: false,
        stderr_truncated: false,
        state_lost: false,
    }
}

/// Whether every line of `code` is a `show`, `result` or `raise` line.
fn is_result_script(code: &str) -> bool {
    code.lines().all(|line| {
        ["show ", "result ", "raise "]
            .iter()
            .any(|word| line.starts_with(word))
    })
}

/// Runs the `show`/`result`/`raise` lines of `code` into `outcome`.
fn run_result_script(code: &str, outcome: &mut ExecOutcome) {
    for line in code.lines() {
        if let Some(text) = line.strip_prefix("show ") {
            let mut result = result_of("text/plain", text);
            result.is_main_result = true;
            outcome.results.push(result);
        } else if let Some(rest) = line.strip_prefix("result ") {
            let (mime, data) = rest.split_once(' ').unwrap_or((rest, ""));
            outcome.results.push(result_of(mime, data));
        } else if let Some(rest) = line.strip_prefix("raise ") {
            let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
            let traceback = format!("Traceback (most recent call last):\n{name}: {value}\n");
            outcome.stderr.extend_from_slice(traceback.as_bytes());
            outcome.error = Some(CellError {
                name: name.to_owned(),
                value: value.to_owned(),
                traceback,
            });
            outcome.completion.exit_code = 1;
        }
    }
}

/// A displayed result holding one representation.
fn result_of(mime: &str, data: &str) -> ExecResult {
    ExecResult {
        data: [(mime.to_owned(), serde_json::Value::String(data.to_owned()))].into(),
        is_main_result: false,
        truncated: false,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What a fake VM does with an exec (see the module docs), for the VM and
/// its side channel alike.
async fn fake_exec(
    id: &str,
    state: &SourceState,
    request: ExecRequest,
    on_output: OutputSink<'_>,
    interrupt: BoxFuture<'_, ()>,
) -> Result<ExecOutcome, ExecError> {
    lock(&state.execs).push(request.clone());
    let code = request.code.trim_end();
    let mut outcome = ExecOutcome {
        stdout: Vec::new(),
        stderr: Vec::new(),
        results: Vec::new(),
        error: None,
        completion: completion(0),
    };
    let mut streamed = false;
    if let Some((byte, count, chunk)) = code.strip_prefix("bytes ").and_then(bytes_spec) {
        outcome.stdout = vec![byte; count];
        for piece in outcome.stdout.chunks(chunk) {
            on_output(ExecProgress::Output(OutputStream::Stdout, piece));
            tokio::task::yield_now().await;
        }
        streamed = true;
    } else if let Some(n) = code.strip_prefix("exit ") {
        outcome.completion.exit_code = n.trim().parse().unwrap_or(1);
    } else if let Some(text) = code.strip_prefix("stderr ") {
        outcome.stderr = format!("{text}\n").into_bytes();
    } else if let Some(name) = code.strip_prefix("env ") {
        outcome.stdout = request
            .env
            .get(name.trim())
            .cloned()
            .unwrap_or_default()
            .into_bytes();
    } else if code == "hang" {
        let timeout = Duration::from_millis(request.timeout_ms);
        tokio::select! {
            () = tokio::time::sleep(timeout) => {
                outcome.completion.timed_out = true;
                outcome.completion.exit_code = 137;
                outcome.completion.state_lost = request.mode == ExecMode::Cell;
            }
            () = interrupt => outcome.completion.exit_code = 130,
        }
    } else if code == "lose-state" {
        outcome.completion.exit_code = 137;
        outcome.completion.state_lost = true;
    } else if code == "die" {
        return Err(ExecError::VmDied {
            vm_id: id.to_owned(),
            status: Some(airlock_sys_util::ChildExit::Signal(9)),
            stderr_tail: String::new(),
            console_tail: String::new(),
        });
    } else if is_result_script(code) {
        run_result_script(code, &mut outcome);
    } else {
        outcome.stdout = request.code.clone().into_bytes();
    }
    if !outcome.stdout.is_empty() && !streamed {
        on_output(ExecProgress::Output(OutputStream::Stdout, &outcome.stdout));
    }
    for result in &outcome.results {
        on_output(ExecProgress::Result(result));
    }
    if !outcome.stderr.is_empty() {
        on_output(ExecProgress::Output(OutputStream::Stderr, &outcome.stderr));
    }
    Ok(outcome)
}

/// A process with stdin on a fake VM: `cat`, whatever its code (its
/// stdin comes back as its stdout, until the host closes it).
async fn fake_cat(mut input: ProcessInput, on_output: OutputSink<'_>) -> ExecOutcome {
    let mut stdout = Vec::new();
    while let Some(chunk) = input.recv().await {
        match chunk {
            StdinChunk::Data(bytes) => {
                on_output(ExecProgress::Output(OutputStream::Stdout, &bytes));
                stdout.extend_from_slice(&bytes);
            }
            StdinChunk::Close => break,
        }
    }
    ExecOutcome {
        stdout,
        stderr: Vec::new(),
        results: Vec::new(),
        error: None,
        completion: completion(0),
    }
}

/// A fake VM's [`SideChannel`]: the same exec, on a VM that has not ended.
struct FakeSide {
    id: String,
    state: Arc<SourceState>,
    ended: Arc<AtomicBool>,
}

impl SideChannel for FakeSide {
    fn exec<'a>(
        &'a self,
        request: ExecRequest,
        on_output: OutputSink<'a>,
        interrupt: BoxFuture<'a, ()>,
        input: Option<ProcessInput>,
    ) -> BoxFuture<'a, Result<ExecOutcome, ExecError>> {
        Box::pin(async move {
            if let Some(input) = input {
                return Ok(fake_cat(input, on_output).await);
            }
            if self.ended.load(Ordering::SeqCst) {
                return Err(ExecError::Protocol {
                    vm_id: self.id.clone(),
                    source: ProtocolError::Closed,
                });
            }
            let result = fake_exec(&self.id, &self.state, request, on_output, interrupt).await;
            if let Err(ExecError::VmDied { .. }) = &result {
                self.ended.store(true, Ordering::SeqCst);
            }
            result
        })
    }
}

impl SandboxVm for FakeVm {
    fn id(&self) -> &str {
        &self.id
    }

    fn language(&self) -> Language {
        self.options.language
    }

    fn boot_timings(&self) -> &BootTimings {
        &self.timings
    }

    fn exposed(&self) -> &[ExposedAddr] {
        &self.exposed
    }

    fn exec_interruptible<'a>(
        &'a mut self,
        request: ExecRequest,
        on_output: OutputSink<'a>,
        interrupt: BoxFuture<'a, ()>,
    ) -> BoxFuture<'a, Result<ExecOutcome, ExecError>> {
        Box::pin(async move {
            if let Some(e) = self.gone() {
                return Err(e);
            }
            let result = fake_exec(&self.id, &self.state, request, on_output, interrupt).await;
            if let Err(ExecError::VmDied { .. }) = &result {
                self.dead = true;
                self.ended.store(true, Ordering::SeqCst);
            }
            result
        })
    }

    fn side_channel(&self) -> Option<Arc<dyn SideChannel>> {
        if self.gone().is_some() {
            return None;
        }
        Some(Arc::new(FakeSide {
            id: self.id.clone(),
            state: Arc::clone(&self.state),
            ended: Arc::clone(&self.ended),
        }))
    }

    fn upload_from<'a>(
        &'a self,
        path: &'a str,
        _mode: u32,
        size: Option<u64>,
        source: FileSource<'a>,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<FileInfo, ExecError>> {
        Box::pin(async move {
            if let Some(e) = self.gone() {
                return Err(e);
            }
            crate::files::validate_guest_path("path", path)
                .map_err(|_| self.file_error(path, "write", ErrorKind::InvalidPath))?;
            if path.starts_with("hang") {
                // A guest that never acknowledges the write: the caller's
                // deadline ends it.
                std::future::pending::<()>().await;
            }
            let too_large = || ExecError::File {
                vm_id: self.id.clone(),
                path: path.to_owned(),
                action: "write",
                source: ProtocolError::FileTooLarge {
                    path: path.to_owned(),
                    limit_bytes: max_bytes,
                },
            };
            if size.is_some_and(|size| size > max_bytes) {
                return Err(too_large());
            }
            // As the real client: never more than the cap (and a byte) read.
            let mut content = Vec::new();
            let mut limited = source.take(max_bytes.saturating_add(1));
            limited
                .read_to_end(&mut content)
                .await
                .map_err(|e| ExecError::File {
                    vm_id: self.id.clone(),
                    path: path.to_owned(),
                    action: "write",
                    source: ProtocolError::HostStream {
                        path: path.to_owned(),
                        action: "read the source",
                        source: e,
                    },
                })?;
            if content.len() as u64 > max_bytes {
                return Err(too_large());
            }
            let info = FileInfo {
                path: path.to_owned(),
                size: content.len() as u64,
                sha256: sha256_hex(&content),
            };
            lock(&self.files).insert(path.to_owned(), content);
            Ok(info)
        })
    }

    fn download_into<'a>(
        &'a self,
        path: &'a str,
        max_bytes: u64,
        sink: FileSink<'a>,
    ) -> BoxFuture<'a, Result<FileInfo, ExecError>> {
        Box::pin(async move {
            if let Some(e) = self.gone() {
                return Err(e);
            }
            let content = lock(&self.files).get(path).cloned();
            let content =
                content.ok_or_else(|| self.file_error(path, "read", ErrorKind::NotFound))?;
            if content.len() as u64 > max_bytes {
                return Err(ExecError::File {
                    vm_id: self.id.clone(),
                    path: path.to_owned(),
                    action: "read",
                    source: ProtocolError::FileTooLarge {
                        path: path.to_owned(),
                        limit_bytes: max_bytes,
                    },
                });
            }
            // In chunks, as the real one.
            for chunk in content.chunks(airlock_protocol::client::FILE_CHUNK_BYTES) {
                sink.write_all(chunk).await.map_err(|e| ExecError::File {
                    vm_id: self.id.clone(),
                    path: path.to_owned(),
                    action: "read",
                    source: ProtocolError::HostStream {
                        path: path.to_owned(),
                        action: "write the destination",
                        source: e,
                    },
                })?;
            }
            Ok(FileInfo {
                path: path.to_owned(),
                size: content.len() as u64,
                sha256: sha256_hex(&content),
            })
        })
    }

    fn list_files<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<FileEntry>, ExecError>> {
        Box::pin(async move {
            if let Some(e) = self.gone() {
                return Err(e);
            }
            let dir = dir.trim_matches('/');
            let prefix = if dir.is_empty() || dir == "." {
                String::new()
            } else {
                format!("{dir}/")
            };
            let files = lock(&self.files);
            let entries: Vec<FileEntry> = files
                .iter()
                .filter_map(|(path, content)| {
                    let name = path.strip_prefix(&prefix)?;
                    (!name.contains('/')).then(|| FileEntry {
                        name: name.to_owned(),
                        size: content.len() as u64,
                        kind: FileKind::File,
                        mode: crate::DEFAULT_FILE_MODE,
                    })
                })
                .collect();
            if entries.is_empty() && !prefix.is_empty() {
                return Err(self.file_error(dir, "list", ErrorKind::NotFound));
            }
            Ok(entries)
        })
    }

    fn reset_repl(&self, language: Language) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(async move {
            if let Some(e) = self.gone() {
                return Err(e);
            }
            lock(&self.state.resets).push(language);
            Ok(())
        })
    }

    fn warm_repl(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(async move {
            self.state.warmed.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }

    fn install<'a>(
        &'a mut self,
        packages: &'a [String],
        _ca: &'a CaBundle,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutcome, PackageError>> {
        Box::pin(async move {
            let list = PackageList::parse(self.options.language, packages)?;
            if self.options.network.mode() != NetworkMode::Allowlist {
                return Err(PackageError::Install {
                    vm_id: Some(self.id.clone()),
                    packages: list.canonical().join(" "),
                    reason: "this VM has no network".into(),
                });
            }
            lock(&self.state.installs).push(packages.to_vec());
            Ok(ExecOutcome {
                stdout: format!("installed {}\n", list.canonical().join(" ")).into_bytes(),
                stderr: Vec::new(),
                results: Vec::new(),
                error: None,
                completion: completion(0),
            })
        })
    }

    fn destroy(&mut self) -> BoxFuture<'_, TeardownReport> {
        Box::pin(async move {
            if std::mem::replace(&mut self.destroyed, true) {
                return TeardownReport::nothing_left(self.id.clone());
            }
            self.ended.store(true, Ordering::SeqCst);
            self.state.destroyed.fetch_add(1, Ordering::SeqCst);
            TeardownReport {
                workdir_removed: true,
                ..TeardownReport::nothing_left(self.id.clone())
            }
        })
    }
}

/// A [`PackagePreparer`] that checks the specs as the real one does and
/// hands out a layer disk per list without installing anything; the first
/// preparation of a list reports an install
/// ([`Stage::InstallingPackages`]), later ones a cached layer. An install
/// checks its [`InstallLimits`] as the real one does (and records them),
/// and waits while installs are held ([`FakePackages::hold_installs`]).
#[derive(Clone, Default)]
pub struct FakePackages {
    prepared: Arc<Mutex<Vec<Vec<String>>>>,
    failures: Arc<Mutex<VecDeque<MakeError<PackageError>>>>,
    installs: Arc<Mutex<Vec<InstallLimits>>>,
    hold: Arc<InstallHold>,
}

/// Whether installs wait, and how many do.
#[derive(Default)]
struct InstallHold {
    held: std::sync::atomic::AtomicBool,
    waiting: AtomicUsize,
    released: tokio::sync::Notify,
}

/// Longest a held fake install waits.
const INSTALL_HOLD_DEADLINE: Duration = Duration::from_secs(30);

impl std::fmt::Debug for FakePackages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakePackages")
            .field("prepared", &self.prepared())
            .finish()
    }
}

impl FakePackages {
    /// The canonical lists prepared so far, in order.
    pub fn prepared(&self) -> Vec<Vec<String>> {
        lock(&self.prepared).clone()
    }

    /// The limits of each install (first preparation of a list), in
    /// order.
    pub fn installs(&self) -> Vec<InstallLimits> {
        lock(&self.installs).clone()
    }

    /// Installs from now on wait (at most 30 s) until
    /// [`FakePackages::release_installs`].
    pub fn hold_installs(&self) {
        self.hold.held.store(true, Ordering::SeqCst);
    }

    /// Lets the held installs go on, and later ones not wait.
    pub fn release_installs(&self) {
        self.hold.held.store(false, Ordering::SeqCst);
        self.hold.released.notify_waiters();
    }

    /// Installs waiting now.
    pub fn installs_waiting(&self) -> usize {
        self.hold.waiting.load(Ordering::SeqCst)
    }

    async fn wait_while_held(&self) {
        let hold = &self.hold;
        hold.waiting.fetch_add(1, Ordering::SeqCst);
        let wait = async {
            loop {
                let released = hold.released.notified();
                if !hold.held.load(Ordering::SeqCst) {
                    break;
                }
                released.await;
            }
        };
        let _ = tokio::time::timeout(INSTALL_HOLD_DEADLINE, wait).await;
        hold.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// The next non-empty preparation fails with `error()`.
    pub fn fail_next(&self, error: impl FnOnce() -> PackageError + Send + 'static) {
        lock(&self.failures).push_back(Box::new(error));
    }
}

impl PackagePreparer for FakePackages {
    fn prepare<'a>(
        &'a self,
        language: Language,
        packages: &'a [String],
        _tenant: &'a str,
        limits: &'a InstallLimits,
        observer: &'a mut dyn RunObserver,
    ) -> BoxFuture<'a, Result<Option<PreparedPackages>, PackageError>> {
        Box::pin(async move {
            let list = PackageList::parse(language, packages)?;
            if list.is_empty() {
                return Ok(None);
            }
            let failure = lock(&self.failures).pop_front();
            if let Some(make) = failure {
                return Err(make());
            }
            let canonical = list.canonical();
            let cached = lock(&self.prepared).contains(&canonical);
            if !cached {
                limits.install_memory_mib(&list)?;
                lock(&self.installs).push(*limits);
                observer.stage(Stage::InstallingPackages);
                self.wait_while_held().await;
            }
            lock(&self.prepared).push(canonical.clone());
            let key = sha256_hex(canonical.join("\n").as_bytes())[..16].to_owned();
            Ok(Some(PreparedPackages {
                disk: PackageDisk::read_only(format!("/fake/packages/{key}/layer.img").into()),
                report: PackagesReport {
                    layer: key,
                    packages: canonical.clone(),
                    installed: canonical,
                    cached,
                    install: None,
                },
            }))
        })
    }
}

/// A whole [`Scheduler`] over fakes: a cold source, a template source
/// (used when `config.restore_templates`), a pool source serving
/// `pool_shapes`, and fake packages. Each source records what it served.
#[derive(Debug, Clone)]
pub struct FakeSetup {
    /// The scheduler over the fakes.
    pub scheduler: Scheduler,
    /// Cold boots (ids `cold-N`).
    pub cold: FakeVmSource,
    /// Template restores (ids `template-N`).
    pub template: FakeVmSource,
    /// Warm pool takes (ids `pool-N`).
    pub pool: FakeVmSource,
    /// Package layers.
    pub packages: FakePackages,
}

impl Default for FakeSetup {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeSetup {
    /// Fakes with templates off, no pool, and the guest's own CA bundle
    /// (no host file is read).
    pub fn new() -> Self {
        Self::with(test_config(), &[])
    }

    /// Fakes with `config` and pools of `pool_shapes`.
    ///
    /// # Panics
    /// When `config` is invalid (a test's mistake).
    pub fn with(config: Config, pool_shapes: &[MachineShape]) -> Self {
        let (cold, template, pool) = (
            FakeVmSource::new("cold"),
            FakeVmSource::new("template"),
            FakeVmSource::new("pool"),
        );
        let packages = FakePackages::default();
        let parts = SchedulerParts {
            cold: Arc::new(cold.clone()),
            template: Some(Arc::new(template.clone())),
            pool: (!pool_shapes.is_empty()).then(|| {
                (
                    Arc::new(pool.clone()) as Arc<dyn VmSource>,
                    pool_shapes.to_vec(),
                )
            }),
            packages: Arc::new(packages.clone()),
            config,
        };
        let scheduler = match Scheduler::from_parts(parts) {
            Ok(scheduler) => scheduler,
            Err(e) => panic!("FakeSetup::with: invalid test configuration: {e}"),
        };
        Self {
            scheduler,
            cold,
            template,
            pool,
            packages,
        }
    }

    /// The source that served the VM `vm_id` (by its id's prefix).
    pub fn kind_of(&self, vm_id: &str) -> Option<SourceKind> {
        match vm_id.split('-').next()? {
            "cold" => Some(SourceKind::Cold),
            "template" => Some(SourceKind::Template),
            "pool" => Some(SourceKind::Pool),
            _ => None,
        }
    }

    /// VMs of every source handed out and not destroyed yet.
    pub fn live(&self) -> usize {
        self.cold.live() + self.template.live() + self.pool.live()
    }
}

/// A configuration for fakes: the defaults, with the guest's own CA
/// bundle (no host file is read) and a short run dir.
pub fn test_config() -> Config {
    Config {
        ca_bundle: CaBundle::GuestOnly,
        run_dir: std::env::temp_dir().join("airlock-fake"),
        max_concurrent_vms: 8,
        ..Config::default()
    }
}

/// `XX N C` of the fake's `bytes` program: the byte, the count, the chunk
/// size (at least 1).
fn bytes_spec(spec: &str) -> Option<(u8, usize, usize)> {
    let mut parts = spec.split_whitespace();
    let byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    let count = parts.next()?.parse().ok()?;
    let chunk = parts.next()?.parse::<usize>().ok()?.max(1);
    Some((byte, count, chunk))
}
