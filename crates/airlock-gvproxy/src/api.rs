//! A tiny HTTP/1.1 client for gvproxy's API on its unix socket: one request
//! per connection (`Connection: close`), JSON bodies, a size cap and a
//! deadline on every call.

use crate::config::{DnsZone, ExposeRequest};
use crate::GvproxyError;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Largest response read (gvproxy's answers are a few KiB).
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// gvproxy's HTTP API of one VM.
#[derive(Debug, Clone)]
pub struct GvproxyApi {
    vm_id: String,
    socket: PathBuf,
    timeout: Duration,
}

impl GvproxyApi {
    /// The API on `socket`, each call bounded by `timeout`.
    pub fn new(vm_id: impl Into<String>, socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            vm_id: vm_id.into(),
            socket: socket.into(),
            timeout,
        }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`: the body of a 200 answer.
    ///
    /// # Errors
    /// [`GvproxyError::Api`] on I/O errors, timeout, or another status.
    pub async fn get(&self, path: &str) -> Result<String, GvproxyError> {
        self.call("GET", path, None).await
    }

    /// `POST path` with a JSON body: the body of a 200 answer.
    ///
    /// # Errors
    /// As [`GvproxyApi::get`].
    pub async fn post_json(&self, path: &str, body: &str) -> Result<String, GvproxyError> {
        self.call("POST", path, Some(body)).await
    }

    /// `POST /services/dns/add`.
    ///
    /// # Errors
    /// As [`GvproxyApi::get`].
    pub async fn add_dns_zone(&self, zone: &DnsZone) -> Result<(), GvproxyError> {
        let body = serde_json::to_string(zone)
            .map_err(|e| self.error("POST", "/services/dns/add", e.to_string()))?;
        self.post_json("/services/dns/add", &body).await.map(drop)
    }

    /// `POST /services/forwarder/expose`.
    ///
    /// # Errors
    /// As [`GvproxyApi::get`].
    pub async fn expose(&self, request: &ExposeRequest) -> Result<(), GvproxyError> {
        let path = "/services/forwarder/expose";
        let body =
            serde_json::to_string(request).map_err(|e| self.error("POST", path, e.to_string()))?;
        self.post_json(path, &body).await.map(drop)
    }

    fn error(&self, method: &'static str, path: &str, reason: String) -> GvproxyError {
        GvproxyError::Api {
            vm_id: self.vm_id.clone(),
            method,
            path: path.to_owned(),
            reason,
        }
    }

    async fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&str>,
    ) -> Result<String, GvproxyError> {
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket)
                .await
                .map_err(|e| format!("connect {}: {e}", self.socket.display()))?;
            stream
                .write_all(&render_request(method, path, body))
                .await
                .map_err(|e| format!("write: {e}"))?;
            let mut raw = Vec::new();
            (&mut stream)
                .take(MAX_RESPONSE_BYTES as u64 + 1)
                .read_to_end(&mut raw)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if raw.len() > MAX_RESPONSE_BYTES {
                return Err(format!("answer over {MAX_RESPONSE_BYTES} bytes"));
            }
            parse_response(&raw)
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| self.error(method, path, format!("no answer within {:?}", self.timeout)))?
            .map_err(|reason| self.error(method, path, reason))?;
        let text = String::from_utf8_lossy(&body).into_owned();
        if status != 200 {
            return Err(self.error(method, path, format!("status {status}: {}", text.trim())));
        }
        tracing::trace!(vm_id = %self.vm_id, method, path, status, "gvproxy API call");
        Ok(text)
    }
}

/// The bytes of one request.
pub(crate) fn render_request(method: &str, path: &str, body: Option<&str>) -> Vec<u8> {
    let body = body.unwrap_or("");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: gvproxy\r\nConnection: close\r\n");
    if method == "POST" {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    req.into_bytes()
}

/// Reads a whole HTTP/1.1 response: status and body (by `Content-Length`,
/// chunked, or up to the end).
pub(crate) fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let head_end = find(raw, b"\r\n\r\n").ok_or("no complete header in the answer")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "the header is not UTF-8")?;
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.split(' ');
    let (Some(version), Some(code)) = (words.next(), words.next()) else {
        return Err(format!("bad status line {status_line:?}"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| format!("bad status line {status_line:?}"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = content_length {
        rest.get(..len)
            .ok_or("the answer is shorter than its Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

fn decode_chunked(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = data.get(..size).ok_or("truncated chunk")?;
        body.extend_from_slice(chunk);
        data = data.get(size..).ok_or("truncated chunk")?;
        data = data.strip_prefix(b"\r\n").ok_or("chunk without CRLF")?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn post_request_has_length_and_type() {
        let req =
            String::from_utf8(render_request("POST", "/services/dns/add", Some("{}"))).unwrap();
        assert_eq!(
            req,
            "POST /services/dns/add HTTP/1.1\r\nHost: gvproxy\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn get_request_has_empty_body() {
        let req = String::from_utf8(render_request("GET", "/stats", None)).unwrap();
        assert!(req.starts_with("GET /stats HTTP/1.1\r\n"));
        assert!(req.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn content_length_body_is_read() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nDate: x\r\n\r\n[{}]";
        assert_eq!(parse_response(raw).unwrap(), (200, b"[{}]".to_vec()));
    }

    #[test]
    fn chunked_body_is_decoded() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\na;x=y\r\n0123456789\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(raw).unwrap(),
            (200, b"abc0123456789".to_vec())
        );
    }

    #[test]
    fn error_status_and_body_are_kept() {
        let raw = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\noops\n";
        assert_eq!(parse_response(raw).unwrap(), (500, b"oops\n".to_vec()));
    }

    #[test]
    fn broken_answers_are_errors() {
        for raw in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"garbage\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        ] {
            assert!(
                parse_response(raw).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    proptest! {
        #[test]
        fn parse_response_never_panics(raw in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_response(&raw);
        }

        #[test]
        fn parse_response_never_panics_on_http_like_input(
            tail in "[0-9a-fA-F;\r\n xyz]{0,120}",
            chunked: bool,
        ) {
            let header = if chunked { "Transfer-Encoding: chunked" } else { "Content-Length: 7" };
            let raw = format!("HTTP/1.1 200 OK\r\n{header}\r\n\r\n{tail}");
            let _ = parse_response(raw.as_bytes());
        }
    }
}
