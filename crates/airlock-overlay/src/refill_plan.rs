//! What to create next (pure): which bases get the free creation slots,
//! when a failing base may be retried, and the jobs and completions the
//! refill task passes around.

use std::path::PathBuf;
use std::time::Duration;

use airlock_sys_util::Backoff;
use tokio::time::Instant;

use crate::error::Result;
use crate::naming::BaseId;
use crate::qemu_img::{CreateSpec, Seed};

/// What the planner needs to know about one base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefillNeed {
    /// Overlays ready to hand out.
    pub ready: usize,
    /// Background creations in flight.
    pub creating: usize,
    /// Whether the last creation for this base failed.
    pub failing: bool,
    /// Not before this instant (back-off after a failure).
    pub retry_at: Option<Instant>,
}

impl RefillNeed {
    /// How many more creations this base may start now.
    fn wanted(&self, target: usize, now: Instant) -> usize {
        if self.retry_at.is_some_and(|at| at > now) {
            return 0;
        }
        let deficit = target.saturating_sub(self.ready + self.creating);
        if self.failing {
            // Probe a failing base with one creation at a time.
            deficit.min(1usize.saturating_sub(self.creating))
        } else {
            deficit
        }
    }
}

/// Picks which bases get the `free_slots` creation slots: indices into
/// `needs`, round robin, a base appearing once per overlay to create.
pub fn plan_refill(
    needs: &[RefillNeed],
    target: usize,
    free_slots: usize,
    now: Instant,
) -> Vec<usize> {
    let mut wanted: Vec<usize> = needs.iter().map(|n| n.wanted(target, now)).collect();
    let mut picks = Vec::new();
    while picks.len() < free_slots {
        let before = picks.len();
        for (index, want) in wanted.iter_mut().enumerate() {
            if picks.len() == free_slots {
                break;
            }
            if *want > 0 {
                *want -= 1;
                picks.push(index);
            }
        }
        if picks.len() == before {
            break;
        }
    }
    picks
}

/// The earliest back-off that will expire after `now` for a base that lacks
/// overlays: when the task must wake up even if nothing else happens.
pub fn next_retry(needs: &[RefillNeed], target: usize, now: Instant) -> Option<Instant> {
    needs
        .iter()
        .filter(|n| n.ready + n.creating < target)
        .filter_map(|n| n.retry_at)
        .filter(|at| *at > now)
        .min()
}

/// Back-off before the next attempt after `failures` failures in a row:
/// `min`, doubling each time, capped at `max`.
pub fn retry_delay(failures: u32, min: Duration, max: Duration) -> Duration {
    Backoff::new(min, max).delay(failures.saturating_sub(1))
}

/// One background creation to run.
#[derive(Debug)]
pub struct Job {
    /// The base as the caller named it (the key of its pool).
    pub key: PathBuf,
    /// The base version the overlay is made for.
    pub id: BaseId,
    /// qemu-img's inputs; `out` is the temp path.
    pub spec: CreateSpec,
    /// Where the finished overlay goes in the pool directory.
    pub ready_path: PathBuf,
    /// The base version's seed, when one was kept: the overlay is written
    /// from it instead of by qemu-img.
    pub seed: Option<Seed>,
}

/// How a background creation ended.
#[derive(Debug)]
pub struct Completion {
    /// The base as the caller named it.
    pub key: PathBuf,
    /// The base version the overlay was made for.
    pub id: BaseId,
    /// The finished overlay's path, or why there is none.
    pub result: Result<PathBuf>,
    /// A seed qemu-img's overlay gave (the job had none).
    pub seed: Option<Seed>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn need(ready: usize, creating: usize) -> RefillNeed {
        RefillNeed {
            ready,
            creating,
            failing: false,
            retry_at: None,
        }
    }

    #[test]
    fn a_full_pool_needs_nothing() {
        let now = Instant::now();
        assert!(plan_refill(&[need(4, 0), need(2, 2)], 4, 8, now).is_empty());
    }

    #[test]
    fn slots_go_round_robin_over_bases() {
        let now = Instant::now();
        let picks = plan_refill(&[need(0, 0), need(0, 0), need(3, 0)], 4, 5, now);
        assert_eq!(picks, vec![0, 1, 2, 0, 1]);
    }

    #[test]
    fn creations_in_flight_count_towards_the_target() {
        let now = Instant::now();
        assert_eq!(plan_refill(&[need(1, 2)], 4, 8, now), vec![0]);
    }

    #[test]
    fn no_free_slot_means_no_pick() {
        let now = Instant::now();
        assert!(plan_refill(&[need(0, 0)], 4, 0, now).is_empty());
    }

    #[test]
    fn a_zero_target_never_creates() {
        let now = Instant::now();
        assert!(plan_refill(&[need(0, 0)], 0, 4, now).is_empty());
    }

    #[test]
    fn a_base_in_back_off_waits_and_then_gets_one_probe() {
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        let failing = RefillNeed {
            failing: true,
            retry_at: Some(later),
            ..need(0, 0)
        };

        assert!(plan_refill(&[failing], 4, 4, now).is_empty());
        assert_eq!(plan_refill(&[failing], 4, 4, later), vec![0]);
        let probing = RefillNeed {
            creating: 1,
            ..failing
        };
        assert!(plan_refill(&[probing], 4, 4, later).is_empty());
    }

    #[test]
    fn next_retry_is_the_earliest_pending_back_off_of_a_lacking_base() {
        let now = Instant::now();
        let (soon, late) = (now + Duration::from_secs(1), now + Duration::from_secs(9));
        let needs = [
            RefillNeed {
                retry_at: Some(late),
                ..need(0, 0)
            },
            RefillNeed {
                retry_at: Some(soon),
                ..need(0, 0)
            },
            RefillNeed {
                retry_at: Some(now),
                ..need(0, 0)
            },
            RefillNeed {
                retry_at: Some(now + Duration::from_millis(1)),
                ..need(4, 0)
            },
        ];
        assert_eq!(next_retry(&needs, 4, now), Some(soon));
        assert_eq!(next_retry(&[need(0, 0)], 4, now), None);
    }

    #[test]
    fn retry_delay_doubles_and_is_capped() {
        let (min, max) = (Duration::from_millis(500), Duration::from_secs(30));
        assert_eq!(retry_delay(1, min, max), min);
        assert_eq!(retry_delay(2, min, max), Duration::from_secs(1));
        assert_eq!(retry_delay(4, min, max), Duration::from_secs(4));
        assert_eq!(retry_delay(20, min, max), max);
        assert_eq!(retry_delay(u32::MAX, min, max), max);
        assert_eq!(retry_delay(0, min, max), min);
    }
}
