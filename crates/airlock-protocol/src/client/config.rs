//! The client's limits: output caps, the largest file read, the send
//! deadline and the longest line.

use crate::framing::DEFAULT_MAX_LINE_BYTES;
use crate::ProtocolError;
use std::time::Duration;

/// The client's limits. Build it, [`ClientConfig::validate`](super::ClientConfig::validate) it (done by
/// [`Client::with_config`](super::Client::with_config)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Standard output kept by [`Client::exec_collect`](super::Client::exec_collect) and
    /// [`CappedExecOutput`](super::CappedExecOutput) (default 8 MiB,
    /// twice the agent's default cap: it bites only on an agent that
    /// ignores its own).
    pub max_stdout_bytes: u64,
    /// Standard error kept by [`Client::exec_collect`](super::Client::exec_collect) and
    /// [`CappedExecOutput`](super::CappedExecOutput) (default 8 MiB).
    pub max_stderr_bytes: u64,
    /// Largest file [`Client::read_file`](super::Client::read_file) reads into memory (default
    /// 128 MiB).
    pub max_read_file_bytes: u64,
    /// Deadline of each line sent (default 30 s): a guest that stops reading
    /// its command port cannot hang a caller.
    pub send_timeout: Duration,
    /// Longest line sent (default [`DEFAULT_MAX_LINE_BYTES`]).
    pub max_line_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_stdout_bytes: 8 * 1024 * 1024,
            max_stderr_bytes: 8 * 1024 * 1024,
            max_read_file_bytes: 128 * 1024 * 1024,
            send_timeout: Duration::from_secs(30),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        }
    }
}

impl ClientConfig {
    /// Checks every value.
    ///
    /// # Errors
    /// [`ProtocolError::Config`] naming the value.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        for (name, value) in [
            ("max_stdout_bytes", self.max_stdout_bytes),
            ("max_stderr_bytes", self.max_stderr_bytes),
            ("max_read_file_bytes", self.max_read_file_bytes),
            ("max_line_bytes", self.max_line_bytes as u64),
        ] {
            if value == 0 {
                return Err(ProtocolError::Config(format!("{name} must be at least 1")));
            }
        }
        if self.send_timeout.is_zero() {
            return Err(ProtocolError::Config(
                "send_timeout must be above zero".into(),
            ));
        }
        Ok(())
    }
}
