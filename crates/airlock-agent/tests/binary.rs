//! The real `airlock-agent` binary, served over unix sockets.

mod common;

use airlock_protocol::client::Client;
use airlock_protocol::Language;
use common::{exec_request, is_root, text, T};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::net::UnixStream;

const AGENT: &str = env!("CARGO_BIN_EXE_airlock-agent");

/// The agent process; killed on drop.
struct AgentProcess {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AgentProcess {
    /// Starts `prefix... airlock-agent --cmd-socket .. --event-socket ..
    /// --home ..` and waits for its ready line.
    fn start(prefix: &[&str]) -> AgentProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("home");
        // The run-as user must be able to reach the home.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let (program, args) = match prefix.split_first() {
            Some((first, rest)) => (*first, [rest, &[AGENT]].concat()),
            None => (AGENT, Vec::new()),
        };
        let mut child = Command::new(program)
            .args(args)
            .arg("--cmd-socket")
            .arg(dir.path().join("cmd.sock"))
            .arg("--event-socket")
            .arg(dir.path().join("event.sock"))
            .arg("--home")
            .arg(&home)
            .env("AIRLOCK_AGENT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the agent");
        let stderr = child.stderr.take().expect("stderr pipe");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.starts_with("airlock-agent ") && line.contains(" ready (protocol ") {
                    let _ = ready_tx.send(line.clone());
                }
                eprintln!("agent: {line}");
            }
        });
        let line = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("ready line");
        assert_eq!(line, airlock_agent::ready_line());
        AgentProcess { child, dir }
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    async fn connect(&self) -> Client {
        let cmd = UnixStream::connect(self.dir.path().join("cmd.sock"))
            .await
            .expect("connect");
        let event = UnixStream::connect(self.dir.path().join("event.sock"))
            .await
            .expect("connect");
        Client::new(event, cmd)
    }
}

#[tokio::test]
async fn binary_serves_over_unix_sockets_and_accepts_again() {
    let agent = AgentProcess::start(&[]);
    let client = agent.connect().await;
    client.handshake(T).await.unwrap();
    let out = client
        .exec_collect(
            exec_request(Language::Python, "print('from the binary')"),
            T,
        )
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "from the binary\n");
    client
        .write_file("x/y.txt", 0o644, b"payload", T)
        .await
        .unwrap();
    assert_eq!(
        client.read_file("x/y.txt", T).await.unwrap().data,
        b"payload"
    );
    if is_root() {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(agent.home()).unwrap();
        assert_eq!(meta.uid(), 1000, "home handed to the run-as user");
    }
    drop(client);

    // The command stream ended: the agent accepts the next host.
    let client = agent.connect().await;
    let info = client.handshake(T).await.unwrap();
    assert_eq!(info.version, airlock_agent::AGENT_VERSION);
}

/// Processes whose parent is `ppid`, with their state letter.
fn children_of(ppid: u32) -> Vec<(u32, char)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")
        .expect("/proc")
        .map_while(Result::ok)
    {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let parent: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if parent == ppid {
            found.push((pid, state));
        }
    }
    found
}

fn wait_for(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !check() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn as_pid_1_the_agent_reaps_orphans() {
    if !is_root() || !Path::new("/usr/bin/unshare").exists() {
        eprintln!("skipped: needs root and unshare");
        return;
    }
    let agent = AgentProcess::start(&["/usr/bin/unshare", "--pid", "--fork", "--kill-child"]);
    let client = agent.connect().await;
    client.handshake(T).await.unwrap();
    // The agent is the child of unshare (PID 1 in its namespace).
    let agent_pid = children_of(agent.child.id())
        .first()
        .map(|(pid, _)| *pid)
        .expect("agent under unshare");

    // A daemon that escapes the group, outlives the exec, then exits: it is
    // re-parented to the agent and must be reaped, not left a zombie.
    let code = "setsid sh -c 'echo $$ > daemon.pid; sleep 0.5' </dev/null >/dev/null 2>&1 &\n\
                while [ ! -s daemon.pid ]; do sleep 0.01; done; echo started";
    let out = client
        .exec_collect(exec_request(Language::Raw, code), T)
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "started\n");
    wait_for(
        "the orphan to be re-parented",
        Duration::from_secs(5),
        || !children_of(agent_pid).is_empty(),
    );
    wait_for("the orphan to be reaped", Duration::from_secs(5), || {
        children_of(agent_pid).is_empty()
    });

    // The agent's own children still report their exit status.
    let out = client
        .exec_collect(exec_request(Language::Raw, "exit 9"), T)
        .await
        .unwrap();
    assert_eq!(out.completion.exit_code, 9);
}
