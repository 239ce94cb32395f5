//! The pool directory on disk: creating and locking it, comparing
//! filesystems, sweeping it, and moving overlays out of it.

use airlock_sys_util::IoResultExt;
use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{renameat2, Flock, FlockArg, RenameFlags};

use crate::error::{OverlayError, Result};
use crate::naming::{BaseId, LOCK_FILE_NAME};
use crate::sweep::{sweep_plan, SweepReason};

/// A created, canonical, locked pool directory.
#[derive(Debug)]
pub struct PoolDir {
    /// Canonical absolute path.
    pub path: PathBuf,
    /// `st_dev` of the directory.
    pub dev: u64,
    /// Held for the pool's lifetime; released when dropped.
    _lock: Flock<File>,
}

impl PoolDir {
    /// Creates `path` (0700) if needed and takes its lock.
    ///
    /// # Errors
    /// [`OverlayError::PoolDir`] when it cannot be created or opened,
    /// [`OverlayError::PoolDirLocked`] when another pool holds it.
    pub async fn open(path: &Path) -> Result<Self> {
        let owned = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&owned))
            .await
            .map_err(|join| OverlayError::PoolDir {
                op: "prepare",
                path: path.to_path_buf(),
                source: io::Error::other(join),
            })?
    }

    fn open_blocking(path: &Path) -> Result<Self> {
        let dir_error = |op: &'static str| {
            move |source: io::Error| OverlayError::PoolDir {
                op,
                path: path.to_path_buf(),
                source,
            }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(dir_error("create"))?;
        let canonical = std::fs::canonicalize(path).map_err(dir_error("resolve"))?;
        let dev = std::fs::metadata(&canonical)
            .map_err(dir_error("stat"))?
            .dev();
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(canonical.join(LOCK_FILE_NAME))
            .map_err(dir_error("open the lock file of"))?;
        let lock = match Flock::lock(lock_file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(OverlayError::PoolDirLocked {
                    path: path.to_path_buf(),
                })
            }
            Err((_, errno)) => return Err(dir_error("lock")(io::Error::from(errno))),
        };
        Ok(Self {
            path: canonical,
            dev,
            _lock: lock,
        })
    }

    /// Fails with [`OverlayError::CrossFilesystem`] unless `other` is on the
    /// pool directory's filesystem.
    pub async fn check_same_filesystem(&self, other: &Path) -> Result<()> {
        let other_dev = tokio::fs::metadata(other)
            .await
            .with_path("stat", other)?
            .dev();
        if other_dev == self.dev {
            Ok(())
        } else {
            Err(OverlayError::CrossFilesystem {
                pool_dir: self.path.clone(),
                other: other.to_path_buf(),
                pool_dev: self.dev,
                other_dev,
            })
        }
    }

    /// Deletes temp files and overlays of bases that are not live.
    /// Returns how many files were removed; failures are logged.
    pub async fn sweep<F>(&self, is_live: F) -> Result<usize>
    where
        F: Fn(&BaseId) -> bool,
    {
        let mut entries =
            tokio::fs::read_dir(&self.path)
                .await
                .map_err(|source| OverlayError::PoolDir {
                    op: "list",
                    path: self.path.clone(),
                    source,
                })?;
        let mut names = Vec::new();
        loop {
            match entries.next_entry().await {
                Ok(Some(entry)) => {
                    if let Ok(name) = entry.file_name().into_string() {
                        names.push(name);
                    }
                }
                Ok(None) => break,
                Err(source) => {
                    return Err(OverlayError::PoolDir {
                        op: "list",
                        path: self.path.clone(),
                        source,
                    })
                }
            }
        }
        let mut removed = 0;
        for (name, reason) in sweep_plan(names.iter().map(String::as_str), is_live) {
            let path = self.path.join(name);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {
                    removed += 1;
                    let reason = match reason {
                        SweepReason::Partial => "partial",
                        SweepReason::Retired => "retired",
                    };
                    tracing::debug!(path = %path.display(), reason, "swept overlay file");
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot sweep overlay file");
                }
            }
        }
        Ok(removed)
    }
}

/// Moves `from` to `to` in one rename that never replaces an existing `to`.
/// On filesystems without `RENAME_NOREPLACE` it checks `to` first (a small
/// window, acceptable because `to` lives in the caller's private work dir).
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => {
            if std::fs::symlink_metadata(to).is_ok() {
                return Err(io::Error::from(Errno::EEXIST));
            }
            std::fs::rename(from, to)
        }
        Err(errno) => Err(io::Error::from(errno)),
    }
}

/// `st_dev` of `path`, for error messages.
pub fn device_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.dev())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rename_noreplace_moves_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&from, b"x").unwrap();

        rename_noreplace(&from, &to).unwrap();

        assert!(!from.exists());
        assert_eq!(std::fs::read(&to).unwrap(), b"x");
    }

    #[test]
    fn rename_noreplace_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&from, b"new").unwrap();
        std::fs::write(&to, b"old").unwrap();

        let error = rename_noreplace(&from, &to).unwrap_err();

        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&to).unwrap(), b"old");
        assert!(from.exists());
    }

    #[tokio::test]
    async fn a_second_pool_on_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = PoolDir::open(dir.path()).await.unwrap();

        let second = PoolDir::open(dir.path()).await;

        assert!(matches!(second, Err(OverlayError::PoolDirLocked { .. })));
    }

    #[tokio::test]
    async fn the_lock_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        drop(PoolDir::open(dir.path()).await.unwrap());

        assert!(PoolDir::open(dir.path()).await.is_ok());
    }

    #[tokio::test]
    async fn a_missing_pool_dir_is_created_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b");

        let pool_dir = PoolDir::open(&path).await.unwrap();

        let mode = std::fs::metadata(&pool_dir.path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[tokio::test]
    async fn sweep_removes_our_files_and_keeps_foreign_ones() {
        let dir = tempfile::tempdir().unwrap();
        let pool_dir = PoolDir::open(dir.path()).await.unwrap();
        let ours = [".tmp-0123456789abcdef-1.qcow2", "0123456789abcdef-2.qcow2"];
        for name in ours.iter().chain(&["keep.qcow2"]) {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }

        let removed = pool_dir.sweep(|_| false).await.unwrap();

        assert_eq!(removed, 2);
        assert!(dir.path().join("keep.qcow2").exists());
        assert!(dir.path().join(LOCK_FILE_NAME).exists());
    }
}
