//! The proxy itself: accept loops, per-connection checks, splicing, stop.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;

use super::config::EgressConfig;
use super::connection::{
    answer_refusal, connect_upstream, log_refusal, refusal_answer, refuse, Shared,
};
use super::decision::{
    loggable_name, requested_name, worth_parsing, DenyReason, RequestedName, ServicePort,
};
use super::intercept::serve_intercepted;
use super::splice::{splice, Activity, Metered, PlaceholderGuard, SpliceEnd};
use super::stats::{Counters, EgressStats, SecretBlock};
use super::tls::InterceptTls;
use crate::EgressError;

/// Deadline for [`EgressHandle::stop`] to see every task end.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after an accept error (for example out of file descriptors), so
/// the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Starts egress proxies; see [`EgressProxy::serve`].
#[derive(Debug)]
pub struct EgressProxy;

/// A running proxy for one VM. Dropping it stops the proxy without waiting;
/// [`stop`](Self::stop) stops it and waits.
#[derive(Debug)]
pub struct EgressHandle {
    vm_id: String,
    counters: Arc<Counters>,
    http_addr: SocketAddr,
    https_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl EgressProxy {
    /// Serves HTTP on `listener_80` and TLS on `listener_443` for one VM,
    /// on the current tokio runtime, until the handle is stopped or dropped.
    ///
    /// The listeners are normally bound on 127.0.0.1:80 and :443 inside the
    /// VM's gvproxy network namespace; upstream connections are made from
    /// the namespace of the calling process (the host's). The config is
    /// validated here.
    pub fn serve(
        listener_80: std::net::TcpListener,
        listener_443: std::net::TcpListener,
        config: EgressConfig,
    ) -> Result<EgressHandle, EgressError> {
        config.validate()?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(EgressError::NoRuntime {
                vm_id: config.vm_id,
            });
        }
        let vm_id = config.vm_id.clone();
        let to_tokio = |listener: std::net::TcpListener, port: u16| {
            let listener_error = |source| EgressError::Listener {
                vm_id: vm_id.clone(),
                port,
                source,
            };
            listener.set_nonblocking(true).map_err(listener_error)?;
            let listener = TcpListener::from_std(listener).map_err(listener_error)?;
            let addr = listener.local_addr().map_err(listener_error)?;
            Ok::<_, EgressError>((listener, addr))
        };
        let (http, http_addr) = to_tokio(listener_80, 80)?;
        let (https, https_addr) = to_tokio(listener_443, 443)?;
        let interceptor = match &config.ca {
            Some(ca) if !config.secrets.is_empty() => {
                let tls_error = |reason: String| EgressError::Tls {
                    vm_id: vm_id.clone(),
                    reason,
                };
                Some(
                    InterceptTls::new(
                        Arc::clone(&config.secrets),
                        Arc::clone(ca),
                        &config.upstream_roots,
                    )
                    .map_err(tls_error)?,
                )
            }
            _ => None,
        };
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(config.max_connections)),
            counters: Arc::clone(&counters),
            config,
            interceptor,
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(http, https, shared, shutdown_rx));
        tracing::debug!(vm_id = %vm_id, %http_addr, %https_addr, "egress proxy started");
        Ok(EgressHandle {
            vm_id,
            counters,
            http_addr,
            https_addr,
            shutdown,
            task: Some(task),
        })
    }
}

impl EgressHandle {
    /// The counters so far.
    pub fn stats(&self) -> EgressStats {
        self.counters.snapshot()
    }

    /// The requests and connections the leak guard blocked so far (the
    /// first [`crate::MAX_SECRET_BLOCKS_KEPT`]; all are counted in
    /// [`EgressStats::secrets_blocked`]).
    pub fn secret_blocks(&self) -> Vec<SecretBlock> {
        self.counters.secret_blocks()
    }

    /// Where the port-80 (HTTP) listener is bound.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the port-443 (TLS) listener is bound.
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    /// Stops accepting, closes every open connection (spliced or not) and
    /// returns the final counters. Waits at most 5 s for the tasks to end.
    pub async fn stop(mut self) -> EgressStats {
        let _ = self.shutdown.send(true);
        if let Some(mut task) = self.task.take() {
            if timeout(STOP_TIMEOUT, &mut task).await.is_err() {
                tracing::warn!(vm_id = %self.vm_id, "egress proxy did not stop in time; aborting it");
                task.abort();
            }
        }
        let stats = self.counters.snapshot();
        tracing::debug!(vm_id = %self.vm_id, ?stats, "egress proxy stopped");
        stats
    }
}

impl Drop for EgressHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Aborting the accept loop drops its JoinSet, which aborts every
            // connection task.
            task.abort();
        }
    }
}

async fn accept_loop(
    http: TcpListener,
    https: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let (accepted, port) = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = http.accept() => (accepted, ServicePort::Http),
            accepted = https.accept() => (accepted, ServicePort::Https),
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        match accepted {
            Ok((stream, _peer)) => {
                Counters::bump(&shared.counters.accepted);
                match Arc::clone(&shared.slots).try_acquire_owned() {
                    Ok(permit) => {
                        connections.spawn(serve_connection(
                            stream,
                            port,
                            Arc::clone(&shared),
                            permit,
                        ));
                    }
                    Err(_) => refuse_over_limit(&stream, port, &shared),
                }
            }
            Err(err) => {
                tracing::warn!(vm_id = %shared.config.vm_id, port = port.number(), error = %err, "egress accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
    connections.shutdown().await;
}

/// Closes a connection over the limit at once, without a task: the refusal
/// answer is written only if the socket takes it right away.
fn refuse_over_limit(stream: &TcpStream, port: ServicePort, shared: &Shared) {
    let reason = DenyReason::TooManyConnections;
    log_refusal(shared, "", port, &reason);
    Counters::bump(&shared.counters.denied);
    let _ = stream.try_write(refusal_answer(port, &reason));
}

/// Keeps `connections_active` right however the task ends (aborts included).
struct ActiveGuard {
    counters: Arc<Counters>,
    _permit: OwnedSemaphorePermit,
}

impl ActiveGuard {
    fn new(counters: Arc<Counters>, permit: OwnedSemaphorePermit) -> Self {
        counters.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard {
            counters,
            _permit: permit,
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(
    mut guest: TcpStream,
    port: ServicePort,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) {
    let _active = ActiveGuard::new(Arc::clone(&shared.counters), permit);
    let config = &shared.config;
    let _ = guest.set_nodelay(true);

    // 1. The first bytes, up to the name.
    let mut first_bytes = Vec::with_capacity(4096);
    let name = match timeout(
        config.first_bytes_timeout,
        read_name(&mut guest, port, &mut first_bytes, config.max_first_bytes),
    )
    .await
    {
        Err(_) => Err((DenyReason::FirstBytesTimeout, String::new())),
        Ok(None) => Err((DenyReason::ClosedEarly, String::new())),
        Ok(Some(RequestedName::Refused { reason, raw_name })) => Err((
            reason,
            raw_name.as_deref().map(loggable_name).unwrap_or_default(),
        )),
        Ok(Some(RequestedName::Valid(name))) if leaked(config, &name, &first_bytes).is_some() => {
            Err((DenyReason::SecretPlaceholder, name))
        }
        Ok(Some(RequestedName::Valid(name))) if !(config.allow)(&name) => {
            Err((DenyReason::NotAllowed, name))
        }
        Ok(Some(RequestedName::Valid(name))) => Ok(name),
    };
    let name = match name {
        Ok(name) => name,
        Err((DenyReason::SecretPlaceholder, name)) => {
            let (secret, place) = leaked(config, &name, &first_bytes).unwrap_or_default();
            shared.counters.record_secret_block(&name, secret, place);
            log_refusal(&shared, &name, port, &DenyReason::SecretPlaceholder);
            return answer_refusal(guest, port, &DenyReason::SecretPlaceholder).await;
        }
        Err((reason, name)) => return refuse(guest, port, &shared, &name, reason).await,
    };
    if let Some(interceptor) = &shared.interceptor {
        if port == ServicePort::Https && interceptor.secrets.any_bound_to(&name) {
            return serve_intercepted(guest, first_bytes, &name, &shared, interceptor).await;
        }
    }

    // 2. Resolve on the host, keep public addresses, connect.
    let mut upstream = match connect_upstream(&name, port, config).await {
        Ok(upstream) => upstream,
        Err(reason) => return refuse(guest, port, &shared, &name, reason).await,
    };
    Counters::bump(&shared.counters.allowed);
    let upstream_addr = upstream.peer_addr().ok();
    tracing::debug!(vm_id = %config.vm_id, name = %name, port = port.number(), upstream = ?upstream_addr, "egress connection allowed");

    // 3. Replay the bytes already read, then splice.
    let counters = &shared.counters;
    counters
        .bytes_out
        .fetch_add(first_bytes.len() as u64, Ordering::Relaxed);
    let activity = Activity::new();
    let replay = timeout(config.idle_timeout, upstream.write_all(&first_bytes)).await;
    let end = match replay {
        Err(_) => SpliceEnd::Idle,
        Ok(Err(err)) => SpliceEnd::Error(err),
        Ok(Ok(())) => {
            drop(first_bytes);
            let guest = Metered::new(&mut guest, &counters.bytes_out, &activity);
            // Plain HTTP: every later byte is checked for placeholders too.
            let check = port == ServicePort::Http && !config.secrets.is_empty();
            let mut guest = PlaceholderGuard::new(guest, check.then_some(&*config.secrets));
            let mut upstream = Metered::new(&mut upstream, &counters.bytes_in, &activity);
            let end = splice(
                &mut guest,
                &mut upstream,
                &activity,
                config.idle_timeout,
                config.splice_buffer_bytes,
            )
            .await;
            if let Some(secret) = guest.found().and_then(|i| config.secrets.secret(i)) {
                shared
                    .counters
                    .record_secret_block(&name, &secret.name, "plain HTTP");
                log_refusal(&shared, &name, port, &DenyReason::SecretPlaceholder);
            }
            end
        }
    };
    match end {
        SpliceEnd::Closed => {
            tracing::debug!(vm_id = %config.vm_id, name = %name, port = port.number(), "egress connection closed")
        }
        SpliceEnd::Idle => {
            tracing::debug!(vm_id = %config.vm_id, name = %name, port = port.number(), idle_timeout = ?config.idle_timeout, "egress connection idle; closed")
        }
        SpliceEnd::Error(err) => {
            tracing::debug!(vm_id = %config.vm_id, name = %name, port = port.number(), error = %err, "egress connection ended with an error")
        }
    }
}

/// Reads into `buf` until the name can be decided. `None`: the guest closed
/// or failed before that.
async fn read_name(
    guest: &mut TcpStream,
    port: ServicePort,
    buf: &mut Vec<u8>,
    max_bytes: usize,
) -> Option<RequestedName> {
    let mut chunk = [0u8; 4096];
    loop {
        let room = max_bytes.saturating_sub(buf.len()).clamp(1, chunk.len());
        match guest.read(&mut chunk[..room]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if !worth_parsing(port, buf, n, max_bytes) {
                    continue;
                }
            }
        }
        if let Some(decided) = requested_name(port, buf, max_bytes) {
            return Some(decided);
        }
    }
}

/// The leak guard before a connection is decided: a placeholder in the
/// requested name, or (port 80) anywhere in the request head. Returns the
/// secret's name and where it was seen.
fn leaked<'a>(
    config: &'a EgressConfig,
    name: &str,
    first_bytes: &[u8],
) -> Option<(&'a str, &'static str)> {
    let secrets = &config.secrets;
    let in_name = secrets
        .first_unbound(name.as_bytes(), None)
        .map(|f| (f, "server name"));
    let found = in_name.or_else(|| {
        // Over plain HTTP no secret is ever substituted: any placeholder
        // is a leak. (On 443 the bytes after the ClientHello are
        // encrypted; an intercepted connection checks its requests.)
        let http = first_bytes.first().is_some_and(|b| b.is_ascii_alphabetic());
        http.then(|| secrets.first_unbound(first_bytes, None))
            .flatten()
            .map(|f| (f, "plain HTTP"))
    })?;
    let secret = secrets.secret(found.0.secret)?;
    Some((secret.name.as_str(), found.1))
}
