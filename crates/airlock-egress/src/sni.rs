//! The server name of a TLS ClientHello (pure).
//!
//! [`parse_client_hello`] reads the first bytes a client sends on port 443:
//! TLS records of type handshake carrying one ClientHello (RFC 8446 section
//! 4.1.2, RFC 5246 section 7.4.1.2), and returns its `server_name` extension
//! (RFC 6066 section 3) and whether it offers Encrypted Client Hello.
//!
//! - Bytes arrive in pieces: while the ClientHello is incomplete the answer is
//!   `Ok(None)` ("read more"), up to a cap (16 KiB by default) past which it
//!   is [`TlsParseError::TooLarge`].
//! - A ClientHello may span several handshake records; they are reassembled.
//!   Anything after the ClientHello is not looked at (it is forwarded as is).
//! - Every length is checked against its container, the extension block must
//!   fill the rest of the ClientHello exactly, an extension type may appear
//!   only once, and the server name list must hold exactly one `host_name`.
//!   Anything else is [`TlsParseError::Malformed`], so that the proxy and the
//!   real server cannot read two different names out of one ClientHello.
//! - Encrypted Client Hello (`encrypted_client_hello`, 0xfe0d, and the older
//!   draft ESNI `encrypted_server_name`, 0xffce) is reported as
//!   [`ClientHello::offers_ech`]. The proxy refuses such a ClientHello: its
//!   visible server name is only the public name of the client-facing
//!   server, the name actually reached is encrypted, so checking the visible
//!   one would let a guest reach anything hosted behind that front.
//!
//! Why a hand parser rather than a crate (`tls-parser` pulls in `nom` and
//! parses far more than needed): the proxy needs exactly one field, with
//! precise "need more bytes" and size-cap semantics, and ECH detection. The
//! parser is about 150 lines over a bounds-checked cursor, with property
//! tests (no panic on any input, generated ClientHellos round-trip, split at
//! any point) and real ClientHellos from rustls in the proxy tests.

use std::collections::BTreeSet;
use std::fmt;

/// Default cap on the bytes read to find a ClientHello.
pub const DEFAULT_MAX_CLIENT_HELLO_BYTES: usize = 16 * 1024;

/// TLS record content type `handshake`.
const CONTENT_HANDSHAKE: u8 = 22;
/// Handshake message type `client_hello`.
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Extension `server_name` (RFC 6066).
const EXT_SERVER_NAME: u16 = 0;
/// Extension `encrypted_client_hello` (RFC 9849 / draft-ietf-tls-esni-18+).
pub const EXT_ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;
/// Extension `encrypted_server_name` of the early ESNI drafts.
const EXT_ENCRYPTED_SERVER_NAME_DRAFT: u16 = 0xffce;
/// `host_name` in a server name list.
const NAME_TYPE_HOST_NAME: u8 = 0;
/// Largest record payload allowed by TLS (2^14).
const MAX_RECORD_PAYLOAD_BYTES: usize = 16 * 1024;
/// Record header: type, version, length.
const RECORD_HEADER_BYTES: usize = 5;
/// Handshake header: type, 24-bit length.
const HANDSHAKE_HEADER_BYTES: usize = 4;

/// What the proxy needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The `host_name` of the `server_name` extension, as sent (not yet
    /// validated or lowercased). `None` when the extension is absent.
    pub server_name: Option<String>,
    /// The ClientHello carries an Encrypted Client Hello (or draft ESNI)
    /// extension: `server_name`, if any, is only the public outer name.
    pub offers_ech: bool,
}

/// Why the first bytes are not an acceptable ClientHello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsParseError {
    /// The first record is not a TLS handshake record (plain text, SSLv2, ...).
    NotTls,
    /// The first handshake message is not a ClientHello.
    NotClientHello,
    /// The ClientHello does not fit in the byte cap.
    TooLarge,
    /// A length, count or field is inconsistent; the text says which.
    Malformed(&'static str),
}

impl fmt::Display for TlsParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsParseError::NotTls => f.write_str("not a TLS handshake"),
            TlsParseError::NotClientHello => {
                f.write_str("first handshake message is not a ClientHello")
            }
            TlsParseError::TooLarge => f.write_str("ClientHello larger than the cap"),
            TlsParseError::Malformed(what) => write!(f, "malformed ClientHello: {what}"),
        }
    }
}

/// Parses the ClientHello at the start of `buf`.
///
/// Returns `Ok(None)` when `buf` is a valid but incomplete prefix and fewer
/// than `max_bytes` bytes are buffered: read more and call again with the
/// whole buffer. Never panics, whatever the input.
pub fn parse_client_hello(
    buf: &[u8],
    max_bytes: usize,
) -> Result<Option<ClientHello>, TlsParseError> {
    match reassemble_handshake(buf, max_bytes)? {
        Some(message) => parse_client_hello_body(&message).map(Some),
        None if buf.len() >= max_bytes => Err(TlsParseError::TooLarge),
        None => Ok(None),
    }
}

/// Whether `buf` ends exactly at the end of a TLS record (walking the
/// record headers only, without copying). A ClientHello can only become
/// complete there, so a caller receiving bytes in small pieces need not
/// parse in between.
pub(crate) fn ends_at_record_boundary(buf: &[u8]) -> bool {
    let mut offset = 0usize;
    while let Some(header) = buf.get(offset..offset + RECORD_HEADER_BYTES) {
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        offset += RECORD_HEADER_BYTES + length;
    }
    offset == buf.len()
}

/// Concatenates handshake record payloads until they hold one whole
/// handshake message, which is returned without its header. `Ok(None)`: the
/// buffer ends before that.
fn reassemble_handshake(buf: &[u8], max_bytes: usize) -> Result<Option<Vec<u8>>, TlsParseError> {
    let mut handshake = Vec::new();
    let mut offset = 0;
    loop {
        let Some(header) = buf.get(offset..offset + RECORD_HEADER_BYTES) else {
            return check_partial_record(&buf[offset.min(buf.len())..]).map(|()| None);
        };
        let (content_type, major) = (header[0], header[1]);
        if content_type != CONTENT_HANDSHAKE || major != 3 {
            return Err(TlsParseError::NotTls);
        }
        let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if length == 0 || length > MAX_RECORD_PAYLOAD_BYTES {
            return Err(TlsParseError::Malformed("record length"));
        }
        let start = offset + RECORD_HEADER_BYTES;
        if start + length > max_bytes {
            return Err(TlsParseError::TooLarge);
        }
        let Some(payload) = buf.get(start..start + length) else {
            // The part of this record that arrived may already show the size.
            handshake.extend_from_slice(&buf[start.min(buf.len())..]);
            return check_handshake_header(&handshake, max_bytes).map(|_| None);
        };
        handshake.extend_from_slice(payload);
        offset = start + length;
        if let Some(total) = check_handshake_header(&handshake, max_bytes)? {
            if handshake.len() >= total {
                handshake.truncate(total);
                handshake.drain(..HANDSHAKE_HEADER_BYTES);
                return Ok(Some(handshake));
            }
        }
    }
}

/// Checks what is visible of a record header that has not fully arrived.
fn check_partial_record(partial: &[u8]) -> Result<(), TlsParseError> {
    match partial {
        [] => Ok(()),
        [t, ..] if *t != CONTENT_HANDSHAKE => Err(TlsParseError::NotTls),
        [_, major, ..] if *major != 3 => Err(TlsParseError::NotTls),
        _ => Ok(()),
    }
}

/// Checks the handshake header once its 4 bytes are there; returns the
/// message's total size (header included).
fn check_handshake_header(
    handshake: &[u8],
    max_bytes: usize,
) -> Result<Option<usize>, TlsParseError> {
    match handshake {
        [t, ..] if *t != HANDSHAKE_CLIENT_HELLO => Err(TlsParseError::NotClientHello),
        [_, a, b, c, ..] => {
            let body = usize::from(*a) << 16 | usize::from(*b) << 8 | usize::from(*c);
            let total = HANDSHAKE_HEADER_BYTES + body;
            // Every record adds a 5-byte header, so the bytes on the wire
            // exceed `total`; this bound is a cheap early refusal.
            if total > max_bytes {
                return Err(TlsParseError::TooLarge);
            }
            Ok(Some(total))
        }
        _ => Ok(None),
    }
}

/// A bounds-checked reader over a byte slice; every read says what it
/// expected so a failure names the field.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { rest: bytes }
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], TlsParseError> {
        if n > self.rest.len() {
            return Err(TlsParseError::Malformed(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, TlsParseError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, TlsParseError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self, what: &'static str) -> Result<&'a [u8], TlsParseError> {
        let n = usize::from(self.u8(what)?);
        self.take(n, what)
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self, what: &'static str) -> Result<&'a [u8], TlsParseError> {
        let n = usize::from(self.u16(what)?);
        self.take(n, what)
    }
}

fn parse_client_hello_body(body: &[u8]) -> Result<ClientHello, TlsParseError> {
    let mut r = Cursor::new(body);
    let version = r.u16("legacy_version")?;
    if version >> 8 != 3 {
        return Err(TlsParseError::Malformed("legacy_version"));
    }
    r.take(32, "random")?;
    if r.vec8("session_id")?.len() > 32 {
        return Err(TlsParseError::Malformed("session_id longer than 32 bytes"));
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return Err(TlsParseError::Malformed("cipher_suites"));
    }
    if r.vec8("compression_methods")?.is_empty() {
        return Err(TlsParseError::Malformed("compression_methods"));
    }
    let mut hello = ClientHello {
        server_name: None,
        offers_ech: false,
    };
    if r.is_empty() {
        // A TLS 1.2-or-older ClientHello may omit extensions entirely.
        return Ok(hello);
    }
    let extensions = r.vec16("extensions")?;
    if !r.is_empty() {
        return Err(TlsParseError::Malformed("bytes after the extensions"));
    }
    let mut seen = BTreeSet::new();
    let mut r = Cursor::new(extensions);
    while !r.is_empty() {
        let ext_type = r.u16("extension type")?;
        let data = r.vec16("extension data")?;
        if !seen.insert(ext_type) {
            return Err(TlsParseError::Malformed("duplicate extension"));
        }
        match ext_type {
            EXT_SERVER_NAME => hello.server_name = Some(parse_server_name(data)?),
            EXT_ENCRYPTED_CLIENT_HELLO | EXT_ENCRYPTED_SERVER_NAME_DRAFT => hello.offers_ech = true,
            _ => {}
        }
    }
    Ok(hello)
}

/// The one `host_name` of a `server_name` extension.
fn parse_server_name(data: &[u8]) -> Result<String, TlsParseError> {
    let mut outer = Cursor::new(data);
    let list = outer.vec16("server_name_list")?;
    if !outer.is_empty() {
        return Err(TlsParseError::Malformed("bytes after server_name_list"));
    }
    let mut r = Cursor::new(list);
    let name_type = r.u8("server name type")?;
    let name = r.vec16("host_name")?;
    if name_type != NAME_TYPE_HOST_NAME {
        return Err(TlsParseError::Malformed(
            "server name type is not host_name",
        ));
    }
    if !r.is_empty() {
        return Err(TlsParseError::Malformed("more than one server name"));
    }
    if name.is_empty() {
        return Err(TlsParseError::Malformed("empty host_name"));
    }
    String::from_utf8(name.to_vec()).map_err(|_| TlsParseError::Malformed("host_name is not UTF-8"))
}

/// Builds ClientHellos for tests and for [`measure_throughput`](super::measure_throughput).
pub(crate) mod build {
    /// The parts of a generated ClientHello that matter to the parser.
    #[derive(Debug, Clone, Default)]
    pub(crate) struct HelloSpec {
        /// `host_name` to put in a `server_name` extension; `None`: no extension.
        pub(crate) server_name: Option<Vec<u8>>,
        /// Add an `encrypted_client_hello` extension.
        pub(crate) ech: bool,
        /// Other extensions (type, data), placed before `server_name`.
        pub(crate) other_extensions: Vec<(u16, Vec<u8>)>,
        /// Session id bytes (up to 32).
        pub(crate) session_id: Vec<u8>,
        /// Largest record payload; the handshake is split into records of
        /// at most this size (0 means 16384).
        pub(crate) max_record_payload: usize,
    }

    fn push_u16(out: &mut Vec<u8>, n: usize) {
        out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
    }

    /// The bytes a client would send: TLS records carrying the ClientHello.
    pub(crate) fn client_hello(spec: &HelloSpec) -> Vec<u8> {
        let mut exts = Vec::new();
        for (ext_type, data) in &spec.other_extensions {
            exts.extend_from_slice(&ext_type.to_be_bytes());
            push_u16(&mut exts, data.len());
            exts.extend_from_slice(data);
        }
        if let Some(name) = &spec.server_name {
            exts.extend_from_slice(&0u16.to_be_bytes());
            push_u16(&mut exts, name.len() + 5);
            push_u16(&mut exts, name.len() + 3);
            exts.push(0);
            push_u16(&mut exts, name.len());
            exts.extend_from_slice(name);
        }
        if spec.ech {
            exts.extend_from_slice(&super::EXT_ENCRYPTED_CLIENT_HELLO.to_be_bytes());
            let payload = [0u8, 0, 1, 0, 1, 7, 0, 0, 0, 0];
            push_u16(&mut exts, payload.len());
            exts.extend_from_slice(&payload);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[0x42; 32]);
        body.push(u8::try_from(spec.session_id.len()).unwrap_or(0));
        body.extend_from_slice(&spec.session_id);
        body.extend_from_slice(&[0, 4, 0x13, 0x01, 0xc0, 0x2f]);
        body.extend_from_slice(&[1, 0]);
        push_u16(&mut body, exts.len());
        body.extend_from_slice(&exts);
        let mut handshake = vec![1];
        handshake.extend_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_be_bytes()[1..]);
        handshake.extend_from_slice(&body);
        let chunk = match spec.max_record_payload {
            0 => 16 * 1024,
            n => n,
        };
        let mut out = Vec::new();
        for piece in handshake.chunks(chunk) {
            out.extend_from_slice(&[22, 3, 1]);
            push_u16(&mut out, piece.len());
            out.extend_from_slice(piece);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::{client_hello, HelloSpec};
    use super::*;
    use proptest::prelude::*;

    const CAP: usize = DEFAULT_MAX_CLIENT_HELLO_BYTES;

    fn hello_for(name: &str) -> Vec<u8> {
        client_hello(&HelloSpec {
            server_name: Some(name.as_bytes().to_vec()),
            ..HelloSpec::default()
        })
    }

    #[test]
    fn a_client_hello_with_sni_yields_the_name() {
        let bytes = hello_for("pypi.org");
        let hello = parse_client_hello(&bytes, CAP)
            .expect("valid")
            .expect("complete");
        assert_eq!(
            hello,
            ClientHello {
                server_name: Some("pypi.org".into()),
                offers_ech: false
            }
        );
    }

    #[test]
    fn every_strict_prefix_asks_for_more_bytes() {
        let bytes = hello_for("files.pythonhosted.org");
        for end in 0..bytes.len() {
            assert_eq!(
                parse_client_hello(&bytes[..end], CAP),
                Ok(None),
                "prefix {end}"
            );
        }
    }

    #[test]
    fn a_client_hello_without_sni_has_no_name() {
        let bytes = client_hello(&HelloSpec::default());
        let hello = parse_client_hello(&bytes, CAP)
            .expect("valid")
            .expect("complete");
        assert_eq!(hello.server_name, None);
    }

    #[test]
    fn a_client_hello_without_any_extension_block_has_no_name() {
        let mut body = vec![3, 1];
        body.extend_from_slice(&[0; 32]);
        body.extend_from_slice(&[0, 0, 2, 0, 0x2f, 1, 0]);
        let mut bytes = vec![
            22,
            3,
            1,
            0,
            (body.len() + 4) as u8,
            1,
            0,
            0,
            body.len() as u8,
        ];
        bytes.extend_from_slice(&body);
        let hello = parse_client_hello(&bytes, CAP)
            .expect("valid")
            .expect("complete");
        assert_eq!(hello.server_name, None);
    }

    #[test]
    fn ech_is_reported_with_the_outer_name() {
        let bytes = client_hello(&HelloSpec {
            server_name: Some(b"public.example".to_vec()),
            ech: true,
            ..HelloSpec::default()
        });
        let hello = parse_client_hello(&bytes, CAP)
            .expect("valid")
            .expect("complete");
        assert!(hello.offers_ech);
        assert_eq!(hello.server_name.as_deref(), Some("public.example"));
    }

    #[test]
    fn draft_esni_counts_as_ech() {
        let bytes = client_hello(&HelloSpec {
            server_name: Some(b"a.example".to_vec()),
            other_extensions: vec![(0xffce, vec![1, 2, 3])],
            ..HelloSpec::default()
        });
        assert!(
            parse_client_hello(&bytes, CAP)
                .expect("valid")
                .expect("complete")
                .offers_ech
        );
    }

    #[test]
    fn a_client_hello_split_over_records_is_reassembled() {
        let spec = HelloSpec {
            server_name: Some(b"split.example".to_vec()),
            max_record_payload: 7,
            ..HelloSpec::default()
        };
        let bytes = client_hello(&spec);
        let hello = parse_client_hello(&bytes, CAP)
            .expect("valid")
            .expect("complete");
        assert_eq!(hello.server_name.as_deref(), Some("split.example"));
    }

    #[test]
    fn record_boundaries_are_found_by_walking_headers() {
        let bytes = client_hello(&HelloSpec {
            server_name: Some(b"a.example".to_vec()),
            max_record_payload: 10,
            ..HelloSpec::default()
        });
        let boundaries: Vec<usize> = (0..=bytes.len())
            .filter(|end| ends_at_record_boundary(&bytes[..*end]))
            .collect();
        let expected: Vec<usize> = (0..=bytes.len())
            .filter(|end| *end == bytes.len() || end % 15 == 0)
            .collect();
        assert_eq!(boundaries, expected);
    }

    #[test]
    fn plain_text_and_other_record_types_are_not_tls() {
        assert_eq!(
            parse_client_hello(b"GET / HTTP/1.1\r\n", CAP),
            Err(TlsParseError::NotTls)
        );
        assert_eq!(parse_client_hello(b"G", CAP), Err(TlsParseError::NotTls));
        assert_eq!(
            parse_client_hello(&[22, 2], CAP),
            Err(TlsParseError::NotTls)
        );
        assert_eq!(
            parse_client_hello(&[23, 3, 3, 0, 1, 0], CAP),
            Err(TlsParseError::NotTls)
        );
        // SSLv2-style ClientHello.
        assert_eq!(
            parse_client_hello(&[0x80, 0x2e, 1, 3, 1], CAP),
            Err(TlsParseError::NotTls)
        );
    }

    #[test]
    fn another_handshake_message_first_is_refused() {
        assert_eq!(
            parse_client_hello(&[22, 3, 3, 0, 4, 2, 0, 0, 0], CAP),
            Err(TlsParseError::NotClientHello)
        );
    }

    #[test]
    fn oversized_hellos_are_refused_early_and_at_the_cap() {
        // Handshake header announces 1 MiB.
        assert_eq!(
            parse_client_hello(&[22, 3, 1, 0, 4, 1, 0x10, 0, 0], CAP),
            Err(TlsParseError::TooLarge)
        );
        // Records of garbage-free but endless fragments reach the cap.
        let spec = HelloSpec {
            server_name: Some(b"big.example".to_vec()),
            other_extensions: vec![(0x1234, vec![0; 20_000])],
            ..HelloSpec::default()
        };
        let bytes = client_hello(&spec);
        assert_eq!(
            parse_client_hello(&bytes, CAP),
            Err(TlsParseError::TooLarge)
        );
        assert!(parse_client_hello(&bytes, 64 * 1024)
            .expect("valid under a larger cap")
            .is_some());
    }

    #[test]
    fn inconsistent_lengths_and_duplicates_are_malformed() {
        let name_ext = |list: &[u8]| {
            let mut data = Vec::new();
            data.extend_from_slice(&(list.len() as u16).to_be_bytes());
            data.extend_from_slice(list);
            client_hello(&HelloSpec {
                other_extensions: vec![(0, data)],
                ..HelloSpec::default()
            })
        };
        let two_names = name_ext(&[0, 0, 1, b'a', 0, 0, 1, b'b']);
        assert_eq!(
            parse_client_hello(&two_names, CAP),
            Err(TlsParseError::Malformed("more than one server name"))
        );
        let other_type = name_ext(&[1, 0, 1, b'a']);
        assert_eq!(
            parse_client_hello(&other_type, CAP),
            Err(TlsParseError::Malformed(
                "server name type is not host_name"
            ))
        );
        let empty = name_ext(&[0, 0, 0]);
        assert_eq!(
            parse_client_hello(&empty, CAP),
            Err(TlsParseError::Malformed("empty host_name"))
        );
        let short = name_ext(&[0, 0, 9, b'a']);
        assert_eq!(
            parse_client_hello(&short, CAP),
            Err(TlsParseError::Malformed("host_name"))
        );
        let duplicate = client_hello(&HelloSpec {
            server_name: Some(b"a.example".to_vec()),
            other_extensions: vec![(0, vec![0, 4, 0, 0, 1, b'b'])],
            ..HelloSpec::default()
        });
        assert_eq!(
            parse_client_hello(&duplicate, CAP),
            Err(TlsParseError::Malformed("duplicate extension"))
        );
        let not_utf8 = client_hello(&HelloSpec {
            server_name: Some(vec![0xff, 0xfe]),
            ..HelloSpec::default()
        });
        assert_eq!(
            parse_client_hello(&not_utf8, CAP),
            Err(TlsParseError::Malformed("host_name is not UTF-8"))
        );
        assert_eq!(
            parse_client_hello(&[22, 3, 1, 0, 0], CAP),
            Err(TlsParseError::Malformed("record length"))
        );
    }

    #[test]
    fn trailing_bytes_inside_the_client_hello_are_malformed() {
        let mut bytes = hello_for("a.example");
        // Grow record and handshake lengths by one and append a byte.
        let record_len = u16::from_be_bytes([bytes[3], bytes[4]]) + 1;
        bytes[3..5].copy_from_slice(&record_len.to_be_bytes());
        bytes[8] += 1;
        bytes.push(0);
        assert_eq!(
            parse_client_hello(&bytes, CAP),
            Err(TlsParseError::Malformed("bytes after the extensions"))
        );
    }

    fn spec_strategy() -> impl Strategy<Value = (HelloSpec, String)> {
        let name = "[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?){0,4}\\.[a-z]{2,8}";
        let other = proptest::collection::vec(
            (1u16..0xfe00, proptest::collection::vec(any::<u8>(), 0..40)),
            0..6,
        )
        .prop_map(|mut exts| {
            exts.sort_by_key(|(t, _)| *t);
            exts.dedup_by_key(|(t, _)| *t);
            exts
        });
        (
            name,
            other,
            proptest::collection::vec(any::<u8>(), 0..=32),
            1usize..400,
        )
            .prop_map(|(name, other_extensions, session_id, max_record_payload)| {
                let spec = HelloSpec {
                    server_name: Some(name.as_bytes().to_vec()),
                    ech: false,
                    other_extensions,
                    session_id,
                    max_record_payload,
                };
                (spec, name)
            })
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse_client_hello(&bytes, CAP);
        }

        #[test]
        fn never_panics_on_handshake_shaped_garbage(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            record_len in any::<u16>(),
        ) {
            let mut bytes = vec![22, 3, 1];
            bytes.extend_from_slice(&record_len.to_be_bytes());
            bytes.push(1);
            bytes.extend_from_slice(&body);
            let _ = parse_client_hello(&bytes, CAP);
        }

        #[test]
        fn generated_client_hellos_round_trip((spec, name) in spec_strategy()) {
            let bytes = client_hello(&spec);
            let hello = parse_client_hello(&bytes, CAP).expect("valid").expect("complete");
            prop_assert_eq!(hello.server_name, Some(name));
            prop_assert!(!hello.offers_ech);
        }

        #[test]
        fn any_prefix_of_a_generated_client_hello_asks_for_more((spec, _name) in spec_strategy(), cut in any::<prop::sample::Index>()) {
            let bytes = client_hello(&spec);
            let end = cut.index(bytes.len());
            prop_assert_eq!(parse_client_hello(&bytes[..end], CAP), Ok(None));
        }

        #[test]
        fn mutated_client_hellos_never_panic((spec, _name) in spec_strategy(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
            let mut bytes = client_hello(&spec);
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let _ = parse_client_hello(&bytes, CAP);
        }
    }
}
