//! Root disks, one per image (`raw`, `python`, `javascript`,
//! `python-data`): debootstrap (minbase) a tree, trim it, add the `sandbox`
//! user, then ext4 and a compressed read-only qcow2.
//!
//! Two stages, each cached: the trimmed tree (slow: downloads and installs
//! packages) is kept under `trees/` keyed by its package inputs, so an agent
//! change only redoes the fast second stage (agent copy, set-uid and
//! set-gid bits stripped, mkfs, qemu-img).

use super::progress::{mib, Step};
use super::{run_logged, Kind};
use crate::host::archive::Archive;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// One root disk: an image a VM boots (its name is the `image` of the
/// sandbox spec, `crates/airlock/src/images.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootDisk {
    /// bash, coreutils, busybox, the shell tools.
    Raw,
    /// python3 with venv and pip, the shell tools.
    Python,
    /// nodejs and npm, the shell tools.
    Javascript,
    /// python3 and Debian's data stack (numpy, pandas, matplotlib, scipy,
    /// scikit-learn, ...), the shell tools.
    PythonData,
}

/// The tools a person reaches for in a shell, in every root disk.
pub const SHELL_TOOLS: [&str; 16] = [
    "procps",
    "coreutils",
    "findutils",
    "grep",
    "sed",
    "gawk",
    "tar",
    "gzip",
    "xz-utils",
    "unzip",
    "file",
    "jq",
    "less",
    "git",
    "curl",
    "ca-certificates",
];

/// Debian's data stack, in the `python-data` disk (installed with apt in
/// the chroot: debootstrap's resolver ignores `Provides`, which numpy's
/// BLAS alternatives need).
const DATA_STACK: [&str; 16] = [
    "python3-numpy",
    "python3-pandas",
    "python3-matplotlib",
    "python3-scipy",
    "python3-sklearn",
    "python3-pil",
    "python3-seaborn",
    "python3-sympy",
    "python3-statsmodels",
    "python3-openpyxl",
    "python3-xlsxwriter",
    "python3-networkx",
    "python3-bs4",
    "python3-lxml",
    "python3-tabulate",
    "fonts-dejavu-core",
];

/// What the data stack's `Depends` drag in that nothing runs: Debian 12's
/// python3-scipy depends on python3-pythran (a compiler of Python to C++,
/// used to build scipy), which brings g++, the Boost headers and
/// development packages (about 450 MiB of the tree). They are purged
/// after the install with `dpkg --purge --force-depends`: the disk is
/// read-only and apt never runs in it, so the recorded dependencies do
/// not matter, and no module of the stack imports them at run time
/// (checked by `tests/data_image.rs`).
const DATA_BUILD_ONLY: [&str; 33] = [
    "python3-pythran",
    "python3-beniget",
    "python3-gast",
    "libxsimd-dev",
    "libboost1.74-dev",
    "libboost-dev",
    "libopenblas-pthread-dev",
    "libopenblas-dev",
    "liblapack-dev",
    "libblas-dev",
    "g++",
    "g++-12",
    "gcc",
    "gcc-12",
    "cpp",
    "cpp-12",
    "libstdc++-12-dev",
    "libgcc-12-dev",
    "libc6-dev",
    "libc-dev-bin",
    "linux-libc-dev",
    "libcrypt-dev",
    "libnsl-dev",
    "rpcsvc-proto",
    "libpython3.11-dev",
    "libpython3-dev",
    "python3.11-dev",
    "python3-dev",
    "libexpat1-dev",
    "zlib1g-dev",
    "binutils",
    "binutils-x86-64-linux-gnu",
    "binutils-common",
];

/// What the `python-data` driver imports before it reports ready (so a
/// template holds them imported), written to [`PRELOAD_IN_ROOT`].
const DATA_PRELOAD: [&str; 4] = ["numpy", "pandas", "matplotlib", "matplotlib.pyplot"];

/// Where the Python cell driver finds the modules to import at start
/// (`crates/airlock-agent/src/repl/drivers/python.py`, `PRELOAD`).
pub const PRELOAD_IN_ROOT: &str = "etc/airlock/python-preload";

impl RootDisk {
    /// Every root disk, in build order.
    pub const ALL: [RootDisk; 4] = [
        RootDisk::Raw,
        RootDisk::Python,
        RootDisk::Javascript,
        RootDisk::PythonData,
    ];

    /// The image's name (`raw`, `python`, `javascript`, `python-data`).
    pub fn name(self) -> &'static str {
        match self {
            RootDisk::Raw => "raw",
            RootDisk::Python => "python",
            RootDisk::Javascript => "javascript",
            RootDisk::PythonData => "python-data",
        }
    }

    /// The artefact kind of its root disk.
    pub fn kind(self) -> Kind {
        match self {
            RootDisk::Raw => Kind::RootfsRaw,
            RootDisk::Python => Kind::RootfsPython,
            RootDisk::Javascript => Kind::RootfsJavascript,
            RootDisk::PythonData => Kind::RootfsPythonData,
        }
    }

    /// The language of a root disk kind.
    pub fn of_kind(kind: Kind) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.kind() == kind)
    }

    /// Packages added to debootstrap's minbase (their versions are inputs of
    /// the disk's hash): the disk's own, then [`SHELL_TOOLS`].
    pub fn packages(self) -> Vec<&'static str> {
        let own: &[&str] = match self {
            RootDisk::Raw => &["bash", "busybox"],
            RootDisk::Python => &["bash", "python3", "python3-venv", "python3-pip"],
            RootDisk::Javascript => &["bash", "nodejs", "npm"],
            RootDisk::PythonData => &["bash", "python3", "python3-venv"],
        };
        let mut packages: Vec<&str> = own.to_vec();
        for tool in SHELL_TOOLS {
            if !packages.contains(&tool) {
                packages.push(tool);
            }
        }
        if self == RootDisk::PythonData {
            packages.extend(DATA_STACK);
        }
        packages
    }

    /// Packages of [`RootDisk::packages`] installed after debootstrap with
    /// `apt-get` in the chroot: debootstrap's resolver ignores `Provides`,
    /// and npm's dependencies need it (node-has, node-color-support, ...),
    /// as do numpy's BLAS and LAPACK alternatives.
    pub fn apt_packages(self) -> &'static [&'static str] {
        match self {
            RootDisk::Javascript => &["npm"],
            RootDisk::PythonData => &DATA_STACK,
            RootDisk::Raw | RootDisk::Python => &[],
        }
    }

    /// Packages passed to debootstrap's `--include`.
    pub fn debootstrap_packages(self) -> Vec<&'static str> {
        let later = self.apt_packages();
        self.packages()
            .into_iter()
            .filter(|p| !later.contains(p))
            .collect()
    }

    /// Packages purged after the install (see [`DATA_BUILD_ONLY`]); an
    /// input of the tree's hash.
    pub fn purged_packages(self) -> &'static [&'static str] {
        match self {
            RootDisk::PythonData => &DATA_BUILD_ONLY,
            RootDisk::Raw | RootDisk::Python | RootDisk::Javascript => &[],
        }
    }

    /// Modules the Python cell driver imports before it is ready (written
    /// to [`PRELOAD_IN_ROOT`]; an input of the tree's hash).
    pub fn preload(self) -> &'static [&'static str] {
        match self {
            RootDisk::PythonData => &DATA_PRELOAD,
            RootDisk::Raw | RootDisk::Python | RootDisk::Javascript => &[],
        }
    }

    /// Whether the test suites Python packages ship (`*/tests/` under
    /// `dist-packages`) are removed: tens of MiB that no program imports.
    pub fn trims_python_tests(self) -> bool {
        self == RootDisk::PythonData
    }

    /// The largest the compressed qcow2 may be, in MiB; the build fails above.
    pub fn budget_mib(self) -> u64 {
        match self {
            RootDisk::Raw => 100,
            RootDisk::Python => 150,
            RootDisk::Javascript => 200,
            RootDisk::PythonData => 320,
        }
    }
}

/// Numeric id of the sandbox user and group.
pub const SANDBOX_ID: u32 = airlock_protocol::abi::SANDBOX_UID;
/// Where the agent goes in every root disk: the guest ABI's path, relative
/// to the tree.
fn agent_in_root() -> &'static str {
    airlock_protocol::abi::AGENT_PATH.trim_start_matches('/')
}

/// The passwd, group, shadow and gshadow lines of the `sandbox` user.
const SANDBOX_ENTRIES: [(&str, &str); 4] = [
    (
        "etc/passwd",
        "sandbox:x:1000:1000:Airlock sandbox:/home/sandbox:/bin/bash",
    ),
    ("etc/group", "sandbox:x:1000:"),
    ("etc/shadow", "sandbox:!::0:99999:7:::"),
    ("etc/gshadow", "sandbox:!::"),
];

/// `text` (a passwd-style file) with `line` appended, unless an entry with
/// the same name exists already. Fails when another entry holds the same
/// numeric id (third field), which would alias the sandbox user.
pub fn add_entry(text: &str, line: &str) -> Result<String> {
    let mut fields = line.split(':');
    let name = fields.next().unwrap_or_default();
    let id = fields.nth(1).filter(|id| id.parse::<u32>().is_ok());
    for existing in text.lines() {
        let mut ef = existing.split(':');
        let ename = ef.next().unwrap_or_default();
        if ename == name {
            return Ok(text.to_owned());
        }
        if let (Some(id), Some(eid)) = (id, ef.nth(1)) {
            if eid == id {
                bail!("id {id} is already taken by {ename:?}: cannot add the sandbox user");
            }
        }
    }
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(line);
    out.push('\n');
    Ok(out)
}

/// Paths under the tree whose content is removed by [`trim`]: docs (but
/// copyright files), man pages, locales, apt lists and caches, logs.
const TRIMMED_DIRS: [&str; 9] = [
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
    "usr/share/linda",
    "var/lib/apt/lists",
    "var/cache/apt",
    "var/cache/debconf",
    "var/log",
];

/// Stage 1: debootstraps, trims and configures the tree of `lang` into
/// `tree` (which must not exist). `debs` caches downloaded packages.
pub fn build_tree(
    lang: RootDisk,
    archive: &Archive,
    debs: &Path,
    tree: &Path,
    log: &Path,
) -> Result<()> {
    std::fs::create_dir_all(debs).with_context(|| format!("create {}", debs.display()))?;
    let include = lang.debootstrap_packages().join(",");
    let step = Step::start(format!(
        "rootfs-{}: debootstrap --variant=minbase {} (+{include})",
        lang.name(),
        archive.suite
    ));
    run_logged(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg("--arch=amd64")
            .arg(format!("--include={include}"))
            .arg(format!("--cache-dir={}", debs.display()))
            .arg(&archive.suite)
            .arg(tree)
            .arg(&archive.mirror),
        log,
    )?;
    step.done("");
    if !lang.apt_packages().is_empty() {
        let packages = lang.apt_packages();
        let step = Step::start(format!(
            "rootfs-{}: apt-get install {}",
            lang.name(),
            packages.join(" ")
        ));
        run_logged(chroot_apt(tree).args(["update", "-q"]), log)?;
        run_logged(
            chroot_apt(tree)
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(packages),
            log,
        )?;
        run_logged(chroot_apt(tree).arg("clean"), log)?;
        step.done("");
    }
    if !lang.purged_packages().is_empty() {
        let step = Step::start(format!(
            "rootfs-{}: dpkg --purge {} build-only packages",
            lang.name(),
            lang.purged_packages().len()
        ));
        // Not installed ones are only warned about.
        run_logged(
            Command::new("chroot")
                .arg(tree)
                .args(["dpkg", "--purge", "--force-depends"])
                .args(lang.purged_packages())
                .env("DEBIAN_FRONTEND", "noninteractive")
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("LC_ALL", "C"),
            log,
        )?;
        step.done("");
    }
    let step = Step::start(format!("rootfs-{}: trim and configure", lang.name()));
    trim(tree)?;
    if lang.trims_python_tests() {
        trim_python_tests(tree)?;
    }
    configure(tree)?;
    write_preload(tree, lang.preload())?;
    step.done(&format!("tree {}", mib(tree_bytes(tree))));
    Ok(())
}

/// `apt-get` inside the tree (non-interactive).
fn chroot_apt(tree: &Path) -> Command {
    let mut cmd = Command::new("chroot");
    cmd.arg(tree)
        .arg("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C");
    cmd
}

/// Removes what a sandbox never reads (see [`TRIMMED_DIRS`]) and every doc
/// file but the copyright notices.
fn trim(tree: &Path) -> Result<()> {
    for dir in TRIMMED_DIRS {
        empty_dir(&tree.join(dir), &|_| false)?;
    }
    empty_dir(&tree.join("usr/share/doc"), &|name| name == "copyright")?;
    for file in [
        "var/lib/dpkg/status-old",
        "var/lib/dpkg/diversions-old",
        "var/cache/ldconfig/aux-cache",
    ] {
        let path = tree.join(file);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// The directories of Python's system packages.
const PYTHON_PACKAGE_DIRS: [&str; 2] = ["usr/lib/python3/dist-packages", "usr/lib/python3.11"];

/// Removes the test suites of Python packages: every directory named
/// `tests` (or `testing/tests`) below a package of [`PYTHON_PACKAGE_DIRS`],
/// not the top-level packages themselves (`numpy.testing`,
/// `pandas._testing` are kept: code imports them).
fn trim_python_tests(tree: &Path) -> Result<()> {
    fn walk(dir: &Path, depth: usize) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir {
                continue;
            }
            if depth > 0 && entry.file_name() == "tests" {
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("remove {}", path.display()))?;
            } else {
                walk(&path, depth + 1)?;
            }
        }
        Ok(())
    }
    for dir in PYTHON_PACKAGE_DIRS {
        walk(&tree.join(dir), 0)?;
    }
    Ok(())
}

/// Writes the modules the Python cell driver imports at start (nothing
/// when there are none).
fn write_preload(tree: &Path, modules: &[&str]) -> Result<()> {
    if modules.is_empty() {
        return Ok(());
    }
    let path = tree.join(PRELOAD_IN_ROOT);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let mut text = modules.join("\n");
    text.push('\n');
    std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
}

/// Removes everything under `dir` except files for which `keep` says so
/// (and the directories holding them).
fn empty_dir(dir: &Path, keep: &dyn Fn(&str) -> bool) -> Result<bool> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(false);
    };
    let mut kept_any = false;
    for entry in entries.flatten() {
        let path = entry.path();
        let file_type = entry
            .file_type()
            .with_context(|| format!("stat {}", path.display()))?;
        if file_type.is_dir() {
            if empty_dir(&path, keep)? {
                kept_any = true;
            } else {
                std::fs::remove_dir(&path).with_context(|| format!("remove {}", path.display()))?;
            }
        } else if keep(&entry.file_name().to_string_lossy()) {
            kept_any = true;
        } else {
            std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
        }
    }
    Ok(kept_any)
}

/// The guest's `/etc/resolv.conf`: gvproxy's gateway answers DNS. Without a
/// network there is no route to it, so lookups fail at once.
const RESOLV_CONF: &str = "nameserver 192.168.127.1\n";

/// The guest's `/etc/hosts`: IPv4 only, like the guest kernel (no `::1`
/// line, which would make clients try an address family that does not exist).
const HOSTS: &str = "127.0.0.1\tlocalhost\n127.0.1.1\tairlock\n";

/// The sandbox user, mount points, host name, hosts and resolv.conf.
fn configure(tree: &Path) -> Result<()> {
    for (file, line) in SANDBOX_ENTRIES {
        let path = tree.join(file);
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let updated = add_entry(&text, line).with_context(|| format!("edit {}", path.display()))?;
        std::fs::write(&path, updated).with_context(|| format!("write {}", path.display()))?;
    }
    let home = tree.join("home/sandbox");
    std::fs::create_dir_all(&home).with_context(|| format!("create {}", home.display()))?;
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
    std::os::unix::fs::chown(&home, Some(SANDBOX_ID), Some(SANDBOX_ID))
        .with_context(|| format!("chown {}", home.display()))?;
    for (dir, mode) in [("tmp", 0o1777), ("run", 0o755), ("usr/local/bin", 0o755)] {
        let path = tree.join(dir);
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
    }
    std::fs::write(tree.join("etc/hostname"), "airlock\n")?;
    std::fs::write(tree.join("etc/hosts"), HOSTS)?;
    // debootstrap copies the host's resolv.conf: never ship it. Remove
    // first: it may be a link, which `write` would follow.
    let resolv = tree.join("etc/resolv.conf");
    if resolv.symlink_metadata().is_ok() {
        std::fs::remove_file(&resolv).with_context(|| format!("remove {}", resolv.display()))?;
    }
    std::fs::write(&resolv, RESOLV_CONF).with_context(|| format!("write {}", resolv.display()))?;
    Ok(())
}

/// What stage 2 does to a tree beyond copying the agent, as an input of the
/// root disks' hash: changing it rebuilds the disks (not the trees, nor the
/// kernel, as a [`super::inputs::BUILD_VERSION`] bump would).
pub const IMAGE_RECIPE: &str = "strip-setid-1";

/// Clears the set-uid and set-gid bits of every file and directory under
/// `tree` (symlinks are left alone: `chmod` would follow them). Returns the
/// paths changed, relative to `tree`, sorted.
///
/// No program of a root disk may raise privileges: the disk is mounted
/// `nosuid` and user code runs with `no_new_privs`, and without the bits a
/// mistake in either still grants nothing.
pub fn strip_setid(tree: &Path) -> Result<Vec<std::path::PathBuf>> {
    const SETID: u32 = 0o6000;
    fn walk(tree: &Path, dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
        let entries = std::fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("read {}", dir.display()))?
                .path();
            let meta = path
                .symlink_metadata()
                .with_context(|| format!("stat {}", path.display()))?;
            if meta.file_type().is_symlink() {
                continue;
            }
            let mode = meta.permissions().mode();
            if mode & SETID != 0 {
                std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(mode & 0o7777 & !SETID),
                )
                .with_context(|| format!("chmod {}", path.display()))?;
                out.push(path.strip_prefix(tree).unwrap_or(&path).to_owned());
            }
            if meta.is_dir() {
                walk(tree, &path, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(tree, tree, &mut out)?;
    out.sort();
    Ok(out)
}

/// Stage 2: puts the agent (if built) in `tree`, strips every set-uid and
/// set-gid bit ([`strip_setid`]), then makes `out` (qcow2) through an ext4
/// image in `scratch`. `uuid` makes mkfs reproducible.
pub fn build_image(
    lang: RootDisk,
    tree: &Path,
    agent: Option<&Path>,
    scratch: &Path,
    uuid: &str,
    out: &Path,
) -> Result<u64> {
    let agent_dst = tree.join(agent_in_root());
    match agent {
        Some(agent) => {
            std::fs::copy(agent, &agent_dst)
                .with_context(|| format!("copy {} to {}", agent.display(), agent_dst.display()))?;
            std::fs::set_permissions(&agent_dst, std::fs::Permissions::from_mode(0o755))?;
        }
        None => {
            eprintln!(
                "images: rootfs-{}: no airlock-agent crate yet: the disk has no agent",
                lang.name()
            );
            if agent_dst.exists() {
                std::fs::remove_file(&agent_dst)?;
            }
        }
    }
    let stripped = strip_setid(tree)?;
    if !stripped.is_empty() {
        eprintln!(
            "images: rootfs-{}: cleared set-uid/set-gid bits of {} files ({})",
            lang.name(),
            stripped.len(),
            stripped
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (bytes, inodes) = tree_usage(tree);
    let size_mib = ext4_size_mib(bytes, inodes);
    let ext4 = scratch.join(format!("rootfs-{}.ext4", lang.name()));
    let log = scratch.join(format!("rootfs-{}-image.log", lang.name()));
    let step = Step::start(format!(
        "rootfs-{}: mkfs.ext4 ({size_mib} MiB, {inodes} files)",
        lang.name()
    ));
    run_logged(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-m", "0", "-O", "^has_journal"])
            .args(["-L", &format!("airlock-{}", lang.name())])
            .args([
                "-U",
                uuid,
                "-E",
                &format!("hash_seed={uuid},root_owner=0:0"),
            ])
            .args(["-N", &(inodes + 1024).to_string()])
            .arg("-d")
            .arg(tree)
            .arg(&ext4)
            .arg(format!("{size_mib}M"))
            .env("E2FSPROGS_FAKE_TIME", "1"),
        &log,
    )?;
    step.done("");
    let step = Step::start(format!(
        "rootfs-{}: qemu-img convert -c (compressed qcow2)",
        lang.name()
    ));
    run_logged(
        Command::new("qemu-img")
            .args(["convert", "-c", "-O", "qcow2"])
            .arg(&ext4)
            .arg(out),
        &log,
    )?;
    std::fs::remove_file(&ext4).with_context(|| format!("remove {}", ext4.display()))?;
    let size = std::fs::metadata(out)
        .with_context(|| format!("stat {}", out.display()))?
        .len();
    step.done(&mib(size));
    if size > lang.budget_mib() * 1024 * 1024 {
        bail!(
            "rootfs-{} is {} which is over its budget of {} MiB: trim more in xtask/src/images/rootfs.rs",
            lang.name(),
            mib(size),
            lang.budget_mib()
        );
    }
    Ok(size)
}

/// ext4 size for a tree: its blocks plus 10 % and 16 MiB for metadata, in
/// whole MiB. `bytes` is already rounded to blocks.
pub fn ext4_size_mib(bytes: u64, inodes: u64) -> u64 {
    let inode_table = inodes * 256;
    let total = bytes + bytes / 10 + inode_table + 16 * 1024 * 1024;
    total.div_ceil(1024 * 1024)
}

/// Bytes (rounded up to 4 KiB blocks) and entries of a tree.
fn tree_usage(tree: &Path) -> (u64, u64) {
    fn walk(dir: &Path, acc: &mut (u64, u64)) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            acc.1 += 1;
            acc.0 += meta.len().div_ceil(4096).max(1) * 4096;
            if meta.is_dir() {
                walk(&entry.path(), acc);
            }
        }
    }
    let mut acc = (0, 0);
    walk(tree, &mut acc);
    acc
}

fn tree_bytes(tree: &Path) -> u64 {
    tree_usage(tree).0
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

    #[test]
    fn adds_the_sandbox_user() {
        let out = add_entry(PASSWD, SANDBOX_ENTRIES[0].1).unwrap();
        assert!(out.starts_with(PASSWD));
        assert!(out.ends_with("sandbox:x:1000:1000:Airlock sandbox:/home/sandbox:/bin/bash\n"));
    }

    #[test]
    fn adding_twice_changes_nothing() {
        let once = add_entry(PASSWD, SANDBOX_ENTRIES[0].1).unwrap();
        assert_eq!(add_entry(&once, SANDBOX_ENTRIES[0].1).unwrap(), once);
    }

    #[test]
    fn refuses_a_taken_id() {
        let text = "debian:x:1000:1000::/home/debian:/bin/sh\n";
        let err = add_entry(text, SANDBOX_ENTRIES[0].1).unwrap_err();
        assert!(err.to_string().contains("\"debian\""), "{err}");
    }

    #[test]
    fn shadow_lines_have_no_id_and_append_cleanly() {
        let out = add_entry("root:*:19000:0:99999:7:::", SANDBOX_ENTRIES[2].1).unwrap();
        assert_eq!(out, "root:*:19000:0:99999:7:::\nsandbox:!::0:99999:7:::\n");
    }

    #[test]
    fn ext4_size_leaves_room() {
        let bytes = 170 * 1024 * 1024;
        let size = ext4_size_mib(bytes, 10_000);
        assert!(size * 1024 * 1024 > bytes + bytes / 10);
        assert!(size < 250);
        assert_eq!(ext4_size_mib(0, 0), 16);
    }

    #[test]
    fn every_disk_has_its_own_kind_and_packages() {
        for lang in RootDisk::ALL {
            assert_eq!(RootDisk::of_kind(lang.kind()), Some(lang));
            assert!(lang.packages().contains(&"bash"));
        }
        assert!(RootDisk::Python.packages().contains(&"python3-pip"));
        assert_eq!(RootDisk::Python.budget_mib(), 150);
        let js = RootDisk::Javascript.debootstrap_packages();
        assert_eq!(js[..2], ["bash", "nodejs"]);
        assert!(!js.contains(&"npm"));
    }

    #[test]
    fn every_disk_has_the_shell_tools_once() {
        for disk in RootDisk::ALL {
            let packages = disk.packages();
            for tool in SHELL_TOOLS {
                let n = packages.iter().filter(|p| **p == tool).count();
                assert_eq!(n, 1, "{tool} in {}", disk.name());
                assert!(disk.debootstrap_packages().contains(&tool));
            }
        }
    }

    #[test]
    fn the_data_disk_installs_the_stack_with_apt_and_preloads_it() {
        let disk = RootDisk::PythonData;
        assert_eq!(disk.name(), "python-data");
        for package in ["python3-pandas", "python3-matplotlib", "fonts-dejavu-core"] {
            assert!(disk.packages().contains(&package));
            assert!(disk.apt_packages().contains(&package));
            assert!(!disk.debootstrap_packages().contains(&package));
        }
        assert!(disk.debootstrap_packages().contains(&"python3"));
        assert_eq!(disk.preload()[..3], ["numpy", "pandas", "matplotlib"]);
        assert!(RootDisk::Python.preload().is_empty());
        assert!(disk.trims_python_tests() && !RootDisk::Python.trims_python_tests());
        for purged in disk.purged_packages() {
            assert!(!disk.packages().contains(purged), "{purged} is asked for");
        }
        assert!(disk.purged_packages().contains(&"g++-12"));
        assert!(RootDisk::Python.purged_packages().is_empty());
    }

    #[test]
    fn python_test_suites_are_removed_but_not_testing_packages() {
        let root = tempfile_dir("pytests");
        let dist = root.join("usr/lib/python3/dist-packages");
        for dir in [
            "numpy/tests",
            "numpy/core/tests",
            "numpy/testing",
            "pandas/_testing",
            "tests",
        ] {
            std::fs::create_dir_all(dist.join(dir)).unwrap();
            std::fs::write(dist.join(dir).join("x.py"), "x").unwrap();
        }
        trim_python_tests(&root).unwrap();
        let exists = |d: &str| dist.join(d).exists();
        let kept = ["numpy/testing", "pandas/_testing", "tests", "numpy/core"].map(exists);
        let gone = ["numpy/tests", "numpy/core/tests"].map(exists);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(kept, [true; 4]);
        assert_eq!(gone, [false; 2]);
    }

    #[test]
    fn the_python_driver_reads_the_preload_file_written_here() {
        let driver = include_str!("../../../crates/airlock-agent/src/repl/drivers/python.py");
        let line = format!("PRELOAD = \"/{PRELOAD_IN_ROOT}\"");
        assert!(driver.lines().any(|l| l == line), "{line} not in python.py");
    }

    #[test]
    fn the_preload_file_lists_one_module_a_line() {
        let root = tempfile_dir("preload");
        write_preload(&root, RootDisk::Python.preload()).unwrap();
        let none = root.join(PRELOAD_IN_ROOT).exists();
        write_preload(&root, RootDisk::PythonData.preload()).unwrap();
        let text = std::fs::read_to_string(root.join(PRELOAD_IN_ROOT)).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        assert!(!none);
        assert_eq!(text, "numpy\npandas\nmatplotlib\nmatplotlib.pyplot\n");
    }

    #[test]
    fn strip_setid_clears_only_the_setid_bits_and_skips_symlinks() {
        // Arrange: set-uid, set-gid, sticky and plain files, a set-gid dir
        // holding a set-uid file, and a symlink to a set-uid file.
        let root = tempfile_dir("strip");
        let modes = [
            ("su", 0o4755),
            ("sg", 0o2755),
            ("both", 0o6711),
            ("plain", 0o755),
        ];
        for (name, mode) in modes {
            std::fs::write(root.join(name), "x").unwrap();
            std::fs::set_permissions(root.join(name), std::fs::Permissions::from_mode(mode))
                .unwrap();
        }
        std::fs::create_dir(root.join("mail")).unwrap();
        std::fs::write(root.join("mail/inner"), "x").unwrap();
        std::fs::set_permissions(
            root.join("mail/inner"),
            std::fs::Permissions::from_mode(0o4700),
        )
        .unwrap();
        std::fs::set_permissions(root.join("mail"), std::fs::Permissions::from_mode(0o3775))
            .unwrap();
        std::os::unix::fs::symlink("su", root.join("link")).unwrap();

        // Act
        let stripped = strip_setid(&root).unwrap();
        let again = strip_setid(&root).unwrap();
        let mode = |p: &str| {
            std::fs::symlink_metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        let modes_after: Vec<u32> = ["su", "sg", "both", "plain", "mail", "mail/inner"]
            .iter()
            .map(|p| mode(p))
            .collect();
        std::fs::remove_dir_all(&root).unwrap();

        // Assert: the bits are gone, the rest of each mode kept (sticky too).
        let names: Vec<String> = stripped.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(names, ["both", "mail", "mail/inner", "sg", "su"]);
        assert_eq!(modes_after, [0o755, 0o755, 0o711, 0o755, 0o1775, 0o700]);
        assert!(again.is_empty());
    }

    fn tempfile_dir(tag: &str) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("xtask-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        root
    }

    #[test]
    fn empty_dir_keeps_only_what_is_asked() {
        let root = std::env::temp_dir().join(format!("xtask-trim-{}", std::process::id()));
        std::fs::create_dir_all(root.join("doc/a")).unwrap();
        std::fs::create_dir_all(root.join("doc/b")).unwrap();
        std::fs::write(root.join("doc/a/copyright"), "c").unwrap();
        std::fs::write(root.join("doc/a/changelog.gz"), "x").unwrap();
        std::fs::write(root.join("doc/b/README"), "x").unwrap();
        empty_dir(&root.join("doc"), &|n| n == "copyright").unwrap();
        let a: Vec<_> = std::fs::read_dir(root.join("doc/a"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        let b_exists = root.join("doc/b").exists();
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(a, ["copyright"]);
        assert!(!b_exists);
    }
}
