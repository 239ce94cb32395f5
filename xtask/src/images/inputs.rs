//! Input hashing: an artefact's name is the sha256 of everything it is
//! built from.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Version of the build recipes. Bump it when a build step changes in a way
/// the other inputs do not show (trimming, mkfs options, cpio layout, ...):
/// every artefact is then rebuilt.
pub const BUILD_VERSION: &str = "airlock-images-2";

/// The labelled inputs of one artefact. The hash covers labels and values,
/// so reordering or renaming an input changes it too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    entries: BTreeMap<String, String>,
}

impl Inputs {
    /// Inputs of artefact `key`, starting with [`BUILD_VERSION`].
    pub fn new(key: &str) -> Self {
        let mut inputs = Self::default();
        inputs.add("artefact", key);
        inputs.add("build-version", BUILD_VERSION);
        inputs
    }

    /// Adds (or replaces) one input.
    pub fn add(&mut self, label: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.entries.insert(label.into(), value.into());
        self
    }

    /// The sha256 (hex) over every `label=value` line, in label order.
    pub fn hash(&self) -> String {
        let mut hasher = Sha256::new();
        for (label, value) in &self.entries {
            hasher.update(label.as_bytes());
            hasher.update(b"=");
            hasher.update(value.len().to_le_bytes());
            hasher.update(value.as_bytes());
            hasher.update(b"\n");
        }
        hex::encode(hasher.finalize())
    }

    /// The inputs, for the manifest.
    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_hash() {
        let mut a = Inputs::new("kernel");
        a.add("fragment", "CONFIG_X=y");
        let mut b = Inputs::new("kernel");
        b.add("fragment", "CONFIG_X=y");
        assert_eq!(a.hash(), b.hash());
        assert_eq!(a.hash().len(), 64);
    }

    #[test]
    fn any_changed_value_changes_the_hash() {
        let mut a = Inputs::new("kernel");
        a.add("fragment", "CONFIG_X=y");
        let mut b = a.clone();
        b.add("fragment", "CONFIG_X=n");
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn values_cannot_shift_between_labels() {
        let mut a = Inputs::new("k");
        a.add("a", "1\nb=2");
        let mut b = Inputs::new("k");
        b.add("a", "1").add("b", "2");
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn artefact_key_is_part_of_the_hash() {
        assert_ne!(
            Inputs::new("rootfs-raw").hash(),
            Inputs::new("rootfs-python").hash()
        );
    }
}
