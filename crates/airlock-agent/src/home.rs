//! Opening paths beneath the sandbox home, never outside it.
//!
//! A path first passes the pure check of [`RelPath`]; it is then opened
//! relative to a descriptor of the home with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, so a symlink (or a
//! race that swaps a directory for one) cannot lead out of the home:
//! symlinks that stay inside the home are followed, the others fail with
//! `EXDEV`. On kernels without `openat2` (`ENOSYS`) the agent walks the
//! path one component at a time with `O_NOFOLLOW`, which refuses every
//! symlink (stricter, equally safe).
//!
//! Every function here makes blocking system calls: call them from
//! `spawn_blocking`.

use crate::rel_path::{name_cstring, RelPath};
use crate::{sys, AgentConfig, AgentError, RunAs};
use airlock_sys_util::{IoError, IoResultExt};
use nix::fcntl::AtFlags;
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{fchownat, Gid, Uid};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once `openat2` answered `ENOSYS`: walk from then on.
static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

/// How many times to retry `openat2` when a concurrent rename made it fail
/// with `EAGAIN`.
const OPENAT2_RETRIES: usize = 8;

/// How paths are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolver {
    /// `openat2`, falling back to [`Resolver::Walk`] on `ENOSYS`.
    Auto,
    /// Component by component with `O_NOFOLLOW` (no symlinks at all).
    /// Chosen explicitly only by tests, to cover the fallback.
    #[cfg_attr(not(test), allow(dead_code))]
    Walk,
}

/// An open sandbox home.
#[derive(Debug)]
pub(crate) struct Home {
    fd: OwnedFd,
    resolver: Resolver,
}

impl Home {
    /// Opens the home directory.
    pub(crate) fn open(path: &Path) -> Result<Home, AgentError> {
        Self::open_with(path, Resolver::Auto)
    }

    pub(crate) fn open_with(path: &Path, resolver: Resolver) -> Result<Home, AgentError> {
        let io_err = |source| AgentError::from(IoError::new("open the sandbox home", path, source));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)
            .map_err(io_err)?;
        Ok(Home {
            fd: file.into(),
            resolver,
        })
    }

    /// Opens `rel` beneath the home with `flags` (and `mode` when creating).
    /// The raw error is returned so callers can tell `ENOENT` apart; turn it
    /// into an [`AgentError`] with [`AgentError::from_resolve`].
    pub(crate) fn open_beneath(
        &self,
        rel: &RelPath,
        flags: libc::c_int,
        mode: libc::mode_t,
    ) -> io::Result<OwnedFd> {
        let path = rel
            .to_cstring()
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        if self.resolver == Resolver::Auto && !OPENAT2_MISSING.load(Ordering::Relaxed) {
            let mut attempt = 0;
            loop {
                match sys::openat2_beneath(self.fd.as_fd(), &path, flags, mode) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                        tracing::info!(
                            "openat2 unavailable: resolving paths component by component"
                        );
                        OPENAT2_MISSING.store(true, Ordering::Relaxed);
                        break;
                    }
                    Err(e)
                        if e.raw_os_error() == Some(libc::EAGAIN) && attempt < OPENAT2_RETRIES =>
                    {
                        attempt += 1;
                    }
                    result => return result,
                }
            }
        }
        self.walk(rel, flags, mode)
    }

    /// The fallback: each directory with `O_PATH | O_DIRECTORY |
    /// O_NOFOLLOW`, the last component with `O_NOFOLLOW`. A symlink anywhere
    /// fails with `ELOOP`.
    fn walk(&self, rel: &RelPath, flags: libc::c_int, mode: libc::mode_t) -> io::Result<OwnedFd> {
        let Some((last, parents)) = rel.components().split_last() else {
            return sys::openat(self.fd.as_fd(), c".", flags, mode);
        };
        let mut dir: Option<OwnedFd> = None;
        for name in parents {
            let cur = dir.as_ref().map_or(self.fd.as_fd(), |d| d.as_fd());
            let next = open_component(cur, name, libc::O_PATH | libc::O_DIRECTORY, 0)?;
            dir = Some(next);
        }
        let cur = dir.as_ref().map_or(self.fd.as_fd(), |d| d.as_fd());
        open_component(cur, last, flags, mode)
    }

    /// Opens the directory `rel` (`O_RDONLY | O_DIRECTORY`), creating the
    /// missing components (mode 0755, owned by `owner` when given).
    pub(crate) fn create_dirs(
        &self,
        rel: &RelPath,
        owner: Option<RunAs>,
    ) -> Result<OwnedFd, AgentError> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        let resolve_err = |e| AgentError::from_resolve(rel.original(), "open directory", e);
        match self.open_beneath(rel, flags, 0) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            other => return other.map_err(resolve_err),
        }
        let mut dir = self
            .open_beneath(&rel.prefix(0), flags, 0)
            .map_err(resolve_err)?;
        for (i, name) in rel.components().iter().enumerate() {
            let prefix = rel.prefix(i + 1);
            match self.open_beneath(&prefix, flags, 0) {
                Ok(next) => dir = next,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let cname = name_cstring(name, rel.original())?;
                    make_dir(&dir, &cname, owner)
                        .with_path("create directory", prefix.normalized())?;
                    dir = self.open_beneath(&prefix, flags, 0).map_err(resolve_err)?;
                }
                Err(e) => return Err(resolve_err(e)),
            }
        }
        Ok(dir)
    }
}

/// `mkdirat` (an existing directory is fine: a concurrent creation) and
/// `fchownat` without following.
fn make_dir(dir: &OwnedFd, name: &CStr, owner: Option<RunAs>) -> io::Result<()> {
    match nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o755)) {
        Ok(()) => {}
        Err(nix::errno::Errno::EEXIST) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    if let Some(owner) = owner {
        fchownat(
            Some(dir.as_raw_fd()),
            name,
            Some(Uid::from_raw(owner.uid)),
            Some(Gid::from_raw(owner.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
    }
    Ok(())
}

/// `openat` of one component with `O_NOFOLLOW`; a symlink fails with
/// `ELOOP` (with `O_PATH | O_DIRECTORY` the kernel says `ENOTDIR`).
fn open_component(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &str,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let cname =
        std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    match sys::openat(dir, &cname, flags | libc::O_NOFOLLOW, mode) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            let is_link = fstatat(
                Some(dir.as_raw_fd()),
                cname.as_c_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK)
            .unwrap_or(false);
            Err(if is_link {
                io::Error::from_raw_os_error(libc::ELOOP)
            } else {
                e
            })
        }
        other => other,
    }
}

/// Makes sure the home exists and, when the agent is root, belongs to the
/// run-as user (a development home made by root is handed over; the guest's
/// tmpfs home already is). Blocking; call it once at start.
///
/// # Errors
/// [`AgentError::Io`] when the home cannot be created or handed over.
pub fn prepare_home(config: &AgentConfig) -> Result<PathBuf, AgentError> {
    let home = config.home.clone();
    let io_err = |action, source| AgentError::from(IoError::new(action, &home, source));
    if !home.exists() {
        std::fs::create_dir_all(&home).map_err(|e| io_err("create the sandbox home", e))?;
    }
    let meta = std::fs::metadata(&home).map_err(|e| io_err("inspect the sandbox home", e))?;
    if !meta.is_dir() {
        return Err(io_err(
            "use the sandbox home",
            io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    if let Some(owner) = config.run_as {
        if nix::unistd::geteuid().is_root() && (meta.uid() != owner.uid || meta.gid() != owner.gid)
        {
            tracing::info!(home = %home.display(), %owner, "handing the sandbox home to the run-as user");
            std::os::unix::fs::chown(&home, Some(owner.uid), Some(owner.gid))
                .map_err(|e| io_err("chown the sandbox home", e))?;
        }
    }
    Ok(home)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f.txt"), "hi").unwrap();
        symlink("/etc", dir.path().join("etc_link")).unwrap();
        symlink("..", dir.path().join("up")).unwrap();
        symlink("a/b", dir.path().join("inside")).unwrap();
        symlink("f.txt", dir.path().join("a/b/self_link")).unwrap();
        dir
    }

    fn open(home: &Home, path: &str) -> Result<OwnedFd, AgentError> {
        let rel = RelPath::parse(path)?;
        home.open_beneath(&rel, libc::O_RDONLY, 0)
            .map_err(|e| AgentError::from_resolve(path, "open", e))
    }

    fn kind(r: Result<OwnedFd, AgentError>) -> Option<airlock_protocol::ErrorKind> {
        r.err().map(|e| e.kind())
    }

    #[test]
    fn both_resolvers_open_plain_files_and_refuse_escapes() {
        use airlock_protocol::ErrorKind::{InvalidPath, NotFound};
        let dir = fixture();
        for resolver in [Resolver::Auto, Resolver::Walk] {
            let home = Home::open_with(dir.path(), resolver).unwrap();
            assert!(open(&home, "a/b/f.txt").is_ok(), "{resolver:?}");
            assert!(open(&home, ".").is_ok(), "{resolver:?}");
            assert_eq!(
                kind(open(&home, "etc_link/passwd")),
                Some(InvalidPath),
                "{resolver:?}"
            );
            assert_eq!(
                kind(open(&home, "etc_link")),
                Some(InvalidPath),
                "{resolver:?}"
            );
            assert_eq!(kind(open(&home, "up/x")), Some(InvalidPath), "{resolver:?}");
            assert_eq!(
                kind(open(&home, "a/b/f.txt/x")),
                Some(InvalidPath),
                "{resolver:?}"
            );
            assert_eq!(kind(open(&home, "missing")), Some(NotFound), "{resolver:?}");
            assert_eq!(
                kind(open(&home, "/etc/passwd")),
                Some(InvalidPath),
                "{resolver:?}"
            );
            assert_eq!(
                kind(open(&home, "a/../../x")),
                Some(InvalidPath),
                "{resolver:?}"
            );
        }
    }

    #[test]
    fn openat2_follows_symlinks_that_stay_inside_and_walk_refuses_them() {
        let dir = fixture();
        let auto = Home::open_with(dir.path(), Resolver::Auto).unwrap();
        let walk = Home::open_with(dir.path(), Resolver::Walk).unwrap();
        if !OPENAT2_MISSING.load(Ordering::Relaxed) {
            assert!(open(&auto, "inside/f.txt").is_ok());
            assert!(open(&auto, "a/b/self_link").is_ok());
        }
        assert!(open(&walk, "inside/f.txt").is_err());
        assert!(open(&walk, "a/b/self_link").is_err());
    }

    #[test]
    fn create_dirs_makes_missing_components_and_refuses_escapes() {
        let dir = fixture();
        for resolver in [Resolver::Auto, Resolver::Walk] {
            let home = Home::open_with(dir.path(), resolver).unwrap();
            let sub = format!("new-{resolver:?}/x/y");
            assert!(home
                .create_dirs(&RelPath::parse(&sub).unwrap(), None)
                .is_ok());
            assert!(dir.path().join(&sub).is_dir());
            assert!(home
                .create_dirs(&RelPath::parse("a/b").unwrap(), None)
                .is_ok());
            let escape = home.create_dirs(&RelPath::parse("up/new").unwrap(), None);
            assert_eq!(
                escape.err().map(|e| e.kind()),
                Some(airlock_protocol::ErrorKind::InvalidPath)
            );
            assert!(!dir.path().parent().unwrap().join("new").exists());
        }
    }
}
