//! Saving a running VM's whole machine into a dir: its state stream (RAM
//! included; for a fork, filtered against a memory file as it is
//! written) and its workspace disk.

use super::gate::GateSender;
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
pub(crate) const SAVE_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for running a VM on after its save (or a failed one).
const RUN_ON_TIMEOUT: Duration = Duration::from_secs(10);

/// What a save wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedMachine {
    /// The RAM was a named backend (a template clone).
    pub named_ram: bool,
    /// Size of the state stream (when filtered, as QEMU wrote it: the
    /// whole stream is then not kept, see [`StateSink::Filtered`]).
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

/// Where a save's state stream goes.
#[derive(Debug, Clone, Copy)]
pub enum StateSink<'a> {
    /// [`STATE_FILE`] in the save's dir, whole.
    File,
    /// `delta`: the stream without the pages `base` (a template's memory
    /// file) holds, filtered as QEMU writes it
    /// ([`airlock_qemu::delta_against_base`]; a fork's children load it).
    /// The whole stream is not kept: only when the filter refuses it is
    /// the VM saved again, whole, into [`STATE_FILE`] (QEMU 7.2 will not
    /// migrate a VM a migration left paused, so it is run on and stopped
    /// again first). Writing both every time made a fork's save wait on
    /// the 70 MB file.
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
/// workspace disk ([`WORKSPACE_FILE`], when it has one), then
/// runs it on when `run_on_after`, else leaves it stopped (a pause: the
/// caller destroys it, or runs it on with [`run_on`] when the pause is
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

/// [`save_machine`], the stream going to `sink`.
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
    Saver::connect(vm, session_id)
        .await?
        .save(dir, run_on_after, sink, None)
        .await
}

/// A running VM about to be saved: connected to its QMP socket, what its
/// save will write known before it starts (a fork builds its children
/// meanwhile: `pause/gate.rs`).
pub(crate) struct Saver<'a> {
    vm: &'a Vm,
    session_id: &'a str,
    qmp: QmpClient,
    deadline: Instant,
    /// The VM's RAM is the named backend (a template clone's): a memory
    /// file can stand for it, and a loading VM must name its RAM alike.
    pub(crate) named_ram: bool,
    /// The VM has a workspace disk, which the save copies.
    pub(crate) has_disk: bool,
}

impl<'a> Saver<'a> {
    /// Connects to `vm`'s QMP socket and reads what the save will need.
    ///
    /// # Errors
    /// [`PauseError::Qemu`].
    pub(crate) async fn connect(vm: &'a Vm, session_id: &'a str) -> Result<Self, PauseError> {
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
        let has_disk = tokio::fs::try_exists(vm.workdir().workspace())
            .await
            .unwrap_or(false);
        Ok(Self {
            vm,
            session_id,
            qmp,
            deadline,
            named_ram,
            has_disk,
        })
    }

    /// Stops the VM and saves it into `dir` (as [`save_machine`]), the
    /// stream going to `sink`; `progress` is told when the disk is saved.
    ///
    /// # Errors
    /// As [`save_machine`].
    pub(crate) async fn save(
        mut self,
        dir: &Path,
        run_on_after: bool,
        sink: StateSink<'_>,
        progress: Option<&GateSender>,
    ) -> Result<SavedMachine, PauseError> {
        let (session_id, deadline) = (self.session_id, self.deadline);
        let qemu = |action| PauseError::qemu(session_id, action);
        // A memory file can only stand for a RAM block of the same name.
        let sink = if self.named_ram {
            sink
        } else {
            StateSink::File
        };
        let stopped = Instant::now();
        self.qmp.stop(deadline).await.map_err(qemu("stop it"))?;
        let saved = self.save_stopped(dir, sink, progress).await;
        if saved.is_err() || run_on_after {
            // A deadline of its own: a save that used up the whole of its
            // own must still leave the VM running.
            let resume_by = Instant::now() + RUN_ON_TIMEOUT;
            self.qmp.cont(resume_by).await.map_err(qemu("run it on"))?;
        }
        let (state_bytes, disk_bytes, filtered) = saved?;
        Ok(SavedMachine {
            named_ram: self.named_ram,
            state_bytes,
            disk_bytes,
            stopped_ms: ms(stopped.elapsed()),
            filtered,
        })
    }

    /// The state and the disk of the stopped VM, saved at once. `stop`
    /// drained and flushed every drive: the guest's data and the overlay's
    /// tables are in the file, and no guest write comes while the state
    /// streams. At the migration's end QEMU inactivates the drive, which
    /// may rewrite the qcow2 header to clear its dirty bit (the overlays
    /// use lazy refcounts) while `qemu-img convert` reads: a read-only open
    /// ignores that bit and reads no refcounts, so the copy is the same.
    async fn save_stopped(
        &mut self,
        dir: &Path,
        sink: StateSink<'_>,
        progress: Option<&GateSender>,
    ) -> Result<(u64, u64, Option<airlock_qemu::DeltaStats>), PauseError> {
        let (session_id, deadline) = (self.session_id, self.deadline);
        let state = dir.join(STATE_FILE);
        let (vm, has_disk) = (self.vm, self.has_disk);
        let disk = async {
            let bytes = save_disk(vm, session_id, has_disk, dir).await?;
            if let Some(progress) = progress {
                progress.disk_saved();
            }
            Ok::<_, PauseError>(bytes)
        };
        let qmp = &mut self.qmp;
        let stream = async {
            match sink {
                StateSink::File => {
                    Ok((save_to_file(session_id, qmp, &state, deadline).await?, None))
                }
                StateSink::Filtered { base, delta } => {
                    save_filtered(session_id, qmp, base, delta, deadline).await
                }
            }
        };
        let (stream, disk) = tokio::join!(stream, disk);
        let ((state_bytes, filtered), mut disk_bytes) = (stream?, disk?);
        if matches!(sink, StateSink::Filtered { .. }) && filtered.is_none() {
            // The whole stream, for the copies to load instead. QEMU will
            // not migrate a VM a migration left paused: it runs for the
            // moment between `cont` and `stop`, and may write to its disk
            // then, so the disk is saved again after.
            let qemu = |action| PauseError::qemu(session_id, action);
            self.qmp.cont(deadline).await.map_err(qemu("run it on"))?;
            self.qmp
                .stop(deadline)
                .await
                .map_err(qemu("stop it again"))?;
            let whole = save_to_file(session_id, &mut self.qmp, &state, deadline).await?;
            disk_bytes = save_disk(vm, session_id, has_disk, dir).await?;
            return Ok((whole, disk_bytes, None));
        }
        Ok((state_bytes, disk_bytes, filtered))
    }
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

/// Copies the stopped `vm`'s workspace disk into `dir`
/// ([`WORKSPACE_FILE`], a new file: a copy that forked children already
/// link stays theirs); its size, 0 when it has none (`has_disk`).
async fn save_disk(
    vm: &Vm,
    session_id: &str,
    has_disk: bool,
    dir: &Path,
) -> Result<u64, PauseError> {
    if !has_disk {
        return Ok(0);
    }
    let dest = dir.join(WORKSPACE_FILE);
    match tokio::fs::remove_file(&dest).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(PauseError::io("remove", &dest, e));
        }
        _ => {}
    }
    copy_disk(&vm.workdir().workspace(), &dest)
        .await
        .map_err(|reason| PauseError::Disk {
            session_id: session_id.to_owned(),
            reason,
        })?;
    Ok(tokio::fs::metadata(&dest)
        .await
        .map_err(|e| PauseError::io("measure", &dest, e))?
        .len())
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
    if let Err(e) = qmp.save_full_state(file.as_fd(), deadline).await {
        // A migration still running would keep the VM from running on.
        let _ = qmp
            .execute("migrate_cancel", None, Instant::now() + RUN_ON_TIMEOUT)
            .await;
        return Err(PauseError::qemu(session_id, "save its state")(e));
    }
    Ok(file
        .metadata()
        .map_err(|e| PauseError::io("measure", state, e))?
        .len())
}

/// Saves the stopped VM's whole state through a pipe that a blocking task
/// reads as QEMU writes it, filtered against `base` into `delta`; returns
/// the stream's size. A filter that refuses the stream leaves `delta`
/// unusable (logged; `None`); the task reads the stream to its end
/// either way, so QEMU's migration completes. QEMU closes its end of the
/// pipe when its migration ends, failed or not: the task then ends too.
async fn save_filtered(
    session_id: &str,
    qmp: &mut QmpClient,
    base: &Path,
    delta: &Path,
    deadline: Instant,
) -> Result<(u64, Option<airlock_qemu::DeltaStats>), PauseError> {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| PauseError::io("make a pipe for the state filtered into", delta, e.into()))?;
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
    let (base_file, delta_file) = (open(base, false)?, open(delta, true)?);
    let (delta_path, sid) = (delta.to_path_buf(), session_id.to_owned());
    let reader = tokio::task::spawn_blocking(move || {
        let (bytes, filtered) = filter_to_end(std::fs::File::from(read), delta_file, &base_file)
            .map_err(|e| PauseError::io("read the state filtered into", delta_path, e))?;
        if let Err(e) = &filtered {
            tracing::warn!(session_id = sid, error = %e, "state not filtered: it is saved again whole, and loaded so");
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
            "read the state filtered into",
            delta,
            std::io::Error::other(e.to_string()),
        )
    });
    saved.map_err(PauseError::qemu(session_id, "save its state"))?;
    read?
}

/// Filters the stream `from` against `base` into `delta`, then reads
/// what the filter left of it to its end (so that the writer never
/// blocks); the bytes read, and the filter's outcome.
///
/// # Errors
/// Reading `from` failed.
fn filter_to_end(
    from: impl std::io::Read,
    delta: impl std::io::Write,
    base: &std::fs::File,
) -> std::io::Result<(
    u64,
    Result<airlock_qemu::DeltaStats, airlock_qemu::StreamError>,
)> {
    let mut counted = Counted { from, bytes: 0 };
    let filtered = airlock_qemu::delta_against_base(&mut counted, delta, MEMORY_BACKEND_ID, base);
    std::io::copy(&mut counted, &mut std::io::sink())?;
    Ok((counted.bytes, filtered))
}

/// A reader that counts what it reads.
struct Counted<R> {
    from: R,
    bytes: u64,
}

impl<R: std::io::Read> std::io::Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.from.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Copies a stopped VM's workspace disk (its overlay and what is under
/// it) into `dest` as one standalone qcow2 (`qemu-img convert`: only
/// written clusters are stored; `-U` reads past the running QEMU's lock,
/// safe as the VM is stopped: `stop` flushed its data and tables, see
/// [`Saver::save`]). A template's disk is saved the same way.
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
    fn a_stream_the_filter_refuses_is_still_read_to_its_end() {
        let base = tempfile::tempfile().unwrap();
        let stream: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut from = stream.as_slice();
        let mut delta = Vec::new();
        let (bytes, filtered) = filter_to_end(&mut from, &mut delta, &base).unwrap();
        assert!(filtered.is_err());
        assert_eq!(bytes, stream.len() as u64);
        assert!(from.is_empty(), "{} bytes left unread", from.len());
    }
}
