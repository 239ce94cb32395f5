//! QEMU for Airlock: the command line of a microVM, and the host probes it
//! depends on.
//!
//! Two halves, kept apart:
//!
//! - **Pure** ([`QemuArgs::build`]): a [`VmSpec`] (what the VM is made of:
//!   memory, vCPUs, kernel, root disk, sockets, network) and the
//!   [`HostCaps`] (architecture, accelerator, QEMU version, io_uring, TSC
//!   frequency) give the argv, validated and with every option value
//!   escaped. x86_64 guests run on `-M microvm`, aarch64 guests on `-M virt`,
//!   all devices on virtio-mmio. Golden files under `tests/golden/` show
//!   every combination.
//! - **Effectful** ([`probe`]): finds QEMU (`$AIRLOCK_QEMU` or `PATH`),
//!   reads its version, asks it whether `aio=io_uring` works, reads the host
//!   TSC frequency, and decides between KVM and TCG by booting the real
//!   guest kernel under KVM with a short deadline (a `/dev/kvm` that opens is
//!   not proof: nested KVMs often cannot run a guest). The KVM verdict is
//!   cached on disk; `AIRLOCK_ACCEL` overrides it with a warning.
//!
//! - **QMP** ([`QmpClient`]): a small async client for the commands the
//!   orchestrator needs (pause, resume, and saving and loading a memory
//!   template's device state over a descriptor passed with `getfd`).
//!
//! - **Migration streams** ([`stream`]): a saved machine's stream copied
//!   without the RAM pages a base memory file already holds, so a VM
//!   mapping that file loads only what differs (a fork's children).
//!
//! It does not spawn or supervise VMs, or create overlays and sockets: the
//! orchestrator (`airlock`) does, with this argv and this client.
//!
//! Layer: a leaf crate under the orchestrator; of Airlock it depends only
//! on `airlock-sys-util` (ids, deadline runs, PATH lookup).
//!
//! ```
//! use airlock_qemu::{
//!     Accel, Arch, BootImages, DiskAccess, HostCaps, QemuArgs, QemuVersion, RootDisk, VmSpec,
//! };
//! use std::path::Path;
//!
//! let spec = VmSpec::new(
//!     "run-1",
//!     BootImages { kernel: "/img/bzImage".into(), initramfs: "/img/initramfs.cpio".into() },
//!     RootDisk {
//!         base: "/img/rootfs-python.qcow2".into(),
//!         overlay: "/run/airlock/run-1/root.qcow2".into(),
//!         access: DiskAccess::ReadOnly,
//!     },
//!     Path::new("/run/airlock/run-1"),
//! );
//! let caps = HostCaps {
//!     arch: Arch::X86_64,
//!     accel: Accel::Tcg,
//!     qemu_version: QemuVersion::new(7, 2, 0),
//!     io_uring: true,
//!     tsc_khz: Some(2_596_120),
//! };
//! let argv = QemuArgs::build(&spec, &caps).unwrap();
//! assert!(argv.iter().any(|a| a == "-nodefaults"));
//! assert!(argv.iter().any(|a| a.to_string_lossy().contains("serial=airlock-root")));
//! ```

mod accel;
mod args;
mod caps;
mod error;
mod opts;
pub mod probe;
pub mod qmp;
mod spec;
pub mod stream;

pub use accel::{choose_accel, parse_accel_override, AccelChoice, AccelVerdict};
pub use args::{
    argv_to_lines, kernel_cmdline, private_memory_file_read_only, QemuArgs, MIN_QEMU,
    MIN_QEMU_NETDEV_STREAM, MIN_QEMU_READ_ONLY_MEMORY_FILE,
};
pub use caps::{Accel, Arch, HostCaps, QemuVersion};
pub use error::QemuError;
pub use opts::escape_value;
pub use probe::{probe_host, HostProber, HostReport, ProbeConfig};
pub use qmp::QmpClient;
pub use spec::{
    validate_vm_id, BootImages, DiskAccess, DiskFormat, ExtraDrive, ForwardProtocol, HostForward,
    IncomingMigration, MemoryFile, MemorySharing, NetworkAttachment, RootDisk, Share, VmSpec,
    DEFAULT_MEMORY_MIB, GATEWAY_IPV4, GUEST_IPV4, GUEST_KERNEL_HZ, GUEST_MAC, GUEST_NET,
    GUEST_NET_PREFIX_LEN, HOST_IPV4, MAX_DRIVE_SERIAL_BYTES, MAX_KERNEL_CMDLINE_BYTES,
    MAX_MEMORY_MIB, MAX_SHARE_TAG_BYTES, MAX_SOCKET_PATH_BYTES, MAX_TRANSLATION_CACHE_MIB,
    MAX_VCPUS, MEMORY_BACKEND_ID, MIN_MEMORY_MIB, MIN_TRANSLATION_CACHE_MIB, TCG_TB_SIZE_MIB,
};
pub use stream::{delta_against_base, DeltaStats, StreamError};
