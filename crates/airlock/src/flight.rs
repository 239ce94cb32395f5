//! Single flight: one build per key at a time in this process, other keys
//! in parallel, and a deadline on the wait.
//!
//! A caller that finds a memory template or a package layer missing takes
//! the key's [`Flight`] before it builds. A second caller of the same key
//! waits for the first (then finds what it built); a caller of another key
//! is not held up by it (the one global build lock it replaces made every
//! tenant wait for any build). The wait has a deadline: past it the
//! caller gets [`FlightBusy`] and does without (a template's caller boots
//! cold) rather than queueing behind a build of unknown length.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::OwnedMutexGuard;

/// The in-process locks of the keys being built.
#[derive(Debug, Clone, Default)]
pub struct SingleFlight {
    /// A key's lock lives as long as a caller holds or awaits it.
    keys: Arc<Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>>,
}

/// The right to build one key, until dropped.
#[derive(Debug)]
pub struct Flight {
    _guard: OwnedMutexGuard<()>,
}

/// The key stayed busy (another caller building it) past the deadline.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} is being built by another request, still after {waited:?}")]
pub struct FlightBusy {
    /// The key.
    pub key: String,
    /// How long the caller waited.
    pub waited: Duration,
}

impl SingleFlight {
    /// Takes `key`'s flight, waiting at most `wait` for the caller that
    /// holds it.
    ///
    /// # Errors
    /// [`FlightBusy`] when it is still held after `wait`.
    pub async fn take(&self, key: &str, wait: Duration) -> Result<Flight, FlightBusy> {
        let lock = self.lock_of(key);
        match tokio::time::timeout(wait, lock.lock_owned()).await {
            Ok(guard) => Ok(Flight { _guard: guard }),
            Err(_) => Err(FlightBusy {
                key: key.to_owned(),
                waited: wait,
            }),
        }
    }

    /// Whether some caller holds or awaits `key`'s flight now.
    #[cfg(test)]
    fn is_busy(&self, key: &str) -> bool {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .is_some_and(|weak| weak.strong_count() > 0)
    }

    /// The lock of `key`, made on first use; locks no caller holds any
    /// more are dropped from the map on the way.
    fn lock_of(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.retain(|_, weak| weak.strong_count() > 0);
        if let Some(lock) = keys.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        keys.insert(key.to_owned(), Arc::downgrade(&lock));
        lock
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn a_second_caller_of_a_key_waits_for_the_first() {
        let flights = SingleFlight::default();
        let first = flights.take("a", LONG).await.unwrap();
        let waiter = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.take("a", LONG).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(!waiter.is_finished(), "took a key another caller holds");
        drop(first);
        waiter.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn another_key_is_not_held_up() {
        let flights = SingleFlight::default();
        let _a = flights.take("a", LONG).await.unwrap();
        let b = tokio::time::timeout(Duration::from_millis(1), flights.take("b", LONG)).await;
        assert!(b.is_ok(), "key b waited for key a");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_past_its_deadline_is_busy_and_the_holder_keeps_the_key() {
        let flights = SingleFlight::default();
        let held = flights.take("a", LONG).await.unwrap();
        let started = tokio::time::Instant::now();
        let busy = flights
            .take("a", Duration::from_secs(30))
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(busy.key, "a");
        assert!(busy.to_string().contains("being built"), "{busy}");
        assert!(flights.is_busy("a"));
        drop(held);
        assert!(!flights.is_busy("a"));
        flights.take("a", Duration::ZERO).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn locks_nobody_holds_are_forgotten() {
        let flights = SingleFlight::default();
        for key in ["a", "b", "c"] {
            drop(flights.take(key, LONG).await.unwrap());
        }
        let _d = flights.take("d", LONG).await.unwrap();
        assert_eq!(flights.keys.lock().unwrap().len(), 1);
    }
}
