//! Where a VM's root disk overlay comes from: the overlay pool, behind a
//! small seam so that the builder can be tested without `qemu-img`.

use crate::error::{BootError, Result};
use crate::task::BoxFuture;
use airlock_overlay::OverlayPool;
use std::path::Path;
use std::time::Duration;

/// An overlay placed in a VM's work dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskAcquired {
    /// How long it took.
    pub elapsed: Duration,
    /// Whether it came ready-made from the pool.
    pub pool_hit: bool,
}

/// Gives a VM its copy-on-write root disk.
pub trait DiskSource: Send + Sync {
    /// Puts an overlay over `base` at `dest`.
    ///
    /// # Errors
    /// [`crate::BootError::Overlay`].
    fn acquire<'a>(
        &'a self,
        base: &'a Path,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<DiskAcquired, BootError>>;
}

impl DiskSource for OverlayPool {
    fn acquire<'a>(
        &'a self,
        base: &'a Path,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<DiskAcquired, BootError>> {
        Box::pin(async move {
            let acquired = OverlayPool::acquire(self, base, dest)
                .await
                .map_err(crate::BootError::overlay(None, "take a disk overlay"))?;
            Ok(DiskAcquired {
                elapsed: acquired.elapsed,
                pool_hit: acquired.pool_hit,
            })
        })
    }
}
