//! What the tests that start `airlock serve` share: a private run dir,
//! keys made with `airlock serve keys add`, the server process with its
//! log (and the URLs it prints), the clients' Python
//! (`AIRLOCK_TEST_PYTHON`) and Node modules (`AIRLOCK_TEST_NODE_PATH`), and the check that no VM is left. Included by
//! `server_e2e.rs` and `e2b_e2e.rs` (`#[path]` module: integration tests
//! see `CARGO_BIN_EXE_*`, the library does not).

#![allow(dead_code)] // each test file uses its part

use airlock_tests::{qemu_processes_mentioning, vm_tests_required, wait_until_gone};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The Python with the test clients (httpx, mcp, E2B's SDKs), or `None` after printing why the test is
/// skipped.
pub fn python_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(python) = std::env::var_os("AIRLOCK_TEST_PYTHON") {
        return Some(PathBuf::from(python));
    }
    assert!(
        !vm_tests_required(),
        "{test}: AIRLOCK_TEST_PYTHON is not set: run `cargo xtask test`, which makes the clients' venv"
    );
    eprintln!("SKIP {test}: AIRLOCK_TEST_PYTHON is not set (run `cargo xtask test`)");
    None
}

/// The `node_modules` of the JavaScript test clients (E2B's
/// `@e2b/code-interpreter`, `AIRLOCK_TEST_NODE_PATH`), or `None` after
/// printing why the JavaScript part is skipped.
pub fn node_path_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("AIRLOCK_TEST_NODE_PATH") {
        return Some(PathBuf::from(path));
    }
    assert!(
        !vm_tests_required(),
        "{test}: AIRLOCK_TEST_NODE_PATH is not set: run `cargo xtask test`, which installs the JavaScript clients"
    );
    eprintln!(
        "SKIP {test} (JavaScript part): AIRLOCK_TEST_NODE_PATH is not set (run `cargo xtask test`)"
    );
    None
}

/// Runs Debian's `node` on a script of `tests/clients` with `NODE_PATH`
/// set to the clients' `node_modules` and `envs`; fails the test when it
/// fails.
pub fn node(node_path: &Path, args: &[&str], envs: &[(&str, &str)]) {
    let out = Command::new("node")
        .args(args)
        .env("NODE_PATH", node_path)
        .envs(envs.iter().copied())
        .current_dir(clients_dir())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "node {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_airlock-under-test")
}

pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// A private run dir, short enough for unix socket paths.
pub fn run_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("al-srv")
        .tempdir_in("/tmp")
        .expect("temp dir")
}

/// Adds a key for `tenant` with extra `keys add` flags; returns the key.
pub fn add_key(keys_file: &Path, tenant: &str, extra: &[&str]) -> String {
    let out = Command::new(binary())
        .args(["serve", "keys", "add", "--tenant", tenant, "--keys-file"])
        .arg(keys_file)
        .args(extra)
        .output()
        .expect("run keys add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).expect("utf-8 key");
    key.trim().to_owned()
}

/// A running `airlock serve` (SIGKILLed on drop if still running).
pub struct Server {
    /// The `airlock serve` process.
    pub child: Child,
    /// The main listener's URL.
    pub url: String,
    /// The E2B listener's URL, when it was asked for (`--e2b-listen`).
    pub e2b_url: Option<String>,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// A server with `keys`, no warm pool (templates are built on first
    /// use), a cache dir of its own under `dir`, `images_dir`'s images and
    /// `extra` flags; its run dir is `dir/run`.
    pub fn start_keyed_without_pool(
        dir: &Path,
        keys: &Path,
        images_dir: &Path,
        extra: &[&str],
    ) -> Self {
        let config = dir.join("server.toml");
        std::fs::write(&config, "pools = []\n").expect("write the config");
        let (keys, config) = (keys.to_string_lossy(), config.to_string_lossy());
        let mut args = vec!["--keys-file", &keys, "--config", &config];
        args.extend_from_slice(extra);
        let cache = dir.join("cache");
        Self::start_with_env(
            &dir.join("run"),
            &args,
            &[
                ("AIRLOCK_CACHE_DIR", &cache),
                ("AIRLOCK_IMAGES", images_dir),
            ],
        )
    }

    pub fn start(run_dir: &Path, args: &[&str]) -> Self {
        Self::start_with_env(run_dir, args, &[])
    }

    /// [`Server::start`] with more environment variables.
    pub fn start_with_env(run_dir: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Self {
        let mut child = Command::new(binary())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--drain-grace-s", "20"])
            .args(args)
            .env("AIRLOCK_RUN_DIR", run_dir)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start airlock serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        // Drains stderr for the life of the server (ends at its exit).
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                {
                    let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                    log.push_str(&line);
                    log.push('\n');
                }
                if let Some(url) = line.strip_prefix("airlock: listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let Ok(url) = rx.recv_timeout(Duration::from_secs(120)) else {
            let _ = child.kill();
            panic!(
                "the server did not listen:\n{}",
                log.lock().unwrap_or_else(|e| e.into_inner())
            );
        };
        // The E2B listener prints its line before the main one.
        let e2b_url = log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lines()
            .find_map(|line| line.strip_prefix("airlock: E2B API listening on "))
            .map(str::to_owned);
        Self {
            child,
            url,
            e2b_url,
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// SIGTERM, then the server exits 0 within a minute and leaves no VM
    /// in `run_dir`.
    pub fn terminate_and_check(&mut self, run_dir: &Path) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        assert_eq!(
            self.wait(Duration::from_secs(60)),
            Some(0),
            "{}",
            self.log()
        );
        no_vm_left(run_dir);
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, signal).expect("signal the server");
    }

    /// Waits for the exit; its code.
    pub fn wait(&mut self, deadline: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the server did not exit within {deadline:?}:\n{}",
            self.log()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn python(python: &Path, args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = Command::new(python)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(clients_dir())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "{args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.into_owned()
}

pub fn no_vm_left(run_dir: &Path) {
    let needle = run_dir.to_string_lossy().into_owned();
    assert!(
        wait_until_gone(&needle, Duration::from_secs(10)).is_ok(),
        "QEMU processes of {needle} are left: {:?}",
        qemu_processes_mentioning(&needle)
    );
    // A VM's teardown removes its work dir after its processes end.
    let vms = run_dir.join("vms");
    let start = Instant::now();
    loop {
        let left: Vec<_> = std::fs::read_dir(&vms)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "work dirs left in {}: {left:?}",
            vms.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
