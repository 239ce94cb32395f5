//! The sandbox spec: the one description of a VM (design.md section 10).
//!
//! Plain data with its own validation and no I/O, like Firecracker's
//! `vmm_config`:
//!
//! - [`MachineShape`]: what the machine is (language, memory, vCPUs); a
//!   memory template and a warm pool serve one shape.
//! - [`SandboxSpec`]: a sandbox for a tenant: its shape, network, packages
//!   and CA bundle. [`crate::RunRequest`] and [`crate::SessionOptions`]
//!   embed one; the [`crate::VmOptions`] a VM boots with are derived from
//!   it in one place ([`crate::VmOptions::for_spec`]).
//! - [`PoolConfig`]: a warm pool of one shape ([`crate::Config::warm_pools`]).
//! - [`CaBundle`]: which CA bundle guests with a network trust.
//! - [`args`]: the option types every front end (CLI, REST, MCP) flattens,
//!   so that an option has one name, default and error everywhere.
//!
//! - [`image`]: the guest images by name ([`Image`]); a shape's image is
//!   its root disk, [`MachineShape::image`].
//!
//! Where this wave's new fields go (each with its `validate` rule here):
//! `mounts` and `disk_mib` in [`SandboxSpec`] (see the comments there).
//! `secrets` (issue 21) is there: [`Secret`], the model of `airlock-egress`.

pub mod args;
pub mod image;

pub use image::Image;

use crate::error::{Error, InputError, Result};
use crate::network::NetworkRequest;
pub use airlock_egress::{HostPattern, Secret, SecretValue};
use airlock_protocol::Language;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Guest memory bounds, in MiB.
pub const MEMORY_MIB_RANGE: std::ops::RangeInclusive<u32> = 128..=16384;
/// vCPU bounds.
pub const VCPUS_RANGE: std::ops::RangeInclusive<u32> = 1..=16;
/// Default guest memory, in MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 512;
/// Default number of vCPUs.
pub const DEFAULT_VCPUS: u32 = 1;
/// The tenant of a spec that names none.
pub const DEFAULT_TENANT: &str = "default";
/// Default size of the workspace disk, in MiB ([`MachineShape::disk_mib`]).
pub const DEFAULT_DISK_MIB: u32 = 2048;
/// Workspace disk bounds, in MiB, when there is one (`0`: none).
pub const DISK_MIB_RANGE: std::ops::RangeInclusive<u32> = 64..=262_144;

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// What a machine is: the shape a memory template and a warm pool serve.
///
/// Its serde form is part of every template key (`docs/templates.md`):
/// adding a field changes the keys unless it is skipped when unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MachineShape {
    /// The interpreter (and, without `image`, the root disk).
    pub language: Language,
    /// A root disk other than the language's own ([`Image::PythonData`]),
    /// of that language. `None`: the language's own image. Set it with
    /// [`MachineShape::with_image`], which keeps a language's own image as
    /// `None`, so that one machine has one shape (and one template key:
    /// it is left out of the JSON when `None`, so the keys of templates of
    /// language-only shapes are those they always had).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// The workspace disk in MiB: a sparse ext4 disk holding the sandbox
    /// home and `/tmp` (`docs/persistence.md`). `0`: none, both are tmpfs
    /// in the guest's RAM (256 and 64 MiB). Left out of the JSON when `0`,
    /// so the keys of templates without a disk are those they always had.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disk_mib: u32,
}

impl MachineShape {
    /// A shape of `language` with the default memory, vCPUs and workspace
    /// disk.
    pub fn new(language: Language) -> Self {
        Self {
            language,
            image: None,
            memory_mib: DEFAULT_MEMORY_MIB,
            vcpus: DEFAULT_VCPUS,
            disk_mib: DEFAULT_DISK_MIB,
        }
    }

    /// A shape of `image` (its language, its root disk) with the default
    /// memory and vCPUs.
    pub fn of_image(image: Image) -> Self {
        Self::new(image.language()).with_image(image)
    }

    /// This shape booting `image`: a language's own image is stored as
    /// `None`. The language is left as it is, so that an image of another
    /// language is refused by [`MachineShape::validate`] rather than
    /// silently changing the language asked for.
    #[must_use]
    pub fn with_image(self, image: Image) -> Self {
        Self {
            image: (!image.is_language_default()).then_some(image),
            ..self
        }
    }

    /// The image the machine boots: `image`, else the language's own.
    pub fn image(&self) -> Image {
        self.image
            .unwrap_or_else(|| Image::of_language(self.language))
    }

    /// Checks memory and vCPUs against their ranges, and that the image
    /// runs the shape's language.
    ///
    /// # Errors
    /// [`InputError::Invalid`] for `memory_mib`, `vcpus` or `image`.
    pub fn validate(&self) -> Result<(), InputError> {
        validate_shape(self.memory_mib, self.vcpus)?;
        validate_disk(self.disk_mib)?;
        if let Some(image) = self.image {
            image
                .check_language(self.language)
                .map_err(|e| InputError::invalid("image", e.to_string()))?;
        }
        Ok(())
    }
}

impl std::fmt::Display for MachineShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} MiB {} vCPU",
            self.image(),
            self.memory_mib,
            self.vcpus
        )?;
        if self.disk_mib > 0 {
            write!(f, " {} MiB disk", self.disk_mib)?;
        }
        Ok(())
    }
}

/// Which CA bundle guests with a network trust (copied in after boot; see
/// `packages/ca.rs`, which also resolves it on the host).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CaBundle {
    /// The host's system bundle: `$SSL_CERT_FILE` when set, else the
    /// first of [`crate::packages::ca::SYSTEM_BUNDLES`] that exists; none
    /// found: the guest's own.
    #[default]
    System,
    /// This file (`--ca-bundle PATH`).
    File(PathBuf),
    /// The guest's own bundle only.
    GuestOnly,
}

/// A sandbox: what runs and sessions are made of. The only description of
/// a VM; [`crate::VmOptions::for_spec`] derives the boot options from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// Who the sandbox is for (groups limits and logs);
    /// `[A-Za-z0-9_-]{1,128}`.
    pub tenant: String,
    /// The machine.
    pub shape: MachineShape,
    /// Network: none (default), exposed ports, or an allowlist. A sandbox
    /// with a network boots cold (a clone cannot reconnect its network).
    pub network: NetworkRequest,
    /// Pinned packages (`pip name==version`, `npm name@version`; items may
    /// hold several, comma-separated): installed once into a layer the VM
    /// attaches read-only (`docs/packages.md`). Empty: none.
    pub packages: Vec<String>,
    /// The CA bundle the guest trusts when it has an allowlist network;
    /// `None`: the scheduler's ([`crate::Config::ca_bundle`]).
    pub ca_bundle: Option<CaBundle>,
    /// Secrets (`docs/secrets.md`): the VM gets a random placeholder in
    /// the variable of each one's name, and the egress proxy substitutes
    /// the value in HTTPS requests to the hosts it is bound to (which
    /// join the allowlist; nothing else does). Values never reach the VM,
    /// and `Debug` shows none. Empty: none.
    pub secrets: Vec<Secret>,
    /// What the install VM of [`SandboxSpec::packages`] may take, when
    /// the layer is not stored yet (default: 1 GiB, 600 s; the server
    /// sets its tenant's quotas).
    pub install: InstallLimits,
    /// Host folders shared with the VM over virtio-9p
    /// (`docs/persistence.md`), at most
    /// [`airlock_protocol::abi::MAX_MOUNTS`]. A sandbox with mounts boots
    /// cold (see [`Mount`]). Empty: none.
    pub mounts: Vec<Mount>,
}

/// A host folder seen in the guest: `HOST_DIR:GUEST_DIR[:ro|rw]`
/// ([`Mount::parse`]), read-only unless `rw`.
///
/// Over virtio-9p with QEMU's `security_model=none`: files keep their host
/// owners and modes, and QEMU reads and writes them as its own user (the
/// jail's uid when Airlock runs as root: the folder must let "others" read
/// it, and write it for `rw`). Symbolic links in the folder are resolved
/// by the guest, in the guest: none reaches a host file outside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The host directory (absolute).
    pub host: PathBuf,
    /// Where the guest sees it: strictly below `/home/sandbox` or `/mnt`
    /// ([`airlock_protocol::abi::check_guest_mount_dir`]).
    pub guest: String,
    /// Writes fail with `EROFS` in the guest.
    pub read_only: bool,
}

impl Mount {
    /// Reads `HOST_DIR:GUEST_DIR[:ro|rw]` (read-only by default) and checks
    /// it ([`Mount::validate`]). The host dir cannot hold a `:`.
    ///
    /// # Errors
    /// [`InputError::Invalid`] for `mounts`, saying what to fix.
    pub fn parse(text: &str) -> Result<Self, InputError> {
        let bad = |why: String| {
            InputError::invalid(
                "mounts",
                format!("{text:?}: {why} (expected HOST_DIR:GUEST_DIR[:ro|rw])"),
            )
        };
        let parts: Vec<&str> = text.split(':').collect();
        let (host, guest, read_only) = match parts.as_slice() {
            [host, guest] => (*host, *guest, true),
            [host, guest, "ro"] => (*host, *guest, true),
            [host, guest, "rw"] => (*host, *guest, false),
            [_, _, access] => return Err(bad(format!("{access:?} is neither ro nor rw"))),
            _ => return Err(bad("wrong number of `:`-separated parts".into())),
        };
        let mount = Self {
            host: PathBuf::from(host),
            guest: guest.to_owned(),
            read_only,
        };
        mount.validate()?;
        Ok(mount)
    }

    /// Checks the paths: the host dir absolute and plain (no `..`, no
    /// NUL or newline), the guest dir as
    /// [`airlock_protocol::abi::check_guest_mount_dir`] says. Whether the
    /// host dir exists is checked when the VM starts.
    ///
    /// # Errors
    /// [`InputError::Invalid`] for `mounts`.
    pub fn validate(&self) -> Result<(), InputError> {
        let bad = |why: String| InputError::invalid("mounts", why);
        let host = self.host.as_os_str().to_string_lossy();
        if !self.host.is_absolute() {
            return Err(bad(format!("the host dir {host:?} must be absolute")));
        }
        if self
            .host
            .components()
            .any(|c| c == std::path::Component::ParentDir)
            || host.contains(['\0', '\n'])
        {
            return Err(bad(format!(
                "the host dir {host:?} must be a plain path (no `..`, NUL or newline)"
            )));
        }
        airlock_protocol::abi::check_guest_mount_dir(&self.guest).map_err(bad)
    }

    /// The text [`Mount::parse`] reads back.
    pub fn to_arg(&self) -> String {
        let access = if self.read_only { "ro" } else { "rw" };
        format!("{}:{}:{access}", self.host.display(), self.guest)
    }
}

/// Checks a set of mounts: each one, at most
/// [`airlock_protocol::abi::MAX_MOUNTS`], no guest dir at or below
/// another's.
///
/// # Errors
/// [`InputError::Invalid`] for `mounts`.
pub fn validate_mounts(mounts: &[Mount]) -> Result<(), InputError> {
    let max = airlock_protocol::abi::MAX_MOUNTS;
    if mounts.len() > max {
        return Err(InputError::invalid(
            "mounts",
            format!("{} mounts: at most {max}", mounts.len()),
        ));
    }
    for (i, mount) in mounts.iter().enumerate() {
        mount.validate()?;
        let within = |inner: &str, outer: &str| {
            inner
                .strip_prefix(outer)
                .is_some_and(|tail| tail.is_empty() || tail.starts_with('/'))
        };
        if let Some(other) = mounts[..i]
            .iter()
            .find(|o| within(&o.guest, &mount.guest) || within(&mount.guest, &o.guest))
        {
            return Err(InputError::invalid(
                "mounts",
                format!(
                    "{} and {} overlap in the guest: give each its own dir",
                    other.guest, mount.guest
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a workspace disk size: `0` (none) or within [`DISK_MIB_RANGE`].
///
/// # Errors
/// [`InputError::Invalid`] for `disk_mib`.
pub(crate) fn validate_disk(disk_mib: u32) -> Result<(), InputError> {
    if disk_mib == 0 || DISK_MIB_RANGE.contains(&disk_mib) {
        return Ok(());
    }
    Err(InputError::invalid(
        "disk_mib",
        format!(
            "{disk_mib} MiB is outside {} ..= {} MiB (0: no disk, the home in RAM)",
            DISK_MIB_RANGE.start(),
            DISK_MIB_RANGE.end()
        ),
    ))
}

impl SandboxSpec {
    /// A spec of `language` with the defaults: tenant `default`, 512 MiB,
    /// 1 vCPU, no network, no packages, the scheduler's CA bundle.
    pub fn new(language: Language) -> Self {
        Self {
            tenant: DEFAULT_TENANT.into(),
            shape: MachineShape::new(language),
            network: NetworkRequest::default(),
            packages: Vec::new(),
            ca_bundle: None,
            secrets: Vec::new(),
            install: InstallLimits::default(),
            mounts: Vec::new(),
        }
    }

    /// The language of its interpreter and root disk.
    pub fn language(&self) -> Language {
        self.shape.language
    }

    /// The image its VM boots ([`MachineShape::image`]).
    pub fn image(&self) -> Image {
        self.shape.image()
    }

    /// Checks every field; the first problem is returned.
    ///
    /// # Errors
    /// [`InputError::Invalid`] naming the field, [`InputError::PackageSpec`] for
    /// an unpinned or malformed package.
    pub fn validate(&self) -> Result<(), InputError> {
        self.shape.validate()?;
        validate_identifier("tenant", &self.tenant)?;
        self.network.validate()?;
        validate_secrets(&self.secrets)?;
        validate_mounts(&self.mounts)?;
        if let (Some(image), false) = (self.shape.image, self.packages.is_empty()) {
            // A layer is installed by a VM of the language's own image and
            // keyed by its root disk: it is not known to work over another.
            return Err(InputError::invalid(
                "packages",
                format!(
                    "packages install over the {} image only, not over {image}: \
                     leave the packages out ({image} ships its own stack, \
                     docs/images.md) or use the {} image",
                    self.shape.language, self.shape.language
                ),
            ));
        }
        crate::packages::spec::PackageList::parse(self.shape.language, &self.packages).map(drop)
    }
}

/// Checks each secret and that no name is given twice.
///
/// # Errors
/// [`InputError::Invalid`] for `secrets`, saying what to fix.
pub fn validate_secrets(secrets: &[Secret]) -> Result<(), InputError> {
    for (i, secret) in secrets.iter().enumerate() {
        secret
            .validate()
            .map_err(|e| InputError::invalid("secrets", e.to_string()))?;
        if secrets[..i].iter().any(|s| s.name == secret.name) {
            let e = airlock_egress::SecretError::DuplicateName(secret.name.clone());
            return Err(InputError::invalid("secrets", e.to_string()));
        }
    }
    Ok(())
}

/// Guest memory of an install VM, in MiB (less when its
/// [`InstallLimits::memory_mib`] is lower).
pub const INSTALL_MEMORY_MIB: u32 = 1024;
/// The least guest memory an install VM boots with, in MiB: under it pip
/// and npm fail on ordinary packages, so a smaller limit is refused
/// before the VM boots ([`crate::PackageError::InstallRefused`]).
pub const MIN_INSTALL_MEMORY_MIB: u32 = 256;
/// Default deadline of one install (the package manager's run).
pub const DEFAULT_INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// What the install VM of a sandbox's packages may take (a field of
/// [`crate::spec::SandboxSpec`]): the server sets its tenant's memory and
/// timeout quotas here, so that an install is no larger than the tenant's
/// own VMs; the CLI keeps the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstallLimits {
    /// Most guest memory, in MiB: the install VM takes the least of this
    /// and [`INSTALL_MEMORY_MIB`]; under [`MIN_INSTALL_MEMORY_MIB`] an
    /// install is refused.
    pub memory_mib: u32,
    /// Deadline of the package manager's run.
    pub timeout: Duration,
}

impl Default for InstallLimits {
    fn default() -> Self {
        Self {
            memory_mib: INSTALL_MEMORY_MIB,
            timeout: DEFAULT_INSTALL_TIMEOUT,
        }
    }
}

impl InstallLimits {
    /// The guest memory of an install VM under these limits.
    ///
    /// # Errors
    /// [`crate::PackageError::InstallRefused`] when the limit is under
    /// [`MIN_INSTALL_MEMORY_MIB`].
    pub fn install_memory_mib(
        &self,
        list: &crate::packages::spec::PackageList,
    ) -> Result<u32, crate::error::PackageError> {
        if self.memory_mib < MIN_INSTALL_MEMORY_MIB {
            return Err(crate::error::PackageError::InstallRefused {
                packages: list.canonical().join(" "),
                reason: format!(
                    "the memory limit is {} MiB, and an install VM needs at least {MIN_INSTALL_MEMORY_MIB} MiB",
                    self.memory_mib
                ),
            });
        }
        Ok(self.memory_mib.min(INSTALL_MEMORY_MIB))
    }
}

/// One warm pool: a shape, how many VMs wait, and for how long at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// The shape of the pool's VMs (a request of another shape does not
    /// use this pool).
    pub shape: MachineShape,
    /// VMs kept waiting (each holds a VM slot).
    pub size: usize,
    /// A VM waiting longer than this is destroyed and replaced.
    pub max_idle: Duration,
}

impl PoolConfig {
    /// A pool of 2 VMs of `shape`, replaced after 10 minutes.
    pub fn new(shape: MachineShape) -> Self {
        Self {
            shape,
            size: 2,
            max_idle: Duration::from_secs(600),
        }
    }

    /// Checks the values (called by [`crate::Config::validate`]).
    ///
    /// # Errors
    /// [`Error::Config`] naming the pool and the bad value.
    pub fn validate(&self) -> Result<()> {
        let fail = |what: &str| Err(Error::Config(format!("warm pool {}: {what}", self.shape)));
        if self.size == 0 {
            return fail("size must be at least 1");
        }
        if self.max_idle < Duration::from_secs(1) {
            return fail("max_idle must be at least 1 s");
        }
        if !MEMORY_MIB_RANGE.contains(&self.shape.memory_mib) {
            return fail("memory_mib is outside MEMORY_MIB_RANGE");
        }
        if !VCPUS_RANGE.contains(&self.shape.vcpus) {
            return fail("vcpus is outside VCPUS_RANGE");
        }
        if validate_disk(self.shape.disk_mib).is_err() {
            return fail("disk_mib is neither 0 nor within DISK_MIB_RANGE");
        }
        if let Some(Err(e)) = self
            .shape
            .image
            .map(|image| image.check_language(self.shape.language))
        {
            return fail(&e.to_string());
        }
        Ok(())
    }
}

/// Checks a set of pools against the VM slots: one pool per shape, and
/// their VMs leave at least one slot for runs outside the pools (else a
/// run of another shape would wait behind idle pool VMs).
///
/// # Errors
/// [`Error::Config`].
pub fn validate_pools(pools: &[PoolConfig], max_concurrent_vms: usize) -> Result<()> {
    for (i, pool) in pools.iter().enumerate() {
        pool.validate()?;
        if pools[..i].iter().any(|other| other.shape == pool.shape) {
            return Err(Error::Config(format!(
                "two warm pools for {}: give each shape one pool",
                pool.shape
            )));
        }
    }
    let pooled: usize = pools.iter().map(|p| p.size).sum();
    if !pools.is_empty() && pooled >= max_concurrent_vms {
        return Err(Error::Config(format!(
            "warm pools hold {pooled} VMs but max_concurrent_vms is {max_concurrent_vms}: \
             leave at least one slot for other runs"
        )));
    }
    Ok(())
}

/// Checks a VM's shape: memory within [`MEMORY_MIB_RANGE`], vCPUs within
/// [`VCPUS_RANGE`].
///
/// # Errors
/// [`InputError::Invalid`] for `memory_mib` or `vcpus`.
pub(crate) fn validate_shape(memory_mib: u32, vcpus: u32) -> Result<(), InputError> {
    if !MEMORY_MIB_RANGE.contains(&memory_mib) {
        return Err(InputError::invalid(
            "memory_mib",
            format!(
                "{} MiB is outside {} ..= {} MiB",
                memory_mib,
                MEMORY_MIB_RANGE.start(),
                MEMORY_MIB_RANGE.end()
            ),
        ));
    }
    if !VCPUS_RANGE.contains(&vcpus) {
        return Err(InputError::invalid(
            "vcpus",
            format!(
                "{} is outside {} ..= {}",
                vcpus,
                VCPUS_RANGE.start(),
                VCPUS_RANGE.end()
            ),
        ));
    }
    Ok(())
}

/// Checks an identifier (tenant, session, VM name) with the shared
/// [`airlock_sys_util::check_id`]: `[A-Za-z0-9_-]{1,128}`.
///
/// # Errors
/// [`InputError::Invalid`] for `field`, saying what is allowed.
pub fn validate_identifier(field: &'static str, value: &str) -> Result<(), InputError> {
    airlock_sys_util::check_id(value).map_err(|e| InputError::invalid(field, e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    fn field_of(result: Result<(), InputError>) -> &'static str {
        match result {
            Err(InputError::Invalid { field, .. }) => field,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn an_install_vm_takes_the_least_of_its_need_and_the_limit_and_never_under_the_minimum() {
        let list = crate::packages::spec::PackageList::parse(
            Language::Python,
            &["six==1.16.0".to_owned()],
        )
        .unwrap();
        let limits = |memory_mib| InstallLimits {
            memory_mib,
            ..InstallLimits::default()
        };
        assert_eq!(
            InstallLimits::default().install_memory_mib(&list).unwrap(),
            INSTALL_MEMORY_MIB
        );
        assert_eq!(limits(512).install_memory_mib(&list).unwrap(), 512);
        assert_eq!(
            limits(4096).install_memory_mib(&list).unwrap(),
            INSTALL_MEMORY_MIB
        );
        let err = limits(MIN_INSTALL_MEMORY_MIB - 1)
            .install_memory_mib(&list)
            .unwrap_err();
        assert!(err.to_string().contains("six==1.16.0"), "{err}");
        assert!(err.hint().is_some());
    }

    #[test]
    fn a_default_spec_is_valid() {
        for language in Language::ALL {
            SandboxSpec::new(language).validate().unwrap();
        }
    }

    #[test]
    fn a_spec_with_a_bad_tenant_is_refused_naming_the_tenant() {
        let mut spec = SandboxSpec::new(Language::Python);
        spec.tenant = "a/b".into();
        assert_eq!(field_of(spec.validate()), "tenant");
    }

    #[test]
    fn a_shape_out_of_range_is_refused_naming_the_field_and_range() {
        let mut spec = SandboxSpec::new(Language::Python);
        spec.shape.memory_mib = 64;
        let err = spec.validate().unwrap_err();
        assert!(err.to_string().contains("128 ..= 16384"), "{err}");
        spec.shape.memory_mib = 512;
        spec.shape.vcpus = 17;
        assert_eq!(field_of(spec.validate()), "vcpus");
    }

    #[test]
    fn bad_or_duplicate_secrets_make_the_spec_invalid() {
        let secret = Secret {
            name: "TOKEN".into(),
            value: SecretValue::new(b"v".to_vec()),
            hosts: vec![HostPattern::parse("TOKEN", "api.example.com").expect("host")],
            body: false,
        };
        let mut spec = SandboxSpec::new(Language::Python);
        spec.secrets = vec![secret.clone()];
        assert!(spec.validate().is_ok());
        spec.secrets = vec![secret.clone(), secret.clone()];
        assert_eq!(field_of(spec.validate()), "secrets");
        spec.secrets = vec![Secret {
            hosts: Vec::new(),
            ..secret
        }];
        assert_eq!(field_of(spec.validate()), "secrets");
        assert!(!format!("{spec:?}").contains("value: [118]"));
    }

    #[test]
    fn unpinned_packages_make_the_spec_invalid() {
        let mut spec = SandboxSpec::new(Language::Python);
        spec.packages = vec!["numpy".into()];
        assert!(matches!(
            spec.validate(),
            Err(InputError::PackageSpec { .. })
        ));
    }

    #[test]
    fn a_shape_without_disk_serializes_as_template_keys_always_did() {
        let shape = MachineShape {
            disk_mib: 0,
            ..MachineShape::new(Language::Raw)
        };
        let json = serde_json::to_string(&shape).unwrap();
        assert_eq!(json, r#"{"language":"raw","memory_mib":512,"vcpus":1}"#);
        assert_eq!(serde_json::from_str::<MachineShape>(&json).unwrap(), shape);
        let with_disk = serde_json::to_string(&MachineShape::new(Language::Raw)).unwrap();
        assert_eq!(
            with_disk,
            r#"{"language":"raw","memory_mib":512,"vcpus":1,"disk_mib":2048}"#
        );
    }

    #[test]
    fn a_disk_is_none_or_within_its_range() {
        let mut shape = MachineShape::new(Language::Python);
        for ok in [0, 64, 2048, 262_144] {
            shape.disk_mib = ok;
            shape.validate().unwrap();
        }
        for bad in [1, 63, 262_145] {
            shape.disk_mib = bad;
            assert_eq!(field_of(shape.validate()), "disk_mib");
        }
    }

    #[test]
    fn a_mount_reads_host_guest_and_access_read_only_by_default() {
        let ro = Mount::parse("/srv/data:/mnt/data").unwrap();
        assert_eq!(
            ro,
            Mount {
                host: "/srv/data".into(),
                guest: "/mnt/data".into(),
                read_only: true
            }
        );
        assert!(Mount::parse("/srv/data:/mnt/data:ro").unwrap().read_only);
        assert!(
            !Mount::parse("/srv/out:/home/sandbox/out:rw")
                .unwrap()
                .read_only
        );
        for bad in [
            "",
            "/srv/data",
            "/srv/data:/mnt/data:rx",
            "/srv/data:/mnt/data:ro:x",
            "srv/data:/mnt/data",
            "/srv/../etc:/mnt/data",
            "/srv/data:/etc/data",
            "/srv/data:/mnt",
            "/srv/data:mnt/data",
        ] {
            assert_eq!(field_of(Mount::parse(bad).map(drop)), "mounts", "{bad:?}");
        }
    }

    #[test]
    fn mounts_that_overlap_in_the_guest_or_are_too_many_are_refused() {
        let mount = |text: &str| Mount::parse(text).unwrap();
        let mut spec = SandboxSpec::new(Language::Python);
        spec.mounts = vec![mount("/a:/mnt/a"), mount("/b:/mnt/a/b")];
        assert_eq!(field_of(spec.validate()), "mounts");
        spec.mounts = vec![mount("/a:/mnt/a"), mount("/b:/mnt/ab")];
        spec.validate().unwrap();
        spec.mounts = (0..9).map(|i| mount(&format!("/d{i}:/mnt/d{i}"))).collect();
        assert_eq!(field_of(spec.validate()), "mounts");
    }

    proptest::proptest! {
        #[test]
        fn any_mount_text_parses_or_is_refused_without_panicking(text in ".{0,80}") {
            let _ = Mount::parse(&text);
        }

        #[test]
        fn a_valid_mount_round_trips_through_its_text(
            host in "(/[a-z0-9_-][a-z0-9._-]{0,11}){1,4}",
            guest in "(/home/sandbox|/mnt)(/[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,11}){1,3}",
            read_only in proptest::bool::ANY,
        ) {
            let mount = Mount { host: host.into(), guest, read_only };
            let parsed = Mount::parse(&mount.to_arg()).map_err(|e| e.to_string());
            proptest::prop_assert_eq!(parsed, Ok(mount));
        }

        #[test]
        fn a_parsed_mount_is_always_below_home_or_mnt_and_plain(text in "[a-z/:.]{0,40}") {
            if let Ok(mount) = Mount::parse(&text) {
                proptest::prop_assert!(mount.host.is_absolute());
                proptest::prop_assert!(
                    mount.guest.starts_with("/home/sandbox/") || mount.guest.starts_with("/mnt/")
                );
                proptest::prop_assert!(!mount.guest.split('/').any(|p| p == ".."));
            }
        }
    }

    #[test]
    fn the_data_image_alone_gives_a_python_shape_that_names_its_image() {
        let shape = MachineShape::of_image(Image::PythonData);
        assert_eq!(shape.language, Language::Python);
        assert_eq!(shape.image(), Image::PythonData);
        shape.validate().unwrap();
        assert_eq!(
            shape.to_string(),
            "python-data 512 MiB 1 vCPU 2048 MiB disk"
        );
        let json = serde_json::to_string(&shape).unwrap();
        assert_eq!(
            json,
            r#"{"language":"python","image":"python-data","memory_mib":512,"vcpus":1,"disk_mib":2048}"#
        );
        assert_eq!(serde_json::from_str::<MachineShape>(&json).unwrap(), shape);
    }

    #[test]
    fn a_languages_own_image_is_the_shape_without_an_image() {
        for language in Language::ALL {
            let own = MachineShape::new(language).with_image(Image::of_language(language));
            assert_eq!(own, MachineShape::new(language));
            assert_eq!(own.image(), Image::of_language(language));
        }
        assert_ne!(
            MachineShape::of_image(Image::PythonData),
            MachineShape::new(Language::Python),
            "a data VM is not a python VM: pools and templates keep them apart"
        );
    }

    #[test]
    fn an_image_that_contradicts_the_language_is_refused_naming_both() {
        let mut spec = SandboxSpec::new(Language::Javascript);
        spec.shape = spec.shape.with_image(Image::PythonData);
        let err = spec.validate().unwrap_err();
        assert_eq!(field_of(spec.validate()), "image");
        assert!(
            err.to_string()
                .contains("python-data runs python code, not javascript"),
            "{err}"
        );
        let pool = PoolConfig::new(spec.shape);
        assert!(matches!(pool.validate(), Err(Error::Config(_))));
    }

    #[test]
    fn packages_over_the_data_image_are_refused_with_what_to_do() {
        let mut spec = SandboxSpec::new(Language::Python);
        spec.shape = MachineShape::of_image(Image::PythonData);
        spec.packages = vec!["six==1.16.0".into()];
        let err = spec.validate().unwrap_err().to_string();
        assert_eq!(field_of(spec.validate()), "packages");
        assert!(err.contains("python image"), "{err}");
        spec.packages.clear();
        spec.validate().unwrap();
    }

    fn shape() -> MachineShape {
        MachineShape {
            language: Language::Raw,
            image: None,
            memory_mib: 256,
            vcpus: 1,
            disk_mib: 0,
        }
    }

    #[test]
    fn pools_must_leave_a_slot_free_and_have_one_shape_each() {
        let pool = PoolConfig::new(shape());
        validate_pools(&[pool], 3).unwrap();
        validate_pools(&[], 1).unwrap();
        let too_many = validate_pools(&[pool], 2).unwrap_err().to_string();
        assert!(too_many.contains("leave at least one slot"), "{too_many}");
        let twice = validate_pools(&[pool, pool], 8).unwrap_err().to_string();
        assert!(twice.contains("two warm pools"), "{twice}");
    }

    #[test]
    fn a_pool_of_no_vms_or_an_impossible_shape_is_refused() {
        let empty = PoolConfig {
            size: 0,
            ..PoolConfig::new(shape())
        };
        assert!(matches!(empty.validate(), Err(Error::Config(_))));
        let tiny = PoolConfig::new(MachineShape {
            memory_mib: 1,
            ..shape()
        });
        assert!(matches!(tiny.validate(), Err(Error::Config(_))));
        let hasty = PoolConfig {
            max_idle: Duration::from_millis(10),
            ..PoolConfig::new(shape())
        };
        assert!(matches!(hasty.validate(), Err(Error::Config(_))));
    }

    #[test]
    fn a_config_with_too_many_pooled_vms_is_refused() {
        let config = crate::Config {
            max_concurrent_vms: 2,
            warm_pools: vec![PoolConfig::new(shape())],
            ..crate::Config::default()
        };
        assert!(matches!(config.validate(), Err(Error::Config(_))));
    }
}
