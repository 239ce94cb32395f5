//! The channel: the mux under every operation.
//!
//! One reader task routes each event to the operation that awaits it (by
//! op id) and records the agent's hello; one writer task owns the command
//! stream and writes each line whole. An operation registers its id with
//! [`Channel::open`], reads its events with [`next`] and leaves with
//! [`Channel::close`]; nothing here knows what the operations are.

use super::config::ClientConfig;
use crate::framing::{encode_line_within, FrameReader, DEFAULT_MAX_LINE_BYTES};
use crate::message::{EventBody, OpId, Request, RequestBody};
use crate::{ProtocolError, HELLO_OP};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Events buffered per operation before the reader waits (backpressure).
const EVENTS_PER_OP: usize = 256;

/// Lines queued for the writer task (a file chunk line is ~350 KiB).
const QUEUED_LINES: usize = 8;

type Writer = Box<dyn AsyncWrite + Send + Unpin>;
type Routes = Arc<Mutex<HashMap<OpId, mpsc::Sender<EventBody>>>>;

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

/// The reader and writer tasks over one reader/writer pair, and the table
/// of operations awaiting events. The tasks end when it drops.
pub(super) struct Channel {
    outgoing: mpsc::Sender<Outgoing>,
    /// Why the writer stopped, once it has.
    broken: Arc<Mutex<Option<String>>>,
    routes: Routes,
    hello: watch::Receiver<Option<AgentInfo>>,
    next_op: AtomicU64,
    send_timeout: Duration,
    max_line_bytes: usize,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("next_op", &self.next_op)
            .finish_non_exhaustive()
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl Channel {
    /// Starts the reader and writer tasks. Must be called inside a tokio
    /// runtime.
    pub(super) fn start<R, W>(reader: R, writer: W, config: &ClientConfig) -> Self
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let routes: Routes = Arc::default();
        let (hello_tx, hello) = watch::channel(None);
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
            send_timeout: config.send_timeout,
            max_line_bytes: config.max_line_bytes,
            reader,
            writer,
        }
    }

    /// Whether the event stream has ended (the guest is gone).
    pub(super) fn is_closed(&self) -> bool {
        self.reader.is_finished()
    }

    /// Whether an earlier write failed: every send now fails.
    pub(super) fn is_broken(&self) -> bool {
        lock(&self.broken).is_some()
    }

    /// The agent's hello, as the reader recorded it (`None` until it came).
    pub(super) fn hello(&self) -> watch::Receiver<Option<AgentInfo>> {
        self.hello.clone()
    }

    /// A fresh operation id, not registered.
    pub(super) fn new_op(&self) -> OpId {
        self.next_op.fetch_add(1, Ordering::Relaxed)
    }

    /// Encodes `request` and sends it (see [`Channel::send_line`]).
    pub(super) async fn send(&self, request: &Request) -> Result<(), ProtocolError> {
        let line = encode_line_within(request, self.max_line_bytes)?;
        self.send_line(line).await
    }

    /// Hands one whole line to the writer task and waits for its write,
    /// within [`ClientConfig::send_timeout`]. Cancelling this future after
    /// the hand-over does not stop the write: the line goes out whole.
    pub(super) async fn send_line(&self, line: Vec<u8>) -> Result<(), ProtocolError> {
        let broken = || ProtocolError::ChannelBroken {
            reason: lock(&self.broken)
                .clone()
                .unwrap_or_else(|| "the writer task ended".into()),
        };
        if self.is_broken() {
            return Err(broken());
        }
        let (done, written) = oneshot::channel();
        let sent = within(self.send_timeout, "send", async {
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
                    self.send_timeout
                )
            });
        }
        sent
    }

    /// Queues `request` for the writer without waiting, for a `Drop` that
    /// cannot await (an abandoned transfer's cancel). Best effort: `false`
    /// when the channel is broken, full or closed, or the line cannot be
    /// encoded.
    pub(super) fn send_nowait(&self, request: &Request) -> bool {
        if self.is_broken() {
            return false;
        }
        let Ok(line) = encode_line_within(request, self.max_line_bytes) else {
            return false;
        };
        // Nobody waits for this write: the writer's report goes nowhere.
        let (done, _written) = oneshot::channel();
        self.outgoing.try_send(Outgoing { line, done }).is_ok()
    }

    /// Registers a new operation and sends its first request.
    pub(super) async fn open(
        &self,
        body: RequestBody,
    ) -> Result<(OpId, mpsc::Receiver<EventBody>), ProtocolError> {
        if self.is_closed() {
            return Err(ProtocolError::Closed);
        }
        let op = self.new_op();
        let rx = self.route(op);
        if let Err(e) = self.send(&Request::new(op, body)).await {
            self.close(op);
            return Err(e);
        }
        Ok((op, rx))
    }

    /// Routes the events of `op` to the returned receiver (replacing an
    /// earlier route of the same id).
    pub(super) fn route(&self, op: OpId) -> mpsc::Receiver<EventBody> {
        let (tx, rx) = mpsc::channel(EVENTS_PER_OP);
        lock(&self.routes).insert(op, tx);
        rx
    }

    /// Ends operation `op`: its later events are dropped.
    pub(super) fn close(&self, op: OpId) {
        lock(&self.routes).remove(&op);
    }

    /// A guard that ends operation `op` when dropped.
    pub(super) fn closing(&self, op: OpId) -> ClosingOp<'_> {
        ClosingOp { channel: self, op }
    }

    /// How many operations have a route (tests).
    #[cfg(test)]
    pub(super) fn open_routes(&self) -> usize {
        lock(&self.routes).len()
    }
}

/// Ends its operation when dropped ([`Channel::closing`]).
pub(super) struct ClosingOp<'a> {
    channel: &'a Channel,
    op: OpId,
}

impl Drop for ClosingOp<'_> {
    fn drop(&mut self) {
        self.channel.close(self.op);
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
    hello: watch::Sender<Option<AgentInfo>>,
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
pub(super) async fn next(rx: &mut mpsc::Receiver<EventBody>) -> Result<EventBody, ProtocolError> {
    match rx.recv().await {
        Some(event) => guest_error(event),
        None => Err(ProtocolError::Closed),
    }
}

/// `event`, or [`ProtocolError::Guest`] when it is the guest's error.
pub(super) fn guest_error(event: EventBody) -> Result<EventBody, ProtocolError> {
    match event {
        EventBody::Error { kind, message } => Err(ProtocolError::Guest { kind, message }),
        event => Ok(event),
    }
}

/// `fut`, or [`ProtocolError::Timeout`] naming `what` after `timeout`.
pub(super) async fn within<T>(
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

/// An event that does not belong in `operation`'s answer.
pub(super) fn unexpected(operation: &'static str, event: EventBody) -> ProtocolError {
    ProtocolError::Unexpected {
        operation,
        event: event.type_name().to_owned(),
    }
}
