//! The few system calls that neither std nor nix wrap the way the agent
//! needs them: `openat2` and `openat` returning an owned descriptor, and the
//! child setup run between fork and exec. Every `unsafe` block of the crate
//! is in this module.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `struct open_how` of `linux/openat2.h` (the kernel ABI; `libc`'s
/// version is `non_exhaustive` and cannot be built outside that crate).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(dir, path, flags, mode)` with `RESOLVE_BENEATH |
/// RESOLVE_NO_MAGICLINKS`: the path may not leave `dir` (by `..`, an
/// absolute path or a symlink) nor go through `/proc` magic links.
/// `O_CLOEXEC` is always added. Fails with `ENOSYS` on kernels before 5.6.
pub(crate) fn openat2_beneath(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let creates = flags & (libc::O_CREAT | libc::O_TMPFILE) != 0;
    let how = OpenHow {
        // Open flags are a bit set: reinterpret the int's bits.
        flags: u64::from((flags | libc::O_CLOEXEC) as u32),
        // The kernel refuses a mode without O_CREAT/O_TMPFILE.
        mode: if creates { u64::from(mode) } else { 0 },
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `path` is a valid NUL-terminated string and `how` a valid
    // `open_how` of the size passed; both outlive the call, which does not
    // keep them. The return value is checked below.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor; nothing
    // else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Plain `openat(dir, path, flags | O_CLOEXEC, mode)`.
pub(crate) fn openat(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    // SAFETY: `path` is a valid NUL-terminated string that outlives the
    // call; the return value is checked below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            path.as_ptr(),
            flags | libc::O_CLOEXEC,
            libc::c_uint::from(mode),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned `fd` as a new descriptor; nothing
    // else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the child does between fork and exec (after std applied its
/// process group).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChildSetup {
    /// The working directory to enter (must stay open until the spawn).
    pub cwd: RawFd,
    /// An exec cgroup's `cgroup.procs` to join (must stay open until the
    /// spawn).
    pub cgroup_procs: Option<RawFd>,
    /// The identity to drop to (uid, gid), supplementary groups cleared.
    pub run_as: Option<(u32, u32)>,
    /// A persistent interpreter's control pipe ends (commands to read,
    /// reports to write), given to the child as fds 3 and 4 (see
    /// [`crate::repl`]). Both must stay open until the spawn.
    pub control: Option<(RawFd, RawFd)>,
}

/// The fds a persistent interpreter reads commands from and writes
/// reports to.
pub(crate) const CONTROL_FDS: (RawFd, RawFd) = (3, 4);

/// `/proc/self/oom_score_adj`, NUL-terminated for `open` in the child.
const OOM_SCORE_ADJ: &[u8] = b"/proc/self/oom_score_adj\0";

/// Makes the agent the OOM killer's last choice (`oom_score_adj` -1000):
/// user code's memory hogs are killed, not the process that reports on
/// them. Needs root; elsewhere a warning.
pub fn protect_from_oom_killer() {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        tracing::warn!(error = %e, "cannot protect the agent from the OOM killer");
    }
}

/// Makes the child, between fork and exec: join the exec cgroup (while it is
/// still root: an unprivileged process may not move itself), reset its
/// `oom_score_adj` to 0, drop to the
/// sandbox identity (`setgroups(0)`, `setgid`, `setuid`), change into the
/// working directory, set `PR_SET_NO_NEW_PRIVS` (set-uid programs cannot
/// raise its privileges) and give SIGINT and SIGQUIT their default
/// action back. A failing step fails the spawn: user code never runs
/// outside its cgroup or as root.
pub(crate) fn set_child_setup(command: &mut tokio::process::Command, setup: ChildSetup) {
    let in_child = move || -> io::Result<()> {
        // SAFETY: write, setgroups, setgid, setuid, fchdir, fcntl, dup2, prctl and
        // signal are async-signal-safe system calls on plain integers and a
        // static buffer; the descriptors are open in the parent at fork
        // time, so they are open in the child.
        unsafe {
            if let Some(fd) = setup.cgroup_procs {
                // "0" is the writing process.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            // The agent shields itself from the OOM killer (-1000) and the
            // child inherits that: give user code the ordinary score back,
            // so that a hog is what the OOM killer picks. Raising it needs
            // no privilege.
            let adj = libc::open(
                OOM_SCORE_ADJ.as_ptr().cast(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if adj >= 0 {
                let written = libc::write(adj, b"0".as_ptr().cast(), 1);
                libc::close(adj);
                if written != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some((uid, gid)) = setup.run_as {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::fchdir(setup.cwd) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some((commands, reports)) = setup.control {
                // Lift both above the targets first, so that installing one
                // cannot close the other; dup2 clears close-on-exec.
                let commands = libc::fcntl(commands, libc::F_DUPFD_CLOEXEC, 10);
                let reports = libc::fcntl(reports, libc::F_DUPFD_CLOEXEC, 10);
                if commands < 0
                    || reports < 0
                    || libc::dup2(commands, CONTROL_FDS.0) < 0
                    || libc::dup2(reports, CONTROL_FDS.1) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // A cell is interrupted with SIGINT (Python's KeyboardInterrupt,
            // bash's trap). An ignored signal stays ignored across exec, and
            // whatever started the agent may have ignored it (a shell's
            // background job ignores SIGINT and SIGQUIT): the interpreter
            // would then be deaf to interrupts and killed instead.
            for signal in [libc::SIGINT, libc::SIGQUIT] {
                if libc::signal(signal, libc::SIG_DFL) == libc::SIG_ERR {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe system calls and
    // does not allocate (`last_os_error` reads errno), as required between
    // fork and exec.
    unsafe {
        command.pre_exec(in_child);
    }
}

/// `RNDADDENTROPY` (`linux/random.h`): `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG` (`linux/random.h`): `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Adds `bytes` to the kernel's entropy pool through `urandom` (an open
/// `/dev/urandom` or `/dev/random`) and credits them as `bytes.len() * 8`
/// bits of entropy (`RNDADDENTROPY`; needs `CAP_SYS_ADMIN`).
pub(crate) fn add_entropy(urandom: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<()> {
    // `struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }`,
    // laid out as one buffer of ints: two header words, then the bytes.
    let words = bytes.len().div_ceil(4);
    let mut info = vec![0u32; 2 + words];
    let bits =
        i32::try_from(bytes.len() * 8).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    info[0] = bits as u32;
    info[1] = bytes.len() as u32;
    for (word, chunk) in info[2..].iter_mut().zip(bytes.chunks(4)) {
        let mut le = [0u8; 4];
        le[..chunk.len()].copy_from_slice(chunk);
        *word = u32::from_ne_bytes(le);
    }
    // SAFETY: `info` is a valid `rand_pool_info` whose `buf_size` bytes
    // follow the header inside the allocation; it outlives the call, and
    // the kernel only reads it. The return value is checked below.
    let ret = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reseeds the kernel's CRNG from its input pool now (`RNDRESEEDCRNG`;
/// needs `CAP_SYS_ADMIN`). Entropy added to an initialised pool is
/// otherwise only drawn at the next scheduled reseed (up to a minute
/// later), and until then every clone of a template would draw the same
/// bytes from `getrandom`.
pub(crate) fn reseed_crng(urandom: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: RNDRESEEDCRNG takes no argument; the descriptor is open for
    // the call. The return value is checked below.
    let ret = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes waiting in a pipe (`FIONREAD`): what a reader gets without
/// blocking.
pub(crate) fn pipe_pending_bytes(pipe: BorrowedFd<'_>) -> io::Result<usize> {
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is valid
    // for the call; the descriptor is open. The return value is checked.
    let ret = unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut pending) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(pending).unwrap_or(0))
}
