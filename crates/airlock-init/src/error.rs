//! The one error type of `airlock-init`.

/// Why the guest could not boot. Each one is printed on the console as
/// `airlock-init: fatal: <message>` before the VM powers off.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A kernel command line argument of ours has a bad value.
    #[error("bad kernel argument {arg}={value}: {reason} (fix the VM's -append line)")]
    BadArg {
        /// The argument name, e.g. `airlock.tmp_mib`.
        arg: String,
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A mount, chroot or similar system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What init was doing, e.g. `mount /proc`.
        what: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] airlock_sys_util::IoError),
    /// No block device carries the serial looked for (the root disk's,
    /// or the package layer's when the command line announces one).
    #[error(
        "no disk with serial {serial} after {waited_ms} ms (seen: {seen}); \
         give the drive `serial={serial}` on its virtio-blk device"
    )]
    RootDiskNotFound {
        /// The serial looked for.
        serial: String,
        /// How long init polled.
        waited_ms: u64,
        /// The disks seen, as `name=serial` pairs.
        seen: String,
    },
    /// The agent binary could not be started.
    #[error("cannot run the agent {path}: {source} (is it installed in the root disk?)")]
    AgentSpawn {
        /// The agent path.
        path: String,
        /// Why exec failed.
        #[source]
        source: std::io::Error,
    },
}
