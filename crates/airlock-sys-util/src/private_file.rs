//! Files only their owner may read (keys, secrets), replaced whole.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes `parts`, in order, to `path` atomically with mode 0600: into a
/// sibling file named after this process, synced, then renamed over
/// `path`, so a reader sees the old file or the new one whole, never a
/// part. The sibling is removed when a step fails.
///
/// # Errors
/// The failing step's I/O error (create, write, sync or rename).
pub fn write_private_atomic(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    let tmp = temp_sibling(path);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| {
            parts.iter().try_for_each(|part| file.write_all(part))?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// `<path>.tmp<pid>`, beside `path`.
fn temp_sibling(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_file_is_replaced_whole_with_mode_0600_and_no_sibling_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, b"old").unwrap();

        write_private_atomic(&path, &[b"# head\n", b"body"]).unwrap();

        assert_eq!(std::fs::read(&path).unwrap(), b"# head\nbody");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_leaves_no_sibling_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("secrets.json");
        assert!(write_private_atomic(&path, &[b"x"]).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
