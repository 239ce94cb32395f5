//! Small async plumbing shared by the lower modules: boxed futures for
//! object-safe traits, and blocking work moved off the runtime's workers.

use crate::error::{BootError, Result};
use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future (object-safe async trait methods).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Runs blocking work (small file-system scans, probes) off the runtime's
/// worker threads.
///
/// # Errors
/// [`BootError::TaskFailed`] when the work panicked or was cancelled.
pub(crate) async fn blocking<T: Send + 'static>(
    task: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BootError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| BootError::TaskFailed {
            task,
            message: e.to_string(),
        })
}
