//! Saving a running VM's whole machine into a dir: its state stream (RAM
//! included; for a fork, also filtered against a memory file as it is
//! written) and its workspace disk.

use super::store::{STATE_FILE, WORKSPACE_FILE};
use crate::error::PauseError;
use crate::ms;
use crate::vm::Vm;
use airlock_qemu::{QmpClient, MEMORY_BACKEND_ID};
use std::os::fd::{AsFd, AsRawFd};
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
    /// What filtering the stream against a base memory file did
    /// ([`StateSink::Filtered`]); `None`: not filtered (not asked, the RAM
    /// has no name a memory file could take, or the filter refused the
    /// stream: then only the whole stream is usable).
    pub filtered: Option<airlock_qemu::DeltaStats>,
}

/// Where a save's state stream goes, besides [`STATE_FILE`] in the save's
/// dir, which always receives it whole.
#[derive(Debug, Clone, Copy)]
pub enum StateSink<'a> {
    /// Only the file (a pause).
    File,
    /// Also `delta`: the stream without the pages `base` (a template's
    /// memory file) holds, filtered as QEMU writes it
    /// ([`airlock_qemu::delta_against_base`]; a fork's children load it).
    /// Ignored when the VM's RAM has no name a memory file could take.
    Filtered {
        /// The memory file the children's RAM starts as.
        base: &'a Path,
        /// Where the filtered stream goes.
        delta: &'a Path,
    },
}

/// The pipe size asked for a stream read by the filter: with the default
/// 64 KiB, QEMU and the reader would take turns a thousand times for a
/// 64 MiB stream (the default `fs.pipe-max-size` is 1 MiB; less only
/// costs speed).
const FILTER_PIPE_BYTES: i32 = 1 << 20;

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
    save_machine_into(vm, session_id, dir, run_on_after, StateSink::File).await
}

/// [`save_machine`], the stream also going to `sink`.
///
/// # Errors
/// As [`save_machine`].
pub async fn save_machine_into(
    vm: &Vm,
    session_id: &str,
    dir: &Path,
    run_on_after: bool,
    sink: StateSink<'_>,
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
    // A memory file can only stand for a RAM block of the same name.
    let sink = if named_ram { sink } else { StateSink::File };
    let stopped = Instant::now();
    qmp.stop(deadline).await.map_err(qemu("stop it"))?;
    let saved = save_stopped(vm, session_id, &mut qmp, dir, sink, deadline).await;
    if saved.is_err() || run_on_after {
        qmp.cont(deadline).await.map_err(qemu("run it on"))?;
    }
    let (state_bytes, disk_bytes, filtered) = saved?;
    Ok(SavedMachine {
        named_ram,
        state_bytes,
        disk_bytes,
        stopped_ms: ms(stopped.elapsed()),
        filtered,
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
    sink: StateSink<'_>,
    deadline: Instant,
) -> Result<(u64, u64, Option<airlock_qemu::DeltaStats>), PauseError> {
    let state = dir.join(STATE_FILE);
    let (state_bytes, filtered) = match sink {
        StateSink::File => (save_to_file(session_id, qmp, &state, deadline).await?, None),
        StateSink::Filtered { base, delta } => {
            save_filtered(session_id, qmp, &state, base, delta, deadline).await?
        }
    };
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
    Ok((state_bytes, disk_bytes, filtered))
}

async fn save_to_file(
    session_id: &str,
    qmp: &mut QmpClient,
    state: &Path,
    deadline: Instant,
) -> Result<u64, PauseError> {
    let file = tokio::fs::File::create(state)
        .await
        .map_err(|e| PauseError::io("create", state, e))?
        .into_std()
        .await;
    qmp.save_full_state(file.as_fd(), deadline)
        .await
        .map_err(PauseError::qemu(session_id, "save its state"))?;
    Ok(file
        .metadata()
        .map_err(|e| PauseError::io("measure", state, e))?
        .len())
}

/// Saves the stopped VM's whole state through a pipe that a blocking task
/// reads as QEMU writes it: into `state` whole, and filtered against
/// `base` into `delta`. A filter that refuses the stream only leaves
/// `delta` unusable (logged; `None`); the task reads the stream to its end
/// either way, so `state` is whole. QEMU closes its end of the pipe when
/// its migration ends, failed or not: the task then ends too.
async fn save_filtered(
    session_id: &str,
    qmp: &mut QmpClient,
    state: &Path,
    base: &Path,
    delta: &Path,
    deadline: Instant,
) -> Result<(u64, Option<airlock_qemu::DeltaStats>), PauseError> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| PauseError::io("make a pipe for the state of", state, e.into()))?;
    // Best effort: a smaller pipe only costs speed.
    let _ = nix::fcntl::fcntl(
        write.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(FILTER_PIPE_BYTES),
    );
    let open = |path: &Path, create: bool| {
        let opened = if create {
            std::fs::File::create(path)
        } else {
            std::fs::File::open(path)
        };
        opened.map_err(|e| PauseError::io(if create { "create" } else { "open" }, path, e))
    };
    let (whole, base_file, delta_file) =
        (open(state, true)?, open(base, false)?, open(delta, true)?);
    let (state_path, sid) = (state.to_path_buf(), session_id.to_owned());
    let reader = tokio::task::spawn_blocking(move || {
        let (bytes, filtered) =
            tee_and_filter(std::fs::File::from(read), whole, delta_file, &base_file)
                .map_err(|e| PauseError::io("write", state_path, e))?;
        if let Err(e) = &filtered {
            tracing::warn!(session_id = sid, error = %e, "state not filtered: the whole stream is loaded instead");
        }
        Ok((bytes, filtered.ok()))
    });
    let saved = qmp.save_full_state(write.as_fd(), deadline).await;
    drop(write);
    if saved.is_err() {
        // A migration still running would hold its end of the pipe open.
        let _ = qmp.execute("migrate_cancel", None, deadline).await;
    }
    let read = reader.await.map_err(|e| {
        PauseError::io(
            "read the saved state into",
            state,
            std::io::Error::other(e.to_string()),
        )
    });
    saved.map_err(PauseError::qemu(session_id, "save its state"))?;
    read?
}

/// Reads the stream `from` to its end into `whole`, filtering it against
/// `base` into `delta` on the way; the bytes read, and the filter's
/// outcome (its refusal leaves `whole` whole all the same).
///
/// # Errors
/// Reading `from` or writing `whole` failed.
fn tee_and_filter(
    from: impl std::io::Read,
    whole: impl std::io::Write,
    delta: impl std::io::Write,
    base: &std::fs::File,
) -> std::io::Result<(
    u64,
    Result<airlock_qemu::DeltaStats, airlock_qemu::StreamError>,
)> {
    let mut tee = Tee {
        from,
        to: whole,
        bytes: 0,
    };
    let filtered = airlock_qemu::delta_against_base(&mut tee, delta, MEMORY_BACKEND_ID, base);
    std::io::copy(&mut tee, &mut std::io::sink())?;
    Ok((tee.bytes, filtered))
}

/// A reader that also writes what it reads.
struct Tee<R, W> {
    from: R,
    to: W,
    bytes: u64,
}

impl<R: std::io::Read, W: std::io::Write> std::io::Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.from.read(buf)?;
        std::io::Write::write_all(&mut self.to, &buf[..n])?;
        self.bytes += n as u64;
        Ok(n)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_the_filter_refuses_is_still_written_whole() {
        let base = tempfile::tempfile().unwrap();
        let stream: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (mut whole, mut delta) = (Vec::new(), Vec::new());
        let (bytes, filtered) =
            tee_and_filter(stream.as_slice(), &mut whole, &mut delta, &base).unwrap();
        assert!(filtered.is_err());
        assert_eq!(bytes, stream.len() as u64);
        assert_eq!(whole, stream);
    }
}
