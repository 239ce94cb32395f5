//! [`InputError`]: a request refused before anything started (the spec,
//! the code, the files, the packages, the CA bundle).

use airlock_sys_util::IoError;

/// A request was refused before any VM started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A field is not acceptable.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The field at fault (`language`, `code`, `memory_mib`, ...).
        field: &'static str,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// A package spec was refused (unpinned, a range, a URL, an option, a
    /// bad name).
    #[error("package {spec:?} refused: {reason}")]
    PackageSpec {
        /// The spec (cut to 80 characters).
        spec: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// A file the request names (the CA bundle) cannot be read.
    #[error("invalid {field}: {source}")]
    Unreadable {
        /// The field naming the file (`ca_bundle`).
        field: &'static str,
        /// The step, the path and the OS error.
        #[source]
        source: IoError,
    },
}

impl InputError {
    /// An [`InputError::Invalid`] for `field`.
    pub(crate) fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            message: message.into(),
        }
    }

    /// The field at fault (`packages` for a refused package spec).
    pub fn field(&self) -> &'static str {
        match self {
            Self::Invalid { field, .. } | Self::Unreadable { field, .. } => field,
            Self::PackageSpec { .. } => "packages",
        }
    }

    /// A one-line hint for the user, shown by the CLI under the error.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Invalid { .. } => Some("see `airlock run --help`"),
            Self::PackageSpec { .. } => Some(
                "pin every package exactly: pip name==version, npm name@version; see docs/packages.md",
            ),
            Self::Unreadable { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_field_is_named_with_what_is_accepted() {
        let err = InputError::invalid("memory_mib", "must be 128..=8192");
        assert_eq!(err.to_string(), "invalid memory_mib: must be 128..=8192");
        assert_eq!(err.field(), "memory_mib");
        assert_eq!(err.hint(), Some("see `airlock run --help`"));
    }

    #[test]
    fn a_refused_package_names_the_spec_and_how_to_pin() {
        let err = InputError::PackageSpec {
            spec: "numpy".into(),
            reason: "not pinned".into(),
        };
        assert_eq!(err.to_string(), "package \"numpy\" refused: not pinned");
        assert_eq!(err.field(), "packages");
        assert!(err.hint().is_some_and(|h| h.contains("name==version")));
    }

    #[test]
    fn an_unreadable_file_keeps_the_os_error_as_its_source() {
        let err = InputError::Unreadable {
            field: "ca_bundle",
            source: IoError::new(
                "read the CA bundle",
                "/ca.pem",
                std::io::Error::other("denied"),
            ),
        };
        assert!(
            err.to_string()
                .starts_with("invalid ca_bundle: could not read the CA bundle /ca.pem"),
            "{err}"
        );
        assert!(std::error::Error::source(&err).is_some());
    }
}
