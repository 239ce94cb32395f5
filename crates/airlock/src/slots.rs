//! VM slots: at most `max_concurrent_vms` VMs live at once; more boots wait
//! in line (backpressure, not failure), up to a queue timeout.

use crate::error::{BootError, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The slots of one VM manager.
#[derive(Debug, Clone)]
pub struct Slots {
    semaphore: Arc<Semaphore>,
    capacity: usize,
    queue_timeout: Duration,
}

/// A taken slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    queued: Duration,
}

impl Slot {
    /// How long the boot waited for this slot.
    pub fn queued(&self) -> Duration {
        self.queued
    }
}

impl Slots {
    /// `capacity` slots; a boot waits at most `queue_timeout` for one.
    pub fn new(capacity: usize, queue_timeout: Duration) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(capacity)),
            capacity,
            queue_timeout,
        }
    }

    /// Takes a slot, waiting in line (first come, first served) while all
    /// are taken. Cancel-safe: a waiter dropped in line takes nothing.
    ///
    /// # Errors
    /// [`BootError::QueueTimeout`] after the queue timeout; [`BootError::ShutDown`]
    /// once [`Slots::close`] was called.
    pub async fn acquire(&self) -> Result<Slot, BootError> {
        let start = Instant::now();
        let permit = tokio::time::timeout(
            self.queue_timeout,
            Arc::clone(&self.semaphore).acquire_owned(),
        )
        .await
        .map_err(|_| BootError::QueueTimeout {
            waited: self.queue_timeout,
            slots: self.capacity,
        })?
        .map_err(|_| BootError::ShutDown)?;
        Ok(Slot {
            _permit: permit,
            queued: start.elapsed(),
        })
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }

    /// Refuses every later [`Slots::acquire`], and those waiting now.
    pub fn close(&self) {
        self.semaphore.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(600);

    #[tokio::test(start_paused = true)]
    async fn a_free_slot_is_taken_at_once() {
        let slots = Slots::new(2, LONG);
        let slot = slots.acquire().await.unwrap();
        assert_eq!(slot.queued(), Duration::ZERO);
        assert_eq!(slots.available(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_boot_waits_in_line_until_a_slot_is_freed_and_its_wait_is_measured() {
        let slots = Slots::new(1, LONG);
        let first = slots.acquire().await.unwrap();
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire().await.map(|s| s.queued()) }
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!waiter.is_finished(), "all slots are taken: it waits");
        drop(first);
        let queued = waiter.await.unwrap().unwrap();
        assert_eq!(queued, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_boot_cancelled_in_line_takes_no_slot() {
        let slots = Slots::new(1, LONG);
        let first = slots.acquire().await.unwrap();
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire().await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        drop(first);
        assert_eq!(slots.available(), 1, "the cancelled waiter holds nothing");
        slots.acquire().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_slot_frees_it() {
        let slots = Slots::new(1, LONG);
        let slot = slots.acquire().await.unwrap();
        assert_eq!(slots.available(), 0);
        drop(slot);
        assert_eq!(slots.available(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_longer_than_the_queue_timeout_fails_naming_the_slots() {
        let slots = Slots::new(1, Duration::from_secs(5));
        let _taken = slots.acquire().await.unwrap();
        let err = slots.acquire().await.unwrap_err();
        assert!(
            matches!(err, BootError::QueueTimeout { slots: 1, waited } if waited == Duration::from_secs(5)),
            "{err}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn closed_slots_refuse_new_and_waiting_boots() {
        let slots = Slots::new(1, LONG);
        let _taken = slots.acquire().await.unwrap();
        let waiter = tokio::spawn({
            let slots = slots.clone();
            async move { slots.acquire().await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        slots.close();
        assert!(matches!(waiter.await.unwrap(), Err(BootError::ShutDown)));
        assert!(matches!(slots.acquire().await, Err(BootError::ShutDown)));
    }
}
