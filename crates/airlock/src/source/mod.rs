//! The VM-source seam (design.md section 10): "give me a ready VM for
//! these options", above the VM manager.
//!
//! - [`SandboxVm`]: a VM whose agent answers, as runs and sessions use
//!   it (exec, files, the interpreter, installs, destroy). [`crate::Vm`]
//!   is the real one (`vm_impl.rs`); `airlock::testing::FakeVm` stands in
//!   for it in tests.
//! - [`VmSource`]: where such VMs come from. Three real sources: the warm
//!   pools ([`PoolSource`]), the memory templates ([`TemplateSource`]) and
//!   the cold boot ([`ColdSource`]); [`choose_source`] picks among them
//!   (pure, tested here).
//! - [`PackagePreparer`]: the read-only package layer a sandbox attaches,
//!   installed first when it is missing ([`LayerPreparer`] is the real
//!   one).
//!
//! [`crate::Scheduler::from_parts`] builds a scheduler over any of them,
//! so the run and session paths are tested without QEMU.

mod real;
mod vm_impl;

pub use real::{ColdSource, LayerPreparer, PoolSource, TemplateSource};

use crate::error::{BootError, ExecError, PackageError};
use crate::files::{FileInfo, FileUpload};
pub use crate::files::{FileSink, FileSource};

use crate::machine::{PackageDisk, VmOptions};
use crate::network::ExposedAddr;
use crate::observer::RunObserver;
use crate::packages::install::PackagesReport;
use crate::spec::{CaBundle, MachineShape};
use crate::task::BoxFuture;
use crate::teardown::TeardownReport;
use crate::vm::{BootTimings, ExecOutcome, ExecProgress};
use airlock_gvproxy::NetworkMode;
use airlock_protocol::{ExecRequest, FileEntry, Language};

/// Where the output and results of an exec go, as they arrive.
pub type OutputSink<'a> = &'a mut (dyn FnMut(ExecProgress<'_>) + Send);

pub use crate::vm::{ProcessInput, StdinChunk};

/// Execs beside a VM's one-call-at-a-time user: a shared handle on the
/// same agent (whose protocol multiplexes operations), so a session can
/// run background processes while a cell or another process runs (E2B's
/// commands). It outlives no VM: once the VM is destroyed its execs fail
/// ([`ExecError::Protocol`], the channel closed).
pub trait SideChannel: Send + Sync {
    /// Runs `request` as [`SandboxVm::exec_interruptible`] does, without
    /// the VM's exclusive borrow. A VM that dies fails it as a closed
    /// channel (the session's own next call reports the death). With
    /// `input` (and `request.mode` [`airlock_protocol::ExecMode::PipedProcess`]) what
    /// it yields goes to the process's stdin.
    ///
    /// # Errors
    /// [`ExecError::Protocol`] when the agent failed or went away.
    fn exec<'a>(
        &'a self,
        request: ExecRequest,
        on_output: OutputSink<'a>,
        interrupt: BoxFuture<'a, ()>,
        input: Option<ProcessInput>,
    ) -> BoxFuture<'a, Result<ExecOutcome, ExecError>>;
}

/// A running VM whose agent answers: what runs and sessions do with it.
/// Every method is a step a run or a session takes; none blocks.
pub trait SandboxVm: Send + Sync {
    /// The VM id.
    fn id(&self) -> &str;

    /// The language of its root disk and interpreter.
    fn language(&self) -> Language;

    /// Where its boot (or restore, or take from a pool) time went.
    fn boot_timings(&self) -> &BootTimings;

    /// The guest ports served on the host.
    fn exposed(&self) -> &[ExposedAddr];

    /// The machine's host process id, for measurements (`None`: no
    /// process, as for a fake or a destroyed VM).
    fn qemu_pid(&self) -> Option<u32> {
        None
    }

    /// A handle running execs beside this VM's exclusive user
    /// ([`SideChannel`]); `None` when the VM has none (destroyed).
    fn side_channel(&self) -> Option<std::sync::Arc<dyn SideChannel>>;

    /// Runs code, handing output and results to `on_output` as they
    /// arrive; when
    /// `interrupt` completes, the running code is interrupted and its
    /// completion still returned (exit code 130).
    ///
    /// # Errors
    /// [`crate::ExecError::VmDied`] when the VM died (a session then ends),
    /// [`crate::ExecError::Protocol`] when the agent failed.
    fn exec_interruptible<'a>(
        &'a mut self,
        request: ExecRequest,
        on_output: OutputSink<'a>,
        interrupt: BoxFuture<'a, ()>,
    ) -> BoxFuture<'a, Result<ExecOutcome, ExecError>>;

    /// As [`SandboxVm::exec_interruptible`], never interrupted.
    ///
    /// # Errors
    /// As [`SandboxVm::exec_interruptible`].
    fn exec<'a>(
        &'a mut self,
        request: ExecRequest,
        on_output: OutputSink<'a>,
    ) -> BoxFuture<'a, Result<ExecOutcome, ExecError>> {
        self.exec_interruptible(request, on_output, Box::pin(std::future::pending()))
    }

    /// Writes a file into the sandbox home from `source`, streamed a chunk
    /// at a time (never held whole), atomically and checked by sha256;
    /// `size` is announced when known. More than `max_bytes` from the
    /// source fails as soon as it passes the cap, and a write given up
    /// half way leaves no file.
    ///
    /// # Errors
    /// [`ExecError::File`] (its source `FileTooLarge` past `max_bytes`,
    /// `HostStream` when `source` fails).
    fn upload_from<'a>(
        &'a self,
        path: &'a str,
        mode: u32,
        size: Option<u64>,
        source: FileSource<'a>,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<FileInfo, ExecError>>;

    /// Reads a file of the sandbox home into `sink`, each chunk as it
    /// arrives (never held whole), checked by sha256 at the end. A file
    /// over `max_bytes` fails before any of it reaches `sink` when its size
    /// is known at open, else as soon as it passes the cap; after any error
    /// what `sink` got is not the file.
    ///
    /// # Errors
    /// [`ExecError::File`] (its source `FileTooLarge` past `max_bytes`,
    /// `HostStream` when `sink` fails).
    fn download_into<'a>(
        &'a self,
        path: &'a str,
        max_bytes: u64,
        sink: FileSink<'a>,
    ) -> BoxFuture<'a, Result<FileInfo, ExecError>>;

    /// Writes a file held in memory ([`SandboxVm::upload_from`] over its
    /// bytes).
    ///
    /// # Errors
    /// [`ExecError::File`].
    fn upload<'a>(&'a self, upload: &'a FileUpload) -> BoxFuture<'a, Result<FileInfo, ExecError>> {
        Box::pin(async move {
            let size = upload.content.len() as u64;
            let mut source = &upload.content[..];
            self.upload_from(&upload.path, upload.mode, Some(size), &mut source, size)
                .await
        })
    }

    /// Reads a file into memory ([`SandboxVm::download_into`] into a
    /// buffer), holding at most `max_bytes` of it and never more than
    /// [`MAX_READ_INTO_MEMORY_BYTES`](crate::files::MAX_READ_INTO_MEMORY_BYTES).
    ///
    /// # Errors
    /// [`ExecError::File`] (its source `FileTooLarge` past the cap).
    fn download<'a>(
        &'a self,
        path: &'a str,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<(Vec<u8>, FileInfo), ExecError>> {
        Box::pin(async move {
            let cap = max_bytes.min(crate::files::MAX_READ_INTO_MEMORY_BYTES);
            let mut content = Vec::new();
            let info = self.download_into(path, cap, &mut content).await?;
            Ok((content, info))
        })
    }

    /// Lists a directory of the sandbox home, sorted by name.
    ///
    /// # Errors
    /// [`ExecError::File`].
    fn list_files<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<FileEntry>, ExecError>>;

    /// Starts the persistent interpreter now rather than on the first
    /// cell.
    ///
    /// # Errors
    /// [`crate::ExecError::Protocol`].
    fn warm_repl(&self) -> BoxFuture<'_, Result<(), ExecError>>;

    /// Ends `language`'s persistent interpreter (its state goes); the next
    /// cell of it starts a fresh one.
    ///
    /// # Errors
    /// [`crate::ExecError::Protocol`].
    fn reset_repl(&self, language: Language) -> BoxFuture<'_, Result<(), ExecError>>;

    /// Installs pinned packages into the home with the language's package
    /// manager, trusting `ca` (the VM needs a network to the registries),
    /// within `timeout`.
    ///
    /// # Errors
    /// [`crate::InputError::PackageSpec`], [`PackageError::Install`].
    fn install<'a>(
        &'a mut self,
        packages: &'a [String],
        ca: &'a CaBundle,
        timeout: std::time::Duration,
    ) -> BoxFuture<'a, Result<ExecOutcome, PackageError>>;

    /// Destroys the VM (never fails, safe twice) and reports what it did.
    fn destroy(&mut self) -> BoxFuture<'_, TeardownReport>;

    /// The QEMU machine underneath, which a pause or a fork saves
    /// (`None`, the default: a VM that cannot be saved, as a fake).
    fn as_machine(&self) -> Option<&crate::Vm> {
        None
    }
}

/// Where ready VMs come from: a warm pool, a memory template, a cold boot
/// (or a fake).
pub trait VmSource: Send + Sync {
    /// A VM of `options` whose agent answers, its stages reported to
    /// `observer`. The VM is the caller's: destroy it after use.
    ///
    /// # Errors
    /// The source's boot errors ([`crate::BootError::is_transient`] ones were
    /// retried already).
    fn acquire<'a>(
        &'a self,
        options: &'a VmOptions,
        observer: &'a mut dyn RunObserver,
    ) -> BoxFuture<'a, Result<Box<dyn SandboxVm>, BootError>>;
}

/// A package layer ready to attach, and its account for the run result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedPackages {
    /// The disk to attach read-only.
    pub disk: PackageDisk,
    /// What the run result says of it.
    pub report: PackagesReport,
}

/// Prepares the package layer of a sandbox (found in the store or
/// installed now).
pub trait PackagePreparer: Send + Sync {
    /// The layer `packages` (of `language`, for `tenant`) attaches: `None`
    /// for an empty list. `observer` hears
    /// [`crate::Stage::InstallingPackages`] before an install, which takes
    /// at most `limits`' memory and time.
    ///
    /// # Errors
    /// [`crate::InputError::PackageSpec`], [`PackageError::Install`],
    /// [`PackageError::InstallRefused`] when `limits` are too small.
    fn prepare<'a>(
        &'a self,
        language: Language,
        packages: &'a [String],
        tenant: &'a str,
        limits: &'a crate::packages::InstallLimits,
        observer: &'a mut dyn RunObserver,
    ) -> BoxFuture<'a, Result<Option<PreparedPackages>, PackageError>>;
}

/// Which source a VM comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// The warm pool of its shape.
    Pool,
    /// A restore from the memory template of its shape (and layer).
    Template,
    /// A cold boot.
    Cold,
}

/// Which VMs may restore a memory template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Templating<'a> {
    /// None: every VM without a pool boots cold.
    Off,
    /// Any shape (its template built on first use).
    AnyShape,
    /// Only these shapes (the operator's); others boot cold.
    Shapes(&'a [MachineShape]),
}

impl Templating<'_> {
    /// Whether a VM of `shape` may restore its template.
    pub fn covers(&self, shape: &MachineShape) -> bool {
        match self {
            Templating::Off => false,
            Templating::AnyShape => true,
            Templating::Shapes(shapes) => shapes.contains(shape),
        }
    }
}

/// Which source serves `options` (pure): the warm pool of its shape when
/// `pools` has one and the VM has no network and no package layer (pool
/// VMs have neither); else its memory template when `templates` covers
/// its shape and it has no network (a clone cannot reconnect its network
/// device to a new gvproxy on QEMU 7.2); else a cold boot.
pub fn choose_source(
    options: &VmOptions,
    pools: &[MachineShape],
    templates: Templating<'_>,
) -> SourceKind {
    // A host folder is bound when QEMU starts: a clone's 9p device would
    // have to be in its template already, unmounted, with the same tag
    // (`docs/persistence.md`, "Host folders and templates").
    let restorable = options.network.mode() == NetworkMode::None && options.mounts.is_empty();
    let shape = options.shape();
    let templated = templates.covers(&shape);
    if restorable && options.packages.is_none() && pools.contains(&shape) {
        SourceKind::Pool
    } else if restorable && templated {
        SourceKind::Template
    } else {
        SourceKind::Cold
    }
}

/// The smallest of `shapes` that holds `shape` (pure): same image,
/// language, vCPUs (a request never gets more CPU than it asked for) and
/// workspace disk (the disk is the tenant's quota),
/// at least its memory and at most `max_memory_mib`. `shape` itself when
/// it is one of them; `None` when none holds it (it boots cold). A server
/// rounds requests' memory up with it so that a few template shapes serve
/// them all.
pub fn round_up_shape(
    shape: MachineShape,
    shapes: &[MachineShape],
    max_memory_mib: u32,
) -> Option<MachineShape> {
    shapes
        .iter()
        .filter(|s| {
            s.language == shape.language
                && s.image == shape.image
                && s.vcpus == shape.vcpus
                && s.disk_mib == shape.disk_mib
                && s.memory_mib >= shape.memory_mib
                && s.memory_mib <= max_memory_mib.max(shape.memory_mib)
        })
        .min_by_key(|s| s.memory_mib)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkRequest;

    const ANY: Templating<'static> = Templating::AnyShape;
    const OFF: Templating<'static> = Templating::Off;

    fn options(language: Language) -> VmOptions {
        VmOptions::of_shape(MachineShape::new(language), "t")
    }

    fn with_ports(mut options: VmOptions) -> VmOptions {
        options.network =
            NetworkRequest::from_flags(options.language, false, &[], &["8080".into()])
                .unwrap_or_default();
        assert_eq!(options.network.mode(), NetworkMode::Ports);
        options
    }

    #[test]
    fn a_vm_with_a_host_folder_boots_cold() {
        let mut python = options(Language::Python);
        python.mounts = vec![crate::spec::Mount::parse("/data:/mnt/data").unwrap()];
        let pools = [python.shape()];
        assert_eq!(choose_source(&python, &pools, ANY), SourceKind::Cold);
    }

    #[test]
    fn a_template_of_another_disk_size_does_not_hold_a_shape() {
        let shape = MachineShape::new(Language::Python);
        let other = MachineShape {
            disk_mib: 4096,
            ..shape
        };
        assert_eq!(round_up_shape(shape, &[other], 16384), None);
        assert_eq!(round_up_shape(shape, &[other, shape], 16384), Some(shape));
    }

    #[test]
    fn a_vm_of_a_pooled_shape_without_network_or_packages_comes_from_the_pool() {
        let python = options(Language::Python);
        let pools = [python.shape()];
        assert_eq!(choose_source(&python, &pools, OFF), SourceKind::Pool);
        assert_eq!(choose_source(&python, &pools, ANY), SourceKind::Pool);
    }

    #[test]
    fn another_shape_restores_its_template_when_templates_are_on_else_boots_cold() {
        let pools = [options(Language::Python).shape()];
        let mut bigger = options(Language::Python);
        bigger.memory_mib = 1024;
        assert_eq!(choose_source(&bigger, &pools, ANY), SourceKind::Template);
        assert_eq!(choose_source(&bigger, &pools, OFF), SourceKind::Cold);
        assert_eq!(
            choose_source(&options(Language::Raw), &[], ANY),
            SourceKind::Template
        );
    }

    #[test]
    fn a_vm_with_a_package_layer_skips_the_pool_but_may_restore_a_template() {
        let mut layered = options(Language::Python);
        layered.packages = Some(PackageDisk::read_only("/p/k/layer.img".into()));
        let pools = [layered.shape()];
        assert_eq!(choose_source(&layered, &pools, ANY), SourceKind::Template);
        assert_eq!(choose_source(&layered, &pools, OFF), SourceKind::Cold);
    }

    #[test]
    fn a_vm_with_any_network_boots_cold() {
        let ported = with_ports(options(Language::Python));
        let pools = [ported.shape()];
        assert_eq!(choose_source(&ported, &pools, ANY), SourceKind::Cold);
        let mut egress = options(Language::Python);
        egress.network =
            NetworkRequest::from_flags(Language::Python, true, &["example.com".into()], &[])
                .unwrap_or_default();
        assert_eq!(choose_source(&egress, &pools, ANY), SourceKind::Cold);
    }

    #[test]
    fn with_configured_template_shapes_only_those_restore_and_the_rest_boot_cold() {
        let python = options(Language::Python);
        let mut bigger = options(Language::Python);
        bigger.memory_mib = 1024;
        let configured = [python.shape()];
        let only = Templating::Shapes(&configured);
        assert_eq!(choose_source(&python, &[], only), SourceKind::Template);
        assert_eq!(choose_source(&bigger, &[], only), SourceKind::Cold);
        // A layered VM of a configured shape restores its layer's template.
        let mut layered = options(Language::Python);
        layered.packages = Some(PackageDisk::read_only("/p/k/layer.img".into()));
        assert_eq!(choose_source(&layered, &[], only), SourceKind::Template);
        // An empty list: no templates at all.
        assert_eq!(
            choose_source(&python, &[], Templating::Shapes(&[])),
            SourceKind::Cold
        );
    }

    fn shape(language: Language, memory_mib: u32, vcpus: u32) -> MachineShape {
        MachineShape {
            memory_mib,
            vcpus,
            ..MachineShape::new(language)
        }
    }

    #[test]
    fn a_shape_rounds_up_to_the_smallest_configured_one_that_holds_it() {
        let shapes = [
            shape(Language::Python, 1024, 1),
            shape(Language::Python, 512, 1),
            shape(Language::Python, 512, 2),
            shape(Language::Raw, 256, 1),
        ];
        let up = |s| round_up_shape(s, &shapes, 4096);
        assert_eq!(up(shape(Language::Python, 300, 1)), Some(shapes[1]));
        assert_eq!(up(shape(Language::Python, 512, 1)), Some(shapes[1]));
        assert_eq!(up(shape(Language::Python, 512, 2)), Some(shapes[2]));
        assert_eq!(up(shape(Language::Python, 300, 2)), Some(shapes[2]));
        assert_eq!(up(shape(Language::Python, 513, 1)), Some(shapes[0]));
        assert_eq!(up(shape(Language::Python, 2048, 1)), None);
        // vCPUs are never rounded up: more CPU than asked is not given.
        assert_eq!(up(shape(Language::Python, 512, 4)), None);
        assert_eq!(up(shape(Language::Python, 600, 2)), None);
        assert_eq!(up(shape(Language::Javascript, 256, 1)), None);
        assert_eq!(up(shape(Language::Raw, 128, 1)), Some(shapes[3]));
        // Another image of the same language is another shape.
        let data = MachineShape {
            memory_mib: 256,
            ..MachineShape::of_image(crate::Image::PythonData)
        };
        assert_eq!(up(data), None);
    }

    #[test]
    fn rounding_up_stays_within_the_memory_a_caller_may_have() {
        let shapes = [shape(Language::Python, 1024, 1)];
        assert_eq!(
            round_up_shape(shape(Language::Python, 512, 1), &shapes, 768),
            None
        );
        assert_eq!(
            round_up_shape(shape(Language::Python, 512, 1), &shapes, 1024),
            Some(shapes[0])
        );
    }
}
