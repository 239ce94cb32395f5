//! What the host offers: architecture, accelerator, QEMU version, io_uring,
//! TSC frequency. Plain data; [`crate::probe`] fills it in.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A host (and guest) CPU architecture Airlock runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// x86-64: `qemu-system-x86_64 -M microvm`.
    X86_64,
    /// 64-bit ARM: `qemu-system-aarch64 -M virt`.
    Aarch64,
}

impl Arch {
    /// The architecture this program was built for, if supported.
    pub fn host() -> Option<Self> {
        Self::from_rust_arch(std::env::consts::ARCH)
    }

    /// Maps a `std::env::consts::ARCH` value.
    pub fn from_rust_arch(arch: &str) -> Option<Self> {
        match arch {
            "x86_64" => Some(Self::X86_64),
            "aarch64" => Some(Self::Aarch64),
            _ => None,
        }
    }

    /// The QEMU system emulator binary for this architecture.
    pub fn qemu_binary_name(self) -> &'static str {
        match self {
            Self::X86_64 => "qemu-system-x86_64",
            Self::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The Debian package that ships [`Arch::qemu_binary_name`].
    pub fn qemu_package(self) -> &'static str {
        match self {
            Self::X86_64 => "qemu-system-x86",
            Self::Aarch64 => "qemu-system-arm",
        }
    }

    /// The guest's serial console device name.
    pub fn console_device(self) -> &'static str {
        match self {
            // The microvm's ISA 8250 UART.
            Self::X86_64 => "ttyS0",
            // The virt machine's PL011 UART.
            Self::Aarch64 => "ttyAMA0",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::X86_64 => "x86_64",
            Self::Aarch64 => "aarch64",
        })
    }
}

/// How QEMU runs guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulator (Tiny Code Generator): slower, always there.
    Tcg,
}

impl Accel {
    /// The name QEMU's `-accel` and `AIRLOCK_ACCEL` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A QEMU version as printed by `qemu-system-* --version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QemuVersion {
    /// Major version (`7` in 7.2.22).
    pub major: u32,
    /// Minor version (`2` in 7.2.22).
    pub minor: u32,
    /// Micro version (`22` in 7.2.22; 0 when absent).
    pub micro: u32,
    /// The distribution's package string, e.g. `Debian 1:7.2+dfsg-7+deb12u18`.
    pub package: Option<String>,
}

impl QemuVersion {
    /// A version without package string.
    pub fn new(major: u32, minor: u32, micro: u32) -> Self {
        Self {
            major,
            minor,
            micro,
            package: None,
        }
    }

    /// Reads the output of `qemu-system-* --version`: the first line that
    /// reads `QEMU emulator version X.Y[.Z] [(package)]`. `None` when there
    /// is no such line.
    pub fn parse(output: &str) -> Option<Self> {
        const PREFIX: &str = "QEMU emulator version ";
        let line = output.lines().find_map(|l| l.trim().strip_prefix(PREFIX))?;
        let (number, rest) = match line.split_once(char::is_whitespace) {
            Some((n, r)) => (n, r.trim()),
            None => (line, ""),
        };
        let mut parts = number.split('.');
        let major = parse_component(parts.next())?;
        let minor = parse_component(parts.next())?;
        let micro = match parts.next() {
            Some(p) => parse_component(Some(p))?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        let package = rest
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_owned);
        Some(Self {
            major,
            minor,
            micro,
            package,
        })
    }

    /// Whether this version is at least `major.minor`.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

fn parse_component(part: Option<&str>) -> Option<u32> {
    let part = part?;
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

impl fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)?;
        if let Some(package) = &self.package {
            write!(f, " ({package})")?;
        }
        Ok(())
    }
}

/// What the host offers, as far as the QEMU command line cares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCaps {
    /// Host (= guest) architecture.
    pub arch: Arch,
    /// The accelerator to use.
    pub accel: Accel,
    /// The QEMU that will run.
    pub qemu_version: QemuVersion,
    /// Whether QEMU accepts `aio=io_uring` here.
    pub io_uring: bool,
    /// The host TSC frequency in kHz (x86_64 only), handed to the guest so it
    /// skips its own calibration (which can hang under TCG on a busy host).
    pub tsc_khz: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_debian_version_with_package() {
        let out = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n\
                   Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n";
        let v = QemuVersion::parse(out).unwrap();
        assert_eq!((v.major, v.minor, v.micro), (7, 2, 22));
        assert_eq!(
            v.package.as_deref(),
            Some("Debian 1:7.2+dfsg-7+deb12u18+b3")
        );
    }

    #[test]
    fn parses_debian_example_from_the_brief() {
        let v = QemuVersion::parse("QEMU emulator version 7.2.18 (Debian 1:7.2+dfsg-7+deb12u18)")
            .unwrap();
        assert_eq!(v.to_string(), "7.2.18 (Debian 1:7.2+dfsg-7+deb12u18)");
    }

    #[test]
    fn parses_upstream_version_without_package() {
        let v = QemuVersion::parse("QEMU emulator version 9.0.0\nCopyright ...").unwrap();
        assert_eq!(v, QemuVersion::new(9, 0, 0));
    }

    #[test]
    fn parses_two_component_version_as_micro_zero() {
        let v = QemuVersion::parse("QEMU emulator version 8.2 (custom)").unwrap();
        assert_eq!((v.major, v.minor, v.micro), (8, 2, 0));
        assert_eq!(v.package.as_deref(), Some("custom"));
    }

    #[test]
    fn parses_version_after_leading_noise() {
        let out = "warning: something\nQEMU emulator version 6.2.0 (qemu-6.2.0-11.el9)\n";
        let v = QemuVersion::parse(out).unwrap();
        assert_eq!(
            v,
            QemuVersion {
                package: Some("qemu-6.2.0-11.el9".into()),
                ..QemuVersion::new(6, 2, 0)
            }
        );
    }

    #[test]
    fn rejects_output_without_version_line() {
        assert_eq!(QemuVersion::parse("qemu-img version 7.2.0"), None);
        assert_eq!(QemuVersion::parse(""), None);
    }

    #[test]
    fn rejects_malformed_numbers() {
        assert_eq!(QemuVersion::parse("QEMU emulator version 7"), None);
        assert_eq!(QemuVersion::parse("QEMU emulator version 7.x.1"), None);
        assert_eq!(QemuVersion::parse("QEMU emulator version 7.2.1.4"), None);
        assert_eq!(QemuVersion::parse("QEMU emulator version -7.2.1"), None);
        assert_eq!(
            QemuVersion::parse("QEMU emulator version 99999999999.2.1"),
            None
        );
    }

    #[test]
    fn at_least_compares_major_then_minor() {
        let v = QemuVersion::new(7, 2, 0);
        assert!(v.at_least(7, 2));
        assert!(v.at_least(6, 9));
        assert!(!v.at_least(7, 3));
        assert!(!v.at_least(8, 0));
    }

    #[test]
    fn arch_names_binary_package_and_console() {
        assert_eq!(Arch::X86_64.qemu_binary_name(), "qemu-system-x86_64");
        assert_eq!(Arch::X86_64.qemu_package(), "qemu-system-x86");
        assert_eq!(Arch::Aarch64.qemu_binary_name(), "qemu-system-aarch64");
        assert_eq!(Arch::Aarch64.console_device(), "ttyAMA0");
        assert_eq!(Arch::from_rust_arch("riscv64"), None);
    }

    proptest! {
        #[test]
        fn version_parser_never_panics(s in ".{0,200}") {
            let _ = QemuVersion::parse(&s);
        }

        #[test]
        fn version_parser_round_trips_numbers(a in 0u32..1000, b in 0u32..1000, c in 0u32..1000) {
            let v = QemuVersion::parse(&format!("QEMU emulator version {a}.{b}.{c}")).unwrap();
            prop_assert_eq!(v, QemuVersion::new(a, b, c));
        }
    }
}
