//! The guest ABI: every name the host and the guest must spell the same.
//!
//! The host (`airlock-qemu` building QEMU's command line, the orchestrator
//! attaching a package layer, `cargo xtask images` building the root disks)
//! and the guest (`airlock-init`, `airlock-agent`) meet here, so a rename
//! is one edit and cannot leave the two sides disagreeing:
//!
//! - the block devices, found by their virtio serial: [`ROOT_SERIAL`],
//!   [`PACKAGES_SERIAL`], [`WORKSPACE_SERIAL`];
//! - the host folders shared over virtio-9p: [`GuestMount`] (its tag and
//!   [`MOUNT_ARG`]), the guest dirs they may go to
//!   ([`check_guest_mount_dir`]);
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

/// Serial of the workspace disk: init waits for it when the command line
/// has [`WORKSPACE_ARG`].
pub const WORKSPACE_SERIAL: &str = "airlock-workspace";

/// `airlock.workspace=ext4`: a workspace disk ([`WORKSPACE_SERIAL`], an
/// ext4 file system made by the host) is attached; init mounts it and
/// puts [`SANDBOX_HOME`] and `/tmp` on it instead of tmpfs.
pub const WORKSPACE_ARG: &str = "airlock.workspace";

/// The one value of [`WORKSPACE_ARG`].
pub const WORKSPACE_FS: &str = "ext4";

/// `airlock.mount=TAG:ro|rw:DIR`, once per shared host folder
/// ([`GuestMount`]).
pub const MOUNT_ARG: &str = "airlock.mount";

/// Most host folders one VM may mount.
pub const MAX_MOUNTS: usize = 8;

/// Longest guest dir of a mount, in bytes.
pub const MAX_GUEST_MOUNT_DIR_BYTES: usize = 200;

/// The guest dirs below which host folders may be mounted: the sandbox
/// home, and `/mnt` (a small tmpfs init makes when a mount asks for it;
/// the root disk is read-only).
pub const GUEST_MOUNT_PARENTS: [&str; 2] = [SANDBOX_HOME, "/mnt"];

/// A host folder shared over virtio-9p, as the guest mounts it: the
/// device's mount tag, read-only or not, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMount {
    /// The 9p mount tag (`mount<N>`: [`GuestMount::tag_of`]).
    pub tag: String,
    /// Mounted read-only (writes fail with `EROFS`).
    pub read_only: bool,
    /// The guest dir ([`check_guest_mount_dir`]).
    pub dir: String,
}

impl GuestMount {
    /// The mount tag of the `index`th mount of a VM.
    pub fn tag_of(index: usize) -> String {
        format!("mount{index}")
    }

    /// The kernel argument, e.g. `airlock.mount=mount0:ro:/mnt/data`.
    pub fn kernel_arg(&self) -> String {
        let access = if self.read_only { "ro" } else { "rw" };
        format!("{MOUNT_ARG}={}:{access}:{}", self.tag, self.dir)
    }

    /// Reads the value of a [`MOUNT_ARG`].
    ///
    /// # Errors
    /// What is wrong with it, in words.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut parts = value.splitn(3, ':');
        let (Some(tag), Some(access), Some(dir)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err("expected TAG:ro|rw:DIR".to_owned());
        };
        let tag_ok = (1..=31).contains(&tag.len())
            && tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !tag_ok {
            return Err(format!("bad mount tag {tag:?}"));
        }
        let read_only = match access {
            "ro" => true,
            "rw" => false,
            other => return Err(format!("expected ro or rw, got {other:?}")),
        };
        check_guest_mount_dir(dir)?;
        Ok(Self {
            tag: tag.to_owned(),
            read_only,
            dir: dir.to_owned(),
        })
    }
}

/// Checks a guest dir a host folder is mounted on: absolute, at most
/// [`MAX_GUEST_MOUNT_DIR_BYTES`], each part of `[A-Za-z0-9._-]` (not `.`
/// or `..`, no empty part), strictly below one of [`GUEST_MOUNT_PARENTS`].
/// The characters are those the kernel command line carries as they are.
///
/// # Errors
/// Why it is refused, in words.
pub fn check_guest_mount_dir(dir: &str) -> Result<(), String> {
    if dir.len() > MAX_GUEST_MOUNT_DIR_BYTES {
        return Err(format!(
            "the guest dir is longer than {MAX_GUEST_MOUNT_DIR_BYTES} bytes"
        ));
    }
    let Some(rest) = dir.strip_prefix('/') else {
        return Err(format!("the guest dir {dir:?} must be absolute"));
    };
    for part in rest.split('/') {
        let ok = !part.is_empty()
            && part != "."
            && part != ".."
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(format!(
                "the guest dir {dir:?} must be a plain path: parts of [A-Za-z0-9._-], \
                 no `.`, `..`, empty part or trailing `/`"
            ));
        }
    }
    let below = GUEST_MOUNT_PARENTS.iter().any(|parent| {
        dir.strip_prefix(parent)
            .is_some_and(|tail| tail.len() > 1 && tail.starts_with('/'))
    });
    if !below {
        return Err(format!(
            "the guest dir {dir:?} must be below {} or {} (the root disk is read-only)",
            GUEST_MOUNT_PARENTS[0], GUEST_MOUNT_PARENTS[1]
        ));
    }
    Ok(())
}

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
    fn a_mount_argument_parses_back_to_the_same_mount() {
        for read_only in [true, false] {
            let mount = GuestMount {
                tag: GuestMount::tag_of(3),
                read_only,
                dir: "/home/sandbox/data.v2".into(),
            };
            let arg = mount.kernel_arg();
            let value = arg.strip_prefix("airlock.mount=").unwrap();
            assert_eq!(GuestMount::parse(value), Ok(mount));
        }
    }

    #[test]
    fn mount_arguments_with_a_bad_part_are_refused() {
        for value in [
            "",
            "mount0:ro",
            "Mount0:ro:/mnt/a",
            "mount0:RO:/mnt/a",
            "mount0:ro:mnt/a",
            "mount0:ro:/etc/x",
        ] {
            assert!(GuestMount::parse(value).is_err(), "{value:?}");
        }
    }

    #[test]
    fn guest_dirs_must_be_plain_paths_strictly_below_home_or_mnt() {
        for good in ["/mnt/data", "/home/sandbox/in/put", "/mnt/a.b-c_d"] {
            assert_eq!(check_guest_mount_dir(good), Ok(()), "{good}");
        }
        for bad in [
            "/mnt",
            "/mnt/",
            "/home/sandbox",
            "/home/sandboxes/x",
            "/mntx/a",
            "/etc/passwd",
            "/mnt/../etc",
            "/mnt/./a",
            "/mnt//a",
            "/mnt/a/",
            "/mnt/a b",
            "/mnt/a:b",
            "/mnt/a,b",
            "relative/mnt",
        ] {
            assert!(check_guest_mount_dir(bad).is_err(), "{bad}");
        }
        let long = format!("/mnt/{}", "a".repeat(MAX_GUEST_MOUNT_DIR_BYTES));
        assert!(check_guest_mount_dir(&long).is_err());
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
