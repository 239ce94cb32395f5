//! Pausing a session's whole machine to disk, resuming it, forking it
//! (`docs/persistence.md`, "Pause, resume and fork").
//!
//! - **Save** ([`save_machine`]): over QMP the VM is stopped and migrated
//!   whole (RAM included: a template clone maps its template's memory
//!   privately, so `x-ignore-shared` cannot apply) into a file passed as
//!   a descriptor (`getfd`: QEMU's sandbox forbids `exec:`), its
//!   workspace disk copied meanwhile into one standalone qcow2
//!   (`qemu-img convert -U`, as a template's), and the VM then left
//!   paused or run on.
//! - **Fork**: the parent is saved once while its children are built;
//!   each waits at a gate (`gate.rs`) for the saved disk, then the state.
//! - **Store** ([`PausedStore`]): one dir per paused session under
//!   [`crate::Config::paused_dir`], with [`PausedMeta`] (tenant, shape,
//!   sizes, expiry, and the machine inputs a host must match to load it).
//! - **Load** ([`ResumeLauncher`]): a `Launcher` over
//!   the VM-source seam, so the VM is built the normal way (slot, limits
//!   group, root overlay): QEMU starts with the same machine and
//!   `-incoming defer`, the stream loads, `cont`, the agent is reached
//!   and sent the host's clock; its workspace disk is an overlay over the
//!   saved copy, placed in its work dir.
//!
//! The session-level calls are [`crate::Session::pause`],
//! [`crate::Session::fork`] and [`crate::Scheduler::resume`].

pub mod fork;
pub(crate) mod gate;
mod resume;
pub(crate) mod save;
pub mod store;

pub use resume::ResumeLauncher;
pub use save::{save_machine, save_machine_into, SavedMachine, StateSink};
pub use store::{
    PausedEntry, PausedMeta, PausedStore, DEFAULT_PAUSED_TTL, META_FILE, PAUSED_FORMAT, STATE_FILE,
    WORKSPACE_FILE,
};

use crate::error::PauseError;

/// Where a fork's saved parent waits for its children to load, under the
/// run dir: on the work dirs' file system, so each child's disk base is a
/// hard link to one saved copy. One dir per fork, named after its process
/// (`process_dirs.rs`): a dead process's are swept by the next fork.
pub(crate) const FORKS_DIR: &str = "forks";

/// The most sessions one fork makes.
pub const MAX_FORKS: usize = 8;

/// Checks a fork count: 1..=[`MAX_FORKS`].
///
/// # Errors
/// [`PauseError::InvalidCount`].
pub fn validate_fork_count(count: usize) -> Result<(), PauseError> {
    if (1..=MAX_FORKS).contains(&count) {
        Ok(())
    } else {
        Err(PauseError::InvalidCount {
            count,
            max: MAX_FORKS,
        })
    }
}

/// Why a VM with a network (`has_network`) or `mounts` host folders
/// cannot be saved (pure); `None` when it can.
pub fn unpausable_reason(has_network: bool, mounts: usize) -> Option<String> {
    if has_network {
        return Some(
            "it has a network: its gvproxy's connection state lives outside the VM and QEMU 7.2 cannot reconnect a saved network device to a new one"
                .into(),
        );
    }
    if mounts > 0 {
        return Some(format!(
            "it has {mounts} host folder(s): QEMU 7.2 refuses to migrate a virtio-9p device whose file system the guest has mounted"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fork_count_is_one_to_eight() {
        assert!(validate_fork_count(1).is_ok());
        assert!(validate_fork_count(MAX_FORKS).is_ok());
        for bad in [0, MAX_FORKS + 1, 100] {
            assert!(matches!(
                validate_fork_count(bad),
                Err(PauseError::InvalidCount { count, .. }) if count == bad
            ));
        }
    }

    #[test]
    fn a_vm_with_a_network_or_a_host_folder_is_refused_with_the_reason() {
        assert_eq!(unpausable_reason(false, 0), None);
        assert!(unpausable_reason(true, 0).unwrap().contains("network"));
        assert!(unpausable_reason(false, 2).unwrap().contains("virtio-9p"));
    }
}
