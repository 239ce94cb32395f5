//! Why a session ended: a low module, so that errors can name the reason
//! without importing sessions.

use serde::Serialize;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// [`crate::Session::close`] was called.
    Closed,
    /// No call for its idle timeout.
    IdleTimeout,
    /// Its maximum lifetime passed.
    MaxLifetime,
    /// Its VM died.
    VmDied,
    /// It was paused to disk ([`crate::Session::pause`]); resume it by id
    /// ([`crate::Scheduler::resume`]).
    Paused,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloseReason::Closed => "it was closed",
            CloseReason::IdleTimeout => "it was idle for longer than its idle timeout",
            CloseReason::MaxLifetime => "it reached its maximum lifetime",
            CloseReason::VmDied => "its VM died",
            CloseReason::Paused => "it was paused to disk (resume it by its id)",
        })
    }
}
