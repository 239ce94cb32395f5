//! The secrets routes: `PUT /v1/secrets/{name}` (201 made, 200
//! replaced), `GET /v1/secrets` (names, hosts and dates, never values),
//! `DELETE /v1/secrets/{name}` (204, 404). Each acts on the caller's
//! tenant only; another tenant's secret is answered as one that does not
//! exist.

use super::extract::ApiJson;
use crate::api::SecretBody;
use crate::error::ServerError;
use crate::keys::Caller;
use crate::secrets::Stored;
use crate::service::Airlock;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Extension, Json, Router};

/// The secrets routes, added to the authenticated router.
pub fn routes(router: Router<Airlock>) -> Router<Airlock> {
    router
        .route("/v1/secrets", get(list))
        .route("/v1/secrets/{name}", put(set).delete(delete))
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn set(
    State(airlock): State<Airlock>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SecretBody>,
) -> Result<Response, ServerError> {
    let secret = body.to_new_secret(&name);
    let tenant = caller.tenant.clone();
    let (stored, info) = airlock
        .secret_store()?
        .blocking(move |store| store.set(&tenant, &secret, now_unix()))
        .await?;
    tracing::info!(tenant = caller.tenant, secret = info.name, hosts = ?info.hosts, "secret set");
    let status = match stored {
        Stored::Created => StatusCode::CREATED,
        Stored::Replaced => StatusCode::OK,
    };
    Ok((status, Json(info)).into_response())
}

async fn list(
    State(airlock): State<Airlock>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ServerError> {
    let tenant = caller.tenant.clone();
    let secrets = airlock
        .secret_store()?
        .blocking(move |store| store.list(&tenant))
        .await?;
    Ok(Json(serde_json::json!({ "secrets": secrets })).into_response())
}

async fn delete(
    State(airlock): State<Airlock>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ServerError> {
    let tenant = caller.tenant.clone();
    let deleted = name.clone();
    airlock
        .secret_store()?
        .blocking(move |store| store.delete(&tenant, &deleted))
        .await?;
    tracing::info!(tenant = caller.tenant, secret = name, "secret deleted");
    Ok(StatusCode::NO_CONTENT)
}
