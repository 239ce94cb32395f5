//! Tenants' quotas and what each tenant uses now: concurrent runs, live
//! sessions, memory and vCPUs per VM, vCPUs of all its VMs together,
//! longest timeout, requests per minute.
//!
//! The checks are pure ([`Quotas::check_vm`], [`TokenBucket::try_take`]);
//! [`Ledger`] holds the counts behind a mutex and hands out guards that
//! give a run's or a session's place back when dropped, so a place is
//! never leaked by an early return or a dropped request.

use crate::error::{Result, ServerError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A tenant's limits (a `[quotas]` table sets only what it names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Runs at once (more get 429).
    pub concurrent_runs: u32,
    /// Sessions alive at once.
    pub live_sessions: u32,
    /// Largest guest memory of one VM, in MiB.
    pub memory_mib: u32,
    /// Longest timeout of one run or exec, in seconds.
    pub timeout_s: u64,
    /// Requests per minute (a token bucket of this size, refilled evenly).
    pub requests_per_minute: u32,
    /// vCPUs of all the tenant's running VMs together (runs and
    /// sessions); a VM that would pass it gets 429.
    pub vcpus: u32,
    /// Largest vCPU count of one VM.
    pub vcpus_per_vm: u32,
    /// Largest workspace disk of one VM, in MiB (`disk_mib`; the host
    /// stores only what the guest writes, up to this).
    pub disk_mib: u32,
    /// What the tenant's paused sessions may take on disk together, in
    /// MiB (memory and disk saved); a pause past it gets 429 and the
    /// session runs on.
    pub paused_mib: u32,
    /// How long a paused session is kept before it is deleted, in
    /// seconds (default 7 days).
    pub paused_ttl_s: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            concurrent_runs: 4,
            live_sessions: 4,
            memory_mib: 2048,
            timeout_s: 300,
            requests_per_minute: 600,
            vcpus: 8,
            vcpus_per_vm: 4,
            disk_mib: 4096,
            paused_mib: 8192,
            paused_ttl_s: 7 * 24 * 3600,
        }
    }
}

/// Per-key overrides of the server's default quotas (the keys file's
/// `[keys.quotas]` table); unset fields take the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaOverrides {
    /// See [`Quotas::concurrent_runs`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrent_runs: Option<u32>,
    /// See [`Quotas::live_sessions`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live_sessions: Option<u32>,
    /// See [`Quotas::memory_mib`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// See [`Quotas::timeout_s`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// See [`Quotas::requests_per_minute`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// See [`Quotas::vcpus`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus: Option<u32>,
    /// See [`Quotas::vcpus_per_vm`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpus_per_vm: Option<u32>,
    /// See [`Quotas::disk_mib`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_mib: Option<u32>,
    /// See [`Quotas::paused_mib`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_mib: Option<u32>,
    /// See [`Quotas::paused_ttl_s`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused_ttl_s: Option<u64>,
}

impl QuotaOverrides {
    /// The quotas: these overrides over `defaults`.
    pub fn over(&self, defaults: Quotas) -> Quotas {
        Quotas {
            concurrent_runs: self.concurrent_runs.unwrap_or(defaults.concurrent_runs),
            live_sessions: self.live_sessions.unwrap_or(defaults.live_sessions),
            memory_mib: self.memory_mib.unwrap_or(defaults.memory_mib),
            timeout_s: self.timeout_s.unwrap_or(defaults.timeout_s),
            requests_per_minute: self
                .requests_per_minute
                .unwrap_or(defaults.requests_per_minute),
            vcpus: self.vcpus.unwrap_or(defaults.vcpus),
            vcpus_per_vm: self.vcpus_per_vm.unwrap_or(defaults.vcpus_per_vm),
            disk_mib: self.disk_mib.unwrap_or(defaults.disk_mib),
            paused_mib: self.paused_mib.unwrap_or(defaults.paused_mib),
            paused_ttl_s: self.paused_ttl_s.unwrap_or(defaults.paused_ttl_s),
        }
    }
}

impl Quotas {
    /// How a pause of the tenant's session is bounded: its paused
    /// sessions' storage quota and their expiry.
    pub fn pause_options(&self) -> airlock::PauseOptions {
        airlock::PauseOptions {
            ttl: std::time::Duration::from_secs(self.paused_ttl_s),
            quota_bytes: Some(u64::from(self.paused_mib) << 20),
        }
    }

    /// Checks one VM's memory and vCPUs, and one run's (or exec's)
    /// timeout, against the limits.
    ///
    /// # Errors
    /// [`ServerError::Quota`] naming the quota.
    pub fn check_vm(
        &self,
        tenant: &str,
        memory_mib: u32,
        vcpus: u32,
        timeout: Duration,
    ) -> Result<()> {
        if memory_mib > self.memory_mib {
            return Err(quota(
                tenant,
                "memory_mib",
                format!("{memory_mib} MiB asked, at most {} MiB", self.memory_mib),
            ));
        }
        if vcpus > self.vcpus_per_vm.min(self.vcpus) {
            return Err(quota(
                tenant,
                "vcpus_per_vm",
                format!(
                    "{vcpus} vCPUs asked, at most {} per VM",
                    self.vcpus_per_vm.min(self.vcpus)
                ),
            ));
        }
        self.check_timeout(tenant, timeout)
    }

    /// Checks one VM's workspace disk against [`Quotas::disk_mib`].
    ///
    /// # Errors
    /// [`ServerError::Quota`] for `disk_mib`.
    pub fn check_disk(&self, tenant: &str, disk_mib: u32) -> Result<()> {
        if disk_mib > self.disk_mib {
            return Err(quota(
                tenant,
                "disk_mib",
                format!("{disk_mib} MiB asked, at most {} MiB", self.disk_mib),
            ));
        }
        Ok(())
    }

    /// Checks a timeout against [`Quotas::timeout_s`].
    ///
    /// # Errors
    /// [`ServerError::Quota`] for `timeout_s`.
    pub fn check_timeout(&self, tenant: &str, timeout: Duration) -> Result<()> {
        if timeout > Duration::from_secs(self.timeout_s) {
            return Err(quota(
                tenant,
                "timeout_s",
                format!(
                    "{:.1} s asked, at most {} s",
                    timeout.as_secs_f64(),
                    self.timeout_s
                ),
            ));
        }
        Ok(())
    }
}

fn quota(tenant: &str, quota: &'static str, message: String) -> ServerError {
    ServerError::Quota {
        tenant: tenant.to_owned(),
        quota,
        message,
    }
}

/// A token bucket: `capacity` tokens, refilled at `capacity` per minute.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `capacity` at `now`.
    pub fn full(capacity: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(capacity),
            last: now,
        }
    }

    /// Takes a token at `now` if one is left (after refilling for the
    /// time since the last call); `capacity` may change between calls.
    pub fn try_take(&mut self, capacity: u32, now: Instant) -> bool {
        let capacity = f64::from(capacity);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * capacity / 60.0).min(capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What one tenant uses now.
#[derive(Debug)]
struct Usage {
    runs: u32,
    sessions: u32,
    /// vCPUs of its runs' and sessions' VMs.
    vcpus: u32,
    bucket: TokenBucket,
}

/// What every tenant uses now, and the guards that count it.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    tenants: Arc<Mutex<HashMap<String, Usage>>>,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Usage>> {
        // A panic while holding the lock leaves plain counters behind:
        // still usable.
        self.tenants
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn usage<'a>(
        map: &'a mut HashMap<String, Usage>,
        tenant: &str,
        quotas: &Quotas,
    ) -> &'a mut Usage {
        map.entry(tenant.to_owned()).or_insert_with(|| Usage {
            runs: 0,
            sessions: 0,
            vcpus: 0,
            bucket: TokenBucket::full(quotas.requests_per_minute, Instant::now()),
        })
    }

    /// Counts one request against the tenant's requests per minute.
    ///
    /// # Errors
    /// [`ServerError::Quota`] for `requests_per_minute`.
    pub fn admit_request(&self, tenant: &str, quotas: &Quotas) -> Result<()> {
        let mut map = self.lock();
        let usage = Self::usage(&mut map, tenant, quotas);
        if usage
            .bucket
            .try_take(quotas.requests_per_minute, Instant::now())
        {
            Ok(())
        } else {
            Err(quota(
                tenant,
                "requests_per_minute",
                format!("more than {} requests a minute", quotas.requests_per_minute),
            ))
        }
    }

    /// Takes one of the tenant's concurrent-run places, for a VM of
    /// `vcpus`.
    ///
    /// # Errors
    /// [`ServerError::Quota`] for `concurrent_runs` when all are taken,
    /// for `vcpus` when the tenant's VMs would hold more.
    pub fn start_run(&self, tenant: &str, quotas: &Quotas, vcpus: u32) -> Result<Place> {
        self.take(tenant, quotas, PlaceKind::Run, vcpus)
    }

    /// Takes one of the tenant's live-session places, for a VM of
    /// `vcpus`.
    ///
    /// # Errors
    /// [`ServerError::Quota`] for `live_sessions` when all are taken, for
    /// `vcpus` when the tenant's VMs would hold more.
    pub fn start_session(&self, tenant: &str, quotas: &Quotas, vcpus: u32) -> Result<Place> {
        self.take(tenant, quotas, PlaceKind::Session, vcpus)
    }

    fn take(&self, tenant: &str, quotas: &Quotas, kind: PlaceKind, vcpus: u32) -> Result<Place> {
        let mut map = self.lock();
        let usage = Self::usage(&mut map, tenant, quotas);
        let (count, limit, name, what) = match kind {
            PlaceKind::Run => (
                &mut usage.runs,
                quotas.concurrent_runs,
                "concurrent_runs",
                "runs already running",
            ),
            PlaceKind::Session => (
                &mut usage.sessions,
                quotas.live_sessions,
                "live_sessions",
                "sessions already open",
            ),
        };
        if *count >= limit {
            return Err(quota(tenant, name, format!("{count} {what}")));
        }
        if usage.vcpus.saturating_add(vcpus) > quotas.vcpus {
            return Err(quota(
                tenant,
                "vcpus",
                format!(
                    "{} vCPUs held by running VMs, {vcpus} more asked, at most {} in all",
                    usage.vcpus, quotas.vcpus
                ),
            ));
        }
        match kind {
            PlaceKind::Run => usage.runs += 1,
            PlaceKind::Session => usage.sessions += 1,
        }
        usage.vcpus += vcpus;
        Ok(Place {
            ledger: self.clone(),
            tenant: tenant.to_owned(),
            kind,
            vcpus,
            slot: None,
        })
    }

    /// The vCPUs the tenant's runs and sessions hold now.
    pub fn vcpus_in_use(&self, tenant: &str) -> u32 {
        self.lock().get(tenant).map_or(0, |u| u.vcpus)
    }

    /// The tenant's (runs, sessions) now.
    pub fn in_use(&self, tenant: &str) -> (u32, u32) {
        self.lock()
            .get(tenant)
            .map_or((0, 0), |u| (u.runs, u.sessions))
    }
}

/// What a [`Place`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceKind {
    /// A run (counted in `concurrent_runs`).
    Run,
    /// A session (counted in `live_sessions`).
    Session,
}

/// A run's or a session's place in its tenant's quota (its count and its
/// VM's vCPUs), with its VM slot once one is given, all given back on
/// drop.
#[derive(Debug)]
pub struct Place {
    ledger: Ledger,
    tenant: String,
    kind: PlaceKind,
    vcpus: u32,
    slot: Option<crate::fair::Slot>,
}

impl Place {
    /// This place holding `slot` too (given back with it).
    pub fn with_slot(mut self, slot: crate::fair::Slot) -> Self {
        self.slot = Some(slot);
        self
    }

    /// Holds `vcpus` more for this place's VM, within the tenant's
    /// `vcpus` quota (given back with the place). Taken once the VM has
    /// its slot: requests waiting in line hold no vCPUs, so the quota
    /// counts the VMs that run.
    ///
    /// # Errors
    /// [`ServerError::Quota`] for `vcpus` when the tenant's running VMs
    /// would hold more.
    pub fn hold_vcpus(&mut self, quotas: &Quotas, vcpus: u32) -> Result<()> {
        let mut map = self.ledger.lock();
        let usage = Ledger::usage(&mut map, &self.tenant, quotas);
        if usage.vcpus.saturating_add(vcpus) > quotas.vcpus {
            return Err(quota(
                &self.tenant,
                "vcpus",
                format!(
                    "{} vCPUs held by running VMs, {vcpus} more asked, at most {} in all",
                    usage.vcpus, quotas.vcpus
                ),
            ));
        }
        usage.vcpus += vcpus;
        self.vcpus += vcpus;
        Ok(())
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        {
            let mut map = self.ledger.lock();
            if let Some(usage) = map.get_mut(&self.tenant) {
                match self.kind {
                    PlaceKind::Run => usage.runs = usage.runs.saturating_sub(1),
                    PlaceKind::Session => usage.sessions = usage.sessions.saturating_sub(1),
                }
                usage.vcpus = usage.vcpus.saturating_sub(self.vcpus);
            }
        }
        // The slot after the counts: a waiter it wakes sees them free.
        drop(self.slot.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_over_the_quota_is_refused_and_a_key_may_raise_it() {
        let q = Quotas::default();
        q.check_disk("t", 4096).unwrap();
        match q.check_disk("t", 4097) {
            Err(ServerError::Quota { quota, .. }) => assert_eq!(quota, "disk_mib"),
            other => panic!("{other:?}"),
        }
        let raised = QuotaOverrides {
            disk_mib: Some(8192),
            ..QuotaOverrides::default()
        }
        .over(q);
        raised.check_disk("t", 8192).unwrap();
    }

    #[test]
    fn vcpus_are_held_from_the_slot_on_and_given_back_with_the_place() {
        let ledger = Ledger::default();
        let quotas = Quotas {
            vcpus: 8,
            ..Quotas::default()
        };
        // Places waiting for a slot hold no vCPUs.
        let mut first = ledger.start_run("t", &quotas, 0).unwrap();
        let mut second = ledger.start_run("t", &quotas, 0).unwrap();
        assert_eq!(ledger.vcpus_in_use("t"), 0);
        first.hold_vcpus(&quotas, 6).unwrap();
        let refused = second.hold_vcpus(&quotas, 4).unwrap_err().to_string();
        assert!(refused.contains("vcpus"), "{refused}");
        assert_eq!(ledger.vcpus_in_use("t"), 6);
        drop(first);
        assert_eq!(ledger.vcpus_in_use("t"), 0);
        second.hold_vcpus(&quotas, 4).unwrap();
        drop(second);
        assert_eq!(ledger.vcpus_in_use("t"), 0);
    }

    #[test]
    fn overrides_replace_only_the_fields_they_set() {
        let o = QuotaOverrides {
            concurrent_runs: Some(1),
            ..QuotaOverrides::default()
        };
        let q = o.over(Quotas::default());
        assert_eq!(q.concurrent_runs, 1);
        assert_eq!(q.live_sessions, Quotas::default().live_sessions);
    }

    #[test]
    fn memory_and_timeout_over_the_limits_name_their_quota() {
        let q = Quotas {
            memory_mib: 256,
            timeout_s: 10,
            ..Quotas::default()
        };
        q.check_vm("t", 256, 1, Duration::from_secs(10)).unwrap();
        match q.check_vm("t", 512, 1, Duration::from_secs(1)) {
            Err(ServerError::Quota { quota, .. }) => assert_eq!(quota, "memory_mib"),
            other => panic!("{other:?}"),
        }
        match q.check_vm("t", 128, 1, Duration::from_millis(10_001)) {
            Err(ServerError::Quota { quota, .. }) => assert_eq!(quota, "timeout_s"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bucket_empties_then_refills_with_time() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(2, t0);
        assert!(bucket.try_take(2, t0));
        assert!(bucket.try_take(2, t0));
        assert!(!bucket.try_take(2, t0));
        // 2 a minute: one token every 30 s.
        assert!(!bucket.try_take(2, t0 + Duration::from_secs(29)));
        assert!(bucket.try_take(2, t0 + Duration::from_secs(31)));
    }

    #[test]
    fn a_bucket_never_holds_more_than_its_capacity() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::full(1, t0);
        let later = t0 + Duration::from_secs(3600);
        assert!(bucket.try_take(1, later));
        assert!(!bucket.try_take(1, later));
    }

    #[test]
    fn run_places_are_counted_per_tenant_and_given_back_on_drop() {
        let ledger = Ledger::default();
        let q = Quotas {
            concurrent_runs: 1,
            ..Quotas::default()
        };
        let a = ledger.start_run("a", &q, 1).unwrap();
        assert!(matches!(
            ledger.start_run("a", &q, 1),
            Err(ServerError::Quota {
                quota: "concurrent_runs",
                ..
            })
        ));
        let _b = ledger
            .start_run("b", &q, 1)
            .expect("another tenant is not affected");
        drop(a);
        assert_eq!(ledger.in_use("a"), (0, 0));
        ledger.start_run("a", &q, 1).unwrap();
    }

    #[test]
    fn session_places_are_capped_by_live_sessions() {
        let ledger = Ledger::default();
        let q = Quotas {
            live_sessions: 2,
            ..Quotas::default()
        };
        let _one = ledger.start_session("a", &q, 1).unwrap();
        let _two = ledger.start_session("a", &q, 1).unwrap();
        assert!(ledger.start_session("a", &q, 1).is_err());
        assert_eq!(ledger.in_use("a"), (0, 2));
    }

    #[test]
    fn vcpus_are_capped_per_vm_and_in_all_and_given_back_on_drop() {
        let ledger = Ledger::default();
        let q = Quotas {
            vcpus: 4,
            vcpus_per_vm: 2,
            ..Quotas::default()
        };
        match q.check_vm("t", 256, 3, Duration::from_secs(1)) {
            Err(ServerError::Quota { quota, .. }) => assert_eq!(quota, "vcpus_per_vm"),
            other => panic!("{other:?}"),
        }
        let run = ledger.start_run("a", &q, 2).unwrap();
        let session = ledger.start_session("a", &q, 2).unwrap();
        assert_eq!(ledger.vcpus_in_use("a"), 4);
        match ledger.start_run("a", &q, 1) {
            Err(ServerError::Quota { quota, .. }) => assert_eq!(quota, "vcpus"),
            other => panic!("{other:?}"),
        }
        assert_eq!(ledger.in_use("a"), (1, 1), "a refused place takes nothing");
        ledger
            .start_run("b", &q, 2)
            .expect("another tenant has its own vCPUs");
        drop(run);
        assert_eq!(ledger.vcpus_in_use("a"), 2);
        let _again = ledger.start_run("a", &q, 2).unwrap();
        drop(session);
        assert_eq!(ledger.vcpus_in_use("a"), 2);
    }

    #[test]
    fn a_quotas_table_sets_only_what_it_names() {
        let q: Quotas = toml::from_str("vcpus = 2\n").unwrap();
        assert_eq!(q.vcpus, 2);
        assert_eq!(q.memory_mib, Quotas::default().memory_mib);
    }

    #[test]
    fn requests_over_the_rate_are_refused() {
        let ledger = Ledger::default();
        let q = Quotas {
            requests_per_minute: 3,
            ..Quotas::default()
        };
        for _ in 0..3 {
            ledger.admit_request("a", &q).unwrap();
        }
        assert!(matches!(
            ledger.admit_request("a", &q),
            Err(ServerError::Quota {
                quota: "requests_per_minute",
                ..
            })
        ));
        ledger.admit_request("b", &q).unwrap();
    }
}
