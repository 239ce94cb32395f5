//! `airlock-agent`: the program inside each Airlock VM that runs code and
//! moves files, serving the host's requests over the protocol of
//! [`airlock_protocol`].
//!
//! It sits at the bottom of the layers, in the guest: the orchestrator talks
//! to it through the protocol crate's client; of the rest of Airlock it uses
//! only `airlock-sys-util` (process groups, exit statuses), without its
//! tokio feature. It does not boot anything or mount anything
//! (`airlock-init` does; the one exception is sealing the package layer
//! read-only after an install), or decide policy for the host (limits come
//! from its flags).
//!
//! - [`serve`] answers requests from any `AsyncRead`/`AsyncWrite` pair:
//!   virtio-serial ports in the guest ([`ports`]), unix sockets or in-memory
//!   pipes in tests. Several operations run at once.
//! - [`exec`]: user code as the unprivileged sandbox user, in its own process
//!   group and cgroup ([`exec_cgroup`]: nothing it starts outlives it), with a clean environment ([`env_policy`]), streamed and capped
//!   output ([`output`]), a deadline (TERM, then KILL).
//! - File transfer (`files`): atomic chunked writes, chunked reads, listings,
//!   every path checked ([`rel_path`]) and opened beneath the home
//!   (`openat2(RESOLVE_BENEATH)`).
//! - [`packages`]: the package layer on `/opt` (on `PYTHONPATH` and
//!   `NODE_PATH` when present; installed into and sealed read-only in the
//!   install VM).
//! - [`reaper`]: zombie reaping when the agent is PID 1.
//! - [`repl`]: persistent interpreters (one per language) running the
//!   cells of `exec` with `mode: cell`, nothing spawned per cell, with
//!   boundaries and exit codes on a control pipe, never in the output.
//! - `reseed`: after a restore from a memory template, host entropy into
//!   the kernel's pool and the host's wall clock; running interpreters
//!   reseeded.
//!
//! ```no_run
//! use airlock_agent::{serve, AgentConfig, RunAs};
//! use std::sync::Arc;
//!
//! # async fn demo() -> Result<(), airlock_agent::AgentError> {
//! let config = AgentConfig {
//!     home: "/home/sandbox".into(),
//!     run_as: Some(RunAs::SANDBOX),
//!     ..AgentConfig::default()
//! };
//! let (cmd, event) = (tokio::io::empty(), tokio::io::sink());
//! serve(cmd, event, Arc::new(config)).await
//! # }
//! ```

mod config;
pub mod env_policy;
mod error;
pub mod exec;
pub mod exec_cgroup;
mod files;
mod home;
pub mod output;
pub mod packages;
pub mod ports;
pub mod reaper;
pub mod rel_path;
pub mod repl;
mod reseed;
mod server;
mod sys;
pub use sys::protect_from_oom_killer;

pub use config::{AgentConfig, RunAs};
pub use error::AgentError;
pub use home::prepare_home;
pub use repl::Repls;
pub use server::{serve, serve_with, AGENT_VERSION};

/// The line the agent prints on stderr (the guest console) once ready.
pub fn ready_line() -> String {
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or_else(String::new, |secs| {
            format!(" at {:.0} ms since boot", secs * 1000.0)
        });
    format!(
        "airlock-agent {AGENT_VERSION} ready (protocol {}){uptime}",
        airlock_protocol::PROTOCOL_VERSION
    )
}
