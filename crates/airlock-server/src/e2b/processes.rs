//! envd's processes in one sandbox: each runs beside everything else the
//! sandbox does (cells, file transfers, other processes), through
//! [`airlock::Session::run_process_beside`], in a task the sandbox owns.
//!
//! A process started with stdin gets a pipe fed by `SendInput` and closed
//! by `CloseStdin`; without, its stdin is `/dev/null`.
//!
//! A process's output and end go out on a broadcast channel: `Start`'s
//! stream is its first subscriber (subscribed before the process runs,
//! so it misses nothing), `Connect` adds one later (it sees what comes
//! after). A client that leaves a stream does not touch the process, as
//! with E2B's envd; `SendSignal` stops it (the agent interrupts its
//! group, then kills it after its grace), and so do its timeout and the
//! sandbox's end. Dropping the table (with its sandbox) aborts every
//! process task, which ends their streams.
//!
//! This module does not speak Connect: `envd.rs` turns the events into
//! frames.

use airlock::{
    CellRequest, CellResult, OutputStream, RunObserver, Session, SessionError, StdinChunk,
};
use airlock_protocol::Language;
use axum::body::Bytes;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

/// Events kept for a subscriber that falls behind; past it the
/// subscriber is told how many it lost.
const EVENTS_KEPT: usize = 1024;
/// Pieces of stdin queued for a process before `SendInput` waits.
const STDIN_QUEUED: usize = 64;
/// Most processes one sandbox runs at once: each holds an agent
/// operation, and the sandbox's own cells and file calls need some.
pub(crate) const MAX_PROCESSES: usize = 32;
/// The first pid handed out (E2B's pids are the guest's; these are the
/// server's own numbers).
const FIRST_PID: u32 = 1000;

/// What a process reports.
#[derive(Debug, Clone)]
pub(crate) enum ProcessEvent {
    /// Output, as it comes.
    Data {
        /// Which stream.
        stream: OutputStream,
        /// The bytes.
        bytes: Bytes,
    },
    /// Its end.
    End(Ended),
}

/// How a process ended.
#[derive(Debug, Clone)]
pub(crate) enum Ended {
    /// It ran to its end (or was stopped).
    Exited {
        /// Its exit code.
        exit_code: i32,
        /// Whether `SendSignal` stopped it.
        signalled: bool,
        /// Whether it ran past its timeout.
        timed_out: bool,
    },
    /// It could not run, or its sandbox went away under it: the Connect
    /// code and the message the client sees.
    Failed {
        /// The Connect error code.
        code: &'static str,
        /// What the client is told.
        message: String,
    },
}

impl Ended {
    fn of(result: Result<CellResult, SessionError>, signalled: bool) -> Self {
        match result {
            Ok(done) => Ended::Exited {
                exit_code: done.exit_code,
                signalled,
                timed_out: done.timed_out,
            },
            // The sandbox ended under it (killed, its timeout): envd's
            // `unavailable`, on which the SDKs probe the sandbox and
            // report it gone (not the session's "not found").
            Err(SessionError::Closed { .. }) => Ended::Failed {
                code: "unavailable",
                message: "the sandbox ended while the process ran".into(),
            },
            Err(e) => {
                let e = crate::error::ServerError::from(e);
                Ended::Failed {
                    code: super::connect::code_of(e.status()),
                    message: e.public().message,
                }
            }
        }
    }
}

/// A running process, as `List` shows it.
#[derive(Debug, Clone)]
pub(crate) struct ProcessInfo {
    /// Its pid as the SDKs see it.
    pub pid: u32,
    /// Its `ProcessConfig` (cmd, args, envs, cwd).
    pub config: serde_json::Value,
    /// Its tag, if Start gave one.
    pub tag: Option<String>,
}

/// One process in the table.
struct Entry {
    info: ProcessInfo,
    events: broadcast::Sender<ProcessEvent>,
    stop: watch::Sender<bool>,
    /// Its stdin, when it was started with one (until `CloseStdin`).
    stdin: Option<mpsc::Sender<StdinChunk>>,
    task: Option<JoinHandle<()>>,
}

/// Why input cannot reach a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputRefused {
    /// No such process runs.
    NotFound,
    /// It was started without stdin, or its stdin was closed.
    NoStdin,
}

/// A sandbox's processes.
#[derive(Default)]
pub(crate) struct Processes {
    table: Mutex<BTreeMap<u32, Entry>>,
    next_pid: AtomicU32,
}

impl std::fmt::Debug for Processes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processes")
            .field("running", &self.lock().len())
            .finish()
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for entry in self.lock().values_mut() {
            if let Some(task) = entry.task.take() {
                task.abort();
            }
        }
    }
}

impl Processes {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, Entry>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts `cell` as a bash process of `session` (with a stdin pipe
    /// when `stdin`); its pid and a subscription that sees all it reports.
    pub fn start(
        self: &Arc<Self>,
        session: Arc<Session>,
        cell: CellRequest,
        config: serde_json::Value,
        tag: Option<String>,
        stdin: bool,
    ) -> (u32, broadcast::Receiver<ProcessEvent>) {
        let pid = FIRST_PID + self.next_pid.fetch_add(1, Ordering::Relaxed);
        let (events, first) = broadcast::channel(EVENTS_KEPT);
        let (stop, mut stopped) = watch::channel(false);
        let table = Arc::downgrade(self);
        let sender = events.clone();
        let (input, feed) = if stdin {
            let (tx, rx) = mpsc::channel(STDIN_QUEUED);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        // The table's lock is held until the entry is in: the task's own
        // removal at its end waits for it.
        let mut locked = self.lock();
        let task = tokio::spawn(async move {
            let interrupt = Box::pin(async move {
                // A dropped sender (the table is going away) is no stop.
                if stopped.wait_for(|stop| *stop).await.is_err() {
                    std::future::pending::<()>().await;
                }
            });
            let mut output = Broadcast(sender.clone());
            let result = session
                .run_process_beside(Language::Raw, cell, &mut output, interrupt, feed)
                .await;
            let signalled = finish(&table, pid);
            let _ = sender.send(ProcessEvent::End(Ended::of(result, signalled)));
        });
        locked.insert(
            pid,
            Entry {
                info: ProcessInfo { pid, config, tag },
                events,
                stop,
                stdin: input,
                task: Some(task),
            },
        );
        (pid, first)
    }

    /// The running processes, by pid.
    pub fn list(&self) -> Vec<ProcessInfo> {
        self.lock()
            .values()
            .filter(|e| !*e.stop.borrow())
            .map(|e| e.info.clone())
            .collect()
    }

    /// The pid of the running process named by `pid` or `tag`.
    fn find(table: &BTreeMap<u32, Entry>, pid: Option<u32>, tag: Option<&str>) -> Option<u32> {
        match (pid, tag) {
            (Some(pid), _) if table.contains_key(&pid) => Some(pid),
            (_, Some(tag)) => table
                .values()
                .find(|e| e.info.tag.as_deref() == Some(tag))
                .map(|e| e.info.pid),
            _ => None,
        }
    }

    /// A subscription to the process named by `pid` or `tag` (what it
    /// reports from now on), with its pid; `None` when none runs.
    pub fn subscribe(
        &self,
        pid: Option<u32>,
        tag: Option<&str>,
    ) -> Option<(u32, broadcast::Receiver<ProcessEvent>)> {
        let table = self.lock();
        let pid = Self::find(&table, pid, tag)?;
        table.get(&pid).map(|e| (pid, e.events.subscribe()))
    }

    /// Writes `bytes` to the stdin of the process named by `pid` or `tag`
    /// (after what was sent before; waits while its queue is full).
    ///
    /// # Errors
    /// [`InputRefused`].
    pub async fn send_input(
        &self,
        pid: Option<u32>,
        tag: Option<&str>,
        bytes: Bytes,
    ) -> Result<(), InputRefused> {
        let stdin = self.stdin_of(pid, tag)?;
        stdin
            .send(StdinChunk::Data(bytes))
            .await
            .map_err(|_| InputRefused::NotFound)
    }

    /// Closes the stdin of the process named by `pid` or `tag` once what
    /// was sent before is written; later input is refused.
    ///
    /// # Errors
    /// [`InputRefused`].
    pub async fn close_input(
        &self,
        pid: Option<u32>,
        tag: Option<&str>,
    ) -> Result<(), InputRefused> {
        let stdin = {
            let mut table = self.lock();
            let pid = Self::find(&table, pid, tag).ok_or(InputRefused::NotFound)?;
            let entry = table.get_mut(&pid).ok_or(InputRefused::NotFound)?;
            entry.stdin.take().ok_or(InputRefused::NoStdin)?
        };
        stdin
            .send(StdinChunk::Close)
            .await
            .map_err(|_| InputRefused::NotFound)
    }

    /// The stdin sender of a process (cloned out of the lock).
    fn stdin_of(
        &self,
        pid: Option<u32>,
        tag: Option<&str>,
    ) -> Result<mpsc::Sender<StdinChunk>, InputRefused> {
        let table = self.lock();
        let pid = Self::find(&table, pid, tag).ok_or(InputRefused::NotFound)?;
        let entry = table.get(&pid).ok_or(InputRefused::NotFound)?;
        entry.stdin.clone().ok_or(InputRefused::NoStdin)
    }

    /// Stops the process named by `pid` or `tag`; whether one ran.
    pub fn signal(&self, pid: Option<u32>, tag: Option<&str>) -> bool {
        let table = self.lock();
        let Some(pid) = Self::find(&table, pid, tag) else {
            return false;
        };
        table.get(&pid).is_some_and(|e| {
            e.stop.send_replace(true);
            true
        })
    }
}

/// Removes `pid` from the table (if it is still there); whether it was
/// signalled.
fn finish(table: &Weak<Processes>, pid: u32) -> bool {
    let Some(table) = table.upgrade() else {
        return false;
    };
    let entry = table.lock().remove(&pid);
    entry.is_some_and(|mut e| {
        // The task is this one: it ends by itself.
        drop(e.task.take());
        *e.stop.borrow()
    })
}

/// A process's output onto its broadcast channel.
struct Broadcast(broadcast::Sender<ProcessEvent>);

impl RunObserver for Broadcast {
    fn output(&mut self, stream: OutputStream, bytes: &[u8]) {
        // No subscriber: the output has nowhere to go (as with a client
        // that left), and the process goes on.
        let _ = self.0.send(ProcessEvent::Data {
            stream,
            bytes: Bytes::copy_from_slice(bytes),
        });
    }
}
