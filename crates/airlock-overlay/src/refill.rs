//! Keeping every pool at its target: the background task that creates
//! overlays (what to create next is decided by [`crate::refill_plan`]).
//!
//! One task serves all bases. It wakes when an overlay is taken, when a
//! creation ends, when a failing base's back-off expires, and on shutdown. At
//! most `max_concurrent_creates` creations run at once; the slots go round
//! robin over the bases that lack overlays, so one base cannot starve another.
//! A base whose creations fail is retried with exponential back-off, one
//! creation at a time, until one succeeds.

use airlock_sys_util::IoError;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::error::OverlayError;
use crate::pool_state::Shared;
use crate::qemu_img::{create_seeded, remove_quietly};
use crate::refill_plan::{Completion, Job};

/// Creates one overlay under its temp name, then renames it to its ready
/// name, so a half-made overlay never carries a ready name.
async fn create_one(job: Job, timeout: Duration, cancel: watch::Receiver<bool>) -> Completion {
    let result = async {
        let seed = create_seeded(&job.spec, job.seed.as_ref(), &job.key, timeout, cancel).await?;
        if let Err(source) = tokio::fs::rename(&job.spec.out, &job.ready_path).await {
            remove_quietly(&job.spec.out).await;
            return Err(OverlayError::from(IoError::new(
                "rename a finished overlay to",
                job.ready_path.clone(),
                source,
            )));
        }
        Ok((job.ready_path.clone(), seed))
    }
    .await;
    let (result, seed) = match result {
        Ok((path, seed)) => (Ok(path), seed),
        Err(error) => (Err(error), None),
    };
    Completion {
        key: job.key,
        id: job.id,
        result,
        seed,
    }
}

/// How long shutdown waits for creations to be killed and cleaned up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The refill task. Ends when the pool's shutdown signal turns true, after
/// its creations were killed and every pooled overlay deleted; returns how
/// many pooled overlays it deleted.
pub async fn run(shared: Arc<Shared>) -> usize {
    let mut shutdown = shared.shutdown_receiver();
    let mut tasks: JoinSet<Completion> = JoinSet::new();
    let max = shared.config.max_concurrent_creates;
    loop {
        if *shutdown.borrow() {
            break;
        }
        shared.refresh_bases().await;
        let (jobs, wake_at) = shared.plan_jobs(max.saturating_sub(tasks.len()));
        for job in jobs {
            tasks.spawn(create_one(
                job,
                shared.config.create_timeout,
                shared.shutdown_receiver(),
            ));
        }
        let retry_sleep = tokio::time::sleep_until(wake_at.unwrap_or_else(Instant::now));
        tokio::select! {
            () = stop_signal(&mut shutdown) => break,
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                shared.complete(flatten(done)).await;
            }
            () = shared.wake.notified() => {}
            () = retry_sleep, if wake_at.is_some() => {}
        }
    }
    // The creations saw the signal too: they kill qemu-img and remove their
    // temp files. Wait for that (bounded), then empty the pool.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(done) = tasks.join_next().await {
            shared.complete(flatten(done)).await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("overlay creations did not end in time after stop; aborting them");
        tasks.abort_all();
    }
    shared.remove_all_ready().await
}

/// Resolves when the pool is stopped (or gone: its sender dropped).
async fn stop_signal(shutdown: &mut watch::Receiver<bool>) {
    // Err means the sender is gone, which also means the pool is gone.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

fn flatten(done: std::result::Result<Completion, tokio::task::JoinError>) -> Option<Completion> {
    match done {
        Ok(completion) => Some(completion),
        Err(error) => {
            tracing::error!(%error, "an overlay creation task failed");
            None
        }
    }
}
