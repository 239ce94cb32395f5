//! The HTTP server's life: start the orchestrator (which sweeps what an
//! earlier, killed server left), listen, serve, and when told to stop (the
//! `shutdown` future: `airlock serve`'s first stop signal) drain: stop
//! accepting, let running requests go on for the grace, destroy every VM,
//! return. With a keys file, SIGHUP reloads the keys
//! ([`reload_keys_on_hangup`]).

use crate::config::ServerConfig;
use crate::error::{Result, ServerError};
use crate::keys::Keyring;
use crate::service::Airlock;
use std::fmt::Display;
use std::future::Future;
use std::time::Instant;

/// Serves `config` (validated) until `shutdown` resolves, then drains;
/// `Ok` after a clean drain. `shutdown` resolving while the orchestrator
/// starts ends the start-up: `Ok`, nothing served. Its output (e.g. the
/// signal) is logged.
///
/// # Errors
/// [`ServerError::Orchestrator`] when the orchestrator cannot start,
/// [`ServerError::Bind`] when the address is taken.
pub async fn run<S: Display>(
    mut config: ServerConfig,
    keyring: Option<Keyring>,
    shutdown: impl Future<Output = S>,
) -> Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let nofile = crate::listener::raise_nofile_limit()?;
    let configured = config.listener.max_connections;
    if let Some(lowered) = crate::listener::fit_descriptors(&mut config, nofile)? {
        tracing::warn!(
            "{}",
            crate::listener::lowered_cap_message(configured, lowered, nofile)
        );
    }
    let listen = config.listen;
    let e2b_listen = config.e2b.listen;
    let e2b_tls = match (e2b_listen, crate::tls::TlsSource::of(&config.e2b)) {
        (Some(_), Some((domain, source))) => Some(
            tokio::task::spawn_blocking(move || crate::tls::ListenerTls::build(&domain, &source))
                .await
                .map_err(|e| ServerError::internal("set up the E2B listener's TLS", e))??,
        ),
        _ => None,
    };
    let grace = config.drain_grace();
    let airlock = tokio::select! {
        started = Airlock::start(config, keyring) => started?,
        stop = &mut shutdown => {
            tracing::info!(%stop, "stopped while starting");
            return Ok(());
        }
    };
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(source) => {
            airlock.shutdown().await;
            return Err(ServerError::Bind {
                addr: listen,
                source,
            });
        }
    };
    let e2b_listener = match e2b_listen {
        None => None,
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(source) => {
                airlock.shutdown().await;
                return Err(ServerError::Bind { addr, source });
            }
        },
    };
    let local = listener
        .local_addr()
        .map_err(|e| ServerError::internal("read the listen address", e))?;
    let router = crate::http::router(airlock.clone(), Some(crate::mcp::http_service(&airlock)));
    // The E2B listener (`docs/e2b.md`): the same listener code, limits,
    // metrics and drain over E2B's router; it ends with the main one.
    let e2b_server = match e2b_listener {
        Some(e2b_listener) => {
            let e2b_local = e2b_listener
                .local_addr()
                .map_err(|e| ServerError::internal("read the E2B listen address", e))?;
            tracing::info!(listen = %e2b_local, "airlock serve: E2B protocol listening");
            if let (Some(tls), Some(domain)) = (&e2b_tls, &airlock.config().e2b.domain) {
                let port = match e2b_local.port() {
                    443 => String::new(),
                    port => format!(":{port}"),
                };
                eprintln!("airlock: E2B TLS for api.{domain} and *.{domain}: clients set E2B_DOMAIN={domain}{port}");
                if let Some(ca) = &tls.ca_cert {
                    eprintln!(
                        "airlock: E2B TLS certificates from a local CA: clients trust {} (SSL_CERT_FILE, NODE_EXTRA_CA_CERTS)",
                        ca.display()
                    );
                }
            }
            eprintln!("airlock: E2B API listening on http://{e2b_local}");
            let drain = airlock.clone();
            Some(crate::listener::serve_tls(
                e2b_listener,
                crate::e2b::router(airlock.clone()),
                airlock.config().listener.clone(),
                airlock.metrics().clone(),
                e2b_tls.map(|tls| tls.acceptor),
                async move { drain.draining().await },
            ))
        }
        None => None,
    };
    tracing::info!(listen = %local, "airlock serve: listening");
    // The line a supervisor (or a test) waits for (after the E2B one).
    eprintln!("airlock: listening on http://{local}");
    let drain = airlock.clone();
    let main_server = crate::listener::serve(
        listener,
        router,
        airlock.config().listener.clone(),
        airlock.metrics().clone(),
        async move { drain.draining().await },
    );
    // Boxed so that it can be dropped (with the connections it owns, and
    // their requests) below.
    let mut server = Box::pin(async move {
        tokio::join!(main_server, maybe(e2b_server));
    });
    let stopped_by = tokio::select! {
        () = &mut server => None,
        stop = &mut shutdown => Some(stop),
        () = reload_keys_on_hangup(&airlock) => None,
    };
    let started = Instant::now();
    if let Some(stop) = stopped_by {
        tracing::info!(%stop, grace_s = grace.as_secs(), "draining: no new requests; running ones may finish");
        airlock.drain();
        if tokio::time::timeout(grace, &mut server).await.is_err() {
            tracing::warn!("drain grace over: ending the requests still running");
        }
    }
    // Dropping the server drops the requests still running, and with them
    // their VMs; the shutdown waits for their teardown.
    drop(server);
    let stragglers = airlock.shutdown().await;
    tracing::info!(
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        killed = stragglers,
        "airlock serve: stopped; every VM destroyed"
    );
    Ok(())
}

/// With a keys file: on each SIGHUP, and when `keys_reload_s` is set,
/// whenever the file's content changed (checked that often: a Kubernetes
/// Secret updated in place), reloads it ([`Airlock::reload_keys`]), so a
/// key revoked from the file stops working without a restart; a bad file
/// keeps the old keys and is logged as an error. Never returns (without a
/// keys file it only waits); the server's life owns it and drops it when
/// it ends.
pub async fn reload_keys_on_hangup(airlock: &Airlock) {
    use tokio::signal::unix::{signal, SignalKind};
    let Some(path) = airlock.config().keys_file.clone() else {
        return std::future::pending().await;
    };
    if airlock.is_keyless() {
        return std::future::pending().await;
    }
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP: the keys file is reloaded only when it changes, if keys_reload_s is set");
            None
        }
    };
    let period = airlock
        .config()
        .keys_reload_s
        .map(std::time::Duration::from_secs);
    let digest = |bytes: &[u8]| airlock_sys_util::sha256_hex(bytes);
    // Unknown at first: the first check reloads once (the file may have
    // changed since the server read it at start).
    let mut seen: Option<String> = None;
    loop {
        let why = tokio::select! {
            Some(()) = async {
                match hangups.as_mut() {
                    Some(stream) => stream.recv().await,
                    None => std::future::pending().await,
                }
            } => "SIGHUP",
            () = async {
                match period {
                    Some(period) => tokio::time::sleep(period).await,
                    None => std::future::pending().await,
                }
            } => {
                let now = tokio::fs::read(&path).await.ok().map(|b| digest(&b));
                if now.is_none() || now == seen {
                    continue;
                }
                seen = now;
                "the keys file changed"
            }
        };
        match airlock.reload_keys().await {
            Ok(keys) => tracing::info!(keys, why, "keys file reloaded"),
            Err(e) => {
                tracing::error!(error = %e, why, "keys file not reloaded; the old keys stay")
            }
        }
    }
}

/// `future`, or a future that is ready at once when there is none.
async fn maybe(future: Option<impl Future<Output = ()>>) {
    if let Some(future) = future {
        future.await;
    }
}
