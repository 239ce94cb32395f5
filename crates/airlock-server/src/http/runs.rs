//! `POST /v1/runs`: one run in a fresh VM, answered whole as JSON (the
//! same JSON as `airlock run --json`) or streamed as server-sent events.

use super::extract::ApiJson;
use super::sse;
use crate::api::RunBody;
use crate::error::ServerError;
use crate::keys::Caller;
use crate::service::Airlock;
use airlock::Discard;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

/// Whether the client asked for server-sent events.
pub fn wants_events(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// Runs the body's code; checks (input, quota, draining) answer before any
/// VM starts, also when streaming.
pub async fn create(
    State(airlock): State<Airlock>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<RunBody>,
) -> Result<Response, ServerError> {
    let run = airlock.prepare_run(&caller, &body).await?;
    if wants_events(&headers) {
        let limits = airlock.config().streams.clone();
        let metrics = airlock.metrics().clone();
        let events = sse::stream(&limits, &metrics, move |mut observer| async move {
            let result = airlock.execute(run, &mut observer).await;
            (observer, result)
        });
        return Ok(events.into_response());
    }
    let result = airlock.execute(run, &mut Discard).await?;
    Ok(Json(result).into_response())
}
