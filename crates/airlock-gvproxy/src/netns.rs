//! The empty network namespace gvproxy runs in, and entering it from the
//! host process.
//!
//! gvproxy is started in fresh network and mount namespaces, made between
//! fork and exec (by a pre-exec hook):
//! - network: only `lo`, brought up, so gvproxy's host address (translated
//!   to 127.0.0.1) reaches what Airlock serves there and nothing else
//!   exists: no route out, no resolver;
//! - mount: every mount read-only except gvproxy's own directory. gvproxy
//!   serves its port-forwarding API to the guest too (on the gateway's port
//!   80), and a `unix` forward removes then creates a socket at any path it
//!   is given: this confines that to gvproxy's directory. When gvproxy runs
//!   as a user who cannot search a directory above its own (e.g. the VM's
//!   0700 work dir), that directory is covered by a small read-only tmpfs
//!   holding only the path down to gvproxy's directory, which is mounted
//!   back there: gvproxy reaches its directory at the same path and sees
//!   nothing else that was in the covered one (other VMs, the VM's disk).
//!
//! As root the namespaces are made directly, then gvproxy drops to an
//! unprivileged user with no capabilities (see [`crate::privileges`]).
//! Otherwise a user namespace comes first (mapping the caller's uid and gid
//! to 0), which needs unprivileged user namespaces, and gvproxy drops every
//! capability it holds there. If this fails the spawn fails: gvproxy never
//! runs on the host's network, nor privileged.
//!
//! [`in_netns`] runs a closure on a short-lived thread that joined the
//! namespace with `setns`; [`bind_tcp_in_netns`] uses it to open listeners
//! there (a socket keeps its namespace after the thread is gone).
#![allow(unsafe_code)]

use crate::privileges::{ExecPlan, PrivilegeDrop, RunAs};
use crate::GvproxyError;
use std::ffi::CString;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// Set-up steps in the child, reported through the step pipe (one byte per
/// step, written before the step) so a failed spawn says which failed.
const STEPS: [&str; 12] = [
    "unshare the namespaces",
    "write the user namespace's uid/gid maps",
    "make mounts private",
    "clone gvproxy's directory",
    "cover the directories gvproxy may not search",
    "mount gvproxy's directory",
    "make the filesystem read-only",
    "make gvproxy's directory writable",
    "bring up lo",
    DROP_STEP,
    DEATH_STEP,
    EXEC_STEP,
];

/// The step that drops gvproxy's privileges.
pub(crate) const DROP_STEP: &str = "drop privileges";

/// The step that makes gvproxy die with the process that forked it. It
/// comes after the privilege drop, which (as any change of uid or gid)
/// clears a parent-death signal set before it; and it is this crate's to
/// do because the exec happens in this crate's hook, so no hook the caller
/// adds after it would run.
pub(crate) const DEATH_STEP: &str = "set the parent-death signal";

/// The last step: exec gvproxy.
pub(crate) const EXEC_STEP: &str = "exec gvproxy";

/// `OPEN_TREE_CLONE` of `open_tree(2)`.
const OPEN_TREE_CLONE: libc::c_uint = 1;

/// `MOVE_MOUNT_F_EMPTY_PATH` of `move_mount(2)`.
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Options of the tmpfs covering what gvproxy may not see: searchable by
/// anyone, too small to matter (it is read-only anyway).
const COVER_TMPFS_OPTIONS: &str = "mode=0711,size=64k,nr_inodes=256";

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `MOUNT_ATTR_RDONLY`.
const MOUNT_ATTR_RDONLY: u64 = 0x1;

/// How the child gets its namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceKind {
    /// Root: `unshare(CLONE_NEWNET | CLONE_NEWNS)`.
    Privileged,
    /// Not root: `unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS)`, with
    /// the caller's uid and gid mapped to 0.
    UserNamespace,
}

impl NamespaceKind {
    /// `Privileged` when the effective uid is 0.
    pub fn for_current_user() -> Self {
        if nix::unistd::geteuid().is_root() {
            Self::Privileged
        } else {
            Self::UserNamespace
        }
    }
}

/// A tmpfs over the first directory above gvproxy's that its user may not
/// search, holding only the path down to gvproxy's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cover {
    /// Where the tmpfs goes.
    pub(crate) at: PathBuf,
    /// The directories to make in it, parents first; the last is gvproxy's
    /// directory (its mount point).
    pub(crate) dirs: Vec<PathBuf>,
}

impl Cover {
    /// The cover `run_as` needs to reach `dir` (absolute, without symlinks
    /// or `..`), `None` when it can search every directory above `dir`.
    /// `metadata` stats a directory (following symlinks).
    ///
    /// # Errors
    /// `metadata`'s error; `InvalidInput` when even `/` is not searchable.
    pub(crate) fn needed(
        dir: &Path,
        run_as: RunAs,
        metadata: impl Fn(&Path) -> io::Result<std::fs::Metadata>,
    ) -> io::Result<Option<Self>> {
        let mut above: Vec<&Path> = dir.ancestors().skip(1).collect();
        above.reverse(); // "/" first
        for (i, ancestor) in above.iter().enumerate() {
            if run_as.can_traverse(&metadata(ancestor)?) {
                continue;
            }
            if i == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("uid {} cannot search /", run_as.uid),
                ));
            }
            let mut dirs: Vec<PathBuf> = above[i + 1..].iter().map(|p| p.to_path_buf()).collect();
            dirs.push(dir.to_path_buf());
            return Ok(Some(Self {
                at: ancestor.to_path_buf(),
                dirs,
            }));
        }
        Ok(None)
    }
}

/// [`Cover`] as the child uses it.
#[derive(Debug)]
struct CoverPlan {
    at: CString,
    dirs: Vec<CString>,
    tmpfs: CString,
    options: CString,
}

/// Everything the child needs, prepared in the parent so the code between
/// fork and exec makes only async-signal-safe syscalls and never allocates.
#[derive(Debug)]
pub(crate) struct NamespacePlan {
    kind: NamespaceKind,
    root: CString,
    writable_dir: CString,
    cover: Option<CoverPlan>,
    privileges: PrivilegeDrop,
    exec: ExecPlan,
    setgroups_path: CString,
    uid_map_path: CString,
    gid_map_path: CString,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    /// Write end of the step pipe (close-on-exec).
    step_writer: OwnedFd,
    /// The forking process: gvproxy gets SIGKILL when the thread that forks
    /// it ends, and exits at once if this process is gone already.
    parent: libc::pid_t,
}

/// The parent's end of the step pipe.
#[derive(Debug)]
pub(crate) struct StepReader(OwnedFd);

impl StepReader {
    /// The step the child reached last (after a failed spawn: the one that
    /// failed), or `None` when it wrote nothing (it failed before ours, e.g.
    /// in the caller's hook).
    pub(crate) fn last_step(&self) -> Option<&'static str> {
        let mut last = None;
        let mut buf = [0u8; 16];
        loop {
            match nix::unistd::read(self.0.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => last = buf[..n].last().copied(),
            }
        }
        last.and_then(|i| STEPS.get(usize::from(i)).copied())
    }
}

impl NamespacePlan {
    /// Prepares the child's work: `writable_dir` stays writable, all else
    /// becomes read-only (and what `cover` names, hidden); then the child
    /// gives up what `privileges` says and execs `exec`.
    pub(crate) fn new(
        kind: NamespaceKind,
        writable_dir: &Path,
        cover: Option<Cover>,
        privileges: PrivilegeDrop,
        exec: ExecPlan,
    ) -> io::Result<(Self, StepReader)> {
        let (reader, writer) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        let cstring = |bytes: &[u8]| {
            CString::new(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        };
        let path = |p: &Path| cstring(p.as_os_str().as_bytes());
        let cover = match cover {
            Some(c) => Some(CoverPlan {
                at: path(&c.at)?,
                dirs: c.dirs.iter().map(|d| path(d)).collect::<io::Result<_>>()?,
                tmpfs: cstring(b"tmpfs")?,
                options: cstring(COVER_TMPFS_OPTIONS.as_bytes())?,
            }),
            None => None,
        };
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        Ok((
            Self {
                kind,
                root: cstring(b"/")?,
                writable_dir: path(writable_dir)?,
                cover,
                privileges,
                exec,
                setgroups_path: cstring(b"/proc/self/setgroups")?,
                uid_map_path: cstring(b"/proc/self/uid_map")?,
                gid_map_path: cstring(b"/proc/self/gid_map")?,
                uid_map: format!("0 {uid} 1\n").into_bytes(),
                gid_map: format!("0 {gid} 1\n").into_bytes(),
                step_writer: writer,
                parent: nix::unistd::getpid().as_raw(),
            },
            StepReader(reader),
        ))
    }

    /// Registers the set-up, the privilege drop and the exec to run in the
    /// child. It must be the last pre-exec hook: it execs gvproxy itself,
    /// so hooks added after it never run.
    pub(crate) fn install(self, cmd: &mut std::process::Command) {
        // SAFETY: `enter` makes only async-signal-safe syscalls (write,
        // unshare, open, close, mount, mkdir, chmod, chdir,
        // syscall(open_tree, move_mount, mount_setattr, capset, execveat),
        // socket, ioctl, prctl, setgroups, setresgid, setresuid, fcntl) on
        // data prepared in the parent (CStrings, byte buffers, owned fds
        // kept alive by the closure), takes no lock and does not allocate
        // (`io::Error::last_os_error` is allocation-free), as required
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || self.enter());
        }
    }

    fn step(&self, index: u8) {
        // SAFETY: writes one byte from the stack to an fd owned by self; a
        // failure only loses the diagnostic.
        unsafe {
            libc::write(
                self.step_writer.as_raw_fd(),
                (&index as *const u8).cast(),
                1,
            );
        }
    }

    /// The child-side work.
    fn enter(&self) -> io::Result<()> {
        self.step(0);
        let mut flags = libc::CLONE_NEWNET | libc::CLONE_NEWNS;
        if self.kind == NamespaceKind::UserNamespace {
            flags |= libc::CLONE_NEWUSER;
        }
        // SAFETY: plain syscall; the child is single-threaded after fork, as
        // CLONE_NEWUSER requires.
        check(unsafe { libc::unshare(flags) })?;
        if self.kind == NamespaceKind::UserNamespace {
            self.step(1);
            write_file(&self.setgroups_path, b"deny")?;
            write_file(&self.uid_map_path, &self.uid_map)?;
            write_file(&self.gid_map_path, &self.gid_map)?;
        }
        self.step(2);
        // SAFETY: NUL-terminated paths owned by self; null fs type and data
        // are allowed for a propagation change.
        check(unsafe {
            libc::mount(
                std::ptr::null(),
                self.root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        })?;
        self.step(3);
        // A detached copy of the directory's mount, taken before anything
        // covers it, moved back onto its own path below.
        let tree = open_tree(&self.writable_dir)?;
        if let Some(cover) = &self.cover {
            self.step(4);
            cover.mount()?;
        }
        self.step(5);
        let moved = move_mount(tree.as_raw_fd(), &self.writable_dir);
        drop(tree);
        moved?;
        // SAFETY: NUL-terminated path owned by self. The cwd std set was
        // the directory's old (now covered or read-only) mount.
        check(unsafe { libc::chdir(self.writable_dir.as_ptr()) })?;
        self.step(6);
        mount_setattr(&self.root, MOUNT_ATTR_RDONLY, 0)?;
        self.step(7);
        mount_setattr(&self.writable_dir, 0, MOUNT_ATTR_RDONLY)?;
        self.step(8);
        loopback_up()?;
        self.step(9);
        self.privileges.apply()?;
        self.step(10);
        // SAFETY: plain syscalls with integer arguments.
        check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) })?;
        // SAFETY: getppid cannot fail. A parent that died before the prctl
        // re-parented this child: no signal will ever come, so stop here.
        if unsafe { libc::getppid() } != self.parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        self.step(11);
        Err(self.exec.exec())
    }
}

impl CoverPlan {
    /// Mounts the tmpfs and makes the path in it (child side).
    fn mount(&self) -> io::Result<()> {
        // SAFETY: NUL-terminated strings owned by self.
        check(unsafe {
            libc::mount(
                self.tmpfs.as_ptr(),
                self.at.as_ptr(),
                self.tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                self.options.as_ptr().cast(),
            )
        })?;
        for dir in &self.dirs {
            // SAFETY: NUL-terminated path owned by self; chmod undoes the
            // umask so gvproxy's user may search the path.
            check(unsafe { libc::mkdir(dir.as_ptr(), 0o711) })?;
            // SAFETY: as above.
            check(unsafe { libc::chmod(dir.as_ptr(), 0o711) })?;
        }
        Ok(())
    }
}

use airlock_sys_util::privileges::check_syscall as check;

/// Writes `data` to the file at `path` (async-signal-safe).
fn write_file(path: &CString, data: &[u8]) -> io::Result<()> {
    // SAFETY: NUL-terminated path owned by the caller.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `data` is a valid buffer of its length; fd was just opened.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let err = io::Error::last_os_error();
    // SAFETY: closes the fd opened above, once.
    unsafe { libc::close(fd) };
    if usize::try_from(n).ok() == Some(data.len()) {
        Ok(())
    } else {
        Err(err)
    }
}

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC)`: a
/// detached bind mount of `path`.
fn open_tree(path: &CString) -> io::Result<OwnedFd> {
    // SAFETY: NUL-terminated path; integer flags.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a new fd that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) })
}

/// `move_mount(tree, "", AT_FDCWD, to, MOVE_MOUNT_F_EMPTY_PATH)`.
fn move_mount(tree: RawFd, to: &CString) -> io::Result<()> {
    // SAFETY: a live fd from open_tree, an empty and a NUL-terminated path.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree,
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `mount_setattr(AT_FDCWD, path, AT_RECURSIVE, {set, clr})`.
fn mount_setattr(path: &CString, attr_set: u64, attr_clr: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the path is NUL-terminated and `attr` is a valid
    // `struct mount_attr` on the stack whose size is passed with it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets `IFF_UP` on `lo` with `SIOCSIFFLAGS` (async-signal-safe).
fn loopback_up() -> io::Result<()> {
    // SAFETY: plain syscall.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = set_up(sock);
    // SAFETY: closes the socket opened above, once.
    unsafe { libc::close(sock) };
    result
}

fn set_up(sock: RawFd) -> io::Result<()> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; the
    // kernel fills in the flags.
    check(unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req) })?;
    // SAFETY: SIOCGIFFLAGS wrote the `ifru_flags` member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: as for SIOCGIFFLAGS, with the flags set.
    check(unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &req) })
}

/// Opens `/proc/<pid>/ns/net` (close-on-exec).
pub(crate) fn open_netns_of(pid: u32) -> io::Result<OwnedFd> {
    let path = format!("/proc/{pid}/ns/net");
    Ok(std::fs::File::open(path)?.into())
}

/// Whether `netns` is this process's own network namespace (same inode).
pub(crate) fn is_own_netns(netns: BorrowedFd<'_>) -> io::Result<bool> {
    let theirs = nix::sys::stat::fstat(netns.as_raw_fd())?;
    let ours = nix::sys::stat::stat("/proc/self/ns/net")?;
    Ok(theirs.st_ino == ours.st_ino && theirs.st_dev == ours.st_dev)
}

/// Runs `f` on a new, short-lived thread that first joins the network
/// namespace `netns` (`setns`), and returns its result. The calling thread
/// (possibly a tokio worker) never changes namespace; the call blocks for
/// as long as `f` runs, so keep `f` short (a bind, a connect).
///
/// # Errors
/// `setns` failures (it needs `CAP_SYS_ADMIN`), thread spawn failures, or
/// `f`'s own error.
pub fn in_netns<T, F>(netns: BorrowedFd<'_>, f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    let fd = netns.try_clone_to_owned()?;
    let thread = std::thread::Builder::new()
        .name("airlock-netns".into())
        .spawn(move || {
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                io::Error::new(
                    io::Error::from(e).kind(),
                    format!("setns into the network namespace: {e}"),
                )
            })?;
            // The thread ends after `f`: nothing else ever runs in the
            // namespace on it.
            f()
        })?;
    thread
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
}

/// Binds a TCP listener to `addr` inside the network namespace `netns`
/// (e.g. [`crate::GvproxyHandle::netns_fd`]): the socket lives in that
/// namespace while this process serves it. It is returned non-blocking,
/// ready for `tokio::net::TcpListener::from_std`.
///
/// # Errors
/// [`GvproxyError::BindInNetns`].
pub fn bind_tcp_in_netns(
    netns: BorrowedFd<'_>,
    addr: SocketAddr,
) -> Result<TcpListener, GvproxyError> {
    in_netns(netns, move || {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
    .map_err(|source| GvproxyError::BindInNetns {
        addr,
        step: "enter the namespace and bind",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dir: &Path) -> io::Result<(NamespacePlan, StepReader)> {
        let exec = ExecPlan::new(Path::new("/bin/sh"), &["-c", "true"], [("A", "1")])?;
        NamespacePlan::new(
            NamespaceKind::Privileged,
            dir,
            None,
            PrivilegeDrop::CapabilitiesOnly,
            exec,
        )
    }

    #[test]
    fn step_reader_reports_the_last_step_written() {
        let (plan, reader) = plan(Path::new("/tmp")).unwrap();
        plan.step(0);
        plan.step(4);
        assert_eq!(reader.last_step(), Some(STEPS[4]));
        assert_eq!(reader.last_step(), None);
    }

    #[test]
    fn plan_refuses_a_path_with_nul() {
        let path = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/a\0b"));
        assert!(plan(path).is_err());
    }

    #[test]
    fn steps_end_with_the_drop_then_the_death_signal_then_the_exec() {
        assert_eq!(STEPS[STEPS.len() - 3], DROP_STEP);
        assert_eq!(STEPS[STEPS.len() - 2], DEATH_STEP);
        assert_eq!(STEPS[STEPS.len() - 1], EXEC_STEP);
    }

    /// Stats from a table: (path, mode, uid, gid) of real temp dirs.
    fn fake_tree(modes: &[(&str, u32)]) -> (tempfile::TempDir, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let top = tempfile::tempdir().unwrap();
        let mut dir = top.path().to_path_buf();
        for (name, mode) in modes {
            dir.push(name);
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        (top, dir)
    }

    #[test]
    fn cover_starts_at_the_first_directory_the_user_cannot_search() {
        let (top, dir) = fake_tree(&[
            ("run", 0o755),
            ("vms", 0o700),
            ("vm-1", 0o700),
            ("net", 0o700),
        ]);
        let owner = std::fs::metadata(top.path()).unwrap();
        use std::os::unix::fs::MetadataExt;
        let stranger = RunAs {
            uid: owner.uid() + 4242,
            gid: owner.gid() + 4242,
        };
        // A 0700 temp dir is covered; opened, the first 0700 below it is.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let cover = Cover::needed(&dir, stranger, |p| std::fs::metadata(p))
            .unwrap()
            .unwrap();
        assert_eq!(cover.at, top.path());
        assert_eq!(cover.dirs.last(), Some(&dir));
        assert_eq!(cover.dirs.len(), 4);
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let cover = Cover::needed(&dir, stranger, |p| std::fs::metadata(p))
            .unwrap()
            .unwrap();
        let vms = top.path().join("run/vms");
        assert_eq!(cover.at, vms);
        assert_eq!(cover.dirs, vec![vms.join("vm-1"), vms.join("vm-1/net")]);
    }

    #[test]
    fn no_cover_when_every_directory_above_is_searchable() {
        let (top, dir) = fake_tree(&[("a", 0o711), ("net", 0o700)]);
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        std::fs::set_permissions(top.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let owner = std::fs::metadata(top.path()).unwrap();
        let stranger = RunAs {
            uid: owner.uid() + 4242,
            gid: owner.gid() + 4242,
        };
        let all_open = |p: &Path| std::fs::metadata(p);
        // Above the temp dir are the system's /tmp and /: searchable.
        assert_eq!(Cover::needed(&dir, stranger, all_open).unwrap(), None);
    }

    #[test]
    fn an_unsearchable_root_cannot_be_covered() {
        let (_top, dir) = fake_tree(&[("net", 0o700)]);
        let closed = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(closed.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let closed_meta = std::fs::metadata(closed.path()).unwrap();
        use std::os::unix::fs::MetadataExt;
        let stranger = RunAs {
            uid: closed_meta.uid() + 4242,
            gid: closed_meta.gid() + 4242,
        };
        let err = Cover::needed(&dir, stranger, |_| std::fs::metadata(closed.path())).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn own_namespace_is_recognised() {
        use std::os::fd::AsFd;
        let fd = open_netns_of(std::process::id()).unwrap();
        assert!(is_own_netns(fd.as_fd()).unwrap());
    }
}
