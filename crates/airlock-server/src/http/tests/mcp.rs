//! Every MCP tool over `/mcp`: JSON-RPC `initialize`, then `tools/list`
//! and `tools/call`, behind the same keys, tenants and quotas as REST.

use super::{Harness, Mcp, KEY_A, KEY_B};
use crate::quota::Quotas;
use base64::Engine;
use serde_json::json;

const TOOLS: [&str; 11] = [
    "close_session",
    "create_session",
    "exec_in_session",
    "fork_session",
    "install_packages",
    "list_files",
    "pause_session",
    "read_file",
    "resume_session",
    "run_code",
    "write_file",
];

#[tokio::test]
async fn initialize_then_tools_list_names_every_tool_with_its_schema() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let (_, answer) = mcp.rpc("tools/list", json!({})).await;
    let tools = answer["result"]["tools"].as_array().unwrap();
    let mut names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, TOOLS);
    for tool in tools {
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
        assert!(
            tool["description"]
                .as_str()
                .is_some_and(|d| d.contains("Example")),
            "{tool}"
        );
    }
}

#[tokio::test]
async fn create_session_and_run_code_take_the_rest_options() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let (_, answer) = mcp.rpc("tools/list", json!({})).await;
    let tools = answer["result"]["tools"].as_array().unwrap();
    let schema = |name: &str| {
        tools
            .iter()
            .find(|t| t["name"] == name)
            .map(|t| t["inputSchema"]["properties"].clone())
            .unwrap()
    };
    let openapi = crate::http::openapi();
    let rest = |name: &str| openapi["components"]["schemas"][name]["properties"].clone();
    let names = |props: &serde_json::Value| {
        let mut names: Vec<String> = props.as_object().unwrap().keys().cloned().collect();
        names.sort();
        names
    };
    let session = names(&schema("create_session"));
    assert_eq!(
        session,
        names(&rest("SessionBody")),
        "create_session takes what POST /v1/sessions takes"
    );
    let run = names(&schema("run_code"));
    let rest_run = names(&rest("RunBody"));
    assert!(
        run.iter().all(|f| rest_run.contains(f)),
        "{run:?} in {rest_run:?}"
    );
    for field in ["memory_mib", "cpus", "network", "packages"] {
        assert!(run.iter().any(|f| f == field), "{field} in {run:?}");
        assert!(session.iter().any(|f| f == field), "{field} in {session:?}");
    }
    for field in ["idle_timeout_s", "max_lifetime_s"] {
        assert!(session.iter().any(|f| f == field), "{field} in {session:?}");
    }
}

#[tokio::test]
async fn run_code_answers_the_runs_summary() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let result = mcp.call_ok("run_code", json!({"code": "exit 4"})).await;
    assert_eq!(result["exit_code"], 4);
    let result = mcp
        .call_ok("run_code", json!({"code": "hi", "cpus": 2}))
        .await;
    assert_eq!(result["stdout"], "hi");
    assert_eq!(h.fakes.cold.acquired()[1].vcpus, 2);
    assert_eq!(
        h.fakes.cold.acquired()[1].language,
        airlock::Language::Python
    );
    assert_eq!(h.fakes.cold.acquired()[1].tenant, "alice");
}

#[tokio::test]
async fn a_refused_run_is_a_tool_error_naming_its_kind() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    mcp.call_err(
        "run_code",
        json!({"language": "cobol", "code": "1"}),
        "invalid_input",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_tool_argument_is_refused() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let (_, answer) = mcp
        .rpc(
            "tools/call",
            json!({"name": "run_code", "arguments": {"code": "1", "bogus": 1}}),
        )
        .await;
    let refused = answer["error"].is_object() || answer["result"]["isError"] == true;
    assert!(refused, "{answer}");
    assert!(answer.to_string().contains("bogus"), "{answer}");
    assert_eq!(h.fakes.cold.acquired().len(), 0);
}

#[tokio::test]
async fn create_session_applies_its_options_and_exec_keeps_the_vm() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let created = mcp
        .call_ok(
            "create_session",
            json!({"language": "raw", "cpus": 2, "memory_mib": 256, "idle_timeout_s": 30}),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    let vm = &h.fakes.cold.acquired()[0];
    assert_eq!((vm.vcpus, vm.memory_mib), (2, 256));
    let cell = mcp
        .call_ok(
            "exec_in_session",
            json!({"session_id": id, "code": "exit 2"}),
        )
        .await;
    assert_eq!(cell["exit_code"], 2);
    assert_eq!(cell["state_lost"], false);
    assert_eq!(h.fakes.cold.acquired().len(), 1);
}

#[tokio::test]
async fn create_session_defaults_to_python() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let created = mcp.call_ok("create_session", json!({})).await;
    assert_eq!(created["language"], "python");
}

#[tokio::test]
async fn write_read_and_list_files_round_trip() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let id = mcp.session().await;
    let written = mcp
        .call_ok(
            "write_file",
            json!({"session_id": id, "path": "data/a.txt", "content": "hi"}),
        )
        .await;
    assert_eq!(written["size"], 2);
    let bytes = base64::engine::general_purpose::STANDARD.encode([0xff, 0x00]);
    mcp.call_ok(
        "write_file",
        json!({"session_id": id, "path": "data/b.bin", "content_b64": bytes}),
    )
    .await;
    let text = mcp
        .call_ok("read_file", json!({"session_id": id, "path": "data/a.txt"}))
        .await;
    assert_eq!(text["content"], "hi");
    let binary = mcp
        .call_ok("read_file", json!({"session_id": id, "path": "data/b.bin"}))
        .await;
    assert_eq!(binary["content_b64"], bytes.as_str());
    let listed = mcp
        .call_ok("list_files", json!({"session_id": id, "dir": "data"}))
        .await;
    let names: Vec<&str> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert_eq!(names, ["a.txt", "b.bin"]);
}

#[tokio::test]
async fn write_file_needs_exactly_one_content() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let id = mcp.session().await;
    for args in [
        json!({"session_id": id, "path": "a"}),
        json!({"session_id": id, "path": "a", "content": "x", "content_b64": "eA=="}),
    ] {
        mcp.call_err("write_file", args, "exactly one").await;
    }
}

#[tokio::test]
async fn install_packages_fails_as_a_tool_error_without_a_network() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let id = mcp.session().await;
    mcp.call_err(
        "install_packages",
        json!({"session_id": id, "packages": ["six==1.16.0"]}),
        "package_install_failed",
    )
    .await;
}

#[tokio::test]
async fn install_packages_installs_into_a_session_with_a_network() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let created = mcp.call_ok("create_session", json!({"network": {}})).await;
    let id = created["id"].as_str().unwrap();
    let result = mcp
        .call_ok(
            "install_packages",
            json!({"session_id": id, "packages": ["six==1.16.0"]}),
        )
        .await;
    assert_eq!(result["exit_code"], 0);
}

#[tokio::test]
async fn close_session_destroys_the_vm_and_later_calls_fail() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let id = mcp.session().await;
    let closed = mcp
        .call_ok("close_session", json!({"session_id": id}))
        .await;
    assert_eq!(closed["closed"], id.as_str());
    assert_eq!(h.fakes.live(), 0);
    mcp.call_err(
        "exec_in_session",
        json!({"session_id": id, "code": "1"}),
        "session_not_found",
    )
    .await;
}

#[tokio::test]
async fn pause_and_fork_tools_refuse_what_cannot_be_saved_and_bad_counts() {
    let h = Harness::new();
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let id = mcp.session().await;
    // Fake VMs are no QEMU machines: refused, and the session runs on.
    mcp.call_err("pause_session", json!({"session_id": id}), "not_pausable")
        .await;
    mcp.call_err(
        "fork_session",
        json!({"session_id": id, "count": 0}),
        "invalid_input",
    )
    .await;
    assert_eq!(h.fakes.live(), 1);
    mcp.call_ok("exec_in_session", json!({"session_id": id, "code": "1"}))
        .await;
}

#[tokio::test]
async fn another_tenants_session_is_not_found_over_mcp() {
    let h = Harness::new();
    let mut alice = Mcp::connect(&h, KEY_A).await;
    let id = alice.session().await;
    let mut bob = Mcp::connect(&h, KEY_B).await;
    for (tool, args) in [
        ("exec_in_session", json!({"session_id": id, "code": "1"})),
        ("read_file", json!({"session_id": id, "path": "a"})),
        ("close_session", json!({"session_id": id})),
        ("pause_session", json!({"session_id": id})),
        ("resume_session", json!({"session_id": id})),
        ("fork_session", json!({"session_id": id, "count": 1})),
    ] {
        bob.call_err(tool, args, "session_not_found").await;
    }
    assert_eq!(h.fakes.live(), 1);
}

#[tokio::test]
async fn quotas_hold_over_mcp() {
    let h = Harness::with_quotas(Quotas {
        live_sessions: 1,
        ..Quotas::default()
    });
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    mcp.session().await;
    mcp.call_err("create_session", json!({}), "live_sessions")
        .await;
}
