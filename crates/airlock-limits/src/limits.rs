//! The limits of one VM group, their defaults and the numbers derived from
//! them (pure).

use std::time::Duration;

use crate::LimitsError;

/// Memory QEMU needs beyond guest RAM under KVM: the binary and its
/// libraries (~25 MiB resident), device and virtqueue state, qcow2 metadata
/// caches, thread stacks and I/O bounce buffers. 64 MiB leaves about a
/// factor of two over what a microvm QEMU holds resident.
pub const QEMU_OVERHEAD_MIB_KVM: u64 = 64;

/// Memory QEMU needs beyond guest RAM under TCG (software emulation): the
/// KVM figure plus the translation-block cache, which QEMU reserves as a
/// 1 GiB mapping and fills lazily as guest code is translated (a kernel
/// boot plus an interpreter touch tens of MiB of it), and per-vCPU TCG
/// state. A paused TCG microvm measured 37 MiB resident on the development
/// machine before any translation.
pub const QEMU_OVERHEAD_MIB_TCG: u64 = 192;

/// Memory for gvproxy when the VM has a network (it shares the VM's group):
/// a Go process with its runtime and a userspace TCP/IP stack, ~20-30 MiB
/// resident.
pub const GVPROXY_OVERHEAD_MIB: u64 = 64;

/// CPU granted on top of one full CPU per vCPU, in thousandths of a CPU:
/// QEMU's main loop and I/O threads (and gvproxy) run beside the vCPU
/// threads.
pub const CPU_OVERHEAD_MILLIS: u32 = 250;

/// Default scheduler period for the CPU quota (the kernel's default too).
pub const DEFAULT_CPU_PERIOD: Duration = Duration::from_millis(100);

/// Default cap on tasks (processes and threads) in a group. QEMU runs one
/// thread per vCPU, a main loop, RCU and I/O threads and a worker pool of
/// up to 64 threads; gvproxy's Go runtime adds a few tens. 256 leaves room
/// for all of that and still stops a fork bomb.
pub const DEFAULT_PIDS_MAX: u32 = 256;

/// Default cap on open files (rlimit, applied by every backend).
pub const DEFAULT_OPEN_FILES_MAX: u64 = 4096;

/// Address space QEMU maps beyond guest RAM, for the rlimit backend only
/// (`RLIMIT_AS` counts reservations, not use): TCG reserves a 1 GiB
/// translation cache and glibc reserves 64 MiB arenas per thread. A paused
/// 256 MiB TCG microvm measured 1.6 GiB of address space.
pub const ADDRESS_SPACE_SLACK_MIB: u64 = 2048;

/// Smallest memory limit accepted.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Largest memory limit accepted (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Smallest CPU quota accepted (1% of a CPU).
pub const MIN_CPU_MILLIS: u32 = 10;
/// Largest CPU quota accepted (1024 CPUs).
pub const MAX_CPU_MILLIS: u32 = 1024 * 1000;
/// Shortest CPU period the kernel accepts (1 ms).
pub const MIN_CPU_PERIOD: Duration = Duration::from_millis(1);
/// Longest CPU period the kernel accepts (1 s).
pub const MAX_CPU_PERIOD: Duration = Duration::from_secs(1);

/// How the guest CPU is executed; it decides QEMU's memory overhead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation (TCG): more memory for the translation cache.
    Tcg,
}

/// The shape of a VM, from which [`Limits::for_vm`] derives its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmShape {
    /// Guest RAM (`-m`).
    pub guest_memory_mib: u64,
    /// Number of vCPUs (`-smp`).
    pub vcpus: u32,
    /// KVM or TCG.
    pub accel: Accel,
    /// Whether gvproxy runs in the group too.
    pub network: bool,
}

/// The limits of one VM group.
///
/// `memory_mib`, `cpu_millis`, `cpu_period` and `pids_max` are enforced by
/// the cgroup backends; the rlimit backend enforces `address_space_mib`,
/// `cpu_time_max` and `open_files_max` per process instead (it cannot cap a
/// group). Every backend sets the core size to 0 and the open files cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Memory for the whole group (guest RAM plus overheads); swap is 0.
    pub memory_mib: u64,
    /// CPU quota in thousandths of a CPU per period (1000 = one full CPU).
    pub cpu_millis: u32,
    /// Scheduler period of the quota.
    pub cpu_period: Duration,
    /// Cap on tasks (processes plus threads) in the group.
    pub pids_max: u32,
    /// `RLIMIT_NOFILE` of the spawned processes (every backend).
    pub open_files_max: u64,
    /// `RLIMIT_AS` of each process (rlimit backend only).
    pub address_space_mib: u64,
    /// `RLIMIT_CPU` of each process (rlimit backend only); `None`: no cap.
    /// The soft limit sends SIGXCPU, one second later SIGKILL follows.
    pub cpu_time_max: Option<Duration>,
}

impl Default for Limits {
    /// A 256 MiB, one-vCPU TCG VM without network.
    fn default() -> Self {
        Self::for_vm(VmShape {
            guest_memory_mib: 256,
            vcpus: 1,
            accel: Accel::Tcg,
            network: false,
        })
    }
}

impl Limits {
    /// Limits for a VM of this shape: guest RAM plus QEMU's overhead (plus
    /// gvproxy's with a network), one CPU per vCPU plus
    /// [`CPU_OVERHEAD_MILLIS`], [`DEFAULT_PIDS_MAX`].
    pub fn for_vm(shape: VmShape) -> Self {
        let qemu = match shape.accel {
            Accel::Kvm => QEMU_OVERHEAD_MIB_KVM,
            Accel::Tcg => QEMU_OVERHEAD_MIB_TCG,
        };
        let net = if shape.network {
            GVPROXY_OVERHEAD_MIB
        } else {
            0
        };
        let memory_mib = shape
            .guest_memory_mib
            .saturating_add(qemu)
            .saturating_add(net);
        Self {
            memory_mib,
            cpu_millis: shape
                .vcpus
                .saturating_mul(1000)
                .saturating_add(CPU_OVERHEAD_MILLIS),
            cpu_period: DEFAULT_CPU_PERIOD,
            pids_max: DEFAULT_PIDS_MAX,
            open_files_max: DEFAULT_OPEN_FILES_MAX,
            address_space_mib: memory_mib.saturating_add(ADDRESS_SPACE_SLACK_MIB),
            cpu_time_max: None,
        }
    }

    /// Checks every field against the ranges the kernel accepts.
    ///
    /// # Errors
    /// [`LimitsError::InvalidLimits`] for the first field out of range.
    pub fn validate(&self) -> Result<(), LimitsError> {
        fn bad(field: &'static str, value: String, hint: &'static str) -> LimitsError {
            LimitsError::InvalidLimits { field, value, hint }
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(bad(
                "memory_mib",
                self.memory_mib.to_string(),
                "use 16 to 1048576 MiB",
            ));
        }
        if !(MIN_CPU_MILLIS..=MAX_CPU_MILLIS).contains(&self.cpu_millis) {
            return Err(bad(
                "cpu_millis",
                self.cpu_millis.to_string(),
                "use 10 (1% of a CPU) to 1024000 (1024 CPUs)",
            ));
        }
        if !(MIN_CPU_PERIOD..=MAX_CPU_PERIOD).contains(&self.cpu_period) {
            return Err(bad(
                "cpu_period",
                format!("{:?}", self.cpu_period),
                "use 1 ms to 1 s",
            ));
        }
        if self.pids_max == 0 {
            return Err(bad("pids_max", "0".into(), "use at least 1"));
        }
        if self.open_files_max < 16 {
            return Err(bad(
                "open_files_max",
                self.open_files_max.to_string(),
                "use at least 16",
            ));
        }
        if self.address_space_mib < self.memory_mib || self.address_space_mib > MAX_MEMORY_MIB * 4 {
            return Err(bad(
                "address_space_mib",
                self.address_space_mib.to_string(),
                "use at least memory_mib and at most 4 TiB",
            ));
        }
        if let Some(t) = self.cpu_time_max {
            if t < Duration::from_secs(1) {
                return Err(bad(
                    "cpu_time_max",
                    format!("{t:?}"),
                    "use at least 1 s (RLIMIT_CPU counts whole seconds) or None",
                ));
            }
        }
        Ok(())
    }

    /// The memory limit in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib.saturating_mul(1024 * 1024)
    }

    /// The CFS period in microseconds.
    pub fn cpu_period_us(&self) -> u64 {
        u64::try_from(self.cpu_period.as_micros()).unwrap_or(u64::MAX)
    }

    /// The CFS quota in microseconds per period: `cpu_millis / 1000` CPUs'
    /// worth of the period, never below the kernel's 1 ms minimum.
    pub fn cpu_quota_us(&self) -> u64 {
        (self
            .cpu_period_us()
            .saturating_mul(u64::from(self.cpu_millis))
            / 1000)
            .max(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_a_valid_small_tcg_vm() {
        let l = Limits::default();
        l.validate().unwrap();
        assert_eq!(l.memory_mib, 256 + QEMU_OVERHEAD_MIB_TCG);
        assert_eq!(l.cpu_millis, 1250);
        assert_eq!(l.pids_max, DEFAULT_PIDS_MAX);
    }

    #[test]
    fn for_vm_adds_overheads_by_accel_and_network() {
        let kvm = Limits::for_vm(VmShape {
            guest_memory_mib: 512,
            vcpus: 2,
            accel: Accel::Kvm,
            network: true,
        });
        assert_eq!(
            kvm.memory_mib,
            512 + QEMU_OVERHEAD_MIB_KVM + GVPROXY_OVERHEAD_MIB
        );
        assert_eq!(kvm.cpu_millis, 2250);
        assert_eq!(
            kvm.address_space_mib,
            kvm.memory_mib + ADDRESS_SPACE_SLACK_MIB
        );
        let tcg = Limits::for_vm(VmShape {
            guest_memory_mib: 512,
            vcpus: 2,
            accel: Accel::Tcg,
            network: false,
        });
        assert_eq!(tcg.memory_mib, 512 + QEMU_OVERHEAD_MIB_TCG);
    }

    #[test]
    fn quota_is_a_share_of_the_period() {
        let l = Limits {
            cpu_millis: 200,
            ..Limits::default()
        };
        assert_eq!(l.cpu_period_us(), 100_000);
        assert_eq!(l.cpu_quota_us(), 20_000);
        let tiny = Limits {
            cpu_millis: 10,
            cpu_period: Duration::from_millis(10),
            ..Limits::default()
        };
        assert_eq!(tiny.cpu_quota_us(), 1000, "kernel minimum is 1 ms");
    }

    #[test]
    fn validate_rejects_each_out_of_range_field() {
        let cases: Vec<(&str, Limits)> = vec![
            (
                "memory_mib",
                Limits {
                    memory_mib: 1,
                    ..Limits::default()
                },
            ),
            (
                "cpu_millis",
                Limits {
                    cpu_millis: 0,
                    ..Limits::default()
                },
            ),
            (
                "cpu_period",
                Limits {
                    cpu_period: Duration::from_secs(2),
                    ..Limits::default()
                },
            ),
            (
                "pids_max",
                Limits {
                    pids_max: 0,
                    ..Limits::default()
                },
            ),
            (
                "open_files_max",
                Limits {
                    open_files_max: 3,
                    ..Limits::default()
                },
            ),
            (
                "address_space_mib",
                Limits {
                    address_space_mib: 1,
                    ..Limits::default()
                },
            ),
            (
                "cpu_time_max",
                Limits {
                    cpu_time_max: Some(Duration::from_millis(10)),
                    ..Limits::default()
                },
            ),
        ];
        for (field, limits) in cases {
            match limits.validate() {
                Err(LimitsError::InvalidLimits { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected InvalidLimits, got {other:?}"),
            }
        }
    }

    #[test]
    fn memory_bytes_converts_mib() {
        let l = Limits {
            memory_mib: 50,
            ..Limits::default()
        };
        assert_eq!(l.memory_bytes(), 50 * 1024 * 1024);
    }
}
