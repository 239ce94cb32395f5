//! The file operations: a file written atomically in the sandbox home, a
//! file read back, a directory listed; both sides' sha256 checked.

use super::channel::{next, unexpected, within};
use super::handle::Client;
use crate::message::{EventBody, FileEntry, Request, RequestBody};
use crate::{Data, ProtocolError};
use airlock_sys_util::sha256_hex;
use bytes::{Bytes, BytesMut};
use std::time::Duration;

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
        let (op, mut rx) = self
            .channel
            .open(RequestBody::WriteFile {
                path: path.to_owned(),
                mode,
                size: Some(content.len() as u64),
            })
            .await?;
        let result = within(timeout, "write_file", async {
            match next(&mut rx).await? {
                EventBody::FileAck { .. } => {}
                other => return Err(unexpected("write_file", other)),
            }
            for chunk in content.chunks(FILE_CHUNK_BYTES) {
                let body = RequestBody::FileChunk {
                    data: Data::base64(Bytes::copy_from_slice(chunk)),
                };
                self.channel.send(&Request::new(op, body)).await?;
            }
            self.channel.send(&Request::new(op, RequestBody::FileEnd)).await?;
            match next(&mut rx).await? {
                EventBody::FileAck {
                    size,
                    sha256: Some(sha256),
                } => {
                    let ours = sha256_hex(content);
                    if size != content.len() as u64 || sha256 != ours {
                        return Err(ProtocolError::Unexpected {
                            operation: "write_file",
                            event: format!(
                                "checksum mismatch: sent {} bytes ({ours}), guest has {size} ({sha256})",
                                content.len()
                            ),
                        });
                    }
                    Ok(sha256)
                }
                other => Err(unexpected("write_file", other)),
            }
        })
        .await;
        self.channel.close(op);
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
    /// [`ProtocolError::FileTooLarge`] as soon as its chunks pass the
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
        let (op, mut rx) = self
            .channel
            .open(RequestBody::ReadFile {
                path: path.to_owned(),
            })
            .await?;
        let result = within(timeout, "read_file", async {
            let mut data = BytesMut::new();
            loop {
                match next(&mut rx).await? {
                    EventBody::FileData { data: chunk } => {
                        if (data.len() + chunk.as_bytes().len()) as u64 > limit {
                            return Err(ProtocolError::FileTooLarge {
                                path: path.to_owned(),
                                limit_bytes: limit,
                            });
                        }
                        data.extend_from_slice(chunk.as_bytes());
                    }
                    EventBody::FileDone { size, sha256 } => {
                        let ours = sha256_hex(&data);
                        if size != data.len() as u64 || sha256 != ours {
                            return Err(ProtocolError::Unexpected {
                                operation: "read_file",
                                event: format!(
                                    "checksum mismatch: got {} bytes ({ours}), guest says {size} ({sha256})",
                                    data.len()
                                ),
                            });
                        }
                        return Ok(FileContent {
                            // No copy: the buffer becomes the Vec.
                            data: Vec::from(data),
                            sha256,
                        });
                    }
                    other => return Err(unexpected("read_file", other)),
                }
            }
        })
        .await;
        self.channel.close(op);
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
