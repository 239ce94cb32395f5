//! The kernel command line contract: the `airlock.*` arguments init reads.

use crate::InitError;
use airlock_protocol::abi::{
    GuestMount, PackagesMount, HOME_MIB_ARG, MAX_MOUNTS, MOUNT_ARG, PACKAGES_ARG, TMP_MIB_ARG,
    WORKSPACE_ARG, WORKSPACE_FS,
};

/// Default size cap of `/tmp`, in MiB.
pub const DEFAULT_TMP_MIB: u64 = 64;
/// Default size cap of the sandbox home, in MiB.
pub const DEFAULT_HOME_MIB: u64 = 256;
/// Largest accepted tmpfs size cap, in MiB (1 TiB: a typo guard, not a policy).
pub const MAX_TMPFS_MIB: u64 = 1 << 20;

/// What init takes from the kernel command line (`/proc/cmdline`).
///
/// Unknown arguments are ignored (they belong to the kernel or the agent);
/// a known argument with a bad value is an error, so a host mistake shows
/// up at once instead of as a strange guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootArgs {
    /// `airlock.tmp_mib=N`: size cap of `/tmp` (and `/dev/shm`), in MiB.
    pub tmp_mib: u64,
    /// `airlock.home_mib=N`: size cap of `/home/sandbox`, in MiB.
    pub home_mib: u64,
    /// `airlock.packages=ro|rw`: a package layer disk (serial
    /// [`airlock_protocol::abi::PACKAGES_SERIAL`]) is attached; mount it on
    /// [`airlock_protocol::abi::PACKAGES_MOUNT`], read-only (runs) or writable (the
    /// install VM). `None`: no layer.
    pub packages: Option<PackagesMount>,
    /// `airlock.workspace=ext4`: a workspace disk (serial
    /// [`airlock_protocol::abi::WORKSPACE_SERIAL`]) holds the sandbox home
    /// and `/tmp` (then `tmp_mib` sizes `/dev/shm` only, `home_mib` is
    /// unused).
    pub workspace: bool,
    /// `airlock.mount=TAG:ro|rw:DIR`, each occurrence one host folder
    /// over virtio-9p, in order (at most
    /// [`airlock_protocol::abi::MAX_MOUNTS`], no dir twice).
    pub mounts: Vec<GuestMount>,
}

impl Default for BootArgs {
    fn default() -> Self {
        Self {
            tmp_mib: DEFAULT_TMP_MIB,
            home_mib: DEFAULT_HOME_MIB,
            packages: None,
            workspace: false,
            mounts: Vec::new(),
        }
    }
}

impl BootArgs {
    /// Parses a kernel command line. The last occurrence of an argument wins,
    /// as in the kernel.
    pub fn parse(cmdline: &str) -> Result<Self, InitError> {
        let mut args = Self::default();
        for word in split_words(cmdline) {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            match key {
                TMP_MIB_ARG => args.tmp_mib = parse_mib(key, value)?,
                HOME_MIB_ARG => args.home_mib = parse_mib(key, value)?,
                PACKAGES_ARG => args.packages = parse_packages(key, value)?,
                WORKSPACE_ARG => args.workspace = parse_workspace(key, value)?,
                MOUNT_ARG => {
                    let bad = |reason: String| InitError::BadArg {
                        arg: key.to_owned(),
                        value: value.to_owned(),
                        reason,
                    };
                    let mount = GuestMount::parse(value).map_err(bad)?;
                    if args.mounts.len() >= MAX_MOUNTS {
                        return Err(bad(format!("more than {MAX_MOUNTS} mounts")));
                    }
                    if args
                        .mounts
                        .iter()
                        .any(|m| m.tag == mount.tag || nested(&m.dir, &mount.dir))
                    {
                        return Err(bad(
                            "its tag or dir repeats, or holds, another mount's".into()
                        ));
                    }
                    args.mounts.push(mount);
                }
                _ => {}
            }
        }
        Ok(args)
    }
}

/// Splits a command line into words as the kernel does: on whitespace,
/// except inside double quotes (which are removed).
fn split_words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut has_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                has_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_word {
                    words.push(std::mem::take(&mut current));
                    has_word = false;
                }
            }
            c => {
                current.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        words.push(current);
    }
    words
}

/// Whether one of two guest dirs is the other or below it.
fn nested(a: &str, b: &str) -> bool {
    let below = |inner: &str, outer: &str| {
        inner
            .strip_prefix(outer)
            .is_some_and(|tail| tail.is_empty() || tail.starts_with('/'))
    };
    below(a, b) || below(b, a)
}

fn parse_workspace(arg: &str, value: &str) -> Result<bool, InitError> {
    match value {
        WORKSPACE_FS => Ok(true),
        "none" => Ok(false),
        _ => Err(InitError::BadArg {
            arg: arg.to_owned(),
            value: value.to_owned(),
            reason: format!("expected {WORKSPACE_FS} or none"),
        }),
    }
}

fn parse_packages(arg: &str, value: &str) -> Result<Option<PackagesMount>, InitError> {
    match PackagesMount::parse(value) {
        Some(mount) => Ok(Some(mount)),
        None if value == "none" => Ok(None),
        None => Err(InitError::BadArg {
            arg: arg.to_owned(),
            value: value.to_owned(),
            reason: "expected ro, rw or none".to_owned(),
        }),
    }
}

fn parse_mib(arg: &str, value: &str) -> Result<u64, InitError> {
    let bad = |reason: &str| InitError::BadArg {
        arg: arg.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let mib: u64 = value
        .parse()
        .map_err(|_| bad("expected a whole number of MiB"))?;
    if mib == 0 {
        return Err(bad("must be at least 1"));
    }
    if mib > MAX_TMPFS_MIB {
        return Err(bad(&format!("must be at most {MAX_TMPFS_MIB}")));
    }
    Ok(mib)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn empty_cmdline_gives_defaults() {
        let args = BootArgs::parse("").unwrap();
        assert_eq!(
            args,
            BootArgs {
                tmp_mib: 64,
                home_mib: 256,
                ..BootArgs::default()
            }
        );
    }

    #[test]
    fn reads_both_sizes_among_kernel_args() {
        let line = "console=ttyS0 acpi=off airlock.tmp_mib=16 panic=-1 airlock.home_mib=512\n";
        let args = BootArgs::parse(line).unwrap();
        assert_eq!(
            args,
            BootArgs {
                tmp_mib: 16,
                home_mib: 512,
                ..BootArgs::default()
            }
        );
    }

    #[test]
    fn last_occurrence_wins() {
        let args = BootArgs::parse("airlock.tmp_mib=1 airlock.tmp_mib=2").unwrap();
        assert_eq!(args.tmp_mib, 2);
    }

    #[test]
    fn ignores_unknown_and_valueless_words() {
        let args = BootArgs::parse("quiet airlock.tmp_mib airlock.other=x ro").unwrap();
        assert_eq!(args, BootArgs::default());
    }

    #[test]
    fn reads_the_package_layer_mode_and_refuses_others() {
        let ro = BootArgs::parse("airlock.packages=ro").unwrap();
        assert_eq!(ro.packages, Some(PackagesMount::ReadOnly));
        let rw = BootArgs::parse("quiet airlock.packages=rw").unwrap();
        assert_eq!(rw.packages, Some(PackagesMount::ReadWrite));
        assert_eq!(
            BootArgs::parse("airlock.packages=none").unwrap().packages,
            None
        );
        assert!(BootArgs::parse("airlock.packages=yes").is_err());
    }

    #[test]
    fn reads_the_workspace_and_the_mounts_in_order() {
        let line = "airlock.workspace=ext4 airlock.mount=mount0:ro:/mnt/in \
                    airlock.mount=mount1:rw:/home/sandbox/out";
        let args = BootArgs::parse(line).unwrap();
        assert!(args.workspace);
        let dirs: Vec<_> = args
            .mounts
            .iter()
            .map(|m| (m.dir.as_str(), m.read_only))
            .collect();
        assert_eq!(dirs, [("/mnt/in", true), ("/home/sandbox/out", false)]);
        assert!(!BootArgs::parse("airlock.workspace=none").unwrap().workspace);
        assert!(BootArgs::parse("airlock.workspace=xfs").is_err());
    }

    #[test]
    fn repeated_or_nested_mounts_and_too_many_are_refused() {
        for line in [
            "airlock.mount=mount0:ro:/mnt/a airlock.mount=mount0:ro:/mnt/b",
            "airlock.mount=mount0:ro:/mnt/a airlock.mount=mount1:ro:/mnt/a",
            "airlock.mount=mount0:ro:/mnt/a airlock.mount=mount1:ro:/mnt/a/b",
            "airlock.mount=mount0:ro:/mnt/a/b airlock.mount=mount1:ro:/mnt/a",
            "airlock.mount=mount0:ro:/etc",
        ] {
            assert!(BootArgs::parse(line).is_err(), "{line}");
        }
        assert!(
            BootArgs::parse("airlock.mount=mount0:ro:/mnt/a airlock.mount=mount1:ro:/mnt/ab")
                .is_ok()
        );
        let nine: Vec<String> = (0..9)
            .map(|i| format!("airlock.mount=mount{i}:ro:/mnt/d{i}"))
            .collect();
        assert!(BootArgs::parse(&nine.join(" ")).is_err());
        assert_eq!(
            BootArgs::parse(&nine[..8].join(" ")).unwrap().mounts.len(),
            8
        );
    }

    #[test]
    fn quoted_words_keep_their_spaces() {
        let words = split_words(r#"a "b c" d="e f"  g"#);
        assert_eq!(words, ["a", "b c", "d=e f", "g"]);
    }

    #[test]
    fn rejects_zero_size() {
        let err = BootArgs::parse("airlock.home_mib=0").unwrap_err();
        assert!(err.to_string().contains("airlock.home_mib=0"), "{err}");
    }

    #[test]
    fn rejects_non_numbers_and_units() {
        for bad in [
            "airlock.tmp_mib=",
            "airlock.tmp_mib=64M",
            "airlock.tmp_mib=-1",
        ] {
            assert!(BootArgs::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_absurd_sizes() {
        assert!(BootArgs::parse("airlock.tmp_mib=1048577").is_err());
        assert!(BootArgs::parse("airlock.tmp_mib=1048576").is_ok());
    }

    proptest! {
        #[test]
        fn never_panics_on_any_input(line in ".*") {
            let _ = BootArgs::parse(&line);
        }

        #[test]
        fn any_valid_size_round_trips(tmp in 1u64..=MAX_TMPFS_MIB, home in 1u64..=MAX_TMPFS_MIB) {
            let line = format!("x=1 airlock.home_mib={home} y airlock.tmp_mib={tmp}");
            let args = BootArgs::parse(&line).unwrap();
            prop_assert_eq!(args, BootArgs { tmp_mib: tmp, home_mib: home, ..BootArgs::default() });
        }
    }
}
