//! Golden tests: the full argv of every (arch, accelerator, network)
//! combination, one argument per line, in `tests/golden/*.args`.
//!
//! Run with `AIRLOCK_BLESS=1` to rewrite the files after an intended change,
//! then review the diff.

#![allow(clippy::unwrap_used)] // Test helpers outside #[test] functions.

use airlock_qemu::probe::kvm::probe_args;
use airlock_qemu::{
    argv_to_lines, Accel, Arch, BootImages, DiskAccess, DiskFormat, ExtraDrive, HostCaps,
    HostForward, IncomingMigration, MemoryFile, MemorySharing, NetworkAttachment, QemuArgs,
    QemuVersion, RootDisk, Share, VmSpec,
};
use std::path::{Path, PathBuf};

const WORK_DIR: &str = "/run/airlock/vm-golden";

fn spec(network: NetworkAttachment) -> VmSpec {
    let mut spec = VmSpec::new(
        "vm-golden",
        BootImages {
            kernel: "/images/kernel-0123456789abcdef.bzImage".into(),
            initramfs: "/images/initramfs-0123456789abcdef.cpio".into(),
        },
        RootDisk {
            base: "/images/rootfs-python-0123456789abcdef.qcow2".into(),
            overlay: Path::new(WORK_DIR).join("root.qcow2"),
            access: DiskAccess::ReadOnly,
        },
        Path::new(WORK_DIR),
    );
    spec.network = network;
    spec
}

fn caps(arch: Arch, accel: Accel) -> HostCaps {
    HostCaps {
        arch,
        accel,
        qemu_version: QemuVersion::new(7, 2, 22),
        io_uring: true,
        tsc_khz: Some(2_596_120),
    }
}

fn networks() -> [(&'static str, NetworkAttachment); 3] {
    [
        ("none", NetworkAttachment::None),
        (
            "stream",
            NetworkAttachment::Stream {
                socket: Path::new(WORK_DIR).join("net.sock"),
            },
        ),
        (
            "user",
            NetworkAttachment::User {
                host_forwards: vec![HostForward::tcp_localhost(18080, 8080)],
            },
        ),
    ]
}

/// Every golden case: file stem and rendered argv.
fn cases() -> Vec<(String, String)> {
    let mut cases = Vec::new();
    for arch in [Arch::X86_64, Arch::Aarch64] {
        for accel in [Accel::Tcg, Accel::Kvm] {
            for (net_name, network) in networks() {
                let argv = QemuArgs::build(&spec(network), &caps(arch, accel)).unwrap();
                cases.push((format!("{arch}-{accel}-{net_name}"), argv_to_lines(&argv)));
            }
        }
    }

    // Everything optional at once: writable root, an extra drive, a bigger
    // VM, an extra kernel word, snapshot restore, no io_uring, no TSC.
    let mut full = spec(NetworkAttachment::None);
    full.memory_mib = 512;
    full.vcpus = 2;
    full.root.access = DiskAccess::ReadWrite;
    full.extra_kernel_args = vec!["airlock.tmp_mib=32".into()];
    full.extra_drives = vec![
        ExtraDrive {
            id: "data".into(),
            path: Path::new(WORK_DIR).join("data.img"),
            format: DiskFormat::Raw,
            access: DiskAccess::ReadOnly,
            serial: "airlock-data".into(),
            backing: None,
        },
        ExtraDrive {
            id: "workspace".into(),
            path: Path::new(WORK_DIR).join("workspace.qcow2"),
            format: DiskFormat::Qcow2,
            access: DiskAccess::ReadWrite,
            serial: "airlock-workspace".into(),
            backing: Some("/cache/workspace/ext4-2048m.qcow2".into()),
        },
    ];
    full.shares = vec![
        Share {
            tag: "mount0".into(),
            path: "/home/me/data,set".into(),
            read_only: true,
        },
        Share {
            tag: "mount1".into(),
            path: "/home/me/out".into(),
            read_only: false,
        },
    ];
    full.incoming = Some(IncomingMigration::Fd(3));
    let plain_host = HostCaps {
        io_uring: false,
        tsc_khz: None,
        ..caps(Arch::X86_64, Accel::Tcg)
    };
    let argv = QemuArgs::build(&full, &plain_host).unwrap();
    cases.push(("x86_64-tcg-all-options".into(), argv_to_lines(&argv)));

    // VM templating: the template writes its RAM to a shared file and
    // waits to be saved; a clone maps the file privately and waits for its
    // device state over QMP.
    for (name, sharing) in [
        ("template", MemorySharing::Shared),
        ("clone", MemorySharing::Private),
    ] {
        let mut spec = spec(NetworkAttachment::None);
        spec.memory_mib = 512;
        spec.memory_file = Some(MemoryFile {
            path: "/cache/templates/0123456789abcdef/memory".into(),
            sharing,
        });
        if sharing == MemorySharing::Private {
            spec.incoming = Some(IncomingMigration::Defer);
        }
        let argv = QemuArgs::build(&spec, &caps(Arch::X86_64, Accel::Tcg)).unwrap();
        cases.push((format!("x86_64-tcg-{name}"), argv_to_lines(&argv)));
    }

    // The KVM probe's boot.
    let probe = probe_args(
        Arch::X86_64,
        &QemuVersion::new(7, 2, 22),
        &BootImages {
            kernel: "/images/kernel-0123456789abcdef.bzImage".into(),
            initramfs: "/images/initramfs-0123456789abcdef.cpio".into(),
        },
        Path::new("/tmp/airlock-kvm-probe/console.log"),
    );
    cases.push(("x86_64-kvm-probe".into(), argv_to_lines(&probe)));
    cases
}

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn argv_matches_golden_files() {
    let bless = std::env::var_os("AIRLOCK_BLESS").is_some_and(|v| v == "1");
    let mut mismatches = Vec::new();
    for (name, actual) in cases() {
        let path = golden_dir().join(format!("{name}.args"));
        if bless {
            std::fs::write(&path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        if expected != actual {
            mismatches.push(format!(
                "--- {}\n+++ actual\n{}",
                path.display(),
                line_diff(&expected, &actual)
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "argv differs from the golden files (rerun with AIRLOCK_BLESS=1 if intended):\n{}",
        mismatches.join("\n")
    );
}

#[test]
fn no_golden_file_is_stale() {
    let names: Vec<String> = cases()
        .into_iter()
        .map(|(n, _)| format!("{n}.args"))
        .collect();
    assert!(names.len() >= 8);
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(names.contains(&file), "{file} matches no case: delete it");
    }
}

/// A small line diff: lines only in `expected` (-) or only in `actual` (+),
/// in order.
fn line_diff(expected: &str, actual: &str) -> String {
    let exp: Vec<&str> = expected.lines().collect();
    let act: Vec<&str> = actual.lines().collect();
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < exp.len() || j < act.len() {
        match (exp.get(i), act.get(j)) {
            (Some(e), Some(a)) if e == a => {
                i += 1;
                j += 1;
            }
            (Some(e), _) if !act[j..].contains(e) => {
                out.push_str(&format!("-{e}\n"));
                i += 1;
            }
            (_, Some(a)) => {
                out.push_str(&format!("+{a}\n"));
                j += 1;
            }
            (Some(e), None) => {
                out.push_str(&format!("-{e}\n"));
                i += 1;
            }
            (None, None) => break,
        }
    }
    out
}
