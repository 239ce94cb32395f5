//! The server's attack cases of one tenant against the host and the
//! other tenants (issue 22, "Tenancy" and "Expose"): binding the host's
//! ports, taking every vCPU or VM slot, install VMs larger than the
//! tenant's own, uploads without end, and a refusal hidden in a stream.
//! Each case names the limit that answers it (`docs/security.md`); all
//! run over fake VMs.

use super::{Harness, Mcp, KEY_A, KEY_B};
use crate::config::{ExposeConfig, ServerConfig, TenancyConfig, UploadLimits};
use crate::quota::Quotas;
use airlock::packages::InstallLimits;
use axum::http::{header, StatusCode};
use base64::Engine;
use serde_json::json;
use std::time::Duration;

/// A server with `change` applied to the default configuration.
fn server(change: impl FnOnce(&mut ServerConfig)) -> Harness {
    let mut config = ServerConfig::default();
    change(&mut config);
    Harness::with_config(config)
}

/// `slots` VM slots for tenants (no warm pool), fair shares of half,
/// a queue time of `queue_s`.
fn slots(config: &mut ServerConfig, slots: usize, queue_s: u64) {
    config.max_concurrent_vms = Some(slots);
    config.pools = Some(Vec::new());
    config.tenancy = TenancyConfig {
        share: 0.5,
        queue_timeout_s: queue_s,
    };
}

fn expose_enabled(max_per_vm: usize) -> ExposeConfig {
    ExposeConfig {
        enabled: true,
        address: "127.0.0.2".parse().expect("an address"),
        max_per_vm,
        fixed_ports: false,
    }
}

#[tokio::test]
async fn expose_is_refused_by_default_on_runs_sessions_and_mcp() {
    let h = Harness::new();
    let message = h
        .run(KEY_A, "1", json!({"network": {"expose": ["8080"]}}))
        .await
        .error(403, "expose_disabled");
    assert!(message.contains("network.expose"), "{message}");
    h.post(
        KEY_A,
        "/v1/sessions",
        &json!({"language": "python", "network": {"expose": ["5432:5432"]}}),
    )
    .await
    .error(403, "expose_disabled");
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    mcp.call_err(
        "run_code",
        json!({"language": "python", "code": "1", "network": {"expose": ["80"]}}),
        "expose_disabled",
    )
    .await;
    assert!(h.fakes.cold.acquired().is_empty(), "no VM started");
    assert_eq!(h.airlock.ledger().in_use("alice"), (0, 0));
}

#[tokio::test]
async fn a_fixed_host_port_outside_the_ephemeral_range_is_refused_when_enabled() {
    let h = server(|c| c.expose = expose_enabled(4));
    // A well-known port of the host (PostgreSQL's) is refused...
    let message = h
        .run(KEY_A, "1", json!({"network": {"expose": ["8080:5432"]}}))
        .await
        .error(400, "expose_refused");
    assert!(message.contains("5432"), "{message}");
    assert!(h.fakes.cold.acquired().is_empty());
    // ...a guest port alone is served on a host port the kernel picks,
    // on the operator's address.
    h.run(KEY_A, "1", json!({"network": {"expose": ["8080"]}}))
        .await
        .ok(StatusCode::OK);
    let booted = h.fakes.cold.acquired();
    assert_eq!(booted.len(), 1);
    assert_eq!(booted[0].network.exposes[0].host_port, None);
    assert_eq!(
        booted[0].network.expose_address,
        Some("127.0.0.2".parse().expect("an address"))
    );
}

#[tokio::test]
async fn more_exposed_ports_than_the_per_vm_cap_are_refused() {
    let h = server(|c| c.expose = expose_enabled(2));
    let message = h
        .run(
            KEY_A,
            "1",
            json!({"network": {"expose": ["8080", "8081", "8082"]}}),
        )
        .await
        .error(400, "expose_refused");
    assert!(message.contains("at most 2"), "{message}");
    h.run(KEY_A, "1", json!({"network": {"expose": ["8080", "8081"]}}))
        .await
        .ok(StatusCode::OK);
}

#[tokio::test]
async fn vcpus_over_the_tenants_quota_are_429_until_its_vms_end() {
    let h = server(|c| {
        c.quotas = Quotas {
            vcpus: 2,
            vcpus_per_vm: 2,
            ..Quotas::default()
        }
    });
    let created = h
        .post(
            KEY_A,
            "/v1/sessions",
            &json!({"language": "python", "cpus": 2}),
        )
        .await
        .ok(StatusCode::CREATED);
    let id = created["id"].as_str().expect("an id").to_owned();
    let message = h
        .run(KEY_A, "1", json!({"cpus": 1}))
        .await
        .error(429, "quota_exceeded");
    assert!(message.contains("quota vcpus"), "{message}");
    let message = h
        .run(KEY_B, "1", json!({"cpus": 3}))
        .await
        .error(429, "quota_exceeded");
    assert!(message.contains("vcpus_per_vm"), "{message}");
    h.run(KEY_B, "1", json!({"cpus": 2}))
        .await
        .ok(StatusCode::OK);
    h.delete(KEY_A, &format!("/v1/sessions/{id}")).await;
    assert_eq!(h.airlock.ledger().vcpus_in_use("alice"), 0);
    h.run(KEY_A, "1", json!({"cpus": 2}))
        .await
        .ok(StatusCode::OK);
}

#[tokio::test]
async fn a_greedy_tenant_cannot_starve_another_of_vm_slots() {
    // Two slots, half each while others wait.
    let h = server(|c| slots(c, 2, 5));
    let fair = h.airlock.fair_share();
    let first = h.session(KEY_A).await;
    let second = h.session(KEY_A).await;
    assert_eq!(fair.held_by("alice"), 2, "alone, alice may use both");
    let python = json!({"language": "python"});
    let alice_third = h.post(KEY_A, "/v1/sessions", &python);
    let rest = async {
        h.until("alice's third session waits", |h| {
            h.airlock.fair_share().waiting("alice") == 1
        })
        .await;
        let bob = h.post(KEY_B, "/v1/sessions", &python);
        let free_one = async {
            h.until("bob waits", |h| h.airlock.fair_share().waiting("bob") == 1)
                .await;
            h.delete(KEY_A, &format!("/v1/sessions/{first}")).await;
        };
        let (bob, ()) = tokio::join!(bob, free_one);
        // Bob asked after alice's third request, and is served first.
        bob.ok(StatusCode::CREATED);
        assert_eq!(h.airlock.fair_share().held_by("bob"), 1);
        assert_eq!(h.airlock.fair_share().waiting("alice"), 1);
        h.delete(KEY_A, &format!("/v1/sessions/{second}")).await;
    };
    let (third, ()) = tokio::join!(alice_third, rest);
    third.ok(StatusCode::CREATED);
    assert_eq!(fair.held_by("alice"), 1);
}

#[tokio::test]
async fn a_request_past_the_queue_time_is_429_with_retry_after() {
    let h = server(|c| slots(c, 1, 1));
    let _held = h.session(KEY_A).await;
    let started = std::time::Instant::now();
    let reply = h.run(KEY_B, "1", json!({})).await;
    let message = reply.error(429, "queue_timeout");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(message.contains("no VM slot"), "{message}");
    assert_eq!(
        reply
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(
        h.airlock.ledger().in_use("bob"),
        (0, 0),
        "the refused run gives its place back"
    );
    assert_eq!(h.airlock.fair_share().waiting("bob"), 0);
    let metrics = h.get(KEY_A, "/metrics").await.text();
    assert!(metrics.contains("airlock_vm_slots_held 1"), "{metrics}");
    assert!(metrics.contains("airlock_vm_slots_waiting 0"), "{metrics}");
    assert!(
        metrics.contains("kind=\"queue_timeout\""),
        "the refusal is counted: {metrics}"
    );
}

#[tokio::test]
async fn a_request_waiting_for_a_slot_is_503_at_once_when_the_server_drains() {
    let h = server(|c| slots(c, 1, 30));
    let _held = h.session(KEY_A).await;
    let started = std::time::Instant::now();
    let waiting = h.run(KEY_B, "1", json!({}));
    let drain = async {
        h.until("bob waits", |h| h.airlock.fair_share().waiting("bob") == 1)
            .await;
        h.airlock.drain();
    };
    let (reply, ()) = tokio::join!(waiting, drain);
    reply.error(503, "draining");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(h.airlock.fair_share().waiting("bob"), 0);
}

#[tokio::test]
async fn an_install_vm_takes_the_tenants_memory_and_timeout_or_is_refused() {
    let small = server(|c| {
        c.quotas = Quotas {
            memory_mib: 200,
            ..Quotas::default()
        }
    });
    let message = small
        .run(
            KEY_A,
            "1",
            json!({"memory_mib": 128, "packages": ["six==1.16.0"]}),
        )
        .await
        .error(429, "quota_exceeded");
    assert!(message.contains("install VM needs at least"), "{message}");
    assert!(small.fakes.cold.acquired().is_empty());

    let h = server(|c| {
        c.quotas = Quotas {
            memory_mib: 512,
            timeout_s: 100,
            ..Quotas::default()
        }
    });
    h.run(KEY_A, "1", json!({"packages": ["six==1.16.0"]}))
        .await
        .ok(StatusCode::OK);
    assert_eq!(
        h.fakes.packages.installs(),
        [InstallLimits {
            memory_mib: 512,
            timeout: Duration::from_secs(100),
        }]
    );
}

#[tokio::test]
async fn an_install_holds_its_runs_place_in_the_tenants_concurrency() {
    let h = server(|c| {
        c.quotas = Quotas {
            concurrent_runs: 1,
            ..Quotas::default()
        }
    });
    h.fakes.packages.hold_installs();
    let installing = h.run(KEY_A, "1", json!({"packages": ["six==1.16.0"]}));
    let during = async {
        h.until("the install runs", |h| {
            h.fakes.packages.installs_waiting() == 1
        })
        .await;
        let refused = h.run(KEY_A, "1", json!({})).await;
        h.fakes.packages.release_installs();
        refused
    };
    let (installed, refused) = tokio::join!(installing, during);
    let message = refused.error(429, "quota_exceeded");
    assert!(message.contains("concurrent_runs"), "{message}");
    installed.ok(StatusCode::OK);
    assert_eq!(h.airlock.ledger().in_use("alice"), (0, 0));
}

#[tokio::test]
async fn a_runs_files_over_the_byte_cap_are_413_and_a_stalled_upload_408() {
    let h = server(|c| {
        c.uploads = UploadLimits {
            max_bytes: 10,
            timeout_s: 1,
        }
    });
    let file = |path: &str, bytes: &[u8]| json!({"path": path, "content_b64": base64::engine::general_purpose::STANDARD.encode(bytes)});
    let message = h
        .run(
            KEY_A,
            "1",
            json!({"files": [file("a.txt", b"123456"), file("b.txt", b"12345")]}),
        )
        .await
        .error(413, "uploads_too_large");
    assert!(message.contains("11 bytes"), "{message}");
    assert!(h.fakes.cold.acquired().is_empty());
    h.run(KEY_A, "1", json!({"files": [file("a.txt", b"1234567890")]}))
        .await
        .ok(StatusCode::OK);
    // A guest that never acknowledges a write holds its VM no longer
    // than the uploads' deadline.
    let started = std::time::Instant::now();
    let message = h
        .run(KEY_A, "1", json!({"files": [file("hang.txt", b"x")]}))
        .await
        .error(408, "upload_timeout");
    assert!(started.elapsed() < Duration::from_secs(5), "{message}");
    assert_eq!(h.fakes.cold.live(), 0, "its VM is destroyed");
    assert_eq!(h.airlock.ledger().in_use("alice"), (0, 0));
}

#[tokio::test]
async fn a_streamed_exec_refused_by_quota_is_a_plain_json_error() {
    let h = server(|c| {
        c.quotas = Quotas {
            timeout_s: 10,
            ..Quotas::default()
        }
    });
    let id = h.session(KEY_A).await;
    let reply = h
        .post_events(
            KEY_A,
            &format!("/v1/sessions/{id}/exec"),
            &json!({"code": "1", "timeout_s": 11}),
        )
        .await;
    let content_type = reply
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let message = reply.error(429, "quota_exceeded");
    assert!(message.contains("timeout_s"), "{message}");
    // Within the quota the same request streams.
    let events = h
        .post_events(
            KEY_A,
            &format!("/v1/sessions/{id}/exec"),
            &json!({"code": "1", "timeout_s": 10}),
        )
        .await
        .events();
    assert_eq!(events.last().map(|(name, _)| name.as_str()), Some("done"));
}
