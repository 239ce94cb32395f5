//! Server-sent events of a run or an exec, in the order the code made
//! them: `stdout` and `stderr` events (data `{"text": ..}`, or, for a
//! chunk that is not UTF-8, one event `{"b64": ..}` with the whole chunk)
//! and one `result` event per value the code showed (data: the MIME
//! bundle, `docs/outputs.md`); then one `cell_error` event when the code
//! raised (data `{name, value, traceback}`), and last one `done` event
//! with the whole answer (or one `error` event).
//!
//! Bounded: the events go through a channel of [`CHANNEL_EVENTS`]; when
//! it is full, the work (the run, the VM's output reader with it) is not
//! polled until the client has read, so a client that does not read slows
//! its run and holds at most the channel and one chunk's events. It slows
//! it for [`StreamLimits::max_stall_s`] at most: past that the stream is
//! cut (`cut` with reason `client_stalled`), its output and result events
//! are dropped, and the work runs on to its end, so that a client that
//! stops reading cannot hold a VM past its run's timeout; `done` still
//! carries the whole answer when the client reads again. Each
//! stream carries at most [`StreamLimits`]' events and bytes of output
//! and results; past either, one `cut` event (data `{"reason",
//! "max_events", "max_bytes"}`) and no more of them, while `done` still
//! carries the whole answer.
//!
//! The work runs in a task owned by the response stream: when the client
//! goes away the stream is dropped, the task is aborted, and dropping the
//! run destroys its VM.

use crate::config::StreamLimits;
use crate::error::ServerError;
use crate::metrics::Metrics;
use airlock::{CellResult, OutputStream, RunObserver, RunResult};
use airlock_protocol::{CellError, ExecResult};
use axum::response::sse::{Event, KeepAlive, Sse};
use base64::Engine;
use serde::Serialize;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Events waiting for the client; past them the work waits.
pub const CHANNEL_EVENTS: usize = 16;

/// Events made while the channel was full, in order; the stream's task
/// moves them to the channel before it polls the work again.
type Overflow = Arc<Mutex<VecDeque<Event>>>;

fn lock(overflow: &Overflow) -> std::sync::MutexGuard<'_, VecDeque<Event>> {
    overflow.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where a stream's events go, and what it has carried.
#[derive(Debug)]
struct Outbox {
    tx: mpsc::Sender<Event>,
    overflow: Overflow,
    limits: StreamLimits,
    metrics: Metrics,
    events: usize,
    bytes: usize,
    cut: bool,
    /// Set by the stream's task when the client stalled: no more output
    /// or result events.
    stalled: Arc<AtomicBool>,
}

impl Outbox {
    /// Queues `event`, in order: into the channel, or when it is full
    /// into the overflow. A closed channel (the client left) drops it.
    fn push(&self, event: Event) {
        let mut overflow = lock(&self.overflow);
        if !overflow.is_empty() {
            overflow.push_back(event);
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(event)) = self.tx.try_send(event) {
            overflow.push_back(event);
        }
    }

    /// Queues an output or result event of `data`, within the stream's
    /// caps; the first past them becomes the `cut` event.
    fn push_capped(&mut self, name: &'static str, data: String) {
        if self.cut || self.stalled.load(Ordering::Relaxed) {
            return;
        }
        let reason = if self.events + 1 > self.limits.max_events {
            Some("max_events")
        } else if self.bytes + data.len() > self.limits.max_bytes {
            Some("max_bytes")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.cut = true;
            Metrics::count(&self.metrics.streams_cut, reason);
            let data = serde_json::json!({
                "reason": reason,
                "max_events": self.limits.max_events,
                "max_bytes": self.limits.max_bytes,
            });
            self.push(Event::default().event("cut").data(data.to_string()));
            return;
        }
        self.events += 1;
        self.bytes += data.len();
        self.push(Event::default().event(name).data(data));
    }
}

/// Sends a run's output as events; keeps a UTF-8 sequence cut between
/// two chunks until its end arrives, so text stays text.
#[derive(Debug)]
pub struct EventObserver {
    out: Outbox,
    pending: WholeUtf8,
}

impl EventObserver {
    fn new(out: Outbox) -> Self {
        Self {
            out,
            pending: WholeUtf8::default(),
        }
    }

    /// Sends what is still held back (an incomplete UTF-8 tail) as bytes.
    fn flush(&mut self) {
        for (stream, name) in [
            (OutputStream::Stdout, "stdout"),
            (OutputStream::Stderr, "stderr"),
        ] {
            let rest = self.pending.take(stream);
            if !rest.is_empty() {
                self.out.push_capped(name, output_data(&rest));
            }
        }
    }

    /// Sends a last event (never cut) whose data is `value`'s JSON.
    fn send_json(&self, name: &'static str, value: impl Serialize) {
        match Event::default().event(name).json_data(value) {
            Ok(event) => self.out.push(event),
            Err(e) => tracing::warn!(error = %e, event = name, "cannot encode an event"),
        }
    }

    /// Sends the last events: the cell error if any, then `done` (or
    /// `error`).
    fn finish<T: Answer>(mut self, result: Result<T, ServerError>) {
        self.flush();
        match result {
            Ok(value) => {
                if let Some(error) = value.cell_error() {
                    self.send_json("cell_error", error);
                }
                self.send_json("done", value);
            }
            Err(e) => self.send_json("error", e.body()),
        }
    }
}

/// The whole answer of a streamed call: the `done` event's data, and the
/// code's uncaught exception for the `cell_error` event before it.
pub trait Answer: Serialize {
    /// The code's uncaught exception, if it raised one.
    fn cell_error(&self) -> Option<&CellError>;
}

impl Answer for RunResult {
    fn cell_error(&self) -> Option<&CellError> {
        self.error.as_ref()
    }
}

impl Answer for CellResult {
    fn cell_error(&self) -> Option<&CellError> {
        self.error.as_ref()
    }
}

impl RunObserver for EventObserver {
    fn output(&mut self, stream: OutputStream, bytes: &[u8]) {
        let name = match stream {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        };
        if let Some(chunk) = self.pending.push(stream, bytes) {
            self.out.push_capped(name, output_data(&chunk));
        }
    }

    fn result(&mut self, result: &ExecResult) {
        // Output held back (a cut UTF-8 sequence) came before the result.
        self.flush();
        match serde_json::to_string(result) {
            Ok(data) => self.out.push_capped("result", data),
            Err(e) => tracing::warn!(error = %e, "cannot encode a result event"),
        }
    }
}

/// The output of the two streams, each held back while it ends inside a
/// UTF-8 sequence (a chunk boundary can cut one), so that text is handed
/// on as whole text: the SSE events and E2B's NDJSON lines alike.
#[derive(Debug, Default)]
pub(crate) struct WholeUtf8 {
    pending: [Vec<u8>; 2],
}

impl WholeUtf8 {
    fn slot(&mut self, stream: OutputStream) -> &mut Vec<u8> {
        match stream {
            OutputStream::Stdout => &mut self.pending[0],
            OutputStream::Stderr => &mut self.pending[1],
        }
    }

    /// Appends `bytes` of `stream`; the part that ends whole, if any (an
    /// incomplete tail stays held back).
    pub(crate) fn push(&mut self, stream: OutputStream, bytes: &[u8]) -> Option<Vec<u8>> {
        let pending = self.slot(stream);
        pending.extend_from_slice(bytes);
        let cut = utf8_cut(pending);
        if cut == 0 {
            return None;
        }
        let rest = pending.split_off(cut);
        Some(std::mem::replace(pending, rest))
    }

    /// What is held back of `stream` (at the end, or before a result),
    /// taken.
    pub(crate) fn take(&mut self, stream: OutputStream) -> Vec<u8> {
        std::mem::take(self.slot(stream))
    }
}

/// Where to cut `bytes` so that the part before is whole: everything,
/// except an incomplete UTF-8 sequence (at most 3 bytes) at the end.
pub fn utf8_cut(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() && bytes.len() - e.valid_up_to() < 4 => e.valid_up_to(),
        // Invalid bytes (not just cut): send all, as base64.
        Err(_) => bytes.len(),
    }
}

/// The data of one `stdout`/`stderr` event: `{"text"}` when the chunk is
/// UTF-8, else `{"b64"}` of the whole chunk (standard alphabet, padded).
fn output_data(bytes: &[u8]) -> String {
    let data = match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::json!({ "text": text }),
        Err(_) => {
            serde_json::json!({ "b64": base64::engine::general_purpose::STANDARD.encode(bytes) })
        }
    };
    data.to_string()
}

/// The events of a task.
pub struct Events {
    rx: mpsc::Receiver<Event>,
    task: JoinHandle<()>,
}

impl futures_core::Stream for Events {
    type Item = Result<Event, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|event| event.map(Ok))
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a wait for the client to read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    /// Everything made is in the channel.
    Done,
    /// The client went away.
    Left,
    /// The client read nothing for the stall limit.
    Stalled,
}

/// Moves the overflow to the channel, waiting for room, each wait at most
/// `stall` (`None`: no limit).
async fn drain_overflow(
    tx: &mpsc::Sender<Event>,
    overflow: &Overflow,
    stall: Option<Duration>,
) -> Drained {
    loop {
        let Some(event) = lock(overflow).pop_front() else {
            return Drained::Done;
        };
        let reserved = match stall {
            Some(stall) => match tokio::time::timeout(stall, tx.reserve()).await {
                Ok(reserved) => reserved,
                Err(_) => {
                    lock(overflow).push_front(event);
                    return Drained::Stalled;
                }
            },
            None => tx.reserve().await,
        };
        match reserved {
            Ok(permit) => permit.send(event),
            Err(_) => return Drained::Left,
        }
    }
}

/// Cuts a stream whose client stalled: the output and result events not
/// yet in the channel are dropped (the answer has them), one `cut` event
/// says why, and no more are made.
fn cut_stalled(
    overflow: &Overflow,
    stalled: &AtomicBool,
    limits: &StreamLimits,
    metrics: &Metrics,
) {
    stalled.store(true, Ordering::Relaxed);
    Metrics::count(&metrics.streams_cut, "client_stalled");
    let data = serde_json::json!({
        "reason": "client_stalled",
        "max_stall_s": limits.max_stall_s,
    });
    let mut overflow = lock(overflow);
    overflow.clear();
    overflow.push_back(Event::default().event("cut").data(data.to_string()));
}

/// Spawns `work` with an [`EventObserver`] and streams its events; `work`
/// gives the observer back with its result, which becomes the last event.
/// `limits` caps the stream; a cut is counted in `metrics`.
pub fn stream<W, F, T>(
    limits: &StreamLimits,
    metrics: &Metrics,
    work: W,
) -> impl axum::response::IntoResponse
where
    W: FnOnce(EventObserver) -> F,
    F: Future<Output = (EventObserver, Result<T, ServerError>)> + Send + 'static,
    T: Answer,
{
    let (tx, rx) = mpsc::channel(CHANNEL_EVENTS);
    let overflow = Overflow::default();
    let stalled = Arc::new(AtomicBool::new(false));
    let out = Outbox {
        tx: tx.clone(),
        overflow: Arc::clone(&overflow),
        limits: limits.clone(),
        metrics: metrics.clone(),
        events: 0,
        bytes: 0,
        cut: false,
        stalled: Arc::clone(&stalled),
    };
    let future = work(EventObserver::new(out));
    let (limits, metrics) = (limits.clone(), metrics.clone());
    let task = tokio::spawn(async move {
        let mut work = std::pin::pin!(future);
        let stall = limits.max_stall();
        let (observer, result) = loop {
            // While the client has not read what the work made, the work
            // waits (its VM's output waits in the VM), up to the stall
            // limit; then the work runs on without events.
            if !stalled.load(Ordering::Relaxed) {
                match drain_overflow(&tx, &overflow, Some(stall)).await {
                    Drained::Done => {}
                    Drained::Left => return,
                    Drained::Stalled => cut_stalled(&overflow, &stalled, &limits, &metrics),
                }
            }
            let step = std::future::poll_fn(|cx| match work.as_mut().poll(cx) {
                Poll::Ready(done) => Poll::Ready(Some(done)),
                Poll::Pending
                    if !stalled.load(Ordering::Relaxed) && !lock(&overflow).is_empty() =>
                {
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            })
            .await;
            if let Some(done) = step {
                break done;
            }
        };
        observer.finish(result);
        // No VM is held any more: the connection's send deadline bounds
        // this wait.
        drain_overflow(&tx, &overflow, None).await;
    });
    Sse::new(Events { rx, task }).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Answer for serde_json::Value {
        fn cell_error(&self) -> Option<&CellError> {
            None
        }
    }

    /// An observer under `limits` whose channel holds every event.
    fn observer(limits: StreamLimits) -> (EventObserver, mpsc::Receiver<Event>, Metrics) {
        let (tx, rx) = mpsc::channel(1024);
        let metrics = Metrics::new();
        let out = Outbox {
            tx,
            overflow: Overflow::default(),
            limits,
            metrics: metrics.clone(),
            events: 0,
            bytes: 0,
            cut: false,
            stalled: Arc::default(),
        };
        (EventObserver::new(out), rx, metrics)
    }

    /// Every event sent, as debug text, once the observer is dropped.
    async fn drain(mut rx: mpsc::Receiver<Event>) -> Vec<String> {
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(format!("{event:?}"));
        }
        events
    }

    #[test]
    fn a_cut_utf8_sequence_waits_for_its_end() {
        let euro = "€".as_bytes();
        assert_eq!(utf8_cut(b"abc"), 3);
        assert_eq!(utf8_cut(&[b'a', euro[0], euro[1]]), 1);
        assert_eq!(utf8_cut(euro), 3);
        assert_eq!(utf8_cut(&[0xff, b'a']), 2, "invalid bytes are not held");
    }

    #[tokio::test]
    async fn text_split_across_chunks_arrives_as_text_and_a_bad_chunk_as_one_b64_event() {
        let (mut observer, rx, _) = observer(StreamLimits::default());
        let euro = "€".as_bytes();
        observer.output(OutputStream::Stdout, &[b'a', euro[0]]);
        observer.output(OutputStream::Stdout, &euro[1..]);
        observer.output(OutputStream::Stderr, &[0xff]);
        observer.output(OutputStream::Stderr, b"x\xffy");
        observer.finish(Ok::<_, ServerError>(serde_json::json!({"exit_code": 0})));
        let events = drain(rx).await;
        assert_eq!(events.len(), 5, "{events:#?}");
        assert!(
            events[0].contains("stdout") && events[0].contains(r#"\"text\":\"a\""#),
            "{}",
            events[0]
        );
        assert!(events[1].contains(r"\xe2\x82\xac"), "{}", events[1]);
        assert!(events[2].contains(r#"\"b64\":\"/w==\""#), "{}", events[2]);
        // "x\xffy", whole, as one event.
        assert!(events[3].contains(r#"\"b64\":\"eP95\""#), "{}", events[3]);
        assert!(events[4].contains("done"), "{}", events[4]);
    }

    #[tokio::test]
    async fn a_result_comes_after_the_output_held_back_before_it() {
        let (mut observer, rx, _) = observer(StreamLimits::default());
        let euro = "€".as_bytes();
        observer.output(OutputStream::Stdout, &[b'a', euro[0]]);
        observer.result(&ExecResult {
            data: [("text/plain".to_owned(), serde_json::json!("2"))].into(),
            is_main_result: true,
            truncated: false,
        });
        observer.finish(Ok::<_, ServerError>(serde_json::json!({})));
        let events = drain(rx).await;
        let names: Vec<&str> = events
            .iter()
            .map(|e| {
                ["stdout", "result", "done"]
                    .into_iter()
                    .find(|name| e.contains(&format!("event: {name}")))
                    .unwrap_or("?")
            })
            .collect();
        assert_eq!(names, ["stdout", "stdout", "result", "done"], "{events:#?}");
        assert!(events[1].contains("b64"), "the held byte: {}", events[1]);
        assert!(
            events[2].contains(r#"\"is_main_result\":true"#),
            "{}",
            events[2]
        );
    }

    #[tokio::test]
    async fn past_the_event_cap_one_cut_event_then_only_the_answer() {
        let limits = StreamLimits {
            max_events: 3,
            ..StreamLimits::default()
        };
        let (mut observer, rx, metrics) = observer(limits);
        for _ in 0..10 {
            observer.output(OutputStream::Stdout, b"line\n");
        }
        observer.finish(Ok::<_, ServerError>(serde_json::json!({"stdout": "all"})));
        let events = drain(rx).await;
        assert_eq!(events.len(), 5, "{events:#?}");
        assert!(events[3].contains("event: cut"), "{}", events[3]);
        assert!(events[3].contains("max_events"), "{}", events[3]);
        assert!(events[4].contains("event: done"), "{}", events[4]);
        assert!(metrics
            .render()
            .contains("airlock_streams_cut_total{kind=\"max_events\"} 1"));
    }

    #[tokio::test]
    async fn past_the_byte_cap_one_cut_event() {
        let limits = StreamLimits {
            max_bytes: 100,
            ..StreamLimits::default()
        };
        let (mut observer, rx, _) = observer(limits);
        observer.output(OutputStream::Stdout, &[0xff; 40]);
        observer.output(OutputStream::Stdout, &[0xff; 40]);
        observer.output(OutputStream::Stderr, b"more");
        observer.finish(Ok::<_, ServerError>(serde_json::json!({})));
        let events = drain(rx).await;
        let names: Vec<bool> = events.iter().map(|e| e.contains("event: cut")).collect();
        assert_eq!(names, [false, true, false], "{events:#?}");
        assert!(events[1].contains("max_bytes"), "{}", events[1]);
    }
}
