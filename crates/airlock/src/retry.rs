//! Retries of transient boot failures: jittered exponential backoff, a cap
//! on attempts, a deadline per attempt that cuts every step of it, and one
//! deadline over all of them (see `docs/architecture.md`, "Retries").

use crate::config::Config;
use crate::error::{BootError, Result};
use airlock_sys_util::Backoff;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

/// How long past its deadline an attempt runs before it is cut: room for
/// the agent wait, which honours the deadline itself, to report its own
/// timeout with the logs' tails instead of being cut with nothing.
pub const CUT_SLACK: Duration = Duration::from_secs(1);

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
    /// timeout (and its [`CUT_SLACK`]) and the longest backoffs between
    /// them.
    pub fn budget(&self) -> Duration {
        let attempts = self.attempts.max(1);
        (self.attempt_timeout + CUT_SLACK).saturating_mul(attempts)
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
    pub result: Result<T, BootError>,
    /// Attempts made (1 when the first one decided).
    pub attempts: u32,
}

/// Runs `attempt(n, deadline)` (n from 1) until it succeeds, fails with a
/// permanent error, runs out of attempts, or the overall deadline leaves
/// no room for the next backoff. Each attempt's deadline is its own
/// timeout, cut to the overall deadline. An attempt still running
/// [`CUT_SLACK`] after its deadline (a step that hung before the agent
/// wait, which is the only step that watches `deadline` itself) is
/// dropped and fails with the transient [`BootError::AttemptTimeout`]; the
/// attempt must therefore be cancel-safe (the builder's `BootGuard` hands
/// what it made to the reaper when dropped).
///
/// (Not `airlock_sys_util::retry_until`: that loop has no attempt cap and
/// gives every call the same deadline; this one counts attempts and cuts
/// each attempt's own deadline. The waits are the shared [`Backoff`].)
pub async fn retry<T, F, Fut>(policy: &RetryPolicy, mut attempt: F) -> Retried<T>
where
    F: FnMut(u32, Instant) -> Fut,
    Fut: Future<Output = Result<T, BootError>>,
{
    let overall = Instant::now() + policy.budget();
    let backoff = policy.backoff();
    let mut n = 1;
    loop {
        let start = Instant::now();
        let deadline = (start + policy.attempt_timeout).min(overall);
        let result = tokio::time::timeout_at(deadline + CUT_SLACK, attempt(n, deadline))
            .await
            .unwrap_or_else(|_| {
                Err(BootError::AttemptTimeout {
                    attempt: n,
                    after: start.elapsed(),
                })
            });
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
    use std::sync::{Arc, Mutex};

    fn policy(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            attempt_timeout: Duration::from_secs(10),
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
        }
    }

    fn transient() -> BootError {
        BootError::BootTimeout {
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
        script: Vec<Result<u32, BootError>>,
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
        let (retried, seen) = run(policy(3), vec![Err(BootError::ShutDown)]).await;
        assert!(matches!(retried.result, Err(BootError::ShutDown)));
        assert_eq!((retried.attempts, seen.len()), (1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_run_out_with_the_last_error() {
        let script = vec![Err(transient()), Err(transient()), Err(transient())];
        let (retried, seen) = run(policy(3), script).await;
        assert!(matches!(retried.result, Err(BootError::BootTimeout { .. })));
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
    async fn an_attempt_that_ignores_its_deadline_is_cut_and_retried() {
        let start = Instant::now();
        let cut_at = Arc::new(Mutex::new(Vec::new()));
        let retried = retry(&policy(2), |n, deadline| {
            let cut_at = cut_at.clone();
            async move {
                if n == 1 {
                    // Records when it is dropped, then never finishes.
                    struct OnDrop(Arc<Mutex<Vec<Duration>>>, Instant);
                    impl Drop for OnDrop {
                        fn drop(&mut self) {
                            self.0.lock().unwrap().push(self.1.elapsed());
                        }
                    }
                    let _dropped = OnDrop(cut_at, start);
                    std::future::pending::<()>().await;
                }
                assert!(deadline > Instant::now());
                Ok(n)
            }
        })
        .await;
        assert_eq!(retried.result.unwrap(), 2);
        assert_eq!(retried.attempts, 2);
        let cut_at = cut_at.lock().unwrap().clone();
        assert_eq!(cut_at, vec![Duration::from_secs(10) + CUT_SLACK]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_attempt_is_a_transient_attempt_timeout() {
        let retried: Retried<()> = retry(&policy(1), |_, _| std::future::pending()).await;
        match retried.result {
            Err(e @ BootError::AttemptTimeout { attempt: 1, after }) => {
                assert_eq!(after, Duration::from_secs(10) + CUT_SLACK);
                assert!(e.is_transient());
            }
            other => panic!("expected AttemptTimeout, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_that_all_hang_are_each_cut_within_the_budget() {
        let policy = policy(5);
        let budget = policy.budget();
        let start = Instant::now();
        let retried: Retried<()> = retry(&policy, |_, _| std::future::pending()).await;
        assert_eq!(retried.attempts, 5);
        assert!(
            matches!(
                retried.result,
                Err(BootError::AttemptTimeout { attempt: 5, .. })
            ),
            "{:?}",
            retried.result
        );
        assert!(
            start.elapsed() <= budget,
            "{:?} > {budget:?}",
            start.elapsed()
        );
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
            (Duration::from_secs(10) + CUT_SLACK) * 2 + Duration::from_millis(2500)
        );
        assert_eq!(policy(1).budget(), Duration::from_secs(10) + CUT_SLACK);
    }
}
