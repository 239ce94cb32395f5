//! E2B's official Python SDK (`e2b-code-interpreter`, from PyPI,
//! unchanged) against `airlock serve --e2b-listen`, in both routing modes
//! on one listener:
//! - headers (`E2B_API_URL` = `E2B_SANDBOX_URL` = the listener, plain
//!   HTTP);
//! - host names over TLS (`--e2b-domain localhost`, clients set only
//!   `E2B_DOMAIN=localhost:PORT` and trust the local CA's `ca.pem`; glibc
//!   resolves `*.localhost` through Debian's `libnss-myhostname`, which
//!   `cargo xtask test` installs).
//!
//! In each mode `tests/clients/e2b_client.py` creates a sandbox
//! (`code-interpreter-v1`, the `python-data` image), runs `x = 1` then
//! `x + 1` (text `2`), a matplotlib chart (`results[0].png` is a PNG), an
//! error, `echo hi`, writes, reads and lists a file, background commands,
//! a cell past its timeout, checks that another tenant's key gets
//! `SandboxNotFoundException` (and `kill` false), kills it; then the async
//! client does a shorter round. Then E2B's JavaScript SDK
//! (`@e2b/code-interpreter` from npm, under Node) does the same flow
//! through `tests/clients/e2b_client.cjs`, against the same server.
//! `cargo xtask test` makes the clients' venv and `node_modules` and sets
//! `AIRLOCK_TEST_PYTHON` and `AIRLOCK_TEST_NODE_PATH`.
//!
//! One VM test function (sandboxes one after the other, one server
//! start): VM tests are slow under TCG. It is parallel-safe: its own run
//! dir, cache dir (the data image's template and the local CA are made
//! there), keys file and ports.

#[path = "server_support.rs"]
mod server_support;

use airlock_tests::data_images_or_skip;
use server_support::{add_key, node, node_path_or_skip, python, python_or_skip, run_dir, Server};

#[test]
fn the_e2b_python_and_javascript_sdks_run_code_commands_and_files_against_airlock_serve() {
    let test =
        "the_e2b_python_and_javascript_sdks_run_code_commands_and_files_against_airlock_serve";
    let (Some(images), Some(py)) = (data_images_or_skip(test), python_or_skip(test)) else {
        return;
    };
    let node_path = node_path_or_skip(test);
    let dir = run_dir();
    let keys = dir.path().join("keys.toml");
    let key_a = add_key(&keys, "alice", &["--format", "e2b"]);
    let key_b = add_key(&keys, "bob", &["--format", "e2b"]);
    assert!(key_a.starts_with("e2b_") && key_a.len() == 44, "{key_a}");
    let run = dir.path().join("run");
    let mut server = Server::start_keyed_without_pool(
        dir.path(),
        &keys,
        &images.dir,
        &["--e2b-listen", "127.0.0.1:0", "--e2b-domain", "localhost"],
    );
    let url = server
        .e2b_url
        .clone()
        .unwrap_or_else(|| panic!("no E2B listener line:\n{}", server.log()));
    let port = url.rsplit(':').next().unwrap_or_default();
    let domain = format!("localhost:{port}");
    let ca = dir.path().join("cache").join("e2b").join("ca.pem");
    assert!(ca.is_file(), "no local CA certificate at {}", ca.display());
    let ca = ca.to_string_lossy().into_owned();
    assert!(
        server.log().contains(&ca),
        "the server names the CA file:\n{}",
        server.log()
    );
    for (mode, place) in [("headers", &url), ("domain", &domain)] {
        python(
            &py,
            &["e2b_client.py", mode, place, &key_a, &key_b],
            &[("SSL_CERT_FILE", &ca)],
        );
        if let Some(node_path) = &node_path {
            node(
                node_path,
                &["e2b_client.cjs", mode, place, &key_a, &key_b],
                &[("NODE_EXTRA_CA_CERTS", &ca)],
            );
        }
    }
    let log = server.log();
    assert!(
        log.contains("route=\"e2b-code /execute\"") || log.contains("e2b-code /execute"),
        "{log}"
    );
    server.terminate_and_check(&run);
}
