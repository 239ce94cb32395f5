//! `/v1/secrets` and secrets named by runs, sessions and MCP: set, list,
//! delete, values never answered, tenant isolation, unknown names, the
//! VM's allowlist, encryption at rest, and a server without a key.

use super::{body, Harness, Mcp, KEY_A, KEY_B};
use axum::http::StatusCode;
use serde_json::{json, Value};

/// The value every test stores: it must never come back.
const VALUE: &str = "sk-live-7d3f0c9a1b2e4f6a8c0d";

async fn set(h: &Harness, key: &str, name: &str, hosts: &[&str]) -> super::Reply {
    let body = json!({"value": VALUE, "hosts": hosts});
    h.put(
        key,
        &format!("/v1/secrets/{name}"),
        body.to_string().as_bytes(),
    )
    .await
}

fn assert_no_value(reply: &super::Reply) {
    assert!(
        !reply.text().contains(VALUE) && !reply.text().contains("7d3f0c9a"),
        "the value came back: {}",
        reply.text()
    );
}

#[tokio::test]
async fn a_secret_is_set_listed_replaced_and_deleted_without_its_value() {
    let h = Harness::new();
    let made = set(&h, KEY_A, "API_TOKEN", &["api.example.com"]).await;
    assert_no_value(&made);
    let info = made.ok(StatusCode::CREATED);
    assert_eq!(info["name"], "API_TOKEN");
    assert_eq!(info["hosts"], json!(["api.example.com"]));
    let again = set(&h, KEY_A, "API_TOKEN", &["*.example.com"]).await;
    assert_no_value(&again);
    assert_eq!(again.ok(StatusCode::OK)["hosts"], json!(["*.example.com"]));

    let listed = h.get(KEY_A, "/v1/secrets").await;
    assert_no_value(&listed);
    let list = listed.ok(StatusCode::OK);
    let secrets = list["secrets"].as_array().expect("a list");
    assert_eq!(secrets.len(), 1);
    for field in ["name", "hosts", "body", "created_unix", "updated_unix"] {
        assert!(secrets[0].get(field).is_some(), "{field} in {list}");
    }
    assert!(secrets[0].get("value").is_none(), "{list}");

    let gone = h.delete(KEY_A, "/v1/secrets/API_TOKEN").await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT, "{}", gone.text());
    h.delete(KEY_A, "/v1/secrets/API_TOKEN")
        .await
        .error(404, "secret_not_found");
    let list = h.get(KEY_A, "/v1/secrets").await.ok(StatusCode::OK);
    assert_eq!(list["secrets"], json!([]));
}

#[tokio::test]
async fn refusals_never_quote_the_value() {
    let h = Harness::new();
    let cases: [(&str, Value); 6] = [
        ("1BAD", json!({"value": VALUE, "hosts": ["a.example.com"]})),
        ("K", json!({"value": VALUE, "hosts": []})),
        ("K", json!({"value": VALUE, "hosts": ["*.com"]})),
        (
            "K",
            json!({"value": format!("airlock-secret-{VALUE}"), "hosts": ["a.example.com"]}),
        ),
        (
            "K",
            json!({"value": VALUE, "hosts": ["a.example.com"], "extra": VALUE}),
        ),
        (
            "K",
            json!({"value": 7_300_900_100_u64, "hosts": ["a.example.com"]}),
        ),
    ];
    for (name, body) in cases {
        let reply = h
            .put(
                KEY_A,
                &format!("/v1/secrets/{name}"),
                body.to_string().as_bytes(),
            )
            .await;
        reply.error(400, "invalid_input");
        assert_no_value(&reply);
        assert!(!reply.text().contains("7300900100"), "{}", reply.text());
    }
    let list = h.get(KEY_A, "/v1/secrets").await.ok(StatusCode::OK);
    assert_eq!(list["secrets"], json!([]), "nothing was stored");
}

#[tokio::test]
async fn another_tenant_can_neither_see_delete_nor_use_a_secret() {
    let h = Harness::new();
    set(&h, KEY_A, "API_TOKEN", &["api.example.com"])
        .await
        .ok(StatusCode::CREATED);
    let list = h.get(KEY_B, "/v1/secrets").await.ok(StatusCode::OK);
    assert_eq!(list["secrets"], json!([]));
    h.delete(KEY_B, "/v1/secrets/API_TOKEN")
        .await
        .error(404, "secret_not_found");
    let run = h
        .run(KEY_B, "env API_TOKEN", json!({"secrets": ["API_TOKEN"]}))
        .await;
    let message = run.error(400, "invalid_input");
    assert!(message.contains("API_TOKEN"), "{message}");
    assert!(
        h.fakes.cold.acquired().is_empty(),
        "no VM for a refused run"
    );
    // Bob's own secret of the same name is his, not Alice's.
    set(&h, KEY_B, "API_TOKEN", &["other.example.org"])
        .await
        .ok(StatusCode::CREATED);
    let alice = h.get(KEY_A, "/v1/secrets").await.ok(StatusCode::OK);
    assert_eq!(alice["secrets"][0]["hosts"], json!(["api.example.com"]));
}

#[tokio::test]
async fn an_unknown_secret_name_is_a_400_naming_it_before_any_vm() {
    let h = Harness::new();
    let message = h
        .run(KEY_A, "1", json!({"secrets": ["NOPE"]}))
        .await
        .error(400, "invalid_input");
    assert!(message.contains("NOPE"), "{message}");
    let session = h
        .post(
            KEY_A,
            "/v1/sessions",
            &json!({"language": "python", "secrets": ["NOPE"]}),
        )
        .await;
    assert!(session.error(400, "invalid_input").contains("NOPE"));
    assert!(h.fakes.cold.acquired().is_empty());
}

#[tokio::test]
async fn a_run_with_a_secret_sees_a_placeholder_and_its_hosts_join_the_allowlist() {
    let h = Harness::new();
    set(&h, KEY_A, "API_TOKEN", &["api.example.com"])
        .await
        .ok(StatusCode::CREATED);
    let reply = h
        .run(KEY_A, "env API_TOKEN", json!({"secrets": ["API_TOKEN"]}))
        .await;
    assert_no_value(&reply);
    let result = reply.ok(StatusCode::OK);
    let seen = result["stdout"].as_str().unwrap_or_default();
    assert!(seen.starts_with("airlock-secret-"), "{result}");
    let vm = &h.fakes.cold.acquired()[0];
    let allow = vm.network.allow.as_ref().expect("an allowlist");
    assert_eq!(allow.len(), 1, "the secret's host and nothing else");
    assert!(allow[0].matches("api.example.com"));
    let secrets = vm.secrets.as_ref().expect("the proxy's secrets");
    assert_eq!(secrets.guest_env()["API_TOKEN"], seen);
    assert!(!format!("{vm:?}").contains(VALUE));
}

#[tokio::test]
async fn a_session_with_a_secret_gets_it_too() {
    let h = Harness::new();
    set(&h, KEY_A, "GH_TOKEN", &["api.github.com"])
        .await
        .ok(StatusCode::CREATED);
    h.post(
        KEY_A,
        "/v1/sessions",
        &json!({"language": "python", "secrets": ["GH_TOKEN"]}),
    )
    .await
    .ok(StatusCode::CREATED);
    let vm = &h.fakes.cold.acquired()[0];
    let allow = vm.network.allow.as_ref().expect("an allowlist");
    assert!(allow.iter().any(|d| d.matches("api.github.com")));
    assert!(vm.secrets.is_some());
}

#[tokio::test]
async fn mcp_tools_take_secret_names() {
    let h = Harness::new();
    set(&h, KEY_A, "API_TOKEN", &["api.example.com"])
        .await
        .ok(StatusCode::CREATED);
    let mut mcp = Mcp::connect(&h, KEY_A).await;
    let run = mcp
        .call_ok(
            "run_code",
            json!({"language": "raw", "code": "env API_TOKEN", "secrets": ["API_TOKEN"]}),
        )
        .await;
    assert!(
        run["stdout"]
            .as_str()
            .unwrap_or_default()
            .starts_with("airlock-secret-"),
        "{run}"
    );
    mcp.call_ok(
        "create_session",
        json!({"language": "python", "secrets": ["API_TOKEN"]}),
    )
    .await;
    assert_eq!(h.fakes.cold.acquired().len(), 2);
    assert!(h
        .fakes
        .cold
        .acquired()
        .iter()
        .all(|vm| vm.secrets.is_some()));
    mcp.call_err(
        "run_code",
        json!({"language": "raw", "code": "1", "secrets": ["NOPE"]}),
        "NOPE",
    )
    .await;
}

#[tokio::test]
async fn the_store_file_holds_no_value_and_a_wrong_key_does_not_open_it() {
    let h = Harness::new();
    set(&h, KEY_A, "API_TOKEN", &["api.example.com"])
        .await
        .ok(StatusCode::CREATED);
    let path = h.secrets_dir.path().join("secrets.json");
    let stored = std::fs::read(&path).expect("the store file");
    assert!(
        !stored.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
        "the value is in the file"
    );
    let config = crate::ServerConfig {
        secrets_file: Some(path),
        ..crate::ServerConfig::default()
    };
    let wrong = "ff".repeat(32);
    let err = config.secret_store(Some(&wrong)).unwrap_err().to_string();
    assert!(err.contains("does not open this store"), "{err}");
    assert!(config.secret_store(Some(super::SECRETS_KEY_HEX)).is_ok());
}

#[tokio::test]
async fn without_a_key_the_secrets_routes_and_secret_runs_answer_501() {
    let h = Harness::without_secrets();
    set(&h, KEY_A, "K", &["a.example.com"])
        .await
        .error(501, "secrets_disabled");
    h.get(KEY_A, "/v1/secrets")
        .await
        .error(501, "secrets_disabled");
    h.run(KEY_A, "1", json!({"secrets": ["K"]}))
        .await
        .error(501, "secrets_disabled");
    // Runs without secrets are not affected.
    h.post(KEY_A, "/v1/runs", &body("python", "1", json!({})))
        .await
        .ok(StatusCode::OK);
}
