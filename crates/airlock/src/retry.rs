//! Retries of transient boot failures: jittered exponential backoff, a cap
//! on attempts, and one deadline over all of them (see
//! `docs/architecture.md`, "Retries").

use crate::config::Config;
use crate::error::Result;
use airlock_sys_util::Backoff;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How boots are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts at most (at least 1).
    pub attempts: u32,
    /// Longest time one attempt may wait for the agent.
    pub attempt_timeout: Duration,
    /// First wait between attempts; doubled (with jitter) up to `max_backoff`.
    pub first_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// The policy of `config`: `boot_attempts` attempts of `boot_timeout`
    /// each, 200 ms to 2 s apart.
    pub fn from_config(config: &Config) -> Self {
        Self {
            attempts: config.boot_attempts.max(1),
            attempt_timeout: config.boot_timeout,
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
        }
    }

    /// The waits between attempts: `first_backoff` doubling to
    /// `max_backoff`, with the same ±25% jitter as the agent's polls.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.first_backoff, self.max_backoff).with_jitter(crate::guest::JITTER)
    }

    /// The one deadline over every attempt: room for each attempt's full
    /// timeout and the longest backoffs between them.
    pub fn budget(&self) -> Duration {
        let attempts = self.attempts.max(1);
        self.attempt_timeout.saturating_mul(attempts)
            + self
                .max_backoff
                .mul_f64(1.0 + crate::guest::JITTER)
                .saturating_mul(attempts - 1)
    }
}

/// The outcome of [`retry`]: the last result and the attempts made.
#[derive(Debug)]
pub struct Retried<T> {
    /// The success, or the error of the last attempt.
    pub result: Result<T>,
    /// Attempts made (1 when the first one decided).
    pub attempts: u32,
}

/// Runs `attempt(n, deadline)` (n from 1) until it succeeds, fails with a
/// permanent error, runs out of attempts, or the overall deadline leaves
/// no room for the next backoff. Each attempt's deadline is its own
/// timeout, cut to the overall deadline.
///
/// (Not `airlock_sys_util::retry_until`: that loop has no attempt cap and
/// gives every call the same deadline; this one counts attempts and cuts
/// each attempt's own deadline. The waits are the shared [`Backoff`].)
pub async fn retry<T, F, Fut>(policy: &RetryPolicy, mut attempt: F) -> Retried<T>
where
    F: FnMut(u32, Instant) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let overall = Instant::now() + policy.budget();
    let backoff = policy.backoff();
    let mut n = 1;
    loop {
        let deadline = (Instant::now() + policy.attempt_timeout).min(overall);
        let result = attempt(n, deadline).await;
        let error = match result {
            Err(e) if e.is_transient() && n < policy.attempts => e,
            result => {
                return Retried {
                    result,
                    attempts: n,
                }
            }
        };
        let wait = backoff.delay(n - 1);
        if Instant::now() + wait >= overall {
            tracing::warn!(attempt = n, error = %error, "transient boot failure, no time left to retry");
            return Retried {
                result: Err(error),
                attempts: n,
            };
        }
        tracing::warn!(attempt = n, error = %error, retry_in_ms = crate::ms(wait), "transient boot failure: retrying");
        tokio::time::sleep(wait).await;
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::sync::{Arc, Mutex};

    fn policy(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            attempt_timeout: Duration::from_secs(10),
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
        }
    }

    fn transient() -> Error {
        Error::BootTimeout {
            vm_id: "vm".into(),
            after: Duration::from_secs(10),
            stderr_tail: String::new(),
            console_tail: String::new(),
        }
    }

    /// Runs `retry` over scripted outcomes; returns the outcome and when
    /// (since the start) each attempt began.
    async fn run(
        policy: RetryPolicy,
        script: Vec<Result<u32>>,
    ) -> (Retried<u32>, Vec<(Duration, Duration)>) {
        let start = Instant::now();
        let script = Arc::new(Mutex::new(script.into_iter()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let retried = retry(&policy, |_, deadline| {
            let next = script.lock().unwrap().next();
            seen.lock()
                .unwrap()
                .push((start.elapsed(), deadline - start));
            async move { next.unwrap_or(Ok(0)) }
        })
        .await;
        let seen = seen.lock().unwrap().clone();
        (retried, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_success_is_one_attempt_without_waiting() {
        let (retried, seen) = run(policy(3), vec![Ok(7)]).await;
        assert_eq!(retried.result.unwrap(), 7);
        assert_eq!(retried.attempts, 1);
        assert_eq!(seen[0].0, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_is_retried_after_a_jittered_backoff() {
        let (retried, seen) = run(policy(3), vec![Err(transient()), Ok(7)]).await;
        assert_eq!(retried.result.unwrap(), 7);
        assert_eq!(retried.attempts, 2);
        let waited = seen[1].0;
        assert!(
            waited >= Duration::from_millis(150) && waited <= Duration::from_millis(250),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_is_not_retried() {
        let (retried, seen) = run(policy(3), vec![Err(Error::invalid("code", "bad"))]).await;
        assert!(matches!(retried.result, Err(Error::InvalidInput { .. })));
        assert_eq!((retried.attempts, seen.len()), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_run_out_with_the_last_error() {
        let script = vec![Err(transient()), Err(transient()), Err(transient())];
        let (retried, seen) = run(policy(3), script).await;
        assert!(matches!(retried.result, Err(Error::BootTimeout { .. })));
        assert_eq!((retried.attempts, seen.len()), (3, 3));
    }

    #[tokio::test(start_paused = true)]
    async fn backoffs_grow_between_attempts() {
        let script = vec![Err(transient()), Err(transient()), Err(transient())];
        let (_, seen) = run(policy(3), script).await;
        let first = seen[1].0 - seen[0].0;
        let second = seen[2].0 - seen[1].0;
        assert!(first <= Duration::from_millis(250), "{first:?}");
        assert!(second >= Duration::from_millis(300), "{second:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn every_attempt_shares_one_deadline() {
        let policy = policy(2);
        let budget = policy.budget();
        let start = Instant::now();
        let retried: Retried<()> = retry(&policy, |_, deadline| async move {
            // Each attempt uses all of its time, then fails transiently.
            tokio::time::sleep_until(deadline).await;
            Err(transient())
        })
        .await;
        assert_eq!(retried.attempts, 2);
        assert!(
            start.elapsed() <= budget,
            "{:?} > {budget:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_starts_when_the_deadline_leaves_no_room() {
        // One long attempt eats the whole budget: no second attempt.
        let policy = policy(5);
        let budget = policy.budget();
        let retried: Retried<()> = retry(&policy, |_, _| async move {
            tokio::time::sleep(budget).await;
            Err(transient())
        })
        .await;
        assert_eq!(retried.attempts, 1);
        assert!(retried.result.is_err());
    }

    #[test]
    fn the_waits_double_from_the_first_backoff_within_the_jitter() {
        let backoff = policy(3).backoff();
        assert_eq!(backoff.base_delay(0), Duration::from_millis(200));
        assert_eq!(backoff.base_delay(1), Duration::from_millis(400));
        assert_eq!(backoff.base_delay(9), Duration::from_secs(2));
        assert_eq!(backoff.delay_with(0, 0.0), Duration::from_millis(150));
        assert_eq!(backoff.delay_with(9, 1.0), Duration::from_millis(2500));
    }

    #[test]
    fn the_budget_covers_every_attempt_and_backoff() {
        let p = policy(2);
        assert_eq!(
            p.budget(),
            Duration::from_secs(20) + Duration::from_millis(2500)
        );
        assert_eq!(policy(1).budget(), Duration::from_secs(10));
    }
}
