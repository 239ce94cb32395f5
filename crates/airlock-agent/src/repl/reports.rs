//! Reading a cell driver's fd 4: report lines ([`control::parse_report`])
//! and the payloads some of them announce (`result`, `cell_error`).
//!
//! Cancel-safe, so it can sit in a `select!` beside the output pipes: a
//! partial line or payload stays in the reader until the next call.

use super::control::{self, PayloadKind, Report, MAX_REPORT_BYTES};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// What came from the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A report line without payload.
    Report(Report),
    /// A payload, whole.
    Payload {
        /// What it holds.
        kind: PayloadKind,
        /// The cell it names.
        id: u64,
        /// Its bytes (JSON, not yet checked).
        body: Vec<u8>,
    },
}

/// A payload being read.
#[derive(Debug)]
struct Partial {
    kind: PayloadKind,
    id: u64,
    want: usize,
    body: Vec<u8>,
}

/// The reader of a driver's reports.
#[derive(Debug)]
pub(crate) struct ReportReader<R> {
    reader: BufReader<R>,
    line: Vec<u8>,
    partial: Option<Partial>,
}

impl<R: AsyncRead + Unpin> ReportReader<R> {
    /// Reads from `reader`.
    pub(crate) fn new(reader: R) -> Self {
        Self {
            reader: BufReader::new(reader),
            line: Vec::new(),
            partial: None,
        }
    }

    /// The next report or whole payload; `None` at end of file.
    ///
    /// # Errors
    /// A description of a line that breaks the protocol.
    pub(crate) async fn next(&mut self) -> Result<Option<Incoming>, String> {
        loop {
            if let Some(partial) = &mut self.partial {
                if partial.body.len() < partial.want {
                    let buf = self
                        .reader
                        .fill_buf()
                        .await
                        .map_err(|e| format!("read: {e}"))?;
                    if buf.is_empty() {
                        return Ok(None); // end of file inside a payload
                    }
                    let n = buf.len().min(partial.want - partial.body.len());
                    partial.body.extend_from_slice(&buf[..n]);
                    self.reader.consume(n);
                    continue;
                }
            }
            if let Some(Partial { kind, id, body, .. }) = self.partial.take() {
                return Ok(Some(Incoming::Payload { kind, id, body }));
            }
            match next_report(&mut self.reader, &mut self.line).await? {
                Some(Report::Payload { kind, id, bytes }) => {
                    self.partial = Some(Partial {
                        kind,
                        id,
                        want: bytes,
                        // Grown as bytes come: the size is the driver's word.
                        body: Vec::with_capacity(bytes.min(1 << 20)),
                    });
                }
                other => return Ok(other.map(Incoming::Report)),
            }
        }
    }
}

/// The next report line, parsed; `None` at end of file. Cancel-safe: a
/// partial line stays in `line`.
async fn next_report<R: AsyncRead + Unpin>(
    reports: &mut BufReader<R>,
    line: &mut Vec<u8>,
) -> Result<Option<Report>, String> {
    let read = reports
        .read_until(b'\n', line)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if read == 0 && line.is_empty() {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        if line.len() > MAX_REPORT_BYTES {
            return Err("an endless report line".into());
        }
        return Ok(None); // end of file inside a line
    }
    let whole = std::mem::take(line);
    control::parse_report(&whole[..whole.len() - 1]).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn read_all(bytes: &[u8]) -> Vec<Result<Option<Incoming>, String>> {
        let (mut tx, rx) = tokio::io::duplex(7);
        let bytes = bytes.to_vec();
        let writer = tokio::spawn(async move {
            // Small writes: lines and payloads arrive in pieces.
            for chunk in bytes.chunks(3) {
                tx.write_all(chunk).await.unwrap();
            }
        });
        let mut reader = ReportReader::new(rx);
        let mut out = Vec::new();
        loop {
            let next = reader.next().await;
            let end = !matches!(next, Ok(Some(_)));
            out.push(next);
            if end {
                break;
            }
        }
        writer.await.unwrap();
        out
    }

    #[tokio::test]
    async fn payloads_follow_their_line_whole_even_in_pieces() {
        let stream = b"ready\nresult 0000000000000001 13\n{\"data\":{}}\n\ncell_error 0000000000000001 2\n{}done 0000000000000001 0\n";
        let got = read_all(stream).await;
        assert_eq!(
            got,
            vec![
                Ok(Some(Incoming::Report(Report::Ready))),
                Ok(Some(Incoming::Payload {
                    kind: PayloadKind::Result,
                    id: 1,
                    body: b"{\"data\":{}}\n\n".to_vec()
                })),
                Ok(Some(Incoming::Payload {
                    kind: PayloadKind::CellError,
                    id: 1,
                    body: b"{}".to_vec()
                })),
                Ok(Some(Incoming::Report(Report::Done {
                    id: 1,
                    exit_code: 0
                }))),
                Ok(None),
            ]
        );
    }

    #[tokio::test]
    async fn a_payload_cut_by_the_end_of_file_is_the_end() {
        let got = read_all(b"result 0000000000000001 10\n{\"da").await;
        assert_eq!(got, vec![Ok(None)]);
    }

    #[tokio::test]
    async fn a_bad_line_after_a_payload_is_a_violation() {
        let got = read_all(b"result 0000000000000001 2\n{}bogus\n").await;
        assert!(matches!(got[0], Ok(Some(Incoming::Payload { .. }))));
        assert!(got[1].is_err(), "{got:?}");
    }
}
