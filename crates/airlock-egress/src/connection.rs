//! What every connection task of a proxy shares: the config and counters,
//! connecting to an allowed name's server, and refusing a connection.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::timeout;

use super::config::EgressConfig;
use super::decision::{permitted_addresses, DenyReason, ServicePort};
use super::stats::Counters;
use super::tls::InterceptTls;

/// A fatal TLS alert `access_denied` (TLS 1.2 record version; any TLS
/// client accepts it before the ServerHello), sent before closing a denied
/// port-443 connection so the client reports a refusal, not a reset.
const TLS_ACCESS_DENIED_ALERT: [u8; 7] = [21, 3, 3, 0, 2, 2, 49];
/// The answer to a denied port-80 request.
const HTTP_FORBIDDEN: &[u8] =
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 41\r\n\
Connection: close\r\n\r\nAirlock: this destination is not allowed\n";
/// The answer to an allowed port-80 request whose server cannot be reached.
const HTTP_BAD_GATEWAY: &[u8] =
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nContent-Length: 41\r\n\
Connection: close\r\n\r\nAirlock: the allowed server is unreachable\n";
/// How long a refused connection may take to receive its answer and close;
/// the answer is best effort.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Bytes of a refused connection read and discarded while it closes.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;
/// What every connection task shares.
pub(crate) struct Shared {
    pub(crate) config: EgressConfig,
    pub(crate) counters: Arc<Counters>,
    pub(crate) slots: Arc<Semaphore>,
    /// Set when the VM has secrets.
    pub(crate) interceptor: Option<InterceptTls>,
}

pub(crate) async fn connect_upstream(
    name: &str,
    port: ServicePort,
    config: &EgressConfig,
) -> Result<TcpStream, DenyReason> {
    let resolved = match timeout(
        config.resolve_timeout,
        config.resolver.resolve(name, port.number()),
    )
    .await
    {
        Err(_) => return Err(DenyReason::ResolveTimeout),
        Ok(Err(err)) => return Err(DenyReason::ResolveFailed(err.to_string())),
        Ok(Ok(addrs)) => addrs,
    };
    let addrs = permitted_addresses(&resolved, config.address_policy())?;
    let attempts = async {
        let mut last_error = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in &addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(err) => last_error = err,
            }
        }
        Err(last_error)
    };
    let stream = match timeout(config.connect_timeout, attempts).await {
        Err(_) => return Err(DenyReason::ConnectTimeout),
        Ok(Err(err)) => return Err(DenyReason::ConnectFailed(err.to_string())),
        Ok(Ok(stream)) => stream,
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

pub(crate) fn refusal_answer(port: ServicePort, reason: &DenyReason) -> &'static [u8] {
    match (port, reason.is_upstream_failure()) {
        (ServicePort::Https, _) => &TLS_ACCESS_DENIED_ALERT,
        (ServicePort::Http, false) => HTTP_FORBIDDEN,
        (ServicePort::Http, true) => HTTP_BAD_GATEWAY,
    }
}

pub(crate) fn log_refusal(shared: &Shared, name: &str, port: ServicePort, reason: &DenyReason) {
    let vm_id = shared.config.vm_id.as_str();
    let port = port.number();
    if reason.is_upstream_failure() {
        tracing::warn!(vm_id, name, port, reason = %reason, "egress connection failed");
    } else {
        tracing::warn!(vm_id, name, port, reason = %reason, "egress connection denied");
    }
}

/// Logs and counts a refusal, answers it (best effort) and closes.
pub(crate) async fn refuse(
    guest: TcpStream,
    port: ServicePort,
    shared: &Shared,
    name: &str,
    reason: DenyReason,
) {
    log_refusal(shared, name, port, &reason);
    let counter = if reason.is_upstream_failure() {
        &shared.counters.failed
    } else {
        &shared.counters.denied
    };
    Counters::bump(counter);
    answer_refusal(guest, port, &reason).await;
}

/// Answers a refusal (best effort) and closes.
pub(crate) async fn answer_refusal(mut guest: TcpStream, port: ServicePort, reason: &DenyReason) {
    let answer = refusal_answer(port, reason);
    let _ = timeout(REFUSAL_LINGER, async {
        guest.write_all(answer).await?;
        guest.shutdown().await?;
        // Closing with unread bytes makes the kernel send a reset, which can
        // discard the answer before the client reads it: drain until the
        // client closes (bounded in time and size).
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < REFUSAL_DRAIN_BYTES {
            match guest.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<(), io::Error>(())
    })
    .await;
}
