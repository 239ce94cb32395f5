//! Newline-delimited JSON framing with a hard line limit.
//!
//! [`FrameDecoder`] is the pure part: bytes in, lines out, never panicking,
//! never growing past the limit. [`FrameReader`] and [`FrameWriter`] put it on
//! any tokio `AsyncRead`/`AsyncWrite`, always through a buffer.

use crate::message::{Event, EventBody, OpId, Request, RequestBody};
use crate::ProtocolError;
use bytes::{Buf, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Default limit on one line: 16 MiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// How many bytes a reader asks the transport for at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Splits a byte stream into lines of at most `max_line_bytes` (newline
/// excluded). A longer line is dropped up to its newline and reported once as
/// [`ProtocolError::LineTooLong`]; the following lines decode normally.
#[derive(Debug)]
pub struct FrameDecoder {
    max_line_bytes: usize,
    buf: BytesMut,
    /// Bytes of `buf` already scanned for a newline.
    scanned: usize,
    /// Inside an oversized line: drop everything up to the next newline.
    discarding: bool,
}

impl FrameDecoder {
    /// A decoder with the given line limit (at least 1 byte).
    pub fn new(max_line_bytes: usize) -> Self {
        Self {
            max_line_bytes: max_line_bytes.max(1),
            buf: BytesMut::new(),
            scanned: 0,
            discarding: false,
        }
    }

    /// The line limit.
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// Appends bytes read from the transport.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The internal buffer, for reading into it directly.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes held that do not yet form a complete line.
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The next complete line (without its `\n`, and without a trailing
    /// `\r`), an error for an oversized line, or `None` when more bytes are
    /// needed.
    pub fn next_line(&mut self) -> Option<Result<Bytes, ProtocolError>> {
        loop {
            let newline = self.buf[self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| i + self.scanned);
            match newline {
                Some(end) if self.discarding => {
                    self.buf.advance(end + 1);
                    self.scanned = 0;
                    self.discarding = false;
                    return Some(Err(ProtocolError::LineTooLong {
                        limit: self.max_line_bytes,
                    }));
                }
                Some(end) => {
                    let mut line = self.buf.split_to(end + 1);
                    self.scanned = 0;
                    line.truncate(end);
                    if line.last() == Some(&b'\r') {
                        line.truncate(end - 1);
                    }
                    if line.len() > self.max_line_bytes {
                        return Some(Err(ProtocolError::LineTooLong {
                            limit: self.max_line_bytes,
                        }));
                    }
                    if line.is_empty() {
                        continue; // blank lines are keep-alives: skip them
                    }
                    return Some(Ok(line.freeze()));
                }
                None if self.discarding => {
                    self.buf.clear();
                    self.scanned = 0;
                    return None;
                }
                None if self.buf.len() > self.max_line_bytes + 1 => {
                    // +1: a line of exactly the limit may still end in "\r".
                    self.buf.clear();
                    self.scanned = 0;
                    self.discarding = true;
                    return None;
                }
                None => {
                    self.scanned = self.buf.len();
                    return None;
                }
            }
        }
    }

    /// Whether bytes of an unfinished line are held (at end of stream they
    /// are a truncated message).
    pub fn has_partial_line(&self) -> bool {
        !self.buf.is_empty() || self.discarding
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LINE_BYTES)
    }
}

/// Encodes a message as one JSON line ending in `\n`.
///
/// # Errors
/// [`ProtocolError::Encode`] when serialization fails.
pub fn encode_line<T: Serialize>(message: &T) -> Result<Vec<u8>, ProtocolError> {
    let mut line = serde_json::to_vec(message).map_err(|e| ProtocolError::Encode {
        message: e.to_string(),
    })?;
    line.push(b'\n');
    Ok(line)
}

/// [`encode_line`], refusing a line (newline excluded) over
/// `max_line_bytes`.
///
/// # Errors
/// [`ProtocolError::Encode`] when the message cannot be encoded or its line
/// is over the limit.
pub fn encode_line_within<T: Serialize>(
    message: &T,
    max_line_bytes: usize,
) -> Result<Vec<u8>, ProtocolError> {
    let line = encode_line(message)?;
    if line.len() - 1 > max_line_bytes {
        return Err(ProtocolError::Encode {
            message: format!(
                "line of {} bytes exceeds the limit of {max_line_bytes} bytes",
                line.len() - 1
            ),
        });
    }
    Ok(line)
}

/// Just the fields needed to classify a line that failed to decode.
#[derive(Deserialize)]
struct Envelope {
    op: Option<OpId>,
    action: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

fn decode_tagged<T: DeserializeOwned>(
    line: &[u8],
    field: &'static str,
    known: &[&str],
) -> Result<T, ProtocolError> {
    let text = std::str::from_utf8(line).map_err(|e| ProtocolError::InvalidUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    serde_json::from_str(text).map_err(|error| {
        let envelope: Option<Envelope> = serde_json::from_str(text).ok();
        let op = envelope.as_ref().and_then(|e| e.op);
        let tag = envelope.and_then(|e| if field == "action" { e.action } else { e.kind });
        match tag {
            Some(value) if !known.contains(&value.as_str()) => {
                ProtocolError::UnknownTag { field, value, op }
            }
            _ => ProtocolError::BadJson {
                op,
                message: error.to_string(),
            },
        }
    })
}

/// Decodes one line (without its newline) as a [`Request`].
///
/// # Errors
/// [`ProtocolError::InvalidUtf8`], [`ProtocolError::UnknownTag`] or
/// [`ProtocolError::BadJson`], carrying the op id when it was readable.
pub fn decode_request(line: &[u8]) -> Result<Request, ProtocolError> {
    decode_tagged(line, "action", RequestBody::ACTIONS)
}

/// Decodes one line (without its newline) as an [`Event`].
///
/// # Errors
/// As [`decode_request`], with `type` as the tag.
pub fn decode_event(line: &[u8]) -> Result<Event, ProtocolError> {
    decode_tagged(line, "type", EventBody::TYPES)
}

/// Reads lines from an `AsyncRead` through a buffer.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    decoder: FrameDecoder,
    eof: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader with the default line limit.
    pub fn new(inner: R) -> Self {
        Self::with_limit(inner, DEFAULT_MAX_LINE_BYTES)
    }

    /// A reader with the given line limit.
    pub fn with_limit(inner: R, max_line_bytes: usize) -> Self {
        Self {
            inner,
            decoder: FrameDecoder::new(max_line_bytes),
            eof: false,
        }
    }

    /// The next line: `Ok(None)` at a clean end of stream; `Ok(Some(Err(_)))`
    /// for a bad line, after which reading may go on; `Err(_)` when the
    /// transport failed.
    ///
    /// # Errors
    /// The transport's I/O error.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Result<Bytes, ProtocolError>>> {
        loop {
            if let Some(line) = self.decoder.next_line() {
                return Ok(Some(line));
            }
            if self.eof {
                if self.decoder.has_partial_line() {
                    let held = self.decoder.pending_bytes();
                    self.decoder = FrameDecoder::new(self.decoder.max_line_bytes());
                    return Ok(Some(Err(ProtocolError::BadJson {
                        op: None,
                        message: format!("stream ended inside a line ({held} bytes)"),
                    })));
                }
                return Ok(None);
            }
            let buf = self.decoder.buffer_mut();
            buf.reserve(READ_CHUNK_BYTES);
            if self.inner.read_buf(buf).await? == 0 {
                self.eof = true;
            }
        }
    }

    /// The next request: as [`FrameReader::next_line`], decoded.
    ///
    /// # Errors
    /// The transport's I/O error.
    pub async fn next_request(
        &mut self,
    ) -> std::io::Result<Option<Result<Request, ProtocolError>>> {
        Ok(self
            .next_line()
            .await?
            .map(|line| line.and_then(|l| decode_request(&l))))
    }

    /// The next event: as [`FrameReader::next_line`], decoded.
    ///
    /// # Errors
    /// The transport's I/O error.
    pub async fn next_event(&mut self) -> std::io::Result<Option<Result<Event, ProtocolError>>> {
        Ok(self
            .next_line()
            .await?
            .map(|line| line.and_then(|l| decode_event(&l))))
    }

    /// The underlying transport.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Writes messages as lines to an `AsyncWrite`.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    max_line_bytes: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// A writer with the default line limit.
    pub fn new(inner: W) -> Self {
        Self::with_limit(inner, DEFAULT_MAX_LINE_BYTES)
    }

    /// A writer that refuses to send lines over `max_line_bytes`.
    pub fn with_limit(inner: W, max_line_bytes: usize) -> Self {
        Self {
            inner,
            max_line_bytes,
        }
    }

    /// Encodes and sends one message, then flushes.
    ///
    /// # Errors
    /// [`ProtocolError::Encode`] for a line over the limit, or the transport's
    /// error.
    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), ProtocolError> {
        let line = encode_line_within(message, self.max_line_bytes)?;
        self.inner.write_all(&line).await?;
        self.inner.flush().await?;
        Ok(())
    }

    /// The underlying transport.
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// The underlying transport, for writing raw bytes (tests of the peer's
    /// error handling).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;

    fn lines(decoder: &mut FrameDecoder) -> Vec<Result<Bytes, String>> {
        std::iter::from_fn(|| decoder.next_line())
            .map(|r| r.map_err(|e| e.to_string()))
            .collect()
    }

    #[test]
    fn splits_lines_and_strips_carriage_returns() {
        let mut d = FrameDecoder::new(100);
        d.extend(b"a\r\nbc\n\nd");
        assert_eq!(
            lines(&mut d),
            vec![Ok(Bytes::from("a")), Ok(Bytes::from("bc"))]
        );
        d.extend(b"\n");
        assert_eq!(lines(&mut d), vec![Ok(Bytes::from("d"))]);
    }

    #[test]
    fn oversized_line_is_reported_once_and_stream_stays_usable() {
        let mut d = FrameDecoder::new(4);
        d.extend(b"0123456789");
        assert!(lines(&mut d).is_empty());
        d.extend(b"abc\nok\n");
        let got = lines(&mut d);
        assert_eq!(got.len(), 2);
        assert!(got[0].as_ref().unwrap_err().contains("limit of 4"));
        assert_eq!(got[1], Ok(Bytes::from("ok")));
        assert_eq!(d.pending_bytes(), 0);
    }

    #[test]
    fn line_of_exactly_the_limit_passes() {
        let mut d = FrameDecoder::new(4);
        d.extend(b"abcd\nabcde\n");
        let got = lines(&mut d);
        assert_eq!(got[0], Ok(Bytes::from("abcd")));
        assert!(got[1].is_err());
    }

    #[test]
    fn unknown_action_is_typed_and_keeps_the_op() {
        let err = decode_request(br#"{"op":5,"action":"launch_missiles"}"#).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::UnknownTag { field: "action", ref value, op: Some(5) } if value == "launch_missiles"
        ));
        assert_eq!(err.kind(), ErrorKind::UnknownAction);
    }

    #[test]
    fn bad_json_and_bad_fields_are_malformed() {
        for line in [
            &b"{not json"[..],
            br#"{"op":1,"action":"exec"}"#,
            br#"{"action":"ping"}"#,
            br#"{"op":-1,"action":"ping"}"#,
            br#"[]"#,
        ] {
            let err = decode_request(line).unwrap_err();
            assert!(matches!(err, ProtocolError::BadJson { .. }), "{err:?}");
            assert_eq!(err.kind(), ErrorKind::Malformed);
        }
        let err = decode_request(br#"{"op":9,"action":"exec"}"#).unwrap_err();
        assert_eq!(err.op(), Some(9));
    }

    #[test]
    fn invalid_utf8_is_typed() {
        let err = decode_request(b"{\"op\":1,\xff}").unwrap_err();
        assert!(matches!(err, ProtocolError::InvalidUtf8 { valid_up_to: 8 }));
    }

    #[tokio::test]
    async fn reader_and_writer_round_trip_over_a_pipe() {
        let (a, b) = tokio::io::duplex(64);
        let mut writer = FrameWriter::new(a);
        let mut reader = FrameReader::new(b);
        let sent = Request::new(3, RequestBody::Ping);
        let send = tokio::spawn(async move {
            writer.send(&sent).await.unwrap();
            writer
                .send(&Request::new(4, RequestBody::FileEnd))
                .await
                .unwrap();
        });
        let first = reader.next_request().await.unwrap().unwrap().unwrap();
        let second = reader.next_request().await.unwrap().unwrap().unwrap();
        send.await.unwrap();
        assert_eq!(first.op, 3);
        assert_eq!(second.body, RequestBody::FileEnd);
        assert!(reader.next_request().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn truncated_last_line_is_an_error_then_end() {
        let mut reader = FrameReader::new(&b"{\"op\":1"[..]);
        assert!(matches!(
            reader.next_line().await.unwrap(),
            Some(Err(ProtocolError::BadJson { .. }))
        ));
        assert!(reader.next_line().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn writer_refuses_lines_over_the_limit() {
        let mut writer = FrameWriter::with_limit(Vec::new(), 10);
        let big = Event::new(
            1,
            EventBody::Stdout {
                data: crate::Data::text_or_base64("x".repeat(20)),
            },
        );
        assert!(matches!(
            writer.send(&big).await,
            Err(ProtocolError::Encode { .. })
        ));
        assert!(writer.into_inner().is_empty());
    }
}
