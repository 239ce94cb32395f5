//! Saving a running VM's whole machine into a dir: its state stream (RAM
//! included) and its workspace disk.

use super::store::{STATE_FILE, WORKSPACE_FILE};
use crate::error::PauseError;
use crate::ms;
use crate::vm::Vm;
use airlock_qemu::{QmpClient, MEMORY_BACKEND_ID};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// Longest wait for stopping a VM, saving it and copying its disk.
const SAVE_TIMEOUT: Duration = Duration::from_secs(120);

/// What a save wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedMachine {
    /// The RAM was a named backend (a template clone).
    pub named_ram: bool,
    /// Size of the state stream.
    pub state_bytes: u64,
    /// Size of the saved workspace disk (0: none).
    pub disk_bytes: u64,
    /// How long the VM stood still, in ms.
    pub stopped_ms: u64,
}

/// Stops `vm`, saves its whole state into `dir` ([`STATE_FILE`]) and its
/// workspace disk ([`WORKSPACE_FILE`], when it has one), then runs it on
/// when `run_on` (a fork's parent), else leaves it stopped (a pause: the
/// caller destroys it, or runs it on with `run_on` when the pause is
/// refused after all). A failed save runs the VM on.
///
/// # Errors
/// [`PauseError::Qemu`], [`PauseError::Disk`], [`PauseError::Io`].
pub async fn save_machine(
    vm: &Vm,
    session_id: &str,
    dir: &Path,
    run_on_after: bool,
) -> Result<SavedMachine, PauseError> {
    let deadline = Instant::now() + SAVE_TIMEOUT;
    let qemu = |action| PauseError::qemu(session_id, action);
    let mut qmp = QmpClient::connect(&vm.workdir().qmp_socket(), deadline)
        .await
        .map_err(qemu("connect to QMP"))?;
    let named_ram = qmp
        .memory_backends(deadline)
        .await
        .map_err(qemu("list its memory backends"))?
        .iter()
        .any(|id| id == MEMORY_BACKEND_ID);
    let stopped = Instant::now();
    qmp.stop(deadline).await.map_err(qemu("stop it"))?;
    let saved = save_stopped(vm, session_id, &mut qmp, dir, deadline).await;
    if saved.is_err() || run_on_after {
        qmp.cont(deadline).await.map_err(qemu("run it on"))?;
    }
    let (state_bytes, disk_bytes) = saved?;
    Ok(SavedMachine {
        named_ram,
        state_bytes,
        disk_bytes,
        stopped_ms: ms(stopped.elapsed()),
    })
}

/// Runs a VM left stopped by [`save_machine`] on.
///
/// # Errors
/// [`PauseError::Qemu`].
pub async fn run_on(vm: &Vm, session_id: &str) -> Result<(), PauseError> {
    let deadline = Instant::now() + SAVE_TIMEOUT;
    let qemu = |action| PauseError::qemu(session_id, action);
    let mut qmp = QmpClient::connect(&vm.workdir().qmp_socket(), deadline)
        .await
        .map_err(qemu("connect to QMP"))?;
    qmp.cont(deadline).await.map_err(qemu("run it on"))
}

async fn save_stopped(
    vm: &Vm,
    session_id: &str,
    qmp: &mut QmpClient,
    dir: &Path,
    deadline: Instant,
) -> Result<(u64, u64), PauseError> {
    let state = dir.join(STATE_FILE);
    let file = tokio::fs::File::create(&state)
        .await
        .map_err(|e| PauseError::io("create", &state, e))?
        .into_std()
        .await;
    qmp.save_full_state(file.as_fd(), deadline)
        .await
        .map_err(PauseError::qemu(session_id, "save its state"))?;
    let state_bytes = file
        .metadata()
        .map_err(|e| PauseError::io("measure", &state, e))?
        .len();
    drop(file);
    let workspace = vm.workdir().workspace();
    let disk_bytes = if tokio::fs::try_exists(&workspace).await.unwrap_or(false) {
        let dest = dir.join(WORKSPACE_FILE);
        copy_disk(&workspace, &dest)
            .await
            .map_err(|reason| PauseError::Disk {
                session_id: session_id.to_owned(),
                reason,
            })?;
        tokio::fs::metadata(&dest)
            .await
            .map_err(|e| PauseError::io("measure", &dest, e))?
            .len()
    } else {
        0
    };
    Ok((state_bytes, disk_bytes))
}

/// Copies a stopped VM's workspace disk (its overlay and what is under
/// it) into `dest` as one standalone qcow2 (`qemu-img convert`: only
/// written clusters are stored; `-U` reads past the running QEMU's lock,
/// safe as the VM is stopped and its state saved, so QEMU wrote
/// everything out). A template's disk is saved the same way.
pub(crate) async fn copy_disk(source: &Path, dest: &Path) -> Result<(), String> {
    let args: Vec<std::ffi::OsString> = vec![
        "convert".into(),
        "-q".into(),
        "-U".into(),
        "-f".into(),
        "qcow2".into(),
        "-O".into(),
        "qcow2".into(),
        source.as_os_str().to_owned(),
        dest.as_os_str().to_owned(),
    ];
    crate::disk::run_tool("qemu-img", &args).await
}
