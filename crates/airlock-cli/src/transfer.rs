//! Files between the host and the guest, on the command line:
//! `airlock run --upload LOCAL:REMOTE --download REMOTE:LOCAL` and the
//! session REPL's `:upload` / `:download`.
//!
//! Everything that can be checked before a VM boots is: the local file to
//! upload is read, the guest path checked
//! ([`airlock::validate_guest_path`]), the local directory of a download
//! must exist. A downloaded file is written atomically: a temporary file
//! in the target's directory, synced, then renamed over the target.

use crate::error::CliError;
use airlock::{validate_guest_path, FileUpload, DEFAULT_FILE_MODE};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

type Result<T, E = CliError> = std::result::Result<T, E>;

/// A download asked for: the guest path and where it lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadTarget {
    /// Path relative to the sandbox home.
    pub remote: String,
    /// The local file written.
    pub local: PathBuf,
}

/// Parses `LOCAL:REMOTE` (split at the last `:`; a bare `LOCAL` uploads to
/// its file name in the home), reads the local file and checks the guest
/// path. The file keeps its permission bits (`rwx` of its mode).
///
/// # Errors
/// [`CliError::Invalid`] (or the orchestrator's `InvalidInput` for the guest path) (`uploads`) for a bad guest path or a missing or
/// unreadable local file.
pub fn read_upload(spec: &str) -> Result<FileUpload> {
    let (local, remote) = match spec.rsplit_once(':') {
        Some((local, remote)) if !local.is_empty() => (local, remote.to_owned()),
        _ => (spec, file_name(spec, "uploads")?),
    };
    validate_guest_path("uploads", &remote)?;
    let path = Path::new(local);
    let unreadable = |e: std::io::Error| {
        CliError::invalid("uploads", format!("cannot read local file {local:?}: {e}"))
    };
    let metadata = std::fs::metadata(path).map_err(unreadable)?;
    if !metadata.is_file() {
        return Err(CliError::invalid(
            "uploads",
            format!("local {local:?} is not a regular file"),
        ));
    }
    let content = std::fs::read(path).map_err(unreadable)?;
    let mode = metadata.permissions().mode() & 0o777;
    Ok(FileUpload {
        path: remote,
        content,
        mode: if mode == 0 { DEFAULT_FILE_MODE } else { mode },
    })
}

/// Parses `REMOTE:LOCAL` (split at the first `:`; a bare `REMOTE` lands in
/// the current directory under its file name) and checks both sides: a
/// valid guest path, an existing local directory, a target that is not a
/// directory.
///
/// # Errors
/// [`CliError::Invalid`] (or the orchestrator's `InvalidInput` for the guest path) (`downloads`).
pub fn parse_download(spec: &str) -> Result<DownloadTarget> {
    let (remote, local) = match spec.split_once(':') {
        Some((remote, local)) if !local.is_empty() => (remote.to_owned(), PathBuf::from(local)),
        Some((remote, _)) => (
            remote.to_owned(),
            PathBuf::from(file_name(remote, "downloads")?),
        ),
        None => (
            spec.to_owned(),
            PathBuf::from(file_name(spec, "downloads")?),
        ),
    };
    validate_guest_path("downloads", &remote)?;
    check_local_target(&local)?;
    Ok(DownloadTarget { remote, local })
}

/// Checks that `local` can be written: its directory exists, it is not a
/// directory itself.
///
/// # Errors
/// [`CliError::Invalid`] (or the orchestrator's `InvalidInput` for the guest path) (`downloads`).
pub fn check_local_target(local: &Path) -> Result<()> {
    if local.is_dir() {
        return Err(CliError::invalid(
            "downloads",
            format!("local {} is a directory: name the file", local.display()),
        ));
    }
    let dir = parent_dir(local);
    if !dir.is_dir() {
        return Err(CliError::invalid(
            "downloads",
            format!("local directory {} does not exist", dir.display()),
        ));
    }
    Ok(())
}

/// The last component of a path, for a side left out.
fn file_name(path: &str, field: &'static str) -> Result<String> {
    Path::new(path)
        .file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| CliError::invalid(field, format!("{path:?} names no file")))
}

fn parent_dir(local: &Path) -> &Path {
    match local.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Writes `content` to `local` atomically: a temporary file beside it
/// (created exclusively, mode 0644), synced, renamed over `local`. On any
/// failure the temporary file is removed and `local` is untouched.
///
/// # Errors
/// [`CliError::Io`] naming the step and the path.
pub fn write_atomic(local: &Path, content: &[u8]) -> Result<()> {
    let temp = temp_beside(local)?;
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| CliError::io("create", &temp, e))?;
        file.write_all(content)
            .and_then(|()| file.sync_all())
            .map_err(|e| CliError::io("write", &temp, e))?;
        std::fs::rename(&temp, local).map_err(|e| CliError::io("rename into place", local, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// A fresh temporary name beside `local` (hidden, random), where a file
/// is written before it is renamed over `local`.
fn temp_beside(local: &Path) -> Result<PathBuf> {
    let name = local.file_name().ok_or_else(|| {
        CliError::invalid("downloads", format!("{} names no file", local.display()))
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(
        ".airlock-{:016x}.tmp",
        rand::Rng::gen::<u64>(&mut rand::thread_rng())
    ));
    Ok(parent_dir(local).join(temp_name))
}

/// Streams a download into `local` atomically, as [`write_atomic`] but
/// never holding the file: `fill` writes into a temporary file beside
/// `local` (created exclusively, mode 0644), which is synced and renamed
/// over `local` when `fill` succeeds, and removed otherwise.
///
/// # Errors
/// `fill`'s error, or [`CliError::Io`] naming the step and the path.
pub async fn stream_atomic<T, F, Fut>(local: &Path, fill: F) -> Result<T>
where
    F: FnOnce(tokio::fs::File) -> Fut,
    Fut: std::future::Future<Output = Result<(T, tokio::fs::File)>>,
{
    let temp = temp_beside(local)?;
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .await
        .map_err(|e| CliError::io("create", &temp, e))?;
    let written = async {
        let (value, file) = fill(file).await?;
        file.sync_all()
            .await
            .map_err(|e| CliError::io("write", &temp, e))?;
        tokio::fs::rename(&temp, local)
            .await
            .map_err(|e| CliError::io("rename into place", local, e))?;
        Ok(value)
    }
    .await;
    if written.is_err() {
        let _ = tokio::fs::remove_file(&temp).await;
    }
    written
}

/// [`write_atomic`] on the blocking pool, for async callers (`--download`,
/// the REPL's `:download`).
///
/// # Errors
/// As [`write_atomic`]; [`CliError::TaskFailed`] when the task failed.
pub async fn save_download(local: PathBuf, content: Vec<u8>) -> Result<()> {
    tokio::task::spawn_blocking(move || write_atomic(&local, &content))
        .await
        .map_err(|e| CliError::TaskFailed {
            task: "write a downloaded file",
            message: e.to_string(),
        })?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    fn field(result: Result<impl std::fmt::Debug>) -> (&'static str, String) {
        match result {
            Err(e) => match e.invalid_field() {
                Some(field) => (field, e.to_string()),
                None => panic!("expected a refused argument, got {e:?}"),
            },
            Ok(ok) => panic!("expected a refused argument, got {ok:?}"),
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_streamed_download_lands_whole_under_its_name_and_nothing_else() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("out.bin");
        std::fs::write(&local, b"old").unwrap();
        let size = stream_atomic(&local, |mut file| async move {
            for _ in 0..4 {
                file.write_all(&[9u8; 100_000]).await.unwrap();
            }
            Ok((400_000u64, file))
        })
        .await
        .unwrap();
        assert_eq!(size, 400_000);
        assert_eq!(std::fs::read(&local).unwrap(), vec![9u8; 400_000]);
        assert_eq!(names(dir.path()), ["out.bin"]);
    }

    #[tokio::test]
    async fn a_failed_streamed_download_leaves_the_old_file_and_no_temporary() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("out.bin");
        std::fs::write(&local, b"old").unwrap();
        let failed = stream_atomic(&local, |mut file| async move {
            file.write_all(b"partial").await.unwrap();
            Err::<((), tokio::fs::File), _>(CliError::invalid("remote", "the VM died"))
        })
        .await;
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&local).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["out.bin"]);
    }

    #[test]
    fn an_upload_reads_the_local_file_and_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("run.sh");
        std::fs::write(&local, b"echo hi").unwrap();
        std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o755)).unwrap();
        let upload = read_upload(&format!("{}:bin/run.sh", local.display())).unwrap();
        assert_eq!(upload.path, "bin/run.sh");
        assert_eq!(upload.content, b"echo hi");
        assert_eq!(upload.mode, 0o755);
        let bare = read_upload(local.to_str().unwrap()).unwrap();
        assert_eq!(bare.path, "run.sh");
    }

    #[test]
    fn a_missing_local_file_or_a_bad_guest_path_fails_before_boot() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("data.csv");
        std::fs::write(&local, b"1").unwrap();
        let (f, msg) = field(read_upload("/nonexistent/x.csv:x.csv"));
        assert_eq!(f, "uploads");
        assert!(msg.contains("/nonexistent/x.csv"), "{msg}");
        for remote in ["../x", "/etc/passwd"] {
            let (f, _) = field(read_upload(&format!("{}:{remote}", local.display())));
            assert_eq!(f, "uploads", "{remote}");
        }
        let (_, msg) = field(read_upload(&format!("{}:", dir.path().display())));
        assert!(msg.contains("home itself"), "{msg}");
    }

    #[test]
    fn downloads_split_at_the_first_colon_and_check_the_local_side() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.csv");
        let parsed = parse_download(&format!("results/out.csv:{}", target.display())).unwrap();
        assert_eq!(parsed.remote, "results/out.csv");
        assert_eq!(parsed.local, target);
        let bare = parse_download("results/plot.png").unwrap();
        assert_eq!(bare.local, PathBuf::from("plot.png"));
        for bad in ["../x:out", "/etc/passwd:out", "a\0b:out"] {
            assert_eq!(field(parse_download(bad)).0, "downloads", "{bad:?}");
        }
        let (_, msg) = field(parse_download("x:/nonexistent-dir/y"));
        assert!(msg.contains("does not exist"), "{msg}");
        let (_, msg) = field(parse_download(&format!("x:{}", dir.path().display())));
        assert!(msg.contains("is a directory"), "{msg}");
    }

    #[test]
    fn an_atomic_write_replaces_the_target_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.bin");
        std::fs::write(&target, b"old").unwrap();
        write_atomic(&target, b"new content").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"new content");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("out.bin")]);
    }

    #[test]
    fn a_failed_atomic_write_leaves_the_target_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // The target is a non-empty directory: the rename fails.
        let target = dir.path().join("busy");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep"), b"k").unwrap();
        assert!(write_atomic(&target, b"x").is_err());
        assert!(target.join("keep").exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
