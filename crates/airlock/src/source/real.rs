//! The real [`VmSource`]s (cold boot, memory template, warm pools) and the
//! real [`PackagePreparer`] (the package layer store), over a
//! [`VmManager`].

use super::{PackagePreparer, PreparedPackages, SandboxVm, VmSource};
use crate::error::{BootError, PackageError};
use crate::machine::{PackageDisk, VmOptions};
use crate::manager::VmManager;
use crate::observer::{RunObserver, Stage};
use crate::packages::install::PackagesReport;
use crate::pool::WarmPool;
use crate::task::BoxFuture;
use crate::template::{Found, Templates};
use airlock_protocol::Language;
use std::sync::Arc;

/// VMs booted cold by the manager (retries, slots, teardown included).
#[derive(Debug, Clone)]
pub struct ColdSource {
    manager: VmManager,
}

impl ColdSource {
    /// Cold boots through `manager`.
    pub fn new(manager: VmManager) -> Self {
        Self { manager }
    }
}

impl VmSource for ColdSource {
    fn acquire<'a>(
        &'a self,
        options: &'a VmOptions,
        observer: &'a mut dyn RunObserver,
    ) -> BoxFuture<'a, Result<Box<dyn SandboxVm>, BootError>> {
        Box::pin(async move {
            observer.stage(Stage::Booting);
            let vm = self.manager.boot(options).await?;
            Ok(Box::new(vm) as Box<dyn SandboxVm>)
        })
    }
}

/// VMs restored from the memory template of their shape (and package
/// layer), the template built first when missing; a cold boot when the
/// restore fails (the template is then dropped for a rebuild) or when
/// another request's build of it lasts past the manager's
/// [`template_wait`](crate::Config::template_wait).
#[derive(Debug, Clone)]
pub struct TemplateSource {
    templates: Templates,
    manager: VmManager,
}

impl TemplateSource {
    /// Restores from `templates`, boots cold through `manager`.
    pub fn new(templates: Templates, manager: VmManager) -> Self {
        Self { templates, manager }
    }
}

impl VmSource for TemplateSource {
    fn acquire<'a>(
        &'a self,
        options: &'a VmOptions,
        observer: &'a mut dyn RunObserver,
    ) -> BoxFuture<'a, Result<Box<dyn SandboxVm>, BootError>> {
        Box::pin(async move {
            let layer = options.packages.as_ref().and_then(PackageDisk::layer_key);
            let template = match self.templates.find_over(options.shape(), layer).await? {
                Found::Ready(template) => template,
                Found::Build { inputs, .. } => {
                    observer.stage(Stage::BuildingTemplate);
                    let wait = self.manager.config().template_wait;
                    match self.templates.build_within(&inputs, wait).await? {
                        Some(template) => template,
                        None => {
                            observer.stage(Stage::Booting);
                            let vm = self.manager.boot(options).await?;
                            return Ok(Box::new(vm) as Box<dyn SandboxVm>);
                        }
                    }
                }
            };
            observer.stage(Stage::Booting);
            let vm = self.templates.boot_or_cold(options, &template).await?;
            Ok(Box::new(vm) as Box<dyn SandboxVm>)
        })
    }
}

/// VMs taken from the warm pool of their shape (restored on demand when
/// it is empty), their limits group moved from the pool's
/// ([`crate::pool::POOL_TENANT`]) to the tenant they now serve.
#[derive(Debug)]
pub struct PoolSource {
    manager: VmManager,
    pools: Arc<Vec<WarmPool>>,
}

impl PoolSource {
    /// Takes from `pools` (one per shape), regrouping through `manager`.
    pub fn new(manager: VmManager, pools: Arc<Vec<WarmPool>>) -> Self {
        Self { manager, pools }
    }
}

impl VmSource for PoolSource {
    fn acquire<'a>(
        &'a self,
        options: &'a VmOptions,
        observer: &'a mut dyn RunObserver,
    ) -> BoxFuture<'a, Result<Box<dyn SandboxVm>, BootError>> {
        Box::pin(async move {
            observer.stage(Stage::Booting);
            let shape = options.shape();
            let Some(pool) = self.pools.iter().find(|p| p.config().shape == shape) else {
                // The choice sends only pooled shapes here; boot anyway.
                let vm = self.manager.boot(options).await?;
                return Ok(Box::new(vm) as Box<dyn SandboxVm>);
            };
            let mut vm = pool.take().await?;
            if let Err(e) = vm
                .move_to_tenant(self.manager.limiter(), &options.tenant)
                .await
            {
                vm.destroy().await;
                return Err(e);
            }
            Ok(Box::new(vm) as Box<dyn SandboxVm>)
        })
    }
}

/// Package layers from the manager's layer store, installed in an install
/// VM when missing.
#[derive(Debug, Clone)]
pub struct LayerPreparer {
    manager: VmManager,
}

impl LayerPreparer {
    /// Layers of `manager`'s configured store.
    pub fn new(manager: VmManager) -> Self {
        Self { manager }
    }
}

impl PackagePreparer for LayerPreparer {
    fn prepare<'a>(
        &'a self,
        language: Language,
        packages: &'a [String],
        tenant: &'a str,
        limits: &'a crate::packages::InstallLimits,
        observer: &'a mut dyn RunObserver,
    ) -> BoxFuture<'a, Result<Option<PreparedPackages>, PackageError>> {
        Box::pin(async move {
            let outcome =
                crate::packages::prepare(&self.manager, language, packages, tenant, limits, || {
                    observer.stage(Stage::InstallingPackages)
                })
                .await?;
            Ok(outcome.map(|outcome| PreparedPackages {
                disk: PackageDisk::read_only(outcome.layer.image()),
                report: PackagesReport::of(&outcome),
            }))
        })
    }
}
