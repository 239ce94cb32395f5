//! Airlock's orchestrator: it composes the lower crates into VMs that run
//! untrusted code. It is a library: the `airlock` command (`crates/airlock-cli`)
//! and the server (`crates/airlock-server`) are built on its public API.
//!
//! It sits at the top of the layers (see `docs/architecture.md`): it uses
//! `airlock-qemu` for argv and host probes, `airlock-overlay` for disk
//! overlays, `airlock-limits` to confine each VM's processes and
//! `airlock-protocol` to talk to the guest agent; nothing depends on it.
//!
//! - [`VmManager`] runs a VM's life (`docs/architecture.md`, "A VM's life"): validated input, a
//!   private work dir, an overlay from the pool, QEMU in its own process
//!   group with its output drained, a wait for the agent that races QEMU's
//!   death under one deadline, retries of transient boot failures, a
//!   semaphore bounding live VMs, and a teardown that always runs.
//! - [`Scheduler::run`] runs one [`RunRequest`] in one fresh VM and returns a
//!   [`RunResult`] with output, exit code and a timing breakdown.
//! - [`Scheduler::session`] starts a [`Session`]: one VM kept across
//!   calls, its persistent interpreter running cell after cell, files moved
//!   in and out (`docs/sessions.md`).
//! - [`packages`]: pinned pip and npm packages installed once, through
//!   the egress proxy, into a read-only disk layer that later runs and
//!   sessions attach (`docs/packages.md`).
//! - [`pool`]: warm pools: per shape, restored VMs waiting paused (no
//!   host CPU) for [`Scheduler::run`] and sessions to take; the pool
//!   refills in the background ([`Config::warm_pools`]).
//! - [`template`]: memory templates (`docs/templates.md`): a VM of one
//!   shape saved once, restored in about a tenth of a second instead of a
//!   boot, reseeded before any user code; [`Artifacts`] lists and prunes
//!   them and the package layers (`airlock snapshot`).
//! - [`doctor`]: what the host offers and what to fix, as data.
//!
//! ```no_run
//! use airlock::{Config, RunRequest, Scheduler};
//! use airlock_protocol::Language;
//!
//! # async fn demo() -> airlock::Result<()> {
//! let scheduler = Scheduler::start(Config::default()).await?;
//! let result = scheduler.run(RunRequest::new(Language::Python, "print(6*7)")).await?;
//! assert_eq!(result.stdout, b"42\n");
//! # Ok(()) }
//! ```

pub mod artifacts;
mod builder;
mod catalog;
mod config;
mod disk;
pub mod doctor;
mod error;
mod factory;
mod files;
mod guest;
mod host;
mod images;
mod launcher;
mod manager;
mod network;
pub mod owner;
pub mod packages;
pub mod pool;
pub mod process;
mod process_dirs;
mod qemu_launcher;
mod qemu_spec;
mod request;
mod retry;
mod scheduler;
mod session;
mod slots;
#[allow(unsafe_code)] // PR_SET_PDEATHSIG between fork and exec
mod spawner;
pub mod sweep;
mod teardown;
pub mod template;
mod vm;
mod workdir;

pub use airlock_sys_util::ChildExit;
pub use catalog::{Artifacts, LayerEntry, TemplateEntry};
pub use config::{cache_dir, default_run_dir, dirs, Config};
pub use error::{Error, Result};
pub use files::{
    validate_guest_dir, validate_guest_path, Downloaded, FileInfo, FileUpload, DEFAULT_FILE_MODE,
};
pub use host::Host;
pub use images::{Image, ImageDisk, ImageLanguageMismatch, Images, UnknownImage};
pub use manager::VmManager;
pub use network::{EgressTestOverrides, ExposedAddr, NetworkReport, NetworkRequest};
pub use pool::{PoolConfig, PoolStats, WarmPool};
pub use request::{
    parse_env_pair, validate_env, validate_identifier, validate_timeout, RunRequest, RunResult,
    Timings, DEFAULT_MEMORY_MIB, DEFAULT_TIMEOUT, MAX_CODE_BYTES, MAX_TIMEOUT, MEMORY_MIB_RANGE,
    VCPUS_RANGE,
};
pub use scheduler::{RunObserver, Scheduler, Stage};
pub use session::{
    CellRequest, CellResult, CloseReason, Session, SessionCanceller, SessionOptions,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_LIFETIME,
};
pub use teardown::{TeardownReport, Usage};
pub use vm::{BootTimings, ExecOutcome, OutputStream, Vm, VmOptions};
pub use workdir::WorkDir;

/// Milliseconds of a duration, saturating.
pub(crate) fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
