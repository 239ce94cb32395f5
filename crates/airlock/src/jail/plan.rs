//! What a jailed QEMU sees (pure: no file is touched): the list of
//! directories, mount points, symbolic links and bind mounts that make
//! its root, built from the paths its command line names.
//!
//! Every path keeps its host name inside the jail, so the command line
//! needs no rewriting; the directories above each one are made afresh
//! (root-owned, 0755) in the jail's empty root, so a host dir the jail
//! uid could not enter (`/root`, a template dir of mode 0700) is no
//! obstacle, and nothing beside the named paths is visible.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

/// What a bind mount allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Read-only, programs may run from it (the system dirs).
    ReadOnlyExec,
    /// Read-only data (images, layers, a template's memory file).
    ReadOnly,
    /// Writable data (the work dir, a memory file QEMU writes).
    Writable,
    /// A device node (`/dev/null`, `/dev/urandom`, `/dev/kvm`).
    Device,
}

/// One step of building the jail's root, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Make a directory (0755).
    Dir(PathBuf),
    /// Make an empty file (the mount point of a file).
    File(PathBuf),
    /// Make the symbolic link `link` pointing to `target`.
    Link {
        /// What the link points to (as read on the host).
        target: PathBuf,
        /// The link, inside the jail's root.
        link: PathBuf,
    },
    /// Mount a procfs on `target` showing the jail uid its own processes
    /// only (`hidepid=invisible,subset=pid`: no `/proc/sys`, no other
    /// process): QEMU's 9p server changes a shared file's mode through
    /// `/proc/self/fd/N` (`fchmodat_nofollow`), so a share needs it.
    Proc(PathBuf),
    /// Bind-mount `source` (a host path) on `target` (inside the root).
    Bind {
        /// The host path.
        source: PathBuf,
        /// The mount point inside the root.
        target: PathBuf,
        /// What the mount allows.
        access: Access,
    },
}

/// The host's system paths QEMU runs from: `/usr` and, on a host without
/// merged `/usr`, `/lib*`; the `/bin`, `/lib*` symbolic links of a merged
/// one; the loader's cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SystemPaths {
    /// Directories bound read-only (with exec).
    pub dirs: Vec<PathBuf>,
    /// Files bound read-only (with exec): the loader cache, a QEMU
    /// binary outside those dirs.
    pub files: Vec<PathBuf>,
    /// Symbolic links recreated as they are: (link, target).
    pub links: Vec<(PathBuf, PathBuf)>,
}

/// The top-level names that may hold QEMU and its libraries.
const SYSTEM_TOP: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

impl SystemPaths {
    /// This host's system paths for `qemu_binary` (blocking: reads links).
    pub fn probe(qemu_binary: &Path) -> Self {
        let mut paths = Self::default();
        for top in SYSTEM_TOP {
            let path = Path::new(top);
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(path) {
                        paths.links.push((path.to_path_buf(), target));
                    }
                }
                Ok(meta) if meta.is_dir() => paths.dirs.push(path.to_path_buf()),
                _ => {}
            }
        }
        let cache = Path::new("/etc/ld.so.cache");
        if cache.exists() {
            paths.files.push(cache.to_path_buf());
        }
        // A QEMU outside the system dirs (AIRLOCK_QEMU) is bound by itself;
        // its libraries must be in the system ones.
        let binary = std::fs::canonicalize(qemu_binary).unwrap_or_else(|_| qemu_binary.into());
        for path in [qemu_binary.to_path_buf(), binary] {
            if !paths.dirs.iter().any(|dir| path.starts_with(dir)) && !paths.files.contains(&path) {
                paths.files.push(path);
            }
        }
        paths
    }
}

/// What one QEMU needs besides the system paths.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Needs {
    /// Its work dir, writable (sockets, overlay, a memory file).
    pub work_dir: PathBuf,
    /// Files it opens read-only (kernel, initramfs, base image, layers).
    pub read_only: Vec<PathBuf>,
    /// Files outside the work dir it opens for writing (a template's
    /// memory file, an install VM's layer).
    pub writable: Vec<PathBuf>,
    /// Device nodes.
    pub devices: Vec<PathBuf>,
    /// Host directories shared with the guest (virtio-9p), and whether
    /// QEMU may write in them.
    pub shared_dirs: Vec<(PathBuf, bool)>,
}

/// Why a plan cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path} cannot be shown in the jail: it must be an absolute path without `..`")]
pub(crate) struct BadPath {
    /// The path refused.
    pub path: PathBuf,
}

/// The steps that build the root of one jail under `root`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// In order.
    pub ops: Vec<Op>,
    made: BTreeSet<PathBuf>,
    /// Bound dirs and whether they are writable.
    bound_dirs: Vec<(PathBuf, bool)>,
}

impl Plan {
    /// The plan for `needs` and `system` under the jail root `root`.
    ///
    /// # Errors
    /// [`BadPath`] for a relative path or one with `..`.
    pub fn build(root: &Path, system: &SystemPaths, needs: &Needs) -> Result<Self, BadPath> {
        let mut plan = Self::default();
        for dir in &system.dirs {
            plan.bind_dir(root, dir, Access::ReadOnlyExec)?;
        }
        for (link, target) in &system.links {
            let inside = inside(root, link)?;
            plan.parents(root, &inside);
            plan.ops.push(Op::Link {
                target: target.clone(),
                link: inside,
            });
        }
        for file in &system.files {
            plan.bind_file(root, file, Access::ReadOnlyExec)?;
        }
        for device in &needs.devices {
            plan.bind_file(root, device, Access::Device)?;
        }
        plan.bind_dir(root, &needs.work_dir, Access::Writable)?;
        for file in &needs.writable {
            plan.bind_file(root, file, Access::Writable)?;
        }
        for file in &needs.read_only {
            plan.bind_file(root, file, Access::ReadOnly)?;
        }
        for (dir, writable) in &needs.shared_dirs {
            let access = if *writable {
                Access::Writable
            } else {
                Access::ReadOnly
            };
            plan.bind_dir(root, dir, access)?;
        }
        if !needs.shared_dirs.is_empty() {
            let proc = inside(root, Path::new("/proc"))?;
            if plan.made.insert(proc.clone()) {
                plan.ops.push(Op::Dir(proc.clone()));
            }
            plan.ops.push(Op::Proc(proc));
        }
        Ok(plan)
    }

    fn bind_dir(&mut self, root: &Path, dir: &Path, access: Access) -> Result<(), BadPath> {
        let target = inside(root, dir)?;
        self.parents(root, &target);
        if self.made.insert(target.clone()) {
            self.ops.push(Op::Dir(target.clone()));
        }
        self.ops.push(Op::Bind {
            source: dir.to_path_buf(),
            target,
            access,
        });
        self.bound_dirs
            .push((dir.to_path_buf(), access == Access::Writable));
        Ok(())
    }

    fn bind_file(&mut self, root: &Path, file: &Path, access: Access) -> Result<(), BadPath> {
        let target = inside(root, file)?;
        // Already visible through a bound dir that allows as much.
        let covered = self.bound_dirs.iter().any(|(dir, writable)| {
            file.starts_with(dir) && (*writable || access != Access::Writable)
        });
        if covered || self.made.contains(&target) {
            return Ok(());
        }
        self.parents(root, &target);
        self.made.insert(target.clone());
        self.ops.push(Op::File(target.clone()));
        self.ops.push(Op::Bind {
            source: file.to_path_buf(),
            target,
            access,
        });
        Ok(())
    }

    /// Makes the dirs between `root` and `target` (exclusive).
    fn parents(&mut self, root: &Path, target: &Path) {
        let mut missing = Vec::new();
        let mut dir = target.parent();
        while let Some(d) = dir {
            if d == root || !d.starts_with(root) || self.made.contains(d) {
                break;
            }
            missing.push(d.to_path_buf());
            dir = d.parent();
        }
        for d in missing.into_iter().rev() {
            self.made.insert(d.clone());
            self.ops.push(Op::Dir(d));
        }
    }
}

/// `path` (absolute, no `..`) under `root`.
fn inside(root: &Path, path: &Path) -> Result<PathBuf, BadPath> {
    let bad = || BadPath {
        path: path.to_path_buf(),
    };
    let mut out = root.to_path_buf();
    let mut components = path.components();
    if components.next() != Some(Component::RootDir) {
        return Err(bad());
    }
    for component in components {
        match component {
            Component::Normal(name) => out.push(name),
            Component::CurDir => {}
            _ => return Err(bad()),
        }
    }
    if out == root {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    fn system() -> SystemPaths {
        SystemPaths {
            dirs: vec!["/usr".into()],
            files: vec!["/etc/ld.so.cache".into()],
            links: vec![("/lib".into(), "usr/lib".into())],
        }
    }

    fn needs() -> Needs {
        Needs {
            work_dir: "/run/airlock/vms/a1".into(),
            read_only: vec![
                "/root/.cache/airlock/images/kernel".into(),
                "/root/.cache/airlock/images/base.qcow2".into(),
                "/run/airlock/vms/a1/root.qcow2".into(),
            ],
            writable: vec!["/root/.cache/airlock/templates/k/memory".into()],
            devices: vec!["/dev/null".into(), "/dev/urandom".into()],
            shared_dirs: Vec::new(),
        }
    }

    fn binds(plan: &Plan) -> Vec<(String, Access)> {
        plan.ops
            .iter()
            .filter_map(|op| match op {
                Op::Bind { source, access, .. } => Some((source.display().to_string(), *access)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn only_the_named_paths_are_bound_with_their_access() {
        let plan = Plan::build(Path::new("/j"), &system(), &needs()).unwrap();
        assert_eq!(
            binds(&plan),
            [
                ("/usr".to_string(), Access::ReadOnlyExec),
                ("/etc/ld.so.cache".to_string(), Access::ReadOnlyExec),
                ("/dev/null".to_string(), Access::Device),
                ("/dev/urandom".to_string(), Access::Device),
                ("/run/airlock/vms/a1".to_string(), Access::Writable),
                (
                    "/root/.cache/airlock/templates/k/memory".to_string(),
                    Access::Writable
                ),
                (
                    "/root/.cache/airlock/images/kernel".to_string(),
                    Access::ReadOnly
                ),
                (
                    "/root/.cache/airlock/images/base.qcow2".to_string(),
                    Access::ReadOnly
                ),
            ],
            "the overlay inside the work dir needs no bind of its own"
        );
    }

    #[test]
    fn shared_dirs_are_bound_read_only_unless_asked_writable() {
        let mut shared = needs();
        shared.shared_dirs = vec![
            ("/home/me/data".into(), false),
            ("/home/me/out".into(), true),
        ];
        let plan = Plan::build(Path::new("/j"), &system(), &shared).unwrap();
        let binds = binds(&plan);
        assert_eq!(
            binds[binds.len() - 2..],
            [
                ("/home/me/data".to_string(), Access::ReadOnly),
                ("/home/me/out".to_string(), Access::Writable),
            ]
        );
        assert!(plan.ops.contains(&Op::Dir("/j/home/me/data".into())));
        assert_eq!(plan.ops.last(), Some(&Op::Proc("/j/proc".into())));
        let without = Plan::build(Path::new("/j"), &system(), &needs()).unwrap();
        assert!(!without.ops.iter().any(|op| matches!(op, Op::Proc(_))));
    }

    #[test]
    fn every_mount_point_has_its_parents_made_first_and_once() {
        let mut shared = needs();
        shared.shared_dirs = vec![("/home/me/data".into(), true)];
        let plan = Plan::build(Path::new("/j"), &system(), &shared).unwrap();
        let mut made = BTreeSet::new();
        made.insert(PathBuf::from("/j"));
        for op in &plan.ops {
            let (path, is_dir) = match op {
                Op::Dir(p) => (p, true),
                Op::File(p) => (p, false),
                Op::Link { link, .. } => (link, false),
                Op::Bind { target, .. } | Op::Proc(target) => {
                    assert!(
                        made.contains(target),
                        "{target:?} mounted before it was made"
                    );
                    continue;
                }
            };
            assert!(
                made.contains(path.parent().unwrap()),
                "{path:?} made before its parent"
            );
            assert!(made.insert(path.clone()) || !is_dir, "{path:?} made twice");
        }
        assert!(made.contains(Path::new("/j/root/.cache/airlock/templates/k")));
        assert!(plan.ops.contains(&Op::Link {
            target: "usr/lib".into(),
            link: "/j/lib".into()
        }));
    }

    #[test]
    fn a_writable_file_under_a_read_only_dir_gets_a_bind_of_its_own() {
        let mut n = needs();
        n.writable = vec!["/usr/share/x".into()];
        let plan = Plan::build(Path::new("/j"), &system(), &n).unwrap();
        assert!(binds(&plan).contains(&("/usr/share/x".to_string(), Access::Writable)));
    }

    #[test]
    fn relative_paths_and_dot_dot_are_refused() {
        for bad in ["images/kernel", "/run/../etc/shadow", "/"] {
            let mut n = needs();
            n.read_only = vec![bad.into()];
            let err = Plan::build(Path::new("/j"), &system(), &n).unwrap_err();
            assert_eq!(err.path, Path::new(bad));
        }
    }

    #[test]
    fn the_probed_system_paths_hold_usr_and_the_qemu_binary() {
        let paths = SystemPaths::probe(Path::new("/opt/qemu/bin/qemu-system-x86_64"));
        assert!(paths.dirs.contains(&PathBuf::from("/usr")), "{paths:?}");
        assert!(paths
            .files
            .contains(&PathBuf::from("/opt/qemu/bin/qemu-system-x86_64")));
        let in_usr = SystemPaths::probe(Path::new("/usr/bin/env"));
        assert!(!in_usr.files.contains(&PathBuf::from("/usr/bin/env")));
    }
}
