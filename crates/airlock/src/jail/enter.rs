//! Entering the jail, between fork and exec in QEMU's child: a new mount
//! namespace whose root is a tmpfs holding only the [`Plan`]'s paths,
//! then the credentials of the jail uid and no capabilities
//! (`airlock_sys_util::privileges`).
//!
//! Everything the child needs is made before the fork ([`Entry::new`]:
//! C strings, the group list); the child only makes syscalls, which is
//! what may run between fork and exec (no allocation, no lock).

use super::plan::{Access, Op, Plan};
use airlock_sys_util::privileges::{check_syscall as check, drop_privileges, Credentials};
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// One step, ready for the child.
#[derive(Debug)]
enum Step {
    Dir(CString),
    File(CString),
    Link {
        target: CString,
        link: CString,
    },
    Bind {
        source: CString,
        target: CString,
        /// The flags of the bind's remount (the bind itself cannot set them).
        remount: libc::c_ulong,
    },
    Proc(CString),
}

/// A jail ready to be entered by a child.
#[derive(Debug)]
pub(crate) struct Entry {
    root: CString,
    steps: Vec<Step>,
    groups: Vec<libc::gid_t>,
    uid: libc::uid_t,
    gid: libc::gid_t,
}

const TMPFS: &CStr = c"tmpfs";
const JAIL_FS: &CStr = c"airlock-jail";
/// The root holds only mount points: small, and no devices, setuid or
/// programs of its own.
const ROOT_OPTIONS: &CStr = c"mode=0755,size=1m";
const PROC: &CStr = c"proc";
/// The jail uid sees its own processes only, and no `/proc/sys`.
const PROC_OPTIONS: &CStr = c"hidepid=invisible,subset=pid";
const DOT: &CStr = c".";
const SLASH: &CStr = c"/";

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} holds a NUL byte", path.display()),
        )
    })
}

impl Entry {
    /// The entry into the jail built by `plan` under `root`, as `uid`
    /// (gid the same) with the supplementary `groups` (none but the
    /// template or KVM group).
    ///
    /// # Errors
    /// `InvalidInput` for a path with a NUL byte.
    pub fn new(root: &Path, plan: &Plan, uid: u32, groups: Vec<u32>) -> io::Result<Self> {
        let mut steps = Vec::with_capacity(plan.ops.len());
        for op in &plan.ops {
            steps.push(match op {
                Op::Dir(path) => Step::Dir(c_path(path)?),
                Op::Proc(path) => Step::Proc(c_path(path)?),
                Op::File(path) => Step::File(c_path(path)?),
                Op::Link { target, link } => Step::Link {
                    target: c_path(target)?,
                    link: c_path(link)?,
                },
                Op::Bind {
                    source,
                    target,
                    access,
                } => Step::Bind {
                    source: c_path(source)?,
                    target: c_path(target)?,
                    remount: remount_flags(*access),
                },
            });
        }
        Ok(Self {
            root: c_path(root)?,
            steps,
            groups,
            uid,
            gid: uid,
        })
    }

    /// Adds the hook that enters the jail to `cmd` (after those already
    /// there: the limits group is joined first, in the host's view).
    pub fn install(self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt;
        // SAFETY: the hook runs in the child between fork and exec; it
        // only makes syscalls on data prepared before the fork (no
        // allocation, no lock): see `enter`.
        unsafe {
            cmd.pre_exec(move || self.enter());
        }
    }

    /// Enters the jail (in the child).
    fn enter(&self) -> io::Result<()> {
        // SAFETY: plain syscalls on NUL-terminated strings owned by
        // `self`; none allocates or takes a lock, so they are safe between
        // fork and exec.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing done here reaches the host's mounts.
            check(libc::mount(
                std::ptr::null(),
                SLASH.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                JAIL_FS.as_ptr(),
                self.root.as_ptr(),
                TMPFS.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                ROOT_OPTIONS.as_ptr().cast(),
            ))?;
            libc::umask(0o022);
            for step in &self.steps {
                match step {
                    Step::Dir(path) => {
                        if libc::mkdir(path.as_ptr(), 0o755) == -1
                            && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
                        {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Step::File(path) => {
                        let fd = libc::open(
                            path.as_ptr(),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o644,
                        );
                        check(fd)?;
                        libc::close(fd);
                    }
                    Step::Link { target, link } => {
                        check(libc::symlink(target.as_ptr(), link.as_ptr()))?;
                    }
                    Step::Proc(path) => {
                        check(libc::mount(
                            PROC.as_ptr(),
                            path.as_ptr(),
                            PROC.as_ptr(),
                            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                            PROC_OPTIONS.as_ptr().cast(),
                        ))?;
                    }
                    Step::Bind {
                        source,
                        target,
                        remount,
                    } => {
                        check(libc::mount(
                            source.as_ptr(),
                            target.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REC,
                            std::ptr::null(),
                        ))?;
                        check(libc::mount(
                            std::ptr::null(),
                            target.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REMOUNT | *remount,
                            std::ptr::null(),
                        ))?;
                    }
                }
            }
            // The tmpfs becomes `/`; the host's root is detached.
            check(libc::chdir(self.root.as_ptr()))?;
            check(libc::syscall(libc::SYS_pivot_root, DOT.as_ptr(), DOT.as_ptr()) as libc::c_int)?;
            check(libc::umount2(DOT.as_ptr(), libc::MNT_DETACH))?;
            check(libc::chdir(SLASH.as_ptr()))?;
            // What QEMU makes (sockets, logs) is its own only.
            libc::umask(0o077);
        }
        // No capability left, none to come back (not even through a
        // setuid program): the jail uid, its groups, `no_new_privs`.
        drop_privileges(Some(Credentials {
            uid: self.uid,
            gid: self.gid,
            groups: &self.groups,
        }))
    }
}

/// The remount flags of a bind with `access`.
fn remount_flags(access: Access) -> libc::c_ulong {
    match access {
        Access::ReadOnlyExec => libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        Access::ReadOnly => libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Access::Writable => libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Access::Device => libc::MS_NOSUID | libc::MS_NOEXEC,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_binds_are_remounted_read_only_and_only_devices_keep_nodes() {
        for access in [Access::ReadOnlyExec, Access::ReadOnly] {
            assert_ne!(remount_flags(access) & libc::MS_RDONLY, 0, "{access:?}");
        }
        assert_eq!(remount_flags(Access::Writable) & libc::MS_RDONLY, 0);
        for access in [Access::ReadOnlyExec, Access::ReadOnly, Access::Writable] {
            assert_ne!(remount_flags(access) & libc::MS_NODEV, 0, "{access:?}");
        }
        assert_eq!(remount_flags(Access::Device) & libc::MS_NODEV, 0);
        assert_eq!(remount_flags(Access::ReadOnlyExec) & libc::MS_NOEXEC, 0);
    }

    #[test]
    fn a_path_with_a_nul_byte_is_refused_before_the_fork() {
        let path = Path::new(std::ffi::OsStr::from_bytes(b"/a\0b"));
        let err = c_path(path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
