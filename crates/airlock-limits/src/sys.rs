//! Thin wrappers over the few syscalls this crate needs. Each is safe to
//! call from any thread of the parent; the child-side (post-fork) code is
//! in `attach.rs`.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::resource::{Resource, RlimitSetting};

#[cfg(target_env = "gnu")]
pub(crate) type RawResource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
pub(crate) type RawResource = libc::c_int;

/// The libc constant of a resource.
pub(crate) const fn raw_resource(r: Resource) -> RawResource {
    match r {
        Resource::AddressSpace => libc::RLIMIT_AS,
        Resource::CpuTime => libc::RLIMIT_CPU,
        Resource::OpenFiles => libc::RLIMIT_NOFILE,
        Resource::Core => libc::RLIMIT_CORE,
    }
}

/// Converts a limit value to libc's type (`u64::MAX` means infinity).
pub(crate) const fn rlim(value: u64) -> libc::rlim_t {
    if value == u64::MAX {
        libc::RLIM_INFINITY
    } else {
        value as libc::rlim_t
    }
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether this process may write to `path` (by `access(W_OK)`, which uses
/// the real ids; Airlock does not run setuid).
pub fn is_writable(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Sends SIGKILL to `pid`. Refuses pid 0, 1, negative-looking values and
/// our own pid, which `kill` would turn into a process-group or
/// broadcast kill.
pub fn kill_pid(pid: u32) -> io::Result<()> {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    if raw <= 1 || pid == std::process::id() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: kill takes plain integers; `raw` is a single positive pid
    // other than init and ourselves.
    if unsafe { libc::kill(raw, libc::SIGKILL) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Current (soft, hard) limit of a resource for this process.
pub fn getrlimit(resource: Resource) -> io::Result<(u64, u64)> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid, writable rlimit struct for the duration of
    // the call.
    if unsafe { libc::getrlimit(raw_resource(resource), &mut r) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let conv = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            u64::MAX
        } else {
            v
        }
    };
    Ok((conv(r.rlim_cur), conv(r.rlim_max)))
}

/// Sets a limit of another (or this) process.
pub fn prlimit(pid: u32, setting: RlimitSetting) -> io::Result<()> {
    let Ok(raw_pid) = libc::pid_t::try_from(pid) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let new = libc::rlimit {
        rlim_cur: rlim(setting.soft),
        rlim_max: rlim(setting.hard),
    };
    // SAFETY: `new` is a valid rlimit struct; the old-value pointer may be
    // null.
    let rc = unsafe {
        libc::prlimit(
            raw_pid,
            raw_resource(setting.resource),
            &new,
            std::ptr::null_mut(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_refuses_dangerous_pids() {
        for pid in [0, 1, std::process::id(), u32::MAX] {
            assert!(kill_pid(pid).is_err(), "pid {pid} not refused");
        }
    }

    #[test]
    fn rlim_maps_max_to_infinity() {
        assert_eq!(rlim(u64::MAX), libc::RLIM_INFINITY);
        assert_eq!(rlim(7), 7);
    }

    #[test]
    fn tmp_is_writable_and_proc_root_is_not() {
        assert!(is_writable(Path::new(&std::env::temp_dir())));
        assert!(!is_writable(Path::new("/nonexistent/airlock")));
    }
}
