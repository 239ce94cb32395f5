//! [`SessionError`]: starting a session or one of its calls failed
//! ([`crate::Scheduler::session`], [`crate::Session`]).

use super::boot::BootError;
use super::exec::ExecError;
use super::input::InputError;
use super::packages::PackageError;
use super::pause::PauseError;
use crate::close::CloseReason;

/// Starting a session, or one of its calls (a cell, a file operation),
/// failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The options or the call were refused before anything started.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The session's package layer could not be prepared.
    #[error(transparent)]
    Packages(#[from] PackageError),
    /// The session's VM could not be had.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// A cell or a file operation failed in the VM (the VM died, the
    /// agent failed, a file was refused).
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// Pausing, resuming or forking the session failed.
    #[error(transparent)]
    Pause(#[from] PauseError),
    /// The session already runs a call: one call at a time, a second one
    /// is refused at once, never queued.
    #[error("session {session_id} is busy: it runs one call at a time")]
    Busy {
        /// The session.
        session_id: String,
    },
    /// The session has ended (closed, idle too long, past its lifetime, or
    /// its VM died): every call is refused.
    #[error("session {session_id} is closed: {reason}")]
    Closed {
        /// The session.
        session_id: String,
        /// Why it ended.
        reason: CloseReason,
    },
}

impl SessionError {
    /// A one-line hint for the user, shown by the CLI under the error.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Input(e) => e.hint(),
            Self::Packages(e) => e.hint(),
            Self::Boot(e) => e.hint(),
            Self::Exec(e) => e.hint(),
            Self::Pause(e) => e.hint(),
            Self::Busy { .. } => Some(
                "wait for the running call to end, or interrupt it with the session's canceller",
            ),
            Self::Closed { .. } => Some("start a new session"),
        }
    }

    /// The request's fault, when it was refused before anything started
    /// (a package spec too, found while the layer was prepared).
    pub fn input(&self) -> Option<&InputError> {
        match self {
            Self::Input(e) | Self::Packages(PackageError::Input(e)) => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_or_closed_session_says_what_to_do() {
        let busy = SessionError::Busy {
            session_id: "s-1".into(),
        };
        assert_eq!(
            busy.to_string(),
            "session s-1 is busy: it runs one call at a time"
        );
        assert!(busy.hint().is_some_and(|h| h.contains("canceller")));
        let closed = SessionError::Closed {
            session_id: "s-1".into(),
            reason: CloseReason::IdleTimeout,
        };
        assert!(closed.to_string().contains("idle"), "{closed}");
        assert_eq!(closed.hint(), Some("start a new session"));
    }

    #[test]
    fn a_refused_option_is_the_sessions_input_error_with_its_hint() {
        let err = SessionError::from(InputError::invalid("cpus", "0"));
        assert_eq!(err.input().map(InputError::field), Some("cpus"));
        assert_eq!(err.hint(), Some("see `airlock run --help`"));
    }
}
