//! The host side of the protocol: a [`Client`] over any reader/writer pair.
//!
//! One task reads events and routes each to the operation that awaits it (by
//! op id), so several operations run at once over one channel. Requests go
//! through one writer task that owns the command stream: a caller hands it a
//! whole encoded line and waits (with a deadline, [`ClientConfig::send_timeout`])
//! for the answer, so cancelling the caller (a dropped `write_file` future)
//! never cuts a line. A failed write may have cut one: the writer then stops
//! and every later send fails with [`ProtocolError::ChannelBroken`]. When the
//! guest closes the channel every pending operation ends with
//! [`ProtocolError::Closed`].
//!
//! Memory is bounded on this side too, whatever the guest sends:
//! [`Client::exec_collect`] keeps at most [`ClientConfig::max_stdout_bytes`]
//! and [`ClientConfig::max_stderr_bytes`] (past them the output is cut, the
//! agent's marker line appended, and the completion flags the stream as
//! truncated); a caller reading an [`ExecStream`] itself collects through
//! [`CappedExecOutput`] for the same caps; and [`Client::read_file`] refuses a file over
//! [`ClientConfig::max_read_file_bytes`].
//!
//! Backpressure: each operation buffers a bounded number of events; when an
//! operation's buffer is full the reader waits, which stalls the channel
//! (and, through virtio-serial, the guest's writer) until that operation is
//! read. Read every stream you start, or drop it: a dropped operation's
//! events are discarded.

use crate::framing::{encode_line_within, FrameReader, DEFAULT_MAX_LINE_BYTES};
use crate::message::*;
use crate::{
    check_protocol, truncation_marker, CellError, Data, ExecResult, ProtocolError, HELLO_OP,
};
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Size of the chunks a file is sent in.
pub const FILE_CHUNK_BYTES: usize = 256 * 1024;

/// Events buffered per operation before the reader waits (backpressure).
const EVENTS_PER_OP: usize = 256;

/// Lines queued for the writer task (a file chunk line is ~350 KiB).
const QUEUED_LINES: usize = 8;

type Writer = Box<dyn AsyncWrite + Send + Unpin>;
type Routes = Arc<Mutex<HashMap<OpId, mpsc::Sender<EventBody>>>>;

/// The client's limits. Build it, [`ClientConfig::validate`] it (done by
/// [`Client::with_config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Standard output kept by [`Client::exec_collect`] and
    /// [`CappedExecOutput`] (default 8 MiB,
    /// twice the agent's default cap: it bites only on an agent that
    /// ignores its own).
    pub max_stdout_bytes: u64,
    /// Standard error kept by [`Client::exec_collect`] and
    /// [`CappedExecOutput`] (default 8 MiB).
    pub max_stderr_bytes: u64,
    /// Largest file [`Client::read_file`] reads into memory (default
    /// 128 MiB).
    pub max_read_file_bytes: u64,
    /// Deadline of each line sent (default 30 s): a guest that stops reading
    /// its command port cannot hang a caller.
    pub send_timeout: Duration,
    /// Longest line sent (default [`DEFAULT_MAX_LINE_BYTES`]).
    pub max_line_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_stdout_bytes: 8 * 1024 * 1024,
            max_stderr_bytes: 8 * 1024 * 1024,
            max_read_file_bytes: 128 * 1024 * 1024,
            send_timeout: Duration::from_secs(30),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        }
    }
}

impl ClientConfig {
    /// Checks every value.
    ///
    /// # Errors
    /// [`ProtocolError::Config`] naming the value.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        for (name, value) in [
            ("max_stdout_bytes", self.max_stdout_bytes),
            ("max_stderr_bytes", self.max_stderr_bytes),
            ("max_read_file_bytes", self.max_read_file_bytes),
            ("max_line_bytes", self.max_line_bytes as u64),
        ] {
            if value == 0 {
                return Err(ProtocolError::Config(format!("{name} must be at least 1")));
            }
        }
        if self.send_timeout.is_zero() {
            return Err(ProtocolError::Config(
                "send_timeout must be above zero".into(),
            ));
        }
        Ok(())
    }
}

/// One line for the writer task, and where to say how its write went.
struct Outgoing {
    line: Vec<u8>,
    done: oneshot::Sender<std::io::Result<()>>,
}

/// What the agent said about itself in `pong`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    /// The agent's version.
    pub version: String,
    /// The agent's protocol version.
    pub protocol: u32,
}

/// One piece of an exec's progress.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    /// Bytes on standard output.
    Stdout(Bytes),
    /// Bytes on standard error.
    Stderr(Bytes),
    /// A value the cell showed (a MIME bundle), in order with the output.
    Result(ExecResult),
    /// The cell's uncaught exception (its traceback came on stderr).
    CellError(CellError),
    /// The process ended.
    Complete(Completion),
}

/// The whole result of an exec.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutput {
    /// Everything written to standard output.
    pub stdout: Vec<u8>,
    /// Everything written to standard error.
    pub stderr: Vec<u8>,
    /// The values the cell showed, in order (none for a process exec).
    pub results: Vec<ExecResult>,
    /// The cell's uncaught exception, if any (the last one reported).
    pub error: Option<CellError>,
    /// How it ended.
    pub completion: Completion,
}

/// A file read back from the guest, its checksum verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContent {
    /// The bytes.
    pub data: Vec<u8>,
    /// Hex sha256, as computed by both sides.
    pub sha256: String,
}

/// Host-side protocol client. Cheap to share behind an `Arc`.
pub struct Client {
    outgoing: mpsc::Sender<Outgoing>,
    /// Why the writer stopped, once it has.
    broken: Arc<Mutex<Option<String>>>,
    routes: Routes,
    hello: tokio::sync::watch::Receiver<Option<AgentInfo>>,
    next_op: AtomicU64,
    config: ClientConfig,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("next_op", &self.next_op)
            .finish_non_exhaustive()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl Client {
    /// A client reading events from `reader` and writing requests to
    /// `writer`, with the default [`ClientConfig`]. Must be called inside a
    /// tokio runtime.
    pub fn new<R, W>(reader: R, writer: W) -> Self
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        Self::start_tasks(reader, writer, ClientConfig::default())
    }

    /// As [`Client::new`], with `config`.
    ///
    /// # Errors
    /// [`ProtocolError::Config`] for a value out of range.
    pub fn with_config<R, W>(
        reader: R,
        writer: W,
        config: ClientConfig,
    ) -> Result<Self, ProtocolError>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        config.validate()?;
        Ok(Self::start_tasks(reader, writer, config))
    }

    fn start_tasks<R, W>(reader: R, writer: W, config: ClientConfig) -> Self
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let routes: Routes = Arc::default();
        let (hello_tx, hello) = tokio::sync::watch::channel(None);
        let reader = tokio::spawn(route_events(
            FrameReader::with_limit(reader, DEFAULT_MAX_LINE_BYTES),
            Arc::clone(&routes),
            hello_tx,
        ));
        let (outgoing, lines) = mpsc::channel(QUEUED_LINES);
        let broken = Arc::new(Mutex::new(None));
        let writer = tokio::spawn(write_lines(
            Box::new(writer) as Writer,
            lines,
            Arc::clone(&broken),
        ));
        Self {
            outgoing,
            broken,
            routes,
            hello,
            next_op: AtomicU64::new(1),
            config,
            reader,
            writer,
        }
    }

    /// The client's limits.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Whether the event stream has ended (the guest is gone).
    pub fn is_closed(&self) -> bool {
        self.reader.is_finished()
    }

    /// Whether an earlier write failed: every send now fails.
    pub fn is_broken(&self) -> bool {
        lock(&self.broken).is_some()
    }

    async fn send(&self, request: &Request) -> Result<(), ProtocolError> {
        let line = encode_line_within(request, self.config.max_line_bytes)?;
        self.send_line(line).await
    }

    /// Hands one whole line to the writer task and waits for its write,
    /// within [`ClientConfig::send_timeout`]. Cancelling this future after
    /// the hand-over does not stop the write: the line goes out whole.
    async fn send_line(&self, line: Vec<u8>) -> Result<(), ProtocolError> {
        let broken = || ProtocolError::ChannelBroken {
            reason: lock(&self.broken)
                .clone()
                .unwrap_or_else(|| "the writer task ended".into()),
        };
        if self.is_broken() {
            return Err(broken());
        }
        let (done, written) = oneshot::channel();
        let sent = within(self.config.send_timeout, "send", async {
            self.outgoing
                .send(Outgoing { line, done })
                .await
                .map_err(|_| broken())?;
            match written.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ProtocolError::Io(e)),
                Err(_) => Err(broken()),
            }
        })
        .await;
        if let Err(ProtocolError::Timeout { .. }) = &sent {
            // The writer is stuck (the guest stopped reading): a later send
            // would only wait out its own deadline behind this one.
            lock(&self.broken).get_or_insert_with(|| {
                format!(
                    "a write did not finish within {:?}: the guest stopped reading",
                    self.config.send_timeout
                )
            });
        }
        sent
    }

    /// Registers a new operation and sends its first request.
    async fn start(
        &self,
        body: RequestBody,
    ) -> Result<(OpId, mpsc::Receiver<EventBody>), ProtocolError> {
        if self.is_closed() {
            return Err(ProtocolError::Closed);
        }
        let op = self.next_op.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(EVENTS_PER_OP);
        lock(&self.routes).insert(op, tx);
        if let Err(e) = self.send(&Request::new(op, body)).await {
            lock(&self.routes).remove(&op);
            return Err(e);
        }
        Ok((op, rx))
    }

    fn finish(&self, op: OpId) {
        lock(&self.routes).remove(&op);
    }

    /// Sends `ping` and waits for `pong` (without checking the version).
    ///
    /// # Errors
    /// [`ProtocolError::Timeout`], [`ProtocolError::Closed`] or a transport
    /// error.
    pub async fn ping(&self, timeout: Duration) -> Result<AgentInfo, ProtocolError> {
        let (op, mut rx) = self.start(RequestBody::Ping).await?;
        let answer = within(timeout, "ping", next(&mut rx)).await;
        self.finish(op);
        match answer? {
            EventBody::Pong { version, protocol } => Ok(AgentInfo { version, protocol }),
            other => Err(unexpected("ping", other)),
        }
    }

    /// Waits for the agent's hello (see [`HELLO_OP`]) and checks its
    /// protocol version. Returns at once if it already came.
    ///
    /// # Errors
    /// [`ProtocolError::Timeout`], [`ProtocolError::Closed`],
    /// [`ProtocolError::VersionMismatch`].
    pub async fn hello(&self, timeout: Duration) -> Result<AgentInfo, ProtocolError> {
        let mut hello = self.hello.clone();
        let info = within(timeout, "hello", async {
            hello
                .wait_for(Option::is_some)
                .await
                .map_err(|_| ProtocolError::Closed)
                .map(|info| info.clone())
        })
        .await?
        .ok_or(ProtocolError::Closed)?;
        check_protocol(&info.version, info.protocol)?;
        Ok(info)
    }

    /// Pings and checks that the agent speaks our protocol version.
    ///
    /// # Errors
    /// As [`Client::ping`], and [`ProtocolError::VersionMismatch`].
    pub async fn handshake(&self, timeout: Duration) -> Result<AgentInfo, ProtocolError> {
        let info = self.ping(timeout).await?;
        check_protocol(&info.version, info.protocol)?;
        Ok(info)
    }

    /// Starts an exec; read its progress from the returned stream.
    ///
    /// # Errors
    /// [`ProtocolError::Closed`] or a transport error.
    pub async fn exec(&self, request: ExecRequest) -> Result<ExecStream<'_>, ProtocolError> {
        let (op, rx) = self.start(RequestBody::Exec(request)).await?;
        Ok(ExecStream {
            client: self,
            op,
            rx,
            done: false,
        })
    }

    /// Starts a package install (answered like an exec: output events,
    /// then the completion); read its progress from the returned stream.
    ///
    /// # Errors
    /// [`ProtocolError::Closed`] or a transport error.
    pub async fn install_packages(
        &self,
        language: Language,
        packages: Vec<String>,
        timeout: Duration,
        env: BTreeMap<String, String>,
    ) -> Result<ExecStream<'_>, ProtocolError> {
        let (op, rx) = self
            .start(RequestBody::InstallPackages {
                language,
                packages,
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                env,
            })
            .await?;
        Ok(ExecStream {
            client: self,
            op,
            rx,
            done: false,
        })
    }

    /// Runs an exec to its end, collecting the output. The host-side
    /// deadline is the request's timeout plus `grace` (the guest enforces the
    /// timeout itself; this only guards against a stuck guest).
    ///
    /// # Errors
    /// As [`Client::exec`], plus [`ProtocolError::Timeout`] and
    /// [`ProtocolError::Guest`].
    pub async fn exec_collect(
        &self,
        request: ExecRequest,
        grace: Duration,
    ) -> Result<ExecOutput, ProtocolError> {
        let deadline = Duration::from_millis(request.timeout_ms) + grace;
        let stream = self.exec(request).await?;
        within(deadline, "exec", stream.collect()).await
    }

    /// Writes a file in the sandbox home, atomically: it appears under its
    /// name only once complete. Returns the guest's sha256 after checking it
    /// against ours.
    ///
    /// # Errors
    /// [`ProtocolError::Guest`] for a refused path or a full disk,
    /// [`ProtocolError::Timeout`], [`ProtocolError::Closed`].
    pub async fn write_file(
        &self,
        path: &str,
        mode: u32,
        content: &[u8],
        timeout: Duration,
    ) -> Result<String, ProtocolError> {
        let (op, mut rx) = self
            .start(RequestBody::WriteFile {
                path: path.to_owned(),
                mode,
                size: Some(content.len() as u64),
            })
            .await?;
        let result = within(timeout, "write_file", async {
            match next(&mut rx).await? {
                EventBody::FileAck { .. } => {}
                other => return Err(unexpected("write_file", other)),
            }
            for chunk in content.chunks(FILE_CHUNK_BYTES) {
                let body = RequestBody::FileChunk {
                    data: Data::base64(Bytes::copy_from_slice(chunk)),
                };
                self.send(&Request::new(op, body)).await?;
            }
            self.send(&Request::new(op, RequestBody::FileEnd)).await?;
            match next(&mut rx).await? {
                EventBody::FileAck {
                    size,
                    sha256: Some(sha256),
                } => {
                    let ours = sha256_hex(content);
                    if size != content.len() as u64 || sha256 != ours {
                        return Err(ProtocolError::Unexpected {
                            operation: "write_file",
                            event: format!(
                                "checksum mismatch: sent {} bytes ({ours}), guest has {size} ({sha256})",
                                content.len()
                            ),
                        });
                    }
                    Ok(sha256)
                }
                other => Err(unexpected("write_file", other)),
            }
        })
        .await;
        self.finish(op);
        result
    }

    /// Reads a file from the sandbox home into memory (at most
    /// [`ClientConfig::max_read_file_bytes`]) and checks its sha256.
    ///
    /// # Errors
    /// [`ProtocolError::Guest`] (not found, refused path),
    /// [`ProtocolError::FileTooLarge`] (naming the path) past the limit,
    /// [`ProtocolError::Timeout`], [`ProtocolError::Closed`], or
    /// [`ProtocolError::Unexpected`] on a checksum mismatch.
    pub async fn read_file(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<FileContent, ProtocolError> {
        let (op, mut rx) = self
            .start(RequestBody::ReadFile {
                path: path.to_owned(),
            })
            .await?;
        let result = within(timeout, "read_file", async {
            let mut data = BytesMut::new();
            loop {
                match next(&mut rx).await? {
                    EventBody::FileData { data: chunk } => {
                        let limit = self.config.max_read_file_bytes;
                        if (data.len() + chunk.as_bytes().len()) as u64 > limit {
                            return Err(ProtocolError::FileTooLarge {
                                path: path.to_owned(),
                                limit_bytes: limit,
                            });
                        }
                        data.extend_from_slice(chunk.as_bytes());
                    }
                    EventBody::FileDone { size, sha256 } => {
                        let ours = sha256_hex(&data);
                        if size != data.len() as u64 || sha256 != ours {
                            return Err(ProtocolError::Unexpected {
                                operation: "read_file",
                                event: format!(
                                    "checksum mismatch: got {} bytes ({ours}), guest says {size} ({sha256})",
                                    data.len()
                                ),
                            });
                        }
                        return Ok(FileContent {
                            data: data.to_vec(),
                            sha256,
                        });
                    }
                    other => return Err(unexpected("read_file", other)),
                }
            }
        })
        .await;
        self.finish(op);
        result
    }

    /// Lists a directory of the sandbox home.
    ///
    /// # Errors
    /// As [`Client::read_file`].
    pub async fn list_files(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<Vec<FileEntry>, ProtocolError> {
        let (op, mut rx) = self
            .start(RequestBody::ListFiles {
                path: path.to_owned(),
            })
            .await?;
        let answer = within(timeout, "list_files", next(&mut rx)).await;
        self.finish(op);
        match answer? {
            EventBody::FileList { entries } => Ok(entries),
            other => Err(unexpected("list_files", other)),
        }
    }

    /// Asks the agent to start `language`'s persistent interpreter (the one
    /// cells run in) with its common modules imported, and waits until it
    /// is ready.
    ///
    /// # Errors
    /// As [`Client::ping`], or [`ProtocolError::Guest`].
    pub async fn warm_repl(
        &self,
        language: Language,
        timeout: Duration,
    ) -> Result<Completion, ProtocolError> {
        let (op, mut rx) = self.start(RequestBody::WarmRepl { language }).await?;
        let answer = within(timeout, "warm_repl", next(&mut rx)).await;
        self.finish(op);
        match answer? {
            EventBody::Complete(completion) => Ok(completion),
            other => Err(unexpected("warm_repl", other)),
        }
    }

    /// Sends fresh `entropy` and the host's wall clock (`unix_time_ns`) to
    /// a restored guest; returns `(entropy_bytes, clock_step_ms)` as the
    /// agent reports them.
    ///
    /// # Errors
    /// As [`Client::ping`], or [`ProtocolError::Guest`].
    pub async fn reseed(
        &self,
        entropy: &[u8],
        unix_time_ns: u64,
        timeout: Duration,
    ) -> Result<(u64, i64), ProtocolError> {
        let body = RequestBody::Reseed {
            entropy: Data::base64(entropy.to_vec()),
            unix_time_ns,
        };
        let (op, mut rx) = self.start(body).await?;
        let answer = within(timeout, "reseed", next(&mut rx)).await;
        self.finish(op);
        match answer? {
            EventBody::Reseeded {
                entropy_bytes,
                clock_step_ms,
            } => Ok((entropy_bytes, clock_step_ms)),
            other => Err(unexpected("reseed", other)),
        }
    }

    /// Interrupts the exec running under `target` (see
    /// [`ExecStream::op`]): the agent sends SIGINT (a cell's interpreter
    /// survives it where it can), then kills after its grace; the exec's
    /// own stream reports the end (exit code 130 for a cell). Not
    /// answered; an unknown or finished target is ignored by the agent.
    ///
    /// # Errors
    /// [`ProtocolError::Closed`] or a transport error.
    pub async fn cancel(&self, target: OpId) -> Result<(), ProtocolError> {
        if self.is_closed() {
            return Err(ProtocolError::Closed);
        }
        let op = self.next_op.fetch_add(1, Ordering::Relaxed);
        self.send(&Request::new(op, RequestBody::Cancel { target }))
            .await
    }

    /// Sends a raw line (for tests of the agent's error handling), then
    /// waits for the first event of operation `op`.
    ///
    /// # Errors
    /// As [`Client::ping`].
    pub async fn send_raw_line(
        &self,
        op: OpId,
        line: &[u8],
        timeout: Duration,
    ) -> Result<EventBody, ProtocolError> {
        let (tx, mut rx) = mpsc::channel(EVENTS_PER_OP);
        lock(&self.routes).insert(op, tx);
        let mut whole = Vec::with_capacity(line.len() + 1);
        whole.extend_from_slice(line);
        whole.push(b'\n');
        let result = async {
            self.send_line(whole).await?;
            within(timeout, "raw line", next(&mut rx)).await
        }
        .await;
        self.finish(op);
        result
    }
}

/// An exec in progress.
#[derive(Debug)]
pub struct ExecStream<'a> {
    client: &'a Client,
    op: OpId,
    rx: mpsc::Receiver<EventBody>,
    done: bool,
}

impl ExecStream<'_> {
    /// The operation id of this exec.
    pub fn op(&self) -> OpId {
        self.op
    }

    /// Reads the stream to its completion, keeping the output within the
    /// client's caps ([`CappedExecOutput`]). No deadline of its own: wrap
    /// it in one.
    ///
    /// # Errors
    /// As [`ExecStream::next`], and [`ProtocolError::Closed`] when the
    /// stream ends without a completion.
    pub async fn collect(mut self) -> Result<ExecOutput, ProtocolError> {
        let mut output = CappedExecOutput::new(&self.client.config);
        while let Some(event) = self.next().await? {
            match event {
                ExecEvent::Stdout(b) => {
                    output.push_stdout(&b);
                }
                ExecEvent::Stderr(b) => {
                    output.push_stderr(&b);
                }
                ExecEvent::Result(result) => output.push_result(result),
                ExecEvent::CellError(error) => output.set_error(error),
                ExecEvent::Complete(completion) => return Ok(output.finish(completion)),
            }
        }
        Err(ProtocolError::Closed)
    }

    /// The next piece of progress; `None` after [`ExecEvent::Complete`].
    ///
    /// # Errors
    /// [`ProtocolError::Guest`] when the agent refused or failed the exec,
    /// [`ProtocolError::Closed`] when the guest went away.
    pub async fn next(&mut self) -> Result<Option<ExecEvent>, ProtocolError> {
        if self.done {
            return Ok(None);
        }
        let event = next(&mut self.rx).await;
        let event = match event {
            Ok(EventBody::Stdout { data }) => ExecEvent::Stdout(data.into_bytes()),
            Ok(EventBody::Stderr { data }) => ExecEvent::Stderr(data.into_bytes()),
            Ok(EventBody::Result(result)) => ExecEvent::Result(result),
            Ok(EventBody::CellError(error)) => ExecEvent::CellError(error),
            Ok(EventBody::Complete(c)) => {
                self.done = true;
                ExecEvent::Complete(c)
            }
            Ok(other) => {
                self.done = true;
                return Err(unexpected("exec", other));
            }
            Err(e) => {
                self.done = true;
                return Err(e);
            }
        };
        Ok(Some(event))
    }
}

impl Drop for ExecStream<'_> {
    fn drop(&mut self) {
        self.client.finish(self.op);
    }
}

/// An exec's output collected within the client's caps
/// ([`ClientConfig::max_stdout_bytes`], [`ClientConfig::max_stderr_bytes`]):
/// past a cap the stream is cut, the agent's marker line
/// ([`crate::truncation_marker`]) appended, and the completion flags it as
/// truncated. [`Client::exec_collect`] uses it; so does any caller that reads
/// an [`ExecStream`] itself and keeps the output, so that memory stays bounded
/// whatever the guest sends.
#[derive(Debug)]
pub struct CappedExecOutput {
    stdout: CappedOutput,
    stderr: CappedOutput,
    results: Vec<ExecResult>,
    error: Option<CellError>,
}

impl CappedExecOutput {
    /// Empty, with `config`'s caps.
    pub fn new(config: &ClientConfig) -> Self {
        Self {
            stdout: CappedOutput::new("stdout", config.max_stdout_bytes),
            stderr: CappedOutput::new("stderr", config.max_stderr_bytes),
            results: Vec::new(),
            error: None,
        }
    }

    /// Keeps a result (the agent caps each cell's results: 64 MiB by
    /// default, `docs/protocol.md`).
    pub fn push_result(&mut self, result: ExecResult) {
        self.results.push(result);
    }

    /// Keeps the cell's uncaught exception.
    pub fn set_error(&mut self, error: CellError) {
        self.error = Some(error);
    }

    /// Keeps a chunk of standard output up to the cap; returns what was
    /// appended (the kept part, plus the marker where this chunk crossed
    /// the cap; nothing once cut).
    pub fn push_stdout(&mut self, chunk: &[u8]) -> &[u8] {
        self.stdout.push(chunk)
    }

    /// As [`CappedExecOutput::push_stdout`], for standard error.
    pub fn push_stderr(&mut self, chunk: &[u8]) -> &[u8] {
        self.stderr.push(chunk)
    }

    /// The output kept, with `completion` flagging each stream the client
    /// cut (a flag the agent set stays set).
    pub fn finish(self, mut completion: Completion) -> ExecOutput {
        completion.stdout_truncated |= self.stdout.truncated;
        completion.stderr_truncated |= self.stderr.truncated;
        ExecOutput {
            stdout: self.stdout.bytes,
            stderr: self.stderr.bytes,
            results: self.results,
            error: self.error,
            completion,
        }
    }
}

/// One stream collected up to a cap; past it, the marker line and nothing
/// more.
#[derive(Debug)]
struct CappedOutput {
    stream: &'static str,
    cap_bytes: u64,
    bytes: Vec<u8>,
    truncated: bool,
}

impl CappedOutput {
    fn new(stream: &'static str, cap_bytes: u64) -> Self {
        Self {
            stream,
            cap_bytes,
            bytes: Vec::new(),
            truncated: false,
        }
    }

    /// Appends what fits of `chunk` (and the marker when it does not all
    /// fit); returns what was appended.
    fn push(&mut self, chunk: &[u8]) -> &[u8] {
        let start = self.bytes.len();
        if self.truncated {
            return &self.bytes[start..];
        }
        let room = usize::try_from(self.cap_bytes)
            .unwrap_or(usize::MAX)
            .saturating_sub(start);
        if chunk.len() <= room {
            self.bytes.extend_from_slice(chunk);
        } else {
            self.bytes.extend_from_slice(&chunk[..room]);
            self.bytes
                .extend_from_slice(truncation_marker(self.stream, self.cap_bytes).as_bytes());
            self.truncated = true;
        }
        &self.bytes[start..]
    }
}

/// Writes each queued line whole, in order, and reports each write. After a
/// failed write (which may have cut its line) it records why and stops:
/// every later send then fails.
async fn write_lines(
    mut writer: Writer,
    mut lines: mpsc::Receiver<Outgoing>,
    broken: Arc<Mutex<Option<String>>>,
) {
    while let Some(Outgoing { line, done }) = lines.recv().await {
        let written = async {
            writer.write_all(&line).await?;
            writer.flush().await
        }
        .await;
        if let Err(e) = &written {
            *lock(&broken) = Some(e.to_string());
            tracing::warn!(error = %e, "command channel write failed: the client is broken");
        }
        let failed = written.is_err();
        // The caller may have given up waiting: the line is out regardless.
        let _ = done.send(written);
        if failed {
            return;
        }
    }
}

/// Reads events and hands each to its operation until the stream ends.
async fn route_events<R: AsyncRead + Unpin>(
    mut reader: FrameReader<R>,
    routes: Routes,
    hello: tokio::sync::watch::Sender<Option<AgentInfo>>,
) {
    loop {
        let event = match reader.next_event().await {
            Ok(Some(Ok(event))) => event,
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "undecodable event from the guest: skipped");
                continue;
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "event channel failed");
                break;
            }
        };
        if event.op == HELLO_OP {
            if let EventBody::Pong { version, protocol } = event.body {
                hello.send_replace(Some(AgentInfo { version, protocol }));
                continue;
            }
        }
        let route = lock(&routes).get(&event.op).cloned();
        match route {
            // A closed receiver means the operation was abandoned: drop.
            Some(tx) => {
                let _ = tx.send(event.body).await;
            }
            None => tracing::debug!(
                op = event.op,
                kind = event.body.type_name(),
                "event for no pending operation"
            ),
        }
    }
    // Dropping the senders ends every pending operation with Closed.
    lock(&routes).clear();
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The next event of an operation; a guest error event becomes an error.
async fn next(rx: &mut mpsc::Receiver<EventBody>) -> Result<EventBody, ProtocolError> {
    match rx.recv().await {
        Some(EventBody::Error { kind, message }) => Err(ProtocolError::Guest { kind, message }),
        Some(event) => Ok(event),
        None => Err(ProtocolError::Closed),
    }
}

async fn within<T>(
    timeout: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, ProtocolError>>,
) -> Result<T, ProtocolError> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| {
            Err(ProtocolError::Timeout {
                what: what.to_owned(),
                after: timeout,
            })
        })
}

fn unexpected(operation: &'static str, event: EventBody) -> ProtocolError {
    ProtocolError::Unexpected {
        operation,
        event: event.type_name().to_owned(),
    }
}

/// Hex sha256 of bytes (as both sides report it).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    fn completion() -> Completion {
        Completion {
            state_lost: false,
            exit_code: 0,
            timed_out: false,
            duration_ms: 1,
            spawn_ms: 1,
            stdout_truncated: false,
            stderr_truncated: false,
        }
    }

    fn caps(stdout: u64, stderr: u64) -> ClientConfig {
        ClientConfig {
            max_stdout_bytes: stdout,
            max_stderr_bytes: stderr,
            ..ClientConfig::default()
        }
    }

    #[test]
    fn push_returns_what_was_kept_then_the_marker_then_nothing() {
        let mut out = CappedExecOutput::new(&caps(5, 100));
        assert_eq!(out.push_stdout(b"abc"), b"abc");
        let marker = truncation_marker("stdout", 5);
        assert_eq!(out.push_stdout(b"defg"), format!("de{marker}").as_bytes());
        assert_eq!(out.push_stdout(b"more"), b"");
        let output = out.finish(completion());
        assert_eq!(output.stdout, format!("abcde{marker}").as_bytes());
        assert!(output.completion.stdout_truncated);
        assert!(!output.completion.stderr_truncated);
    }

    #[test]
    fn output_exactly_at_the_cap_is_not_truncated() {
        let mut out = CappedExecOutput::new(&caps(100, 4));
        assert_eq!(out.push_stderr(b"four"), b"four");
        let output = out.finish(completion());
        assert_eq!(output.stderr, b"four");
        assert!(!output.completion.stderr_truncated);
    }

    #[test]
    fn a_truncation_the_agent_flagged_stays_flagged() {
        let out = CappedExecOutput::new(&ClientConfig::default());
        let output = out.finish(Completion {
            stdout_truncated: true,
            ..completion()
        });
        assert!(output.completion.stdout_truncated);
    }
}
