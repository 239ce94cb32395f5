//! The guest images built by `cargo xtask images`, found through their
//! `manifest.json`, and their names ([`Image`]).
//!
//! An image is a root disk and the language its code runs in: `raw`,
//! `python` and `javascript` are each language's own (always built);
//! `python-data` is python3 with Debian's data stack (numpy, pandas,
//! matplotlib, scipy, scikit-learn, ...), built by a full
//! `cargo xtask images` and optional in an images dir.

use crate::error::{BootError, Result};
use airlock_protocol::Language;
use airlock_sys_util::image_manifest::{
    rootfs_key, ImageManifest, INITRAMFS_KEY, KERNEL_KEY, MANIFEST_FILE, MANIFEST_FORMAT,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A guest image, by name: which root disk a VM boots and which language
/// its code runs in. Chosen by the sandbox spec's `image` (CLI
/// `--image`, REST and MCP `"image"`); without one, a language's own image
/// ([`Image::of_language`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Image {
    /// bash and the shell tools (`raw` code).
    Raw,
    /// python3 with venv and pip.
    Python,
    /// nodejs and npm.
    Javascript,
    /// python3 with numpy, pandas, matplotlib, scipy, scikit-learn,
    /// seaborn, sympy, statsmodels, openpyxl, xlsxwriter, networkx, bs4,
    /// lxml and tabulate; its interpreter starts with numpy, pandas and
    /// matplotlib imported (backend Agg).
    PythonData,
}

impl Image {
    /// Every image, the languages' own first.
    pub const ALL: [Image; 4] = [
        Image::Python,
        Image::Javascript,
        Image::Raw,
        Image::PythonData,
    ];

    /// The name (`python`, `javascript`, `raw`, `python-data`), as on the
    /// command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Image::Raw => "raw",
            Image::Python => "python",
            Image::Javascript => "javascript",
            Image::PythonData => "python-data",
        }
    }

    /// The language its code runs in.
    pub fn language(self) -> Language {
        match self {
            Image::Raw => Language::Raw,
            Image::Python | Image::PythonData => Language::Python,
            Image::Javascript => Language::Javascript,
        }
    }

    /// A language's own image (the default when no image is named).
    pub fn of_language(language: Language) -> Image {
        match language {
            Language::Raw => Image::Raw,
            Language::Python => Image::Python,
            Language::Javascript => Image::Javascript,
        }
    }

    /// Whether this is a language's own image, which every images dir has.
    pub fn is_language_default(self) -> bool {
        Image::of_language(self.language()) == self
    }

    /// Its root disk's key in `manifest.json` (`rootfs-python-data`).
    pub fn rootfs_key(self) -> String {
        rootfs_key(self.name())
    }

    /// Whether `language` code can run in this image: only its own
    /// language (a `python-data` VM runs python).
    ///
    /// # Errors
    /// [`ImageLanguageMismatch`] naming both.
    pub fn check_language(
        self,
        language: Language,
    ) -> std::result::Result<(), ImageLanguageMismatch> {
        if self.language() == language {
            Ok(())
        } else {
            Err(ImageLanguageMismatch {
                image: self,
                language,
            })
        }
    }
}

impl fmt::Display for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error of [`Image::from_str`]: the name is none of [`Image::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown image {0:?}: use python, javascript, raw or python-data")]
pub struct UnknownImage(pub String);

/// Error of [`Image::check_language`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "image {image} runs {} code, not {language}: choose the image of your language \
     (or leave the image out)", image.language()
)]
pub struct ImageLanguageMismatch {
    /// The image asked for.
    pub image: Image,
    /// The language asked for.
    pub language: Language,
}

impl FromStr for Image {
    type Err = UnknownImage;

    /// The names of [`Image::name`], case-insensitive, and the language
    /// aliases of [`Language::from_str`] for the languages' own images
    /// (`py`, `js`, `node`, `bash`, ...); `_` may stand for `-`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let name = s.to_ascii_lowercase().replace('_', "-");
        if let Some(image) = Image::ALL.into_iter().find(|i| i.name() == name) {
            return Ok(image);
        }
        match name.parse::<Language>() {
            Ok(language) => Ok(Image::of_language(language)),
            Err(_) => Err(UnknownImage(s.to_owned())),
        }
    }
}

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
    /// [`BootError::ImagesMissing`] saying what is missing.
    pub fn load(dir: &Path) -> Result<Self, BootError> {
        let missing = |what: String| BootError::ImagesMissing {
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
        let file = |key: &str| -> Result<(PathBuf, String), BootError> {
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
    /// [`BootError::ImagesMissing`] when the images dir does not hold it (an
    /// optional image not built: `cargo xtask images` builds it).
    pub fn disk(&self, image: Image) -> Result<&ImageDisk, BootError> {
        self.image_disks
            .get(&image)
            .ok_or_else(|| BootError::ImagesMissing {
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
    /// [`BootError::ImagesMissing`] (cannot happen for a loaded set).
    pub fn rootfs(&self, language: Language) -> Result<&Path, BootError> {
        self.rootfs
            .get(&language)
            .map(PathBuf::as_path)
            .ok_or_else(|| BootError::ImagesMissing {
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
    fn image_names_parse_with_language_aliases_and_map_to_languages() {
        assert_eq!("python-data".parse::<Image>(), Ok(Image::PythonData));
        assert_eq!("Python_Data".parse::<Image>(), Ok(Image::PythonData));
        assert_eq!("node".parse::<Image>(), Ok(Image::Javascript));
        assert_eq!("bash".parse::<Image>(), Ok(Image::Raw));
        let err = "r-data".parse::<Image>().unwrap_err().to_string();
        assert!(err.contains("python-data"), "{err}");
        for image in Image::ALL {
            assert_eq!(image.name().parse::<Image>(), Ok(image));
            assert_eq!(image.to_string(), image.name());
            assert_eq!(image.rootfs_key(), format!("rootfs-{image}"));
            assert!(image.check_language(image.language()).is_ok());
        }
        assert_eq!(Image::PythonData.language(), Language::Python);
        assert!(!Image::PythonData.is_language_default());
        assert_eq!(Image::of_language(Language::Python), Image::Python);
        let mismatch = Image::PythonData
            .check_language(Language::Javascript)
            .unwrap_err()
            .to_string();
        assert!(
            mismatch.contains("python-data runs python code, not javascript"),
            "{mismatch}"
        );
    }

    #[test]
    fn images_are_kebab_case_in_json() {
        assert_eq!(
            serde_json::to_string(&Image::PythonData).unwrap(),
            "\"python-data\""
        );
        assert_eq!(
            serde_json::from_str::<Image>("\"raw\"").unwrap(),
            Image::Raw
        );
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
