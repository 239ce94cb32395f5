//! Substituting secrets: the proxy terminates the guest's TLS for a host a
//! secret is bound to, opens its own verified TLS to the real host, and
//! relays HTTP/1.1 requests one by one with the placeholders replaced.
//!
//! Used only on port 443 for names some secret is bound to (and that the
//! allowlist allows); every other connection is spliced untouched
//! (the proxy). For such a connection:
//!
//! 1. the proxy resolves the name on the host and connects to a permitted
//!    address, as for any connection: the address it sends the secret to
//!    is one it resolved itself for that name, never one the guest chose;
//! 2. it opens TLS to it, with the name as SNI, verified against the
//!    host's trust store (or the configured roots), offering ALPN
//!    `http/1.1` only; a server that insists on HTTP/2 fails the handshake
//!    and the guest's connection is refused (HTTP/2 is not relayed: its
//!    header compression and streams need a full HTTP/2 implementation,
//!    left for later);
//! 3. it answers the guest's ClientHello (already read, replayed) as that
//!    name, with a leaf certificate from Airlock's CA ([`crate::ca`]),
//!    ALPN `http/1.1` only: a guest offering only `h2` gets a
//!    `no_application_protocol` alert;
//! 4. it reads each request head ([`crate::request`]): `Host` must be the
//!    TLS server name (no domain fronting), the framing unambiguous; a
//!    placeholder of a secret *not* bound to this name anywhere in the
//!    request (request line, any field, body) blocks it (`403`, connection
//!    closed, counted in `secrets_blocked`); placeholders of bound secrets
//!    are replaced in header values, and in the body for secrets marked
//!    `body`; the body is read whole (at most [`MAX_BODY_BYTES`]) and sent
//!    with its new `Content-Length` (a chunked body is sent de-chunked);
//! 5. responses are copied back untouched, so keep-alive and pipelining
//!    work as the client and server agree.
//!
//! `Expect: 100-continue` is answered by the proxy itself (the body must
//! be read before the head can be sent); the upstream never sees it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::connection::{connect_upstream, refuse, Shared};
use super::decision::{DenyReason, ServicePort};
use super::request::{parse_head, rebuild_head, ChunkedDecoder, Framing, RequestError};
use super::secret::SecretSet;
use super::splice::{forward_async_write, idle_expired, Activity, Metered};
use super::stats::Counters;
use super::tls::InterceptTls;

/// Largest request body the proxy reads (it reads bodies whole to
/// substitute and check them). Larger bodies get `413`.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Largest request head.
pub const MAX_REQUEST_HEAD_BYTES: usize = 64 * 1024;
/// A stream whose first reads return `prefix` (the ClientHello the proxy
/// already read), then the inner stream's bytes.
struct Prefixed<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.offset < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.offset);
            let start = self.offset;
            buf.put_slice(&self.prefix[start..start + n]);
            self.offset += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

forward_async_write!(Prefixed<S>);

/// How the request side of an intercepted connection ended.
#[derive(Debug)]
enum RequestsEnd {
    /// The guest closed after whole requests.
    Closed,
    /// A request was refused; its answer was sent, the connection ends.
    Refused,
    /// Reading or writing failed.
    Error(io::Error),
}

/// Serves one intercepted connection: `name` is allowed and has a bound
/// secret; `first_bytes` is its ClientHello.
pub(crate) async fn serve_intercepted(
    guest: TcpStream,
    first_bytes: Vec<u8>,
    name: &str,
    shared: &Shared,
    interceptor: &InterceptTls,
) {
    let config = &shared.config;
    let port = ServicePort::Https;
    let upstream = match connect_upstream(name, port, config).await {
        Ok(upstream) => upstream,
        Err(reason) => return refuse(guest, port, shared, name, reason).await,
    };
    let counters = &shared.counters;
    let activity = Activity::new();
    let upstream = Metered::new(upstream, &counters.bytes_in, &activity);
    let server_name = match ServerName::try_from(name.to_owned()) {
        Ok(server_name) => server_name,
        Err(err) => {
            let reason = DenyReason::UpstreamTls(err.to_string());
            return refuse(guest, port, shared, name, reason).await;
        }
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&interceptor.client));
    let upstream = match tokio::time::timeout(
        config.connect_timeout,
        connector.connect(server_name, upstream),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            let reason = DenyReason::UpstreamTls(upstream_tls_problem(&err));
            return refuse(guest, port, shared, name, reason).await;
        }
        Err(_) => return refuse(guest, port, shared, name, DenyReason::ConnectTimeout).await,
    };

    counters.bytes_out.fetch_add(
        first_bytes.len() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let guest = Metered::new(guest, &counters.bytes_out, &activity);
    let guest = Prefixed {
        prefix: first_bytes,
        offset: 0,
        inner: guest,
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&interceptor.server));
    let guest = match tokio::time::timeout(config.first_bytes_timeout, acceptor.accept(guest)).await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            Counters::bump(&counters.denied);
            tracing::warn!(vm_id = %config.vm_id, name, port = 443, error = %err,
                "egress connection denied: TLS with the guest failed (a guest offering only HTTP/2 by ALPN is refused: secrets are substituted over HTTP/1.1)");
            return;
        }
        Err(_) => {
            Counters::bump(&counters.denied);
            tracing::warn!(vm_id = %config.vm_id, name, port = 443, "egress connection denied: TLS handshake with the guest timed out");
            return;
        }
    };
    Counters::bump(&counters.allowed);
    tracing::debug!(vm_id = %config.vm_id, name, "egress connection intercepted for secret substitution");

    let (guest_read, guest_write) = tokio::io::split(guest);
    let (upstream_read, upstream_write) = tokio::io::split(upstream);
    let guest_write = Mutex::new(guest_write);
    let requests = relay_requests(
        guest_read,
        upstream_write,
        &guest_write,
        name,
        shared,
        &interceptor.secrets,
    );
    let responses = relay_responses(upstream_read, &guest_write);
    tokio::pin!(requests, responses);
    let mut requests_done = false;
    loop {
        tokio::select! {
            end = &mut requests, if !requests_done => match end {
                RequestsEnd::Closed => requests_done = true,
                RequestsEnd::Refused => break,
                RequestsEnd::Error(err) => {
                    tracing::debug!(vm_id = %config.vm_id, name, error = %err, "intercepted connection ended with an error");
                    break;
                }
            },
            // The upstream closed: the guest's connection ends with it.
            _ = &mut responses => break,
            () = idle_expired(&activity, config.idle_timeout) => {
                tracing::debug!(vm_id = %config.vm_id, name, "intercepted connection idle; closed");
                break;
            }
        }
    }
}

/// A short, readable reason for a failed upstream handshake, naming the
/// HTTP/2-only case.
fn upstream_tls_problem(err: &io::Error) -> String {
    let text = err.to_string();
    if text.contains("NoApplicationProtocol") || text.contains("no_application_protocol") {
        format!("the server does not speak HTTP/1.1 (ALPN refused; HTTP/2 is not relayed for hosts with secrets): {text}")
    } else {
        text
    }
}

/// Copies responses to the guest until the upstream closes.
async fn relay_responses<R, W>(mut upstream: R, guest: &Mutex<W>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match upstream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if guest.lock().await.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = guest.lock().await.shutdown().await;
}

/// The answer to a refused request (the connection closes after it).
fn refusal(status: &str, text: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}\n",
        text.len() + 1
    )
    .into_bytes()
}

/// Reads at least one more byte into `buf`; `Ok(false)` at end of stream.
async fn read_more<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut Vec<u8>) -> io::Result<bool> {
    let mut chunk = [0u8; 16 * 1024];
    let n = reader.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

/// Relays the guest's requests one by one: checks, substitutes, sends.
async fn relay_requests<R, U, W>(
    mut guest: R,
    mut upstream: U,
    guest_write: &Mutex<W>,
    name: &str,
    shared: &Shared,
    secrets: &SecretSet,
) -> RequestsEnd
where
    R: AsyncRead + Unpin,
    U: AsyncWrite + Unpin,
    W: AsyncWrite + Unpin,
{
    let vm_id = shared.config.vm_id.as_str();
    let mut buf = Vec::new();
    loop {
        // The head.
        let head = loop {
            match parse_head(&buf, name, MAX_REQUEST_HEAD_BYTES) {
                Ok(Some(head)) => break Ok(head),
                Ok(None) => {}
                Err(err) => break Err(err),
            }
            match read_more(&mut guest, &mut buf).await {
                Ok(true) => {}
                Ok(false) if buf.is_empty() => {
                    let _ = upstream.shutdown().await;
                    return RequestsEnd::Closed;
                }
                Ok(false) => {
                    return RequestsEnd::Error(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "guest closed in the middle of a request head",
                    ))
                }
                Err(err) => return RequestsEnd::Error(err),
            }
        };
        let head = match head {
            Ok(head) => head,
            Err(err) => {
                return refuse_request(guest_write, shared, name, &err).await;
            }
        };
        if let Some(found) = secrets.first_unbound(&buf[..head.len], Some(name)) {
            return block(
                guest_write,
                shared,
                name,
                secrets,
                found.secret,
                "request head",
            )
            .await;
        }
        buf.drain(..head.len);

        // The body, read whole.
        if head.expects_continue && head.framing != Framing::None {
            let mut writer = guest_write.lock().await;
            if let Err(err) = writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await {
                return RequestsEnd::Error(err);
            }
        }
        let body = match read_body(&mut guest, &mut buf, head.framing).await {
            Ok(body) => body,
            Err(BodyError::Request(err)) => {
                return refuse_request(guest_write, shared, name, &err).await
            }
            Err(BodyError::Io(err)) => return RequestsEnd::Error(err),
        };
        if let Some(found) = body
            .as_deref()
            .and_then(|b| secrets.first_unbound(b, Some(name)))
        {
            return block(
                guest_write,
                shared,
                name,
                secrets,
                found.secret,
                "request body",
            )
            .await;
        }
        let body = body.map(|b| {
            if secrets.body_substitution_for(name) {
                secrets.substitute(&b, name, true)
            } else {
                b
            }
        });
        let out_head = rebuild_head(&head, body.as_ref().map(Vec::len), |value| {
            secrets.substitute(value, name, false)
        });
        let sent = async {
            upstream.write_all(&out_head).await?;
            if let Some(body) = &body {
                upstream.write_all(body).await?;
            }
            upstream.flush().await
        };
        if let Err(err) = sent.await {
            return RequestsEnd::Error(err);
        }
        tracing::debug!(vm_id, name, method = %head.method, "intercepted request relayed");
    }
}

enum BodyError {
    Request(RequestError),
    Io(io::Error),
}

/// Reads the body framed by `framing`, starting with the bytes already in
/// `buf` (what follows the body stays there). `None`: no body.
async fn read_body<R: AsyncRead + Unpin>(
    guest: &mut R,
    buf: &mut Vec<u8>,
    framing: Framing,
) -> Result<Option<Vec<u8>>, BodyError> {
    let eof = || {
        BodyError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "guest closed in the middle of a request body",
        ))
    };
    match framing {
        Framing::None => Ok(None),
        Framing::Length(len) => {
            let len = usize::try_from(len)
                .ok()
                .filter(|len| *len <= MAX_BODY_BYTES)
                .ok_or(BodyError::Request(RequestError::BodyTooLarge))?;
            while buf.len() < len {
                if !read_more(guest, buf).await.map_err(BodyError::Io)? {
                    return Err(eof());
                }
            }
            let rest = buf.split_off(len);
            Ok(Some(std::mem::replace(buf, rest)))
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::new(MAX_BODY_BYTES);
            loop {
                let used = decoder.feed(buf).map_err(BodyError::Request)?;
                buf.drain(..used);
                if decoder.is_done() {
                    return Ok(Some(decoder.into_body()));
                }
                if !read_more(guest, buf).await.map_err(BodyError::Io)? {
                    return Err(eof());
                }
            }
        }
    }
}

/// Answers a request the proxy cannot relay and ends the connection.
async fn refuse_request<W: AsyncWrite + Unpin>(
    guest_write: &Mutex<W>,
    shared: &Shared,
    name: &str,
    err: &RequestError,
) -> RequestsEnd {
    let (status, text) = match err {
        RequestError::HostMismatch { .. } => (
            "421 Misdirected Request",
            "Airlock: the Host header must name the TLS server name",
        ),
        RequestError::BodyTooLarge => (
            "413 Content Too Large",
            "Airlock: request bodies to hosts with secrets are limited to 8 MiB",
        ),
        RequestError::HeadTooLarge => (
            "431 Request Header Fields Too Large",
            "Airlock: request head too large",
        ),
        _ => ("400 Bad Request", "Airlock: this request cannot be relayed"),
    };
    Counters::bump(&shared.counters.denied);
    tracing::warn!(vm_id = %shared.config.vm_id, name, port = 443, reason = %err, "intercepted request refused");
    answer_and_close(guest_write, &refusal(status, text)).await;
    RequestsEnd::Refused
}

/// The leak guard: a placeholder of a secret not bound to `name`.
async fn block<W: AsyncWrite + Unpin>(
    guest_write: &Mutex<W>,
    shared: &Shared,
    name: &str,
    secrets: &SecretSet,
    secret: usize,
    place: &'static str,
) -> RequestsEnd {
    let secret = secrets
        .secret(secret)
        .map(|s| s.name.as_str())
        .unwrap_or("");
    shared.counters.record_secret_block(name, secret, place);
    tracing::warn!(vm_id = %shared.config.vm_id, name, secret, place, "egress request blocked: a secret's placeholder was sent to a host it is not bound to");
    answer_and_close(
        guest_write,
        &refusal(
            "403 Forbidden",
            "Airlock: a secret placeholder may not be sent to this host",
        ),
    )
    .await;
    RequestsEnd::Refused
}

async fn answer_and_close<W: AsyncWrite + Unpin>(guest_write: &Mutex<W>, answer: &[u8]) {
    let mut writer = guest_write.lock().await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        writer.write_all(answer).await?;
        writer.shutdown().await
    })
    .await;
}
