//! Server-sent events of a run or an exec: `stdout` and `stderr` events
//! (data `{"text": ..}`, or `{"b64": ..}` for bytes that are not UTF-8),
//! then one `result` event (or one `error` event).
//!
//! The work runs in a task owned by the response stream: when the client
//! goes away the stream is dropped, the task is aborted, and dropping the
//! run destroys its VM.

use crate::error::ServerError;
use airlock::{OutputStream, RunObserver};
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

    /// Sends the final event.
    fn finish<T: Serialize>(mut self, result: Result<T, ServerError>) {
        self.flush();
        let event = match result {
            Ok(value) => Event::default().event("result").json_data(value),
            Err(e) => Event::default().event("error").json_data(e.body()),
        };
        match event {
            Ok(event) => {
                let _ = self.tx.send(event);
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the final event"),
        }
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
    T: Serialize,
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
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut observer = EventObserver::new(tx);
        let euro = "€".as_bytes();
        observer.output(OutputStream::Stdout, &[b'a', euro[0]]);
        observer.output(OutputStream::Stdout, &euro[1..]);
        observer.output(OutputStream::Stderr, &[0xff]);
        observer.output(OutputStream::Stderr, b"x\xffy");
        observer.finish(Ok::<_, ServerError>(serde_json::json!({"exit_code": 0})));
        let mut events = Vec::new();
        while let Some(event) = rx.recv().await {
            events.push(format!("{event:?}"));
        }
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
        assert!(events[6].contains("result"), "{}", events[6]);
    }
}
