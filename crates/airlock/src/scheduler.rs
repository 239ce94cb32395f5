//! [`Scheduler::run`]: one request, one fresh VM, destroyed afterwards.
//! The VM comes from the warm pool of its shape when there is one, else
//! from its memory template when templates are on, else a cold boot
//! ([`Scheduler::start_vm`]).

use crate::config::Config;
use crate::error::Result;
use crate::manager::VmManager;
use crate::ms;
use crate::packages::{self, PackageDisk, PackagesReport};
use crate::pool::{TemplateSource, WarmPool};
use crate::request::{RunPhases, RunRequest, RunResult, Timings};
use crate::template::{shape_of, warm_of, Found, Templates, Warm};
use crate::vm::{BootTimings, OutputStream, Vm, VmOptions};
use airlock_protocol::{ExecMode, ExecRequest, Language};
use std::sync::Arc;
use std::time::Instant;

/// What a run is doing, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// No memory template of the run's shape exists (or it was damaged):
    /// one is being built (once per shape; it takes a cold boot and more).
    BuildingTemplate,
    /// The run's package list has no layer yet: an install VM is
    /// installing it (once per list; later runs attach the stored layer).
    InstallingPackages,
    /// Waiting for a slot, taking an overlay, booting (or restoring).
    Booting,
    /// The agent answered; the code is about to run.
    Running,
    /// The code ended; the VM is being destroyed.
    TearingDown,
}

/// Receives a run's progress and output as they happen.
pub trait RunObserver: Send {
    /// The run entered `stage`.
    fn stage(&mut self, _stage: Stage) {}
    /// A chunk of output.
    fn output(&mut self, stream: OutputStream, bytes: &[u8]);
    /// The VM is up and these guest ports are served on the host.
    fn exposed(&mut self, _ports: &[crate::network::ExposedAddr]) {}
}

/// Ignores everything (for [`Scheduler::run`]).
pub(crate) struct Discard;

impl RunObserver for Discard {
    fn output(&mut self, _: OutputStream, _: &[u8]) {}
}

/// Writes each upload into `vm`, in order; the first failure ends it.
async fn upload_all(vm: &Vm, uploads: &[crate::files::FileUpload]) -> Result<()> {
    if uploads.is_empty() {
        return Ok(());
    }
    let client = vm.client()?;
    for upload in uploads {
        crate::files::upload(vm.id(), client, upload).await?;
    }
    Ok(())
}

/// How a one-shot run's code runs. In a VM restored from a template that
/// holds its language's interpreter warm (python, raw: see
/// [`crate::template::warm_of`]) it runs in that interpreter
/// ([`ExecMode::OneShot`]): no process is spawned (under TCG a new
/// interpreter process costs hundreds of ms), the clone is fresh (empty
/// home and /tmp, nothing run before) and destroyed after, and a timeout
/// ends it as it ends a process, so output, exit codes and timeouts are a
/// cold run's. A VM from a warm pool holds its interpreter warm in every
/// language (the fill started it after its reseed, Node included). Otherwise
/// (a cold boot, a javascript template, which holds no running Node) a
/// process: starting the cell driver would cost more.
pub fn one_shot_mode(boot: &BootTimings, language: Language) -> ExecMode {
    if boot.from_warm_pool || (boot.restore.is_some() && warm_of(language) == Warm::Interpreter) {
        ExecMode::OneShot
    } else {
        ExecMode::Process
    }
}

/// Runs requests, each in its own VM.
#[derive(Debug, Clone)]
pub struct Scheduler {
    manager: VmManager,
    templates: Templates,
    /// One per configured shape; dropped with the last clone (their
    /// waiting VMs then go to the manager's reaper).
    pools: Arc<Vec<WarmPool>>,
}

impl Scheduler {
    /// Starts a scheduler (and its VM manager) with `config`.
    ///
    /// # Errors
    /// As [`VmManager::start`].
    pub async fn start(config: Config) -> Result<Self> {
        let manager = VmManager::start(config).await?;
        let templates = Templates::new(manager.clone());
        let pools = manager
            .config()
            .warm_pools
            .iter()
            .map(|pool| {
                let source = TemplateSource::new(templates.clone(), pool.shape);
                WarmPool::start(*pool, Box::new(source))
            })
            .collect();
        Ok(Self {
            templates,
            manager,
            pools: Arc::new(pools),
        })
    }

    /// The warm pools ([`Config::warm_pools`], one per shape).
    pub fn pools(&self) -> &[WarmPool] {
        &self.pools
    }

    /// The warm pool of `options`' shape, when it has one and the VM has
    /// no network and no package layer (pool VMs have neither).
    fn pool_for(&self, options: &VmOptions) -> Option<&WarmPool> {
        if options.network.mode() != airlock_gvproxy::NetworkMode::None
            || options.packages.is_some()
        {
            return None;
        }
        let shape = shape_of(options);
        self.pools.iter().find(|pool| pool.config().shape == shape)
    }

    /// Drains the warm pools (their waiting VMs destroyed), then shuts
    /// the manager down ([`VmManager::shutdown`]): no VM starts after
    /// this. VMs handed out before stay the caller's to destroy.
    pub async fn shutdown(&self) {
        for pool in self.pools.iter() {
            pool.shutdown().await;
        }
        self.manager.shutdown().await;
    }

    /// The memory templates runs restore from.
    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    /// The VM manager underneath.
    pub fn manager(&self) -> &VmManager {
        &self.manager
    }

    /// Runs the request and returns its collected result.
    ///
    /// # Errors
    /// As [`Scheduler::run_observed`].
    pub async fn run(&self, request: RunRequest) -> Result<RunResult> {
        self.run_observed(request, &mut Discard).await
    }

    /// Runs the request, streaming progress and output to `observer`.
    /// Validation happens before any VM starts; the VM is destroyed whatever
    /// happens (also when this future is dropped).
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] for a refused request, else boot and
    /// exec errors.
    pub async fn run_observed(
        &self,
        request: RunRequest,
        observer: &mut dyn RunObserver,
    ) -> Result<RunResult> {
        let start = Instant::now();
        request.validate()?;
        let validate_ms = ms(start.elapsed());
        let layer = packages::prepare(
            &self.manager,
            request.language,
            &request.packages,
            &request.tenant,
            || observer.stage(Stage::InstallingPackages),
        )
        .await?;
        let options = VmOptions {
            tenant: request.tenant.clone(),
            language: request.language,
            memory_mib: request.memory_mib,
            vcpus: request.vcpus,
            network: request.network.clone(),
            packages: layer
                .as_ref()
                .map(|outcome| PackageDisk::read_only(&outcome.layer)),
        };
        let mut vm = self.start_vm(&options, observer).await?;
        observer.exposed(vm.exposed());
        let env = match self.guest_env(&vm, &options, request.env).await {
            Ok(env) => env,
            Err(e) => {
                vm.destroy().await;
                return Err(e);
            }
        };
        observer.stage(Stage::Running);
        let exec_start = Instant::now();
        let mode = one_shot_mode(vm.boot_timings(), request.language);
        let uploaded = upload_all(&vm, &request.uploads).await;
        let outcome = match uploaded {
            Ok(()) => {
                vm.exec(
                    ExecRequest {
                        mode,
                        language: request.language,
                        code: request.code,
                        timeout_ms: u64::try_from(request.timeout.as_millis()).unwrap_or(u64::MAX),
                        env,
                        cwd: None,
                    },
                    |stream, bytes| observer.output(stream, bytes),
                )
                .await
            }
            Err(e) => Err(e),
        };
        let exec_ms = ms(exec_start.elapsed());
        // Downloads after any end of the code (a failure or a timeout
        // too), while the VM is still there; not after an Airlock error.
        let downloads = match (&outcome, vm.client()) {
            (Ok(_), Ok(client)) if !request.downloads.is_empty() => {
                crate::files::download_all(vm.id(), client, &request.downloads).await
            }
            _ => Vec::new(),
        };
        observer.stage(Stage::TearingDown);
        let teardown = vm.destroy().await;
        for problem in &teardown.problems {
            tracing::warn!(vm_id = teardown.vm_id, problem, "teardown problem");
        }
        let outcome = outcome?;
        let boot = vm.boot_timings();
        Ok(RunResult {
            vm_id: vm.id().to_owned(),
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            exit_code: outcome.completion.exit_code,
            timed_out: outcome.completion.timed_out,
            stdout_truncated: outcome.completion.stdout_truncated,
            stderr_truncated: outcome.completion.stderr_truncated,
            timings: Timings::new(
                boot,
                RunPhases {
                    validate_ms,
                    exec_ms,
                    teardown_ms: teardown.elapsed_ms,
                    total_ms: ms(start.elapsed()),
                },
            ),
            usage: teardown.usage,
            network: teardown.network,
            packages: layer.as_ref().map(PackagesReport::of),
            downloads,
        })
    }

    /// The environment of the run's code: the request's, plus the CA
    /// bundle's variables when the VM has an allowlist network (the bundle
    /// is copied in first; see [`packages::ca`]).
    pub(crate) async fn guest_env(
        &self,
        vm: &Vm,
        options: &VmOptions,
        env: std::collections::BTreeMap<String, String>,
    ) -> Result<std::collections::BTreeMap<String, String>> {
        if options.network.mode() != airlock_gvproxy::NetworkMode::Allowlist {
            return Ok(env);
        }
        let ca = packages::ca::install_bundle(vm, &self.manager.config().ca_bundle).await?;
        Ok(packages::ca::with_ca_env(env, ca))
    }

    /// A VM of `options`, its agent answering, for runs and sessions: a
    /// paused one from the warm pool of its shape when there is one
    /// (restored on demand when the pool is empty), its limits group moved
    /// from the pool's ([`crate::pool::POOL_TENANT`]) to `options.tenant`;
    /// else restored from
    /// the template of its shape (and package layer, when it has one)
    /// when templates are on and the VM has no network (a clone cannot reconnect its network device to a new
    /// gvproxy on QEMU 7.2: such VMs boot cold); else booted cold. The VM
    /// is the caller's: destroy it after use.
    ///
    /// # Errors
    /// As [`VmManager::boot`], [`Templates::build`] and
    /// [`WarmPool::take`].
    pub async fn start_vm(
        &self,
        options: &VmOptions,
        observer: &mut dyn RunObserver,
    ) -> Result<Vm> {
        let layer = options.packages.as_ref().and_then(PackageDisk::layer_key);
        if let Some(pool) = self.pool_for(options) {
            observer.stage(Stage::Booting);
            let mut vm = pool.take().await?;
            // The pool made it under its own tenant: the VM joins the
            // limits group of the tenant it now serves.
            if let Err(e) = vm
                .move_to_tenant(self.manager.limiter(), &options.tenant)
                .await
            {
                vm.destroy().await;
                return Err(e);
            }
            return Ok(vm);
        }
        let restore = self.manager.config().restore_templates
            && options.network.mode() == airlock_gvproxy::NetworkMode::None;
        if !restore {
            observer.stage(Stage::Booting);
            return self.manager.boot(options).await;
        }
        let template = match self.templates.find_over(shape_of(options), layer).await? {
            Found::Ready(template) => template,
            Found::Build { inputs, .. } => {
                observer.stage(Stage::BuildingTemplate);
                self.templates.build(&inputs).await?
            }
        };
        observer.stage(Stage::Booting);
        self.templates.boot_or_cold(options, &template).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_runs_are_cells_of_the_warm_interpreter_and_cold_ones_processes() {
        let restored = BootTimings {
            restore: Some(Default::default()),
            ..BootTimings::default()
        };
        let pooled = BootTimings {
            from_warm_pool: true,
            ..BootTimings::default()
        };
        assert_eq!(
            one_shot_mode(&restored, Language::Python),
            ExecMode::OneShot
        );
        assert_eq!(one_shot_mode(&restored, Language::Raw), ExecMode::OneShot);
        assert_eq!(
            one_shot_mode(&restored, Language::Javascript),
            ExecMode::Process
        );
        for language in Language::ALL {
            assert_eq!(
                one_shot_mode(&BootTimings::default(), language),
                ExecMode::Process
            );
            assert_eq!(one_shot_mode(&pooled, language), ExecMode::OneShot);
        }
    }
}
