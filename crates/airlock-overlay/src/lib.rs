//! Pools of ready qcow2 overlays over Airlock's read-only base images.
//!
//! A VM never writes to its base image: it boots from a qcow2 overlay backed
//! by it. Creating an overlay costs a `qemu-img` run (about 8 ms here);
//! [`OverlayPool`] creates them ahead of time in a pool directory, so that
//! [`OverlayPool::acquire`] is a rename into the VM's work dir (well under a
//! millisecond). When a pool is empty, `acquire` creates one on demand and
//! says so (`Acquired::pool_hit == false`). A background task refills every
//! pool to [`PoolConfig::target_per_base`], at most
//! [`PoolConfig::max_concurrent_creates`] creations at a time.
//!
//! Only the first overlay of a base version runs `qemu-img`: a qcow2
//! header holds no id and no time, so every overlay of one base version
//! and one set of options is the same file, and the pool keeps the first
//! one's bytes (a *seed*, 192 KiB) to write the next ones from, on demand
//! and in the background alike (a write of 192 KiB, against about 7 ms of
//! CPU for a `qemu-img` process). A changed base is a new version: its
//! first overlay runs `qemu-img` again.
//!
//! Safety rules it keeps:
//! - an overlay is created under a temp name (`.tmp-<base-id>-<n>.qcow2`) and
//!   renamed to its ready name (`<base-id>-<n>.qcow2`) only once qemu-img
//!   succeeded or its seed was written whole, so a half-made overlay is
//!   never handed out;
//! - a base image is identified by device, inode, size and mtime; when that
//!   changes, its overlays are deleted (retired), never handed out;
//! - the backing path written into each overlay is absolute and its format is
//!   given explicitly (`-F`), so qemu never probes it;
//! - the pool directory is locked by one pool at a time, swept of leftovers
//!   at start (a crashed process's overlays and temp files) and emptied by
//!   [`OverlayPool::stop`]; files with names it does not own are never touched;
//! - it must be on the VM work dirs' filesystem (a rename cannot cross
//!   filesystems): set [`PoolConfig::work_root`] to have this checked at start.
//!
//! It does not choose where VMs live, boot anything, or delete overlays once
//! handed out: the VM's work dir owns them.
//!
//! # Place in the layers
//! A leaf crate under the orchestrator (`airlock`), which takes one overlay
//! per VM. Of Airlock it depends only on `airlock-sys-util` (back-off,
//! deadline runs).
//!
//! # Overlay options
//! - `cluster_size=64k`: qemu's default and the base images'; larger
//!   clusters make each first write copy more from the base, smaller ones
//!   make the L2 tables bigger.
//! - `lazy_refcounts=on`: refcount updates are deferred, so the guest's
//!   first writes cost fewer metadata writes; the repair this needs after a
//!   host crash never matters for a throw-away overlay.
//! - `extended_l2` off by default: it halves copy-on-write for small writes,
//!   but guest roots are read-only (writes go to tmpfs), creation is about
//!   1.5 ms slower and the L2 tables twice as large. Turn it on with
//!   `PoolConfig::extended_l2` (and 128 KiB clusters) for write-heavy images.
//!
//! # qemu-img or qemu-storage-daemon
//! Measured on the 2-core development host (QEMU 7.2, 50 overlays on a
//! 16 MiB base; `tests/create_backends.rs` repeats it):
//!
//! | creation                               | quiet host p50 / p95 | busy host p50 / p95 |
//! |----------------------------------------|----------------------|---------------------|
//! | `qemu-img create` (a process each)      | 7.9 / 10.4 ms        | 7-20 / 11-37 ms     |
//! | `qemu-storage-daemon` over QMP          | 5.9 / 7.4 ms         | 4-20 / 10-30 ms     |
//!
//! ("busy": load average 2-6 from other builds on the same 2 cores; the
//! daemon also needs 5-17 ms to start.) The daemon saves a
//! few milliseconds per creation, but creation is off the critical path once
//! the pool is warm, and the daemon costs a supervised long-lived process, a
//! QMP client, job bookkeeping (create file, add node, create qcow2, delete
//! node, dismiss jobs) and it does not open the base, so it would not catch a
//! broken base image. This crate uses `qemu-img`.
//!
//! Acquire latency (`measure_acquire`, release build, 50 each): a pool hit
//! takes 40-75 us p50 and 0.09-0.23 ms p95 on a quiet host (one
//! `spawn_blocking` hop doing stat + rename); under heavy CPU contention its
//! p95 rose to 0.5-2.9 ms (thread wake-up latency). A miss costs a `qemu-img`
//! run the first time (6-9 ms p50 quiet, up to about 20 ms busy), then a
//! write from the seed.
//!
//! # Example
//! ```no_run
//! use airlock_overlay::{OverlayPool, PoolConfig};
//!
//! # async fn demo() -> Result<(), airlock_overlay::OverlayError> {
//! let pool = OverlayPool::new(PoolConfig {
//!     pool_dir: "/var/lib/airlock/overlays".into(),
//!     work_root: Some("/var/lib/airlock/vms".into()),
//!     ..PoolConfig::default()
//! })
//! .await?;
//! pool.register_base("/var/lib/airlock/images/python.qcow2").await?;
//!
//! let acquired = pool
//!     .acquire(
//!         "/var/lib/airlock/images/python.qcow2",
//!         "/var/lib/airlock/vms/vm-1/root.qcow2",
//!     )
//!     .await?;
//! assert!(acquired.path.ends_with("root.qcow2"));
//! if !acquired.pool_hit {
//!     tracing::info!(elapsed = ?acquired.elapsed, "overlay pool was empty");
//! }
//!
//! pool.stop().await; // deletes what is still pooled
//! # Ok(())
//! # }
//! ```

mod bench;
mod config;
mod error;
mod naming;
mod pool;
mod pool_dir;
mod pool_state;
mod qemu_img;
mod refill;
mod refill_plan;
mod sweep;

pub use bench::{measure_acquire, AcquireBench, AcquireBenchSetup, LatencySummary};
pub use config::{
    BaseFormat, PoolConfig, MAX_CLUSTER_SIZE_BYTES, MAX_CONCURRENT_CREATES, MAX_TARGET_PER_BASE,
    MIN_CLUSTER_SIZE_BYTES, MIN_EXTENDED_L2_CLUSTER_SIZE_BYTES,
};
pub use error::{OverlayError, Result};
pub use naming::BaseId;
pub use pool::{Acquired, BaseStats, OverlayPool, PoolStats, StopReport};
pub use qemu_img::{read_seed, write_from_seed, Seed, MAX_SEED_BYTES};
