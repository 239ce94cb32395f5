//! The guest images built by `cargo xtask images`, found through their
//! `manifest.json`, and their names ([`Image`]).
//!
//! An image is a root disk and the language its code runs in: `raw`,
//! `python` and `javascript` are each language's own (always built);
//! `python-data` is python3 with Debian's data stack (numpy, pandas,
//! matplotlib, scipy, scikit-learn, ...), built by a full
//! `cargo xtask images` and optional in an images dir.

use crate::error::{Error, Result};
pub use crate::spec::image::{Image, ImageLanguageMismatch, UnknownImage};
use airlock_protocol::Language;
use airlock_sys_util::image_manifest::{
    ImageManifest, INITRAMFS_KEY, KERNEL_KEY, MANIFEST_FILE, MANIFEST_FORMAT,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A built root disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDisk {
    /// The qcow2 base image (read-only: VMs boot overlays of it).
    pub path: PathBuf,
    /// Its input hash (identifies the base for overlays, templates and
    /// package layers).
    pub hash: String,
}

/// The images a VM boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Images {
    /// The images dir.
    pub dir: PathBuf,
    /// The kernel (`bzImage`).
    pub kernel: PathBuf,
    /// The initramfs holding the init.
    pub initramfs: PathBuf,
    /// Root disk (qcow2 base image) per language.
    pub rootfs: BTreeMap<Language, PathBuf>,
    /// Input hash per root disk (identifies the base for overlays).
    pub rootfs_hash: BTreeMap<Language, String>,
    /// Hash of the kernel (part of a memory template's key).
    pub kernel_hash: String,
    /// Hash of the initramfs (part of a memory template's key).
    pub initramfs_hash: String,
    /// The root disk of every image the dir holds: the languages' own
    /// (also in `rootfs`, `rootfs_hash`) and the optional ones
    /// (`python-data`) that were built.
    pub image_disks: BTreeMap<Image, ImageDisk>,
}

impl Images {
    /// The default images dir: `$AIRLOCK_IMAGES`, else `<cache>/images`
    /// (see [`airlock_sys_util::dirs`]).
    pub fn default_dir() -> PathBuf {
        crate::config::dirs().images
    }

    /// Reads `dir/manifest.json` and checks that every file it names exists.
    ///
    /// # Errors
    /// [`Error::ImagesMissing`] saying what is missing.
    pub fn load(dir: &Path) -> Result<Self> {
        let missing = |what: String| Error::ImagesMissing {
            dir: dir.to_path_buf(),
            what,
        };
        let path = dir.join(MANIFEST_FILE);
        let bytes =
            std::fs::read(&path).map_err(|e| missing(format!("{}: {e}", path.display())))?;
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| missing(format!("{} is not a valid manifest: {e}", path.display())))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(missing(format!(
                "manifest format {} (this airlock reads {MANIFEST_FORMAT})",
                manifest.format
            )));
        }
        let file = |key: &str| -> Result<(PathBuf, String)> {
            let artefact = manifest
                .artefacts
                .get(key)
                .ok_or_else(|| missing(format!("no {key} in the manifest")))?;
            let p = dir.join(&artefact.file);
            if !p.is_file() {
                return Err(missing(format!("{} (listed as {key})", p.display())));
            }
            Ok((p, artefact.hash.clone()))
        };
        let mut rootfs = BTreeMap::new();
        let mut rootfs_hash = BTreeMap::new();
        let mut image_disks = BTreeMap::new();
        for image in Image::ALL {
            let key = image.rootfs_key();
            // An optional image is absent from older or partial builds.
            if !image.is_language_default() && !manifest.artefacts.contains_key(&key) {
                continue;
            }
            let (path, hash) = file(&key)?;
            if image.is_language_default() {
                rootfs.insert(image.language(), path.clone());
                rootfs_hash.insert(image.language(), hash.clone());
            }
            image_disks.insert(image, ImageDisk { path, hash });
        }
        let (kernel, kernel_hash) = file(KERNEL_KEY)?;
        let (initramfs, initramfs_hash) = file(INITRAMFS_KEY)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            kernel,
            initramfs,
            rootfs,
            rootfs_hash,
            kernel_hash,
            initramfs_hash,
            image_disks,
        })
    }

    /// The root disk of `image`.
    ///
    /// # Errors
    /// [`Error::ImagesMissing`] when the images dir does not hold it (an
    /// optional image not built: `cargo xtask images` builds it).
    pub fn disk(&self, image: Image) -> Result<&ImageDisk> {
        self.image_disks
            .get(&image)
            .ok_or_else(|| Error::ImagesMissing {
                dir: self.dir.clone(),
                what: format!("the root disk of image {image} ({})", image.rootfs_key()),
            })
    }

    /// The images this dir holds, in [`Image::ALL`]'s order (for `airlock
    /// doctor` and `snapshot list`).
    pub fn available(&self) -> Vec<Image> {
        Image::ALL
            .into_iter()
            .filter(|image| self.image_disks.contains_key(image))
            .collect()
    }

    /// The root disk of a language.
    ///
    /// # Errors
    /// [`Error::ImagesMissing`] (cannot happen for a loaded set).
    pub fn rootfs(&self, language: Language) -> Result<&Path> {
        self.rootfs
            .get(&language)
            .map(PathBuf::as_path)
            .ok_or_else(|| Error::ImagesMissing {
                dir: self.dir.clone(),
                what: format!("no root disk for {language}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_images(dir: &Path, skip: &str) {
        write_images_with(dir, skip, &[]);
    }

    fn write_images_with(dir: &Path, skip: &str, extra: &[&str]) {
        let mut artefacts = serde_json::Map::new();
        let keys = [
            "kernel",
            "initramfs",
            "rootfs-raw",
            "rootfs-python",
            "rootfs-javascript",
        ];
        for &key in keys.iter().chain(extra) {
            let file = format!("{key}-0123456789abcdef.img");
            if key != skip {
                std::fs::write(dir.join(&file), b"x").unwrap();
            }
            artefacts.insert(
                key.into(),
                serde_json::json!({"file": file, "hash": "ab", "size_bytes": 1, "build_seconds": 0.0}),
            );
        }
        let manifest = serde_json::json!({"format": 1, "artefacts": artefacts});
        std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    }

    #[test]
    fn a_complete_manifest_loads() {
        let dir = tempfile::tempdir().unwrap();
        write_images(dir.path(), "");
        let images = Images::load(dir.path()).unwrap();
        assert!(images
            .rootfs(Language::Javascript)
            .unwrap()
            .ends_with("rootfs-javascript-0123456789abcdef.img"));
    }

    #[test]
    fn a_missing_file_is_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        write_images(dir.path(), "kernel");
        let msg = Images::load(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("kernel-0123456789abcdef.img"), "{msg}");
        assert!(msg.contains("cargo xtask images"), "{msg}");
    }

    #[test]
    fn the_data_image_is_optional_and_found_when_built() {
        let dir = tempfile::tempdir().unwrap();
        write_images(dir.path(), "");
        let without = Images::load(dir.path()).unwrap();
        assert_eq!(
            without.available(),
            [Image::Python, Image::Javascript, Image::Raw]
        );
        let msg = without.disk(Image::PythonData).unwrap_err().to_string();
        assert!(
            msg.contains("python-data") && msg.contains("cargo xtask images"),
            "{msg}"
        );

        write_images_with(dir.path(), "", &["rootfs-python-data"]);
        let with = Images::load(dir.path()).unwrap();
        assert_eq!(with.available().len(), 4);
        assert!(with
            .disk(Image::PythonData)
            .unwrap()
            .path
            .ends_with("rootfs-python-data-0123456789abcdef.img"));
        assert_eq!(
            with.disk(Image::Python).unwrap().path,
            with.rootfs(Language::Python).unwrap()
        );
        assert_eq!(
            with.rootfs.len(),
            3,
            "language-keyed maps hold the languages' own"
        );
    }

    #[test]
    fn a_listed_data_image_whose_file_is_gone_fails_the_load() {
        let dir = tempfile::tempdir().unwrap();
        write_images_with(dir.path(), "rootfs-python-data", &["rootfs-python-data"]);
        let msg = Images::load(dir.path()).unwrap_err().to_string();
        assert!(msg.contains("rootfs-python-data"), "{msg}");
    }

    #[test]
    fn no_manifest_says_to_build_images() {
        let dir = tempfile::tempdir().unwrap();
        let msg = Images::load(dir.path()).unwrap_err().to_string();
        assert!(
            msg.contains("manifest.json") && msg.contains("cargo xtask images"),
            "{msg}"
        );
    }
}
