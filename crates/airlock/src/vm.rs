//! A booted VM (step 9 of "A VM's life" in `docs/architecture.md`): run code
//! in it with [`Vm::exec`], remove every trace of it with [`Vm::destroy`].
//! A VM is made by the builder (`builder.rs`) through
//! [`crate::VmManager::boot`].

use crate::error::{BootError, ExecError};
use crate::network::{ExposedAddr, VmNetwork};
use crate::process::{console_tail, QemuProcess};
use crate::slots::Slot;
use crate::teardown::{Reaper, TeardownReport, VmParts};
use crate::workdir::WorkDir;
use airlock_limits::VmGroup;
use airlock_protocol::client::{AgentInfo, CappedExecOutput, Client, ExecEvent};
use airlock_protocol::{Completion, ExecRequest, Language, ProtocolError};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Extra time the host waits for an exec beyond its timeout and the agent's
/// kill grace, before it declares the guest stuck.
pub(crate) const EXEC_HOST_MARGIN: Duration = Duration::from_secs(10);

/// Where a VM's boot time went, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BootTimings {
    /// Waiting for a free VM slot (backpressure).
    pub queue_ms: u64,
    /// Taking the disk overlay.
    pub overlay_ms: u64,
    /// Whether the overlay came from the pool.
    pub overlay_pool_hit: bool,
    /// Starting QEMU.
    pub spawn_ms: u64,
    /// From QEMU started to the agent's answer.
    pub guest_ready_ms: u64,
    /// Attempts made.
    pub attempts: u32,
    /// Where a restore from a memory template spent its part of
    /// `guest_ready_ms` (`None` after a cold boot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore: Option<crate::guest::RestoreTimings>,
    /// The VM waited paused in a warm pool: `guest_ready_ms` is its take
    /// (resume and reseed), the other fields are zero.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub from_warm_pool: bool,
}

/// Output of an exec, collected.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutcome {
    /// Everything on stdout.
    pub stdout: Vec<u8>,
    /// Everything on stderr.
    pub stderr: Vec<u8>,
    /// The values a cell or one-shot run showed (MIME bundles, in order;
    /// none for a process exec): `docs/outputs.md`.
    pub results: Vec<airlock_protocol::ExecResult>,
    /// The cell's uncaught exception, if any.
    pub error: Option<airlock_protocol::CellError>,
    /// How it ended.
    pub completion: Completion,
}

/// One piece of an exec's progress, handed on as it arrives.
#[derive(Debug, Clone, Copy)]
pub enum ExecProgress<'a> {
    /// A chunk of output, as kept within the caps.
    Output(OutputStream, &'a [u8]),
    /// A value the code showed (a cell's last expression, `display()`, a
    /// figure): `docs/outputs.md`.
    Result(&'a airlock_protocol::ExecResult),
}

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// What a running VM holds; every VM has each of these until destroyed.
#[derive(Debug)]
pub(crate) struct Running {
    /// The machine's process.
    pub process: QemuProcess,
    /// The channel to the agent (shared with the VM's side channel,
    /// [`crate::source::SideChannel`]).
    pub client: Arc<Client>,
    /// The limits group.
    pub group: VmGroup,
    /// The VM slot it occupies.
    pub slot: Slot,
    /// The network, when the VM has one.
    pub network: Option<VmNetwork>,
    /// The `--debug` console echo.
    pub console_echo: Option<JoinHandle<()>>,
}

impl Running {
    fn into_parts(self, vm_id: &str, workdir: &WorkDir) -> VmParts {
        VmParts {
            vm_id: vm_id.to_owned(),
            workdir: workdir.clone(),
            group: Some(self.group),
            network: self.network,
            process: Some(self.process),
            client: Some(self.client),
            console_echo: self.console_echo,
            slot: Some(self.slot),
        }
    }
}

#[derive(Debug)]
enum State {
    Running(Box<Running>),
    Destroyed,
}

/// Everything [`Vm::new`] needs: what the builder made.
#[derive(Debug)]
pub(crate) struct Booted {
    pub id: String,
    pub language: Language,
    pub workdir: WorkDir,
    pub agent: AgentInfo,
    pub timings: BootTimings,
    pub kill_grace: Duration,
    pub reaper: Reaper,
    pub running: Running,
}

/// A booted VM whose agent answers. Destroy it with [`Vm::destroy`];
/// dropping it hands it to its manager's reaper, which tears it down the
/// same way (with SIGKILL at once).
pub struct Vm {
    id: String,
    language: Language,
    workdir: WorkDir,
    agent: AgentInfo,
    timings: BootTimings,
    kill_grace: Duration,
    reaper: Reaper,
    state: State,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("id", &self.id)
            .field("workdir", &self.workdir)
            .finish_non_exhaustive()
    }
}

impl Vm {
    pub(crate) fn new(booted: Booted) -> Self {
        Self {
            id: booted.id,
            language: booted.language,
            workdir: booted.workdir,
            agent: booted.agent,
            timings: booted.timings,
            kill_grace: booted.kill_grace,
            reaper: booted.reaper,
            state: State::Running(Box::new(booted.running)),
        }
    }

    fn running(&self) -> Option<&Running> {
        match &self.state {
            State::Running(running) => Some(running),
            State::Destroyed => None,
        }
    }

    /// The VM id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The language of its root disk.
    pub fn language(&self) -> Language {
        self.language
    }

    /// Where its boot time went.
    pub fn boot_timings(&self) -> &BootTimings {
        &self.timings
    }

    /// Moves the VM's limits group to `tenant` (`airlock/<tenant>/<vm
    /// id>`, the same limits) and its owner record with it: a warm pool's
    /// VM is made before the tenant of the request that takes it is known.
    /// With cgroup v2 the group stays where it is (its memory could not
    /// move, [`airlock_limits::Limiter::regroup`]), and so does the owner
    /// record's tenant, which says where a sweep finds the group.
    ///
    /// # Errors
    /// [`BootError::Limits`] when the processes cannot be moved (the VM stays
    /// in its old group); [`BootError::Io`] for the owner record.
    pub(crate) async fn move_to_tenant(
        &mut self,
        limiter: &airlock_limits::Limiter,
        tenant: &str,
    ) -> Result<(), BootError> {
        let vm_id = self.id.clone();
        let State::Running(running) = &mut self.state else {
            return Ok(());
        };
        let (limiter, old, to) = (limiter.clone(), running.group.clone(), tenant.to_owned());
        let moved =
            crate::task::blocking("move a limits group", move || limiter.regroup(&old, &to))
                .await?
                .map_err(BootError::limits(
                    Some(&vm_id),
                    "move to the tenant's limits group",
                ))?;
        let moved_to_tenant = moved.id().tenant() == tenant;
        running.group = moved;
        if moved_to_tenant {
            self.workdir.set_tenant(tenant).await?;
        }
        Ok(())
    }

    /// Records that this VM was taken from a warm pool, the take (resume
    /// and reseed) lasting `take_ms`: its boot timings become the take's.
    pub(crate) fn mark_taken_from_pool(&mut self, take_ms: u64) {
        self.timings = BootTimings {
            guest_ready_ms: take_ms,
            from_warm_pool: true,
            ..BootTimings::default()
        };
    }

    /// What the agent said about itself.
    pub fn agent(&self) -> &AgentInfo {
        &self.agent
    }

    /// The VM's work dir.
    pub fn workdir(&self) -> &WorkDir {
        &self.workdir
    }

    /// The exposed guest ports and their host addresses.
    pub fn exposed(&self) -> &[ExposedAddr] {
        self.running()
            .and_then(|r| r.network.as_ref())
            .map_or(&[], VmNetwork::exposed)
    }

    /// gvproxy's pid, when the VM has a network.
    pub fn gvproxy_pid(&self) -> Option<u32> {
        self.running()
            .and_then(|r| r.network.as_ref())
            .map(VmNetwork::gvproxy_pid)
    }

    /// QEMU's pid, until the VM is destroyed.
    pub fn qemu_pid(&self) -> Option<u32> {
        self.running().map(|r| r.process.pid())
    }

    /// The protocol client (for file operations and sessions).
    ///
    /// # Errors
    /// [`ExecError::Protocol`] after the VM was destroyed.
    pub fn client(&self) -> Result<&Client, ExecError> {
        self.running()
            .map(|r| &*r.client)
            .ok_or_else(|| ExecError::Protocol {
                vm_id: self.id.clone(),
                source: ProtocolError::Closed,
            })
    }

    /// A shared handle on the agent channel, for execs beside the
    /// VM's one-at-a-time user (`source::SideChannel`); `None` once
    /// destroyed.
    pub(crate) fn shared_client(&self) -> Option<Arc<Client>> {
        self.running().map(|r| Arc::clone(&r.client))
    }

    /// Runs code, handing output to `on_output` as it arrives, racing QEMU's
    /// death (a dead VM is reported with its logs, never as a hang).
    ///
    /// The output kept (and handed to `on_output`) is capped by the
    /// client's [`airlock_protocol::client::ClientConfig`]
    /// (`max_stdout_bytes`, `max_stderr_bytes`): past a cap the stream is
    /// cut, the marker line appended and the completion flags it as
    /// truncated, whatever the guest sends.
    ///
    /// # Errors
    /// [`ExecError::VmDied`] (QEMU exited), [`ExecError::Protocol`] (the agent
    /// refused or failed, or the host-side deadline passed).
    pub async fn exec(
        &mut self,
        request: ExecRequest,
        on_output: impl FnMut(OutputStream, &[u8]) + Send,
    ) -> Result<ExecOutcome, ExecError> {
        self.exec_interruptible(request, on_output, std::future::pending())
            .await
    }

    /// As [`Vm::exec`]; when `interrupt` completes, the agent is asked to
    /// interrupt the exec (`cancel`: SIGINT first for a cell, then the
    /// kill a timeout gets), and the exec's own completion is still awaited
    /// and returned (exit code 130 when interrupted). Sessions pass their
    /// canceller here.
    ///
    /// # Errors
    /// As [`Vm::exec`].
    pub async fn exec_interruptible(
        &mut self,
        request: ExecRequest,
        mut on_output: impl FnMut(OutputStream, &[u8]) + Send,
        interrupt: impl std::future::Future<Output = ()> + Send,
    ) -> Result<ExecOutcome, ExecError> {
        let on_progress = move |piece: ExecProgress<'_>| {
            if let ExecProgress::Output(stream, bytes) = piece {
                on_output(stream, bytes);
            }
        };
        self.exec_streaming(request, on_progress, interrupt).await
    }

    /// As [`Vm::exec_interruptible`], handing `on_progress` the results
    /// (MIME bundles) as well as the output, in the order they come.
    ///
    /// # Errors
    /// As [`Vm::exec`].
    pub async fn exec_streaming(
        &mut self,
        request: ExecRequest,
        mut on_progress: impl FnMut(ExecProgress<'_>) + Send,
        interrupt: impl std::future::Future<Output = ()> + Send,
    ) -> Result<ExecOutcome, ExecError> {
        let vm_id = self.id.clone();
        let protocol = |source| ExecError::Protocol {
            vm_id: vm_id.clone(),
            source,
        };
        let State::Running(running) = &mut self.state else {
            return Err(protocol(ProtocolError::Closed));
        };
        let Running {
            client, process, ..
        } = &mut **running;
        // The agent enforces the timeout (plus its 2 s kill grace); the
        // host deadline only guards against a stuck guest.
        let deadline = Duration::from_millis(request.timeout_ms) + EXEC_HOST_MARGIN;
        let run = collect_exec(
            client,
            request,
            &mut on_progress,
            interrupt,
            None,
            Forward::Kept,
        );
        let console_log = self.workdir.console_log();
        let result = tokio::select! {
            result = tokio::time::timeout(deadline, run) => result,
            status = process.wait() => {
                return Err(died(&vm_id, process, status, &console_log).await);
            }
        };
        match result {
            Ok(Ok(outcome)) => Ok(outcome),
            // The channel may close a moment before QEMU's exit is seen:
            // a dead VM is reported as such, with its logs.
            Ok(Err(e @ (ProtocolError::Closed | ProtocolError::Io(_)))) => {
                match tokio::time::timeout(Duration::from_secs(2), process.wait()).await {
                    Ok(status) => Err(died(&vm_id, process, status, &console_log).await),
                    Err(_) => Err(protocol(e)),
                }
            }
            Ok(Err(e)) => Err(protocol(e)),
            Err(_) => Err(protocol(ProtocolError::Timeout {
                what: "exec".into(),
                after: deadline,
            })),
        }
    }

    /// Stops QEMU (TERM, then KILL after the grace), the network, removes
    /// the limits group and the work dir, and frees the VM's slot. Never
    /// fails, safe to call twice; reports what it did. Completes even if
    /// this future is dropped.
    pub async fn destroy(&mut self) -> TeardownReport {
        match std::mem::replace(&mut self.state, State::Destroyed) {
            State::Running(running) => {
                let parts = running.into_parts(&self.id, &self.workdir);
                self.reaper.tear_down(parts, self.kill_grace).await
            }
            State::Destroyed => TeardownReport::nothing_left(self.id.clone()),
        }
    }
}

/// [`ExecError::VmDied`] for QEMU found dead during an exec, with its logs' tails
/// (the console's read off the runtime).
async fn died(
    vm_id: &str,
    process: &QemuProcess,
    status: std::io::Result<std::process::ExitStatus>,
    console_log: &std::path::Path,
) -> ExecError {
    ExecError::VmDied {
        vm_id: vm_id.to_owned(),
        status: status.ok().map(airlock_sys_util::ChildExit::from),
        stderr_tail: process.stderr_tail(),
        console_tail: console_tail(console_log).await,
    }
}

/// How much of an exec's output [`collect_exec`] hands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forward {
    /// What is kept (within the client's caps): a run's or a cell's.
    Kept,
    /// All of it, as it comes, while only the capped part is kept: a
    /// process beside a session's calls (E2B's commands, which stream
    /// without end).
    All,
}

/// Runs an exec to its end, keeping its output within `client`'s caps and
/// handing `on_progress` what was kept (or all of it, `forward`) and each
/// result, as they arrive. When `interrupt` completes, a `cancel` is sent
/// for the exec (once) and its end is still awaited.
pub(crate) async fn collect_exec<F>(
    client: &Client,
    request: ExecRequest,
    on_progress: &mut F,
    interrupt: impl std::future::Future<Output = ()> + Send,
    mut input: Option<ProcessInput>,
    forward: Forward,
) -> std::result::Result<ExecOutcome, ProtocolError>
where
    F: FnMut(ExecProgress<'_>) + Send + ?Sized,
{
    let mut stream = client.exec(request).await?;
    let mut output = CappedExecOutput::new(client.config());
    let mut interrupt = std::pin::pin!(interrupt);
    let mut interrupted = false;
    loop {
        let event = tokio::select! {
            event = stream.next() => event?,
            () = &mut interrupt, if !interrupted => {
                interrupted = true;
                send_cancel(client, stream.op()).await;
                continue;
            }
            chunk = next_input(&mut input) => {
                match chunk {
                    Some(StdinChunk::Data(bytes)) => {
                        client.send_stdin(stream.op(), &bytes).await?;
                    }
                    Some(StdinChunk::Close) => {
                        client.close_stdin(stream.op()).await?;
                    }
                    // The sender is gone: nothing more will come.
                    None => input = None,
                }
                continue;
            }
        };
        let Some(event) = event else { break };
        match event {
            ExecEvent::Stdout(b) if forward == Forward::All => {
                emit(on_progress, OutputStream::Stdout, &b);
                output.push_stdout(&b);
            }
            ExecEvent::Stderr(b) if forward == Forward::All => {
                emit(on_progress, OutputStream::Stderr, &b);
                output.push_stderr(&b);
            }
            ExecEvent::Stdout(b) => emit(on_progress, OutputStream::Stdout, output.push_stdout(&b)),
            ExecEvent::Stderr(b) => emit(on_progress, OutputStream::Stderr, output.push_stderr(&b)),
            ExecEvent::Result(mut result) => {
                // A figure's raw pixels become its image/png here, before
                // anything hands the result on (`pixels`).
                if let Some(note) = encode_figure(&mut result).await {
                    emit(
                        on_progress,
                        OutputStream::Stderr,
                        output.push_stderr(note.as_bytes()),
                    );
                }
                on_progress(ExecProgress::Result(&result));
                output.push_result(result);
            }
            ExecEvent::CellError(error) => output.set_error(error),
            ExecEvent::Complete(completion) => {
                let output = output.finish(completion);
                return Ok(ExecOutcome {
                    stdout: output.stdout,
                    stderr: output.stderr,
                    results: output.results,
                    error: output.error,
                    completion: output.completion,
                });
            }
        }
    }
    Err(ProtocolError::Closed)
}

/// Writes the PNG of `result`'s raw pixels, if it has some
/// ([`crate::pixels::encode_raw_pixels`]), on a blocking thread (a few
/// milliseconds of compression); the error note when they were bad.
async fn encode_figure(result: &mut airlock_protocol::ExecResult) -> Option<String> {
    if !crate::pixels::has_raw_pixels(result) {
        return None;
    }
    let mut owned = std::mem::replace(
        result,
        airlock_protocol::ExecResult {
            data: Default::default(),
            is_main_result: result.is_main_result,
            truncated: result.truncated,
        },
    );
    match tokio::task::spawn_blocking(move || {
        let note = crate::pixels::encode_raw_pixels(&mut owned);
        (owned, note)
    })
    .await
    {
        Ok((encoded, note)) => {
            *result = encoded;
            note
        }
        Err(e) => Some(format!(
            "\n[airlock: a figure could not be turned into image/png: the encoder failed: {e}]\n"
        )),
    }
}

/// The next piece of a process's stdin; pends for ever without an input.
async fn next_input(input: &mut Option<ProcessInput>) -> Option<StdinChunk> {
    match input {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// What a host writes to a process's stdin (`source::SideChannel::exec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StdinChunk {
    /// Bytes, after those sent before.
    Data(bytes::Bytes),
    /// Close the pipe once those are written: the process reads
    /// end-of-file.
    Close,
}

/// The stdin of a process run with one (`source::SideChannel::exec`): what the
/// host sends, in order. Dropping the sender sends nothing more (and does
/// not close the pipe).
pub type ProcessInput = tokio::sync::mpsc::Receiver<StdinChunk>;

/// Asks the agent to interrupt the exec running under `target`. A failure
/// is only logged: the exec's own deadline still ends it.
async fn send_cancel(client: &Client, target: airlock_protocol::OpId) {
    if let Err(e) = client.cancel(target).await {
        tracing::warn!(target, error = %e, "cannot send a cancel");
    }
}

/// Hands `kept` to `on_progress` unless nothing was kept (past the cap).
fn emit<F>(on_progress: &mut F, stream: OutputStream, kept: &[u8])
where
    F: FnMut(ExecProgress<'_>) + ?Sized,
{
    if !kept.is_empty() {
        on_progress(ExecProgress::Output(stream, kept));
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Cancellation or an early return: the same teardown, on the reaper.
        if let State::Running(running) = std::mem::replace(&mut self.state, State::Destroyed) {
            self.reaper
                .hand_over(running.into_parts(&self.id, &self.workdir));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;
    use airlock_protocol::client::ClientConfig;
    use airlock_protocol::{truncation_marker, Data, Event, EventBody, FrameReader, FrameWriter};

    /// A fake agent that answers an exec with `chunks` stdout chunks of
    /// 1 KiB, one stderr line, and a completion it does not flag as
    /// truncated (an agent ignoring its own cap).
    fn flooding_agent(config: ClientConfig, chunks: usize) -> Client {
        let (host_cmd, agent_cmd) = tokio::io::duplex(1 << 16);
        let (agent_event, host_event) = tokio::io::duplex(1 << 16);
        tokio::spawn(async move {
            let mut reader = FrameReader::new(agent_cmd);
            let mut writer = FrameWriter::new(agent_event);
            while let Ok(Some(line)) = reader.next_request().await {
                let Ok(request) = line else { continue };
                let mut events = vec![EventBody::Stderr {
                    data: Data::text_or_base64("err\n"),
                }];
                events.extend((0..chunks).map(|_| EventBody::Stdout {
                    data: Data::text_or_base64("x".repeat(1024)),
                }));
                events.push(EventBody::Complete(Completion {
                    state_lost: false,
                    exit_code: 0,
                    timed_out: false,
                    duration_ms: 1,
                    spawn_ms: 1,
                    stdout_truncated: false,
                    stderr_truncated: false,
                }));
                for body in events {
                    if writer.send(&Event::new(request.op, body)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Client::with_config(host_event, host_cmd, config).unwrap()
    }

    fn request() -> ExecRequest {
        ExecRequest {
            mode: Default::default(),
            language: Language::Raw,
            code: "yes".into(),
            timeout_ms: 5000,
            env: Default::default(),
            cwd: None,
        }
    }

    #[tokio::test]
    async fn exec_output_past_the_clients_cap_is_cut_marked_and_flagged() {
        // Arrange: a 10 KiB stdout cap, an agent sending 100 KiB.
        let config = ClientConfig {
            max_stdout_bytes: 10 * 1024,
            ..ClientConfig::default()
        };
        let client = flooding_agent(config, 100);
        let mut streamed = Vec::new();

        // Act
        let outcome = collect_exec(
            &client,
            request(),
            &mut |piece: ExecProgress<'_>| {
                if let ExecProgress::Output(OutputStream::Stdout, bytes) = piece {
                    streamed.extend_from_slice(bytes);
                }
            },
            std::future::pending(),
            None,
            Forward::Kept,
        )
        .await
        .unwrap();

        // Assert: the cap, the marker, the flag; stderr untouched; what was
        // streamed is what was kept.
        let marker = truncation_marker("stdout", 10 * 1024);
        assert_eq!(outcome.stdout.len(), 10 * 1024 + marker.len());
        assert!(outcome.stdout.ends_with(marker.as_bytes()));
        assert!(outcome.completion.stdout_truncated);
        assert_eq!(outcome.stderr, b"err\n");
        assert!(!outcome.completion.stderr_truncated);
        assert_eq!(streamed, outcome.stdout);
    }

    #[tokio::test]
    async fn exec_output_within_the_cap_is_kept_whole_and_unflagged() {
        let client = flooding_agent(ClientConfig::default(), 3);
        let outcome = collect_exec(
            &client,
            request(),
            &mut |_: ExecProgress<'_>| {},
            std::future::pending(),
            None,
            Forward::Kept,
        )
        .await
        .unwrap();
        assert_eq!(outcome.stdout, "x".repeat(3 * 1024).as_bytes());
        assert!(!outcome.completion.stdout_truncated);
    }
}
