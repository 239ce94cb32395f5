//! Tenants' quotas: each over its limit is a 429 naming it, before any VM
//! starts; other tenants are not affected; places come back.

use super::{Harness, KEY_A, KEY_B};
use crate::quota::Quotas;
use axum::http::StatusCode;
use serde_json::json;

fn quotas(change: impl FnOnce(&mut Quotas)) -> Harness {
    let mut quotas = Quotas::default();
    change(&mut quotas);
    Harness::with_quotas(quotas)
}

#[tokio::test]
async fn memory_over_the_quota_is_429_memory_mib() {
    let h = quotas(|q| q.memory_mib = 256);
    let message = h
        .run(KEY_A, "1", json!({"memory_mib": 512}))
        .await
        .error(429, "quota_exceeded");
    assert!(message.contains("memory_mib"), "{message}");
    h.post(
        KEY_A,
        "/v1/sessions",
        &json!({"language": "python", "memory_mib": 512}),
    )
    .await
    .error(429, "quota_exceeded");
    assert_eq!(h.fakes.cold.acquired().len(), 0);
}

#[tokio::test]
async fn a_timeout_over_the_quota_is_429_timeout_s_on_runs_and_cells() {
    let h = quotas(|q| q.timeout_s = 10);
    let message = h
        .run(KEY_A, "1", json!({"timeout_s": 11}))
        .await
        .error(429, "quota_exceeded");
    assert!(message.contains("timeout_s"), "{message}");
    let id = h.session(KEY_A).await;
    h.post(
        KEY_A,
        &format!("/v1/sessions/{id}/exec"),
        &json!({"code": "1", "timeout_s": 11}),
    )
    .await
    .error(429, "quota_exceeded");
}

#[tokio::test]
async fn runs_over_the_concurrent_quota_are_429_and_the_place_comes_back() {
    let h = quotas(|q| q.concurrent_runs = 1);
    let hang = h.run(KEY_A, "hang", json!({"timeout_s": 0.5}));
    let refused = async {
        h.until("the first run holds its place", |h| {
            h.airlock.ledger().in_use("alice").0 == 1
        })
        .await;
        let refused = h.run(KEY_A, "1", json!({})).await;
        let other = h.run(KEY_B, "1", json!({})).await;
        (refused, other)
    };
    let (hung, (refused, other)) = tokio::join!(hang, refused);
    let message = refused.error(429, "quota_exceeded");
    assert!(message.contains("concurrent_runs"), "{message}");
    other.ok(StatusCode::OK);
    hung.ok(StatusCode::OK);
    assert_eq!(h.airlock.ledger().in_use("alice"), (0, 0));
    h.run(KEY_A, "1", json!({})).await.ok(StatusCode::OK);
}

#[tokio::test]
async fn sessions_over_the_live_quota_are_429_until_one_closes() {
    let h = quotas(|q| q.live_sessions = 1);
    let id = h.session(KEY_A).await;
    let message = h
        .post(KEY_A, "/v1/sessions", &json!({"language": "python"}))
        .await
        .error(429, "quota_exceeded");
    assert!(message.contains("live_sessions"), "{message}");
    h.session(KEY_B).await;
    h.delete(KEY_A, &format!("/v1/sessions/{id}")).await;
    h.session(KEY_A).await;
}

#[tokio::test]
async fn requests_over_the_rate_are_429_for_that_tenant_only() {
    let h = quotas(|q| q.requests_per_minute = 3);
    for _ in 0..3 {
        h.get(KEY_A, "/v1/sessions").await.ok(StatusCode::OK);
    }
    let message = h
        .get(KEY_A, "/v1/sessions")
        .await
        .error(429, "quota_exceeded");
    assert!(message.contains("requests_per_minute"), "{message}");
    h.get(KEY_B, "/v1/sessions").await.ok(StatusCode::OK);
    let denials = h.airlock.metrics().render();
    assert!(denials.contains("requests_per_minute"), "{denials}");
}

#[tokio::test]
async fn a_refused_run_gives_its_place_back() {
    let h = quotas(|q| q.concurrent_runs = 1);
    h.run(KEY_A, "die", json!({})).await.error(503, "vm_failed");
    h.run(KEY_A, "1", json!({})).await.ok(StatusCode::OK);
}
