//! The REST API over HTTP (axum): routes, the bearer-key check, the
//! request log and metrics, and the JSON error shape for every refusal
//! (docs/api.md describes each route).

mod extract;
pub(crate) mod file_body;
pub mod keyless;
pub mod openapi;
pub(crate) mod runs;
mod secrets;
mod sessions;
pub(crate) mod sse;
#[cfg(test)]
pub(crate) mod tests;

pub use extract::ApiJson;
pub use openapi::openapi;

use crate::error::{ErrorKind, ServerError};
use crate::keys::Caller;
use crate::metrics::{KindLabel, Metrics, RequestLabels};
use crate::service::Airlock;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::time::Instant;

/// The tenant a response was for (a response extension the request log
/// reads).
#[derive(Debug, Clone)]
pub(crate) struct TenantName(pub(crate) String);

/// A prefix of the route label in the request log and metrics (a request
/// extension): the E2B listener's planes (`e2b-api `, ...), whose paths
/// would read like the REST API's.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RoutePlane(pub(crate) &'static str);

/// The routes every caller must authenticate for, and the open ones.
/// `mcp` is served at `/mcp` behind the same keys and quotas.
pub fn router(airlock: Airlock, mcp: Option<crate::mcp::HttpService>) -> Router {
    let body_limit = airlock.config().max_body_bytes;
    let mut authed = Router::new().route("/v1/runs", post(runs::create));
    authed = sessions::routes(authed);
    authed = secrets::routes(authed);
    if let Some(mcp) = mcp {
        authed = authed.route(
            "/mcp",
            axum::routing::any(move |request: Request| {
                let mcp = mcp.clone();
                async move { mcp.handle(request).await }
            }),
        );
    }
    let authed = authed.route_layer(middleware::from_fn_with_state(
        airlock.clone(),
        authenticate,
    ));
    let open = Router::new()
        .route("/v1/health", get(health))
        .route("/v1/health/ready", get(ready))
        .route("/v1/openapi.json", get(openapi_document))
        .route("/metrics", get(metrics));
    let mut router = open
        .merge(authed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit));
    if airlock.is_keyless() {
        // Every route, `/mcp` and the open ones included.
        router = router.layer(middleware::from_fn(keyless::guard));
    }
    router
        .layer(middleware::from_fn_with_state(airlock.clone(), log_request))
        .with_state(airlock)
}

/// The bearer key of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// The most body a refused request may have for the server to read it
/// (and drop it) before answering: a client whose small request is refused
/// then reads the answer, where closing on an unread body would reset the
/// connection and could lose it. A larger body is never read.
pub(crate) const REFUSAL_DRAIN_BYTES: u64 = 64 * 1024;
/// How long reading that small body may take.
const REFUSAL_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Answers `request` with `error` and `Connection: close`. A body that
/// says it is at most [`REFUSAL_DRAIN_BYTES`] (`Content-Length`) is read
/// and dropped first, for at most 2 s; any other body is left unread, so
/// a refused client cannot make the server read or hold much.
pub(crate) async fn refuse(request: Request, error: ServerError) -> Response {
    refuse_with(request, error.into_response()).await
}

/// [`refuse`] with an answer of its own shape (the E2B listener's).
pub(crate) async fn refuse_with(request: Request, mut response: Response) -> Response {
    let small = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len > 0 && len <= REFUSAL_DRAIN_BYTES);
    if small {
        let limit = usize::try_from(REFUSAL_DRAIN_BYTES).unwrap_or(usize::MAX);
        let body = axum::body::to_bytes(request.into_body(), limit);
        let _ = tokio::time::timeout(REFUSAL_DRAIN_TIMEOUT, body).await;
    }
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// Authenticates the caller, counts the request against its rate, and
/// hands the [`Caller`] to the handler. A refusal is answered from the
/// headers alone ([`refuse`]: a body over 64 KiB is never read) and the
/// connection is closed after the answer, so a client without a key
/// cannot make the server read or hold its body.
async fn authenticate(
    State(airlock): State<Airlock>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = airlock
        .authenticate(bearer(request.headers()))
        .and_then(|caller| airlock.admit(&caller).map(|()| caller));
    let caller: Caller = match caller {
        Ok(caller) => caller,
        Err(e) => {
            let reason = match &e {
                ServerError::Quota { quota, .. } => quota,
                other => other.kind(),
            };
            Metrics::count(&airlock.metrics().denials, reason);
            return refuse(request, e).await;
        }
    };
    let tenant = TenantName(caller.tenant.clone());
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    response.extensions_mut().insert(tenant);
    response
}

/// One log line and one metric per request: tenant, route, status,
/// latency.
pub(crate) async fn log_request(
    State(airlock): State<Airlock>,
    request: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let route = match request.extensions().get::<RoutePlane>() {
        Some(plane) => format!("{}{route}", plane.0),
        None => route,
    };
    let method = request.method().clone();
    let mut response = next.run(request).await;
    // Which node answered: a proxy's routing is checkable from outside.
    if let Ok(node) = HeaderValue::from_str(airlock.node()) {
        response.headers_mut().insert(NODE_HEADER, node);
    }
    let status = response.status().as_u16();
    let tenant = response
        .extensions()
        .get::<TenantName>()
        .map_or("-", |t| t.0.as_str());
    let kind = response.extensions().get::<ErrorKind>().map(|k| k.0);
    let metrics = airlock.metrics();
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            status,
        })
        .inc();
    if let Some(kind) = kind {
        metrics
            .errors
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }
    tracing::info!(
        target: "airlock_server::request",
        tenant,
        method = %method,
        route,
        status,
        latency_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        error = kind.unwrap_or(""),
        "request"
    );
    response
}

/// The header naming the node that answered (every answer).
pub const NODE_HEADER: HeaderName = HeaderName::from_static("x-airlock-node");

async fn health(State(airlock): State<Airlock>) -> Json<serde_json::Value> {
    let status = if airlock.check_not_draining().is_ok() {
        "ok"
    } else {
        "draining"
    };
    Json(serde_json::json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "node": airlock.node(),
    }))
}

/// Readiness, for a proxy or Kubernetes: 200 while the node takes new
/// work, 503 while it drains or (with `refuse_when_full`) has no free VM
/// slot; the body says which, with the free slots, either way.
async fn ready(State(airlock): State<Airlock>) -> Response {
    let draining = airlock.check_not_draining().is_err();
    let free_slots = airlock.free_slots();
    let full = airlock.config().refuse_when_full && free_slots == 0;
    let ready = !draining && !full;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": ready,
        "node": airlock.node(),
        "draining": draining,
        "free_slots": free_slots,
        "slots": airlock.fair_share().capacity(),
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(airlock): State<Airlock>) -> impl IntoResponse {
    airlock.sweep_sessions();
    airlock.metrics().observe_pools(airlock.scheduler().pools());
    if let Some(usage) = airlock.cache_usage() {
        airlock.metrics().observe_caches(&usage);
    }
    airlock.metrics().observe_fair(airlock.fair_share());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        airlock.metrics().render(),
    )
}

async fn openapi_document(State(airlock): State<Airlock>) -> Json<serde_json::Value> {
    let _ = &airlock;
    Json(openapi())
}

async fn not_found(request: Request) -> ServerError {
    ServerError::RouteNotFound {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    }
}
