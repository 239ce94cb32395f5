//! The pool's configuration: one typed struct, validated once.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{OverlayError, Result};

/// Smallest qcow2 cluster qemu accepts.
pub const MIN_CLUSTER_SIZE_BYTES: u64 = 512;
/// Largest qcow2 cluster qemu accepts.
pub const MAX_CLUSTER_SIZE_BYTES: u64 = 2 * 1024 * 1024;
/// Smallest cluster qemu accepts together with `extended_l2`.
pub const MIN_EXTENDED_L2_CLUSTER_SIZE_BYTES: u64 = 16 * 1024;
/// Upper bound for [`PoolConfig::target_per_base`]; a pool is a cache, not a store.
pub const MAX_TARGET_PER_BASE: usize = 1024;
/// Upper bound for [`PoolConfig::max_concurrent_creates`].
pub const MAX_CONCURRENT_CREATES: usize = 64;

/// Format of the read-only base images, passed explicitly to qemu-img (`-F`)
/// so it never probes the format of a file it did not create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BaseFormat {
    /// qcow2 base images (what `cargo xtask images` builds).
    #[default]
    Qcow2,
    /// Raw base images.
    Raw,
}

impl BaseFormat {
    /// The name qemu uses for this format.
    pub fn as_qemu_str(self) -> &'static str {
        match self {
            BaseFormat::Qcow2 => "qcow2",
            BaseFormat::Raw => "raw",
        }
    }
}

/// Configuration of an [`OverlayPool`](crate::OverlayPool).
///
/// The defaults fit a small host: a few overlays per base, two creations at a
/// time, options chosen for creation speed (see the crate docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Directory that holds the pooled overlays. Created (0700) if missing.
    /// Must be absolute and on the same filesystem as the VM work dirs
    /// (overlays move there with a rename). One pool owns it at a time.
    pub pool_dir: PathBuf,
    /// A directory on the filesystem of the VM work dirs (for example their
    /// parent). When set, [`OverlayPool::new`](crate::OverlayPool::new) fails
    /// early if it is not on the pool dir's filesystem.
    pub work_root: Option<PathBuf>,
    /// Overlays kept ready per base image. `0` disables pre-creation: every
    /// acquire creates its overlay on demand.
    pub target_per_base: usize,
    /// Background creations running at once (over all bases). Creations on
    /// demand inside `acquire` are not counted: a caller is waiting for them.
    pub max_concurrent_creates: usize,
    /// Deadline for one `qemu-img create`; past it the process is killed.
    pub create_timeout: Duration,
    /// qcow2 cluster size of the overlays, a power of two.
    pub cluster_size_bytes: u64,
    /// Create overlays with `lazy_refcounts=on`.
    pub lazy_refcounts: bool,
    /// Create overlays with `extended_l2=on` (sub-cluster allocation).
    pub extended_l2: bool,
    /// Format of the base images.
    pub base_format: BaseFormat,
    /// The `qemu-img` program (looked up on `PATH` when relative).
    pub qemu_img: PathBuf,
    /// First delay before retrying a base whose background creation failed.
    pub retry_backoff_min: Duration,
    /// Longest delay between background retries of a failing base.
    pub retry_backoff_max: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            pool_dir: std::env::temp_dir().join("airlock-overlay-pool"),
            work_root: None,
            target_per_base: 4,
            max_concurrent_creates: 2,
            create_timeout: Duration::from_secs(10),
            cluster_size_bytes: 64 * 1024,
            lazy_refcounts: true,
            extended_l2: false,
            base_format: BaseFormat::Qcow2,
            qemu_img: PathBuf::from("qemu-img"),
            retry_backoff_min: Duration::from_millis(500),
            retry_backoff_max: Duration::from_secs(30),
        }
    }
}

impl PoolConfig {
    /// Checks every field; the pool relies on this and checks nothing again.
    ///
    /// # Errors
    /// [`OverlayError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, reason: String| {
            Err(OverlayError::InvalidConfig { field, reason })
        };
        if !self.pool_dir.is_absolute() {
            return bad(
                "pool_dir",
                format!("must be an absolute path, got {:?}", self.pool_dir),
            );
        }
        if let Some(root) = &self.work_root {
            if !root.is_absolute() {
                return bad(
                    "work_root",
                    format!("must be an absolute path, got {root:?}"),
                );
            }
        }
        if self.target_per_base > MAX_TARGET_PER_BASE {
            return bad(
                "target_per_base",
                format!(
                    "must be at most {MAX_TARGET_PER_BASE}, got {}",
                    self.target_per_base
                ),
            );
        }
        if !(1..=MAX_CONCURRENT_CREATES).contains(&self.max_concurrent_creates) {
            return bad(
                "max_concurrent_creates",
                format!(
                    "must be between 1 and {MAX_CONCURRENT_CREATES}, got {}",
                    self.max_concurrent_creates
                ),
            );
        }
        if self.create_timeout.is_zero() || self.create_timeout > Duration::from_secs(600) {
            return bad(
                "create_timeout",
                format!(
                    "must be above zero and at most 10 minutes, got {:?}",
                    self.create_timeout
                ),
            );
        }
        let cluster = self.cluster_size_bytes;
        if !cluster.is_power_of_two()
            || !(MIN_CLUSTER_SIZE_BYTES..=MAX_CLUSTER_SIZE_BYTES).contains(&cluster)
        {
            return bad(
                "cluster_size_bytes",
                format!(
                    "must be a power of two from {MIN_CLUSTER_SIZE_BYTES} to \
                     {MAX_CLUSTER_SIZE_BYTES}, got {cluster}"
                ),
            );
        }
        if self.extended_l2 && cluster < MIN_EXTENDED_L2_CLUSTER_SIZE_BYTES {
            return bad(
                "cluster_size_bytes",
                format!(
                    "must be at least {MIN_EXTENDED_L2_CLUSTER_SIZE_BYTES} with extended_l2, \
                     got {cluster}"
                ),
            );
        }
        if self.qemu_img.as_os_str().is_empty() {
            return bad("qemu_img", "must name a program, got an empty path".into());
        }
        if self.retry_backoff_min.is_zero() || self.retry_backoff_min > self.retry_backoff_max {
            return bad(
                "retry_backoff_min",
                format!(
                    "must be above zero and at most retry_backoff_max ({:?}), got {:?}",
                    self.retry_backoff_max, self.retry_backoff_min
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(config: &PoolConfig) -> &'static str {
        match config.validate() {
            Err(OverlayError::InvalidConfig { field, .. }) => field,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn default_config_is_valid() {
        assert!(PoolConfig::default().validate().is_ok());
    }

    #[test]
    fn relative_pool_dir_is_refused() {
        let config = PoolConfig {
            pool_dir: "pool".into(),
            ..PoolConfig::default()
        };
        assert_eq!(field_of(&config), "pool_dir");
    }

    #[test]
    fn relative_work_root_is_refused() {
        let config = PoolConfig {
            work_root: Some("work".into()),
            ..PoolConfig::default()
        };
        assert_eq!(field_of(&config), "work_root");
    }

    #[test]
    fn zero_target_is_allowed_and_too_large_target_is_refused() {
        let zero = PoolConfig {
            target_per_base: 0,
            ..PoolConfig::default()
        };
        let huge = PoolConfig {
            target_per_base: MAX_TARGET_PER_BASE + 1,
            ..PoolConfig::default()
        };
        assert!(zero.validate().is_ok());
        assert_eq!(field_of(&huge), "target_per_base");
    }

    #[test]
    fn concurrency_must_be_between_one_and_the_maximum() {
        for bad in [0, MAX_CONCURRENT_CREATES + 1] {
            let config = PoolConfig {
                max_concurrent_creates: bad,
                ..PoolConfig::default()
            };
            assert_eq!(field_of(&config), "max_concurrent_creates");
        }
    }

    #[test]
    fn create_timeout_must_be_positive_and_bounded() {
        for bad in [Duration::ZERO, Duration::from_secs(601)] {
            let config = PoolConfig {
                create_timeout: bad,
                ..PoolConfig::default()
            };
            assert_eq!(field_of(&config), "create_timeout");
        }
    }

    #[test]
    fn cluster_size_must_be_a_power_of_two_in_qemus_range() {
        for bad in [0, 256, 4096 + 1, 4 * 1024 * 1024, 3 * 65536] {
            let config = PoolConfig {
                cluster_size_bytes: bad,
                ..PoolConfig::default()
            };
            assert_eq!(field_of(&config), "cluster_size_bytes", "size {bad}");
        }
        for good in [512, 4096, 65536, 2 * 1024 * 1024] {
            let config = PoolConfig {
                cluster_size_bytes: good,
                ..PoolConfig::default()
            };
            assert!(config.validate().is_ok(), "size {good}");
        }
    }

    #[test]
    fn extended_l2_needs_clusters_of_at_least_16k() {
        let small = PoolConfig {
            extended_l2: true,
            cluster_size_bytes: 8192,
            ..PoolConfig::default()
        };
        let fine = PoolConfig {
            extended_l2: true,
            cluster_size_bytes: 128 * 1024,
            ..PoolConfig::default()
        };
        assert_eq!(field_of(&small), "cluster_size_bytes");
        assert!(fine.validate().is_ok());
    }

    #[test]
    fn empty_qemu_img_is_refused() {
        let config = PoolConfig {
            qemu_img: PathBuf::new(),
            ..PoolConfig::default()
        };
        assert_eq!(field_of(&config), "qemu_img");
    }

    #[test]
    fn backoff_min_must_be_positive_and_not_above_max() {
        let zero = PoolConfig {
            retry_backoff_min: Duration::ZERO,
            ..PoolConfig::default()
        };
        let inverted = PoolConfig {
            retry_backoff_min: Duration::from_secs(10),
            retry_backoff_max: Duration::from_secs(1),
            ..PoolConfig::default()
        };
        assert_eq!(field_of(&zero), "retry_backoff_min");
        assert_eq!(field_of(&inverted), "retry_backoff_min");
    }

    #[test]
    fn error_message_names_the_field_and_the_accepted_range() {
        let config = PoolConfig {
            max_concurrent_creates: 0,
            ..PoolConfig::default()
        };
        let message = config.validate().map_err(|e| e.to_string());
        assert_eq!(
            message,
            Err("invalid overlay pool config: `max_concurrent_creates` must be between 1 and 64, got 0".into())
        );
    }
}
