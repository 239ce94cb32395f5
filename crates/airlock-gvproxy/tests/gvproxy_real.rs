//! Real gvproxy tests: launch in empty namespaces, the API, DNS zones and
//! forwards, listeners bound in the namespace, teardown.
//!
//! They need root and gvproxy (`cargo xtask test` installs it). Without
//! them they are skipped with a message, unless `AIRLOCK_REQUIRE_VM_TESTS=1`
//! (set by `cargo xtask test`), which turns the skip into a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers.
// One test installs a failing pre-exec hook, which needs `unsafe`.
#![allow(unsafe_code)]

use airlock_gvproxy::{
    bind_tcp_in_netns, find_gvproxy, in_netns, DomainPattern, Expose, GvproxyBinary, GvproxyError,
    GvproxyHandle, GvproxyLauncher, GvproxySpec, LaunchOptions, NamespaceKind, NetworkMode,
    NetworkPolicy, SearchPath,
};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The gvproxy to test with, or `None` (skip) when the host cannot run
/// these tests.
async fn gvproxy() -> Option<GvproxyBinary> {
    let required = std::env::var_os("AIRLOCK_REQUIRE_VM_TESTS").is_some_and(|v| v == "1");
    let skip = |why: String| {
        assert!(!required, "AIRLOCK_REQUIRE_VM_TESTS=1 but {why}");
        eprintln!("skipping a real gvproxy test: {why}");
        None
    };
    if !nix::unistd::geteuid().is_root() {
        return skip("not root".into());
    }
    match find_gvproxy(&SearchPath::from_env()).await {
        Ok(binary) => Some(binary),
        Err(e) => skip(e.to_string()),
    }
}

fn policy(vm_id: &str, mode: NetworkMode) -> NetworkPolicy {
    NetworkPolicy {
        vm_id: vm_id.into(),
        mode,
        allow: match mode {
            NetworkMode::Allowlist => vec![
                DomainPattern::parse("pypi.org").unwrap(),
                DomainPattern::parse("*.pythonhosted.org").unwrap(),
            ],
            _ => vec![],
        },
        exposes: vec![Expose::parse("8080").unwrap()],
    }
}

async fn launch(
    binary: &GvproxyBinary,
    dir: &Path,
    mode: NetworkMode,
    options: LaunchOptions,
) -> GvproxyHandle {
    let spec = GvproxySpec::new(policy("vm-real", mode), dir.join("net"));
    GvproxyLauncher::new(binary.clone(), options)
        .unwrap()
        .launch(&spec, None)
        .await
        .unwrap()
}

/// gvproxy launched in `mode` with default options in a fresh temp dir,
/// or `None` (test skipped) where it cannot run.
async fn start(mode: NetworkMode) -> Option<(tempfile::TempDir, GvproxyHandle)> {
    let binary = gvproxy().await?;
    let dir = tempfile::tempdir().unwrap();
    let gv = launch(&binary, dir.path(), mode, LaunchOptions::default()).await;
    Some((dir, gv))
}

fn nsenter(pid: u32, script: &str) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["bash", "-c", script])
        .output()
        .expect("nsenter runs")
}

#[tokio::test]
async fn launch_pushes_zones_and_forwards_and_stop_cleans_up() {
    let Some((_dir, mut gv)) = start(NetworkMode::Allowlist).await else {
        return;
    };

    // Listening before QEMU would start.
    assert!(gv.qemu_socket().exists());
    assert!(gv.api_socket().exists());
    let zones = gv.api().get("/services/dns/all").await.unwrap();
    assert!(
        zones.contains(r#""Name":"pypi.org","IP":"192.168.127.254""#),
        "{zones}"
    );
    assert!(
        zones.contains(r"(?i)^([a-z0-9-]+\\.)+pythonhosted\\.org$"),
        "{zones}"
    );
    assert!(zones.contains(r#"{"Name":"","Records""#), "{zones}");
    let forwards = gv.api().get("/services/forwarder/all").await.unwrap();
    let socket = &gv.exposed_ports()[0].socket.clone();
    assert!(
        forwards.contains(&format!(r#""local":"{}""#, socket.display())),
        "{forwards}"
    );
    assert!(forwards.contains("tcp://192.168.127.2:8080"), "{forwards}");
    assert!(socket.exists());
    assert!(gv.ready_after() > Duration::ZERO);

    let report = gv.stop().await;
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(!report.exited_before_stop && !report.forced, "{report:?}");
    assert!(report.exit.is_some(), "{report:?}");
    assert!(report.removed.contains(socket), "{report:?}");
    for file in [
        gv.qemu_socket(),
        gv.api_socket(),
        socket.clone(),
        gv.paths().pid_file(),
    ] {
        assert!(!file.exists(), "{} left behind", file.display());
    }
    assert!(!Path::new(&format!("/proc/{}", gv.pid())).exists());
    let again = gv.stop().await;
    assert!(again.already_stopped && again.removed.is_empty());
}

#[tokio::test]
async fn namespace_has_only_lo_and_no_route() {
    let Some((_dir, mut gv)) = start(NetworkMode::Ports).await else {
        return;
    };

    // /proc/net follows the reader's namespace (/sys/class/net would not).
    let out = nsenter(
        gv.pid(),
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; echo ROUTES; tail -n +2 /proc/net/route",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text.trim(), "lo\nROUTES", "{text}");
    let link = nsenter(gv.pid(), "ip -o link show lo");
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("<LOOPBACK,UP,LOWER_UP>"), "{link}");
    gv.stop().await;
}

#[tokio::test]
async fn listener_bound_in_netns_is_reachable_there_only() {
    let Some((_dir, mut gv)) = start(NetworkMode::Allowlist).await else {
        return;
    };

    // Port 80 as the egress proxy uses it, and a free port for the host probe.
    let l80 =
        bind_tcp_in_netns(gv.netns_fd(), SocketAddr::from((Ipv4Addr::LOCALHOST, 80))).unwrap();
    let listener =
        bind_tcp_in_netns(gv.netns_fd(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(false).unwrap();

    // A thread that joined the namespace connects.
    let client = in_netns(gv.netns_fd(), move || {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        s.write_all(b"ping")?;
        Ok(s)
    })
    .unwrap();
    let (mut served, _) = listener.accept().unwrap();
    let mut buf = [0u8; 4];
    served.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    drop(client);

    // So does another process inside it.
    let reply = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.write_all(b"hello from the host process\n").unwrap();
        listener
    });
    let out = nsenter(
        gv.pid(),
        &format!("exec 3<>/dev/tcp/127.0.0.1/{port} && head -c 27 <&3"),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the host process",
        "{out:?}"
    );
    let listener = reply.join().unwrap();

    // The host's own loopback does not reach it.
    listener.set_nonblocking(true).unwrap();
    let from_host = TcpStream::connect_timeout(
        &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        Duration::from_millis(500),
    );
    if from_host.is_ok() {
        // Some host service owns that port: it still must not be ours.
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        listener.accept().is_err(),
        "a host connection reached the namespace's listener"
    );
    drop(l80);
    gv.stop().await;
}

#[tokio::test]
async fn gvproxy_cannot_touch_files_outside_its_dir() {
    let Some((dir, mut gv)) = start(NetworkMode::Ports).await else {
        return;
    };

    // A unix forward removes the file at its path first: the guest can ask
    // for one too (gateway port 80). Outside gvproxy's dir it must fail.
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "keep me").unwrap();
    let body = format!(
        r#"{{"local":"{}","remote":"tcp://192.168.127.2:22","protocol":"unix"}}"#,
        victim.display()
    );
    let err = gv
        .api()
        .post_json("/services/forwarder/expose", &body)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("read-only file system"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");

    // Inside its dir it works.
    let inside = gv.paths().dir().join("extra.sock");
    let body = format!(
        r#"{{"local":"{}","remote":"tcp://192.168.127.2:22","protocol":"unix"}}"#,
        inside.display()
    );
    gv.api()
        .post_json("/services/forwarder/expose", &body)
        .await
        .unwrap();
    assert!(inside.exists());
    gv.stop().await;
}

#[tokio::test]
async fn killed_gvproxy_still_stops_cleanly() {
    let Some((_dir, mut gv)) = start(NetworkMode::Ports).await else {
        return;
    };
    let socket = gv.exposed_ports()[0].socket.clone();

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(gv.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let report = gv.stop().await;
    assert!(report.exited_before_stop, "{report:?}");
    assert_eq!(report.exit, Some(airlock_gvproxy::ChildExit::Signal(9)));
    assert!(report.problems.is_empty(), "{report:?}");
    for file in [gv.qemu_socket(), gv.api_socket(), socket] {
        assert!(!file.exists(), "{} left behind", file.display());
    }
}

/// The value of `field` in `/proc/<pid>/status`.
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .to_owned()
}

/// Asserts gvproxy `pid` holds no capability in any set and cannot gain one.
fn assert_no_capabilities(pid: u32) {
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(pid, set), "0000000000000000", "{set}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
}

#[tokio::test]
async fn gvproxy_runs_unprivileged_and_sees_only_its_dir() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(binary) = gvproxy().await else {
        return;
    };
    // Private like a VM's work dir: gvproxy's user cannot search it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let secret = dir.path().join("root.qcow2");
    std::fs::write(&secret, "the VM's disk").unwrap();
    let mut gv = launch(
        &binary,
        dir.path(),
        NetworkMode::Allowlist,
        LaunchOptions::default(),
    )
    .await;
    let pid = gv.pid();
    let nobody = airlock_gvproxy::RunAs::default_user().unwrap();

    // uid and gid (real, effective, saved, filesystem), no groups, no
    // capabilities, no way to gain any.
    let ids = |id| format!("{id}\t{id}\t{id}\t{id}");
    assert_eq!(status_field(pid, "Uid"), ids(nobody.uid));
    assert_eq!(status_field(pid, "Gid"), ids(nobody.gid));
    assert_ne!(nobody.uid, 0);
    assert_eq!(status_field(pid, "Groups"), "");
    assert_no_capabilities(pid);

    // Its dir is its own and private; it made its sockets there, and they
    // work (zones pushed, a listener for the egress proxy bound).
    let meta = std::fs::metadata(gv.paths().dir()).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (nobody.uid, nobody.gid));
    assert_eq!(meta.mode() & 0o777, 0o700);
    assert_eq!(
        std::fs::metadata(gv.api_socket()).unwrap().uid(),
        nobody.uid
    );
    let zones = gv.api().get("/services/dns/all").await.unwrap();
    assert!(zones.contains("pypi.org"), "{zones}");
    let l443 = bind_tcp_in_netns(gv.netns_fd(), SocketAddr::from((Ipv4Addr::LOCALHOST, 443)));
    assert!(l443.is_ok(), "{l443:?}");

    // A TCP forward asked over its API (the guest can ask too) cannot take
    // a privileged port of its namespace, where the egress proxy listens.
    let forward = |port: u16| {
        format!(r#"{{"local":"127.0.0.1:{port}","remote":"192.168.127.2:22","protocol":"tcp"}}"#)
    };
    let err = gv
        .api()
        .post_json("/services/forwarder/expose", &forward(81))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    gv.api()
        .post_json("/services/forwarder/expose", &forward(8081))
        .await
        .unwrap();

    // In its mount namespace the private dir above holds only the path to
    // its own: the disk beside it is not there.
    let inside = |p: &Path| format!("/proc/{pid}/root{}", p.display());
    assert!(Path::new(&inside(&gv.api_socket())).exists());
    let hidden = std::fs::metadata(inside(&secret));
    assert_eq!(
        hidden.unwrap_err().kind(),
        std::io::ErrorKind::NotFound,
        "gvproxy sees {}",
        secret.display()
    );
    let report = gv.stop().await;
    assert!(report.problems.is_empty(), "{report:?}");
    assert!(!report.exited_before_stop, "{report:?}");
}

#[tokio::test]
async fn root_as_run_as_is_refused() {
    let Some(binary) = gvproxy().await else {
        return;
    };
    let options = LaunchOptions {
        run_as: Some(airlock_gvproxy::RunAs { uid: 0, gid: 0 }),
        ..LaunchOptions::default()
    };
    let err = GvproxyLauncher::new(binary, options).unwrap_err();
    assert!(matches!(err, GvproxyError::InvalidOptions { .. }), "{err}");
}

#[tokio::test]
async fn user_namespace_path_works_too() {
    let Some(binary) = gvproxy().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let options = LaunchOptions {
        namespace: Some(NamespaceKind::UserNamespace),
        ..LaunchOptions::default()
    };
    let mut gv = launch(&binary, dir.path(), NetworkMode::Allowlist, options).await;
    let zones = gv.api().get("/services/dns/all").await.unwrap();
    assert!(zones.contains("pypi.org"), "{zones}");
    let listener = bind_tcp_in_netns(gv.netns_fd(), SocketAddr::from((Ipv4Addr::LOCALHOST, 443)));
    assert!(listener.is_ok(), "{listener:?}");
    // It keeps the caller's uid (mapped to 0 inside), with no capability.
    assert_no_capabilities(gv.pid());
    let report = gv.stop().await;
    assert!(report.problems.is_empty(), "{report:?}");
}

#[tokio::test]
async fn failing_child_setup_keeps_gvproxy_from_running() {
    let Some(binary) = gvproxy().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spec = GvproxySpec::new(
        policy("vm-hook", NetworkMode::Ports),
        dir.path().join("net"),
    );
    let launcher = GvproxyLauncher::new(binary, LaunchOptions::default()).unwrap();
    let hook: airlock_gvproxy::ChildSetup = Box::new(|cmd| {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure only builds an inline OS error.
        unsafe {
            cmd.pre_exec(|| Err(std::io::Error::from_raw_os_error(libc::EACCES)));
        }
    });
    let err = launcher.launch(&spec, Some(hook)).await.unwrap_err();
    assert!(matches!(err, GvproxyError::Spawn { .. }), "{err}");
    assert!(!spec.paths.api_socket().exists());
}

#[tokio::test]
async fn child_setup_runs_in_gvproxy() {
    let Some(binary) = gvproxy().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let spec = GvproxySpec::new(
        policy("vm-hook2", NetworkMode::Ports),
        dir.path().join("net"),
    );
    let launcher = GvproxyLauncher::new(binary, LaunchOptions::default()).unwrap();
    let hook: airlock_gvproxy::ChildSetup = Box::new(|cmd| {
        cmd.env("AIRLOCK_TEST_MARK", "joined");
    });
    let mut gv = launcher.launch(&spec, Some(hook)).await.unwrap();
    let environ = std::fs::read(format!("/proc/{}/environ", gv.pid())).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains("AIRLOCK_TEST_MARK=joined"));
    gv.stop().await;
}

#[tokio::test]
async fn gvproxy_that_exits_at_once_is_reported_with_its_output() {
    let Some(mut binary) = gvproxy().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake-gvproxy");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'fake gvproxy: bad flag' >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    binary.path = fake;
    let spec = GvproxySpec::new(
        policy("vm-fake", NetworkMode::Ports),
        dir.path().join("net"),
    );
    let launcher = GvproxyLauncher::new(binary, LaunchOptions::default()).unwrap();
    let started = Instant::now();
    let err = launcher.launch(&spec, None).await.unwrap_err().to_string();
    assert!(
        err.contains("exited before it was ready (exit code 3)"),
        "{err}"
    );
    assert!(err.contains("fake gvproxy: bad flag"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn missing_binary_is_a_spawn_error() {
    let Some(mut binary) = gvproxy().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    binary.path = dir.path().join("no-such-gvproxy");
    let spec = GvproxySpec::new(
        policy("vm-missing", NetworkMode::Ports),
        dir.path().join("net"),
    );
    let launcher = GvproxyLauncher::new(binary, LaunchOptions::default()).unwrap();
    let err = launcher.launch(&spec, None).await.unwrap_err();
    assert!(matches!(err, GvproxyError::Spawn { .. }), "{err}");
}

/// Start time (spawn -> ready: sockets up, zones and one forward pushed)
/// and RSS of one gvproxy. `cargo test -p airlock-gvproxy --test
/// gvproxy_real -- --ignored --nocapture measure`.
#[tokio::test]
#[ignore = "measurement: run by hand"]
async fn measure_start_time_and_rss() {
    let Some(binary) = gvproxy().await else {
        return;
    };
    let mut times = Vec::new();
    let mut rss_kib = Vec::new();
    for _ in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let mut gv = launch(
            &binary,
            dir.path(),
            NetworkMode::Allowlist,
            LaunchOptions::default(),
        )
        .await;
        times.push(gv.ready_after());
        let rss = status_field(gv.pid(), "VmRSS")
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .unwrap();
        rss_kib.push(rss);
        gv.stop().await;
    }
    times.sort();
    rss_kib.sort();
    println!(
        "gvproxy {}: start p50 {:?}, min {:?}, max {:?}; RSS p50 {} KiB, max {} KiB",
        binary.version,
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        rss_kib[rss_kib.len() / 2],
        rss_kib[rss_kib.len() - 1]
    );
}
