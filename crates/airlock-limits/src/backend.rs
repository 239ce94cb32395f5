//! The three backends and where their groups live.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::id::AIRLOCK_DIR;

/// Controllers a cgroup backend needs.
pub const REQUIRED_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// Which mechanism enforces the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// cgroup v2 (unified hierarchy).
    CgroupV2,
    /// cgroup v1 (one hierarchy per controller or group of controllers).
    CgroupV1,
    /// Per-process rlimits set between fork and exec.
    Rlimit,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CgroupV2 => "cgroup v2",
            Self::CgroupV1 => "cgroup v1",
            Self::Rlimit => "rlimits",
        })
    }
}

/// A v1 hierarchy used by the v1 backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Hierarchy {
    /// Controllers mounted on it (e.g. `["cpu", "cpuacct"]`).
    pub controllers: Vec<String>,
    /// Directory under which `airlock/` lives in this hierarchy.
    pub parent: PathBuf,
}

impl V1Hierarchy {
    /// Whether `controller` is mounted on this hierarchy.
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// A chosen backend with where its groups live. Usually built by
/// [`crate::probe`]; tests build one over a temporary directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// cgroup v2: groups live under `parent/airlock/`. `parent` must offer
    /// (or be able to enable) the memory, cpu and pids controllers.
    CgroupV2 {
        /// Directory under which `airlock/` lives.
        parent: PathBuf,
    },
    /// cgroup v1: one directory per hierarchy. The memory, cpu and pids
    /// hierarchies are required; cpuacct (CPU time) and freezer (race-free
    /// kill) are used when present.
    CgroupV1 {
        /// The hierarchies used, each once even when co-mounted.
        hierarchies: Vec<V1Hierarchy>,
    },
    /// rlimits only: no group exists.
    Rlimit,
}

impl Backend {
    /// Which kind this is.
    pub fn kind(&self) -> BackendKind {
        match self {
            Self::CgroupV2 { .. } => BackendKind::CgroupV2,
            Self::CgroupV1 { .. } => BackendKind::CgroupV1,
            Self::Rlimit => BackendKind::Rlimit,
        }
    }

    /// The `airlock/` directories of this backend (one per hierarchy; none
    /// for rlimits). Everything this crate creates or removes is below
    /// them.
    pub fn airlock_dirs(&self) -> Vec<PathBuf> {
        match self {
            Self::CgroupV2 { parent } => vec![parent.join(AIRLOCK_DIR)],
            Self::CgroupV1 { hierarchies } => hierarchies
                .iter()
                .map(|h| h.parent.join(AIRLOCK_DIR))
                .collect(),
            Self::Rlimit => Vec::new(),
        }
    }
}

/// A group directory together with the controllers it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupDir {
    pub path: PathBuf,
    pub controllers: Vec<String>,
}

impl GroupDir {
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// The directory carrying `controller` among `dirs`.
pub(crate) fn dir_with<'a>(dirs: &'a [GroupDir], controller: &str) -> Option<&'a Path> {
    dirs.iter()
        .find(|d| d.has(controller))
        .map(|d| d.path.as_path())
}
