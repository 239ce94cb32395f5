//! Running user code and installing packages, one process per request.
//!
//! The pure part builds an [`ExecPlan`] (program, arguments, code on stdin
//! or not, extra environment). The effectful part ([`run`]) spawns it as the
//! sandbox user in a fresh process group and its own cgroup
//! ([`crate::exec_cgroup`], when configured), in the home (or a directory
//! beneath it), with a clean environment; streams its output through
//! [`crate::output::OutputBatcher`]s; enforces the deadline (SIGTERM to the
//! group, SIGKILL to the group and the cgroup after the grace); and kills
//! what is left of the group and the cgroup when the main process ends, so
//! neither a background child holding the pipes nor a process that left the
//! session (`setsid`) outlives the exec.

use crate::env_policy::{build_env, check_env};
use crate::exec_cgroup::ExecCgroup;
use crate::home::Home;
use crate::output::{OutputBatcher, StreamKind};
use crate::packages::{self, InstallTarget};
use crate::reaper::spawn_tracked;
use crate::rel_path::RelPath;
use crate::{sys, AgentConfig, AgentError};
use airlock_protocol::{Completion, Data, Event, EventBody, Language, OpId};
use airlock_sys_util::{signal_group, ChildExit};
use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};

/// Code up to this size goes on the command line (`-c`/`-e`); larger code,
/// or code holding a NUL byte, goes on stdin. The kernel caps one argument
/// at 128 KiB (`MAX_ARG_STRLEN`).
pub const MAX_ARG_CODE_BYTES: usize = 64 * 1024;

/// How `bash` runs code given on stdin.
const RAW_FROM_STDIN: &str = "eval \"$(cat)\"";

/// Longest package name accepted by `install_packages`.
pub const MAX_PACKAGE_NAME_BYTES: usize = 256;

/// Most packages in one `install_packages`.
pub const MAX_PACKAGES: usize = 100;

/// After the drain deadline, a pipe that yields nothing for this long is
/// considered finished.
const DRAIN_IDLE: Duration = Duration::from_millis(20);

/// Deadline for the kernel to deliver a SIGKILL and the child to be reaped.
pub(crate) const KILL_REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecPlan {
    /// The program, looked up in the child's `PATH`.
    pub program: &'static str,
    /// Its arguments.
    pub args: Vec<String>,
    /// Code to write on stdin (else stdin is `/dev/null`).
    pub stdin: Option<String>,
    /// Environment the agent adds for this tool (before the host's).
    pub extra_env: Vec<(&'static str, &'static str)>,
}

/// The plan for running `code` in `language`.
pub fn plan_exec(language: Language, code: &str) -> ExecPlan {
    let on_stdin = code.len() > MAX_ARG_CODE_BYTES || code.contains('\0');
    let (program, inline, from_stdin): (_, &[&str], &[&str]) = match language {
        Language::Python => ("python3", &["-c"], &["-"]),
        Language::Javascript => ("node", &["-e"], &["-"]),
        // The whole script is read before it runs, so the code's own reads
        // of stdin see end-of-file, as with /dev/null. (`source
        // /proc/self/fd/0` fails: the pipe belongs to root, the code runs
        // as the sandbox user.)
        Language::Raw => ("bash", &["-c"], &["-c", RAW_FROM_STDIN]),
    };
    let mut args: Vec<String> = if on_stdin { from_stdin } else { inline }
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    if !on_stdin {
        args.push(code.to_owned());
    }
    ExecPlan {
        program,
        args,
        stdin: on_stdin.then(|| code.to_owned()),
        extra_env: Vec::new(),
    }
}

/// Checks one package name: not empty, not an option (`-...`), no
/// whitespace or control characters, bounded length.
///
/// # Errors
/// [`AgentError::InvalidRequest`] naming the package.
pub fn check_package_name(name: &str) -> Result<(), AgentError> {
    let refuse = |why: &str| {
        let shown: String = name.chars().take(64).collect();
        Err(AgentError::InvalidRequest(format!(
            "package {shown:?} refused: {why}"
        )))
    };
    if name.is_empty() {
        return refuse("empty name");
    }
    if name.starts_with('-') {
        return refuse("names may not start with '-' (options are not accepted)");
    }
    if name.len() > MAX_PACKAGE_NAME_BYTES {
        return refuse(&format!("longer than {MAX_PACKAGE_NAME_BYTES} bytes"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("whitespace or control characters");
    }
    Ok(())
}

/// The plan for installing packages with the language's package manager:
/// into the sandbox user's own space ([`InstallTarget::Home`]) or into the
/// writable package layer ([`InstallTarget::Layer`], see
/// [`crate::packages`]). Package names are operands after the options, so
/// none can be read as an option.
///
/// # Errors
/// [`AgentError::Unsupported`] for `raw`, [`AgentError::InvalidRequest`] for
/// an empty list, too many packages or a refused name.
pub fn plan_install(
    language: Language,
    packages: &[String],
    target: &InstallTarget,
) -> Result<ExecPlan, AgentError> {
    if packages.is_empty() {
        return Err(AgentError::InvalidRequest("no packages to install".into()));
    }
    if packages.len() > MAX_PACKAGES {
        return Err(AgentError::InvalidRequest(format!(
            "{} packages: at most {MAX_PACKAGES} per request",
            packages.len()
        )));
    }
    packages.iter().try_for_each(|p| check_package_name(p))?;
    let layer = matches!(target, InstallTarget::Layer);
    let (program, mut args, mut extra_env): (_, Vec<String>, _) = match (language, target) {
        (Language::Python, _) => (
            "python3",
            [
                "-m",
                "pip",
                "install",
                "--no-cache-dir",
                "--no-input",
                "--compile",
            ]
            .map(String::from)
            .into(),
            // Debian marks its Python externally managed (PEP 668); the
            // install goes to the home or the layer, never the system's.
            vec![
                ("PIP_BREAK_SYSTEM_PACKAGES", "1"),
                ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
            ],
        ),
        (Language::Javascript, _) => (
            "npm",
            ["install", "--no-audit", "--no-fund", "--no-update-notifier"]
                .map(String::from)
                .into(),
            vec![("NPM_CONFIG_UPDATE_NOTIFIER", "false")],
        ),
        (Language::Raw, _) => {
            return Err(AgentError::Unsupported(
                "install_packages needs python or javascript (raw has no package manager)".into(),
            ))
        }
    };
    match (language, target) {
        (Language::Python, InstallTarget::Home(_)) => args.push("--user".into()),
        (Language::Python, InstallTarget::Layer) => {
            args.extend(["--target".into(), packages::PYTHON_DIR.into()]);
        }
        (_, InstallTarget::Home(home)) => args.extend(["--prefix".into(), home.clone()]),
        (_, InstallTarget::Layer) => {
            args.extend(["--prefix".into(), packages::NODE_PREFIX.into()]);
        }
    }
    if layer {
        // Downloads, builds and caches on the layer, not in the small /tmp.
        extra_env.extend([
            ("TMPDIR", packages::SCRATCH_DIR),
            ("npm_config_cache", packages::SCRATCH_DIR),
        ]);
    }
    args.push("--".into());
    args.extend(packages.iter().cloned());
    Ok(ExecPlan {
        program,
        args,
        stdin: None,
        extra_env,
    })
}

/// One process to run.
#[derive(Debug)]
pub(crate) struct ExecSpec {
    /// What to start.
    pub plan: ExecPlan,
    /// Variables from the host (checked here).
    pub env: BTreeMap<String, String>,
    /// Working directory relative to the home.
    pub cwd: Option<String>,
    /// Deadline.
    pub timeout: Duration,
    /// Whether output is sent to the host (not for `warm_repl`).
    pub forward_output: bool,
    /// Turns true when the host cancels the exec: SIGINT to the group,
    /// then SIGKILL after the grace.
    pub cancel: Option<watch::Receiver<bool>>,
    /// What the host writes to the process's stdin (`piped_process`);
    /// `None`: stdin is `/dev/null` (or the code, when it is too long for
    /// an argument).
    pub input: Option<StdinFeed>,
}

/// Most bytes queued for one process's stdin; past it `stdin` requests
/// are dropped (the process does not read, and the agent must not hold
/// what the host sends without end).
pub(crate) const MAX_STDIN_QUEUED_BYTES: usize = 8 << 20;

/// What the host sends to a process's stdin.
#[derive(Debug)]
pub(crate) enum StdinInput {
    /// Bytes to write.
    Data(bytes::Bytes),
    /// Close the pipe once what came before is written.
    Close,
}

/// The receiving end of a process's stdin queue.
#[derive(Debug)]
pub(crate) struct StdinFeed {
    /// The queue, in the order the host sent.
    pub rx: mpsc::UnboundedReceiver<StdinInput>,
    /// Bytes queued and not yet written (shared with the sender, which
    /// checks [`MAX_STDIN_QUEUED_BYTES`]).
    pub queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Writes the host's stdin queue into `stdin` until a close, the end of
/// the queue (the exec ended) or a failed write (the process closed its
/// stdin); dropping `stdin` then closes the pipe.
async fn feed_stdin(mut stdin: tokio::process::ChildStdin, mut feed: StdinFeed) {
    while let Some(input) = feed.rx.recv().await {
        match input {
            StdinInput::Data(bytes) => {
                feed.queued
                    .fetch_sub(bytes.len(), std::sync::atomic::Ordering::Relaxed);
                if stdin.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            StdinInput::Close => return,
        }
    }
}

/// Where a process's output goes.
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    op: OpId,
    events: mpsc::Sender<Event>,
    forward: bool,
}

impl Sink {
    /// Output of `op`, sent to `events` when `forward` (else dropped).
    pub(crate) fn new(op: OpId, events: mpsc::Sender<Event>, forward: bool) -> Self {
        Self {
            op,
            events,
            forward,
        }
    }

    /// Sends one chunk of `kind` (dropped when not forwarding).
    pub(crate) async fn send(&self, kind: StreamKind, bytes: bytes::Bytes) {
        if !self.forward {
            return;
        }
        let data = Data::text_or_base64(bytes);
        let body = match kind {
            StreamKind::Stdout => EventBody::Stdout { data },
            StreamKind::Stderr => EventBody::Stderr { data },
        };
        // A closed channel means the host is gone: keep draining the pipe.
        let _ = self.events.send(Event::new(self.op, body)).await;
    }

    /// Sends a cell's `result` or `cell_error` (dropped when not
    /// forwarding).
    pub(crate) async fn send_body(&self, body: EventBody) {
        if self.forward {
            let _ = self.events.send(Event::new(self.op, body)).await;
        }
    }
}

/// Kills the process group and the exec cgroup on drop unless disarmed
/// (cancelled execs).
struct GroupKiller {
    pgid: u32,
    armed: bool,
    /// The exec's cgroup, when the agent has one per exec.
    cgroup: Option<ExecCgroup>,
}

impl GroupKiller {
    fn signal(&self, signal: Signal) {
        if let Err(e) = signal_group(self.pgid, signal) {
            tracing::warn!(pgid = self.pgid, %signal, error = %e, "killpg failed")
        }
    }

    /// SIGKILL to the group and to everything in the cgroup (which holds
    /// processes that left the group too).
    fn kill_all(&self) {
        self.signal(Signal::SIGKILL);
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
        }
    }

    /// SIGKILL to what is left, once; the group id may be reused after.
    fn kill_rest(&mut self) {
        if self.armed {
            self.kill_all();
            self.armed = false;
        }
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill_rest();
    }
}

/// Runs a process to its end and reports how it ended; output events go to
/// `events` as they come.
pub(crate) async fn run(
    op: OpId,
    spec: ExecSpec,
    config: &AgentConfig,
    events: &mpsc::Sender<Event>,
) -> Result<Completion, AgentError> {
    if spec.timeout.is_zero() {
        return Err(AgentError::InvalidRequest(
            "timeout_ms must be above 0".into(),
        ));
    }
    check_env(&spec.env, config.max_env_bytes)?;
    let cwd = open_cwd(config, spec.cwd.clone()).await?;
    let env = build_env(config, &spec.plan.extra_env, &spec.env);
    let cgroup = match config.exec_cgroup_parent.clone() {
        Some(parent) => Some(blocking(move || ExecCgroup::create(&parent)).await?),
        None => None,
    };

    if spec.plan.stdin.is_some() && spec.input.is_some() {
        return Err(AgentError::InvalidRequest(format!(
            "a piped_process's code must fit in an argument ({MAX_ARG_CODE_BYTES} bytes, no NUL): its stdin is the host's"
        )));
    }
    let stdin = if spec.plan.stdin.is_some() || spec.input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut command = sandboxed_command(
        spec.plan.program,
        &spec.plan.args,
        &env,
        stdin,
        sys::ChildSetup {
            cwd: cwd.as_raw_fd(),
            cgroup_procs: cgroup.as_ref().map(ExecCgroup::procs_fd),
            run_as: config.run_as.map(|r| (r.uid, r.gid)),
            control: None,
        },
    );

    let started = Instant::now();
    let (mut child, tracked) = spawn_tracked(&mut command).map_err(|source| AgentError::Spawn {
        program: spec.plan.program.to_owned(),
        source,
    })?;
    let spawn_ms = millis(started.elapsed());
    drop(cwd);
    let mut group = GroupKiller {
        pgid: u32::try_from(tracked.pid().as_raw()).unwrap_or_default(),
        armed: true,
        cgroup,
    };
    tracing::debug!(
        op,
        program = spec.plan.program,
        pid = tracked.pid().as_raw(),
        cgroup = ?group.cgroup.as_ref().map(ExecCgroup::dir),
        spawn_ms,
        "spawned"
    );

    let feeder = match (child.stdin.take(), spec.plan.stdin, spec.input) {
        (Some(mut stdin), Some(code), _) => Some(AbortOnDrop(tokio::spawn(async move {
            // The process may exit without reading: EPIPE is fine.
            let _ = stdin.write_all(code.as_bytes()).await;
        }))),
        (Some(stdin), None, Some(feed)) => Some(AbortOnDrop(tokio::spawn(feed_stdin(stdin, feed)))),
        _ => None,
    };
    let sink = Sink {
        op,
        events: events.clone(),
        forward: spec.forward_output,
    };
    let (exited_tx, exited_rx) = watch::channel(false);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let pumps = async {
        tokio::join!(
            pump(
                stdout,
                StreamKind::Stdout,
                config.stdout_cap_bytes,
                config,
                &sink,
                exited_rx.clone()
            ),
            pump(
                stderr,
                StreamKind::Stderr,
                config.stderr_cap_bytes,
                config,
                &sink,
                exited_rx.clone()
            ),
        )
    };
    let waiter = async {
        let ended = wait_with_deadline(
            &mut child,
            &group,
            spec.timeout,
            config.kill_grace,
            spec.cancel.clone(),
        )
        .await;
        let duration_ms = millis(started.elapsed());
        // The main process is gone: nothing of its group may outlive it.
        group.kill_rest();
        let _ = exited_tx.send(true);
        ended.map(|(status, timed_out)| (status, timed_out, duration_ms))
    };
    let ((stdout_truncated, stderr_truncated), ended) = tokio::join!(pumps, waiter);
    drop(feeder);
    drop(tracked);
    if let Some(cgroup) = group.cgroup.take() {
        // Processes that left the session die here, before the exec ends.
        if let Err(message) = cgroup.remove(KILL_REAP_TIMEOUT).await {
            tracing::warn!(op, %message, "exec cgroup not removed");
        }
    }
    let (status, timed_out, duration_ms) =
        ended.map_err(|message| AgentError::Internal { op, message })?;
    let exit_code = exit_code(status);
    tracing::info!(
        op,
        program = spec.plan.program,
        exit_code,
        timed_out,
        duration_ms,
        "process ended"
    );
    Ok(Completion {
        state_lost: false,
        exit_code,
        timed_out,
        duration_ms,
        spawn_ms,
        stdout_truncated,
        stderr_truncated,
    })
}

/// The command for user code (an exec's process, a cell interpreter):
/// `env` only, output piped, its own process group, killed on drop, and
/// `setup` applied between fork and exec (cgroup, identity, cwd, control
/// fds). The identity is dropped there, after the cgroup join (which needs
/// root), not by std (which would drop it first).
pub(crate) fn sandboxed_command<S: AsRef<std::ffi::OsStr>>(
    program: &str,
    args: &[S],
    env: &BTreeMap<String, String>,
    stdin: Stdio,
    setup: sys::ChildSetup,
) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    sys::set_child_setup(&mut command, setup);
    command
}

/// Waits for the main process; past the deadline sends SIGTERM to the group
/// (on a cancel, SIGINT), then SIGKILL after the grace. Returns the status
/// and whether it timed out.
async fn wait_with_deadline(
    child: &mut tokio::process::Child,
    group: &GroupKiller,
    timeout: Duration,
    grace: Duration,
    cancel: Option<watch::Receiver<bool>>,
) -> Result<(ExitStatus, bool), String> {
    let wait_err = |e: std::io::Error| format!("waiting for the process failed: {e}");
    let deadline = tokio::time::Instant::now().checked_add(timeout);
    let cancelled = async {
        match cancel {
            // A dropped sender (the op is going away) is no cancel.
            Some(mut cancel) => {
                if cancel.wait_for(|c| *c).await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    };
    let until_deadline = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    let timed_out = tokio::select! {
        status = child.wait() => return status.map(|s| (s, false)).map_err(wait_err),
        () = until_deadline => true,
        () = cancelled => false,
    };
    group.signal(if timed_out {
        Signal::SIGTERM
    } else {
        Signal::SIGINT
    });
    if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
        return status.map(|s| (s, timed_out)).map_err(wait_err);
    }
    group.kill_all();
    match tokio::time::timeout(KILL_REAP_TIMEOUT, child.wait()).await {
        Ok(status) => status.map(|s| (s, timed_out)).map_err(wait_err),
        Err(_) => Err(format!(
            "the process survived SIGKILL for {KILL_REAP_TIMEOUT:?}"
        )),
    }
}

/// Reads one pipe to its end (or, once the main process has exited, to the
/// drain deadline), sending batched chunks. Returns whether it truncated.
async fn pump<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    kind: StreamKind,
    cap_bytes: u64,
    config: &AgentConfig,
    sink: &Sink,
    mut exited: watch::Receiver<bool>,
) -> bool {
    let Some(mut pipe) = pipe else { return false };
    let mut batcher = OutputBatcher::new(kind, cap_bytes, config.output_flush_bytes);
    let mut buf = vec![0u8; config.output_flush_bytes.max(4096)];
    let mut flush_at: Option<tokio::time::Instant> = None;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        let now = tokio::time::Instant::now();
        let give_up_at = drain_deadline.map(|d| d.max(now + DRAIN_IDLE));
        tokio::select! {
            read = pipe.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    for chunk in batcher.push(&buf[..n]) {
                        sink.send(kind, chunk).await;
                    }
                    flush_at = match (batcher.has_pending(), flush_at) {
                        (false, _) => None,
                        (true, None) => Some(tokio::time::Instant::now() + config.output_flush_interval),
                        (true, at) => at,
                    };
                }
            },
            () = sleep_until_opt(flush_at), if flush_at.is_some() => {
                if let Some(chunk) = batcher.flush_on_timer() {
                    sink.send(kind, chunk).await;
                }
                flush_at = batcher
                    .has_pending()
                    .then(|| tokio::time::Instant::now() + config.output_flush_interval);
            },
            _ = exited.changed(), if drain_deadline.is_none() => {
                drain_deadline = Some(tokio::time::Instant::now() + config.output_drain_timeout);
            },
            () = sleep_until_opt(give_up_at), if give_up_at.is_some() => {
                tracing::debug!(stream = kind.name(), "pipe still open after the drain deadline: a process escaped the group");
                break;
            },
        }
    }
    if let Some(chunk) = batcher.finish() {
        sink.send(kind, chunk).await;
    }
    if batcher.truncated() {
        tracing::info!(
            stream = kind.name(),
            dropped_bytes = batcher.dropped_bytes(),
            "output truncated"
        );
    }
    batcher.truncated()
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Opens the working directory beneath the home (`O_PATH`), for `fchdir`
/// in the child.
pub(crate) async fn open_cwd(
    config: &AgentConfig,
    cwd: Option<String>,
) -> Result<OwnedFd, AgentError> {
    let home = config.home.clone();
    blocking(move || {
        let path = cwd.unwrap_or_default();
        let rel = RelPath::parse(&path)?;
        Home::open(&home)?
            .open_beneath(&rel, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(|e| AgentError::from_resolve(&path, "open working directory", e))
    })
    .await
}

/// Runs blocking file-system work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(AgentError::Internal {
            op: 0,
            message: format!("blocking task failed: {e}"),
        })
    })
}

/// Exit code; 128+N for a death by signal N.
pub fn exit_code(status: ExitStatus) -> i32 {
    ChildExit::from(status).shell_code()
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn small_code_goes_on_the_command_line() {
        let p = plan_exec(Language::Python, "print(1)");
        assert_eq!(
            (p.program, p.args.as_slice()),
            ("python3", &["-c".to_owned(), "print(1)".to_owned()][..])
        );
        assert_eq!(p.stdin, None);
        assert_eq!(plan_exec(Language::Javascript, "1").args, ["-e", "1"]);
        assert_eq!(plan_exec(Language::Raw, "id").args, ["-c", "id"]);
    }

    #[test]
    fn big_code_or_nul_goes_on_stdin() {
        let big = "x".repeat(MAX_ARG_CODE_BYTES + 1);
        for (language, args) in [
            (Language::Python, vec!["-"]),
            (Language::Javascript, vec!["-"]),
            (Language::Raw, vec!["-c", RAW_FROM_STDIN]),
        ] {
            let p = plan_exec(language, &big);
            assert_eq!(p.args, args);
            assert_eq!(p.stdin.as_deref(), Some(big.as_str()));
            assert!(plan_exec(language, "a\0b").stdin.is_some());
        }
        assert!(plan_exec(Language::Raw, &"x".repeat(MAX_ARG_CODE_BYTES))
            .stdin
            .is_none());
    }

    #[test]
    fn install_plans_use_the_user_space_and_keep_names_as_operands() {
        let pkgs = vec!["requests==2.31".to_owned(), "@scope/pkg".to_owned()];
        let home = InstallTarget::Home("/home/sandbox".into());
        let py = plan_install(Language::Python, &pkgs, &home).unwrap();
        assert_eq!(py.program, "python3");
        assert!(py.args.contains(&"--user".to_owned()));
        assert!(py.args.contains(&"--no-cache-dir".to_owned()));
        assert!(py.args.ends_with(&pkgs));
        assert_eq!(py.args[py.args.len() - pkgs.len() - 1], "--");
        let js = plan_install(Language::Javascript, &pkgs, &home).unwrap();
        assert_eq!(js.program, "npm");
        assert!(js
            .args
            .windows(2)
            .any(|w| w == ["--prefix", "/home/sandbox"]));
        assert!(js.args.ends_with(&pkgs));
    }

    #[test]
    fn layer_installs_target_the_layer_with_scratch_on_it() {
        let pkgs = vec!["six==1.16.0".to_owned()];
        let py = plan_install(Language::Python, &pkgs, &InstallTarget::Layer).unwrap();
        assert!(py.args.windows(2).any(|w| w == ["--target", "/opt/python"]));
        assert!(!py.args.contains(&"--user".to_owned()));
        assert!(py.extra_env.contains(&("TMPDIR", "/opt/.install-tmp")));
        let js = plan_install(Language::Javascript, &pkgs, &InstallTarget::Layer).unwrap();
        assert!(js.args.windows(2).any(|w| w == ["--prefix", "/opt/node"]));
        assert!(js
            .extra_env
            .contains(&("npm_config_cache", "/opt/.install-tmp")));
    }

    #[test]
    fn install_refuses_options_and_odd_names() {
        for bad in [
            "-r",
            "--index-url=http://x",
            "",
            "a b",
            "a\nb",
            &"x".repeat(300),
        ] {
            let err = plan_install(
                Language::Python,
                &[bad.to_owned()],
                &InstallTarget::Home("/h".into()),
            )
            .unwrap_err();
            assert_eq!(
                err.kind(),
                airlock_protocol::ErrorKind::InvalidRequest,
                "{bad:?}"
            );
        }
        assert!(plan_install(Language::Python, &[], &InstallTarget::Home("/h".into())).is_err());
        let many = vec!["a".to_owned(); MAX_PACKAGES + 1];
        assert!(plan_install(Language::Python, &many, &InstallTarget::Home("/h".into())).is_err());
        let err =
            plan_install(Language::Raw, &["x".to_owned()], &InstallTarget::Layer).unwrap_err();
        assert_eq!(err.kind(), airlock_protocol::ErrorKind::Unsupported);
    }

    #[test]
    fn signal_deaths_report_128_plus_the_signal() {
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
    }
}
