//! Shared support for Airlock's end-to-end tests (in `tests/*.rs` of this
//! package): finding the guest images and QEMU, and skipping with a clear
//! message where they are missing; finding what a VM left on the host
//! (processes, limits groups); and the guest-network checks shared by the
//! network and attack tests (a Python prelude, host traps, test upstreams,
//! recording HTTP and HTTPS upstreams in [`upstream`]).
//!
//! `cargo xtask test` builds the images first and sets
//! `AIRLOCK_REQUIRE_VM_TESTS=1`, so there a missing prerequisite fails the
//! test instead of skipping it: VM tests never silently skip on a machine
//! that is set up to run them.

use airlock::{Images, Vm};
use airlock_egress::{ResolveFuture, Resolver};
use airlock_protocol::client::Client;
use airlock_protocol::{ExecRequest, Language};
use airlock_qemu::{
    probe_host, BootImages, DiskAccess, HostCaps, NetworkAttachment, ProbeConfig, QemuArgs,
    RootDisk, VmSpec,
};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};

pub mod upstream;

/// A run observer that records the stages a run went through and drops
/// its output.
#[derive(Debug, Default)]
pub struct Stages(pub Vec<airlock::Stage>);

impl airlock::RunObserver for Stages {
    fn stage(&mut self, stage: airlock::Stage) {
        self.0.push(stage);
    }
    fn output(&mut self, _: airlock::OutputStream, _: &[u8]) {}
}

/// How long a plain boot may take to reach the agent.
pub const BOOT_DEADLINE: Duration = Duration::from_secs(90);

/// The variable that turns skips into failures.
pub const REQUIRE_ENV: &str = "AIRLOCK_REQUIRE_VM_TESTS";

/// Whether VM tests must run (not skip).
pub fn vm_tests_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// As [`images_or_skip`], for a test that needs the python-data image too.
///
/// # Panics
/// As [`images_or_skip`], and when that disk is missing while VM tests
/// are required.
pub fn data_images_or_skip(test: &str) -> Option<Images> {
    let images = images_or_skip(test)?;
    if images.disk(airlock::Image::PythonData).is_ok() {
        return Some(images);
    }
    let why = "no python-data disk (cargo xtask images builds it)";
    assert!(!vm_tests_required(), "{test}: {why}");
    eprintln!("SKIP {test}: {why}");
    None
}

/// The guest images and a QEMU binary, or `None` after printing why the
/// test is skipped.
///
/// # Panics
/// When something is missing and [`vm_tests_required`].
pub fn images_or_skip(test: &str) -> Option<Images> {
    let missing = match Images::load(&Images::default_dir()) {
        Ok(images) => match qemu_binary() {
            Some(_) => return Some(images),
            None => "qemu-system-x86_64 not found (install qemu-system-x86 or set AIRLOCK_QEMU)"
                .to_owned(),
        },
        Err(e) => e.to_string(),
    };
    assert!(
        !vm_tests_required(),
        "{test}: VM tests are required ({REQUIRE_ENV}=1) but cannot run: {missing}"
    );
    eprintln!("SKIP {test}: {missing}");
    None
}

/// The QEMU binary: `$AIRLOCK_QEMU`, else `qemu-system-x86_64` on PATH.
pub fn qemu_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AIRLOCK_QEMU") {
        return Some(PathBuf::from(p));
    }
    airlock_sys_util::which("qemu-system-x86_64")
}

/// QEMU processes whose command line mentions `needle`.
pub fn qemu_processes_mentioning(needle: &str) -> Vec<u32> {
    processes_mentioning("qemu-system", needle)
}

/// Live processes (zombies excluded) whose command line mentions both
/// `program` and `needle`.
pub fn processes_mentioning(program: &str, needle: &str) -> Vec<u32> {
    airlock_sys_util::proc_scan::pids_whose_cmdline(|cmd| {
        cmd.contains(program) && cmd.contains(needle)
    })
}

/// The probed host capabilities (the KVM verdict is cached on disk).
///
/// # Panics
/// When the probe fails: a test prerequisite.
pub async fn host_caps(images: &Images) -> HostCaps {
    let mut config = ProbeConfig::from_env();
    config.kvm_probe_images = Some(BootImages {
        kernel: images.kernel.clone(),
        initramfs: images.initramfs.clone(),
    });
    probe_host(&config).await.expect("host probe").caps
}

/// A VM booted with a plain QEMU command (argv from `airlock-qemu`, no
/// orchestrator), and what keeps it alive.
pub struct PlainVm {
    /// The agent's client.
    pub client: Client,
    /// QEMU (killed on drop).
    pub child: Child,
    /// The VM's files: overlay, sockets, console log.
    pub dir: tempfile::TempDir,
    /// The guest console log.
    pub console_log: PathBuf,
}

impl PlainVm {
    /// Runs `code` as a process of `language` (the agent enforces
    /// `timeout`; the host waits `host_wait`) and collects its output.
    ///
    /// # Panics
    /// When the exec fails (the test fails).
    pub async fn exec(
        &self,
        language: Language,
        code: &str,
        timeout: Duration,
        host_wait: Duration,
    ) -> airlock_protocol::client::ExecOutput {
        self.client
            .exec_collect(
                ExecRequest {
                    mode: Default::default(),
                    language,
                    code: code.into(),
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    env: Default::default(),
                    cwd: None,
                },
                host_wait,
            )
            .await
            .expect("exec in a plain VM")
    }
}

async fn connect(path: &Path, deadline: Instant) -> UnixStream {
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("{}: {e}", path.display()),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Boots `language`'s image with `network` behind a throw-away overlay and
/// waits for its agent; `extra_argv(work_dir)` is appended to QEMU's argv.
///
/// # Panics
/// When the VM does not come up: the test fails with the console log.
pub async fn boot_plain(
    images: &Images,
    caps: &HostCaps,
    language: Language,
    network: NetworkAttachment,
    extra_argv: impl FnOnce(&Path) -> Vec<OsString>,
) -> PlainVm {
    let dir = tempfile::Builder::new()
        .prefix("al-plain")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let base = images.rootfs(language).expect("root disk").to_path_buf();
    let overlay = dir.path().join("root.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&overlay)
        .status()
        .expect("qemu-img");
    assert!(made.success(), "qemu-img create failed");
    let mut spec = VmSpec::new(
        "plain",
        BootImages {
            kernel: images.kernel.clone(),
            initramfs: images.initramfs.clone(),
        },
        RootDisk {
            base,
            overlay,
            access: DiskAccess::ReadOnly,
        },
        dir.path(),
    );
    spec.network = network;
    let mut argv = QemuArgs::build(&spec, caps).expect("argv");
    argv.extend(extra_argv(dir.path()));
    let child = Command::new(qemu_binary().expect("qemu"))
        .args(&argv)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn qemu");
    let deadline = Instant::now() + BOOT_DEADLINE;
    let cmd = connect(&spec.cmd_socket, deadline).await;
    let event = connect(&spec.event_socket, deadline).await;
    let client = Client::new(event, cmd);
    loop {
        match client.handshake(Duration::from_millis(250)).await {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => {
                let console = std::fs::read_to_string(&spec.console_log).unwrap_or_default();
                panic!(
                    "{language}: agent not ready after {BOOT_DEADLINE:?}: {e}\nconsole:\n{console}"
                );
            }
            Err(_) => {}
        }
    }
    PlainVm {
        client,
        child,
        dir,
        console_log: spec.console_log,
    }
}

/// The dirs of a VM's limits group (`airlock/<tenant>/<vm_id>`), one per
/// hierarchy of the probed backend (none with rlimits).
pub fn group_dirs(tenant: &str, vm_id: &str) -> Vec<PathBuf> {
    let limiter = airlock_limits::Limiter::probe(&airlock_limits::ProbeConfig::default());
    limiter
        .backend()
        .airlock_dirs()
        .into_iter()
        .map(|d| d.join(tenant).join(vm_id))
        .collect()
}

/// Polls until no QEMU and no gvproxy mentions `needle`; returns how long
/// it took, or (after SIGKILLing them) what was still running after
/// `deadline`.
pub fn wait_until_gone(needle: &str, deadline: Duration) -> Result<Duration, Vec<u32>> {
    use nix::sys::signal::{kill, Signal};
    let start = Instant::now();
    loop {
        let mut left = qemu_processes_mentioning(needle);
        left.extend(processes_mentioning("gvproxy", needle));
        if left.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > deadline {
            for pid in &left {
                if let Ok(pid) = i32::try_from(*pid) {
                    let _ = kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            return Err(left);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Python helpers guest network checks start with: `tcp` (connect with a
/// short timeout: `connected`, `refused`, `timeout` or `error <errno>`),
/// `dns` (A lookup: the addresses or `fail`), `dns_query` (a raw UDP DNS
/// query: rcode and answer count, or `timeout`), `recv_all` (a socket's
/// answer until it closes, as text) and `parallel`. The script
/// reads `$TRAP` (a host port) and `$HOST_IP` (may be empty).
pub const NET_PRELUDE: &str = r#"
import json, os, socket, struct, concurrent.futures as cf
HOST_IP = os.environ.get("HOST_IP", "")
TRAP = int(os.environ["TRAP"])
def tcp(host, port, timeout=3.0):
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return "connected"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "refused" if e.errno == 111 else "error %s" % e.errno
    finally:
        s.close()
def dns(name):
    try:
        return sorted({a[4][0] for a in socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)})
    except socket.gaierror:
        return "fail"
def dns_query(server, name, qtype, timeout=3.0):
    q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
    q += struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(q, (server, 53))
        data, _ = s.recvfrom(4096)
        flags, _, answers = struct.unpack(">HHH", data[2:8])
        return {"rcode": flags & 15, "answers": answers}
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return "error %s" % e.errno
    finally:
        s.close()
def recv_all(s):
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")
def parallel(checks):
    with cf.ThreadPoolExecutor(len(checks)) as pool:
        futures = {k: pool.submit(c[0], *c[1:]) for k, c in checks.items()}
        return {k: f.result() for k, f in futures.items()}
"#;

/// Runs python `code` in `vm` with `env` (plus fast resolver options);
/// returns its stdout after checking it exited 0. It takes the VM shared
/// (through its client), so it runs while another exec's stream is held.
///
/// # Panics
/// When the exec fails or exits non-zero (with its output).
pub async fn python(vm: &Vm, code: &str, env: &[(&str, String)]) -> String {
    let mut vars: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    vars.insert("RES_OPTIONS".into(), "timeout:1 attempts:1".into());
    let request = ExecRequest {
        env: vars,
        ..exec_request(Language::Python, code, 30_000)
    };
    let out = vm
        .client()
        .expect("a live VM")
        .exec_collect(request, Duration::from_secs(10))
        .await
        .expect("python exec");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.completion.exit_code,
        0,
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The JSON object on the last line of a check script's output.
///
/// # Panics
/// When that line is not JSON.
pub fn last_json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// A listener on every host address: a guest that reaches the host leaves
/// a connection in its backlog.
pub struct Trap(TcpListener);

impl Trap {
    /// Binds a trap on a free port.
    ///
    /// # Panics
    /// When no port can be bound.
    pub fn new() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind the trap");
        listener.set_nonblocking(true).expect("non-blocking trap");
        Self(listener)
    }

    /// Its port.
    ///
    /// # Panics
    /// Never in practice (a bound listener has an address).
    pub fn port(&self) -> u16 {
        self.0.local_addr().expect("trap address").port()
    }

    /// Connections that arrived so far.
    pub fn caught(&self) -> usize {
        std::iter::from_fn(|| self.0.accept().ok()).count()
    }
}

impl Default for Trap {
    fn default() -> Self {
        Self::new()
    }
}

/// The host's primary non-loopback IPv4 address (the source of its default
/// route), if it has one.
pub fn host_ip() -> Option<Ipv4Addr> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
    socket.connect(("192.0.2.1", 9)).ok()?;
    match socket.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

/// A resolver for the egress proxy's test overrides: fixed answers per
/// (name, port), every other lookup fails.
pub struct TestResolver(pub Vec<(&'static str, u16, SocketAddr)>);

impl Resolver for TestResolver {
    fn resolve<'a>(&'a self, name: &'a str, port: u16) -> ResolveFuture<'a> {
        let answer = self
            .0
            .iter()
            .find(|(n, p, _)| *n == name && *p == port)
            .map(|(_, _, addr)| vec![*addr])
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{name}:{port}: not a test upstream"),
                )
            });
        Box::pin(async move { answer })
    }
}

/// A resolver that answers like its [`TestResolver`] and remembers every
/// name it was asked for (to show what reached the host's resolver).
pub struct RecordingResolver {
    inner: TestResolver,
    lookups: std::sync::Mutex<Vec<String>>,
}

impl RecordingResolver {
    /// Records lookups answered by `inner`.
    pub fn new(inner: TestResolver) -> Self {
        RecordingResolver {
            inner,
            lookups: std::sync::Mutex::default(),
        }
    }

    /// The names looked up so far, in order.
    ///
    /// # Panics
    /// When a lookup panicked while recording (never in practice).
    pub fn lookups(&self) -> Vec<String> {
        self.lookups.lock().expect("lookups").clone()
    }
}

impl Resolver for RecordingResolver {
    fn resolve<'a>(&'a self, name: &'a str, port: u16) -> ResolveFuture<'a> {
        if let Ok(mut lookups) = self.lookups.lock() {
            lookups.push(name.to_owned());
        }
        self.inner.resolve(name, port)
    }
}

/// Answers every HTTP request on `listener` with `body` (after `wrap`
/// turned the connection into a stream, e.g. TLS), each in a thread.
pub fn serve<S: Read + Write + Send + 'static>(
    listener: TcpListener,
    body: &'static str,
    wrap: impl Fn(TcpStream) -> Option<S> + Send + 'static,
) {
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
            let Some(mut stream) = wrap(tcp) else {
                continue;
            };
            std::thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.flush();
            });
        }
    });
}

/// An exec of `code` with no extra environment.
pub fn exec_request(language: Language, code: &str, timeout_ms: u64) -> ExecRequest {
    ExecRequest {
        mode: Default::default(),
        language,
        code: code.into(),
        timeout_ms,
        env: BTreeMap::new(),
        cwd: None,
    }
}

/// The memory-template shape of `language`'s default run (`RunRequest::new`).
pub fn default_shape(language: Language) -> airlock::template::TemplateShape {
    let defaults = airlock::RunRequest::new(language, "");
    airlock::template::TemplateShape {
        language,
        image: None,
        memory_mib: defaults.spec.shape.memory_mib,
        vcpus: defaults.spec.shape.vcpus,
        disk_mib: defaults.spec.shape.disk_mib,
    }
}

/// Output bytes as (lossy) text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `program` with `args` and extra `env`, in `dir` (else the current
/// dir), feeding it `stdin`, and collects its output (for the CLI tests:
/// `program` is `CARGO_BIN_EXE_airlock-under-test`).
///
/// # Panics
/// When the program cannot be started: a test prerequisite.
pub fn run_with_stdin(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &str,
    dir: Option<&Path>,
) -> std::process::Output {
    use std::process::{Command as StdCommand, Stdio};
    let mut command = StdCommand::new(program);
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let mut child = command.spawn().expect("start the program under test");
    if let Some(mut input) = child.stdin.take() {
        // A program that exits without reading its input closes the pipe.
        let _ = input.write_all(stdin.as_bytes());
    }
    child
        .wait_with_output()
        .expect("wait for the program under test")
}

/// A scheduler for template tests: templates in `templates_dir` (a temp
/// dir: the shared images and probe cache are used as they are), restored
/// from when `restore`, no overlay pool.
///
/// # Panics
/// When the scheduler cannot start: a test prerequisite.
pub async fn template_scheduler(templates_dir: &Path, restore: bool) -> airlock::Scheduler {
    airlock::Scheduler::start(airlock::Config {
        templates_dir: templates_dir.to_path_buf(),
        restore_templates: restore,
        overlay_pool_target: 0,
        ..airlock::Config::default()
    })
    .await
    .expect("scheduler start")
}
