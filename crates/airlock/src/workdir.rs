//! The private work dir of one VM: every per-VM file (overlay, sockets,
//! logs) lives there, so destroying a VM is one directory removal. Its
//! owner record (`owner.rs`) says which Airlock process made it and which
//! processes run for it, for the sweep after a crash (`sweep.rs`).

use crate::error::{BootError, Result};
use crate::owner::{parse_stat, process_line, OwnerRecord, ProcessStamp};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Refuses `dir` unless it is a real directory (not a symlink) owned by
/// this process's effective user and writable by no one else: the run dir
/// holds every VM's sockets and disk overlay, and a default like
/// `/tmp/airlock-<uid>` can be made in advance by another user.
///
/// # Errors
/// [`BootError::UnsafeRunDir`] saying what is wrong;
/// [`BootError::Io`] when it cannot be examined.
pub fn check_private_dir(dir: &Path) -> Result<(), BootError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| BootError::io("examine", dir, e))?;
    let unsafe_because = |why: String| BootError::UnsafeRunDir {
        path: dir.to_path_buf(),
        why,
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_because("it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_because("it is not a directory".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_because(format!(
            "it is owned by uid {}, not by this process's uid {me}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_because(format!(
            "its mode {:o} lets other users write in it",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// One VM's work dir (mode 0700).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// The dir holding every VM's work dir.
    pub fn vms_dir(run_dir: &Path) -> PathBuf {
        run_dir.join("vms")
    }

    /// Creates `run_dir/vms/<vm_id>` with mode 0700 (and its parents, also
    /// private), after checking that `run_dir` and `run_dir/vms` are this
    /// process's own ([`check_private_dir`]).
    ///
    /// # Errors
    /// [`BootError::Io`] naming the directory;
    /// [`BootError::UnsafeRunDir`] for a run dir another user could reach.
    pub fn create(run_dir: &Path, vm_id: &str) -> Result<Self, BootError> {
        let vms = Self::vms_dir(run_dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&vms)
            .map_err(|e| BootError::io("create", &vms, e))?;
        check_private_dir(run_dir)?;
        check_private_dir(&vms)?;
        let path = vms.join(vm_id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| BootError::io("create", &path, e))?;
        // The umask may have narrowed nothing, but never widened: make sure.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| BootError::io("chmod", &path, e))?;
        Ok(Self { path })
    }

    /// [`WorkDir::create`], then its owner record: this process, and the
    /// tenant of the VM's limits group. On tokio's blocking pool.
    ///
    /// # Errors
    /// As [`WorkDir::create`]; [`BootError::Io`] when the record cannot be
    /// written (the dir is removed again).
    pub async fn create_owned(
        run_dir: &Path,
        vm_id: &str,
        tenant: &str,
    ) -> Result<Self, BootError> {
        let (run_dir, vm_id) = (run_dir.to_path_buf(), vm_id.to_owned());
        let path = Self::vms_dir(&run_dir).join(&vm_id);
        let tenant = tenant.to_owned();
        let made = tokio::task::spawn_blocking(move || {
            let dir = Self::create(&run_dir, &vm_id)?;
            let owner = ProcessStamp::current().ok_or_else(|| {
                BootError::io(
                    "read",
                    "/proc/self/stat",
                    std::io::Error::other("no start time"),
                )
            });
            let written = owner.and_then(|owner| {
                let record = OwnerRecord::new(owner, &tenant).render();
                let file = dir.owner_file();
                std::fs::write(&file, record).map_err(|e| BootError::io("write", &file, e))
            });
            match written {
                Ok(()) => Ok(dir),
                Err(e) => {
                    let _ = dir.remove();
                    Err(e)
                }
            }
        });
        made.await
            .map_err(|e| BootError::io("create", path, std::io::Error::other(e)))?
    }

    /// Rewrites the owner record's tenant (the VM's limits group moved to
    /// `airlock/<tenant>/<vm id>`), atomically: a sweep reads the old
    /// record or the new one, whole. On tokio's blocking pool.
    ///
    /// # Errors
    /// [`BootError::Io`] naming the record; [`BootError::Io`] with
    /// `InvalidData` when it is not a record.
    pub async fn set_tenant(&self, tenant: &str) -> Result<(), BootError> {
        let (file, tenant) = (self.owner_file(), tenant.to_owned());
        crate::task::blocking("rewrite an owner record", move || {
            // Read as the sweep reads it: no link, only a file of ours.
            let mut record = match crate::owner::OwnerFile::read(&file) {
                crate::owner::OwnerFile::Record(record) => record,
                crate::owner::OwnerFile::Missing => {
                    let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
                    return Err(BootError::io("read", &file, missing));
                }
                crate::owner::OwnerFile::Unrecognised { reason } => {
                    let bad = std::io::Error::new(std::io::ErrorKind::InvalidData, reason);
                    return Err(BootError::io("parse", &file, bad));
                }
            };
            record.tenant = tenant;
            let temp = file.with_extension("tmp");
            // The dir may be a jailed QEMU's: the new file is made afresh
            // (O_EXCL), never written through a link planted there.
            let _ = std::fs::remove_file(&temp);
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                .open(&temp)
                .and_then(|mut f| std::io::Write::write_all(&mut f, record.render().as_bytes()));
            written.map_err(|e| BootError::io("write", &temp, e))?;
            std::fs::rename(&temp, &file).map_err(|e| BootError::io("rename", &file, e))
        })
        .await?
    }

    /// Appends process `pid`, serving this VM as `role`, to the owner
    /// record, so that a sweep can end it if this process dies. A process
    /// already gone is not recorded.
    ///
    /// # Errors
    /// [`BootError::Io`] naming the record.
    pub async fn record_process(&self, role: &str, pid: u32) -> Result<(), BootError> {
        use tokio::io::AsyncWriteExt;
        let stat = tokio::fs::read_to_string(format!("/proc/{pid}/stat")).await;
        let Some(fields) = stat.ok().as_deref().and_then(parse_stat) else {
            return Ok(());
        };
        let stamp = ProcessStamp {
            pid,
            start_ticks: fields.start_ticks,
        };
        let file = self.owner_file();
        let mut record = tokio::fs::OpenOptions::new()
            .append(true)
            // Not through a link a jailed QEMU (owning the dir) put there.
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&file)
            .await
            .map_err(|e| BootError::io("open", &file, e))?;
        record
            .write_all(process_line(role, stamp).as_bytes())
            .await
            .map_err(|e| BootError::io("append to", &file, e))
    }

    /// A work dir at `path`, not created (for what is built from its paths
    /// alone: tests, a memory template's fixed argv).
    pub(crate) fn at(path: PathBuf) -> Self {
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The qcow2 overlay QEMU opens as the root disk.
    pub fn overlay(&self) -> PathBuf {
        self.path.join("root.qcow2")
    }

    /// The qcow2 overlay QEMU opens as the workspace disk (when the VM has
    /// one).
    pub fn workspace(&self) -> PathBuf {
        self.path.join("workspace.qcow2")
    }

    /// The socket of the `airlock.cmd` port.
    pub fn cmd_socket(&self) -> PathBuf {
        self.path.join("cmd.sock")
    }

    /// The socket of the `airlock.event` port.
    pub fn event_socket(&self) -> PathBuf {
        self.path.join("event.sock")
    }

    /// QEMU's QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.path.join("qmp.sock")
    }

    /// The guest's serial console log.
    pub fn console_log(&self) -> PathBuf {
        self.path.join("console.log")
    }

    /// QEMU's own messages (its stderr; its stdout too when the console
    /// is not on it).
    pub fn qemu_log(&self) -> PathBuf {
        self.path.join("qemu.log")
    }

    /// The owner record (see `owner.rs`), for sweeping after a crash.
    pub fn owner_file(&self) -> PathBuf {
        self.path.join("owner")
    }

    /// Removes the dir and everything in it. Returns whether it existed.
    ///
    /// # Errors
    /// The removal's I/O error (other than "not found").
    pub fn remove(&self) -> std::io::Result<bool> {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl WorkDir {
    /// [`WorkDir::remove`] through tokio (for async code).
    ///
    /// # Errors
    /// As [`WorkDir::remove`].
    pub async fn remove_async(&self) -> std::io::Result<bool> {
        match tokio::fs::remove_dir_all(&self.path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_dir_is_private_and_removable() {
        let run = tempfile::tempdir().unwrap();
        let wd = WorkDir::create(run.path(), "abc").unwrap();
        let mode = std::fs::metadata(wd.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::write(wd.console_log(), b"x").unwrap();
        assert!(wd.remove().unwrap());
        assert!(!wd.remove().unwrap(), "second removal is a no-op");
    }

    #[test]
    fn a_run_dir_others_may_write_in_is_refused_naming_it() {
        let parent = tempfile::tempdir().unwrap();
        let run = parent.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).unwrap();

        let err = WorkDir::create(&run, "abc").unwrap_err();

        assert!(matches!(err, BootError::UnsafeRunDir { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains(&run.display().to_string()), "{message}");
        assert!(message.contains("777"), "{message}");
        assert!(message.contains("AIRLOCK_RUN_DIR"), "{message}");
        assert!(!run.join("vms").join("abc").exists());
    }

    #[test]
    fn a_run_dir_that_is_a_symlink_or_a_file_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let real = parent.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = parent.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let file = parent.path().join("file");
        std::fs::write(&file, b"").unwrap();

        let by_link = check_private_dir(&link).unwrap_err().to_string();
        let by_file = check_private_dir(&file).unwrap_err().to_string();

        assert!(by_link.contains("symbolic link"), "{by_link}");
        assert!(by_file.contains("not a directory"), "{by_file}");
        check_private_dir(&real).unwrap();
    }

    #[test]
    fn a_run_dir_owned_by_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return; // Only root can give a directory away.
        }
        let parent = tempfile::tempdir().unwrap();
        let run = parent.path().join("run");
        std::fs::create_dir(&run).unwrap();
        std::os::unix::fs::chown(&run, Some(65534), Some(65534)).unwrap();

        let err = check_private_dir(&run).unwrap_err().to_string();

        assert!(err.contains("owned by uid 65534"), "{err}");
    }

    #[test]
    fn creating_the_same_vm_twice_fails() {
        let run = tempfile::tempdir().unwrap();
        WorkDir::create(run.path(), "abc").unwrap();
        assert!(WorkDir::create(run.path(), "abc").is_err());
    }

    #[tokio::test]
    async fn records_are_never_written_through_a_link_planted_in_the_work_dir() {
        let run = tempfile::tempdir().unwrap();
        let wd = WorkDir::create_owned(run.path(), "vm-l", "team-a")
            .await
            .unwrap();
        let target = run.path().join("host-file");
        std::fs::write(&target, "keep").unwrap();
        // A link where the rewrite's temporary file goes is removed, not
        // followed.
        std::os::unix::fs::symlink(&target, wd.owner_file().with_extension("tmp")).unwrap();
        wd.set_tenant("team-b").await.unwrap();
        assert!(std::fs::read_to_string(wd.owner_file())
            .unwrap()
            .contains("tenant team-b"));
        // The record itself replaced by a link: no append, no rewrite.
        std::fs::remove_file(wd.owner_file()).unwrap();
        std::os::unix::fs::symlink(&target, wd.owner_file()).unwrap();
        assert!(wd.record_process("qemu", std::process::id()).await.is_err());
        assert!(wd.set_tenant("team-c").await.is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

    #[tokio::test]
    async fn an_owned_work_dir_records_its_owner_tenant_and_processes() {
        let run = tempfile::tempdir().unwrap();
        let wd = WorkDir::create_owned(run.path(), "vm-o", "team-a")
            .await
            .unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        wd.record_process("qemu", child.id()).await.unwrap();
        // A process that is gone is not recorded.
        wd.record_process("gvproxy", 999_999_999).await.unwrap();
        let text = std::fs::read_to_string(wd.owner_file()).unwrap();
        let record = OwnerRecord::parse(&text).unwrap();
        assert_eq!(record.owner, ProcessStamp::current().unwrap());
        assert_eq!(record.tenant, "team-a");
        assert_eq!(record.processes.len(), 1);
        assert_eq!(record.processes[0].role, "qemu");
        assert_eq!(record.processes[0].stamp.pid, child.id());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
