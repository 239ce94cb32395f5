//! A log file that cannot fill the disk: what QEMU prints (the guest's
//! serial console on its stdout, QEMU's own messages on its stderr) is
//! read by the host and written here, to at most `max_bytes` on disk.
//!
//! The file is written until it holds half the budget; then it is renamed
//! to `<name>.1` (replacing the one before) and a new file is started. So
//! the newest output is always kept, `<name>` and `<name>.1` together never
//! exceed the budget, and a reader of `<name>` sees a plain file (no ring
//! to unwrap). A hostile guest kernel printing without end costs disk
//! bandwidth, never disk space.

use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// The default budget of a VM's console log (`console.log` and
/// `console.log.1` together).
pub const DEFAULT_CONSOLE_LOG_MAX_BYTES: u64 = 4 << 20;

/// The smallest budget accepted: room for a boot's messages.
pub const MIN_CONSOLE_LOG_MAX_BYTES: u64 = 64 << 10;

/// A log file kept under a size budget (see the module docs).
#[derive(Debug)]
pub struct CappedLog {
    path: PathBuf,
    file: tokio::fs::File,
    /// Bytes in the current file.
    written: u64,
    /// Largest size of one file: half the budget.
    half: u64,
}

impl CappedLog {
    /// Creates (truncates) `path`, to hold at most `max_bytes` between it
    /// and its previous part `<path>.1`.
    ///
    /// # Errors
    /// The creation's I/O error.
    pub async fn create(path: &Path, max_bytes: u64) -> std::io::Result<Self> {
        let file = open_new(path, false).await?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            written: 0,
            half: (max_bytes / 2).max(1),
        })
    }

    /// The previous part of the log at `path` (`<path>.1`).
    pub fn previous_part(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".1");
        PathBuf::from(name)
    }

    /// Appends `bytes`, rotating first when they do not fit in the current
    /// file; of a write larger than a file, only its end is kept.
    ///
    /// # Errors
    /// The write's or the rotation's I/O error.
    pub async fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        let len = bytes.len() as u64;
        if len > self.half {
            // Only the end fits: keep that (usize: it is below `len`).
            let skip = usize::try_from(len - self.half).unwrap_or(bytes.len());
            bytes = &bytes[skip..];
        }
        if self.written + bytes.len() as u64 > self.half {
            self.rotate().await?;
        }
        self.file.write_all(bytes).await?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Flushes what was written.
    ///
    /// # Errors
    /// The flush's I/O error.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush().await
    }

    /// The current file becomes `<path>.1`; a new, empty one is started.
    /// The log's dir may belong to a jailed QEMU, which could put a link
    /// where the new file goes: it is made with `O_EXCL` (no link is
    /// followed, nothing there is reused), and the rename moves a name,
    /// never writes through a link.
    async fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush().await?;
        tokio::fs::rename(&self.path, Self::previous_part(&self.path)).await?;
        self.file = open_new(&self.path, true).await?;
        self.written = 0;
        Ok(())
    }
}

/// Opens `path` for writing, truncated, following no symbolic link;
/// `exclusive`: it must not exist.
async fn open_new(path: &Path, exclusive: bool) -> std::io::Result<tokio::fs::File> {
    let mut options = tokio::fs::OpenOptions::new();
    options
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .mode(0o600);
    if exclusive {
        options.create_new(true);
    } else {
        options.create(true).truncate(true);
    }
    options.open(path).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    #[tokio::test]
    async fn a_log_never_holds_more_than_its_budget_and_keeps_the_newest_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut log = CappedLog::create(&path, 1000).await.unwrap();
        for i in 0..500u32 {
            log.write(format!("line {i:05}\n").as_bytes())
                .await
                .unwrap();
            let total = size(&path) + size(&CappedLog::previous_part(&path));
            assert!(total <= 1000, "{total} bytes after line {i}");
        }
        log.flush().await.unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        assert!(current.ends_with("line 00499\n"), "{current}");
        let previous = std::fs::read_to_string(CappedLog::previous_part(&path)).unwrap();
        assert!(previous.starts_with("line ") && previous.len() > 400);
    }

    #[tokio::test]
    async fn a_write_larger_than_a_part_keeps_only_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = CappedLog::create(&path, 100).await.unwrap();
        let mut big = vec![b'a'; 10_000];
        big.extend_from_slice(b"END");
        log.write(&big).await.unwrap();
        log.flush().await.unwrap();
        let kept = std::fs::read(&path).unwrap();
        assert_eq!(kept.len(), 50);
        assert!(kept.ends_with(b"aEND"));
    }

    #[tokio::test]
    async fn a_link_planted_where_the_log_goes_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("host-file");
        std::fs::write(&target, "keep").unwrap();
        let path = dir.path().join("console.log");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(CappedLog::create(&path, 100).await.is_err());
        // The rotation's new file: a link there (planted after the
        // rename) is an error, not followed.
        assert!(open_new(&path, true).await.is_err());
        std::fs::remove_file(&path).unwrap();
        let mut log = CappedLog::create(&path, 100).await.unwrap();
        log.write(&[b'x'; 40]).await.unwrap();
        // Planted before a rotation: the rename moves the link aside.
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        log.write(&[b'y'; 40]).await.unwrap();
        log.flush().await.unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        assert_eq!(std::fs::read(&path).unwrap(), [b'y'; 40]);
    }

    #[tokio::test]
    async fn below_the_budget_nothing_is_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut log = CappedLog::create(&path, DEFAULT_CONSOLE_LOG_MAX_BYTES)
            .await
            .unwrap();
        log.write(b"boot\n").await.unwrap();
        log.write(b"ready\n").await.unwrap();
        log.flush().await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "boot\nready\n");
        assert!(!CappedLog::previous_part(&path).exists());
    }
}
