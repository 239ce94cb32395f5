//! Measuring acquire latency, pool hit against on-demand creation, for
//! `cargo xtask bench` and the ignored measurement test.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::PoolConfig;
use crate::error::Result;
use crate::pool::OverlayPool;

/// Latency percentiles of a series of samples (nearest-rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LatencySummary {
    /// Number of samples.
    pub samples: usize,
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// Slowest sample.
    pub max: Duration,
}

impl LatencySummary {
    /// Summarizes `samples` (in any order).
    pub fn from_samples(samples: &[Duration]) -> Self {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let rank = |p: usize| -> Duration {
            if sorted.is_empty() {
                return Duration::ZERO;
            }
            // Nearest rank: the smallest sample with at least p% at or below it.
            let index = (p * sorted.len()).div_ceil(100).max(1) - 1;
            sorted[index.min(sorted.len() - 1)]
        };
        Self {
            samples: sorted.len(),
            p50: rank(50),
            p95: rank(95),
            max: sorted.last().copied().unwrap_or_default(),
        }
    }
}

/// Acquire latency from a warm pool and from an empty one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AcquireBench {
    /// Acquires served by a rename from the pool.
    pub hit: LatencySummary,
    /// Acquires that created their overlay on demand (qemu-img + rename).
    pub miss: LatencySummary,
}

/// Inputs of [`measure_acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquireBenchSetup {
    /// An existing base image.
    pub base: PathBuf,
    /// An empty directory for the pools and the acquired overlays; it must
    /// not be used by anything else during the run.
    pub scratch_dir: PathBuf,
    /// Acquires measured per mode.
    pub iterations: usize,
    /// Template for both pools (`pool_dir` and `target_per_base` are set
    /// by the bench).
    pub config: PoolConfig,
}

/// Measures `iterations` acquires from a warm pool (waiting for the refill
/// between two, so each one is a hit) and `iterations` from a pool with a
/// target of zero (each one creates its overlay). Acquired overlays are
/// deleted as it goes; both pools are stopped at the end.
///
/// # Errors
/// Whatever `OverlayPool::new` or `acquire` returns.
pub async fn measure_acquire(setup: &AcquireBenchSetup) -> Result<AcquireBench> {
    let hit = measure_mode(setup, "hit", setup.config.target_per_base.max(2)).await?;
    let miss = measure_mode(setup, "miss", 0).await?;
    Ok(AcquireBench { hit, miss })
}

async fn measure_mode(
    setup: &AcquireBenchSetup,
    mode: &str,
    target_per_base: usize,
) -> Result<LatencySummary> {
    let pool = OverlayPool::new(PoolConfig {
        pool_dir: setup.scratch_dir.join(format!("{mode}-pool")),
        target_per_base,
        ..setup.config.clone()
    })
    .await?;
    let result = async {
        pool.register_base(&setup.base).await?;
        let mut samples = Vec::with_capacity(setup.iterations);
        for i in 0..setup.iterations {
            if target_per_base > 0 {
                pool.wait_full(setup.config.create_timeout).await;
            }
            let dest = setup.scratch_dir.join(format!("{mode}-{i}.qcow2"));
            let start = Instant::now();
            let acquired = pool.acquire(&setup.base, &dest).await?;
            let elapsed = start.elapsed();
            if acquired.pool_hit == (target_per_base > 0) {
                samples.push(elapsed);
            }
            crate::qemu_img::remove_quietly(&dest).await;
        }
        Ok(LatencySummary::from_samples(&samples))
    }
    .await;
    pool.stop().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|v| Duration::from_millis(*v)).collect()
    }

    #[test]
    fn no_samples_summarize_to_zero() {
        assert_eq!(LatencySummary::from_samples(&[]), LatencySummary::default());
    }

    #[test]
    fn one_sample_is_every_percentile() {
        let summary = LatencySummary::from_samples(&ms(&[7]));
        assert_eq!(
            (summary.samples, summary.p50, summary.p95, summary.max),
            (
                1,
                Duration::from_millis(7),
                Duration::from_millis(7),
                Duration::from_millis(7)
            )
        );
    }

    #[test]
    fn percentiles_use_nearest_rank_on_unsorted_input() {
        let values: Vec<u64> = (1..=100).rev().collect();
        let summary = LatencySummary::from_samples(&ms(&values));
        assert_eq!(summary.p50, Duration::from_millis(50));
        assert_eq!(summary.p95, Duration::from_millis(95));
        assert_eq!(summary.max, Duration::from_millis(100));
    }

    #[test]
    fn p95_of_twenty_samples_is_the_nineteenth() {
        let values: Vec<u64> = (1..=20).collect();
        let summary = LatencySummary::from_samples(&ms(&values));
        assert_eq!(summary.p95, Duration::from_millis(19));
        assert_eq!(summary.p50, Duration::from_millis(10));
    }
}
