//! [`PauseError`]: pausing a session to disk, resuming it, forking it.

use airlock_sys_util::IoError;

/// Why a session could not be paused, resumed or forked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PauseError {
    /// The session holds something a saved machine cannot carry (a
    /// network, a host folder) or its VM is not a QEMU machine; nothing
    /// was changed.
    #[error("session {session_id} cannot be paused or forked: {reason}")]
    NotPausable {
        /// The session.
        session_id: String,
        /// What stops it.
        reason: String,
    },
    /// No paused session has this id (never paused, resumed already,
    /// expired or discarded).
    #[error("no paused session {session_id}")]
    NotFound {
        /// The id asked for.
        session_id: String,
    },
    /// The paused session was saved by another machine than this host
    /// starts now (QEMU, accelerator, kernel, root disk, agent or device
    /// set changed): its state cannot be loaded.
    #[error("paused session {session_id} cannot be resumed on this host: {reason}")]
    Incompatible {
        /// The paused session.
        session_id: String,
        /// What differs.
        reason: String,
    },
    /// The saved state would take the tenant past its paused storage
    /// quota; the session runs on unchanged.
    #[error("pausing session {session_id} needs {needed_bytes} bytes; tenant {tenant} may keep {quota_bytes} bytes of paused sessions and holds {used_bytes}")]
    QuotaExceeded {
        /// The session.
        session_id: String,
        /// Its tenant.
        tenant: String,
        /// What the saved session takes.
        needed_bytes: u64,
        /// What the tenant's paused sessions take already.
        used_bytes: u64,
        /// The tenant's quota.
        quota_bytes: u64,
    },
    /// A fork needs more VM slots than are free
    /// ([`crate::Config::max_concurrent_vms`]); nothing was saved.
    #[error(
        "forking session {session_id} into {needed} needs {needed} free VM slots; {free} are free"
    )]
    NoSlots {
        /// The session.
        session_id: String,
        /// The children asked for.
        needed: usize,
        /// Free slots when asked.
        free: usize,
    },
    /// A fork count outside 1..=[`crate::pause::MAX_FORKS`].
    #[error("fork count {count} is outside 1..={max}")]
    InvalidCount {
        /// The count asked for.
        count: usize,
        /// The largest accepted.
        max: usize,
    },
    /// Saving or loading the machine failed in QEMU.
    #[error("session {session_id}: {action}: {source}")]
    Qemu {
        /// The session.
        session_id: String,
        /// The step.
        action: &'static str,
        /// QEMU's error.
        #[source]
        source: Box<airlock_qemu::QemuError>,
    },
    /// Copying the workspace disk failed.
    #[error("session {session_id}: save its workspace disk: {reason}")]
    Disk {
        /// The session.
        session_id: String,
        /// `qemu-img`'s complaint.
        reason: String,
    },
    /// A paused session's metadata cannot be read.
    #[error("paused session at {path}: {reason}")]
    Corrupt {
        /// Its metadata file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file-system step failed.
    #[error(transparent)]
    Io(#[from] IoError),
}

impl PauseError {
    /// A one-line hint for the user.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::NotPausable { .. } => Some(
                "only sessions without a network and without host folders can be paused or forked (docs/persistence.md)",
            ),
            Self::NotFound { .. } => Some("list the paused sessions; they expire after 7 days by default"),
            Self::Incompatible { .. } => Some(
                "the host's QEMU or images changed since the pause: start a new session",
            ),
            Self::QuotaExceeded { .. } => Some("resume or delete paused sessions of the tenant first"),
            Self::InvalidCount { .. } => Some("ask for 1 to 8 forks"),
            Self::NoSlots { .. } => Some("close sessions or raise max_concurrent_vms, then fork again"),
            Self::Qemu { .. } | Self::Disk { .. } | Self::Io(_) => {
                Some("check free disk space in the cache dir; the session is unchanged when a pause fails before its VM is gone")
            }
            Self::Corrupt { .. } => Some("delete the paused session"),
        }
    }

    /// Whether the caller asked for something refused (400/404/409 in a
    /// server), rather than a host failure.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::NotPausable { .. }
                | Self::NotFound { .. }
                | Self::Incompatible { .. }
                | Self::QuotaExceeded { .. }
                | Self::InvalidCount { .. }
                | Self::NoSlots { .. }
        )
    }

    /// A [`PauseError::Qemu`] maker for `action`.
    pub(crate) fn qemu(
        session_id: &str,
        action: &'static str,
    ) -> impl FnOnce(airlock_qemu::QemuError) -> Self {
        let session_id = session_id.to_owned();
        move |source| Self::Qemu {
            session_id,
            action,
            source: Box::new(source),
        }
    }

    /// A [`PauseError::Io`] for `action` on `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<std::path::PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::Io(IoError::new(action, path, source))
    }
}
