//! What a template must match to be restored, and the key it is stored
//! under (pure: no file is touched).

#[cfg(test)]
use airlock_protocol::Language;
use serde::{Deserialize, Serialize};

/// Version of the template layout and of what goes into its key; bumped
/// when either changes, so older templates are never taken for new ones.
/// 2: python and raw templates hold their live cell interpreter;
/// javascript templates hold none (Node cannot be reseeded in place).
/// 3: javascript templates hold their live Node too, started on a clock a
/// day back so that its clones can reseed it (`docs/templates.md`).
/// 4: a template with a workspace disk has written and removed a file in
/// its home and `/tmp` (ext4's allocator state of that disk is warm).
/// 5: a template's workspace disk has no metadata checksums
/// (`disk::mkfs_ext4_args`).
pub const TEMPLATE_FORMAT: u32 = 5;

/// The shape of the VMs a template serves: the spec's machine shape.
pub type TemplateShape = crate::spec::MachineShape;

/// Everything a clone's machine must share with its template: any change
/// gives another key, so a template of another kernel, root disk, QEMU or
/// agent is never restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateInputs {
    /// [`TEMPLATE_FORMAT`].
    pub format: u32,
    /// The VM shape.
    pub shape: TemplateShape,
    /// Hash of the kernel (images manifest).
    pub kernel_hash: String,
    /// Hash of the initramfs (images manifest).
    pub initramfs_hash: String,
    /// Hash of the shape's root disk, its image's (images manifest); the
    /// agent is on it.
    pub rootfs_hash: String,
    /// The QEMU version (`7.2.0`).
    pub qemu_version: String,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// Hash of the clone's argv with its per-VM paths fixed: the device
    /// set and options (a template and its clones must have the same).
    pub argv_hash: String,
    /// The host<->agent protocol version.
    pub protocol: u32,
    /// This orchestrator's version.
    pub airlock_version: String,
    /// The key of the package layer the template's VM has attached
    /// (`None`: none; left out of the JSON then, so templates without a
    /// layer keep their keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packages_layer: Option<String>,
}

impl TemplateInputs {
    /// The key: `<image>-<memory>m-<vcpus>c-<16 hex digits of the
    /// sha256 of the inputs>`, readable and content-addressed (a
    /// language's own image is named as the language: `python-512m-...`,
    /// `python-data-512m-...`).
    pub fn key(&self) -> String {
        format!(
            "{}-{}m-{}c-{}",
            self.shape.image(),
            self.shape.memory_mib,
            self.shape.vcpus,
            crate::artifacts::digest_of(self)
        )
    }
}

/// Inputs with placeholder hashes, for tests.
#[cfg(test)]
pub(crate) fn test_inputs(language: Language, memory_mib: u32) -> TemplateInputs {
    TemplateInputs {
        format: TEMPLATE_FORMAT,
        shape: TemplateShape {
            language,
            image: None,
            memory_mib,
            vcpus: 1,
            disk_mib: 0,
        },
        kernel_hash: "k".into(),
        initramfs_hash: "i".into(),
        rootfs_hash: "r".into(),
        qemu_version: "7.2.0".into(),
        accel: "tcg".into(),
        argv_hash: "a".into(),
        protocol: 2,
        airlock_version: "0.1.0".into(),
        packages_layer: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> TemplateInputs {
        test_inputs(Language::Python, 512)
    }

    #[test]
    fn the_key_names_the_shape_and_is_stable() {
        let key = inputs().key();
        assert!(key.starts_with("python-512m-1c-"), "{key}");
        assert_eq!(key.len(), "python-512m-1c-".len() + 16);
        assert_eq!(key, inputs().key());
        airlock_sys_util::check_id(&key).unwrap();
    }

    #[test]
    fn a_data_template_is_keyed_apart_and_named_by_its_image() {
        let data = TemplateInputs {
            shape: inputs().shape.with_image(crate::spec::Image::PythonData),
            ..inputs()
        };
        let key = data.key();
        assert!(key.starts_with("python-data-512m-1c-"), "{key}");
        assert_ne!(key, inputs().key());
        airlock_sys_util::check_id(&key).unwrap();
        let json = serde_json::to_string(&data).unwrap();
        assert!(json.contains(r#""image":"python-data""#), "{json}");
        assert!(
            !serde_json::to_string(&inputs()).unwrap().contains("image"),
            "language-only shapes keep the keys they had"
        );
    }

    #[test]
    fn a_template_without_a_layer_keeps_the_key_of_the_format_before_layers() {
        let json = serde_json::to_string(&inputs()).unwrap();
        assert!(!json.contains("packages_layer"), "{json}");
        let back: TemplateInputs = serde_json::from_str(&json).unwrap();
        assert_eq!(back, inputs());
    }

    #[test]
    fn every_input_changes_the_key() {
        let base = inputs().key();
        let changed: Vec<TemplateInputs> = vec![
            TemplateInputs {
                kernel_hash: "k2".into(),
                ..inputs()
            },
            TemplateInputs {
                initramfs_hash: "i2".into(),
                ..inputs()
            },
            TemplateInputs {
                rootfs_hash: "r2".into(),
                ..inputs()
            },
            TemplateInputs {
                qemu_version: "8.2.0".into(),
                ..inputs()
            },
            TemplateInputs {
                accel: "kvm".into(),
                ..inputs()
            },
            TemplateInputs {
                argv_hash: "a2".into(),
                ..inputs()
            },
            TemplateInputs {
                protocol: 3,
                ..inputs()
            },
            TemplateInputs {
                airlock_version: "0.2.0".into(),
                ..inputs()
            },
            TemplateInputs {
                format: TEMPLATE_FORMAT + 1,
                ..inputs()
            },
            TemplateInputs {
                packages_layer: Some("python-pkgs-0123456789abcdef".into()),
                ..inputs()
            },
            TemplateInputs {
                shape: TemplateShape {
                    vcpus: 2,
                    ..inputs().shape
                },
                ..inputs()
            },
        ];
        for other in changed {
            assert_ne!(other.key(), base, "{other:?}");
        }
    }
}
