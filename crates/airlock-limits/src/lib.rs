//! Per-VM resource limits for Airlock: memory (no swap), CPU quota and a
//! pids cap on the processes of one VM (QEMU and gvproxy), with their
//! statistics read back.
//!
//! Three backends serve one interface, chosen at start by [`probe`] (never
//! guessed), which also says why in a sentence `airlock doctor` prints:
//!
//! 1. **cgroup v2**, when the unified hierarchy offers the memory, cpu and
//!    pids controllers to us;
//! 2. **cgroup v1**, when those controllers are mounted as v1 hierarchies
//!    (found in `/proc/self/mountinfo`);
//! 3. **rlimits** set in the child between fork and exec (address space,
//!    CPU time, open files, no core dumps) when no cgroup is usable.
//!
//! A [`Limiter`] creates one [`VmGroup`] per VM, named
//! `airlock/<tenant>/<vm>`. [`VmGroup::prepare_command`] (or
//! [`VmGroup::prepare_tokio_command`]) makes the spawned process join the
//! group before it execs, so QEMU runs limited from its first instruction.
//! [`VmGroup::remove`] kills what is left and removes the group; it never
//! fails and reports what it did. [`Limiter::sweep_stale`] removes empty
//! groups a crashed run left behind; [`Limiter::remove_orphan`] kills and
//! removes one named group whose owner is known to be dead.
//!
//! This crate sits in the lower layer: it knows nothing of QEMU, images or
//! the orchestrator, and of Airlock depends only on `airlock-sys-util`
//! (the id check). It does not
//! limit code inside the guest (the agent does that), and does not decide
//! a VM's size: [`Limits::for_vm`] turns a VM's shape into limits with the
//! documented overheads. See `docs/limits.md`.
//!
//! ```no_run
//! use airlock_limits::{Accel, Limiter, Limits, ProbeConfig, VmShape, DEFAULT_REMOVE_TIMEOUT};
//!
//! let limiter = Limiter::probe(&ProbeConfig::default());
//! println!("limits: {}", limiter.reason());
//! let limits = Limits::for_vm(VmShape { guest_memory_mib: 256, vcpus: 1, accel: Accel::Tcg, network: false });
//! let group = limiter.create("tenant-a", "vm-1", &limits)?;
//! let mut cmd = std::process::Command::new("qemu-system-x86_64");
//! group.prepare_command(&mut cmd)?; // joins the group before exec
//! let mut child = cmd.spawn()?;
//! child.wait()?;
//! println!("{:?}", group.stats()?);
//! let report = group.remove(DEFAULT_REMOVE_TIMEOUT);
//! assert!(report.is_clean());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod attach;
mod backend;
mod cgroupfs;
mod control;
mod error;
mod group;
mod id;
mod limits;
pub mod mountinfo;
mod probe;
mod remove;
mod resource;
mod rlimit;
mod stats;
mod sweep;
mod sys;
mod v1;
mod v2;

pub use attach::PreExecHook;
pub use backend::{Backend, BackendKind, V1Hierarchy, REQUIRED_CONTROLLERS};
pub use error::LimitsError;
pub use group::{Limiter, VmGroup};
pub use id::{is_valid_id, GroupId, AIRLOCK_DIR, MAX_ID_LEN};
pub use limits::{
    Accel, Limits, VmShape, ADDRESS_SPACE_SLACK_MIB, CPU_OVERHEAD_MILLIS, DEFAULT_CPU_PERIOD,
    DEFAULT_OPEN_FILES_MAX, DEFAULT_PIDS_MAX, GVPROXY_OVERHEAD_MIB, QEMU_OVERHEAD_MIB_KVM,
    QEMU_OVERHEAD_MIB_TCG,
};
pub use probe::{
    plan_v1, plan_v2, probe, probe_with, Placement, ProbeConfig, ProbeInputs, ProbeResult,
    SELF_LEAF,
};
pub use remove::{RemoveReport, DEFAULT_REMOVE_TIMEOUT};
pub use resource::{Resource, RlimitSetting};
pub use rlimit::CPU_TIME_KILL_GRACE;
pub use stats::Stats;
pub use sweep::{SweepOptions, SweepReport};
