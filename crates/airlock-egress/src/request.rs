//! HTTP/1.1 requests as the intercepting proxy relays them (pure): the
//! head, parsed with `httparse` (the parser under hyper, fuzzed and strict
//! about what it accepts), how the body is framed, a chunked-body decoder
//! that takes its input in any pieces, and the head rebuilt with the
//! secrets substituted and the body's length fixed.
//!
//! What is refused, and why: a request with both `Content-Length` and
//! `Transfer-Encoding`, several different lengths, or a transfer coding
//! other than `chunked` alone: a server could frame it differently from
//! the proxy (request smuggling), and the proxy checks each request it
//! frames.

use std::fmt;

use super::http::parse_request_host;
use super::name::normalize_dns_name;

/// Most header fields in one request.
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (with extensions) or trailer line.
const MAX_CHUNK_LINE_BYTES: usize = 4096;

/// Why a request cannot be relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Not a well-formed HTTP/1.x request head.
    Malformed(String),
    /// The head is larger than the cap.
    HeadTooLarge,
    /// The body is larger than the cap.
    BodyTooLarge,
    /// `Host` names another host than the TLS server name.
    HostMismatch {
        /// What `Host` (or the absolute target) said.
        host: String,
    },
    /// Framing that proxy and server could read differently.
    AmbiguousFraming(&'static str),
    /// A method the proxy does not relay (`CONNECT`, `PRI` of HTTP/2).
    Method(String),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Malformed(what) => write!(f, "malformed HTTP request: {what}"),
            RequestError::HeadTooLarge => f.write_str("request head larger than the cap"),
            RequestError::BodyTooLarge => f.write_str("request body larger than the cap"),
            RequestError::HostMismatch { host } => {
                write!(f, "Host {host:?} is not the TLS server name")
            }
            RequestError::AmbiguousFraming(what) => write!(f, "ambiguous body framing: {what}"),
            RequestError::Method(method) => write!(f, "method {method} is not relayed"),
        }
    }
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: String,
    /// The request target as sent.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header fields in order, as sent (framing fields included).
    pub fields: Vec<(String, Vec<u8>)>,
    /// How the body is delimited.
    pub framing: Framing,
    /// The client sent `Expect: 100-continue`.
    pub expects_continue: bool,
    /// Bytes of the head, final CRLF CRLF included.
    pub len: usize,
}

/// Parses the head at the start of `buf`. `Ok(None)`: not complete yet
/// (and under `max_bytes`): read more.
///
/// `server_name` is the TLS server name: `Host` (and an absolute-form
/// target) must name it.
///
/// # Errors
/// [`RequestError`].
pub fn parse_head(
    buf: &[u8],
    server_name: &str,
    max_bytes: usize,
) -> Result<Option<RequestHead>, RequestError> {
    // The crate's own strict head checker first: duplicate or folded Host,
    // bare LF, absolute targets naming another host.
    let host = match parse_request_host(buf, max_bytes) {
        Ok(None) => return Ok(None),
        Ok(Some(host)) => host,
        Err(super::http::HttpParseError::TooLarge) => return Err(RequestError::HeadTooLarge),
        Err(super::http::HttpParseError::HostMismatch) => {
            return Err(RequestError::HostMismatch {
                host: "<absolute target>".into(),
            })
        }
        Err(super::http::HttpParseError::Connect) => {
            return Err(RequestError::Method("CONNECT".into()))
        }
        Err(err) => return Err(RequestError::Malformed(err.to_string())),
    };
    if normalize_dns_name(&host).as_deref() != Ok(server_name) {
        return Err(RequestError::HostMismatch { host });
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(RequestError::Malformed(err.to_string())),
    };
    let method = request.method.unwrap_or_default().to_owned();
    if method == "PRI" {
        return Err(RequestError::Method(method));
    }
    let mut lengths = Vec::new();
    let mut codings = Vec::new();
    let mut expects_continue = false;
    let fields: Vec<(String, Vec<u8>)> = request
        .headers
        .iter()
        .map(|h| (h.name.to_owned(), h.value.to_vec()))
        .collect();
    for (name, value) in &fields {
        if name.eq_ignore_ascii_case("content-length") {
            lengths.push(value.clone());
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            codings.push(value.clone());
        } else if name.eq_ignore_ascii_case("expect") {
            expects_continue = value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    let framing = framing(&lengths, &codings)?;
    Ok(Some(RequestHead {
        method,
        target: request.path.unwrap_or_default().to_owned(),
        minor_version: request.version.unwrap_or(1),
        fields,
        framing,
        expects_continue,
        len,
    }))
}

fn framing(lengths: &[Vec<u8>], codings: &[Vec<u8>]) -> Result<Framing, RequestError> {
    match (lengths, codings) {
        ([], []) => Ok(Framing::None),
        ([], [coding]) if coding.trim_ascii().eq_ignore_ascii_case(b"chunked") => {
            Ok(Framing::Chunked)
        }
        ([], _) => Err(RequestError::AmbiguousFraming(
            "a transfer coding other than `chunked` alone",
        )),
        (_, []) => {
            let parse = |v: &Vec<u8>| {
                let text = std::str::from_utf8(v.trim_ascii()).ok()?;
                if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                text.parse::<u64>().ok()
            };
            let first = parse(&lengths[0]).ok_or(RequestError::AmbiguousFraming(
                "Content-Length is not a number",
            ))?;
            if lengths[1..].iter().any(|v| parse(v) != Some(first)) {
                return Err(RequestError::AmbiguousFraming(
                    "several Content-Length values",
                ));
            }
            Ok(if first == 0 {
                Framing::None
            } else {
                Framing::Length(first)
            })
        }
        _ => Err(RequestError::AmbiguousFraming(
            "both Content-Length and Transfer-Encoding",
        )),
    }
}

/// The head to send upstream: the request line as sent, every field
/// through `substitute` except the framing ones (and `Expect`, which the
/// proxy answers itself), and `Content-Length` of `body_len` when there is
/// a body.
pub fn rebuild_head(
    head: &RequestHead,
    body_len: Option<usize>,
    mut substitute: impl FnMut(&[u8]) -> Vec<u8>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len + 64);
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(if head.minor_version == 0 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for (name, value) in &head.fields {
        let framing_field = name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || (head.expects_continue && name.eq_ignore_ascii_case("expect"));
        if framing_field {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&substitute(value));
        out.extend_from_slice(b"\r\n");
    }
    if let Some(len) = body_len {
        out.extend_from_slice(format!("Content-Length: {len}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Decodes a chunked body fed in any pieces; trailer fields are read and
/// dropped (the body is sent on with a `Content-Length`).
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    body: Vec<u8>,
    max_body: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
    Done,
}

impl ChunkedDecoder {
    /// A decoder refusing bodies over `max_body` bytes.
    pub fn new(max_body: usize) -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            body: Vec::new(),
            max_body,
        }
    }

    /// Consumes what it can of `input`; returns how many bytes it used.
    /// Call again with the rest and more bytes; [`is_done`](Self::is_done)
    /// tells when the body ended.
    ///
    /// # Errors
    /// [`RequestError::Malformed`] or [`RequestError::BodyTooLarge`].
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, RequestError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                ChunkState::Done => return Ok(used),
                ChunkState::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((n, size))) => {
                        used += n;
                        self.state = if size == 0 {
                            ChunkState::Trailer
                        } else {
                            let room = (self.max_body - self.body.len()) as u64;
                            if size > room {
                                return Err(RequestError::BodyTooLarge);
                            }
                            ChunkState::Data(size)
                        };
                    }
                    Ok(httparse::Status::Partial) => {
                        if rest.len() > MAX_CHUNK_LINE_BYTES {
                            return Err(RequestError::Malformed("chunk size line too long".into()));
                        }
                        return Ok(used);
                    }
                    Err(_) => return Err(RequestError::Malformed("bad chunk size".into())),
                },
                ChunkState::Data(remaining) => {
                    if rest.is_empty() {
                        return Ok(used);
                    }
                    let take = rest
                        .len()
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    self.body.extend_from_slice(&rest[..take]);
                    used += take;
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(used);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(RequestError::Malformed("chunk not followed by CRLF".into()));
                    }
                    used += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
                        if rest.len() > MAX_CHUNK_LINE_BYTES {
                            return Err(RequestError::Malformed("trailer line too long".into()));
                        }
                        return Ok(used);
                    };
                    used += end + 2;
                    if end == 0 {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }

    /// Whether the last chunk and the trailers were read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// The decoded body.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NAME: &str = "api.example.com";

    fn parse(text: &str) -> Result<Option<RequestHead>, RequestError> {
        parse_head(text.as_bytes(), NAME, 16 * 1024)
    }

    #[test]
    fn a_complete_head_is_parsed_with_its_framing() {
        let head = parse("POST /v1 HTTP/1.1\r\nHost: API.example.com:443\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello")
            .expect("valid")
            .expect("complete");
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/v1");
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.expects_continue);
        assert_eq!(head.len, "POST /v1 HTTP/1.1\r\nHost: API.example.com:443\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n".len());
        let chunked =
            parse("POST / HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n")
                .expect("valid")
                .expect("complete");
        assert_eq!(chunked.framing, Framing::Chunked);
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: api.exa"), Ok(None));
    }

    #[test]
    fn a_host_other_than_the_server_name_is_refused() {
        for text in [
            "GET / HTTP/1.1\r\nHost: other.example.com\r\n\r\n",
            "GET https://other.example.com/ HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: api.example.com\r\nHost: other.example.com\r\n\r\n",
        ] {
            assert!(
                matches!(
                    parse(text),
                    Err(RequestError::HostMismatch { .. }) | Err(RequestError::Malformed(_))
                ),
                "{text:?}: {:?}",
                parse(text)
            );
        }
        assert!(matches!(
            parse("GET / HTTP/1.1\r\n\r\n"),
            Err(RequestError::Malformed(_))
        ));
    }

    #[test]
    fn smuggling_shaped_framing_is_refused() {
        for text in [
            "POST / HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: +3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(
                matches!(parse(text), Err(RequestError::AmbiguousFraming(_))),
                "{text:?}: {:?}",
                parse(text)
            );
        }
        assert!(matches!(
            parse("CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com\r\n\r\n"),
            Err(RequestError::Method(_))
        ));
    }

    #[test]
    fn the_rebuilt_head_substitutes_values_and_fixes_the_length() {
        let head = parse("POST /x HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer P\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
            .expect("valid")
            .expect("complete");
        let out = rebuild_head(&head, Some(12), |v| {
            if v == b"Bearer P" {
                b"Bearer REAL".to_vec()
            } else {
                v.to_vec()
            }
        });
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "POST /x HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer REAL\r\nContent-Length: 12\r\n\r\n"
        );
    }

    #[test]
    fn a_chunked_body_is_decoded_with_extensions_and_trailers() {
        let mut decoder = ChunkedDecoder::new(1024);
        let input = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        let used = decoder.feed(input).expect("valid");
        assert!(decoder.is_done());
        assert_eq!(&input[used..], b"NEXT");
        assert_eq!(decoder.into_body(), b"hello world");
    }

    #[test]
    fn a_chunked_body_over_the_cap_or_malformed_is_refused() {
        let mut decoder = ChunkedDecoder::new(4);
        assert_eq!(
            decoder.feed(b"5\r\nhello\r\n"),
            Err(RequestError::BodyTooLarge)
        );
        let mut decoder = ChunkedDecoder::new(64);
        assert!(matches!(
            decoder.feed(b"zz\r\n"),
            Err(RequestError::Malformed(_))
        ));
        let mut decoder = ChunkedDecoder::new(64);
        assert!(matches!(
            decoder.feed(b"2\r\nabXY"),
            Err(RequestError::Malformed(_))
        ));
    }

    fn chunked(body: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = body;
        let mut sizes = sizes.iter().cycle();
        while !rest.is_empty() {
            let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
            out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            out.extend_from_slice(&rest[..n]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[n..];
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    proptest! {
        #[test]
        fn a_chunked_body_decodes_the_same_however_it_is_split(
            body in proptest::collection::vec(any::<u8>(), 0..2000),
            sizes in proptest::collection::vec(1usize..300, 1..6),
            pieces in proptest::collection::vec(1usize..200, 1..20),
        ) {
            let wire = chunked(&body, &sizes);
            let mut decoder = ChunkedDecoder::new(4096);
            let mut pending = Vec::new();
            let mut offset = 0;
            let mut pieces = pieces.iter().cycle();
            while offset < wire.len() {
                let n = (*pieces.next().unwrap_or(&1)).min(wire.len() - offset);
                pending.extend_from_slice(&wire[offset..offset + n]);
                offset += n;
                let used = decoder.feed(&pending).expect("valid");
                pending.drain(..used);
            }
            prop_assert!(decoder.is_done());
            prop_assert!(pending.is_empty());
            prop_assert_eq!(decoder.into_body(), body);
        }

        #[test]
        fn parsing_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_head(&bytes, NAME, 16 * 1024);
            let mut decoder = ChunkedDecoder::new(1024);
            let _ = decoder.feed(&bytes);
        }
    }
}
