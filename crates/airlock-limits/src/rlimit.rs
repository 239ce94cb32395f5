//! Which rlimits a spawned process gets (pure), and applying them to a
//! running process (`prlimit`).

use std::io;
use std::time::Duration;

use crate::limits::Limits;
use crate::resource::{Resource, RlimitSetting};
use crate::sys;

/// Grace between RLIMIT_CPU's SIGXCPU (soft) and SIGKILL (hard).
pub const CPU_TIME_KILL_GRACE: Duration = Duration::from_secs(1);

/// The rlimits a process spawned into a group gets.
///
/// Every backend: no core dumps (a QEMU core holds guest RAM) and the open
/// files cap. The rlimit backend (`per_process_caps`) adds the address
/// space and CPU time caps that stand in for the group limits it lacks.
pub fn rlimits_for(limits: &Limits, per_process_caps: bool) -> Vec<RlimitSetting> {
    let mut out = vec![
        RlimitSetting {
            resource: Resource::Core,
            soft: 0,
            hard: 0,
        },
        RlimitSetting {
            resource: Resource::OpenFiles,
            soft: limits.open_files_max,
            hard: limits.open_files_max,
        },
    ];
    if per_process_caps {
        let bytes = limits.address_space_mib.saturating_mul(1024 * 1024);
        out.push(RlimitSetting {
            resource: Resource::AddressSpace,
            soft: bytes,
            hard: bytes,
        });
        if let Some(t) = limits.cpu_time_max {
            let secs = t.as_secs().max(1);
            out.push(RlimitSetting {
                resource: Resource::CpuTime,
                soft: secs,
                hard: secs.saturating_add(CPU_TIME_KILL_GRACE.as_secs()),
            });
        }
    }
    out
}

/// Lowers each setting to the current hard limit of this process, so that
/// applying it never needs privilege (an unprivileged process may lower but
/// not raise a hard limit). A limit that cannot be read is left as asked.
pub fn clamp_to_current(settings: &mut [RlimitSetting]) {
    for s in settings {
        if let Ok((_, cur_hard)) = sys::getrlimit(s.resource) {
            s.hard = s.hard.min(cur_hard);
            s.soft = s.soft.min(s.hard);
        }
    }
}

/// Applies the settings to a running process (`prlimit`).
pub fn apply_to_pid(pid: u32, settings: &[RlimitSetting]) -> io::Result<()> {
    for s in settings {
        sys::prlimit(pid, *s)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_backends_get_core_and_nofile_only() {
        let l = Limits::default();
        let r = rlimits_for(&l, false);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            RlimitSetting {
                resource: Resource::Core,
                soft: 0,
                hard: 0
            }
        );
        assert_eq!(r[1].resource, Resource::OpenFiles);
    }

    #[test]
    fn rlimit_backend_adds_address_space_and_cpu_time() {
        let l = Limits {
            address_space_mib: 1000,
            cpu_time_max: Some(Duration::from_millis(2500)),
            ..Limits::default()
        };
        let r = rlimits_for(&l, true);
        let as_ = r
            .iter()
            .find(|s| s.resource == Resource::AddressSpace)
            .unwrap();
        assert_eq!(as_.soft, 1000 * 1024 * 1024);
        let cpu = r.iter().find(|s| s.resource == Resource::CpuTime).unwrap();
        assert_eq!((cpu.soft, cpu.hard), (2, 3));
    }

    #[test]
    fn no_cpu_time_cap_without_cpu_time_max() {
        let r = rlimits_for(&Limits::default(), true);
        assert!(r.iter().all(|s| s.resource != Resource::CpuTime));
    }

    #[test]
    fn clamping_never_raises() {
        let mut r = rlimits_for(
            &Limits {
                open_files_max: u64::MAX / 2,
                ..Limits::default()
            },
            false,
        );
        clamp_to_current(&mut r);
        let (_, hard) = sys::getrlimit(Resource::OpenFiles).unwrap();
        assert!(r[1].hard <= hard && r[1].soft <= r[1].hard);
    }
}
