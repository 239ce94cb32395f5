//! The guest ABI: every name the host and the guest must spell the same.
//!
//! The host (`airlock-qemu` building QEMU's command line, the orchestrator
//! attaching a package layer, `cargo xtask images` building the root disks)
//! and the guest (`airlock-init`, `airlock-agent`) meet here, so a rename
//! is one edit and cannot leave the two sides disagreeing:
//!
//! - the block devices, found by their virtio serial: [`ROOT_SERIAL`],
//!   [`PACKAGES_SERIAL`];
//! - the virtio-serial ports of the protocol: [`CMD_PORT_NAME`],
//!   [`EVENT_PORT_NAME`];
//! - the kernel command line arguments `airlock-init` reads:
//!   [`TMP_MIB_ARG`], [`HOME_MIB_ARG`], [`PACKAGES_ARG`] with a
//!   [`PackagesMount`];
//! - the guest's paths and user: [`AGENT_PATH`], [`PACKAGES_MOUNT`],
//!   [`SANDBOX_HOME`], [`SANDBOX_UID`];
//! - the prefix of init's console lines, [`INIT_LOG_PREFIX`], which the
//!   host's KVM probe looks for.
//!
//! Plain constants and one small enum: no I/O, so the static guest
//! binaries take them at no cost.
//!
//! ```
//! use airlock_protocol::abi::{PackagesMount, PACKAGES_ARG};
//!
//! let arg = PackagesMount::ReadOnly.kernel_arg();
//! assert_eq!(arg, "airlock.packages=ro");
//! let (key, value) = arg.split_once('=').unwrap();
//! assert_eq!((key, PackagesMount::parse(value)), (PACKAGES_ARG, Some(PackagesMount::ReadOnly)));
//! ```

/// Serial of the root disk: init finds its root among the block devices
/// by it (`/sys/block/*/serial`); QEMU gives it to the root drive.
pub const ROOT_SERIAL: &str = "airlock-root";

/// Serial of a package layer disk: init waits for it when the command line
/// has [`PACKAGES_ARG`].
pub const PACKAGES_SERIAL: &str = "airlock-packages";

/// Name of the virtio-serial port that carries requests (host -> guest).
pub const CMD_PORT_NAME: &str = "airlock.cmd";

/// Name of the virtio-serial port that carries events (guest -> host).
pub const EVENT_PORT_NAME: &str = "airlock.event";

/// `airlock.tmp_mib=N`: size cap of the guest's `/tmp` (and `/dev/shm`),
/// in MiB.
pub const TMP_MIB_ARG: &str = "airlock.tmp_mib";

/// `airlock.home_mib=N`: size cap of [`SANDBOX_HOME`], in MiB.
pub const HOME_MIB_ARG: &str = "airlock.home_mib";

/// `airlock.packages=ro|rw|none`: a package layer disk
/// ([`PACKAGES_SERIAL`]) is attached; init mounts it on
/// [`PACKAGES_MOUNT`] as the [`PackagesMount`] says (`none`: no layer).
pub const PACKAGES_ARG: &str = "airlock.packages";

/// Where the agent lives in every root disk.
pub const AGENT_PATH: &str = "/usr/local/bin/airlock-agent";

/// Where the package layer is mounted (an empty dir of every root disk):
/// `python/` holds pip's `--target`, `node/node_modules/` npm's packages.
pub const PACKAGES_MOUNT: &str = "/opt";

/// The sandbox user's home: a size-capped tmpfs owned by [`SANDBOX_UID`],
/// where user code runs and files are moved to and from.
pub const SANDBOX_HOME: &str = "/home/sandbox";

/// Numeric id of the unprivileged `sandbox` user (and its group).
pub const SANDBOX_UID: u32 = 1000;

/// Longest the agent waits for a language's cell driver to start and say
/// it is ready (a `warm_repl`, or the first cell or one-shot run in a VM
/// without a warm interpreter). It covers the image's preloaded modules:
/// `python-data` imports numpy, pandas and matplotlib, over a minute under
/// TCG on a loaded host.
pub const DRIVER_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

/// Longest the host waits for a warm-up it asked for:
/// [`DRIVER_START_TIMEOUT`] and a margin for the answer to arrive.
pub const HOST_WARM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(200);

/// Prefix of every line `airlock-init` writes to the console.
pub const INIT_LOG_PREFIX: &str = "airlock-init:";

/// How the package layer is mounted: the value of [`PACKAGES_ARG`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackagesMount {
    /// Read-only: a run over a finished layer.
    ReadOnly,
    /// Writable: the install VM that fills the layer.
    ReadWrite,
}

impl PackagesMount {
    /// The argument's value: `ro` or `rw`.
    pub fn value(self) -> &'static str {
        match self {
            Self::ReadOnly => "ro",
            Self::ReadWrite => "rw",
        }
    }

    /// The whole kernel argument, e.g. `airlock.packages=ro`.
    pub fn kernel_arg(self) -> String {
        format!("{PACKAGES_ARG}={}", self.value())
    }

    /// The mount a value names (`ro`, `rw`); `None` for any other value
    /// (`none` included: the caller decides what it means).
    pub fn parse(value: &str) -> Option<Self> {
        [Self::ReadOnly, Self::ReadWrite]
            .into_iter()
            .find(|mount| mount.value() == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mount_parses_back_from_its_value() {
        for mount in [PackagesMount::ReadOnly, PackagesMount::ReadWrite] {
            assert_eq!(PackagesMount::parse(mount.value()), Some(mount));
        }
    }

    #[test]
    fn other_values_name_no_mount() {
        for value in ["none", "", "RO", "ro ", "yes"] {
            assert_eq!(PackagesMount::parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn the_writable_layer_argument_is_spelt_as_init_reads_it() {
        assert_eq!(PackagesMount::ReadWrite.kernel_arg(), "airlock.packages=rw");
    }

    #[test]
    fn kernel_arguments_are_single_words() {
        for arg in [TMP_MIB_ARG, HOME_MIB_ARG, PACKAGES_ARG] {
            assert!(
                arg.starts_with("airlock.") && !arg.contains([' ', '=']),
                "{arg}"
            );
        }
    }

    #[test]
    fn disk_serials_fit_virtio_blk() {
        // virtio-blk serials are at most 20 bytes (VIRTIO_BLK_ID_BYTES).
        for serial in [ROOT_SERIAL, PACKAGES_SERIAL] {
            assert!(serial.len() <= 20, "{serial}");
        }
        assert_ne!(ROOT_SERIAL, PACKAGES_SERIAL);
    }
}
