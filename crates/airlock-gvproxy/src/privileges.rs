//! Who gvproxy runs as, and how it is started once it may no longer reach
//! its own binary by path.
//!
//! After its namespaces are made (see [`crate::netns`]) the child gives up
//! every privilege before exec, in this order: the capability bounding set
//! is emptied and the ambient set cleared (while `CAP_SETPCAP` is still
//! held); as root, the supplementary groups are cleared and the gid then
//! the uid become [`RunAs`]'s (real, effective and saved: the kernel then
//! clears the permitted and effective sets); every capability set is
//! zeroed with `capset`; `no_new_privs` is set, so no set-uid binary or
//! file capability can give anything back.
//!
//! The binary is then executed by file descriptor (`execveat` with
//! `AT_EMPTY_PATH`), the descriptor opened by the parent: the unprivileged
//! user usually cannot traverse the directories above it (e.g. a 0700
//! home). Its `argv` and environment are prepared by the parent too (the
//! environment from the parent's and the `Command`'s changes).
#![allow(unsafe_code)]

use crate::GvproxyError;
use std::ffi::{CString, OsStr};
use std::fs::Metadata;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The user looked up when no [`RunAs`] is given.
pub const DEFAULT_USER: &str = "nobody";

/// The unprivileged uid and gid gvproxy runs as when Airlock is root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// The uid (never 0).
    pub uid: u32,
    /// The primary gid (never 0); there are no supplementary groups.
    pub gid: u32,
}

impl RunAs {
    /// [`DEFAULT_USER`] and its primary group, from the user database.
    /// Blocking (NSS may read files): call it off the async runtime.
    ///
    /// # Errors
    /// [`GvproxyError::InvalidOptions`] when the user does not exist or is
    /// root.
    pub fn default_user() -> Result<Self, GvproxyError> {
        let user = nix::unistd::User::from_name(DEFAULT_USER)
            .map_err(|e| GvproxyError::InvalidOptions {
                reason: format!(
                    "cannot look up user {DEFAULT_USER:?}: {e}; set LaunchOptions::run_as"
                ),
            })?
            .ok_or_else(|| GvproxyError::InvalidOptions {
                reason: format!(
                    "there is no user {DEFAULT_USER:?} for gvproxy to run as: create one or set \
                     LaunchOptions::run_as"
                ),
            })?;
        let run_as = Self {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        };
        run_as.validate()?;
        Ok(run_as)
    }

    /// Refuses uid 0 and gid 0.
    ///
    /// # Errors
    /// [`GvproxyError::InvalidOptions`].
    pub fn validate(&self) -> Result<(), GvproxyError> {
        if self.uid == 0 || self.gid == 0 {
            return Err(GvproxyError::InvalidOptions {
                reason: format!(
                    "run_as uid {} gid {}: gvproxy must not run as root; use an unprivileged \
                     user (ideally one dedicated to gvproxy)",
                    self.uid, self.gid
                ),
            });
        }
        Ok(())
    }

    /// Whether this user (with no supplementary group) may search the
    /// directory described by `meta`.
    pub fn can_traverse(&self, meta: &Metadata) -> bool {
        let mode = meta.mode();
        if meta.uid() == self.uid {
            mode & 0o100 != 0
        } else if meta.gid() == self.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        }
    }
}

/// What the child gives up before exec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrivilegeDrop {
    /// As root: become this user, with no capability at all.
    ToUser(RunAs),
    /// In a user namespace (the caller is not root, so gvproxy already has
    /// the caller's uid outside it): drop every capability it holds there.
    CapabilitiesOnly,
}

impl PrivilegeDrop {
    /// What the drop is, for error messages.
    pub(crate) fn describe(self) -> String {
        match self {
            Self::ToUser(r) => format!("uid {} gid {}", r.uid, r.gid),
            Self::CapabilitiesOnly => "no capabilities in its user namespace".into(),
        }
    }

    /// The child-side work (async-signal-safe: syscalls on copied
    /// integers only; `airlock_sys_util::privileges`).
    pub(crate) fn apply(self) -> io::Result<()> {
        use airlock_sys_util::privileges::{drop_privileges, Credentials};
        match self {
            Self::ToUser(run_as) => drop_privileges(Some(Credentials {
                uid: run_as.uid,
                gid: run_as.gid,
                groups: &[],
            })),
            Self::CapabilitiesOnly => drop_privileges(None),
        }
    }
}

/// A NULL-terminated array of pointers into [`CString`]s that live beside
/// it (for `execveat`'s `argv` and `envp`).
#[derive(Debug)]
struct CStringArray {
    /// Owns what `pointers` points to (read only through them).
    #[cfg_attr(not(test), allow(dead_code))]
    strings: Vec<CString>,
    pointers: Vec<*const libc::c_char>,
}

// SAFETY: the pointers only point into `strings`, whose heap buffers are
// owned by the same value, never change and move with it; nothing writes
// through them.
unsafe impl Send for CStringArray {}
// SAFETY: as above: shared access only reads.
unsafe impl Sync for CStringArray {}

impl CStringArray {
    fn new(items: impl IntoIterator<Item = Vec<u8>>) -> io::Result<Self> {
        let strings = items
            .into_iter()
            .map(|b| CString::new(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e)))
            .collect::<io::Result<Vec<_>>>()?;
        let mut pointers: Vec<_> = strings.iter().map(|s| s.as_ptr()).collect();
        pointers.push(std::ptr::null());
        Ok(Self { strings, pointers })
    }
}

/// gvproxy's binary, opened by the parent, its `argv` and environment.
#[derive(Debug)]
pub(crate) struct ExecPlan {
    /// The binary (read-only, close-on-exec).
    binary: OwnedFd,
    /// The binary is a `#!` script: its interpreter reopens it through
    /// `/dev/fd/N`, so the descriptor must stay open across exec.
    script: bool,
    argv: CStringArray,
    envp: CStringArray,
}

impl ExecPlan {
    /// Opens `program` and prepares `argv` (`program`, then `args`) and
    /// the environment (`NAME=value` for each of `env`). Blocking (opens
    /// and reads the file's first bytes).
    ///
    /// # Errors
    /// The open or read error; `InvalidInput` for a NUL byte.
    pub(crate) fn new<A, K, V>(
        program: &Path,
        args: &[A],
        env: impl IntoIterator<Item = (K, V)>,
    ) -> io::Result<Self>
    where
        A: AsRef<OsStr>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let mut file = std::fs::File::open(program)?;
        let mut magic = [0u8; 2];
        let script = file.read_exact(&mut magic).is_ok() && &magic == b"#!";
        let argv = CStringArray::new(
            std::iter::once(program.as_os_str())
                .chain(args.iter().map(AsRef::as_ref))
                .map(|a| a.as_bytes().to_vec()),
        )?;
        let envp = CStringArray::new(env.into_iter().map(|(k, v)| {
            let mut entry = k.as_ref().as_bytes().to_vec();
            entry.push(b'=');
            entry.extend_from_slice(v.as_ref().as_bytes());
            entry
        }))?;
        Ok(Self {
            binary: file.into(),
            script,
            argv,
            envp,
        })
    }

    /// The child-side exec; returns only on failure. Async-signal-safe:
    /// one `fcntl` and the `execveat` on data prepared by the parent.
    pub(crate) fn exec(&self) -> io::Error {
        let fd = self.binary.as_raw_fd();
        if self.script {
            // SAFETY: plain syscall on an fd owned by self.
            if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
                return io::Error::last_os_error();
            }
        }
        // SAFETY: `argv` and `envp` are NULL-terminated arrays of
        // NUL-terminated strings owned by self; the empty path with
        // AT_EMPTY_PATH executes the fd itself.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                fd,
                c"".as_ptr(),
                self.argv.pointers.as_ptr(),
                self.envp.pointers.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
        }
        io::Error::last_os_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn root_is_refused_as_run_as() {
        assert!(RunAs { uid: 0, gid: 1 }.validate().is_err());
        assert!(RunAs { uid: 1, gid: 0 }.validate().is_err());
        assert!(RunAs { uid: 1, gid: 1 }.validate().is_ok());
    }

    #[test]
    fn traversal_follows_owner_group_then_other_bits() {
        let dir = tempfile::tempdir().unwrap();
        let meta = |mode| {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            std::fs::metadata(dir.path()).unwrap()
        };
        let m = meta(0o700);
        let (uid, gid) = (m.uid(), m.gid());
        let other = RunAs {
            uid: uid + 1,
            gid: gid + 1,
        };
        let group = RunAs { uid: uid + 1, gid };
        let owner = RunAs { uid, gid: gid + 1 };
        assert!(owner.can_traverse(&m) && !group.can_traverse(&m) && !other.can_traverse(&m));
        let m = meta(0o710);
        assert!(group.can_traverse(&m) && !other.can_traverse(&m));
        let m = meta(0o601);
        assert!(!owner.can_traverse(&m) && other.can_traverse(&m));
    }

    #[test]
    fn exec_plan_spots_scripts_and_builds_argv_and_envp() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s");
        std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
        let plan = ExecPlan::new(&script, &["-a", "b"], [("K", "v=1"), ("E", "")]).unwrap();
        assert!(plan.script);
        let argv: Vec<&[u8]> = plan.argv.strings.iter().map(|s| s.as_bytes()).collect();
        assert_eq!(argv, [script.as_os_str().as_bytes(), b"-a", b"b"]);
        assert_eq!(plan.argv.pointers.len(), 4);
        assert!(plan.argv.pointers[3].is_null());
        let envp: Vec<&[u8]> = plan.envp.strings.iter().map(|s| s.as_bytes()).collect();
        assert_eq!(envp, [&b"K=v=1"[..], b"E="]);
        assert!(plan.envp.pointers[2].is_null());
        let no_env: [(&str, &str); 0] = [];
        let elf = ExecPlan::new(Path::new("/bin/sh"), &[] as &[&str], no_env).unwrap();
        assert!(!elf.script);
    }

    #[test]
    fn exec_plan_refuses_nul_bytes_and_missing_files() {
        let no_env: [(&str, &str); 0] = [];
        assert!(ExecPlan::new(Path::new("/bin/sh"), &["a\0b"], no_env).is_err());
        let missing = ExecPlan::new(Path::new("/nonexistent-airlock/gvproxy"), &["x"], no_env);
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
