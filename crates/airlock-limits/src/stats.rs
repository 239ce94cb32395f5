//! What a group reports of its usage.

use std::time::Duration;

/// Resource usage of a group. A field is `None` when the backend or the
/// kernel does not offer it (the rlimit backend offers none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Memory charged to the group now (includes page cache).
    pub memory_current_bytes: Option<u64>,
    /// Highest memory charged since creation (v2 needs Linux 5.19+).
    pub memory_peak_bytes: Option<u64>,
    /// CPU time used by every process of the group (v1 needs cpuacct).
    pub cpu_usage: Option<Duration>,
    /// Processes the kernel's OOM killer killed in the group.
    pub oom_kills: Option<u64>,
    /// Tasks (processes and threads) in the group now.
    pub pids_current: Option<u64>,
}
