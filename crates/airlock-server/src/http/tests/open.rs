//! The open routes (health, metrics, the OpenAPI document) and the
//! routes table.

use super::{Harness, KEY_A, NO_KEY};
use crate::http::openapi::{openapi, ROUTES};
use axum::http::{header, Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn health_answers_ok_and_the_version_without_a_key() {
    let h = Harness::new();
    let body = h.get(NO_KEY, "/v1/health").await.ok(StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn health_says_draining_once_the_server_drains() {
    let h = Harness::new();
    h.airlock.drain();
    let body = h.get(NO_KEY, "/v1/health").await.ok(StatusCode::OK);
    assert_eq!(body["status"], "draining");
}

#[tokio::test]
async fn the_openapi_route_serves_the_document_without_a_key() {
    let h = Harness::new();
    let body = h.get(NO_KEY, "/v1/openapi.json").await.ok(StatusCode::OK);
    assert_eq!(body, openapi());
    assert!(body["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1")));
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_count_requests_by_route() {
    let h = Harness::new();
    h.run(KEY_A, "print(1)", json!({})).await.ok(StatusCode::OK);
    let reply = h.get(NO_KEY, "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    let content_type = reply.headers[header::CONTENT_TYPE].to_str().unwrap();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = reply.text();
    for needle in [
        "airlock_vms_live",
        "airlock_runs_in_flight",
        "route=\"/v1/runs\"",
        "airlock_sessions_live",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let h = Harness::new();
    for (method, path) in ROUTES {
        let path = path.replace("{id}", "nosuch").replace("{path}", "a.txt");
        let method: Method = method.to_uppercase().parse().unwrap();
        let reply = h
            .send(Harness::request(
                method.clone(),
                &path,
                KEY_A,
                &[("content-type", "application/json")],
                "{}",
            ))
            .await;
        assert_ne!(
            reply.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        if reply.status == StatusCode::NOT_FOUND {
            assert_ne!(
                reply.json()["error"]["kind"],
                "not_found",
                "{method} {path}"
            );
        }
    }
}

fn cluster_node(name: &str, slots: usize) -> crate::config::ServerConfig {
    crate::config::ServerConfig {
        node_name: Some(name.into()),
        refuse_when_full: true,
        max_concurrent_vms: Some(slots),
        pools: Some(vec![]),
        ..crate::config::ServerConfig::default()
    }
}

#[tokio::test]
async fn a_nodes_name_is_in_its_session_ids_every_answer_and_its_health() {
    let h = Harness::with_config(cluster_node("node-b", 4));
    let id = h.session(KEY_A).await;
    assert!(id.starts_with("s-node-b-"), "{id}");
    let shown = h.get(KEY_A, &format!("/v1/sessions/{id}")).await;
    assert_eq!(shown.headers["x-airlock-node"], "node-b");
    let missing = h.get(KEY_A, "/v1/sessions/s-node-b-0000000000000000").await;
    assert_eq!(missing.headers["x-airlock-node"], "node-b");
    let health = h.get(NO_KEY, "/v1/health").await.ok(StatusCode::OK);
    assert_eq!(health["node"], "node-b");
}

#[tokio::test]
async fn readiness_is_200_with_free_slots_then_503_when_full_or_draining() {
    let h = Harness::with_config(cluster_node("n1", 2));
    let ready = h.get(NO_KEY, "/v1/health/ready").await.ok(StatusCode::OK);
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["free_slots"], 2);
    assert_eq!(ready["node"], "n1");

    h.session(KEY_A).await;
    h.session(super::KEY_B).await;
    let full = h.get(NO_KEY, "/v1/health/ready").await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(full.json()["free_slots"], 0);

    h.airlock.drain();
    let draining = h.get(NO_KEY, "/v1/health/ready").await;
    assert_eq!(draining.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(draining.json()["draining"], true);
}

#[tokio::test]
async fn a_full_node_refuses_new_work_at_once_with_503_and_retry_after() {
    let h = Harness::with_config(cluster_node("n1", 1));
    h.session(KEY_A).await;

    let started = std::time::Instant::now();
    let refused = h
        .post(super::KEY_B, "/v1/sessions", &json!({"language": "python"}))
        .await;

    let message = refused.error(503, "node_full");
    assert!(message.contains("n1"), "{message}");
    assert_eq!(refused.headers[header::RETRY_AFTER], "1");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let run = h.run(super::KEY_B, "print(1)", json!({})).await;
    run.error(503, "node_full");
}
