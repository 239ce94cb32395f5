//! The session routes: create, list, show, delete, exec (JSON or SSE),
//! files (PUT, GET, list), packages, and pause, resume and fork.

use super::extract::ApiJson;
use super::runs::wants_events;
use super::sse;
use crate::api::{ExecBody, ForkBody, PackagesBody, SessionBody};
use crate::error::ServerError;
use crate::keys::Caller;
use crate::service::Airlock;
use airlock::Discard;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tokio_stream::StreamExt;
use tokio_util::io::StreamReader;

/// The session routes, added to the authenticated router. File bodies
/// are streamed by [`write_file`] itself, under `[files] max_bytes`.
pub fn routes(router: Router<Airlock>) -> Router<Airlock> {
    router
        .route("/v1/sessions", post(create).get(list))
        .route("/v1/sessions/{id}", get(show).delete(close))
        .route("/v1/sessions/{id}/exec", post(exec))
        .route("/v1/sessions/{id}/pause", post(pause))
        .route("/v1/sessions/{id}/resume", post(resume))
        .route("/v1/sessions/{id}/fork", post(fork))
        .route("/v1/sessions/{id}/packages", post(packages))
        .route("/v1/sessions/{id}/files", get(list_files))
        .route(
            "/v1/sessions/{id}/files/{*path}",
            get(read_file).put(write_file),
        )
}

async fn create(
    State(airlock): State<Airlock>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<SessionBody>,
) -> Result<Response, ServerError> {
    let info = airlock.create_session(&caller, &body).await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

async fn list(
    State(airlock): State<Airlock>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<serde_json::Value>, ServerError> {
    let sessions = airlock.list_sessions(&caller).await?;
    Ok(Json(serde_json::json!({ "sessions": sessions })))
}

async fn show(
    State(airlock): State<Airlock>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ServerError> {
    Ok(Json(airlock.session_info(&caller, &id).await?).into_response())
}

async fn pause(
    State(airlock): State<Airlock>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ServerError> {
    Ok(Json(airlock.pause_session(&caller, &id).await?).into_response())
}

async fn resume(
    State(airlock): State<Airlock>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ServerError> {
    Ok(Json(airlock.resume_session(&caller, &id).await?).into_response())
}

async fn fork(
    State(airlock): State<Airlock>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ForkBody>,
) -> Result<Response, ServerError> {
    let sessions = airlock.fork_session(&caller, &id, body.count).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "sessions": sessions })),
    )
        .into_response())
}

async fn close(
    State(airlock): State<Airlock>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ServerError> {
    airlock.close_session(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn exec(
    State(airlock): State<Airlock>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ExecBody>,
) -> Result<Response, ServerError> {
    let session = airlock.session(&caller, &id)?;
    // Refusals (a timeout over the quota) answer as JSON with their
    // status, before a stream starts.
    let request = airlock.prepare_exec(&caller, &body)?;
    if wants_events(&headers) {
        let config = airlock.config();
        let (limits, metrics) = (config.streams.clone(), airlock.metrics().clone());
        return Ok(
            sse::stream(&limits, &metrics, move |mut observer| async move {
                let result = airlock
                    .exec_prepared(&session, request, &mut observer)
                    .await;
                (observer, result)
            })
            .into_response(),
        );
    }
    let result = airlock
        .exec_prepared(&session, request, &mut Discard)
        .await?;
    Ok(Json(result).into_response())
}

async fn packages(
    State(airlock): State<Airlock>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PackagesBody>,
) -> Result<Response, ServerError> {
    let session = airlock.session(&caller, &id)?;
    let result = session.install_packages(&body.packages).await?;
    Ok(Json(result).into_response())
}

#[derive(Debug, Deserialize)]
struct DirQuery {
    dir: Option<String>,
}

async fn list_files(
    State(airlock): State<Airlock>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<DirQuery>,
) -> Result<Response, ServerError> {
    let session = airlock.session(&caller, &id)?;
    let entries = session
        .list_files(query.dir.as_deref().unwrap_or("."))
        .await?;
    Ok(Json(serde_json::json!({"entries": entries})).into_response())
}

/// `GET`: the file streamed as it comes from the guest. A refusal (not
/// found, busy, over `[files] max_bytes`) is answered with its status
/// before any byte; see [`super::file_body`] for what follows.
async fn read_file(
    State(airlock): State<Airlock>,
    Extension(caller): Extension<Caller>,
    Path((id, path)): Path<(String, String)>,
) -> Result<Response, ServerError> {
    let session = airlock.session(&caller, &id)?;
    session.check_ready()?;
    super::file_body::respond(move |mut sink| async move {
        airlock.read_file_into(&session, &path, &mut sink).await
    })
    .await
}

/// `PUT`: everything that can refuse the upload is checked from the
/// headers first (the session is the caller's and live, not busy, the
/// declared length within `[files] max_bytes`), and a refusal is answered
/// at once with the body unread and the connection closed
/// ([`super::refuse`]); only then is the body streamed into the guest a
/// chunk at a time, never past the cap (a body cut short, or over the
/// cap, leaves no file).
async fn write_file(
    State(airlock): State<Airlock>,
    Extension(caller): Extension<Caller>,
    Path((id, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    let limit_bytes = airlock.config().files.max_bytes;
    let session = match airlock.session(&caller, &id).and_then(|session| {
        session.check_ready()?;
        Ok(session)
    }) {
        Ok(session) => session,
        Err(e) => return super::refuse(request, e).await,
    };
    let declared = declared_length(request.headers());
    if declared.is_some_and(|len| len > limit_bytes as u64) {
        return super::refuse(request, ServerError::TooLarge { limit_bytes }).await;
    }
    let body = request
        .into_body()
        .into_data_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    let mut source = StreamReader::new(body);
    match airlock
        .write_file(&session, &path, declared, &mut source)
        .await
    {
        Ok(info) => Json(info).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The body length a request declares (`Content-Length`), if any.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
