//! Server-sent events of a run or an exec, in the order the code made
//! them: `stdout` and `stderr` events (data `{"text": ..}`, or `{"b64":
//! ..}` for bytes that are not UTF-8) and one `result` event per value the
//! code showed (data: the MIME bundle, `docs/outputs.md`); then one
//! `cell_error` event when the code raised (data `{name, value,
//! traceback}`), and last one `done` event with the whole answer (or one
//! `error` event).
//!
//! The work runs in a task owned by the response stream: when the client
//! goes away the stream is dropped, the task is aborted, and dropping the
//! run destroys its VM.

use crate::error::ServerError;
use airlock::{CellResult, OutputStream, RunObserver, RunResult};
use airlock_protocol::{CellError, ExecResult};
use axum::response::sse::{Event, KeepAlive, Sse};
use base64::Engine;
use serde::Serialize;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Sends a run's output as events; keeps a UTF-8 sequence cut between
/// two chunks until its end arrives, so text stays text.
#[derive(Debug)]
pub struct EventObserver {
    tx: mpsc::UnboundedSender<Event>,
    pending: [Vec<u8>; 2],
}

impl EventObserver {
    fn new(tx: mpsc::UnboundedSender<Event>) -> Self {
        Self {
            tx,
            pending: [Vec::new(), Vec::new()],
        }
    }

    /// Sends what is still held back (an incomplete UTF-8 tail) as bytes.
    fn flush(&mut self) {
        for (index, name) in [(0, "stdout"), (1, "stderr")] {
            let rest = std::mem::take(&mut self.pending[index]);
            for event in output_events(name, &rest) {
                let _ = self.tx.send(event);
            }
        }
    }

    /// Sends an event whose data is `value`'s JSON.
    fn send_json(&self, name: &'static str, value: impl Serialize) {
        match Event::default().event(name).json_data(value) {
            // A closed channel: the client left; the task is being aborted.
            Ok(event) => {
                let _ = self.tx.send(event);
            }
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
        let (index, name) = match stream {
            OutputStream::Stdout => (0, "stdout"),
            OutputStream::Stderr => (1, "stderr"),
        };
        let pending = &mut self.pending[index];
        pending.extend_from_slice(bytes);
        let cut = utf8_cut(pending);
        if cut == 0 {
            return;
        }
        let rest = pending.split_off(cut);
        let chunk = std::mem::replace(pending, rest);
        // A closed channel: the client left; the task is being aborted.
        for event in output_events(name, &chunk) {
            let _ = self.tx.send(event);
        }
    }

    fn result(&mut self, result: &ExecResult) {
        // Output held back (a cut UTF-8 sequence) came before the result.
        self.flush();
        self.send_json("result", result);
    }
}

/// The events of one whole chunk: its UTF-8 runs as text, the bytes
/// between them as base64.
fn output_events(name: &'static str, mut bytes: &[u8]) -> Vec<Event> {
    let mut events = Vec::new();
    while !bytes.is_empty() {
        match std::str::from_utf8(bytes) {
            Ok(_) => {
                events.push(output_event(name, bytes));
                break;
            }
            Err(e) => {
                let (text, rest) = bytes.split_at(e.valid_up_to());
                if !text.is_empty() {
                    events.push(output_event(name, text));
                }
                let bad = e.error_len().unwrap_or(rest.len());
                events.push(output_event(name, &rest[..bad]));
                bytes = &rest[bad..];
            }
        }
    }
    events
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

/// One `stdout`/`stderr` event: text when the bytes are UTF-8, else base64.
pub fn output_event(name: &'static str, bytes: &[u8]) -> Event {
    let data = match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::json!({ "text": text }),
        Err(_) => {
            serde_json::json!({ "b64": base64::engine::general_purpose::STANDARD.encode(bytes) })
        }
    };
    Event::default().event(name).data(data.to_string())
}

/// The events of a task.
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
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

/// Spawns `work` with an [`EventObserver`] and streams its events; `work`
/// gives the observer back with its result, which becomes the last event.
pub fn stream<W, F, T>(work: W) -> impl axum::response::IntoResponse
where
    W: FnOnce(EventObserver) -> F,
    F: Future<Output = (EventObserver, Result<T, ServerError>)> + Send + 'static,
    T: Answer,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let future = work(EventObserver::new(tx));
    let task = tokio::spawn(async move {
        let (observer, result) = future.await;
        observer.finish(result);
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

    /// Every event `observer` sent, as debug text, once it is dropped.
    async fn drain(mut rx: mpsc::UnboundedReceiver<Event>) -> Vec<String> {
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
    async fn text_split_across_chunks_arrives_as_text() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut observer = EventObserver::new(tx);
        let euro = "€".as_bytes();
        observer.output(OutputStream::Stdout, &[b'a', euro[0]]);
        observer.output(OutputStream::Stdout, &euro[1..]);
        observer.output(OutputStream::Stderr, &[0xff]);
        observer.output(OutputStream::Stderr, b"x\xffy");
        observer.finish(Ok::<_, ServerError>(serde_json::json!({"exit_code": 0})));
        let events = drain(rx).await;
        assert_eq!(events.len(), 7, "{events:#?}");
        assert!(
            events[0].contains("stdout") && events[0].contains(r#"\"text\":\"a\""#),
            "{}",
            events[0]
        );
        assert!(events[1].contains(r"\xe2\x82\xac"), "{}", events[1]);
        assert!(events[2].contains("b64"), "{}", events[2]);
        assert!(events[3].contains(r#"\"text\":\"x\""#), "{}", events[3]);
        assert!(events[4].contains("b64"), "{}", events[4]);
        assert!(events[5].contains(r#"\"text\":\"y\""#), "{}", events[5]);
        assert!(events[6].contains("done"), "{}", events[6]);
    }

    #[tokio::test]
    async fn a_result_comes_after_the_output_held_back_before_it() {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut observer = EventObserver::new(tx);
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
}
