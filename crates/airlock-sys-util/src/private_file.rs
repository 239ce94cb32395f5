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

/// Why a file the process trusts (API keys, a key) is unsafe to trust, if
/// it is: another user could rewrite it because it is writable by its
/// group or by everyone, or because it is owned by neither `uid` (the
/// process's effective user) nor root. `None` when it is safe.
pub fn unsafe_to_trust(meta: &std::fs::Metadata, uid: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Some(format!(
            "it is writable by {} (mode {mode:o})",
            if mode & 0o002 != 0 {
                "every user"
            } else {
                "its group"
            }
        ));
    }
    if meta.uid() != uid && meta.uid() != 0 {
        return Some(format!(
            "it is owned by uid {}, neither this process's uid {uid} nor root",
            meta.uid()
        ));
    }
    None
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
    fn a_file_writable_by_group_or_others_or_owned_by_another_user_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(&path, b"x").unwrap();
        let me = nix::unistd::geteuid().as_raw();
        for (mode, expect) in [
            (0o600, None),
            (0o644, None),
            (0o620, Some("its group")),
            (0o602, Some("every user")),
            (0o666, Some("every user")),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let why = unsafe_to_trust(&std::fs::metadata(&path).unwrap(), me);
            match expect {
                None => assert_eq!(why, None, "{mode:o}"),
                Some(word) => assert!(why.unwrap().contains(word), "{mode:o}"),
            }
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let stranger = me.wrapping_add(4242).max(1);
        let why = unsafe_to_trust(&meta, stranger);
        if me == 0 {
            assert_eq!(why, None, "a root-owned file is trusted by anyone");
        } else {
            assert!(why.unwrap().contains("owned by uid"));
        }
    }

    #[test]
    fn a_failed_write_leaves_no_sibling_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("secrets.json");
        assert!(write_private_atomic(&path, &[b"x"]).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
