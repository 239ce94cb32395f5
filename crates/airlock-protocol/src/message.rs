//! The messages: requests (host -> guest, tagged by `action`) and events
//! (guest -> host, tagged by `type`). Both carry `op`, the operation id.
//!
//! `docs/protocol.md` shows every message on the wire.

use crate::{CellError, Data, ExecResult};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// The fewest entropy bytes a [`RequestBody::Reseed`] carries (256 bits).
pub const MIN_RESEED_ENTROPY_BYTES: usize = 32;

/// Operation id: chosen by the host per request; every event answering that
/// request carries it.
pub type OpId = u64;

/// A language the guest can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// `python3 -c CODE`.
    Python,
    /// `node -e CODE` (stdin for large code).
    Javascript,
    /// `bash -c CODE`.
    Raw,
}

impl Language {
    /// Every language.
    pub const ALL: [Language; 3] = [Language::Python, Language::Javascript, Language::Raw];

    /// The canonical name (as on the wire).
    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Javascript => "javascript",
            Language::Raw => "raw",
        }
    }

    /// The language of a file, from its extension (`py`, `js`/`mjs`/`cjs`,
    /// `sh`/`bash`).
    pub fn from_extension(ext: &str) -> Option<Language> {
        match ext {
            "py" => Some(Language::Python),
            "js" | "mjs" | "cjs" => Some(Language::Javascript),
            "sh" | "bash" => Some(Language::Raw),
            _ => None,
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`Language::from_str`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownLanguage(pub String);

impl fmt::Display for UnknownLanguage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown language {:?}: use python, javascript or raw",
            self.0
        )
    }
}

impl std::error::Error for UnknownLanguage {}

impl FromStr for Language {
    type Err = UnknownLanguage;

    /// Accepts the canonical names and common aliases (`py`, `js`, `node`,
    /// `sh`, `bash`, `shell`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "python" | "python3" | "py" => Ok(Language::Python),
            "javascript" | "js" | "node" | "nodejs" => Ok(Language::Javascript),
            "raw" | "sh" | "bash" | "shell" => Ok(Language::Raw),
            _ => Err(UnknownLanguage(s.to_owned())),
        }
    }
}

/// A request, host -> guest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Operation id.
    pub op: OpId,
    /// What to do.
    #[serde(flatten)]
    pub body: RequestBody,
}

impl Request {
    /// A request with the given operation id.
    pub fn new(op: OpId, body: RequestBody) -> Self {
        Self { op, body }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum RequestBody {
    /// Liveness check; answered by [`EventBody::Pong`].
    Ping,
    /// Run code; answered by output events and one [`EventBody::Complete`].
    Exec(ExecRequest),
    /// Start writing a file (relative to the sandbox home); answered by a
    /// [`EventBody::FileAck`] with `size` 0. Chunks follow with the same op.
    WriteFile {
        /// Path relative to the sandbox home.
        path: String,
        /// Permission bits of the new file (e.g. 0o644).
        mode: u32,
        /// Announced total size in bytes, checked at the end when given.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
    /// A chunk of the file being written under this op. Not answered.
    FileChunk {
        /// The bytes.
        data: Data,
    },
    /// Commit the file being written under this op: answered by a
    /// [`EventBody::FileAck`] with the final size and sha256.
    FileEnd,
    /// Read a file: answered by [`EventBody::FileData`] chunks and one
    /// [`EventBody::FileDone`].
    ReadFile {
        /// Path relative to the sandbox home.
        path: String,
    },
    /// List a directory: answered by one [`EventBody::FileList`].
    ListFiles {
        /// Path relative to the sandbox home (`""` or `"."` for the home).
        path: String,
    },
    /// Start the language's persistent interpreter ahead of time (and
    /// import its common modules) so that the next cell starts at once:
    /// answered by [`EventBody::Complete`].
    WarmRepl {
        /// The interpreter to warm.
        language: Language,
        /// The VM is about to be saved as a memory template: the agent
        /// first sets its clock one day back (`TEMPLATE_CLOCK_LAG`), so
        /// that every OpenSSL DRBG the interpreter seeds looks a day stale
        /// to the clones, whose `reseed` sets the real time: their first
        /// draw reseeds each DRBG from the clone's kernel. Absent: false.
        #[serde(default, skip_serializing_if = "is_false")]
        for_template: bool,
    },
    /// Ends the language's persistent interpreter, if one runs (its
    /// globals go with it); the next cell starts a fresh one. Answered by
    /// [`EventBody::Complete`] once it has ended; a cell running in it is
    /// waited for first.
    ResetRepl {
        /// The interpreter to end.
        language: Language,
    },
    /// After a restore from a memory template, before any user code: credit
    /// fresh host entropy to the guest kernel's pool (`RNDADDENTROPY`) and
    /// set the guest's wall clock. Answered by [`EventBody::Reseeded`].
    Reseed {
        /// At least [`MIN_RESEED_ENTROPY_BYTES`] random bytes from the host.
        entropy: Data,
        /// The host's wall clock, in nanoseconds since the Unix epoch.
        unix_time_ns: u64,
        /// The VM is one of several copies of one live machine (a fork):
        /// an interpreter whose random state cannot be made fresh in place
        /// (a Node that has run in that machine) is ended, even though it
        /// started there.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        copy: bool,
    },
    /// Interrupt the exec running under `target` (Ctrl-C in a session): a
    /// cell gets SIGINT first where its interpreter survives it, then the
    /// kill a timeout gets. The target's `complete` reports the end
    /// (exit code 130 when interrupted). Not answered itself; an unknown or
    /// finished target is ignored.
    Cancel {
        /// The op of the exec to interrupt.
        target: OpId,
    },
    /// Bytes for the stdin of the exec `target` (one started in
    /// [`ExecMode::PipedProcess`]), written in the order sent. Not
    /// answered; an unknown or finished target, or one without a pipe, is
    /// ignored.
    Stdin {
        /// The op of the exec whose stdin gets the bytes.
        target: OpId,
        /// The bytes.
        data: Data,
    },
    /// Closes the stdin of the exec `target`: it reads end-of-file once
    /// what was sent before is written. Not answered; ignored as
    /// [`RequestBody::Stdin`] is.
    CloseStdin {
        /// The op of the exec whose stdin closes.
        target: OpId,
    },
    /// Install packages with the language's package manager: answered like
    /// an exec. Into the package layer when the guest has a writable one
    /// (the install VM; the layer is made read-only once the install
    /// ends), else into the sandbox user's own space.
    InstallPackages {
        /// Whose package manager (pip, npm).
        language: Language,
        /// Package names.
        packages: Vec<String>,
        /// Deadline in milliseconds.
        timeout_ms: u64,
        /// Extra environment variables for the package manager (e.g. the
        /// CA bundle: `PIP_CERT`, `NODE_EXTRA_CA_CERTS`), checked like an
        /// exec's.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
    },
}

impl RequestBody {
    /// The `action` tag of this request.
    pub fn action(&self) -> &'static str {
        match self {
            RequestBody::Ping => "ping",
            RequestBody::Exec(_) => "exec",
            RequestBody::WriteFile { .. } => "write_file",
            RequestBody::FileChunk { .. } => "file_chunk",
            RequestBody::FileEnd => "file_end",
            RequestBody::ReadFile { .. } => "read_file",
            RequestBody::ListFiles { .. } => "list_files",
            RequestBody::WarmRepl { .. } => "warm_repl",
            RequestBody::ResetRepl { .. } => "reset_repl",
            RequestBody::Reseed { .. } => "reseed",
            RequestBody::Cancel { .. } => "cancel",
            RequestBody::Stdin { .. } => "stdin",
            RequestBody::CloseStdin { .. } => "close_stdin",
            RequestBody::InstallPackages { .. } => "install_packages",
        }
    }

    /// Every `action` tag, for telling "unknown action" from "bad JSON".
    pub const ACTIONS: &'static [&'static str] = &[
        "ping",
        "exec",
        "write_file",
        "file_chunk",
        "file_end",
        "read_file",
        "list_files",
        "warm_repl",
        "reset_repl",
        "reseed",
        "cancel",
        "stdin",
        "close_stdin",
        "install_packages",
    ];
}

/// The exec request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The interpreter.
    pub language: Language,
    /// The source code.
    pub code: String,
    /// Deadline in milliseconds; then TERM, then KILL after a grace.
    pub timeout_ms: u64,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory relative to the sandbox home (default: the home).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// A new process per exec (the default) or a cell of the persistent
    /// interpreter.
    #[serde(default, skip_serializing_if = "ExecMode::is_process")]
    pub mode: ExecMode,
}

impl ExecRequest {
    /// A cell of `language`'s persistent interpreter ([`ExecMode::Cell`]):
    /// no extra environment, no cwd.
    pub fn cell(language: Language, code: impl Into<String>, timeout_ms: u64) -> Self {
        Self {
            language,
            code: code.into(),
            timeout_ms,
            env: BTreeMap::new(),
            cwd: None,
            mode: ExecMode::Cell,
        }
    }
}

/// How an exec runs its code.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecMode {
    /// A new interpreter process (`python3 -c`, `node -e`, `bash -c`) that
    /// exits with the code; nothing survives it.
    #[default]
    Process,
    /// A cell of the language's persistent interpreter (started on first
    /// use, or by `warm_repl`): globals, imports, cwd and shell variables
    /// survive from cell to cell. Boundaries and exit codes travel out of
    /// band; a cell that has to be killed ends the interpreter and its
    /// completion says `state_lost`.
    Cell,
    /// A one-off run in the warm interpreter (a VM restored from a
    /// template, destroyed after): the code runs as a cell, nothing is
    /// spawned, but a timeout or cancel ends it as a process exec ends
    /// (SIGTERM, or SIGINT for a cancel, to the interpreter's group, then
    /// SIGKILL after the grace), so exit codes and output are those a new
    /// process would give. The interpreter does not survive the interrupt.
    OneShot,
    /// As [`ExecMode::Process`], with the process's stdin a pipe the host
    /// writes ([`RequestBody::Stdin`]) and closes
    /// ([`RequestBody::CloseStdin`]) instead of `/dev/null`. The code must
    /// fit in an argument (it cannot also come on stdin).
    PipedProcess,
}

impl ExecMode {
    /// Whether this is [`ExecMode::Process`] (the wire default).
    pub fn is_process(&self) -> bool {
        matches!(self, ExecMode::Process)
    }

    /// Whether the exec is a new process ([`ExecMode::Process`] or
    /// [`ExecMode::PipedProcess`]), not a cell of an interpreter.
    pub fn spawns_process(&self) -> bool {
        matches!(self, ExecMode::Process | ExecMode::PipedProcess)
    }
}

/// An event, guest -> host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The operation this event belongs to (0 for errors about lines whose
    /// operation could not be read).
    pub op: OpId,
    /// What happened.
    #[serde(flatten)]
    pub body: EventBody,
}

impl Event {
    /// An event for the given operation.
    pub fn new(op: OpId, body: EventBody) -> Self {
        Self { op, body }
    }
}

/// What an event reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// Answer to ping.
    Pong {
        /// The agent's version (its crate version).
        version: String,
        /// The agent's protocol version ([`crate::PROTOCOL_VERSION`]).
        protocol: u32,
    },
    /// A chunk of the process's standard output.
    Stdout {
        /// The bytes.
        data: Data,
    },
    /// A chunk of the process's standard error.
    Stderr {
        /// The bytes.
        data: Data,
    },
    /// A value a cell shows (its last expression, `display(...)`, a
    /// figure): a MIME bundle, in order with the exec's output. Cells and
    /// one-shot runs only (`docs/protocol.md`, "result").
    Result(ExecResult),
    /// A cell's uncaught exception (its traceback is on stderr too). Cells
    /// and one-shot runs only.
    CellError(CellError),
    /// The process ended (last event of an exec).
    Complete(Completion),
    /// A file write was opened (`size` 0, no sha256) or committed.
    FileAck {
        /// Bytes written.
        size: u64,
        /// Hex sha256 of the content, on commit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
    },
    /// A chunk of a file being read.
    FileData {
        /// The bytes.
        data: Data,
        /// The file's size when it was opened, on the first chunk only: a
        /// host that streams the file on can refuse one over its limit
        /// before it passes any of it on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
    /// The file read is complete.
    FileDone {
        /// Total bytes.
        size: u64,
        /// Hex sha256 of the content.
        sha256: String,
    },
    /// A directory listing.
    FileList {
        /// The entries, sorted by name.
        entries: Vec<FileEntry>,
    },
    /// The answer to a reseed: what the guest did.
    Reseeded {
        /// Bytes credited to the kernel's entropy pool.
        entropy_bytes: u64,
        /// How far the guest's wall clock was stepped, in milliseconds
        /// (positive: forward).
        clock_step_ms: i64,
    },
    /// The operation failed (last event of that operation).
    Error {
        /// What kind of failure.
        kind: ErrorKind,
        /// A message for humans.
        message: String,
    },
}

impl EventBody {
    /// The `type` tag of this event.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventBody::Pong { .. } => "pong",
            EventBody::Stdout { .. } => "stdout",
            EventBody::Stderr { .. } => "stderr",
            EventBody::Result(_) => "result",
            EventBody::CellError(_) => "cell_error",
            EventBody::Complete(_) => "complete",
            EventBody::FileAck { .. } => "file_ack",
            EventBody::FileData { .. } => "file_data",
            EventBody::FileDone { .. } => "file_done",
            EventBody::FileList { .. } => "file_list",
            EventBody::Reseeded { .. } => "reseeded",
            EventBody::Error { .. } => "error",
        }
    }

    /// Every `type` tag.
    pub const TYPES: &'static [&'static str] = &[
        "pong",
        "stdout",
        "stderr",
        "result",
        "cell_error",
        "complete",
        "file_ack",
        "file_data",
        "file_done",
        "file_list",
        "reseeded",
        "error",
    ];
}

/// The end of an exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// Exit code; 128+N for a death by signal N.
    pub exit_code: i32,
    /// Whether the deadline passed and the process group was killed.
    pub timed_out: bool,
    /// Wall time from spawn to exit, in ms.
    pub duration_ms: u64,
    /// Time to spawn the process, in ms.
    pub spawn_ms: u64,
    /// Whether stdout went over its cap and was cut.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stdout_truncated: bool,
    /// Whether stderr went over its cap and was cut.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stderr_truncated: bool,
    /// A cell only: the persistent interpreter had to be killed (timeout,
    /// cancel, or it died), so the state of earlier cells is gone and the
    /// next cell starts a fresh interpreter.
    #[serde(default, skip_serializing_if = "is_false")]
    pub state_lost: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct FileEntry {
    /// File name (no directory part).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Kind of entry.
    pub kind: FileKind,
    /// Permission bits (e.g. 0o644).
    pub mode: u32,
}

/// Kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link (never followed).
    Symlink,
    /// Anything else (fifo, socket, device).
    Other,
}

/// Kinds of failure an agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The line was not a valid message.
    Malformed,
    /// The line was longer than the limit.
    TooLarge,
    /// The action is not known to this agent.
    UnknownAction,
    /// The request is well formed but its values are not acceptable.
    InvalidRequest,
    /// An environment variable was refused (bad name, injection).
    EnvRefused,
    /// A path was refused (absolute, escaping the home, through a symlink).
    InvalidPath,
    /// The file does not exist.
    NotFound,
    /// A size limit was reached.
    LimitExceeded,
    /// A file operation failed.
    Io,
    /// The process could not be started.
    SpawnFailed,
    /// The operation timed out.
    Timeout,
    /// An op id is already in use, or a chunk came for no open write.
    BadState,
    /// The agent does not support this request here.
    Unsupported,
    /// A bug in the agent.
    Internal,
}
