//! Shared support for Airlock's end-to-end tests (in `tests/*.rs` of this
//! package): finding the guest images and QEMU, and skipping with a clear
//! message where they are missing.
//!
//! `cargo xtask test` builds the images first and sets
//! `AIRLOCK_REQUIRE_VM_TESTS=1`, so there a missing prerequisite fails the
//! test instead of skipping it: VM tests never silently skip on a machine
//! that is set up to run them.

use airlock::Images;
use airlock_protocol::client::Client;
use airlock_protocol::Language;
use airlock_qemu::{
    probe_host, BootImages, DiskAccess, HostCaps, NetworkAttachment, ProbeConfig, QemuArgs,
    RootDisk, VmSpec,
};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

/// How long a plain boot may take to reach the agent.
pub const BOOT_DEADLINE: Duration = Duration::from_secs(90);

/// The variable that turns skips into failures.
pub const REQUIRE_ENV: &str = "AIRLOCK_REQUIRE_VM_TESTS";

/// Whether VM tests must run (not skip).
pub fn vm_tests_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// The guest images and a QEMU binary, or `None` after printing why the
/// test is skipped.
///
/// # Panics
/// When something is missing and [`vm_tests_required`].
pub fn images_or_skip(test: &str) -> Option<Images> {
    let missing = match Images::load(&Images::default_dir()) {
        Ok(images) => match qemu_binary() {
            Some(_) => return Some(images),
            None => "qemu-system-x86_64 not found (install qemu-system-x86 or set AIRLOCK_QEMU)"
                .to_owned(),
        },
        Err(e) => e.to_string(),
    };
    assert!(
        !vm_tests_required(),
        "{test}: VM tests are required ({REQUIRE_ENV}=1) but cannot run: {missing}"
    );
    eprintln!("SKIP {test}: {missing}");
    None
}

/// The QEMU binary: `$AIRLOCK_QEMU`, else `qemu-system-x86_64` on PATH.
pub fn qemu_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AIRLOCK_QEMU") {
        return Some(PathBuf::from(p));
    }
    airlock_sys_util::which("qemu-system-x86_64")
}

/// QEMU processes whose command line mentions `needle`.
pub fn qemu_processes_mentioning(needle: &str) -> Vec<u32> {
    processes_mentioning("qemu-system", needle)
}

/// Live processes (zombies excluded) whose command line mentions both
/// `program` and `needle`.
pub fn processes_mentioning(program: &str, needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // A zombie's cmdline is empty, so it never matches.
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let text = String::from_utf8_lossy(&c);
                text.contains(program) && text.contains(needle)
            })
        })
        .collect()
}

/// The probed host capabilities (the KVM verdict is cached on disk).
///
/// # Panics
/// When the probe fails: a test prerequisite.
pub async fn host_caps(images: &Images) -> HostCaps {
    let mut config = ProbeConfig::from_env();
    config.kvm_probe_images = Some(BootImages {
        kernel: images.kernel.clone(),
        initramfs: images.initramfs.clone(),
    });
    probe_host(&config).await.expect("host probe").caps
}

/// A VM booted with a plain QEMU command (argv from `airlock-qemu`, no
/// orchestrator), and what keeps it alive.
pub struct PlainVm {
    /// The agent's client.
    pub client: Client,
    /// QEMU (killed on drop).
    pub child: Child,
    /// The VM's files: overlay, sockets, console log.
    pub dir: tempfile::TempDir,
    /// The guest console log.
    pub console_log: PathBuf,
}

async fn connect(path: &Path, deadline: Instant) -> UnixStream {
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("{}: {e}", path.display()),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Boots `language`'s image with `network` behind a throw-away overlay and
/// waits for its agent; `extra_argv(work_dir)` is appended to QEMU's argv.
///
/// # Panics
/// When the VM does not come up: the test fails with the console log.
pub async fn boot_plain(
    images: &Images,
    caps: &HostCaps,
    language: Language,
    network: NetworkAttachment,
    extra_argv: impl FnOnce(&Path) -> Vec<OsString>,
) -> PlainVm {
    let dir = tempfile::Builder::new()
        .prefix("al-plain")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let base = images.rootfs(language).expect("root disk").to_path_buf();
    let overlay = dir.path().join("root.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&overlay)
        .status()
        .expect("qemu-img");
    assert!(made.success(), "qemu-img create failed");
    let mut spec = VmSpec::new(
        "plain",
        BootImages {
            kernel: images.kernel.clone(),
            initramfs: images.initramfs.clone(),
        },
        RootDisk {
            base,
            overlay,
            access: DiskAccess::ReadOnly,
        },
        dir.path(),
    );
    spec.network = network;
    let mut argv = QemuArgs::build(&spec, caps).expect("argv");
    argv.extend(extra_argv(dir.path()));
    let child = Command::new(qemu_binary().expect("qemu"))
        .args(&argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn qemu");
    let deadline = Instant::now() + BOOT_DEADLINE;
    let cmd = connect(&spec.cmd_socket, deadline).await;
    let event = connect(&spec.event_socket, deadline).await;
    let client = Client::new(event, cmd);
    loop {
        match client.handshake(Duration::from_millis(250)).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                let console = std::fs::read_to_string(&spec.console_log).unwrap_or_default();
                panic!(
                    "{language}: agent not ready after {BOOT_DEADLINE:?}: {e}\nconsole:\n{console}"
                );
            }
            Err(_) => {}
        }
    }
    PlainVm {
        client,
        child,
        dir,
        console_log: spec.console_log,
    }
}
