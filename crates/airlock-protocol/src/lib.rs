//! The host <-> guest protocol of Airlock: typed messages, their framing and a
//! host-side client.
//!
//! This crate sits at the bottom of the layers. The guest agent
//! (`airlock-agent`) serves it inside the VM and the orchestrator (`airlock`)
//! speaks it from the host; nothing here knows about QEMU, images or VMs.
//!
//! - [`message`]: requests (tagged by `action`) and events (tagged by `type`),
//!   each carrying an operation id so several operations can be in flight.
//! - [`framing`]: newline-delimited JSON with a hard line limit. A malformed,
//!   oversized or unknown line yields a typed [`ProtocolError`] and the stream
//!   stays usable for the next line.
//! - [`result`]: the rich results of a cell (MIME bundles) and its
//!   uncaught exception.
//! - [`env_policy`]: [`check_env`], which environment variables user code
//!   may be given; the host checks before it boots, the agent before it
//!   spawns.
//! - [`abi`]: the guest ABI, every name host and guest must spell the
//!   same (disk serials, port names, kernel arguments, guest paths), used
//!   by `airlock-qemu`, `airlock-init`, the agent and the orchestrator.
//! - [`client`]: the host side: one reader task dispatching events to the
//!   operation that awaits them.
//!
//! It does not choose transports: anything that is `AsyncRead`/`AsyncWrite`
//! works (virtio-serial ports in the guest, unix sockets on the host, pipes in
//! tests).
//!
//! ```
//! use airlock_protocol::{decode_request, encode_line, Request, RequestBody};
//!
//! let line = encode_line(&Request::new(7, RequestBody::Ping)).unwrap();
//! assert_eq!(line, b"{\"op\":7,\"action\":\"ping\"}\n");
//! let back = decode_request(&line[..line.len() - 1]).unwrap();
//! assert_eq!(back.op, 7);
//! ```

pub mod abi;
pub mod client;
mod data;
pub mod env_policy;
mod error;
pub mod framing;
pub mod message;
pub mod result;

pub use data::Data;
pub use env_policy::check_env;
pub use error::ProtocolError;
pub use framing::{
    decode_event, decode_request, encode_line, encode_line_within, FrameDecoder, FrameReader,
    FrameWriter, DEFAULT_MAX_LINE_BYTES,
};
pub use message::*;
pub use result::{is_binary_mime, CellError, ExecResult, MimeBundle};

/// Version of the wire protocol. The agent reports it in `pong`; a host
/// refuses an agent whose protocol differs ([`check_protocol`]).
///
/// 2: `reseed` / `reseeded` (after a restore from a memory template).
/// 3: exec `mode` (`cell`: the persistent interpreter), `state_lost` in
/// `complete`, `cancel`.
/// 4: `result` (MIME bundles) and `cell_error` events of cells and
/// one-shot runs.
pub const PROTOCOL_VERSION: u32 = 5;

/// The operation of the agent's hello: a `pong` the agent sends unasked
/// each time its channel opens. A ping the host sends before the guest has
/// opened its port is lost, so waiting for the hello, not only pinging,
/// tells the host at once that the agent is there.
pub const HELLO_OP: message::OpId = 0;

/// The marker line appended where a stream's output was cut at `cap_bytes`
/// (`stream` is `stdout` or `stderr`): the agent adds it at its cap, the
/// client at its own.
pub fn truncation_marker(stream: &str, cap_bytes: u64) -> String {
    format!("\n[airlock: {stream} truncated after {cap_bytes} bytes]\n")
}

/// Checks the protocol version a `pong` reported against ours.
///
/// # Errors
/// [`ProtocolError::VersionMismatch`] when they differ.
pub fn check_protocol(agent_version: &str, agent_protocol: u32) -> Result<(), ProtocolError> {
    if agent_protocol == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(ProtocolError::VersionMismatch {
            host: PROTOCOL_VERSION,
            guest: agent_protocol,
            agent_version: agent_version.to_owned(),
        })
    }
}
