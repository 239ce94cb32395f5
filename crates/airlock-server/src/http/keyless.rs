//! The checks of a keyless server (no keys file, loopback only), on every
//! route: what stops a web page in the user's browser from driving it.
//!
//! - `Host` must name the loopback (`localhost`, `127.0.0.1`, `[::1]`,
//!   with or without a port): a page on a DNS-rebound name sends its own
//!   name (403 `forbidden`).
//! - An `Origin`, when sent, must be a loopback one: a cross-site request
//!   from a page carries the page's (403 `forbidden`).
//! - A body must be `application/json` (file uploads:
//!   `application/octet-stream` too): the types a page may send without a
//!   CORS preflight (forms, `text/plain`) are refused (415
//!   `unsupported_media_type`), and this server answers no preflight.
//!
//! A server with keys needs none of this: a page has no key.

use crate::error::ServerError;
use axum::body::HttpBody;
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;

/// The route whose body is a file's bytes.
const FILE_ROUTE: &str = "/v1/sessions/{id}/files/{*path}";

/// The middleware: refuses a request that fails [`check`].
pub async fn guard(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let raw_body = route.as_deref() == Some(FILE_ROUTE) && request.method() == Method::PUT;
    let body = has_body(request.headers()) || request.body().size_hint().lower() > 0;
    match check(request.headers(), body, raw_body) {
        Ok(()) => next.run(request).await,
        Err(e) => super::refuse(request, e).await,
    }
}

/// Checks a keyless request's `Host`, `Origin` and, when it has a body,
/// its type (see the module's doc); `raw_body`: the route takes a file's
/// bytes.
///
/// # Errors
/// [`ServerError::Forbidden`] or [`ServerError::UnsupportedMediaType`],
/// naming what was refused.
pub fn check(headers: &HeaderMap, body: bool, raw_body: bool) -> Result<(), ServerError> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !is_loopback_authority(host) {
        return Err(ServerError::Forbidden {
            message: format!(
                "Host {host:?} is not a loopback name: a server without keys answers only localhost, 127.0.0.1 or [::1]"
            ),
        });
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        if !authority.is_some_and(is_loopback_authority) {
            return Err(ServerError::Forbidden {
                message: format!(
                    "Origin {origin:?} is not a loopback origin: a server without keys takes no cross-site requests"
                ),
            });
        }
    }
    if body {
        let given = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = given
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let accepted =
            essence == "application/json" || (raw_body && essence == "application/octet-stream");
        if !accepted {
            let wanted = if raw_body {
                "application/json or application/octet-stream"
            } else {
                "application/json"
            };
            return Err(ServerError::UnsupportedMediaType {
                message: format!(
                    "a body of type {given:?}: a server without keys takes {wanted} bodies only"
                ),
            });
        }
    }
    Ok(())
}

/// Whether the request says it has a body (a non-zero length, or chunks).
fn has_body(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() != "0")
}

/// Whether `host` is a name under `localhost` (`api.localhost`,
/// `49999-<id>.localhost`: the E2B listener's host names with
/// `--e2b-domain localhost`). RFC 6761 keeps such names on the loopback:
/// no DNS server may answer them, so no page can rebind one.
fn is_under_localhost(host: &str) -> bool {
    let lower = host.to_ascii_lowercase();
    lower.strip_suffix(".localhost").is_some_and(|labels| {
        labels.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
    })
}

/// Whether `authority` (`host[:port]`) names the loopback: `localhost` (or
/// a name under it),
/// an IPv4 loopback literal (`127.0.0.1`, or the `127.0.0.2` a server may
/// listen on: a literal is never a rebound name) or `[::1]`, with a
/// numeric port or none.
pub fn is_loopback_authority(authority: &str) -> bool {
    let (host, after_host) = match authority.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some(parts) => parts,
            None => return false,
        },
        None => match authority.find(':') {
            Some(at) => authority.split_at(at),
            None => (authority, ""),
        },
    };
    let port_ok = after_host.is_empty()
        || after_host.strip_prefix(':').is_some_and(|p| {
            !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
        });
    let host_ok = host.eq_ignore_ascii_case("localhost")
        || is_under_localhost(host)
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
        || (host == "::1" && authority.starts_with('['));
    port_ok && host_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn loopback_names_with_or_without_a_port_are_the_only_hosts_taken() {
        for ok in [
            "localhost",
            "LOCALHOST:7000",
            "127.0.0.1",
            "127.0.0.1:7000",
            "[::1]",
            "[::1]:7000",
            "127.0.0.2",
            "127.3.4.5:7000",
            "api.localhost:3000",
            "49999-s-n1-0a1b.LocalHost",
        ] {
            assert!(is_loopback_authority(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:7000",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "127.1",
            "128.0.0.1",
            "localhost:",
            "localhost:70a",
            "[::1",
            "[::2]:7000",
            "::1",
            "0.0.0.0:7000",
            "localhost:7000@evil",
            ".localhost",
            "a..localhost",
            "evil.example.localhost.evil.example",
            "a_b.localhost",
        ] {
            assert!(!is_loopback_authority(bad), "{bad}");
        }
    }

    #[test]
    fn a_foreign_origin_is_refused_a_loopback_one_taken() {
        let host = (header::HOST, "127.0.0.1:7000");
        check(&headers(std::slice::from_ref(&host)), false, false).unwrap();
        check(
            &headers(&[host.clone(), (header::ORIGIN, "http://localhost:3000")]),
            false,
            false,
        )
        .unwrap();
        for origin in [
            "https://evil.example",
            "null",
            "http://127.0.0.1.evil.example",
            "file://",
        ] {
            let e = check(
                &headers(&[host.clone(), (header::ORIGIN, origin)]),
                false,
                false,
            )
            .unwrap_err();
            assert_eq!(e.kind(), "forbidden", "{origin}");
        }
    }

    #[test]
    fn a_body_must_be_json_and_a_file_may_be_octets() {
        let host = (header::HOST, "localhost");
        let len = (header::CONTENT_LENGTH, "2");
        for (content_type, raw, ok) in [
            ("application/json", false, true),
            ("application/json; charset=utf-8", false, true),
            ("text/plain", false, false),
            ("application/x-www-form-urlencoded", false, false),
            ("multipart/form-data; boundary=x", false, false),
            ("application/octet-stream", false, false),
            ("application/octet-stream", true, true),
            ("text/plain", true, false),
        ] {
            let h = headers(&[
                host.clone(),
                len.clone(),
                (header::CONTENT_TYPE, content_type),
            ]);
            assert_eq!(check(&h, true, raw).is_ok(), ok, "{content_type} raw={raw}");
        }
        let no_type = headers(&[host.clone(), len]);
        let e = check(&no_type, true, false).unwrap_err();
        assert_eq!(e.kind(), "unsupported_media_type");
        check(&no_type, false, false).unwrap();
        assert!(has_body(&headers(&[(
            header::TRANSFER_ENCODING,
            "chunked"
        )])));
        assert!(!has_body(&headers(&[(header::CONTENT_LENGTH, "0")])));
        assert!(has_body(&headers(&[(header::CONTENT_LENGTH, "12")])));
    }
}
