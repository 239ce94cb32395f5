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
    /// The body is larger than the server accepts.
    #[error("the request body is over the limit of {limit_bytes} bytes")]
    TooLarge {
        /// The limit.
        limit_bytes: usize,
    },
    /// A tenant's quota would be exceeded.
    #[error("tenant {tenant}: quota {quota} exceeded: {message}")]
    Quota {
        /// The tenant.
        tenant: String,
        /// The quota's name (`concurrent_runs`, `live_sessions`,
        /// `memory_mib`, `timeout_s`, `requests_per_minute`).
        quota: &'static str,
        /// The limit and what was asked.
        message: String,
    },
    /// The server is draining (SIGTERM) and takes no new work.
    #[error("the server is shutting down and takes no new work")]
    Draining,
    /// The orchestrator refused or failed (boxed: the orchestrator's error
    /// is large, and this enum travels in every `Result`).
    #[error(transparent)]
    Orchestrator(Box<airlock::Error>),
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
    /// The listen address could not be bound.
    #[error("listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
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

impl From<airlock::Error> for ServerError {
    fn from(e: airlock::Error) -> Self {
        Self::Orchestrator(Box::new(e))
    }
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
            Self::SessionNotFound { .. } | Self::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Quota { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Draining => StatusCode::SERVICE_UNAVAILABLE,
            Self::Orchestrator(e) => orchestrator_status(e),
            Self::Config { .. } | Self::Keys { .. } | Self::Bind { .. } | Self::Internal { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// A stable, machine-readable name of the error (the `kind` of the
    /// error JSON, and a label of the `airlock_errors_total` metric).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "invalid_input",
            Self::Unauthorized { .. } => "unauthorized",
            Self::SessionNotFound { .. } => "session_not_found",
            Self::RouteNotFound { .. } => "not_found",
            Self::TooLarge { .. } => "body_too_large",
            Self::Quota { .. } => "quota_exceeded",
            Self::Draining => "draining",
            Self::Orchestrator(e) => orchestrator_kind(e),
            Self::Config { .. } => "config",
            Self::Keys { .. } => "keys",
            Self::Bind { .. } => "bind",
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
            Self::Config { .. } => Some("check the file with `airlock serve --check-config`"),
            Self::Keys { .. } => Some("create keys with `airlock serve keys add --tenant NAME`"),
            Self::Orchestrator(e) => e.hint(),
            _ => None,
        }
    }

    /// The error as the JSON body clients get:
    /// `{"error": {"kind", "message"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"kind": self.kind(), "message": self.to_string()}})
    }
}

fn orchestrator_status(e: &airlock::Error) -> StatusCode {
    use airlock::Error as E;
    match e {
        E::InvalidInput { .. } | E::PackageSpec { .. } | E::PackageInstall { .. } => {
            StatusCode::BAD_REQUEST
        }
        E::SessionBusy { .. } => StatusCode::CONFLICT,
        E::SessionClosed { .. } => StatusCode::NOT_FOUND,
        E::File { source, .. } => match source.kind() {
            airlock_protocol::ErrorKind::NotFound => StatusCode::NOT_FOUND,
            airlock_protocol::ErrorKind::InvalidPath
            | airlock_protocol::ErrorKind::LimitExceeded => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        },
        E::QueueTimeout { .. } | E::ShutDown => StatusCode::SERVICE_UNAVAILABLE,
        e if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn orchestrator_kind(e: &airlock::Error) -> &'static str {
    use airlock::Error as E;
    match e {
        E::InvalidInput { .. } | E::PackageSpec { .. } => "invalid_input",
        E::PackageInstall { .. } => "package_install_failed",
        E::SessionBusy { .. } => "session_busy",
        E::SessionClosed { .. } => "session_not_found",
        E::File { source, .. } => match source.kind() {
            airlock_protocol::ErrorKind::NotFound => "file_not_found",
            airlock_protocol::ErrorKind::InvalidPath
            | airlock_protocol::ErrorKind::LimitExceeded => "invalid_input",
            _ => "internal",
        },
        E::QueueTimeout { .. } => "overloaded",
        E::ShutDown => "draining",
        e if e.is_transient() => "vm_failed",
        E::ImagesMissing { .. } => "images_missing",
        _ => "internal",
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(kind = self.kind(), error = %self, "request failed");
        }
        let mut response = (status, axum::Json(self.body())).into_response();
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
        ];
        for (error, status) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
        }
    }

    #[test]
    fn invalid_orchestrator_input_is_a_400_and_no_capacity_a_503() {
        let invalid = ServerError::from(airlock::Error::InvalidInput {
            field: "code",
            message: "empty".into(),
        });
        assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
        assert_eq!(invalid.kind(), "invalid_input");
        let full = ServerError::from(airlock::Error::QueueTimeout {
            waited: std::time::Duration::from_secs(1),
            slots: 4,
        });
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(full.kind(), "overloaded");
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
