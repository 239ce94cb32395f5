//! The network modes end to end, on real VMs (TCG here), each mode checked
//! from inside the guest against traps on the host:
//!
//! - **ports**: a guest HTTP server is reached at the reported host address;
//!   the guest resolves no name and reaches no address (gateway, gvproxy's
//!   host address, the host's own address, a public address); what it can
//!   do with gvproxy's forwarding API (served to it on the gateway's port
//!   80) stays inside its own namespaces and leaves a second VM unharmed;
//! - **allowlist**: an allowlisted name is fetched over verified HTTPS and
//!   over HTTP from upstreams on the host's loopback (a test resolver, test
//!   overrides); other names do not resolve, a denied SNI or Host is cut,
//!   TXT queries and UDP answer nothing, raw addresses are unreachable, and
//!   the report counts bytes and denials;
//! - **none**: only `lo`, and no network report;
//! - gvproxy missing (CLI, exit 125, nothing left) and gvproxy killed
//!   mid-run (the VM stays usable, the network is gone, teardown is clean);
//! - bad network input refused before any VM starts (library and CLI), and
//!   `airlock run --expose` printing an address that serves the guest port.
//!
//! Guest-side checks run in parallel threads with short timeouts, so a
//! check that times out costs seconds, not minutes.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock::{
    Config, EgressTestOverrides, ExecError, InputError, NetworkRequest, RunError, RunRequest,
    Scheduler, Vm, VmManager, VmOptions,
};
use airlock_gvproxy::{DomainPattern, Expose};
use airlock_protocol::client::ExecStream;
use airlock_protocol::{ExecRequest, Language};
use airlock_tests::{
    host_ip, images_or_skip, last_json, python, qemu_processes_mentioning, serve, TestResolver,
    Trap, NET_PRELUDE,
};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Serves `hello.txt` = `$NONCE` with `python3 -m http.server 8080` in the
/// foreground: every process of an exec is killed when the exec ends (its
/// own guest cgroup), so the server is an exec of its own that runs as
/// long as the test holds its stream. Output goes nowhere, so the unread
/// stream never holds events back.
const SERVE: &str = r#"
import os, sys
www = os.path.abspath("www")
os.makedirs(www, exist_ok=True)
open(os.path.join(www, "hello.txt"), "w").write(os.environ["NONCE"])
devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull, 1)
os.dup2(devnull, 2)
os.execv(sys.executable, [sys.executable, "-m", "http.server", "8080", "--bind", "0.0.0.0", "--directory", www])
"#;

/// Waits until the guest's port 8080 accepts.
const WAIT_FOR_SERVER: &str = r#"
import socket, time
for _ in range(400):
    try:
        socket.create_connection(("127.0.0.1", 8080), timeout=1).close()
        print("up")
        break
    except OSError:
        time.sleep(0.05)
"#;

fn options(network: NetworkRequest) -> VmOptions {
    VmOptions {
        packages: None,
        secrets: None,
        tenant: "net-e2e".into(),
        language: Language::Python,
        image: None,
        memory_mib: 512,
        vcpus: 1,
        network,
        disk_mib: airlock::spec::DEFAULT_DISK_MIB,
        mounts: Vec::new(),
    }
}

fn ports_only() -> NetworkRequest {
    NetworkRequest {
        allow: None,
        exposes: vec![Expose::tcp(8080)],
        expose_address: None,
    }
}

/// `GET path` over plain HTTP/1.0 from the host; the whole answer, or the
/// error.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// [`http_get`] until the answer has `needle` or `deadline` passes.
fn http_get_until(addr: SocketAddr, path: &str, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let answer = http_get(addr, path);
        match &answer {
            Ok(text) if text.contains(needle) => return text.clone(),
            _ if Instant::now() > deadline => panic!("{addr}{path}: {answer:?}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Starts the guest's HTTP server (see [`SERVE`]) and waits until it
/// accepts; it serves while the returned stream is held.
async fn start_guest_server<'a>(vm: &'a Vm, nonce: &str) -> ExecStream<'a> {
    let server = vm
        .client()
        .unwrap()
        .exec(ExecRequest {
            mode: Default::default(),
            language: Language::Python,
            code: SERVE.into(),
            timeout_ms: 600_000,
            env: BTreeMap::from([("NONCE".to_owned(), nonce.to_owned())]),
            cwd: None,
        })
        .await
        .unwrap();
    let out = python(vm, WAIT_FOR_SERVER, &[]).await;
    assert_eq!(out, "up\n", "guest http.server did not start");
    server
}

/// Whether a process lives (a zombie counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim()
            .starts_with('Z')
    })
}

fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{}-{}", std::process::id(), t.as_nanos())
}

/// Ports mode: two VMs at once, each serving a guest port. One is probed
/// for every way out and then attacks gvproxy's API; the other must not
/// notice.
#[tokio::test(flavor = "multi_thread")]
async fn ports_mode_serves_the_guest_port_and_reaches_nothing() {
    let Some(_) = images_or_skip("network_ports") else {
        return;
    };
    let manager = VmManager::start(Config::default()).await.unwrap();
    let start = Instant::now();
    let ports = options(ports_only());
    let (a, b) = tokio::join!(manager.boot(&ports), manager.boot(&ports));
    let (a, b) = (a.unwrap(), b.unwrap());
    eprintln!("two ports-mode VMs booted in {:?}", start.elapsed());
    let (nonce_a, nonce_b) = (format!("a-{}", nonce()), format!("b-{}", nonce()));
    let server_a = start_guest_server(&a, &nonce_a).await;
    let server_b = start_guest_server(&b, &nonce_b).await;

    // The guest port is served on the host's loopback, on a chosen port.
    let (exposed_a, exposed_b) = (a.exposed()[0], b.exposed()[0]);
    for exposed in [exposed_a, exposed_b] {
        assert_eq!(exposed.guest_port, 8080);
        assert!(exposed.host.ip().is_loopback(), "{exposed:?}");
        assert_ne!(exposed.host.port(), 0);
    }
    assert_ne!(exposed_a.host, exposed_b.host);
    let t = Instant::now();
    let answer = http_get_until(
        exposed_a.host,
        "/hello.txt",
        &nonce_a,
        Duration::from_secs(10),
    );
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    eprintln!("host GET through the exposed port: {:?}", t.elapsed());
    http_get_until(
        exposed_b.host,
        "/hello.txt",
        &nonce_b,
        Duration::from_secs(10),
    );

    // From the guest: no name resolves, no address answers.
    let trap = Trap::new();
    let host_ip = host_ip();
    let env = [
        ("TRAP", trap.port().to_string()),
        (
            "HOST_IP",
            host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        ),
    ];
    let code = format!(
        "{NET_PRELUDE}\n{}",
        r#"
checks = {
    "dns_example": (dns, "example.com"),
    "dns_builtin_host": (dns, "host.containers.internal"),
    "gateway_443": (tcp, "192.168.127.1", 443),
    "gateway_22": (tcp, "192.168.127.1", 22),
    "hostaddr_80": (tcp, "192.168.127.254", 80),
    "hostaddr_443": (tcp, "192.168.127.254", 443),
    "hostaddr_trap": (tcp, "192.168.127.254", TRAP),
    "public_443": (tcp, "1.1.1.1", 443),
    "udp_public_dns": (dns_query, "8.8.8.8", "example.com", 1, 2.0),
}
if HOST_IP:
    checks["host_ip_trap"] = (tcp, HOST_IP, TRAP)
    checks["host_ip_22"] = (tcp, HOST_IP, 22)
print(json.dumps(parallel(checks)))
"#
    );
    let t = Instant::now();
    let results = last_json(&python(&a, &code, &env).await);
    eprintln!("ports mode, guest checks in {:?}: {results}", t.elapsed());
    assert_eq!(results["dns_example"], "fail", "{results}");
    for (check, result) in results.as_object().unwrap() {
        assert_ne!(result, "connected", "{check}: {results}");
        if check.starts_with("udp") {
            assert!(result.is_string(), "{check} got an answer: {results}");
        }
    }
    if host_ip.is_none() {
        eprintln!("no non-loopback host address: host_ip checks skipped");
    }
    assert_eq!(trap.caught(), 0, "the guest reached the host: {results}");

    // gvproxy's forwarding API, as the guest sees it on the gateway's port
    // 80: a unix forward outside gvproxy's own directory (on the host, and
    // over the other VM's exposed socket) must fail, a TCP forward listens
    // only inside gvproxy's empty namespace.
    let pwn = std::env::temp_dir().join(format!("al-net-pwn-{}.sock", nonce()));
    let b_socket = b.workdir().path().join("net").join("port-8080.sock");
    assert!(b_socket.exists(), "{}", b_socket.display());
    let b_before = std::fs::symlink_metadata(&b_socket).unwrap();
    let probe_port = free_host_port();
    let env = [
        ("TRAP", trap.port().to_string()),
        (
            "HOST_IP",
            host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        ),
        ("PWN", pwn.display().to_string()),
        ("B_SOCKET", b_socket.display().to_string()),
        ("PROBE_PORT", probe_port.to_string()),
    ];
    let code = format!(
        "{NET_PRELUDE}\n{}",
        r#"
import urllib.request, urllib.error
def api(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request("http://192.168.127.1" + path, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return [resp.status, resp.read().decode(errors="replace")]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode(errors="replace")]
    except Exception as e:
        return ["error", repr(e)]
probe = int(os.environ["PROBE_PORT"])
remote = "%s:%d" % (HOST_IP or "192.168.127.254", TRAP)
out = {}
out["all"] = api("GET", "/services/forwarder/all")
out["outside"] = api("POST", "/services/forwarder/expose",
                     {"local": os.environ["PWN"], "remote": "tcp://192.168.127.2:8080", "protocol": "unix"})
out["other_vm"] = api("POST", "/services/forwarder/expose",
                      {"local": os.environ["B_SOCKET"], "remote": "tcp://192.168.127.2:8080", "protocol": "unix"})
out["tcp_forward"] = api("POST", "/services/forwarder/expose",
                         {"local": "0.0.0.0:%d" % probe, "remote": remote, "protocol": "tcp"})
def through(port):
    # Connect to the forward (inside gvproxy's namespace), send, and wait:
    # gives gvproxy time to dial its remote before the host counts.
    try:
        with socket.create_connection(("192.168.127.254", port), timeout=3) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return "answered %r" % s.recv(64)
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "error %s" % e.errno
out["through_forward"] = through(probe)
out["all_after"] = api("GET", "/services/forwarder/all")
print(json.dumps(out))
"#
    );
    let results = last_json(&python(&a, &code, &env).await);
    eprintln!("gvproxy API from the guest: {results:#}");
    assert_eq!(results["all"][0], 200, "{results}");
    // /tmp is read-only in gvproxy's mount namespace; the other VM's work
    // dir (0700 root) cannot even be searched by gvproxy's user (or, when
    // the dir above it is private too, is covered there).
    for (attack, refusals) in [
        ("outside", &["read-only file system"][..]),
        (
            "other_vm",
            &["permission denied", "no such file or directory"][..],
        ),
    ] {
        assert_ne!(results[attack][0], 200, "{attack}: {results}");
        let body = results[attack][1].as_str().unwrap_or_default();
        assert!(
            refusals.iter().any(|r| body.contains(r)),
            "{attack}: {body}"
        );
    }
    assert!(!pwn.exists(), "the guest created {}", pwn.display());
    let b_after = std::fs::symlink_metadata(&b_socket).unwrap();
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            b_before.ino(),
            b_after.ino(),
            "the other VM's socket was replaced"
        );
    }
    // The TCP forward, if gvproxy took it, listens in its own namespace:
    // not on the host, and it reaches nothing on the host.
    assert!(
        TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, probe_port)),
            Duration::from_secs(1)
        )
        .is_err(),
        "the guest opened port {probe_port} on the host"
    );
    assert_eq!(trap.caught(), 0, "a forward reached the host: {results}");
    // Both VMs still serve, and B's guest still runs code.
    http_get_until(
        exposed_a.host,
        "/hello.txt",
        &nonce_a,
        Duration::from_secs(10),
    );
    http_get_until(
        exposed_b.host,
        "/hello.txt",
        &nonce_b,
        Duration::from_secs(10),
    );
    assert_eq!(python(&b, "print('b ok')", &[]).await, "b ok\n");

    let gvproxy_pids = [a.gvproxy_pid().unwrap(), b.gvproxy_pid().unwrap()];
    drop((server_a, server_b));
    for mut vm in [a, b] {
        let report = vm.destroy().await;
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        let network = report.network.unwrap();
        assert_eq!(network.mode, "ports");
        assert_eq!(network.exposed.len(), 1);
        assert_eq!((network.bytes_in, network.bytes_out), (0, 0));
    }
    for pid in gvproxy_pids {
        assert!(!alive(pid), "gvproxy {pid} outlived its VM");
    }
    // After teardown the host port is closed.
    let deadline = Instant::now() + Duration::from_secs(2);
    while http_get(exposed_a.host, "/hello.txt").is_ok() {
        assert!(Instant::now() < deadline, "{} still served", exposed_a.host);
        std::thread::sleep(Duration::from_millis(50));
    }
    manager.shutdown().await;
}

/// A free TCP port on the host's loopback (bound, then released).
fn free_host_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A self-signed certificate for `allowed.test` made with the host's
/// `openssl`: (PEM certificate, DER certificate, PKCS#8 DER key).
fn test_certificate(dir: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (the test makes its certificate with it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=allowed.test",
        "-addext",
        "subjectAltName=DNS:allowed.test",
        "-keyout",
        "key.pem",
        "-out",
        "cert.pem",
    ]);
    run(&[
        "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
    ]);
    run(&[
        "pkcs8", "-topk8", "-nocrypt", "-in", "key.pem", "-outform", "DER", "-out", "key.der",
    ]);
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    (read("cert.pem"), read("cert.der"), read("key.der"))
}

/// Allowlist mode against upstreams on the host's loopback.
#[tokio::test(flavor = "multi_thread")]
async fn allowlist_mode_reaches_only_the_allowed_name_on_80_and_443() {
    let Some(_) = images_or_skip("network_allowlist") else {
        return;
    };
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, cert_der, key_der) = test_certificate(dir.path());
    let tls = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert_der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
        )
        .unwrap(),
    );
    let https = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let http = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let https_addr = https.local_addr().unwrap();
    let upstreams = TestResolver(vec![
        ("allowed.test", 443, https_addr),
        ("allowed.test", 80, http.local_addr().unwrap()),
    ]);
    let https_port = https_addr.port();
    serve(https, "tls-upstream-ok", move |tcp| {
        let conn = rustls::ServerConnection::new(Arc::clone(&tls)).ok()?;
        Some(rustls::StreamOwned::new(conn, tcp))
    });
    serve(http, "plain-upstream-ok", Some);

    let config = Config {
        egress_test: EgressTestOverrides {
            resolver: Some(Arc::new(upstreams)),
            allow_private: true,
            ..EgressTestOverrides::default()
        },
        ..Config::default()
    };
    let manager = VmManager::start(config).await.unwrap();
    let network = NetworkRequest {
        allow: Some(vec![DomainPattern::parse("allowed.test").unwrap()]),
        ..NetworkRequest::default()
    };
    let mut vm = manager.boot(&options(network)).await.unwrap();
    let ca = vm
        .client()
        .unwrap()
        .write_file("allowed-ca.pem", 0o644, &cert_pem, Duration::from_secs(10))
        .await;
    ca.unwrap();

    let trap = Trap::new();
    let host_ip = host_ip();
    let env = [
        ("TRAP", trap.port().to_string()),
        (
            "HOST_IP",
            host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        ),
        ("UPSTREAM_PORT", https_port.to_string()),
    ];
    let code = format!(
        "{NET_PRELUDE}\n{}",
        r#"
import http.client, ssl
def fetch(scheme):
    try:
        if scheme == "https":
            ctx = ssl.create_default_context(cafile=os.path.expanduser("~/allowed-ca.pem"))
            c = http.client.HTTPSConnection("allowed.test", 443, timeout=5, context=ctx)
        else:
            c = http.client.HTTPConnection("allowed.test", 80, timeout=5)
        c.request("GET", "/")
        r = c.getresponse()
        return [r.status, r.read().decode()]
    except Exception as e:
        return ["error", repr(e)]
def tls(sni):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection(("192.168.127.254", 443), timeout=5) as s:
            with ctx.wrap_socket(s, server_hostname=sni) as t:
                return "handshake " + t.version()
    except Exception as e:
        return "closed " + type(e).__name__
def http_host(host):
    try:
        with socket.create_connection(("192.168.127.254", 80), timeout=5) as s:
            s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host).encode())
            return recv_all(s)
    except Exception as e:
        return "closed " + type(e).__name__
checks = {
    "https": (fetch, "https"),
    "http": (fetch, "http"),
    "dns_allowed": (dns, "allowed.test"),
    "dns_denied": (dns, "denied.test"),
    "dns_sub": (dns, "www.allowed.test"),
    "tls_denied": (tls, "denied.test"),
    "tls_no_sni": (tls, None),
    "http_denied": (http_host, "denied.test"),
    "txt_allowed": (dns_query, "192.168.127.1", "allowed.test", 16),
    "txt_other": (dns_query, "192.168.127.1", "example.com", 16),
    "mx_other": (dns_query, "192.168.127.1", "example.com", 15),
    "udp_public_dns": (dns_query, "8.8.8.8", "example.com", 1, 2.0),
    "public_443": (tcp, "1.1.1.1", 443),
    "gateway_443": (tcp, "192.168.127.1", 443),
    "upstream_direct": (tcp, "192.168.127.254", int(os.environ["UPSTREAM_PORT"])),
    "hostaddr_trap": (tcp, "192.168.127.254", TRAP),
}
if HOST_IP:
    checks["host_ip_trap"] = (tcp, HOST_IP, TRAP)
    checks["host_ip_443"] = (tcp, HOST_IP, 443)
print(json.dumps(parallel(checks)))
"#
    );
    let t = Instant::now();
    let results = last_json(&python(&vm, &code, &env).await);
    eprintln!(
        "allowlist mode, guest checks in {:?}: {results:#}",
        t.elapsed()
    );

    assert_eq!(
        results["https"],
        serde_json::json!([200, "tls-upstream-ok"]),
        "{results}"
    );
    assert_eq!(
        results["http"],
        serde_json::json!([200, "plain-upstream-ok"]),
        "{results}"
    );
    assert_eq!(
        results["dns_allowed"],
        serde_json::json!(["192.168.127.254"])
    );
    assert_eq!(results["dns_denied"], "fail", "{results}");
    assert_eq!(results["dns_sub"], "fail", "not a wildcard: {results}");
    for check in ["tls_denied", "tls_no_sni"] {
        let result = results[check].as_str().unwrap();
        assert!(result.starts_with("closed"), "{check}: {results}");
    }
    let denied = results["http_denied"].as_str().unwrap();
    assert!(!denied.contains("upstream-ok"), "{denied}");
    assert!(!denied.starts_with("HTTP/1.1 200"), "{denied}");
    // Other query types go to gvproxy's host resolver, which in its empty
    // namespace reaches nothing: no answer records, whatever the rcode.
    for check in ["txt_allowed", "txt_other", "mx_other"] {
        let result = &results[check];
        assert!(
            result.is_string() || result["answers"] == 0,
            "{check}: {results}"
        );
    }
    assert!(results["udp_public_dns"].is_string(), "{results}");
    for check in [
        "public_443",
        "gateway_443",
        "upstream_direct",
        "hostaddr_trap",
        "host_ip_trap",
        "host_ip_443",
    ] {
        assert_ne!(results[check], "connected", "{check}: {results}");
    }
    assert_eq!(trap.caught(), 0, "the guest reached the host: {results}");

    let report = vm.destroy().await;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let network = report.network.unwrap();
    eprintln!("network report: {network:?}");
    assert_eq!(network.mode, "allowlist");
    assert!(network.bytes_out > 0 && network.bytes_in > 0, "{network:?}");
    assert!(network.denied_connections >= 3, "{network:?}");
    manager.shutdown().await;
}

/// None mode through the scheduler: only `lo`, and no network report.
#[tokio::test(flavor = "multi_thread")]
async fn none_mode_has_only_loopback_and_no_report() {
    let Some(_) = images_or_skip("network_none") else {
        return;
    };
    let scheduler = Scheduler::start(Config::default()).await.unwrap();
    let request = RunRequest::new(
        Language::Python,
        "import os\nprint(','.join(sorted(os.listdir('/sys/class/net'))))",
    );
    let result = scheduler.run(request).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&result.stdout), "lo\n");
    assert_eq!(result.exit_code, 0);
    assert_eq!(result.network, None);
    scheduler.shutdown().await;
}

/// gvproxy killed under a running VM: the guest keeps running code, its
/// network is gone, the exposed port fails fast, and teardown leaves
/// nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_gvproxy_cuts_the_network_and_teardown_stays_clean() {
    let Some(_) = images_or_skip("network_gvproxy_killed") else {
        return;
    };
    let manager = VmManager::start(Config::default()).await.unwrap();
    let mut vm = manager.boot(&options(ports_only())).await.unwrap();
    let nonce = nonce();
    let server = start_guest_server(&vm, &nonce).await;
    let exposed = vm.exposed()[0].host;
    http_get_until(exposed, "/hello.txt", &nonce, Duration::from_secs(10));

    let gvproxy = vm.gvproxy_pid().unwrap();
    let qemu = vm.qemu_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(gvproxy).unwrap()),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));

    // The exposed port now fails at once (no hang).
    let t = Instant::now();
    let answer = http_get(exposed, "/hello.txt");
    assert!(
        !answer.as_ref().is_ok_and(|a| a.contains(&nonce)),
        "{answer:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    drop(server);

    // The guest: its network calls fail within their timeouts; the exec
    // itself ends normally (QEMU keeps running without its netdev peer) or,
    // at worst, with a clean error: never a hang.
    let t = Instant::now();
    let outcome = vm
        .exec(
            ExecRequest {
                mode: Default::default(),
                language: Language::Python,
                code: "import socket\ns = socket.socket()\ns.settimeout(2)\n\
                       try:\n    s.connect(('192.168.127.1', 80)); print('connected')\n\
                       except OSError as e:\n    print('failed', type(e).__name__)\n"
                    .into(),
                timeout_ms: 15_000,
                env: BTreeMap::new(),
                cwd: None,
            },
            |_, _| {},
        )
        .await;
    eprintln!("exec after gvproxy died ({:?}): {outcome:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(20));
    match &outcome {
        Ok(out) => {
            assert_eq!(out.completion.exit_code, 0);
            assert!(
                String::from_utf8_lossy(&out.stdout).starts_with("failed"),
                "{out:?}"
            );
        }
        Err(e) => assert!(
            matches!(e, ExecError::VmDied { .. } | ExecError::Protocol { .. }),
            "{e}"
        ),
    }

    let id = vm.id().to_owned();
    let workdir = vm.workdir().path().to_path_buf();
    let report = vm.destroy().await;
    eprintln!("teardown after gvproxy died: {report:?}");
    assert!(report.workdir_removed);
    assert!(!workdir.exists());
    assert!(!alive(gvproxy), "gvproxy {gvproxy} still there");
    assert!(!alive(qemu), "QEMU {qemu} still there");
    assert!(qemu_processes_mentioning(&id).is_empty());
    manager.shutdown().await;
}

/// Bad network input is refused before any VM starts.
#[tokio::test(flavor = "multi_thread")]
async fn bad_network_input_is_refused_before_any_vm_starts() {
    // The parsers refuse malformed names and ports.
    for name in [
        "",
        "bad..name",
        "-lead.example",
        "sp ace.example",
        "*.*.example.com",
        "exa_mple.com",
        "under*.example.com",
        &format!("{}.com", "a".repeat(64)),
        &format!("{}.com", "a.".repeat(130)),
    ] {
        assert!(DomainPattern::parse(name).is_err(), "{name:?} accepted");
    }
    for expose in [
        "0",
        "70000",
        "8080:0",
        "8080:65536",
        "x",
        "8080/udp",
        ":80",
        "",
    ] {
        assert!(Expose::parse(expose).is_err(), "{expose:?} accepted");
    }

    let Some(_) = images_or_skip("network_bad_input") else {
        return;
    };
    let run_dir = tempfile::Builder::new()
        .prefix("al-nbad")
        .tempdir_in("/tmp")
        .unwrap();
    let scheduler = Scheduler::start(Config {
        run_dir: run_dir.path().to_path_buf(),
        overlay_pool_target: 0,
        ..Config::default()
    })
    .await
    .unwrap();
    let expose = |guest_port, host_port| Expose {
        host_port,
        ..Expose::tcp(guest_port)
    };
    let cases = [
        ("guest port 0", None, vec![expose(0, None)]),
        ("host port 0", None, vec![expose(8080, Some(0))]),
        (
            "duplicate host port",
            None,
            vec![expose(8080, Some(9000)), expose(8081, Some(9000))],
        ),
        (
            "duplicate guest port",
            None,
            vec![expose(8080, None), expose(8080, None)],
        ),
        ("empty allowlist", Some(Vec::new()), Vec::new()),
    ];
    for (case, allow, exposes) in cases {
        let mut request = RunRequest::new(Language::Python, "print(1)");
        request.spec.network = NetworkRequest {
            allow,
            exposes,
            expose_address: None,
        };
        let start = Instant::now();
        let result = scheduler.run(request).await;
        match result {
            Err(RunError::Input(InputError::Invalid { field, message })) => {
                assert_eq!(field, "network", "{case}: {message}");
            }
            other => panic!("{case}: {other:?}"),
        }
        assert!(start.elapsed() < Duration::from_millis(500), "{case}");
    }
    let vms = run_dir.path().join("vms");
    let left: Vec<_> = std::fs::read_dir(&vms)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a VM was started: {left:?}");
    scheduler.shutdown().await;

    // And through the CLI: exit 125, naming the field, at once.
    for args in [
        &["run", "--allow-domain", "bad..name", "print(1)"][..],
        &[
            "run",
            "--expose",
            "8080:9000",
            "--expose",
            "8081:9000",
            "print(1)",
        ][..],
        &["run", "--expose", "65536", "print(1)"][..],
    ] {
        let start = Instant::now();
        let o = airlock_cli(args, &[]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {stderr}");
        assert!(stderr.contains("network"), "{args:?}: {stderr}");
        assert!(start.elapsed() < Duration::from_secs(2), "{args:?}");
    }
}

fn airlock_cli(args: &[&str], env: &[(&str, &Path)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_airlock-under-test"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Entries left under `dir` (recursively, files and dirs).
fn entries_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flatten()
        .flat_map(|e| {
            let path = e.path();
            let mut below = entries_under(&path);
            below.push(path);
            below
        })
        .collect()
}

/// gvproxy missing: the CLI exits 125 naming gvproxy, and leaves nothing.
#[test]
fn a_missing_gvproxy_exits_125_and_leaves_nothing() {
    if images_or_skip("network_missing_gvproxy").is_none() {
        return;
    }
    let run_dir = tempfile::Builder::new()
        .prefix("al-ngv")
        .tempdir_in("/tmp")
        .unwrap();
    let o = airlock_cli(
        &["run", "--expose", "8080", "-l", "raw", "echo never"],
        &[
            ("AIRLOCK_GVPROXY", Path::new("/nonexistent/gvproxy")),
            ("AIRLOCK_RUN_DIR", run_dir.path()),
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    eprintln!("{stderr}");
    assert_eq!(o.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("gvproxy"), "{stderr}");
    assert!(String::from_utf8_lossy(&o.stdout).is_empty());
    // Nothing at all may be left (no overlay pool, no work dir).
    let left: Vec<_> = entries_under(run_dir.path())
        .into_iter()
        .filter(|p| !p.is_dir())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(entries_under(&run_dir.path().join("vms")).is_empty());
    assert!(qemu_processes_mentioning(run_dir.path().to_str().unwrap()).is_empty());
}

/// `airlock run --expose 8080` prints the host address, which serves the
/// guest's server while the code runs.
#[test]
fn the_cli_prints_the_exposed_address_and_it_serves() {
    if images_or_skip("network_cli_expose").is_none() {
        return;
    }
    let code = r#"
import http.server
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"cli-expose-ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("0.0.0.0", 8080), Hello)
server.timeout = 25
server.handle_request()
print("served")
"#;
    let mut child = Command::new(env!("CARGO_BIN_EXE_airlock-under-test"))
        .args(["run", "--expose", "8080", "-t", "30", "-l", "python", code])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let prefix = "airlock: guest port 8080 is served at ";
    let mut seen = Vec::new();
    let addr: SocketAddr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}; stderr so far: {seen:?}"));
        if let Some(addr) = line.trim().strip_prefix(prefix) {
            break addr.parse().unwrap();
        }
        seen.push(line);
    };
    assert!(addr.ip().is_loopback(), "{addr}");
    // The guest server may start a moment after the address is printed.
    let answer = http_get_until(addr, "/", "cli-expose-ok", Duration::from_secs(20));
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let o = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "served\n");
    assert_eq!(o.status.code(), Some(0));
}

/// Boot time with and without a network (5 boots each, alternating);
/// prints the numbers for docs/network.md.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, not a check: run with --ignored --nocapture"]
async fn measure_boot_time_with_and_without_network() {
    let Some(_) = images_or_skip("network_measure") else {
        return;
    };
    let manager = VmManager::start(Config::default()).await.unwrap();
    let allow = NetworkRequest {
        allow: Some(vec![DomainPattern::parse("pypi.org").unwrap()]),
        ..NetworkRequest::default()
    };
    let modes = [
        ("none", NetworkRequest::default()),
        ("ports", ports_only()),
        ("allowlist", allow),
    ];
    let mut times: BTreeMap<&str, Vec<u128>> = BTreeMap::new();
    for _ in 0..5 {
        for (name, network) in &modes {
            let start = Instant::now();
            let mut vm = manager.boot(&options(network.clone())).await.unwrap();
            times
                .entry(name)
                .or_default()
                .push(start.elapsed().as_millis());
            vm.destroy().await;
        }
    }
    for (name, mut ms) in times {
        ms.sort_unstable();
        eprintln!(
            "boot to agent, {name}: median {} ms, all {ms:?}",
            ms[ms.len() / 2]
        );
    }
    manager.shutdown().await;
}
