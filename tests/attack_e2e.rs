//! The attack suite: what untrusted code (or a hostile request) tries, on
//! real VMs (TCG here), and the safe behaviour each attempt must meet. Each
//! case carries a one-line comment saying what it proves.
//!
//! VMs are shared wherever one case cannot spoil the next: one VM runs the
//! privilege and no-network cases exec after exec, one the file API cases,
//! one the non-destructive containment cases; fork and thread bombs,
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

use airlock::{
    Config, EgressTestOverrides, Error, NetworkRequest, RunRequest, Scheduler, Vm, VmManager,
    VmOptions,
};
use airlock_gvproxy::DomainPattern;
use airlock_protocol::{ErrorKind, ExecRequest, Language, ProtocolError};
use airlock_tests::{
    exec_request, group_dirs, images_or_skip, last_json, python, serve, text, wait_until_gone,
    TestResolver, Trap, NET_PRELUDE,
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
        tenant: TENANT.into(),
        language,
        image: None,
        memory_mib,
        vcpus: 1,
        network,
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
    // A write announced over the size cap (512 MiB) is refused before any byte is sent.
    let huge = vec![0u8; (512 << 20) + 1];
    let started = Instant::now();
    refused(
        "write over the cap",
        client.write_file("huge", 0o644, &huge, t).await,
        LimitExceeded,
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(huge);
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
            Err(Error::Protocol { source, .. }) => {
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
            matches!(&result, Err(Error::Protocol { .. })),
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
            Err(Error::InvalidInput { field, message }) => {
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
        },
        ..config(dir.path())
    })
    .await
    .unwrap();
    let network = NetworkRequest {
        allow: Some(vec![DomainPattern::parse("allowed.test").unwrap()]),
        exposes: Vec::new(),
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
