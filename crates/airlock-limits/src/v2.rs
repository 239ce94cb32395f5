//! The cgroup v2 backend: one directory per VM in the unified hierarchy.

use std::io;
use std::path::Path;
use std::time::Duration;

use crate::backend::{GroupDir, REQUIRED_CONTROLLERS};
use crate::cgroupfs::{keyed_value, read_optional, read_u64_optional};
use crate::control::{make_dir, make_group_dir, read_error, write_control};
use crate::id::{GroupId, AIRLOCK_DIR};
use crate::limits::Limits;
use crate::probe::enable_controllers;
use crate::stats::Stats;
use crate::LimitsError;

/// Creates `parent/airlock/<tenant>/<vm>` with controllers enabled on the
/// way down and the limits written.
pub(crate) fn create(
    parent: &Path,
    id: &GroupId,
    limits: &Limits,
) -> Result<GroupDir, LimitsError> {
    let vm_id = id.vm();
    let airlock = parent.join(AIRLOCK_DIR);
    let tenant = airlock.join(id.tenant());
    for dir in [parent, airlock.as_path(), tenant.as_path()] {
        if dir != parent {
            make_dir(vm_id, dir)?;
        }
        enable_controllers(dir).map_err(|source| LimitsError::Write {
            vm_id: vm_id.to_owned(),
            path: dir.join("cgroup.subtree_control"),
            value: REQUIRED_CONTROLLERS.map(|c| format!("+{c}")).join(" "),
            source,
        })?;
    }
    let dir = tenant.join(vm_id);
    make_group_dir(vm_id, &dir)?;
    let group = GroupDir {
        path: dir,
        controllers: REQUIRED_CONTROLLERS
            .iter()
            .map(|c| (*c).to_owned())
            .collect(),
    };
    if let Err(e) = write_limits(&group.path, vm_id, limits) {
        let _ = std::fs::remove_dir(&group.path);
        return Err(e);
    }
    Ok(group)
}

fn write_limits(dir: &Path, vm_id: &str, limits: &Limits) -> Result<(), LimitsError> {
    let w = |file: &str, value: String| write_control(vm_id, &dir.join(file), &value);
    w("memory.max", limits.memory_bytes().to_string())?;
    // Absent without swap accounting; then there is no swap to limit.
    if dir.join("memory.swap.max").exists() {
        w("memory.swap.max", "0".into())?;
    }
    // One OOM kill takes the whole VM (QEMU and gvproxy) down together.
    if dir.join("memory.oom.group").exists() {
        w("memory.oom.group", "1".into())?;
    }
    w(
        "cpu.max",
        format!("{} {}", limits.cpu_quota_us(), limits.cpu_period_us()),
    )?;
    w("pids.max", limits.pids_max.to_string())?;
    Ok(())
}

/// Reads memory.current, memory.peak, cpu.stat, memory.events, pids.current.
pub(crate) fn stats(dir: &Path, vm_id: &str) -> Result<Stats, LimitsError> {
    let rd = |file: &str| -> Result<Option<String>, LimitsError> {
        let path = dir.join(file);
        read_optional(&path).map_err(|source| read_error(vm_id, &path, source))
    };
    let num = |file: &str| -> Result<Option<u64>, LimitsError> {
        let path = dir.join(file);
        read_u64_optional(&path).map_err(|source| read_error(vm_id, &path, source))
    };
    if !dir.is_dir() {
        return Err(read_error(vm_id, dir, io::ErrorKind::NotFound.into()));
    }
    Ok(Stats {
        memory_current_bytes: num("memory.current")?,
        memory_peak_bytes: num("memory.peak")?,
        cpu_usage: rd("cpu.stat")?
            .and_then(|t| keyed_value(&t, "usage_usec"))
            .map(Duration::from_micros),
        oom_kills: rd("memory.events")?.and_then(|t| keyed_value(&t, "oom_kill")),
        pids_current: num("pids.current")?,
    })
}
