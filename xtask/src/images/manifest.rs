//! `manifest.json`: what the images dir holds, read by every consumer. Its
//! format is [`airlock_sys_util::image_manifest`], shared with the reader in
//! the orchestrator; this module adds the writer's side (kinds, file names,
//! atomic saves, staleness).

use airlock_sys_util::image_manifest::{
    ImageManifest, INITRAMFS_KEY, KERNEL_KEY, MANIFEST_FILE, MANIFEST_FORMAT,
};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One built artefact (the shared format's record).
pub use airlock_sys_util::image_manifest::ImageArtefact as Artefact;

/// The artefacts, by kind. Their key in the manifest is [`Kind::key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Kind {
    /// The guest kernel (`bzImage`).
    Kernel,
    /// The initramfs holding `/init` (airlock-init).
    Initramfs,
    /// Root disk with bash, coreutils and busybox.
    RootfsRaw,
    /// Root disk with python3, venv and pip.
    RootfsPython,
    /// Root disk with nodejs and npm.
    RootfsJavascript,
    /// Root disk with python3 and Debian's data stack (numpy, pandas,
    /// matplotlib, scipy, scikit-learn, ...).
    RootfsPythonData,
}

impl Kind {
    /// Every artefact, in build order.
    pub const ALL: [Kind; 6] = [
        Kind::Kernel,
        Kind::Initramfs,
        Kind::RootfsRaw,
        Kind::RootfsPython,
        Kind::RootfsJavascript,
        Kind::RootfsPythonData,
    ];

    /// The manifest key and file name stem, e.g. `rootfs-python`.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Kernel => KERNEL_KEY,
            Kind::Initramfs => INITRAMFS_KEY,
            Kind::RootfsRaw => "rootfs-raw",
            Kind::RootfsPython => "rootfs-python",
            Kind::RootfsJavascript => "rootfs-javascript",
            Kind::RootfsPythonData => "rootfs-python-data",
        }
    }

    /// The file extension of the artefact.
    pub fn extension(self) -> &'static str {
        match self {
            Kind::Kernel => "bzImage",
            Kind::Initramfs => "cpio",
            Kind::RootfsRaw
            | Kind::RootfsPython
            | Kind::RootfsJavascript
            | Kind::RootfsPythonData => "qcow2",
        }
    }

    /// The content-addressed file name for an input hash:
    /// `<key>-<first 16 hex digits>.<extension>`.
    pub fn file_name(self, hash: &str) -> String {
        let short = hash.get(..16).unwrap_or(hash);
        format!("{}-{short}.{}", self.key(), self.extension())
    }
}

/// The manifest of one images dir.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] of the writer.
    pub format: u32,
    /// The images dir this manifest describes.
    pub dir: PathBuf,
    /// Artefacts by key (`kernel`, `initramfs`, `rootfs-python`, ...).
    pub artefacts: BTreeMap<String, Artefact>,
}

impl Manifest {
    /// An empty manifest for `dir`.
    pub fn empty(dir: &Path) -> Self {
        Self {
            format: MANIFEST_FORMAT,
            dir: dir.to_path_buf(),
            artefacts: BTreeMap::new(),
        }
    }

    /// Reads `dir/manifest.json`; an absent, unreadable or older-format
    /// manifest gives an empty one (everything is then checked again).
    pub fn load(dir: &Path) -> Self {
        let parsed = std::fs::read(dir.join(MANIFEST_FILE))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<ImageManifest>(&bytes).ok())
            .filter(|m| m.format == MANIFEST_FORMAT);
        match parsed {
            Some(m) => Self {
                format: m.format,
                dir: dir.to_path_buf(),
                artefacts: m.artefacts,
            },
            None => Self::empty(dir),
        }
    }

    /// Writes the manifest atomically (temp file, then rename).
    pub fn save(&self) -> Result<()> {
        let path = self.dir.join(MANIFEST_FILE);
        let tmp = self.dir.join(format!(".{MANIFEST_FILE}.tmp"));
        let on_disk = ImageManifest {
            format: self.format,
            artefacts: self.artefacts.clone(),
        };
        let mut json = serde_json::to_string_pretty(&on_disk).context("serialize the manifest")?;
        json.push('\n');
        std::fs::write(&tmp, json).with_context(|| format!("write {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("rename to {}", path.display()))
    }

    /// The artefact of `kind`, if recorded.
    pub fn get(&self, kind: Kind) -> Option<&Artefact> {
        self.artefacts.get(kind.key())
    }

    /// The absolute path of the artefact of `kind`, if recorded.
    pub fn path(&self, kind: Kind) -> Option<PathBuf> {
        self.get(kind).map(|a| self.dir.join(&a.file))
    }

    /// Whether the recorded artefact of `kind` has input hash `hash` and its
    /// file is present with the recorded size.
    pub fn is_current(&self, kind: Kind, hash: &str) -> bool {
        self.get(kind).is_some_and(|a| {
            a.hash == hash
                && std::fs::metadata(self.dir.join(&a.file)).is_ok_and(|m| m.len() == a.size_bytes)
        })
    }

    /// The files of the images dir that look like artefacts (`<kind>-...`)
    /// but are not in the manifest: left over from older inputs.
    pub fn stale_files(&self, names: &[String]) -> Vec<String> {
        let kept: Vec<&str> = self.artefacts.values().map(|a| a.file.as_str()).collect();
        names
            .iter()
            .filter(|name| {
                Kind::ALL.iter().any(|k| is_artefact_name(*k, name))
                    && !kept.contains(&name.as_str())
            })
            .cloned()
            .collect()
    }
}

/// Whether `name` has the shape of a file name made by [`Kind::file_name`].
fn is_artefact_name(kind: Kind, name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(kind.key())
        .and_then(|r| r.strip_prefix('-'))
    else {
        return false;
    };
    let Some(hash) = rest
        .strip_suffix(kind.extension())
        .and_then(|r| r.strip_suffix('.'))
    else {
        return false;
    };
    hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artefact(file: &str) -> Artefact {
        Artefact {
            file: file.into(),
            hash: "ab".repeat(32),
            size_bytes: 3,
            build_seconds: 1.5,
            inputs: BTreeMap::new(),
        }
    }

    #[test]
    fn root_disk_keys_are_the_shared_formats() {
        use airlock_sys_util::image_manifest::rootfs_key;
        assert_eq!(Kind::RootfsRaw.key(), rootfs_key("raw"));
        assert_eq!(Kind::RootfsPython.key(), rootfs_key("python"));
        assert_eq!(Kind::RootfsJavascript.key(), rootfs_key("javascript"));
        assert_eq!(Kind::RootfsPythonData.key(), rootfs_key("python-data"));
    }

    #[test]
    fn file_name_carries_a_short_hash() {
        let hash = "0123456789abcdef".repeat(4);
        assert_eq!(
            Kind::RootfsPython.file_name(&hash),
            "rootfs-python-0123456789abcdef.qcow2"
        );
        assert_eq!(
            Kind::Kernel.file_name(&hash),
            "kernel-0123456789abcdef.bzImage"
        );
    }

    #[test]
    fn stale_files_are_old_artefacts_only() {
        let mut m = Manifest::empty(Path::new("/nowhere"));
        m.artefacts
            .insert("kernel".into(), artefact("kernel-0123456789abcdef.bzImage"));
        let names = [
            "kernel-0123456789abcdef.bzImage",
            "kernel-fedcba9876543210.bzImage",
            "rootfs-raw-fedcba9876543210.qcow2",
            "rootfs-raw-notahash.qcow2",
            "manifest.json",
            "notes.txt",
        ]
        .map(String::from);
        let stale = m.stale_files(&names);
        assert_eq!(
            stale,
            [
                "kernel-fedcba9876543210.bzImage",
                "rootfs-raw-fedcba9876543210.qcow2"
            ]
        );
    }

    #[test]
    fn rootfs_raw_name_is_not_mistaken_for_another_kind() {
        assert!(!is_artefact_name(
            Kind::RootfsRaw,
            "rootfs-python-0123456789abcdef.qcow2"
        ));
        assert!(is_artefact_name(
            Kind::RootfsPython,
            "rootfs-python-0123456789abcdef.qcow2"
        ));
        assert!(!is_artefact_name(
            Kind::RootfsPython,
            "rootfs-python-data-0123456789abcdef.qcow2"
        ));
        assert!(is_artefact_name(
            Kind::RootfsPythonData,
            "rootfs-python-data-0123456789abcdef.qcow2"
        ));
    }

    #[test]
    fn save_then_load_round_trips() {
        let dir = std::env::temp_dir().join(format!("xtask-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut m = Manifest::empty(&dir);
        m.artefacts.insert(
            "initramfs".into(),
            artefact("initramfs-0123456789abcdef.cpio"),
        );
        m.save().unwrap();
        let back = Manifest::load(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn missing_or_corrupt_manifest_loads_empty() {
        let dir = std::env::temp_dir().join(format!("xtask-manifest-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(MANIFEST_FILE), b"{not json").unwrap();
        let m = Manifest::load(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(m.artefacts.is_empty());
    }

    #[test]
    fn is_current_needs_same_hash_and_file() {
        let m = Manifest::empty(Path::new("/nowhere"));
        assert!(!m.is_current(Kind::Kernel, "x"));
    }
}
