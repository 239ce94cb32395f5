//! `POST /v1/runs` answered whole: the run's JSON, and every option of the
//! body reaching the sandbox.

use super::{body, Harness, KEY_A};
use axum::http::StatusCode;
use base64::Engine;
use serde_json::json;

#[tokio::test]
async fn a_run_answers_with_the_runs_json_and_destroys_its_vm() {
    let h = Harness::new();
    let result = h.run(KEY_A, "hello", json!({})).await.ok(StatusCode::OK);
    assert_eq!(result["stdout"], "hello");
    assert_eq!(result["exit_code"], 0);
    for field in ["vm_id", "stderr", "timed_out", "timings", "usage"] {
        assert!(result.get(field).is_some(), "{field} in {result}");
    }
    assert_eq!(h.fakes.live(), 0);
}

#[tokio::test]
async fn the_exit_code_and_stderr_come_back() {
    let h = Harness::new();
    let result = h.run(KEY_A, "exit 3", json!({})).await.ok(StatusCode::OK);
    assert_eq!(result["exit_code"], 3);
    let result = h
        .run(KEY_A, "stderr oops", json!({}))
        .await
        .ok(StatusCode::OK);
    assert_eq!(result["stderr"], "oops\n");
}

#[tokio::test]
async fn env_reaches_the_code() {
    let h = Harness::new();
    let result = h
        .run(KEY_A, "env GREETING", json!({"env": {"GREETING": "hi"}}))
        .await
        .ok(StatusCode::OK);
    assert_eq!(result["stdout"], "hi");
}

#[tokio::test]
async fn a_timeout_ends_the_code_and_says_so() {
    let h = Harness::new();
    let result = h
        .run(KEY_A, "hang", json!({"timeout_s": 0.05}))
        .await
        .ok(StatusCode::OK);
    assert_eq!(result["timed_out"], true);
    assert_eq!(h.fakes.live(), 0);
}

#[tokio::test]
async fn memory_and_cpus_shape_the_vm() {
    let h = Harness::new();
    h.run(KEY_A, "1", json!({"memory_mib": 256, "cpus": 2}))
        .await
        .ok(StatusCode::OK);
    let vm = &h.fakes.cold.acquired()[0];
    assert_eq!((vm.memory_mib, vm.vcpus), (256, 2));
}

#[tokio::test]
async fn the_defaults_are_the_clis() {
    let h = Harness::new();
    h.run(KEY_A, "1", json!({})).await.ok(StatusCode::OK);
    let vm = &h.fakes.cold.acquired()[0];
    assert_eq!((vm.memory_mib, vm.vcpus), (airlock::DEFAULT_MEMORY_MIB, 1));
    assert_eq!(vm.network.mode(), airlock_gvproxy::NetworkMode::None);
}

#[tokio::test]
async fn a_network_object_turns_egress_on() {
    let h = Harness::new();
    h.run(
        KEY_A,
        "1",
        json!({"network": {"allow_domains": ["example.com"]}}),
    )
    .await
    .ok(StatusCode::OK);
    let vm = &h.fakes.cold.acquired()[0];
    assert_eq!(vm.network.mode(), airlock_gvproxy::NetworkMode::Allowlist);
}

#[tokio::test]
async fn packages_are_prepared_as_a_layer_the_vm_attaches() {
    let h = Harness::new();
    h.run(KEY_A, "1", json!({"packages": ["six==1.16.0"]}))
        .await
        .ok(StatusCode::OK);
    assert_eq!(
        h.fakes.packages.prepared(),
        [vec!["six==1.16.0".to_owned()]]
    );
    assert!(h.fakes.cold.acquired()[0].packages.is_some());
}

#[tokio::test]
async fn files_land_in_the_guest_before_the_code_runs() {
    let h = Harness::new();
    let content = base64::engine::general_purpose::STANDARD.encode(b"data");
    h.post(
        KEY_A,
        "/v1/runs",
        &body(
            "raw",
            "cat in.txt",
            json!({"files": [{"path": "in.txt", "content_b64": content}]}),
        ),
    )
    .await
    .ok(StatusCode::OK);
    let execs = h.fakes.cold.execs();
    assert!(execs.iter().any(|e| e.code == "cat in.txt"), "{execs:?}");
}

#[tokio::test]
async fn runs_count_in_the_metrics() {
    let h = Harness::new();
    h.run(KEY_A, "1", json!({})).await.ok(StatusCode::OK);
    let text = h.airlock.metrics().render();
    assert!(text.contains("airlock_runs_total"), "{text}");
}
