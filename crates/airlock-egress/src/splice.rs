//! Splicing an allowed connection both ways, with byte counts and an idle
//! timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Implements `AsyncWrite` for a reader wrapper by passing every write
/// through to its `inner` stream.
macro_rules! forward_async_write {
    ($ty:ty) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
            }

            // Forwarded too: the default writes only the first buffer, and
            // rustls's last write before a failed handshake (the alert
            // after the ServerHello) is one vectored write.
            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }
        }
    };
}
pub(crate) use forward_async_write;

/// When a connection last moved a byte, readable from another task.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    last_nanos: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Self {
        Activity {
            start: Instant::now(),
            last_nanos: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_nanos.fetch_max(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_nanos(self.last_nanos.load(Ordering::Relaxed))
    }
}

/// A stream whose reads add to a byte counter and mark activity.
pub(crate) struct Metered<'a, S> {
    inner: S,
    read_bytes: &'a AtomicU64,
    activity: &'a Activity,
}

impl<'a, S> Metered<'a, S> {
    pub(crate) fn new(inner: S, read_bytes: &'a AtomicU64, activity: &'a Activity) -> Self {
        Metered {
            inner,
            read_bytes,
            activity,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let read = buf.filled().len() - before;
        if read > 0 {
            self.read_bytes.fetch_add(read as u64, Ordering::Relaxed);
            self.activity.touch();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A stream whose reads are checked for secret placeholders (plain HTTP
/// after the first request head): a read that completes one fails with an
/// error instead of returning its bytes, which ends the splice before they
/// are forwarded. `None`: no check.
pub(crate) struct PlaceholderGuard<'a, S> {
    inner: S,
    secrets: Option<&'a crate::secret::SecretSet>,
    scanner: crate::secret::StreamScanner,
    found: Option<usize>,
}

impl<'a, S> PlaceholderGuard<'a, S> {
    pub(crate) fn new(inner: S, secrets: Option<&'a crate::secret::SecretSet>) -> Self {
        PlaceholderGuard {
            inner,
            secrets,
            scanner: crate::secret::StreamScanner::new(),
            found: None,
        }
    }

    /// The secret whose placeholder was seen, if any.
    pub(crate) fn found(&self) -> Option<usize> {
        self.found
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PlaceholderGuard<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.found.is_some() {
            return Poll::Ready(Err(io::Error::other("secret placeholder")));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if let Some(secrets) = self.secrets {
            let this = &mut *self;
            if let Some(secret) = this.scanner.feed(secrets, &buf.filled()[before..]) {
                this.found = Some(secret);
                buf.set_filled(before);
                return Poll::Ready(Err(io::Error::other(
                    "a secret placeholder in a plain-HTTP request",
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

forward_async_write!(PlaceholderGuard<'_, S>);

/// How a splice ended.
#[derive(Debug)]
pub(crate) enum SpliceEnd {
    /// Both sides closed their write halves (or one closed and the other
    /// followed).
    Closed,
    /// No byte moved for the idle timeout.
    Idle,
    /// A read or write failed (a reset, usually).
    Error(io::Error),
}

/// Copies both ways between `a` and `b` until both directions ended, a side
/// failed, or nothing moved for `idle`. Backpressure comes from the copy:
/// a side is read only when the previous chunk was written to the other.
pub(crate) async fn splice<A, B>(
    a: &mut A,
    b: &mut B,
    activity: &Activity,
    idle: Duration,
    buffer_bytes: usize,
) -> SpliceEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    activity.touch();
    let copy = tokio::io::copy_bidirectional_with_sizes(a, b, buffer_bytes, buffer_bytes);
    tokio::select! {
        result = copy => match result {
            Ok(_) => SpliceEnd::Closed,
            Err(err) => SpliceEnd::Error(err),
        },
        () = idle_expired(activity, idle) => SpliceEnd::Idle,
    }
}

/// Resolves once `idle` has passed since the last activity.
pub(crate) async fn idle_expired(activity: &Activity, idle: Duration) {
    loop {
        let deadline = activity.last() + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_splice_counts_bytes_both_ways_and_ends_when_both_sides_close() {
        let (mut guest, mut proxy_guest_side) = tokio::io::duplex(64);
        let (mut proxy_upstream_side, mut upstream) = tokio::io::duplex(64);
        let (out, inb) = (AtomicU64::new(0), AtomicU64::new(0));
        let activity = Activity::new();
        let splicing = async {
            let mut g = Metered::new(&mut proxy_guest_side, &out, &activity);
            let mut u = Metered::new(&mut proxy_upstream_side, &inb, &activity);
            splice(&mut g, &mut u, &activity, Duration::from_secs(5), 16).await
        };
        let guest_side = async {
            guest.write_all(&[1u8; 1000]).await.expect("guest writes");
            let mut back = Vec::new();
            guest.read_to_end(&mut back).await.expect("guest reads");
            guest.shutdown().await.expect("guest closes");
            back.len()
        };
        let upstream_side = async {
            let mut got = vec![0u8; 1000];
            upstream.read_exact(&mut got).await.expect("upstream reads");
            upstream
                .write_all(&[2u8; 300])
                .await
                .expect("upstream writes");
            upstream.shutdown().await.expect("upstream closes");
        };
        let peers = async { tokio::join!(guest_side, upstream_side).0 };
        let (end, back) = tokio::join!(splicing, peers);
        assert!(matches!(end, SpliceEnd::Closed), "{end:?}");
        assert_eq!(back, 300);
        assert_eq!(out.load(Ordering::Relaxed), 1000);
        assert_eq!(inb.load(Ordering::Relaxed), 300);
    }

    #[tokio::test]
    async fn a_splice_without_traffic_ends_after_the_idle_timeout() {
        let (_guest, mut a) = tokio::io::duplex(64);
        let (mut b, _upstream) = tokio::io::duplex(64);
        let activity = Activity::new();
        let started = Instant::now();
        let end = splice(&mut a, &mut b, &activity, Duration::from_millis(200), 1024).await;
        assert!(matches!(end, SpliceEnd::Idle), "{end:?}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn traffic_postpones_the_idle_timeout() {
        let (mut guest, mut a) = tokio::io::duplex(64);
        let (mut b, mut upstream) = tokio::io::duplex(64);
        let activity = Activity::new();
        let started = Instant::now();
        let idle = Duration::from_millis(300);
        let trickle = async {
            let mut byte = [0u8; 1];
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                guest.write_all(b"x").await.expect("guest writes");
                upstream
                    .read_exact(&mut byte)
                    .await
                    .expect("upstream reads");
            }
        };
        let counter = AtomicU64::new(0);
        let mut a = Metered::new(&mut a, &counter, &activity);
        let mut b = Metered::new(&mut b, &counter, &activity);
        let (end, ()) = tokio::join!(splice(&mut a, &mut b, &activity, idle, 1024), trickle);
        assert!(matches!(end, SpliceEnd::Idle), "{end:?}");
        // 6 bytes 100 ms apart, then 300 ms of silence.
        assert!(
            started.elapsed() >= Duration::from_millis(850),
            "{:?}",
            started.elapsed()
        );
    }
}
