//! Removing groups left behind by a crashed run.
//!
//! Only directories below `airlock/` whose names are valid ids are looked
//! at. A group is stale when it holds no process (its processes are all
//! dead) and is older than a minimum age, so that a group another Airlock
//! process has just created, and not yet filled, is left alone. Groups with
//! live processes are reported as busy and never touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tracing::{debug, info};

use crate::backend::{Backend, GroupDir, REQUIRED_CONTROLLERS};
use crate::cgroupfs::group_pids;
use crate::id::{is_valid_id, GroupId};
use crate::remove::remove_group;

/// What to sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepOptions {
    /// Groups younger than this are left alone (they may belong to a run
    /// that is starting right now).
    pub min_age: Duration,
    /// Only this tenant's groups; `None`: every tenant.
    pub tenant: Option<String>,
}

impl Default for SweepOptions {
    fn default() -> Self {
        Self {
            min_age: Duration::from_secs(60),
            tenant: None,
        }
    }
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Stale groups removed (`airlock/<tenant>/<vm>`).
    pub removed: Vec<String>,
    /// Empty tenant directories removed.
    pub removed_tenants: Vec<String>,
    /// Groups left alone because processes still run in them.
    pub busy: Vec<String>,
    /// Empty groups left alone because they are younger than `min_age`.
    pub too_young: Vec<String>,
    /// What failed (also logged).
    pub errors: Vec<String>,
}

/// Sub-directories of `dir` whose names are valid ids (symlinks and
/// anything else are ignored).
fn id_dirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            is_valid_id(&name).then(|| (name, e.path()))
        })
        .collect()
}

fn age(path: &Path, now: SystemTime) -> Duration {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .unwrap_or(Duration::ZERO)
}

/// The `airlock/` directory of each hierarchy with the controllers there.
fn roots(backend: &Backend) -> Vec<(PathBuf, Vec<String>)> {
    match backend {
        Backend::CgroupV2 { .. } => backend
            .airlock_dirs()
            .into_iter()
            .map(|d| {
                (
                    d,
                    REQUIRED_CONTROLLERS
                        .iter()
                        .map(|c| (*c).to_owned())
                        .collect(),
                )
            })
            .collect(),
        Backend::CgroupV1 { hierarchies } => backend
            .airlock_dirs()
            .into_iter()
            .zip(hierarchies)
            .map(|(d, h)| (d, h.controllers.clone()))
            .collect(),
        Backend::Rlimit => Vec::new(),
    }
}

/// The directories the group `id` has (or had) under `backend`, one per
/// hierarchy; none for rlimits.
pub(crate) fn group_dirs(backend: &Backend, id: &GroupId) -> Vec<GroupDir> {
    roots(backend)
        .into_iter()
        .map(|(root, controllers)| GroupDir {
            path: root.join(id.tenant()).join(id.vm()),
            controllers,
        })
        .collect()
}

/// Sweeps stale groups of `backend`.
pub(crate) fn sweep(backend: &Backend, options: &SweepOptions) -> SweepReport {
    let mut report = SweepReport::default();
    let now = SystemTime::now();
    let roots = roots(backend);

    // (tenant, vm) -> its directory in each hierarchy.
    let mut groups: BTreeMap<(String, String), Vec<GroupDir>> = BTreeMap::new();
    for (root, controllers) in &roots {
        for (tenant, tenant_dir) in id_dirs(root) {
            if options.tenant.as_ref().is_some_and(|t| *t != tenant) {
                continue;
            }
            for (vm, path) in id_dirs(&tenant_dir) {
                groups
                    .entry((tenant.clone(), vm))
                    .or_default()
                    .push(GroupDir {
                        path,
                        controllers: controllers.clone(),
                    });
            }
        }
    }

    for ((tenant, vm), dirs) in groups {
        let name = GroupId::new(&tenant, &vm)
            .map_or_else(|_| format!("{tenant}/{vm}"), |id| id.to_string());
        let mut pids: Vec<u32> = dirs.iter().flat_map(|d| group_pids(&d.path)).collect();
        pids.sort_unstable();
        pids.dedup();
        if !pids.is_empty() {
            debug!(group = %name, ?pids, "limits group has live processes (another run): left alone");
            report.busy.push(name);
            continue;
        }
        let youngest = dirs
            .iter()
            .map(|d| age(&d.path, now))
            .min()
            .unwrap_or_default();
        if youngest < options.min_age {
            report.too_young.push(name);
            continue;
        }
        let r = remove_group(&name, backend.kind(), &dirs, Duration::from_secs(1));
        if r.is_clean() {
            info!(group = %name, "stale limits group removed");
            report.removed.push(name);
        } else {
            report.errors.extend(r.errors);
        }
    }

    // Tenant directories left empty.
    for (root, _) in &roots {
        for (tenant, tenant_dir) in id_dirs(root) {
            if options.tenant.as_ref().is_some_and(|t| *t != tenant)
                || !id_dirs(&tenant_dir).is_empty()
                || age(&tenant_dir, now) < options.min_age
            {
                continue;
            }
            // A concurrent create may fill it meanwhile: then rmdir fails
            // with EBUSY/ENOTEMPTY, which is fine.
            if std::fs::remove_dir(&tenant_dir).is_ok() && !report.removed_tenants.contains(&tenant)
            {
                report.removed_tenants.push(tenant);
            }
        }
    }
    report
}
