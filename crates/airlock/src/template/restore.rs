//! The restore `Launcher`: QEMU started over a template's memory file
//! (mapped privately, copy-on-write) with `-incoming defer`; over QMP the
//! device state is loaded and the vCPUs resumed; then the agent is reached
//! as after a cold boot, and reseeded (fresh entropy, the host's clock)
//! before anything else runs in it.

use super::store::Template;
use crate::error::{BootError, Result};
use crate::guest::{self, Agent, GuestFiles, RestoreTimings};
use crate::host::Host;
use crate::launcher::{Launcher, MachinePlan};
use crate::ms;
use crate::process::QemuProcess;
use crate::qemu_launcher::spawn_spec;
use crate::qemu_spec::vm_spec;
use crate::task::BoxFuture;
use airlock_limits::VmGroup;
use airlock_protocol::client::Client;
use airlock_qemu::{BootImages, IncomingMigration, MemoryFile, MemorySharing, QmpClient, VmSpec};
use rand::RngCore;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Fresh entropy sent to every clone (the protocol's minimum is 32).
pub const RESEED_ENTROPY_BYTES: usize = 64;
/// Longest wait for the agent's answer to the reseed.
const RESEED_TIMEOUT: Duration = Duration::from_secs(10);

/// The clone's QEMU spec: the cold-boot spec of `plan`, its RAM the
/// template's `memory` file mapped privately, waiting for its state.
pub fn clone_spec(plan: &MachinePlan, boot: &BootImages, memory: &Path) -> VmSpec {
    let mut spec = vm_spec(plan, boot);
    spec.memory_file = Some(MemoryFile {
        path: memory.to_path_buf(),
        sharing: MemorySharing::Private,
    });
    spec.incoming = Some(IncomingMigration::Defer);
    spec
}

/// Restores VMs from one checked template.
#[derive(Debug, Clone)]
pub struct RestoreLauncher {
    host: Host,
    boot: BootImages,
    template: Template,
    workspace: Option<std::path::PathBuf>,
}

impl RestoreLauncher {
    /// A launcher restoring `template` with the QEMU of `host`.
    pub fn new(host: Host, boot: BootImages, template: Template) -> Self {
        let workspace = template.workspace_file();
        Self {
            host,
            boot,
            template,
            workspace,
        }
    }

    async fn spawn_clone(
        &self,
        plan: &MachinePlan,
        group: &VmGroup,
    ) -> Result<QemuProcess, BootError> {
        let spec = clone_spec(plan, &self.boot, &self.template.memory_file());
        spawn_spec(&self.host, &spec, plan, group).await
    }

    async fn restore(
        &self,
        plan: &MachinePlan,
        process: &mut QemuProcess,
        deadline: Instant,
    ) -> Result<Agent, BootError> {
        let saved = SavedState {
            path: &self.template.state_file(),
            label: &self.template.metadata.key,
            whole_machine: false,
            // A template's interpreters are reseeded as a template's.
            copy: false,
        };
        let agent = load_and_reach_agent(plan, process, deadline, saved).await?;
        tracing::info!(
            vm_id = plan.vm_id,
            template = self.template.metadata.key,
            timings = ?agent.restore,
            "restored from a memory template"
        );
        Ok(agent)
    }
}

/// A saved machine state a VM started with `-incoming defer` loads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SavedState<'a> {
    /// The migration stream.
    pub path: &'a Path,
    /// What it is, for errors (a template's key, a paused session's id).
    pub label: &'a str,
    /// The stream holds the RAM too (a paused or forked session), not
    /// only the device state (a template, whose RAM is its memory file).
    pub whole_machine: bool,
    /// The machine is one of several copies of a live one (a fork's
    /// child): its reseed ends the interpreters whose random state every
    /// copy shares (`RequestBody::Reseed::copy`).
    pub copy: bool,
}

/// Loads `saved` into the machine of `plan` (spawned with `-incoming
/// defer`), resumes it, reaches its agent and reseeds it (fresh entropy,
/// the host's clock), racing the process's death, by `deadline`: the
/// restore of a template clone, a resumed and a forked session alike.
pub(crate) async fn load_and_reach_agent(
    plan: &MachinePlan,
    process: &mut QemuProcess,
    deadline: Instant,
    saved: SavedState<'_>,
) -> Result<Agent, BootError> {
    let files = GuestFiles::in_workdir(&plan.vm_id, &plan.workdir);
    let paths = files.paths();
    let waited = deadline.saturating_duration_since(Instant::now());
    let (pid, uid) = (process.pid(), process.uid());
    let mut timings = RestoreTimings::default();
    let resumed = guest::race_death(&paths, process, waited, async {
        load_and_resume(plan, deadline, saved, &mut timings).await?;
        Ok(Some(()))
    })
    .await;
    resumed?;
    let agent_start = Instant::now();
    // What is left of the deadline after the load, for the error's text.
    let waited = deadline.saturating_duration_since(agent_start);
    let mut agent = guest::race_death(
        &paths,
        process,
        waited,
        guest::connect_agent(&paths, (pid, uid), deadline),
    )
    .await?;
    timings.agent_ms = ms(agent_start.elapsed());
    let reseed_start = Instant::now();
    reseed(&agent.client, &plan.vm_id, saved.copy).await?;
    timings.reseed_ms = ms(reseed_start.elapsed());
    agent.restore = Some(timings);
    Ok(agent)
}

async fn load_and_resume(
    plan: &MachinePlan,
    deadline: Instant,
    saved: SavedState<'_>,
    timings: &mut RestoreTimings,
) -> Result<(), BootError> {
    let start = Instant::now();
    let state = tokio::fs::File::open(saved.path)
        .await
        .map_err(|e| BootError::io("open", saved.path, e))?
        .into_std()
        .await;
    timings.state_bytes = state
        .metadata()
        .map_err(|e| BootError::io("measure", saved.path, e))?
        .len();
    let restore = |source| BootError::Restore {
        vm_id: plan.vm_id.clone(),
        template: saved.label.to_owned(),
        source: Box::new(source),
    };
    let mut qmp = QmpClient::connect(&plan.workdir.qmp_socket(), deadline)
        .await
        .map_err(restore)?;
    let loaded = if saved.whole_machine {
        qmp.load_full_state(state.as_fd(), deadline).await
    } else {
        qmp.load_device_state(state.as_fd(), deadline).await
    };
    loaded.map_err(restore)?;
    timings.load_ms = ms(start.elapsed());
    let resume = Instant::now();
    qmp.cont(deadline).await.map_err(restore)?;
    timings.resume_ms = ms(resume.elapsed());
    Ok(())
}

/// Sends fresh entropy and the host's clock to a restored agent (also
/// used when a paused pool VM is resumed); `copy` for a fork's child.
pub(crate) async fn reseed(client: &Client, vm_id: &str, copy: bool) -> Result<(), BootError> {
    let mut entropy = [0u8; RESEED_ENTROPY_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut entropy);
    let now_ns = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let (credited, step_ms) = client
        .reseed_as(&entropy, now_ns, copy, RESEED_TIMEOUT)
        .await
        .map_err(|source| BootError::Protocol {
            vm_id: vm_id.to_owned(),
            source,
        })?;
    tracing::debug!(vm_id, credited, clock_step_ms = step_ms, "guest reseeded");
    Ok(())
}

impl Launcher for RestoreLauncher {
    fn name(&self) -> &'static str {
        "qemu-template-restore"
    }

    /// The template's own disk: its memory holds the guest's view of it
    /// (page cache, the mounted ext4's state), so each clone's disk is an
    /// overlay over exactly it.
    fn workspace_base(&self) -> Option<&Path> {
        self.workspace.as_deref()
    }

    fn spawn<'a>(
        &'a self,
        plan: &'a MachinePlan,
        group: &'a VmGroup,
    ) -> BoxFuture<'a, Result<QemuProcess, BootError>> {
        Box::pin(self.spawn_clone(plan, group))
    }

    fn reach_agent<'a>(
        &'a self,
        plan: &'a MachinePlan,
        process: &'a mut QemuProcess,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Agent, BootError>> {
        Box::pin(self.restore(plan, process, deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workdir::WorkDir;
    use std::path::PathBuf;

    fn plan() -> MachinePlan {
        MachinePlan {
            workspace_base: None,
            mounts: Vec::new(),
            packages: None,
            vm_id: "0123456789abcdef".into(),
            memory_mib: 512,
            vcpus: 1,
            workdir: WorkDir::at(PathBuf::from("/run/airlock/vms/0123456789abcdef")),
            root_base: PathBuf::from("/images/rootfs-python.qcow2"),
            network_socket: None,
            verbose_console: false,
            translation_cache_mib: airlock_qemu::TCG_TB_SIZE_MIB,
        }
    }

    fn boot() -> BootImages {
        BootImages {
            kernel: "/images/bzImage".into(),
            initramfs: "/images/initramfs".into(),
        }
    }

    #[test]
    fn a_clone_maps_the_template_memory_privately_and_waits_for_its_state() {
        let memory = Path::new("/cache/templates/t/memory");
        let spec = clone_spec(&plan(), &boot(), memory);
        assert_eq!(
            spec.memory_file,
            Some(MemoryFile {
                path: memory.to_path_buf(),
                sharing: MemorySharing::Private,
            })
        );
        assert_eq!(spec.incoming, Some(IncomingMigration::Defer));
    }

    #[test]
    fn a_clone_differs_from_the_cold_boot_only_in_memory_and_incoming() {
        let cold = vm_spec(&plan(), &boot());
        let clone = clone_spec(&plan(), &boot(), Path::new("/t/memory"));
        assert_eq!(
            VmSpec {
                memory_file: None,
                incoming: None,
                ..clone
            },
            cold
        );
    }
}
