//! The file operations: a file written atomically in the sandbox home, a
//! file read back, a directory listed; both sides' sha256 checked.
//!
//! Transfers are streamed: an upload is read from its source a chunk at a
//! time and a download written to its destination as its chunks arrive,
//! so the host holds one chunk of a file, whatever its size
//! ([`Client::write_file_from`], [`Client::read_file_into`]); the
//! whole-buffer calls are built on them. A transfer given up half way
//! (an error, a cap passed, its future dropped) is cancelled in the guest:
//! a partial upload never appears under its name.

use super::channel::{guest_error, next, unexpected, within, Channel};
use super::handle::Client;
use crate::message::{EventBody, FileEntry, OpId, Request, RequestBody};
use crate::{Data, ProtocolError};
use airlock_sys_util::Sha256Hex;
use bytes::Bytes;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc::error::TryRecvError;

/// Size of the chunks a file is sent in.
pub const FILE_CHUNK_BYTES: usize = 256 * 1024;

/// A file read back from the guest, its checksum verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContent {
    /// The bytes.
    pub data: Vec<u8>,
    /// Hex sha256, as computed by both sides.
    pub sha256: String,
}

/// What a streamed transfer moved, as both sides counted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transferred {
    /// Bytes moved.
    pub size: u64,
    /// Hex sha256 of the content, the same on both sides.
    pub sha256: String,
}

/// An open transfer's operation: closed when dropped, and cancelled in
/// the guest too unless it finished (so a write given up half way leaves
/// no file and a read stops sending).
struct TransferOp<'a> {
    channel: &'a Channel,
    op: OpId,
    finished: bool,
}

impl Drop for TransferOp<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let cancel = RequestBody::Cancel { target: self.op };
            let id = self.channel.new_op();
            if !self.channel.send_nowait(&Request::new(id, cancel)) {
                tracing::debug!(op = self.op, "cancel of an abandoned transfer not sent");
            }
        }
        self.channel.close(self.op);
    }
}

fn checksum_mismatch(
    operation: &'static str,
    ours: &Transferred,
    size: u64,
    sha256: &str,
) -> ProtocolError {
    ProtocolError::Unexpected {
        operation,
        event: format!(
            "checksum mismatch: this side has {} bytes ({}), the guest {size} ({sha256})",
            ours.size, ours.sha256
        ),
    }
}

/// Reads from `source` until `chunk` is full or the source ends; how
/// many bytes it holds (0: the source had ended).
async fn fill<R>(source: &mut R, chunk: &mut [u8]) -> std::io::Result<usize>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut filled = 0;
    while filled < chunk.len() {
        let n = source.read(&mut chunk[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

impl Client {
    /// Writes a file in the sandbox home, atomically: it appears under its
    /// name only once complete. Returns the guest's sha256 after checking it
    /// against ours.
    ///
    /// # Errors
    /// [`ProtocolError::Guest`] for a refused path or a full disk,
    /// [`ProtocolError::Timeout`], [`ProtocolError::Closed`].
    pub async fn write_file(
        &self,
        path: &str,
        mode: u32,
        content: &[u8],
        timeout: Duration,
    ) -> Result<String, ProtocolError> {
        let size = content.len() as u64;
        let mut source = content;
        let written = self
            .write_file_from(path, mode, Some(size), &mut source, size, timeout)
            .await?;
        Ok(written.sha256)
    }

    /// Writes a file in the sandbox home from `source`, read a chunk at a
    /// time until its end, atomically (it appears under its name only once
    /// complete, checked by sha256 on both sides). `size`, when known, is
    /// announced and checked by the guest; more than `limit_bytes` from the
    /// source fails as soon as it passes the cap. A guest error (a full
    /// disk) ends the transfer when it comes, not at the end.
    ///
    /// # Errors
    /// [`ProtocolError::FileTooLarge`] past `limit_bytes`,
    /// [`ProtocolError::HostStream`] when `source` fails,
    /// [`ProtocolError::Guest`] for a refused path or a full disk,
    /// [`ProtocolError::Timeout`] past `timeout` (the whole transfer),
    /// [`ProtocolError::Closed`].
    pub async fn write_file_from<R>(
        &self,
        path: &str,
        mode: u32,
        size: Option<u64>,
        source: &mut R,
        limit_bytes: u64,
        timeout: Duration,
    ) -> Result<Transferred, ProtocolError>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        if size.is_some_and(|size| size > limit_bytes) {
            return Err(ProtocolError::FileTooLarge {
                path: path.to_owned(),
                limit_bytes,
            });
        }
        let (op, mut rx) = self
            .channel
            .open(RequestBody::WriteFile {
                path: path.to_owned(),
                mode,
                size,
            })
            .await?;
        let mut transfer = TransferOp {
            channel: &self.channel,
            op,
            finished: false,
        };
        let result = within(timeout, "write_file", async {
            match next(&mut rx).await? {
                EventBody::FileAck { .. } => {}
                other => return Err(unexpected("write_file", other)),
            }
            let mut digest = Sha256Hex::new();
            let mut chunk = vec![0u8; FILE_CHUNK_BYTES];
            loop {
                let filled =
                    fill(source, &mut chunk)
                        .await
                        .map_err(|source| ProtocolError::HostStream {
                            path: path.to_owned(),
                            action: "read the source",
                            source,
                        })?;
                if digest.bytes() + filled as u64 > limit_bytes {
                    return Err(ProtocolError::FileTooLarge {
                        path: path.to_owned(),
                        limit_bytes,
                    });
                }
                if filled == 0 {
                    break;
                }
                // The guest says nothing until the end unless the write
                // failed (a full disk): stop sending then.
                match rx.try_recv() {
                    Err(TryRecvError::Empty) => {}
                    Ok(event) => {
                        return Err(match guest_error(event) {
                            Err(guest) => guest,
                            Ok(other) => unexpected("write_file", other),
                        })
                    }
                    Err(TryRecvError::Disconnected) => return Err(ProtocolError::Closed),
                }
                digest.update(&chunk[..filled]);
                let body = RequestBody::FileChunk {
                    data: Data::base64(Bytes::copy_from_slice(&chunk[..filled])),
                };
                self.channel.send(&Request::new(op, body)).await?;
                if filled < chunk.len() {
                    break; // the source ended inside this chunk
                }
            }
            self.channel
                .send(&Request::new(op, RequestBody::FileEnd))
                .await?;
            let ours = {
                let (size, sha256) = digest.finish();
                Transferred { size, sha256 }
            };
            match next(&mut rx).await? {
                EventBody::FileAck {
                    size,
                    sha256: Some(sha256),
                } => {
                    if size != ours.size || sha256 != ours.sha256 {
                        return Err(checksum_mismatch("write_file", &ours, size, &sha256));
                    }
                    Ok(ours)
                }
                other => Err(unexpected("write_file", other)),
            }
        })
        .await;
        // Answered (either way): nothing is left to cancel in the guest.
        transfer.finished = matches!(
            result,
            Ok(_) | Err(ProtocolError::Guest { .. } | ProtocolError::Unexpected { .. })
        );
        result
    }

    /// Reads a file from the sandbox home into memory (at most
    /// [`ClientConfig::max_read_file_bytes`](super::ClientConfig::max_read_file_bytes)) and checks its sha256.
    ///
    /// # Errors
    /// [`ProtocolError::Guest`] (not found, refused path),
    /// [`ProtocolError::FileTooLarge`] (naming the path) past the limit,
    /// [`ProtocolError::Timeout`], [`ProtocolError::Closed`], or
    /// [`ProtocolError::Unexpected`] on a checksum mismatch.
    pub async fn read_file(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<FileContent, ProtocolError> {
        self.read_file_at_most(path, self.config.max_read_file_bytes, timeout)
            .await
    }

    /// As [`Client::read_file`], with at most `limit_bytes` held (the
    /// lower of it and the client's own limit): a larger file fails with
    /// [`ProtocolError::FileTooLarge`] before any of it is read when the
    /// guest announces its size, else as soon as its chunks pass the
    /// limit, so memory never holds more than the limit.
    ///
    /// # Errors
    /// As [`Client::read_file`].
    pub async fn read_file_at_most(
        &self,
        path: &str,
        limit_bytes: u64,
        timeout: Duration,
    ) -> Result<FileContent, ProtocolError> {
        let limit = limit_bytes.min(self.config.max_read_file_bytes);
        let mut data = Vec::new();
        let read = self.read_file_into(path, limit, &mut data, timeout).await?;
        Ok(FileContent {
            data,
            sha256: read.sha256,
        })
    }

    /// Reads a file of the sandbox home into `sink`, each chunk written as
    /// it arrives (the host holds one chunk), and checks its sha256 at the
    /// end. A file over `limit_bytes` fails before any of it is written
    /// when the guest announces its size (it does when it opens the file),
    /// else as soon as it passes the cap. On any error, what `sink` got is
    /// not the file: a caller streaming it on must not present it as one
    /// (cut the response).
    ///
    /// # Errors
    /// As [`Client::read_file`], and [`ProtocolError::HostStream`] when
    /// `sink` fails (the guest stops sending).
    pub async fn read_file_into<W>(
        &self,
        path: &str,
        limit_bytes: u64,
        sink: &mut W,
        timeout: Duration,
    ) -> Result<Transferred, ProtocolError>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let (op, mut rx) = self
            .channel
            .open(RequestBody::ReadFile {
                path: path.to_owned(),
            })
            .await?;
        let mut transfer = TransferOp {
            channel: &self.channel,
            op,
            finished: false,
        };
        let too_large = || ProtocolError::FileTooLarge {
            path: path.to_owned(),
            limit_bytes,
        };
        let sink_failed = |source| ProtocolError::HostStream {
            path: path.to_owned(),
            action: "write the destination",
            source,
        };
        let result = within(timeout, "read_file", async {
            let mut digest = Sha256Hex::new();
            loop {
                match next(&mut rx).await? {
                    EventBody::FileData { data, size } => {
                        let chunk = data.as_bytes();
                        if size.is_some_and(|size| size > limit_bytes)
                            || digest.bytes() + chunk.len() as u64 > limit_bytes
                        {
                            return Err(too_large());
                        }
                        digest.update(chunk);
                        sink.write_all(chunk).await.map_err(sink_failed)?;
                    }
                    EventBody::FileDone { size, sha256 } => {
                        transfer.finished = true;
                        let ours = {
                            let (size, sha256) = digest.finish();
                            Transferred { size, sha256 }
                        };
                        if size != ours.size || sha256 != ours.sha256 {
                            return Err(checksum_mismatch("read_file", &ours, size, &sha256));
                        }
                        sink.flush().await.map_err(sink_failed)?;
                        return Ok(ours);
                    }
                    other => {
                        transfer.finished = true;
                        return Err(unexpected("read_file", other));
                    }
                }
            }
        })
        .await;
        drop(transfer);
        result
    }

    /// Lists a directory of the sandbox home.
    ///
    /// # Errors
    /// As [`Client::read_file`].
    pub async fn list_files(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<Vec<FileEntry>, ProtocolError> {
        let (op, mut rx) = self
            .channel
            .open(RequestBody::ListFiles {
                path: path.to_owned(),
            })
            .await?;
        let answer = within(timeout, "list_files", next(&mut rx)).await;
        self.channel.close(op);
        match answer? {
            EventBody::FileList { entries } => Ok(entries),
            other => Err(unexpected("list_files", other)),
        }
    }
}
