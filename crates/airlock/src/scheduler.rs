//! [`Scheduler::run`]: one request, one fresh VM, destroyed afterwards.

use crate::config::Config;
use crate::error::Result;
use crate::manager::VmManager;
use crate::ms;
use crate::request::{RunPhases, RunRequest, RunResult, Timings};
use crate::template::{shape_of, Found, Templates};
use crate::vm::{OutputStream, Vm, VmOptions};
use airlock_protocol::ExecRequest;
use std::time::Instant;

/// What a run is doing, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// No memory template of the run's shape exists (or it was damaged):
    /// one is being built (once per shape; it takes a cold boot and more).
    BuildingTemplate,
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

/// Runs requests, each in its own VM.
#[derive(Debug, Clone)]
pub struct Scheduler {
    manager: VmManager,
    templates: Templates,
}

impl Scheduler {
    /// Starts a scheduler (and its VM manager) with `config`.
    ///
    /// # Errors
    /// As [`VmManager::start`].
    pub async fn start(config: Config) -> Result<Self> {
        let manager = VmManager::start(config).await?;
        Ok(Self {
            templates: Templates::new(manager.clone()),
            manager,
        })
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
        let options = VmOptions {
            tenant: request.tenant.clone(),
            language: request.language,
            memory_mib: request.memory_mib,
            vcpus: request.vcpus,
            network: request.network.clone(),
        };
        let mut vm = self.boot(&options, observer).await?;
        observer.exposed(vm.exposed());
        observer.stage(Stage::Running);
        let exec_start = Instant::now();
        let uploaded = upload_all(&vm, &request.uploads).await;
        let outcome = match uploaded {
            Ok(()) => {
                vm.exec(
                    ExecRequest {
                        mode: Default::default(),
                        language: request.language,
                        code: request.code,
                        timeout_ms: u64::try_from(request.timeout.as_millis()).unwrap_or(u64::MAX),
                        env: request.env,
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
            downloads,
        })
    }

    /// Restores the VM from the template of its shape when templates are
    /// on and the VM has no network (a clone cannot reconnect its network
    /// device to a new gvproxy on QEMU 7.2: such runs boot cold); else
    /// boots it cold.
    pub(crate) async fn boot(
        &self,
        options: &VmOptions,
        observer: &mut dyn RunObserver,
    ) -> Result<Vm> {
        let restore = self.manager.config().restore_templates
            && options.network.mode() == airlock_gvproxy::NetworkMode::None;
        if !restore {
            observer.stage(Stage::Booting);
            return self.manager.boot(options).await;
        }
        let template = match self.templates.find(shape_of(options)).await? {
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
