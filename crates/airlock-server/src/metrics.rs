//! The server's Prometheus metrics (`GET /metrics`, text format): requests,
//! runs, sessions, VMs alive, boot/restore/exec latency histograms,
//! denials and errors by kind.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Labels of a request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route's pattern (`/v1/sessions/{id}`), not the raw path.
    pub route: String,
    /// The HTTP status.
    pub status: u16,
}

/// One label: what happened.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The outcome, the denial's reason or the error's kind.
    pub kind: String,
}

/// One label: a warm pool's shape (`python-512m-1c`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShapeLabel {
    /// The pool's shape.
    pub shape: String,
}

/// What the caches take on disk ([`Metrics::observe_caches`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheUsage {
    /// The memory templates, allocated bytes.
    pub templates_bytes: u64,
    /// The package layers, allocated bytes.
    pub layers_bytes: u64,
}

fn latency() -> Histogram {
    // 1 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric of the server.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// HTTP requests by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Runs by outcome (`ok`, `timed_out`, `error`).
    pub runs: Family<KindLabel, Counter>,
    /// Runs in progress.
    pub runs_in_flight: Gauge,
    /// Sessions created.
    pub sessions_created: Counter,
    /// Sessions alive now.
    pub sessions_live: Gauge,
    /// VMs this server holds now (runs in progress and live sessions).
    pub vms_live: Gauge,
    /// Cold boots: from QEMU started to the agent's first answer.
    pub boot_seconds: Histogram,
    /// Restores from a memory template, to the agent's first answer.
    pub restore_seconds: Histogram,
    /// Code execution (runs and session execs), as the host sees it.
    pub exec_seconds: Histogram,
    /// Whole runs, request to result.
    pub run_seconds: Histogram,
    /// Refused requests by reason (`unauthorized`, a quota's name,
    /// `draining`).
    pub denials: Family<KindLabel, Counter>,
    /// Failed requests by error kind.
    pub errors: Family<KindLabel, Counter>,
    /// VMs waiting paused in each warm pool.
    pub pool_idle: Family<ShapeLabel, Gauge>,
    /// Takes from each warm pool served by a waiting VM (since start).
    pub pool_taken_warm: Family<ShapeLabel, Gauge>,
    /// Takes that found the pool empty and restored on demand (since start).
    pub pool_taken_on_demand: Family<ShapeLabel, Gauge>,
    /// Takes from a warm pool: resume and reseed, to the agent ready.
    pub pool_take_seconds: Histogram,
    /// HTTP connections open now.
    pub connections_open: Gauge,
    /// Connections closed at their accept, by the cap they met
    /// (`max_connections`, `max_connections_per_address`), and failed
    /// accepts (`accept_error`).
    pub connections_refused: Family<KindLabel, Counter>,
    /// Connections closed by a deadline (`header_timeout`,
    /// `idle_timeout`, `send_timeout`) and request bodies cut by theirs
    /// (`request_body_timeout`).
    pub connections_closed: Family<KindLabel, Counter>,
    /// Event streams cut at a cap (`max_events`, `max_bytes`).
    pub streams_cut: Family<KindLabel, Counter>,
    /// Disk the caches take (`templates`, `layers`), allocated bytes.
    pub cache_bytes: Family<KindLabel, Gauge>,
    /// VM slots tenants hold now (`crate::fair`; set at each scrape).
    pub vm_slots_held: Gauge,
    /// Runs and sessions waiting for a VM slot now (set at each scrape).
    pub vm_slots_waiting: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("airlock");
        let requests = Family::<RequestLabels, Counter>::default();
        let runs = Family::<KindLabel, Counter>::default();
        let runs_in_flight = Gauge::default();
        let sessions_created = Counter::default();
        let sessions_live = Gauge::default();
        let vms_live = Gauge::default();
        let boot_seconds = latency();
        let restore_seconds = latency();
        let exec_seconds = latency();
        let run_seconds = latency();
        let denials = Family::<KindLabel, Counter>::default();
        let errors = Family::<KindLabel, Counter>::default();
        let pool_idle = Family::<ShapeLabel, Gauge>::default();
        let pool_taken_warm = Family::<ShapeLabel, Gauge>::default();
        let pool_taken_on_demand = Family::<ShapeLabel, Gauge>::default();
        let pool_take_seconds = latency();
        let connections_open = Gauge::default();
        let connections_refused = Family::<KindLabel, Counter>::default();
        let connections_closed = Family::<KindLabel, Counter>::default();
        let streams_cut = Family::<KindLabel, Counter>::default();
        let vm_slots_held = Gauge::default();
        let vm_slots_waiting = Gauge::default();
        registry.register(
            "vm_slots_held",
            "VM slots tenants hold (fair shares)",
            vm_slots_held.clone(),
        );
        registry.register(
            "vm_slots_waiting",
            "Runs and sessions waiting for a VM slot",
            vm_slots_waiting.clone(),
        );
        registry.register(
            "connections_open",
            "HTTP connections open",
            connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at accept, by the cap they met",
            connections_refused.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections closed by a deadline, by its kind",
            connections_closed.clone(),
        );
        registry.register(
            "streams_cut",
            "Event streams cut at a cap",
            streams_cut.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register("runs", "Runs by outcome", runs.clone());
        registry.register("runs_in_flight", "Runs in progress", runs_in_flight.clone());
        registry.register(
            "sessions_created",
            "Sessions created",
            sessions_created.clone(),
        );
        registry.register("sessions_live", "Sessions alive", sessions_live.clone());
        registry.register(
            "vms_live",
            "VMs held by this server (runs in progress and live sessions)",
            vms_live.clone(),
        );
        registry.register(
            "boot_seconds",
            "Cold boots, QEMU start to agent ready",
            boot_seconds.clone(),
        );
        registry.register(
            "restore_seconds",
            "Restores from a memory template, to agent ready",
            restore_seconds.clone(),
        );
        registry.register(
            "exec_seconds",
            "Code execution as the host sees it",
            exec_seconds.clone(),
        );
        registry.register("run_seconds", "Whole runs", run_seconds.clone());
        registry.register("denials", "Refused requests by reason", denials.clone());
        registry.register("errors", "Failed requests by kind", errors.clone());
        registry.register(
            "pool_idle",
            "VMs waiting paused in each warm pool",
            pool_idle.clone(),
        );
        registry.register(
            "pool_taken_warm",
            "Takes from a warm pool served by a waiting VM",
            pool_taken_warm.clone(),
        );
        registry.register(
            "pool_taken_on_demand",
            "Takes from an empty warm pool (restored on demand)",
            pool_taken_on_demand.clone(),
        );
        registry.register(
            "pool_take_seconds",
            "Takes from a warm pool, resume and reseed",
            pool_take_seconds.clone(),
        );
        let cache_bytes = Family::<KindLabel, Gauge>::default();
        registry.register(
            "cache_bytes",
            "Disk the memory templates and package layers take",
            cache_bytes.clone(),
        );
        Self {
            registry: Arc::new(registry),
            requests,
            runs,
            runs_in_flight,
            sessions_created,
            sessions_live,
            vms_live,
            boot_seconds,
            restore_seconds,
            exec_seconds,
            run_seconds,
            denials,
            errors,
            pool_idle,
            pool_taken_warm,
            pool_taken_on_demand,
            pool_take_seconds,
            connections_open,
            connections_refused,
            connections_closed,
            streams_cut,
            cache_bytes,
            vm_slots_held,
            vm_slots_waiting,
        }
    }

    /// Copies what the caches take into their gauges (before a scrape).
    pub fn observe_caches(&self, usage: &CacheUsage) {
        let as_gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for (kind, bytes) in [
            ("templates", usage.templates_bytes),
            ("layers", usage.layers_bytes),
        ] {
            self.cache_bytes
                .get_or_create(&KindLabel { kind: kind.into() })
                .set(as_gauge(bytes));
        }
    }

    /// Copies the fair shares' slots held and requests waiting into
    /// their gauges.
    pub fn observe_fair(&self, fair: &crate::fair::FairShare) {
        let (held, waiting) = fair.totals();
        self.vm_slots_held
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        self.vm_slots_waiting
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// Copies the warm pools' state into the pool gauges (before a scrape).
    pub fn observe_pools(&self, pools: &[airlock::WarmPool]) {
        let as_gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for pool in pools {
            let label = ShapeLabel {
                shape: pool.config().shape.to_string(),
            };
            let stats = pool.stats();
            self.pool_idle
                .get_or_create(&label)
                .set(as_gauge(stats.idle as u64));
            self.pool_taken_warm
                .get_or_create(&label)
                .set(as_gauge(stats.taken_warm));
            self.pool_taken_on_demand
                .get_or_create(&label)
                .set(as_gauge(stats.taken_on_demand));
        }
    }

    /// Counts one `kind` in a family.
    pub fn count(family: &Family<KindLabel, Counter>, kind: &str) {
        family
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Records a finished run's timings.
    pub fn record_run(&self, result: &airlock::RunResult) {
        let t = &result.timings;
        let secs = |ms: u64| ms as f64 / 1000.0;
        if t.from_warm_pool {
            self.pool_take_seconds.observe(secs(t.guest_ready_ms));
        } else if t.restore.is_some() {
            self.restore_seconds.observe(secs(t.guest_ready_ms));
        } else {
            self.boot_seconds.observe(secs(t.guest_ready_ms));
        }
        self.exec_seconds.observe(secs(t.exec_ms));
        self.run_seconds.observe(secs(t.total_ms));
        let outcome = if result.timed_out { "timed_out" } else { "ok" };
        Self::count(&self.runs, outcome);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_every_metric_with_the_prefix() {
        let m = Metrics::new();
        Metrics::count(&m.denials, "unauthorized");
        m.requests
            .get_or_create(&RequestLabels {
                route: "/v1/runs".into(),
                status: 200,
            })
            .inc();
        let text = m.render();
        for name in [
            "airlock_http_requests_total{route=\"/v1/runs\",status=\"200\"} 1",
            "airlock_denials_total{kind=\"unauthorized\"} 1",
            "airlock_vms_live 0",
            "airlock_exec_seconds_bucket",
            "airlock_sessions_live",
        ] {
            assert!(text.contains(name), "{name} in\n{text}");
        }
    }

    #[test]
    fn cache_gauges_follow_the_last_observation() {
        let m = Metrics::new();
        m.observe_caches(&CacheUsage {
            templates_bytes: 300,
            layers_bytes: 70,
        });
        m.observe_caches(&CacheUsage {
            templates_bytes: 200,
            layers_bytes: 70,
        });
        let text = m.render();
        for line in [
            "airlock_cache_bytes{kind=\"templates\"} 200",
            "airlock_cache_bytes{kind=\"layers\"} 70",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
