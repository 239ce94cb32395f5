//! Streamed answers (`/execute`'s JSON lines, envd's Connect streams):
//! the call runs in a task that pushes frames to the response body as
//! they come; the headers go out at once (the JS SDK's request timer
//! runs until they arrive).
//!
//! When the client goes away (the SDKs' execution timeout closes the
//! connection), the body is dropped and the call is interrupted through
//! the session's canceller: the cell stops as with Ctrl-C and the
//! interpreter's state stays, as E2B's server interrupts its kernel. The
//! task then ends with the call, which its own timeout bounds (and the
//! session's close, at once); the frames it still makes are dropped.
//!
//! The output frames one stream carries are capped at
//! `[streams] max_bytes`; the last frames (the end, an error) always go.

use airlock::SessionCanceller;
use axum::body::{Body, Bytes};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Where a streamed call's frames go.
#[derive(Debug)]
pub(crate) struct Frames {
    tx: mpsc::UnboundedSender<Bytes>,
    sent: usize,
    max_bytes: usize,
    cut: bool,
}

impl Frames {
    /// Sends an output frame, unless the stream's cap is passed (then it
    /// and every later output frame are dropped; `true` the first time).
    pub fn output(&mut self, frame: Bytes) -> bool {
        if self.cut {
            return false;
        }
        if self.sent + frame.len() > self.max_bytes {
            self.cut = true;
            return true;
        }
        self.sent += frame.len();
        // A closed body (the client left): the frame has nowhere to go.
        let _ = self.tx.send(frame);
        false
    }

    /// Sends a last frame (never cut).
    pub fn last(&self, frame: Bytes) {
        let _ = self.tx.send(frame);
    }
}

/// A body whose frames `work` makes in a task of its own; dropping the
/// body before the task ends interrupts the call via `canceller`.
pub(crate) fn spawn_body<F, Fut>(max_bytes: usize, canceller: SessionCanceller, work: F) -> Body
where
    F: FnOnce(Frames) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let frames = Frames {
        tx,
        sent: 0,
        max_bytes,
        cut: false,
    };
    let task = tokio::spawn(work(frames));
    Body::from_stream(Fed {
        rx,
        guard: InterruptOnDrop {
            canceller,
            task: Some(task),
        },
    })
}

struct Fed {
    rx: mpsc::UnboundedReceiver<Bytes>,
    guard: InterruptOnDrop,
}

impl futures_core::Stream for Fed {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.rx.poll_recv(cx);
        if let Poll::Ready(None) = polled {
            // Every sender is gone: the task has ended.
            self.guard.task = None;
        }
        polled.map(|frame| frame.map(Ok))
    }
}

/// Interrupts the call when the body goes before the task ends.
struct InterruptOnDrop {
    canceller: SessionCanceller,
    task: Option<JoinHandle<()>>,
}

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            if !task.is_finished() {
                tracing::info!("e2b stream: the client left; interrupting its call");
                self.canceller.cancel();
            }
        }
    }
}
