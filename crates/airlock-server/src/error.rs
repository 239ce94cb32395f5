//! The server's error type: one enum, each variant with its context, its
//! HTTP status ([`ServerError::status`]), a stable kind for clients
//! ([`ServerError::kind`]) and, through [`ServerError::hint`], what to do.
//!
//! Errors of the orchestrator keep their own type inside
//! [`ServerError::Orchestrator`] and are mapped to a status here, in one
//! place: bad input 400, a busy session 409, no capacity or a draining
//! server 503; 500 only for what should not happen.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can make a request or the server fail.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The request is malformed or refused before anything started.
    #[error("invalid request: {message}")]
    BadRequest {
        /// What is wrong and what is accepted.
        message: String,
    },
    /// No API key, or one that is not in the keys file.
    #[error("{message}")]
    Unauthorized {
        /// Why the key was refused.
        message: String,
    },
    /// No such session for this tenant (another tenant's sessions are
    /// reported exactly like sessions that never existed).
    #[error("no session {session_id}")]
    SessionNotFound {
        /// The id asked for.
        session_id: String,
    },
    /// No such route.
    #[error("no route {method} {path}")]
    RouteNotFound {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
    },
    /// A keyless server refused a request a web page could have sent: a
    /// `Host` that is not a loopback name (DNS rebinding) or a foreign
    /// `Origin` (cross-site).
    #[error("{message}")]
    Forbidden {
        /// What was refused and what is accepted.
        message: String,
    },
    /// A tenant's network allowlist names a domain outside the operator's
    /// `[egress] allowed_patterns`.
    #[error("{message}")]
    EgressNotAllowed {
        /// The domain and the patterns allowed.
        message: String,
    },
    /// A keyless server refused a body that is not `application/json`.
    #[error("{message}")]
    UnsupportedMediaType {
        /// The type given and the one accepted.
        message: String,
    },
    /// The body is larger than the server accepts.
    #[error("the request body is over the limit of {limit_bytes} bytes")]
    TooLarge {
        /// The limit.
        limit_bytes: usize,
    },
    /// A session file is larger than the server returns.
    #[error("file {path:?} is larger than this server's limit of {limit_bytes} bytes{where_else}")]
    FileTooLarge {
        /// The path in the session's home.
        path: String,
        /// The limit (`[files] max_bytes`, or MCP's lower one).
        limit_bytes: u64,
        /// Where a larger file can be read, if anywhere (with its
        /// leading separator).
        where_else: &'static str,
    },
    /// A tenant's quota would be exceeded.
    #[error("tenant {tenant}: quota {quota} exceeded: {message}")]
    Quota {
        /// The tenant.
        tenant: String,
        /// The quota's name (`concurrent_runs`, `live_sessions`,
        /// `memory_mib`, `timeout_s`, `requests_per_minute`,
        /// `mcp_sessions`).
        quota: &'static str,
        /// The limit and what was asked.
        message: String,
    },
    /// No VM slot came within the queue time (`[tenancy]
    /// queue_timeout_s`): the host's slots are taken (this tenant's share
    /// among them). Answered with `Retry-After`.
    #[error("tenant {tenant}: no VM slot free within {waited_s} s (the server holds {slots} VMs for tenants)")]
    QueueTimeout {
        /// The tenant.
        tenant: String,
        /// How long the request waited, in seconds.
        waited_s: u64,
        /// The slots tenants share.
        slots: usize,
        /// The `Retry-After` the answer carries, in seconds.
        retry_after_s: u64,
    },
    /// The request exposes guest ports on a server whose operator has not
    /// enabled it (`[expose] enabled`).
    #[error("exposing guest ports (network.expose) is disabled on this server")]
    ExposeDisabled,
    /// The request's exposed ports are not within the operator's policy
    /// (a fixed host port outside the ephemeral range, too many ports).
    #[error("network.expose: {message}")]
    ExposeRefused {
        /// What is refused and what is accepted.
        message: String,
    },
    /// A host folder the request mounts is not under a root the operator
    /// lists for its tenant (`[mounts.roots]`), or not a directory.
    #[error("mounts: {message}")]
    MountRefused {
        /// What is refused and why.
        message: String,
    },
    /// A run's uploaded files are larger, together, than the server
    /// accepts (`[uploads] max_bytes`).
    #[error(
        "the run's files are {total_bytes} bytes together, over the limit of {limit_bytes} bytes"
    )]
    UploadsTooLarge {
        /// Their decoded size.
        total_bytes: usize,
        /// The limit.
        limit_bytes: usize,
    },
    /// The server is draining (SIGTERM) and takes no new work.
    #[error("the server is shutting down and takes no new work")]
    Draining,
    /// Every VM slot of this node is taken and the operator asked for
    /// new work to be refused rather than queued (`refuse_when_full`, set
    /// on a cluster's nodes): a proxy in front retries another node.
    /// Answered with `Retry-After`.
    #[error("node {node} has no free VM slot ({slots} in use): try another node, or retry later")]
    NodeFull {
        /// This node's name.
        node: String,
        /// Its VM slots for tenants.
        slots: usize,
    },
    /// The orchestrator refused or failed (boxed: the orchestrator's errors
    /// are large, and this enum travels in every `Result`).
    #[error(transparent)]
    Orchestrator(Box<OrchestratorError>),
    /// The configuration file or a flag is not usable.
    #[error("configuration {source_name}: {message}")]
    Config {
        /// Where the bad value came from (a file path or `flags`).
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// The keys file cannot be read, parsed or written.
    #[error("keys file {path}: {message}")]
    Keys {
        /// The keys file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The secrets store or its key cannot be used.
    #[error("secrets {source_name}: {message}")]
    Secrets {
        /// The store file, the key file or the key's variable.
        source_name: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The caller's tenant has no secret of this name.
    #[error("no secret {name}")]
    SecretNotFound {
        /// The name asked for.
        name: String,
    },
    /// The server keeps no secrets: it was started without a key.
    #[error("this server keeps no secrets: it was started without a secrets key")]
    SecretsDisabled,
    /// The listen address could not be bound.
    #[error("listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The E2B listener's TLS cannot be set up (its certificate, key or
    /// local CA).
    #[error("E2B listener TLS: {}: {reason}; give a PEM certificate chain and its key (--e2b-cert, --e2b-key), or neither for the local CA", path.display())]
    Tls {
        /// The file or directory at fault.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A step of the server itself failed (a task, the HTTP loop, stdio).
    #[error("{action}: {message}")]
    Internal {
        /// What was being done.
        action: &'static str,
        /// What went wrong.
        message: String,
    },
}

/// An error of the orchestrator, by the operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OrchestratorError {
    /// A request refused by the library's checks.
    #[error(transparent)]
    Input(airlock::InputError),
    /// A run failed.
    #[error(transparent)]
    Run(airlock::RunError),
    /// A session, or one of its calls, failed.
    #[error(transparent)]
    Session(airlock::SessionError),
    /// The scheduler could not start.
    #[error(transparent)]
    Start(airlock::Error),
}

macro_rules! from_orchestrator {
    ($($error:ty => $variant:ident),* $(,)?) => {$(
        impl From<$error> for ServerError {
            fn from(e: $error) -> Self {
                Self::Orchestrator(Box::new(OrchestratorError::$variant(e)))
            }
        }
    )*};
}

from_orchestrator! {
    airlock::InputError => Input,
    airlock::RunError => Run,
    airlock::SessionError => Session,
    airlock::Error => Start,
}

/// Result with the crate's error.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;

impl ServerError {
    /// A [`ServerError::BadRequest`].
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
        }
    }

    /// A [`ServerError::Internal`].
    pub fn internal(action: &'static str, message: impl std::fmt::Display) -> Self {
        Self::Internal {
            action,
            message: message.to_string(),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } | Self::EgressNotAllowed { .. } => StatusCode::FORBIDDEN,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::SessionNotFound { .. }
            | Self::RouteNotFound { .. }
            | Self::SecretNotFound { .. } => StatusCode::NOT_FOUND,
            Self::SecretsDisabled => StatusCode::NOT_IMPLEMENTED,
            Self::TooLarge { .. } | Self::FileTooLarge { .. } | Self::UploadsTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::Quota { .. } | Self::QueueTimeout { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::ExposeDisabled => StatusCode::FORBIDDEN,
            Self::ExposeRefused { .. } => StatusCode::BAD_REQUEST,
            Self::MountRefused { .. } => StatusCode::FORBIDDEN,
            Self::Draining | Self::NodeFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Orchestrator(e) => orchestrator_status(e),
            Self::Config { .. }
            | Self::Keys { .. }
            | Self::Secrets { .. }
            | Self::Bind { .. }
            | Self::Tls { .. }
            | Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable, machine-readable name of the error (the `kind` of the
    /// error JSON, and a label of the `airlock_errors_total` metric).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "invalid_input",
            Self::Unauthorized { .. } => "unauthorized",
            Self::Forbidden { .. } => "forbidden",
            Self::EgressNotAllowed { .. } => "egress_not_allowed",
            Self::UnsupportedMediaType { .. } => "unsupported_media_type",
            Self::SessionNotFound { .. } => "session_not_found",
            Self::RouteNotFound { .. } => "not_found",
            Self::TooLarge { .. } => "body_too_large",
            Self::FileTooLarge { .. } => "file_too_large",
            Self::Quota { .. } => "quota_exceeded",
            Self::QueueTimeout { .. } => "queue_timeout",
            Self::ExposeDisabled => "expose_disabled",
            Self::ExposeRefused { .. } => "expose_refused",
            Self::MountRefused { .. } => "mount_refused",
            Self::UploadsTooLarge { .. } => "uploads_too_large",
            Self::Draining => "draining",
            Self::NodeFull { .. } => "node_full",
            Self::Orchestrator(e) => orchestrator_kind(e),
            Self::Config { .. } => "config",
            Self::Keys { .. } => "keys",
            Self::Secrets { .. } => "secrets",
            Self::SecretNotFound { .. } => "secret_not_found",
            Self::SecretsDisabled => "secrets_disabled",
            Self::Bind { .. } => "bind",
            Self::Tls { .. } => "tls",
            Self::Internal { .. } => "internal",
        }
    }

    /// A one-line hint for the operator or the client.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Unauthorized { .. } => {
                Some("send `Authorization: Bearer KEY` with a key from `airlock serve keys add`")
            }
            Self::Quota { .. } => Some("wait for running work to end, or ask for a larger quota"),
            Self::QueueTimeout { .. } => {
                Some("retry after the seconds of the `Retry-After` header: the host is busy")
            }
            Self::ExposeDisabled => Some(
                "leave `network.expose` out, or ask the operator to set `[expose] enabled = true` (docs/security.md)",
            ),
            Self::ExposeRefused { .. } => Some(
                "expose GUEST ports only (the server picks a free host port and reports it), at most `[expose] max_per_vm` of them",
            ),
            Self::MountRefused { .. } => Some(
                "mount only folders below a root the operator lists for your tenant in `[mounts.roots]` (docs/persistence.md)",
            ),
            Self::UploadsTooLarge { .. } => Some(
                "send fewer or smaller files with the run, or write them into a session with PUT /v1/sessions/{id}/files/{path}",
            ),
            Self::EgressNotAllowed { .. } => Some(
                "allowlist only domains the server allows, or ask its operator to add one to `[egress] allowed_patterns`",
            ),
            Self::Forbidden { .. } => Some(
                "a server without keys answers only local clients: use http://127.0.0.1 or http://localhost, not from a web page",
            ),
            Self::UnsupportedMediaType { .. } => {
                Some("send the body with `Content-Type: application/json`")
            }
            Self::Config { .. } => Some("check the file with `airlock serve --check-config`"),
            Self::Keys { .. } => Some("create keys with `airlock serve keys add --tenant NAME`"),
            Self::SecretsDisabled => Some(
                "the operator starts the server with `secrets_key_file` in its configuration or $AIRLOCK_SECRETS_KEY (docs/secrets.md)",
            ),
            Self::SecretNotFound { .. } => Some(
                "list the tenant's secrets: `GET /v1/secrets` or `airlock serve secrets list --tenant T`",
            ),
            Self::Orchestrator(e) => e.hint(),
            _ => None,
        }
    }

    /// The error as the JSON body clients get:
    /// `{"error": {"kind", "message", "request_id"?}}`, its message
    /// [`ServerError::public`]'s (so this logs the whole error when the
    /// message leaves something out).
    pub fn body(&self) -> serde_json::Value {
        let public = self.public();
        let mut error = serde_json::json!({"kind": public.kind, "message": public.message});
        if let Some(id) = public.request_id {
            error["request_id"] = serde_json::Value::String(id);
        }
        serde_json::json!({ "error": error })
    }

    /// Whether the message is about the tenant's own request only (its
    /// input, its key, its quota), so it is shown whole.
    fn is_about_the_request(&self) -> bool {
        match self {
            Self::Orchestrator(e) => matches!(Cause::of(e), Cause::Input),
            Self::Config { .. }
            | Self::Keys { .. }
            | Self::Secrets { .. }
            | Self::Bind { .. }
            | Self::Internal { .. } => false,
            _ => true,
        }
    }

    /// What a tenant is told (REST, SSE and MCP alike), and the log line
    /// that keeps the rest ([`PublicError::log`]): an error about the
    /// request is told whole; any other (the server's, the VM's) only by
    /// its first line (what follows are the tails of QEMU's stderr and
    /// the guest console) with host paths (run dirs, caches, images)
    /// replaced by `<host path>`. When the message leaves something out,
    /// or the server failed, it carries a request id the log line also
    /// carries, so an operator finds the whole error.
    pub fn public(&self) -> PublicError {
        let public = self.public_with(new_request_id);
        public.log();
        public
    }

    /// [`ServerError::public`] with ids from `request_id`, not logged.
    fn public_with(&self, request_id: impl FnOnce() -> String) -> PublicError {
        let whole = self.to_string();
        let told = if self.is_about_the_request() {
            whole.clone()
        } else {
            redact_host_paths(whole.lines().next().unwrap_or_default())
        };
        let needs_id = told != whole || self.status().is_server_error();
        let request_id = needs_id.then(request_id);
        let message = match &request_id {
            Some(id) => format!("{told} (request id {id}: the server's log has the details)"),
            None => told,
        };
        PublicError {
            kind: self.kind(),
            status: self.status().as_u16(),
            message,
            logged: request_id.is_some().then_some(whole),
            request_id,
        }
    }
}

/// What a tenant is told of a [`ServerError`] ([`ServerError::public`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicError {
    /// The error's kind.
    pub kind: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// The message: no host path, no log tail.
    pub message: String,
    /// The id that ties the message to the server's log line, when the
    /// message leaves something out or the server failed.
    pub request_id: Option<String>,
    /// The whole error, for the log line (with `request_id`).
    logged: Option<String>,
}

impl PublicError {
    /// Logs the whole error with its request id, when there is one.
    fn log(&self) {
        if let (Some(id), Some(whole)) = (&self.request_id, &self.logged) {
            tracing::warn!(request_id = %id, kind = self.kind, status = self.status, error = %whole, "request failed");
        }
    }
}

/// A new request id: 12 random hex digits.
fn new_request_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// `text` with every absolute path of two components or more (a host
/// path: `/run/airlock/vms/x`, `/home/u/.cache/airlock/images`) replaced
/// by `<host path>`.
pub fn redact_host_paths(text: &str) -> String {
    let is_path_char =
        |c: char| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | '@' | '~');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut after_word = false;
    while let Some(c) = rest.chars().next() {
        if c == '/' && !after_word {
            let end = rest.find(|c: char| !is_path_char(c)).unwrap_or(rest.len());
            let candidate = &rest[..end];
            if candidate[1..].contains('/') && candidate.len() > 2 {
                out.push_str("<host path>");
                rest = &rest[end..];
                after_word = false;
                continue;
            }
        }
        after_word = c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// What an orchestrator error comes down to, whatever the operation.
enum Cause<'a> {
    Input,
    Install,
    InstallRefused,
    UploadTimeout,
    Boot(&'a airlock::BootError),
    Exec(&'a airlock::ExecError),
    Busy,
    InstallBusy,
    Closed,
    Pause(&'a airlock::PauseError),
    Other,
}

impl<'a> Cause<'a> {
    fn of(e: &'a OrchestratorError) -> Self {
        use airlock::{PackageError, RunError as R, SessionError as S};
        let packages = |p: &'a PackageError| match p {
            PackageError::Input(airlock::InputError::Unreadable { .. }) => Cause::Other,
            PackageError::Input(_) => Cause::Input,
            PackageError::Install { .. } => Cause::Install,
            PackageError::InstallRefused { .. } => Cause::InstallRefused,
            PackageError::Boot(b) => Cause::Boot(b),
            PackageError::Exec(x) => Cause::Exec(x),
            PackageError::Busy { .. } => Cause::InstallBusy,
            _ => Cause::Other,
        };
        match e {
            // A CA bundle the server is configured with but cannot read is
            // the server's fault, not the request's.
            OrchestratorError::Input(airlock::InputError::Unreadable { .. })
            | OrchestratorError::Run(R::Input(airlock::InputError::Unreadable { .. }))
            | OrchestratorError::Session(S::Input(airlock::InputError::Unreadable { .. })) => {
                Cause::Other
            }
            OrchestratorError::Input(_)
            | OrchestratorError::Run(R::Input(_))
            | OrchestratorError::Session(S::Input(_)) => Cause::Input,
            OrchestratorError::Run(R::Packages(p)) | OrchestratorError::Session(S::Packages(p)) => {
                packages(p)
            }
            OrchestratorError::Run(R::Boot(b))
            | OrchestratorError::Session(S::Boot(b))
            | OrchestratorError::Start(airlock::Error::Boot(b)) => Cause::Boot(b),
            OrchestratorError::Run(R::Exec(airlock::ExecError::UploadTimeout { .. })) => {
                Cause::UploadTimeout
            }
            OrchestratorError::Run(R::Exec(x)) | OrchestratorError::Session(S::Exec(x)) => {
                Cause::Exec(x)
            }
            OrchestratorError::Session(S::Busy { .. }) => Cause::Busy,
            OrchestratorError::Session(S::Closed { .. }) => Cause::Closed,
            OrchestratorError::Session(S::Pause(p)) => Cause::Pause(p),
            _ => Cause::Other,
        }
    }
}

/// The file error's protocol kind, when `e` is a refused file.
fn file_kind(e: &airlock::ExecError) -> Option<airlock_protocol::ErrorKind> {
    match e {
        airlock::ExecError::File { source, .. } => Some(source.kind()),
        _ => None,
    }
}

fn orchestrator_status(e: &OrchestratorError) -> StatusCode {
    use airlock_protocol::ErrorKind as K;
    match Cause::of(e) {
        Cause::Input | Cause::Install => StatusCode::BAD_REQUEST,
        Cause::InstallRefused => StatusCode::TOO_MANY_REQUESTS,
        Cause::UploadTimeout => StatusCode::REQUEST_TIMEOUT,
        Cause::Busy => StatusCode::CONFLICT,
        Cause::InstallBusy => StatusCode::SERVICE_UNAVAILABLE,
        Cause::Closed => StatusCode::NOT_FOUND,
        Cause::Pause(p) => pause_status(p),
        Cause::Exec(x) => match file_kind(x) {
            Some(K::NotFound) => StatusCode::NOT_FOUND,
            Some(K::InvalidPath | K::LimitExceeded) => StatusCode::BAD_REQUEST,
            Some(_) => StatusCode::INTERNAL_SERVER_ERROR,
            None if x.is_vm_lost() => StatusCode::SERVICE_UNAVAILABLE,
            None => StatusCode::INTERNAL_SERVER_ERROR,
        },
        Cause::Boot(airlock::BootError::QueueTimeout { .. } | airlock::BootError::ShutDown) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Cause::Boot(b) if b.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
        Cause::Boot(_) | Cause::Other => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn orchestrator_kind(e: &OrchestratorError) -> &'static str {
    use airlock_protocol::ErrorKind as K;
    match Cause::of(e) {
        Cause::Input => "invalid_input",
        Cause::Install => "package_install_failed",
        Cause::InstallRefused => "quota_exceeded",
        Cause::UploadTimeout => "upload_timeout",
        Cause::Busy => "session_busy",
        Cause::InstallBusy => "install_busy",
        Cause::Closed => "session_not_found",
        Cause::Pause(p) => pause_kind(p),
        Cause::Exec(x) => match file_kind(x) {
            Some(K::NotFound) => "file_not_found",
            Some(K::InvalidPath | K::LimitExceeded) => "invalid_input",
            Some(_) => "internal",
            None if x.is_vm_lost() => "vm_failed",
            None => "internal",
        },
        Cause::Boot(airlock::BootError::QueueTimeout { .. }) => "overloaded",
        Cause::Boot(airlock::BootError::ShutDown) => "draining",
        Cause::Boot(b) if b.is_transient() => "vm_failed",
        Cause::Boot(airlock::BootError::ImagesMissing { .. }) => "images_missing",
        Cause::Boot(_) | Cause::Other => "internal",
    }
}

/// The status of a refused or failed pause, resume or fork.
fn pause_status(e: &airlock::PauseError) -> StatusCode {
    use airlock::PauseError as P;
    match e {
        P::NotFound { .. } => StatusCode::NOT_FOUND,
        P::NotPausable { .. } | P::Incompatible { .. } => StatusCode::CONFLICT,
        P::QuotaExceeded { .. } | P::NoSlots { .. } => StatusCode::TOO_MANY_REQUESTS,
        P::InvalidCount { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The kind of a refused or failed pause, resume or fork.
fn pause_kind(e: &airlock::PauseError) -> &'static str {
    use airlock::PauseError as P;
    match e {
        P::NotFound { .. } => "session_not_found",
        P::NotPausable { .. } => "not_pausable",
        P::Incompatible { .. } => "paused_incompatible",
        P::QuotaExceeded { .. } => "quota_exceeded",
        P::NoSlots { .. } => "overloaded",
        P::InvalidCount { .. } => "invalid_input",
        _ => "internal",
    }
}

impl OrchestratorError {
    /// A one-line hint for the operator or the client.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Input(e) => e.hint(),
            Self::Run(e) => e.hint(),
            Self::Session(e) => e.hint(),
            Self::Start(e) => e.hint(),
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = self.status();
        // `body` logs the whole error when it tells less, or failed.
        let mut response = (status, axum::Json(self.body())).into_response();
        let retry_after_s = match &self {
            Self::QueueTimeout { retry_after_s, .. } => Some(*retry_after_s),
            Self::NodeFull { .. } => Some(1),
            _ => None,
        };
        if let Some(seconds) = retry_after_s {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        // Carried to the metrics and the request log.
        response.extensions_mut().insert(ErrorKind(self.kind()));
        response
    }
}

/// The kind of the error a response carries (a response extension read by
/// the request log and the metrics).
#[derive(Debug, Clone, Copy)]
pub struct ErrorKind(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_died(console_tail: &str) -> ServerError {
        airlock::SessionError::from(airlock::BootError::VmDied {
            vm_id: "vm-1".into(),
            when: "during boot",
            status: None,
            stderr_tail: "qemu: /run/airlock/vms/vm-1/disk.qcow2: locked".into(),
            console_tail: console_tail.into(),
        })
        .into()
    }

    #[test]
    fn a_boot_error_tells_its_first_line_and_a_request_id_the_log_line_carries() {
        let e = vm_died("[    0.1] secret kernel line\nroot=/dev/vda");

        let public = e.public_with(|| "abc123".to_owned());

        assert!(e.to_string().contains("secret kernel line"));
        assert!(
            !public.message.contains("secret kernel line"),
            "{}",
            public.message
        );
        assert!(
            !public.message.contains("/run/airlock"),
            "{}",
            public.message
        );
        assert!(
            !public.message.contains("qemu stderr"),
            "{}",
            public.message
        );
        assert!(
            public.message.contains("vm vm-1: QEMU exited"),
            "{}",
            public.message
        );
        assert!(
            public.message.contains("request id abc123"),
            "{}",
            public.message
        );
        assert_eq!(public.request_id.as_deref(), Some("abc123"));
        let logged = public.logged.as_deref().unwrap();
        assert!(logged.contains("secret kernel line") && logged.contains("/run/airlock/vms"));
        let body = e.body();
        let id = body["error"]["request_id"].as_str().unwrap();
        assert!(
            body["error"]["message"].as_str().unwrap().contains(id),
            "{body}"
        );
    }

    #[test]
    fn host_paths_in_server_errors_are_redacted_but_the_tenants_input_is_told_whole() {
        let io = airlock_sys_util::IoError::new(
            "create",
            "/home/op/.cache/airlock/templates/x.mem",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        let e: ServerError = airlock::SessionError::from(airlock::BootError::from(io)).into();
        let public = e.public_with(|| "id".to_owned());
        assert!(!public.message.contains(".cache"), "{}", public.message);
        assert!(public.message.contains("<host path>"), "{}", public.message);
        assert!(public.logged.unwrap().contains("/home/op/.cache/airlock"));

        let input: ServerError = airlock::InputError::Invalid {
            field: "path",
            message: "guest path \"/etc/passwd\": it is absolute".into(),
        }
        .into();
        let public = input.public_with(|| unreachable!("told whole: no id"));
        assert!(public.message.contains("/etc/passwd"), "{}", public.message);
        assert_eq!(public.request_id, None);
    }

    #[test]
    fn redaction_keeps_routes_words_and_lone_slashes() {
        assert_eq!(
            redact_host_paths("open /run/airlock/vms/a: denied, and/or 1/2 at /"),
            "open <host path>: denied, and/or 1/2 at /"
        );
        assert_eq!(redact_host_paths("no path"), "no path");
        assert_eq!(redact_host_paths("(/var/tmp/x)"), "(<host path>)");
    }

    #[test]
    fn each_client_error_has_the_status_the_api_documents() {
        let cases = [
            (ServerError::bad_request("x"), 400),
            (
                ServerError::Unauthorized {
                    message: "no key".into(),
                },
                401,
            ),
            (
                ServerError::SessionNotFound {
                    session_id: "s".into(),
                },
                404,
            ),
            (ServerError::TooLarge { limit_bytes: 1 }, 413),
            (
                ServerError::Quota {
                    tenant: "t".into(),
                    quota: "concurrent_runs",
                    message: "1 of 1".into(),
                },
                429,
            ),
            (ServerError::Draining, 503),
            (
                ServerError::NodeFull {
                    node: "n1".into(),
                    slots: 4,
                },
                503,
            ),
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
        }
    }

    #[test]
    fn invalid_orchestrator_input_is_a_400_and_no_capacity_a_503() {
        let invalid = ServerError::from(airlock::RunError::from(airlock::InputError::Invalid {
            field: "code",
            message: "empty".into(),
        }));
        assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
        assert_eq!(invalid.kind(), "invalid_input");
        let full = ServerError::from(airlock::RunError::from(airlock::BootError::QueueTimeout {
            waited: std::time::Duration::from_secs(1),
            slots: 4,
        }));
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(full.kind(), "overloaded");
    }

    #[test]
    fn each_operations_error_keeps_the_status_and_kind_of_its_cause() {
        use airlock::{BootError, ExecError, PackageError, RunError, SessionError};
        let died = || ExecError::VmDied {
            vm_id: "vm".into(),
            status: None,
            stderr_tail: String::new(),
            console_tail: String::new(),
        };
        let cases: [(ServerError, u16, &str); 7] = [
            (
                RunError::from(PackageError::Install {
                    vm_id: None,
                    packages: "six==1".into(),
                    reason: "no such version".into(),
                })
                .into(),
                400,
                "package_install_failed",
            ),
            (RunError::from(died()).into(), 503, "vm_failed"),
            (
                SessionError::Busy {
                    session_id: "s".into(),
                }
                .into(),
                409,
                "session_busy",
            ),
            (
                SessionError::Closed {
                    session_id: "s".into(),
                    reason: airlock::CloseReason::IdleTimeout,
                }
                .into(),
                404,
                "session_not_found",
            ),
            (
                SessionError::from(BootError::ShutDown).into(),
                503,
                "draining",
            ),
            (
                airlock::Error::from(BootError::ImagesMissing {
                    dir: "/i".into(),
                    what: "kernel".into(),
                })
                .into(),
                500,
                "images_missing",
            ),
            (
                RunError::from(airlock::InputError::Unreadable {
                    field: "ca_bundle",
                    source: airlock_sys_util::IoError::new(
                        "read the CA bundle",
                        "/ca.pem",
                        std::io::Error::other("denied"),
                    ),
                })
                .into(),
                500,
                "internal",
            ),
        ];
        for (error, status, kind) in cases {
            assert_eq!(
                (error.status().as_u16(), error.kind()),
                (status, kind),
                "{error}"
            );
        }
    }

    #[test]
    fn the_error_body_has_kind_and_message() {
        let body = ServerError::Draining.body();
        assert_eq!(body["error"]["kind"], "draining");
        assert!(body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("shutting down")));
    }
}
