//! Server-sent events of runs and cells: `stdout`/`stderr` events with
//! `{"text"}` data, one final `done` (or `error`) event, every frame
//! well formed; refusals stay plain JSON. The `result` and `cell_error`
//! events are `results.rs`'s.

use super::{Harness, KEY_A};
use axum::http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_streamed_run_sends_stdout_then_done() {
    let h = Harness::new();
    let reply = h
        .post_events(
            KEY_A,
            "/v1/runs",
            &super::body("python", "hello", json!({})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let events = reply.events();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["stdout", "done"], "{events:?}");
    assert_eq!(events[0].1, json!({"text": "hello"}));
    assert_eq!(events[1].1["stdout"], "hello");
    assert_eq!(events[1].1["exit_code"], 0);
}

#[tokio::test]
async fn stderr_comes_as_its_own_event() {
    let h = Harness::new();
    let reply = h
        .post_events(
            KEY_A,
            "/v1/runs",
            &super::body("raw", "stderr oops", json!({})),
        )
        .await;
    let events = reply.events();
    assert_eq!(events[0].0, "stderr");
    assert_eq!(events[0].1["text"], "oops\n");
    assert_eq!(events.last().unwrap().0, "done");
}

#[tokio::test]
async fn a_failure_after_the_stream_started_is_one_error_event() {
    let h = Harness::new();
    let reply = h
        .post_events(KEY_A, "/v1/runs", &super::body("python", "die", json!({})))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let events = reply.events();
    let (name, data) = events.last().unwrap();
    assert_eq!(name, "error");
    assert_eq!(data["error"]["kind"], "vm_failed");
    assert_eq!(events.iter().filter(|(n, _)| n == "done").count(), 0);
}

#[tokio::test]
async fn a_refusal_before_the_stream_is_plain_json() {
    let h = Harness::new();
    h.post_events(KEY_A, "/v1/runs", &super::body("cobol", "1", json!({})))
        .await
        .error(400, "invalid_input");
}

#[tokio::test]
async fn a_streamed_cell_sends_its_output_then_the_cells_answer() {
    let h = Harness::new();
    let id = h.session(KEY_A).await;
    let reply = h
        .post_events(
            KEY_A,
            &format!("/v1/sessions/{id}/exec"),
            &json!({"code": "x"}),
        )
        .await;
    let events = reply.events();
    assert_eq!(events.first().unwrap().0, "stdout");
    let (name, result) = events.last().unwrap();
    assert_eq!(name, "done");
    assert_eq!(result["stdout"], "x");
    assert!(result.get("state_lost").is_some(), "{result}");
}

#[tokio::test]
async fn every_frame_has_an_event_and_one_data_line() {
    let h = Harness::new();
    let reply = h
        .post_events(KEY_A, "/v1/runs", &super::body("python", "a\nb", json!({})))
        .await;
    let text = reply.text();
    for frame in text.split("\n\n").filter(|f| !f.trim().is_empty()) {
        let lines: Vec<&str> = frame.lines().filter(|l| !l.starts_with(':')).collect();
        assert_eq!(lines.len(), 2, "{frame:?}");
        assert!(lines[0].starts_with("event: "), "{frame:?}");
        assert!(lines[1].starts_with("data: "), "{frame:?}");
    }
    assert_eq!(
        reply.events()[0].1["text"],
        "a\nb",
        "a newline stays inside the JSON"
    );
}
