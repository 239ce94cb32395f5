//! The Connect protocol as E2B's SDKs speak it to envd: JSON only. A
//! unary call is a JSON body answered by a JSON body (or a non-2xx status
//! and `{"code": "<name>", "message"}`); a server stream takes one
//! enveloped message (a flags byte, a 4-byte big-endian length, the JSON)
//! and answers `200` with enveloped messages, the last one flagged
//! end-of-stream (`0x02`) carrying `{}` or `{"error": ..}`.

use axum::body::Bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The flag of the end-of-stream envelope.
const END_STREAM: u8 = 0x02;
/// The content type of a Connect stream in JSON.
pub(crate) const STREAM_CONTENT_TYPE: &str = "application/connect+json";

/// Connect's name of the error an HTTP status stands for.
pub(crate) fn code_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 | 415 => "invalid_argument",
        401 => "unauthenticated",
        403 => "permission_denied",
        404 => "not_found",
        409 => "aborted",
        429 => "resource_exhausted",
        499 => "canceled",
        501 => "unimplemented",
        503 => "unavailable",
        504 => "deadline_exceeded",
        _ => "internal",
    }
}

/// The HTTP status Connect gives a code (unary calls).
pub(crate) fn status_of(code: &str) -> StatusCode {
    match code {
        "invalid_argument" | "failed_precondition" | "out_of_range" => StatusCode::BAD_REQUEST,
        "unauthenticated" => StatusCode::UNAUTHORIZED,
        "permission_denied" => StatusCode::FORBIDDEN,
        "not_found" => StatusCode::NOT_FOUND,
        "already_exists" | "aborted" => StatusCode::CONFLICT,
        "resource_exhausted" => StatusCode::TOO_MANY_REQUESTS,
        "unimplemented" => StatusCode::NOT_IMPLEMENTED,
        "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        "deadline_exceeded" => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A unary call's error: the status of `status`' Connect code, and
/// `{"code", "message"}`.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response {
    coded_error(code_of(status), message)
}

/// A unary call's error with Connect code `code` (`already_exists`, ...).
pub(crate) fn coded_error(code: &str, message: &str) -> Response {
    (
        status_of(code),
        axum::Json(serde_json::json!({"code": code, "message": message})),
    )
        .into_response()
}

/// A unary call's answer: `200` and `value` as JSON.
pub(crate) fn ok(value: serde_json::Value) -> Response {
    let mut response = axum::Json(value).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// One enveloped message of a stream.
pub(crate) fn frame(value: &serde_json::Value) -> Bytes {
    envelope(0, value.to_string().as_bytes())
}

/// The end-of-stream envelope: `{}`, or `{"error": {code, message}}`.
pub(crate) fn end_frame(error: Option<(&str, &str)>) -> Bytes {
    let body = match error {
        None => serde_json::json!({}),
        Some((code, message)) => {
            serde_json::json!({"error": {"code": code, "message": message}})
        }
    };
    envelope(END_STREAM, body.to_string().as_bytes())
}

fn envelope(flags: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(flags);
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// The one message of a streaming request: the JSON of its first
/// envelope (a body without an envelope is read as bare JSON, as a
/// lenient server does).
///
/// # Errors
/// A message for Connect's `invalid_argument`.
pub(crate) fn request_message(body: &[u8]) -> Result<serde_json::Value, String> {
    let payload = match body {
        [flags, a, b, c, d, rest @ ..] if *flags & !0x01 == 0 && !body.starts_with(b"{") => {
            if *flags & 0x01 != 0 {
                return Err("compressed Connect messages are not supported: send identity".into());
            }
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            rest.get(..len).ok_or_else(|| {
                format!(
                    "a Connect envelope of {len} bytes holds {} bytes",
                    rest.len()
                )
            })?
        }
        _ => body,
    };
    serde_json::from_slice(payload).map_err(|e| format!("the request is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_flags_a_big_endian_length_and_the_json() {
        let bytes = frame(&serde_json::json!({"a": 1}));
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 7]);
        assert_eq!(&bytes[5..], br#"{"a":1}"#);
        let end = end_frame(Some(("not_found", "gone")));
        assert_eq!(end[0], END_STREAM);
        let json: serde_json::Value = serde_json::from_slice(&end[5..]).unwrap();
        assert_eq!(json["error"]["code"], "not_found");
    }

    #[test]
    fn a_streaming_request_is_read_from_its_envelope_or_as_bare_json() {
        let framed = frame(&serde_json::json!({"process": {"cmd": "/bin/bash"}}));
        assert_eq!(
            request_message(&framed).unwrap()["process"]["cmd"],
            "/bin/bash"
        );
        assert_eq!(request_message(br#"{"x":2}"#).unwrap()["x"], 2);
        assert!(request_message(&[0, 0, 0, 0, 9, b'{']).is_err());
        assert!(request_message(&[1, 0, 0, 0, 2, b'{', b'}']).is_err());
    }

    #[test]
    fn statuses_map_to_the_codes_the_sdks_branch_on() {
        assert_eq!(code_of(StatusCode::NOT_FOUND), "not_found");
        assert_eq!(code_of(StatusCode::UNAUTHORIZED), "unauthenticated");
        assert_eq!(status_of("already_exists"), StatusCode::CONFLICT);
        assert_eq!(status_of("deadline_exceeded"), StatusCode::GATEWAY_TIMEOUT);
    }
}
