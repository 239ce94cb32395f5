//! `airlock serve` and `airlock mcp` end to end, driven by clients this
//! project did not write: the Python `httpx` package for REST and SSE
//! (`tests/clients/rest_client.py`), the official Python `mcp` package over
//! stdio and streamable HTTP (`tests/clients/mcp_client.py`), both on the
//! `python-data` image's rich results (`tests/clients/data_client.py`), and the curl
//! examples of `docs/api.md`. `cargo xtask test` makes their venv and sets
//! `AIRLOCK_TEST_PYTHON`.
//!
//! Every test starts the real command (`CARGO_BIN_EXE_airlock-under-test`)
//! with a private run dir, so what it leaves behind (QEMU processes, work
//! dirs) is checked by that dir's name.

#[path = "server_support.rs"]
mod server_support;

use airlock_tests::{data_images_or_skip, images_or_skip, qemu_processes_mentioning};
use server_support::{add_key, binary, no_vm_left, python, python_or_skip, run_dir, Server};
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The shell blocks of docs/api.md (```sh and ```sh-session), in order.
fn doc_examples() -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md"))
        .expect("read docs/api.md");
    let mut script = String::new();
    let mut inside = false;
    for line in doc.lines() {
        match (inside, line.trim_end()) {
            (false, "```sh") => inside = true,
            (false, "```sh-session") => inside = true,
            (true, "```") => inside = false,
            (true, line) => {
                script.push_str(line);
                script.push('\n');
            }
            _ => {}
        }
    }
    script
}

#[test]
fn rest_mcp_and_the_doc_examples_with_real_clients_then_sigterm_leaves_no_vm() {
    let test = "rest_mcp_and_the_doc_examples_with_real_clients_then_sigterm_leaves_no_vm";
    let (Some(_), Some(py)) = (images_or_skip(test), python_or_skip(test)) else {
        return;
    };
    let dir = run_dir();
    let keys = dir.path().join("keys.toml");
    let key_a = add_key(&keys, "alice", &["--concurrent-runs", "20"]);
    let key_b = add_key(&keys, "bob", &[]);
    let key_limited = add_key(
        &keys,
        "carol",
        &["--requests-per-minute", "4", "--memory-mib", "256"],
    );
    let run = dir.path().join("run");
    let keys_arg = keys.to_string_lossy().into_owned();
    let mut server = Server::start(
        &run,
        &[
            "--keys-file",
            &keys_arg,
            "--max-concurrent-vms",
            "4",
            "--max-body-bytes",
            "65536",
            "--log-format",
            "json",
        ],
    );
    python(
        &py,
        &["rest_client.py"],
        &[
            ("AIRLOCK_URL", &server.url),
            ("AIRLOCK_KEY_A", &key_a),
            ("AIRLOCK_KEY_B", &key_b),
            ("AIRLOCK_KEY_LIMITED", &key_limited),
            ("AIRLOCK_MAX_BODY", "65536"),
            ("AIRLOCK_CONCURRENT", "20"),
        ],
    );
    python(&py, &["mcp_client.py", "http", &server.url, &key_a], &[]);

    let script = doc_examples();
    assert!(
        script.contains("curl"),
        "docs/api.md has no ```sh curl example"
    );
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .env("AIRLOCK_URL", &server.url)
        .env("AIRLOCK_KEY", &key_a)
        .output()
        .expect("run the doc examples");
    assert!(
        out.status.success(),
        "the curl examples of docs/api.md failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // One JSON log line per request, with tenant, route, status, latency.
    let log = server.log();
    let request_line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["route"] == "/v1/runs" && v["tenant"] == "alice")
        .unwrap_or_else(|| panic!("no JSON request line for alice's run:\n{log}"));
    for field in ["status", "latency_ms"] {
        assert!(request_line[field].is_number(), "{field}: {request_line}");
    }

    server.terminate_and_check(&run);
}

/// Sends a run of `code` (raw) to the server without reading the answer,
/// and waits until its VM's QEMU runs; returns the open connection.
fn start_run_and_wait_for_its_vm(server: &Server, run_dir: &Path, code: &str) -> TcpStream {
    start_run_with(server, run_dir, code, "application/json")
}

/// As [`start_run_and_wait_for_its_vm`], accepting `accept`.
fn start_run_with(server: &Server, run_dir: &Path, code: &str, accept: &str) -> TcpStream {
    let addr = server.url.trim_start_matches("http://").to_owned();
    let body = serde_json::json!({"language": "raw", "code": code}).to_string();
    let mut stream = TcpStream::connect(&addr).expect("connect");
    write!(
        stream,
        "POST /v1/runs HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let needle = run_dir.to_string_lossy().into_owned();
    let start = Instant::now();
    while qemu_processes_mentioning(&needle).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no VM started:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stream
}

#[test]
fn sigterm_during_a_run_lets_it_finish_then_exits_0() {
    let test = "sigterm_during_a_run_lets_it_finish_then_exits_0";
    if images_or_skip(test).is_none() {
        return;
    }
    let dir = run_dir();
    let mut server = Server::start(dir.path(), &["--max-concurrent-vms", "1"]);
    let mut stream = start_run_and_wait_for_its_vm(&server, dir.path(), "sleep 3; echo finished");
    server.signal(nix::sys::signal::Signal::SIGTERM);
    // New work is refused while draining (or the listener is closed).
    let mut answer = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    std::io::Read::read_to_string(&mut stream, &mut answer).expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("finished"), "{answer}");
    assert_eq!(
        server.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        server.log()
    );
    no_vm_left(dir.path());
}

#[test]
fn a_restart_after_sigkill_sweeps_what_the_killed_server_left() {
    let test = "a_restart_after_sigkill_sweeps_what_the_killed_server_left";
    if images_or_skip(test).is_none() {
        return;
    }
    let dir = run_dir();
    let mut server = Server::start(dir.path(), &["--max-concurrent-vms", "1"]);
    let stream = start_run_and_wait_for_its_vm(&server, dir.path(), "sleep 120");
    server.signal(nix::sys::signal::Signal::SIGKILL);
    assert_eq!(
        server.wait(Duration::from_secs(10)),
        None,
        "killed by a signal"
    );
    drop(stream);
    // The next start sweeps the dead server's VMs and work dirs.
    let mut again = Server::start(dir.path(), &["--max-concurrent-vms", "1"]);
    no_vm_left(dir.path());
    again.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        again.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        again.log()
    );
}

/// The `python-data` image's rich results through `airlock serve`, with
/// the real clients (`tests/clients/data_client.py`): a REST session
/// returns `df.head()` as HTML and a figure as a 640x480 base64 PNG, and
/// the official `mcp` client gets `run_code`'s chart as an image content
/// item. The server restores memory templates, as it does by default,
/// from a cache dir of the test's own (the images are the shared ones), so
/// the data image's template is built there; no warm pool.
#[test]
fn python_data_results_reach_rest_and_mcp_clients_as_html_and_png() {
    let test = "python_data_results_reach_rest_and_mcp_clients_as_html_and_png";
    let (Some(images), Some(py)) = (data_images_or_skip(test), python_or_skip(test)) else {
        return;
    };
    let dir = run_dir();
    let keys = dir.path().join("keys.toml");
    let key = add_key(&keys, "alice", &[]);
    let run = dir.path().join("run");
    let mut server = Server::start_keyed_without_pool(dir.path(), &keys, &images.dir, &[]);
    python(&py, &["data_client.py", &server.url, &key], &[]);
    server.terminate_and_check(&run);
}

#[test]
fn mcp_over_stdio_with_the_official_python_client() {
    let test = "mcp_over_stdio_with_the_official_python_client";
    let (Some(_), Some(py)) = (images_or_skip(test), python_or_skip(test)) else {
        return;
    };
    let dir = run_dir();
    let run = dir.path().to_string_lossy().into_owned();
    python(
        &py,
        &["mcp_client.py", "stdio", binary()],
        &[("AIRLOCK_RUN_DIR", &run)],
    );
    no_vm_left(dir.path());
}

#[test]
fn serve_refuses_a_public_address_without_keys_and_checks_a_config_file() {
    let dir = run_dir();
    let refused = Command::new(binary())
        .args(["serve", "--listen", "0.0.0.0:7000"])
        .env("AIRLOCK_RUN_DIR", dir.path())
        .output()
        .expect("run serve");
    assert_eq!(refused.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("keys file"), "{stderr}");

    let keys = dir.path().join("keys.toml");
    add_key(&keys, "alice", &[]);
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"0.0.0.0:7000\"\nkeys_file = \"{}\"\n[quotas]\nconcurrent_runs = 2\nlive_sessions = 1\nmemory_mib = 512\ntimeout_s = 60\nrequests_per_minute = 100\n",
            keys.display()
        ),
    )
    .expect("write the config");
    let checked = Command::new(binary())
        .args(["serve", "--check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run serve --check-config");
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(
        checked.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        stdout.contains("configuration OK") && stdout.contains("1 key(s)"),
        "{stdout}"
    );

    std::fs::write(&config, "listen = 7000\n").expect("write a bad config");
    let bad = Command::new(binary())
        .args(["serve", "--check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run serve --check-config");
    assert_eq!(bad.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("server.toml"));
}

#[test]
fn a_client_that_leaves_an_event_stream_ends_the_run_and_its_vm() {
    let test = "a_client_that_leaves_an_event_stream_ends_the_run_and_its_vm";
    if images_or_skip(test).is_none() {
        return;
    }
    let dir = run_dir();
    let mut server = Server::start(dir.path(), &["--max-concurrent-vms", "1"]);
    let stream = start_run_with(&server, dir.path(), "sleep 120", "text/event-stream");
    drop(stream);
    // The stream's task is aborted and the run's VM destroyed while the
    // server goes on.
    no_vm_left(dir.path());
    assert!(
        server.child.try_wait().expect("wait").is_none(),
        "the server still runs"
    );
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        server.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        server.log()
    );
}

/// A session paused over REST (`tests/clients/pause_client.py`), the
/// server stopped and started again on the same cache dir, then the
/// session found listed as paused and resumed with its variable, its file
/// and its counting thread. The server restores memory templates, as by
/// default, so the paused VM is a template clone (its RAM a named
/// backend).
#[test]
fn a_paused_session_survives_a_server_restart_and_resumes_over_rest() {
    let test = "a_paused_session_survives_a_server_restart_and_resumes_over_rest";
    let (Some(images), Some(py)) = (images_or_skip(test), python_or_skip(test)) else {
        return;
    };
    let dir = run_dir();
    let keys = dir.path().join("keys.toml");
    let key = add_key(&keys, "alice", &[]);
    let run = dir.path().join("run");
    let mut server = Server::start_keyed_without_pool(dir.path(), &keys, &images.dir, &[]);
    let out = python(&py, &["pause_client.py", "pause", &server.url, &key], &[]);
    let id = out
        .lines()
        .find_map(|line| line.strip_prefix("id "))
        .expect("the client printed the session id")
        .to_owned();
    // The text log colours its fields: compare without the escapes.
    let log = server
        .log()
        .replace("\u{1b}[0m", "")
        .replace("\u{1b}[2m", "")
        .replace("\u{1b}[3m", "");
    assert!(
        log.contains("session paused") && log.contains("named_ram=true"),
        "the paused VM was a template clone:\n{log}"
    );
    server.terminate_and_check(&run);
    drop(server);
    let mut server = Server::start_keyed_without_pool(dir.path(), &keys, &images.dir, &[]);
    assert!(
        server.log().contains("paused sessions found"),
        "the restarted server found the paused session:\n{}",
        server.log()
    );
    python(
        &py,
        &["pause_client.py", "resume", &server.url, &key, &id],
        &[],
    );
    server.terminate_and_check(&run);
}
