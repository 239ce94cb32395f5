//! What the host offers (QEMU, accelerator), probed once, and the QEMU
//! command line of a VM built from it.

use crate::error::Result;
use crate::images::Images;
use crate::vm::VmOptions;
use crate::workdir::WorkDir;
use airlock_qemu::{
    probe_host, BootImages, DiskAccess, HostCaps, HostReport, ProbeConfig, QemuArgs, RootDisk,
    VmSpec,
};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The probed host.
#[derive(Debug, Clone)]
pub struct Host {
    /// The QEMU binary.
    pub qemu_binary: PathBuf,
    /// Accelerator, QEMU version, io_uring, TSC.
    pub caps: HostCaps,
    /// Why this accelerator (one line).
    pub accel_reason: String,
    /// The whole probe report.
    pub report: HostReport,
}

impl Host {
    /// Probes QEMU and the accelerator (the KVM verdict is cached on disk,
    /// keyed by kernel, QEMU and host), honouring `AIRLOCK_QEMU` and
    /// `AIRLOCK_ACCEL`.
    ///
    /// # Errors
    /// [`crate::Error::Qemu`] (missing QEMU names the fix).
    pub async fn probe(images: &Images) -> Result<Self> {
        let mut config = ProbeConfig::from_env();
        config.kvm_probe_images = Some(BootImages {
            kernel: images.kernel.clone(),
            initramfs: images.initramfs.clone(),
        });
        let report = probe_host(&config).await?;
        let accel_reason = match &report.accel_warning {
            Some(warning) => format!("{}; {warning}", report.kvm.verdict.reason),
            None => report.kvm.verdict.reason.clone(),
        };
        Ok(Self {
            qemu_binary: report.qemu_binary.clone(),
            caps: report.caps.clone(),
            accel_reason,
            report,
        })
    }

    /// The QEMU spec of one VM: its root disk is the overlay in its work
    /// dir over `base`; sockets and logs live in the work dir. Adjust it
    /// (network, kernel verbosity), then [`Host::argv`].
    pub fn vm_spec(
        &self,
        vm_id: &str,
        options: &VmOptions,
        images: &Images,
        workdir: &WorkDir,
        base: &Path,
    ) -> VmSpec {
        let mut spec = VmSpec::new(
            vm_id,
            BootImages {
                kernel: images.kernel.clone(),
                initramfs: images.initramfs.clone(),
            },
            RootDisk {
                base: base.to_path_buf(),
                overlay: workdir.overlay(),
                access: DiskAccess::ReadOnly,
            },
            workdir.path(),
        );
        spec.memory_mib = options.memory_mib;
        spec.vcpus = options.vcpus;
        spec.console_log = workdir.console_log();
        spec.cmd_socket = workdir.cmd_socket();
        spec.event_socket = workdir.event_socket();
        spec.qmp_socket = workdir.qmp_socket();
        spec
    }

    /// The QEMU arguments of `spec` on this host.
    ///
    /// # Errors
    /// [`crate::Error::Qemu`] for a spec QEMU cannot run.
    pub fn argv(&self, spec: &VmSpec) -> Result<Vec<OsString>> {
        Ok(QemuArgs::build(spec, &self.caps)?)
    }
}
