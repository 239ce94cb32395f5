//! Running a short helper command under a deadline.

use crate::QemuError;
use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Most bytes of stderr kept for error messages.
pub(crate) const STDERR_TAIL_BYTES: usize = 2048;

/// What a finished helper command left.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `program args`, feeds `stdin` (then closes it) and waits at most
/// `deadline`; on timeout the process is killed.
pub(crate) async fn run(
    program: &Path,
    args: &[OsString],
    stdin: &[u8],
    deadline: Duration,
    what: &'static str,
) -> Result<Finished, QemuError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| QemuError::Spawn {
            program: program.to_path_buf(),
            source,
        })?;
    let input = stdin.to_vec();
    let mut pipe = child.stdin.take();
    let feed = async move {
        if let Some(pipe) = pipe.as_mut() {
            // QEMU may exit before reading everything: a broken pipe is fine.
            let _ = pipe.write_all(&input).await;
        }
        drop(pipe);
    };
    let wait = async {
        let (_, output) = tokio::join!(feed, child.wait_with_output());
        output
    };
    match tokio::time::timeout(deadline, wait).await {
        Ok(Ok(output)) => Ok(Finished {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: tail(&String::from_utf8_lossy(&output.stderr), STDERR_TAIL_BYTES),
        }),
        Ok(Err(source)) => Err(QemuError::Spawn {
            program: program.to_path_buf(),
            source,
        }),
        // Dropping the future drops the child, which kill_on_drop kills.
        Err(_) => Err(QemuError::Timeout {
            program: program.to_path_buf(),
            what,
            deadline,
        }),
    }
}

/// The last `max_bytes` (about) of `text`, trimmed, cut at a char boundary.
pub(crate) fn tail(text: &str, max_bytes: usize) -> String {
    let text = text.trim();
    if text.len() <= max_bytes {
        return text.to_owned();
    }
    let mut start = text.len() - max_bytes;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

/// A readable exit status: `exit code 1`, `signal 6 (SIGABRT)`.
pub(crate) fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}{}", signal_name(signal)),
        (None, None) => "unknown status".into(),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGABRT => " (SIGABRT)",
        libc::SIGKILL => " (SIGKILL)",
        libc::SIGSEGV => " (SIGSEGV)",
        libc::SIGSYS => " (SIGSYS: blocked by seccomp)",
        libc::SIGTERM => " (SIGTERM)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_short_text_whole() {
        assert_eq!(tail("  hello \n", 10), "hello");
    }

    #[test]
    fn tail_cuts_long_text_at_a_char_boundary() {
        let t = tail("ééééé", 3);
        assert!(t.starts_with("..."));
        assert!(t.ends_with('é'));
    }

    #[test]
    fn describe_status_names_abort() {
        use std::os::unix::process::ExitStatusExt;
        let status = ExitStatus::from_raw(libc::SIGABRT);
        assert_eq!(describe_status(status), "killed by signal 6 (SIGABRT)");
        assert_eq!(describe_status(ExitStatus::from_raw(256)), "exit code 1");
    }
}
