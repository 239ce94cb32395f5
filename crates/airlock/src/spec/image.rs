//! Guest images by name ([`Image`]): which root disk a VM boots and the
//! language its code runs in. Plain names with no I/O, part of the spec
//! ([`super::MachineShape::image`]); `crate::images` finds their disks.

use airlock_protocol::Language;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A guest image, by name: which root disk a VM boots and which language
/// its code runs in. Chosen by the sandbox spec's `image` (CLI
/// `--image`, REST and MCP `"image"`); without one, a language's own image
/// ([`Image::of_language`]).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
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

/// The TCG translation cache of python-data VMs, in MiB
/// ([`Image::translation_cache_mib`]).
pub const DATA_TRANSLATION_CACHE_MIB: u32 = 128;

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

    /// The TCG translation cache its VMs get, in MiB (`-accel
    /// tcg,tb-size`; nothing under KVM). The data stack's code does not fit
    /// the default 32 MiB: a python-data session drawing charts translates
    /// about 44 MiB, and with 32 the cache filled, was flushed and
    /// everything was translated again, cell after cell (QEMU's
    /// `info jit`: 3 flushes in three chart cells, none with 128).
    /// Only what is translated is touched, so the larger cache costs
    /// memory only as code runs.
    pub fn translation_cache_mib(self) -> u32 {
        match self {
            Image::PythonData => DATA_TRANSLATION_CACHE_MIB,
            Image::Raw | Image::Python | Image::Javascript => airlock_qemu::TCG_TB_SIZE_MIB,
        }
    }

    /// Its root disk's key in `manifest.json` (`rootfs-python-data`).
    pub fn rootfs_key(self) -> String {
        airlock_sys_util::image_manifest::rootfs_key(self.name())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_data_vms_get_a_translation_cache_that_holds_the_data_stack() {
        assert_eq!(Image::PythonData.translation_cache_mib(), 128);
        for image in [Image::Python, Image::Javascript, Image::Raw] {
            assert_eq!(
                image.translation_cache_mib(),
                airlock_qemu::TCG_TB_SIZE_MIB,
                "{image:?}"
            );
        }
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
}
