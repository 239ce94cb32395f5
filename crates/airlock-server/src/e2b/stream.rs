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
//! While the call is silent, a keepalive frame goes every
//! [`KEEPALIVE_EVERY`] (or the client's `Keepalive-Ping-Interval`, if
//! shorter): the listener ends a connection idle for its idle timeout
//! (`docs/security.md`), and E2B's clients ignore these frames.

use airlock::SessionCanceller;
use axum::body::{Body, Bytes};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How often a silent stream sends a keepalive frame, at most: well
/// within the listener's idle timeout (60 s by default).
pub(crate) const KEEPALIVE_EVERY: Duration = Duration::from_secs(15);

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

    /// Resolves once the body is gone (the client left).
    pub async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// A body whose frames `work` makes in a task of its own, with
/// `keepalive` after `every` of silence; dropping the body before the
/// task ends interrupts the call via `canceller`.
pub(crate) fn spawn_body<F, Fut>(
    max_bytes: usize,
    canceller: SessionCanceller,
    keepalive: (Bytes, Duration),
    work: F,
) -> Body
where
    F: FnOnce(Frames) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    fed_body(
        max_bytes,
        Box::new(move || canceller.cancel()),
        keepalive,
        work,
    )
}

/// As [`spawn_body`] for a call the body does not own (a subscription to
/// an envd process): the client leaving does nothing to it; `work` sees
/// it through [`Frames::closed`].
pub(crate) fn watching_body<F, Fut>(max_bytes: usize, keepalive: (Bytes, Duration), work: F) -> Body
where
    F: FnOnce(Frames) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    fed_body(max_bytes, Box::new(|| {}), keepalive, work)
}

/// [`spawn_body`] with any `on_leave` (run when the body goes before the
/// task ends).
fn fed_body<F, Fut>(
    max_bytes: usize,
    on_leave: Box<dyn FnOnce() + Send>,
    (keepalive, every): (Bytes, Duration),
    work: F,
) -> Body
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
    let every = every.max(Duration::from_secs(1));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    Body::from_stream(Fed {
        rx,
        keepalive,
        ticker,
        guard: InterruptOnDrop {
            on_leave: Some(on_leave),
            task: Some(task),
        },
    })
}

struct Fed {
    rx: mpsc::UnboundedReceiver<Bytes>,
    keepalive: Bytes,
    /// Ticks after a silence; reset by every frame.
    ticker: tokio::time::Interval,
    guard: InterruptOnDrop,
}

impl futures_core::Stream for Fed {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(frame)) => {
                self.ticker.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                // Every sender is gone: the task has ended.
                self.guard.task = None;
                Poll::Ready(None)
            }
            Poll::Pending => match self.ticker.poll_tick(cx) {
                Poll::Ready(_) => Poll::Ready(Some(Ok(self.keepalive.clone()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Interrupts the call when the body goes before the task ends.
struct InterruptOnDrop {
    on_leave: Option<Box<dyn FnOnce() + Send>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if let (Some(task), Some(on_leave)) = (self.task.take(), self.on_leave.take()) {
            if !task.is_finished() {
                tracing::info!("e2b stream: the client left; interrupting its call");
                on_leave();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn quiet_for(
        silence: Duration,
    ) -> impl FnOnce(Frames) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
        move |frames| {
            Box::pin(async move {
                frames.last(Bytes::from_static(b"first\n"));
                tokio::time::sleep(silence).await;
                frames.last(Bytes::from_static(b"end\n"));
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_call_sends_keepalives_until_its_end() {
        let keepalive = (Bytes::from_static(b"ka\n"), Duration::from_secs(15));
        let body = fed_body(
            1 << 20,
            Box::new(|| {}),
            keepalive,
            quiet_for(Duration::from_secs(40)),
        );
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"first\nka\nka\nend\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_leaves_interrupts_the_call_once() {
        let left = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&left);
        let keepalive = (Bytes::from_static(b"ka\n"), Duration::from_secs(15));
        let mut body = fed_body(
            1 << 20,
            Box::new(move || flag.store(true, Ordering::SeqCst)),
            keepalive,
            quiet_for(Duration::from_secs(600)),
        );
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"first\n");
        drop(body);
        assert!(left.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn output_past_the_cap_is_dropped_and_the_last_frames_go() {
        let keepalive = (Bytes::from_static(b"ka\n"), Duration::from_secs(15));
        let body = fed_body(10, Box::new(|| {}), keepalive, |mut frames| async move {
            assert!(!frames.output(Bytes::from_static(b"12345")));
            assert!(
                frames.output(Bytes::from_static(b"678901")),
                "the first frame past the cap says so"
            );
            assert!(!frames.output(Bytes::from_static(b"x")));
            frames.last(Bytes::from_static(b"end"));
        });
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"12345end");
    }
}
