//! The secrets rows: a whole HTTPS request through the egress proxy to a
//! host with a bound secret (intercepted: two TLS handshakes, the request
//! parsed and its placeholder replaced) against one to a host without
//! (spliced), on loopback. The measurement is
//! `airlock_egress::measure_interception`, run as the crate's example in a
//! release build (this xtask is a debug build, which would time rustls
//! unoptimised).

use super::{load_average, met, percentiles};
use crate::host::{cargo, workspace_root};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;

/// Requests of each kind.
pub(super) const REQUESTS: usize = 200;
/// Goal: interception adds at most this much at p50 (issue 21).
const GOAL_MS: f64 = 10.0;
/// The section's heading in `docs/benchmarks.md`.
const HEADING: &str = "## Secrets: what interception costs a request";

/// What was measured.
pub(super) struct Numbers {
    passthrough_ms: Vec<f64>,
    intercepted_ms: Vec<f64>,
    load: [String; 2],
}

/// Builds and runs the example; its two lines of samples.
pub(super) fn measure(requests: usize) -> Result<Numbers> {
    eprintln!("xtask: bench: {requests} HTTPS requests each, intercepted and spliced");
    let load_before = load_average();
    let out = cargo()
        .current_dir(workspace_root())
        .args([
            "run",
            "--quiet",
            "--release",
            "-p",
            "airlock-egress",
            "--example",
            "measure_interception",
            "--",
        ])
        .arg(requests.to_string())
        .output()
        .context("run the interception measurement")?;
    if !out.status.success() {
        bail!(
            "the interception measurement failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let (passthrough_ms, intercepted_ms) = parse(&String::from_utf8_lossy(&out.stdout))?;
    Ok(Numbers {
        passthrough_ms,
        intercepted_ms,
        load: [load_before, load_average()],
    })
}

/// The example's output: a `passthrough` and an `intercepted` line of ms.
fn parse(stdout: &str) -> Result<(Vec<f64>, Vec<f64>)> {
    let samples = |label: &str| -> Result<Vec<f64>> {
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(label)?.strip_prefix(' '))
            .with_context(|| format!("no `{label}` line in the measurement's output"))?;
        let values = line
            .split_whitespace()
            .map(|v| {
                v.parse::<f64>()
                    .with_context(|| format!("`{v}` in `{label}`"))
            })
            .collect::<Result<Vec<_>>>()?;
        if values.is_empty() {
            bail!("no samples on the `{label}` line");
        }
        Ok(values)
    };
    Ok((samples("passthrough")?, samples("intercepted")?))
}

/// The section of `docs/benchmarks.md`.
pub(super) fn render(n: &Numbers) -> Result<String> {
    let mut d = String::new();
    let (pass50, pass95) = percentiles(&n.passthrough_ms);
    let (int50, int95) = percentiles(&n.intercepted_ms);
    let added = int50 - pass50;
    writeln!(d, "\n{HEADING}\n")?;
    writeln!(
        d,
        "Written by `cargo xtask bench --only secrets`: whole HTTPS requests (a new connection, \
         the handshake(s), one `GET` with a placeholder in `Authorization`, its answer) through \
         the egress proxy on loopback, release build, {} of each taken in turns \
         (`airlock_egress::measure_interception`). The upstream answers 200 only when it \
         received what it must (the real value when intercepted, the placeholder when spliced), \
         so every timed request is also a checked one. Load average (1 min) {} at the start, \
         {} at the end. ms.\n",
        n.passthrough_ms.len(),
        n.load[0],
        n.load[1]
    )?;
    writeln!(d, "| request | p50 | p95 | goal |\n|---|---|---|---|")?;
    writeln!(
        d,
        "| to a host without a secret (spliced) | {pass50:.2} | {pass95:.2} | |"
    )?;
    writeln!(
        d,
        "| to a host with a bound secret (intercepted) | {int50:.2} | {int95:.2} | |"
    )?;
    writeln!(
        d,
        "| added by interception, p50 | {added:.2} | | <= {GOAL_MS:.0}: **{}** |",
        met(added <= GOAL_MS)
    )?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_examples_two_lines_are_read_as_samples() {
        let (pass, int) = parse("passthrough 0.5 0.7\nintercepted 1.25 2\n").unwrap();

        assert_eq!(pass, [0.5, 0.7]);
        assert_eq!(int, [1.25, 2.0]);
    }

    #[test]
    fn output_without_samples_is_an_error_naming_the_line() {
        let err = parse("passthrough 0.5\n").unwrap_err().to_string();

        assert!(err.contains("intercepted"), "{err}");
        assert!(parse("passthrough x\nintercepted 1\n").is_err());
        assert!(parse("passthrough\nintercepted 1\n").is_err());
    }

    #[test]
    fn the_row_says_whether_the_goal_is_met() {
        let n = Numbers {
            passthrough_ms: vec![1.0; 5],
            intercepted_ms: vec![2.0; 5],
            load: ["0.1".into(), "0.2".into()],
        };

        let doc = render(&n).unwrap();

        assert!(doc.starts_with(&format!("\n{HEADING}\n")));
        assert!(
            doc.contains("| added by interception, p50 | 1.00 | | <= 10: **met** |"),
            "{doc}"
        );
    }
}
