//! The narrow seam between building a VM and its machine: a [`Launcher`]
//! starts a machine for a prepared [`MachinePlan`] and reaches its agent.
//!
//! Everything around it (work dir, overlay, limits group, network, slots,
//! retries, teardown) is the same whatever the launcher does, so a second
//! way to start a machine (restoring a memory template instead of a cold
//! boot) is one more implementation of this trait. See
//! `docs/architecture.md`, "The launcher seam".

use crate::error::{BootError, Result};
use crate::guest::Agent;
use crate::process::QemuProcess;
use crate::workdir::WorkDir;
use airlock_limits::VmGroup;
use std::path::PathBuf;
use tokio::time::Instant;

pub use crate::task::BoxFuture;

/// What a machine is started from: all host-side resources are made
/// already (work dir, overlay, limits group, network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachinePlan {
    /// The VM id.
    pub vm_id: String,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// The VM's work dir: overlay, sockets and logs live there.
    pub workdir: WorkDir,
    /// The read-only base image under the work dir's overlay.
    pub root_base: PathBuf,
    /// The unix socket of the VM's gvproxy (`None`: no network device).
    pub network_socket: Option<PathBuf>,
    /// Log the whole kernel output to the console (`--debug`).
    pub verbose_console: bool,
    /// The package layer disk, when one is attached.
    pub packages: Option<crate::machine::PackageDisk>,
    /// The TCG translation cache in MiB
    /// ([`crate::spec::Image::translation_cache_mib`]).
    pub translation_cache_mib: u32,
    /// The workspace disk: the work dir's overlay over this read-only
    /// qcow2 base (`None`: no disk, the home in RAM).
    pub workspace_base: Option<PathBuf>,
    /// Host folders over virtio-9p.
    pub mounts: Vec<crate::spec::Mount>,
}

/// Starts a machine and reaches its agent: the only part of a VM's boot
/// that depends on how the machine comes to life.
///
/// The two steps are apart so that the builder owns the process between
/// them: whatever happens while the agent is awaited (error, cancellation),
/// the one teardown stops it.
pub trait Launcher: Send + Sync {
    /// A short name for logs (`qemu-cold-boot`).
    fn name(&self) -> &'static str;

    /// The base the workspace disk's overlay must have, when the machine
    /// comes from one (a template's own disk, which its memory expects);
    /// `None` (the default): a blank disk of the asked size.
    fn workspace_base(&self) -> Option<&std::path::Path> {
        None
    }

    /// Puts the workspace disk into `workdir` itself (at
    /// [`WorkDir::workspace`], an overlay over a base it also places
    /// there: a resumed or forked session's own saved disk) and returns
    /// that base; `None` (the default): the builder takes an overlay from
    /// the pool over [`Launcher::workspace_base`] or the blank disk.
    fn place_workspace<'a>(
        &'a self,
        workdir: &'a WorkDir,
    ) -> Option<BoxFuture<'a, Result<PathBuf, BootError>>> {
        let _ = workdir;
        None
    }

    /// Starts the machine's process, inside `group` from its first
    /// instruction, and returns once it runs. Must not wait for the guest.
    ///
    /// # Errors
    /// [`crate::BootError::Spawn`], [`crate::BootError::Qemu`] (a plan QEMU cannot
    /// run), [`crate::BootError::Limits`] (the group refuses the child).
    fn spawn<'a>(
        &'a self,
        plan: &'a MachinePlan,
        group: &'a VmGroup,
    ) -> BoxFuture<'a, Result<QemuProcess, BootError>>;

    /// Waits until the machine's agent answers, racing the process's
    /// death, until `deadline`.
    ///
    /// # Errors
    /// [`crate::BootError::VmDied`], [`crate::BootError::BootTimeout`] (both
    /// transient), [`crate::BootError::PeerMismatch`], [`crate::BootError::Protocol`].
    fn reach_agent<'a>(
        &'a self,
        plan: &'a MachinePlan,
        process: &'a mut QemuProcess,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Agent, BootError>>;
}
