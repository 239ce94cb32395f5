//! The [`Client`](super::Client) type: one [`Channel`] and the client's limits. Its
//! operations are methods defined beside their kind: `control.rs`,
//! `exec.rs`, `files.rs`.

use super::channel::Channel;
use super::config::ClientConfig;
use crate::ProtocolError;
use tokio::io::{AsyncRead, AsyncWrite};

/// Host-side protocol client. Cheap to share behind an `Arc`.
pub struct Client {
    pub(super) channel: Channel,
    pub(super) config: ClientConfig,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client reading events from `reader` and writing requests to
    /// `writer`, with the default [`ClientConfig`]. Must be called inside a
    /// tokio runtime.
    pub fn new<R, W>(reader: R, writer: W) -> Self
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        Self::start(reader, writer, ClientConfig::default())
    }

    /// As [`Client::new`](super::Client::new), with `config`.
    ///
    /// # Errors
    /// [`ProtocolError::Config`] for a value out of range.
    pub fn with_config<R, W>(
        reader: R,
        writer: W,
        config: ClientConfig,
    ) -> Result<Self, ProtocolError>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        config.validate()?;
        Ok(Self::start(reader, writer, config))
    }

    fn start<R, W>(reader: R, writer: W, config: ClientConfig) -> Self
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        Self {
            channel: Channel::start(reader, writer, &config),
            config,
        }
    }

    /// The client's limits.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Whether the event stream has ended (the guest is gone).
    pub fn is_closed(&self) -> bool {
        self.channel.is_closed()
    }

    /// Whether an earlier write failed: every send now fails.
    pub fn is_broken(&self) -> bool {
        self.channel.is_broken()
    }
}
