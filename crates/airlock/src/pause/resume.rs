//! The resume [`Launcher`]: QEMU started with the saved machine and
//! `-incoming defer`, the whole saved state loaded over QMP, `cont`, the
//! agent reached and given the host's clock. The builder around it is the
//! normal one (slot, limits group, root overlay, teardown).

use crate::error::{BootError, Result};
use crate::guest::Agent;
use crate::host::Host;
use crate::launcher::{Launcher, MachinePlan};
use crate::process::QemuProcess;
use crate::qemu_launcher::spawn_spec;
use crate::qemu_spec::vm_spec;
use crate::task::BoxFuture;
use crate::template::restore::{load_and_reach_agent, SavedState};
use crate::workdir::WorkDir;
use airlock_limits::VmGroup;
use airlock_qemu::{BootImages, IncomingMigration, MemoryFile, MemorySharing, VmSpec};
use std::path::{Path, PathBuf};
use tokio::time::Instant;

/// The name of a resumed VM's saved workspace disk in its work dir (the
/// base of its workspace overlay).
const WORKSPACE_BASE: &str = "workspace-base.qcow2";

/// Starts VMs from one saved machine: a paused session's, or a fork's
/// (each child one VM).
#[derive(Debug, Clone)]
pub struct ResumeLauncher {
    host: Host,
    boot: BootImages,
    state: PathBuf,
    workspace: Option<PathBuf>,
    named_ram: bool,
    label: String,
    /// Loads copies of a live machine (a fork's children), not the one
    /// machine a pause saved.
    copies: bool,
    /// The guest RAM starts as this memory file mapped privately (a
    /// template's), and `state` holds only the pages that differ from it
    /// (`pause/fork.rs`); `None`: the RAM starts empty.
    base_memory: Option<super::fork::BaseMemory>,
    /// The saved machine is still being written (a fork's children are
    /// built while their parent is saved): its disk is placed, and its
    /// state loaded, once the gate says so.
    gate: Option<super::gate::Gate>,
    /// The workspace overlay of the first VM placed, for the others
    /// (copies of one machine) to be written from.
    overlay_seed: std::sync::Arc<tokio::sync::OnceCell<Option<airlock_overlay::Seed>>>,
}

impl ResumeLauncher {
    /// The same launcher for a fork's children: each is one of several
    /// copies of a live machine, so its reseed ends the interpreters whose
    /// random state all copies would share (a Node: `docs/templates.md`).
    #[must_use]
    pub fn for_copies(mut self) -> Self {
        self.copies = true;
        self
    }

    /// The same launcher with the guest RAM starting as `memory` mapped
    /// privately, copy on write, as a template clone's: `state` must then
    /// be a stream filtered against that file
    /// ([`airlock_qemu::delta_against_base`]). Once loaded, QEMU is
    /// checked to map that very file.
    #[must_use]
    pub fn with_base_memory(mut self, memory: super::fork::BaseMemory) -> Self {
        self.base_memory = Some(memory);
        self
    }

    /// The same launcher for a machine still being saved: it places the
    /// disk and loads the state only once `gate` lets it
    /// (`pause/gate.rs`).
    #[must_use]
    pub(crate) fn after(mut self, gate: super::gate::Gate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// A launcher loading the state stream `state` (and the saved disk
    /// `workspace`, if any) with the QEMU of `host`; `named_ram` as the
    /// saved VM's RAM was; `label` names it in errors and logs.
    pub fn new(
        host: Host,
        boot: BootImages,
        state: PathBuf,
        workspace: Option<PathBuf>,
        named_ram: bool,
        label: String,
    ) -> Self {
        Self {
            host,
            boot,
            state,
            workspace,
            named_ram,
            label,
            copies: false,
            base_memory: None,
            gate: None,
            overlay_seed: std::sync::Arc::default(),
        }
    }

    /// The QEMU spec of a VM of `plan` this launcher starts (pure).
    fn spec(&self, plan: &MachinePlan) -> VmSpec {
        let mut spec = resume_spec(plan, &self.boot, self.named_ram);
        spec.memory_file = self.base_memory.as_ref().map(|base| MemoryFile {
            path: base.path.clone(),
            sharing: MemorySharing::Private,
        });
        spec
    }

    async fn place(&self, workdir: &WorkDir, saved: &Path) -> Result<PathBuf, BootError> {
        if let Some(gate) = &self.gate {
            gate.disk_saved(&self.label).await?;
        }
        let base = workdir.path().join(WORKSPACE_BASE);
        link_or_copy(saved, &base).await?;
        let overlay = workdir.workspace();
        let failed = |reason: String| BootError::Workspace {
            disk_mib: 0,
            reason: format!(
                "put an overlay over the saved disk of {}: {reason}",
                self.label
            ),
        };
        // Its backing named relatively (the base beside it), every copy's
        // overlay is the same file: the first is made by qemu-img, the
        // others written from it.
        let create = || async {
            let args: Vec<std::ffi::OsString> = vec![
                "create".into(),
                "-q".into(),
                "-f".into(),
                "qcow2".into(),
                "-F".into(),
                "qcow2".into(),
                "-b".into(),
                WORKSPACE_BASE.into(),
                overlay.as_os_str().to_owned(),
            ];
            crate::disk::run_tool("qemu-img", &args)
                .await
                .map_err(failed)
        };
        let mut made_here = false;
        let seed = self
            .overlay_seed
            .get_or_try_init(|| async {
                made_here = true;
                create().await?;
                Ok::<_, BootError>(airlock_overlay::read_seed(&overlay).await)
            })
            .await?;
        match seed {
            _ if made_here => {}
            Some(seed) => airlock_overlay::write_from_seed(&overlay, seed)
                .await
                .map_err(|e| failed(e.to_string()))?,
            None => create().await?,
        }
        Ok(base)
    }

    async fn load(
        &self,
        plan: &MachinePlan,
        process: &mut QemuProcess,
        deadline: Instant,
    ) -> Result<Agent, BootError> {
        if let Some(gate) = &self.gate {
            gate.saved(&self.label).await?;
        }
        let saved = SavedState {
            path: &self.state,
            label: &self.label,
            whole_machine: true,
            copy: self.copies,
        };
        let agent = load_and_reach_agent(plan, process, deadline, saved).await?;
        // Checked once QEMU is surely up (it maps its RAM as it starts,
        // before QMP answers); a VM over another file is torn down before
        // anyone sees it.
        if let Some(base) = &self.base_memory {
            base.check_mapped_by(process.pid()).await?;
        }
        tracing::info!(vm_id = plan.vm_id, saved = self.label, timings = ?agent.restore, "machine loaded from a saved state");
        Ok(agent)
    }
}

/// The QEMU spec of a VM loading a saved machine (pure): the cold-boot
/// spec of `plan`, its RAM named as the saved one's, waiting for its
/// state.
pub fn resume_spec(plan: &MachinePlan, boot: &BootImages, named_ram: bool) -> VmSpec {
    let mut spec = vm_spec(plan, boot);
    spec.named_ram = named_ram;
    spec.incoming = Some(IncomingMigration::Defer);
    spec
}

/// Hard-links `from` to `to` (a fork's children share one saved disk,
/// read-only under their overlays), copying when they are on different
/// file systems (a paused session's disk in the cache).
async fn link_or_copy(from: &Path, to: &Path) -> Result<(), BootError> {
    match tokio::fs::hard_link(from, to).await {
        Ok(()) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(nix::libc::EXDEV)
                || e.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            tokio::fs::copy(from, to)
                .await
                .map(drop)
                .map_err(|e| BootError::io("copy the saved disk to", to, e))
        }
        Err(e) => Err(BootError::io("link the saved disk to", to, e)),
    }
}

impl Launcher for ResumeLauncher {
    fn name(&self) -> &'static str {
        "qemu-resume"
    }

    fn place_workspace<'a>(
        &'a self,
        workdir: &'a WorkDir,
    ) -> Option<BoxFuture<'a, Result<PathBuf, BootError>>> {
        let saved = self.workspace.as_deref()?;
        Some(Box::pin(self.place(workdir, saved)))
    }

    fn spawn<'a>(
        &'a self,
        plan: &'a MachinePlan,
        group: &'a VmGroup,
    ) -> BoxFuture<'a, Result<QemuProcess, BootError>> {
        Box::pin(async move {
            let spec = self.spec(plan);
            spawn_spec(&self.host, &spec, plan, group).await
        })
    }

    fn reach_agent<'a>(
        &'a self,
        plan: &'a MachinePlan,
        process: &'a mut QemuProcess,
        deadline: Instant,
    ) -> BoxFuture<'a, Result<Agent, BootError>> {
        Box::pin(self.load(plan, process, deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> MachinePlan {
        MachinePlan {
            workspace_base: Some(PathBuf::from("/run/vms/v/workspace-base.qcow2")),
            mounts: Vec::new(),
            packages: None,
            vm_id: "0123456789abcdef".into(),
            memory_mib: 512,
            vcpus: 1,
            workdir: WorkDir::at(PathBuf::from("/run/vms/v")),
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
    fn a_resumed_vm_is_the_cold_machine_waiting_for_its_state() {
        let cold = vm_spec(&plan(), &boot());
        let resumed = resume_spec(&plan(), &boot(), true);
        assert_eq!(resumed.incoming, Some(IncomingMigration::Defer));
        assert!(resumed.named_ram);
        assert_eq!(resumed.memory_file, None);
        assert_eq!(
            VmSpec {
                incoming: None,
                named_ram: false,
                ..resumed
            },
            cold
        );
        assert!(!resume_spec(&plan(), &boot(), false).named_ram);
    }

    fn test_host() -> Host {
        Host {
            qemu_binary: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            caps: airlock_qemu::HostCaps {
                arch: airlock_qemu::Arch::X86_64,
                accel: airlock_qemu::Accel::Tcg,
                qemu_version: airlock_qemu::QemuVersion::new(7, 2, 0),
                io_uring: false,
                tsc_khz: None,
            },
            accel_reason: "tests".into(),
            jail: None,
            console_log_max_bytes: 1 << 20,
        }
    }

    #[test]
    fn a_fork_child_maps_its_base_memory_privately_and_a_resume_starts_empty() {
        let launcher = ResumeLauncher::new(
            test_host(),
            boot(),
            PathBuf::from("/run/forks/f/state.delta"),
            None,
            true,
            "fork of s".into(),
        );
        assert_eq!(launcher.spec(&plan()).memory_file, None);
        let child = launcher
            .for_copies()
            .with_base_memory(crate::pause::fork::BaseMemory {
                path: PathBuf::from("/templates/t/memory"),
                dev: 1,
                ino: 2,
            });
        let spec = child.spec(&plan());
        assert_eq!(
            spec.memory_file,
            Some(MemoryFile {
                path: PathBuf::from("/templates/t/memory"),
                sharing: MemorySharing::Private,
            })
        );
        assert_eq!(spec.incoming, Some(IncomingMigration::Defer));
    }

    #[tokio::test]
    async fn copies_of_one_machine_get_the_same_overlay_each_over_its_own_base() {
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("saved.qcow2");
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&saved)
            .arg("16M")
            .status()
            .unwrap();
        assert!(made.success());
        let launcher = ResumeLauncher::new(
            test_host(),
            boot(),
            dir.path().join("state"),
            Some(saved.clone()),
            true,
            "fork of s".into(),
        )
        .for_copies();
        let mut overlays = Vec::new();
        for n in 0..3 {
            let workdir = WorkDir::at(dir.path().join(format!("vm-{n}")));
            std::fs::create_dir(workdir.path()).unwrap();
            let base = launcher.clone().place(&workdir, &saved).await.unwrap();
            assert_eq!(base, workdir.path().join(WORKSPACE_BASE));
            // The chain a later save reads: the overlay, then its own base.
            let info = std::process::Command::new("qemu-img")
                .args(["info", "--backing-chain", "--output=json"])
                .arg(workdir.workspace())
                .output()
                .unwrap();
            assert!(info.status.success());
            let chain: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
            assert_eq!(chain[1]["filename"], base.to_str().unwrap(), "{chain}");
            overlays.push(std::fs::read(workdir.workspace()).unwrap());
        }
        assert!(overlays.windows(2).all(|w| w[0] == w[1]));
    }

    #[tokio::test]
    async fn a_saved_disk_is_linked_on_the_same_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&from, b"disk").unwrap();
        link_or_copy(&from, &to).await.unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(&from).unwrap().ino(),
            std::fs::metadata(&to).unwrap().ino()
        );
    }
}
