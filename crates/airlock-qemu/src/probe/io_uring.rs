//! Does this QEMU, on this kernel, accept `aio=io_uring`?
//!
//! Asked of QEMU itself, under the same seccomp sandbox the VMs get: a
//! machine-less QEMU opens one read-only file with `aio=io_uring` (QEMU
//! sets the ring up when it opens the file, and fails when it was built
//! without liburing or the kernel refuses io_uring), then quits over QMP.
//! About 20 ms.

use super::run::{describe_status, run};
use crate::args::sandbox;
use crate::opts::OptList;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

/// The probe's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IoUringSupport {
    pub(crate) available: bool,
    pub(crate) reason: String,
}

/// QMP commands that end the probe QEMU.
const QMP_QUIT: &[u8] = b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n";

/// The probe's argv: `file` must be a readable regular file (the QEMU
/// binary itself serves).
pub(crate) fn probe_args(file: &Path) -> Vec<OsString> {
    let blockdev = OptList::empty()
        .set("driver", "file")
        .set("node-name", "probe")
        .set("filename", file)
        .flag("read-only", true)
        .set("aio", "io_uring")
        .finish();
    let head = [
        "-machine",
        "none",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-S",
        "-qmp",
        "stdio",
        "-sandbox",
    ];
    head.into_iter()
        .map(OsString::from)
        .chain([sandbox().finish(), "-blockdev".into(), blockdev])
        .collect()
}

/// Runs the probe. Never fails: any problem means "no io_uring" with the
/// reason.
pub(crate) async fn probe(binary: &Path, deadline: Duration) -> IoUringSupport {
    match run(
        binary,
        &probe_args(binary),
        QMP_QUIT,
        deadline,
        "io_uring probe",
    )
    .await
    {
        Ok(out) if out.status.success() => IoUringSupport {
            available: true,
            reason: "QEMU opened a file with aio=io_uring".into(),
        },
        Ok(out) => IoUringSupport {
            available: false,
            reason: format!(
                "QEMU refused aio=io_uring ({}): {}",
                describe_status(out.status),
                out.stderr
            ),
        },
        Err(err) => IoUringSupport {
            available: false,
            reason: format!("io_uring probe failed: {err}"),
        },
    }
}
