//! Emptying and removing a group: kill everything in it (catching forks),
//! wait until it is empty, remove its directories. Never fails: returns a
//! report.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::backend::{dir_with, BackendKind, GroupDir};
use crate::cgroupfs::{group_pids, read_optional, write_value};
use crate::sys;

/// Pause between kill rounds while waiting for the group to empty.
const POLL: Duration = Duration::from_millis(10);
/// Longest wait for a freezer to report the group frozen.
const FREEZE_WAIT: Duration = Duration::from_millis(200);

/// Default deadline for [`crate::VmGroup::remove`].
pub const DEFAULT_REMOVE_TIMEOUT: Duration = Duration::from_secs(3);

/// What a removal did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoveReport {
    /// The group (`airlock/<tenant>/<vm>`).
    pub group: String,
    /// Whether `cgroup.kill` (v2) was used.
    pub used_cgroup_kill: bool,
    /// Whether a freezer held the group still while it was being killed.
    pub froze: bool,
    /// Distinct pids sent SIGKILL.
    pub killed_pids: Vec<u32>,
    /// Directories removed.
    pub removed_dirs: Vec<PathBuf>,
    /// Directories that were already gone (a second removal is a no-op).
    pub already_absent: Vec<PathBuf>,
    /// What failed (also logged).
    pub errors: Vec<String>,
    /// Time taken.
    pub elapsed: Duration,
}

impl RemoveReport {
    /// True when nothing failed: no process left, every directory gone.
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}

/// How the group can be held still so that it cannot fork while we read
/// and kill its pids.
enum Freezer<'a> {
    /// v1 freezer controller: `freezer.state`.
    V1(&'a Path),
    /// v2 core: `cgroup.freeze`, confirmed by `cgroup.events`.
    V2(&'a Path),
    None,
}

impl Freezer<'_> {
    fn freeze(&self) -> bool {
        let (file, value) = match self {
            Self::V1(d) => (d.join("freezer.state"), "FROZEN"),
            Self::V2(d) => (d.join("cgroup.freeze"), "1"),
            Self::None => return false,
        };
        if write_value(&file, value).is_err() {
            return false;
        }
        let start = Instant::now();
        while start.elapsed() < FREEZE_WAIT {
            let frozen = match self {
                Self::V1(d) => read_optional(&d.join("freezer.state"))
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.trim() == "FROZEN"),
                Self::V2(d) => read_optional(&d.join("cgroup.events"))
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.lines().any(|l| l.trim() == "frozen 1")),
                Self::None => true,
            };
            if frozen {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true // FREEZING still narrows the window; killing proceeds.
    }

    fn thaw(&self) {
        let _ = match self {
            Self::V1(d) => write_value(&d.join("freezer.state"), "THAWED"),
            Self::V2(d) => write_value(&d.join("cgroup.freeze"), "0"),
            Self::None => Ok(()),
        };
    }
}

/// Kills every process in `dirs` and removes them, within `timeout`.
pub(crate) fn remove_group(
    group: &str,
    kind: BackendKind,
    dirs: &[GroupDir],
    timeout: Duration,
) -> RemoveReport {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut report = RemoveReport {
        group: group.to_owned(),
        ..RemoveReport::default()
    };
    let (present, absent): (Vec<GroupDir>, Vec<GroupDir>) =
        dirs.iter().cloned().partition(|d| d.path.is_dir());
    report.already_absent = absent.into_iter().map(|d| d.path).collect();

    if !present.is_empty() {
        let freezer = match kind {
            BackendKind::CgroupV1 => {
                dir_with(&present, "freezer").map_or(Freezer::None, Freezer::V1)
            }
            BackendKind::CgroupV2 => {
                let d = &present[0].path;
                if d.join("cgroup.kill").exists() {
                    match write_value(&d.join("cgroup.kill"), "1") {
                        Ok(()) => report.used_cgroup_kill = true,
                        Err(e) => report
                            .errors
                            .push(format!("cgroup.kill in {}: {e}", d.display())),
                    }
                }
                if d.join("cgroup.freeze").exists() {
                    Freezer::V2(d)
                } else {
                    Freezer::None
                }
            }
            BackendKind::Rlimit => Freezer::None,
        };
        kill_until_empty(&present, &freezer, deadline, &mut report);
        remove_dirs(&present, deadline, &mut report);
    }
    report.elapsed = start.elapsed();
    if report.is_clean() {
        debug!(
            group,
            killed = report.killed_pids.len(),
            elapsed_ms = report.elapsed.as_millis() as u64,
            "limits group removed"
        );
    } else {
        warn!(group, errors = ?report.errors, "limits group removal incomplete");
    }
    report
}

/// The union of the pids listed in every directory.
fn all_pids(dirs: &[GroupDir]) -> BTreeSet<u32> {
    dirs.iter().flat_map(|d| group_pids(&d.path)).collect()
}

fn kill_until_empty(
    dirs: &[GroupDir],
    freezer: &Freezer<'_>,
    deadline: Instant,
    report: &mut RemoveReport,
) {
    let mut killed: BTreeSet<u32> = BTreeSet::new();
    loop {
        if freezer.freeze() {
            report.froze = true;
        }
        let pids = all_pids(dirs);
        for &pid in &pids {
            match sys::kill_pid(pid) {
                Ok(()) => {
                    killed.insert(pid);
                }
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => report.errors.push(format!("SIGKILL to pid {pid}: {e}")),
            }
        }
        // Frozen tasks die once thawed.
        freezer.thaw();
        if pids.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let left = all_pids(dirs);
            if !left.is_empty() {
                report.errors.push(format!(
                    "processes still in the group at the deadline: {left:?}"
                ));
            }
            break;
        }
        std::thread::sleep(POLL);
    }
    report.killed_pids = killed.into_iter().collect();
}

/// Removes every directory, retrying EBUSY (a group stays busy for a moment
/// after its last process is killed) until the deadline.
fn remove_dirs(dirs: &[GroupDir], deadline: Instant, report: &mut RemoveReport) {
    for d in dirs {
        loop {
            match std::fs::remove_dir(&d.path) {
                Ok(()) => {
                    report.removed_dirs.push(d.path.clone());
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    report.already_absent.push(d.path.clone());
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(POLL);
                }
                Err(e) => {
                    report
                        .errors
                        .push(format!("rmdir {}: {e}", d.path.display()));
                    break;
                }
            }
        }
    }
}
