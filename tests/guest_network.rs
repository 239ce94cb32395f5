//! The guest side of networking, on real boots of the python image with a
//! plain QEMU command (argv from `airlock-qemu`, no orchestrator):
//!
//! - without a network the guest has only `lo`, which is up: code can serve
//!   and connect on 127.0.0.1, `localhost` resolves, and a DNS lookup fails
//!   at once (no route to the name server);
//! - with a network (QEMU user networking set up with gvproxy's addresses)
//!   the kernel has configured eth0 statically as 192.168.127.2/24 with a
//!   default route via 192.168.127.1, the guest reaches a TCP server on the
//!   host's loopback at 192.168.127.254, and its DNS queries go to
//!   192.168.127.1 (seen in a capture of the VM's frames).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock_protocol::client::ExecOutput;
use airlock_protocol::{ExecRequest, Language};
use airlock_qemu::{NetworkAttachment, GATEWAY_IPV4, GUEST_IPV4, HOST_IPV4};
use airlock_tests::{boot_plain, host_caps, images_or_skip, PlainVm};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Runs `code` with python3 as the sandbox user; returns its stdout, after
/// checking it exited 0.
async fn python(vm: &PlainVm, code: &str, env: BTreeMap<String, String>) -> String {
    let out: ExecOutput = vm
        .client
        .exec_collect(
            ExecRequest {
                mode: Default::default(),
                language: Language::Python,
                code: code.into(),
                timeout_ms: 30_000,
                env,
                cwd: None,
            },
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let console = std::fs::read_to_string(&vm.console_log).unwrap_or_default();
    assert_eq!(
        out.completion.exit_code,
        0,
        "stdout:\n{stdout}\nstderr:\n{}\nconsole:\n{console}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Checks shared by both VMs: loopback, `localhost`, the resolver config.
const LOOPBACK_CHECKS: &str = r#"
import os, socket
print("ifaces", ",".join(sorted(os.listdir("/sys/class/net"))))
print("lo_up", int(open("/sys/class/net/lo/flags").read(), 16) & 1)
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
cli = socket.create_connection(srv.getsockname(), timeout=5)
conn, _ = srv.accept()
cli.sendall(b"ping")
print("loopback", conn.recv(4).decode())
print("localhost", socket.gethostbyname("localhost"))
print("resolv", repr(open("/etc/resolv.conf").read()))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn without_a_network_the_guest_has_only_a_working_loopback() {
    let Some(images) = images_or_skip("guest_network_none") else {
        return;
    };
    let caps = host_caps(&images).await;
    let start = Instant::now();
    let mut vm = boot_plain(
        &images,
        &caps,
        Language::Python,
        NetworkAttachment::None,
        |_| Vec::new(),
    )
    .await;
    eprintln!("no network: booted to agent in {:?}", start.elapsed());

    let code = format!(
        "{LOOPBACK_CHECKS}\n{}",
        r#"
import time
t = time.monotonic()
try:
    socket.getaddrinfo("example.com", 80, socket.AF_INET)
    print("dns resolved")
except socket.gaierror:
    print("dns failed")
print("dns_ms", int((time.monotonic() - t) * 1000))
"#
    );
    let out = python(&vm, &code, BTreeMap::new()).await;

    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..6],
        [
            "ifaces lo",
            "lo_up 1",
            "loopback ping",
            "localhost 127.0.0.1",
            "resolv 'nameserver 192.168.127.1\\n'",
            "dns failed",
        ],
        "{out}"
    );
    // No route to the name server: the resolver gives up at once instead of
    // waiting for its timeouts (5 s per try).
    let dns_ms: u64 = lines[6].strip_prefix("dns_ms ").unwrap().parse().unwrap();
    assert!(dns_ms < 1000, "a lookup without a network took {dns_ms} ms");
    vm.child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_network_eth0_is_static_and_reaches_the_host_and_the_dns_gateway() {
    let Some(images) = images_or_skip("guest_network_user") else {
        return;
    };
    let caps = host_caps(&images).await;
    // A TCP server on the host's loopback: the guest reaches it at HOST_IPV4.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut conn, peer) = listener.accept().await.unwrap();
        conn.write_all(b"hello from the host").await.unwrap();
        peer
    });
    // Every frame of the VM's NIC, to see where its DNS queries go.
    let dump = |dir: &Path| -> Vec<OsString> {
        let mut object = OsString::from("filter-dump,id=dump0,netdev=n0,file=");
        object.push(dir.join("net.pcap"));
        vec!["-object".into(), object]
    };
    let start = Instant::now();
    let network = NetworkAttachment::User {
        host_forwards: Vec::new(),
    };
    let mut vm = boot_plain(&images, &caps, Language::Python, network, dump).await;
    eprintln!("user network: booted to agent in {:?}", start.elapsed());

    let code = format!(
        "{LOOPBACK_CHECKS}\n{}",
        r#"
import fcntl, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def eth0(request):
    reply = fcntl.ioctl(s.fileno(), request, struct.pack("256s", b"eth0"))
    return socket.inet_ntoa(reply[20:24])
print("eth0", eth0(0x8915), eth0(0x891B))  # SIOCGIFADDR, SIOCGIFNETMASK
routes = [r.split() for r in open("/proc/net/route").read().splitlines()[1:]]
for r in routes:
    if r[1] == "00000000":
        print("default", r[0], socket.inet_ntoa(struct.pack("<I", int(r[2], 16))))
with socket.create_connection(("HOST_IPV4", PORT), timeout=10) as c:
    print("host", c.recv(64).decode())
try:
    socket.getaddrinfo("airlock-dns-probe.example", 80, socket.AF_INET)
except socket.gaierror:
    pass
"#
        .replace("HOST_IPV4", &HOST_IPV4.to_string())
        .replace("PORT", &port.to_string())
    );
    // One quick try: the answer does not matter, only where the query goes.
    let env = BTreeMap::from([("RES_OPTIONS".into(), "timeout:1 attempts:1".into())]);
    let out = python(&vm, &code, env).await;

    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "ifaces eth0,lo",
            "lo_up 1",
            "loopback ping",
            "localhost 127.0.0.1",
            "resolv 'nameserver 192.168.127.1\\n'",
            "eth0 192.168.127.2 255.255.255.0",
            "default eth0 192.168.127.1",
            "host hello from the host",
        ],
        "{out}"
    );
    let peer = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert!(peer.ip().is_loopback(), "{peer}");

    let pcap = std::fs::read(vm.dir.path().join("net.pcap")).unwrap();
    assert!(
        sent_dns_query(&pcap, b"\x11airlock-dns-probe\x07example"),
        "no DNS query from {GUEST_IPV4} to {GATEWAY_IPV4}:53 in the capture ({} bytes)",
        pcap.len()
    );
    vm.child.kill().await.unwrap();
}

/// Whether `pcap` holds an IPv4 UDP datagram (20-byte header) from the
/// guest to the gateway's port 53 whose payload has `qname`.
fn sent_dns_query(pcap: &[u8], qname: &[u8]) -> bool {
    let addrs: Vec<u8> = GUEST_IPV4
        .octets()
        .into_iter()
        .chain(GATEWAY_IPV4.octets())
        .collect();
    pcap.windows(addrs.len() + 4)
        .enumerate()
        .filter(|(_, w)| w.starts_with(&addrs) && w[addrs.len() + 2..] == [0, 53])
        .any(|(i, _)| {
            let udp_payload = i + addrs.len() + 8;
            let end = (udp_payload + 512).min(pcap.len());
            pcap[udp_payload.min(end)..end]
                .windows(qname.len())
                .any(|w| w == qname)
        })
}
