//! The server part of `cargo xtask bench`: `airlock serve` (release, with
//! the warm pool when the orchestrator has one) driven by
//! `tests/clients/bench_client.py` (httpx) from the clients' venv: run
//! latency, sustained runs per second, session exec latency.

use crate::host::workspace_root;
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Goal: sustained runs per second of `print(1)`.
const RUNS_PER_S_GOAL: f64 = 4.0;
/// Goal: run latency p50, ms.
const RUN_P50_GOAL_MS: f64 = 50.0;
/// Goal: session exec latency p50 over HTTP, ms.
const EXEC_P50_GOAL_MS: f64 = 15.0;

/// What the client measured.
#[derive(Debug, serde::Deserialize)]
pub struct ServerNumbers {
    run_p50_ms: f64,
    run_p95_ms: f64,
    runs_per_s: f64,
    failed: u64,
    concurrency: u32,
    seconds: f64,
    exec_p50_ms: Option<f64>,
    exec_p95_ms: Option<f64>,
}

/// Starts `airlock serve` on a free loopback port and runs the client.
///
/// # Errors
/// When the server does not start or the client fails.
pub fn measure(airlock: &Path, runs: usize) -> Result<ServerNumbers> {
    let python = crate::clients::ensure()?;
    let mut server = Command::new(airlock)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-concurrent-vms",
            "4",
            "--pool",
            "python:2",
        ])
        .args([
            "--quota-concurrent-runs",
            "16",
            "--quota-requests-per-minute",
            "100000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {} serve", airlock.display()))?;
    let (url, drain) = until_listening(&mut server)?;
    let mut client = Command::new(&python);
    client
        .arg(workspace_root().join("tests/clients/bench_client.py"))
        .args([&url, &runs.to_string(), "20", "8"]);
    let out =
        run_client_then_stop(&mut client, &mut server, drain).context("run the bench client")?;
    if !out.status.success() {
        bail!(
            "bench client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("parse the bench client's JSON")
}

/// Waits for `server`'s (an `airlock serve` with its stderr piped) line
/// saying where it listens; returns the URL, and the thread that keeps
/// draining its log so the server never blocks on a full pipe. Kills and
/// reaps it when it ends before listening.
///
/// # Errors
/// When it ends before listening.
pub fn until_listening(server: &mut Child) -> Result<(String, std::thread::JoinHandle<()>)> {
    let (url, _, drain) = until_listening_with_e2b(server)?;
    Ok((url, drain))
}

/// As [`until_listening`], also returning the E2B listener's URL when the
/// server has one (its line comes before the main one).
///
/// # Errors
/// As [`until_listening`].
pub fn until_listening_with_e2b(
    server: &mut Child,
) -> Result<(String, Option<String>, std::thread::JoinHandle<()>)> {
    let stderr = server.stderr.take().context("the server's stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut e2b = None;
    let url = loop {
        match lines.next() {
            Some(Ok(line)) => {
                if let Some(url) = line.strip_prefix("airlock: listening on ") {
                    break url.to_owned();
                }
                if let Some(url) = line.strip_prefix("airlock: E2B API listening on ") {
                    e2b = Some(url.to_owned());
                }
            }
            _ => {
                let _ = server.kill();
                let _ = server.wait();
                bail!("airlock serve ended before listening");
            }
        }
    };
    Ok((url, e2b, std::thread::spawn(move || lines.for_each(drop))))
}

/// Runs `client` against a started server, then stops the server
/// (SIGTERM: it drains and destroys its VMs) and its log's drain, whatever
/// the client did; the client's output.
///
/// # Errors
/// When the client cannot be run.
pub fn run_client_then_stop(
    client: &mut Command,
    server: &mut Child,
    drain: std::thread::JoinHandle<()>,
) -> std::io::Result<std::process::Output> {
    let out = client.output();
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
    let _ = drain.join();
    out
}

/// `met` or `not met`, for a goal's column.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "not met"
    }
}

/// The section of docs/benchmarks.md.
///
/// # Errors
/// Never in practice (writing to a String).
pub fn render(n: &ServerNumbers) -> Result<String> {
    let mut d = String::new();
    writeln!(d, "\n## Through the server\n")?;
    writeln!(
        d,
        "`airlock serve` (4 VM slots, a warm pool of 2 python VMs) driven over HTTP by \
         `tests/clients/bench_client.py` (httpx). Latency: sequential requests 1.5 s apart (each \
         finds the pool refilled), client side; throughput: {} clients for {:.0} s ({} failed: \
         the pool drains at once and most runs restore on demand).\n",
        n.concurrency, n.seconds, n.failed
    )?;
    writeln!(d, "| measure | value | goal | |")?;
    writeln!(d, "|---|---|---|---|")?;
    writeln!(
        d,
        "| runs of `print(1)` per second | {:.1} | >= {RUNS_PER_S_GOAL} | {} |",
        n.runs_per_s,
        verdict(n.runs_per_s >= RUNS_PER_S_GOAL)
    )?;
    writeln!(
        d,
        "| run latency p50 / p95 (ms) | {:.0} / {:.0} | p50 <= {RUN_P50_GOAL_MS} | {} |",
        n.run_p50_ms,
        n.run_p95_ms,
        verdict(n.run_p50_ms <= RUN_P50_GOAL_MS)
    )?;
    match (n.exec_p50_ms, n.exec_p95_ms) {
        (Some(p50), Some(p95)) => writeln!(
            d,
            "| session exec p50 / p95 (ms) | {p50:.0} / {p95:.0} | p50 <= {EXEC_P50_GOAL_MS} | {} |",
            verdict(p50 <= EXEC_P50_GOAL_MS)
        )?,
        _ => writeln!(
            d,
            "| session exec p50 / p95 (ms) | not measured: this server has no sessions | p50 <= {EXEC_P50_GOAL_MS} | |"
        )?,
    }
    Ok(d)
}
