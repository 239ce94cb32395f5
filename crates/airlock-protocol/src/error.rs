//! The crate's error type.

use crate::message::{ErrorKind, OpId};
use std::time::Duration;

/// Everything that can go wrong while speaking the protocol.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A line was longer than the limit; it was discarded up to its newline.
    #[error("line longer than the limit of {limit} bytes: discarded")]
    LineTooLong {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// A line was not valid UTF-8.
    #[error("line is not valid UTF-8 (at byte {valid_up_to})")]
    InvalidUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// A line was not a valid message.
    #[error("malformed message: {message}")]
    BadJson {
        /// The operation id, when the line had a readable one.
        op: Option<OpId>,
        /// What the JSON parser said.
        message: String,
    },
    /// A line named an action (or event type) this side does not know.
    #[error("unknown {field} {value:?}")]
    UnknownTag {
        /// `action` for requests, `type` for events.
        field: &'static str,
        /// The unknown value.
        value: String,
        /// The operation id, when the line had a readable one.
        op: Option<OpId>,
    },
    /// A message could not be encoded (or its line would exceed the limit).
    #[error("cannot encode message: {message}")]
    Encode {
        /// What went wrong.
        message: String,
    },
    /// The agent speaks another protocol version.
    #[error(
        "guest agent {agent_version} speaks protocol {guest}, this host speaks {host}: \
         rebuild the guest images (`cargo xtask images`)"
    )]
    VersionMismatch {
        /// Our protocol version.
        host: u32,
        /// The agent's protocol version.
        guest: u32,
        /// The agent's own version string.
        agent_version: String,
    },
    /// Reading or writing the transport failed.
    #[error("transport: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the stream.
    #[error("the guest closed the channel")]
    Closed,
    /// An operation did not finish in time.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// The operation.
        what: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// An environment variable is refused by the policy
    /// ([`crate::check_env`]).
    #[error("environment variable {name:?} refused: {reason}")]
    EnvRefused {
        /// The variable's name (cut to 64 characters).
        name: String,
        /// Why it is refused.
        reason: String,
    },
    /// A file read from the guest is larger than the client may hold in
    /// memory ([`crate::client::ClientConfig::max_read_file_bytes`]), or a
    /// streamed transfer passed the caller's cap.
    #[error(
        "file {path:?} is larger than the limit of {limit_bytes} bytes: move a smaller file, \
         or raise the limit (ClientConfig::max_read_file_bytes for a read into memory, \
         the caller's own cap for a streamed transfer)"
    )]
    FileTooLarge {
        /// The path in the sandbox home.
        path: String,
        /// The limit.
        limit_bytes: u64,
    },
    /// A streamed file transfer failed on the host's side: the source of
    /// an upload could not be read, or the destination of a download
    /// could not be written (a client that went away). The guest's side
    /// of the transfer was abandoned, and a partial upload never appears.
    #[error("the host side of the transfer of {path:?} failed to {action}: {source}")]
    HostStream {
        /// The path in the sandbox home.
        path: String,
        /// `read the source` or `write the destination`.
        action: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The command channel failed during an earlier send (a line may have
    /// been cut): every later send fails.
    #[error("the command channel is broken ({reason}): start a new client")]
    ChannelBroken {
        /// The first failure.
        reason: String,
    },
    /// A client configuration value is out of range.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The guest answered an operation with an error event.
    #[error("guest error ({kind:?}): {message}")]
    Guest {
        /// The guest's error kind.
        kind: ErrorKind,
        /// The guest's message.
        message: String,
    },
    /// The guest answered with an event that does not fit the operation.
    #[error("unexpected event for {operation}: {event}")]
    Unexpected {
        /// The operation in progress.
        operation: &'static str,
        /// The event's type.
        event: String,
    },
}

impl ProtocolError {
    /// The operation id the failing line carried, if any: an agent answers
    /// the error on that operation.
    pub fn op(&self) -> Option<OpId> {
        match self {
            Self::BadJson { op, .. } | Self::UnknownTag { op, .. } => *op,
            _ => None,
        }
    }

    /// The [`ErrorKind`] an agent reports for this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::LineTooLong { .. } => ErrorKind::TooLarge,
            Self::InvalidUtf8 { .. } | Self::BadJson { .. } => ErrorKind::Malformed,
            Self::UnknownTag { .. } => ErrorKind::UnknownAction,
            Self::VersionMismatch { .. } => ErrorKind::Unsupported,
            Self::Timeout { .. } => ErrorKind::Timeout,
            Self::EnvRefused { .. } => ErrorKind::EnvRefused,
            Self::FileTooLarge { .. } => ErrorKind::LimitExceeded,
            Self::Config(_) => ErrorKind::InvalidRequest,
            Self::Guest { kind, .. } => *kind,
            _ => ErrorKind::Internal,
        }
    }
}
