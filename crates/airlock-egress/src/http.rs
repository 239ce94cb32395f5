//! The `Host` of a plain HTTP/1.x request (pure).
//!
//! [`parse_request_host`] reads the first bytes a client sends on port 80:
//! the request line and the header fields up to the empty line (RFC 9112
//! sections 2-5), and returns the host named by the `Host` field, lowercased
//! and without its port.
//!
//! The proxy forwards the request bytes unchanged, so the server must read
//! the same host the proxy checked. The parser therefore refuses every
//! request a server could read differently:
//! - no `Host`, or more than one (RFC 9112 section 3.2: a server must answer
//!   400, but some pick the first and some the last);
//! - an absolute-form target (`GET http://other/ HTTP/1.1`) whose host
//!   differs from `Host` (the server must use the target's and ignore
//!   `Host`), or that carries user info;
//! - `CONNECT` (the server would become a tunnel to anywhere), HTTP/2 prior
//!   knowledge and any version other than HTTP/1.0 and 1.1;
//! - bare LF or CR line ends, whitespace between a field name and its colon,
//!   obsolete line folding, and control characters in fields (the classic
//!   request smuggling ambiguities);
//! - a `Host` that is an IP literal, or whose port is not a number up to
//!   65535.
//!
//! What it cannot see: later requests on a kept-alive connection may name
//! another host. They reach the same server (the address resolved for the
//! first, allowed name), which serves or refuses them like domain fronting
//! over TLS; see the module docs of [`egress`](super).

use std::fmt;

/// Default cap on the request head (request line + header fields).
pub const DEFAULT_MAX_REQUEST_HEAD_BYTES: usize = 16 * 1024;

/// Why the first bytes are not an acceptable HTTP request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpParseError {
    /// The bytes do not start like an HTTP request (e.g. a TLS ClientHello).
    NotHttp,
    /// The request head does not fit in the byte cap.
    TooLarge,
    /// The method is `CONNECT`.
    Connect,
    /// The version is neither `HTTP/1.0` nor `HTTP/1.1` (HTTP/2 prior knowledge included).
    UnsupportedVersion,
    /// No `Host` field.
    MissingHost,
    /// More than one `Host` field.
    DuplicateHost,
    /// The `Host` value is empty, an IP literal, or has a bad port.
    InvalidHost,
    /// The absolute-form target names another host than `Host`.
    HostMismatch,
    /// The request line or a field is malformed; the text says which.
    Malformed(&'static str),
}

impl fmt::Display for HttpParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpParseError::NotHttp => f.write_str("not an HTTP request"),
            HttpParseError::TooLarge => f.write_str("HTTP request head larger than the cap"),
            HttpParseError::Connect => f.write_str("CONNECT requests are not allowed"),
            HttpParseError::UnsupportedVersion => {
                f.write_str("HTTP version other than 1.0 and 1.1")
            }
            HttpParseError::MissingHost => f.write_str("no Host header"),
            HttpParseError::DuplicateHost => f.write_str("more than one Host header"),
            HttpParseError::InvalidHost => f.write_str("invalid Host header"),
            HttpParseError::HostMismatch => {
                f.write_str("request target names another host than Host")
            }
            HttpParseError::Malformed(what) => write!(f, "malformed HTTP request: {what}"),
        }
    }
}

/// Parses the request head at the start of `buf` and returns the host of
/// its `Host` field (lowercase, port removed, not yet checked as a DNS name).
///
/// Returns `Ok(None)` when the head is not complete yet and fewer than
/// `max_bytes` bytes are buffered: read more and call again with the whole
/// buffer. Never panics, whatever the input.
pub fn parse_request_host(buf: &[u8], max_bytes: usize) -> Result<Option<String>, HttpParseError> {
    let window = &buf[..buf.len().min(max_bytes)];
    let head_end = find_head_end(window);
    // Line ends are checked in the head only: a body may hold any byte.
    check_prefix(&window[..head_end.unwrap_or(window.len())])?;
    let Some(end) = head_end else {
        return if buf.len() >= max_bytes {
            Err(HttpParseError::TooLarge)
        } else {
            Ok(None)
        };
    };
    // Every line ends with CRLF (checked by `check_prefix`); drop the last
    // two empty lines' worth of CRLF and split.
    let head = &window[..end];
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    let request_line = lines.next().unwrap_or_default();
    let target_host = parse_request_line(request_line)?;

    let mut host = None;
    for line in lines.filter(|line| !line.is_empty()) {
        let (name, value) = parse_field(line)?;
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Err(HttpParseError::DuplicateHost);
            }
            host = Some(parse_host_value(value)?);
        }
    }
    let host = host.ok_or(HttpParseError::MissingHost)?;
    if let Some(target_host) = target_host {
        if trim_dot(&target_host) != trim_dot(&host) {
            return Err(HttpParseError::HostMismatch);
        }
    }
    Ok(Some(host))
}

/// Refuses early what can never become a request: a first byte that cannot
/// start a method, and any LF not preceded by CR (or CR not followed by LF).
fn check_prefix(buf: &[u8]) -> Result<(), HttpParseError> {
    if let Some(first) = buf.first() {
        if !is_tchar(*first) {
            return Err(HttpParseError::NotHttp);
        }
    }
    for (i, byte) in buf.iter().enumerate() {
        match byte {
            b'\n' if i == 0 || buf[i - 1] != b'\r' => {
                return Err(HttpParseError::Malformed("bare LF"))
            }
            b'\r' if buf.get(i + 1).is_some_and(|next| *next != b'\n') => {
                return Err(HttpParseError::Malformed("bare CR"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Index just past the first CRLF CRLF, if any.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// `tchar` of RFC 9110 section 5.6.2: the characters of tokens (method, field names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Checks `method SP target SP version`; returns the host of an
/// absolute-form target.
fn parse_request_line(line: &[u8]) -> Result<Option<String>, HttpParseError> {
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpParseError::Malformed("request line"));
    };
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) {
        return Err(HttpParseError::Malformed("method"));
    }
    if version != b"HTTP/1.1" && version != b"HTTP/1.0" {
        return Err(HttpParseError::UnsupportedVersion);
    }
    if method == b"CONNECT" {
        return Err(HttpParseError::Connect);
    }
    if target.is_empty() || !target.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(HttpParseError::Malformed("request target"));
    }
    if target.starts_with(b"/") || target == b"*" {
        return Ok(None);
    }
    absolute_form_host(target).map(Some)
}

/// The host of `scheme://authority[/path][?query]`, lowercase, port removed.
fn absolute_form_host(target: &[u8]) -> Result<String, HttpParseError> {
    let malformed = HttpParseError::Malformed("request target");
    let sep = target
        .windows(3)
        .position(|w| w == b"://")
        .ok_or(malformed)?;
    let scheme = &target[..sep];
    let scheme_ok = scheme.first().is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b));
    if !scheme_ok {
        return Err(malformed);
    }
    let rest = &target[sep + 3..];
    let authority_end = rest
        .iter()
        .position(|b| b"/?#".contains(b))
        .unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if authority.contains(&b'@') {
        return Err(HttpParseError::Malformed("user info in request target"));
    }
    split_host_port(authority).ok_or(HttpParseError::HostMismatch)
}

/// Splits `name: value` and checks both; the value comes back without its
/// surrounding whitespace.
fn parse_field(line: &[u8]) -> Result<(&[u8], &[u8]), HttpParseError> {
    if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return Err(HttpParseError::Malformed("obsolete line folding"));
    }
    let colon = line
        .iter()
        .position(|b| *b == b':')
        .ok_or(HttpParseError::Malformed("field without colon"))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) {
        return Err(HttpParseError::Malformed("field name"));
    }
    let value = &line[colon + 1..];
    if value
        .iter()
        .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
    {
        return Err(HttpParseError::Malformed(
            "control character in field value",
        ));
    }
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    Ok((name, &value[start..end]))
}

/// `host[:port]` of a `Host` value; IP literals and bad ports are refused.
fn parse_host_value(value: &[u8]) -> Result<String, HttpParseError> {
    split_host_port(value).ok_or(HttpParseError::InvalidHost)
}

/// Splits `host[:port]`, lowercases the host. `None` for an empty host, a
/// bracketed IP literal, more than one colon, or a port that is not 1 to 5
/// digits up to 65535.
fn split_host_port(authority: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(authority).ok()?;
    if text.starts_with('[') {
        return None;
    }
    let host = match text.split_once(':') {
        None => text,
        Some((host, port)) => {
            let digits_ok =
                (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit());
            if !digits_ok || port.parse::<u16>().is_err() {
                return None;
            }
            host
        }
    };
    if host.is_empty() || host.contains(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

fn trim_dot(host: &str) -> &str {
    host.strip_suffix('.').unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CAP: usize = DEFAULT_MAX_REQUEST_HEAD_BYTES;

    fn host_of(request: &str) -> Result<Option<String>, HttpParseError> {
        parse_request_host(request.as_bytes(), CAP)
    }

    #[test]
    fn the_host_is_lowercased_and_loses_its_port() {
        let request = "GET /simple/ HTTP/1.1\r\nHost: PyPI.org:80\r\nAccept: */*\r\n\r\n";
        assert_eq!(host_of(request), Ok(Some("pypi.org".into())));
        assert_eq!(
            host_of("GET / HTTP/1.0\r\nhost:\texample.com \t\r\n\r\n"),
            Ok(Some("example.com".into()))
        );
    }

    #[test]
    fn bytes_after_the_head_are_not_parsed() {
        let request = "POST /x HTTP/1.1\r\nHost: a.example\r\nContent-Length: 3\r\n\r\n\x00\x01\n";
        assert_eq!(host_of(request), Ok(Some("a.example".into())));
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        let request = "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n";
        for end in 0..request.len() {
            assert_eq!(host_of(&request[..end]), Ok(None), "prefix {end}");
        }
    }

    #[test]
    fn a_head_reaching_the_cap_is_too_large() {
        let mut request = b"GET / HTTP/1.1\r\nHost: a.example\r\nX: ".to_vec();
        request.resize(CAP, b'a');
        assert_eq!(
            parse_request_host(&request, CAP),
            Err(HttpParseError::TooLarge)
        );
        let complete = "GET / HTTP/1.1\r\nHost: a.example\r\n\r\n";
        assert_eq!(
            parse_request_host(complete.as_bytes(), 20),
            Err(HttpParseError::TooLarge)
        );
    }

    #[test]
    fn missing_duplicate_and_invalid_hosts_are_refused() {
        assert_eq!(
            host_of("GET / HTTP/1.1\r\nAccept: */*\r\n\r\n"),
            Err(HttpParseError::MissingHost)
        );
        assert_eq!(
            host_of("GET / HTTP/1.0\r\n\r\n"),
            Err(HttpParseError::MissingHost)
        );
        assert_eq!(
            host_of("GET / HTTP/1.1\r\nHost: a.example\r\nhost: b.example\r\n\r\n"),
            Err(HttpParseError::DuplicateHost)
        );
        assert_eq!(
            host_of("GET / HTTP/1.1\r\nHost: a.example\r\nHOST: a.example\r\n\r\n"),
            Err(HttpParseError::DuplicateHost)
        );
        for bad in [
            "",
            ":80",
            "[::1]",
            "[::1]:80",
            "a.example:",
            "a.example:99999",
            "a.example:8a",
            "a:1:2",
            "a b",
        ] {
            let request = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert_eq!(
                host_of(&request),
                Err(HttpParseError::InvalidHost),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn absolute_form_must_name_the_host_of_the_host_header() {
        assert_eq!(
            host_of("GET http://A.example:80/x?y HTTP/1.1\r\nHost: a.example.\r\n\r\n"),
            Ok(Some("a.example.".into()))
        );
        assert_eq!(
            host_of("GET http://evil.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n"),
            Err(HttpParseError::HostMismatch)
        );
        assert_eq!(
            host_of("GET http://a.example@evil.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n"),
            Err(HttpParseError::Malformed("user info in request target"))
        );
        assert_eq!(
            host_of("GET http:///x HTTP/1.1\r\nHost: a.example\r\n\r\n"),
            Err(HttpParseError::HostMismatch)
        );
        assert_eq!(
            host_of("GET a.example:80 HTTP/1.1\r\nHost: a.example\r\n\r\n"),
            Err(HttpParseError::Malformed("request target"))
        );
    }

    #[test]
    fn connect_and_other_versions_are_refused() {
        assert_eq!(
            host_of("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example\r\n\r\n"),
            Err(HttpParseError::Connect)
        );
        assert_eq!(
            host_of("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Err(HttpParseError::UnsupportedVersion)
        );
        assert_eq!(
            host_of("GET / HTTP/1.2\r\nHost: a\r\n\r\n"),
            Err(HttpParseError::UnsupportedVersion)
        );
        assert_eq!(
            host_of("GET /\r\n\r\n"),
            Err(HttpParseError::Malformed("request line"))
        );
    }

    #[test]
    fn smuggling_shapes_are_malformed() {
        let cases = [
            (
                "GET / HTTP/1.1\nHost: a.example\n\n",
                HttpParseError::Malformed("bare LF"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a.example\rX: y\r\n\r\n",
                HttpParseError::Malformed("bare CR"),
            ),
            (
                "GET / HTTP/1.1\r\nHost : a.example\r\n\r\n",
                HttpParseError::Malformed("field name"),
            ),
            (
                "GET / HTTP/1.1\r\nX: 1\r\n Host: b.example\r\nHost: a.example\r\n\r\n",
                HttpParseError::Malformed("obsolete line folding"),
            ),
            (
                "GET / HTTP/1.1\r\nHost: a.exa\x00mple\r\n\r\n",
                HttpParseError::Malformed("control character in field value"),
            ),
            (
                "GET / HTTP/1.1\r\nHost a.example\r\n\r\n",
                HttpParseError::Malformed("field without colon"),
            ),
            (
                "GET  / HTTP/1.1\r\nHost: a.example\r\n\r\n",
                HttpParseError::Malformed("request line"),
            ),
            (
                "G(T / HTTP/1.1\r\nHost: a.example\r\n\r\n",
                HttpParseError::Malformed("method"),
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(host_of(request), Err(expected), "{request:?}");
        }
    }

    #[test]
    fn a_tls_client_hello_is_not_http() {
        assert_eq!(
            parse_request_host(&[22, 3, 1, 0, 5], CAP),
            Err(HttpParseError::NotHttp)
        );
    }

    fn header_strategy() -> impl Strategy<Value = (String, String)> {
        ("[A-Za-z][A-Za-z0-9-]{0,15}", "[ -~]{0,40}")
            .prop_filter("not a Host field", |(name, _)| {
                !name.eq_ignore_ascii_case("host")
            })
            .prop_map(|(name, value)| (name, value.trim_matches(' ').to_string()))
    }

    fn host_strategy() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?(\\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,20}[a-zA-Z0-9])?){0,3}\\.[a-zA-Z]{2,6}"
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048), cap in 0usize..4096) {
            let _ = parse_request_host(&bytes, cap);
        }

        #[test]
        fn never_panics_on_request_shaped_text(text in "[A-Z]{1,7} [ -~]{0,30} HTTP/1\\.[01]\r\n([ -~]{0,30}\r\n){0,6}\r\n") {
            let _ = parse_request_host(text.as_bytes(), CAP);
        }

        #[test]
        fn generated_requests_yield_their_host(
            host in host_strategy(),
            port in proptest::option::of(1u16..),
            before in proptest::collection::vec(header_strategy(), 0..5),
            after in proptest::collection::vec(header_strategy(), 0..5),
            absolute in any::<bool>(),
            method in "GET|HEAD|POST|PUT|DELETE|OPTIONS",
        ) {
            let authority = match port { Some(p) => format!("{host}:{p}"), None => host.clone() };
            let target = if absolute { format!("http://{authority}/path?q=1") } else { "/path?q=1".to_string() };
            let mut request = format!("{method} {target} HTTP/1.1\r\n");
            for (name, value) in &before { request.push_str(&format!("{name}: {value}\r\n")); }
            request.push_str(&format!("Host: {authority}\r\n"));
            for (name, value) in &after { request.push_str(&format!("{name}: {value}\r\n")); }
            request.push_str("\r\nbody");
            prop_assert_eq!(parse_request_host(request.as_bytes(), CAP), Ok(Some(host.to_ascii_lowercase())));
        }

        #[test]
        fn a_second_host_field_is_always_refused(a in host_strategy(), b in host_strategy(), name in "[Hh][Oo][Ss][Tt]") {
            let request = format!("GET / HTTP/1.1\r\nHost: {a}\r\n{name}: {b}\r\n\r\n");
            prop_assert_eq!(parse_request_host(request.as_bytes(), CAP), Err(HttpParseError::DuplicateHost));
        }

        #[test]
        fn an_absolute_target_for_another_host_is_refused(a in host_strategy(), b in host_strategy()) {
            prop_assume!(!a.eq_ignore_ascii_case(&b));
            let request = format!("GET http://{b}/ HTTP/1.1\r\nHost: {a}\r\n\r\n");
            prop_assert_eq!(parse_request_host(request.as_bytes(), CAP), Err(HttpParseError::HostMismatch));
        }
    }
}
