//! The output caps: an exec's output collected within the client's limits,
//! so that memory stays bounded whatever the guest sends.

use super::config::ClientConfig;
use crate::message::Completion;
use crate::{truncation_marker, CellError, ExecResult};

/// The whole result of an exec.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutput {
    /// Everything written to standard output.
    pub stdout: Vec<u8>,
    /// Everything written to standard error.
    pub stderr: Vec<u8>,
    /// The values the cell showed, in order (none for a process exec).
    pub results: Vec<ExecResult>,
    /// The cell's uncaught exception, if any (the last one reported).
    pub error: Option<CellError>,
    /// How it ended.
    pub completion: Completion,
}

/// An exec's output collected within the client's caps
/// ([`ClientConfig::max_stdout_bytes`], [`ClientConfig::max_stderr_bytes`]):
/// past a cap the stream is cut, the agent's marker line
/// ([`crate::truncation_marker`]) appended, and the completion flags it as
/// truncated. [`Client::exec_collect`](super::Client::exec_collect) uses it; so does any caller that reads
/// an [`ExecStream`](super::ExecStream) itself and keeps the output, so that memory stays bounded
/// whatever the guest sends.
#[derive(Debug)]
pub struct CappedExecOutput {
    stdout: CappedOutput,
    stderr: CappedOutput,
    results: Vec<ExecResult>,
    error: Option<CellError>,
}

impl CappedExecOutput {
    /// Empty, with `config`'s caps.
    pub fn new(config: &ClientConfig) -> Self {
        Self {
            stdout: CappedOutput::new("stdout", config.max_stdout_bytes),
            stderr: CappedOutput::new("stderr", config.max_stderr_bytes),
            results: Vec::new(),
            error: None,
        }
    }

    /// Keeps a result (the agent caps each cell's results: 64 MiB by
    /// default, `docs/protocol.md`).
    pub fn push_result(&mut self, result: ExecResult) {
        self.results.push(result);
    }

    /// Keeps the cell's uncaught exception.
    pub fn set_error(&mut self, error: CellError) {
        self.error = Some(error);
    }

    /// Keeps a chunk of standard output up to the cap; returns what was
    /// appended (the kept part, plus the marker where this chunk crossed
    /// the cap; nothing once cut).
    pub fn push_stdout(&mut self, chunk: &[u8]) -> &[u8] {
        self.stdout.push(chunk)
    }

    /// As [`CappedExecOutput::push_stdout`](super::CappedExecOutput::push_stdout), for standard error.
    pub fn push_stderr(&mut self, chunk: &[u8]) -> &[u8] {
        self.stderr.push(chunk)
    }

    /// The output kept, with `completion` flagging each stream the client
    /// cut (a flag the agent set stays set).
    pub fn finish(self, mut completion: Completion) -> ExecOutput {
        completion.stdout_truncated |= self.stdout.truncated;
        completion.stderr_truncated |= self.stderr.truncated;
        ExecOutput {
            stdout: self.stdout.bytes,
            stderr: self.stderr.bytes,
            results: self.results,
            error: self.error,
            completion,
        }
    }
}

/// One stream collected up to a cap; past it, the marker line and nothing
/// more.
#[derive(Debug)]
struct CappedOutput {
    stream: &'static str,
    cap_bytes: u64,
    bytes: Vec<u8>,
    truncated: bool,
}

impl CappedOutput {
    fn new(stream: &'static str, cap_bytes: u64) -> Self {
        Self {
            stream,
            cap_bytes,
            bytes: Vec::new(),
            truncated: false,
        }
    }

    /// Appends what fits of `chunk` (and the marker when it does not all
    /// fit); returns what was appended.
    fn push(&mut self, chunk: &[u8]) -> &[u8] {
        let start = self.bytes.len();
        if self.truncated {
            return &self.bytes[start..];
        }
        let room = usize::try_from(self.cap_bytes)
            .unwrap_or(usize::MAX)
            .saturating_sub(start);
        if chunk.len() <= room {
            self.bytes.extend_from_slice(chunk);
        } else {
            self.bytes.extend_from_slice(&chunk[..room]);
            self.bytes
                .extend_from_slice(truncation_marker(self.stream, self.cap_bytes).as_bytes());
            self.truncated = true;
        }
        &self.bytes[start..]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    fn completion() -> Completion {
        Completion {
            state_lost: false,
            exit_code: 0,
            timed_out: false,
            duration_ms: 1,
            spawn_ms: 1,
            stdout_truncated: false,
            stderr_truncated: false,
        }
    }

    fn caps(stdout: u64, stderr: u64) -> ClientConfig {
        ClientConfig {
            max_stdout_bytes: stdout,
            max_stderr_bytes: stderr,
            ..ClientConfig::default()
        }
    }

    #[test]
    fn push_returns_what_was_kept_then_the_marker_then_nothing() {
        let mut out = CappedExecOutput::new(&caps(5, 100));
        assert_eq!(out.push_stdout(b"abc"), b"abc");
        let marker = truncation_marker("stdout", 5);
        assert_eq!(out.push_stdout(b"defg"), format!("de{marker}").as_bytes());
        assert_eq!(out.push_stdout(b"more"), b"");
        let output = out.finish(completion());
        assert_eq!(output.stdout, format!("abcde{marker}").as_bytes());
        assert!(output.completion.stdout_truncated);
        assert!(!output.completion.stderr_truncated);
    }

    #[test]
    fn output_exactly_at_the_cap_is_not_truncated() {
        let mut out = CappedExecOutput::new(&caps(100, 4));
        assert_eq!(out.push_stderr(b"four"), b"four");
        let output = out.finish(completion());
        assert_eq!(output.stderr, b"four");
        assert!(!output.completion.stderr_truncated);
    }

    #[test]
    fn a_truncation_the_agent_flagged_stays_flagged() {
        let out = CappedExecOutput::new(&ClientConfig::default());
        let output = out.finish(Completion {
            stdout_truncated: true,
            ..completion()
        });
        assert!(output.completion.stdout_truncated);
    }
}
