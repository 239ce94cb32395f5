//! The HTTP server's life: start the orchestrator (which sweeps what an
//! earlier, killed server left), listen, serve, and on the first stop
//! signal drain: stop accepting, let running requests go on for the
//! grace, destroy every VM, return.

use crate::config::ServerConfig;
use crate::error::{Result, ServerError};
use crate::keys::Keyring;
use crate::service::Airlock;
use airlock::interrupt::{self, Interrupts};
use std::future::IntoFuture;
use std::time::Instant;

/// Serves until a stop signal, then drains; `Ok` after a clean drain.
///
/// # Errors
/// [`ServerError::Orchestrator`] when the orchestrator cannot start,
/// [`ServerError::Bind`] when the address is taken.
pub async fn run(config: ServerConfig, keyring: Option<Keyring>) -> Result<()> {
    let mut interrupts = Interrupts::install(Box::new(interrupt::force_exit))
        .map_err(|e| ServerError::internal("handle SIGINT, SIGTERM and SIGHUP", e))?;
    let listen = config.listen;
    let grace = config.drain_grace();
    let airlock = tokio::select! {
        started = Airlock::start(config, keyring) => started?,
        stop = interrupts.first() => {
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
    let local = listener
        .local_addr()
        .map_err(|e| ServerError::internal("read the listen address", e))?;
    let router = crate::http::router(airlock.clone(), Some(crate::mcp::http_service(&airlock)));
    tracing::info!(listen = %local, "airlock serve: listening");
    // The line a supervisor (or a test) waits for.
    eprintln!("airlock: listening on http://{local}");
    let drain = airlock.clone();
    // Boxed so that it can be dropped (with the requests it runs) below.
    let mut server = Box::pin(
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { drain.draining().await })
            .into_future(),
    );
    let stopped_by = tokio::select! {
        served = &mut server => {
            served.map_err(|e| ServerError::internal("serve HTTP", e))?;
            None
        }
        stop = interrupts.first() => Some(stop),
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
