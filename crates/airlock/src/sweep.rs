//! The sweep after a crash (`docs/architecture.md`, "Nothing outlives its
//! owner"): every start of Airlock (and `airlock doctor`) ends what dead
//! Airlock processes left: the processes of their VMs, the VMs' limits
//! groups, work dirs (sockets included) and overlay pools.
//!
//! A VM work dir is an orphan when its owner record names an Airlock
//! process that is dead, or whose pid now belongs to another process (told
//! apart by start time). Dirs of live owners, this process included, are
//! never touched. A dir without a record is one being made right now,
//! unless it is older than [`UNRECORDED_GRACE`]. A dir whose owner file
//! exists but is unreadable or not a record this version knows (another
//! version's, a damaged one) has an unknown owner: it is never removed,
//! only reported (a young one may be a record being written).
//!
//! The per-process dirs (overlay pools, staging dirs) of dead processes
//! are swept by [`sweep_dead_process_dirs`] (`process_dirs.rs`).
//!
//! Blocking (it reads `/proc` and waits for groups to empty): call it from
//! the blocking pool.

use crate::owner::{OwnerFile, OwnerRecord};
use crate::process::signal_group;
pub use crate::process_dirs::{
    fresh_staging_dir, process_dir_name, remove_own_process_dirs, sweep_dead_process_dirs,
};
use crate::workdir::WorkDir;
use airlock_limits::Limiter;
use nix::sys::signal::Signal;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A work dir without an owner record younger than this may be one that
/// another Airlock process is creating: it is left alone.
pub const UNRECORDED_GRACE: Duration = Duration::from_secs(60);

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Work dirs removed.
    pub removed: Vec<PathBuf>,
    /// Orphaned processes killed: role and pid.
    pub killed: Vec<(String, u32)>,
    /// Limits groups removed (`airlock/<tenant>/<vm>`).
    pub groups_removed: Vec<String>,
    /// Overlay pool dirs of dead processes removed (filled by callers that
    /// sweep the pools too, as `airlock doctor` does).
    pub pools_removed: Vec<PathBuf>,
    /// What could not be done.
    pub problems: Vec<String>,
}

impl SweepReport {
    /// Whether the sweep found nothing to do and met no problem.
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty()
            && self.killed.is_empty()
            && self.groups_removed.is_empty()
            && self.pools_removed.is_empty()
            && self.problems.is_empty()
    }
}

/// What the sweep does with one work dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Its owner lives: leave it.
    Owned,
    /// No record yet, and young: being made; leave it.
    BeingMade,
    /// Its owner is dead (or never recorded, long ago): end it.
    Orphan,
    /// Its owner file is there but unreadable or unknown, long ago: its
    /// owner may live; leave it and report it.
    Unknown,
}

/// The verdict on a work dir from its owner file, whether the record's
/// owner lives, and whether the dir is young. Pure.
pub fn verdict(owner: &OwnerFile, owner_alive: bool, young: bool) -> Verdict {
    match owner {
        OwnerFile::Record(_) if owner_alive => Verdict::Owned,
        OwnerFile::Record(_) => Verdict::Orphan,
        // A young dir's record may be half-written: being made.
        OwnerFile::Missing | OwnerFile::Unrecognised { .. } if young => Verdict::BeingMade,
        OwnerFile::Missing => Verdict::Orphan,
        OwnerFile::Unrecognised { .. } => Verdict::Unknown,
    }
}

/// Ends every orphaned VM under `run_dir`: kills its recorded processes
/// that still run, removes its limits group (with `limiter`, killing
/// whatever is left in it) and its work dir.
pub fn sweep_orphans(run_dir: &Path, limiter: Option<&Limiter>) -> SweepReport {
    let mut report = SweepReport::default();
    let Ok(entries) = std::fs::read_dir(WorkDir::vms_dir(run_dir)) else {
        return report;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(vm_id) = entry
            .file_name()
            .to_str()
            .filter(|name| airlock_sys_util::is_valid_id(name))
            .map(str::to_owned)
        else {
            continue;
        };
        let owner = OwnerFile::read(&path.join("owner"));
        let owner_alive = owner
            .record()
            .is_some_and(|r| r.owner.liveness().is_alive());
        let young = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < UNRECORDED_GRACE);
        match verdict(&owner, owner_alive, young) {
            Verdict::Orphan => end_orphan(&path, &vm_id, owner.record(), limiter, &mut report),
            Verdict::Unknown => {
                let reason = match &owner {
                    OwnerFile::Unrecognised { reason } => reason.as_str(),
                    OwnerFile::Missing | OwnerFile::Record(_) => "unknown",
                };
                tracing::warn!(dir = %path.display(), reason, "work dir of an unknown owner left alone");
                report.problems.push(format!(
                    "{}: owner record {reason}; left alone (remove it by hand once no Airlock uses it)",
                    path.display()
                ));
            }
            Verdict::Owned | Verdict::BeingMade => {}
        }
    }
    report
}

fn end_orphan(
    path: &Path,
    vm_id: &str,
    record: Option<&OwnerRecord>,
    limiter: Option<&Limiter>,
    report: &mut SweepReport,
) {
    if let Some(record) = record {
        for process in &record.processes {
            // Only the very process recorded (same start time): a reused
            // pid is someone else's.
            if process.stamp.liveness().is_alive() {
                tracing::warn!(
                    vm_id,
                    role = process.role,
                    pid = process.stamp.pid,
                    "killing an orphaned process"
                );
                // Each was started as the leader of its own group.
                signal_group(process.stamp.pid, Signal::SIGKILL);
                report
                    .killed
                    .push((process.role.clone(), process.stamp.pid));
            }
        }
        if let Some(limiter) = limiter {
            match limiter.remove_orphan(
                &record.tenant,
                vm_id,
                airlock_limits::DEFAULT_REMOVE_TIMEOUT,
            ) {
                Ok(removed) => {
                    if !removed.removed_dirs.is_empty() {
                        report.groups_removed.push(removed.group);
                    }
                    report.problems.extend(removed.errors);
                }
                Err(e) => report.problems.push(e.to_string()),
            }
        }
    }
    match std::fs::remove_dir_all(path) {
        Ok(()) => {
            tracing::info!(dir = %path.display(), "swept the work dir of a dead Airlock process");
            report.removed.push(path.to_path_buf());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => report
            .problems
            .push(format!("remove {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::{OwnedProcess, ProcessStamp};
    use std::os::unix::process::{CommandExt, ExitStatusExt};

    fn dead_owner() -> ProcessStamp {
        ProcessStamp {
            pid: 999_999_999,
            start_ticks: 1,
        }
    }

    fn write_record(dir: &WorkDir, record: &OwnerRecord) {
        std::fs::write(dir.owner_file(), record.render()).unwrap();
    }

    fn age(path: &Path, secs: u64) {
        let old = std::time::SystemTime::now() - Duration::from_secs(secs);
        let f = std::fs::File::open(path).unwrap();
        f.set_modified(old).unwrap();
    }

    #[test]
    fn the_verdict_spares_live_owners_and_dirs_being_made() {
        let record = OwnerFile::Record(OwnerRecord::new(dead_owner(), "t"));
        assert_eq!(verdict(&record, true, false), Verdict::Owned);
        assert_eq!(verdict(&record, false, true), Verdict::Orphan);
        assert_eq!(
            verdict(&OwnerFile::Missing, false, true),
            Verdict::BeingMade
        );
        assert_eq!(verdict(&OwnerFile::Missing, false, false), Verdict::Orphan);
    }

    #[test]
    fn the_verdict_never_makes_an_orphan_of_an_unknown_owner() {
        let unknown = OwnerFile::Unrecognised {
            reason: "not an owner record this version reads".into(),
        };
        assert_eq!(verdict(&unknown, false, true), Verdict::BeingMade);
        assert_eq!(verdict(&unknown, false, false), Verdict::Unknown);
    }

    #[test]
    fn an_old_dir_with_an_unreadable_record_is_reported_not_removed() {
        let run = tempfile::tempdir().unwrap();
        let other_version = WorkDir::create(run.path(), "nextversion").unwrap();
        std::fs::write(
            other_version.owner_file(),
            "airlock-owner 2\nowner 1 1\ntenant t\n",
        )
        .unwrap();
        let damaged = WorkDir::create(run.path(), "damaged").unwrap();
        std::fs::write(damaged.owner_file(), "airlock-owner 1\nowner x\n").unwrap();
        // An owner "file" that cannot be read as one.
        let unreadable = WorkDir::create(run.path(), "unreadable").unwrap();
        std::fs::create_dir(unreadable.owner_file()).unwrap();
        for dir in [&other_version, &damaged, &unreadable] {
            age(dir.path(), 3600);
        }
        let report = sweep_orphans(run.path(), None);
        for dir in [&other_version, &damaged, &unreadable] {
            assert!(dir.path().exists(), "{}", dir.path().display());
        }
        assert!(report.removed.is_empty(), "{report:?}");
        assert_eq!(report.problems.len(), 3, "{report:?}");
        assert!(
            report.problems.iter().all(|p| p.contains("left alone")),
            "{report:?}"
        );
    }

    #[test]
    fn an_orphans_processes_are_killed_and_its_dir_removed() {
        let run = tempfile::tempdir().unwrap();
        let orphan = WorkDir::create(run.path(), "orphan").unwrap();
        let mut qemu = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let mut record = OwnerRecord::new(dead_owner(), "t");
        record.processes.push(OwnedProcess {
            role: "qemu".into(),
            stamp: ProcessStamp::of(qemu.id()).unwrap(),
        });
        // A recorded process whose pid now is another's (this test): spared.
        record.processes.push(OwnedProcess {
            role: "gvproxy".into(),
            stamp: ProcessStamp {
                pid: std::process::id(),
                start_ticks: 1,
            },
        });
        write_record(&orphan, &record);
        let report = sweep_orphans(run.path(), None);
        assert_eq!(report.killed, vec![("qemu".to_owned(), qemu.id())]);
        assert_eq!(report.removed, vec![orphan.path().to_path_buf()]);
        assert!(!orphan.path().exists());
        assert_eq!(qemu.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn dirs_of_live_owners_and_young_dirs_without_a_record_are_left() {
        let run = tempfile::tempdir().unwrap();
        let ours = WorkDir::create(run.path(), "ours").unwrap();
        write_record(
            &ours,
            &OwnerRecord::new(ProcessStamp::current().unwrap(), "t"),
        );
        let reused = WorkDir::create(run.path(), "reused").unwrap();
        let mut stale_me = OwnerRecord::new(ProcessStamp::current().unwrap(), "t");
        stale_me.owner.start_ticks = stale_me.owner.start_ticks.wrapping_sub(1);
        write_record(&reused, &stale_me);
        let young = WorkDir::create(run.path(), "young").unwrap();
        let old = WorkDir::create(run.path(), "old").unwrap();
        age(old.path(), 3600);
        let report = sweep_orphans(run.path(), None);
        assert!(ours.path().exists(), "our own VM");
        assert!(young.path().exists(), "being made");
        assert!(!reused.path().exists(), "the owner's pid is reused");
        assert!(!old.path().exists(), "no record, long ago");
        assert_eq!(report.removed.len(), 2, "{report:?}");
        assert!(report.problems.is_empty(), "{report:?}");
    }
}
