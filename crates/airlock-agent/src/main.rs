//! `airlock-agent`: the thin shell around the `airlock_agent` library.
//!
//! In the guest it serves the virtio-serial ports `airlock.cmd` and
//! `airlock.event`; for tests and development it listens on two unix sockets
//! instead (`--cmd-socket`, `--event-socket`). Logs go to stderr (the guest
//! console).

use airlock_agent::exec_cgroup::{self, CGROUP2_ROOT, DEFAULT_PARENT};
use airlock_agent::ports::{
    find_port, is_host_gone, open_port, EofRetry, DEV_DIR, EOF_RETRY, HOST_GONE_GRACE, PORT_WAIT,
    SYS_VIRTIO_PORTS,
};
use airlock_agent::{prepare_home, ready_line, serve_with, AgentConfig, AgentError, Repls, RunAs};
use airlock_protocol::abi::{CMD_PORT_NAME, EVENT_PORT_NAME, SANDBOX_HOME};
use airlock_sys_util::IoError;
use clap::Parser;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;

/// Pause before reopening the ports after a transport failure.
const REOPEN_PAUSE: Duration = Duration::from_secs(1);

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "airlock-agent",
    version,
    about = "The Airlock guest agent: runs code and moves files for the host."
)]
struct Args {
    /// Listen on this unix socket for the command stream (development and
    /// tests; the default is the virtio-serial port `airlock.cmd`).
    #[arg(long, requires = "event_socket", value_name = "PATH")]
    cmd_socket: Option<PathBuf>,
    /// Listen on this unix socket for the event stream.
    #[arg(long, requires = "cmd_socket", value_name = "PATH")]
    event_socket: Option<PathBuf>,
    /// The sandbox home: user code's working directory, root of file paths.
    #[arg(long, default_value = SANDBOX_HOME, value_name = "DIR")]
    home: PathBuf,
    /// Run user code as UID:GID (default 1000:1000 when root; ignored when
    /// the agent is not root).
    #[arg(long, value_name = "UID:GID")]
    run_as: Option<RunAs>,
    /// Longest request or event line, in bytes.
    #[arg(long, default_value_t = AgentConfig::default().max_line_bytes)]
    max_line_bytes: usize,
    /// Standard output kept per exec before truncation.
    #[arg(long, default_value_t = AgentConfig::default().stdout_cap_bytes)]
    stdout_cap_bytes: u64,
    /// Standard error kept per exec before truncation.
    #[arg(long, default_value_t = AgentConfig::default().stderr_cap_bytes)]
    stderr_cap_bytes: u64,
    /// Largest file written or read.
    #[arg(long, default_value_t = AgentConfig::default().max_file_bytes)]
    max_file_bytes: u64,
    /// Give each exec its own cgroup under this directory (on cgroup2).
    /// Default when root: /sys/fs/cgroup/airlock-exec if /sys/fs/cgroup is
    /// cgroup2; without one, execs are killed by process group only.
    #[arg(long, value_name = "DIR")]
    exec_cgroup_parent: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(filter)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("airlock-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("airlock-agent: fatal: {e}");
            ExitCode::FAILURE
        }
    }
}

fn config_from(args: &Args) -> AgentConfig {
    let root = nix::unistd::geteuid().is_root();
    let run_as = if root {
        Some(args.run_as.unwrap_or(RunAs::SANDBOX))
    } else {
        if let Some(run_as) = args.run_as {
            tracing::warn!(%run_as, "--run-as ignored: the agent is not root");
        }
        None
    };
    AgentConfig {
        home: args.home.clone(),
        run_as,
        max_line_bytes: args.max_line_bytes,
        stdout_cap_bytes: args.stdout_cap_bytes,
        stderr_cap_bytes: args.stderr_cap_bytes,
        max_file_bytes: args.max_file_bytes,
        exec_cgroup_parent: exec_cgroup_parent(args, root),
        ..AgentConfig::default()
    }
}

/// The exec cgroup parent: the flag, else the guest default when root and
/// `/sys/fs/cgroup` is cgroup2, else none (with a warning).
fn exec_cgroup_parent(args: &Args, root: bool) -> Option<PathBuf> {
    if let Some(parent) = &args.exec_cgroup_parent {
        return Some(parent.clone());
    }
    if root && exec_cgroup::is_cgroup2(Path::new(CGROUP2_ROOT)) {
        return Some(PathBuf::from(DEFAULT_PARENT));
    }
    tracing::warn!(
        "no cgroup2 at {CGROUP2_ROOT} (or not root): execs are killed by process group only, \
         and a process that calls setsid() can outlive its exec"
    );
    None
}

async fn run(args: Args) -> Result<(), AgentError> {
    let config = config_from(&args);
    config.validate()?;
    if let Some(parent) = config.exec_cgroup_parent.clone() {
        tokio::task::spawn_blocking(move || exec_cgroup::prepare_parent(&parent))
            .await
            .map_err(|e| AgentError::Config(format!("preparing the exec cgroups failed: {e}")))??;
    }
    let config = Arc::new(config);
    // The persistent interpreters outlive host connections (a template's
    // clone is served by the same agent after its restore).
    let repls = Arc::new(Repls::new(Arc::clone(&config)));
    let for_home = Arc::clone(&config);
    tokio::task::spawn_blocking(move || prepare_home(&for_home))
        .await
        .map_err(|e| AgentError::Config(format!("preparing the home failed: {e}")))??;
    if std::process::id() == 1 {
        tracing::info!("running as PID 1: reaping orphans");
        tokio::spawn(async {
            if let Err(e) = airlock_agent::reaper::reap_orphans().await {
                tracing::error!(error = %e, "cannot reap orphans");
            }
        });
    }
    match (&args.cmd_socket, &args.event_socket) {
        (Some(cmd), Some(event)) => serve_sockets(cmd, event, config, repls).await,
        _ => serve_ports(config, repls).await,
    }
}

/// Development mode: accept one connection on each socket, serve until the
/// command stream ends, accept again.
async fn serve_sockets(
    cmd: &Path,
    event: &Path,
    config: Arc<AgentConfig>,
    repls: Arc<Repls>,
) -> Result<(), AgentError> {
    let cmd_listener = bind(cmd)?;
    let event_listener = bind(event)?;
    tracing::info!(cmd = %cmd.display(), event = %event.display(), home = %config.home.display(), "listening");
    eprintln!("{}", ready_line());
    loop {
        let (cmd_conn, event_conn) =
            tokio::try_join!(cmd_listener.accept(), event_listener.accept())
                .map_err(AgentError::Transport)?;
        tracing::info!("host connected");
        let served = serve_with(
            cmd_conn.0,
            event_conn.0,
            Arc::clone(&config),
            Arc::clone(&repls),
        )
        .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "session ended with an error");
        }
    }
}

/// Binds a unix socket, replacing a stale socket file.
fn bind(path: &Path) -> Result<UnixListener, AgentError> {
    let io_err = |action, source| AgentError::from(IoError::new(action, path, source));
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(|e| io_err("remove the stale socket", e))?;
        }
    }
    UnixListener::bind(path).map_err(|e| io_err("listen on", e))
}

/// Guest mode: find the ports by name and serve them forever; reopen them
/// after a transport failure.
async fn serve_ports(config: Arc<AgentConfig>, repls: Arc<Repls>) -> Result<(), AgentError> {
    // In the guest the agent is what reports on user code: an OOM must take
    // the code, never the agent (each exec gets the ordinary score back).
    airlock_agent::protect_from_oom_killer();
    let find = |name: &'static str| {
        tokio::task::spawn_blocking(move || {
            find_port(
                Path::new(SYS_VIRTIO_PORTS),
                Path::new(DEV_DIR),
                name,
                PORT_WAIT,
            )
        })
    };
    let (cmd, event) = tokio::join!(find(CMD_PORT_NAME), find(EVENT_PORT_NAME));
    let join_err =
        |e: tokio::task::JoinError| AgentError::Config(format!("port lookup failed: {e}"));
    let (cmd, event) = (cmd.map_err(join_err)??, event.map_err(join_err)??);
    tracing::info!(cmd = %cmd.display(), event = %event.display(), "virtio-serial ports found");
    let mut ready = false;
    loop {
        let opened = async {
            Ok::<_, AgentError>((
                open_port(&cmd, false).await?,
                open_port(&event, true).await?,
            ))
        }
        .await;
        match opened {
            Ok((cmd_port, event_port)) => {
                if !ready {
                    eprintln!("{}", ready_line());
                    ready = true;
                }
                let host_gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let result = serve_with(
                    HostWatch {
                        inner: EofRetry::new(cmd_port, EOF_RETRY)
                            .with_host_gone_after(HOST_GONE_GRACE),
                        gone: Arc::clone(&host_gone),
                    },
                    event_port,
                    Arc::clone(&config),
                    Arc::clone(&repls),
                )
                .await;
                if host_gone.load(std::sync::atomic::Ordering::SeqCst) {
                    // The host that owned this VM is gone (killed, crashed):
                    // end, so that init powers the VM off.
                    eprintln!("airlock-agent: the host is gone: exiting");
                    repls.shutdown().await;
                    return Ok(());
                }
                tracing::warn!(?result, "port session ended: reopening the ports");
            }
            Err(e) => tracing::error!(error = %e, "cannot open the ports"),
        }
        tokio::time::sleep(REOPEN_PAUSE).await;
    }
}

/// The command port's reader, noting when it ends because the host is gone
/// (the error itself may be wrapped or dropped on its way out of `serve`).
struct HostWatch<R> {
    inner: R,
    gone: Arc<std::sync::atomic::AtomicBool>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for HostWatch<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Err(e)) = &polled {
            if is_host_gone(e) {
                self.gone.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        polled
    }
}
