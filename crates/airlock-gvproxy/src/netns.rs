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
//!   is given: this confines that to gvproxy's directory.
//!
//! As root the namespaces are made directly. Otherwise a user namespace
//! comes first (mapping the caller's uid and gid to 0), which needs
//! unprivileged user namespaces. If neither works the spawn fails: gvproxy
//! never runs on the host's network.
//!
//! [`in_netns`] runs a closure on a short-lived thread that joined the
//! namespace with `setns`; [`bind_tcp_in_netns`] uses it to open listeners
//! there (a socket keeps its namespace after the thread is gone).
#![allow(unsafe_code)]

use crate::GvproxyError;
use std::ffi::CString;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

/// Set-up steps in the child, reported through the step pipe (one byte per
/// step, written before the step) so a failed spawn says which failed.
const STEPS: [&str; 8] = [
    "unshare the namespaces",
    "write the user namespace's uid/gid maps",
    "make mounts private",
    "bind gvproxy's directory",
    "make the filesystem read-only",
    "make gvproxy's directory writable",
    "bring up lo",
    "exec gvproxy",
];

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

/// Everything the child needs, prepared in the parent so the code between
/// fork and exec makes only async-signal-safe syscalls and never allocates.
#[derive(Debug)]
pub(crate) struct NamespacePlan {
    kind: NamespaceKind,
    root: CString,
    writable_dir: CString,
    setgroups_path: CString,
    uid_map_path: CString,
    gid_map_path: CString,
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    /// Write end of the step pipe (close-on-exec).
    step_writer: OwnedFd,
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
    /// becomes read-only.
    pub(crate) fn new(kind: NamespaceKind, writable_dir: &Path) -> io::Result<(Self, StepReader)> {
        let (reader, writer) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        let cstring = |bytes: &[u8]| {
            CString::new(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
        };
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        Ok((
            Self {
                kind,
                root: cstring(b"/")?,
                writable_dir: cstring(writable_dir.as_os_str().as_bytes())?,
                setgroups_path: cstring(b"/proc/self/setgroups")?,
                uid_map_path: cstring(b"/proc/self/uid_map")?,
                gid_map_path: cstring(b"/proc/self/gid_map")?,
                uid_map: format!("0 {uid} 1\n").into_bytes(),
                gid_map: format!("0 {gid} 1\n").into_bytes(),
                step_writer: writer,
            },
            StepReader(reader),
        ))
    }

    /// Registers the namespace set-up to run in the child before exec.
    pub(crate) fn install(self, cmd: &mut std::process::Command) {
        // SAFETY: `enter` makes only async-signal-safe syscalls (write,
        // unshare, open, close, mount, syscall(mount_setattr), socket,
        // ioctl) on data prepared in the parent (CStrings, byte buffers,
        // owned fds kept alive by the closure), takes no lock and does not
        // allocate (`io::Error::last_os_error` is allocation-free), as
        // required between fork and exec.
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
        // SAFETY: as above; a bind mount of the directory onto itself.
        check(unsafe {
            libc::mount(
                self.writable_dir.as_ptr(),
                self.writable_dir.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        })?;
        self.step(4);
        mount_setattr(&self.root, MOUNT_ATTR_RDONLY, 0)?;
        self.step(5);
        mount_setattr(&self.writable_dir, 0, MOUNT_ATTR_RDONLY)?;
        self.step(6);
        loopback_up()?;
        self.step(7);
        Ok(())
    }
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

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

    #[test]
    fn step_reader_reports_the_last_step_written() {
        let (plan, reader) =
            NamespacePlan::new(NamespaceKind::Privileged, Path::new("/tmp")).unwrap();
        plan.step(0);
        plan.step(4);
        assert_eq!(reader.last_step(), Some(STEPS[4]));
        assert_eq!(reader.last_step(), None);
    }

    #[test]
    fn plan_refuses_a_path_with_nul() {
        let path = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/a\0b"));
        assert!(NamespacePlan::new(NamespaceKind::Privileged, path).is_err());
    }

    #[test]
    fn own_namespace_is_recognised() {
        use std::os::fd::AsFd;
        let fd = open_netns_of(std::process::id()).unwrap();
        assert!(is_own_netns(fd.as_fd()).unwrap());
    }
}
