//! The host TSC frequency, which the guest gets as `tsc_early_khz`.
//!
//! Sources, best first: sysfs `tsc_freq_khz` (some kernels), the kernel
//! log's `tsc: Refined TSC clocksource calibration` or `tsc: Detected ...
//! MHz` line (from `/dev/kmsg`, when readable), then `/proc/cpuinfo`'s
//! `cpu MHz` of the first CPU (on hosts with frequency scaling that is the
//! current clock, not the TSC: hence last).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

/// Where the TSC frequency came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TscSource {
    /// `/sys/devices/system/cpu/cpu0/tsc_freq_khz`.
    Sysfs,
    /// The kernel log (`/dev/kmsg`).
    KernelLog,
    /// `/proc/cpuinfo`.
    Cpuinfo,
}

impl fmt::Display for TscSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sysfs => "sysfs tsc_freq_khz",
            Self::KernelLog => "kernel log",
            Self::Cpuinfo => "/proc/cpuinfo",
        })
    }
}

/// Parses a decimal MHz value such as `2596.120` into kHz (2596120),
/// without floating point. Digits past the third decimal are dropped.
pub fn mhz_to_khz(text: &str) -> Option<u32> {
    let text = text.trim();
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut khz: u32 = int.parse::<u32>().ok()?.checked_mul(1000)?;
    let mut scale = 100;
    for digit in frac.bytes().take(3) {
        khz = khz.checked_add(u32::from(digit - b'0') * scale)?;
        scale /= 10;
    }
    (khz > 0).then_some(khz)
}

/// The `cpu MHz` of the first processor in `/proc/cpuinfo`, in kHz.
pub fn parse_cpuinfo_khz(cpuinfo: &str) -> Option<u32> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "cpu MHz")
            .then(|| mhz_to_khz(value))
            .flatten()
    })
}

/// The CPU model of the first processor in `/proc/cpuinfo`: `model name`
/// on x86, implementer and part numbers on ARM.
pub fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
    };
    if let Some(model) = field("model name").filter(|m| !m.is_empty()) {
        return Some(model);
    }
    match (field("CPU implementer"), field("CPU part")) {
        (Some(implementer), Some(part)) => Some(format!("arm {implementer} {part}")),
        _ => None,
    }
}

/// The TSC frequency from kernel log text (one message per line, with or
/// without `/dev/kmsg` or `dmesg` prefixes). The refined calibration wins
/// over the first estimate.
pub fn parse_kernel_log_khz(log: &str) -> Option<u32> {
    let mut detected = None;
    let mut refined = None;
    for line in log.lines() {
        let Some(at) = line.find("tsc: ") else {
            continue;
        };
        let message = &line[at + 5..];
        if let Some(rest) = message.strip_prefix("Refined TSC clocksource calibration: ") {
            refined = rest.strip_suffix(" MHz").and_then(mhz_to_khz).or(refined);
        } else if let Some(rest) = message.strip_prefix("Detected ") {
            let mhz = rest
                .strip_suffix(" MHz processor")
                .or_else(|| rest.strip_suffix(" MHz TSC"));
            detected = mhz.and_then(mhz_to_khz).or(detected);
        }
    }
    refined.or(detected)
}

/// Reads the TSC frequency from the host. Blocking: call through
/// `spawn_blocking`. `None` on hosts without a TSC (aarch64) or when no
/// source is readable.
pub(crate) fn read_host_tsc_khz() -> Option<(u32, TscSource)> {
    if let Some(khz) = std::fs::read_to_string("/sys/devices/system/cpu/cpu0/tsc_freq_khz")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&k| k > 0)
    {
        return Some((khz, TscSource::Sysfs));
    }
    if let Some(khz) = read_kmsg().as_deref().and_then(parse_kernel_log_khz) {
        return Some((khz, TscSource::KernelLog));
    }
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .as_deref()
        .and_then(parse_cpuinfo_khz)
        .map(|khz| (khz, TscSource::Cpuinfo))
}

/// Most kernel log records read; the TSC lines come in the first second of
/// boot, so a ring that overflowed has lost them anyway.
const MAX_KMSG_RECORDS: usize = 50_000;

/// The kernel log records still in the ring, via a non-blocking read of
/// `/dev/kmsg` (one record per read, `EAGAIN` at the end). `None` when the
/// log is not readable (`dmesg_restrict`, containers).
fn read_kmsg() -> Option<String> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
        .ok()?;
    let mut log = String::new();
    let mut buf = vec![0u8; 8192];
    for _ in 0..MAX_KMSG_RECORDS {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                log.push_str(&String::from_utf8_lossy(&buf[..n]));
                if !log.ends_with('\n') {
                    log.push('\n');
                }
            }
            // EPIPE: records were overwritten under us; the next read goes on.
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    Some(log)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\
                           cpu MHz\t\t: 2596.120\ncache size\t: 512 KB\n\nprocessor\t: 1\n\
                           model name\t: AMD EPYC\ncpu MHz\t\t: 1800.000\n";

    #[test]
    fn cpuinfo_gives_first_cpu_mhz_in_khz() {
        assert_eq!(parse_cpuinfo_khz(CPUINFO), Some(2_596_120));
    }

    #[test]
    fn cpuinfo_without_mhz_gives_none() {
        assert_eq!(
            parse_cpuinfo_khz("processor : 0\nBogoMIPS : 100.00\n"),
            None
        );
    }

    #[test]
    fn cpu_model_reads_x86_model_name() {
        assert_eq!(parse_cpu_model(CPUINFO).as_deref(), Some("AMD EPYC"));
    }

    #[test]
    fn cpu_model_reads_arm_implementer_and_part() {
        let arm = "processor : 0\nBogoMIPS : 50.00\nCPU implementer : 0x41\nCPU part : 0xd0c\n";
        assert_eq!(parse_cpu_model(arm).as_deref(), Some("arm 0x41 0xd0c"));
    }

    #[test]
    fn mhz_conversion_handles_precision() {
        assert_eq!(mhz_to_khz("2596.120"), Some(2_596_120));
        assert_eq!(mhz_to_khz("2596.1"), Some(2_596_100));
        assert_eq!(mhz_to_khz("2596"), Some(2_596_000));
        assert_eq!(mhz_to_khz("2596.12345"), Some(2_596_123));
        assert_eq!(mhz_to_khz(" 3000.000 "), Some(3_000_000));
    }

    #[test]
    fn mhz_conversion_rejects_garbage_zero_and_overflow() {
        assert_eq!(mhz_to_khz(""), None);
        assert_eq!(mhz_to_khz(".5"), None);
        assert_eq!(mhz_to_khz("12a.0"), None);
        assert_eq!(mhz_to_khz("1.-5"), None);
        assert_eq!(mhz_to_khz("0.000"), None);
        assert_eq!(mhz_to_khz("99999999"), None);
    }

    #[test]
    fn kernel_log_prefers_refined_calibration() {
        let log = "6,100,0,-;tsc: Detected 2596.120 MHz processor\n\
                   6,300,900,-;tsc: Refined TSC clocksource calibration: 2596.118 MHz\n";
        assert_eq!(parse_kernel_log_khz(log), Some(2_596_118));
    }

    #[test]
    fn kernel_log_reads_dmesg_format_detected_line() {
        let log = "[    0.000000] [Firmware Bug]: TSC doesn't count with P0 frequency!\n\
                   [    0.000057] tsc: Detected 2596.120 MHz processor\n\
                   [    0.098203] TSC deadline timer available\n";
        assert_eq!(parse_kernel_log_khz(log), Some(2_596_120));
    }

    #[test]
    fn kernel_log_reads_detected_tsc_variant() {
        assert_eq!(
            parse_kernel_log_khz("tsc: Detected 1995.312 MHz TSC"),
            Some(1_995_312)
        );
    }

    #[test]
    fn kernel_log_without_tsc_lines_gives_none() {
        assert_eq!(
            parse_kernel_log_khz("clocksource: Switched to clocksource tsc\n"),
            None
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".{0,300}") {
            let _ = parse_cpuinfo_khz(&s);
            let _ = parse_kernel_log_khz(&s);
            let _ = parse_cpu_model(&s);
            let _ = mhz_to_khz(&s);
        }

        #[test]
        fn whole_mhz_values_convert_exactly(mhz in 1u32..4_000_000) {
            prop_assert_eq!(mhz_to_khz(&format!("{mhz}.000")), Some(mhz * 1000));
        }
    }
}
