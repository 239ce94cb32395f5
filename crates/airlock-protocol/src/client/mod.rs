//! The host side of the protocol: a [`Client`] over any reader/writer pair.
//!
//! Three layers, each in its own file, each using only the ones below it:
//!
//! - the channel (`channel.rs`): the mux. One reader task routes each event
//!   to the operation that awaits it by op id; one writer task owns the
//!   command stream.
//! - the operations, as methods of [`Client`] (`handle.rs` holds the type):
//!   the agent's hello, ping, warm-up and reseed (`control.rs`), exec,
//!   package installs and cancel (`exec.rs`), file transfers (`files.rs`).
//! - the output caps (`caps.rs`): [`CappedExecOutput`], what keeps an exec's
//!   collected output bounded; [`ClientConfig`] (`config.rs`) holds the caps.
//!
//! One task reads events and routes each to the operation that awaits it (by
//! op id), so several operations run at once over one channel. Requests go
//! through one writer task that owns the command stream: a caller hands it a
//! whole encoded line and waits (with a deadline, [`ClientConfig::send_timeout`])
//! for the answer, so cancelling the caller (a dropped `write_file` future)
//! never cuts a line. A failed write may have cut one: the writer then stops
//! and every later send fails with [`ProtocolError::ChannelBroken`](crate::ProtocolError::ChannelBroken). When the
//! guest closes the channel every pending operation ends with
//! [`ProtocolError::Closed`](crate::ProtocolError::Closed).
//!
//! Memory is bounded on this side too, whatever the guest sends:
//! [`Client::exec_collect`] keeps at most [`ClientConfig::max_stdout_bytes`]
//! and [`ClientConfig::max_stderr_bytes`] (past them the output is cut, the
//! agent's marker line appended, and the completion flags the stream as
//! truncated); a caller reading an [`ExecStream`] itself collects through
//! [`CappedExecOutput`] for the same caps; and [`Client::read_file`] refuses a file over
//! [`ClientConfig::max_read_file_bytes`].
//!
//! Backpressure: each operation buffers a bounded number of events; when an
//! operation's buffer is full the reader waits, which stalls the channel
//! (and, through virtio-serial, the guest's writer) until that operation is
//! read. Read every stream you start, or drop it: a dropped operation's
//! events are discarded.

mod caps;
mod channel;
mod config;
mod control;
mod exec;
mod files;
mod handle;

pub use caps::{CappedExecOutput, ExecOutput};
pub use channel::AgentInfo;
pub use config::ClientConfig;
pub use exec::{ExecEvent, ExecStream};
pub use files::{FileContent, Transferred, FILE_CHUNK_BYTES};
pub use handle::Client;

/// Hex sha256 of bytes (as both sides report it); the one helper of
/// `airlock-sys-util`, named here too for the client's callers.
pub use airlock_sys_util::sha256_hex;
