//! Running a short helper command under a deadline, with the errors this
//! crate reports (the running itself is [`airlock_sys_util::child`]).

use crate::QemuError;
use airlock_sys_util::{output_with_deadline, tail_text, SysError};
use std::ffi::OsString;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;
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
    let mut cmd = Command::new(program);
    cmd.args(args);
    match output_with_deadline(&mut cmd, Some(stdin), deadline).await {
        Ok(output) => Ok(Finished {
            status: output.status,
            stdout: output.stdout_text(),
            stderr: tail_text(&output.stderr_text(), STDERR_TAIL_BYTES),
        }),
        Err(SysError::Timeout { .. }) => Err(QemuError::Timeout {
            program: program.to_path_buf(),
            what,
            deadline,
        }),
        Err(other) => Err(QemuError::Spawn {
            program: program.to_path_buf(),
            source: other.into_io_error(),
        }),
    }
}

/// A readable exit status: `exit code 1`, `killed by signal 6 (SIGABRT)`.
pub(crate) fn describe_status(status: ExitStatus) -> String {
    airlock_sys_util::ChildExit::from(status).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_status_names_abort() {
        use std::os::unix::process::ExitStatusExt;
        let status = ExitStatus::from_raw(libc::SIGABRT);
        assert_eq!(describe_status(status), "killed by signal 6 (SIGABRT)");
        assert_eq!(describe_status(ExitStatus::from_raw(256)), "exit code 1");
    }

    #[tokio::test]
    async fn a_helper_past_its_deadline_is_a_timeout_naming_what_it_did() {
        let err = run(
            Path::new("sleep"),
            &["30".into()],
            b"",
            Duration::from_millis(50),
            "a nap",
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, QemuError::Timeout { what: "a nap", .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_missing_helper_is_a_spawn_error() {
        let err = run(
            Path::new("/nonexistent-airlock/qemu"),
            &[],
            b"",
            Duration::from_secs(1),
            "--version",
        )
        .await
        .unwrap_err();
        assert!(matches!(err, QemuError::Spawn { .. }), "{err}");
    }
}
