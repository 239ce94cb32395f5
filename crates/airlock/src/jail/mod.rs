//! The QEMU jail (the model: Firecracker's jailer). When Airlock runs as
//! root, each VM's QEMU runs
//! - as a uid of its own from a range Airlock owns ([`JailConfig`]; the
//!   gid is the same, no supplementary group but the ones named below),
//!   held by a lock file for as long as the VM lives ([`UidLease`]);
//! - with no capability: bounding set emptied, then `setresuid` from 0,
//!   which clears the others, and `PR_SET_NO_NEW_PRIVS`;
//! - in a mount namespace of its own whose root is an empty tmpfs showing
//!   only what its command line names, each at its host path
//!   (`plan.rs`): `/usr` (and `/lib*`) read-only, the loader cache,
//!   `/dev/null`, `/dev/urandom` (`/dev/kvm` under KVM), its work dir
//!   (writable, given to its uid, mode 0700), its images and layer
//!   read-only, and its template's memory file.
//!
//! A template's memory file: QEMU 7.2 opens a `memory-backend-file`
//! read-write even when it maps it privately (`readonly=on` makes the RAM
//! a ROM there; 8.2 separates the two with `rom=off`). So on QEMU older
//! than 8.2 a clone's memory file is `root:<template gid>` mode 0660 and
//! the clone gets that one group; from 8.2 on it is `root:root` 0644 and
//! bound read-only. A template's own boot writes its memory file: the
//! file is made (empty) and lent to its jail uid for that boot.
//!
//! A uid is chosen by hashing the VM id into the range, then trying the
//! next ones until a lock file (`/run/airlock-jail/uids/<uid>.lock`,
//! `flock`) is free: unique among all Airlock processes of the host,
//! and free again when the process holding it dies.

#[allow(unsafe_code)] // the jail's syscalls between fork and exec
mod enter;
mod plan;

use crate::error::BootError;
use airlock_qemu::{DiskAccess, MemorySharing, VmSpec};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub(crate) use enter::Entry;

/// The first uid of the default range: above the ranges a host hands out
/// (system and login users, systemd's dynamic users 61184-65519, the
/// container ranges up to 1879048191 and the usual subuid ranges), and
/// below 2^31 (no sign trouble).
pub const DEFAULT_UID_BASE: u32 = 1_900_000_000;
/// The size of the default range: more uids than VMs a host can run, so
/// that a hash finds a free one at once.
pub const DEFAULT_UID_COUNT: u32 = 65_536;
/// Where the jail keeps its uid locks and the (empty) mount point of
/// every jail's root. Fixed, not under the run dir: every Airlock
/// process of the host shares one uid range.
pub const JAIL_DIR: &str = "/run/airlock-jail";

/// Whether and how QEMU is jailed (the server's `[jail]` table, the
/// library's [`crate::Config::jail`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// Jail QEMU when this process runs as root (default on; the
    /// environment's `AIRLOCK_JAIL=0` turns it off). Without root there
    /// is nothing to drop: QEMU runs as the caller.
    pub enabled: bool,
    /// The first jail uid (gid the same); `uid_base - 1` is the group of
    /// templates' memory files (QEMU < 8.2).
    pub uid_base: u32,
    /// How many uids the range holds.
    pub uid_count: u32,
}

impl Default for JailConfig {
    fn default() -> Self {
        Self {
            enabled: !matches!(
                std::env::var("AIRLOCK_JAIL").as_deref(),
                Ok("0" | "off" | "false" | "no")
            ),
            uid_base: DEFAULT_UID_BASE,
            uid_count: DEFAULT_UID_COUNT,
        }
    }
}

impl JailConfig {
    /// Checks the range: not uid 0, not the template gid 0, below 2^31.
    ///
    /// # Errors
    /// What is wrong, as a sentence.
    pub fn validate(&self) -> Result<(), String> {
        if self.uid_base < 2 || self.uid_count == 0 {
            return Err(format!(
                "jail uid range {}+{}: the base must be at least 2 and the count at least 1",
                self.uid_base, self.uid_count
            ));
        }
        if u64::from(self.uid_base) + u64::from(self.uid_count) > 1 << 31 {
            return Err(format!(
                "jail uid range {}+{} goes past 2^31",
                self.uid_base, self.uid_count
            ));
        }
        Ok(())
    }

    /// The jail in force for this process: `None` when turned off or not
    /// running as root.
    pub fn resolve(&self) -> Option<Jail> {
        (self.enabled && nix::unistd::geteuid().is_root()).then(|| Jail {
            config: self.clone(),
            dir: PathBuf::from(JAIL_DIR),
        })
    }
}

/// A jail in force (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jail {
    config: JailConfig,
    dir: PathBuf,
}

/// A jail uid held for one VM: free again when dropped (or when the
/// process dies: the lock goes with it). Files lent to the uid outside
/// the work dir are given back to root on drop.
#[derive(Debug)]
pub struct UidLease {
    uid: u32,
    _lock: nix::fcntl::Flock<std::fs::File>,
    lent: Vec<PathBuf>,
}

impl UidLease {
    /// The uid (and gid).
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        for path in &self.lent {
            // A file renamed meanwhile (a template installed) is fixed at
            // its next use.
            let _ = std::os::unix::fs::lchown(path, Some(0), Some(0));
        }
    }
}

/// The uids tried for `vm_id`, in order: its hash's slot, then the next
/// ones round the range.
pub(crate) fn candidate_uids(vm_id: &str, base: u32, count: u32) -> impl Iterator<Item = u32> {
    // FNV-1a: stable across builds and processes.
    let hash = vm_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let count64 = u64::from(count.max(1));
    let start = hash % count64;
    (0..count64).map(move |i| {
        // Below `count`, so it fits.
        base + u32::try_from((start + i) % count64).unwrap_or(0)
    })
}

/// What [`Jail::prepare`] hands back: the held uid and the entry to
/// install on QEMU's command.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub lease: UidLease,
    pub entry: Entry,
}

impl Jail {
    /// The jail of `config` keeping its locks and root under `dir` (tests).
    #[cfg(test)]
    pub(crate) fn in_dir(config: JailConfig, dir: PathBuf) -> Self {
        Self { config, dir }
    }

    /// The range in force.
    pub fn config(&self) -> &JailConfig {
        &self.config
    }

    /// The group of templates' memory files (QEMU < 8.2).
    pub fn template_gid(&self) -> u32 {
        self.config.uid_base - 1
    }

    fn root_dir(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Takes a free uid for `vm_id` (blocking: file locks).
    ///
    /// # Errors
    /// The lock dir's I/O error; `WouldBlock` when every uid is taken.
    pub fn lease(&self, vm_id: &str) -> io::Result<UidLease> {
        use nix::fcntl::{Flock, FlockArg};
        let locks = self.dir.join("uids");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&locks)?;
        for uid in candidate_uids(vm_id, self.config.uid_base, self.config.uid_count) {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(locks.join(format!("{uid}.lock")))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => {
                    return Ok(UidLease {
                        uid,
                        _lock: lock,
                        lent: Vec::new(),
                    })
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => continue,
                Err((_, errno)) => return Err(io::Error::from(errno)),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "every jail uid of {}+{} is taken",
                self.config.uid_base, self.config.uid_count
            ),
        ))
    }

    /// Readies the jail of the QEMU running `spec` from `qemu_binary`
    /// with its files in `work_dir` (blocking: file ownership): takes a
    /// uid, gives it the work dir (all but the files named in
    /// `keep_root`), lends it the files outside the work dir it writes,
    /// and builds its root's plan. `read_only_memory`: QEMU maps a
    /// private memory file read-only (8.2 and later).
    ///
    /// # Errors
    /// The failing step's I/O error, naming it.
    pub(crate) fn prepare(
        &self,
        spec: &VmSpec,
        work_dir: &Path,
        keep_root: &[PathBuf],
        qemu_binary: &Path,
        kvm: bool,
        read_only_memory: bool,
    ) -> io::Result<Prepared> {
        let step = |what: &'static str| {
            move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"))
        };
        let mut lease = self.lease(&spec.vm_id).map_err(step("take a jail uid"))?;
        let uid = lease.uid;
        give_tree(work_dir, uid, keep_root).map_err(step("give the work dir to the jail uid"))?;
        std::fs::set_permissions(work_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(step("make the work dir private"))?;
        let mut needs = plan::Needs {
            work_dir: work_dir.to_path_buf(),
            read_only: vec![
                spec.boot.kernel.clone(),
                spec.boot.initramfs.clone(),
                spec.root.base.clone(),
            ],
            writable: Vec::new(),
            devices: vec!["/dev/null".into(), "/dev/urandom".into()],
            // Seen with their host owners and modes: the jail uid reads
            // (and, read-write, writes) what "others" may.
            shared_dirs: spec
                .shares
                .iter()
                .map(|share| (share.path.clone(), !share.read_only))
                .collect(),
        };
        let mut groups = Vec::new();
        if kvm {
            needs.devices.push("/dev/kvm".into());
            if let Ok(meta) = std::fs::metadata("/dev/kvm") {
                if meta.mode() & 0o006 != 0o006 {
                    groups.push(meta.gid());
                }
            }
        }
        let outside = |path: &Path| !path.starts_with(work_dir);
        for drive in &spec.extra_drives {
            if let Some(backing) = &drive.backing {
                needs.read_only.push(backing.clone());
            }
            match drive.access {
                DiskAccess::ReadOnly => needs.read_only.push(drive.path.clone()),
                DiskAccess::ReadWrite if outside(&drive.path) => {
                    lend(&mut lease, &drive.path).map_err(step("lend a disk to the jail uid"))?;
                    needs.writable.push(drive.path.clone());
                }
                DiskAccess::ReadWrite => {}
            }
        }
        if spec.root.access == DiskAccess::ReadWrite && outside(&spec.root.overlay) {
            lend(&mut lease, &spec.root.overlay).map_err(step("lend the overlay"))?;
            needs.writable.push(spec.root.overlay.clone());
        }
        if let Some(memory) = &spec.memory_file {
            let path = &memory.path;
            match memory.sharing {
                MemorySharing::Shared => {
                    // QEMU sizes an empty file; made here so that it can be lent.
                    if !path.exists() {
                        std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .open(path)
                            .map_err(step("make the template's memory file"))?;
                    }
                    if outside(path) {
                        lend(&mut lease, path).map_err(step("lend the memory file"))?;
                        needs.writable.push(path.clone());
                    } else {
                        std::os::unix::fs::lchown(path, Some(uid), Some(uid))?;
                    }
                }
                MemorySharing::Private if read_only_memory => {
                    set_owner_mode(path, 0, 0o644).map_err(step("seal the memory file"))?;
                    needs.read_only.push(path.clone());
                }
                MemorySharing::Private => {
                    let gid = self.template_gid();
                    set_owner_mode(path, gid, 0o660)
                        .map_err(step("share the memory file with the template group"))?;
                    groups.push(gid);
                    needs.writable.push(path.clone());
                }
            }
        }
        let system = plan::SystemPaths::probe(qemu_binary);
        let root = self.root_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&root)
            .map_err(step("make the jail's mount point"))?;
        let plan = plan::Plan::build(&root, &system, &needs)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let entry = Entry::new(&root, &plan, uid, groups)?;
        Ok(Prepared { lease, entry })
    }
}

/// Makes `path` `root:<gid>` with `mode`, when it is not so already.
fn set_owner_mode(path: &Path, gid: u32, mode: u32) -> io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.uid() != 0 || meta.gid() != gid {
        std::os::unix::fs::chown(path, Some(0), Some(gid))?;
    }
    if meta.mode() & 0o7777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Gives `path` to the lease's uid until the lease drops.
fn lend(lease: &mut UidLease, path: &Path) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(lease.uid), Some(lease.uid))?;
    lease.lent.push(path.to_path_buf());
    Ok(())
}

/// Gives the work dir `dir` and its files, but `keep`, to `uid` (gid the
/// same). Its subdirs (gvproxy's `net/`, its user's) keep their owner,
/// who keeps writing there while QEMU runs: they only become searchable,
/// and the sockets in them (the one QEMU connects to) are given to
/// `uid`. Symbolic links are not followed.
fn give_tree(dir: &Path, uid: u32, keep: &[PathBuf]) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if keep.contains(&path) || kind.is_symlink() {
            continue;
        }
        if kind.is_dir() {
            let mode = std::fs::metadata(&path)?.mode() & 0o7777;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o111))?;
            for inner in std::fs::read_dir(&path)? {
                let inner = inner?;
                if inner.file_type()?.is_socket() {
                    std::os::unix::fs::lchown(inner.path(), Some(uid), Some(uid))?;
                }
            }
        } else {
            std::os::unix::fs::lchown(&path, Some(uid), Some(uid))?;
        }
    }
    Ok(())
}

/// Prepares the jail on the blocking pool and maps its error.
pub(crate) async fn prepare_async(
    jail: &Jail,
    spec: &VmSpec,
    work_dir: PathBuf,
    keep_root: Vec<PathBuf>,
    qemu_binary: PathBuf,
    kvm: bool,
    read_only_memory: bool,
) -> Result<Prepared, BootError> {
    let (jail, spec_owned) = (jail.clone(), spec.clone());
    let vm_id = spec.vm_id.clone();
    crate::task::blocking("prepare the QEMU jail", move || {
        jail.prepare(
            &spec_owned,
            &work_dir,
            &keep_root,
            &qemu_binary,
            kvm,
            read_only_memory,
        )
    })
    .await?
    .map_err(|source| BootError::Jail { vm_id, source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    #[test]
    fn candidate_uids_start_at_the_vm_ids_slot_and_cover_the_range_once() {
        let uids: Vec<u32> = candidate_uids("0123456789abcdef", 1000, 16).collect();
        assert_eq!(uids.len(), 16);
        let mut sorted = uids.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (1000..1016).collect::<Vec<_>>());
        assert_eq!(
            candidate_uids("0123456789abcdef", 1000, 16).next(),
            Some(uids[0]),
            "the same id gives the same first uid"
        );
        let firsts: std::collections::BTreeSet<u32> = (0..64)
            .filter_map(|i| candidate_uids(&format!("{i:016x}"), 1000, 16).next())
            .collect();
        assert!(firsts.len() > 8, "ids spread over the range: {firsts:?}");
    }

    #[test]
    fn a_held_uid_is_not_leased_again_until_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let config = JailConfig {
            enabled: true,
            uid_base: 5000,
            uid_count: 2,
        };
        let jail = Jail::in_dir(config, dir.path().to_path_buf());
        let a = jail.lease("vm-a").unwrap();
        let b = jail.lease("vm-a").unwrap();
        assert_ne!(a.uid(), b.uid());
        let err = jail.lease("vm-c").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        let freed = a.uid();
        drop(a);
        assert_eq!(jail.lease("vm-c").unwrap().uid(), freed);
    }

    #[test]
    fn a_range_at_zero_or_past_two_to_the_31_is_refused() {
        let ok = JailConfig {
            enabled: true,
            uid_base: DEFAULT_UID_BASE,
            uid_count: DEFAULT_UID_COUNT,
        };
        assert_eq!(ok.validate(), Ok(()));
        for (base, count) in [(0, 10), (1, 10), (100, 0), (u32::MAX - 5, 2), (1 << 31, 1)] {
            let bad = JailConfig {
                uid_base: base,
                uid_count: count,
                ..ok.clone()
            };
            assert!(bad.validate().is_err(), "{base}+{count}");
        }
    }

    #[test]
    fn a_jailed_child_runs_as_its_uid_and_sees_only_its_paths() {
        if !nix::unistd::geteuid().is_root() {
            return; // the jail needs root
        }
        let dir = tempfile::tempdir().unwrap();
        let (root, work) = (dir.path().join("root"), dir.path().join("vm"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(work.join("mine"), "").unwrap();
        let uid = DEFAULT_UID_BASE + DEFAULT_UID_COUNT - 7;
        give_tree(&work, uid, &[]).unwrap();
        let system = plan::SystemPaths::probe(Path::new("/usr/bin/sh"));
        let needs = plan::Needs {
            work_dir: work.clone(),
            read_only: Vec::new(),
            writable: Vec::new(),
            devices: vec!["/dev/null".into()],
            shared_dirs: Vec::new(),
        };
        let plan = plan::Plan::build(&root, &system, &needs).unwrap();
        let entry = Entry::new(&root, &plan, uid, Vec::new()).unwrap();
        let script = format!(
            "id -u; id -G; ls /; ls {}; grep -c . /etc/passwd; echo x > /usr/x",
            work.display()
        );
        let mut cmd = std::process::Command::new("/usr/bin/sh");
        cmd.args(["-c", &script]);
        entry.install(&mut cmd);
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines.first(),
            Some(&uid.to_string().as_str()),
            "{stdout} {stderr}"
        );
        assert_eq!(
            lines.get(1),
            Some(&uid.to_string().as_str()),
            "no other group"
        );
        assert!(lines.contains(&"usr") && lines.contains(&"dev"), "{stdout}");
        for hidden in ["root", "home", "proc", "boot"] {
            assert!(
                !lines.contains(&hidden),
                "{hidden} is in the jail: {stdout}"
            );
        }
        assert!(lines.contains(&"mine"), "its work dir: {stdout}");
        assert!(
            stderr.contains("/etc/passwd"),
            "the host's /etc is hidden: {stderr}"
        );
        assert!(stderr.contains("/usr/x"), "/usr is read-only: {stderr}");
        assert!(!Path::new("/usr/x").exists());
    }

    #[test]
    fn a_disabled_jail_is_never_in_force() {
        let off = JailConfig {
            enabled: false,
            ..JailConfig::default()
        };
        assert_eq!(off.resolve(), None);
    }

    #[test]
    fn giving_a_work_dir_keeps_the_named_files_subdirs_and_link_targets_root_s() {
        if !nix::unistd::geteuid().is_root() {
            return; // chown needs root
        }
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("vm");
        std::fs::create_dir_all(work.join("net")).unwrap();
        std::fs::set_permissions(work.join("net"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(work.join("net/q.sock")).unwrap();
        std::fs::write(work.join("net/gvproxy.log"), "").unwrap();
        std::fs::write(work.join("root.qcow2"), "").unwrap();
        std::fs::write(work.join("owner"), "").unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, "").unwrap();
        std::os::unix::fs::symlink(&outside, work.join("link")).unwrap();
        give_tree(&work, 5555, &[work.join("owner")]).unwrap();
        let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap();
        assert_eq!(meta(&work).uid(), 5555);
        assert_eq!(meta(&work.join("root.qcow2")).uid(), 5555);
        assert_eq!(
            meta(&work.join("net/q.sock")).uid(),
            5555,
            "QEMU connects to it"
        );
        assert_eq!(meta(&work.join("net")).uid(), 0);
        assert_eq!(meta(&work.join("net")).mode() & 0o777, 0o711);
        assert_eq!(meta(&work.join("net/gvproxy.log")).uid(), 0);
        assert_eq!(meta(&work.join("owner")).uid(), 0);
        assert_eq!(meta(&outside).uid(), 0, "the link's target stays root's");
    }
}
