//! Reaching the guest agent: connect to QEMU's virtio-serial sockets, check
//! who serves them, and wait until the agent answers, racing QEMU's death
//! (step 8 of "A VM's life" in `docs/architecture.md`).

use crate::error::{BootError, Result};
use crate::process::{console_tail, QemuProcess};
use airlock_protocol::client::{AgentInfo, Client};
use airlock_protocol::ProtocolError;
use airlock_sys_util::{retry_until, Backoff, ChildExit};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::UnixStream;
use tokio::time::Instant;

/// Jitter of every wait here: ±25%, so that parallel boots do not poll
/// in lockstep.
pub(crate) const JITTER: f64 = 0.25;

/// Waits between tries to connect to a socket QEMU is about to create:
/// 10 ms doubling to 500 ms.
const CONNECT_BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(10),
    max: Duration::from_millis(500),
    jitter: JITTER,
};

/// Waits before pinging again (the earlier pings still wait for their
/// pong, [`PONG_WAIT`]): 20 ms doubling to 80 ms.
const PING_WAIT: Backoff = Backoff {
    first: Duration::from_millis(20),
    max: Duration::from_millis(80),
    jitter: JITTER,
};

/// Where the VM's files are, for error messages.
pub struct GuestPaths<'a> {
    /// The VM id.
    pub vm_id: &'a str,
    /// The `airlock.cmd` socket.
    pub cmd_socket: &'a Path,
    /// The `airlock.event` socket.
    pub event_socket: &'a Path,
    /// The guest console log.
    pub console_log: &'a Path,
}

/// The files of [`GuestPaths`], owned: made from a VM's work dir.
#[derive(Debug, Clone)]
pub struct GuestFiles {
    vm_id: String,
    cmd_socket: PathBuf,
    event_socket: PathBuf,
    console_log: PathBuf,
}

impl GuestFiles {
    /// The agent's sockets and the console log of VM `vm_id` in `workdir`.
    pub fn in_workdir(vm_id: &str, workdir: &crate::workdir::WorkDir) -> Self {
        Self {
            vm_id: vm_id.to_owned(),
            cmd_socket: workdir.cmd_socket(),
            event_socket: workdir.event_socket(),
            console_log: workdir.console_log(),
        }
    }

    /// Borrowed, for [`wait_ready`] and [`race_death`].
    pub fn paths(&self) -> GuestPaths<'_> {
        GuestPaths {
            vm_id: &self.vm_id,
            cmd_socket: &self.cmd_socket,
            event_socket: &self.event_socket,
            console_log: &self.console_log,
        }
    }
}

/// A guest agent that answered: the channel to it and what it said.
#[derive(Debug)]
pub struct Agent {
    /// The protocol client.
    pub client: Client,
    /// The agent's version.
    pub info: AgentInfo,
    /// Where a restore's time went (`None` after a cold boot).
    pub restore: Option<RestoreTimings>,
}

/// Where a restore's time went, in milliseconds (in the VM's
/// [`crate::BootTimings`] and a run's [`crate::Timings`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestoreTimings {
    /// QMP connected and the device state loaded.
    pub load_ms: u64,
    /// `cont`.
    pub resume_ms: u64,
    /// The agent answered after the resume.
    pub agent_ms: u64,
    /// Entropy and clock sent and applied.
    pub reseed_ms: u64,
    /// Size of the saved state loaded: a template's device state, a
    /// paused session's whole machine, or a fork's pages that differ from
    /// its template (`docs/persistence.md`).
    pub state_bytes: u64,
}

/// Races `agent` (which yields `None` once its deadline passed) against the
/// machine's process exiting. The process exiting first is [`BootError::VmDied`]
/// with its logs; `None` is [`BootError::BootTimeout`] after `waited`.
///
/// # Errors
/// As above, or `agent`'s own error.
pub async fn race_death<T, F>(
    paths: &GuestPaths<'_>,
    process: &mut QemuProcess,
    waited: Duration,
    agent: F,
) -> Result<T, BootError>
where
    F: Future<Output = Result<Option<T>, BootError>>,
{
    let outcome = tokio::select! {
        ready = agent => ready,
        status = process.wait() => {
            return Err(BootError::VmDied {
                vm_id: paths.vm_id.to_owned(),
                when: "during boot",
                status: status.ok().map(ChildExit::from),
                stderr_tail: process.stderr_tail(),
                console_tail: console_tail(paths.console_log).await,
            });
        }
    };
    match outcome? {
        Some(ready) => Ok(ready),
        None => Err(BootError::BootTimeout {
            vm_id: paths.vm_id.to_owned(),
            after: waited,
            stderr_tail: process.stderr_tail(),
            console_tail: console_tail(paths.console_log).await,
        }),
    }
}

/// Connects to the agent of a booting VM and waits for its `pong`, until
/// `deadline`. Fails at once when QEMU exits.
///
/// # Errors
/// [`BootError::VmDied`], [`BootError::BootTimeout`], [`BootError::PeerMismatch`], or
/// [`BootError::Protocol`] for an agent with another protocol version.
pub async fn wait_ready(
    paths: &GuestPaths<'_>,
    qemu: &mut QemuProcess,
    deadline: Instant,
) -> Result<Agent, BootError> {
    let waited = deadline.saturating_duration_since(Instant::now());
    let peer = (qemu.pid(), qemu.uid());
    race_death(paths, qemu, waited, connect_agent(paths, peer, deadline)).await
}

/// Connects to the agent's sockets (served by the QEMU of `qemu`: its pid
/// and uid, [`QemuProcess::uid`]) and waits for its answer; `None` when the deadline passed. Does not
/// watch the machine: race it with [`race_death`].
///
/// # Errors
/// [`BootError::PeerMismatch`], or [`BootError::Protocol`] for an agent with
/// another protocol version.
pub async fn connect_agent(
    paths: &GuestPaths<'_>,
    qemu: (u32, u32),
    deadline: Instant,
) -> Result<Option<Agent>, BootError> {
    let cmd = connect(paths.cmd_socket, deadline).await;
    let event = connect(paths.event_socket, deadline).await;
    let (Some(cmd), Some(event)) = (cmd, event) else {
        return Ok(None);
    };
    for (stream, path) in [(&cmd, paths.cmd_socket), (&event, paths.event_socket)] {
        check_peer(stream, path, paths.vm_id, qemu)?;
    }
    let client = Client::new(event, cmd);
    let info = await_agent(&client, paths.vm_id, deadline).await?;
    Ok(info.map(|info| Agent {
        client,
        info,
        restore: None,
    }))
}

/// How long one ping waits for its pong. Pings are sent every
/// [`PING_WAIT`] meanwhile, each still waiting: a pong that comes after
/// the next ping was sent still counts (under load a restored agent's
/// first answer came after 20 ms, and waiting for the next one only lost
/// time).
const PONG_WAIT: Duration = Duration::from_secs(1);

/// A ping in flight.
type Ping<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<AgentInfo, ProtocolError>> + Send + 'a>>;

/// What woke [`await_agent`].
enum Woke {
    Hello(Result<AgentInfo, ProtocolError>),
    Pong(usize, Result<AgentInfo, ProtocolError>),
    PingDue,
}

/// Waits for the agent: its hello (sent when its port opens), or a pong
/// to one of the pings sent meanwhile (they cover an agent that was up
/// before we connected). `None` when the deadline passed.
async fn await_agent(
    client: &Client,
    vm_id: &str,
    deadline: Instant,
) -> Result<Option<AgentInfo>, BootError> {
    let refused = |e| BootError::Protocol {
        vm_id: vm_id.to_owned(),
        source: e,
    };
    let hello = client.hello(deadline.saturating_duration_since(Instant::now()));
    tokio::pin!(hello);
    let mut hello_pending = true;
    let mut pings: Vec<Ping<'_>> = Vec::new();
    let mut attempt = 0;
    let mut next_ping = Instant::now();
    while Instant::now() < deadline {
        if Instant::now() >= next_ping {
            // Short, capped gaps: a ping sent before the agent opened its
            // port is lost, and the next one must follow soon.
            let wait = PONG_WAIT.min(deadline.saturating_duration_since(Instant::now()));
            pings.push(Box::pin(client.handshake(wait)));
            next_ping = Instant::now() + PING_WAIT.delay(attempt);
            attempt += 1;
        }
        let pong = std::future::poll_fn(|cx| {
            for (index, ping) in pings.iter_mut().enumerate() {
                if let std::task::Poll::Ready(answer) = ping.as_mut().poll(cx) {
                    return std::task::Poll::Ready((index, answer));
                }
            }
            std::task::Poll::Pending
        });
        let woke = tokio::select! {
            said = &mut hello, if hello_pending => Woke::Hello(said),
            (index, answer) = pong => Woke::Pong(index, answer),
            () = tokio::time::sleep_until(next_ping.min(deadline)) => Woke::PingDue,
        };
        let answer = match woke {
            Woke::PingDue => continue,
            Woke::Hello(said) => {
                hello_pending = false;
                match said {
                    Ok(info) => Ok(info),
                    Err(e @ ProtocolError::VersionMismatch { .. }) => return Err(refused(e)),
                    // No hello (closed, or an agent up before we came):
                    // the pings decide.
                    Err(_) => continue,
                }
            }
            Woke::Pong(index, answer) => {
                drop(pings.swap_remove(index));
                answer
            }
        };
        match answer {
            Ok(info) => return Ok(Some(info)),
            Err(ProtocolError::Timeout { .. }) => {}
            Err(e @ ProtocolError::VersionMismatch { .. }) => return Err(refused(e)),
            // The channel closed (QEMU going away): let the caller's race
            // report the death, or time out.
            Err(_) => tokio::time::sleep_until(deadline).await,
        }
    }
    Ok(None)
}

/// Connects to a unix socket that QEMU is about to create, retrying with
/// backoff until the deadline. `None` when the deadline passed.
async fn connect(path: &Path, deadline: Instant) -> Option<UnixStream> {
    retry_until(
        &CONNECT_BACKOFF,
        deadline,
        || UnixStream::connect(path),
        |_| true,
    )
    .await
    .ok()
}

/// Checks with SO_PEERCRED that the socket is served by our QEMU: its pid,
/// and its uid (ours, or its jail uid; a pid alone could be matched by a
/// reused pid of another user's process).
fn check_peer(
    stream: &UnixStream,
    path: &Path,
    vm_id: &str,
    (qemu_pid, qemu_uid): (u32, u32),
) -> Result<(), BootError> {
    let cred = stream
        .peer_cred()
        .map_err(|e| BootError::io("read peer credentials of", path, e))?;
    let peer_pid = cred.pid().unwrap_or(-1);
    if is_our_qemu((peer_pid, cred.uid()), (qemu_pid, qemu_uid)) {
        Ok(())
    } else {
        Err(BootError::PeerMismatch {
            vm_id: vm_id.to_owned(),
            path: path.to_path_buf(),
            peer_pid,
            qemu_pid,
            peer_uid: cred.uid(),
            our_uid: qemu_uid,
        })
    }
}

/// Whether a peer's (pid, uid) is our QEMU's (pid, uid).
fn is_our_qemu(peer: (i32, u32), qemu: (u32, u32)) -> bool {
    u32::try_from(peer.0).ok() == Some(qemu.0) && peer.1 == qemu.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_must_match_both_pid_and_uid() {
        assert!(is_our_qemu((42, 1000), (42, 1000)));
        assert!(!is_our_qemu((42, 0), (42, 1000)), "same pid, another user");
        assert!(
            !is_our_qemu((43, 1000), (42, 1000)),
            "same user, another pid"
        );
        assert!(!is_our_qemu((-1, 1000), (42, 1000)), "no pid");
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let max = CONNECT_BACKOFF.max;
        let b0 = CONNECT_BACKOFF.delay(0);
        assert!(b0 >= Duration::from_micros(7500) && b0 <= Duration::from_micros(12500));
        let b3 = CONNECT_BACKOFF.delay(3);
        assert!(b3 >= Duration::from_millis(60) && b3 <= Duration::from_millis(100));
        for attempt in [10, 40, 1000] {
            assert!(CONNECT_BACKOFF.delay(attempt) <= max.mul_f64(1.25));
        }
        assert!(PING_WAIT.delay(40) <= PING_WAIT.max.mul_f64(1.25));
    }

    #[tokio::test]
    async fn peer_check_refuses_a_socket_served_by_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let client = UnixStream::connect(&path).await.unwrap();
        let _server = listener.accept().await.unwrap();
        // The peer is this test process.
        let ours = std::process::id();
        let uid = nix::unistd::geteuid().as_raw();
        check_peer(&client, &path, "vm", (ours, uid)).unwrap();
        let err = check_peer(&client, &path, "vm", (ours + 1, uid)).unwrap_err();
        assert!(matches!(err, BootError::PeerMismatch { .. }), "{err}");
        // A jailed QEMU's uid is expected: this process is not it.
        let err = check_peer(&client, &path, "vm", (ours, uid + 1)).unwrap_err();
        assert!(matches!(err, BootError::PeerMismatch { .. }), "{err}");
    }

    fn paths<'a>(console: &'a Path) -> GuestPaths<'a> {
        GuestPaths {
            vm_id: "vm1",
            cmd_socket: Path::new("/nonexistent/cmd"),
            event_socket: Path::new("/nonexistent/event"),
            console_log: console,
        }
    }

    async fn spawn(dir: &Path, script: &str) -> QemuProcess {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", script]);
        QemuProcess::spawn(cmd, "vm1", &dir.join("qemu.log"))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_machine_that_exits_during_boot_is_reported_with_its_status_and_logs() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        std::fs::write(&console, "kernel panic\n").unwrap();
        let mut process = spawn(dir.path(), "echo no-kvm >&2; exit 3").await;
        let never = std::future::pending::<Result<Option<Agent>, BootError>>();
        let err = race_death(
            &paths(&console),
            &mut process,
            Duration::from_secs(5),
            never,
        )
        .await
        .unwrap_err();
        match &err {
            BootError::VmDied {
                status,
                stderr_tail,
                console_tail,
                when,
                ..
            } => {
                assert_eq!(*status, Some(ChildExit::Code(3)));
                assert_eq!(stderr_tail, "no-kvm\n");
                assert_eq!(console_tail, "kernel panic\n");
                assert_eq!(*when, "during boot");
            }
            other => panic!("expected VmDied, got {other}"),
        }
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn an_agent_that_never_answers_is_a_boot_timeout_naming_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        let mut process = spawn(dir.path(), "sleep 30").await;
        let err = race_death(
            &paths(&console),
            &mut process,
            Duration::from_millis(50),
            async { Ok(None::<Agent>) },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, BootError::BootTimeout { after, .. } if after == Duration::from_millis(50)),
            "{err}"
        );
        process.terminate(Duration::ZERO).await;
    }

    #[tokio::test]
    async fn connect_gives_up_at_the_deadline() {
        let start = Instant::now();
        let got = connect(
            Path::new("/nonexistent/sock"),
            start + Duration::from_millis(100),
        )
        .await;
        assert!(got.is_none());
        assert!(start.elapsed() < Duration::from_millis(300));
    }
}
