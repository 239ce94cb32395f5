//! E2B's protocol (`docs/e2b.md`): the official `e2b` and
//! `e2b-code-interpreter` SDKs drive `airlock serve` unchanged, with
//! `E2B_API_URL` and `E2B_SANDBOX_URL` both set to the E2B listener
//! (`--e2b-listen`, `[e2b] listen`).
//!
//! One listener serves three planes, told apart by headers as the SDKs
//! send them ([`router`]):
//! - no `E2b-Sandbox-Id`: the control plane (`control`: create, list,
//!   get, kill, set timeout, connect; `X-API-Key` is an Airlock key of
//!   either form, `serve keys add --format e2b`);
//! - `E2b-Sandbox-Port: 49983`: envd (`envd`: processes, filesystem,
//!   `/files`; `X-Access-Token` is the sandbox's `envdAccessToken`);
//! - `E2b-Sandbox-Port: 49999`: the code interpreter (`interpreter`:
//!   `/execute`, `/contexts`; the sandbox's `trafficAccessToken` or
//!   `envdAccessToken`).
//!
//! With a domain (`--e2b-domain`, `[e2b] domain`), a request without the
//! headers whose `Host` is `<port>-<sandbox id>.<domain>` goes to that
//! sandbox's port as if it carried them ([`sandbox_of_host`]): E2B's
//! host-name mode, for operators with wildcard DNS in front of the
//! listener.
//!
//! An E2B sandbox is an Airlock server session (`sandboxes`): the same
//! tenancy, quotas (live sessions, memory, requests per minute), request
//! log and metrics (routes labelled `e2b-api`, `e2b-envd`, `e2b-code`),
//! and drain. Errors take each plane's shape (`E2bError`): `{"code":
//! <status>, "message"}` on the control plane, Connect's `{"code":
//! "<name>", "message"}` on envd, plain text on the code interpreter, and
//! E2B's proxy answer (502, "The sandbox was not found") for a sandbox
//! that is not there or not the caller's.

mod connect;
mod control;
mod envd;
mod interpreter;
mod paths;
mod processes;
pub(crate) mod sandboxes;
mod stream;
#[cfg(test)]
mod tests;

use crate::error::{ErrorKind, ServerError};
use crate::http::{RoutePlane, TenantName};
use crate::service::Airlock;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::Router;
use sandboxes::{Sandbox, Sandboxes};
use std::sync::Arc;
use tower::ServiceExt;

/// The envd port the SDKs name in `E2b-Sandbox-Port`.
pub const ENVD_PORT: u16 = 49983;
/// The code interpreter's port.
pub const INTERPRETER_PORT: u16 = 49999;
/// The envd version create and connect report: the SDKs gate features on
/// it (below 0.4.0 they send `Authorization: Basic`; from 0.5.2 they send
/// `CloseStdin`, which this server serves; 0.5.7 would promise
/// octet-stream and gzip uploads, which it does not take).
pub const ENVD_VERSION: &str = "0.5.2";

/// The E2B listener's state: the server and its E2B sandboxes.
#[derive(Clone)]
pub(crate) struct E2b {
    airlock: Airlock,
    sandboxes: Arc<Sandboxes>,
}

impl std::fmt::Debug for E2b {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2b").finish_non_exhaustive()
    }
}

/// The router of the E2B listener: each request goes to the plane its
/// headers name (see the module's doc), through the same request log and
/// metrics as the REST API.
pub fn router(airlock: Airlock) -> Router {
    let state = E2b {
        airlock: airlock.clone(),
        sandboxes: Arc::new(Sandboxes::default()),
    };
    let log = |router: Router<E2b>| {
        router
            .layer(middleware::from_fn_with_state(
                airlock.clone(),
                crate::http::log_request,
            ))
            .with_state(state.clone())
    };
    let planes = Arc::new(Planes {
        control: log(control::routes(&airlock)),
        envd: log(envd::routes()),
        interpreter: log(interpreter::routes()),
        keyless: airlock.is_keyless(),
        domain: airlock.config().e2b.domain.clone(),
    });
    Router::new().fallback(move |request: Request| {
        let planes = Arc::clone(&planes);
        async move { planes.dispatch(request).await }
    })
}

struct Planes {
    control: Router,
    envd: Router,
    interpreter: Router,
    keyless: bool,
    /// `[e2b] domain`: route by `Host: <port>-<id>.<domain>` too.
    domain: Option<String>,
}

impl Planes {
    async fn dispatch(&self, mut request: Request) -> Response {
        if self.keyless {
            // The loopback `Host` and `Origin` checks; the custom headers
            // every E2B request carries already need a CORS preflight,
            // which this server never answers.
            if let Err(e) = crate::http::keyless::check(request.headers(), false, false) {
                let refusal = E2bError::from(e).into_response();
                return crate::http::refuse_with(request, refusal).await;
            }
        }
        if let Some(domain) = &self.domain {
            route_by_host(request.headers_mut(), domain);
        }
        let headers = request.headers();
        let (router, plane) = if !headers.contains_key(SANDBOX_ID) {
            (&self.control, "e2b-api ")
        } else {
            match header_str(headers, SANDBOX_PORT).and_then(|p| p.parse::<u16>().ok()) {
                Some(ENVD_PORT) => (&self.envd, "e2b-envd "),
                Some(INTERPRETER_PORT) => (&self.interpreter, "e2b-code "),
                other => {
                    let id = header_str(headers, SANDBOX_ID).unwrap_or_default();
                    let port = other.map_or_else(|| "none".to_owned(), |p| p.to_string());
                    return E2bError::unreachable(id, &port).into_response();
                }
            }
        };
        request.extensions_mut().insert(RoutePlane(plane));
        match router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// The sandbox and port a `Host` names in host-name mode:
/// `<port>-<sandbox id>.<domain>` (any `:port` of the listener after it,
/// names compared without case); `None` for any other host (`api.<domain>`
/// and the rest are the control plane).
pub(crate) fn sandbox_of_host(host: &str, domain: &str) -> Option<(u16, String)> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let label = name.strip_suffix(&format!(".{}", domain.to_ascii_lowercase()))?;
    let (port, id) = label.split_once('-')?;
    let port = port.parse::<u16>().ok()?;
    let id_ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    id_ok.then(|| (port, id.to_owned()))
}

/// A request with no `E2b-Sandbox-Id` whose `Host` names a sandbox (see
/// [`sandbox_of_host`]) gets the two headers it would carry in headers
/// mode, so every plane reads them alike.
fn route_by_host(headers: &mut HeaderMap, domain: &str) {
    if headers.contains_key(SANDBOX_ID) {
        return;
    }
    let Some((port, id)) = header_str(headers, "host").and_then(|h| sandbox_of_host(h, domain))
    else {
        return;
    };
    if let Ok(id) = HeaderValue::from_str(&id) {
        headers.insert(SANDBOX_ID, id);
        headers.insert(SANDBOX_PORT, HeaderValue::from(port));
    }
}

/// The header naming the sandbox of a sandbox-plane request.
pub(crate) const SANDBOX_ID: &str = "e2b-sandbox-id";
/// The header naming its port.
pub(crate) const SANDBOX_PORT: &str = "e2b-sandbox-port";
/// The envd token header.
pub(crate) const ACCESS_TOKEN: &str = "x-access-token";
/// The code interpreter's token header.
pub(crate) const TRAFFIC_TOKEN: &str = "e2b-traffic-access-token";

/// A header's value as text, if it is there and text.
pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Which plane an error is answered on, and so its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plane {
    /// `{"code": <status>, "message"}`.
    Api,
    /// Connect's `{"code": "<name>", "message"}` (unary calls).
    Envd,
    /// `{"code": <status>, "message"}` (`/files` reads the message).
    Files,
    /// Plain text (the code interpreter's own server answers so).
    Code,
}

/// An answer that is not a success, in its plane's shape.
#[derive(Debug)]
pub(crate) struct E2bError {
    plane: Plane,
    status: StatusCode,
    message: String,
    kind: &'static str,
    sandbox_id: Option<String>,
    /// Connect's code, when it says more than the status (envd).
    connect_code: Option<&'static str>,
}

impl E2bError {
    /// `status` with `message` on `plane`; `kind` goes to the metrics.
    pub fn new(
        plane: Plane,
        status: StatusCode,
        kind: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            plane,
            status,
            message: message.into(),
            kind,
            sandbox_id: None,
            connect_code: None,
        }
    }

    /// An envd answer with Connect's `code` (`not_found`,
    /// `already_exists`, ...).
    pub fn connect(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            connect_code: Some(code),
            ..Self::new(Plane::Envd, connect::status_of(code), code, message)
        }
    }

    /// A server error on `plane`, with its status and public message.
    pub fn server(plane: Plane, error: &ServerError) -> Self {
        let public = error.public();
        let status =
            StatusCode::from_u16(public.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut message = public.message;
        if let Some(id) = public.request_id {
            message = format!("{message} (request id {id})");
        }
        Self::new(plane, status, public.kind, message)
    }

    /// 400 on `plane`.
    pub fn bad_request(plane: Plane, message: impl Into<String>) -> Self {
        Self::new(plane, StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    /// The control plane's 404 for a sandbox that is not there or not the
    /// caller's (the SDKs raise `SandboxNotFoundException`; `kill`
    /// returns false).
    pub fn sandbox_not_found(id: &str) -> Self {
        Self::new(
            Plane::Api,
            StatusCode::NOT_FOUND,
            "session_not_found",
            format!("Sandbox \"{id}\" doesn't exist or you don't have access to it"),
        )
    }

    /// E2B's proxy answer for a sandbox plane whose sandbox is not there
    /// (gone, killed, timed out, another tenant's): the SDKs take it as
    /// "not running" (`is_running()` is false) by its "was not found".
    pub fn sandbox_gone(id: &str) -> Self {
        Self {
            sandbox_id: Some(id.to_owned()),
            ..Self::new(
                Plane::Api,
                StatusCode::BAD_GATEWAY,
                "session_not_found",
                "The sandbox was not found",
            )
        }
    }

    /// The proxy's answer for a port nothing serves.
    pub fn unreachable(id: &str, port: &str) -> Self {
        Self {
            sandbox_id: Some(id.to_owned()),
            ..Self::new(
                Plane::Api,
                StatusCode::BAD_GATEWAY,
                "not_found",
                format!("The sandbox is running but port {port} is not open: this server serves 49983 (envd) and 49999 (code interpreter)"),
            )
        }
    }
}

impl From<ServerError> for E2bError {
    fn from(error: ServerError) -> Self {
        Self::server(Plane::Api, &error)
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let code = self.status.as_u16();
        let mut response = match (self.plane, &self.sandbox_id) {
            (_, Some(id)) => (
                self.status,
                axum::Json(
                    serde_json::json!({"sandboxId": id, "message": self.message, "code": code}),
                ),
            )
                .into_response(),
            (Plane::Api | Plane::Files, None) => (
                self.status,
                axum::Json(serde_json::json!({"code": code, "message": self.message})),
            )
                .into_response(),
            (Plane::Envd, None) => match self.connect_code {
                Some(code) => connect::coded_error(code, &self.message),
                None => connect::error_response(self.status, &self.message),
            },
            (Plane::Code, None) => (self.status, self.message).into_response(),
        };
        if self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE {
            // Python's SDK retries 502/503/504 on the control plane unless
            // told not to: none of these is transient.
            response
                .headers_mut()
                .insert("should-retry", HeaderValue::from_static("false"));
        }
        response.extensions_mut().insert(ErrorKind(self.kind));
        response
    }
}

/// The sandbox a sandbox-plane request names, checked: live, and the
/// token it carries is one of `tokens(sandbox)`; the request is admitted
/// against its tenant's rate.
///
/// # Errors
/// E2B's 502 for an unknown sandbox, 401 for a wrong token, 429 / 503 as
/// the REST API.
pub(crate) fn sandbox_of(
    e2b: &E2b,
    headers: &HeaderMap,
    plane: Plane,
    tokens: impl Fn(&Sandbox) -> Vec<&str>,
    given: &[&str],
) -> Result<Arc<Sandbox>, E2bError> {
    let id = header_str(headers, SANDBOX_ID).unwrap_or_default();
    let sandbox = e2b
        .sandboxes
        .get(None, id)
        .ok_or_else(|| E2bError::sandbox_gone(id))?;
    let expected = tokens(&sandbox);
    let presented: Vec<&str> = given
        .iter()
        .filter_map(|name| header_str(headers, name))
        .collect();
    let ok = presented
        .iter()
        .any(|p| expected.iter().any(|e| sandboxes::token_matches(p, e)));
    if !ok {
        let status = StatusCode::UNAUTHORIZED;
        let message = if presented.is_empty() {
            "missing access token: send the sandbox's envdAccessToken as X-Access-Token"
        } else {
            "wrong access token for this sandbox"
        };
        return Err(E2bError::new(plane, status, "unauthorized", message));
    }
    e2b.airlock
        .admit(&sandbox.caller)
        .map_err(|e| E2bError::server(plane, &e))?;
    Ok(sandbox)
}

/// Longest a sandbox-plane call waits for the call before it to end.
const READY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits (up to [`READY_WAIT`]) until `sandbox`'s session runs no call:
/// an E2B client sends its next request as soon as the last one's answer
/// ended, or as soon as it left one (a timeout, a kill), while the
/// session may still be finishing it; E2B's own servers queue these.
///
/// # Errors
/// The session's `Busy` past the wait, or `Closed`.
pub(crate) async fn wait_ready(sandbox: &Sandbox) -> Result<(), ServerError> {
    let deadline = tokio::time::Instant::now() + READY_WAIT;
    loop {
        match sandbox.session.check_ready() {
            Err(airlock::SessionError::Busy { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => return Ok(other?),
        }
    }
}

/// Tags `response` with `tenant` for the request log.
pub(crate) fn for_tenant(mut response: Response, tenant: &str) -> Response {
    response
        .extensions_mut()
        .insert(TenantName(tenant.to_owned()));
    response
}

/// A streamed body of `application/json` lines or Connect frames.
pub(crate) fn streamed(content_type: &'static str, body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}
