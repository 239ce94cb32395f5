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

    /// Writes a file into the sandbox home (atomically, checked by
    /// sha256).
    ///
    /// # Errors
    /// [`ExecError::File`].
    fn upload<'a>(&'a self, upload: &'a FileUpload) -> BoxFuture<'a, Result<FileInfo, ExecError>>;

    /// Reads a file of the sandbox home (checked by sha256), holding at
    /// most `max_bytes` of it (a larger file fails as soon as it passes
    /// the limit; `u64::MAX`: the client's own limit).
    ///
    /// # Errors
    /// [`ExecError::File`] (its source `FileTooLarge` past `max_bytes`).
    fn download<'a>(
        &'a self,
        path: &'a str,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<(Vec<u8>, FileInfo), ExecError>>;

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

    /// Installs pinned packages into the home with the language's package
    /// manager, trusting `ca` (the VM needs a network to the registries).
    ///
    /// # Errors
    /// [`crate::InputError::PackageSpec`], [`PackageError::Install`].
    fn install<'a>(
        &'a mut self,
        packages: &'a [String],
        ca: &'a CaBundle,
    ) -> BoxFuture<'a, Result<ExecOutcome, PackageError>>;

    /// Destroys the VM (never fails, safe twice) and reports what it did.
    fn destroy(&mut self) -> BoxFuture<'_, TeardownReport>;
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
    /// [`crate::Stage::InstallingPackages`] before an install.
    ///
    /// # Errors
    /// [`crate::InputError::PackageSpec`], [`PackageError::Install`].
    fn prepare<'a>(
        &'a self,
        language: Language,
        packages: &'a [String],
        tenant: &'a str,
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

/// Which source serves `options` (pure): the warm pool of its shape when
/// `pools` has one and the VM has no network and no package layer (pool
/// VMs have neither); else its memory template when `restore_templates`
/// and it has no network (a clone cannot reconnect its network device to
/// a new gvproxy on QEMU 7.2); else a cold boot.
pub fn choose_source(
    options: &VmOptions,
    pools: &[MachineShape],
    restore_templates: bool,
) -> SourceKind {
    let no_network = options.network.mode() == NetworkMode::None;
    if no_network && options.packages.is_none() && pools.contains(&options.shape()) {
        SourceKind::Pool
    } else if no_network && restore_templates {
        SourceKind::Template
    } else {
        SourceKind::Cold
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkRequest;

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
    fn a_vm_of_a_pooled_shape_without_network_or_packages_comes_from_the_pool() {
        let python = options(Language::Python);
        let pools = [python.shape()];
        assert_eq!(choose_source(&python, &pools, false), SourceKind::Pool);
        assert_eq!(choose_source(&python, &pools, true), SourceKind::Pool);
    }

    #[test]
    fn another_shape_restores_its_template_when_templates_are_on_else_boots_cold() {
        let pools = [options(Language::Python).shape()];
        let mut bigger = options(Language::Python);
        bigger.memory_mib = 1024;
        assert_eq!(choose_source(&bigger, &pools, true), SourceKind::Template);
        assert_eq!(choose_source(&bigger, &pools, false), SourceKind::Cold);
        assert_eq!(
            choose_source(&options(Language::Raw), &[], true),
            SourceKind::Template
        );
    }

    #[test]
    fn a_vm_with_a_package_layer_skips_the_pool_but_may_restore_a_template() {
        let mut layered = options(Language::Python);
        layered.packages = Some(PackageDisk::read_only("/p/k/layer.img".into()));
        let pools = [layered.shape()];
        assert_eq!(choose_source(&layered, &pools, true), SourceKind::Template);
        assert_eq!(choose_source(&layered, &pools, false), SourceKind::Cold);
    }

    #[test]
    fn a_vm_with_any_network_boots_cold() {
        let ported = with_ports(options(Language::Python));
        let pools = [ported.shape()];
        assert_eq!(choose_source(&ported, &pools, true), SourceKind::Cold);
        let mut egress = options(Language::Python);
        egress.network =
            NetworkRequest::from_flags(Language::Python, true, &["example.com".into()], &[])
                .unwrap_or_default();
        assert_eq!(choose_source(&egress, &pools, true), SourceKind::Cold);
    }
}
