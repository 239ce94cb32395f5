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
