//! The pure check of a path the host gave: relative to the sandbox home,
//! no `..`, no NUL, bounded length. It runs before any system call; the
//! resolution beneath the home ([`crate::home`]) then guards against
//! symlinks.

use crate::AgentError;
use std::ffi::CString;

/// Longest accepted path, in bytes (Linux `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest accepted path component, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_BYTES: usize = 255;

/// A checked path relative to the sandbox home: normalized components
/// (`.` and empty ones dropped), none of them `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    original: String,
    components: Vec<String>,
}

impl RelPath {
    /// Checks a path. `""` and `"."` name the home itself.
    ///
    /// # Errors
    /// [`AgentError::InvalidPath`] for an absolute path, a NUL byte, a `..`
    /// component, or a path or component over the length limits.
    pub fn parse(path: &str) -> Result<RelPath, AgentError> {
        let refuse = |reason: &str| Err(AgentError::invalid_path(path, reason));
        if path.len() > MAX_PATH_BYTES {
            return refuse(&format!("longer than {MAX_PATH_BYTES} bytes"));
        }
        if path.contains('\0') {
            return refuse("it contains a NUL byte");
        }
        if path.starts_with('/') {
            return refuse("it is absolute");
        }
        let mut components = Vec::new();
        for component in path.split('/') {
            match component {
                "" | "." => {}
                ".." => return refuse("it contains a `..` component"),
                name if name.len() > MAX_NAME_BYTES => {
                    return refuse(&format!(
                        "a component is longer than {MAX_NAME_BYTES} bytes"
                    ))
                }
                name => components.push(name.to_owned()),
            }
        }
        Ok(RelPath {
            original: path.to_owned(),
            components,
        })
    }

    /// Checks a path that must name something inside the home (not the home
    /// itself): the target of a write or a read.
    ///
    /// # Errors
    /// As [`RelPath::parse`], and for `""`/`"."`.
    pub fn parse_entry(path: &str) -> Result<RelPath, AgentError> {
        let parsed = Self::parse(path)?;
        if parsed.is_home() {
            return Err(AgentError::invalid_path(
                path,
                "it names the home directory itself, not a file in it",
            ));
        }
        Ok(parsed)
    }

    /// The path as the host gave it (for messages).
    pub fn original(&self) -> &str {
        &self.original
    }

    /// Whether the path names the home itself.
    pub fn is_home(&self) -> bool {
        self.components.is_empty()
    }

    /// The normalized components.
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// The last component, if any.
    pub fn file_name(&self) -> Option<&str> {
        self.components.last().map(String::as_str)
    }

    /// The path without its last component (the home for a single name).
    pub fn parent(&self) -> RelPath {
        let keep = self.components.len().saturating_sub(1);
        RelPath {
            original: self.original.clone(),
            components: self.components[..keep].to_vec(),
        }
    }

    /// The first `n` components.
    pub fn prefix(&self, n: usize) -> RelPath {
        RelPath {
            original: self.original.clone(),
            components: self.components[..n.min(self.components.len())].to_vec(),
        }
    }

    /// The normalized path (`"."` for the home).
    pub fn normalized(&self) -> String {
        if self.is_home() {
            ".".to_owned()
        } else {
            self.components.join("/")
        }
    }

    /// The normalized path as a C string, for system calls.
    ///
    /// # Errors
    /// Never in practice (NUL was refused by `parse`); reported as an
    /// invalid path rather than a panic.
    pub fn to_cstring(&self) -> Result<CString, AgentError> {
        CString::new(self.normalized())
            .map_err(|_| AgentError::invalid_path(&self.original, "it contains a NUL byte"))
    }
}

/// A single component as a C string.
pub(crate) fn name_cstring(name: &str, original: &str) -> Result<CString, AgentError> {
    CString::new(name).map_err(|_| AgentError::invalid_path(original, "it contains a NUL byte"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn components(path: &str) -> Vec<String> {
        RelPath::parse(path).unwrap().components().to_vec()
    }

    #[test]
    fn relative_paths_are_normalized() {
        assert_eq!(components("a/b.txt"), ["a", "b.txt"]);
        assert_eq!(components("./a//b/./c/"), ["a", "b", "c"]);
        assert_eq!(components("...."), ["...."]);
        assert_eq!(components("a..b"), ["a..b"]);
    }

    #[test]
    fn empty_and_dot_name_the_home() {
        for path in ["", ".", "./", ".//."] {
            let parsed = RelPath::parse(path).unwrap();
            assert!(parsed.is_home(), "{path}");
            assert_eq!(parsed.normalized(), ".");
            assert!(RelPath::parse_entry(path).is_err(), "{path}");
        }
    }

    #[test]
    fn escapes_are_refused() {
        for path in [
            "/etc/passwd",
            "/",
            "../x",
            "..",
            "a/../../x",
            "a/../b",
            "a/..",
            "./../x",
            "a\0b",
        ] {
            let err = RelPath::parse(path).unwrap_err();
            assert_eq!(
                err.kind(),
                airlock_protocol::ErrorKind::InvalidPath,
                "{path:?}"
            );
        }
    }

    #[test]
    fn overlong_paths_and_names_are_refused() {
        assert!(RelPath::parse(&"a".repeat(MAX_NAME_BYTES)).is_ok());
        assert!(RelPath::parse(&"a".repeat(MAX_NAME_BYTES + 1)).is_err());
        let long = vec!["a"; MAX_PATH_BYTES / 2 + 1].join("/");
        assert!(RelPath::parse(&long).is_err());
    }

    #[test]
    fn parent_and_file_name_split_the_last_component() {
        let p = RelPath::parse("a/b/c").unwrap();
        assert_eq!(p.file_name(), Some("c"));
        assert_eq!(p.parent().normalized(), "a/b");
        assert_eq!(p.prefix(1).normalized(), "a");
        assert!(RelPath::parse("c").unwrap().parent().is_home());
    }

    proptest! {
        #[test]
        fn accepted_paths_never_escape(path in "[a./\\x00]{0,16}") {
            if let Ok(parsed) = RelPath::parse(&path) {
                prop_assert!(!path.starts_with('/'));
                prop_assert!(!path.contains('\0'));
                for c in parsed.components() {
                    prop_assert!(c != ".." && c != "." && !c.is_empty() && !c.contains('/'));
                }
                prop_assert!(parsed.to_cstring().is_ok());
            }
        }
    }
}
