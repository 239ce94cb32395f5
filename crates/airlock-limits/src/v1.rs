//! The cgroup v1 backend: one directory per VM in each hierarchy used.

use std::path::Path;
use std::time::Duration;

use crate::backend::{dir_with, GroupDir, V1Hierarchy};
use crate::cgroupfs::{keyed_value, read_optional, read_u64_optional};
use crate::control::{make_dir, make_group_dir, read_error, write_control};
use crate::id::{GroupId, AIRLOCK_DIR};
use crate::limits::Limits;
use crate::stats::Stats;
use crate::LimitsError;

/// Creates `airlock/<tenant>/<vm>` in every hierarchy and writes the limits.
/// On failure, the directories made so far are removed again.
pub(crate) fn create(
    hierarchies: &[V1Hierarchy],
    id: &GroupId,
    limits: &Limits,
) -> Result<Vec<GroupDir>, LimitsError> {
    let vm_id = id.vm();
    let mut made: Vec<GroupDir> = Vec::new();
    let result = (|| {
        for h in hierarchies {
            let airlock = h.parent.join(AIRLOCK_DIR);
            let tenant = airlock.join(id.tenant());
            make_dir(vm_id, &airlock)?;
            make_dir(vm_id, &tenant)?;
            let dir = tenant.join(vm_id);
            make_group_dir(vm_id, &dir)?;
            made.push(GroupDir {
                path: dir,
                controllers: h.controllers.clone(),
            });
        }
        write_limits(&made, vm_id, limits)
    })();
    match result {
        Ok(()) => Ok(made),
        Err(e) => {
            for d in made.iter().rev() {
                let _ = std::fs::remove_dir(&d.path);
            }
            Err(e)
        }
    }
}

/// Makes the memory group of `dirs` take the charges of the processes
/// that move into it (anonymous and file pages:
/// `memory.move_charge_at_immigrate = 3`), so a VM regrouped to its tenant
/// brings its memory along. Best effort: kernels that dropped the file
/// (or refuse it) leave the charges behind, as cgroup v2 always does.
pub(crate) fn move_charges_with_tasks(dirs: &[GroupDir], vm_id: &str) {
    if let Some(mem) = dir_with(dirs, "memory") {
        let file = mem.join("memory.move_charge_at_immigrate");
        if file.exists() {
            if let Err(e) = write_control(vm_id, &file, "3") {
                tracing::debug!(error = %e, "memory charges will not move with the VM");
            }
        }
    }
}

fn write_limits(dirs: &[GroupDir], vm_id: &str, limits: &Limits) -> Result<(), LimitsError> {
    let w = |dir: &Path, file: &str, value: String| write_control(vm_id, &dir.join(file), &value);
    if let Some(mem) = dir_with(dirs, "memory") {
        let bytes = limits.memory_bytes().to_string();
        w(mem, "memory.limit_in_bytes", bytes.clone())?;
        // memory+swap equal to memory: no swap. Without swap accounting
        // (no memsw files) the best v1 offers is swappiness 0.
        if mem.join("memory.memsw.limit_in_bytes").exists() {
            w(mem, "memory.memsw.limit_in_bytes", bytes)?;
        } else {
            w(mem, "memory.swappiness", "0".into())?;
        }
    }
    if let Some(cpu) = dir_with(dirs, "cpu") {
        w(cpu, "cpu.cfs_period_us", limits.cpu_period_us().to_string())?;
        w(cpu, "cpu.cfs_quota_us", limits.cpu_quota_us().to_string())?;
    }
    if let Some(pids) = dir_with(dirs, "pids") {
        w(pids, "pids.max", limits.pids_max.to_string())?;
    }
    Ok(())
}

/// Reads memory usage/peak/OOM kills, cpuacct.usage and pids.current.
pub(crate) fn stats(dirs: &[GroupDir], vm_id: &str) -> Result<Stats, LimitsError> {
    let read = |dir: Option<&Path>, file: &str| -> Result<Option<String>, LimitsError> {
        let Some(dir) = dir else { return Ok(None) };
        let path = dir.join(file);
        read_optional(&path).map_err(|source| read_error(vm_id, &path, source))
    };
    let num = |dir: Option<&Path>, file: &str| -> Result<Option<u64>, LimitsError> {
        let Some(dir) = dir else { return Ok(None) };
        let path = dir.join(file);
        read_u64_optional(&path).map_err(|source| read_error(vm_id, &path, source))
    };
    let mem = dir_with(dirs, "memory");
    if let Some(m) = mem {
        if !m.is_dir() {
            return Err(read_error(vm_id, m, std::io::ErrorKind::NotFound.into()));
        }
    }
    Ok(Stats {
        memory_current_bytes: num(mem, "memory.usage_in_bytes")?,
        memory_peak_bytes: num(mem, "memory.max_usage_in_bytes")?,
        cpu_usage: num(dir_with(dirs, "cpuacct"), "cpuacct.usage")?.map(Duration::from_nanos),
        oom_kills: read(mem, "memory.oom_control")?.and_then(|t| keyed_value(&t, "oom_kill")),
        pids_current: num(dir_with(dirs, "pids"), "pids.current")?,
    })
}
