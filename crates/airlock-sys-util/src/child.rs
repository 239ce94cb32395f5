//! Running a short helper program to its end under a deadline (a version
//! probe, `qemu-img`, a QMP one-shot): its stdin fed and closed, its output
//! collected, and the program killed when the deadline passes.
//!
//! Long-lived children (QEMU, gvproxy) are not for this module: they are
//! drained as they run and stopped with [`crate::process_group`].

use crate::{ChildExit, SysError};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// What a finished program left.
#[derive(Debug, Clone)]
pub struct ChildOutput {
    /// How it ended.
    pub status: ExitStatus,
    /// All it wrote to stdout.
    pub stdout: Vec<u8>,
    /// All it wrote to stderr.
    pub stderr: Vec<u8>,
}

impl ChildOutput {
    /// How it ended, as a value.
    pub fn exit(&self) -> ChildExit {
        ChildExit::from_status(self.status)
    }

    /// Stdout as (lossy) text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as (lossy) text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Runs `cmd` to its end, writing `stdin` to it (then closing it; `None`:
/// stdin is `/dev/null`), and waits at most `deadline`. Stdout and stderr
/// are collected whole: use it for programs that print little. On timeout
/// the program is killed (`kill_on_drop`).
///
/// # Errors
/// [`SysError::Spawn`], [`SysError::Wait`], [`SysError::Timeout`], each
/// naming the program.
pub async fn output_with_deadline(
    cmd: &mut Command,
    stdin: Option<&[u8]>,
    deadline: Duration,
) -> Result<ChildOutput, SysError> {
    let program = PathBuf::from(cmd.as_std().get_program());
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SysError::Spawn {
            program: program.clone(),
            source,
        })?;
    let mut pipe = child.stdin.take();
    let feed = async move {
        if let (Some(pipe), Some(input)) = (pipe.as_mut(), stdin) {
            // The program may exit before reading everything: a broken
            // pipe is its business, not an error here.
            let _ = pipe.write_all(input).await;
        }
        drop(pipe);
    };
    let wait = async {
        let ((), output) = tokio::join!(feed, child.wait_with_output());
        output
    };
    match tokio::time::timeout(deadline, wait).await {
        Ok(Ok(output)) => Ok(ChildOutput {
            status: output.status,
            stdout: output.stdout,
            stderr: output.stderr,
        }),
        Ok(Err(source)) => Err(SysError::Wait { program, source }),
        // Dropping the future drops the child, which kill_on_drop kills.
        Err(_) => Err(SysError::Timeout { program, deadline }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_and_status_come_back_and_stdin_is_fed() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cat; echo err >&2; exit 3"]);
        let out = output_with_deadline(&mut cmd, Some(b"in\n"), Duration::from_secs(10))
            .await
            .expect("runs");
        assert_eq!(out.exit(), ChildExit::Code(3));
        assert_eq!(out.stdout_text(), "in\n");
        assert_eq!(out.stderr_text(), "err\n");
    }

    #[tokio::test]
    async fn without_stdin_the_program_reads_end_of_file() {
        let mut cmd = Command::new("cat");
        let out = output_with_deadline(&mut cmd, None, Duration::from_secs(10))
            .await
            .expect("runs");
        assert!(out.status.success() && out.stdout.is_empty());
    }

    #[tokio::test]
    async fn a_program_past_its_deadline_is_a_timeout_naming_it() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let started = std::time::Instant::now();
        let err = output_with_deadline(&mut cmd, None, Duration::from_millis(100))
            .await
            .expect_err("times out");
        assert!(matches!(err, SysError::Timeout { ref program, .. } if program.ends_with("sleep")));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error_naming_it() {
        let mut cmd = Command::new("/nonexistent-airlock/tool");
        let err = output_with_deadline(&mut cmd, None, Duration::from_secs(1))
            .await
            .expect_err("no such program");
        assert!(matches!(err, SysError::Spawn { .. }));
        assert!(
            err.to_string().contains("/nonexistent-airlock/tool"),
            "{err}"
        );
    }
}
