//! The pure logic of `airlock-init`, the first process of every Airlock guest.
//!
//! `airlock-init` is PID 1 inside the VM. It lives alone in the initramfs,
//! mounts `/proc`, `/sys` and `/dev`, brings the loopback interface up,
//! finds the root disk by its virtio serial (`airlock-root`), mounts it
//! read-only with tmpfs for `/tmp` and the sandbox home (`/dev` and
//! `/dev/shm` `noexec`, cgroup2 on `/sys/fs/cgroup`), switches root and
//! runs the guest agent as its child. It reaps zombies and powers the VM off
//! when the agent exits.
//!
//! This library holds the decisions, free of syscalls so they are tested on
//! the host: the kernel command line contract ([`BootArgs`]), the root disk
//! choice ([`find_root_disk`]) and the console line with the boot milestones
//! ([`Milestones`]). The binary (`src/main.rs`) is the thin effectful shell.
//!
//! The names it shares with the host (disk serials, kernel arguments, the
//! agent's path, the sandbox user and home) are the guest ABI,
//! `airlock_protocol::abi`.
//!
//! It does not speak the host protocol (that is `airlock-agent`), load
//! kernel modules (the guest kernel has none), configure `eth0` (the kernel
//! does, from the static `ip=` argument the host passes to VMs with a
//! network) or run user code.
//!
//! Layer: guest side, below the agent; built static by `cargo xtask images`
//! and packed as `/init` into the initramfs.
//!
//! ```
//! use airlock_init::{find_root_disk, BootArgs, DiskSerial, Milestones};
//!
//! let args = BootArgs::parse("console=ttyS0 airlock.tmp_mib=32").unwrap();
//! assert_eq!((args.tmp_mib, args.home_mib), (32, 256));
//!
//! let disks = [DiskSerial::new("vda", "airlock-root\n")];
//! assert_eq!(find_root_disk(&disks, "airlock-root"), Some("vda"));
//!
//! let line = Milestones { kernel_ms: 800, root_ms: 850, agent_ms: 860 }.ready_line();
//! assert_eq!(line, "airlock-init: ready kernel_ms=800 root_ms=850 agent_ms=860");
//! ```

mod cmdline;
mod error;
mod milestones;
mod rootdisk;

pub use airlock_protocol::abi::PackagesMount;
pub use cmdline::{BootArgs, DEFAULT_HOME_MIB, DEFAULT_TMP_MIB, MAX_TMPFS_MIB};
pub use error::InitError;
pub use milestones::Milestones;
pub use rootdisk::{describe_disks, find_root_disk, DiskSerial};
