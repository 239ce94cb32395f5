//! Shared harness: an agent served in-process over in-memory pipes, with a
//! temporary home handed to the sandbox user when the tests run as root.
#![allow(dead_code)]

use airlock_agent::{prepare_home, serve, AgentConfig, AgentError, RunAs};
use airlock_protocol::client::{Client, ExecOutput};
use airlock_protocol::{
    Event, EventBody, ExecRequest, FrameReader, FrameWriter, Language, OpId, Request, RequestBody,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{duplex, DuplexStream};
use tokio::task::JoinHandle;

/// Generous per-request deadline on the host side.
pub const T: Duration = Duration::from_secs(30);

/// Pipe buffer between host and agent.
const PIPE_BYTES: usize = 1 << 20;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A test configuration for `home`.
pub fn config(home: &Path) -> AgentConfig {
    AgentConfig {
        home: home.to_owned(),
        run_as: is_root().then_some(RunAs::SANDBOX),
        ..AgentConfig::default()
    }
}

/// An agent served over in-memory pipes.
pub struct Agent {
    pub client: Client,
    pub home: tempfile::TempDir,
    pub served: JoinHandle<Result<(), AgentError>>,
}

pub async fn start() -> Agent {
    start_with(|_| {}).await
}

pub async fn start_with(adjust: impl FnOnce(&mut AgentConfig)) -> Agent {
    let (home, host_cmd, host_event, served) = spawn_agent(adjust);
    Agent {
        client: Client::new(host_event, host_cmd),
        home,
        served,
    }
}

/// Starts `serve` on fresh pipes; returns the home and the host ends
/// (command writer, event reader).
fn spawn_agent(
    adjust: impl FnOnce(&mut AgentConfig),
) -> (
    tempfile::TempDir,
    DuplexStream,
    DuplexStream,
    JoinHandle<Result<(), AgentError>>,
) {
    let home = tempfile::tempdir().expect("temp home");
    let mut config = config(home.path());
    adjust(&mut config);
    prepare_home(&config).expect("prepare home");
    let (host_cmd, agent_cmd) = duplex(PIPE_BYTES);
    let (agent_event, host_event) = duplex(PIPE_BYTES);
    let served = tokio::spawn(serve(agent_cmd, agent_event, Arc::new(config)));
    (home, host_cmd, host_event, served)
}

/// An agent driven line by line, without the client (to see the global
/// order of events and to send what the client never would).
pub struct RawAgent {
    pub writer: FrameWriter<DuplexStream>,
    pub reader: FrameReader<DuplexStream>,
    /// Whether the agent's hello (its first event) was read.
    hello_seen: bool,
    pub home: tempfile::TempDir,
    pub served: JoinHandle<Result<(), AgentError>>,
}

pub fn start_raw() -> RawAgent {
    start_raw_with(|_| {})
}

pub fn start_raw_with(adjust: impl FnOnce(&mut AgentConfig)) -> RawAgent {
    let (home, host_cmd, host_event, served) = spawn_agent(adjust);
    RawAgent {
        writer: FrameWriter::new(host_cmd),
        reader: FrameReader::new(host_event),
        hello_seen: false,
        home,
        served,
    }
}

impl RawAgent {
    pub async fn send(&mut self, op: OpId, body: RequestBody) {
        self.writer
            .send(&Request::new(op, body))
            .await
            .expect("send");
    }

    pub async fn send_line(&mut self, line: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let inner = self.writer.get_mut();
        inner.write_all(line).await.expect("write");
        inner.write_all(b"\n").await.expect("write");
    }

    /// The next event after the agent's hello, which must come first.
    pub async fn next(&mut self) -> Event {
        if !self.hello_seen {
            let hello = self.read().await;
            assert_eq!(
                (hello.op, hello.body.type_name()),
                (airlock_protocol::HELLO_OP, "pong"),
                "the agent's first event is its hello"
            );
            self.hello_seen = true;
        }
        self.read().await
    }

    async fn read(&mut self) -> Event {
        tokio::time::timeout(T, self.reader.next_event())
            .await
            .expect("an event in time")
            .expect("transport")
            .expect("not closed")
            .expect("decodable")
    }

    /// Events until (and including) the last one of `op`, skipping others.
    pub async fn until_last_of(&mut self, op: OpId) -> Vec<EventBody> {
        let mut seen = Vec::new();
        loop {
            let event = self.next().await;
            if event.op != op {
                continue;
            }
            let last = matches!(
                event.body,
                EventBody::Complete(_)
                    | EventBody::Error { .. }
                    | EventBody::FileDone { .. }
                    | EventBody::FileList { .. }
                    | EventBody::Pong { .. }
            );
            seen.push(event.body);
            if last {
                return seen;
            }
        }
    }
}

pub fn exec_request(language: Language, code: &str) -> ExecRequest {
    ExecRequest {
        mode: Default::default(),
        language,
        code: code.to_owned(),
        timeout_ms: 20_000,
        env: BTreeMap::new(),
        cwd: None,
    }
}

pub async fn run(client: &Client, language: Language, code: &str) -> ExecOutput {
    client
        .exec_collect(exec_request(language, code), T)
        .await
        .expect("exec")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh directory on the host's cgroup2 hierarchy for exec cgroups,
/// removed (with what is left in it) on drop. `None` unless the tests run
/// as root on a host with a cgroup2 mount that holds this process.
pub struct TestCgroupParent(std::path::PathBuf);

impl TestCgroupParent {
    pub fn new(tag: &str) -> Option<Self> {
        if !is_root() {
            return None;
        }
        // Our own cgroup (`0::/path`) under the first cgroup2 mount.
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let own = own.lines().find_map(|l| l.strip_prefix("0::"))?.to_owned();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mount = mounts.lines().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split(' ').next() == Some("cgroup2")).then(|| left.split(' ').nth(4))?
        })?;
        let dir = std::path::Path::new(mount)
            .join(own.trim_start_matches('/'))
            .join(format!("airlock-agent-test-{tag}-{}", std::process::id()));
        airlock_agent::exec_cgroup::prepare_parent(&dir).ok()?;
        Some(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The exec cgroups left under the parent.
    pub fn children(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for TestCgroupParent {
    fn drop(&mut self) {
        for child in self.children() {
            let dir = self.0.join(child);
            let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            let _ = std::fs::remove_dir(&dir);
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn is_running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
