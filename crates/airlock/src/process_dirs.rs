//! Per-process dirs: dirs named `<pid>-<start ticks>-<suffix>` after the
//! process that made them (the overlay pools, the staging dirs of memory
//! templates and package layers), so that a later process can tell the
//! dirs of dead processes, reused pids included, and sweep them.
//!
//! Blocking file work (it reads `/proc`): call it from the blocking pool.

use crate::owner::ProcessStamp;
use std::path::{Path, PathBuf};

/// The name of this process's dir among per-process dirs (such as the
/// overlay pools): `<pid>-<start ticks>-<suffix>`, so that
/// [`sweep_dead_process_dirs`] can tell a reused pid. Reads `/proc`.
///
/// # Errors
/// When this process's start time cannot be read: a name without it
/// would look like a dead process's to every other Airlock's sweep.
pub fn process_dir_name(suffix: &str) -> std::io::Result<String> {
    dir_name_of(ProcessStamp::current(), suffix)
}

/// The per-process dir name of the process `stamp` (`None`: its start
/// time could not be read). Pure.
fn dir_name_of(stamp: Option<ProcessStamp>, suffix: &str) -> std::io::Result<String> {
    let me = stamp.ok_or_else(|| {
        std::io::Error::other(
            "cannot read this process's start time from /proc/self/stat, which tells \
             Airlock's per-process dirs from those of dead processes: mount /proc",
        )
    })?;
    Ok(format!("{}-{}-{suffix}", me.pid, me.start_ticks))
}

/// A fresh, empty per-process dir `<parent>/<pid>-<start>-<suffix>` (0700)
/// for building something that is renamed into place when complete
/// (memory templates, package layers); the dirs of dead processes' builds
/// in `parent` are swept first. Blocking file work.
///
/// # Errors
/// The failing file operation, or as [`process_dir_name`].
pub fn fresh_staging_dir(parent: &Path, suffix: &str) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::create_dir_all(parent)?;
    sweep_dead_process_dirs(parent);
    let dir = parent.join(process_dir_name(suffix)?);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(false)
        .create(&dir)?;
    Ok(dir)
}

/// Removes this process's own dirs among the per-process dirs in `dir`
/// (named by [`process_dir_name`]): after an interrupted start-up.
pub fn remove_own_process_dirs(dir: &Path) {
    // Without a start time no dir was named after this process.
    let Ok(prefix) = process_dir_name("") else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(&prefix))
        {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(dir = %entry.path().display(), error = %e, "cannot remove");
            }
        }
    }
}

/// Removes the subdirectories of `dir` named by [`process_dir_name`] (or
/// the older `<pid>-<suffix>`) whose process is gone: the overlay pools of
/// dead airlocks. Returns them.
pub fn sweep_dead_process_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(alive) = name.to_str().and_then(process_dir_owner_alive) else {
            continue;
        };
        if alive {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                tracing::info!(dir = %entry.path().display(), "swept the dir of a dead airlock process");
                removed.push(entry.path());
            }
            Err(e) => tracing::warn!(dir = %entry.path().display(), error = %e, "cannot sweep"),
        }
    }
    removed
}

/// Whether the process a per-process dir name names still runs; `None`
/// when the name names no process.
pub fn process_dir_owner_alive(name: &str) -> Option<bool> {
    let mut parts = name.split('-');
    let pid = parts.next()?.parse::<u32>().ok()?;
    let start = parts.next().and_then(|s| s.parse::<u64>().ok());
    Some(match start {
        Some(start_ticks) => ProcessStamp { pid, start_ticks }.liveness().is_alive(),
        // An older name without a start time: the pid alone.
        None => Path::new(&format!("/proc/{pid}")).exists(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_per_process_dir_name_needs_the_start_time() {
        let stamp = ProcessStamp {
            pid: 42,
            start_ticks: 7,
        };
        assert_eq!(dir_name_of(Some(stamp), "abc").unwrap(), "42-7-abc");
        let err = dir_name_of(None, "abc").unwrap_err();
        assert!(err.to_string().contains("mount /proc"), "{err}");
        let mine = process_dir_name("x").unwrap();
        assert!(
            mine.starts_with(&format!("{}-", std::process::id())),
            "{mine}"
        );
    }

    #[test]
    fn dirs_of_dead_processes_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join(process_dir_name("abc").unwrap());
        let legacy_ours = dir.path().join(format!("{}-abc", std::process::id()));
        let dead = dir.path().join("999999999-abc");
        let reused = dir.path().join(format!("{}-1-abc", std::process::id()));
        let other = dir.path().join("not-a-pid");
        for d in [&ours, &legacy_ours, &dead, &reused, &other] {
            std::fs::create_dir(d).unwrap();
        }
        let removed = sweep_dead_process_dirs(dir.path());
        assert!(ours.exists() && legacy_ours.exists() && other.exists());
        assert!(!dead.exists() && !reused.exists());
        assert_eq!(removed.len(), 2);
        remove_own_process_dirs(dir.path());
        assert!(!ours.exists(), "after an interrupted start-up");
        assert!(legacy_ours.exists() && other.exists());
    }
}
