//! Pinned packages for runs and sessions (`docs/packages.md`).
//!
//! - [`spec`]: exact pins only (`pip name==version`, `npm name@version`),
//!   refused before boot otherwise ([`crate::InputError::PackageSpec`]).
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
    build_layer, ensure_layer, find_layer, install_into, prepare, InstallLimits, InstallReport,
    InstallSettings, LayerOutcome, PackagesReport,
};
pub use layer::{Layer, LayerDetails, LayerInputs, LayerMetadata, LayerStore, ListedLayer};
pub use spec::{PackageList, PackageManager, PackageSpec};

pub use crate::machine::{PackageDisk, PACKAGES_SERIAL};
