//! Keys and tenants: 401 without a valid bearer key, and one tenant never
//! sees another's session (404, exactly as an unknown id).

use super::{body, Harness, KEY_A, KEY_B, NO_KEY};
use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn a_run_without_a_key_is_401_unauthorized() {
    let h = Harness::new();
    let message = h
        .run(NO_KEY, "print(1)", json!({}))
        .await
        .error(401, "unauthorized");
    assert!(message.contains("Bearer"), "{message}");
    assert_eq!(h.fakes.cold.acquired().len(), 0, "no VM for a refusal");
}

#[tokio::test]
async fn an_unknown_key_is_401_unauthorized() {
    let h = Harness::new();
    h.run("airlock_nope", "print(1)", json!({}))
        .await
        .error(401, "unauthorized");
}

#[tokio::test]
async fn a_non_bearer_scheme_is_401_unauthorized() {
    let h = Harness::new();
    let request = Harness::request(
        Method::POST,
        "/v1/runs",
        NO_KEY,
        &[("authorization", "Basic eDp5")],
        body("python", "1", json!({})).to_string(),
    );
    h.send(request).await.error(401, "unauthorized");
}

#[tokio::test]
async fn the_session_routes_and_mcp_need_a_key_too() {
    let h = Harness::new();
    h.get(NO_KEY, "/v1/sessions")
        .await
        .error(401, "unauthorized");
    h.post(NO_KEY, "/mcp", &json!({}))
        .await
        .error(401, "unauthorized");
}

#[tokio::test]
async fn without_a_keys_file_requests_act_for_the_local_user() {
    let h = Harness::keyless();
    let id = h.session(NO_KEY).await;
    let listed = h.get(NO_KEY, "/v1/sessions").await.ok(StatusCode::OK);
    assert_eq!(listed["sessions"][0]["id"], id.as_str());
    assert_eq!(h.airlock.ledger().in_use(&crate::local_tenant()).1, 1);
}

#[tokio::test]
async fn a_run_acts_in_its_tenants_sandbox() {
    let h = Harness::new();
    h.run(KEY_B, "print(1)", json!({})).await.ok(StatusCode::OK);
    assert_eq!(h.fakes.cold.acquired()[0].tenant, "bob");
}

#[tokio::test]
async fn another_tenant_gets_404_for_every_route_of_a_session() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    let base = format!("/v1/sessions/{id}");
    let requests = [
        (Method::GET, base.clone(), Body::empty()),
        (
            Method::POST,
            format!("{base}/exec"),
            Body::from(r#"{"code": "1"}"#),
        ),
        (
            Method::POST,
            format!("{base}/packages"),
            Body::from(r#"{"packages": []}"#),
        ),
        (Method::GET, format!("{base}/files?dir=."), Body::empty()),
        (Method::GET, format!("{base}/files/a.txt"), Body::empty()),
        (Method::PUT, format!("{base}/files/a.txt"), Body::from("x")),
        (Method::DELETE, base.clone(), Body::empty()),
    ];
    for (method, path, request_body) in requests {
        let reply = h
            .send(Harness::request(
                method.clone(),
                &path,
                KEY_B,
                &[],
                request_body,
            ))
            .await;
        reply.error(404, "session_not_found");
    }
    h.get(KEY_A, &base).await.ok(StatusCode::OK);
}

#[tokio::test]
async fn another_tenants_sessions_are_not_listed() {
    let h = Harness::new();
    let a = h.session(KEY_A).await;
    let b = h.session(KEY_B).await;
    let listed = h.get(KEY_B, "/v1/sessions").await.ok(StatusCode::OK);
    let ids: Vec<&str> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(ids, [b.as_str()], "not {a}");
}

#[tokio::test]
async fn an_unknown_session_and_another_tenants_answer_the_same() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    let theirs = h.get(KEY_B, &format!("/v1/sessions/{id}")).await;
    let unknown = h.get(KEY_B, "/v1/sessions/nosuch").await;
    assert_eq!(theirs.status, unknown.status);
    assert_eq!(
        theirs.json()["error"]["kind"],
        unknown.json()["error"]["kind"]
    );
}
