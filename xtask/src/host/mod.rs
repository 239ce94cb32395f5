//! Host set-up: the Debian packages the tasks need, planned with apt before
//! anything is installed (see [`apt_plan`]), then checked by running the
//! tools.

pub mod apt_plan;
pub mod archive;
pub mod kernel_source;
#[cfg(test)]
mod setup_plan_tests;

use anyhow::{bail, Context, Result};
use apt_plan::Apt;
use kernel_source::KernelSource;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A host requirement: satisfied when `probe` finds its file, else installed
/// from the Debian package `package`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// A program name looked up on PATH, or an absolute path that must exist.
    pub probe: String,
    /// The Debian package that provides it.
    pub package: String,
}

impl Requirement {
    /// Whether the host meets it: `probe` is an executable on PATH, or (when
    /// it holds a `/`) an existing file.
    pub fn is_met(&self) -> bool {
        if self.probe.contains('/') {
            Path::new(&self.probe).exists()
        } else {
            airlock_sys_util::which(&self.probe).is_some()
        }
    }

    /// A requirement: `probe` found means `package` is installed.
    pub fn new(probe: impl Into<String>, package: impl Into<String>) -> Self {
        Self {
            probe: probe.into(),
            package: package.into(),
        }
    }
}

/// What the tests need on the host.
pub fn test_requirements() -> Vec<Requirement> {
    vec![
        Requirement::new("python3", "python3"),
        // `python3 -m venv` for the server tests' real clients (httpx, mcp).
        Requirement::new("/usr/share/doc/python3-venv", "python3-venv"),
        Requirement::new("node", "nodejs"),
        Requirement::new("bash", "bash"),
        // glibc resolves `*.localhost` to loopback through it: the E2B
        // test's host-name mode (`--e2b-domain localhost`).
        Requirement::new("/usr/share/doc/libnss-myhostname", "libnss-myhostname"),
    ]
}

/// What `cargo xtask images` needs: QEMU (to check images and build
/// overlays), debootstrap, the kernel sources and toolchain, cpio, e2fsprogs
/// and compressors. `lz4` compresses the kernel (`CONFIG_KERNEL_LZ4`:
/// fastest to decompress).
pub fn image_requirements(kernel: &KernelSource) -> Vec<Requirement> {
    vec![
        Requirement::new("qemu-system-x86_64", apt_plan::QEMU_SYSTEM),
        Requirement::new("qemu-img", apt_plan::QEMU_UTILS),
        Requirement::new("/usr/sbin/debootstrap", "debootstrap"),
        Requirement::new(kernel.tarball.to_string_lossy(), kernel.package.as_str()),
        Requirement::new("/usr/share/build-essential/list", "build-essential"),
        Requirement::new("bc", "bc"),
        Requirement::new("flex", "flex"),
        Requirement::new("bison", "bison"),
        Requirement::new("/usr/include/libelf.h", "libelf-dev"),
        Requirement::new("/usr/include/openssl/ssl.h", "libssl-dev"),
        Requirement::new("cpio", "cpio"),
        Requirement::new("/usr/sbin/mkfs.ext4", "e2fsprogs"),
        Requirement::new("xz", "xz-utils"),
        Requirement::new("lz4", "lz4"),
    ]
}

/// Everything `demo`, `test` and `bench` need, set up in one apt
/// transaction: the tests' tools and the image builders.
///
/// # Errors
/// As [`ensure`].
pub fn ensure_all() -> Result<()> {
    ensure_apt_lists()?;
    let kernel = KernelSource::find()?;
    let mut all = test_requirements();
    all.extend(image_requirements(&kernel));
    ensure(&all)
}

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or(manifest_dir)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Makes sure apt's package lists exist before anything asks apt about a
/// package: `apt-get update` once per process when this host has never
/// fetched them (a fresh machine), or when `AIRLOCK_APT_UPDATE=1`.
///
/// # Errors
/// When the lists are missing and cannot be fetched.
pub fn ensure_apt_lists() -> Result<()> {
    static DONE: OnceLock<()> = OnceLock::new();
    if DONE.get().is_some() {
        return Ok(());
    }
    let lists = Path::new("/var/lib/apt/lists");
    let has_lists = std::fs::read_dir(lists)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false);
    let forced = std::env::var_os("AIRLOCK_APT_UPDATE").is_some_and(|v| v == "1");
    if !has_lists || forced {
        if airlock_sys_util::which("apt-get").is_none() {
            bail!("apt-get not found: Airlock's set-up needs a Debian host (12 or later)");
        }
        if !is_root() {
            bail!("apt has no package lists yet: run `sudo apt-get update` (or run as root)");
        }
        eprintln!("xtask: apt-get update (no package lists yet)");
        run_checked(Command::new("apt-get").args(["update", "-q"]))?;
    }
    // A second call in this process has nothing to do.
    let _ = DONE.set(());
    Ok(())
}

/// The packages of the unmet `requirements`; when either QEMU tool is
/// missing, both QEMU packages (they must come from one version).
fn missing_packages(requirements: &[Requirement]) -> Vec<String> {
    let mut missing: Vec<String> = requirements
        .iter()
        .filter(|r| !r.is_met())
        .map(|r| r.package.clone())
        .collect();
    let qemu = [apt_plan::QEMU_SYSTEM, apt_plan::QEMU_UTILS];
    if missing.iter().any(|p| qemu.contains(&p.as_str())) {
        missing.extend(qemu.map(str::to_owned));
    }
    missing.sort_unstable();
    missing.dedup();
    missing
}

/// Installs the packages of every unmet requirement in one planned apt
/// transaction (nothing removed, downgrades only where set-up chose them),
/// then checks that every tool is there and that the QEMU tools run.
///
/// # Errors
/// When the plan is refused (nothing is changed then), apt fails, or a tool
/// is still missing or broken afterwards (naming it and its package).
pub fn ensure(requirements: &[Requirement]) -> Result<()> {
    let missing = missing_packages(requirements);
    if !missing.is_empty() {
        if !is_root() {
            bail!(
                "missing host packages {}: run `sudo apt-get install {}` (or run as root)",
                missing.join(", "),
                missing.join(" ")
            );
        }
        ensure_apt_lists()?;
        let apt = Apt::default();
        let names: Vec<&str> = missing.iter().map(String::as_str).collect();
        let (request, _simulation, notice) = apt_plan::plan(&apt, &names)?;
        if !notice.is_empty() {
            eprintln!("xtask: {notice}");
        }
        eprintln!("xtask: apt-get install {}", request.describe());
        apt.install(&request)?;
    }
    verify(requirements)
}

/// Checks every requirement after set-up, and that the QEMU tools run and
/// are new enough.
fn verify(requirements: &[Requirement]) -> Result<()> {
    for r in requirements {
        if !r.is_met() {
            bail!(
                "{} is missing after set-up; dpkg says of {}: {}. Reinstall it with \
                 `apt-get install --reinstall {}`",
                r.probe,
                r.package,
                dpkg_state(&r.package),
                r.package
            );
        }
    }
    let needs = |probe: &str| requirements.iter().any(|r| r.probe == probe);
    let system = needs("qemu-system-x86_64")
        .then(|| tool_version("qemu-system-x86_64"))
        .transpose()?;
    let img = needs("qemu-img")
        .then(|| tool_version("qemu-img"))
        .transpose()?;
    if let Some(version) = system {
        if version < MIN_QEMU {
            bail!(
                "qemu-system-x86_64 is QEMU {}.{}; Airlock needs {}.{} or newer \
                 (`-netdev stream`): install a newer {}",
                version.0,
                version.1,
                MIN_QEMU.0,
                MIN_QEMU.1,
                apt_plan::QEMU_SYSTEM
            );
        }
        if let Some(img) = img.filter(|img| img.0 != version.0) {
            eprintln!(
                "xtask: warning: qemu-img is QEMU {}.{} but qemu-system-x86_64 is {}.{}: \
                 install {} and {} of one version",
                img.0,
                img.1,
                version.0,
                version.1,
                apt_plan::QEMU_UTILS,
                apt_plan::QEMU_SYSTEM
            );
        }
    }
    Ok(())
}

/// The oldest QEMU whose argv Airlock builds (`-netdev stream` is 7.2).
const MIN_QEMU: (u32, u32) = (7, 2);

/// Runs `PROGRAM --version` and reads `version X.Y`.
fn tool_version(program: &str) -> Result<(u32, u32)> {
    let out = Command::new(program)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot run {program} --version"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{program} --version failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_qemu_version(&text)
        .with_context(|| format!("cannot read a version from `{program} --version`: {text}"))
}

/// `X.Y` from `... version X.Y.Z ...`.
fn parse_qemu_version(text: &str) -> Option<(u32, u32)> {
    let rest = text.split("version ").nth(1)?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// What dpkg says of `package` (`install ok installed 1:7.2...`, or why not).
fn dpkg_state(package: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Status} ${Version}", package])
        .output()
        .map(|o| {
            let text = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            if text.is_empty() {
                "not installed".to_owned()
            } else {
                text
            }
        })
        .unwrap_or_else(|e| format!("unknown ({e})"))
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

/// Builds the `airlock` binary (release) and returns its path.
///
/// # Errors
/// When cargo fails.
pub fn release_airlock() -> Result<PathBuf> {
    eprintln!("xtask: building the airlock binary (release)");
    run_checked(cargo().args([
        "build",
        "--release",
        "-p",
        "airlock-cli",
        "--bin",
        "airlock",
    ]))?;
    Ok(target_dir().join("release").join("airlock"))
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

/// Finds gvproxy along the search path the `airlock` binary uses
/// (`airlock_gvproxy::SearchPath`: `$AIRLOCK_GVPROXY`, PATH, podman's libexec
/// folders, then `<cache>/bin/gvproxy`).
pub fn find_gvproxy() -> Option<PathBuf> {
    airlock_gvproxy::SearchPath::from_env()
        .candidates()
        .into_iter()
        .find(|p| airlock_sys_util::is_executable(p))
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
    ensure_apt_lists()?;
    if Apt::default().policy("gvproxy")?.candidate.is_some() {
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
    let archive = archive::host_archive()
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
    let dirs = airlock_sys_util::AirlockDirs::from_env()?;
    let work = dirs
        .cache
        .join(format!("tmp-gvproxy-{}", std::process::id()));
    // A leftover of an interrupted run is useless.
    drop(std::fs::remove_dir_all(&work));
    let result = fetch_into(&archive.mirror, &work, &dirs.bin);
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
mod tests {
    #[test]
    fn qemu_versions_are_read_from_either_tool() {
        assert_eq!(
            super::parse_qemu_version(
                "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)"
            ),
            Some((7, 2))
        );
        assert_eq!(
            super::parse_qemu_version("qemu-img version 10.0.2 (Debian 1:10.0.2+ds-2)"),
            Some((10, 0))
        );
        assert_eq!(super::parse_qemu_version("nothing here"), None);
    }

    #[test]
    fn a_missing_qemu_tool_brings_both_qemu_packages() {
        let reqs = vec![super::Requirement::new(
            "/nonexistent/qemu-img-for-test",
            super::apt_plan::QEMU_UTILS,
        )];
        assert_eq!(
            super::missing_packages(&reqs),
            [super::apt_plan::QEMU_SYSTEM, super::apt_plan::QEMU_UTILS]
        );
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
