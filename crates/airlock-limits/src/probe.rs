//! Choosing a backend by looking at the host, never by guessing.
//!
//! The decision is split in two: [`plan_v2`] and [`plan_v1`] are pure
//! functions of the mount table, our own cgroups and our uid (which
//! directories *would* be used); [`probe_with`] then checks those
//! directories on the filesystem (controllers offered, writable, controllers
//! enabled for children) and explains each rejection in the reason string.

use std::path::{Path, PathBuf};

use tracing::{debug, info};

use crate::backend::{Backend, BackendKind, V1Hierarchy, REQUIRED_CONTROLLERS};
use crate::cgroupfs::{missing_controllers, read_optional, write_value};
use crate::mountinfo::{
    own_v1_path, own_v2_path, parse_cgroup_mounts, parse_self_cgroup, CgroupMount, CgroupVersion,
    SelfCgroup,
};
use crate::sys;

/// Optional v1 controllers: CPU time statistics and race-free kill.
const V1_OPTIONAL: [&str; 2] = ["cpuacct", "freezer"];

/// Name of the leaf a non-root process moves itself into on cgroup v2, so
/// that its own (delegated) cgroup may enable controllers for children
/// (the "no internal processes" rule).
pub const SELF_LEAF: &str = "airlock-main";

/// Where in a hierarchy the `airlock/` directory goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// Root: at the hierarchy root (as Firecracker's jailer does); others:
    /// inside our own cgroup (a delegated subtree).
    #[default]
    Auto,
    /// At the root of each hierarchy (as the mount shows it).
    HierarchyRoot,
    /// Inside the cgroup this process belongs to.
    OwnCgroup,
}

/// How to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Where `airlock/` goes.
    pub placement: Placement,
    /// Consider cgroup v2.
    pub try_cgroup_v2: bool,
    /// Consider cgroup v1.
    pub try_cgroup_v1: bool,
    /// On cgroup v2 with [`Placement::OwnCgroup`] (or `Auto` as non-root):
    /// when our own cgroup holds processes and so cannot enable controllers
    /// for children, move this process into `<own>/airlock-main` first
    /// (what systemd expects from a process in a `Delegate=yes` unit).
    pub move_self_to_leaf: bool,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            placement: Placement::Auto,
            try_cgroup_v2: true,
            try_cgroup_v1: true,
            move_self_to_leaf: true,
        }
    }
}

impl ProbeConfig {
    fn at_root(&self, euid: u32) -> bool {
        match self.placement {
            Placement::Auto => euid == 0,
            Placement::HierarchyRoot => true,
            Placement::OwnCgroup => false,
        }
    }
}

/// What the host told us: the texts of `/proc/self/mountinfo` and
/// `/proc/self/cgroup`, and our effective uid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeInputs {
    /// Text of `/proc/self/mountinfo`.
    pub mountinfo: String,
    /// Text of `/proc/self/cgroup`.
    pub self_cgroup: String,
    /// Effective uid.
    pub euid: u32,
}

impl ProbeInputs {
    /// Reads them from `/proc/self`. Unreadable files read as empty (then
    /// no cgroup is found and rlimits are used, with that reason).
    pub fn from_host() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Self {
            mountinfo: read("/proc/self/mountinfo"),
            self_cgroup: read("/proc/self/cgroup"),
            euid: sys::euid(),
        }
    }
}

/// The chosen backend and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// The backend to use.
    pub backend: Backend,
    /// Human-readable account of the decision, for `airlock doctor`.
    pub reason: String,
}

impl ProbeResult {
    /// Shorthand for `backend.kind()`.
    pub fn kind(&self) -> BackendKind {
        self.backend.kind()
    }
}

/// The v2 parent directory that would be used: the v2 mount's root, or our
/// own v2 cgroup. `Err` says why there is none.
pub fn plan_v2(
    mounts: &[CgroupMount],
    own: &[SelfCgroup],
    at_root: bool,
) -> Result<PathBuf, String> {
    let mount = mounts
        .iter()
        .find(|m| m.version == CgroupVersion::V2)
        .ok_or_else(|| "no cgroup v2 mount".to_owned())?;
    if at_root {
        return Ok(mount.mount_point.clone());
    }
    let path = own_v2_path(own).ok_or_else(|| {
        format!(
            "cgroup v2 mounted at {} but this process has no v2 cgroup",
            mount.mount_point.display()
        )
    })?;
    mount.dir_of(path).ok_or_else(|| {
        format!(
            "cgroup v2 mounted at {} does not show our cgroup {path}",
            mount.mount_point.display()
        )
    })
}

/// The v1 hierarchies that would be used (memory, cpu, pids required;
/// cpuacct, freezer when mounted), each once. `Err` says why not.
pub fn plan_v1(
    mounts: &[CgroupMount],
    own: &[SelfCgroup],
    at_root: bool,
) -> Result<Vec<V1Hierarchy>, String> {
    let mut out: Vec<V1Hierarchy> = Vec::new();
    let mut missing = Vec::new();
    for (controller, required) in REQUIRED_CONTROLLERS
        .iter()
        .map(|c| (*c, true))
        .chain(V1_OPTIONAL.iter().map(|c| (*c, false)))
    {
        if out.iter().any(|h| h.has(controller)) {
            continue; // co-mounted with one already taken
        }
        let Some(mount) = mounts.iter().find(|m| m.has_v1_controller(controller)) else {
            if required {
                missing.push(controller);
            }
            continue;
        };
        let parent = if at_root {
            Some(mount.mount_point.clone())
        } else {
            own_v1_path(own, controller).and_then(|p| mount.dir_of(p))
        };
        let Some(parent) = parent else {
            if required {
                return Err(format!(
                    "cgroup v1 {controller} hierarchy at {} does not show this process's cgroup",
                    mount.mount_point.display()
                ));
            }
            continue;
        };
        let CgroupVersion::V1 { controllers } = &mount.version else {
            continue;
        };
        out.push(V1Hierarchy {
            controllers: controllers.clone(),
            parent,
        });
    }
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "no cgroup v1 hierarchy mounted for {}",
            missing.join(",")
        ))
    }
}

/// Checks a planned v2 parent on the filesystem and enables the controllers
/// for its children. `Err` says why it cannot be used.
fn check_v2(parent: &Path, own_cgroup: bool, config: &ProbeConfig) -> Result<(), String> {
    let controllers_file = parent.join("cgroup.controllers");
    let available = match read_optional(&controllers_file) {
        Ok(Some(text)) => text,
        Ok(None) => return Err(format!("{} does not exist", controllers_file.display())),
        Err(e) => return Err(format!("cannot read {}: {e}", controllers_file.display())),
    };
    let missing = missing_controllers(&available, &REQUIRED_CONTROLLERS);
    if !missing.is_empty() {
        return Err(format!(
            "cgroup v2 at {} but controllers {} missing from cgroup.controllers",
            parent.display(),
            missing.join(",")
        ));
    }
    if !sys::is_writable(parent) {
        return Err(format!(
            "cgroup v2 at {} is not writable by this user (not root and not delegated)",
            parent.display()
        ));
    }
    match enable_controllers(parent) {
        Ok(()) => Ok(()),
        Err(e)
            if own_cgroup && config.move_self_to_leaf && e.raw_os_error() == Some(libc::EBUSY) =>
        {
            // Our own cgroup holds processes (us): move into a leaf, retry.
            let leaf = parent.join(SELF_LEAF);
            std::fs::create_dir_all(&leaf)
                .and_then(|()| write_value(&leaf.join("cgroup.procs"), "0"))
                .map_err(|e| format!("cannot move this process into {}: {e}", leaf.display()))?;
            info!(leaf = %leaf.display(), "moved this process into a leaf cgroup to delegate controllers");
            enable_controllers(parent).map_err(|e| {
                format!(
                    "cannot enable memory,cpu,pids in {}/cgroup.subtree_control even after moving into {SELF_LEAF}: {e} (other processes share this cgroup)",
                    parent.display()
                )
            })
        }
        Err(e) => Err(format!(
            "cannot enable memory,cpu,pids in {}/cgroup.subtree_control: {e}",
            parent.display()
        )),
    }
}

/// Enables the required controllers in `dir/cgroup.subtree_control` (only
/// those not yet enabled).
pub(crate) fn enable_controllers(dir: &Path) -> std::io::Result<()> {
    let file = dir.join("cgroup.subtree_control");
    let enabled = read_optional(&file)?.unwrap_or_default();
    let missing = missing_controllers(&enabled, &REQUIRED_CONTROLLERS);
    if missing.is_empty() {
        return Ok(());
    }
    let value = missing
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    write_value(&file, &value)
}

/// Checks the planned v1 hierarchies on the filesystem.
fn check_v1(hierarchies: &[V1Hierarchy]) -> Result<(), String> {
    for h in hierarchies {
        if !h.parent.is_dir() {
            return Err(format!("{} is not a directory", h.parent.display()));
        }
        if !sys::is_writable(&h.parent) {
            return Err(format!(
                "cgroup v1 {} hierarchy at {} is not writable by this user",
                h.controllers.join(","),
                h.parent.display()
            ));
        }
    }
    Ok(())
}

fn describe_v1(hierarchies: &[V1Hierarchy]) -> String {
    hierarchies
        .iter()
        .map(|h| format!("{} at {}", h.controllers.join(","), h.parent.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Probes this host: reads `/proc/self` and checks the candidate
/// directories. Cheap (a few small reads); call once at start.
pub fn probe(config: &ProbeConfig) -> ProbeResult {
    probe_with(&ProbeInputs::from_host(), config)
}

/// Probes with given inputs. The directories named by `inputs.mountinfo`
/// are checked for real, so a test can point them at a temporary
/// directory laid out like cgroupfs.
pub fn probe_with(inputs: &ProbeInputs, config: &ProbeConfig) -> ProbeResult {
    let mounts = parse_cgroup_mounts(&inputs.mountinfo);
    let own = parse_self_cgroup(&inputs.self_cgroup);
    let at_root = config.at_root(inputs.euid);
    let mut rejected: Vec<String> = Vec::new();

    if config.try_cgroup_v2 {
        match plan_v2(&mounts, &own, at_root).and_then(|parent| {
            check_v2(&parent, !at_root, config)?;
            Ok(parent)
        }) {
            Ok(parent) => {
                let reason = with_rejections(
                    &rejected,
                    format!("using cgroup v2 at {}", parent.display()),
                );
                return finish(Backend::CgroupV2 { parent }, reason);
            }
            Err(why) => rejected.push(why),
        }
    } else {
        rejected.push("cgroup v2 disabled by configuration".into());
    }

    if config.try_cgroup_v1 {
        match plan_v1(&mounts, &own, at_root).and_then(|h| {
            check_v1(&h)?;
            Ok(h)
        }) {
            Ok(hierarchies) => {
                let reason = with_rejections(
                    &rejected,
                    format!("using cgroup v1: {}", describe_v1(&hierarchies)),
                );
                return finish(Backend::CgroupV1 { hierarchies }, reason);
            }
            Err(why) => rejected.push(why),
        }
    } else {
        rejected.push("cgroup v1 disabled by configuration".into());
    }

    let reason = with_rejections(
        &rejected,
        "using rlimits set in each child before exec (address space, CPU time, open files, no core \
         dumps); no group-wide memory, CPU quota or pids cap"
            .to_owned(),
    );
    finish(Backend::Rlimit, reason)
}

fn with_rejections(rejected: &[String], choice: String) -> String {
    if rejected.is_empty() {
        choice
    } else {
        format!("{}; {choice}", rejected.join("; "))
    }
}

fn finish(backend: Backend, reason: String) -> ProbeResult {
    debug!(backend = %backend.kind(), %reason, "limits backend chosen");
    ProbeResult { backend, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const SELF_HYBRID: &str = "4:memory:/m\n3:pids:/p\n2:cpu,cpuacct:/c\n1:freezer:/f\n0::/u\n";

    fn parsed(mi: &str, sc: &str) -> (Vec<CgroupMount>, Vec<SelfCgroup>) {
        (parse_cgroup_mounts(mi), parse_self_cgroup(sc))
    }

    #[test]
    fn plan_v1_takes_each_hierarchy_once_with_optional_ones() {
        let (m, s) = parsed(HYBRID, SELF_HYBRID);
        let h = plan_v1(&m, &s, true).unwrap();
        let names: Vec<String> = h.iter().map(|h| h.controllers.join(",")).collect();
        assert_eq!(names, ["memory", "cpu,cpuacct", "pids", "freezer"]);
        assert_eq!(h[0].parent, PathBuf::from("/sys/fs/cgroup/memory"));
    }

    #[test]
    fn plan_v1_in_own_cgroup_uses_each_hierarchy_path() {
        let (m, s) = parsed(HYBRID, SELF_HYBRID);
        let h = plan_v1(&m, &s, false).unwrap();
        assert_eq!(h[0].parent, PathBuf::from("/sys/fs/cgroup/memory/m"));
        assert_eq!(h[1].parent, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/c"));
    }

    #[test]
    fn plan_v1_names_missing_controllers() {
        let mi = "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let (m, s) = parsed(mi, "");
        let err = plan_v1(&m, &s, true).unwrap_err();
        assert!(err.contains("cpu,pids"), "{err}");
    }

    #[test]
    fn plan_v2_uses_mount_root_or_own_cgroup() {
        let mi = "41 31 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let (m, s) = parsed(mi, "0::/user.slice/user-1000.slice/run-1.scope\n");
        assert_eq!(
            plan_v2(&m, &s, true).unwrap(),
            PathBuf::from("/sys/fs/cgroup")
        );
        assert_eq!(
            plan_v2(&m, &s, false).unwrap(),
            PathBuf::from("/sys/fs/cgroup/user.slice/user-1000.slice/run-1.scope")
        );
    }

    #[test]
    fn plan_v2_without_mount_says_so() {
        let (m, s) = parsed("", "");
        assert_eq!(plan_v2(&m, &s, true).unwrap_err(), "no cgroup v2 mount");
    }

    #[test]
    fn auto_placement_follows_uid() {
        let c = ProbeConfig::default();
        assert!(c.at_root(0));
        assert!(!c.at_root(1000));
        let own = ProbeConfig {
            placement: Placement::OwnCgroup,
            ..c
        };
        assert!(!own.at_root(0));
    }

    #[test]
    fn nothing_mounted_means_rlimits_with_every_reason() {
        let r = probe_with(
            &ProbeInputs {
                mountinfo: String::new(),
                self_cgroup: String::new(),
                euid: 0,
            },
            &ProbeConfig::default(),
        );
        assert_eq!(r.kind(), BackendKind::Rlimit);
        assert!(r.reason.contains("no cgroup v2 mount"), "{}", r.reason);
        assert!(r.reason.contains("no cgroup v1 hierarchy"), "{}", r.reason);
        assert!(r.reason.contains("using rlimits"), "{}", r.reason);
    }

    #[test]
    fn disabled_backends_are_skipped_with_a_reason() {
        let r = probe_with(
            &ProbeInputs {
                mountinfo: HYBRID.into(),
                self_cgroup: SELF_HYBRID.into(),
                euid: 0,
            },
            &ProbeConfig {
                try_cgroup_v2: false,
                try_cgroup_v1: false,
                ..ProbeConfig::default()
            },
        );
        assert_eq!(r.kind(), BackendKind::Rlimit);
        assert!(r.reason.contains("cgroup v1 disabled"), "{}", r.reason);
    }
}
