//! Airlock's orchestrator: runs untrusted code in disposable QEMU microVMs,
//! one VM per run, or one kept per session.
//!
//! **What it does.** It turns a [`SandboxSpec`] (language, memory, vCPUs,
//! network, packages, tenant) into a VM whose guest agent answers, runs
//! code in it with output streamed and capped, moves files in and out,
//! and destroys it, always: on success, error, timeout, cancellation or a
//! dropped future. VMs come from a warm pool, a memory template or a cold
//! boot (`docs/templates.md`); packages come as read-only disk layers
//! (`docs/packages.md`); sessions keep a persistent interpreter across
//! cells (`docs/sessions.md`).
//!
//! **What it does not do.** No command line, HTTP, MCP or terminal
//! handling (the front ends in `airlock-cli` and `airlock-server` do),
//! no guest images (built by `cargo xtask images`), no placement across
//! hosts.
//!
//! **Where it sits.** Above the lower crates (`airlock-qemu` for argv and
//! probes, `airlock-overlay` for disk overlays, `airlock-limits` for
//! cgroups and rlimits, `airlock-gvproxy` and `airlock-egress` for the
//! network, `airlock-protocol` for the guest channel) and below the front
//! ends; see `docs/architecture.md`. Inside, a VM-source seam
//! ([`VmSource`], [`SandboxVm`]) sits under the one run and session path,
//! so a [`Scheduler`] can be built from fakes ([`Scheduler::from_parts`],
//! `airlock::testing` with the `testing` feature). [`Artifacts`] lists and
//! prunes the stored memory templates and package layers (`airlock
//! snapshot`); [`doctor`] says what the host offers, as data.
//!
//! **Errors** are per operation: [`Scheduler::run`] fails with a
//! [`RunError`], a session with a [`SessionError`], a VM source with a
//! [`BootError`] (which holds the retry decision,
//! [`BootError::is_transient`]); starting a scheduler and the artifacts
//! fail with the crate-level [`Error`]. Each has a `hint()` for the user.
//!
//! Embedding it:
//!
//! ```no_run
//! use airlock::{Config, Language, RunRequest, SandboxSpec, Scheduler, SessionOptions};
//! use airlock::{CellRequest, Discard};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Probes the host once; VMs run under this process's limits.
//! let scheduler = Scheduler::start(Config::default()).await?;
//!
//! // One run: a fresh VM, destroyed after.
//! let mut spec = SandboxSpec::new(Language::Python);
//! spec.shape.memory_mib = 256;
//! let result = scheduler.run(RunRequest::in_sandbox(spec, "print(6 * 7)")).await?;
//! assert_eq!(result.stdout, b"42\n");
//!
//! // A session: one VM, state kept across cells.
//! let session = scheduler.session(SessionOptions::new(Language::Python)).await?;
//! session.exec(CellRequest::new("x = 41"), &mut Discard).await?;
//! let cell = session.exec(CellRequest::new("print(x + 1)"), &mut Discard).await?;
//! assert_eq!(cell.stdout, b"42\n");
//! session.close().await;
//!
//! // Drains warm pools, waits for teardowns; leftovers are killed.
//! scheduler.shutdown().await;
//! # Ok(()) }
//! ```

mod artifacts;
mod builder;
mod capped_log;
mod catalog;
mod close;
mod config;
mod disk;
pub mod doctor;
mod error;
mod factory;
mod files;
mod flight;
mod guest;
mod host;
mod images;
pub mod jail;
mod launcher;
mod machine;
mod manager;
mod network;
mod observer;
mod owner;
pub mod packages;
pub mod pause;
mod pixels;
pub mod pool;
mod process;
mod process_dirs;
mod qemu_launcher;
mod qemu_spec;
mod request;
mod retry;
mod scheduler;
mod session;
mod slots;
pub mod source;
#[allow(unsafe_code)] // PR_SET_PDEATHSIG between fork and exec
mod spawner;
pub mod spec;
mod sweep;
mod task;
mod teardown;
pub mod template;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod vm;
mod workdir;

pub use airlock_protocol::Language;
pub use airlock_sys_util::ChildExit;
pub use capped_log::{DEFAULT_CONSOLE_LOG_MAX_BYTES, MIN_CONSOLE_LOG_MAX_BYTES};
pub use catalog::{Artifacts, LayerEntry, TemplateEntry};
pub use close::CloseReason;
pub use config::{
    cache_dir, check_node_name, default_run_dir, dirs, Config, ALLOW_DOC_RANGES_ENV,
    MAX_NODE_NAME_LEN,
};
pub use error::{
    BootError, Error, ExecError, InputError, PackageError, PauseError, Result, RunError,
    SessionError,
};
pub use files::{
    validate_guest_dir, validate_guest_path, Downloaded, FileInfo, FileUpload, DEFAULT_FILE_MODE,
    MAX_READ_INTO_MEMORY_BYTES,
};
pub use host::Host;
pub use images::{Image, ImageDisk, ImageLanguageMismatch, Images, UnknownImage};
pub use machine::{PackageDisk, VmOptions};
pub use manager::VmManager;
pub use network::{EgressTestOverrides, ExposedAddr, NetworkReport, NetworkRequest, VmSecrets};
pub use observer::{Discard, RunObserver, Stage};
pub use pool::{PoolStats, WarmPool};
pub use request::{
    parse_env_pair, validate_env, validate_timeout, RunRequest, RunResult, Timings,
    DEFAULT_TIMEOUT, DEFAULT_UPLOAD_TIMEOUT, MAX_CODE_BYTES, MAX_TIMEOUT,
};
pub use scheduler::{Scheduler, SchedulerParts};
pub use session::{
    CellRequest, CellResult, PauseOptions, Session, SessionCanceller, SessionOptions,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_LIFETIME, MAX_SESSION_LIFETIME,
};
pub use source::{FileSink, FileSource, ProcessInput, SandboxVm, StdinChunk, VmSource};
pub use spec::{
    validate_identifier, CaBundle, MachineShape, PoolConfig, SandboxSpec, DEFAULT_MEMORY_MIB,
    MEMORY_MIB_RANGE, VCPUS_RANGE,
};
pub use teardown::{TeardownReport, Usage};
pub use vm::{BootTimings, ExecOutcome, ExecProgress, OutputStream, Vm};
pub use workdir::WorkDir;

/// Milliseconds of a duration, saturating.
pub(crate) fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
