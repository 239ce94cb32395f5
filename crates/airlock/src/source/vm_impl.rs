//! [`crate::Vm`] as a [`SandboxVm`]: each step through the VM's protocol
//! client, errors carrying the VM id.

use super::{FileSink, FileSource, OutputSink, ProcessInput, SandboxVm, SideChannel};
use crate::error::{ExecError, PackageError};
use crate::files::{self, FileInfo};
use crate::network::ExposedAddr;
use crate::spec::CaBundle;
use crate::task::BoxFuture;
use crate::teardown::TeardownReport;
use crate::vm::{BootTimings, ExecOutcome, Vm};
use airlock_protocol::client::Client;
use airlock_protocol::ProtocolError;
use airlock_protocol::{ExecRequest, FileEntry, Language};
use std::sync::Arc;
use std::time::Duration;

/// A real VM's [`SideChannel`]: its agent's client, shared.
struct AgentSide {
    vm_id: String,
    client: Arc<Client>,
}

impl SideChannel for AgentSide {
    fn exec<'a>(
        &'a self,
        request: ExecRequest,
        on_output: OutputSink<'a>,
        interrupt: BoxFuture<'a, ()>,
        input: Option<ProcessInput>,
    ) -> BoxFuture<'a, Result<ExecOutcome, ExecError>> {
        Box::pin(async move {
            let protocol = |source| ExecError::Protocol {
                vm_id: self.vm_id.clone(),
                source,
            };
            // As `Vm::exec_streaming`: the agent enforces the timeout, the
            // host deadline guards against a stuck guest.
            let deadline = Duration::from_millis(request.timeout_ms) + crate::vm::EXEC_HOST_MARGIN;
            // A process beside the session's calls streams all it writes
            // (E2B's commands run without end); what is kept stays capped.
            let run = crate::vm::collect_exec(
                &self.client,
                request,
                on_output,
                interrupt,
                input,
                crate::vm::Forward::All,
            );
            match tokio::time::timeout(deadline, run).await {
                Ok(result) => result.map_err(protocol),
                Err(_) => Err(protocol(ProtocolError::Timeout {
                    what: "exec".into(),
                    after: deadline,
                })),
            }
        })
    }
}

impl SandboxVm for Vm {
    fn id(&self) -> &str {
        Vm::id(self)
    }

    fn language(&self) -> Language {
        Vm::language(self)
    }

    fn boot_timings(&self) -> &BootTimings {
        Vm::boot_timings(self)
    }

    fn exposed(&self) -> &[ExposedAddr] {
        Vm::exposed(self)
    }

    fn qemu_pid(&self) -> Option<u32> {
        Vm::qemu_pid(self)
    }

    fn side_channel(&self) -> Option<Arc<dyn SideChannel>> {
        let client = self.shared_client()?;
        Some(Arc::new(AgentSide {
            vm_id: self.id().to_owned(),
            client,
        }))
    }

    fn as_machine(&self) -> Option<&Vm> {
        Some(self)
    }

    fn exec_interruptible<'a>(
        &'a mut self,
        request: ExecRequest,
        on_output: OutputSink<'a>,
        interrupt: BoxFuture<'a, ()>,
    ) -> BoxFuture<'a, Result<ExecOutcome, ExecError>> {
        Box::pin(Vm::exec_streaming(self, request, on_output, interrupt))
    }

    fn upload_from<'a>(
        &'a self,
        path: &'a str,
        mode: u32,
        size: Option<u64>,
        source: FileSource<'a>,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<FileInfo, ExecError>> {
        Box::pin(async move {
            let upload = files::StreamedUpload {
                path,
                mode,
                size,
                max_bytes,
            };
            files::upload_from(self.id(), self.client()?, upload, source).await
        })
    }

    fn download_into<'a>(
        &'a self,
        path: &'a str,
        max_bytes: u64,
        sink: FileSink<'a>,
    ) -> BoxFuture<'a, Result<FileInfo, ExecError>> {
        Box::pin(async move {
            files::download_into(self.id(), self.client()?, path, max_bytes, sink).await
        })
    }

    fn list_files<'a>(&'a self, dir: &'a str) -> BoxFuture<'a, Result<Vec<FileEntry>, ExecError>> {
        Box::pin(async move {
            self.client()?
                .list_files(dir, files::transfer_timeout(0))
                .await
                .map_err(|source| ExecError::File {
                    vm_id: self.id().to_owned(),
                    path: dir.to_owned(),
                    action: "list",
                    source,
                })
        })
    }

    fn reset_repl(&self, language: Language) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(async move {
            self.client()?
                .reset_repl(language, airlock_protocol::abi::HOST_WARM_TIMEOUT)
                .await
                .map(drop)
                .map_err(|source| ExecError::Protocol {
                    vm_id: self.id().to_owned(),
                    source,
                })
        })
    }

    fn warm_repl(&self) -> BoxFuture<'_, Result<(), ExecError>> {
        Box::pin(async move {
            self.client()?
                .warm_repl(Vm::language(self), airlock_protocol::abi::HOST_WARM_TIMEOUT)
                .await
                .map(drop)
                .map_err(|source| ExecError::Protocol {
                    vm_id: self.id().to_owned(),
                    source,
                })
        })
    }

    fn install<'a>(
        &'a mut self,
        packages: &'a [String],
        ca: &'a CaBundle,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<ExecOutcome, PackageError>> {
        Box::pin(async move {
            let output = crate::packages::install_into(self, packages, ca, timeout).await?;
            Ok(ExecOutcome {
                stdout: output.stdout,
                stderr: output.stderr,
                results: output.results,
                error: output.error,
                completion: output.completion,
            })
        })
    }

    fn destroy(&mut self) -> BoxFuture<'_, TeardownReport> {
        Box::pin(Vm::destroy(self))
    }
}
