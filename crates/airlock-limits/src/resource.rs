//! The rlimit vocabulary: which resource, and the soft and hard values to
//! give it. The policy (`rlimit`), the syscalls (`sys`) and the child-side
//! hook (`attach`) all speak it.

/// A resource limited with `setrlimit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `RLIMIT_AS`: bytes of address space.
    AddressSpace,
    /// `RLIMIT_CPU`: seconds of CPU time (SIGXCPU at soft, SIGKILL at hard).
    CpuTime,
    /// `RLIMIT_NOFILE`: open file descriptors.
    OpenFiles,
    /// `RLIMIT_CORE`: core dump size in bytes.
    Core,
}

/// One rlimit to set: soft and hard values in the resource's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RlimitSetting {
    /// Which resource.
    pub resource: Resource,
    /// Soft limit.
    pub soft: u64,
    /// Hard limit (never below `soft`).
    pub hard: u64,
}
