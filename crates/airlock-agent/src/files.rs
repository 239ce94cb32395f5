//! File transfer in the sandbox home: atomic chunked writes, chunked reads,
//! directory listings. Every path goes through [`RelPath`] and
//! [`Home::open_beneath`].
//!
//! Writes create missing parent directories (mode 0755, owned by the
//! run-as user), so `data/in.csv` can be uploaded into a fresh home. The
//! content goes to a temporary file in the target directory (`O_EXCL`,
//! never following a symlink), is fsynced, and is renamed over the target on
//! commit; a failed or abandoned write removes its temporary file. The mode
//! keeps only the permission bits (`& 0o777`).

use crate::exec::blocking;
use crate::home::Home;
use crate::rel_path::{name_cstring, RelPath};
use crate::{sys, AgentConfig, AgentError, RunAs};
use airlock_protocol::{FileEntry, FileKind};
use airlock_sys_util::{IoError, IoResultExt};
use nix::fcntl::{renameat, AtFlags};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};
use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Raw bytes per `file_data` event.
pub const READ_CHUNK_BYTES: usize = 256 * 1024;

/// Most entries in one listing.
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// Distinguishes temporary files of concurrent writes.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A file being written: a temporary file until [`FileWriter::commit`].
#[derive(Debug)]
pub(crate) struct FileWriter {
    path: String,
    dir: OwnedFd,
    temp_name: CString,
    final_name: CString,
    file: Option<tokio::fs::File>,
    written_bytes: u64,
    expected_bytes: Option<u64>,
    max_file_bytes: u64,
    hasher: Sha256,
}

impl FileWriter {
    /// Checks the path, creates missing parents and the temporary file.
    pub(crate) async fn create(
        config: &AgentConfig,
        path: &str,
        mode: u32,
        expected_bytes: Option<u64>,
    ) -> Result<FileWriter, AgentError> {
        let rel = RelPath::parse_entry(path)?;
        let max_file_bytes = config.max_file_bytes;
        if let Some(size) = expected_bytes.filter(|&s| s > max_file_bytes) {
            return Err(AgentError::LimitExceeded {
                what: format!("file {path:?} ({size} bytes)"),
                limit_bytes: max_file_bytes,
            });
        }
        let home = config.home.clone();
        let owner = config.run_as;
        let (dir, temp_name, final_name, file) = blocking(move || {
            let home = Home::open(&home)?;
            let dir = home.create_dirs(&rel.parent(), owner)?;
            let final_name = name_cstring(rel.file_name().unwrap_or_default(), rel.original())?;
            let (temp_name, file) = create_temp(&dir, rel.original(), mode, owner)?;
            Ok((dir, temp_name, final_name, file))
        })
        .await?;
        Ok(FileWriter {
            path: path.to_owned(),
            dir,
            temp_name,
            final_name,
            file: Some(tokio::fs::File::from_std(std::fs::File::from(file))),
            written_bytes: 0,
            expected_bytes,
            max_file_bytes,
            hasher: Sha256::new(),
        })
    }

    /// Appends a chunk.
    pub(crate) async fn append(&mut self, bytes: &[u8]) -> Result<(), AgentError> {
        let total = self.written_bytes + bytes.len() as u64;
        if total > self.max_file_bytes {
            return Err(AgentError::LimitExceeded {
                what: format!("file {:?}", self.path),
                limit_bytes: self.max_file_bytes,
            });
        }
        if let Some(expected) = self.expected_bytes.filter(|&e| total > e) {
            return Err(AgentError::InvalidRequest(format!(
                "file {:?}: received more than the announced {expected} bytes",
                self.path
            )));
        }
        let file = self.file.as_mut().ok_or_else(|| {
            AgentError::BadState(format!("file {:?} is already committed", self.path))
        })?;
        file.write_all(bytes)
            .await
            .map_err(|source| self.io("write", source))?;
        self.hasher.update(bytes);
        self.written_bytes = total;
        Ok(())
    }

    /// Checks the size, fsyncs, and renames the file into place; returns the
    /// size and hex sha256.
    pub(crate) async fn commit(mut self) -> Result<(u64, String), AgentError> {
        if let Some(expected) = self.expected_bytes.filter(|&e| e != self.written_bytes) {
            return Err(AgentError::InvalidRequest(format!(
                "file {:?}: announced {expected} bytes, received {}",
                self.path, self.written_bytes
            )));
        }
        if let Some(mut file) = self.file.take() {
            file.flush()
                .await
                .map_err(|source| self.io("write", source))?;
            file.sync_all()
                .await
                .map_err(|source| self.io("fsync", source))?;
        }
        let dir = self
            .dir
            .try_clone()
            .map_err(|source| self.io("rename", source))?;
        let (temp, fin) = (self.temp_name.clone(), self.final_name.clone());
        let path = self.path.clone();
        blocking(move || {
            renameat(
                Some(dir.as_raw_fd()),
                temp.as_c_str(),
                Some(dir.as_raw_fd()),
                fin.as_c_str(),
            )
            .with_path("rename into place", &path)?;
            // Make the rename durable (a no-op on tmpfs).
            let _ = nix::unistd::fsync(dir.as_raw_fd());
            Ok(())
        })
        .await?;
        self.temp_name = CString::default(); // committed: nothing to remove
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        Ok((self.written_bytes, sha256))
    }

    fn io(&self, action: &'static str, source: std::io::Error) -> AgentError {
        AgentError::from(IoError::new(action, self.path.clone(), source))
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        if !self.temp_name.is_empty() {
            let _ = unlinkat(
                Some(self.dir.as_raw_fd()),
                self.temp_name.as_c_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// Creates `.airlock-<pid>-<n>.tmp` in `dir` with `O_EXCL | O_NOFOLLOW`,
/// gives it the mode and owner.
fn create_temp(
    dir: &OwnedFd,
    path: &str,
    mode: u32,
    owner: Option<RunAs>,
) -> Result<(CString, OwnedFd), AgentError> {
    let io_err = |action, source| AgentError::from(IoError::new(action, path.to_owned(), source));
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    for _ in 0..16 {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = name_cstring(&format!(".airlock-{}-{n}.tmp", std::process::id()), path)?;
        match sys::openat(dir.as_fd(), &name, flags, 0o600) {
            Ok(fd) => {
                let setup = || -> nix::Result<()> {
                    if let Some(owner) = owner {
                        fchown(
                            fd.as_raw_fd(),
                            Some(Uid::from_raw(owner.uid)),
                            Some(Gid::from_raw(owner.gid)),
                        )?;
                    }
                    nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode & 0o777))
                };
                if let Err(e) = setup() {
                    let _ = unlinkat(
                        Some(dir.as_raw_fd()),
                        name.as_c_str(),
                        UnlinkatFlags::NoRemoveDir,
                    );
                    return Err(io_err("set owner and mode of", e.into()));
                }
                return Ok((name, fd));
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(io_err("create", e)),
        }
    }
    Err(io_err(
        "create",
        std::io::Error::from_raw_os_error(libc::EEXIST),
    ))
}

/// A file opened for reading.
#[derive(Debug)]
pub(crate) struct FileReader {
    path: String,
    opened_size: u64,
    file: tokio::fs::File,
    max_file_bytes: u64,
    read_bytes: u64,
    hasher: Sha256,
}

impl FileReader {
    /// Opens a regular file beneath the home (never blocking on a FIFO).
    pub(crate) async fn open(config: &AgentConfig, path: &str) -> Result<FileReader, AgentError> {
        let rel = RelPath::parse_entry(path)?;
        let home = config.home.clone();
        let max_file_bytes = config.max_file_bytes;
        let owned_path = path.to_owned();
        let (fd, size) = blocking(move || {
            let path = owned_path;
            let fd = Home::open(&home)?
                .open_beneath(&rel, libc::O_RDONLY | libc::O_NONBLOCK, 0)
                .map_err(|e| AgentError::from_resolve(&path, "open", e))?;
            let stat = fstat(fd.as_raw_fd()).with_path("inspect", &path)?;
            if kind_of(&stat) != FileKind::File {
                return Err(AgentError::InvalidRequest(format!(
                    "{path:?} is not a regular file"
                )));
            }
            let size = u64::try_from(stat.st_size).unwrap_or(0);
            if size > max_file_bytes {
                return Err(AgentError::LimitExceeded {
                    what: format!("file {path:?} ({size} bytes)"),
                    limit_bytes: max_file_bytes,
                });
            }
            Ok((fd, size))
        })
        .await?;
        Ok(FileReader {
            path: path.to_owned(),
            opened_size: size,
            file: tokio::fs::File::from_std(std::fs::File::from(fd)),
            max_file_bytes,
            read_bytes: 0,
            hasher: Sha256::new(),
        })
    }

    /// The next chunk of up to [`READ_CHUNK_BYTES`]; `None` at the end.
    pub(crate) async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, AgentError> {
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        let mut filled = 0;
        while filled < chunk.len() {
            let n = self
                .file
                .read(&mut chunk[filled..])
                .await
                .with_path("read", &self.path)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(None);
        }
        chunk.truncate(filled);
        self.read_bytes += filled as u64;
        if self.read_bytes > self.max_file_bytes {
            return Err(AgentError::LimitExceeded {
                what: format!("file {:?} (it grew while being read)", self.path),
                limit_bytes: self.max_file_bytes,
            });
        }
        self.hasher.update(&chunk);
        Ok(Some(chunk))
    }

    /// The file's size when it was opened (it may change while read).
    pub(crate) fn opened_size(&self) -> u64 {
        self.opened_size
    }

    /// Size and hex sha256 of what was read.
    pub(crate) fn finish(self) -> (u64, String) {
        (self.read_bytes, hex::encode(self.hasher.finalize()))
    }
}

/// Lists a directory beneath the home, sorted by name, without following
/// symlinks. Names that are not UTF-8 are shown lossily.
pub(crate) async fn list_dir(
    config: &AgentConfig,
    path: &str,
) -> Result<Vec<FileEntry>, AgentError> {
    let rel = RelPath::parse(path)?;
    let home = config.home.clone();
    let path = path.to_owned();
    blocking(move || {
        let io_err =
            |action, e: nix::Error| AgentError::from(IoError::new(action, path.clone(), e.into()));
        let fd = Home::open(&home)?
            .open_beneath(&rel, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| AgentError::from_resolve(&path, "open directory", e))?;
        let mut dir = nix::dir::Dir::from(fd).map_err(|e| io_err("list", e))?;
        let dir_fd = dir.as_raw_fd();
        let mut entries = Vec::new();
        for entry in dir.iter() {
            let entry = entry.map_err(|e| io_err("list", e))?;
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let stat = match fstatat(Some(dir_fd), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(nix::errno::Errno::ENOENT) => continue, // removed meanwhile
                Err(e) => return Err(io_err("inspect an entry of", e)),
            };
            if entries.len() == MAX_LIST_ENTRIES {
                return Err(AgentError::LimitExceeded {
                    what: format!("directory {path:?} (entries)"),
                    limit_bytes: MAX_LIST_ENTRIES as u64,
                });
            }
            entries.push(FileEntry {
                name: name.to_string_lossy().into_owned(),
                size: u64::try_from(stat.st_size).unwrap_or(0),
                kind: kind_of(&stat),
                mode: stat.st_mode & 0o7777,
            });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    })
    .await
}

fn kind_of(stat: &FileStat) -> FileKind {
    match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFREG => FileKind::File,
        SFlag::S_IFDIR => FileKind::Dir,
        SFlag::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_protocol::ErrorKind;

    fn config(dir: &tempfile::TempDir) -> AgentConfig {
        AgentConfig {
            home: dir.path().to_owned(),
            run_as: None,
            max_file_bytes: 1024,
            ..AgentConfig::default()
        }
    }

    fn leftovers(dir: &std::path::Path) -> Vec<String> {
        walk(dir)
            .into_iter()
            .filter(|n| n.contains(".airlock-"))
            .collect()
    }

    fn walk(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            out.push(e.file_name().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            }
        }
        out
    }

    #[tokio::test]
    async fn write_commits_atomically_with_parents_mode_and_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(&dir);
        let mut w = FileWriter::create(&config, "new/sub/f.txt", 0o4640, Some(5))
            .await
            .unwrap();
        w.append(b"hel").await.unwrap();
        assert!(
            !dir.path().join("new/sub/f.txt").exists(),
            "visible before commit"
        );
        w.append(b"lo").await.unwrap();
        let (size, sha) = w.commit().await.unwrap();
        assert_eq!(size, 5);
        assert_eq!(
            sha,
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        let path = dir.path().join("new/sub/f.txt");
        assert_eq!(std::fs::read(&path).unwrap(), b"hello");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        assert!(leftovers(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn size_mismatch_limit_and_abandon_remove_the_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(&dir);
        let mut w = FileWriter::create(&config, "a", 0o644, Some(10))
            .await
            .unwrap();
        w.append(b"abc").await.unwrap();
        assert_eq!(
            w.commit().await.unwrap_err().kind(),
            ErrorKind::InvalidRequest
        );

        let mut w = FileWriter::create(&config, "b", 0o644, None).await.unwrap();
        assert_eq!(
            w.append(&[0; 2000]).await.unwrap_err().kind(),
            ErrorKind::LimitExceeded
        );
        drop(w);

        let err = FileWriter::create(&config, "c", 0o644, Some(5000))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::LimitExceeded);

        let w = FileWriter::create(&config, "d", 0o644, None).await.unwrap();
        drop(w);
        assert!(walk(dir.path()).is_empty(), "{:?}", walk(dir.path()));
    }

    #[tokio::test]
    async fn write_replaces_a_symlink_instead_of_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path().join("x"), dir.path().join("link")).unwrap();
        let mut w = FileWriter::create(&config(&dir), "link", 0o644, None)
            .await
            .unwrap();
        w.append(b"data").await.unwrap();
        w.commit().await.unwrap();
        assert!(!outside.path().join("x").exists());
        assert!(dir
            .path()
            .join("link")
            .symlink_metadata()
            .unwrap()
            .is_file());
    }

    #[tokio::test]
    async fn read_streams_chunks_and_refuses_non_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = AgentConfig {
            max_file_bytes: 10 << 20,
            ..config(&dir)
        };
        let content: Vec<u8> = (0..READ_CHUNK_BYTES * 2 + 7)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(dir.path().join("f"), &content).unwrap();
        let mut r = FileReader::open(&config, "f").await.unwrap();
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while let Some(chunk) = r.next_chunk().await.unwrap() {
            sizes.push(chunk.len());
            got.extend(chunk);
        }
        assert_eq!(sizes, [READ_CHUNK_BYTES, READ_CHUNK_BYTES, 7]);
        assert_eq!(got, content);
        assert_eq!(r.finish().1, hex::encode(Sha256::digest(&content)));

        nix::unistd::mkfifo(&dir.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let err = FileReader::open(&config, "fifo").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidRequest);
        let err = FileReader::open(&config, "missing").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn list_is_sorted_and_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "12345").unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("c")).unwrap();
        let entries = list_dir(&config(&dir), "").await.unwrap();
        let summary: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
        assert_eq!(
            summary,
            [
                ("a", FileKind::Dir),
                ("b.txt", FileKind::File),
                ("c", FileKind::Symlink)
            ]
        );
        assert_eq!(entries[1].size, 5);
        let err = list_dir(&config(&dir), "c").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidPath);
    }
}
