//! Host set-up: Debian packages the tasks need, installed when missing.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A host requirement: satisfied when `probe` finds its file, else installed
/// from the Debian package `package`.
#[derive(Debug, Clone, Copy)]
pub struct Requirement {
    /// A program name looked up on PATH, or an absolute path that must exist.
    pub probe: &'static str,
    /// The Debian package that provides it.
    pub package: &'static str,
}

/// What the tests need on the host.
pub const TEST_REQUIREMENTS: &[Requirement] = &[
    Requirement {
        probe: "python3",
        package: "python3",
    },
    Requirement {
        probe: "node",
        package: "nodejs",
    },
    Requirement {
        probe: "bash",
        package: "bash",
    },
];

/// What `cargo xtask images` needs: QEMU (to check images), debootstrap,
/// the kernel sources and toolchain, cpio, e2fsprogs and compressors. `lz4`
/// compresses the kernel (`CONFIG_KERNEL_LZ4`: fastest to decompress).
pub const IMAGE_REQUIREMENTS: &[Requirement] = &[
    Requirement {
        probe: "qemu-system-x86_64",
        package: "qemu-system-x86",
    },
    Requirement {
        probe: "qemu-img",
        package: "qemu-utils",
    },
    Requirement {
        probe: "/usr/sbin/debootstrap",
        package: "debootstrap",
    },
    Requirement {
        probe: "/usr/src/linux-source-6.1.tar.xz",
        package: "linux-source-6.1",
    },
    Requirement {
        probe: "/usr/share/build-essential/list",
        package: "build-essential",
    },
    Requirement {
        probe: "bc",
        package: "bc",
    },
    Requirement {
        probe: "flex",
        package: "flex",
    },
    Requirement {
        probe: "bison",
        package: "bison",
    },
    Requirement {
        probe: "/usr/include/libelf.h",
        package: "libelf-dev",
    },
    Requirement {
        probe: "/usr/include/openssl/ssl.h",
        package: "libssl-dev",
    },
    Requirement {
        probe: "cpio",
        package: "cpio",
    },
    Requirement {
        probe: "/usr/sbin/mkfs.ext4",
        package: "e2fsprogs",
    },
    Requirement {
        probe: "xz",
        package: "xz-utils",
    },
    Requirement {
        probe: "lz4",
        package: "lz4",
    },
];

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or(manifest_dir)
}

/// Finds a program on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.exists().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs the packages of every unmet requirement with apt-get, running
/// `apt-get update` first. A no-op when everything is present.
pub fn ensure(requirements: &[Requirement]) -> Result<()> {
    let mut missing: Vec<&str> = requirements
        .iter()
        .filter(|r| which(r.probe).is_none())
        .map(|r| r.package)
        .collect();
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing host packages: {}", missing.join(" "));
    if !is_root() {
        bail!(
            "missing host packages {}: run `sudo apt-get install {}` (or run as root)",
            missing.join(", "),
            missing.join(" ")
        );
    }
    run_checked(Command::new("apt-get").args(["update", "-q"]))?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    for r in requirements {
        if which(r.probe).is_none() {
            bail!(
                "package {} installed but {} is still missing",
                r.package,
                r.probe
            );
        }
    }
    Ok(())
}

/// Runs a command, inheriting stdio; fails with the command line on a
/// non-zero exit.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("command failed ({status}): {cmd:?}");
    }
    Ok(())
}

/// The cargo to use for nested builds.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

/// The cargo target dir of the workspace (`$CARGO_TARGET_DIR` or `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}
