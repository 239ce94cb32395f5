//! What the host offers (QEMU, accelerator), probed once. Probe results
//! only: the QEMU spec of a VM is built in `qemu_spec.rs`.

use crate::error::{BootError, Result};
use crate::images::Images;
use airlock_qemu::{probe_host, BootImages, HostCaps, ProbeConfig};
use std::path::PathBuf;

/// The probed host.
#[derive(Debug, Clone)]
pub struct Host {
    /// The QEMU binary.
    pub qemu_binary: PathBuf,
    /// Accelerator, QEMU version, io_uring, TSC.
    pub caps: HostCaps,
    /// Why this accelerator (one line).
    pub accel_reason: String,
    /// The jail QEMU runs in (`None`: as this process; see `jail.rs`).
    /// Set from the configuration by the VM manager.
    pub jail: Option<crate::jail::Jail>,
    /// The budget of each VM's console log and QEMU log.
    pub console_log_max_bytes: u64,
}

impl Host {
    /// Probes QEMU and the accelerator (the KVM verdict is cached on disk,
    /// keyed by kernel, QEMU and host), honouring `AIRLOCK_QEMU` and
    /// `AIRLOCK_ACCEL`.
    ///
    /// # Errors
    /// [`crate::BootError::Qemu`] (missing QEMU names the fix).
    pub async fn probe(images: &Images) -> Result<Self, BootError> {
        let mut config = ProbeConfig::from_env();
        config.kvm_probe_images = Some(BootImages {
            kernel: images.kernel.clone(),
            initramfs: images.initramfs.clone(),
        });
        let report = probe_host(&config)
            .await
            .map_err(BootError::qemu(None, "probe the host"))?;
        let accel_reason = match &report.accel_warning {
            Some(warning) => format!("{}; {warning}", report.kvm.verdict.reason),
            None => report.kvm.verdict.reason.clone(),
        };
        Ok(Self {
            qemu_binary: report.qemu_binary,
            caps: report.caps,
            accel_reason,
            jail: None,
            console_log_max_bytes: crate::capped_log::DEFAULT_CONSOLE_LOG_MAX_BYTES,
        })
    }
}
