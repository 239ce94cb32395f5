//! The attack cases of the server's policies (`docs/security.md`): a
//! revoked key, another tenant's MCP session, oversized MCP bodies and
//! file transfers, errors that would show host paths, and allowlists
//! wider than the operator allows. Each names the limit that answers it.

use super::{Harness, KEY_A, KEY_B};
use crate::config::ServerConfig;
use crate::keys::{hash_key, KeysFile};
use axum::http::StatusCode;

/// Removes `key` from the harness's keys file (as `airlock serve keys
/// revoke` does).
fn revoke_in_file(h: &Harness, key: &str) {
    let path = h.airlock.config().keys_file.clone().expect("a keys file");
    let mut file = KeysFile::load(&path, false).expect("the keys file reads");
    let id = hash_key(key)[..12].to_owned();
    file.revoke(&id).expect("the key is in the file");
    file.save(&path).expect("the keys file is written");
}

#[tokio::test]
async fn a_key_revoked_in_the_file_gets_401_after_a_reload_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::with_keys_file(dir.path(), ServerConfig::default());
    h.get(KEY_B, "/v1/sessions").await.ok(StatusCode::OK);

    revoke_in_file(&h, KEY_B);
    h.get(KEY_B, "/v1/sessions").await.ok(StatusCode::OK);
    assert_eq!(h.airlock.reload_keys().await.unwrap(), 1);

    h.get(KEY_B, "/v1/sessions")
        .await
        .error(401, "unauthorized");
    h.get(KEY_A, "/v1/sessions").await.ok(StatusCode::OK);
}

#[tokio::test]
async fn a_keys_file_made_world_writable_is_not_reloaded_and_the_old_keys_stay() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::with_keys_file(dir.path(), ServerConfig::default());
    revoke_in_file(&h, KEY_B);
    let path = h.airlock.config().keys_file.clone().unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();

    let err = h.airlock.reload_keys().await.unwrap_err().to_string();

    assert!(err.contains("chmod 600"), "{err}");
    h.get(KEY_B, "/v1/sessions").await.ok(StatusCode::OK);
    std::fs::write(&path, "not toml [[").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(h.airlock.reload_keys().await.is_err());
    h.get(KEY_A, "/v1/sessions").await.ok(StatusCode::OK);
}

#[tokio::test]
async fn a_real_sighup_reloads_the_keys_file() {
    use tokio::signal::unix::{signal, SignalKind};
    // Ours first: a SIGHUP raised before the server's handler exists must
    // not kill the test process.
    let _ours = signal(SignalKind::hangup()).expect("handle SIGHUP");
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::with_keys_file(dir.path(), ServerConfig::default());
    let airlock = h.airlock.clone();
    let reloader =
        tokio::spawn(async move { crate::server::reload_keys_on_hangup(&airlock).await });
    revoke_in_file(&h, KEY_B);

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if h.get(KEY_B, "/v1/sessions").await.status == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP never reloaded the keys"
        );
    }
    reloader.abort();
    h.get(KEY_A, "/v1/sessions").await.ok(StatusCode::OK);
}
