//! The format of `manifest.json`, the index of a guest images dir: written
//! by `cargo xtask images`, read by the orchestrator. One definition, so the
//! writer and the reader cannot drift apart.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// File name of the manifest inside the images dir.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Version of the manifest format; bumped when fields change meaning. A
/// reader refuses (and a writer rebuilds over) any other version.
pub const MANIFEST_FORMAT: u32 = 1;

/// Manifest key of the guest kernel.
pub const KERNEL_KEY: &str = "kernel";
/// Manifest key of the initramfs.
pub const INITRAMFS_KEY: &str = "initramfs";

/// Manifest key of the root disk of `language` (`raw`, `python`,
/// `javascript`): `rootfs-<language>`.
pub fn rootfs_key(language: &str) -> String {
    format!("rootfs-{language}")
}

/// One built artefact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageArtefact {
    /// File name inside the images dir.
    pub file: String,
    /// sha256 of the inputs (hex); the file name carries its first 16 digits.
    pub hash: String,
    /// Size of the file, in bytes.
    pub size_bytes: u64,
    /// How long the build took, in seconds (0 when adopted from an earlier run).
    pub build_seconds: f64,
    /// The inputs that went into the hash, readable (package versions,
    /// binary digests, ...).
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
}

/// The content of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageManifest {
    /// [`MANIFEST_FORMAT`] of the writer.
    pub format: u32,
    /// Artefacts by key ([`KERNEL_KEY`], [`INITRAMFS_KEY`], [`rootfs_key`]).
    pub artefacts: BTreeMap<String, ImageArtefact>,
}

impl Default for ImageManifest {
    fn default() -> Self {
        Self {
            format: MANIFEST_FORMAT,
            artefacts: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_round_trips_through_json_with_its_documented_keys() {
        let mut manifest = ImageManifest::default();
        manifest.artefacts.insert(
            rootfs_key("python"),
            ImageArtefact {
                file: "rootfs-python-0123456789abcdef.qcow2".into(),
                hash: "ab".repeat(32),
                size_bytes: 3,
                build_seconds: 1.5,
                inputs: BTreeMap::new(),
            },
        );
        let json = serde_json::to_string(&manifest).expect("serializes");
        assert!(json.contains("\"rootfs-python\"") && json.contains("\"format\":1"));
        let back: ImageManifest = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, manifest);
    }

    #[test]
    fn inputs_are_optional_for_readers() {
        let json = r#"{"format":1,"artefacts":{"kernel":{"file":"k","hash":"h","size_bytes":1,"build_seconds":0.0}}}"#;
        let m: ImageManifest = serde_json::from_str(json).expect("parses");
        assert!(m.artefacts[KERNEL_KEY].inputs.is_empty());
    }
}
