//! Giving up every privilege in a child between fork and exec (gvproxy,
//! a jailed QEMU): the capability bounding set emptied and the ambient
//! set cleared (while `CAP_SETPCAP` is still held); as root, the
//! supplementary groups, then the gid, then the uid set (real, effective
//! and saved: from uid 0 to another, the kernel clears the permitted and
//! effective sets); every capability set zeroed with `capset`;
//! `no_new_privs` set, so no set-uid binary or file capability can give
//! anything back.
//!
//! Async-signal-safe: syscalls on integers and on a group list the parent
//! made; nothing is allocated.
#![allow(unsafe_code)]

use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` (version 3 takes two).
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Whom the child becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// The uid (real, effective, saved).
    pub uid: u32,
    /// The primary gid (real, effective, saved).
    pub gid: u32,
    /// The supplementary groups (usually none).
    pub groups: &'a [u32],
}

/// Drops every privilege of the calling process (see the module docs);
/// with `to`, also becomes that user (needs root).
///
/// # Errors
/// The failing syscall's error.
pub fn drop_privileges(to: Option<Credentials<'_>>) -> io::Result<()> {
    // prctl is variadic: every argument is passed as the `unsigned long`
    // the kernel reads.
    const ZERO: libc::c_ulong = 0;
    // Emptied first: dropping from the bounding set needs CAP_SETPCAP.
    for cap in ZERO.. {
        // SAFETY: plain syscall with integer arguments.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, ZERO, ZERO, ZERO) } == -1 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EINVAL) {
                break; // past the last capability this kernel knows
            }
            return Err(err);
        }
    }
    // SAFETY: plain syscall with integer arguments.
    check_syscall(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            ZERO,
            ZERO,
            ZERO,
        )
    })?;
    if let Some(to) = to {
        // SAFETY: a pointer to `to.groups.len()` gids, alive for the call.
        check_syscall(unsafe { libc::setgroups(to.groups.len(), to.groups.as_ptr()) })?;
        // SAFETY: plain syscall with integer arguments.
        check_syscall(unsafe { libc::setresgid(to.gid, to.gid, to.gid) })?;
        // SAFETY: as above. With every uid non-zero the kernel clears the
        // permitted and effective capabilities.
        check_syscall(unsafe { libc::setresuid(to.uid, to.uid, to.uid) })?;
    }
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: a valid version-3 header and its two data structs, on the
    // stack; pid 0 is this thread.
    check_syscall(unsafe {
        libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) as libc::c_int
    })?;
    // SAFETY: plain syscall with integer arguments.
    check_syscall(unsafe {
        libc::prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1 as libc::c_ulong,
            ZERO,
            ZERO,
            ZERO,
        )
    })
}

/// A syscall's `-1` as the error it left in `errno` (no allocation: safe
/// between fork and exec).
///
/// # Errors
/// `errno` as an [`io::Error`] when `ret` is -1.
pub fn check_syscall(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minus_one_is_errno_and_anything_else_is_success() {
        assert!(check_syscall(0).is_ok());
        assert!(check_syscall(3).is_ok());
        // SAFETY: close(-1) only sets errno (EBADF).
        let ret = unsafe { libc::close(-1) };
        let err = check_syscall(ret).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn a_child_that_drops_everything_has_no_capability_and_no_new_privs() {
        use std::os::unix::process::CommandExt;
        let mut cmd = std::process::Command::new("grep");
        cmd.args([
            "-E",
            "^(CapEff|CapBnd|CapInh|NoNewPrivs)",
            "/proc/self/status",
        ]);
        // SAFETY: drop_privileges only makes syscalls (see its docs).
        unsafe {
            cmd.pre_exec(|| drop_privileges(None));
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        for line in text.lines() {
            if line.starts_with("NoNewPrivs") {
                assert!(line.ends_with('1'), "{line}");
            } else {
                assert!(line.ends_with("0000000000000000"), "{line}");
            }
        }
        assert_eq!(text.lines().count(), 4, "{text}");
    }
}
