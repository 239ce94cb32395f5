//! Waiting between retries: exponential back-off, capped, optionally
//! jittered so that parallel callers do not retry in lockstep.
//!
//! [`Backoff`] is the pure schedule; [`retry_until`] (feature `tokio`) is
//! the loop that retries an async operation on it until a deadline.

use std::time::Duration;

/// An exponential back-off: `first * 2^attempt`, capped at `max`, then
/// scaled by a random factor in `[1 - jitter, 1 + jitter]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The wait before the second try (attempt 0).
    pub first: Duration,
    /// The longest wait, before jitter.
    pub max: Duration,
    /// Relative jitter in `[0, 1]`: 0.25 is ±25%; 0 waits exactly.
    pub jitter: f64,
}

impl Backoff {
    /// A back-off without jitter.
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            jitter: 0.0,
        }
    }

    /// The same back-off with ±`fraction` jitter (clamped to `[0, 1]`).
    pub fn with_jitter(self, fraction: f64) -> Self {
        Self {
            jitter: fraction.clamp(0.0, 1.0),
            ..self
        }
    }

    /// The wait after attempt `attempt` (0 for the first failure), before
    /// jitter: `first * 2^attempt`, at most `max`.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        self.first
            .saturating_mul(1u32 << attempt.min(31))
            .min(self.max)
    }

    /// The wait after attempt `attempt`, jittered with `unit`, a number in
    /// `[0, 1]` (0 gives the shortest wait, 1 the longest). Pure: tests
    /// and callers with their own randomness use it.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.base_delay(attempt);
        if self.jitter == 0.0 {
            return base;
        }
        let factor = 1.0 - self.jitter + 2.0 * self.jitter * unit.clamp(0.0, 1.0);
        base.mul_f64(factor)
    }

    /// The wait after attempt `attempt`, jittered at random.
    pub fn delay(&self, attempt: u32) -> Duration {
        if self.jitter == 0.0 {
            return self.base_delay(attempt);
        }
        self.delay_with(attempt, random_unit())
    }
}

/// A number in `[0, 1)` good enough to spread retries (not for secrets):
/// std's randomly keyed hasher, so this crate needs no RNG dependency.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// Calls `op` until it succeeds, fails in a way `retryable` refuses, or the
/// next wait would reach `deadline`; waits `backoff.delay(attempt)` between
/// calls. Returns the last result.
#[cfg(feature = "tokio")]
pub async fn retry_until<T, E, F, Fut>(
    backoff: &Backoff,
    deadline: tokio::time::Instant,
    mut op: F,
    mut retryable: impl FnMut(&E) -> bool,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e) if retryable(&e) => {
                let wait = backoff.delay(attempt);
                if tokio::time::Instant::now() + wait >= deadline {
                    return Err(e);
                }
                tokio::time::sleep(wait).await;
                attempt = attempt.saturating_add(1);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_wait_doubles_from_first_and_is_capped() {
        let b = Backoff::new(500 * MS, Duration::from_secs(30));
        assert_eq!(b.delay(0), 500 * MS);
        assert_eq!(b.delay(1), Duration::from_secs(1));
        assert_eq!(b.delay(3), Duration::from_secs(4));
        assert_eq!(b.delay(19), Duration::from_secs(30));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_spreads_the_wait_around_the_base() {
        let b = Backoff::new(10 * MS, 500 * MS).with_jitter(0.25);
        assert_eq!(b.delay_with(0, 0.0), Duration::from_micros(7500));
        assert_eq!(b.delay_with(0, 1.0), Duration::from_micros(12500));
        assert_eq!(b.delay_with(3, 0.5), 80 * MS);
        for attempt in [0, 3, 10, 40, 1000] {
            let d = b.delay(attempt);
            let base = b.base_delay(attempt);
            assert!(d >= base.mul_f64(0.75) && d <= base.mul_f64(1.25), "{d:?}");
        }
    }

    #[test]
    fn jitter_is_clamped_to_at_most_the_whole_wait() {
        let b = Backoff::new(10 * MS, 10 * MS).with_jitter(7.0);
        assert_eq!(b.jitter, 1.0);
        assert_eq!(b.delay_with(0, 0.0), Duration::ZERO);
    }

    #[test]
    fn random_units_stay_in_range() {
        for _ in 0..1000 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn retry_stops_at_the_first_success() {
        let mut calls = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let got: Result<u32, &str> = retry_until(
            &Backoff::new(MS, 4 * MS),
            deadline,
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err("refused")
                    } else {
                        Ok(n)
                    }
                }
            },
            |_| true,
        )
        .await;
        assert_eq!(got, Ok(3));
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn retry_returns_a_refused_error_at_once() {
        let mut calls = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let got: Result<(), &str> = retry_until(
            &Backoff::new(MS, 4 * MS),
            deadline,
            || {
                calls += 1;
                async { Err("fatal") }
            },
            |e| *e != "fatal",
        )
        .await;
        assert_eq!((got, calls), (Err("fatal"), 1));
    }

    #[cfg(feature = "tokio")]
    #[tokio::test]
    async fn retry_gives_up_before_the_deadline() {
        let start = tokio::time::Instant::now();
        let got: Result<(), &str> = retry_until(
            &Backoff::new(10 * MS, 20 * MS),
            start + 100 * MS,
            || async { Err("refused") },
            |_| true,
        )
        .await;
        assert_eq!(got, Err("refused"));
        assert!(start.elapsed() < 100 * MS, "{:?}", start.elapsed());
    }
}
