//! Real-QEMU tests: the host probes and the built argv against the installed
//! QEMU. Each run is bounded by a deadline; guests are a 50 ms stub kernel
//! (see `support::pvh_stub_kernel`), so no guest image is needed.
//!
//! `AIRLOCK_SKIP_QEMU_TESTS=1` skips the tests that need QEMU.
//! `AIRLOCK_EXPECT_ACCEL=kvm|tcg` additionally asserts the probe's verdict.

#![allow(clippy::unwrap_used)] // Test helpers outside #[test] functions.

mod support;

use airlock_qemu::probe::VerdictSource;
use airlock_qemu::{
    probe_host, Accel, BootImages, DiskAccess, DiskFormat, ExtraDrive, HostForward, HostProber,
    NetworkAttachment, ProbeConfig, QemuArgs, QemuError, RootDisk, VmSpec,
};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const STUB_MESSAGE: &str = "Linux version 0.0-airlock-stub\nairlock-init: stub reached\n";

fn config(cache_dir: &Path, images: Option<BootImages>) -> ProbeConfig {
    ProbeConfig {
        cache_dir: Some(cache_dir.to_path_buf()),
        kvm_probe_images: images,
        accel_override: None,
        ..ProbeConfig::from_env()
    }
}

fn kvm_device_opens() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

#[tokio::test]
async fn kvm_verdict_is_probed_once_then_read_from_the_cache_fast() {
    if support::qemu_tests_skipped() {
        return;
    }
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let images = support::write_stub_images(dir.path(), STUB_MESSAGE);
    let cache = dir.path().join("cache");
    let prober = HostProber::new(config(&cache, Some(images.clone())));

    // Act
    let cold_start = Instant::now();
    let first = prober.report().await.unwrap();
    let cold = cold_start.elapsed();
    let again = prober.report().await.unwrap();
    let warm_start = Instant::now();
    let second = probe_host(&config(&cache, Some(images))).await.unwrap();
    let warm = warm_start.elapsed();

    // Assert
    eprintln!(
        "cold probe {cold:?}: accel={} source={:?} kvm part {:?}: {}",
        first.caps.accel, first.kvm.source, first.kvm.elapsed, first.kvm.verdict.reason
    );
    eprintln!(
        "cached probe {warm:?}: source={:?}, qemu {} at {}, io_uring={} ({}), tsc_khz={:?} from {:?}",
        second.kvm.source,
        second.caps.qemu_version,
        second.qemu_binary.display(),
        second.caps.io_uring,
        second.io_uring_reason,
        second.caps.tsc_khz,
        second.tsc_source,
    );
    assert!(std::ptr::eq(first, again), "HostProber probes once");
    assert!(!first.kvm.verdict.reason.is_empty());
    assert_eq!(first.caps.accel, first.kvm.verdict.accel);
    if let Some(expected) = std::env::var_os("AIRLOCK_EXPECT_ACCEL") {
        assert_eq!(
            first.caps.accel.as_str(),
            expected,
            "{}",
            first.kvm.verdict.reason
        );
    }
    if kvm_device_opens() {
        assert_eq!(first.kvm.source, VerdictSource::Probe);
        assert!(first.kvm.cache_file.as_ref().unwrap().is_file());
        if first.caps.accel == Accel::Tcg {
            assert!(
                first.kvm.verdict.reason.contains("KVM"),
                "{}",
                first.kvm.verdict.reason
            );
        }
        assert_eq!(second.kvm.source, VerdictSource::Cache);
        assert_eq!(second.kvm.verdict, first.kvm.verdict);
        assert!(warm < Duration::from_secs(1), "cached probe took {warm:?}");
    } else {
        assert_eq!(first.kvm.source, VerdictSource::Precheck);
        assert_eq!(first.caps.accel, Accel::Tcg);
        assert!(first.kvm.verdict.reason.contains("/dev/kvm"));
    }
}

#[tokio::test]
async fn missing_guest_kernel_gives_tcg_with_reason_and_is_not_cached() {
    if support::qemu_tests_skipped() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let images = BootImages {
        kernel: "/nonexistent/bzImage".into(),
        initramfs: "/nonexistent/initramfs.cpio".into(),
    };

    let report = probe_host(&config(&cache, Some(images))).await.unwrap();

    assert_eq!(report.caps.accel, Accel::Tcg);
    assert_eq!(report.kvm.source, VerdictSource::Precheck);
    let reason = &report.kvm.verdict.reason;
    if kvm_device_opens() {
        assert!(
            reason.contains("KVM not verified") && reason.contains("/nonexistent/bzImage"),
            "{reason}"
        );
        assert!(reason.contains("cargo xtask images"), "{reason}");
    }
    assert!(
        !cache.join("probe").exists(),
        "a precheck verdict is not cached"
    );
}

#[tokio::test]
async fn missing_qemu_binary_names_the_fix() {
    let empty = tempfile::tempdir().unwrap();
    let config = ProbeConfig {
        search_path: empty.path().as_os_str().to_owned(),
        ..ProbeConfig::default()
    };

    let err = probe_host(&config).await.unwrap_err();

    assert!(matches!(err, QemuError::QemuNotFound { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("install the qemu-system-"), "{message}");
    assert!(message.contains("package or set AIRLOCK_QEMU"), "{message}");
}

#[tokio::test]
async fn airlock_qemu_pointing_nowhere_is_reported() {
    let config = ProbeConfig {
        qemu_binary: Some("/nonexistent/qemu-system-x86_64".into()),
        ..ProbeConfig::default()
    };

    let err = probe_host(&config).await.unwrap_err();

    assert!(
        err.to_string()
            .contains("AIRLOCK_QEMU=/nonexistent/qemu-system-x86_64"),
        "{err}"
    );
}

#[tokio::test]
async fn bad_accel_override_is_an_error() {
    let config = ProbeConfig {
        accel_override: Some("whpx".into()),
        ..ProbeConfig::default()
    };
    let err = probe_host(&config).await.unwrap_err();
    assert!(
        matches!(err, QemuError::InvalidAccelOverride { .. }),
        "{err}"
    );
}

/// Boots the stub with the full argv of `spec` under TCG and returns the
/// console.
async fn boot_stub(spec: &VmSpec, report: &airlock_qemu::HostReport) -> String {
    let mut caps = report.caps.clone();
    caps.accel = Accel::Tcg;
    let argv = QemuArgs::build(spec, &caps).unwrap();
    let child = tokio::process::Command::new(&report.qemu_binary)
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("QEMU did not exit within 30 s")
        .unwrap();
    let console = std::fs::read_to_string(&spec.console_log).unwrap_or_default();
    assert!(
        out.status.success(),
        "QEMU failed ({}): {}\nconsole: {console}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    console
}

#[tokio::test]
async fn built_argv_runs_on_the_installed_qemu_for_every_network() {
    if support::qemu_tests_skipped() {
        return;
    }
    // Arrange: stub kernel, a real qcow2 base + overlay, QEMU's own facts.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let report = probe_host(&config(&cache, None)).await.unwrap();
    let images = support::write_stub_images(dir.path(), STUB_MESSAGE);
    let qemu_img = support::qemu_img(&report.qemu_binary).expect("qemu-img (qemu-utils) is needed");
    let base = dir.path().join("base.qcow2");
    let run = |args: &[&std::ffi::OsStr]| {
        let status = std::process::Command::new(&qemu_img)
            .args(args)
            .status()
            .unwrap();
        assert!(status.success());
    };
    run(&[
        "create".as_ref(),
        "-q".as_ref(),
        "-f".as_ref(),
        "qcow2".as_ref(),
        base.as_os_str(),
        "16M".as_ref(),
    ]);

    let listener_dir = dir.path().join("gv");
    std::fs::create_dir(&listener_dir).unwrap();
    let net_sock = listener_dir.join("qemu.sock");
    let listener = tokio::net::UnixListener::bind(&net_sock).unwrap();
    let accept = tokio::spawn(async move { listener.accept().await.map(|_| ()) });

    let networks = [
        ("none", NetworkAttachment::None, DiskAccess::ReadOnly),
        (
            "user",
            NetworkAttachment::User {
                host_forwards: vec![HostForward::tcp_localhost(0, 80)],
            },
            DiskAccess::ReadWrite,
        ),
        (
            "stream",
            NetworkAttachment::Stream {
                socket: net_sock.clone(),
            },
            DiskAccess::ReadOnly,
        ),
    ];
    for (name, network, access) in networks {
        // A comma in every per-VM path checks the escaping against QEMU.
        let work = dir.path().join(format!("{name},vm"));
        std::fs::create_dir(&work).unwrap();
        // The overlay's header names a different base path on purpose: the
        // argv pins the real one.
        let overlay = work.join("root.qcow2");
        let backing = format!("backing_fmt=qcow2,backing_file={}", base.display());
        run(&[
            "create".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-o".as_ref(),
            backing.as_ref(),
            overlay.as_os_str(),
        ]);
        let mut spec = VmSpec::new(
            format!("stub-{name}"),
            images.clone(),
            RootDisk {
                base: base.clone(),
                overlay,
                access,
            },
            &work,
        );
        spec.network = network;
        if let NetworkAttachment::User { host_forwards } = &mut spec.network {
            // Port 0 is refused by validation: take a free one.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            host_forwards[0].host_port = port;
            let data = work.join("data.img");
            std::fs::write(&data, vec![0u8; 1 << 20]).unwrap();
            spec.extra_drives.push(ExtraDrive {
                id: "data".into(),
                path: data,
                format: DiskFormat::Raw,
                access: DiskAccess::ReadWrite,
                serial: "airlock-data".into(),
                backing: None,
            });
            spec.vcpus = 2;
        }

        // Act
        let started = Instant::now();
        let console = boot_stub(&spec, &report).await;

        // Assert
        eprintln!("{name}: stub VM ran in {:?}", started.elapsed());
        assert!(
            console.contains("airlock-init: stub reached"),
            "{name}: {console:?}"
        );
    }
    tokio::time::timeout(Duration::from_secs(1), accept)
        .await
        .expect("QEMU never connected to the stream socket")
        .unwrap()
        .unwrap();
}

/// The guest images to test with: `AIRLOCK_TEST_KERNEL` and
/// `AIRLOCK_TEST_INITRAMFS`, else the kernel and initramfs of the images
/// manifest (`$AIRLOCK_IMAGES` or `~/.cache/airlock/images`). The third
/// value is the python root disk, when the manifest has one.
fn real_images() -> Option<(BootImages, Option<std::path::PathBuf>)> {
    if let (Some(kernel), Some(initramfs)) = (
        std::env::var_os("AIRLOCK_TEST_KERNEL"),
        std::env::var_os("AIRLOCK_TEST_INITRAMFS"),
    ) {
        return Some((
            BootImages {
                kernel: kernel.into(),
                initramfs: initramfs.into(),
            },
            None,
        ));
    }
    let dir = airlock_sys_util::AirlockDirs::from_env().ok()?.images;
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).ok()?).ok()?;
    let file = |key: &str| {
        manifest["artefacts"][key]["file"]
            .as_str()
            .map(|f| dir.join(f))
            .filter(|p| p.is_file())
    };
    Some((
        BootImages {
            kernel: file("kernel")?,
            initramfs: file("initramfs")?,
        },
        file("rootfs-python"),
    ))
}

#[tokio::test]
async fn real_guest_images_probe_and_boot_when_available() {
    if support::qemu_tests_skipped() {
        return;
    }
    let Some((images, python_root)) = real_images() else {
        eprintln!("no guest images (manifest or AIRLOCK_TEST_KERNEL/INITRAMFS): skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");

    let cold_start = Instant::now();
    let cold = probe_host(&config(&cache, Some(images.clone())))
        .await
        .unwrap();
    let cold_time = cold_start.elapsed();
    let warm_start = Instant::now();
    let warm = probe_host(&config(&cache, Some(images.clone())))
        .await
        .unwrap();
    let warm_time = warm_start.elapsed();
    eprintln!(
        "real kernel {}: cold probe {cold_time:?} ({:?}, {}), cached probe {warm_time:?} ({:?})",
        images.kernel.display(),
        cold.kvm.source,
        cold.kvm.verdict.reason,
        warm.kvm.source
    );
    if let Some(expected) = std::env::var_os("AIRLOCK_EXPECT_ACCEL") {
        assert_eq!(
            cold.caps.accel.as_str(),
            expected,
            "{}",
            cold.kvm.verdict.reason
        );
    }
    if cold.kvm.source == VerdictSource::Probe {
        assert_eq!(warm.kvm.source, VerdictSource::Cache);
        assert!(
            warm_time < Duration::from_secs(1),
            "cached probe took {warm_time:?}"
        );
    }

    let Some(base) = python_root else {
        return;
    };
    if cold.caps.accel != Accel::Tcg && std::env::var_os("AIRLOCK_EXPECT_ACCEL").is_none() {
        eprintln!("boot check runs under TCG only");
    }
    // Boot the python root disk under TCG to the init's ready line.
    let work = dir.path().join("vm");
    std::fs::create_dir(&work).unwrap();
    let overlay = work.join("root.qcow2");
    let qemu_img = support::qemu_img(&cold.qemu_binary).expect("qemu-img");
    let status = std::process::Command::new(qemu_img)
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&overlay)
        .status()
        .unwrap();
    assert!(status.success());
    let spec = VmSpec::new(
        "real-boot",
        images,
        RootDisk {
            base,
            overlay,
            access: DiskAccess::ReadOnly,
        },
        &work,
    );
    let mut caps = cold.caps.clone();
    caps.accel = Accel::Tcg;
    let argv = QemuArgs::build(&spec, &caps).unwrap();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&cold.qemu_binary)
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut console = String::new();
    while started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        console = std::fs::read_to_string(&spec.console_log).unwrap_or_default();
        if console.contains("airlock-init: ready") || child.try_wait().unwrap().is_some() {
            break;
        }
    }
    let boot_time = started.elapsed();
    let _ = child.start_kill();
    let _ = child.wait().await;
    eprintln!("python root boot ended after {boot_time:?}; console:\n{console}");
    // "ready" needs the agent in the image; a missing agent is reported by
    // init only after it found the root disk by serial and switched to it,
    // which is all this argv is responsible for.
    let ready = console.contains("airlock-init: ready");
    let root_mounted_without_agent = console.contains("airlock-init: fatal: cannot run the agent");
    assert!(ready || root_mounted_without_agent, "{console}");
    if !ready {
        eprintln!("the image has no agent yet: root disk found and mounted, agent missing");
    }
}
