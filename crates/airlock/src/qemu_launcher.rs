//! The cold-boot [`Launcher`]: QEMU started from the kernel and initramfs,
//! in its own process group inside the VM's limits group, then the agent
//! awaited over the virtio-serial sockets.

use crate::error::Result;
use crate::guest::{self, Agent, GuestPaths};
use crate::host::Host;
use crate::launcher::{BoxFuture, Launcher, MachinePlan};
use crate::process::QemuProcess;
use crate::qemu_spec::vm_spec;
use airlock_limits::VmGroup;
use airlock_qemu::{BootImages, QemuArgs};
use tokio::process::Command;
use tokio::time::Instant;

/// Boots QEMU from scratch on the probed host.
#[derive(Debug, Clone)]
pub struct QemuLauncher {
    host: Host,
    boot: BootImages,
}

impl QemuLauncher {
    /// A launcher booting `boot` with the QEMU and accelerator of `host`.
    pub fn new(host: Host, boot: BootImages) -> Self {
        Self { host, boot }
    }

    async fn spawn_qemu(&self, plan: &MachinePlan, group: &VmGroup) -> Result<QemuProcess> {
        let argv = QemuArgs::build(&vm_spec(plan, &self.boot), &self.host.caps)?;
        let mut cmd = Command::new(&self.host.qemu_binary);
        cmd.args(&argv);
        // QEMU joins its group between fork and exec: limited from its
        // first instruction.
        group.prepare_tokio_command(&mut cmd)?;
        let qemu = QemuProcess::spawn(cmd, &plan.vm_id, &plan.workdir.qemu_log()).await?;
        tracing::debug!(vm_id = plan.vm_id, pid = qemu.pid(), "QEMU started");
        Ok(qemu)
    }

    async fn wait_agent(
        plan: &MachinePlan,
        qemu: &mut QemuProcess,
        deadline: Instant,
    ) -> Result<Agent> {
        let workdir = &plan.workdir;
        let (cmd_socket, event_socket, console_log) = (
            workdir.cmd_socket(),
            workdir.event_socket(),
            workdir.console_log(),
        );
        let paths = GuestPaths {
            vm_id: &plan.vm_id,
            cmd_socket: &cmd_socket,
            event_socket: &event_socket,
            console_log: &console_log,
        };
        guest::wait_ready(&paths, qemu, deadline).await
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
    ) -> BoxFuture<'a, Result<QemuProcess>> {
        Box::pin(self.spawn_qemu(plan, group))
    }

    fn reach_agent<'a>(
        &'a self,
        plan: &'a MachinePlan,
        process: &'a mut QemuProcess,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Agent>> {
        Box::pin(Self::wait_agent(plan, process, deadline))
    }
}
