//! Base identities and the names of files in the pool directory (pure).
//!
//! A base image is identified by what `stat` says of it (device, inode, size,
//! modification time): rewriting, replacing or touching the file gives it a
//! new [`BaseId`], which retires every overlay made on the old one.
//!
//! Files in the pool directory:
//! - `<base-id>-<seq>.qcow2`: a finished overlay, ready to hand out;
//! - `.tmp-<base-id>-<seq>.qcow2`: an overlay being created (never handed
//!   out; renamed to the ready name once `qemu-img` succeeded);
//! - `.lock`: held by the pool that owns the directory;
//! - anything else is not ours and is never touched.

use std::fmt;

use sha2::{Digest, Sha256};

/// Length of a [`BaseId`] in hex characters (64 bits).
pub const BASE_ID_LEN: usize = 16;
/// Prefix of overlays being created.
pub const TEMP_PREFIX: &str = ".tmp-";
/// Extension of every overlay.
pub const OVERLAY_SUFFIX: &str = ".qcow2";
/// Name of the lock file of a pool directory.
pub const LOCK_FILE_NAME: &str = ".lock";

/// What `stat` reports about a base image; its identity is derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseStat {
    /// `st_dev`.
    pub dev: u64,
    /// `st_ino`.
    pub ino: u64,
    /// `st_size` in bytes.
    pub size_bytes: u64,
    /// `st_mtime` seconds.
    pub mtime_sec: i64,
    /// `st_mtime` nanoseconds.
    pub mtime_nsec: i64,
}

impl BaseStat {
    /// Reads the fields from file metadata.
    pub fn from_metadata(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size_bytes: meta.size(),
            mtime_sec: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// Identity of one version of a base image: 16 lowercase hex characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BaseId([u8; BASE_ID_LEN]);

impl BaseId {
    /// The identity of the base image described by `stat`.
    pub fn from_stat(stat: &BaseStat) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"airlock-overlay base v1\0");
        hasher.update(stat.dev.to_le_bytes());
        hasher.update(stat.ino.to_le_bytes());
        hasher.update(stat.size_bytes.to_le_bytes());
        hasher.update(stat.mtime_sec.to_le_bytes());
        hasher.update(stat.mtime_nsec.to_le_bytes());
        let digest = hasher.finalize();
        let hex = hex::encode(&digest[..BASE_ID_LEN / 2]);
        let mut id = [0u8; BASE_ID_LEN];
        id.copy_from_slice(hex.as_bytes());
        Self(id)
    }

    /// Parses the textual form (exactly 16 lowercase hex characters).
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != BASE_ID_LEN
            || !bytes
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        {
            return None;
        }
        let mut id = [0u8; BASE_ID_LEN];
        id.copy_from_slice(bytes);
        Some(Self(id))
    }

    /// The textual form.
    pub fn as_str(&self) -> &str {
        // The bytes are ASCII hex by construction (from_stat and parse).
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl fmt::Display for BaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Name of a finished overlay.
pub fn ready_name(base: &BaseId, seq: u64) -> String {
    format!("{base}-{seq}{OVERLAY_SUFFIX}")
}

/// Name of an overlay while `qemu-img` creates it.
pub fn temp_name(base: &BaseId, seq: u64) -> String {
    format!("{TEMP_PREFIX}{base}-{seq}{OVERLAY_SUFFIX}")
}

/// What a file name in the pool directory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolFile {
    /// A finished overlay made on `base`.
    Ready {
        /// The base it was made on.
        base: BaseId,
        /// Its sequence number.
        seq: u64,
    },
    /// An overlay being created (or left half-made by a crash).
    Temp {
        /// The base it is made on.
        base: BaseId,
        /// Its sequence number.
        seq: u64,
    },
    /// The pool's lock file.
    Lock,
    /// Not ours: left alone.
    Foreign,
}

/// Classifies a file name of the pool directory. Only the exact names this
/// module renders are recognised, so foreign files are never deleted.
pub fn parse_pool_file(name: &str) -> PoolFile {
    if name == LOCK_FILE_NAME {
        return PoolFile::Lock;
    }
    let (is_temp, rest) = match name.strip_prefix(TEMP_PREFIX) {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    let Some((base, seq)) = rest
        .strip_suffix(OVERLAY_SUFFIX)
        .and_then(|stem| stem.split_once('-'))
        .and_then(|(id, seq)| Some((BaseId::parse(id)?, parse_canonical_u64(seq)?)))
    else {
        return PoolFile::Foreign;
    };
    if is_temp {
        PoolFile::Temp { base, seq }
    } else {
        PoolFile::Ready { base, seq }
    }
}

/// Parses a decimal number written the way `u64::to_string` writes it (no
/// sign, no leading zero), so that parse and render are exact inverses.
fn parse_canonical_u64(text: &str) -> Option<u64> {
    if text.is_empty()
        || !text.bytes().all(|b| b.is_ascii_digit())
        || (text.len() > 1 && text.starts_with('0'))
    {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stat() -> BaseStat {
        BaseStat {
            dev: 0x801,
            ino: 1234,
            size_bytes: 16 << 20,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 5,
        }
    }

    #[test]
    fn base_id_is_stable_and_16_lowercase_hex() {
        let id = BaseId::from_stat(&stat());
        assert_eq!(id, BaseId::from_stat(&stat()));
        assert_eq!(id.as_str().len(), BASE_ID_LEN);
        assert_eq!(BaseId::parse(id.as_str()), Some(id));
    }

    #[test]
    fn any_change_of_the_stat_changes_the_base_id() {
        let base = BaseId::from_stat(&stat());
        let changed = [
            BaseStat { dev: 1, ..stat() },
            BaseStat { ino: 1, ..stat() },
            BaseStat {
                size_bytes: 1,
                ..stat()
            },
            BaseStat {
                mtime_sec: 1,
                ..stat()
            },
            BaseStat {
                mtime_nsec: 6,
                ..stat()
            },
        ];
        for other in changed {
            assert_ne!(BaseId::from_stat(&other), base, "{other:?}");
        }
    }

    #[test]
    fn base_id_parse_refuses_wrong_length_case_and_characters() {
        for bad in [
            "",
            "0123456789abcde",
            "0123456789abcdef0",
            "0123456789ABCDEF",
            "0123456789abcdeg",
        ] {
            assert_eq!(BaseId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rendered_names_parse_back() {
        let id = BaseId::from_stat(&stat());
        assert_eq!(
            parse_pool_file(&ready_name(&id, 7)),
            PoolFile::Ready { base: id, seq: 7 }
        );
        assert_eq!(
            parse_pool_file(&temp_name(&id, 0)),
            PoolFile::Temp { base: id, seq: 0 }
        );
        assert!(temp_name(&id, 3).starts_with(".tmp-"));
        assert!(ready_name(&id, 3).ends_with(".qcow2"));
    }

    #[test]
    fn lock_file_is_recognised() {
        assert_eq!(parse_pool_file(".lock"), PoolFile::Lock);
    }

    #[test]
    fn names_that_are_not_exactly_ours_are_foreign() {
        let id = BaseId::from_stat(&stat()).to_string();
        for name in [
            "base.qcow2".to_string(),
            format!("{id}-1.qcow2.bak"),
            format!("{id}-01.qcow2"),
            format!("{id}-+1.qcow2"),
            format!("{id}-.qcow2"),
            format!("{id}.qcow2"),
            format!("{id}-1-2.qcow2"),
            format!("{id}-1.raw"),
            format!(".tmp{id}-1.qcow2"),
            format!("x{id}-1.qcow2"),
            format!("{id}-99999999999999999999.qcow2"),
            ".lock2".to_string(),
        ] {
            assert_eq!(parse_pool_file(&name), PoolFile::Foreign, "{name}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_only_accepts_what_render_produces(name in "\\PC{0,64}") {
            match parse_pool_file(&name) {
                PoolFile::Ready { base, seq } => prop_assert_eq!(ready_name(&base, seq), name),
                PoolFile::Temp { base, seq } => prop_assert_eq!(temp_name(&base, seq), name),
                PoolFile::Lock => prop_assert_eq!(name.as_str(), LOCK_FILE_NAME),
                PoolFile::Foreign => {}
            }
        }

        #[test]
        fn render_then_parse_round_trips(
            dev in any::<u64>(), ino in any::<u64>(), size in any::<u64>(),
            sec in any::<i64>(), nsec in 0i64..1_000_000_000, seq in any::<u64>(),
        ) {
            let id = BaseId::from_stat(&BaseStat { dev, ino, size_bytes: size, mtime_sec: sec, mtime_nsec: nsec });
            prop_assert_eq!(parse_pool_file(&ready_name(&id, seq)), PoolFile::Ready { base: id, seq });
            prop_assert_eq!(parse_pool_file(&temp_name(&id, seq)), PoolFile::Temp { base: id, seq });
        }

        #[test]
        fn near_miss_names_are_foreign(id in "[0-9a-f]{16}", seq in any::<u64>(), junk in "[A-Za-z_.]{1,4}") {
            let name = format!("{id}-{seq}{junk}{OVERLAY_SUFFIX}");
            prop_assert_eq!(parse_pool_file(&name), PoolFile::Foreign);
        }
    }
}
