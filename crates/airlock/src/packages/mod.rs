//! Pinned packages for runs and sessions (`docs/packages.md`).
//!
//! - [`spec`]: exact pins only (`pip name==version`, `npm name@version`),
//!   refused before boot otherwise ([`crate::Error::PackageSpec`]).
//! - [`layer`]: the installed result kept as a read-only disk layer under
//!   `<cache>/packages/<key>/`, content-addressed by (root disk, sorted
//!   package list).
//! - [`install`]: building a layer: an install VM boots with the layer's
//!   blank disk writable and a network that reaches only the language's
//!   registries, through the egress proxy; the agent installs into the
//!   disk and seals it read-only; the VM is destroyed and the disk stored.
//!   The user's code then runs in another VM, without that network, over
//!   the layer attached read-only.
//! - [`ca`]: the host's CA bundle (or `--ca-bundle`), copied into guests
//!   that have a network, so that HTTPS works behind a TLS-inspecting proxy.
//!
//! It does not resolve dependencies (the package manager does, in the
//! install VM), verify package signatures, or mirror registries.

pub mod ca;
pub mod install;
pub mod layer;
pub mod spec;

pub use ca::CaBundle;
pub use install::{
    build_layer, ensure_layer, find_layer, install_into, prepare, InstallReport, InstallSettings,
    LayerOutcome, PackagesReport,
};
pub use layer::{Layer, LayerDetails, LayerInputs, LayerMetadata, LayerStore, ListedLayer};
pub use spec::{PackageList, PackageManager, PackageSpec};

use airlock_qemu::{DiskAccess, DiskFormat, ExtraDrive};
use std::path::PathBuf;

/// The virtio serial of a package layer disk (`airlock-init` looks for
/// it when the command line says `airlock.packages=ro|rw`).
pub const PACKAGES_SERIAL: &str = "airlock-packages";

/// A package layer disk attached to a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageDisk {
    /// The raw ext4 image.
    pub image: PathBuf,
    /// Writable (the install VM fills it) or read-only (runs over it).
    pub writable: bool,
}

impl PackageDisk {
    /// `layer`'s image, attached read-only (runs and sessions).
    pub fn read_only(layer: &Layer) -> Self {
        Self {
            image: layer.image(),
            writable: false,
        }
    }

    /// The key of the layer this disk is (the name of the store dir that
    /// holds the image, `<packages>/<key>/`): a template over the layer
    /// is keyed by it.
    pub fn layer_key(&self) -> Option<&str> {
        self.image.parent()?.file_name()?.to_str()
    }

    /// The disk as QEMU attaches it, and the kernel argument that tells
    /// `airlock-init` to mount it on `/opt` (pure).
    pub fn attachment(&self) -> (ExtraDrive, String) {
        let (access, mode) = if self.writable {
            (DiskAccess::ReadWrite, "rw")
        } else {
            (DiskAccess::ReadOnly, "ro")
        };
        (
            ExtraDrive {
                id: "packages".into(),
                path: self.image.clone(),
                format: DiskFormat::Raw,
                access,
                serial: PACKAGES_SERIAL.into(),
            },
            format!("airlock.packages={mode}"),
        )
    }
}
