//! The interface every backend serves: [`Limiter`] creates [`VmGroup`]s;
//! a group attaches processes, reports statistics and removes itself.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, info};

use crate::attach::PreExecHook;
use crate::backend::{Backend, BackendKind, GroupDir};
use crate::cgroupfs::{group_pids, write_value};
use crate::id::GroupId;
use crate::limits::Limits;
use crate::probe::{probe, ProbeConfig, ProbeResult};
use crate::remove::{remove_group, RemoveReport};
use crate::resource::RlimitSetting;
use crate::rlimit::{apply_to_pid, clamp_to_current, rlimits_for};
use crate::stats::Stats;
use crate::sweep::{group_dirs, sweep, SweepOptions, SweepReport};
use crate::{v1, v2, LimitsError};

/// Creates, and sweeps, the limits groups of one backend.
#[derive(Debug, Clone)]
pub struct Limiter {
    probed: ProbeResult,
}

impl Limiter {
    /// Probes the host ([`crate::probe`]) and uses what it chose.
    pub fn probe(config: &ProbeConfig) -> Self {
        Self::from_probe(probe(config))
    }

    /// Uses a probe result (or a hand-made one, e.g. a cgroup v2 backend
    /// over a temporary directory in tests).
    pub fn from_probe(probed: ProbeResult) -> Self {
        info!(backend = %probed.kind(), reason = %probed.reason, "limits backend");
        Self { probed }
    }

    /// The backend in use.
    pub fn backend(&self) -> &Backend {
        &self.probed.backend
    }

    /// Which kind of backend is in use.
    pub fn kind(&self) -> BackendKind {
        self.probed.kind()
    }

    /// Why this backend was chosen (for `airlock doctor`).
    pub fn reason(&self) -> &str {
        &self.probed.reason
    }

    /// Creates the group `airlock/<tenant>/<vm>` with `limits`.
    ///
    /// # Errors
    /// [`LimitsError::InvalidId`] / [`LimitsError::InvalidLimits`] before
    /// touching anything; [`LimitsError::Create`] if the group exists
    /// already (ids must be unique) or cannot be made;
    /// [`LimitsError::Write`] if a limit is refused (the group is removed
    /// again).
    pub fn create(&self, tenant: &str, vm: &str, limits: &Limits) -> Result<VmGroup, LimitsError> {
        let id = GroupId::new(tenant, vm)?;
        limits.validate()?;
        let per_process_caps = self.kind() == BackendKind::Rlimit;
        let mut rlimits = rlimits_for(limits, per_process_caps);
        clamp_to_current(&mut rlimits);
        let make = || match self.backend() {
            Backend::CgroupV2 { parent } => v2::create(parent, &id, limits).map(|d| vec![d]),
            Backend::CgroupV1 { hierarchies } => v1::create(hierarchies, &id, limits),
            Backend::Rlimit => Ok(Vec::new()),
        };
        // A sweep may remove an empty tenant directory between our mkdirs:
        // then the VM's mkdir finds no parent; one retry recreates it.
        let dirs = match make() {
            Err(LimitsError::Create { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                make()?
            }
            other => other?,
        };
        debug!(group = %id, backend = %self.kind(), memory_mib = limits.memory_mib,
            cpu_millis = limits.cpu_millis, pids_max = limits.pids_max, "limits group created");
        Ok(VmGroup {
            id,
            kind: self.kind(),
            dirs,
            rlimits,
            limits: limits.clone(),
        })
    }

    /// Gives a VM made before its tenant was known (a warm pool's) to
    /// `tenant`, its limits unchanged; returns the group it is in now.
    ///
    /// - cgroup v2: the VM keeps its own group (returned as is), whose
    ///   `memory.max` already bounds it. Moving would not move its memory:
    ///   v2 leaves the pages a process charged (the VM's restored RAM, in
    ///   hundreds of MiB) in the old group, so the new group's limit would
    ///   count none of them and the VM could use its limit again on top;
    ///   and a cgroup cannot be renamed to another parent. The group's
    ///   name keeps the pool's tenant (the caller records where it is).
    /// - cgroup v1 and rlimits: the processes move into a new group
    ///   `airlock/<tenant>/<same vm>` with the same limits (v1 with
    ///   `memory.move_charge_at_immigrate`, so its charges move too), then
    ///   the old one is removed. On failure the processes moved so far go
    ///   back and the new group is removed: the VM stays in `group`.
    ///
    /// # Errors
    /// As [`Limiter::create`] and [`VmGroup::attach_pid`].
    pub fn regroup(&self, group: &VmGroup, tenant: &str) -> Result<VmGroup, LimitsError> {
        if group.kind == BackendKind::CgroupV2 {
            debug!(group = %group.id, tenant, "limits group kept for its tenant (cgroup v2 moves no memory)");
            return Ok(group.clone());
        }
        let moved = self.create(tenant, group.id.vm(), &group.limits)?;
        if moved.kind == BackendKind::CgroupV1 {
            v1::move_charges_with_tasks(&moved.dirs, moved.id.vm());
        }
        for pid in group.pids() {
            if let Err(e) = moved.attach_pid(pid) {
                for back in moved.pids() {
                    let _ = group.attach_pid(back);
                }
                let _ = moved.remove(crate::DEFAULT_REMOVE_TIMEOUT);
                return Err(e);
            }
        }
        let removed = group.remove(crate::DEFAULT_REMOVE_TIMEOUT);
        debug!(from = %group.id, to = %moved.id, ?removed, "limits group moved to its tenant");
        Ok(moved)
    }

    /// Kills every process in the group `airlock/<tenant>/<vm>` and removes
    /// it, whoever made it: for the owner of a VM whose Airlock process
    /// died (its work dir says which group was its). Unlike
    /// [`Limiter::sweep_stale`], this does not spare a group that still
    /// has processes: they are the orphans to end. A group that is gone
    /// already is no error (its dirs are reported `already_absent`).
    /// Blocks up to `timeout`.
    ///
    /// # Errors
    /// [`LimitsError::InvalidId`] before touching anything.
    pub fn remove_orphan(
        &self,
        tenant: &str,
        vm: &str,
        timeout: Duration,
    ) -> Result<RemoveReport, LimitsError> {
        let id = GroupId::new(tenant, vm)?;
        let dirs = group_dirs(self.backend(), &id);
        Ok(remove_group(&id.to_string(), self.kind(), &dirs, timeout))
    }

    /// Removes stale groups left by a crashed run (see [`SweepOptions`]).
    /// Blocks up to about a second per stale group: from async code use
    /// [`Limiter::sweep_stale_async`].
    pub fn sweep_stale(&self, options: &SweepOptions) -> SweepReport {
        sweep(self.backend(), options)
    }

    /// [`Limiter::sweep_stale`] on tokio's blocking pool.
    pub async fn sweep_stale_async(&self, options: SweepOptions) -> SweepReport {
        let backend = self.backend().clone();
        tokio::task::spawn_blocking(move || sweep(&backend, &options))
            .await
            .unwrap_or_else(|e| SweepReport {
                errors: vec![format!("sweep task failed: {e}")],
                ..SweepReport::default()
            })
    }
}

/// One VM's group. Cloning it does not duplicate the group: every clone
/// names the same directories.
#[derive(Debug, Clone)]
pub struct VmGroup {
    id: GroupId,
    kind: BackendKind,
    dirs: Vec<GroupDir>,
    rlimits: Vec<RlimitSetting>,
    /// What it was made with (for [`Limiter::regroup`]).
    limits: Limits,
}

impl VmGroup {
    /// The group's name.
    pub fn id(&self) -> &GroupId {
        &self.id
    }

    /// The backend that enforces it.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// Its directories (one per hierarchy; none for rlimits).
    pub fn dirs(&self) -> Vec<&Path> {
        self.dirs.iter().map(|d| d.path.as_path()).collect()
    }

    /// The rlimits a child gets from [`VmGroup::prepare_command`].
    pub fn rlimits(&self) -> &[RlimitSetting] {
        &self.rlimits
    }

    /// Moves a running process (all its threads) into the group. With
    /// rlimits, sets its limits with `prlimit` instead.
    ///
    /// Prefer [`VmGroup::prepare_command`]: a process attached after it
    /// started ran unlimited until then, and its children forked meanwhile
    /// stay outside.
    ///
    /// # Errors
    /// [`LimitsError::Attach`] naming the file that refused the pid.
    pub fn attach_pid(&self, pid: u32) -> Result<(), LimitsError> {
        let err = |path: PathBuf, source: io::Error| LimitsError::Attach {
            vm_id: self.id.vm().to_owned(),
            what: format!("pid {pid}"),
            path,
            source,
        };
        if self.kind == BackendKind::Rlimit {
            return apply_to_pid(pid, &self.rlimits)
                .map_err(|e| err(PathBuf::from(format!("/proc/{pid}")), e));
        }
        for d in &self.dirs {
            let procs = d.path.join("cgroup.procs");
            write_value(&procs, &pid.to_string()).map_err(|e| err(procs, e))?;
        }
        Ok(())
    }

    /// Prepares what a child needs to join the group between fork and exec
    /// (see [`PreExecHook`]). Opens the `cgroup.procs` files now.
    ///
    /// # Errors
    /// [`LimitsError::Attach`] if a `cgroup.procs` cannot be opened (the
    /// group was removed, or permissions).
    pub fn pre_exec_hook(&self) -> Result<PreExecHook, LimitsError> {
        let procs: Vec<PathBuf> = self
            .dirs
            .iter()
            .map(|d| d.path.join("cgroup.procs"))
            .collect();
        PreExecHook::new(&procs, self.rlimits.clone()).map_err(|(path, source)| {
            LimitsError::Attach {
                vm_id: self.id.vm().to_owned(),
                what: "the child before exec".to_owned(),
                path,
                source,
            }
        })
    }

    /// Makes `cmd` start its process inside the group, with the group's
    /// rlimits, from its first instruction: the child joins between fork
    /// and exec, and the spawn fails if it cannot. No shell is involved.
    ///
    /// # Errors
    /// As [`VmGroup::pre_exec_hook`].
    pub fn prepare_command(&self, cmd: &mut std::process::Command) -> Result<(), LimitsError> {
        self.pre_exec_hook()?.install(cmd);
        Ok(())
    }

    /// [`VmGroup::prepare_command`] for a tokio `Command`.
    ///
    /// # Errors
    /// As [`VmGroup::pre_exec_hook`].
    pub fn prepare_tokio_command(
        &self,
        cmd: &mut tokio::process::Command,
    ) -> Result<(), LimitsError> {
        self.pre_exec_hook()?.install_tokio(cmd);
        Ok(())
    }

    /// Pids of the processes in the group now (empty for rlimits).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.dirs.iter().flat_map(|d| group_pids(&d.path)).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Reads the group's statistics.
    ///
    /// # Errors
    /// [`LimitsError::Read`] if the group is gone or a file is unreadable.
    pub fn stats(&self) -> Result<Stats, LimitsError> {
        match self.kind {
            BackendKind::CgroupV2 => match self.dirs.first() {
                Some(d) => v2::stats(&d.path, self.id.vm()),
                None => Ok(Stats::default()),
            },
            BackendKind::CgroupV1 => v1::stats(&self.dirs, self.id.vm()),
            BackendKind::Rlimit => Ok(Stats::default()),
        }
    }

    /// Kills every process left in the group, waits (up to `timeout`) until
    /// it is empty and removes its directories in every hierarchy.
    /// Idempotent; never fails: the report says what happened. Blocks up to
    /// `timeout`: from async code use [`VmGroup::remove_async`].
    pub fn remove(&self, timeout: Duration) -> RemoveReport {
        remove_group(&self.id.to_string(), self.kind, &self.dirs, timeout)
    }

    /// [`VmGroup::remove`] on tokio's blocking pool.
    pub async fn remove_async(&self, timeout: Duration) -> RemoveReport {
        let group = self.clone();
        tokio::task::spawn_blocking(move || group.remove(timeout))
            .await
            .unwrap_or_else(|e| RemoveReport {
                group: self.id.to_string(),
                errors: vec![format!("removal task failed: {e}")],
                ..RemoveReport::default()
            })
    }
}
