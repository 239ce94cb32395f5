//! E2B's control plane (its REST API, `E2B_API_URL`): create, list, get,
//! kill, set timeout and connect a sandbox, with `X-API-Key`. Pause,
//! resume, metrics, snapshots, fork and network updates answer 501: this
//! server does not do them (the SDKs raise their generic exception with
//! the message).

use super::sandboxes::{NewSandbox, Sandbox};
use super::{for_tenant, header_str, E2b, E2bError, Plane, ENVD_VERSION};
use crate::api::SessionBody;
use crate::error::ServerError;
use crate::keys::Caller;
use crate::service::Airlock;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The control plane's routes, behind the API key.
pub(super) fn routes(airlock: &Airlock) -> Router<E2b> {
    let authed = Router::new()
        .route("/v2/sandboxes", post(create).get(list))
        .route("/sandboxes", get(list))
        .route("/sandboxes/{id}", get(show).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/metrics", get(not_supported))
        .route("/sandboxes/metrics", get(not_supported))
        .route("/sandboxes/{id}/snapshots", post(not_supported))
        .route("/sandboxes/{id}/fork", post(not_supported))
        .route("/sandboxes/{id}/network", put(not_supported))
        .route("/snapshots", get(not_supported))
        .route("/snapshots/{id}", delete(not_supported))
        .route_layer(middleware::from_fn_with_state(
            airlock.clone(),
            authenticate,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(authed)
        .fallback(not_found)
}

/// Authenticates `X-API-Key` (an Airlock key of either form; any key on a
/// keyless server) and admits the request against the tenant's rate.
async fn authenticate(
    State(airlock): State<Airlock>,
    mut request: Request,
    next: Next,
) -> Response {
    let key = header_str(request.headers(), "x-api-key").map(str::to_owned);
    let caller = airlock
        .authenticate(key.as_deref())
        .map_err(|e| match e {
            ServerError::Unauthorized { .. } if key.is_none() => ServerError::Unauthorized {
                message: "missing API key: set E2B_API_KEY (sent as X-API-Key)".into(),
            },
            other => other,
        })
        .and_then(|caller| airlock.admit(&caller).map(|()| caller));
    let caller = match caller {
        Ok(caller) => caller,
        Err(e) => {
            let reason = match &e {
                ServerError::Quota { quota, .. } => quota,
                other => other.kind(),
            };
            crate::metrics::Metrics::count(&airlock.metrics().denials, reason);
            return crate::http::refuse_with(request, E2bError::from(e).into_response()).await;
        }
    };
    let tenant = caller.tenant.clone();
    request.extensions_mut().insert(caller);
    for_tenant(next.run(request).await, &tenant)
}

async fn health(State(e2b): State<E2b>) -> Response {
    match e2b.airlock.check_not_draining() {
        Ok(()) => (StatusCode::OK, "OK").into_response(),
        Err(e) => E2bError::from(e).into_response(),
    }
}

async fn not_found(request: Request) -> E2bError {
    E2bError::new(
        Plane::Api,
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {} {} on this server's E2B API",
            request.method(),
            request.uri().path()
        ),
    )
}

async fn not_supported(request: Request) -> E2bError {
    let path = request.uri().path();
    let what = if path.ends_with("/pause") {
        "Pausing sandboxes"
    } else if path.ends_with("/resume") {
        "Resuming paused sandboxes"
    } else if path.ends_with("/metrics") {
        "Sandbox metrics"
    } else if path.contains("snapshots") {
        "Snapshots"
    } else if path.ends_with("/fork") {
        "Forking sandboxes"
    } else {
        "Changing a sandbox's network"
    };
    E2bError::new(
        Plane::Api,
        StatusCode::NOT_IMPLEMENTED,
        "not_supported",
        format!("{what} is not supported by this server (Airlock; see docs/e2b.md)"),
    )
}

/// `POST /v2/sandboxes`'s body (camelCase as E2B's OpenAPI, but
/// `allow_internet_access`). Fields this server cannot honour are refused
/// rather than ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    #[serde(rename = "templateID")]
    template_id: String,
    timeout: Option<u64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
    auto_pause: Option<bool>,
    auto_resume: Option<AutoResume>,
    #[serde(rename = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    network: Option<Value>,
    mcp: Option<Value>,
    volume_mounts: Option<Value>,
}

/// Create's `autoResume`.
#[derive(Debug, Deserialize)]
struct AutoResume {
    enabled: bool,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, E2bError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| E2bError::bad_request(Plane::Api, format!("the request body: {e}")))
}

/// A timeout in seconds, checked against `[e2b] max_timeout_s`.
fn timeout_of(airlock: &Airlock, seconds: Option<u64>) -> Result<Duration, E2bError> {
    let config = &airlock.config().e2b;
    let seconds = seconds.unwrap_or(config.default_timeout_s);
    if seconds == 0 || seconds > config.max_timeout_s {
        return Err(E2bError::bad_request(
            Plane::Api,
            format!(
                "timeout {seconds} s: this server takes 1 ..= {} s",
                config.max_timeout_s
            ),
        ));
    }
    Ok(Duration::from_secs(seconds))
}

async fn create(
    State(e2b): State<E2b>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, E2bError> {
    let body: CreateBody = parse(&body)?;
    let refuse = |what: &str| {
        Err(E2bError::bad_request(
            Plane::Api,
            format!("{what} is not supported by this server (Airlock; see docs/e2b.md)"),
        ))
    };
    if body.auto_resume.as_ref().is_some_and(|r| r.enabled) {
        return refuse("autoResume (resuming a paused sandbox on traffic: connect resumes it)");
    }
    if body.allow_internet_access == Some(true) || body.network.is_some() {
        return refuse("internet access and network rules for E2B sandboxes");
    }
    if body.mcp.is_some() || body.volume_mounts.is_some() {
        return refuse("mcp and volumeMounts");
    }
    let airlock = &e2b.airlock;
    let timeout = timeout_of(airlock, body.timeout)?;
    let image = airlock
        .config()
        .e2b
        .template_image(&body.template_id)
        .ok_or_else(|| {
            E2bError::new(
                Plane::Api,
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "template '{}' not found: this server knows code-interpreter-v1, base and the ids of [e2b.templates]",
                    body.template_id
                ),
            )
        })?;
    // The session outlives any E2B timeout; the sandbox's timer ends it.
    let day = airlock::MAX_SESSION_LIFETIME.as_secs();
    let session_body: SessionBody = serde_json::from_value(json!({
        "image": image.name(),
        "idle_timeout_s": day,
        "max_lifetime_s": day,
    }))
    .map_err(|e| E2bError::from(ServerError::internal("build a session body", e)))?;
    let shape = &session_body.spec.sandbox.shape;
    let (memory_mib, vcpus) = (shape.memory_mib, shape.cpus);
    let info = airlock.create_session(&caller, &session_body).await?;
    let session = airlock.session(&caller, &info.id)?;
    let sandbox = e2b.sandboxes.insert(
        airlock,
        session,
        NewSandbox {
            caller,
            template_id: body.template_id,
            image,
            metadata: body.metadata.unwrap_or_default(),
            env_vars: body.env_vars.unwrap_or_default(),
            memory_mib,
            vcpus,
            timeout,
            auto_pause: body.auto_pause == Some(true),
        },
    );
    tracing::info!(
        sandbox_id = sandbox.id,
        template = sandbox.template_id,
        "e2b sandbox created"
    );
    Ok((StatusCode::CREATED, Json(sandbox_json(&sandbox))).into_response())
}

/// What create and connect answer (E2B's `Sandbox`).
fn sandbox_json(sandbox: &Sandbox) -> Value {
    json!({
        "templateID": sandbox.template_id,
        "sandboxID": sandbox.id,
        "clientID": "airlock",
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": sandbox.access_token,
        "trafficAccessToken": sandbox.traffic_token,
        "domain": null,
        "alias": sandbox.template_id,
    })
}

/// What get and list answer (E2B's `SandboxDetail` / `ListedSandbox`).
fn detail_json(sandbox: &Sandbox, with_token: bool) -> Value {
    let mut value = json!({
        "templateID": sandbox.template_id,
        "alias": sandbox.template_id,
        "sandboxID": sandbox.id,
        "clientID": "airlock",
        "startedAt": rfc3339(sandbox.started_at),
        "endAt": rfc3339(sandbox.end_at()),
        "cpuCount": sandbox.vcpus,
        "memoryMB": sandbox.memory_mib,
        // Not tracked per sandbox: the home is a tmpfs of the guest's.
        "diskSizeMB": 0,
        "metadata": sandbox.metadata,
        "state": "running",
        "envdVersion": ENVD_VERSION,
        "domain": null,
    });
    if with_token {
        value["envdAccessToken"] = Value::String(sandbox.access_token.clone());
    }
    value
}

/// An RFC 3339 time (or one without an offset, as Python's `isoformat`
/// writes a naive time: taken as UTC).
fn parse_time(text: &str) -> Option<SystemTime> {
    use time::format_description::well_known::Rfc3339;
    let parsed = time::OffsetDateTime::parse(text, &Rfc3339)
        .or_else(|_| time::OffsetDateTime::parse(&format!("{text}Z"), &Rfc3339))
        .ok()?;
    Some(SystemTime::from(parsed))
}

/// `t` as RFC 3339 in UTC, to the microsecond.
pub(super) fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    let t = t.replace_nanosecond(t.microsecond() * 1000).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn lookup(e2b: &E2b, caller: &Caller, id: &str) -> Result<Arc<Sandbox>, E2bError> {
    e2b.sandboxes
        .get(Some(&caller.tenant), id)
        .ok_or_else(|| E2bError::sandbox_not_found(id))
}

/// The caller's paused sandbox `id` (the session saved to disk), if any.
async fn paused_meta(
    e2b: &E2b,
    caller: &Caller,
    id: &str,
) -> Result<Option<airlock::pause::PausedMeta>, E2bError> {
    Ok(e2b
        .airlock
        .paused_sessions(caller)
        .await?
        .into_iter()
        .find(|meta| meta.session_id == id))
}

/// What get and list answer for a paused sandbox.
fn paused_detail_json(e2b: &E2b, meta: &airlock::pause::PausedMeta) -> Value {
    let record = e2b.sandboxes.paused_record(&meta.session_id);
    let image = meta
        .shape
        .image
        .unwrap_or_else(|| airlock::spec::Image::of_language(meta.language));
    let template_id = record.as_ref().map_or_else(
        || e2b.airlock.config().e2b.template_of(image),
        |r| r.template_id.clone(),
    );
    let at = |ms: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let started = record
        .as_ref()
        .map_or_else(|| at(meta.created_at_ms), |r| r.started_at);
    json!({
        "templateID": template_id,
        "alias": template_id,
        "sandboxID": meta.session_id,
        "clientID": "airlock",
        "startedAt": rfc3339(started),
        // A paused sandbox ends when its saved copy expires.
        "endAt": rfc3339(at(meta.expires_at_ms)),
        "cpuCount": meta.shape.vcpus,
        "memoryMB": meta.shape.memory_mib,
        "diskSizeMB": meta.shape.disk_mib,
        "metadata": record.map(|r| r.metadata).unwrap_or_default(),
        "state": "paused",
        "envdVersion": ENVD_VERSION,
        "domain": null,
    })
}

async fn show(
    State(e2b): State<E2b>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, E2bError> {
    match lookup(&e2b, &caller, &id) {
        Ok(sandbox) => Ok(Json(detail_json(&sandbox, true))),
        Err(not_live) => match paused_meta(&e2b, &caller, &id).await? {
            Some(meta) => Ok(Json(paused_detail_json(&e2b, &meta))),
            None => Err(not_live),
        },
    }
}

/// Pauses a sandbox: its whole machine (memory, processes, files) saved
/// to disk (`docs/persistence.md`), its VM and quota place freed; E2B's
/// metadata kept here for the resume.
async fn pause(
    State(e2b): State<E2b>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, E2bError> {
    let sandbox = match lookup(&e2b, &caller, &id) {
        Ok(sandbox) => sandbox,
        Err(not_live) => {
            if paused_meta(&e2b, &caller, &id).await?.is_some() {
                return Err(E2bError::new(
                    Plane::Api,
                    StatusCode::CONFLICT,
                    "conflict",
                    format!("sandbox {id} is already paused"),
                ));
            }
            return Err(not_live);
        }
    };
    // The record first: a connect may resume it as soon as it is paused.
    e2b.sandboxes.keep_paused(&sandbox);
    if let Err(e) = e2b.airlock.pause_session(&caller, &id).await {
        e2b.sandboxes.forget_paused(&id);
        // E2B's SDKs read a 409 as "paused already": a sandbox that
        // cannot be paused (or is busy) is a 400 with the reason here.
        if e.status() == StatusCode::CONFLICT {
            return Err(E2bError::bad_request(Plane::Api, e.public().message));
        }
        return Err(e.into());
    }
    // Only this sandbox: one resumed meanwhile under the same id stays.
    e2b.sandboxes.remove_this(&sandbox);
    // Records of paused sandboxes that expired meanwhile go.
    let paused: Vec<String> = e2b
        .airlock
        .paused_sessions(&caller)
        .await?
        .into_iter()
        .map(|meta| meta.session_id)
        .collect();
    e2b.sandboxes.prune_paused(&caller.tenant, &paused);
    tracing::info!(sandbox_id = id, "e2b sandbox paused");
    Ok(StatusCode::NO_CONTENT)
}

/// Resumes the caller's paused sandbox `id` under the same id, its E2B
/// metadata as it was (if this process paused it), ending `timeout`
/// seconds from now (the default when `None`).
async fn resume_paused(
    e2b: &E2b,
    caller: &Caller,
    id: &str,
    timeout: Option<u64>,
) -> Result<Arc<Sandbox>, E2bError> {
    let meta = paused_meta(e2b, caller, id)
        .await?
        .ok_or_else(|| E2bError::sandbox_not_found(id))?;
    let airlock = &e2b.airlock;
    let timeout = timeout_of(airlock, timeout)?;
    airlock.resume_session(caller, id).await?;
    let session = airlock.session(caller, id)?;
    let image = meta
        .shape
        .image
        .unwrap_or_else(|| airlock::spec::Image::of_language(meta.language));
    let record = e2b.sandboxes.paused_record(id);
    e2b.sandboxes.forget_paused(id);
    let (template_id, metadata, env_vars, auto_pause) = match record {
        Some(r) => (r.template_id, r.metadata, r.env_vars, r.auto_pause),
        None => (
            airlock.config().e2b.template_of(image),
            BTreeMap::new(),
            BTreeMap::new(),
            false,
        ),
    };
    let sandbox = e2b.sandboxes.insert(
        airlock,
        session,
        NewSandbox {
            caller: caller.clone(),
            template_id,
            image,
            metadata,
            env_vars,
            memory_mib: meta.shape.memory_mib,
            vcpus: meta.shape.vcpus,
            timeout,
            auto_pause,
        },
    );
    tracing::info!(sandbox_id = id, "e2b sandbox resumed");
    Ok(sandbox)
}

/// E2B's older resume call (the SDKs now resume through connect).
async fn resume(
    State(e2b): State<E2b>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, E2bError> {
    let body: ConnectBody = parse(&body)?;
    if lookup(&e2b, &caller, &id).is_ok() {
        return Err(E2bError::new(
            Plane::Api,
            StatusCode::CONFLICT,
            "conflict",
            format!("sandbox {id} is already running"),
        ));
    }
    let sandbox = resume_paused(&e2b, &caller, &id, body.timeout).await?;
    Ok((StatusCode::CREATED, Json(sandbox_json(&sandbox))).into_response())
}

async fn kill(
    State(e2b): State<E2b>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, E2bError> {
    let Some(sandbox) = e2b
        .sandboxes
        .remove(&caller.tenant, &id)
        .filter(|s| s.is_live())
    else {
        // A paused one: its saved copy is deleted.
        if paused_meta(&e2b, &caller, &id).await?.is_some() {
            e2b.airlock.close_session(&caller, &id).await?;
            e2b.sandboxes.forget_paused(&id);
            return Ok(StatusCode::NO_CONTENT);
        }
        return Err(E2bError::sandbox_not_found(&id));
    };
    match e2b.airlock.close_session(&caller, &sandbox.id).await {
        // Closed meanwhile (its timer, the REST API): killed all the same.
        Ok(()) | Err(ServerError::SessionNotFound { .. }) => Ok(StatusCode::NO_CONTENT),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
struct TimeoutBody {
    timeout: u64,
}

async fn set_timeout(
    State(e2b): State<E2b>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, E2bError> {
    let body: TimeoutBody = parse(&body)?;
    let timeout = timeout_of(&e2b.airlock, Some(body.timeout))?;
    lookup(&e2b, &caller, &id)?.set_timeout(timeout);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct ConnectBody {
    timeout: Option<u64>,
}

async fn connect(
    State(e2b): State<E2b>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, E2bError> {
    let body: ConnectBody = parse(&body)?;
    let sandbox = match lookup(&e2b, &caller, &id) {
        Ok(sandbox) => sandbox,
        // Connecting to a paused sandbox resumes it (201, as E2B).
        Err(not_live) => {
            if paused_meta(&e2b, &caller, &id).await?.is_none() {
                return Err(not_live);
            }
            let sandbox = resume_paused(&e2b, &caller, &id, body.timeout).await?;
            return Ok((StatusCode::CREATED, Json(sandbox_json(&sandbox))).into_response());
        }
    };
    if let Some(seconds) = body.timeout {
        let timeout = timeout_of(&e2b.airlock, Some(seconds))?;
        // Connecting never shortens a sandbox's life.
        if SystemTime::now() + timeout > sandbox.end_at() {
            sandbox.set_timeout(timeout);
        }
    }
    Ok(Json(sandbox_json(&sandbox)).into_response())
}

async fn list(
    State(e2b): State<E2b>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, E2bError> {
    let filter = match query.get("metadata") {
        Some(text) => metadata_filter(text)?,
        None => Vec::new(),
    };
    let wants = |state: &str| {
        query
            .get("state")
            .is_none_or(|states| states.split(',').any(|s| s.trim() == state))
    };
    let (wants_running, wants_paused) = (wants("running"), wants("paused"));
    let offset: usize = match query.get("nextToken").filter(|t| !t.is_empty()) {
        Some(token) => token.parse().map_err(|_| {
            E2bError::bad_request(
                Plane::Api,
                format!("nextToken {token:?} is not one this server gave"),
            )
        })?,
        None => 0,
    };
    let limit: usize = match query.get("limit") {
        Some(limit) => limit.parse().ok().filter(|l| *l > 0).ok_or_else(|| {
            E2bError::bad_request(
                Plane::Api,
                format!("limit {limit:?} is not a positive number"),
            )
        })?,
        None => usize::MAX,
    };
    let template = query.get("template");
    let newest_first = match query.get("order").map(String::as_str) {
        None | Some("" | "desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(E2bError::bad_request(
                Plane::Api,
                format!("order {other:?}: asc or desc"),
            ))
        }
    };
    let started_after = match query.get("startedAfter").filter(|t| !t.is_empty()) {
        Some(text) => Some(parse_time(text).ok_or_else(|| {
            E2bError::bad_request(
                Plane::Api,
                format!("startedAfter {text:?} is not an RFC 3339 time"),
            )
        })?),
        None => None,
    };
    // (started, template, metadata, detail) of each running and paused
    // sandbox of the caller.
    let mut listed: Vec<(SystemTime, String, Value)> = Vec::new();
    if wants_running {
        for s in e2b.sandboxes.list(&caller.tenant) {
            listed.push((s.started_at, s.template_id.clone(), detail_json(&s, false)));
        }
    }
    if wants_paused {
        for meta in e2b.airlock.paused_sessions(&caller).await? {
            let detail = paused_detail_json(&e2b, &meta);
            let started = detail["startedAt"]
                .as_str()
                .and_then(parse_time)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let template_id = detail["templateID"].as_str().unwrap_or_default().to_owned();
            listed.push((started, template_id, detail));
        }
    }
    listed.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| a.2["sandboxID"].as_str().cmp(&b.2["sandboxID"].as_str()))
    });
    if newest_first {
        listed.reverse();
    }
    let matching: Vec<Value> = listed
        .into_iter()
        .filter(|(started, _, _)| started_after.is_none_or(|after| *started > after))
        .filter(|(_, template_id, _)| template.is_none_or(|t| t == template_id))
        .filter(|(_, _, detail)| {
            filter.iter().all(|(k, v)| {
                detail["metadata"]
                    .get(k)
                    .and_then(Value::as_str)
                    .is_some_and(|have| have == v)
            })
        })
        .map(|(_, _, detail)| detail)
        .collect();
    let page: Vec<Value> = matching.iter().skip(offset).take(limit).cloned().collect();
    let mut response = Json(Value::Array(page)).into_response();
    let next = offset.saturating_add(limit);
    if next < matching.len() {
        if let Ok(value) = axum::http::HeaderValue::from_str(&next.to_string()) {
            response.headers_mut().insert("x-next-token", value);
        }
    }
    Ok(response)
}

/// The `metadata` filter of a list: a query string inside one parameter
/// (`a%3Db` is `{"a": "b"}`), each key and value percent-encoded once
/// more.
fn metadata_filter(text: &str) -> Result<Vec<(String, String)>, E2bError> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

/// `text` with `%XX` escapes (and `+` for space) decoded.
fn percent_decode(text: &str) -> Result<String, E2bError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        E2bError::bad_request(
                            Plane::Api,
                            format!("metadata filter {text:?}: a bad % escape"),
                        )
                    })?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| {
        E2bError::bad_request(Plane::Api, format!("metadata filter {text:?} is not UTF-8"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metadata_filter_decodes_its_pairs_once_more() {
        // `{"a b": "c&d"}` as the SDK sends it, after the query's own
        // decoding.
        let pairs = metadata_filter("a%20b=c%26d&x=1").unwrap();
        assert_eq!(
            pairs,
            vec![("a b".into(), "c&d".into()), ("x".into(), "1".into())]
        );
        assert!(metadata_filter("a=%zz").is_err());
    }

    #[test]
    fn times_are_rfc3339_in_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(rfc3339(t), "1970-01-01T00:00:01.5Z");
    }
}
