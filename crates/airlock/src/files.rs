//! Moving files between the host and a VM's sandbox home, for runs
//! ([`crate::RunRequest::uploads`], [`crate::RunRequest::downloads`]) and
//! sessions ([`crate::Session::write_file`], [`crate::Session::read_file`]).
//!
//! Guest paths are checked twice: here, before anything boots
//! ([`validate_guest_path`]: relative to the home, no `..`, no NUL, within
//! Linux's length limits), and again by the agent, which also resolves
//! them beneath the home so that a symlink pointing outside (say to
//! `/etc/passwd`) is refused. Contents are checked end to end: the client
//! compares the sha256 it computed with the guest's, both ways.

use crate::error::{ExecError, InputError};
use airlock_protocol::client::Client;
use serde::Serialize;
use std::time::Duration;

/// Longest accepted guest path, in bytes (Linux `PATH_MAX`, as the agent).
pub const MAX_GUEST_PATH_BYTES: usize = 4096;
/// Longest accepted component of a guest path (Linux `NAME_MAX`).
pub const MAX_GUEST_NAME_BYTES: usize = 255;
/// Permission bits of an uploaded file unless said otherwise.
pub const DEFAULT_FILE_MODE: u32 = 0o644;

/// Deadline of one file transfer: a base plus a per-MiB allowance (the
/// guest channel moves tens of MiB/s under TCG; this only guards against a
/// stuck guest).
pub(crate) fn transfer_timeout(bytes: u64) -> Duration {
    Duration::from_secs(60) + Duration::from_millis((bytes / 1024 / 1024).saturating_mul(500))
}

/// Where a streamed upload's bytes come from (a request body, a file).
pub type FileSource<'a> = &'a mut (dyn tokio::io::AsyncRead + Unpin + Send);

/// Where a streamed download's bytes go (a response body, a file).
pub type FileSink<'a> = &'a mut (dyn tokio::io::AsyncWrite + Unpin + Send);

/// A file to write into the sandbox home.
#[derive(Clone, PartialEq, Eq)]
pub struct FileUpload {
    /// Path relative to the sandbox home (missing directories are made).
    pub path: String,
    /// The content.
    pub content: Vec<u8>,
    /// Permission bits (default [`DEFAULT_FILE_MODE`]).
    pub mode: u32,
}

impl FileUpload {
    /// An upload with the default mode.
    pub fn new(path: impl Into<String>, content: impl Into<Vec<u8>>) -> Self {
        Self {
            path: path.into(),
            content: content.into(),
            mode: DEFAULT_FILE_MODE,
        }
    }
}

impl std::fmt::Debug for FileUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileUpload")
            .field("path", &self.path)
            .field("bytes", &self.content.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// A file as both sides saw it: its path, size and sha256 (hex), the two
/// sides' checksums compared already.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct FileInfo {
    /// Path relative to the sandbox home.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Hex sha256 of the content.
    pub sha256: String,
}

/// One file read back after a run: its content, or why it could not be
/// read (the others are read all the same).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Downloaded {
    /// Path relative to the sandbox home, as asked.
    pub path: String,
    /// Size and sha256 when it was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<FileInfo>,
    /// The content (not serialized: JSON carries `info`).
    #[serde(skip)]
    pub content: Option<Vec<u8>>,
    /// Why it could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Downloaded {
    /// The record of reading `path`: its content and info, or the error.
    pub fn of(path: &str, read: Result<(Vec<u8>, FileInfo), ExecError>) -> Self {
        match read {
            Ok((content, info)) => Self {
                path: path.to_owned(),
                info: Some(info),
                content: Some(content),
                error: None,
            },
            Err(e) => Self {
                path: path.to_owned(),
                info: None,
                content: None,
                error: Some(e.to_string()),
            },
        }
    }
}

/// Checks a guest path on the host, before anything boots: relative to the
/// sandbox home, not the home itself, no NUL byte, no `..` component,
/// within [`MAX_GUEST_PATH_BYTES`] and [`MAX_GUEST_NAME_BYTES`] per
/// component. The agent checks again and also refuses symlinks that lead
/// out of the home.
///
/// # Errors
/// [`InputError::Invalid`] for `field`, saying what is wrong.
pub fn validate_guest_path(field: &'static str, path: &str) -> Result<(), InputError> {
    validate_guest_dir(field, path)?;
    if path.split('/').all(|c| c.is_empty() || c == ".") {
        return Err(InputError::invalid(
            field,
            format!("{path:?} names the sandbox home itself, not a file in it"),
        ));
    }
    Ok(())
}

/// As [`validate_guest_path`], but the home itself (`""`, `"."`) is
/// accepted: a directory to list.
///
/// # Errors
/// [`InputError::Invalid`] for `field`.
pub fn validate_guest_dir(field: &'static str, path: &str) -> Result<(), InputError> {
    let refuse = |why: String| {
        Err(InputError::invalid(
            field,
            format!("guest path {path:?}: {why}"),
        ))
    };
    if path.contains('\0') {
        return refuse("it contains a NUL byte".into());
    }
    if path.len() > MAX_GUEST_PATH_BYTES {
        return refuse(format!("longer than {MAX_GUEST_PATH_BYTES} bytes"));
    }
    if path.starts_with('/') {
        return refuse("it is absolute: give a path relative to the sandbox home".into());
    }
    for component in path.split('/') {
        if component == ".." {
            return refuse("it contains a `..` component".into());
        }
        if component.len() > MAX_GUEST_NAME_BYTES {
            return refuse(format!(
                "a component is longer than {MAX_GUEST_NAME_BYTES} bytes"
            ));
        }
    }
    Ok(())
}

/// Most of a file read into memory ([`crate::SandboxVm::download`],
/// [`crate::Session::read_file`]); streamed reads have only their caller's
/// cap.
pub const MAX_READ_INTO_MEMORY_BYTES: u64 = 128 * 1024 * 1024;

/// A streamed upload's target and limits ([`upload_from`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamedUpload<'a> {
    /// Path relative to the sandbox home.
    pub path: &'a str,
    /// Permission bits.
    pub mode: u32,
    /// The announced size, when known.
    pub size: Option<u64>,
    /// The cap on what the source may give.
    pub max_bytes: u64,
}

/// Writes `upload` through `client` from `source`, streamed; the sha256 is
/// compared by the client.
pub(crate) async fn upload_from(
    vm_id: &str,
    client: &Client,
    upload: StreamedUpload<'_>,
    source: FileSource<'_>,
) -> Result<FileInfo, ExecError> {
    let timeout = transfer_timeout(upload.size.unwrap_or(upload.max_bytes));
    let written = client
        .write_file_from(
            upload.path,
            upload.mode,
            upload.size,
            source,
            upload.max_bytes,
            timeout,
        )
        .await
        .map_err(|source| ExecError::File {
            vm_id: vm_id.to_owned(),
            path: upload.path.to_owned(),
            action: "write",
            source,
        })?;
    Ok(FileInfo {
        path: upload.path.to_owned(),
        size: written.size,
        sha256: written.sha256,
    })
}

/// Reads `path` through `client` into `sink`, streamed, holding at most
/// `max_bytes`; the sha256 is compared by the client.
pub(crate) async fn download_into(
    vm_id: &str,
    client: &Client,
    path: &str,
    max_bytes: u64,
    sink: FileSink<'_>,
) -> Result<FileInfo, ExecError> {
    let read = client
        .read_file_into(path, max_bytes, sink, transfer_timeout(max_bytes))
        .await
        .map_err(|source| ExecError::File {
            vm_id: vm_id.to_owned(),
            path: path.to_owned(),
            action: "read",
            source,
        })?;
    Ok(FileInfo {
        path: path.to_owned(),
        size: read.size,
        sha256: read.sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(path: &str) -> String {
        match validate_guest_path("path", path) {
            Err(InputError::Invalid { field, message }) => {
                assert_eq!(field, "path");
                message
            }
            other => panic!("{path:?}: expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn relative_paths_inside_the_home_are_accepted() {
        for ok in [
            "a",
            "data/in.csv",
            "./x",
            "a/./b",
            "dir/",
            ".hidden",
            "a..b",
        ] {
            validate_guest_path("path", ok).expect(ok);
        }
    }

    #[test]
    fn traversal_absolute_and_nul_are_refused_with_the_reason() {
        assert!(refused("../x").contains("`..`"));
        assert!(refused("a/../../x").contains("`..`"));
        assert!(refused("/etc/passwd").contains("absolute"));
        assert!(refused("a\0b").contains("NUL"));
    }

    #[test]
    fn the_home_itself_is_not_a_file_but_may_be_listed() {
        for home in ["", ".", "./", "/"] {
            if home != "/" {
                assert!(refused(home).contains("home itself"), "{home:?}");
                validate_guest_dir("dir", home).expect(home);
            }
        }
        assert!(validate_guest_dir("dir", "../").is_err());
    }

    #[test]
    fn over_long_paths_and_names_are_refused() {
        assert!(refused(&"a".repeat(256)).contains("component"));
        let long = vec!["a"; 2100].join("/");
        assert!(refused(&long).contains("longer than"));
        validate_guest_path("path", &"a".repeat(255)).unwrap();
    }

    #[test]
    fn an_upload_debug_shows_its_size_not_its_bytes() {
        let text = format!("{:?}", FileUpload::new("x", vec![7u8; 1000]));
        assert!(
            text.contains("bytes: 1000") && text.contains("644"),
            "{text}"
        );
    }

    #[test]
    fn transfer_deadlines_grow_with_the_size() {
        assert!(transfer_timeout(64 << 20) > transfer_timeout(0));
        assert!(transfer_timeout(0) >= Duration::from_secs(60));
    }

    proptest::proptest! {
        /// Whatever the host accepts could not escape the home lexically
        /// (the agent guards against symlinks).
        #[test]
        fn accepted_paths_never_escape_lexically(path in "[a./\\x00]{0,12}") {
            if validate_guest_path("path", &path).is_ok() {
                proptest::prop_assert!(!path.starts_with('/'));
                proptest::prop_assert!(!path.contains('\0'));
                proptest::prop_assert!(path.split('/').all(|c| c != ".."));
            }
        }
    }
}
