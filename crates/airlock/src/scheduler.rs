//! [`Scheduler`]: runs and sessions over the VM-source seam
//! (`source/`). One path opens a sandbox for both ([`Scheduler::open`]):
//! validate, prepare the package layer, derive the [`VmOptions`] from the
//! spec, take a VM from the source [`choose_source`] picks (warm pool,
//! memory template, cold boot), give it the guest environment, and destroy
//! it on any error. A run then executes its code once and destroys the VM
//! ([`Scheduler::run`]); a session keeps it ([`Scheduler::session`]).

use crate::config::Config;
use crate::error::{BootError, ExecError, InputError, PackageError, Result, RunError};
use crate::files::{Downloaded, FileUpload};
use crate::machine::VmOptions;
use crate::manager::VmManager;
use crate::ms;
use crate::network::VmSecrets;
use crate::observer::{Discard, RunObserver, Stage};
use crate::packages::ca::{ca_env, read_bundle, with_ca_env, GUEST_CA_FILE};
use crate::packages::install::PackagesReport;
use crate::pool::{TemplateSource as PoolTemplates, WarmPool};
use crate::request::{RunPhases, RunRequest, RunResult, Timings};
use crate::source::{
    choose_source, ColdSource, LayerPreparer, PackagePreparer, PoolSource, SandboxVm, SourceKind,
    TemplateSource, Templating, VmSource,
};
use crate::spec::{CaBundle, Image, MachineShape, SandboxSpec};
use crate::template::Templates;
use crate::vm::BootTimings;
use airlock_egress::{AirlockCa, SecretSet, UpstreamRoots};
use airlock_protocol::{ExecMode, ExecRequest};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// How a one-shot run's code runs. In a VM restored from a template (which
/// holds its language's interpreter warm, reseeded after the restore:
/// `docs/templates.md`) it runs in that interpreter ([`ExecMode::OneShot`]):
/// no process is spawned (under TCG a new interpreter process costs
/// hundreds of ms), the clone is fresh (empty home and /tmp, nothing run
/// before) and destroyed after, and a timeout ends it as it ends a
/// process, so output, exit codes and timeouts are a cold run's. A VM from
/// a warm pool holds its interpreter warm too (the fill started it after
/// its reseed). Otherwise (a cold boot) a process: starting the cell
/// driver would cost more. An image that is not a language's own
/// (`python-data`) always runs in its interpreter, even cold: rich results
/// are what it is for (`docs/outputs.md`).
pub fn one_shot_mode(boot: &BootTimings, image: Image) -> ExecMode {
    if has_warm_interpreter(boot) || !image.is_language_default() {
        ExecMode::OneShot
    } else {
        ExecMode::Process
    }
}

/// Whether a VM with these boot timings holds a warm interpreter: taken
/// from a pool, or restored from a template.
fn has_warm_interpreter(boot: &BootTimings) -> bool {
    boot.from_warm_pool || boot.restore.is_some()
}

/// What a [`Scheduler`] is built from: its VM sources, its package
/// preparer and its configuration. [`Scheduler::start`] makes the real
/// ones; tests pass fakes (`airlock::testing`, feature `testing`).
pub struct SchedulerParts {
    /// Cold boots: every VM no other source serves.
    pub cold: Arc<dyn VmSource>,
    /// Restores from memory templates, used when
    /// [`Config::restore_templates`] is on (`None`: never).
    pub template: Option<Arc<dyn VmSource>>,
    /// Warm pools, and the shapes they serve.
    pub pool: Option<(Arc<dyn VmSource>, Vec<MachineShape>)>,
    /// Package layers.
    pub packages: Arc<dyn PackagePreparer>,
    /// The configuration (what the scheduler reads of it:
    /// `restore_templates`, `ca_bundle`).
    pub config: Config,
}

impl std::fmt::Debug for SchedulerParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerParts")
            .field("template", &self.template.is_some())
            .field("pool", &self.pool.as_ref().map(|(_, shapes)| shapes))
            .finish_non_exhaustive()
    }
}

/// What the real scheduler also holds: the manager, templates and pools
/// its sources use.
#[derive(Debug)]
struct HostParts {
    manager: VmManager,
    templates: Templates,
    /// One per configured shape; dropped with the last clone (their
    /// waiting VMs then go to the manager's reaper).
    pools: Arc<Vec<WarmPool>>,
}

struct Inner {
    parts: SchedulerParts,
    host: Option<HostParts>,
}

/// A sandbox opened for a run or a session: its VM and the environment its
/// code gets.
pub(crate) struct Opened {
    /// The VM, the caller's to destroy.
    pub vm: Box<dyn SandboxVm>,
    /// The guest environment (the CA bundle's variables with a network).
    pub env: BTreeMap<String, String>,
    /// The package layer attached, for the run result.
    pub packages: Option<PackagesReport>,
    /// Its disk (a pause records it).
    pub disk: Option<crate::machine::PackageDisk>,
}

/// Runs requests, each in its own VM, and starts sessions; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("parts", &self.inner.parts)
            .field("host", &self.inner.host)
            .finish()
    }
}

impl Scheduler {
    /// Starts a scheduler (and its VM manager) with `config`: it probes
    /// the host, and its sources are the manager's cold boot, its memory
    /// templates and the configured warm pools.
    ///
    /// # Errors
    /// As [`VmManager::start`].
    pub async fn start(config: Config) -> Result<Self> {
        let manager = VmManager::start(config).await?;
        let templates = Templates::new(manager.clone());
        let config = manager.config().clone();
        let pools: Arc<Vec<WarmPool>> = Arc::new(
            config
                .warm_pools
                .iter()
                .map(|pool| {
                    let source = PoolTemplates::new(templates.clone(), pool.shape);
                    WarmPool::start(*pool, Box::new(source))
                })
                .collect(),
        );
        let shapes: Vec<MachineShape> = config.warm_pools.iter().map(|p| p.shape).collect();
        let parts = SchedulerParts {
            cold: Arc::new(ColdSource::new(manager.clone())),
            template: Some(Arc::new(TemplateSource::new(
                templates.clone(),
                manager.clone(),
            ))),
            pool: (!shapes.is_empty()).then(|| {
                let source: Arc<dyn VmSource> =
                    Arc::new(PoolSource::new(manager.clone(), Arc::clone(&pools)));
                (source, shapes)
            }),
            packages: Arc::new(LayerPreparer::new(manager.clone())),
            config,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                parts,
                host: Some(HostParts {
                    manager,
                    templates,
                    pools,
                }),
            }),
        })
    }

    /// A scheduler over `parts` and nothing else: no host probe, no VM
    /// manager ([`Scheduler::manager`] is `None`). For tests with fake
    /// sources and for embedders that bring their own.
    ///
    /// # Errors
    /// [`crate::Error::Config`] when `parts.config` is invalid.
    pub fn from_parts(parts: SchedulerParts) -> Result<Self> {
        parts.config.validate()?;
        Ok(Self {
            inner: Arc::new(Inner { parts, host: None }),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner.parts.config
    }

    /// The warm pools ([`Config::warm_pools`], one per shape; none when
    /// built [`Scheduler::from_parts`]).
    pub fn pools(&self) -> &[WarmPool] {
        self.inner.host.as_ref().map_or(&[], |host| &host.pools)
    }

    /// The memory templates runs restore from (`None` when built
    /// [`Scheduler::from_parts`]).
    pub fn templates(&self) -> Option<&Templates> {
        self.inner.host.as_ref().map(|host| &host.templates)
    }

    /// The VM manager underneath (`None` when built
    /// [`Scheduler::from_parts`]).
    pub fn manager(&self) -> Option<&VmManager> {
        self.inner.host.as_ref().map(|host| &host.manager)
    }

    /// Drains the warm pools (their waiting VMs destroyed), then shuts
    /// the manager down ([`VmManager::shutdown`]): no VM starts after
    /// this. VMs handed out before stay the caller's to destroy. Returns
    /// how many processes the teardowns left and were killed (0 when
    /// every teardown ended in time).
    pub async fn shutdown(&self) -> usize {
        let Some(host) = &self.inner.host else {
            return 0;
        };
        for pool in host.pools.iter() {
            pool.shutdown().await;
        }
        host.manager.shutdown().await
    }

    /// Runs the request and returns its collected result.
    ///
    /// # Errors
    /// As [`Scheduler::run_observed`].
    pub async fn run(&self, request: RunRequest) -> Result<RunResult, RunError> {
        self.run_observed(request, &mut Discard).await
    }

    /// Runs the request, streaming progress and output to `observer`.
    /// Validation happens before any VM starts; the VM is destroyed whatever
    /// happens (also when this future is dropped).
    ///
    /// # Errors
    /// [`RunError::Input`] for a refused request (before any VM starts),
    /// [`RunError::Packages`], [`RunError::Boot`], [`RunError::Exec`].
    pub async fn run_observed(
        &self,
        request: RunRequest,
        observer: &mut dyn RunObserver,
    ) -> Result<RunResult, RunError> {
        let start = Instant::now();
        request.validate()?;
        let validate_ms = ms(start.elapsed());
        let RunRequest {
            spec,
            code,
            timeout,
            env,
            uploads,
            upload_timeout,
            downloads,
        } = request;
        let Opened {
            mut vm,
            env,
            packages,
            ..
        } = self.open::<RunError>(&spec, env, observer).await?;
        observer.exposed(vm.exposed());
        observer.stage(Stage::Running);
        let exec_start = Instant::now();
        let language = spec.language();
        let mode = one_shot_mode(vm.boot_timings(), spec.shape.image());
        // A one-shot run in a VM without a warm interpreter starts it first,
        // under the warm-up's deadline rather than the code's timeout.
        let cold_interpreter =
            mode == ExecMode::OneShot && !has_warm_interpreter(vm.boot_timings());
        let exec = ExecRequest {
            mode,
            language,
            code,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            env,
            cwd: None,
        };
        let outcome = async {
            tokio::time::timeout(upload_timeout, upload_all(vm.as_ref(), &uploads))
                .await
                .map_err(|_| ExecError::UploadTimeout {
                    vm_id: vm.id().to_owned(),
                    files: uploads.len(),
                    timeout: upload_timeout,
                })??;
            if cold_interpreter {
                vm.warm_repl().await?;
            }
            vm.exec(exec, &mut |piece| crate::observer::forward(observer, piece))
                .await
        }
        .await;
        let exec_ms = ms(exec_start.elapsed());
        // Downloads after any end of the code (a failure or a timeout
        // too), while the VM is still there; not after an Airlock error.
        let downloads = match &outcome {
            Ok(_) => download_all(vm.as_ref(), &downloads).await,
            Err(_) => Vec::new(),
        };
        observer.stage(Stage::TearingDown);
        let teardown = vm.destroy().await;
        for problem in &teardown.problems {
            tracing::warn!(vm_id = teardown.vm_id, problem, "teardown problem");
        }
        let outcome = outcome?;
        Ok(RunResult {
            vm_id: vm.id().to_owned(),
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            exit_code: outcome.completion.exit_code,
            timed_out: outcome.completion.timed_out,
            stdout_truncated: outcome.completion.stdout_truncated,
            stderr_truncated: outcome.completion.stderr_truncated,
            results: outcome.results,
            error: outcome.error,
            timings: Timings::new(
                vm.boot_timings(),
                RunPhases {
                    validate_ms,
                    exec_ms,
                    teardown_ms: teardown.elapsed_ms,
                    total_ms: ms(start.elapsed()),
                },
            ),
            usage: teardown.usage,
            network: teardown.network,
            packages,
            downloads,
        })
    }

    /// Opens a sandbox of `spec` (validated by the caller) for a run or a
    /// session: its package layer prepared, a VM from the chosen source,
    /// the guest environment (`env`, plus the CA bundle's variables with
    /// an allowlist network). On an error after the VM started, the VM is
    /// destroyed.
    ///
    /// # Errors
    /// As the package preparer, the VM source and the CA bundle's copy.
    pub(crate) async fn open<E>(
        &self,
        spec: &SandboxSpec,
        env: BTreeMap<String, String>,
        observer: &mut dyn RunObserver,
    ) -> Result<Opened, E>
    where
        E: From<PackageError> + From<BootError> + From<InputError> + From<ExecError>,
    {
        let prepared = self
            .inner
            .parts
            .packages
            .prepare(
                spec.language(),
                &spec.packages,
                &spec.tenant,
                &spec.install,
                observer,
            )
            .await?;
        let (disk, packages) = prepared.map(|p| (p.disk, p.report)).unzip();
        let mut options = VmOptions::for_spec(spec, disk.clone());
        options.secrets = self.vm_secrets::<E>(spec).await?;
        let mut vm = self.start_vm(&options, observer).await?;
        match self
            .guest_env(vm.as_ref(), spec, options.secrets.as_ref(), env)
            .await
        {
            Ok(env) => Ok(Opened {
                vm,
                env,
                packages,
                disk,
            }),
            Err(e) => {
                vm.destroy().await;
                Err(e)
            }
        }
    }

    /// The CA bundle a sandbox of `spec` trusts: its own, else the
    /// configuration's.
    pub(crate) fn ca_bundle_of(&self, spec: &SandboxSpec) -> CaBundle {
        spec.ca_bundle
            .clone()
            .unwrap_or_else(|| self.config().ca_bundle.clone())
    }

    /// The secrets of a VM of `spec`, with new placeholders, Airlock's CA
    /// (loaded, or made on first use) and the upstream trust store (the
    /// sandbox's CA bundle); `None` without secrets.
    ///
    /// # Errors
    /// [`InputError`] for `secrets` or `ca_bundle`,
    /// [`BootError::SecretsCa`] when the CA cannot be made or loaded.
    async fn vm_secrets<E>(&self, spec: &SandboxSpec) -> Result<Option<VmSecrets>, E>
    where
        E: From<InputError> + From<BootError>,
    {
        if spec.secrets.is_empty() {
            return Ok(None);
        }
        let set = SecretSet::new(spec.secrets.clone())
            .map_err(|e| InputError::invalid("secrets", e.to_string()))?;
        let dir = self.config().secrets_ca_dir.clone();
        let ca = tokio::task::spawn_blocking(move || AirlockCa::load_or_create(&dir))
            .await
            .map_err(|e| BootError::TaskFailed {
                task: "loading Airlock's CA",
                message: e.to_string(),
            })?
            .map_err(|source| BootError::SecretsCa { source })?;
        let upstream_roots = match self.ca_bundle_of(spec).resolve()? {
            Some(path) => UpstreamRoots::PemFile(path),
            None => UpstreamRoots::System,
        };
        Ok(Some(VmSecrets {
            set: Arc::new(set),
            ca: Arc::new(ca),
            upstream_roots,
        }))
    }

    /// The environment of the sandbox's code: `env`, plus the CA bundle's
    /// variables when the VM has an allowlist network (the bundle is
    /// copied in first; see [`crate::packages::ca`]), plus each secret's
    /// placeholder in the variable of its name (the bundle then ends with
    /// Airlock's CA, so that intercepted hosts verify).
    async fn guest_env<E>(
        &self,
        vm: &dyn SandboxVm,
        spec: &SandboxSpec,
        secrets: Option<&VmSecrets>,
        env: BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, E>
    where
        E: From<InputError> + From<ExecError>,
    {
        if spec.network.with_secret_hosts(&spec.secrets).mode()
            != airlock_gvproxy::NetworkMode::Allowlist
        {
            return Ok(env);
        }
        let host_bundle = read_bundle(&self.ca_bundle_of(spec)).await?;
        let bundle = match (host_bundle, secrets) {
            (None, None) => return Ok(env),
            (bundle, None) => bundle.unwrap_or_default(),
            // Without a host bundle the guest trusts only Airlock's CA:
            // hosts without a secret then fail verification (docs/secrets.md).
            (bundle, Some(secrets)) => {
                let mut bundle = bundle.unwrap_or_default();
                if !bundle.is_empty() && !bundle.ends_with(b"\n") {
                    bundle.push(b'\n');
                }
                bundle.extend_from_slice(secrets.ca.cert_pem().as_bytes());
                bundle
            }
        };
        let upload = FileUpload {
            mode: 0o644,
            ..FileUpload::new(GUEST_CA_FILE, bundle)
        };
        vm.upload(&upload).await?;
        let mut env = with_ca_env(env, ca_env());
        // The placeholder wins over a variable of the same name the caller
        // set: the secret is what the name means in this sandbox.
        env.extend(secrets.map(VmSecrets::guest_env).unwrap_or_default());
        Ok(env)
    }

    /// A VM of `options`, its agent answering, from the source
    /// [`choose_source`] picks: the warm pool of its shape, its memory
    /// template (when [`Config::restore_templates`], and its shape is one
    /// of [`Config::template_shapes`] if those are set), or a cold boot. The
    /// VM is the caller's: destroy it after use.
    ///
    /// # Errors
    /// As the chosen [`VmSource::acquire`].
    pub async fn start_vm(
        &self,
        options: &VmOptions,
        observer: &mut dyn RunObserver,
    ) -> Result<Box<dyn SandboxVm>, BootError> {
        let parts = &self.inner.parts;
        let shapes = parts.pool.as_ref().map_or(&[][..], |(_, shapes)| shapes);
        let restore = parts.config.restore_templates && parts.template.is_some();
        let templating = match (restore, parts.config.template_shapes.as_deref()) {
            (false, _) => Templating::Off,
            (true, None) => Templating::AnyShape,
            (true, Some(shapes)) => Templating::Shapes(shapes),
        };
        let source = match (
            choose_source(options, shapes, templating),
            &parts.pool,
            &parts.template,
        ) {
            (SourceKind::Pool, Some((pool, _)), _) => pool,
            (SourceKind::Template, _, Some(template)) => template,
            _ => &parts.cold,
        };
        source.acquire(options, observer).await
    }
}

/// Writes each upload into `vm`, in order; the first failure ends it.
async fn upload_all(vm: &dyn SandboxVm, uploads: &[FileUpload]) -> Result<(), ExecError> {
    for upload in uploads {
        vm.upload(upload).await?;
    }
    Ok(())
}

/// Reads each of `paths` from `vm`, each on its own: a failure is recorded
/// and the next file is read all the same.
async fn download_all(vm: &dyn SandboxVm, paths: &[String]) -> Vec<Downloaded> {
    let mut downloads = Vec::with_capacity(paths.len());
    for path in paths {
        downloads.push(Downloaded::of(path, vm.download(path, u64::MAX).await));
    }
    downloads
}

#[cfg(test)]
mod tests;
