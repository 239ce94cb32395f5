//! [`ApiJson`]: a JSON body whose refusals are the API's error JSON
//! (413 over the size limit, 400 for malformed JSON, an unknown field,
//! checked against the body's schema by [`crate::json::parse`], or a
//! wrong value).

use crate::error::ServerError;
use crate::service::Airlock;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

/// A JSON request body, parsed; any `Content-Type` is accepted.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned + JsonSchema> FromRequest<Airlock> for ApiJson<T> {
    type Rejection = ServerError;

    async fn from_request(request: Request, airlock: &Airlock) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, airlock)
            .await
            .map_err(|rejection| body_error(rejection.status(), airlock, rejection))?;
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ServerError::bad_request(format!("malformed JSON body: {e}")))?;
        crate::json::parse(value).map(ApiJson)
    }
}

/// The error of a body that could not be read.
pub fn body_error(
    status: StatusCode,
    airlock: &Airlock,
    rejection: impl std::fmt::Display,
) -> ServerError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ServerError::TooLarge {
            limit_bytes: airlock.config().max_body_bytes,
        }
    } else {
        ServerError::bad_request(format!("cannot read the body: {rejection}"))
    }
}
