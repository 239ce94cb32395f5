//! Recording upstreams on the host's loopback for the egress tests: plain
//! HTTP or HTTPS (a certificate for one name from a fresh test CA), each
//! keeping every byte every connection delivered (after TLS) and every
//! HTTP/1.1 request it could frame, and answering each request with what
//! an [`Answer`] makes of it.
//!
//! The server reads requests one after the other on a connection (keep-
//! alive), frames bodies by `Content-Length` or `chunked`, answers
//! `Expect: 100-continue` with `100 Continue` before it reads the body,
//! and closes after a request with `Connection: close` (or HTTP/1.0).
//! Bytes it cannot frame (an HTTP/2 preface, a cut body) are kept in the
//! raw record all the same.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request an upstream received and framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The head as text (request line and fields, final CRLF CRLF included).
    pub head: String,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Received {
    /// The request target of the request line.
    pub fn target(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or_default()
    }
}

/// Makes the answer to a request (status line, fields and body).
pub type Answer = fn(&Received) -> Vec<u8>;

/// The default answer: `200 OK`, body `upstream`.
pub fn answer_ok(_: &Received) -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nupstream".to_vec()
}

/// What the threads of one upstream share.
#[derive(Default)]
struct Record {
    /// Every connection's bytes, in the order connections were accepted.
    connections: Mutex<Vec<Arc<Mutex<Vec<u8>>>>>,
    requests: Mutex<Vec<Received>>,
    /// Connections whose thread still runs.
    live: AtomicUsize,
}

/// A recording upstream on 127.0.0.1; its threads live as long as the
/// test process (each connection's thread ends when its peer closes, or
/// after 30 s without a byte).
pub struct Upstream {
    addr: SocketAddr,
    ca_der: Vec<u8>,
    record: Arc<Record>,
}

impl Upstream {
    /// A plain-HTTP upstream.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub fn plain(answer: Answer) -> Self {
        Self::start(None, answer, Vec::new())
    }

    /// An HTTPS upstream for `name`, its certificate signed by a fresh test
    /// CA ([`ca_der`](Self::ca_der)); it offers no ALPN.
    ///
    /// # Panics
    /// When the certificates cannot be made or no port can be bound.
    pub fn https(name: &str, answer: Answer) -> Self {
        let ca_key = KeyPair::generate().expect("test CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).expect("test CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("leaf key");
        let cert = CertificateParams::new(vec![name.to_owned()])
            .expect("leaf params")
            .signed_by(&key, &issuer)
            .expect("leaf certificate");
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("TLS server config");
        Self::start(Some(Arc::new(tls)), answer, ca_cert.der().to_vec())
    }

    fn start(tls: Option<Arc<rustls::ServerConfig>>, answer: Answer, ca_der: Vec<u8>) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an upstream");
        let addr = listener.local_addr().expect("upstream address");
        let record = Arc::new(Record::default());
        let shared = Arc::clone(&record);
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
                let raw = Arc::new(Mutex::new(Vec::new()));
                shared
                    .connections
                    .lock()
                    .expect("record")
                    .push(Arc::clone(&raw));
                shared.live.fetch_add(1, Ordering::SeqCst);
                let record = Arc::clone(&shared);
                let tls = tls.clone();
                std::thread::spawn(move || {
                    match tls {
                        Some(tls) => {
                            if let Ok(conn) = rustls::ServerConnection::new(tls) {
                                let mut stream = rustls::StreamOwned::new(conn, tcp);
                                serve_requests(&mut stream, &raw, &record, answer);
                                stream.conn.send_close_notify();
                                let _ = stream.flush();
                            }
                        }
                        None => serve_requests(&mut { tcp }, &raw, &record, answer),
                    }
                    record.live.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            ca_der,
            record,
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The DER of the test CA that signed its certificate (empty for a
    /// plain upstream).
    pub fn ca_der(&self) -> Vec<u8> {
        self.ca_der.clone()
    }

    /// The requests framed so far, in the order they completed.
    pub fn requests(&self) -> Vec<Received> {
        self.record.requests.lock().expect("record").clone()
    }

    /// Every connection's bytes so far, in the order they were accepted.
    pub fn raw(&self) -> Vec<Vec<u8>> {
        self.record
            .connections
            .lock()
            .expect("record")
            .iter()
            .map(|c| c.lock().expect("record").clone())
            .collect()
    }

    /// Waits until no connection is open (every peer closed), at most
    /// `deadline`; whether that happened.
    pub fn wait_idle(&self, deadline: Duration) -> bool {
        let start = Instant::now();
        while self.record.live.load(Ordering::SeqCst) > 0 {
            if start.elapsed() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

/// Reads at least one more byte into `buf` (and the raw record); `false`
/// at the end of the stream, on an error or a timeout.
fn read_more(stream: &mut impl Read, buf: &mut Vec<u8>, raw: &Mutex<Vec<u8>>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            raw.lock().expect("record").extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// The value of field `name` in `head` (case-insensitive name), if any.
fn field<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Serves requests on one connection until it closes or cannot be framed.
fn serve_requests(
    stream: &mut (impl Read + Write),
    raw: &Mutex<Vec<u8>>,
    record: &Record,
    answer: Answer,
) {
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if !read_more(stream, &mut buf, raw) {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        if field(&head, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
            let _ = stream.flush();
        }
        let body = if field(&head, "transfer-encoding").is_some() {
            match read_chunked(stream, &mut buf, raw) {
                Some(body) => body,
                None => return,
            }
        } else {
            let len = field(&head, "content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            while buf.len() < len {
                if !read_more(stream, &mut buf, raw) {
                    return;
                }
            }
            buf.drain(..len).collect()
        };
        let close = head
            .split("\r\n")
            .next()
            .unwrap_or_default()
            .ends_with("1.0")
            || field(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let request = Received { head, body };
        let mut reply = answer(&request);
        record.requests.lock().expect("record").push(request);
        if close {
            // `Connection: close` before the blank line ending the head.
            if let Some(at) = reply.windows(4).position(|w| w == b"\r\n\r\n") {
                reply.splice(at + 2..at + 2, b"Connection: close\r\n".iter().copied());
            }
        }
        if stream
            .write_all(&reply)
            .and_then(|()| stream.flush())
            .is_err()
            || close
        {
            return;
        }
    }
}

/// Reads a chunked body (no trailer fields) from `buf` and the stream.
fn read_chunked(
    stream: &mut impl Read,
    buf: &mut Vec<u8>,
    raw: &Mutex<Vec<u8>>,
) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                break at;
            }
            if !read_more(stream, buf, raw) {
                return None;
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        while buf.len() < size + 2 {
            if !read_more(stream, buf, raw) {
                return None;
            }
        }
        if size == 0 {
            buf.drain(..2);
            return Some(body);
        }
        body.extend(buf.drain(..size));
        buf.drain(..2);
    }
}

/// A secret value no other run of the tests makes: `sk-<what>-<pid>-<ns>`.
pub fn unique_secret(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("sk-{what}-{}-{nanos}", std::process::id())
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
