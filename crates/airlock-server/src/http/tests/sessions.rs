//! The session routes: create with every option, list, show, exec (state
//! kept by the one VM), files, packages, delete.

use super::{Harness, KEY_A};
use axum::http::{header, StatusCode};
use serde_json::json;

#[tokio::test]
async fn create_answers_201_with_the_sessions_info() {
    let h = Harness::new();
    let info = h
        .post(KEY_A, "/v1/sessions", &json!({"language": "python"}))
        .await
        .ok(StatusCode::CREATED);
    assert_eq!(info["language"], "python");
    for field in ["id", "created_at", "last_used"] {
        assert!(info.get(field).is_some(), "{field} in {info}");
    }
    assert_eq!(h.fakes.live(), 1);
}

#[tokio::test]
async fn create_takes_cpus_memory_and_the_lifetimes() {
    let h = Harness::new();
    h.post(
        KEY_A,
        "/v1/sessions",
        &json!({"language": "raw", "cpus": 2, "memory_mib": 256,
                "idle_timeout_s": 30, "max_lifetime_s": 120}),
    )
    .await
    .ok(StatusCode::CREATED);
    let vm = &h.fakes.cold.acquired()[0];
    assert_eq!((vm.vcpus, vm.memory_mib), (2, 256));
}

#[tokio::test]
async fn a_bad_lifetime_is_the_librarys_400() {
    let h = Harness::new();
    let message = h
        .post(
            KEY_A,
            "/v1/sessions",
            &json!({"language": "raw", "idle_timeout_s": 0}),
        )
        .await
        .error(400, "invalid_input");
    assert!(message.contains("idle_timeout"), "{message}");
    assert_eq!(h.fakes.live(), 0);
}

#[tokio::test]
async fn the_session_is_listed_and_shown() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    let listed = h.get(KEY_A, "/v1/sessions").await.ok(StatusCode::OK);
    assert_eq!(listed["sessions"][0]["id"], id.as_str());
    let shown = h
        .get(KEY_A, &format!("/v1/sessions/{id}"))
        .await
        .ok(StatusCode::OK);
    assert_eq!(shown["id"], id.as_str());
}

#[tokio::test]
async fn exec_runs_cells_in_the_same_vm() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    let path = format!("/v1/sessions/{id}/exec");
    let first = h
        .post(KEY_A, &path, &json!({"code": "x = 1"}))
        .await
        .ok(StatusCode::OK);
    assert_eq!(first["stdout"], "x = 1");
    assert_eq!(first["exit_code"], 0);
    let second = h
        .post(KEY_A, &path, &json!({"code": "env A", "env": {"A": "b"}}))
        .await
        .ok(StatusCode::OK);
    assert_eq!(second["stdout"], "b");
    assert_eq!(h.fakes.cold.acquired().len(), 1, "one VM for the session");
    for field in ["stderr", "timed_out", "state_lost", "duration_ms"] {
        assert!(second.get(field).is_some(), "{field} in {second}");
    }
}

#[tokio::test]
async fn a_cell_that_loses_state_says_so() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    let result = h
        .post(
            KEY_A,
            &format!("/v1/sessions/{id}/exec"),
            &json!({"code": "lose-state"}),
        )
        .await
        .ok(StatusCode::OK);
    assert_eq!(result["state_lost"], true);
}

#[tokio::test]
async fn delete_answers_204_destroys_the_vm_and_then_404() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    let path = format!("/v1/sessions/{id}");
    let reply = h.delete(KEY_A, &path).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    assert_eq!(h.fakes.live(), 0);
    h.get(KEY_A, &path).await.error(404, "session_not_found");
    h.delete(KEY_A, &path).await.error(404, "session_not_found");
}

#[tokio::test]
async fn a_file_round_trips_with_its_sha256() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    let path = format!("/v1/sessions/{id}/files/data/in.txt");
    let put = h.put(KEY_A, &path, b"abc").await.ok(StatusCode::OK);
    assert_eq!(put["size"], 3);
    let got = h.get(KEY_A, &path).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.body[..], b"abc");
    assert_eq!(got.headers["x-sha256"], put["sha256"].as_str().unwrap());
    assert_eq!(
        got.headers[header::CONTENT_TYPE],
        "application/octet-stream"
    );
}

#[tokio::test]
async fn files_are_listed_by_dir() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    h.put(KEY_A, &format!("/v1/sessions/{id}/files/data/a.txt"), b"1")
        .await
        .ok(StatusCode::OK);
    let listed = h
        .get(KEY_A, &format!("/v1/sessions/{id}/files?dir=data"))
        .await
        .ok(StatusCode::OK);
    assert_eq!(listed["entries"][0]["name"], "a.txt");
    assert_eq!(listed["entries"][0]["size"], 1);
}

#[tokio::test]
async fn a_missing_file_is_404_file_not_found() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    h.get(KEY_A, &format!("/v1/sessions/{id}/files/nope.txt"))
        .await
        .error(404, "file_not_found");
}

#[tokio::test]
async fn packages_install_into_a_session_with_a_network() {
    let h = Harness::new();
    let info = h
        .post(
            KEY_A,
            "/v1/sessions",
            &json!({"language": "python", "network": {}}),
        )
        .await
        .ok(StatusCode::CREATED);
    let id = info["id"].as_str().unwrap();
    let result = h
        .post(
            KEY_A,
            &format!("/v1/sessions/{id}/packages"),
            &json!({"packages": ["six==1.16.0"]}),
        )
        .await
        .ok(StatusCode::OK);
    assert_eq!(result["exit_code"], 0);
    assert_eq!(h.fakes.cold.installs(), [vec!["six==1.16.0".to_owned()]]);
}

#[tokio::test]
async fn a_failed_install_is_400_package_install_failed() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    h.post(
        KEY_A,
        &format!("/v1/sessions/{id}/packages"),
        &json!({"packages": ["six==1.16.0"]}),
    )
    .await
    .error(400, "package_install_failed");
}

#[tokio::test]
async fn sessions_count_in_the_gauges() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    assert_eq!(h.airlock.metrics().sessions_live.get(), 1);
    h.delete(KEY_A, &format!("/v1/sessions/{id}")).await;
    assert_eq!(h.airlock.metrics().sessions_live.get(), 0);
}

#[tokio::test]
async fn shutdown_closes_every_session() {
    let h = Harness::new();
    h.session(KEY_A).await;
    h.session(KEY_A).await;
    h.airlock.shutdown().await;
    assert_eq!(h.fakes.live(), 0);
    h.get(KEY_A, "/v1/sessions").await.error(503, "draining");
}

#[tokio::test]
async fn a_session_whose_vm_cannot_be_saved_is_refused_409_and_runs_on() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    let message = h
        .post(KEY_A, &format!("/v1/sessions/{id}/pause"), &json!({}))
        .await
        .error(409, "not_pausable");
    assert!(message.contains("cannot be paused"), "{message}");
    let shown = h
        .get(KEY_A, &format!("/v1/sessions/{id}"))
        .await
        .ok(StatusCode::OK);
    assert_eq!(shown["state"], "running");
}

#[tokio::test]
async fn a_fork_count_outside_one_to_eight_is_400() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    for count in [0, 9] {
        h.post(
            KEY_A,
            &format!("/v1/sessions/{id}/fork"),
            &json!({ "count": count }),
        )
        .await
        .error(400, "invalid_input");
    }
    assert_eq!(h.fakes.live(), 1, "no child was started");
}

#[tokio::test]
async fn resuming_an_unknown_or_another_tenants_session_is_404() {
    let h = Harness::new();
    h.post(KEY_A, "/v1/sessions/s-0123456789abcdef/resume", &json!({}))
        .await
        .error(404, "session_not_found");
    h.post(KEY_A, "/v1/sessions/..%2Fetc/resume", &json!({}))
        .await
        .error(404, "session_not_found");
}
