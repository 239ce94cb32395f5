//! One persistent interpreter: its driver process (in its own process group
//! and cgroup, as the sandbox user), the control pipes on its fds 3 and 4,
//! its output pipes, and the loop that runs one cell.

use super::control::{self, PayloadKind, Report};
use super::reports::{Incoming, ReportReader};
use crate::env_policy::build_env;
use crate::exec::{millis, open_cwd, sandboxed_command, Sink, KILL_REAP_TIMEOUT};
use crate::exec_cgroup::ExecCgroup;
use crate::output::{OutputBatcher, StreamKind};
use crate::reaper::{spawn_tracked, Tracked};
use crate::{sys, AgentConfig, AgentError};
use airlock_protocol::{CellError, EventBody, ExecResult, Language};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStderr, ChildStdout};
use tokio::sync::watch;

/// The drivers, embedded in the agent (see `drivers/`).
const PYTHON_DRIVER: &str = include_str!("drivers/python.py");
const NODE_DRIVER: &str = include_str!("drivers/node.js");
const BASH_DRIVER: &str = include_str!("drivers/bash.sh");

/// Runs the Python driver from `argv[1]` in a namespace of its own, so
/// that `__main__` (where cells run) holds nothing of it, and leaves
/// `sys.argv == ['-c']` as `python3 -c` has.
const PYTHON_BOOTSTRAP: &str = "exec(compile(__import__('sys').argv.pop(1),'<airlock-driver>','exec'),{'__name__':'airlock_driver'})";

/// Longest wait for a driver's answer to `reseed`.
const RESEED_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a JavaScript cell has to end on the `interrupt` command before
/// it gets a SIGINT. A cell that awaits ends on the command at once; one
/// still running after this runs synchronous code, where the REPL's
/// watchdog stops it on the SIGINT. A SIGINT sent at once could land
/// while the REPL has taken its listeners off around a script, which
/// kills node (the interpreter and its state are lost).
const JS_SIGINT_DELAY: Duration = Duration::from_millis(500);

/// Stderr of a driver that failed to start, kept for the error message.
const START_STDERR_BYTES: usize = 4096;

/// The driver's program and arguments for `language`.
pub(crate) fn driver_command(language: Language) -> (&'static str, Vec<&'static str>) {
    match language {
        Language::Python => ("python3", vec!["-c", PYTHON_BOOTSTRAP, PYTHON_DRIVER]),
        Language::Javascript => ("node", vec!["-e", NODE_DRIVER]),
        Language::Raw => ("bash", vec!["-c", BASH_DRIVER]),
    }
}

/// How a cell ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CellEnd {
    /// The cell's exit code (the interpreter's status when it died).
    pub exit_code: i32,
    /// The deadline passed.
    pub timed_out: bool,
    /// Whether the interpreter is gone (killed, died, or broke the
    /// control protocol).
    pub interpreter_lost: bool,
    /// Output cut at the caps.
    pub stdout_truncated: bool,
    /// Output cut at the caps.
    pub stderr_truncated: bool,
}

/// Why the cell loop stopped.
enum Stop {
    Done(i32),
    Died(Option<ExitStatus>),
    Violation(String),
    Killed,
}

/// A running driver.
pub(crate) struct Interpreter {
    language: Language,
    child: Child,
    _tracked: Tracked,
    pid: i32,
    cgroup: Option<ExecCgroup>,
    commands: pipe::Sender,
    reports: ReportReader<pipe::Receiver>,
    stdout: ChildStdout,
    stderr: ChildStderr,
}

impl Interpreter {
    /// Starts `language`'s driver and waits (up to `config.warm_timeout`)
    /// until it reports ready, its common modules imported.
    ///
    /// # Errors
    /// [`AgentError::Spawn`] when it cannot start or dies before ready,
    /// [`AgentError::Cgroup`] for its cgroup.
    pub(crate) async fn start(
        language: Language,
        config: &AgentConfig,
    ) -> Result<Self, AgentError> {
        let (program, args) = driver_command(language);
        let spawn_err = |source: std::io::Error| AgentError::Spawn {
            program: program.to_owned(),
            source,
        };
        let cwd = open_cwd(config, None).await?;
        let cgroup = match config.exec_cgroup_parent.clone() {
            Some(parent) => Some(crate::exec::blocking(move || ExecCgroup::create(&parent)).await?),
            None => None,
        };
        let flags = nix::fcntl::OFlag::O_CLOEXEC;
        let (commands_child, commands_ours) =
            nix::unistd::pipe2(flags).map_err(|e| spawn_err(e.into()))?;
        let (reports_ours, reports_child) =
            nix::unistd::pipe2(flags).map_err(|e| spawn_err(e.into()))?;
        let env = build_env(config, &[], &BTreeMap::new());
        let mut command = sandboxed_command(
            program,
            &args,
            &env,
            Stdio::null(),
            sys::ChildSetup {
                cwd: cwd.as_raw_fd(),
                cgroup_procs: cgroup.as_ref().map(ExecCgroup::procs_fd),
                run_as: config.run_as.map(|r| (r.uid, r.gid)),
                control: Some((commands_child.as_raw_fd(), reports_child.as_raw_fd())),
            },
        );
        let (mut child, tracked) = spawn_tracked(&mut command).map_err(spawn_err)?;
        drop((cwd, commands_child, reports_child));
        let pid = tracked.pid().as_raw();
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(spawn_err(std::io::Error::other("no output pipes")));
        };
        let mut interpreter = Self {
            language,
            child,
            _tracked: tracked,
            pid,
            cgroup,
            commands: pipe::Sender::from_owned_fd(commands_ours).map_err(spawn_err)?,
            reports: ReportReader::new(
                pipe::Receiver::from_owned_fd(reports_ours).map_err(spawn_err)?,
            ),
            stdout,
            stderr,
        };
        interpreter
            .wait_ready(config.warm_timeout)
            .await
            .map_err(|message| {
                spawn_err(std::io::Error::other(format!(
                    "the {language} cell driver did not start: {message}"
                )))
            })?;
        tracing::info!(%language, pid, "persistent interpreter ready");
        Ok(interpreter)
    }

    /// Waits for `ready`, keeping the start's stderr for the error.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut stderr = Vec::new();
        let (mut out_buf, mut err_buf) = (vec![0u8; 4096], vec![0u8; 4096]);
        let tail = |stderr: &[u8]| String::from_utf8_lossy(stderr).trim().to_owned();
        loop {
            tokio::select! {
                line = self.reports.next() => {
                    return match line {
                        Ok(Some(Incoming::Report(Report::Ready))) => Ok(()),
                        Ok(Some(other)) => Err(format!("unexpected report {other:?}")),
                        Ok(None) => {
                            let status = tokio::time::timeout(KILL_REAP_TIMEOUT, self.child.wait()).await;
                            Err(format!("it exited ({status:?}): {}", tail(&stderr)))
                        }
                        Err(e) => Err(e),
                    };
                }
                read = self.stdout.read(&mut out_buf) => if let Ok(0) | Err(_) = read {
                    return Err(format!("its stdout closed: {}", tail(&stderr)));
                },
                read = self.stderr.read(&mut err_buf) => match read {
                    Ok(0) | Err(_) => return Err(format!("its stderr closed: {}", tail(&stderr))),
                    Ok(n) => if stderr.len() < START_STDERR_BYTES {
                        stderr.extend_from_slice(&err_buf[..n]);
                    },
                },
                () = tokio::time::sleep_until(deadline) => {
                    return Err(format!("not ready within {timeout:?}: {}", tail(&stderr)));
                }
            }
        }
    }

    /// Whether the driver process still runs.
    pub(crate) fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Runs the cell in `path` as cell `id`, `env` set for it alone,
    /// streaming its output to `sink` until the driver reports it done.
    /// Past `timeout`, or when `cancel` turns true: SIGINT to the
    /// interpreter and SIGKILL to the cell's other processes; if the
    /// driver has not reported after `config.interrupt_grace`, the whole cgroup
    /// is killed and the interpreter is lost.
    pub(crate) async fn run_cell(
        &mut self,
        cell: CellInput<'_>,
        cancel: &mut watch::Receiver<bool>,
        sink: &Sink,
        config: &AgentConfig,
    ) -> Result<CellEnd, AgentError> {
        let command = control::encode_cell(cell.id, cell.path, cell.env)
            .map_err(AgentError::InvalidRequest)?;
        let mut output = CellOutput::new(config, sink);
        if let Err(e) = self.commands.write_all(&command).await {
            tracing::warn!(error = %e, "the cell driver does not read its commands");
            let stop = Stop::Died(None);
            return Ok(self
                .after_loss(stop, false, false, &mut output, config)
                .await);
        }
        let deadline = tokio::time::Instant::now() + cell.timeout;
        let mut kill_at: Option<tokio::time::Instant> = None;
        let mut sigint_at: Option<tokio::time::Instant> = None;
        let (mut timed_out, mut cancelled) = (false, false);
        let mut out_buf = vec![0u8; config.output_flush_bytes.max(4096)];
        let mut err_buf = vec![0u8; config.output_flush_bytes.max(4096)];
        let stop = loop {
            let interrupted = kill_at.is_some();
            tokio::select! {
                line = self.reports.next() => match line {
                    Ok(Some(Incoming::Report(Report::Done { id, exit_code }))) if id == cell.id => break Stop::Done(exit_code),
                    Ok(Some(Incoming::Payload { kind, id, body })) if id == cell.id => {
                        if let Err(message) = self.forward_payload(kind, &body, &mut output).await {
                            break Stop::Violation(message);
                        }
                    }
                    Ok(Some(other)) => break Stop::Violation(format!("unexpected report {}", describe(&other))),
                    Ok(None) => break Stop::Died(None),
                    Err(message) => break Stop::Violation(message),
                },
                status = self.child.wait() => break Stop::Died(status.ok()),
                read = self.stdout.read(&mut out_buf) => match read {
                    Ok(0) | Err(_) => break Stop::Died(None),
                    Ok(n) => output.push(StreamKind::Stdout, &out_buf[..n]).await,
                },
                read = self.stderr.read(&mut err_buf) => match read {
                    Ok(0) | Err(_) => break Stop::Died(None),
                    Ok(n) => output.push(StreamKind::Stderr, &err_buf[..n]).await,
                },
                () = sleep_until_opt(output.next_flush()), if output.next_flush().is_some() => {
                    output.on_timer().await;
                },
                () = tokio::time::sleep_until(deadline), if !interrupted => {
                    timed_out = true;
                    if cell.one_shot {
                        kill_at = Some(self.signal_group(Signal::SIGTERM, config));
                    } else {
                        let (kill, sigint) = self.interrupt(config).await;
                        (kill_at, sigint_at) = (Some(kill), sigint);
                    }
                },
                changed = cancel.changed(), if !interrupted => {
                    if changed.is_err() || *cancel.borrow() {
                        cancelled = changed.is_ok() && !cell.one_shot;
                        if cell.one_shot {
                            kill_at = Some(self.signal_group(Signal::SIGINT, config));
                        } else {
                            let (kill, sigint) = self.interrupt(config).await;
                            (kill_at, sigint_at) = (Some(kill), sigint);
                        }
                    }
                },
                () = sleep_until_opt(sigint_at), if sigint_at.is_some() => {
                    sigint_at = None;
                    self.send_sigint();
                },
                () = sleep_until_opt(kill_at), if interrupted => break Stop::Killed,
            }
        };
        match stop {
            Stop::Done(exit_code) => {
                self.drain_pending(&mut output).await;
                let (stdout_truncated, stderr_truncated) = output.finish().await;
                Ok(CellEnd {
                    exit_code: if cancelled { 130 } else { exit_code },
                    timed_out,
                    interpreter_lost: false,
                    stdout_truncated,
                    stderr_truncated,
                })
            }
            stop => Ok(self
                .after_loss(stop, timed_out, cancelled, &mut output, config)
                .await),
        }
    }

    /// Forwards a `result` or `cell_error` of the running cell, after the
    /// output the driver wrote before it (it flushed before reporting): in
    /// order with stdout and stderr.
    ///
    /// # Errors
    /// A payload that is not the JSON it announces: a violation.
    async fn forward_payload(
        &mut self,
        kind: PayloadKind,
        body: &[u8],
        output: &mut CellOutput<'_>,
    ) -> Result<(), String> {
        let event = match kind {
            PayloadKind::Result => serde_json::from_slice::<ExecResult>(body)
                .map(EventBody::Result)
                .map_err(|e| format!("a result that is not a MIME bundle: {e}"))?,
            PayloadKind::CellError => serde_json::from_slice::<CellError>(body)
                .map(EventBody::CellError)
                .map_err(|e| format!("a cell_error that is not one: {e}"))?,
        };
        self.drain_pending(output).await;
        output.flush_now().await;
        output.result(event, body.len()).await;
        // The driver waits for this before it goes on (Python): what it
        // prints next cannot overtake the result.
        if let Err(e) = self.commands.write_all(control::ACK).await {
            tracing::warn!(error = %e, "the cell driver does not read its acks");
        }
        Ok(())
    }

    /// Interrupts the cell: SIGINT to the interpreter (for JavaScript, an
    /// `interrupt` command first, and the SIGINT only at the returned
    /// instant if the cell still runs then: see [`JS_SIGINT_DELAY`]),
    /// SIGKILL to everything else of the cell. Returns when the grace ends
    /// and when a delayed SIGINT is due.
    async fn interrupt(
        &mut self,
        config: &AgentConfig,
    ) -> (tokio::time::Instant, Option<tokio::time::Instant>) {
        tracing::info!(language = %self.language, pid = self.pid, "interrupting the cell");
        let delayed = if self.language == Language::Javascript
            && self.commands.write_all(control::INTERRUPT).await.is_ok()
        {
            Some(tokio::time::Instant::now() + JS_SIGINT_DELAY)
        } else {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGINT);
            None
        };
        self.kill_cell_processes(Duration::from_millis(200)).await;
        (
            tokio::time::Instant::now() + config.interrupt_grace,
            delayed,
        )
    }

    /// The delayed SIGINT of [`Interpreter::interrupt`].
    fn send_sigint(&self) {
        tracing::info!(language = %self.language, pid = self.pid, "the cell runs on: SIGINT");
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGINT);
    }

    /// `signal` to the interpreter's whole process group, as a process
    /// exec is ended; returns when the grace ends.
    fn signal_group(&self, signal: Signal, config: &AgentConfig) -> tokio::time::Instant {
        tracing::info!(language = %self.language, pid = self.pid, %signal, "ending a one-shot run");
        let _ = kill(Pid::from_raw(-self.pid), signal);
        tokio::time::Instant::now() + config.kill_grace
    }

    /// Kills every process of the interpreter's cgroup but the
    /// interpreter (without a cgroup: nothing to tell them by).
    pub(crate) async fn kill_cell_processes(&self, deadline: Duration) {
        if let Some(cgroup) = &self.cgroup {
            if let Err(message) = cgroup.kill_all_but(self.pid, deadline).await {
                tracing::warn!(%message, "processes of a cell survive it");
            }
        }
    }

    /// The interpreter died, broke the protocol or must be killed: kill
    /// what is left, collect its status and the rest of its output.
    async fn after_loss(
        &mut self,
        stop: Stop,
        timed_out: bool,
        cancelled: bool,
        output: &mut CellOutput<'_>,
        config: &AgentConfig,
    ) -> CellEnd {
        if let Stop::Violation(message) = &stop {
            tracing::warn!(language = %self.language, %message, "the cell broke the control channel: interpreter killed");
        }
        let status = match stop {
            Stop::Died(Some(status)) => Some(status),
            _ => {
                // An interpreter whose pipe closed is most likely exiting:
                // its own status, if it comes within the grace. The others
                // are killed first.
                let wait = if matches!(stop, Stop::Died(None)) {
                    config.kill_grace
                } else {
                    self.kill_all();
                    KILL_REAP_TIMEOUT
                };
                match tokio::time::timeout(wait, self.child.wait()).await {
                    Ok(Ok(status)) => Some(status),
                    _ => {
                        self.kill_all();
                        tokio::time::timeout(KILL_REAP_TIMEOUT, self.child.wait())
                            .await
                            .ok()
                            .and_then(Result::ok)
                    }
                }
            }
        };
        // Nothing of the cell may outlive it, nor hold the pipes open.
        self.kill_all();
        self.drain_to_end(output, config.output_drain_timeout).await;
        let (stdout_truncated, stderr_truncated) = output.finish().await;
        let exit_code = if cancelled {
            130
        } else {
            status.map_or(137, crate::exec::exit_code)
        };
        CellEnd {
            exit_code,
            timed_out,
            interpreter_lost: true,
            stdout_truncated,
            stderr_truncated,
        }
    }

    /// SIGKILL to the interpreter's group and cgroup.
    fn kill_all(&self) {
        let _ = kill(Pid::from_raw(-self.pid), Signal::SIGKILL);
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
        }
    }

    /// Reads what the pipes hold now (the driver flushed before `done`).
    async fn drain_pending(&mut self, output: &mut CellOutput<'_>) {
        let mut buf = vec![0u8; 64 * 1024];
        for kind in [StreamKind::Stdout, StreamKind::Stderr] {
            loop {
                let pending = match kind {
                    StreamKind::Stdout => sys::pipe_pending_bytes(self.stdout.as_fd()),
                    StreamKind::Stderr => sys::pipe_pending_bytes(self.stderr.as_fd()),
                };
                if !matches!(pending, Ok(n) if n > 0) {
                    break;
                }
                let read = match kind {
                    StreamKind::Stdout => self.stdout.read(&mut buf).await,
                    StreamKind::Stderr => self.stderr.read(&mut buf).await,
                };
                match read {
                    Ok(n) if n > 0 => output.push(kind, &buf[..n]).await,
                    _ => break,
                }
            }
        }
    }

    /// Reads both pipes to their end (or `timeout`) after a death.
    async fn drain_to_end(&mut self, output: &mut CellOutput<'_>, timeout: Duration) {
        let give_up = tokio::time::Instant::now() + timeout;
        let (mut out_open, mut err_open) = (true, true);
        let mut out_buf = vec![0u8; 64 * 1024];
        let mut err_buf = vec![0u8; 64 * 1024];
        while out_open || err_open {
            tokio::select! {
                read = self.stdout.read(&mut out_buf), if out_open => match read {
                    Ok(0) | Err(_) => out_open = false,
                    Ok(n) => output.push(StreamKind::Stdout, &out_buf[..n]).await,
                },
                read = self.stderr.read(&mut err_buf), if err_open => match read {
                    Ok(0) | Err(_) => err_open = false,
                    Ok(n) => output.push(StreamKind::Stderr, &err_buf[..n]).await,
                },
                () = tokio::time::sleep_until(give_up) => break,
            }
        }
    }

    /// Asks the driver to reseed its random state after a restore (Node's
    /// driver answers `error` when it cannot: see the module docs of
    /// [`crate::repl`]).
    ///
    /// # Errors
    /// A message when it does not answer `reseeded` in time.
    pub(crate) async fn reseed(&mut self, seed: u32) -> Result<(), String> {
        self.commands
            .write_all(&control::encode_reseed(seed))
            .await
            .map_err(|e| format!("write: {e}"))?;
        match tokio::time::timeout(RESEED_TIMEOUT, self.reports.next()).await {
            Ok(Ok(Some(Incoming::Report(Report::Reseeded)))) => Ok(()),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(_) => Err(format!("no answer within {RESEED_TIMEOUT:?}")),
        }
    }

    /// Kills the interpreter and everything of it, and removes its cgroup.
    pub(crate) async fn end(mut self) {
        self.kill_all();
        let _ = tokio::time::timeout(KILL_REAP_TIMEOUT, self.child.wait()).await;
        if let Some(cgroup) = self.cgroup.take() {
            if let Err(message) = cgroup.remove(KILL_REAP_TIMEOUT).await {
                tracing::warn!(%message, "interpreter cgroup not removed");
            }
        }
    }
}

/// What a cell is.
pub(crate) struct CellInput<'a> {
    /// Its id on the control channel.
    pub id: u64,
    /// The file holding its code.
    pub path: &'a Path,
    /// Variables set for it alone.
    pub env: &'a BTreeMap<String, String>,
    /// Its deadline.
    pub timeout: Duration,
    /// A one-off run: interrupts end the interpreter as they end a process
    /// (SIGTERM on the deadline, SIGINT on a cancel, to the group), and
    /// the exit code is its status.
    pub one_shot: bool,
}

/// A cell's two output streams: batched, capped, flushed on a timer.
struct CellOutput<'a> {
    sink: &'a Sink,
    stdout: OutputBatcher,
    stderr: OutputBatcher,
    flush_interval: Duration,
    flush_at: Option<tokio::time::Instant>,
    results: ResultBudget,
}

impl<'a> CellOutput<'a> {
    fn new(config: &AgentConfig, sink: &'a Sink) -> Self {
        Self {
            sink,
            stdout: OutputBatcher::new(
                StreamKind::Stdout,
                config.stdout_cap_bytes,
                config.output_flush_bytes,
            ),
            stderr: OutputBatcher::new(
                StreamKind::Stderr,
                config.stderr_cap_bytes,
                config.output_flush_bytes,
            ),
            flush_interval: config.output_flush_interval,
            flush_at: None,
            results: ResultBudget::new(config),
        }
    }

    /// Sends what both streams hold now (a result comes next).
    async fn flush_now(&mut self) {
        for kind in [StreamKind::Stdout, StreamKind::Stderr] {
            if let Some(chunk) = self.batcher(kind).flush_on_timer() {
                self.sink.send(kind, chunk).await;
            }
        }
        self.flush_at = (self.stdout.has_pending() || self.stderr.has_pending())
            .then(|| tokio::time::Instant::now() + self.flush_interval);
    }

    /// Sends a result (`wire_bytes` long as the driver encoded it) within
    /// the budget; past it, a marker on stderr instead, once.
    async fn result(&mut self, event: EventBody, wire_bytes: usize) {
        match self.results.admit(wire_bytes) {
            Admit::Send => self.sink.send_body(event).await,
            Admit::Drop(Some(marker)) => self.push(StreamKind::Stderr, marker.as_bytes()).await,
            Admit::Drop(None) => {}
        }
    }

    fn batcher(&mut self, kind: StreamKind) -> &mut OutputBatcher {
        match kind {
            StreamKind::Stdout => &mut self.stdout,
            StreamKind::Stderr => &mut self.stderr,
        }
    }

    async fn push(&mut self, kind: StreamKind, bytes: &[u8]) {
        for chunk in self.batcher(kind).push(bytes) {
            self.sink.send(kind, chunk).await;
        }
        if self.flush_at.is_none() && (self.stdout.has_pending() || self.stderr.has_pending()) {
            self.flush_at = Some(tokio::time::Instant::now() + self.flush_interval);
        }
    }

    fn next_flush(&self) -> Option<tokio::time::Instant> {
        self.flush_at
    }

    async fn on_timer(&mut self) {
        for kind in [StreamKind::Stdout, StreamKind::Stderr] {
            if let Some(chunk) = self.batcher(kind).flush_on_timer() {
                self.sink.send(kind, chunk).await;
            }
        }
        self.flush_at = (self.stdout.has_pending() || self.stderr.has_pending())
            .then(|| tokio::time::Instant::now() + self.flush_interval);
    }

    /// Sends what is pending; returns whether each stream was truncated.
    async fn finish(&mut self) -> (bool, bool) {
        for kind in [StreamKind::Stdout, StreamKind::Stderr] {
            if let Some(chunk) = self.batcher(kind).finish() {
                self.sink.send(kind, chunk).await;
            }
        }
        self.flush_at = None;
        (self.stdout.truncated(), self.stderr.truncated())
    }
}

/// What a cell's results may take: [`AgentConfig::results_cap_bytes`] in
/// all, each under the event line limit.
#[derive(Debug)]
struct ResultBudget {
    cap_bytes: u64,
    max_line_bytes: usize,
    used_bytes: u64,
    dropped: bool,
}

/// Whether a result goes out.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Within the budget.
    Send,
    /// Over it; the marker line to add to stderr (the first time).
    Drop(Option<String>),
}

/// Room on a `result` event's line beyond its payload (`{"op":...,"type":"result",`).
const RESULT_LINE_OVERHEAD: usize = 64;

impl ResultBudget {
    fn new(config: &AgentConfig) -> Self {
        Self {
            cap_bytes: config.results_cap_bytes,
            max_line_bytes: config.max_line_bytes,
            used_bytes: 0,
            dropped: false,
        }
    }

    fn admit(&mut self, wire_bytes: usize) -> Admit {
        let fits_line = wire_bytes.saturating_add(RESULT_LINE_OVERHEAD) <= self.max_line_bytes;
        let total = self.used_bytes.saturating_add(wire_bytes as u64);
        if fits_line && total <= self.cap_bytes {
            self.used_bytes = total;
            return Admit::Send;
        }
        let first = !std::mem::replace(&mut self.dropped, true);
        Admit::Drop(first.then(|| {
            format!(
                "\n[airlock: a result of {wire_bytes} bytes dropped: a cell's results are capped at {} bytes, each at {} bytes]\n",
                self.cap_bytes,
                self.max_line_bytes.saturating_sub(RESULT_LINE_OVERHEAD)
            )
        }))
    }
}

/// A report or payload, short, for a log line.
fn describe(incoming: &Incoming) -> String {
    match incoming {
        Incoming::Report(report) => format!("{report:?}"),
        Incoming::Payload { kind, id, body } => {
            format!(
                "{kind:?} of cell {} ({} bytes)",
                control::format_id(*id),
                body.len()
            )
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Milliseconds since `start`.
pub(crate) fn elapsed_ms(start: Instant) -> u64 {
    millis(start.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the driver's `NAME = a * b * ... - c` line.
    fn driver_constant(name: &str) -> usize {
        let prefix = format!("{name} = ");
        let line = PYTHON_DRIVER
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {name} in python.py"));
        let (product, minus) = line.split_once(" - ").unwrap_or((line, "0"));
        let product: usize = product
            .split(" * ")
            .map(|n| n.trim().parse::<usize>().unwrap())
            .product();
        product - minus.trim().parse::<usize>().unwrap()
    }

    /// The host's `node` runs the real driver (no agent: an agent's
    /// reseed would set the host's clock).
    #[tokio::test]
    async fn a_node_reseeds_math_random_once_and_refuses_a_context_seeded_before() {
        let home = tempfile::tempdir().unwrap();
        let config = AgentConfig {
            home: home.path().to_owned(),
            run_as: None,
            ..AgentConfig::default()
        };
        let mut node = Interpreter::start(Language::Javascript, &config)
            .await
            .unwrap();
        // Never drawn in its main context: seeded from the agent's seed.
        assert_eq!(node.reseed(u32::MAX).await, Ok(()));
        // Now it is: a second reseed cannot reach it.
        let again = node.reseed(7).await.unwrap_err();
        assert!(again.contains("seeded before"), "{again}");
        node.end().await;
    }

    #[test]
    fn the_python_driver_cuts_results_under_the_agents_payload_limit() {
        let cap = driver_constant("RESULT_CAP");
        // The bundle plus `"is_main_result":true,"truncated":true` and braces.
        assert!(cap + 256 <= control::MAX_PAYLOAD_BYTES, "{cap}");
        assert!(
            cap + 4096 >= control::MAX_PAYLOAD_BYTES,
            "{cap}: needlessly small"
        );
    }

    #[test]
    fn the_python_driver_sends_raw_pixels_within_the_hosts_limit() {
        use airlock_protocol::result::{MAX_RAW_PIXEL_BYTES, RAW_PIXELS_MIME};
        assert_eq!(driver_constant("PIXELS_MAX"), MAX_RAW_PIXEL_BYTES);
        assert!(PYTHON_DRIVER.contains(&format!("PIXELS_MIME = \"{RAW_PIXELS_MIME}\"")));
        // A cell's raw figures stay well within its results cap.
        let per_cell = driver_constant("PIXELS_PER_CELL");
        assert!(per_cell >= MAX_RAW_PIXEL_BYTES, "{per_cell}");
        assert!(
            (per_cell as u64) * 4 / 3
                <= crate::config::AgentConfig::default().results_cap_bytes / 2,
            "{per_cell}"
        );
    }
}
