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

/// Debian release whose archive has the `gvproxy` package (0.8.1), used on
/// older releases (Debian 12 has none). It needs only libc, so it runs there.
const GVPROXY_SUITE: &str = "trixie";

/// The archive keyring apt verifies the fetched release file with.
const ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Present when the installed `debian-archive-keyring` knows the trixie
/// signing keys (bookworm's `2023.3+deb12u1` and newer ship it).
const TRIXIE_KEY_MARKER: &str = "/usr/share/keyrings/debian-archive-trixie-stable.gpg";

/// Airlock's cache dir, resolved by [`airlock_sys_util::dirs`] exactly as
/// the `airlock` binary does.
fn airlock_cache_dir() -> Result<PathBuf> {
    Ok(airlock_sys_util::AirlockDirs::from_env()?.cache)
}

/// Finds gvproxy in the order `airlock_gvproxy::find_gvproxy` uses (keep
/// them in step): `$AIRLOCK_GVPROXY`, PATH, podman's libexec folders, then
/// the cache (`<cache>/bin/gvproxy`).
pub fn find_gvproxy() -> Option<PathBuf> {
    if let Some(explicit) = std::env::var_os("AIRLOCK_GVPROXY").filter(|p| !p.is_empty()) {
        let explicit = PathBuf::from(explicit);
        return explicit.is_file().then_some(explicit);
    }
    which("gvproxy")
        .into_iter()
        .chain(["/usr/libexec/podman/gvproxy", "/usr/lib/podman/gvproxy"].map(PathBuf::from))
        .chain(
            airlock_cache_dir()
                .ok()
                .map(|d| d.join("bin").join("gvproxy")),
        )
        .find(|p| p.is_file())
}

/// Whether `apt-cache policy` output offers an installable candidate.
fn policy_has_candidate(policy: &str) -> bool {
    policy.lines().any(|line| {
        line.trim()
            .strip_prefix("Candidate:")
            .is_some_and(|v| !v.trim().is_empty() && v.trim() != "(none)")
    })
}

/// Makes sure gvproxy exists and returns its path.
///
/// Found (see [`find_gvproxy`]): returned as is. Else, when the system's apt
/// offers a `gvproxy` package (Debian 13 and newer), it is installed with
/// `apt-get install`. Else (Debian 12) Debian 13's package is downloaded with
/// apt working on a private sources list, state and cache (the system's
/// package sources are never changed), from the mirror the system's own apt
/// sources name, verified with the system's archive keyring, unpacked with
/// `dpkg-deb -x`, and its binary copied to `<cache>/bin/gvproxy`.
pub fn ensure_gvproxy() -> Result<PathBuf> {
    if let Some(found) = find_gvproxy() {
        return Ok(found);
    }
    if let Some(explicit) = std::env::var_os("AIRLOCK_GVPROXY").filter(|p| !p.is_empty()) {
        bail!(
            "AIRLOCK_GVPROXY={} is not a file: fix or unset it",
            PathBuf::from(explicit).display()
        );
    }
    let started = std::time::Instant::now();
    let policy = Command::new("apt-cache")
        .args(["policy", "gvproxy"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if policy_has_candidate(&policy) {
        eprintln!("xtask: installing the gvproxy package");
        if !is_root() {
            bail!("gvproxy is missing: run `sudo apt-get install gvproxy` (or run as root)");
        }
        run_checked(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends", "gvproxy"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    } else {
        fetch_gvproxy_from_next_release()?;
    }
    let found = find_gvproxy()
        .context("gvproxy was installed but is still not found: set AIRLOCK_GVPROXY")?;
    eprintln!(
        "xtask: gvproxy ready at {} ({:.1} s)",
        found.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(found)
}

/// The Debian 12 path of [`ensure_gvproxy`]: private apt, `apt-get download`,
/// `dpkg-deb -x`, copy into the cache.
fn fetch_gvproxy_from_next_release() -> Result<()> {
    let archive = crate::images::apt::host_archive()
        .context("cannot find the system's Debian mirror to fetch gvproxy from")?;
    if !Path::new(TRIXIE_KEY_MARKER).is_file() {
        bail!(
            "the installed debian-archive-keyring has no {GVPROXY_SUITE} signing key \
             ({TRIXIE_KEY_MARKER} is missing), so Debian {GVPROXY_SUITE}'s gvproxy package \
             cannot be verified: run `apt-get update && apt-get install debian-archive-keyring` \
             (bookworm's 2023.3+deb12u1 or newer has it), or install gvproxy yourself and set \
             AIRLOCK_GVPROXY"
        );
    }
    eprintln!(
        "xtask: fetching gvproxy from Debian {GVPROXY_SUITE} ({}) into the cache",
        archive.mirror
    );
    let cache = airlock_cache_dir()?;
    let work = cache.join(format!("tmp-gvproxy-{}", std::process::id()));
    // A leftover of an interrupted run is useless.
    drop(std::fs::remove_dir_all(&work));
    let result = fetch_into(&archive.mirror, &work, &cache.join("bin"));
    drop(std::fs::remove_dir_all(&work));
    result
}

fn fetch_into(mirror: &str, work: &Path, bin_dir: &Path) -> Result<()> {
    for dir in [
        "state/lists/partial",
        "cache/archives/partial",
        "download",
        "root",
    ] {
        std::fs::create_dir_all(work.join(dir))
            .with_context(|| format!("create {}", work.join(dir).display()))?;
    }
    let sources = work.join("sources.list");
    std::fs::write(
        &sources,
        format!("deb [signed-by={ARCHIVE_KEYRING}] {mirror} {GVPROXY_SUITE} main\n"),
    )
    .with_context(|| format!("write {}", sources.display()))?;
    let apt_options = [
        format!("Dir::Etc::SourceList={}", sources.display()),
        "Dir::Etc::SourceParts=/dev/null".into(),
        "Dir::Etc::Preferences=/dev/null".into(),
        "Dir::Etc::PreferencesParts=/dev/null".into(),
        format!("Dir::State={}", work.join("state").display()),
        format!("Dir::Cache={}", work.join("cache").display()),
        "Acquire::Languages=none".into(),
        // Only the package lists are needed, not AppStream metadata.
        "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
        "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".into(),
        "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".into(),
        "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false".into(),
        // The private dirs are not readable by apt's `_apt` sandbox user.
        "APT::Sandbox::User=root".into(),
    ];
    let apt_get = || {
        let mut cmd = Command::new("apt-get");
        for option in &apt_options {
            cmd.arg("-o").arg(option);
        }
        cmd.arg("-q");
        cmd
    };
    run_checked(apt_get().arg("update"))?;
    run_checked(
        apt_get()
            .args(["download", "gvproxy"])
            .current_dir(work.join("download")),
    )?;
    let deb = std::fs::read_dir(work.join("download"))
        .context("list the downloaded package")?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download gvproxy left no .deb")?;
    run_checked(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(work.join("root")),
    )?;
    let binary = [
        "usr/bin/gvproxy",
        "usr/libexec/podman/gvproxy",
        "usr/lib/podman/gvproxy",
    ]
    .iter()
    .map(|p| work.join("root").join(p))
    .find(|p| p.is_file())
    .with_context(|| format!("{} holds no gvproxy binary", deb.display()))?;
    std::fs::create_dir_all(bin_dir).with_context(|| format!("create {}", bin_dir.display()))?;
    let staged = bin_dir.join(".gvproxy.partial");
    std::fs::copy(&binary, &staged)
        .with_context(|| format!("copy {} to {}", binary.display(), staged.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", staged.display()))?;
    }
    let status = Command::new(&staged)
        .arg("-version")
        .output()
        .with_context(|| format!("run {} -version", staged.display()))?;
    if !status.status.success() {
        bail!(
            "the fetched gvproxy does not run ({}): {}",
            status.status,
            String::from_utf8_lossy(&status.stderr).trim()
        );
    }
    let target = bin_dir.join("gvproxy");
    std::fs::rename(&staged, &target)
        .with_context(|| format!("rename {} to {}", staged.display(), target.display()))?;
    Ok(())
}

#[cfg(test)]
mod gvproxy_tests {
    use super::policy_has_candidate;

    #[test]
    fn policy_with_a_candidate_is_installable() {
        let out = "gvproxy:\n  Installed: (none)\n  Candidate: 0.8.1-1\n  Version table:\n";
        assert!(policy_has_candidate(out));
    }

    #[test]
    fn policy_without_candidate_or_package_is_not() {
        assert!(!policy_has_candidate(
            "gvproxy:\n  Installed: (none)\n  Candidate: (none)\n"
        ));
        assert!(!policy_has_candidate(""));
    }

    /// Installs gvproxy when missing (network, apt); run by hand with
    /// `cargo test -p xtask -- --ignored ensure_gvproxy`.
    #[test]
    #[ignore = "installs gvproxy into the cache: run by hand"]
    fn ensure_gvproxy_finds_or_installs_it() {
        let path = super::ensure_gvproxy().unwrap();
        assert!(path.is_file());
    }
}
