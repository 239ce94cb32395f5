//! Every error status and kind docs/api.md lists, each from a request
//! that earns it, answered as the API's error JSON.

use super::{body, Harness, Reply, KEY_A};
use crate::config::ServerConfig;
use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn malformed_json_is_400_invalid_input() {
    let h = Harness::new();
    let request = Harness::request(Method::POST, "/v1/runs", KEY_A, &[], r#"{"language": "#);
    let message = h.send(request).await.error(400, "invalid_input");
    assert!(message.contains("malformed JSON"), "{message}");
}

#[tokio::test]
async fn an_unknown_field_is_400_and_named() {
    let h = Harness::new();
    let message = h
        .run(KEY_A, "1", json!({"bogus": 1}))
        .await
        .error(400, "invalid_input");
    assert!(message.contains("`bogus`"), "{message}");
    assert!(
        message.contains("`memory_mib`"),
        "the accepted names: {message}"
    );
}

#[tokio::test]
async fn an_unknown_field_inside_network_is_400() {
    let h = Harness::new();
    let message = h
        .run(KEY_A, "1", json!({"network": {"allow": ["x.org"]}}))
        .await
        .error(400, "invalid_input");
    assert!(message.contains("`network.allow`"), "{message}");
}

#[tokio::test]
async fn an_unknown_session_field_is_400() {
    let h = Harness::new();
    h.post(
        KEY_A,
        "/v1/sessions",
        &json!({"language": "python", "idle_timeout": 5}),
    )
    .await
    .error(400, "invalid_input");
}

#[tokio::test]
async fn a_bad_language_is_400() {
    let h = Harness::new();
    h.post(KEY_A, "/v1/runs", &body("cobol", "1", json!({})))
        .await
        .error(400, "invalid_input");
}

#[tokio::test]
async fn a_wrong_type_is_400() {
    let h = Harness::new();
    h.run(KEY_A, "1", json!({"memory_mib": "lots"}))
        .await
        .error(400, "invalid_input");
}

#[tokio::test]
async fn out_of_range_options_are_the_librarys_400_on_runs_and_sessions() {
    let h = Harness::new();
    for extra in [
        json!({"memory_mib": 64}),
        json!({"cpus": 0}),
        json!({"cpus": 99}),
    ] {
        h.run(KEY_A, "1", extra.clone())
            .await
            .error(400, "invalid_input");
        let mut session = json!({"language": "python"});
        session
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        h.post(KEY_A, "/v1/sessions", &session)
            .await
            .error(400, "invalid_input");
    }
    assert_eq!(h.fakes.cold.acquired().len(), 0);
}

#[tokio::test]
async fn a_bad_domain_an_unpinned_package_and_a_bad_path_are_400() {
    let h = Harness::new();
    for extra in [
        json!({"network": {"allow_domains": ["bad..name"]}}),
        json!({"packages": ["six"]}),
        json!({"files": [{"path": "../x", "content_b64": ""}]}),
        json!({"files": [{"path": "a", "content_b64": "%%%"}]}),
        json!({"timeout_s": -1}),
        json!({"env": {"LD_PRELOAD": "x"}}),
    ] {
        h.run(KEY_A, "1", extra).await.error(400, "invalid_input");
    }
}

#[tokio::test]
async fn empty_code_is_400() {
    let h = Harness::new();
    h.run(KEY_A, "", json!({}))
        .await
        .error(400, "invalid_input");
}

#[tokio::test]
async fn an_unknown_route_is_404_not_found() {
    let h = Harness::new();
    let message = h.get(KEY_A, "/v1/nothing").await.error(404, "not_found");
    assert!(message.contains("/v1/nothing"), "{message}");
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let h = Harness::with_config(ServerConfig {
        max_body_bytes: 1024,
        ..ServerConfig::default()
    });
    let code = "#".repeat(2048);
    h.run(KEY_A, &code, json!({}))
        .await
        .error(413, "body_too_large");
}

#[tokio::test]
async fn a_file_over_the_limit_is_413() {
    let h = Harness::with_config(ServerConfig {
        files: crate::config::FileLimits { max_bytes: 16 },
        ..ServerConfig::default()
    });
    let id = h.session(KEY_A).await;
    h.put(KEY_A, &format!("/v1/sessions/{id}/files/big"), &[b'x'; 64])
        .await
        .error(413, "body_too_large");
}

/// While a cell of session `id` hangs (0.5 s), `probe` until it answers
/// 409; returns the hung cell's answer and the probe's 409.
async fn while_busy<F, Fut>(h: &Harness, id: &str, probe: F) -> (Reply, Reply)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let path = format!("/v1/sessions/{id}/exec");
    let hanging = json!({"code": "hang", "timeout_s": 0.5});
    let hang = h.post(KEY_A, &path, &hanging);
    let busy = async {
        // Until the hanging cell has taken the session.
        loop {
            let reply = probe().await;
            if reply.status == StatusCode::CONFLICT {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::join!(hang, busy)
}

#[tokio::test]
async fn a_second_call_into_a_busy_session_is_409() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    let path = format!("/v1/sessions/{id}/exec");
    let cell = json!({"code": "1"});
    let (hung, busy) = while_busy(&h, &id, || h.post(KEY_A, &path, &cell)).await;
    busy.error(409, "session_busy");
    assert_eq!(hung.ok(StatusCode::OK)["timed_out"], true);
}

#[tokio::test]
async fn reads_and_listings_of_a_busy_session_are_409_as_the_document_says() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    let (files, file) = (
        format!("/v1/sessions/{id}/files"),
        format!("/v1/sessions/{id}/files/a"),
    );
    let (hung, listing) = while_busy(&h, &id, || h.get(KEY_A, &files)).await;
    listing.error(409, "session_busy");
    assert_eq!(hung.ok(StatusCode::OK)["timed_out"], true);
    let (hung, read) = while_busy(&h, &id, || h.get(KEY_A, &file)).await;
    read.error(409, "session_busy");
    assert_eq!(hung.ok(StatusCode::OK)["timed_out"], true);
    let doc = crate::http::openapi();
    for (method, path) in [
        ("get", "/v1/sessions/{id}/files"),
        ("get", "/v1/sessions/{id}/files/{path}"),
        ("put", "/v1/sessions/{id}/files/{path}"),
        ("post", "/v1/sessions/{id}/exec"),
        ("post", "/v1/sessions/{id}/packages"),
    ] {
        assert!(
            doc["paths"][path][method]["responses"]["409"].is_object(),
            "{method} {path} does not document 409"
        );
    }
}

#[tokio::test]
async fn draining_refuses_new_work_with_503() {
    let h = Harness::new();
    h.airlock.drain();
    h.run(KEY_A, "1", json!({})).await.error(503, "draining");
    h.post(KEY_A, "/v1/sessions", &json!({"language": "python"}))
        .await
        .error(503, "draining");
    assert_eq!(h.fakes.cold.acquired().len(), 0);
}

#[tokio::test]
async fn no_vm_slot_in_time_is_503_overloaded() {
    let h = Harness::new();
    h.fakes
        .cold
        .fail_next_boot(|| airlock::BootError::QueueTimeout {
            waited: Duration::from_secs(1),
            slots: 1,
        });
    h.run(KEY_A, "1", json!({})).await.error(503, "overloaded");
}

#[tokio::test]
async fn a_vm_that_dies_is_503_vm_failed() {
    let h = Harness::new();
    h.run(KEY_A, "die", json!({})).await.error(503, "vm_failed");
    assert_eq!(h.fakes.live(), 0, "the dead VM is destroyed");
}

#[tokio::test]
async fn a_file_path_leaving_the_home_is_400() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    let reply = h
        .send(Harness::request(
            Method::PUT,
            &format!("/v1/sessions/{id}/files/../escape"),
            KEY_A,
            &[],
            Body::from("x"),
        ))
        .await;
    reply.error(400, "invalid_input");
}
