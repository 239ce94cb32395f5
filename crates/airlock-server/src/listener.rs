//! The HTTP listener the server owns (hyper, HTTP/1.1): the accept loop
//! and every connection's life, so that nothing without a key can hold
//! the server.
//!
//! - Connection caps: [`ListenerConfig::max_connections`] in all and
//!   [`ListenerConfig::max_connections_per_address`] from one IPv4
//!   address or one IPv6 /64 (a host owns a whole /64: counting each of
//!   its addresses would give it 2^64 caps; [`address_block`]); a
//!   connection over either is closed at once, before a byte is read
//!   (`airlock_connections_refused_total{kind}`).
//! - Deadlines, watched per connection ([`Watch`]): a request's head must
//!   arrive within the header timeout (from the accept for the first
//!   request, from the head's first byte for later ones); a kept-alive
//!   connection waits at most the idle timeout for its next request; a
//!   response that moves no byte for the idle timeout (a client that
//!   does not read) ends its connection; a request's body must arrive
//!   within the body timeout ([`DeadlineBody`]). Each close is counted
//!   (`airlock_connections_closed_total{kind}`).
//! - The descriptor limit: [`raise_nofile_limit`] raises the soft limit
//!   to the hard one at start, and [`fit_descriptors`] lowers a
//!   connection cap that would not fit under it.
//! - Ownership: every connection task lives in the [`serve`] future's
//!   `JoinSet`. When `shutdown` resolves, the loop stops accepting and
//!   asks each connection to finish its request and close; the future
//!   ends when all have. Dropping it aborts the connections left, and
//!   with them their requests.
//!
//! HTTP/2 is not served (put a reverse proxy in front for it): one
//! protocol, one set of deadlines. TLS is served only where asked
//! ([`serve_tls`]: the E2B listener's host names, `tls.rs`), on the same
//! port as plain HTTP; for the main listener put a TLS terminator in
//! front.

use crate::config::{ListenerConfig, ServerConfig};
use crate::error::{Result, ServerError};
use crate::metrics::Metrics;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::Router;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Descriptors kept free beside the connections: the VMs' sockets,
/// logs, pipes and the server's own files.
pub const RESERVED_DESCRIPTORS: u64 = 1024;

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit; returns
/// the limit in force after. Logged.
///
/// # Errors
/// [`ServerError::Internal`] when the limit cannot be read.
pub fn raise_nofile_limit() -> Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| ServerError::internal("read the descriptor limit (RLIMIT_NOFILE)", e))?;
    if soft >= hard {
        tracing::info!(nofile = soft, "descriptor limit already at its hard limit");
        return Ok(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!(
                from = soft,
                to = hard,
                "descriptor limit raised to its hard limit"
            );
            Ok(hard)
        }
        Err(e) => {
            tracing::warn!(error = %e, nofile = soft, "cannot raise the descriptor limit; keeping it");
            Ok(soft)
        }
    }
}

/// The hard descriptor limit of this process (what
/// [`raise_nofile_limit`] raises to).
///
/// # Errors
/// [`ServerError::Internal`] when the limit cannot be read.
pub fn hard_nofile_limit() -> Result<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .map_err(|e| ServerError::internal("read the descriptor limit (RLIMIT_NOFILE)", e))
}

/// The fewest connections the server lowers its cap to when the
/// descriptor limit is short; below this it refuses to start.
pub const MIN_FITTED_CONNECTIONS: usize = 64;

/// Fits `config`'s connection cap, with [`RESERVED_DESCRIPTORS`] beside
/// it, under a descriptor limit of `nofile`: a cap that does not fit is
/// lowered (and the per-address cap with it), since a lower cap only
/// makes the server safer, and the new cap is returned for the caller to
/// warn about; `None` when it fitted.
///
/// # Errors
/// [`ServerError::Config`] naming both numbers and the two fixes, when
/// not even [`MIN_FITTED_CONNECTIONS`] fit.
pub fn fit_descriptors(config: &mut ServerConfig, nofile: u64) -> Result<Option<usize>> {
    let wanted = config.listener.max_connections as u64 + RESERVED_DESCRIPTORS;
    if wanted <= nofile {
        return Ok(None);
    }
    let room = usize::try_from(nofile.saturating_sub(RESERVED_DESCRIPTORS)).unwrap_or(usize::MAX);
    if room < MIN_FITTED_CONNECTIONS {
        return Err(ServerError::Config {
            source_name: "settings".into(),
            message: format!(
                "listener.max_connections ({}) and {RESERVED_DESCRIPTORS} descriptors for VMs need a descriptor limit of {wanted}, \
                 but the hard limit (RLIMIT_NOFILE) is {nofile}, too low for even {MIN_FITTED_CONNECTIONS} connections: \
                 raise the limit (systemd: LimitNOFILE=; shell: ulimit -Hn)",
                config.listener.max_connections
            ),
        });
    }
    config.listener.max_connections = room;
    config.listener.max_connections_per_address =
        config.listener.max_connections_per_address.min(room);
    Ok(Some(room))
}

/// The warning for a cap [`fit_descriptors`] lowered from `configured`.
pub fn lowered_cap_message(configured: usize, lowered: usize, nofile: u64) -> String {
    format!(
        "listener.max_connections lowered from {configured} to {lowered}: the hard descriptor limit \
         (RLIMIT_NOFILE) is {nofile} and {RESERVED_DESCRIPTORS} are kept for VMs; raise the limit \
         (systemd: LimitNOFILE=; shell: ulimit -Hn) or set a lower listener.max_connections"
    )
}

/// Open connections, in all and per address.
#[derive(Debug)]
struct Slots {
    max: usize,
    per_address: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open connection's slot, given back when dropped.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
    metrics: Metrics,
}

/// What the per-address cap counts a connection from `ip` under: an IPv4
/// address as itself (also when it comes IPv4-mapped, `::ffff:a.b.c.d`),
/// an IPv6 address as its /64 (pure).
pub fn address_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !(u128::from(u64::MAX));
                IpAddr::V6(std::net::Ipv6Addr::from(prefix))
            }
        },
    }
}

impl Slots {
    /// A slot for a connection from `ip`, or the cap it would exceed.
    fn take(
        self: &Arc<Self>,
        ip: IpAddr,
        metrics: &Metrics,
    ) -> std::result::Result<Slot, &'static str> {
        let ip = address_block(ip);
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.0 >= self.max {
            return Err("max_connections");
        }
        let from_ip = open.1.entry(ip).or_insert(0);
        if *from_ip >= self.per_address {
            return Err("max_connections_per_address");
        }
        *from_ip += 1;
        open.0 += 1;
        metrics.connections_open.inc();
        Ok(Slot {
            slots: Arc::clone(self),
            ip,
            metrics: metrics.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
        self.metrics.connections_open.dec();
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown`
/// resolves, then lets each connection finish its request and ends when
/// all have (see the module's doc). Dropping the future ends every
/// connection at once.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerConfig,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) {
    serve_tls(listener, router, limits, metrics, None, shutdown).await;
}

/// As [`serve`], and with `tls` a connection whose first byte opens a TLS
/// handshake (0x16) is served over TLS, any other as plain HTTP: one port
/// for both (the E2B listener's host names and its headers mode). The
/// handshake must end within the header timeout, counted from the accept.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    limits: ListenerConfig,
    metrics: Metrics,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Slots {
        max: limits.max_connections,
        per_address: limits.max_connections_per_address,
        open: Mutex::new((0, HashMap::new())),
    });
    let limits = Arc::new(limits);
    let stop = CancellationToken::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors (EMFILE) or a connection reset before
                // its accept: wait a moment instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                Metrics::count(&metrics.connections_refused, "accept_error");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match slots.take(peer.ip(), &metrics) {
            Ok(slot) => slot,
            Err(cap) => {
                Metrics::count(&metrics.connections_refused, cap);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            router: router.clone(),
            limits: Arc::clone(&limits),
            metrics: metrics.clone(),
            peer,
            stop: stop.clone(),
        };
        connections.spawn(connection.serve(stream, slot, tls.clone()));
    }
    drop(listener);
    stop.cancel();
    while connections.join_next().await.is_some() {}
}

/// One connection's parts.
struct Connection {
    router: Router,
    limits: Arc<ListenerConfig>,
    metrics: Metrics,
    peer: SocketAddr,
    stop: CancellationToken,
}

impl Connection {
    /// Serves the connection until it closes, a deadline passes or the
    /// server stops; `_slot` is given back when it ends. With `tls`, a
    /// connection that opens with a TLS handshake is served over TLS.
    async fn serve(self, stream: TcpStream, _slot: Slot, tls: Option<tokio_rustls::TlsAcceptor>) {
        let watch = Arc::new(Watch::new());
        let watched = Watched {
            inner: stream,
            watch: Arc::clone(&watch),
        };
        let Some(acceptor) = tls else {
            return self.serve_io(TokioIo::new(watched), watch).await;
        };
        // One deadline from the accept for the first byte and the handshake.
        let deadline = tokio::time::Instant::now() + self.limits.header_read_timeout();
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, watched.inner.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
            // Plain HTTP (or a connection closed at once: hyper sees it).
            Ok(Ok(_)) => return self.serve_io(TokioIo::new(watched), watch).await,
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "connection failed before its first byte");
                return;
            }
            Err(_) => {
                Metrics::count(&self.metrics.connections_closed, "header_timeout");
                return;
            }
        }
        match tokio::time::timeout_at(deadline, acceptor.accept(watched)).await {
            Ok(Ok(tls)) => self.serve_io(TokioIo::new(tls), watch).await,
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed");
                Metrics::count(&self.metrics.connections_closed, "tls_handshake");
            }
            Err(_) => Metrics::count(&self.metrics.connections_closed, "header_timeout"),
        }
    }

    /// Serves HTTP/1.1 on `io` (plain or TLS) under the deadlines `watch`
    /// keeps.
    async fn serve_io<I>(self, io: TokioIo<I>, watch: Arc<Watch>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = {
            let watch = Arc::clone(&watch);
            let router = self.router.clone();
            let peer = self.peer;
            let body_timeout = self.limits.request_body_timeout();
            let metrics = self.metrics.clone();
            hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let handling = Busy::start(&watch, Phase::Handler);
                let mut request = request
                    .map(|body| Body::new(DeadlineBody::new(body, body_timeout, metrics.clone())));
                request.extensions_mut().insert(ConnectInfo(peer));
                let router = router.clone();
                let watch = Arc::clone(&watch);
                async move {
                    let response = router
                        .oneshot(request)
                        .await
                        .unwrap_or_else(|e: std::convert::Infallible| match e {});
                    // The handler is done: from now the body is being sent.
                    let sending = Busy::start(&watch, Phase::Sending);
                    drop(handling);
                    Ok::<_, std::convert::Infallible>(response.map(|body| {
                        Body::new(SendingBody {
                            inner: body,
                            _busy: sending,
                        })
                    }))
                }
            })
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // A backstop only: the watch below enforces the deadlines.
            .header_read_timeout(self.limits.header_read_timeout() + self.limits.idle_timeout())
            .keep_alive(true);
        let connection = builder.serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        let mut stopping = false;
        loop {
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = self.stop.cancelled(), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
                kind = watch.expired(&self.limits) => {
                    tracing::debug!(peer = %self.peer, kind, "connection closed: deadline passed");
                    Metrics::count(&self.metrics.connections_closed, kind);
                    return;
                }
            }
        }
    }
}

/// What a connection is doing, for its deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A handler runs (the request's body is read under its own deadline).
    Handler,
    /// A response's body is being sent.
    Sending,
}

/// A connection's clock: milliseconds since its accept of the last byte
/// moved, of the start of the current wait for a request, and of the
/// current head's first byte; how many handlers and responses are busy.
#[derive(Debug)]
struct Watch {
    accepted: Instant,
    last_io_ms: AtomicU64,
    /// When the connection last became idle (0: never; its first request
    /// is awaited).
    idle_since_ms: AtomicU64,
    /// The first byte read since the connection became idle (0: none).
    head_started_ms: AtomicU64,
    handlers: AtomicUsize,
    sending: AtomicUsize,
    changed: tokio::sync::Notify,
}

impl Watch {
    fn new() -> Self {
        Self {
            accepted: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            handlers: AtomicUsize::new(0),
            sending: AtomicUsize::new(0),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Milliseconds since the accept, at least 1 (0 means "not yet").
    fn now_ms(&self) -> u64 {
        u64::try_from(self.accepted.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.accepted + Duration::from_millis(ms)
    }

    fn on_read(&self) {
        let now = self.now_ms();
        self.last_io_ms.store(now, Ordering::Relaxed);
        if self.handlers.load(Ordering::Relaxed) == 0
            && self.sending.load(Ordering::Relaxed) == 0
            && self
                .head_started_ms
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    fn on_write(&self) {
        self.last_io_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// The next deadline and what it is, or `None` while a handler runs.
    fn deadline(&self, limits: &ListenerConfig) -> Option<(Instant, &'static str)> {
        if self.handlers.load(Ordering::Relaxed) > 0 {
            return None;
        }
        if self.sending.load(Ordering::Relaxed) > 0 {
            let last = self.last_io_ms.load(Ordering::Relaxed);
            return Some((self.at(last) + limits.idle_timeout(), "send_timeout"));
        }
        let idle_since = self.idle_since_ms.load(Ordering::Relaxed);
        let head_started = self.head_started_ms.load(Ordering::Relaxed);
        if idle_since == 0 {
            // The first request: its head must come within the header
            // timeout of the accept, whatever trickles in meanwhile.
            return Some((
                self.accepted + limits.header_read_timeout(),
                "header_timeout",
            ));
        }
        if head_started != 0 {
            return Some((
                self.at(head_started) + limits.header_read_timeout(),
                "header_timeout",
            ));
        }
        Some((self.at(idle_since) + limits.idle_timeout(), "idle_timeout"))
    }

    /// Resolves with the kind of deadline passed, when one does.
    async fn expired(&self, limits: &ListenerConfig) -> &'static str {
        loop {
            let changed = self.changed.notified();
            match self.deadline(limits) {
                Some((at, kind)) if at <= Instant::now() => return kind,
                Some((at, _)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        () = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// A handler running or a response being sent; when the last ends, the
/// connection is idle.
#[derive(Debug)]
struct Busy {
    watch: Arc<Watch>,
    phase: Phase,
}

impl Busy {
    fn start(watch: &Arc<Watch>, phase: Phase) -> Self {
        match phase {
            Phase::Handler => {
                watch.handlers.fetch_add(1, Ordering::Relaxed);
                watch.head_started_ms.store(0, Ordering::Relaxed);
            }
            Phase::Sending => {
                watch.sending.fetch_add(1, Ordering::Relaxed);
                watch.last_io_ms.store(watch.now_ms(), Ordering::Relaxed);
            }
        }
        watch.changed.notify_one();
        Self {
            watch: Arc::clone(watch),
            phase,
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let watch = &self.watch;
        match self.phase {
            Phase::Handler => watch.handlers.fetch_sub(1, Ordering::Relaxed),
            Phase::Sending => watch.sending.fetch_sub(1, Ordering::Relaxed),
        };
        if watch.handlers.load(Ordering::Relaxed) == 0 && watch.sending.load(Ordering::Relaxed) == 0
        {
            watch.head_started_ms.store(0, Ordering::Relaxed);
            watch.idle_since_ms.store(watch.now_ms(), Ordering::Relaxed);
        }
        watch.changed.notify_one();
    }
}

/// A socket that tells its [`Watch`] of every byte moved.
struct Watched {
    inner: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.on_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.on_write();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.on_write();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The error of a request body that missed its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (listener.request_body_timeout_s)")]
pub struct BodyDeadline(Duration);

/// A request body that fails once its deadline passes.
struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    metrics: Metrics,
}

impl DeadlineBody {
    fn new(inner: Incoming, timeout: Duration, metrics: Metrics) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            metrics,
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            Metrics::count(&self.metrics.connections_closed, "request_body_timeout");
            return Poll::Ready(Some(Err(Box::new(BodyDeadline(self.timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body being sent; its connection is busy until it is
/// dropped.
struct SendingBody {
    inner: Body,
    _busy: Busy,
}

impl http_body::Body for SendingBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_cap_that_does_not_fit_the_descriptor_limit_is_lowered_to_fit() {
        let mut config = ServerConfig::default();
        let needed = config.listener.max_connections as u64 + RESERVED_DESCRIPTORS;
        assert_eq!(fit_descriptors(&mut config, needed).unwrap(), None);
        assert_eq!(config.listener.max_connections, 4096);

        let lowered = fit_descriptors(&mut config, 1024 + 100).unwrap();

        assert_eq!(lowered, Some(100));
        assert_eq!(config.listener.max_connections, 100);
        assert_eq!(config.listener.max_connections_per_address, 100);
        let msg = lowered_cap_message(4096, 100, 1124);
        assert!(msg.contains("from 4096 to 100"), "{msg}");
        assert!(msg.contains("LimitNOFILE"), "{msg}");
    }

    #[test]
    fn a_descriptor_limit_too_low_for_any_useful_cap_is_refused() {
        let mut config = ServerConfig::default();

        let msg = fit_descriptors(&mut config, RESERVED_DESCRIPTORS + 10)
            .unwrap_err()
            .to_string();

        assert!(msg.contains("LimitNOFILE"), "{msg}");
        assert!(msg.contains("listener.max_connections"), "{msg}");
        assert_eq!(config.listener.max_connections, 4096);
    }

    #[test]
    fn the_descriptor_limit_is_raised_to_the_hard_limit() {
        let raised = raise_nofile_limit().unwrap();
        assert_eq!(raised, hard_nofile_limit().unwrap());
    }

    #[test]
    fn slots_refuse_past_each_cap_and_come_back_when_dropped() {
        let slots = Arc::new(Slots {
            max: 3,
            per_address: 2,
            open: Mutex::new((0, HashMap::new())),
        });
        let metrics = Metrics::new();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = slots.take(a, &metrics).unwrap();
        let _a2 = slots.take(a, &metrics).unwrap();
        assert_eq!(
            slots.take(a, &metrics).unwrap_err(),
            "max_connections_per_address"
        );
        let _b1 = slots.take(b, &metrics).unwrap();
        assert_eq!(slots.take(b, &metrics).unwrap_err(), "max_connections");
        drop(a1);
        let _b2 = slots.take(b, &metrics).unwrap();
        assert_eq!(metrics.connections_open.get(), 3);
    }

    #[test]
    fn one_ipv6_host_is_counted_by_its_64_and_a_mapped_ipv4_as_itself() {
        let block = |s: &str| address_block(s.parse().unwrap());
        assert_eq!(
            block("2001:db8:1:2:aaaa::1"),
            block("2001:db8:1:2:ffff:1:2:3")
        );
        assert_eq!(block("2001:db8:1:2:aaaa::1").to_string(), "2001:db8:1:2::");
        assert_ne!(block("2001:db8:1:2::1"), block("2001:db8:1:3::1"));
        assert_eq!(block("::ffff:192.0.2.7"), block("192.0.2.7"));
        assert_ne!(block("192.0.2.7"), block("192.0.2.8"));
        let slots = Arc::new(Slots {
            max: 10,
            per_address: 2,
            open: Mutex::new((0, HashMap::new())),
        });
        let metrics = Metrics::new();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let _a = slots.take(ip("2001:db8::1"), &metrics).unwrap();
        let _b = slots.take(ip("2001:db8::2"), &metrics).unwrap();
        assert_eq!(
            slots.take(ip("2001:db8::ffff:3"), &metrics).unwrap_err(),
            "max_connections_per_address",
            "another address of the same /64 is the same host"
        );
        let _c = slots.take(ip("2001:db8:0:1::1"), &metrics).unwrap();
    }

    #[test]
    fn a_fresh_connection_has_the_header_deadline_and_an_idle_one_the_idle_deadline() {
        let limits = ListenerConfig {
            header_read_timeout_s: 5,
            idle_timeout_s: 50,
            ..ListenerConfig::default()
        };
        let watch = Arc::new(Watch::new());
        let (at, kind) = watch.deadline(&limits).unwrap();
        assert_eq!(kind, "header_timeout");
        assert_eq!(at, watch.accepted + Duration::from_secs(5));
        let handler = Busy::start(&watch, Phase::Handler);
        assert!(
            watch.deadline(&limits).is_none(),
            "no deadline while a handler runs"
        );
        let sending = Busy::start(&watch, Phase::Sending);
        drop(handler);
        assert_eq!(watch.deadline(&limits).unwrap().1, "send_timeout");
        drop(sending);
        assert_eq!(watch.deadline(&limits).unwrap().1, "idle_timeout");
        watch.on_read();
        let (at, kind) = watch.deadline(&limits).unwrap();
        assert_eq!(
            kind, "header_timeout",
            "a head started: the header deadline"
        );
        assert!(at < watch.accepted + Duration::from_secs(6));
    }
}
