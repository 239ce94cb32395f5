//! Secrets end to end, on a real VM (TCG here): a run with a secret bound
//! to `api.test`, served by an HTTPS upstream on the host's loopback whose
//! test CA the egress proxy trusts through the test overrides.
//!
//! Checked, in one session: the guest's variable holds only the
//! placeholder, no process environment in the guest holds the value, the
//! guest trusts Airlock's CA without being told (its default TLS context
//! verifies the intercepted host), the upstream receives the real value in
//! `Authorization` and in a custom header, the placeholder sent over plain
//! HTTP to another allowed host is blocked and counted in the network
//! report with its host, and `api.test`, named by no allowlist, is
//! reachable because the secret is bound to it.
//!
//! Then, with the VM still running and its disk synced, the host searches
//! for the value in the VM's memory and in every file of its run dir. A VM
//! with a network boots cold, so its memory is the anonymous memory of its
//! QEMU process (there is no memory file): the test reads all of QEMU's
//! mapped memory through `/proc/PID/mem`, and gvproxy's too (it carries
//! the guest's traffic). The run dir holds the VM's overlay (its disk),
//! console log and sockets. The attack cases are in `tests/attack_e2e.rs`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock::spec::{HostPattern, Secret, SecretValue};
use airlock::{
    CellRequest, Config, Discard, EgressTestOverrides, NetworkRequest, Scheduler, SessionOptions,
};
use airlock_egress::UpstreamRoots;
use airlock_gvproxy::DomainPattern;
use airlock_protocol::Language;
use airlock_tests::upstream::{answer_ok, contains, unique_secret, Upstream};
use airlock_tests::{images_or_skip, processes_mentioning, serve, TestResolver};
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Whether `needle` is anywhere in the readable mapped memory of `pid`
/// (read through `/proc/PID/mem`; regions that cannot be read, such as
/// `[vvar]`, are skipped). Returns the bytes read, to show the search
/// covered the guest's RAM.
fn memory_holds(pid: u32, needle: &[u8]) -> (bool, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut read_total = 0u64;
    let chunk = 4 << 20;
    let mut buf = vec![0u8; chunk + needle.len()];
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut at = start;
        // Chunks overlap by the needle's length, so a needle across two
        // chunks is found.
        while at < end {
            let want = usize::try_from((end - at).min(buf.len() as u64)).unwrap();
            if mem.seek(SeekFrom::Start(at)).is_err() {
                break;
            }
            let Ok(n) = mem.read(&mut buf[..want]) else {
                break;
            };
            if n == 0 {
                break;
            }
            read_total += n as u64;
            if contains(&buf[..n], needle) {
                return (true, read_total);
            }
            if n <= needle.len() {
                break;
            }
            at += (n - needle.len()) as u64;
        }
    }
    (false, read_total)
}

/// The regular files under `dir` that contain `needle`, and how many files
/// were searched.
fn files_holding(dir: &Path, needle: &[u8]) -> (Vec<String>, usize) {
    let (mut found, mut searched) = (Vec::new(), 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                searched += 1;
                let bytes = std::fs::read(entry.path()).unwrap_or_default();
                if contains(&bytes, needle) {
                    found.push(entry.path().display().to_string());
                }
            }
        }
    }
    (found, searched)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_is_substituted_for_its_host_and_never_seen_by_the_guest() {
    let Some(_) = images_or_skip("secrets_substituted") else {
        return;
    };
    let value = unique_secret("real");
    let api = Upstream::https("api.test", answer_ok);
    let plain = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let plain_addr = plain.local_addr().unwrap();
    serve(plain, "plain-upstream", Some);
    let state = tempfile::tempdir().unwrap();
    // A short private run dir: the VM's files, searched below.
    let run_dir = tempfile::Builder::new()
        .prefix("al-sec")
        .tempdir_in("/tmp")
        .unwrap();
    let scheduler = Scheduler::start(Config {
        run_dir: run_dir.path().to_path_buf(),
        egress_test: EgressTestOverrides {
            resolver: Some(Arc::new(TestResolver(vec![
                ("api.test", 443, api.addr()),
                ("other.test", 80, plain_addr),
            ]))),
            allow_private: true,
            upstream_roots: Some(UpstreamRoots::Certificates(vec![api.ca_der().into()])),
        },
        secrets_ca_dir: state.path().join("ca"),
        overlay_pool_target: 0,
        ..Config::default()
    })
    .await
    .unwrap();
    let code = r#"
import glob, http.client, json, os
tok = os.environ["API_TOKEN"]
out = {"env": tok}
try:
    c = http.client.HTTPSConnection("api.test", 443, timeout=60)
    c.request("GET", "/v1", headers={"Authorization": "Bearer " + tok, "X-Api-Key": tok})
    r = c.getresponse()
    out["api"] = [r.status, r.read().decode()]
except Exception as e:
    out["api"] = ["error", repr(e)]
try:
    c = http.client.HTTPConnection("other.test", 80, timeout=60)
    c.request("GET", "/", headers={"Authorization": tok})
    r = c.getresponse()
    out["other"] = [r.status, r.read().decode()]
except Exception as e:
    out["other"] = ["error", repr(e)]
found = []
# The value is never made here (its bytes would stay in freed memory,
# where the host's search below finds them): the reversed environment is
# searched for the reversed value.
needle = os.environ["NEEDLE"].encode()
for path in glob.glob("/proc/[0-9]*/environ"):
    try:
        if needle in open(path, "rb").read()[::-1]:
            found.append(path)
    except OSError:
        pass
out["value_in_environ"] = found
# What the guest's disk holds reaches the overlay searched by the host.
os.sync()
print(json.dumps(out))
"#;
    let mut spec = airlock::spec::SandboxSpec::new(Language::Python);
    spec.network = NetworkRequest {
        allow: Some(vec![DomainPattern::parse("other.test").unwrap()]),
        ..NetworkRequest::default()
    };
    spec.secrets = vec![Secret {
        name: "API_TOKEN".into(),
        value: SecretValue::new(value.clone().into_bytes()),
        hosts: vec![HostPattern::parse("API_TOKEN", "api.test").unwrap()],
        body: false,
    }];
    let session = scheduler
        .session(SessionOptions::in_sandbox(spec))
        .await
        .unwrap();
    let mut cell = CellRequest::new(code);
    cell.timeout = Duration::from_secs(240);
    // The guest searches its processes' environments for the value, given
    // reversed (so that no environment holds it because of the search),
    // and never builds the value itself: it searches the reversed
    // environments for the reversed value.
    cell.env
        .insert("NEEDLE".into(), value.chars().rev().collect());
    let result = session.exec(cell, &mut Discard).await.unwrap();

    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    assert_eq!(
        result.exit_code,
        0,
        "{stdout}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let out: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let env = out["env"].as_str().unwrap();
    assert!(
        env.starts_with("airlock-secret-") && env.len() == 47,
        "{env}"
    );
    assert!(!stdout.contains(&value));
    assert_eq!(out["api"], serde_json::json!([200, "upstream"]), "{stdout}");
    assert_eq!(out["other"][0], 403, "{stdout}");
    assert_eq!(out["value_in_environ"], serde_json::json!([]), "{stdout}");
    let heads: Vec<String> = api.requests().into_iter().map(|r| r.head).collect();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(
        heads[0].contains(&format!("Authorization: Bearer {value}\r\n")),
        "{}",
        heads[0]
    );
    assert!(
        heads[0].contains(&format!("X-Api-Key: {value}\r\n")),
        "{}",
        heads[0]
    );
    assert!(!heads[0].contains("airlock-secret-"));

    // The VM still runs: its memory and its files hold no trace of the
    // value. The placeholder is searched too, as the control: it IS in the
    // guest's memory (its environment), so a search that finds nothing for
    // the value has looked where it should.
    let run_dir_text = run_dir.path().to_str().unwrap().to_owned();
    let qemu = processes_mentioning("qemu-system", &run_dir_text);
    assert_eq!(qemu.len(), 1, "the session's QEMU: {qemu:?}");
    let gvproxy = processes_mentioning("gvproxy", &run_dir_text);
    let placeholder = env.as_bytes().to_vec();
    let needle = value.clone().into_bytes();
    let pids: Vec<u32> = qemu.iter().chain(&gvproxy).copied().collect();
    let (memory, files) = tokio::task::spawn_blocking({
        let dir = run_dir.path().to_path_buf();
        move || {
            let memory: Vec<(u32, bool, bool, u64)> = pids
                .iter()
                .map(|&pid| {
                    let (value_found, bytes) = memory_holds(pid, &needle);
                    let (placeholder_found, _) = memory_holds(pid, &placeholder);
                    (pid, value_found, placeholder_found, bytes)
                })
                .collect();
            (memory, files_holding(&dir, &needle))
        }
    })
    .await
    .unwrap();
    for (pid, value_found, _, bytes) in &memory {
        assert!(
            !value_found,
            "process {pid}'s memory ({bytes} bytes) holds the value"
        );
    }
    let (qemu_pid, _, qemu_has_placeholder, qemu_bytes) = memory[0];
    assert!(
        qemu_has_placeholder,
        "the control: QEMU {qemu_pid}'s memory ({qemu_bytes} bytes read) holds the guest's placeholder"
    );
    assert!(
        qemu_bytes > 200 << 20,
        "the whole guest RAM was read: {qemu_bytes} bytes"
    );
    let (found, searched) = files;
    assert!(searched >= 2, "the run dir's files: {searched}");
    assert!(found.is_empty(), "files holding the value: {found:?}");

    let report = session.close().await;
    let network = report.network.unwrap();
    assert_eq!(network.secret_blocked, 1, "{network:?}");
    assert_eq!(network.secret_blocked_hosts, ["other.test"]);
}
