//! The cold-boot [`Launcher`]: QEMU started from the kernel and initramfs,
//! in its own process group inside the VM's limits group, then the agent
//! awaited over the virtio-serial sockets. A memory template's own boot is
//! this launcher with its RAM in a shared file ([`QemuLauncher::for_template`]);
//! [`spawn_spec`] is shared with the restore launcher.

use crate::error::{BootError, Result};
use crate::guest::{self, Agent, GuestFiles};
use crate::host::Host;
use crate::launcher::{Launcher, MachinePlan};
use crate::process::{OutputLogs, QemuProcess};
use crate::qemu_spec::vm_spec;
use crate::task::BoxFuture;
use airlock_limits::VmGroup;
use airlock_qemu::{BootImages, MemoryFile, MemorySharing, QemuArgs, VmSpec};
use std::path::PathBuf;
use tokio::process::Command;
use tokio::time::Instant;

/// Boots QEMU from scratch on the probed host.
#[derive(Debug, Clone)]
pub struct QemuLauncher {
    host: Host,
    boot: BootImages,
    /// The guest RAM goes to this file, shared (a memory template's boot).
    template_memory: Option<PathBuf>,
}

impl QemuLauncher {
    /// A launcher booting `boot` with the QEMU and accelerator of `host`.
    pub fn new(host: Host, boot: BootImages) -> Self {
        Self {
            host,
            boot,
            template_memory: None,
        }
    }

    /// A launcher for a memory template's boot: the guest RAM is the file
    /// `memory`, mapped shared, so it holds the RAM when the VM is saved.
    pub fn for_template(host: Host, boot: BootImages, memory: PathBuf) -> Self {
        Self {
            template_memory: Some(memory),
            ..Self::new(host, boot)
        }
    }

    async fn spawn_qemu(
        &self,
        plan: &MachinePlan,
        group: &VmGroup,
    ) -> Result<QemuProcess, BootError> {
        let mut spec = vm_spec(plan, &self.boot);
        spec.memory_file = self.template_memory.as_ref().map(|path| MemoryFile {
            path: path.clone(),
            sharing: MemorySharing::Shared,
        });
        spawn_spec(&self.host, &spec, plan, group).await
    }
}

/// Spawns QEMU for `spec` (the machine of `plan`) inside `group`, jailed
/// when `host` has a jail (`jail.rs`), its console and own messages
/// drained into capped logs in the work dir (the builder records it in
/// the work dir's owner record). Shared by the cold-boot and the restore
/// launchers.
pub(crate) async fn spawn_spec(
    host: &Host,
    spec: &VmSpec,
    plan: &MachinePlan,
    group: &VmGroup,
) -> Result<QemuProcess, BootError> {
    let argv = QemuArgs::build(spec, &host.caps).map_err(BootError::qemu(
        Some(&plan.vm_id),
        "build the QEMU command line",
    ))?;
    let jail = match &host.jail {
        Some(jail) => Some(
            crate::jail::prepare_async(
                jail,
                spec,
                plan.workdir.path().to_path_buf(),
                vec![plan.workdir.owner_file()],
                host.qemu_binary.clone(),
                host.caps.accel == airlock_qemu::Accel::Kvm,
                airlock_qemu::private_memory_file_read_only(&host.caps),
            )
            .await?,
        ),
        None => None,
    };
    let mut cmd = Command::new(&host.qemu_binary);
    cmd.args(&argv);
    // QEMU joins its group between fork and exec: limited from its
    // first instruction.
    group
        .prepare_tokio_command(&mut cmd)
        .map_err(BootError::limits(
            Some(&plan.vm_id),
            "put QEMU in its limits group",
        ))?;
    // After the group's hook: the group is joined in the host's view.
    let lease = jail.map(|jail| {
        jail.entry.install(cmd.as_std_mut());
        jail.lease
    });
    let logs = OutputLogs {
        qemu_log: plan.workdir.qemu_log(),
        console_log: spec.console_on_stdout.then(|| plan.workdir.console_log()),
        max_bytes: host.console_log_max_bytes,
    };
    let mut qemu = QemuProcess::spawn_logged(cmd, &plan.vm_id, &logs).await?;
    if let Some(lease) = lease {
        tracing::debug!(vm_id = plan.vm_id, uid = lease.uid(), "QEMU jailed");
        qemu.hold_jail(lease);
    }
    tracing::debug!(vm_id = plan.vm_id, pid = qemu.pid(), "QEMU started");
    Ok(qemu)
}

impl QemuLauncher {
    async fn wait_agent(
        plan: &MachinePlan,
        qemu: &mut QemuProcess,
        deadline: Instant,
    ) -> Result<Agent, BootError> {
        let files = GuestFiles::in_workdir(&plan.vm_id, &plan.workdir);
        guest::wait_ready(&files.paths(), qemu, deadline).await
    }
}

impl Launcher for QemuLauncher {
    fn name(&self) -> &'static str {
        "qemu-cold-boot"
    }

    fn spawn<'a>(
        &'a self,
        plan: &'a MachinePlan,
        group: &'a VmGroup,
    ) -> BoxFuture<'a, Result<QemuProcess, BootError>> {
        Box::pin(self.spawn_qemu(plan, group))
    }

    fn reach_agent<'a>(
        &'a self,
        plan: &'a MachinePlan,
        process: &'a mut QemuProcess,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Agent, BootError>> {
        Box::pin(Self::wait_agent(plan, process, deadline))
    }
}
