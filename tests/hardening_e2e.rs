//! "Nothing outlives its owner" end to end (`docs/architecture.md`): an
//! `airlock run` killed with SIGKILL leaves no QEMU and no gvproxy running
//! for more than 5 s, and the next Airlock command that sweeps removes its
//! work dir and limits group; SIGTERM and SIGHUP stop a run like Ctrl-C.
//!
//! Each case runs the real command (`CARGO_BIN_EXE_airlock-under-test`)
//! with its own `AIRLOCK_RUN_DIR`, so the processes and files it looks for
//! are that run's only.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock_tests::{
    group_dirs, images_or_skip, processes_mentioning, qemu_processes_mentioning, wait_until_gone,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a VM may take to boot and print its first line (TCG, shared
/// cores).
const UP_DEADLINE: Duration = Duration::from_secs(180);
/// How long the host may take to end a dead owner's processes.
const ORPHAN_DEADLINE: Duration = Duration::from_secs(5);
/// The program: says it is up, then sleeps past any test.
const SLEEPER: &str = "print('up', flush=True); import time; time.sleep(50)";

/// An `airlock run` of [`SLEEPER`] whose code is running.
struct Running {
    child: Child,
    run_dir: tempfile::TempDir,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    /// Starts `airlock run -t 60 [extra] SLEEPER` in a fresh run dir and
    /// waits for its `up` line.
    fn start(extra: &[&str]) -> Self {
        let run_dir = tempfile::Builder::new()
            .prefix("al-hard")
            .tempdir_in("/tmp")
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_airlock-under-test"))
            .args(["run", "-t", "60"])
            .args(extra)
            .arg(SLEEPER)
            .env("AIRLOCK_RUN_DIR", run_dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut stderr_pipe = child.stderr.take().unwrap();
        let (line_tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = line_tx.send(line);
            }
        });
        let (stderr_tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            let _ = stderr_tx.send(text);
        });
        let mut running = Self {
            child,
            run_dir,
            stderr,
        };
        match lines.recv_timeout(UP_DEADLINE) {
            Ok(line) => assert_eq!(line, "up"),
            Err(e) => {
                let _ = running.child.kill();
                let _ = running.child.wait();
                panic!("no `up` line ({e}): {}", running.stderr_text());
            }
        }
        assert!(
            !qemu_processes_mentioning(running.needle()).is_empty(),
            "the VM's QEMU runs"
        );
        running
    }

    fn needle(&self) -> &str {
        self.run_dir.path().to_str().unwrap()
    }

    /// The one VM work dir of this run.
    fn work_dir(&self) -> PathBuf {
        let dirs: Vec<PathBuf> = std::fs::read_dir(self.run_dir.path().join("vms"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        dirs[0].clone()
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the command to exit, at most `deadline`.
    fn wait(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!(
                    "airlock did not exit within {deadline:?}: {}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_default()
    }
}

/// SIGKILLs the run, checks that its processes end within 5 s, then runs
/// `airlock doctor` with the same run dir and checks that it removed the
/// work dir and the limits group.
fn sigkill_then_sweep(extra: &[&str], gvproxy_expected: bool) {
    let mut run = Running::start(extra);
    let work_dir = run.work_dir();
    let vm_id = work_dir.file_name().unwrap().to_str().unwrap().to_owned();
    let groups = group_dirs("default", &vm_id);
    for group in &groups {
        assert!(group.is_dir(), "the VM's limits group {group:?} exists");
    }
    if gvproxy_expected {
        assert!(
            !processes_mentioning("gvproxy", run.needle()).is_empty(),
            "the VM's gvproxy runs"
        );
    }

    run.signal(Signal::SIGKILL);
    let status = run.wait(Duration::from_secs(5));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    match wait_until_gone(run.needle(), ORPHAN_DEADLINE) {
        Ok(took) => eprintln!("orphans ended {took:?} after the owner's SIGKILL"),
        Err(left) => panic!("still running {ORPHAN_DEADLINE:?} after SIGKILL: {left:?}"),
    }
    assert!(work_dir.exists(), "nothing removed the work dir yet");

    let doctor = Command::new(env!("CARGO_BIN_EXE_airlock-under-test"))
        .arg("doctor")
        .env("AIRLOCK_RUN_DIR", run.run_dir.path())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        !work_dir.exists(),
        "the sweep removed {work_dir:?}:\n{report}"
    );
    for group in &groups {
        assert!(!group.exists(), "the sweep removed {group:?}:\n{report}");
    }
    assert!(
        report.contains("removed 1 VM work dir(s) of dead Airlock processes"),
        "{report}"
    );
}

#[test]
fn sigkill_of_run_ends_its_qemu_and_the_next_start_sweeps_its_files() {
    if images_or_skip("hardening_sigkill").is_none() {
        return;
    }
    sigkill_then_sweep(&[], false);
}

#[test]
fn sigkill_of_run_with_an_exposed_port_ends_its_gvproxy_too() {
    if images_or_skip("hardening_sigkill_expose").is_none() {
        return;
    }
    sigkill_then_sweep(&["--expose", "8080"], true);
}

/// SIGTERM or SIGHUP: the run stops like after Ctrl-C, exits 128 + the
/// signal, and leaves no QEMU and no work dir.
fn stops_like_ctrl_c(signal: Signal, status: i32) {
    let mut run = Running::start(&[]);
    run.signal(signal);
    let exit = run.wait(Duration::from_secs(60));
    let stderr = run.stderr_text();
    assert_eq!(exit.code(), Some(status), "{signal}: {stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let vms = run.run_dir.path().join("vms");
    let left: Vec<_> = std::fs::read_dir(&vms)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{signal}: work dirs left: {left:?}");
    // Already gone when the command has exited: no wait allowed.
    let gone = wait_until_gone(run.needle(), Duration::ZERO);
    assert!(gone.is_ok(), "{signal}: still running: {gone:?}");
}

#[test]
fn sigterm_and_sighup_stop_a_run_like_ctrl_c() {
    if images_or_skip("hardening_term_hup").is_none() {
        return;
    }
    // Both at once: two VMs boot in parallel.
    let term = std::thread::spawn(|| stops_like_ctrl_c(Signal::SIGTERM, 143));
    let hup = std::thread::spawn(|| stops_like_ctrl_c(Signal::SIGHUP, 129));
    term.join().unwrap();
    hup.join().unwrap();
}

/// The guest's own layer: once the host end of its command port has been
/// closed for the agent's grace (10 s), the agent ends and init powers the
/// VM off, so a VM whose owner vanished without killing QEMU still ends.
#[test]
fn a_vm_whose_host_end_closes_powers_itself_off() {
    let Some(images) = images_or_skip("a_vm_whose_host_end_closes_powers_itself_off") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let caps = airlock_tests::host_caps(&images).await;
        let vm = airlock_tests::boot_plain(
            &images,
            &caps,
            airlock_protocol::Language::Raw,
            airlock_qemu::NetworkAttachment::None,
            |_| Vec::new(),
        )
        .await;
        let airlock_tests::PlainVm {
            client,
            mut child,
            dir,
            console_log,
        } = vm;
        // The host goes away: both sockets close, QEMU keeps running.
        drop(client);
        let closed = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(60), child.wait()).await;
        let console = std::fs::read_to_string(&console_log).unwrap_or_default();
        assert!(
            ended.is_ok(),
            "QEMU still running 60 s after the host end closed; console:\n{console}"
        );
        let after = closed.elapsed();
        assert!(
            after >= Duration::from_secs(8),
            "the VM ended after {after:?}, before the agent's grace: something else ended it\n{console}"
        );
        assert!(console.contains("the host is gone"), "{console}");
        drop(dir);
    });
}
