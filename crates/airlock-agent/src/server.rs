//! Serving the protocol on one command stream and one event stream.
//!
//! One dispatcher reads requests (through the protocol crate's buffered
//! [`FrameReader`]); each operation runs in its own task; one writer sends
//! every event, fed by a bounded channel, so events of different operations
//! interleave while each operation's events stay in order. The last event of
//! an operation goes through the dispatcher, which forgets the op id first:
//! once the host has seen it, the id may be reused.
//!
//! Bad input never ends the service: a malformed, oversized or unknown line
//! is answered with an `error` event (on the line's op when readable, else
//! op 0), an op id already in flight or a chunk without an open write with
//! `bad_state`.

use crate::exec::{
    self, plan_exec, plan_install, AbortOnDrop, ExecSpec, StdinFeed, StdinInput,
    MAX_STDIN_QUEUED_BYTES,
};
use crate::files::{list_dir, FileReader, FileWriter};
use crate::packages::InstallTarget;
use crate::repl::Repls;
use crate::{AgentConfig, AgentError};
use airlock_protocol::{
    Data, ErrorKind, Event, EventBody, ExecMode, ExecRequest, FrameReader, FrameWriter, Language,
    OpId, ProtocolError, Request, RequestBody, PROTOCOL_VERSION,
};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

/// The agent's version, reported in `pong`.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Events queued for the writer before operations wait (backpressure).
const EVENT_QUEUE: usize = 64;
/// File chunks queued per write before the dispatcher waits.
const WRITE_QUEUE: usize = 16;
/// After the command stream ended: how long queued events may take to go
/// out.
const WRITER_DRAIN: Duration = Duration::from_secs(5);
/// Failed writes remembered (their late chunks are dropped quietly).
const FAILED_WRITES_REMEMBERED: usize = 1024;

/// Serves requests from `reader`, sending events to `writer`, until the
/// command stream ends. Operations still in flight then are cancelled
/// (their processes killed, partial writes removed) and queued events are
/// sent. The persistent interpreters of cells live as long as this call
/// (see [`serve_with`] to keep them across connections).
///
/// # Errors
/// [`AgentError::Config`] for an invalid configuration,
/// [`AgentError::Transport`] when either stream fails.
pub async fn serve<R, W>(reader: R, writer: W, config: Arc<AgentConfig>) -> Result<(), AgentError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let repls = Arc::new(Repls::new(Arc::clone(&config)));
    let served = serve_with(reader, writer, config, Arc::clone(&repls)).await;
    repls.shutdown().await;
    served
}

/// As [`serve`], with persistent interpreters that outlive it (the guest
/// agent keeps one set for its whole life, across reconnections of the
/// host).
///
/// # Errors
/// As [`serve`].
pub async fn serve_with<R, W>(
    reader: R,
    writer: W,
    config: Arc<AgentConfig>,
    repls: Arc<Repls>,
) -> Result<(), AgentError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    config.validate()?;
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let writer = write_events(
        events_rx,
        FrameWriter::with_limit(writer, config.max_line_bytes),
    );
    tokio::pin!(writer);
    let reader = FrameReader::with_limit(reader, config.max_line_bytes);
    // Say hello first: a ping sent before this channel opened is lost.
    let hello = Event::new(
        airlock_protocol::HELLO_OP,
        EventBody::Pong {
            version: AGENT_VERSION.to_owned(),
            protocol: airlock_protocol::PROTOCOL_VERSION,
        },
    );
    // The queue is empty: this cannot wait.
    let _ = events_tx.send(hello).await;
    let mut dispatcher = Dispatcher::new(config, repls, events_tx);
    let read_result = tokio::select! {
        result = dispatcher.run(reader) => result,
        written = &mut writer => {
            return written.and(Err(AgentError::Transport(std::io::Error::other(
                "the event writer stopped",
            ))));
        }
    };
    drop(dispatcher); // cancels the operations in flight, closes the queue
    match tokio::time::timeout(WRITER_DRAIN, writer).await {
        Ok(written) => written?,
        Err(_) => tracing::warn!("queued events not sent within {WRITER_DRAIN:?}: dropped"),
    }
    tracing::info!("command stream ended");
    read_result
}

/// Sends events until every sender is gone. An event too large for a line
/// is replaced by an error on its op.
async fn write_events<W: AsyncWrite + Unpin>(
    mut events: mpsc::Receiver<Event>,
    mut writer: FrameWriter<W>,
) -> Result<(), AgentError> {
    while let Some(event) = events.recv().await {
        let result = match writer.send(&event).await {
            Err(ProtocolError::Encode { message }) => {
                let body = EventBody::Error {
                    kind: ErrorKind::LimitExceeded,
                    message: format!(
                        "the {} event could not be sent: {message}",
                        event.body.type_name()
                    ),
                };
                writer.send(&Event::new(event.op, body)).await
            }
            other => other,
        };
        match result {
            Ok(()) => {}
            Err(ProtocolError::Io(e)) => return Err(AgentError::Transport(e)),
            Err(other) => {
                return Err(AgentError::Transport(std::io::Error::other(
                    other.to_string(),
                )))
            }
        }
    }
    Ok(())
}

/// Input of a write in progress.
#[derive(Debug)]
enum WriteInput {
    Chunk(Data),
    End,
}

/// An operation in flight.
struct OpSlot {
    _task: AbortOnDrop<()>,
    /// Set for writes: where their chunks go.
    chunks: Option<mpsc::Sender<WriteInput>>,
    /// Set for execs: turned true by a `cancel`.
    cancel: Option<watch::Sender<bool>>,
    /// A file read or write: a `cancel` ends it at once, unanswered.
    file: bool,
    /// Set for `piped_process` execs: where `stdin` and `close_stdin` go.
    stdin: Option<StdinQueue>,
}

/// The sending end of a process's stdin queue.
struct StdinQueue {
    tx: mpsc::UnboundedSender<StdinInput>,
    queued: Arc<AtomicUsize>,
}

type OpFuture = Pin<Box<dyn Future<Output = EventBody> + Send>>;

struct Dispatcher {
    config: Arc<AgentConfig>,
    repls: Arc<Repls>,
    events: mpsc::Sender<Event>,
    ops: HashMap<OpId, OpSlot>,
    failed_writes: HashSet<OpId>,
    done_tx: mpsc::UnboundedSender<(OpId, EventBody)>,
    done_rx: mpsc::UnboundedReceiver<(OpId, EventBody)>,
}

impl Dispatcher {
    fn new(config: Arc<AgentConfig>, repls: Arc<Repls>, events: mpsc::Sender<Event>) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self {
            config,
            repls,
            events,
            ops: HashMap::new(),
            failed_writes: HashSet::new(),
            done_tx,
            done_rx,
        }
    }

    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        mut reader: FrameReader<R>,
    ) -> Result<(), AgentError> {
        loop {
            tokio::select! {
                biased;
                Some((op, body)) = self.done_rx.recv() => self.finish(op, body).await?,
                next = reader.next_request() => match next {
                    Err(e) => return Err(AgentError::Transport(e)),
                    Ok(None) => return Ok(()),
                    Ok(Some(Err(error))) => self.bad_line(error).await?,
                    Ok(Some(Ok(request))) => self.handle(request).await?,
                },
            }
        }
    }

    /// Sends one event; fails only when the writer is gone.
    async fn emit(&self, op: OpId, body: EventBody) -> Result<(), AgentError> {
        self.events
            .send(Event::new(op, body))
            .await
            .map_err(|_| AgentError::Transport(std::io::Error::other("the event writer is gone")))
    }

    async fn refuse(&self, op: OpId, error: AgentError) -> Result<(), AgentError> {
        tracing::info!(op, kind = ?error.kind(), %error, "request refused");
        self.emit(op, error_body(&error)).await
    }

    /// An operation ended: forget it, then send its last event.
    async fn finish(&mut self, op: OpId, body: EventBody) -> Result<(), AgentError> {
        let Some(slot) = self.ops.remove(&op) else {
            // The op was cancelled (a malformed follow-up line) after its task
            // had finished: its error was the last event already. No new op
            // can hold the id yet, as `done` messages are handled before the
            // next request line.
            tracing::debug!(op, "last event of a cancelled operation dropped");
            return Ok(());
        };
        if slot.chunks.is_some() && matches!(body, EventBody::Error { .. }) {
            self.remember_failed_write(op);
        }
        self.emit(op, body).await
    }

    fn remember_failed_write(&mut self, op: OpId) {
        if self.failed_writes.len() >= FAILED_WRITES_REMEMBERED {
            self.failed_writes.clear();
        }
        self.failed_writes.insert(op);
    }

    async fn bad_line(&mut self, error: ProtocolError) -> Result<(), AgentError> {
        let op = error.op().unwrap_or(0);
        tracing::info!(op, kind = ?error.kind(), %error, "bad request line");
        // A malformed follow-up of an open write dooms that write.
        if self.ops.get(&op).is_some_and(|slot| slot.chunks.is_some()) {
            self.ops.remove(&op);
            self.remember_failed_write(op);
        }
        let body = EventBody::Error {
            kind: error.kind(),
            message: error.to_string(),
        };
        self.emit(op, body).await
    }

    async fn handle(&mut self, request: Request) -> Result<(), AgentError> {
        let op = request.op;
        let input = match request.body {
            RequestBody::FileChunk { data } => WriteInput::Chunk(data),
            RequestBody::FileEnd => WriteInput::End,
            body => {
                self.failed_writes.remove(&op);
                return self.start(op, body).await;
            }
        };
        let Some(chunks) = self.ops.get(&op).and_then(|slot| slot.chunks.clone()) else {
            if self.failed_writes.contains(&op) {
                if matches!(input, WriteInput::End) {
                    self.failed_writes.remove(&op);
                }
                return Ok(()); // the write already failed and said so
            }
            let action = if matches!(input, WriteInput::End) {
                "file_end"
            } else {
                "file_chunk"
            };
            return self
                .refuse(
                    op,
                    AgentError::BadState(format!(
                        "{action} for op {op}, which has no open write: send write_file first"
                    )),
                )
                .await;
        };
        // A closed channel: the write just failed; its error is on its way.
        let _ = chunks.send(input).await;
        Ok(())
    }

    async fn start(&mut self, op: OpId, body: RequestBody) -> Result<(), AgentError> {
        if self.ops.contains_key(&op) {
            return self
                .refuse(
                    op,
                    AgentError::BadState(format!("op {op} is already in flight: use a new op id")),
                )
                .await;
        }
        if let RequestBody::Stdin { target, .. } | RequestBody::CloseStdin { target } = &body {
            let target = *target;
            let Some(queue) = self.ops.get(&target).and_then(|slot| slot.stdin.as_ref()) else {
                tracing::debug!(op, target, "stdin for no piped process: ignored");
                return Ok(());
            };
            let input = match body {
                RequestBody::Stdin { data, .. } => {
                    let bytes = data.into_bytes();
                    let queued = queue.queued.fetch_add(bytes.len(), Ordering::Relaxed);
                    if queued + bytes.len() > MAX_STDIN_QUEUED_BYTES {
                        queue.queued.fetch_sub(bytes.len(), Ordering::Relaxed);
                        tracing::warn!(op, target, "stdin dropped: the process does not read it");
                        return Ok(());
                    }
                    StdinInput::Data(bytes)
                }
                _ => StdinInput::Close,
            };
            // A closed queue: the process has ended or closed its stdin.
            let _ = queue.tx.send(input);
            return Ok(());
        }
        if let RequestBody::Cancel { target } = body {
            // Not answered; an unknown or finished target is ignored.
            let Some(slot) = self.ops.get(&target) else {
                tracing::debug!(op, target, "cancel for no running operation: ignored");
                return Ok(());
            };
            if let Some(cancel) = &slot.cancel {
                tracing::info!(op, target, "exec cancelled");
                cancel.send_replace(true);
            } else if slot.file {
                // The host gave up on a transfer: end it now (a write's
                // temporary file is removed), send nothing more for it,
                // and drop the chunks still on their way.
                let was_write = slot.chunks.is_some();
                self.ops.remove(&target);
                if was_write {
                    self.remember_failed_write(target);
                }
                tracing::info!(op, target, "file transfer abandoned by the host");
            } else {
                tracing::debug!(
                    op,
                    target,
                    "cancel for an operation that cannot be cancelled: ignored"
                );
            }
            return Ok(());
        }
        // A ping always answers: it is how the host sees the agent is alive.
        let is_ping = matches!(body, RequestBody::Ping);
        if !is_ping && self.ops.len() >= self.config.max_ops_in_flight {
            return self
                .refuse(
                    op,
                    AgentError::LimitExceeded {
                        what: "operations in flight".into(),
                        limit_bytes: self.config.max_ops_in_flight as u64,
                    },
                )
                .await;
        }
        let action = body.action();
        let (cancel_tx, cancel_rx) = watch::channel(false);
        let ctx = OpCtx {
            op,
            config: Arc::clone(&self.config),
            repls: Arc::clone(&self.repls),
            events: self.events.clone(),
            cancel: cancel_rx,
        };
        let mut chunks = None;
        let mut cancel = None;
        let mut file = false;
        let mut stdin = None;
        let work: OpFuture = match body {
            RequestBody::Ping => {
                let pong = EventBody::Pong {
                    version: AGENT_VERSION.to_owned(),
                    protocol: PROTOCOL_VERSION,
                };
                return self.emit(op, pong).await;
            }
            // Routed by `handle`; answered here only for completeness.
            RequestBody::FileChunk { .. } | RequestBody::FileEnd => {
                return self
                    .refuse(op, AgentError::BadState("no open write".into()))
                    .await;
            }
            RequestBody::Exec(request) => {
                cancel = Some(cancel_tx);
                let input = (request.mode == ExecMode::PipedProcess).then(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let queued = Arc::new(AtomicUsize::new(0));
                    stdin = Some(StdinQueue {
                        tx,
                        queued: Arc::clone(&queued),
                    });
                    StdinFeed { rx, queued }
                });
                Box::pin(ctx.exec(request, input))
            }
            // Handled above; never operations of their own.
            RequestBody::Cancel { .. }
            | RequestBody::Stdin { .. }
            | RequestBody::CloseStdin { .. } => return Ok(()),
            RequestBody::WriteFile { path, mode, size } => {
                let (tx, rx) = mpsc::channel(WRITE_QUEUE);
                chunks = Some(tx);
                file = true;
                Box::pin(ctx.write(path, mode, size, rx))
            }
            RequestBody::ReadFile { path } => {
                file = true;
                Box::pin(ctx.read(path))
            }
            RequestBody::ListFiles { path } => Box::pin(ctx.list(path)),
            RequestBody::WarmRepl {
                language,
                for_template,
            } => Box::pin(ctx.warm(language, for_template)),
            RequestBody::ResetRepl { language } => {
                Box::pin(async move { EventBody::Complete(ctx.repls.reset(language).await) })
            }
            RequestBody::Reseed {
                entropy,
                unix_time_ns,
                copy,
            } => Box::pin(async move {
                let reseeded = crate::reseed::reseed(entropy.as_bytes(), unix_time_ns);
                if reseeded.is_ok() {
                    // The kernel first: the interpreters draw from it.
                    ctx.repls.reseed(copy).await;
                }
                last_event(reseeded)
            }),
            RequestBody::InstallPackages {
                language,
                packages,
                timeout_ms,
                env,
            } => Box::pin(ctx.install(language, packages, timeout_ms, env)),
        };
        tracing::info!(op, action, "operation started");
        let done = self.done_tx.clone();
        let task = tokio::spawn(async move {
            let last = work.await;
            let _ = done.send((op, last));
        });
        self.ops.insert(
            op,
            OpSlot {
                _task: AbortOnDrop(task),
                chunks,
                cancel,
                file,
                stdin,
            },
        );
        Ok(())
    }
}

fn error_body(error: &AgentError) -> EventBody {
    EventBody::Error {
        kind: error.kind(),
        message: error.to_string(),
    }
}

/// The last event of an operation from its result.
fn last_event(result: Result<EventBody, AgentError>) -> EventBody {
    result.unwrap_or_else(|error| {
        tracing::info!(kind = ?error.kind(), %error, "operation failed");
        error_body(&error)
    })
}

/// What an operation's task holds.
struct OpCtx {
    op: OpId,
    config: Arc<AgentConfig>,
    repls: Arc<Repls>,
    events: mpsc::Sender<Event>,
    /// Turns true when the host cancels this op (execs only).
    cancel: watch::Receiver<bool>,
}

impl OpCtx {
    async fn emit(&self, body: EventBody) -> Result<(), AgentError> {
        self.events
            .send(Event::new(self.op, body))
            .await
            .map_err(|_| AgentError::Transport(std::io::Error::other("the event writer is gone")))
    }

    async fn run_process(&self, spec: ExecSpec) -> EventBody {
        last_event(
            exec::run(self.op, spec, &self.config, &self.events)
                .await
                .map(EventBody::Complete),
        )
    }

    async fn exec(self, request: ExecRequest, input: Option<StdinFeed>) -> EventBody {
        if !request.mode.spawns_process() {
            return last_event(
                self.repls
                    .run_cell(self.op, request, &self.events, self.cancel.clone())
                    .await
                    .map(EventBody::Complete),
            );
        }
        let spec = ExecSpec {
            plan: plan_exec(request.language, &request.code),
            env: request.env,
            cwd: request.cwd,
            timeout: Duration::from_millis(request.timeout_ms),
            forward_output: true,
            cancel: Some(self.cancel.clone()),
            input,
        };
        self.run_process(spec).await
    }

    async fn warm(self, language: Language, for_template: bool) -> EventBody {
        last_event(
            self.repls
                .warm(language, for_template)
                .await
                .map(EventBody::Complete),
        )
    }

    /// Installs into the writable package layer when the guest has one
    /// (the install VM: the layer is sealed read-only afterwards, whatever
    /// the outcome), else into the sandbox user's own space.
    async fn install(
        self,
        language: Language,
        packages: Vec<String>,
        timeout_ms: u64,
        env: std::collections::BTreeMap<String, String>,
    ) -> EventBody {
        let layer = crate::packages::writable_layer();
        let target = if layer {
            InstallTarget::Layer
        } else {
            InstallTarget::Home(self.config.home.to_string_lossy().into_owned())
        };
        let plan = match plan_install(language, &packages, &target) {
            Ok(plan) => plan,
            Err(error) => return last_event(Err(error)),
        };
        if layer {
            let dir = match language {
                Language::Javascript => crate::packages::NODE_PREFIX,
                _ => crate::packages::PYTHON_DIR,
            };
            let owner = self.config.run_as.map(|r| (r.uid, r.gid));
            let prepared =
                exec::blocking(move || crate::packages::prepare_layer(&[dir], owner)).await;
            if let Err(error) = prepared {
                return last_event(Err(error));
            }
        }
        let spec = ExecSpec {
            plan,
            env,
            cwd: None,
            timeout: Duration::from_millis(timeout_ms),
            forward_output: true,
            cancel: None,
            input: None,
        };
        let done = self.run_process(spec).await;
        if !layer {
            return done;
        }
        match exec::blocking(crate::packages::seal_layer).await {
            Ok(()) => {
                tracing::info!(op = self.op, "package layer sealed read-only");
                done
            }
            Err(error) => last_event(Err(error)),
        }
    }

    async fn write(
        self,
        path: String,
        mode: u32,
        size: Option<u64>,
        mut input: mpsc::Receiver<WriteInput>,
    ) -> EventBody {
        let result = async {
            let mut writer = FileWriter::create(&self.config, &path, mode, size).await?;
            self.emit(EventBody::FileAck {
                size: 0,
                sha256: None,
            })
            .await?;
            while let Some(message) = input.recv().await {
                match message {
                    WriteInput::Chunk(data) => writer.append(data.as_bytes()).await?,
                    WriteInput::End => {
                        let (size, sha256) = writer.commit().await?;
                        tracing::info!(op = self.op, path, size, "file written");
                        return Ok(EventBody::FileAck {
                            size,
                            sha256: Some(sha256),
                        });
                    }
                }
            }
            Err(AgentError::BadState(
                "the command stream ended before file_end".into(),
            ))
        }
        .await;
        last_event(result)
    }

    async fn read(self, path: String) -> EventBody {
        let result = async {
            let mut reader = FileReader::open(&self.config, &path).await?;
            // The first chunk says the size, so that a host streaming the
            // file on can refuse it before passing any of it.
            let mut size = Some(reader.opened_size());
            while let Some(chunk) = reader.next_chunk().await? {
                self.emit(EventBody::FileData {
                    data: Data::base64(chunk),
                    size: size.take(),
                })
                .await?;
            }
            let (size, sha256) = reader.finish();
            tracing::info!(op = self.op, path, size, "file read");
            Ok(EventBody::FileDone { size, sha256 })
        }
        .await;
        last_event(result)
    }

    async fn list(self, path: String) -> EventBody {
        last_event(
            list_dir(&self.config, &path)
                .await
                .map(|entries| EventBody::FileList { entries }),
        )
    }
}
