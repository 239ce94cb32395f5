//! The host side of the protocol: a [`Client`] over any reader/writer pair.
//!
//! One task reads events and routes each to the operation that awaits it (by
//! op id), so several operations run at once over one channel. Requests go
//! through a shared writer. When the guest closes the channel every pending
//! operation ends with [`ProtocolError::Closed`].
//!
//! Backpressure: each operation buffers a bounded number of events; when an
//! operation's buffer is full the reader waits, which stalls the channel
//! (and, through virtio-serial, the guest's writer) until that operation is
//! read. Read every stream you start, or drop it: a dropped operation's
//! events are discarded.

use crate::framing::{FrameReader, FrameWriter, DEFAULT_MAX_LINE_BYTES};
use crate::message::*;
use crate::{check_protocol, Data, ProtocolError, HELLO_OP};
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Size of the chunks a file is sent in.
pub const FILE_CHUNK_BYTES: usize = 256 * 1024;

/// Events buffered per operation before the reader waits (backpressure).
const EVENTS_PER_OP: usize = 256;

type Writer = Box<dyn AsyncWrite + Send + Unpin>;
type Routes = Arc<Mutex<HashMap<OpId, mpsc::Sender<EventBody>>>>;

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
    writer: tokio::sync::Mutex<FrameWriter<Writer>>,
    routes: Routes,
    hello: tokio::sync::watch::Receiver<Option<AgentInfo>>,
    next_op: AtomicU64,
    reader: JoinHandle<()>,
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
    }
}

impl Client {
    /// A client reading events from `reader` and writing requests to
    /// `writer`. Must be called inside a tokio runtime.
    pub fn new<R, W>(reader: R, writer: W) -> Self
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
        Self {
            writer: tokio::sync::Mutex::new(FrameWriter::new(Box::new(writer) as Writer)),
            routes,
            hello,
            next_op: AtomicU64::new(1),
            reader,
        }
    }

    /// Whether the event stream has ended (the guest is gone).
    pub fn is_closed(&self) -> bool {
        self.reader.is_finished()
    }

    async fn send(&self, request: &Request) -> Result<(), ProtocolError> {
        self.writer.lock().await.send(request).await
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
        let mut stream = self.exec(request).await?;
        within(deadline, "exec", async {
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            while let Some(event) = stream.next().await? {
                match event {
                    ExecEvent::Stdout(b) => stdout.extend_from_slice(&b),
                    ExecEvent::Stderr(b) => stderr.extend_from_slice(&b),
                    ExecEvent::Complete(completion) => {
                        return Ok(ExecOutput {
                            stdout,
                            stderr,
                            completion,
                        })
                    }
                }
            }
            Err(ProtocolError::Closed)
        })
        .await
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

    /// Reads a file from the sandbox home and checks its sha256.
    ///
    /// # Errors
    /// [`ProtocolError::Guest`] (not found, refused path),
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
                    EventBody::FileData { data: chunk } => data.extend_from_slice(chunk.as_bytes()),
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

    /// Asks the agent to start `language`'s interpreter once (its files
    /// into the page cache) and waits for it to finish.
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
        use tokio::io::AsyncWriteExt;
        let (tx, mut rx) = mpsc::channel(EVENTS_PER_OP);
        lock(&self.routes).insert(op, tx);
        let result = async {
            let mut writer = self.writer.lock().await;
            let inner = writer.get_mut();
            inner.write_all(line).await?;
            inner.write_all(b"\n").await?;
            inner.flush().await?;
            drop(writer);
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
