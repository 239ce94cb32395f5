//! Creating one overlay with `qemu-img create`: the argv (pure) and the run
//! (a child process under a deadline, killed on cancellation).

use airlock_sys_util::IoError;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::watch;

use crate::config::BaseFormat;
use crate::error::{OverlayError, Result};

/// Most stderr bytes kept for an error message.
const MAX_STDERR_BYTES: usize = 4096;
/// Most stderr bytes read from qemu-img (it writes a line or two).
const MAX_STDERR_READ_BYTES: u64 = 1 << 20;
/// How long to wait for a killed qemu-img to be reaped.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// What to create.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    /// The `qemu-img` program.
    pub program: PathBuf,
    /// The base image, absolute (it is written into the overlay's header).
    pub base: PathBuf,
    /// The base image's format, passed with `-F`.
    pub base_format: BaseFormat,
    /// The overlay to create, absolute.
    pub out: PathBuf,
    /// qcow2 cluster size.
    pub cluster_size_bytes: u64,
    /// `lazy_refcounts=on`.
    pub lazy_refcounts: bool,
    /// `extended_l2=on`.
    pub extended_l2: bool,
}

/// The `-o` value: options chosen for fast creation and fast first writes.
pub fn overlay_options(cluster_size_bytes: u64, lazy_refcounts: bool, extended_l2: bool) -> String {
    let mut options = format!("cluster_size={cluster_size_bytes}");
    options.push_str(if lazy_refcounts {
        ",lazy_refcounts=on"
    } else {
        ",lazy_refcounts=off"
    });
    if extended_l2 {
        options.push_str(",extended_l2=on");
    }
    options
}

/// The arguments after the program name. No size is given: qemu-img opens
/// the base (which checks that it is a readable image of the stated format)
/// and gives the overlay the base's virtual size.
pub fn create_args(spec: &CreateSpec) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        spec.base_format.as_qemu_str(),
        "-b",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(spec.base.clone().into_os_string());
    args.push("-o".into());
    args.push(
        overlay_options(
            spec.cluster_size_bytes,
            spec.lazy_refcounts,
            spec.extended_l2,
        )
        .into(),
    );
    args.push(spec.out.clone().into_os_string());
    args
}

/// Trims and caps qemu-img's stderr for an error message.
pub fn summarize_stderr(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return "(no output on stderr)".to_string();
    }
    if trimmed.len() <= MAX_STDERR_BYTES {
        return trimmed.to_string();
    }
    let mut end = MAX_STDERR_BYTES;
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... (truncated)", &trimmed[..end])
}

/// Resolves when `cancel` turns true; never when its sender is gone.
async fn cancelled(mut cancel: watch::Receiver<bool>) {
    if cancel.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs `qemu-img create` for `spec`, killing it after `timeout` or when
/// `cancel` turns true. On any failure the output file is removed.
/// `caller_base` is the base as the caller named it, for error messages.
pub async fn create_overlay(
    spec: &CreateSpec,
    caller_base: &Path,
    timeout: Duration,
    cancel: watch::Receiver<bool>,
) -> Result<()> {
    let result = run(spec, caller_base, timeout, cancel).await;
    if result.is_err() {
        remove_quietly(&spec.out).await;
    }
    result
}

async fn run(
    spec: &CreateSpec,
    caller_base: &Path,
    timeout: Duration,
    cancel: watch::Receiver<bool>,
) -> Result<()> {
    let mut child = Command::new(&spec.program)
        .args(create_args(spec))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| OverlayError::QemuImgSpawn {
            base: caller_base.to_path_buf(),
            program: spec.program.clone(),
            source,
        })?;
    let stderr = child.stderr.take();

    enum Ended {
        Exited(std::io::Result<std::process::ExitStatus>, Vec<u8>),
        TimedOut,
        Cancelled,
    }
    let ended = {
        let finished = async {
            let read_stderr = async {
                let mut buf = Vec::new();
                if let Some(pipe) = stderr {
                    // A read error only loses the message, not the outcome.
                    let _ = pipe.take(MAX_STDERR_READ_BYTES).read_to_end(&mut buf).await;
                }
                buf
            };
            let (status, err) = tokio::join!(child.wait(), read_stderr);
            Ended::Exited(status, err)
        };
        tokio::select! {
            ended = finished => ended,
            () = tokio::time::sleep(timeout) => Ended::TimedOut,
            () = cancelled(cancel) => Ended::Cancelled,
        }
    };

    match ended {
        Ended::Exited(Ok(status), _) if status.success() => Ok(()),
        Ended::Exited(Ok(status), stderr) => Err(OverlayError::QemuImgFailed {
            base: caller_base.to_path_buf(),
            status: status.to_string(),
            stderr: summarize_stderr(&stderr),
        }),
        Ended::Exited(Err(source), _) => Err(OverlayError::from(IoError::new(
            "wait for qemu-img creating",
            spec.out.clone(),
            source,
        ))),
        Ended::TimedOut => {
            kill_and_reap(&mut child, &spec.out).await;
            Err(OverlayError::CreateTimeout {
                base: caller_base.to_path_buf(),
                timeout,
            })
        }
        Ended::Cancelled => {
            kill_and_reap(&mut child, &spec.out).await;
            Err(OverlayError::Stopped)
        }
    }
}

/// Kills qemu-img and waits (briefly) until it is reaped, so it cannot write
/// the output file after the caller removed it.
async fn kill_and_reap(child: &mut tokio::process::Child, out: &Path) {
    if let Err(error) = child.start_kill() {
        tracing::debug!(%error, "qemu-img already gone when killed");
    }
    if tokio::time::timeout(KILL_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(out = %out.display(), "killed qemu-img was not reaped in time");
    }
}

/// A fresh overlay's bytes, as `qemu-img create` wrote them for one base
/// version and one [`CreateSpec`] (its output path aside). qcow2 headers
/// hold no id and no time, so every overlay qemu-img makes for them is this
/// same file: later ones are written from it, without a qemu-img run
/// (about 7 ms of CPU each here).
pub type Seed = Arc<[u8]>;

/// The most bytes a seed may have (a fresh overlay with 64 KiB clusters
/// is 192 KiB); a larger overlay is not kept as a seed.
pub const MAX_SEED_BYTES: u64 = 4 << 20;

/// Creates `spec.out`: written from `seed` when there is one (the overlay
/// qemu-img made for the same base version and spec), else by
/// [`create_overlay`], whose file is then read back and returned as the
/// seed for the next ones (`None` when it cannot be kept). On any failure
/// the output file is removed.
///
/// # Errors
/// As [`create_overlay`]; [`OverlayError::Io`] when the seed cannot be
/// written.
pub async fn create_seeded(
    spec: &CreateSpec,
    seed: Option<&Seed>,
    caller_base: &Path,
    timeout: Duration,
    cancel: watch::Receiver<bool>,
) -> Result<Option<Seed>> {
    if let Some(seed) = seed {
        return write_from_seed(&spec.out, seed).await.map(|()| None);
    }
    create_overlay(spec, caller_base, timeout, cancel).await?;
    Ok(read_seed(&spec.out).await)
}

/// Writes a new overlay `out` from `seed` (its bytes, as qemu-img made
/// them for the same base and options); a half-written file is removed.
///
/// # Errors
/// [`OverlayError::Io`]: `out` exists, or cannot be written.
pub async fn write_from_seed(out: &Path, seed: &Seed) -> Result<()> {
    let (path, bytes) = (out.to_path_buf(), Arc::clone(seed));
    let written = tokio::task::spawn_blocking(move || write_new(&path, &bytes))
        .await
        .unwrap_or_else(|join| Err(std::io::Error::other(join)));
    if let Err(source) = written {
        if source.kind() != std::io::ErrorKind::AlreadyExists {
            remove_quietly(out).await;
        }
        return Err(OverlayError::from(IoError::new(
            "write an overlay from its seed to",
            out.to_path_buf(),
            source,
        )));
    }
    Ok(())
}

/// Writes `bytes` to a new file `path` (mode 0644, as qemu-img makes it).
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    file.write_all(bytes)
}

/// The bytes of the overlay qemu-img just made at `path`, as a seed;
/// `None` (logged) when it is larger than [`MAX_SEED_BYTES`] or cannot be
/// read: overlays are then made by qemu-img, as before.
pub async fn read_seed(path: &Path) -> Option<Seed> {
    let read = async {
        let len = tokio::fs::metadata(path).await?.len();
        if len > MAX_SEED_BYTES {
            return Ok(None);
        }
        tokio::fs::read(path)
            .await
            .map(|bytes| Some(Seed::from(bytes)))
    };
    match read.await {
        Ok(seed) => seed,
        Err(error) => {
            tracing::debug!(path = %path.display(), %error, "overlay not kept as a seed");
            None
        }
    }
}

/// Removes a file, logging failures other than "already gone".
pub async fn remove_quietly(path: &Path) {
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(path = %path.display(), %error, "cannot remove overlay file"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CreateSpec {
        CreateSpec {
            program: "qemu-img".into(),
            base: "/images/python-0123.qcow2".into(),
            base_format: BaseFormat::Qcow2,
            out: "/pool/.tmp-0123456789abcdef-7.qcow2".into(),
            cluster_size_bytes: 65536,
            lazy_refcounts: true,
            extended_l2: false,
        }
    }

    #[test]
    fn create_args_match_the_golden_file() {
        let rendered: Vec<String> = create_args(&spec())
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let golden = include_str!("golden/qemu_img_create.args");
        assert_eq!(rendered, golden.lines().collect::<Vec<_>>());
    }

    #[test]
    fn raw_bases_are_declared_raw() {
        let args = create_args(&CreateSpec {
            base_format: BaseFormat::Raw,
            ..spec()
        });
        let f = args.iter().position(|a| a == "-F").map(|i| &args[i + 1]);
        assert_eq!(
            f.map(|a| a.to_string_lossy().into_owned()),
            Some("raw".into())
        );
    }

    #[test]
    fn options_render_each_choice() {
        assert_eq!(
            overlay_options(65536, true, false),
            "cluster_size=65536,lazy_refcounts=on"
        );
        assert_eq!(
            overlay_options(131072, false, true),
            "cluster_size=131072,lazy_refcounts=off,extended_l2=on"
        );
    }

    #[test]
    fn paths_with_commas_and_spaces_stay_single_arguments() {
        let args = create_args(&CreateSpec {
            base: "/images/a, b.qcow2".into(),
            out: "/pool/o ut.qcow2".into(),
            ..spec()
        });
        assert!(args.contains(&OsString::from("/images/a, b.qcow2")));
        assert_eq!(args.last(), Some(&OsString::from("/pool/o ut.qcow2")));
    }

    #[test]
    fn stderr_summary_is_trimmed_and_says_when_empty() {
        assert_eq!(summarize_stderr(b"  qemu-img: boom\n"), "qemu-img: boom");
        assert_eq!(summarize_stderr(b"\n"), "(no output on stderr)");
    }

    #[test]
    fn long_stderr_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(MAX_STDERR_BYTES);
        let summary = summarize_stderr(long.as_bytes());
        assert!(summary.ends_with("... (truncated)"));
        assert!(summary.len() <= MAX_STDERR_BYTES + "... (truncated)".len());
    }
}
