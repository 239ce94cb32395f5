//! What a VM is booted with ([`VmOptions`]), derived from a
//! [`SandboxSpec`] in one place ([`VmOptions::for_spec`]), and the package
//! layer disk it may attach ([`PackageDisk`]). Plain data: the builder,
//! the launchers and the QEMU spec read it, and it imports nothing above
//! the spec.

use crate::network::NetworkRequest;
use crate::spec::{Image, MachineShape, Mount, SandboxSpec};
use airlock_protocol::abi::PackagesMount;
use airlock_protocol::Language;
use airlock_qemu::{DiskAccess, DiskFormat, ExtraDrive};
use std::path::PathBuf;

/// The virtio serial of a package layer disk (the guest ABI's: `airlock-init`
/// looks for it when the command line says `airlock.packages=ro|rw`).
pub use airlock_protocol::abi::PACKAGES_SERIAL;

/// What a VM is booted with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmOptions {
    /// Who the VM is for (its limits group is `airlock/<tenant>/<vm>`).
    pub tenant: String,
    /// The interpreter, and without `image` the root disk.
    pub language: Language,
    /// A root disk other than the language's own (`None`: the language's;
    /// [`MachineShape::image`]).
    pub image: Option<Image>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Network (default none: no network device).
    pub network: NetworkRequest,
    /// A package layer disk to attach (`None`: none); see
    /// `docs/packages.md`.
    pub packages: Option<PackageDisk>,
    /// The VM's secrets with their placeholders, for its egress proxy
    /// (`None`: none). Set by the scheduler per VM: placeholders are new
    /// for every VM.
    pub secrets: Option<crate::network::VmSecrets>,
    /// The workspace disk in MiB (`0`: none; [`MachineShape::disk_mib`]):
    /// a qcow2 overlay in the work dir over a blank ext4 base of that size
    /// (or over a template's own disk), attached by `qemu_spec.rs`.
    pub disk_mib: u32,
    /// Host folders over virtio-9p (`qemu_spec.rs` adds one device each).
    pub mounts: Vec<Mount>,
}

impl VmOptions {
    /// The options of a VM for `spec` with the package layer disk
    /// `packages` (prepared from `spec.packages`): the one place a spec
    /// becomes boot options. The hosts of the spec's secrets join the
    /// allowlist (a spec with secrets and no network gets an allowlist of
    /// exactly those hosts); `secrets` stays `None` until the scheduler
    /// makes the VM's placeholders.
    pub fn for_spec(spec: &SandboxSpec, packages: Option<PackageDisk>) -> Self {
        Self {
            tenant: spec.tenant.clone(),
            language: spec.shape.language,
            image: spec.shape.image,
            memory_mib: spec.shape.memory_mib,
            vcpus: spec.shape.vcpus,
            network: spec.network.with_secret_hosts(&spec.secrets),
            packages,
            secrets: None,
            disk_mib: spec.shape.disk_mib,
            mounts: spec.mounts.clone(),
        }
    }

    /// The options of a VM of `shape` for `tenant`: no network, no
    /// packages (warm pools, template builds).
    pub fn of_shape(shape: MachineShape, tenant: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            language: shape.language,
            image: shape.image,
            memory_mib: shape.memory_mib,
            vcpus: shape.vcpus,
            network: NetworkRequest::default(),
            packages: None,
            secrets: None,
            disk_mib: shape.disk_mib,
            mounts: Vec::new(),
        }
    }

    /// The image the VM boots: `image`, else the language's own.
    pub fn image(&self) -> Image {
        self.shape().image()
    }

    /// The machine's shape (what a template or warm pool must match).
    pub fn shape(&self) -> MachineShape {
        MachineShape {
            language: self.language,
            image: self.image,
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            disk_mib: self.disk_mib,
        }
    }
}

/// A package layer disk attached to a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageDisk {
    /// The raw ext4 image.
    pub image: PathBuf,
    /// Writable (the install VM fills it) or read-only (runs over it).
    pub writable: bool,
}

impl PackageDisk {
    /// The layer image `image`, attached read-only (runs and sessions).
    pub fn read_only(image: PathBuf) -> Self {
        Self {
            image,
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
        let (access, mount) = if self.writable {
            (DiskAccess::ReadWrite, PackagesMount::ReadWrite)
        } else {
            (DiskAccess::ReadOnly, PackagesMount::ReadOnly)
        };
        (
            ExtraDrive {
                id: "packages".into(),
                path: self.image.clone(),
                format: DiskFormat::Raw,
                access,
                serial: PACKAGES_SERIAL.into(),
                backing: None,
            },
            mount.kernel_arg(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_options_carry_every_field_of_the_spec() {
        let mut spec = SandboxSpec::new(Language::Javascript);
        spec.tenant = "team".into();
        spec.shape.memory_mib = 1024;
        spec.shape.vcpus = 2;
        let disk = PackageDisk::read_only("/p/key/layer.img".into());
        let options = VmOptions::for_spec(&spec, Some(disk.clone()));
        assert_eq!(options.tenant, "team");
        assert_eq!(options.shape(), spec.shape);
        assert_eq!(options.packages, Some(disk));
        assert_eq!(options.network, spec.network);
    }

    #[test]
    fn a_data_spec_boots_the_data_image() {
        let mut spec = SandboxSpec::new(Language::Python);
        spec.shape = MachineShape::of_image(Image::PythonData);
        let options = VmOptions::for_spec(&spec, None);
        assert_eq!(options.image(), Image::PythonData);
        assert_eq!(options.language, Language::Python);
        assert_eq!(options.shape(), spec.shape);
        let plain = VmOptions::for_spec(&SandboxSpec::new(Language::Python), None);
        assert_eq!(plain.image(), Image::Python);
    }

    #[test]
    fn a_read_only_layer_disk_is_keyed_by_its_store_dir_and_mounted_ro() {
        let disk = PackageDisk::read_only("/cache/packages/abc123/layer.img".into());
        assert_eq!(disk.layer_key(), Some("abc123"));
        let (drive, arg) = disk.attachment();
        assert_eq!(arg, "airlock.packages=ro");
        assert_eq!(drive.serial, PACKAGES_SERIAL);
    }
}
