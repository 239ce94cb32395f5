//! What one VM is made of: [`VmSpec`] and its parts, with validation.

use crate::QemuError;
use airlock_protocol::abi::ROOT_SERIAL;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The guest NIC's MAC address: gvproxy's DHCP server has a static lease
/// (192.168.127.2) for exactly this address.
pub const GUEST_MAC: &str = "5a:94:ef:e4:0c:ee";

// The guest network. gvproxy (0.8.1) fixes it at 192.168.127.0/24; the
// `User` attachment is set up with the same addresses, so the guest is
// configured the same way whichever backend it has.

/// The guest network (with [`GUEST_NET_PREFIX_LEN`]): 192.168.127.0/24.
pub const GUEST_NET: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 0);
/// Prefix length of [`GUEST_NET`].
pub const GUEST_NET_PREFIX_LEN: u8 = 24;
/// The guest's address on eth0 (gvproxy's static lease for [`GUEST_MAC`]).
/// The kernel sets it at boot from the static `ip=` argument: no DHCP.
pub const GUEST_IPV4: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 2);
/// The default gateway, which is also the guest's DNS server (the root
/// disks' `/etc/resolv.conf` names it).
pub const GATEWAY_IPV4: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 1);
/// The address at which the guest reaches the host side's loopback:
/// gvproxy translates it to 127.0.0.1 of its own network namespace, QEMU's
/// user networking to the host's 127.0.0.1.
pub const HOST_IPV4: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 254);

/// Smallest guest memory accepted.
pub const MIN_MEMORY_MIB: u32 = 64;
/// Largest guest memory accepted (a typo guard, not a policy).
pub const MAX_MEMORY_MIB: u32 = 32 * 1024;
/// Default guest memory.
pub const DEFAULT_MEMORY_MIB: u32 = 256;
/// Largest vCPU count accepted.
pub const MAX_VCPUS: u32 = 64;
/// Longest unix socket path: `sockaddr_un.sun_path` is 108 bytes including
/// the terminating NUL.
pub const MAX_SOCKET_PATH_BYTES: usize = 107;
/// Longest kernel command line this crate emits. x86 kernels take 2048
/// bytes; QEMU's microvm appends a `virtio_mmio.device=` word (about 33
/// bytes) per device, so a margin is kept for it.
pub const MAX_KERNEL_CMDLINE_BYTES: usize = 1536;
/// Longest virtio-blk serial (the device exposes 20 bytes).
pub const MAX_DRIVE_SERIAL_BYTES: usize = 20;
/// The guest kernel's timer frequency (`CONFIG_HZ`); `lpj` is derived from it.
pub const GUEST_KERNEL_HZ: u32 = 100;

/// The boot files shared by every VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootImages {
    /// The guest kernel (`bzImage` on x86_64, `Image` on aarch64).
    pub kernel: PathBuf,
    /// The initramfs holding `/init`.
    pub initramfs: PathBuf,
}

/// How QEMU opens a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskAccess {
    /// The device is read-only for the guest (virtio-blk `VIRTIO_BLK_F_RO`).
    #[default]
    ReadOnly,
    /// The guest may write; writes land in the overlay (or the raw file).
    ReadWrite,
}

/// The root disk: a per-VM qcow2 overlay on top of a shared read-only base.
///
/// The overlay is what QEMU opens; the base is named again on the command
/// line (`backing.file.filename`) so QEMU uses exactly this base whatever
/// path the overlay header records.
///
/// Default access is [`DiskAccess::ReadOnly`]: the guest mounts its root
/// read-only anyway, so a read-only device costs nothing, keeps a
/// compromised guest kernel from growing the overlay on the host disk, and
/// keeps memory snapshots consistent with the disk (nothing changes it).
/// Use [`DiskAccess::ReadWrite`] for flows that install into the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDisk {
    /// The shared base image (qcow2), never written.
    pub base: PathBuf,
    /// This VM's qcow2 overlay whose backing file is `base`.
    pub overlay: PathBuf,
    /// How the guest may use the disk.
    pub access: DiskAccess,
}

/// Image format of an extra drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// A raw file.
    Raw,
    /// A qcow2 file.
    Qcow2,
}

impl DiskFormat {
    /// The name QEMU's `format=` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

/// An additional virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraDrive {
    /// QEMU id, `[a-z0-9_-]{1,32}`, unique, not `root`.
    pub id: String,
    /// The image file.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// How the guest may use it.
    pub access: DiskAccess,
    /// The virtio serial the guest sees (`[A-Za-z0-9_-]`, at most 20 bytes).
    pub serial: String,
    /// The qcow2 file under a qcow2 `path`, pinned on the command line as
    /// the root disk's base is (QEMU opens exactly it, read-only, whatever
    /// the overlay's header says). `None`: a drive without a backing file.
    pub backing: Option<PathBuf>,
}

/// A host directory shared with the guest over virtio-9p
/// (`-fsdev local` + `virtio-9p-device` on virtio-mmio).
///
/// Always `security_model=none` (files keep the host's owners and modes;
/// QEMU opens them as its own user) and `multidevs=forbid` (a share that
/// spans several host file systems is refused instead of aliasing inode
/// numbers). QEMU's 9p server resolves every path below the share without
/// following symbolic links, so a link inside it cannot reach outside:
/// the guest sees the link and resolves it in its own file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The guest's mount tag, `[a-z0-9_-]{1,31}`, unique.
    pub tag: String,
    /// The host directory (absolute).
    pub path: PathBuf,
    /// Read-only (`readonly=on`: writes fail with `EROFS` in the guest).
    pub read_only: bool,
}

/// Transport protocol of a host forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A host port forwarded into the guest by QEMU's user networking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostForward {
    /// TCP or UDP.
    pub protocol: ForwardProtocol,
    /// Host address to listen on (usually 127.0.0.1).
    pub host_addr: Ipv4Addr,
    /// Host port (non-zero).
    pub host_port: u16,
    /// Guest port (non-zero).
    pub guest_port: u16,
}

impl HostForward {
    /// A TCP forward from `127.0.0.1:host_port` to the guest's `guest_port`.
    pub fn tcp_localhost(host_port: u16, guest_port: u16) -> Self {
        Self {
            protocol: ForwardProtocol::Tcp,
            host_addr: Ipv4Addr::LOCALHOST,
            host_port,
            guest_port,
        }
    }

    /// The `hostfwd=` value QEMU reads: `tcp:127.0.0.1:8080-:80`.
    pub fn to_qemu(&self) -> String {
        let proto = match self.protocol {
            ForwardProtocol::Tcp => "tcp",
            ForwardProtocol::Udp => "udp",
        };
        format!(
            "{proto}:{}:{}-:{}",
            self.host_addr, self.host_port, self.guest_port
        )
    }
}

/// How the VM is attached to a network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NetworkAttachment {
    /// No network device at all.
    #[default]
    None,
    /// A virtio-net device whose frames go to gvproxy over a unix stream
    /// socket (`-netdev stream`, QEMU >= 7.2). gvproxy must already listen:
    /// QEMU 7.2 connects once and has no reconnect option.
    Stream {
        /// gvproxy's `-listen-qemu` socket.
        socket: PathBuf,
    },
    /// QEMU's built-in user networking (slirp) with host forwards, on
    /// gvproxy's addresses ([`GUEST_NET`]). For development only: the guest
    /// reaches whatever the host reaches.
    User {
        /// Ports forwarded from the host.
        host_forwards: Vec<HostForward>,
    },
}

/// Where the VM state comes from when it is restored from a snapshot.
///
/// QEMU runs under `-sandbox ... spawn=deny`, so `exec:` migration URIs
/// (which start a shell) are not offered: pass the snapshot file as an
/// inherited descriptor instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncomingMigration {
    /// `-incoming fd:N`: read the state from descriptor `N`, which the
    /// spawner leaves open (no `FD_CLOEXEC`) in QEMU. A regular file works.
    Fd(RawFd),
    /// `-incoming defer`: wait for QMP `migrate-incoming`.
    Defer,
}

/// How the guest's RAM maps its memory file ([`MemoryFile`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemorySharing {
    /// `share=on`: the guest's writes reach the file. A template VM runs
    /// so: when it is saved, its RAM is already in the file, and the
    /// migration stream (with `x-ignore-shared`) holds only device state.
    Shared,
    /// `share=off`: a private copy-on-write mapping; the file is never
    /// written. Every clone of a template runs so, and clones share the
    /// pages they do not write. (Not `readonly=on`: on QEMU 7.2 that makes
    /// the RAM a ROM; the `rom=` property that separates the two is 8.2.)
    Private,
}

/// Guest RAM backed by a file (`-object memory-backend-file`), the base of
/// VM templating (QEMU `docs/system/vm-templating.rst`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryFile {
    /// The file holding the guest's RAM (created and sized by QEMU when
    /// missing; it must be exactly the guest memory size when it exists).
    pub path: PathBuf,
    /// Whether the guest's writes reach the file.
    pub sharing: MemorySharing,
}

/// The QEMU id of the file-backed RAM: the migration stream names the RAM
/// block by it, so a template and its clones must agree.
pub const MEMORY_BACKEND_ID: &str = "airlock-mem";

/// Everything one VM's QEMU command line is built from.
///
/// [`VmSpec::new`] fills in the defaults and puts the per-VM files into the
/// VM's work dir with the standard names; adjust fields after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The VM id, `[A-Za-z0-9_-]{1,128}`.
    pub vm_id: String,
    /// Guest memory.
    pub memory_mib: u32,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Kernel and initramfs.
    pub boot: BootImages,
    /// Add `quiet` to the kernel command line (kernel messages below warning
    /// level stay off the console). On by default: the console is emulated
    /// byte by byte and the log is kept for failures.
    pub quiet_kernel: bool,
    /// Words appended to the kernel command line, e.g. `airlock.tmp_mib=32`.
    /// Each must be one word (no whitespace).
    pub extra_kernel_args: Vec<String>,
    /// The root disk.
    pub root: RootDisk,
    /// File receiving the serial console (kernel and init messages),
    /// unless [`VmSpec::console_on_stdout`].
    pub console_log: PathBuf,
    /// The serial console goes to QEMU's stdout (`-chardev stdio`)
    /// instead of `console_log`: the spawner reads it and caps what it
    /// keeps, and a jailed QEMU needs no log file. Off in
    /// [`VmSpec::new`].
    pub console_on_stdout: bool,
    /// Unix socket QEMU serves for the `airlock.cmd` port.
    pub cmd_socket: PathBuf,
    /// Unix socket QEMU serves for the `airlock.event` port.
    pub event_socket: PathBuf,
    /// Unix socket QEMU serves QMP on.
    pub qmp_socket: PathBuf,
    /// Network attachment.
    pub network: NetworkAttachment,
    /// Additional disks.
    pub extra_drives: Vec<ExtraDrive>,
    /// Host directories shared over virtio-9p.
    pub shares: Vec<Share>,
    /// Restore from a snapshot instead of booting.
    pub incoming: Option<IncomingMigration>,
    /// Guest RAM in a file instead of anonymous memory (templates).
    pub memory_file: Option<MemoryFile>,
    /// Without a memory file: the anonymous guest RAM is a backend object
    /// named [`MEMORY_BACKEND_ID`] (`memory-backend-ram`) instead of the
    /// machine's default one. A paused template clone is resumed so: its
    /// migration stream names its RAM block after the backend.
    pub named_ram: bool,
    /// The TCG translation cache in MiB (`-accel tcg,tb-size=`); ignored
    /// under KVM. Default [`crate::TCG_TB_SIZE_MIB`]; an image whose code
    /// does not fit (the data stack) asks for more, or the cache fills,
    /// is flushed and everything is translated again.
    pub translation_cache_mib: u32,
}

/// The default TCG translation cache of each VM, in MiB
/// ([`crate::VmSpec::translation_cache_mib`]). QEMU 7.2 reserves 1 GiB
/// by default and a VM keeps all it translates, private to it: about
/// 30 MiB once python has started, and without bound for code that keeps
/// making code (Node's JIT). 32 MiB holds an interpreter's start (a run's
/// first exec is as fast as with the default); 16 would save another
/// 14 MiB per VM but doubles the first exec of a new python process, which
/// then no longer fits and is translated again (measured in
/// `docs/templates.md`, "Memory per clone").
pub const TCG_TB_SIZE_MIB: u32 = 32;

/// Smallest TCG translation cache accepted, in MiB.
pub const MIN_TRANSLATION_CACHE_MIB: u32 = 8;
/// Largest TCG translation cache accepted, in MiB (QEMU's own default).
pub const MAX_TRANSLATION_CACHE_MIB: u32 = 1024;

impl VmSpec {
    /// A VM with default resources (256 MiB, 1 vCPU, no network) whose
    /// console log and sockets live in `work_dir` as `console.log`,
    /// `cmd.sock`, `event.sock` and `qmp.sock`.
    pub fn new(
        vm_id: impl Into<String>,
        boot: BootImages,
        root: RootDisk,
        work_dir: &Path,
    ) -> Self {
        Self {
            vm_id: vm_id.into(),
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: 1,
            boot,
            quiet_kernel: true,
            extra_kernel_args: Vec::new(),
            root,
            console_log: work_dir.join("console.log"),
            console_on_stdout: false,
            cmd_socket: work_dir.join("cmd.sock"),
            event_socket: work_dir.join("event.sock"),
            qmp_socket: work_dir.join("qmp.sock"),
            network: NetworkAttachment::None,
            extra_drives: Vec::new(),
            shares: Vec::new(),
            incoming: None,
            memory_file: None,
            named_ram: false,
            translation_cache_mib: TCG_TB_SIZE_MIB,
        }
    }

    /// Checks everything that does not depend on the host.
    ///
    /// # Errors
    /// The first problem found, as a [`QemuError`] naming the VM and field.
    pub fn validate(&self) -> Result<(), QemuError> {
        validate_vm_id(&self.vm_id)?;
        let id = || self.vm_id.clone();
        if !(MIN_TRANSLATION_CACHE_MIB..=MAX_TRANSLATION_CACHE_MIB)
            .contains(&self.translation_cache_mib)
        {
            return Err(QemuError::TranslationCacheOutOfRange {
                vm_id: id(),
                mib: self.translation_cache_mib,
                min_mib: MIN_TRANSLATION_CACHE_MIB,
                max_mib: MAX_TRANSLATION_CACHE_MIB,
            });
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(QemuError::MemoryOutOfRange {
                vm_id: id(),
                memory_mib: self.memory_mib,
                min_mib: MIN_MEMORY_MIB,
                max_mib: MAX_MEMORY_MIB,
            });
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(QemuError::VcpusOutOfRange {
                vm_id: id(),
                vcpus: self.vcpus,
                max: MAX_VCPUS,
            });
        }

        let mut files: Vec<(&'static str, &Path)> = vec![
            ("kernel", &self.boot.kernel),
            ("initramfs", &self.boot.initramfs),
            ("root base image", &self.root.base),
            ("root overlay", &self.root.overlay),
            ("console log", &self.console_log),
        ];
        if let Some(memory) = &self.memory_file {
            files.push(("memory file", &memory.path));
        }
        let mut sockets: Vec<(&'static str, &Path)> = vec![
            ("cmd socket", &self.cmd_socket),
            ("event socket", &self.event_socket),
            ("qmp socket", &self.qmp_socket),
        ];
        if let NetworkAttachment::Stream { socket } = &self.network {
            sockets.push(("network socket", socket));
        }
        for (field, path) in files.iter().chain(&sockets) {
            check_path(&self.vm_id, field, path)?;
        }
        for (field, path) in &sockets {
            let len_bytes = path.as_os_str().len();
            if len_bytes > MAX_SOCKET_PATH_BYTES {
                return Err(QemuError::SocketPathTooLong {
                    vm_id: id(),
                    field,
                    path: path.to_path_buf(),
                    len_bytes,
                    max_bytes: MAX_SOCKET_PATH_BYTES,
                });
            }
        }
        for arg in &self.extra_kernel_args {
            validate_kernel_arg(&self.vm_id, arg)?;
        }
        validate_drives(self)?;
        validate_shares(self)?;
        files.extend(sockets);
        files.extend(
            self.extra_drives
                .iter()
                .map(|d| ("extra drive", d.path.as_path())),
        );
        // Every file has one role: QEMU creates or writes most of them.
        for (i, (first, a)) in files.iter().enumerate() {
            if let Some((second, _)) = files[i + 1..].iter().find(|(_, b)| a == b) {
                return Err(QemuError::DuplicatePath {
                    vm_id: id(),
                    first,
                    second,
                    path: a.to_path_buf(),
                });
            }
        }
        if let NetworkAttachment::User { host_forwards } = &self.network {
            validate_forwards(&self.vm_id, host_forwards)?;
        }
        if let Some(IncomingMigration::Fd(fd)) = self.incoming {
            if fd < 3 {
                return Err(QemuError::InvalidIncomingFd { vm_id: id(), fd });
            }
        }
        Ok(())
    }
}

/// Checks a VM id: `[A-Za-z0-9_-]{1,128}` ([`airlock_sys_util::id`]).
///
/// # Errors
/// [`QemuError::InvalidVmId`].
pub fn validate_vm_id(vm_id: &str) -> Result<(), QemuError> {
    airlock_sys_util::check_id(vm_id).map_err(|_| QemuError::InvalidVmId {
        vm_id: vm_id.to_owned(),
    })
}

fn check_path(vm_id: &str, field: &'static str, path: &Path) -> Result<(), QemuError> {
    let bytes = path.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err(QemuError::EmptyPath {
            vm_id: vm_id.to_owned(),
            field,
        });
    }
    if bytes.iter().any(|&b| b == 0 || b == b'\n') {
        return Err(QemuError::UnrepresentablePath {
            vm_id: vm_id.to_owned(),
            field,
            path: path.to_path_buf(),
        });
    }
    if !path.is_absolute() {
        return Err(QemuError::RelativePath {
            vm_id: vm_id.to_owned(),
            field,
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

fn validate_kernel_arg(vm_id: &str, arg: &str) -> Result<(), QemuError> {
    let reason = if arg.is_empty() {
        Some("it is empty")
    } else if arg.chars().any(char::is_whitespace) {
        Some("it contains whitespace: pass one word per argument")
    } else if arg.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if arg.contains('"') {
        Some("it contains a double quote")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(QemuError::InvalidKernelArg {
            vm_id: vm_id.to_owned(),
            arg: arg.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

fn validate_drives(spec: &VmSpec) -> Result<(), QemuError> {
    let mut ids = HashSet::new();
    let mut serials = HashSet::from([ROOT_SERIAL]);
    for drive in &spec.extra_drives {
        let bad = |reason: String| QemuError::InvalidDrive {
            vm_id: spec.vm_id.clone(),
            drive_id: drive.id.clone(),
            reason,
        };
        let id_ok = (1..=32).contains(&drive.id.len())
            && drive
                .id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !id_ok {
            return Err(bad("use 1 to 32 characters from [a-z0-9_-] as id".into()));
        }
        if drive.id == "root" || !ids.insert(drive.id.as_str()) {
            return Err(bad("the id is already used: give each drive its own".into()));
        }
        let serial_ok = (1..=MAX_DRIVE_SERIAL_BYTES).contains(&drive.serial.len())
            && drive
                .serial
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !serial_ok {
            return Err(bad(format!(
                "serial {:?}: use 1 to {MAX_DRIVE_SERIAL_BYTES} characters from [A-Za-z0-9_-]",
                drive.serial
            )));
        }
        if !serials.insert(drive.serial.as_str()) {
            return Err(bad(format!(
                "serial {:?} is already used (the root disk uses {ROOT_SERIAL:?})",
                drive.serial
            )));
        }
        check_path(&spec.vm_id, "extra drive", &drive.path)?;
        if let Some(backing) = &drive.backing {
            check_path(&spec.vm_id, "extra drive backing", backing)?;
            if drive.format != DiskFormat::Qcow2 {
                return Err(bad("only a qcow2 drive has a backing file".into()));
            }
        }
    }
    Ok(())
}

/// Longest 9p mount tag the guest reads whole (QEMU's limit is larger).
pub const MAX_SHARE_TAG_BYTES: usize = 31;

fn validate_shares(spec: &VmSpec) -> Result<(), QemuError> {
    let mut tags = HashSet::new();
    for share in &spec.shares {
        let bad = |reason: String| QemuError::InvalidShare {
            vm_id: spec.vm_id.clone(),
            tag: share.tag.clone(),
            reason,
        };
        let tag_ok = (1..=MAX_SHARE_TAG_BYTES).contains(&share.tag.len())
            && share
                .tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !tag_ok {
            return Err(bad(format!(
                "use 1 to {MAX_SHARE_TAG_BYTES} characters from [a-z0-9_-] as tag"
            )));
        }
        if !tags.insert(share.tag.as_str()) {
            return Err(bad(
                "the tag is already used: give each share its own".into()
            ));
        }
        check_path(&spec.vm_id, "shared directory", &share.path)?;
    }
    Ok(())
}

fn validate_forwards(vm_id: &str, forwards: &[HostForward]) -> Result<(), QemuError> {
    let mut seen = HashSet::new();
    for fwd in forwards {
        let reason = if fwd.host_port == 0 || fwd.guest_port == 0 {
            Some("ports must be non-zero")
        } else if !seen.insert((fwd.protocol, fwd.host_addr, fwd.host_port)) {
            Some("this host port is forwarded twice")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(QemuError::InvalidHostForward {
                vm_id: vm_id.to_owned(),
                forward: fwd.to_qemu(),
                reason,
            });
        }
    }
    Ok(())
}

/// A spec with fixed fake paths, for unit tests of this crate.
#[cfg(test)]
pub(crate) fn test_spec() -> VmSpec {
    VmSpec::new(
        "vm-1",
        BootImages {
            kernel: "/img/bzImage".into(),
            initramfs: "/img/initramfs.cpio".into(),
        },
        RootDisk {
            base: "/img/rootfs.qcow2".into(),
            overlay: "/work/vm-1/root.qcow2".into(),
            access: DiskAccess::ReadOnly,
        },
        Path::new("/work/vm-1"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn spec() -> VmSpec {
        test_spec()
    }

    fn drive(id: &str, serial: &str, path: &str) -> ExtraDrive {
        ExtraDrive {
            id: id.into(),
            path: path.into(),
            format: DiskFormat::Raw,
            access: DiskAccess::ReadWrite,
            serial: serial.into(),
            backing: None,
        }
    }

    #[test]
    fn new_spec_is_valid_and_uses_work_dir_names() {
        let s = spec();
        s.validate().unwrap();
        assert_eq!(s.qmp_socket, Path::new("/work/vm-1/qmp.sock"));
        assert_eq!(s.console_log, Path::new("/work/vm-1/console.log"));
        assert_eq!((s.memory_mib, s.vcpus), (DEFAULT_MEMORY_MIB, 1));
    }

    #[test]
    fn vm_id_must_be_safe_characters() {
        for bad in ["", "a b", "a,b", "../x", &"x".repeat(129)] {
            assert!(
                matches!(validate_vm_id(bad), Err(QemuError::InvalidVmId { .. })),
                "{bad:?}"
            );
        }
        validate_vm_id(&"A-z_9".repeat(25)).unwrap();
        let s = VmSpec {
            vm_id: "bad id".into(),
            ..spec()
        };
        assert!(matches!(s.validate(), Err(QemuError::InvalidVmId { .. })));
    }

    #[test]
    fn memory_outside_range_is_refused() {
        for memory_mib in [0, MIN_MEMORY_MIB - 1, MAX_MEMORY_MIB + 1] {
            let err = VmSpec {
                memory_mib,
                ..spec()
            }
            .validate()
            .unwrap_err();
            assert!(
                matches!(err, QemuError::MemoryOutOfRange { memory_mib: m, .. } if m == memory_mib)
            );
        }
        VmSpec {
            memory_mib: MIN_MEMORY_MIB,
            ..spec()
        }
        .validate()
        .unwrap();
        VmSpec {
            memory_mib: MAX_MEMORY_MIB,
            ..spec()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn vcpus_outside_range_are_refused() {
        for vcpus in [0, MAX_VCPUS + 1] {
            let err = VmSpec { vcpus, ..spec() }.validate().unwrap_err();
            assert!(matches!(err, QemuError::VcpusOutOfRange { .. }), "{err}");
        }
        VmSpec {
            vcpus: MAX_VCPUS,
            ..spec()
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn empty_path_is_refused_with_its_field() {
        let mut s = spec();
        s.boot.kernel = PathBuf::new();
        let err = s.validate().unwrap_err();
        assert!(
            matches!(
                err,
                QemuError::EmptyPath {
                    field: "kernel",
                    ..
                }
            ),
            "{err}"
        );
        let mut s = spec();
        s.qmp_socket = PathBuf::new();
        let err = s.validate().unwrap_err();
        assert!(
            matches!(
                err,
                QemuError::EmptyPath {
                    field: "qmp socket",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn relative_path_is_refused() {
        let mut s = spec();
        s.root.overlay = "json:{\"driver\":\"null-co\"}".into();
        let err = s.validate().unwrap_err();
        assert!(
            matches!(
                err,
                QemuError::RelativePath {
                    field: "root overlay",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn path_with_newline_or_nul_is_refused() {
        let mut s = spec();
        s.console_log = "/work/vm-1/con\nsole".into();
        let err = s.validate().unwrap_err();
        assert!(
            matches!(err, QemuError::UnrepresentablePath { .. }),
            "{err}"
        );
        let mut s = spec();
        s.boot.initramfs = std::ffi::OsString::from_vec(b"/i\0x".to_vec()).into();
        assert!(matches!(
            s.validate(),
            Err(QemuError::UnrepresentablePath { .. })
        ));
    }

    #[test]
    fn socket_path_of_108_bytes_is_refused_and_107_accepted() {
        let dir = format!(
            "/{}",
            "d".repeat(MAX_SOCKET_PATH_BYTES - "/x.sock".len() - 1)
        );
        let ok = Path::new(&dir).join("x.sock");
        assert_eq!(ok.as_os_str().len(), MAX_SOCKET_PATH_BYTES);
        VmSpec {
            cmd_socket: ok,
            ..spec()
        }
        .validate()
        .unwrap();
        let long = Path::new(&dir).join("xy.sock");
        let err = VmSpec {
            event_socket: long,
            ..spec()
        }
        .validate()
        .unwrap_err();
        assert!(
            matches!(
                err,
                QemuError::SocketPathTooLong {
                    field: "event socket",
                    len_bytes: 108,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("shorter work dir"));
    }

    #[test]
    fn network_socket_length_is_checked_too() {
        let socket = PathBuf::from(format!("/{}", "n".repeat(120)));
        let s = VmSpec {
            network: NetworkAttachment::Stream { socket },
            ..spec()
        };
        assert!(matches!(
            s.validate(),
            Err(QemuError::SocketPathTooLong {
                field: "network socket",
                ..
            })
        ));
    }

    #[test]
    fn shared_paths_are_refused() {
        let s = VmSpec {
            event_socket: spec().cmd_socket,
            ..spec()
        };
        let err = s.validate().unwrap_err();
        assert!(
            matches!(
                err,
                QemuError::DuplicatePath {
                    first: "cmd socket",
                    second: "event socket",
                    ..
                }
            ),
            "{err}"
        );
        let mut s = spec();
        s.root.overlay = s.root.base.clone();
        assert!(matches!(s.validate(), Err(QemuError::DuplicatePath { .. })));
    }

    #[test]
    fn kernel_args_must_be_single_words() {
        for (arg, reason) in [
            ("", "empty"),
            ("a b", "whitespace"),
            ("a\u{7}", "control"),
            ("x=\"y\"", "double quote"),
        ] {
            let s = VmSpec {
                extra_kernel_args: vec![arg.into()],
                ..spec()
            };
            let err = s.validate().unwrap_err();
            assert!(
                matches!(err, QemuError::InvalidKernelArg { .. }),
                "{arg:?}: {err}"
            );
            assert!(err.to_string().contains(reason), "{err}");
        }
        let s = VmSpec {
            extra_kernel_args: vec!["airlock.tmp_mib=32".into()],
            ..spec()
        };
        s.validate().unwrap();
    }

    #[test]
    fn extra_drive_ids_and_serials_are_checked() {
        let cases = [
            (drive("Data", "d1", "/d/1"), "as id"),
            (drive("root", "d1", "/d/1"), "already used"),
            (drive("data", "airlock-root", "/d/1"), "already used"),
            (drive("data", "", "/d/1"), "serial"),
            (drive("data", &"s".repeat(21), "/d/1"), "serial"),
            (drive("data", "a b", "/d/1"), "serial"),
        ];
        for (d, needle) in cases {
            let err = VmSpec {
                extra_drives: vec![d.clone()],
                ..spec()
            }
            .validate()
            .unwrap_err();
            assert!(
                matches!(err, QemuError::InvalidDrive { .. }),
                "{d:?}: {err}"
            );
            assert!(err.to_string().contains(needle), "{err}");
        }
    }

    #[test]
    fn duplicate_extra_drives_are_refused() {
        let twice = vec![drive("data", "d1", "/d/1"), drive("data", "d2", "/d/2")];
        let err = VmSpec {
            extra_drives: twice,
            ..spec()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("already used"), "{err}");
        let same_file = vec![drive("a", "d1", "/d/1"), drive("b", "d2", "/d/1")];
        let err = VmSpec {
            extra_drives: same_file,
            ..spec()
        }
        .validate()
        .unwrap_err();
        assert!(matches!(err, QemuError::DuplicatePath { .. }), "{err}");
        let relative = vec![drive("a", "d1", "d/1")];
        let err = VmSpec {
            extra_drives: relative,
            ..spec()
        }
        .validate()
        .unwrap_err();
        assert!(
            matches!(
                err,
                QemuError::RelativePath {
                    field: "extra drive",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn host_forwards_are_checked() {
        let zero = HostForward::tcp_localhost(0, 80);
        let s = VmSpec {
            network: NetworkAttachment::User {
                host_forwards: vec![zero],
            },
            ..spec()
        };
        assert!(
            matches!(s.validate(), Err(QemuError::InvalidHostForward { reason, .. }) if reason.contains("non-zero"))
        );
        let twice = vec![
            HostForward::tcp_localhost(8080, 80),
            HostForward::tcp_localhost(8080, 81),
        ];
        let s = VmSpec {
            network: NetworkAttachment::User {
                host_forwards: twice,
            },
            ..spec()
        };
        assert!(
            matches!(s.validate(), Err(QemuError::InvalidHostForward { reason, .. }) if reason.contains("twice"))
        );
    }

    #[test]
    fn host_forward_renders_qemu_syntax() {
        let udp = HostForward {
            protocol: ForwardProtocol::Udp,
            ..HostForward::tcp_localhost(5353, 53)
        };
        assert_eq!(
            HostForward::tcp_localhost(8080, 80).to_qemu(),
            "tcp:127.0.0.1:8080-:80"
        );
        assert_eq!(udp.to_qemu(), "udp:127.0.0.1:5353-:53");
    }

    #[test]
    fn a_memory_file_must_be_an_absolute_path_of_its_own() {
        let with = |path: &str| VmSpec {
            memory_file: Some(MemoryFile {
                path: path.into(),
                sharing: MemorySharing::Private,
            }),
            ..spec()
        };
        assert!(matches!(
            with("memory").validate(),
            Err(QemuError::RelativePath {
                field: "memory file",
                ..
            })
        ));
        assert!(matches!(
            with("/work/vm-1/console.log").validate(),
            Err(QemuError::DuplicatePath { .. })
        ));
        with("/templates/t/memory").validate().unwrap();
    }

    #[test]
    fn incoming_fd_must_not_be_a_standard_stream() {
        let s = VmSpec {
            incoming: Some(IncomingMigration::Fd(1)),
            ..spec()
        };
        assert!(matches!(
            s.validate(),
            Err(QemuError::InvalidIncomingFd { fd: 1, .. })
        ));
        VmSpec {
            incoming: Some(IncomingMigration::Fd(3)),
            ..spec()
        }
        .validate()
        .unwrap();
    }
}
