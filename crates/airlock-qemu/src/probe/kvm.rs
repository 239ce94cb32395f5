//! Is KVM usable for real guests? A functional check, not a file test.
//!
//! A `/dev/kvm` that opens is not enough: a nested or paravirtual KVM may
//! refuse CPU state (`failed to set MSR 0x10a`, QEMU aborts) or leave the
//! guest spinning in the kernel decompressor. So the probe boots the real
//! guest kernel and initramfs under `-accel kvm -cpu host` with a short
//! deadline and watches the serial console: the kernel banner, then the
//! kernel starting init or the init's first line (or QEMU exiting cleanly
//! after the guest powered off) mean KVM works. Anything else means TCG,
//! with the reason.

use super::cache::{self, CacheKey, CachedVerdict, PROBE_FORMAT};
use super::run::{describe_status, STDERR_TAIL_BYTES};
use super::tsc::parse_cpu_model;
use crate::accel::AccelVerdict;
use crate::args::{base_kernel_words, Argv};
use crate::spec::BootImages;
use crate::{Accel, Arch, HostCaps, QemuError, QemuVersion};
use airlock_sys_util::{tail_text, IoResultExt, TailBuffer};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// What the kernel prints first on the console (`pr_notice`, hence the probe
/// boots without `quiet`).
pub const KERNEL_BANNER: &str = "Linux version ";
/// What the kernel prints as it starts the initramfs's init: userspace is
/// next, so timers, interrupts and memory work. The guest init may print its
/// own first line only seconds later (it waits for a root disk the probe
/// does not give), so this line counts as reaching init too.
pub const KERNEL_INIT_HANDOVER: &str = "Run /init as init process";
/// The prefix of every line the guest init prints.
pub const DEFAULT_INIT_MARKER: &str = airlock_protocol::abi::INIT_LOG_PREFIX;
/// Guest memory for the probe boot.
pub const PROBE_MEMORY_MIB: u32 = 128;
/// How often the probe looks at the console and the process.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Where a KVM verdict came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictSource {
    /// A probe boot ran just now.
    Probe,
    /// The on-disk cache held a verdict for the same inputs.
    Cache,
    /// No boot was possible (no `/dev/kvm`, no guest images, QEMU did not
    /// start): TCG without trying.
    Precheck,
}

/// The KVM probe's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmReport {
    /// The verdict and its reason.
    pub verdict: AccelVerdict,
    /// Where it came from.
    pub source: VerdictSource,
    /// How long the KVM part took (cache lookup included).
    pub elapsed: Duration,
    /// The cache file written or read, if any.
    pub cache_file: Option<PathBuf>,
}

/// How far the guest got, as the console shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConsoleProgress {
    /// Nothing recognisable yet.
    Nothing,
    /// The kernel banner appeared.
    Kernel,
    /// The kernel started init, or init printed its first line.
    Init,
}

/// Reads the console text.
pub fn console_progress(console: &str, init_marker: &str) -> ConsoleProgress {
    if console.contains(init_marker) || console.contains(KERNEL_INIT_HANDOVER) {
        ConsoleProgress::Init
    } else if console.contains(KERNEL_BANNER) {
        ConsoleProgress::Kernel
    } else {
        ConsoleProgress::Nothing
    }
}

/// How the probe boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootEnd {
    /// The init's line appeared (QEMU was then killed).
    InitReached,
    /// QEMU exited by itself.
    Exited {
        /// Whether the exit status was 0.
        success: bool,
        /// The status, readable.
        status: String,
    },
    /// The deadline passed (QEMU was then killed).
    TimedOut(Duration),
}

/// Everything the probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootObservation {
    /// How it ended.
    pub end: BootEnd,
    /// How far the guest got.
    pub progress: ConsoleProgress,
    /// QEMU's stderr, tail.
    pub stderr_tail: String,
    /// The console's last line, if any.
    pub console_last_line: String,
    /// From spawn to end.
    pub elapsed: Duration,
}

/// Turns what the probe saw into a verdict.
pub fn kvm_verdict(obs: &BootObservation) -> AccelVerdict {
    let ms = obs.elapsed.as_millis();
    let tcg = |reason: String| AccelVerdict {
        accel: Accel::Tcg,
        reason,
    };
    let stderr = || {
        if obs.stderr_tail.is_empty() {
            String::new()
        } else {
            format!(": {}", one_line(&obs.stderr_tail))
        }
    };
    match (&obs.end, obs.progress) {
        (BootEnd::InitReached, _) => AccelVerdict {
            accel: Accel::Kvm,
            reason: format!("a KVM guest booted to its init in {ms} ms"),
        },
        (
            BootEnd::Exited { success: true, .. },
            ConsoleProgress::Kernel | ConsoleProgress::Init,
        ) => AccelVerdict {
            accel: Accel::Kvm,
            reason: format!("a KVM guest booted and powered off in {ms} ms"),
        },
        (BootEnd::Exited { success: true, .. }, ConsoleProgress::Nothing) => tcg(format!(
            "QEMU under KVM exited after {ms} ms before the guest printed anything{}",
            stderr()
        )),
        (
            BootEnd::Exited {
                success: false,
                status,
            },
            progress,
        ) => tcg(format!(
            "QEMU under KVM failed ({status}) after {ms} ms{}{}",
            if progress == ConsoleProgress::Nothing {
                ", before the guest kernel printed anything"
            } else {
                ", after the guest kernel started"
            },
            stderr()
        )),
        (BootEnd::TimedOut(deadline), progress) => tcg(format!(
            "a KVM guest {} within {:.1} s (last console line: {:?})",
            match progress {
                ConsoleProgress::Nothing =>
                    "printed nothing (hung before or in the kernel decompressor)",
                _ => "started its kernel but did not reach init",
            },
            deadline.as_secs_f64(),
            obs.console_last_line
        )),
    }
}

fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The argv of the probe boot: the same machine as real VMs, with KVM and
/// the host CPU, no disks or ports, a verbose kernel and the console in
/// `console_log`.
pub fn probe_args(
    arch: Arch,
    version: &QemuVersion,
    images: &BootImages,
    console_log: &Path,
) -> Vec<OsString> {
    let caps = HostCaps {
        arch,
        accel: Accel::Kvm,
        qemu_version: version.clone(),
        io_uring: false,
        tsc_khz: None,
    };
    let mut argv = Argv::default();
    argv.push_base(
        "kvm-probe",
        &caps,
        PROBE_MEMORY_MIB,
        1,
        crate::TCG_TB_SIZE_MIB,
    );
    argv.push_boot(
        &images.kernel,
        &images.initramfs,
        &base_kernel_words(&caps, false).join(" "),
    );
    argv.push_console(console_log);
    argv.push_rng();
    argv.0
}

/// Inputs of one KVM probe.
#[derive(Debug, Clone)]
pub(crate) struct KvmProbe<'a> {
    pub(crate) binary: &'a Path,
    pub(crate) arch: Arch,
    pub(crate) version: &'a QemuVersion,
    pub(crate) kvm_device: &'a Path,
    pub(crate) images: Option<&'a BootImages>,
    pub(crate) deadline: Duration,
    pub(crate) init_marker: &'a str,
    pub(crate) cache_dir: Option<&'a Path>,
}

impl KvmProbe<'_> {
    /// Runs the probe (or reads its cached verdict). Never fails: problems
    /// become a TCG verdict with the reason.
    pub(crate) async fn run(&self) -> KvmReport {
        let start = Instant::now();
        let precheck = |reason: String| KvmReport {
            verdict: AccelVerdict {
                accel: Accel::Tcg,
                reason,
            },
            source: VerdictSource::Precheck,
            elapsed: start.elapsed(),
            cache_file: None,
        };
        if let Err(e) = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.kvm_device)
            .await
        {
            return precheck(format!(
                "cannot open {} read-write ({e}): no KVM here, or add the user to the `kvm` group",
                self.kvm_device.display()
            ));
        }
        let Some(images) = self.images else {
            return precheck(
                "KVM not verified: no guest kernel to boot (build the images with `cargo xtask images`)"
                    .into(),
            );
        };
        let key = match self.cache_key(images).await {
            Ok(key) => key,
            Err(e) => {
                return precheck(format!(
                    "KVM not verified: {e} (build the images with `cargo xtask images`)"
                ))
            }
        };
        if let Some(dir) = self.cache_dir {
            if let Some(hit) = cache::load(dir, &key).await {
                tracing::debug!(file = %key.file_name(), accel = %hit.verdict.accel, "kvm probe: cache hit");
                return KvmReport {
                    verdict: hit.verdict,
                    source: VerdictSource::Cache,
                    elapsed: start.elapsed(),
                    cache_file: Some(cache::probe_dir(dir).join(key.file_name())),
                };
            }
        }

        let obs = match self.boot(images).await {
            Ok(obs) => obs,
            Err(e) => return precheck(format!("KVM not verified: {e}")),
        };
        let verdict = kvm_verdict(&obs);
        tracing::info!(
            accel = %verdict.accel,
            reason = %verdict.reason,
            elapsed_ms = obs.elapsed.as_millis() as u64,
            "kvm probe finished"
        );
        let mut cache_file = None;
        if let Some(dir) = self.cache_dir {
            let entry = CachedVerdict {
                key,
                verdict: verdict.clone(),
                probe_ms: obs.elapsed.as_millis() as u64,
                probed_at_unix: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            };
            match cache::store(dir, &entry).await {
                Ok(path) => cache_file = Some(path),
                Err(e) => tracing::warn!(error = %e, "kvm probe: cannot cache the verdict"),
            }
        }
        KvmReport {
            verdict,
            source: VerdictSource::Probe,
            elapsed: start.elapsed(),
            cache_file,
        }
    }

    async fn cache_key(&self, images: &BootImages) -> Result<CacheKey, QemuError> {
        let (kernel, initramfs, release, cpuinfo) = tokio::join!(
            cache::file_sha256(&images.kernel),
            cache::file_sha256(&images.initramfs),
            tokio::fs::read_to_string("/proc/sys/kernel/osrelease"),
            tokio::fs::read_to_string("/proc/cpuinfo"),
        );
        Ok(CacheKey {
            probe_format: PROBE_FORMAT,
            kernel_sha256: kernel?,
            initramfs_sha256: initramfs?,
            qemu_version: self.version.to_string(),
            host_kernel: release.map(|r| r.trim().to_owned()).unwrap_or_default(),
            cpu_model: cpuinfo
                .ok()
                .as_deref()
                .and_then(parse_cpu_model)
                .unwrap_or_default(),
        })
    }

    async fn boot(&self, images: &BootImages) -> Result<BootObservation, QemuError> {
        let scratch = tempfile::Builder::new()
            .prefix("airlock-kvm-probe-")
            .tempdir()
            .with_path("create a temp dir for", std::env::temp_dir())?;
        let console_log = scratch.path().join("console.log");
        let args = probe_args(self.arch, self.version, images, &console_log);
        tracing::debug!(binary = %self.binary.display(), ?args, "kvm probe: booting");

        let start = Instant::now();
        let mut child = Command::new(self.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .map_err(|source| QemuError::Spawn {
                program: self.binary.to_path_buf(),
                source,
            })?;
        let stderr_pipe = child.stderr.take();
        let stderr_task = tokio::spawn(async move {
            // Keep the tail only; never stop reading (a full pipe would
            // block QEMU).
            let mut buf = TailBuffer::new(STDERR_TAIL_BYTES);
            if let Some(mut pipe) = stderr_pipe {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    buf.push(&chunk[..n]);
                }
            }
            buf.text()
        });

        let mut console;
        let end = loop {
            tokio::time::sleep(POLL_INTERVAL).await;
            console = read_console(&console_log).await;
            if console_progress(&console, self.init_marker) == ConsoleProgress::Init {
                break BootEnd::InitReached;
            }
            match child.try_wait() {
                Ok(Some(status)) => {
                    console = read_console(&console_log).await;
                    break BootEnd::Exited {
                        success: status.success(),
                        status: describe_status(status),
                    };
                }
                Ok(None) => {}
                Err(e) => {
                    break BootEnd::Exited {
                        success: false,
                        status: format!("cannot wait for QEMU: {e}"),
                    }
                }
            }
            if start.elapsed() >= self.deadline {
                break BootEnd::TimedOut(self.deadline);
            }
        };
        let elapsed = start.elapsed();
        if !matches!(end, BootEnd::Exited { .. }) {
            let _ = child.start_kill();
        }
        if tokio::time::timeout(Duration::from_secs(2), child.wait())
            .await
            .is_err()
        {
            tracing::warn!("kvm probe: QEMU did not die within 2 s of SIGKILL");
        }
        let stderr_tail = match tokio::time::timeout(Duration::from_secs(1), stderr_task).await {
            Ok(Ok(text)) => tail_text(&text, STDERR_TAIL_BYTES),
            _ => String::new(),
        };
        Ok(BootObservation {
            end,
            progress: console_progress(&console, self.init_marker),
            stderr_tail,
            console_last_line: console
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty())
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect(),
            elapsed,
        })
    }
}

async fn read_console(path: &Path) -> String {
    tokio::fs::read(path)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(end: BootEnd, progress: ConsoleProgress, stderr: &str) -> BootObservation {
        BootObservation {
            end,
            progress,
            stderr_tail: stderr.into(),
            console_last_line: "[ 0.1] Run /init as init process".into(),
            elapsed: Duration::from_millis(420),
        }
    }

    #[test]
    fn console_progress_orders_kernel_then_init() {
        assert_eq!(
            console_progress("", DEFAULT_INIT_MARKER),
            ConsoleProgress::Nothing
        );
        assert_eq!(
            console_progress("[0.0] Linux version 6.1.0 (gcc)", DEFAULT_INIT_MARKER),
            ConsoleProgress::Kernel
        );
        assert_eq!(
            console_progress(
                "Linux version 6.1\nairlock-init: ready kernel_ms=1",
                DEFAULT_INIT_MARKER
            ),
            ConsoleProgress::Init
        );
    }

    #[test]
    fn init_reached_means_kvm() {
        let v = kvm_verdict(&obs(BootEnd::InitReached, ConsoleProgress::Init, ""));
        assert_eq!(v.accel, Accel::Kvm);
        assert!(v.reason.contains("420 ms"), "{}", v.reason);
    }

    #[test]
    fn clean_exit_after_kernel_banner_means_kvm() {
        let end = BootEnd::Exited {
            success: true,
            status: "exit code 0".into(),
        };
        let v = kvm_verdict(&obs(end, ConsoleProgress::Kernel, ""));
        assert_eq!(v.accel, Accel::Kvm);
    }

    #[test]
    fn clean_exit_without_output_means_tcg() {
        let end = BootEnd::Exited {
            success: true,
            status: "exit code 0".into(),
        };
        let v = kvm_verdict(&obs(end, ConsoleProgress::Nothing, ""));
        assert_eq!(v.accel, Accel::Tcg);
        assert!(v.reason.contains("before the guest printed anything"));
    }

    #[test]
    fn msr_abort_means_tcg_with_qemu_error_in_reason() {
        let end = BootEnd::Exited {
            success: false,
            status: "killed by signal 6 (SIGABRT)".into(),
        };
        let stderr = "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n\
                      qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion failed.";
        let v = kvm_verdict(&obs(end, ConsoleProgress::Nothing, stderr));
        assert_eq!(v.accel, Accel::Tcg);
        assert!(v.reason.contains("SIGABRT"), "{}", v.reason);
        assert!(v.reason.contains("failed to set MSR 0x10a"), "{}", v.reason);
        assert!(!v.reason.contains('\n'), "{}", v.reason);
    }

    #[test]
    fn hang_in_decompressor_means_tcg() {
        let v = kvm_verdict(&obs(
            BootEnd::TimedOut(Duration::from_secs(8)),
            ConsoleProgress::Nothing,
            "",
        ));
        assert_eq!(v.accel, Accel::Tcg);
        assert!(v.reason.contains("printed nothing"), "{}", v.reason);
        assert!(v.reason.contains("8.0 s"), "{}", v.reason);
    }

    #[test]
    fn hang_after_kernel_start_means_tcg() {
        let v = kvm_verdict(&obs(
            BootEnd::TimedOut(Duration::from_secs(8)),
            ConsoleProgress::Kernel,
            "",
        ));
        assert_eq!(v.accel, Accel::Tcg);
        assert!(v.reason.contains("did not reach init"), "{}", v.reason);
        assert!(v.reason.contains("Run /init"), "{}", v.reason);
    }
}
