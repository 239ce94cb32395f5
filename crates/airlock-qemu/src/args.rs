//! The QEMU command line: [`QemuArgs::build`] turns a [`VmSpec`] and the
//! [`HostCaps`] into argv. Pure: no file is touched, nothing is spawned.

use crate::opts::OptList;
use crate::spec::{
    DiskAccess, IncomingMigration, MemoryFile, MemorySharing, NetworkAttachment, VmSpec,
    GATEWAY_IPV4, GUEST_IPV4, GUEST_KERNEL_HZ, GUEST_MAC, GUEST_NET, GUEST_NET_PREFIX_LEN,
    HOST_IPV4, MAX_KERNEL_CMDLINE_BYTES, MEMORY_BACKEND_ID,
};
use crate::{Accel, Arch, HostCaps, QemuError};
use airlock_protocol::abi::{CMD_PORT_NAME, EVENT_PORT_NAME, ROOT_SERIAL};
use std::ffi::{OsStr, OsString};
use std::net::Ipv4Addr;
use std::path::Path;

/// Oldest QEMU this crate emits command lines for (`server=on,wait=off`
/// chardev syntax). Only 7.2 is tested.
pub const MIN_QEMU: (u32, u32) = (6, 0);
/// Oldest QEMU with `-netdev stream`.
pub const MIN_QEMU_NETDEV_STREAM: (u32, u32) = (7, 2);
/// Oldest QEMU that maps a memory file privately and writably while
/// opening it read-only (`readonly=on,rom=off`); before it, `readonly=on`
/// makes the guest RAM a ROM, so the file is opened read-write.
pub const MIN_QEMU_READ_ONLY_MEMORY_FILE: (u32, u32) = (8, 2);

/// Whether QEMU of `caps` opens a privately mapped memory file
/// ([`MemorySharing::Private`]) read-only.
pub fn private_memory_file_read_only(caps: &HostCaps) -> bool {
    let (major, minor) = MIN_QEMU_READ_ONLY_MEMORY_FILE;
    caps.qemu_version.at_least(major, minor)
}

/// The argv builder. See [`QemuArgs::build`].
#[derive(Debug, Clone, Copy)]
pub struct QemuArgs;

impl QemuArgs {
    /// The arguments (without the program name) that run `spec` on a host
    /// with `caps`.
    ///
    /// # Errors
    /// Any [`VmSpec::validate`] error, [`QemuError::KernelCmdlineTooLong`],
    /// or [`QemuError::QemuTooOld`] when the spec needs a newer QEMU.
    pub fn build(spec: &VmSpec, caps: &HostCaps) -> Result<Vec<OsString>, QemuError> {
        spec.validate()?;
        require_version(caps, MIN_QEMU, "Airlock")?;
        if matches!(spec.network, NetworkAttachment::Stream { .. }) {
            require_version(
                caps,
                MIN_QEMU_NETDEV_STREAM,
                "-netdev stream (gvproxy networking)",
            )?;
        }
        let cmdline = kernel_cmdline(spec, caps);
        if cmdline.len() > MAX_KERNEL_CMDLINE_BYTES {
            return Err(QemuError::KernelCmdlineTooLong {
                vm_id: spec.vm_id.clone(),
                len_bytes: cmdline.len(),
                max_bytes: MAX_KERNEL_CMDLINE_BYTES,
            });
        }

        let mut argv = Argv::default();
        argv.push_base(
            &spec.vm_id,
            caps,
            spec.memory_mib,
            spec.vcpus,
            spec.translation_cache_mib,
        );
        if let Some(memory) = &spec.memory_file {
            argv.push_memory_file(memory, spec.memory_mib, private_memory_file_read_only(caps));
        } else if spec.named_ram {
            argv.push_named_ram(spec.memory_mib);
        }
        argv.push_boot(&spec.boot.kernel, &spec.boot.initramfs, &cmdline);
        if spec.console_on_stdout {
            argv.push_console_stdout();
        } else {
            argv.push_console(&spec.console_log);
        }
        argv.push_rng();
        argv.push_root(spec, caps);
        argv.push_extra_drives(spec, caps);
        argv.push_shares(spec);
        argv.push_ports(spec);
        argv.push_network(&spec.network);
        // QMP on a unix socket QEMU serves; the host connects when it needs it.
        argv.opt(
            "-chardev",
            OptList::new("socket")
                .set("id", "qmp")
                .set("path", &spec.qmp_socket)
                .flag("server", true)
                .flag("wait", false),
        );
        argv.opt(
            "-mon",
            OptList::empty()
                .set("chardev", "qmp")
                .set("mode", "control"),
        );
        match spec.incoming {
            Some(IncomingMigration::Fd(fd)) => argv.pair("-incoming", format!("fd:{fd}")),
            Some(IncomingMigration::Defer) => argv.pair("-incoming", "defer"),
            None => {}
        }
        Ok(argv.0)
    }
}

/// The kernel command line for `spec` on `caps`.
pub fn kernel_cmdline(spec: &VmSpec, caps: &HostCaps) -> String {
    let mut words = base_kernel_words(caps, spec.quiet_kernel);
    if spec.network != NetworkAttachment::None {
        words.push(guest_ip_config());
    }
    words.extend(spec.extra_kernel_args.iter().cloned());
    words.join(" ")
}

/// The kernel's static IP configuration of the guest NIC:
/// `ip=<guest>::<gateway>:<netmask>::eth0:off` (`off`: no DHCP, BOOTP or
/// RARP; init brings `lo` up itself). The NIC is the only one, so it is
/// `eth0`.
fn guest_ip_config() -> String {
    let netmask = Ipv4Addr::from(u32::MAX << (32 - u32::from(GUEST_NET_PREFIX_LEN)));
    format!("ip={GUEST_IPV4}::{GATEWAY_IPV4}:{netmask}::eth0:off")
}

/// The words every guest gets: console, no ACPI, exit on panic, and on
/// x86_64 the host TSC frequency so the guest skips calibration.
pub(crate) fn base_kernel_words(caps: &HostCaps, quiet: bool) -> Vec<String> {
    let mut words = vec![
        format!("console={}", caps.arch.console_device()),
        // The guest kernel has no ACPI; don't look for tables.
        "acpi=off".into(),
        // Reboot at once on panic; with -no-reboot QEMU then exits.
        "panic=-1".into(),
    ];
    if caps.arch == Arch::X86_64 {
        // Reboot by triple fault: immediate, needs no ACPI or keyboard controller.
        words.push("reboot=t".into());
    }
    if quiet {
        words.push("quiet".into());
    }
    if let (Arch::X86_64, Some(khz)) = (caps.arch, caps.tsc_khz) {
        let lpj = u64::from(khz) * 1000 / u64::from(GUEST_KERNEL_HZ);
        words.push(format!("tsc_early_khz={khz}"));
        words.push(format!("lpj={lpj}"));
        // Trust the TSC and skip the timer check: both can misfire when a
        // TCG vCPU is descheduled on a busy host.
        words.push("tsc=reliable".into());
        words.push("no_timer_check".into());
    }
    words
}

fn require_version(
    caps: &HostCaps,
    (major, minor): (u32, u32),
    feature: &'static str,
) -> Result<(), QemuError> {
    if caps.qemu_version.at_least(major, minor) {
        Ok(())
    } else {
        Err(QemuError::QemuTooOld {
            feature,
            required: format!("{major}.{minor}"),
            found: caps.qemu_version.to_string(),
        })
    }
}

/// The argv under construction.
#[derive(Debug, Default)]
pub(crate) struct Argv(pub(crate) Vec<OsString>);

impl Argv {
    fn flag(&mut self, flag: &str) {
        self.0.push(flag.into());
    }

    fn pair(&mut self, flag: &str, value: impl Into<OsString>) {
        self.0.push(flag.into());
        self.0.push(value.into());
    }

    fn opt(&mut self, flag: &str, opts: OptList) {
        self.pair(flag, opts.finish());
    }

    /// Identity, isolation, machine, accelerator (with its translation
    /// cache under TCG), CPU, memory.
    pub(crate) fn push_base(
        &mut self,
        vm_id: &str,
        caps: &HostCaps,
        memory_mib: u32,
        vcpus: u32,
        translation_cache_mib: u32,
    ) {
        // Names the process in `ps` and QMP output.
        self.opt(
            "-name",
            OptList::empty().set("guest", format!("airlock-{vm_id}")),
        );
        // No default devices (VGA, NIC, floppy, CD-ROM, parallel port): every
        // device is listed below.
        self.flag("-nodefaults");
        // Ignore any qemu.conf on the host: the argv is the whole config.
        self.flag("-no-user-config");
        // A guest reboot (our power-off and panic path) ends QEMU.
        self.flag("-no-reboot");
        // No window and no stdio multiplexing; the console goes to a file
        // (-nographic would put the serial and monitor on stdio).
        self.pair("-display", "none");
        // QEMU's own seccomp filter: no obsolete syscalls, no setuid, no
        // fork/exec, no scheduler or priority changes.
        self.opt("-sandbox", sandbox());
        self.opt("-machine", machine(caps));
        self.opt("-accel", accelerator(caps, translation_cache_mib));
        self.pair("-cpu", cpu_model(caps));
        self.pair("-m", format!("{memory_mib}M"));
        self.pair("-smp", vcpus.to_string());
    }

    /// Guest RAM from a file: the backend object, and the machine told to
    /// use it. QEMU merges a second `-machine` into the first, so the base
    /// options stay the same for every VM and the probe.
    pub(crate) fn push_memory_file(
        &mut self,
        memory: &MemoryFile,
        memory_mib: u32,
        private_read_only: bool,
    ) {
        let backend = OptList::new("memory-backend-file")
            .set("id", MEMORY_BACKEND_ID)
            .set("size", format!("{memory_mib}M"))
            .set("mem-path", &memory.path)
            .flag("share", memory.sharing == MemorySharing::Shared);
        let backend = if private_read_only && memory.sharing == MemorySharing::Private {
            // Opened read-only, mapped copy-on-write: the file is never
            // written, and a jailed QEMU needs no write access to it.
            backend.flag("readonly", true).flag("rom", false)
        } else {
            backend
        };
        self.opt("-object", backend);
        self.opt(
            "-machine",
            OptList::empty().set("memory-backend", MEMORY_BACKEND_ID),
        );
    }

    /// Anonymous guest RAM in a backend object named as a memory file's
    /// ([`MEMORY_BACKEND_ID`]): the RAM block has the same name in the
    /// migration stream, so a template clone's saved state loads into it.
    pub(crate) fn push_named_ram(&mut self, memory_mib: u32) {
        self.opt(
            "-object",
            OptList::new("memory-backend-ram")
                .set("id", MEMORY_BACKEND_ID)
                .set("size", format!("{memory_mib}M")),
        );
        self.opt(
            "-machine",
            OptList::empty().set("memory-backend", MEMORY_BACKEND_ID),
        );
    }

    /// Direct kernel boot. `-kernel`, `-initrd` and `-append` take their
    /// value whole (no option-string escaping).
    pub(crate) fn push_boot(&mut self, kernel: &Path, initramfs: &Path, cmdline: &str) {
        self.pair("-kernel", kernel.as_os_str());
        self.pair("-initrd", initramfs.as_os_str());
        self.pair("-append", cmdline);
    }

    /// The serial console, written to a file.
    pub(crate) fn push_console(&mut self, console_log: &Path) {
        self.opt(
            "-chardev",
            OptList::new("file")
                .set("id", "console")
                .set("path", console_log),
        );
        self.pair("-serial", "chardev:console");
    }

    /// The serial console on QEMU's stdout (stdin is not read: QEMU gets
    /// `/dev/null`; `signal=off`: no control character ends QEMU).
    pub(crate) fn push_console_stdout(&mut self) {
        self.opt(
            "-chardev",
            OptList::new("stdio")
                .set("id", "console")
                .flag("signal", false),
        );
        self.pair("-serial", "chardev:console");
    }

    /// Entropy from the host: without it the guest blocks for seconds in
    /// getrandom() before the first python3 runs.
    pub(crate) fn push_rng(&mut self) {
        self.opt(
            "-object",
            OptList::new("rng-random")
                .set("filename", "/dev/urandom")
                .set("id", "rng0"),
        );
        self.opt(
            "-device",
            OptList::new("virtio-rng-device").set("rng", "rng0"),
        );
    }

    fn push_root(&mut self, spec: &VmSpec, caps: &HostCaps) {
        let root = &spec.root;
        let drive = OptList::empty()
            .set("id", "root")
            .set("if", "none")
            .set("format", "qcow2")
            .set("file", &root.overlay)
            // Pin the base: QEMU opens exactly this file (read-only, as
            // backing files always are), whatever the overlay header says.
            .set("backing.driver", "qcow2")
            .set("backing.file.filename", &root.base);
        self.opt("-drive", drive_tuning(drive, root.access, caps));
        // The guest init finds its root by this serial.
        self.opt(
            "-device",
            OptList::new("virtio-blk-device")
                .set("drive", "root")
                .set("serial", ROOT_SERIAL),
        );
    }

    fn push_extra_drives(&mut self, spec: &VmSpec, caps: &HostCaps) {
        for drive in &spec.extra_drives {
            let mut opts = OptList::empty()
                .set("id", &drive.id)
                .set("if", "none")
                .set("format", drive.format.as_str())
                .set("file", &drive.path);
            if let Some(backing) = &drive.backing {
                opts = opts
                    .set("backing.driver", "qcow2")
                    .set("backing.file.filename", backing);
            }
            self.opt("-drive", drive_tuning(opts, drive.access, caps));
            self.opt(
                "-device",
                OptList::new("virtio-blk-device")
                    .set("drive", &drive.id)
                    .set("serial", &drive.serial),
            );
        }
    }

    /// The host directories shared over virtio-9p: one `-fsdev local` and
    /// one `virtio-9p-device` (virtio-mmio) each.
    fn push_shares(&mut self, spec: &VmSpec) {
        for (index, share) in spec.shares.iter().enumerate() {
            let id = format!("share{index}");
            self.opt(
                "-fsdev",
                OptList::new("local")
                    .set("id", &id)
                    .set("path", &share.path)
                    .set("security_model", "none")
                    .set("multidevs", "forbid")
                    .flag("readonly", share.read_only),
            );
            self.opt(
                "-device",
                OptList::new("virtio-9p-device")
                    .set("fsdev", &id)
                    .set("mount_tag", &share.tag),
            );
        }
    }

    /// The two virtio-serial ports of the host<->guest protocol. QEMU serves
    /// both sockets and does not wait for the host to connect.
    fn push_ports(&mut self, spec: &VmSpec) {
        // Port 0 is reserved for a console, so 3 slots hold our 2 ports;
        // fewer slots mean fewer virtqueues for the guest to set up.
        self.opt(
            "-device",
            OptList::new("virtio-serial-device").set("max_ports", "3"),
        );
        for (id, path, name) in [
            ("airlock-cmd", &spec.cmd_socket, CMD_PORT_NAME),
            ("airlock-event", &spec.event_socket, EVENT_PORT_NAME),
        ] {
            self.opt(
                "-chardev",
                OptList::new("socket")
                    .set("id", id)
                    .set("path", path)
                    .flag("server", true)
                    .flag("wait", false),
            );
            self.opt(
                "-device",
                OptList::new("virtserialport")
                    .set("chardev", id)
                    .set("name", name),
            );
        }
    }

    fn push_network(&mut self, network: &NetworkAttachment) {
        let netdev = match network {
            NetworkAttachment::None => return,
            // gvproxy serves the socket; QEMU connects as the client.
            NetworkAttachment::Stream { socket } => OptList::new("stream")
                .set("id", "n0")
                .flag("server", false)
                .set("addr.type", "unix")
                .set("addr.path", socket),
            // gvproxy's addresses, so the guest's static configuration fits
            // both backends: the gateway answers DNS, HOST_IPV4 is the
            // host's loopback, forwards go to the guest's address.
            NetworkAttachment::User { host_forwards } => host_forwards.iter().fold(
                OptList::new("user")
                    .set("id", "n0")
                    .set("net", format!("{GUEST_NET}/{GUEST_NET_PREFIX_LEN}"))
                    .set("host", HOST_IPV4.to_string())
                    .set("dns", GATEWAY_IPV4.to_string())
                    .set("dhcpstart", GUEST_IPV4.to_string())
                    .flag("ipv6", false),
                |opts, fwd| opts.set("hostfwd", fwd.to_qemu()),
            ),
        };
        self.opt("-netdev", netdev);
        // Offloads off: the backend then gets plain, checksummed Ethernet
        // frames, which is what gvproxy's stream framing expects.
        self.opt(
            "-device",
            OptList::new("virtio-net-device")
                .set("netdev", "n0")
                .set("mac", GUEST_MAC)
                .flag("csum", false)
                .flag("gso", false)
                .flag("host_tso4", false)
                .flag("host_tso6", false)
                .flag("mrg_rxbuf", false),
        );
    }
}

/// QEMU's seccomp policy for every run.
pub(crate) fn sandbox() -> OptList {
    OptList::new("on")
        .set("obsolete", "deny")
        .set("elevateprivileges", "deny")
        .set("spawn", "deny")
        .set("resourcecontrol", "deny")
}

fn machine(caps: &HostCaps) -> OptList {
    match caps.arch {
        Arch::X86_64 => OptList::new("microvm")
            // Direct kernel boot needs no option ROMs.
            .flag("x-option-roms", false)
            // The ISA 8250 UART is the guest console (ttyS0).
            .flag("isa-serial", true)
            // PIT, PIC and RTC stay: without them the guest hangs under TCG.
            .flag("pit", true)
            .flag("pic", true)
            .flag("rtc", true)
            // No ACPI tables: the guest kernel has no ACPI and finds its
            // virtio-mmio devices on the command line QEMU completes.
            .flag("acpi", false),
        Arch::Aarch64 => OptList::new("virt").set(
            "gic-version",
            // GICv3 is emulated under TCG (v2 caps at 8 vCPUs); under KVM
            // use whatever the host has.
            match caps.accel {
                Accel::Kvm => "host",
                Accel::Tcg => "3",
            },
        ),
    }
}

fn accelerator(caps: &HostCaps, translation_cache_mib: u32) -> OptList {
    let accel = OptList::new(caps.accel.as_str());
    match caps.accel {
        Accel::Kvm => accel,
        Accel::Tcg => accel.set("tb-size", translation_cache_mib.to_string()),
    }
}

fn cpu_model(caps: &HostCaps) -> &'static str {
    match (caps.accel, caps.arch) {
        // The host CPU as is: fastest, and what KVM supports best.
        (Accel::Kvm, _) => "host",
        // Every feature TCG emulates on x86 (the guest kernel expects a
        // modern x86-64).
        (Accel::Tcg, Arch::X86_64) => "max",
        // A plain ARMv8.0 core: `max` would emulate pointer authentication,
        // which is slow under TCG.
        (Accel::Tcg, Arch::Aarch64) => "cortex-a72",
    }
}

fn drive_tuning(opts: OptList, access: DiskAccess, caps: &HostCaps) -> OptList {
    let opts = opts
        .flag("read-only", access == DiskAccess::ReadOnly)
        // Host page cache, no flushes: the disk is thrown away with the VM,
        // and read-only bases are shared through the page cache.
        .set("cache", "unsafe")
        // io_uring when this QEMU and kernel take it, else a thread pool.
        .set("aio", if caps.io_uring { "io_uring" } else { "threads" });
    match access {
        DiskAccess::ReadOnly => opts,
        // Zeroed or discarded blocks free overlay space instead of filling
        // it. A write or read the host cannot do (its disk full) is an I/O
        // error in the guest, never a paused VM (QEMU's default stops the
        // VM on ENOSPC).
        DiskAccess::ReadWrite => opts
            .set("discard", "unmap")
            .set("detect-zeroes", "unmap")
            .set("werror", "report")
            .set("rerror", "report"),
    }
}

/// Renders argv one argument per line, for logs and golden files.
pub fn argv_to_lines(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| OsStr::to_string_lossy(a).into_owned() + "\n")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{DiskAccess, DiskFormat, ExtraDrive};
    use crate::QemuVersion;

    fn spec() -> VmSpec {
        crate::spec::test_spec()
    }

    fn caps() -> HostCaps {
        HostCaps {
            arch: Arch::X86_64,
            accel: Accel::Tcg,
            qemu_version: QemuVersion::new(7, 2, 22),
            io_uring: true,
            tsc_khz: Some(2_596_120),
        }
    }

    fn value_after(argv: &[OsString], flag: &str) -> Vec<String> {
        argv.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn cmdline_carries_tsc_and_lpj_for_hz_100() {
        let line = kernel_cmdline(&spec(), &caps());
        assert!(
            line.contains("tsc_early_khz=2596120 lpj=25961200 tsc=reliable no_timer_check"),
            "{line}"
        );
        assert!(
            line.starts_with("console=ttyS0 acpi=off panic=-1 reboot=t quiet"),
            "{line}"
        );
    }

    #[test]
    fn cmdline_omits_tsc_words_without_a_frequency_or_on_arm() {
        let no_tsc = HostCaps {
            tsc_khz: None,
            ..caps()
        };
        assert!(!kernel_cmdline(&spec(), &no_tsc).contains("tsc"));
        let arm = HostCaps {
            arch: Arch::Aarch64,
            ..caps()
        };
        let line = kernel_cmdline(&spec(), &arm);
        assert!(line.starts_with("console=ttyAMA0"), "{line}");
        assert!(
            !line.contains("tsc") && !line.contains("reboot=t"),
            "{line}"
        );
    }

    #[test]
    fn cmdline_appends_extra_args_and_drops_quiet_on_request() {
        let s = VmSpec {
            quiet_kernel: false,
            extra_kernel_args: vec!["airlock.tmp_mib=32".into()],
            ..spec()
        };
        let line = kernel_cmdline(&s, &caps());
        assert!(!line.contains("quiet"));
        assert!(line.ends_with(" airlock.tmp_mib=32"), "{line}");
    }

    #[test]
    fn cmdline_configures_eth0_statically_only_with_a_network() {
        let ip = "ip=192.168.127.2::192.168.127.1:255.255.255.0::eth0:off";
        assert!(!kernel_cmdline(&spec(), &caps()).contains("ip="));
        let stream = VmSpec {
            network: NetworkAttachment::Stream {
                socket: "/work/vm-1/net.sock".into(),
            },
            extra_kernel_args: vec!["airlock.tmp_mib=32".into()],
            ..spec()
        };
        let user = VmSpec {
            network: NetworkAttachment::User {
                host_forwards: Vec::new(),
            },
            ..spec()
        };
        for s in [&stream, &user] {
            let line = kernel_cmdline(s, &caps());
            assert_eq!(line.matches(ip).count(), 1, "{line}");
        }
        // The network word comes before the caller's extra words.
        assert!(kernel_cmdline(&stream, &caps()).ends_with(&format!("{ip} airlock.tmp_mib=32")));
    }

    #[test]
    fn user_network_uses_the_gvproxy_addresses() {
        let s = VmSpec {
            network: NetworkAttachment::User {
                host_forwards: vec![crate::HostForward::tcp_localhost(18080, 8080)],
            },
            ..spec()
        };
        let argv = QemuArgs::build(&s, &caps()).unwrap();
        assert_eq!(
            value_after(&argv, "-netdev"),
            [
                "user,id=n0,net=192.168.127.0/24,host=192.168.127.254,dns=192.168.127.1,\
              dhcpstart=192.168.127.2,ipv6=off,hostfwd=tcp:127.0.0.1:18080-:8080"
            ]
        );
    }

    #[test]
    fn too_long_cmdline_is_refused() {
        let s = VmSpec {
            extra_kernel_args: vec!["x".repeat(MAX_KERNEL_CMDLINE_BYTES)],
            ..spec()
        };
        let err = QemuArgs::build(&s, &caps()).unwrap_err();
        assert!(
            matches!(err, QemuError::KernelCmdlineTooLong { .. }),
            "{err}"
        );
    }

    #[test]
    fn old_qemu_is_refused_and_stream_needs_7_2() {
        let old = HostCaps {
            qemu_version: QemuVersion::new(5, 2, 0),
            ..caps()
        };
        assert!(matches!(
            QemuArgs::build(&spec(), &old),
            Err(QemuError::QemuTooOld { .. })
        ));
        let q71 = HostCaps {
            qemu_version: QemuVersion::new(7, 1, 0),
            ..caps()
        };
        QemuArgs::build(&spec(), &q71).unwrap();
        let stream = VmSpec {
            network: NetworkAttachment::Stream {
                socket: "/work/vm-1/net.sock".into(),
            },
            ..spec()
        };
        let err = QemuArgs::build(&stream, &q71).unwrap_err();
        assert!(err.to_string().contains("-netdev stream"), "{err}");
        assert!(err.to_string().contains("7.2"), "{err}");
    }

    #[test]
    fn invalid_spec_is_refused_before_building() {
        let s = VmSpec {
            memory_mib: 1,
            ..spec()
        };
        assert!(matches!(
            QemuArgs::build(&s, &caps()),
            Err(QemuError::MemoryOutOfRange { .. })
        ));
    }

    #[test]
    fn aio_follows_io_uring_probe() {
        let with = QemuArgs::build(&spec(), &caps()).unwrap();
        assert!(value_after(&with, "-drive")[0].contains("aio=io_uring"));
        let without = QemuArgs::build(
            &spec(),
            &HostCaps {
                io_uring: false,
                ..caps()
            },
        )
        .unwrap();
        assert!(value_after(&without, "-drive")[0].contains("aio=threads"));
    }

    #[test]
    fn a_private_memory_file_is_opened_read_only_from_qemu_8_2_only() {
        let mut s = spec();
        s.memory_file = Some(MemoryFile {
            path: "/t/memory".into(),
            sharing: MemorySharing::Private,
        });
        let old = value_after(&QemuArgs::build(&s, &caps()).unwrap(), "-object").join(" ");
        assert!(
            old.contains("share=off") && !old.contains("readonly"),
            "{old}"
        );
        let mut new_caps = caps();
        new_caps.qemu_version = QemuVersion::new(8, 2, 0);
        let new = value_after(&QemuArgs::build(&s, &new_caps).unwrap(), "-object").join(" ");
        assert!(new.contains("share=off,readonly=on,rom=off"), "{new}");
        s.memory_file = Some(MemoryFile {
            path: "/t/memory".into(),
            sharing: MemorySharing::Shared,
        });
        let shared = value_after(&QemuArgs::build(&s, &new_caps).unwrap(), "-object").join(" ");
        assert!(
            !shared.contains("readonly"),
            "a template's own boot writes it: {shared}"
        );
    }

    #[test]
    fn named_ram_is_an_anonymous_backend_with_the_memory_file_id() {
        let mut s = spec();
        s.named_ram = true;
        let argv = QemuArgs::build(&s, &caps()).unwrap();
        let objects = value_after(&argv, "-object").join(" ");
        assert!(
            objects.contains("memory-backend-ram,id=airlock-mem,size="),
            "{objects}"
        );
        assert!(value_after(&argv, "-machine")
            .iter()
            .any(|m| m == "memory-backend=airlock-mem"));
        // A memory file wins: one backend only.
        s.memory_file = Some(MemoryFile {
            path: "/t/memory".into(),
            sharing: MemorySharing::Private,
        });
        let argv = QemuArgs::build(&s, &caps()).unwrap();
        assert!(!value_after(&argv, "-object")
            .join(" ")
            .contains("memory-backend-ram"));
    }

    #[test]
    fn a_console_on_stdout_names_no_log_file() {
        let mut s = spec();
        s.console_on_stdout = true;
        let argv = QemuArgs::build(&s, &caps()).unwrap();
        let chardevs = value_after(&argv, "-chardev");
        assert!(
            chardevs.contains(&"stdio,id=console,signal=off".to_string()),
            "{chardevs:?}"
        );
        assert!(!chardevs.join(" ").contains("console.log"), "{chardevs:?}");
        assert_eq!(value_after(&argv, "-serial"), ["chardev:console"]);
    }

    #[test]
    fn read_only_root_has_no_write_tuning_and_read_write_has_it() {
        let ro = &value_after(&QemuArgs::build(&spec(), &caps()).unwrap(), "-drive")[0];
        assert!(
            ro.contains("read-only=on") && !ro.contains("discard"),
            "{ro}"
        );
        let mut s = spec();
        s.root.access = DiskAccess::ReadWrite;
        let rw = &value_after(&QemuArgs::build(&s, &caps()).unwrap(), "-drive")[0];
        assert!(rw.contains("read-only=off,cache=unsafe"), "{rw}");
        assert!(
            rw.ends_with("discard=unmap,detect-zeroes=unmap,werror=report,rerror=report"),
            "{rw}"
        );
    }

    #[test]
    fn commas_in_paths_are_escaped_everywhere_but_kernel_and_initrd() {
        let mut s = spec();
        s.boot.kernel = "/img,1/bzImage".into();
        s.root.overlay = "/work/vm,1/root.qcow2".into();
        s.console_log = "/work/vm,1/console.log".into();
        s.qmp_socket = "/work/vm,1/qmp.sock".into();
        let argv = QemuArgs::build(&s, &caps()).unwrap();
        assert_eq!(value_after(&argv, "-kernel"), ["/img,1/bzImage"]);
        assert!(value_after(&argv, "-drive")[0].contains("file=/work/vm,,1/root.qcow2,"));
        let chardevs = value_after(&argv, "-chardev").join(" ");
        assert!(
            chardevs.contains("path=/work/vm,,1/console.log"),
            "{chardevs}"
        );
        assert!(
            chardevs.contains("path=/work/vm,,1/qmp.sock,"),
            "{chardevs}"
        );
    }

    #[test]
    fn a_spec_may_ask_for_a_larger_translation_cache_within_bounds() {
        let mut s = spec();
        s.translation_cache_mib = 128;
        let argv = QemuArgs::build(&s, &caps()).unwrap();
        assert_eq!(value_after(&argv, "-accel"), ["tcg,tb-size=128"]);
        s.translation_cache_mib = 4;
        let err = QemuArgs::build(&s, &caps()).unwrap_err().to_string();
        assert!(err.contains("translation cache of 4 MiB"), "{err}");
    }

    #[test]
    fn kvm_uses_host_cpu_and_tcg_uses_max_with_a_capped_translation_cache() {
        let tcg = QemuArgs::build(&spec(), &caps()).unwrap();
        assert_eq!(value_after(&tcg, "-cpu"), ["max"]);
        assert_eq!(
            value_after(&tcg, "-accel"),
            [format!("tcg,tb-size={}", crate::TCG_TB_SIZE_MIB)]
        );
        let kvm = QemuArgs::build(
            &spec(),
            &HostCaps {
                accel: Accel::Kvm,
                ..caps()
            },
        )
        .unwrap();
        assert_eq!(value_after(&kvm, "-cpu"), ["host"]);
        assert_eq!(value_after(&kvm, "-accel"), ["kvm"]);
    }

    #[test]
    fn extra_drive_gets_its_own_drive_and_serial() {
        let s = VmSpec {
            extra_drives: vec![ExtraDrive {
                id: "data".into(),
                path: "/work/vm-1/data.img".into(),
                format: DiskFormat::Raw,
                access: DiskAccess::ReadWrite,
                serial: "airlock-data".into(),
                backing: None,
            }],
            ..spec()
        };
        let argv = QemuArgs::build(&s, &caps()).unwrap();
        let drives = value_after(&argv, "-drive");
        assert_eq!(drives.len(), 2);
        assert!(drives[1].starts_with("id=data,if=none,format=raw,file=/work/vm-1/data.img"));
        assert!(value_after(&argv, "-device")
            .contains(&"virtio-blk-device,drive=data,serial=airlock-data".to_owned()));
    }

    #[test]
    fn a_backed_drive_pins_its_base_and_reports_host_errors_to_the_guest() {
        let s = VmSpec {
            extra_drives: vec![ExtraDrive {
                id: "workspace".into(),
                path: "/work/vm-1/workspace.qcow2".into(),
                format: DiskFormat::Qcow2,
                access: DiskAccess::ReadWrite,
                serial: "airlock-workspace".into(),
                backing: Some("/cache/ws,1.qcow2".into()),
            }],
            ..spec()
        };
        let argv = QemuArgs::build(&s, &caps()).unwrap();
        let drive = &value_after(&argv, "-drive")[1];
        assert!(drive.contains(",backing.driver=qcow2,backing.file.filename=/cache/ws,,1.qcow2,"));
        assert!(drive.contains(",werror=report,rerror=report"), "{drive}");
    }

    #[test]
    fn a_share_is_a_local_fsdev_on_a_virtio_9p_device() {
        use crate::spec::Share;
        let s = VmSpec {
            shares: vec![
                Share {
                    tag: "mount0".into(),
                    path: "/data/in,put".into(),
                    read_only: true,
                },
                Share {
                    tag: "mount1".into(),
                    path: "/data/out".into(),
                    read_only: false,
                },
            ],
            ..spec()
        };
        let argv = QemuArgs::build(&s, &caps()).unwrap();
        assert_eq!(
            value_after(&argv, "-fsdev"),
            [
                "local,id=share0,path=/data/in,,put,security_model=none,multidevs=forbid,readonly=on",
                "local,id=share1,path=/data/out,security_model=none,multidevs=forbid,readonly=off",
            ]
        );
        let devices = value_after(&argv, "-device");
        assert!(devices.contains(&"virtio-9p-device,fsdev=share0,mount_tag=mount0".to_owned()));
        assert!(devices.contains(&"virtio-9p-device,fsdev=share1,mount_tag=mount1".to_owned()));
    }

    #[test]
    fn shares_with_bad_or_repeated_tags_or_relative_paths_are_refused() {
        use crate::spec::Share;
        let share = |tag: &str, path: &str| Share {
            tag: tag.into(),
            path: path.into(),
            read_only: true,
        };
        for shares in [
            vec![share("Mount", "/a")],
            vec![share("", "/a")],
            vec![share(&"m".repeat(32), "/a")],
            vec![share("m0", "/a"), share("m0", "/b")],
            vec![share("m0", "relative")],
        ] {
            let s = VmSpec { shares, ..spec() };
            assert!(QemuArgs::build(&s, &caps()).is_err(), "{:?}", s.shares);
        }
    }

    #[test]
    fn incoming_is_last_and_uses_fd_or_defer() {
        let s = VmSpec {
            incoming: Some(IncomingMigration::Fd(7)),
            ..spec()
        };
        let argv = QemuArgs::build(&s, &caps()).unwrap();
        assert_eq!(&argv[argv.len() - 2..], ["-incoming", "fd:7"]);
        let s = VmSpec {
            incoming: Some(IncomingMigration::Defer),
            ..spec()
        };
        let argv = QemuArgs::build(&s, &caps()).unwrap();
        assert_eq!(value_after(&argv, "-incoming"), ["defer"]);
    }

    proptest::proptest! {
        #[test]
        fn any_valid_resources_build_and_show_up_in_argv(
            memory_mib in crate::MIN_MEMORY_MIB..=crate::MAX_MEMORY_MIB,
            vcpus in 1..=crate::MAX_VCPUS,
            tsc_khz in proptest::option::of(1u32..10_000_000),
            kvm in proptest::bool::ANY,
        ) {
            let s = VmSpec { memory_mib, vcpus, ..spec() };
            let c = HostCaps {
                tsc_khz,
                accel: if kvm { Accel::Kvm } else { Accel::Tcg },
                ..caps()
            };
            let argv = QemuArgs::build(&s, &c).unwrap();
            proptest::prop_assert_eq!(value_after(&argv, "-m"), [format!("{memory_mib}M")]);
            proptest::prop_assert_eq!(value_after(&argv, "-smp"), [vcpus.to_string()]);
            proptest::prop_assert!(argv.iter().all(|a| !a.is_empty()));
        }

        #[test]
        fn any_path_is_either_refused_or_escaped(name in "[a-z,=:. ]{1,24}") {
            let s = VmSpec { console_log: Path::new("/w").join(&name), ..spec() };
            if let Ok(argv) = QemuArgs::build(&s, &caps()) {
                let console = value_after(&argv, "-chardev")[0].clone();
                let value = console.strip_prefix("file,id=console,path=").unwrap();
                proptest::prop_assert_eq!(value.replace(",,", ","), format!("/w/{name}"));
                proptest::prop_assert!(!value.replace(",,", "").contains(','));
            }
        }
    }

    #[test]
    fn every_vm_has_rng_ports_qmp_and_sandbox() {
        let argv = QemuArgs::build(&spec(), &caps()).unwrap();
        let devices = value_after(&argv, "-device").join(" ");
        assert!(devices.contains("virtio-rng-device,rng=rng0"));
        assert!(devices.contains("virtserialport,chardev=airlock-cmd,name=airlock.cmd"));
        assert!(devices.contains("virtserialport,chardev=airlock-event,name=airlock.event"));
        assert!(devices.contains("virtio-blk-device,drive=root,serial=airlock-root"));
        assert_eq!(value_after(&argv, "-mon"), ["chardev=qmp,mode=control"]);
        assert!(value_after(&argv, "-sandbox")[0].contains("spawn=deny"));
        assert!(!devices.contains("virtio-net"));
    }
}
