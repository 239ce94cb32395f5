//! `cargo xtask images`: the guest kernel, the initramfs and one root disk
//! per language, built from Debian packages into a content-addressed cache.
//!
//! Every artefact is named by the sha256 of its inputs (see [`inputs`]), so
//! a run rebuilds only what changed and a run with nothing to do takes a
//! second or two. Artefacts are built in `<images>/tmp/` and renamed into
//! place when complete: an interrupted build never leaves a half-written
//! file under a final name. `manifest.json` lists the current artefacts;
//! other crates and tasks read it (or call [`ensure`]).
//!
//! Layout of the images dir (`~/.cache/airlock/images`, or `$AIRLOCK_IMAGES`):
//! ```text
//! manifest.json               current artefacts (file, hash, size, build time, inputs)
//! kernel-<hash>.bzImage        initramfs-<hash>.cpio        rootfs-<image>-<hash>.qcow2
//! trees/<image>-<hash>/       debootstrapped trees (stage 1 of the root disks)
//! work/                       kernel sources and objects (incremental kernel builds)
//! debs/                       debootstrap's package cache
//! apt-versions.json           cached `apt-cache madison` answers
//! tmp/                        builds in progress (emptied at every run)
//! ```
//!
//! A full run (no `--only`) then builds the default memory templates
//! (python, javascript, raw and python-data at the default shape) into the
//! templates dir, skipping those that are current ([`templates`]).

pub(crate) mod apt;
mod guest_bins;
pub mod initramfs;
mod inputs;
mod kernel;
mod manifest;
mod progress;
mod rootfs;
pub mod templates;

pub use manifest::{Artefact, Kind, Manifest};

use crate::host;
use crate::host::archive::{host_archive, Archive};
use crate::host::kernel_source::KernelSource;
use airlock_sys_util::{sha256_file_hex, sha256_hex};
use anyhow::{bail, Context, Result};
use inputs::Inputs;
use nix::fcntl::{Flock, FlockArg};
use progress::{mib, Step};
use rootfs::RootDisk;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Options of `cargo xtask images`.
#[derive(clap::Args, Debug, Default)]
pub struct ImagesArgs {
    /// Rebuild the selected artefacts even when they are current.
    #[arg(long)]
    pub force: bool,
    /// Build only these artefacts (repeat or comma-separate); default: all.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Kind>,
}

/// The workspace the images are built from.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// Its root directory.
    pub root: PathBuf,
}

/// Makes sure every artefact is built and current; a quick no-op when it is.
/// Other tasks (`test`, `demo`) call it first.
pub fn ensure() -> Result<Manifest> {
    run(&ImagesArgs::default())
}

/// The images dir: `$AIRLOCK_IMAGES`, else `<cache>/images`, resolved by
/// [`airlock_sys_util::dirs`] exactly as the `airlock` binary does.
pub fn images_dir() -> Result<PathBuf> {
    Ok(airlock_sys_util::AirlockDirs::from_env()?.images)
}

/// Builds what is missing or stale, writes the manifest, prunes old
/// artefacts, and returns the manifest.
///
/// Three tracks run at once, because they wait on different things: the
/// kernel (CPU: `make -j2`), the debootstrapped trees of the root disks
/// (network and disk), and on this thread the guest binaries, the initramfs
/// and then the root disk images (which wait for their trees). The kernel
/// and the trees need no guest binary, so they start first. At the end a
/// table says where the time went.
pub fn run(args: &ImagesArgs) -> Result<Manifest> {
    host::ensure_apt_lists()?;
    let kernel_source = KernelSource::find()?;
    host::ensure(&host::image_requirements(&kernel_source))?;
    // The build's own time, without host set-up (which demo and test do
    // before, for everything at once).
    let started = Instant::now();
    progress::reset_timeline();
    let dir = images_dir()?;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("create the images dir {}", dir.display()))?;
    let _lock = lock(&dir)?;
    let scratch = dir.join("tmp");
    reset_dir(&scratch)?;

    let ws = Workspace {
        root: host::workspace_root(),
    };
    let selected: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| args.only.is_empty() || args.only.contains(k))
        .collect();
    let planner = Planner {
        ws: &ws,
        dir: &dir,
        archive: std::sync::OnceLock::new(),
        kernel_source,
    };
    let mut manifest = Manifest::load(&dir);

    // Plans that need no guest binary: the kernel and the trees.
    let kernel_plan = if selected.contains(&Kind::Kernel) {
        let plan = planner.plan_kernel()?;
        triage(plan, &mut manifest, &dir, args.force)
    } else {
        None
    };
    let mut trees_to_build = Vec::new();
    for kind in &selected {
        if let Some(lang) = RootDisk::of_kind(*kind) {
            let (tree_hash, _) = planner.plan_tree(lang)?;
            if planner.tree_wanted_ahead(lang, &tree_hash, &manifest, args.force) {
                trees_to_build.push((lang, tree_hash));
            }
        }
    }
    let trees_ahead: Vec<RootDisk> = trees_to_build.iter().map(|(l, _)| *l).collect();
    if !trees_to_build.is_empty() && !host::is_root() {
        bail!(
            "building root disks needs root (debootstrap, chroot, device nodes): \
             run `sudo -E cargo xtask images` (or as root)"
        );
    }
    manifest.save()?;

    let planner = &planner;
    let scratch = &scratch;
    let built = std::thread::scope(|scope| -> Result<Manifest> {
        let kernel_track = kernel_plan.map(|plan| {
            scope.spawn(move || -> Result<(Plan, String, u64, f64)> {
                let (file, size, seconds) = planner.build(&plan, None, scratch)?;
                Ok((plan, file, size, seconds))
            })
        });
        // The trees are made one after another (they share debootstrap's
        // package cache); each is announced as soon as it is ready, so its
        // root disk image is made while the next tree is debootstrapped.
        let (tree_ready_tx, tree_ready) = std::sync::mpsc::channel::<RootDisk>();
        let mut tree_track = (!trees_to_build.is_empty()).then(|| {
            scope.spawn(move || -> Result<()> {
                for (lang, tree_hash) in &trees_to_build {
                    planner.ensure_tree(*lang, tree_hash, scratch)?;
                    // The receiver may have stopped on an error of its own.
                    let _ = tree_ready_tx.send(*lang);
                }
                Ok(())
            })
        });
        let mut pending: Vec<RootDisk> = trees_ahead.clone();

        // This thread: guest binaries, then what depends on them.
        let bins_result = guest_bins::build(&ws);
        let main_result = bins_result.and_then(|bins| {
            let mut todo = Vec::new();
            for kind in selected.iter().filter(|k| **k != Kind::Kernel) {
                let plan = planner.plan_with_bins(*kind, &bins)?;
                todo.extend(triage(plan, &mut manifest, &dir, args.force));
            }
            if todo.iter().any(|p| p.tree.is_some()) && !host::is_root() {
                bail!(
                    "building root disks needs root (debootstrap, chroot, device nodes): \
                     run `sudo -E cargo xtask images` (or as root)"
                );
            }
            manifest.save()?;
            // The initramfs first: it needs no tree; then the root disks in
            // the order their trees are made.
            todo.sort_by_key(|p| p.tree.is_some());
            for plan in &todo {
                if let Some(lang) = RootDisk::of_kind(plan.kind) {
                    while pending.contains(&lang) {
                        match tree_ready.recv() {
                            Ok(ready) => pending.retain(|l| *l != ready),
                            // The tree track ended early: its error is
                            // reported when it is joined.
                            Err(_) => {
                                return join_track(tree_track.take(), "root disk trees").and_then(
                                    |()| bail!("the tree of rootfs-{} was not made", lang.name()),
                                )
                            }
                        }
                    }
                }
                let (file, size, seconds) = planner.build(plan, Some(&bins), scratch)?;
                manifest.artefacts.insert(
                    plan.kind.key().to_owned(),
                    plan.artefact(file, size, seconds),
                );
                manifest.save()?;
            }
            Ok(())
        });
        // Every track ends before the scope does; report the first failure.
        let trees_result = match tree_track {
            Some(handle) => join_track(Some(handle), "root disk trees"),
            None => Ok(()),
        };
        let kernel_result = match kernel_track {
            Some(handle) => match handle.join() {
                Ok(Ok((plan, file, size, seconds))) => {
                    manifest.artefacts.insert(
                        plan.kind.key().to_owned(),
                        plan.artefact(file, size, seconds),
                    );
                    manifest.save()
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(anyhow::anyhow!("the kernel build thread panicked")),
            },
            None => Ok(()),
        };
        main_result?;
        trees_result?;
        kernel_result?;
        Ok(manifest)
    })?;
    let manifest = built;
    prune(&manifest, &dir, args.only.is_empty().then_some(planner))?;
    reset_dir(scratch)?;
    for kind in Kind::ALL {
        if let (Some(a), Some(path)) = (manifest.get(kind), manifest.path(kind)) {
            eprintln!(
                "images: {:<18} {:>10}  {}",
                kind.key(),
                mib(a.size_bytes),
                path.display()
            );
        }
    }
    progress::print_timeline(started.elapsed());
    if args.only.is_empty() {
        // The images are current: the default memory templates of them.
        templates::ensure_default(&dir)?;
    }
    eprintln!(
        "images: done in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(manifest)
}

/// `Some(plan)` when it must be built; `None` when the manifest has it
/// current, or its file is on disk already (adopted into the manifest).
fn triage(plan: Plan, manifest: &mut Manifest, dir: &Path, force: bool) -> Option<Plan> {
    let file = plan.kind.file_name(&plan.hash);
    if !force && manifest.is_current(plan.kind, &plan.hash) {
        eprintln!("images: {} is current ({file})", plan.kind.key());
        return None;
    }
    if let (false, Ok(meta)) = (force, std::fs::metadata(dir.join(&file))) {
        eprintln!(
            "images: {} found on disk, adopted ({file})",
            plan.kind.key()
        );
        manifest.artefacts.insert(
            plan.kind.key().to_owned(),
            plan.artefact(file, meta.len(), 0.0),
        );
        return None;
    }
    Some(plan)
}

/// Waits for a build track, turning a panic into an error.
fn join_track(
    handle: Option<std::thread::ScopedJoinHandle<'_, Result<()>>>,
    what: &str,
) -> Result<()> {
    match handle.map(std::thread::ScopedJoinHandle::join) {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(_)) => Err(anyhow::anyhow!("the {what} build thread panicked")),
    }
}

/// One artefact to check or build.
struct Plan {
    kind: Kind,
    inputs: Inputs,
    hash: String,
    /// For root disks: the stage-1 tree (hash, inputs).
    tree: Option<(String, Inputs)>,
}

impl Plan {
    fn new(kind: Kind, inputs: Inputs, tree: Option<(String, Inputs)>) -> Self {
        let hash = inputs.hash();
        Self {
            kind,
            inputs,
            hash,
            tree,
        }
    }

    fn artefact(&self, file: String, size_bytes: u64, build_seconds: f64) -> Artefact {
        Artefact {
            file,
            hash: self.hash.clone(),
            size_bytes,
            build_seconds: (build_seconds * 10.0).round() / 10.0,
            inputs: self.inputs.entries().clone(),
        }
    }
}

/// Computes inputs and runs builds.
struct Planner<'a> {
    ws: &'a Workspace,
    dir: &'a Path,
    /// The host's Debian archive, read on first need.
    archive: std::sync::OnceLock<Archive>,
    kernel_source: KernelSource,
}

impl Planner<'_> {
    fn archive(&self) -> Result<Archive> {
        if let Some(a) = self.archive.get() {
            return Ok(a.clone());
        }
        let archive = host_archive()?;
        Ok(self.archive.get_or_init(|| archive).clone())
    }

    /// The kernel's plan (its inputs need no guest binary).
    fn plan_kernel(&self) -> Result<Plan> {
        let mut inputs = Inputs::new(Kind::Kernel.key());
        let fragment = kernel::read_fragment(self.ws)?;
        inputs
            .add("fragment-sha256", sha256_hex(fragment.as_bytes()))
            .add(
                self.kernel_source.package.as_str(),
                apt::installed_version(&self.kernel_source.package)?,
            )
            .add("gcc", kernel::compiler_version()?);
        Ok(Plan::new(Kind::Kernel, inputs, None))
    }

    /// The stage-1 tree of `lang`: its hash and inputs (mirror, suite and
    /// the versions of its packages).
    fn plan_tree(&self, lang: RootDisk) -> Result<(String, Inputs)> {
        let archive = self.archive()?;
        let versions = apt::package_versions(
            &lang.packages(),
            &archive,
            &self.dir.join("apt-versions.json"),
        )?;
        let mut tree_inputs = Inputs::new(&format!("tree-{}", lang.name()));
        tree_inputs
            .add("mirror", archive.mirror.as_str())
            .add("suite", archive.suite.as_str());
        for (package, version) in &versions {
            tree_inputs.add(format!("package {package}"), version.as_str());
        }
        // What only some trees do: absent from the others' inputs, so their
        // hashes do not move.
        if !lang.preload().is_empty() {
            tree_inputs.add("python-preload", lang.preload().join(","));
        }
        if lang.trims_python_tests() {
            tree_inputs.add("trim", "python-tests");
        }
        if !lang.purged_packages().is_empty() {
            tree_inputs.add("purged", lang.purged_packages().join(","));
        }
        Ok((tree_inputs.hash(), tree_inputs))
    }

    /// Whether to debootstrap `lang`'s tree before the guest binaries are
    /// known: when it is absent and the current root disk (if any) was made
    /// from another tree. A tree wanted only because the agent changed is
    /// made on demand.
    fn tree_wanted_ahead(
        &self,
        lang: RootDisk,
        tree_hash: &str,
        manifest: &Manifest,
        force: bool,
    ) -> bool {
        let exists = self
            .dir
            .join("trees")
            .join(tree_dir_name(lang, tree_hash))
            .join("etc/passwd")
            .is_file();
        let disk_uses_it = manifest
            .get(lang.kind())
            .and_then(|a| a.inputs.get("tree"))
            .is_some_and(|t| t == tree_hash);
        !exists && (force || !disk_uses_it)
    }

    /// The plan of an artefact whose inputs include a guest binary.
    fn plan_with_bins(&self, kind: Kind, bins: &guest_bins::GuestBins) -> Result<Plan> {
        let mut inputs = Inputs::new(kind.key());
        match kind {
            Kind::Kernel => self.plan_kernel(),
            Kind::Initramfs => {
                inputs.add("airlock-init-sha256", digest(&bins.init)?);
                Ok(Plan::new(kind, inputs, None))
            }
            Kind::RootfsRaw
            | Kind::RootfsPython
            | Kind::RootfsJavascript
            | Kind::RootfsPythonData => {
                let lang =
                    RootDisk::of_kind(kind).context("a root disk kind without a language")?;
                let (tree_hash, tree_inputs) = self.plan_tree(lang)?;
                for (label, value) in tree_inputs.entries() {
                    if label != "artefact" {
                        inputs.add(label.clone(), value.clone());
                    }
                }
                inputs.add("tree", tree_hash.as_str());
                let agent = match &bins.agent {
                    Some(path) => digest(path)?,
                    None => "absent".to_owned(),
                };
                inputs.add("airlock-agent-sha256", agent);
                inputs.add("image-recipe", rootfs::IMAGE_RECIPE);
                Ok(Plan::new(kind, inputs, Some((tree_hash, tree_inputs))))
            }
        }
    }

    /// Builds one artefact into `scratch`, renames it into place; returns
    /// (file name, size, seconds).
    fn build(
        &self,
        plan: &Plan,
        bins: Option<&guest_bins::GuestBins>,
        scratch: &Path,
    ) -> Result<(String, u64, f64)> {
        let file = plan.kind.file_name(&plan.hash);
        let tmp_out = scratch.join(&file);
        let step = Step::start_quiet(format!("{}: build {file}", plan.kind.key()));
        match plan.kind {
            Kind::Kernel => {
                let version = plan
                    .inputs
                    .entries()
                    .get(&self.kernel_source.package)
                    .cloned()
                    .unwrap_or_default();
                let work = self.dir.join("work");
                std::fs::create_dir_all(&work)
                    .with_context(|| format!("create {}", work.display()))?;
                kernel::build(self.ws, &self.kernel_source, &version, &work, &tmp_out)?;
            }
            Kind::Initramfs => {
                let bins = bins.context("the initramfs needs the guest binaries")?;
                let init = std::fs::read(&bins.init)
                    .with_context(|| format!("read {}", bins.init.display()))?;
                let archive = initramfs::write_newc(&initramfs::airlock_entries(init));
                std::fs::write(&tmp_out, archive)
                    .with_context(|| format!("write {}", tmp_out.display()))?;
            }
            Kind::RootfsRaw
            | Kind::RootfsPython
            | Kind::RootfsJavascript
            | Kind::RootfsPythonData => {
                let lang =
                    RootDisk::of_kind(plan.kind).context("a root disk kind without a language")?;
                let (tree_hash, _) = plan
                    .tree
                    .as_ref()
                    .context("a root disk plan without a tree")?;
                let tree = self.ensure_tree(lang, tree_hash, scratch)?;
                let uuid = uuid_from_hash(&plan.hash);
                rootfs::build_image(
                    lang,
                    &tree,
                    bins.context("a root disk needs the guest binaries")?
                        .agent
                        .as_deref(),
                    scratch,
                    &uuid,
                    &tmp_out,
                )?;
            }
        }
        let final_path = self.dir.join(&file);
        std::fs::rename(&tmp_out, &final_path)
            .with_context(|| format!("rename {} to {}", tmp_out.display(), final_path.display()))?;
        let size = std::fs::metadata(&final_path)?.len();
        let seconds = step.done(&mib(size));
        Ok((file, size, seconds))
    }

    /// The stage-1 tree of `lang`, built when absent.
    fn ensure_tree(&self, lang: RootDisk, tree_hash: &str, scratch: &Path) -> Result<PathBuf> {
        let trees = self.dir.join("trees");
        let tree = trees.join(tree_dir_name(lang, tree_hash));
        if tree.join("etc/passwd").is_file() {
            eprintln!(
                "images: rootfs-{}: reusing tree {}",
                lang.name(),
                tree.display()
            );
            return Ok(tree);
        }
        std::fs::create_dir_all(&trees).with_context(|| format!("create {}", trees.display()))?;
        let tmp_tree = scratch.join(format!("tree-{}", lang.name()));
        let log = scratch.join(format!("rootfs-{}-debootstrap.log", lang.name()));
        let archive = self.archive()?;
        rootfs::build_tree(lang, &archive, &self.dir.join("debs"), &tmp_tree, &log)?;
        std::fs::rename(&tmp_tree, &tree)
            .with_context(|| format!("rename to {}", tree.display()))?;
        Ok(tree)
    }
}

fn tree_dir_name(lang: RootDisk, tree_hash: &str) -> String {
    format!(
        "{}-{}",
        lang.name(),
        tree_hash.get(..16).unwrap_or(tree_hash)
    )
}

/// A UUID-shaped string from a hash (mkfs `-U` and `hash_seed`).
fn uuid_from_hash(hash: &str) -> String {
    let h: String = hash
        .chars()
        .chain(std::iter::repeat('0'))
        .take(32)
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn digest(path: &Path) -> Result<String> {
    sha256_file_hex(path).with_context(|| format!("hash {}", path.display()))
}

/// Removes artefacts not in the manifest and, after a full run, trees that
/// no current root disk uses.
fn prune(manifest: &Manifest, dir: &Path, full_run: Option<&Planner<'_>>) -> Result<()> {
    let names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("list {}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for stale in manifest.stale_files(&names) {
        eprintln!("images: pruning old {stale}");
        std::fs::remove_file(dir.join(&stale)).with_context(|| format!("remove {stale}"))?;
    }
    if full_run.is_none() {
        return Ok(());
    }
    let keep: Vec<String> = RootDisk::ALL
        .into_iter()
        .filter_map(|lang| {
            let tree = manifest.get(lang.kind())?.inputs.get("tree")?;
            Some(tree_dir_name(lang, tree))
        })
        .collect();
    let Ok(trees) = std::fs::read_dir(dir.join("trees")) else {
        return Ok(());
    };
    for entry in trees.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            eprintln!("images: pruning old tree {name}");
            std::fs::remove_dir_all(entry.path()).with_context(|| format!("remove tree {name}"))?;
        }
    }
    Ok(())
}

/// Takes the images dir's lock (waits for another run to finish).
fn lock(dir: &Path) -> Result<Flock<std::fs::File>> {
    let path = dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open {}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((file, _)) => {
            eprintln!(
                "images: another `cargo xtask images` holds {}: waiting",
                path.display()
            );
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, errno)| anyhow::anyhow!("lock {}: {errno}", path.display()))
        }
    }
}

/// Empties (or creates) a scratch dir.
fn reset_dir(path: &Path) -> Result<()> {
    if path.exists() {
        std::fs::remove_dir_all(path).with_context(|| format!("remove {}", path.display()))?;
    }
    std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))
}

/// Runs a command with its output appended to `log`; on failure, the error
/// carries the command, the log's last lines and its path.
fn run_logged(cmd: &mut Command, log: &Path) -> Result<()> {
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open log {}", log.display()))?;
    writeln!(out, "$ {cmd:?}").with_context(|| format!("write {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("dup {}", log.display()))?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .with_context(|| format!("cannot start {:?}: is it installed?", cmd.get_program()))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        bail!(
            "command failed ({status}): {cmd:?}\n--- last lines of {} ---\n{tail}",
            log.display()
        );
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails with its stderr.
fn command_output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {:?}: is it installed?", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "command failed ({}): {cmd:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_from_hash_is_uuid_shaped() {
        let uuid = uuid_from_hash(&"0123456789abcdef".repeat(4));
        assert_eq!(uuid, "01234567-89ab-cdef-0123-456789abcdef");
        assert_eq!(uuid_from_hash("ab").len(), 36);
    }

    #[test]
    fn manifest_keys_are_the_documented_ones() {
        let keys: Vec<_> = Kind::ALL.into_iter().map(Kind::key).collect();
        assert_eq!(
            keys,
            [
                "kernel",
                "initramfs",
                "rootfs-raw",
                "rootfs-python",
                "rootfs-javascript",
                "rootfs-python-data"
            ]
        );
    }

    #[test]
    fn run_logged_reports_the_log_tail() {
        let log = std::env::temp_dir().join(format!("xtask-log-{}", std::process::id()));
        let err =
            run_logged(Command::new("sh").args(["-c", "echo boom; exit 3"]), &log).unwrap_err();
        std::fs::remove_file(&log).unwrap();
        let text = err.to_string();
        assert!(
            text.contains("boom") && text.contains("exit status: 3"),
            "{text}"
        );
    }
}
