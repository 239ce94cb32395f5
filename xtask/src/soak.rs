//! `cargo xtask soak [--runs N]`: a fault soak, not part of `cargo xtask
//! test`. It mixes ordinary runs of each language with every fault a run
//! can meet (timeouts, QEMU or gvproxy killed, user code killing what it
//! can, Ctrl-C, SIGTERM, SIGKILL of the `airlock` process), checks after
//! each that nothing of a finished run is left, and runs ordinary requests
//! through one long-lived orchestrator in this process, sampling its open
//! file descriptors and RSS. It fails on any leftover (processes, work dirs,
//! sockets, limits groups) or on growth of the long-lived process, and
//! writes the result to `docs/reliability.md`.

use crate::host::{self, workspace_root};
use crate::images;
use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Options of `cargo xtask soak`.
#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// Runs in all (scenarios rotate; every 4th is an in-process run).
    #[arg(long, default_value_t = 300)]
    pub runs: usize,
    /// Write docs/reliability.md with the result (default: only print it).
    #[arg(long)]
    pub write: bool,
    /// Soak `airlock serve` instead: clients without a key (idle and
    /// slow-header connections) while a keyed client runs code, and a
    /// stream to a client that does not read (`soak_server.rs`).
    #[arg(long)]
    pub server: bool,
    /// With --server: the `airlock` binary to serve with (default: build
    /// the release binary).
    #[arg(long, value_name = "PATH", requires = "server")]
    pub airlock: Option<PathBuf>,
}

/// One kind of run the soak makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scenario {
    /// `airlock run` of each language, ending normally.
    Python,
    Javascript,
    Raw,
    /// The code outlives its timeout: exit 124.
    Timeout,
    /// QEMU is killed mid-run: exit 125, nothing left.
    KillQemu,
    /// gvproxy of a run with an exposed port is killed mid-run.
    KillGvproxy,
    /// The code tries to kill everything it can, the agent included.
    GuestKillsAll,
    /// Ctrl-C (SIGINT) mid-run: exit 130.
    CtrlC,
    /// SIGTERM mid-run: handled like Ctrl-C.
    Sigterm,
    /// SIGKILL of the airlock process mid-run: its QEMU and gvproxy end
    /// within 5 s, and the next start (`airlock doctor`) sweeps its files.
    Sigkill,
    /// A request through the long-lived in-process orchestrator.
    Library,
}

impl Scenario {
    /// The rotation of CLI scenarios.
    const CLI: [Scenario; 10] = [
        Scenario::Python,
        Scenario::Timeout,
        Scenario::KillQemu,
        Scenario::Javascript,
        Scenario::CtrlC,
        Scenario::KillGvproxy,
        Scenario::Raw,
        Scenario::Sigkill,
        Scenario::GuestKillsAll,
        Scenario::Sigterm,
    ];

    /// The scenario of run `i`.
    fn of_run(i: usize) -> Self {
        if i % 4 == 3 {
            Scenario::Library
        } else {
            Self::CLI[(i - i / 4) % Self::CLI.len()]
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scenario::Python => "python",
            Scenario::Javascript => "javascript",
            Scenario::Raw => "raw",
            Scenario::Timeout => "timeout",
            Scenario::KillQemu => "QEMU killed",
            Scenario::KillGvproxy => "gvproxy killed",
            Scenario::GuestKillsAll => "guest kills all",
            Scenario::CtrlC => "Ctrl-C",
            Scenario::Sigterm => "SIGTERM",
            Scenario::Sigkill => "SIGKILL of airlock",
            Scenario::Library => "long-lived library run",
        }
    }
}

/// How one run went.
struct Outcome {
    scenario: Scenario,
    ok: bool,
    detail: String,
}

/// A sample of the long-lived orchestrator.
#[derive(Debug, Clone, Copy)]
struct ProcSample {
    fds: usize,
    rss_kib: u64,
}

/// Runs the soak.
pub fn run(args: &SoakArgs) -> Result<()> {
    if args.server {
        // The images are the caller's: the server answers `images_missing`
        // (naming `cargo xtask images`) when they are not there.
        host::ensure_all()?;
        let airlock = match &args.airlock {
            Some(path) => path.clone(),
            None => host::release_airlock()?,
        };
        return crate::soak_server::run(&airlock, args.write);
    }
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    host::ensure_all()?;
    host::ensure_gvproxy()?;
    images::ensure()?;
    let airlock = host::release_airlock()?;
    let soak_dir = PathBuf::from(format!("/run/airlock-soak-{}", std::process::id()));
    let cli_dir = soak_dir.join("cli");
    let lib_dir = soak_dir.join("lib");
    std::fs::create_dir_all(&cli_dir).with_context(|| format!("create {}", cli_dir.display()))?;
    let groups_before = limits_groups();
    let started = Instant::now();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start a tokio runtime")?;
    let scheduler = runtime.block_on(airlock::Scheduler::start(airlock::Config {
        run_dir: lib_dir.clone(),
        max_concurrent_vms: 2,
        ..airlock::Config::default()
    }))?;

    let mut outcomes = Vec::new();
    let mut samples = Vec::new();
    for i in 0..args.runs {
        let scenario = Scenario::of_run(i);
        eprint!(
            "\rxtask: soak {}/{} {:<24}",
            i + 1,
            args.runs,
            scenario.name()
        );
        let outcome = match scenario {
            Scenario::Library => {
                let result = runtime.block_on(scheduler.run(airlock::RunRequest::new(
                    airlock_protocol::Language::Python,
                    "print(6 * 7)",
                )));
                samples.push(proc_sample()?);
                match result {
                    Ok(r)
                        if r.exit_code == 0
                            && String::from_utf8_lossy(&r.stdout).trim() == "42" =>
                    {
                        Outcome {
                            scenario,
                            ok: true,
                            detail: String::new(),
                        }
                    }
                    Ok(r) => Outcome {
                        scenario,
                        ok: false,
                        detail: format!(
                            "exit {}, stdout {:?}",
                            r.exit_code,
                            String::from_utf8_lossy(&r.stdout)
                        ),
                    },
                    Err(e) => Outcome {
                        scenario,
                        ok: false,
                        detail: e.to_string(),
                    },
                }
            }
            _ => cli_scenario(&airlock, &cli_dir, scenario),
        };
        // What a finished run leaves is a leak (a SIGKILLed run's files
        // included: its scenario runs the sweep of the next start).
        let mut outcome = outcome;
        let mut left = leftovers(&cli_dir, None);
        left.extend(leftovers(&lib_dir, Some(std::process::id())));
        if !left.is_empty() {
            outcome.ok = false;
            outcome.detail = format!("{} leftovers: {}", outcome.detail, left.join("; "));
        }
        if !outcome.ok {
            eprintln!(
                "\nxtask: soak run {} ({}) failed: {}",
                i + 1,
                scenario.name(),
                outcome.detail
            );
        }
        outcomes.push(outcome);
    }
    eprintln!();
    runtime.block_on(scheduler.shutdown());
    drop(runtime);

    // Nothing should be left to sweep; if anything is, it is reported.
    let mut final_left = leftovers(&cli_dir, None);
    final_left.extend(leftovers(&lib_dir, None));
    let groups_after = limits_groups();
    final_left.extend(
        groups_after
            .iter()
            .filter(|g| !groups_before.contains(g))
            .map(|g| format!("limits group {}", g.display())),
    );
    let growth = growth_problem(&samples);
    let report = render(
        args.runs,
        &outcomes,
        &samples,
        &final_left,
        growth.as_deref(),
        started.elapsed(),
    );
    eprintln!("{report}");
    if args.write {
        let path = workspace_root().join("docs").join("reliability.md");
        // The server soak's section stays.
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        let kept = crate::soak_server::split_section(&old).1.unwrap_or("");
        let doc = if kept.is_empty() {
            report
        } else {
            format!("{}\n\n{kept}", report.trim_end())
        };
        std::fs::write(&path, &doc).with_context(|| format!("write {}", path.display()))?;
        eprintln!("xtask: wrote {}", path.display());
    }
    drop(std::fs::remove_dir_all(&soak_dir));
    let failed = outcomes.iter().filter(|o| !o.ok).count();
    if failed > 0 || !final_left.is_empty() || growth.is_some() {
        bail!(
            "soak failed: {failed} run(s) failed, {} leftover(s){}",
            final_left.len(),
            growth.map(|g| format!(", {g}")).unwrap_or_default()
        );
    }
    Ok(())
}

/// Today (UTC) and the short commit of HEAD, for a report's first line.
pub fn date_and_commit() -> (String, String) {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    (date, commit)
}

/// `airlock` with the soak's run dir.
fn airlock_cmd(airlock: &Path, run_dir: &Path) -> Command {
    let mut cmd = Command::new(airlock);
    cmd.env("AIRLOCK_RUN_DIR", run_dir).stdin(Stdio::null());
    cmd
}

/// One CLI scenario, to its end.
fn cli_scenario(airlock: &Path, run_dir: &Path, scenario: Scenario) -> Outcome {
    let result = match scenario {
        Scenario::Python => expect_exit(
            airlock,
            run_dir,
            &["-l", "python", "print(6*7)"],
            0,
            Some("42"),
        ),
        Scenario::Javascript => expect_exit(
            airlock,
            run_dir,
            &["-l", "javascript", "console.log(6*7)"],
            0,
            Some("42"),
        ),
        Scenario::Raw => expect_exit(airlock, run_dir, &["-l", "raw", "echo 42"], 0, Some("42")),
        Scenario::Timeout => expect_exit(
            airlock,
            run_dir,
            &["-t", "1", "-l", "raw", "sleep 30"],
            124,
            None,
        ),
        Scenario::GuestKillsAll => {
            // Whatever the code manages, the run ends with a status and the
            // host cleans up; the agent survives `kill -9 -1` (other uid).
            match run_to_end(
                airlock,
                run_dir,
                &["-t", "10", "-l", "raw", "kill -9 -1; echo after"],
            ) {
                Ok((code, _)) if code != 125 => Ok(()),
                Ok((code, out)) => Err(format!("exit {code}: {out}")),
                Err(e) => Err(e),
            }
        }
        Scenario::KillQemu => fault_mid_run(
            airlock,
            run_dir,
            &["-t", "60", "-l", "raw", "sleep 50"],
            |child, dir| {
                kill_matching("qemu-system", dir, Signal::SIGKILL)?;
                wait_status(child, Duration::from_secs(30)).and_then(|c| {
                    (c == 125)
                        .then_some(())
                        .ok_or_else(|| format!("exit {c}, want 125"))
                })
            },
        ),
        Scenario::KillGvproxy => fault_mid_run(
            airlock,
            run_dir,
            &["-t", "60", "--expose", "8080", "-l", "raw", "sleep 50"],
            |child, dir| {
                wait_for_process("gvproxy", dir, Duration::from_secs(30))?;
                kill_matching("gvproxy", dir, Signal::SIGKILL)?;
                // The run may end at once (network lost) or at its timeout;
                // either way it ends and cleans up: end it now.
                signal_pid(child.id(), Signal::SIGINT);
                wait_status(child, Duration::from_secs(60)).map(|_| ())
            },
        ),
        Scenario::CtrlC | Scenario::Sigterm => {
            let (signal, want) = if scenario == Scenario::CtrlC {
                (Signal::SIGINT, 130)
            } else {
                (Signal::SIGTERM, 143)
            };
            fault_mid_run(
                airlock,
                run_dir,
                &["-t", "60", "-l", "raw", "sleep 50"],
                move |child, _| {
                    signal_pid(child.id(), signal);
                    wait_status(child, Duration::from_secs(30)).and_then(|c| {
                        (c == want || c == 130)
                            .then_some(())
                            .ok_or_else(|| format!("exit {c}, want {want}"))
                    })
                },
            )
        }
        Scenario::Sigkill => fault_mid_run(
            airlock,
            run_dir,
            &["-t", "60", "-l", "raw", "sleep 50"],
            |child, dir| {
                signal_pid(child.id(), Signal::SIGKILL);
                let _ = child.wait();
                // Its QEMU must end within 5 s on its own.
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    if processes_matching("qemu-system", dir).is_empty()
                        && processes_matching("gvproxy", dir).is_empty()
                    {
                        break;
                    }
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "QEMU/gvproxy still running 5 s after SIGKILL of airlock: {:?}",
                            processes_matching("", dir)
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                // The next start sweeps the dead run's files: `doctor` is one.
                sweep_with_doctor(airlock, dir)
            },
        ),
        Scenario::Library => Err("not a CLI scenario".into()),
    };
    Outcome {
        scenario,
        ok: result.is_ok(),
        detail: result.err().unwrap_or_default(),
    }
}

/// Runs `airlock doctor` (which sweeps what dead airlocks left) under a
/// deadline.
fn sweep_with_doctor(airlock: &Path, run_dir: &Path) -> std::result::Result<(), String> {
    let mut child = airlock_cmd(airlock, run_dir)
        .arg("doctor")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start airlock doctor: {e}"))?;
    // doctor exits 1 when a check fails (e.g. no KVM); only its sweep
    // matters here, and the leftover check after the run judges it.
    wait_status(&mut child, Duration::from_secs(60)).map(|_| ())
}

/// Runs `airlock run ARGS` and checks its exit status (and stdout).
fn expect_exit(
    airlock: &Path,
    run_dir: &Path,
    args: &[&str],
    want: i32,
    stdout: Option<&str>,
) -> std::result::Result<(), String> {
    let (code, out) = run_to_end(airlock, run_dir, args)?;
    if code != want {
        return Err(format!("exit {code}, want {want}: {out}"));
    }
    if let Some(s) = stdout {
        if out.trim() != s {
            return Err(format!("stdout {out:?}, want {s:?}"));
        }
    }
    Ok(())
}

/// Runs `airlock run -q ARGS` to its end (at most [`RUN_DEADLINE`]):
/// its exit status and its stdout and stderr together.
fn run_to_end(
    airlock: &Path,
    run_dir: &Path,
    args: &[&str],
) -> std::result::Result<(i32, String), String> {
    use std::io::Read as _;
    let mut child = airlock_cmd(airlock, run_dir)
        .arg("run")
        .arg("-q")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start airlock: {e}"))?;
    // Drained on threads, so that a chatty run cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let code = wait_status(&mut child, RUN_DEADLINE);
    if code.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let text = format!(
        "{}{}",
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default()
    );
    code.map(|c| (c, text))
}

/// The longest an ordinary soak run may take (its code's own timeouts are
/// at most 60 s; boots under TCG on a loaded host take seconds).
const RUN_DEADLINE: Duration = Duration::from_secs(180);

/// Starts `airlock run ARGS`, waits for its QEMU, then applies `fault`.
fn fault_mid_run(
    airlock: &Path,
    run_dir: &Path,
    args: &[&str],
    fault: impl FnOnce(&mut Child, &Path) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let mut child = airlock_cmd(airlock, run_dir)
        .arg("run")
        .arg("-q")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start airlock: {e}"))?;
    let result = wait_for_process("qemu-system", run_dir, Duration::from_secs(60))
        // Let the guest get past boot into the code.
        .map(|()| std::thread::sleep(Duration::from_secs(3)))
        .and_then(|()| fault(&mut child, run_dir));
    if result.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

fn wait_status(child: &mut Child, limit: Duration) -> std::result::Result<i32, String> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt;
                return Ok(status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(-1));
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Ok(None) => return Err(format!("airlock still running after {limit:?}")),
            Err(e) => return Err(format!("wait for airlock: {e}")),
        }
    }
}

fn wait_for_process(name: &str, dir: &Path, limit: Duration) -> std::result::Result<(), String> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !processes_matching(name, dir).is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "no {name} mentioning {} within {limit:?}",
        dir.display()
    ))
}

/// Pids whose command line holds `name` and `dir`.
fn processes_matching(name: &str, dir: &Path) -> Vec<u32> {
    let dir = dir.to_string_lossy().into_owned();
    airlock_sys_util::proc_scan::pids_whose_cmdline(|cmd| {
        cmd.contains(name) && cmd.contains(&dir) && !cmd.contains("xtask")
    })
}

fn kill_matching(name: &str, dir: &Path, signal: Signal) -> std::result::Result<(), String> {
    let pids = processes_matching(name, dir);
    if pids.is_empty() {
        return Err(format!("no {name} to kill"));
    }
    for pid in pids {
        signal_pid(pid, signal);
    }
    Ok(())
}

fn signal_pid(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        // The process may have ended already: nothing to do then.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// What a finished run must not leave under `run_dir`: processes naming
/// it, VM work dirs (`vms/*`, with their sockets) and overlay pool dirs
/// (`overlays/*`) of processes that have ended. `owner_alive` is the pid
/// of a process still running whose pool dir is its own (the soak's
/// long-lived orchestrator), if any.
fn leftovers(run_dir: &Path, owner_alive: Option<u32>) -> Vec<String> {
    let mut out: Vec<String> = processes_matching("", run_dir)
        .into_iter()
        .map(|pid| format!("process {pid}"))
        .collect();
    for (sub, what) in [("vms", "work dir"), ("overlays", "overlay pool dir")] {
        let Ok(entries) = std::fs::read_dir(run_dir.join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Pool dirs are named `<pid>-<start>-<id>`.
            let own = owner_alive.is_some_and(|pid| name.starts_with(&format!("{pid}-")));
            if sub == "overlays" && own {
                continue;
            }
            out.push(format!("{what} {}", entry.path().display()));
        }
    }
    out
}

/// Airlock's limits groups on this host (cgroup v1 controllers and v2).
fn limits_groups() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(roots) = std::fs::read_dir("/sys/fs/cgroup") else {
        return out;
    };
    for root in roots.flatten() {
        let airlock = root.path().join("airlock");
        let Ok(tenants) = std::fs::read_dir(&airlock) else {
            continue;
        };
        for tenant in tenants.flatten().filter(|e| e.path().is_dir()) {
            let Ok(vms) = std::fs::read_dir(tenant.path()) else {
                continue;
            };
            out.extend(vms.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    out.sort();
    out
}

fn proc_sample() -> Result<ProcSample> {
    let fds = std::fs::read_dir("/proc/self/fd")
        .context("list /proc/self/fd")?
        .count();
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(ProcSample { fds, rss_kib })
}

/// Growth of the long-lived orchestrator after a warm-up of a quarter of
/// its runs: more than 4 descriptors, or RSS up by more than 25 % + 16 MiB.
fn growth_problem(samples: &[ProcSample]) -> Option<String> {
    let warm = samples.get(samples.len() / 4)?;
    let last = samples.last()?;
    let max_fds = samples.iter().map(|s| s.fds).max()?;
    if last.fds > warm.fds + 4 || max_fds > warm.fds + 8 {
        return Some(format!(
            "open descriptors grew from {} to {} (max {max_fds})",
            warm.fds, last.fds
        ));
    }
    if last.rss_kib > warm.rss_kib + warm.rss_kib / 4 + 16 * 1024 {
        return Some(format!(
            "RSS grew from {} KiB to {} KiB",
            warm.rss_kib, last.rss_kib
        ));
    }
    None
}

fn render(
    runs: usize,
    outcomes: &[Outcome],
    samples: &[ProcSample],
    left: &[String],
    growth: Option<&str>,
    wall: Duration,
) -> String {
    let mut out = String::new();
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let (date, commit) = date_and_commit();
    let _ = writeln!(out, "# Reliability\n");
    let _ = writeln!(
        out,
        "Written by `cargo xtask soak --runs {runs} --write` on {date} at commit {commit}: \
         {cores} cores, {qemu}, TCG. {runs} runs in {:.0} min: CLI runs rotate through the scenarios below; every 4th run \
         is a request through one long-lived orchestrator in the soak's own process.\n",
        wall.as_secs_f64() / 60.0
    );
    let _ = writeln!(out, "| scenario | runs | failed |\n|---|---|---|");
    let mut names: Vec<Scenario> = outcomes.iter().map(|o| o.scenario).collect();
    names.sort();
    names.dedup();
    for s in names {
        let n = outcomes.iter().filter(|o| o.scenario == s).count();
        let failed = outcomes.iter().filter(|o| o.scenario == s && !o.ok).count();
        let _ = writeln!(out, "| {} | {n} | {failed} |", s.name());
    }
    let _ = writeln!(out, "\n## Leftovers after the soak\n");
    if left.is_empty() {
        let _ = writeln!(
            out,
            "None: no QEMU or gvproxy process, work dir, socket or limits group of the soak remains."
        );
    } else {
        for l in left {
            let _ = writeln!(out, "- {l}");
        }
    }
    let _ = writeln!(out, "\n## The long-lived orchestrator\n");
    if let (Some(first), Some(warm), Some(last)) = (
        samples.first(),
        samples.get(samples.len() / 4),
        samples.last(),
    ) {
        let _ = writeln!(
            out,
            "| sample | open fds | RSS (MiB) |\n|---|---|---|\n| first run | {} | {:.1} |\n| after warm-up (run {}) | {} | {:.1} |\n| last run ({}) | {} | {:.1} |",
            first.fds,
            first.rss_kib as f64 / 1024.0,
            samples.len() / 4 + 1,
            warm.fds,
            warm.rss_kib as f64 / 1024.0,
            samples.len(),
            last.fds,
            last.rss_kib as f64 / 1024.0
        );
    }
    let _ = writeln!(
        out,
        "\nGrowth: {}. Failures of single runs, if any, are listed as the soak prints them.",
        growth.unwrap_or("none")
    );
    for o in outcomes.iter().filter(|o| !o.ok) {
        let _ = writeln!(out, "- {}: {}", o.scenario.name(), o.detail);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_fourth_run_is_the_library_and_every_cli_scenario_comes_round() {
        let first: Vec<Scenario> = (0..40).map(Scenario::of_run).collect();
        assert_eq!(
            first.iter().filter(|s| **s == Scenario::Library).count(),
            10
        );
        for s in Scenario::CLI {
            assert!(first.contains(&s), "{s:?} never runs in 40");
        }
    }

    #[test]
    fn work_dirs_and_dead_pool_dirs_are_leftovers_but_a_live_owners_pool_is_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("vms/abc")).unwrap();
        std::fs::create_dir_all(dir.path().join("overlays/42-7-x")).unwrap();
        std::fs::create_dir_all(dir.path().join("overlays/43-7-y")).unwrap();
        let left = leftovers(dir.path(), Some(42));
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.iter().any(|l| l.contains("vms/abc")));
        assert!(left.iter().any(|l| l.contains("43-7-y")));
        assert!(leftovers(&dir.path().join("none"), None).is_empty());
    }

    #[test]
    fn steady_samples_show_no_growth_and_a_leak_does() {
        let steady: Vec<ProcSample> = (0..20)
            .map(|_| ProcSample {
                fds: 30,
                rss_kib: 50_000,
            })
            .collect();
        assert_eq!(growth_problem(&steady), None);
        let leaking: Vec<ProcSample> = (0..20)
            .map(|i| ProcSample {
                fds: 30 + i,
                rss_kib: 50_000,
            })
            .collect();
        assert!(growth_problem(&leaking).is_some_and(|g| g.contains("descriptors")));
    }
}
