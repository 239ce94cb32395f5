//! Host probes (effectful): which QEMU, which version, io_uring, the TSC
//! frequency and a working accelerator. They run concurrently, once per
//! process ([`HostProber`]); the slow KVM verdict is also cached on disk.

mod binary;
pub mod cache;
mod io_uring;
pub mod kvm;
mod run;
pub mod tsc;

pub use kvm::{KvmReport, VerdictSource, DEFAULT_INIT_MARKER};
pub use tsc::TscSource;

use crate::accel::{choose_accel, parse_accel_override};
use crate::spec::BootImages;
use crate::{Arch, HostCaps, QemuError};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A standard `PATH`, used when none is given.
pub const DEFAULT_SEARCH_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Default deadline of the KVM probe boot.
pub const DEFAULT_KVM_BOOT_DEADLINE: Duration = Duration::from_secs(8);
/// Default deadline of short QEMU runs (`--version`, io_uring).
pub const DEFAULT_COMMAND_DEADLINE: Duration = Duration::from_secs(5);
/// Longest deadline accepted (a typo guard).
pub const MAX_PROBE_DEADLINE: Duration = Duration::from_secs(120);

/// How to probe the host. [`ProbeConfig::from_env`] reads the `AIRLOCK_*`
/// variables; [`Default`] reads nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    /// The QEMU binary to use (`AIRLOCK_QEMU`); else searched on `search_path`.
    pub qemu_binary: Option<PathBuf>,
    /// Where to search for QEMU (`PATH`).
    pub search_path: OsString,
    /// Raw `AIRLOCK_ACCEL` value (`kvm`, `tcg` or unset).
    pub accel_override: Option<String>,
    /// Airlock's cache dir (`AIRLOCK_CACHE_DIR`, else `~/.cache/airlock`);
    /// the KVM verdict is kept in its `probe/` folder. `None`: no disk cache.
    pub cache_dir: Option<PathBuf>,
    /// The guest kernel and initramfs the KVM probe boots. `None`: KVM is
    /// not verified and TCG is chosen.
    pub kvm_probe_images: Option<BootImages>,
    /// The KVM device.
    pub kvm_device: PathBuf,
    /// Deadline of the KVM probe boot.
    pub kvm_boot_deadline: Duration,
    /// Deadline of each short QEMU run.
    pub command_deadline: Duration,
    /// What the guest init prints first (a console substring).
    pub init_marker: String,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            qemu_binary: None,
            search_path: DEFAULT_SEARCH_PATH.into(),
            accel_override: None,
            cache_dir: None,
            kvm_probe_images: None,
            kvm_device: PathBuf::from("/dev/kvm"),
            kvm_boot_deadline: DEFAULT_KVM_BOOT_DEADLINE,
            command_deadline: DEFAULT_COMMAND_DEADLINE,
            init_marker: DEFAULT_INIT_MARKER.into(),
        }
    }
}

impl ProbeConfig {
    /// Defaults plus `AIRLOCK_QEMU`, `PATH`, `AIRLOCK_ACCEL`,
    /// the cache dir of `airlock_sys_util::dirs`. The KVM probe images are the caller's
    /// to set.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        Self {
            qemu_binary: var("AIRLOCK_QEMU").map(PathBuf::from),
            search_path: var("PATH").unwrap_or_else(|| DEFAULT_SEARCH_PATH.into()),
            accel_override: var("AIRLOCK_ACCEL").map(|v| v.to_string_lossy().into_owned()),
            cache_dir: airlock_sys_util::AirlockDirs::from_env()
                .ok()
                .map(|d| d.cache),
            ..Self::default()
        }
    }

    /// Checks the configuration.
    ///
    /// # Errors
    /// [`QemuError::InvalidProbeConfig`] for zero or huge deadlines, an
    /// empty init marker or relative paths; [`QemuError::InvalidAccelOverride`].
    pub fn validate(&self) -> Result<(), QemuError> {
        let bad = |reason: String| Err(QemuError::InvalidProbeConfig { reason });
        for (name, d) in [
            ("kvm_boot_deadline", self.kvm_boot_deadline),
            ("command_deadline", self.command_deadline),
        ] {
            if d.is_zero() || d > MAX_PROBE_DEADLINE {
                return bad(format!(
                    "{name} {d:?} is outside (0, {MAX_PROBE_DEADLINE:?}]"
                ));
            }
        }
        if self.init_marker.trim().is_empty() {
            return bad("init_marker is empty".into());
        }
        let mut paths: Vec<(&str, &Path)> = vec![("kvm_device", &self.kvm_device)];
        paths.extend(self.cache_dir.as_deref().map(|p| ("cache_dir", p)));
        paths.extend(self.qemu_binary.as_deref().map(|p| ("AIRLOCK_QEMU", p)));
        if let Some(images) = &self.kvm_probe_images {
            paths.push(("kvm probe kernel", &images.kernel));
            paths.push(("kvm probe initramfs", &images.initramfs));
        }
        for (name, path) in paths {
            if !path.is_absolute() {
                return bad(format!("{name} {} is not an absolute path", path.display()));
            }
        }
        parse_accel_override(self.accel_override.as_deref()).map(|_| ())
    }
}

/// What the probes found; `airlock doctor` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostReport {
    /// The QEMU binary.
    pub qemu_binary: PathBuf,
    /// The capabilities, with the accelerator finally chosen.
    pub caps: HostCaps,
    /// The KVM probe's verdict (before any override).
    pub kvm: KvmReport,
    /// Set when `AIRLOCK_ACCEL` contradicted the probe.
    pub accel_warning: Option<String>,
    /// Why io_uring is (not) used.
    pub io_uring_reason: String,
    /// Where the TSC frequency came from.
    pub tsc_source: Option<TscSource>,
    /// Wall time of all probes.
    pub elapsed: Duration,
}

/// Runs every probe, concurrently.
///
/// # Errors
/// An invalid config or override, an unsupported host architecture, a
/// missing or unreadable QEMU. A KVM or io_uring problem is not an error: it
/// selects TCG or thread-pool I/O, with the reason in the report.
pub async fn probe_host(config: &ProbeConfig) -> Result<HostReport, QemuError> {
    config.validate()?;
    let start = Instant::now();
    let arch = Arch::host().ok_or_else(|| QemuError::UnsupportedHostArch {
        arch: std::env::consts::ARCH.to_owned(),
    })?;
    let accel_override = parse_accel_override(config.accel_override.as_deref())?;
    let binary = binary::resolve(
        arch,
        config.qemu_binary.as_deref(),
        Some(OsStr::new(&config.search_path)),
    )
    .await?;

    let version_then_kvm = async {
        let version = binary::version(&binary, config.command_deadline).await?;
        let kvm = kvm::KvmProbe {
            binary: &binary,
            arch,
            version: &version,
            kvm_device: &config.kvm_device,
            images: config.kvm_probe_images.as_ref(),
            deadline: config.kvm_boot_deadline,
            init_marker: &config.init_marker,
            cache_dir: config.cache_dir.as_deref(),
        }
        .run()
        .await;
        Ok::<_, QemuError>((version, kvm))
    };
    let tsc = async {
        if arch != Arch::X86_64 {
            return None;
        }
        tokio::task::spawn_blocking(tsc::read_host_tsc_khz)
            .await
            .ok()
            .flatten()
    };
    let (version_kvm, io_uring, tsc) = tokio::join!(
        version_then_kvm,
        io_uring::probe(&binary, config.command_deadline),
        tsc,
    );
    let (qemu_version, kvm) = version_kvm?;

    let choice = choose_accel(&kvm.verdict, accel_override);
    if let Some(warning) = &choice.warning {
        tracing::warn!(accel = %choice.accel, probe = %kvm.verdict.accel, "{warning}");
    }
    let report = HostReport {
        qemu_binary: binary,
        caps: HostCaps {
            arch,
            accel: choice.accel,
            qemu_version,
            io_uring: io_uring.available,
            tsc_khz: tsc.map(|(khz, _)| khz),
        },
        kvm,
        accel_warning: choice.warning,
        io_uring_reason: io_uring.reason,
        tsc_source: tsc.map(|(_, source)| source),
        elapsed: start.elapsed(),
    };
    tracing::info!(
        qemu = %report.qemu_binary.display(),
        version = %report.caps.qemu_version,
        accel = %report.caps.accel,
        accel_reason = %report.kvm.verdict.reason,
        io_uring = report.caps.io_uring,
        tsc_khz = ?report.caps.tsc_khz,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "host probed"
    );
    Ok(report)
}

/// Runs [`probe_host`] once per process and hands out the same report.
#[derive(Debug)]
pub struct HostProber {
    config: ProbeConfig,
    report: tokio::sync::OnceCell<HostReport>,
}

impl HostProber {
    /// A prober for `config`; nothing runs until [`HostProber::report`].
    pub fn new(config: ProbeConfig) -> Self {
        Self {
            config,
            report: tokio::sync::OnceCell::new(),
        }
    }

    /// The report, probing on the first call. A failed probe is not
    /// remembered: the next call tries again.
    ///
    /// # Errors
    /// As [`probe_host`].
    pub async fn report(&self) -> Result<&HostReport, QemuError> {
        self.report
            .get_or_try_init(|| probe_host(&self.config))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        ProbeConfig::default().validate().unwrap();
    }

    #[test]
    fn config_rejects_zero_deadline() {
        let config = ProbeConfig {
            kvm_boot_deadline: Duration::ZERO,
            ..ProbeConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(QemuError::InvalidProbeConfig { .. })
        ));
    }

    #[test]
    fn config_rejects_relative_images_and_empty_marker() {
        let config = ProbeConfig {
            kvm_probe_images: Some(BootImages {
                kernel: "bzImage".into(),
                initramfs: "/i".into(),
            }),
            ..ProbeConfig::default()
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("bzImage"));
        let config = ProbeConfig {
            init_marker: " ".into(),
            ..ProbeConfig::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn config_rejects_bad_accel_override() {
        let config = ProbeConfig {
            accel_override: Some("xen".into()),
            ..ProbeConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(QemuError::InvalidAccelOverride { .. })
        ));
    }
}
