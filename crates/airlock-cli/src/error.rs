//! The command's error: what the command line itself refuses or fails at
//! (arguments, stdin, local files), and the orchestrator's and the
//! server's errors it passes on. [`CliError::hint`] is the line printed
//! under it.

use std::path::PathBuf;

/// Everything that can make a subcommand fail.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// An argument was refused before anything started.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The argument at fault (`language`, `code`, `timeout`, ...).
        field: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The code (or the cells) could not be read from standard input.
    #[error("read the code from stdin: {source}")]
    ReadStdin {
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A step on a local file failed (a download written, a code file
    /// read).
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A helper task of the command failed (panicked or was cancelled).
    #[error("{task} failed: {message}")]
    TaskFailed {
        /// What the task was doing.
        task: &'static str,
        /// Why it failed.
        message: String,
    },
    /// The orchestrator's error outside a run or a session (starting it,
    /// the stored artifacts; boxed: it is large, and rare).
    #[error(transparent)]
    Airlock(Box<airlock::Error>),
    /// A request the orchestrator's checks refused.
    #[error(transparent)]
    Input(airlock::InputError),
    /// A boot outside a run or a session (a template build) failed.
    #[error(transparent)]
    Boot(Box<airlock::BootError>),
    /// A run failed.
    #[error(transparent)]
    Run(Box<airlock::RunError>),
    /// A session or one of its calls failed.
    #[error(transparent)]
    Session(Box<airlock::SessionError>),
    /// The server's error (boxed, as the orchestrator's).
    #[error(transparent)]
    Server(Box<airlock_server::ServerError>),
}

impl From<airlock::InputError> for CliError {
    fn from(e: airlock::InputError) -> Self {
        Self::Input(e)
    }
}

macro_rules! from_boxed {
    ($($error:ty => $variant:ident),* $(,)?) => {$(
        impl From<$error> for CliError {
            fn from(e: $error) -> Self {
                Self::$variant(Box::new(e))
            }
        }
    )*};
}

from_boxed! {
    airlock::Error => Airlock,
    airlock::BootError => Boot,
    airlock::RunError => Run,
    airlock::SessionError => Session,
}

impl From<airlock_server::ServerError> for CliError {
    fn from(e: airlock_server::ServerError) -> Self {
        Self::Server(Box::new(e))
    }
}

impl CliError {
    /// An [`CliError::Invalid`] argument.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }

    /// An [`CliError::Io`] error on `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// A one-line hint for the user, printed under the error.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Invalid { .. } => Some("see `airlock run --help`"),
            Self::ReadStdin { .. } => Some("pass the code as an argument or with -c"),
            Self::Io { .. } | Self::TaskFailed { .. } => None,
            Self::Airlock(e) => e.hint(),
            Self::Input(e) => e.hint(),
            Self::Boot(e) => e.hint(),
            Self::Run(e) => e.hint(),
            Self::Session(e) => e.hint(),
            Self::Server(e) => e.hint(),
        }
    }

    /// The session's error, when it is one.
    pub fn session(&self) -> Option<&airlock::SessionError> {
        match self {
            Self::Session(e) => Some(e),
            _ => None,
        }
    }

    /// The orchestrator's refusal of the request, when it is one (a
    /// run's or a session's too).
    pub fn input(&self) -> Option<&airlock::InputError> {
        match self {
            Self::Input(e) => Some(e),
            Self::Run(e) => e.input(),
            Self::Session(e) => e.input(),
            _ => None,
        }
    }

    /// The argument or field refused, when the error is a refusal before
    /// anything started (the command's or the orchestrator's, a package
    /// spec aside).
    pub fn invalid_field(&self) -> Option<&'static str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            _ => match self.input()? {
                airlock::InputError::Invalid { field, .. } => Some(field),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_argument_reads_like_the_orchestrators_and_names_its_field() {
        let own = CliError::invalid("timeout", "0 is not a positive number of seconds");
        assert_eq!(
            own.to_string(),
            "invalid timeout: 0 is not a positive number of seconds"
        );
        assert_eq!(own.invalid_field(), Some("timeout"));
        assert_eq!(own.hint(), Some("see `airlock run --help`"));
        let passed_on = CliError::from(airlock::RunError::from(airlock::InputError::Invalid {
            field: "memory_mib",
            message: "too small".into(),
        }));
        assert_eq!(passed_on.invalid_field(), Some("memory_mib"));
        assert_eq!(passed_on.to_string(), "invalid memory_mib: too small");
    }

    #[test]
    fn a_stdin_failure_hints_at_the_other_ways_to_pass_code() {
        let e = CliError::ReadStdin {
            source: std::io::Error::other("closed"),
        };
        assert_eq!(e.to_string(), "read the code from stdin: closed");
        assert_eq!(e.hint(), Some("pass the code as an argument or with -c"));
        assert_eq!(e.invalid_field(), None);
    }
}
