//! The E2B rows of `cargo xtask bench` (issue 25, "Bench"): `airlock serve
//! --e2b-listen` (release) with a warm pool of one python-data VM, driven
//! by E2B's Python SDK (`tests/clients/bench_e2b_client.py`, from the
//! clients' venv):
//! - `Sandbox.create()` + `run_code("1+1")`, wall from the client, each
//!   round finding the pool refilled (goal: p50 <= 400 ms);
//! - `run_code("1+1")` in a live sandbox (goal: p50 <= 30 ms).

use super::{load_average, met, percentiles};
use crate::host::workspace_root;
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

/// Goal: create + first cell, wall p50, ms.
const CREATE_P50_GOAL_MS: f64 = 400.0;
/// Goal: a cell in a live sandbox, p50, ms.
const EXEC_P50_GOAL_MS: f64 = 30.0;
/// `run_code` calls measured in the live sandbox per create measured.
const EXECS_PER_CREATE: usize = 4;

/// What the client measured.
#[derive(Debug, serde::Deserialize)]
struct ClientNumbers {
    create_ms: Vec<f64>,
    exec_ms: Vec<f64>,
}

/// What the E2B rows measured.
pub(super) struct Numbers {
    client: ClientNumbers,
    /// The 1-minute load average at the start and at the end.
    load: [String; 2],
}

/// Starts the server, runs the client with `runs` creates, stops the
/// server (SIGTERM: it drains and destroys its VMs).
///
/// # Errors
/// When the server does not start or the client fails.
pub(super) fn measure(airlock: &Path, runs: usize) -> Result<Numbers> {
    let load_before = load_average();
    let python = crate::clients::ensure()?;
    let mut server = Command::new(airlock)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--e2b-listen", "127.0.0.1:0", "--pool", "python-data:1"])
        .args(["--quota-requests-per-minute", "100000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {} serve", airlock.display()))?;
    let (_, e2b, drain) = crate::bench_server::until_listening_with_e2b(&mut server)?;
    let Some(url) = e2b else {
        let _ = server.kill();
        let _ = server.wait();
        bail!("airlock serve printed no E2B listener line");
    };
    eprintln!("xtask: bench e2b: {runs} creates against {url}");
    let mut client = Command::new(&python);
    client
        .arg(workspace_root().join("tests/clients/bench_e2b_client.py"))
        .args([
            url.as_str(),
            &runs.to_string(),
            &(runs * EXECS_PER_CREATE).to_string(),
        ])
        .stdin(Stdio::null());
    let out = crate::bench_server::run_client_then_stop(&mut client, &mut server, drain)
        .context("run the E2B bench client")?;
    if !out.status.success() {
        bail!(
            "the E2B bench client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let client: ClientNumbers =
        serde_json::from_slice(&out.stdout).context("parse the E2B bench client's JSON")?;
    Ok(Numbers {
        client,
        load: [load_before, load_average()],
    })
}

/// The section of docs/benchmarks.md.
///
/// # Errors
/// Never in practice (writing to a String).
pub(super) fn render(n: &Numbers) -> Result<String> {
    let mut d = String::new();
    let (create50, create95) = percentiles(&n.client.create_ms);
    let (exec50, exec95) = percentiles(&n.client.exec_ms);
    writeln!(d, "\n## E2B's Python SDK\n")?;
    writeln!(
        d,
        "`airlock serve --e2b-listen` (release, a warm pool of one python-data VM: \
         `--pool python-data:1`) driven by E2B's Python SDK (`e2b-code-interpreter`, \
         `tests/clients/bench_e2b_client.py`) in headers mode, wall times from the client. \
         Each create round kills its sandbox and waits 4 s, so the next finds the pool \
         refilled; the cells run in one live sandbox. Load average (1 min) {} at the start, \
         {} at the end. ms.\n",
        n.load[0], n.load[1]
    )?;
    writeln!(d, "| measure | p50 / p95 | goal | |")?;
    writeln!(d, "|---|---|---|---|")?;
    writeln!(
        d,
        "| `Sandbox.create()` + `run_code(\"1+1\")` ({} rounds) | {create50:.0} / {create95:.0} | p50 <= {CREATE_P50_GOAL_MS:.0} | {} |",
        n.client.create_ms.len(),
        met(create50 <= CREATE_P50_GOAL_MS)
    )?;
    writeln!(
        d,
        "| `run_code(\"1+1\")` in a live sandbox ({} cells) | {exec50:.1} / {exec95:.1} | p50 <= {EXEC_P50_GOAL_MS:.0} | {} |",
        n.client.exec_ms.len(),
        met(exec50 <= EXEC_P50_GOAL_MS)
    )?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_writes_both_rows_with_their_goals_and_verdicts() {
        let n = Numbers {
            client: ClientNumbers {
                create_ms: vec![500.0, 300.0, 200.0],
                exec_ms: vec![40.0, 20.0, 10.0, 12.0],
            },
            load: ["1.0".into(), "0.5".into()],
        };
        let doc = render(&n).expect("render");
        assert!(doc.contains("## E2B's Python SDK"), "{doc}");
        assert!(doc.contains("| 300 / 500 | p50 <= 400 | met |"), "{doc}");
        assert!(doc.contains("| 12.0 / 40.0 | p50 <= 30 | met |"), "{doc}");
    }
}
