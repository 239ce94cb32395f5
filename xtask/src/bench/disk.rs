//! The workspace disk rows (issue 23): a one-shot run with the default
//! 2 GiB workspace disk against the same run with `--disk 0` (the home
//! and `/tmp` in RAM, as before the disk), cold and restored from each
//! one's template, taken in turns so that load weighs on both alike.

use super::{json_run, load_average, met, percentiles};
use anyhow::Result;
use std::fmt::Write as _;
use std::path::Path;

/// Goal: a run with the disk at most this much slower at p50.
const GOAL_RATIO: f64 = 1.05;
/// The section's heading in `docs/benchmarks.md`.
const HEADING: &str = "## Workspace disk: a run with `--disk 2048` against `--disk 0`";
/// The code of every run: it writes a file in the home, so the disk is
/// used, not only attached.
const CODE: &str = "open('/home/sandbox/x', 'w').write('x'); print(1)";

/// One pair of rows: with and without the disk, walls in ms.
pub(super) struct Pair {
    /// `cold` or `restored`.
    how: &'static str,
    with_disk: Vec<f64>,
    without: Vec<f64>,
}

/// What was measured.
pub(super) struct Numbers {
    pairs: Vec<Pair>,
    load: [String; 2],
}

/// `runs` python runs of each kind, in turns, cold then restored (one
/// untimed run of each first, which builds the restored ones' templates).
pub(super) fn measure(airlock: &Path, runs: usize) -> Result<Numbers> {
    let load_before = load_average();
    let mut pairs = Vec::new();
    for (how, cold) in [("cold", true), ("restored", false)] {
        let args = |disk: &'static str| -> Vec<&'static str> {
            let mut args = vec!["--disk", disk];
            if cold {
                args.insert(0, "--cold");
            }
            args
        };
        for disk in ["2048", "0"] {
            json_run(airlock, &args(disk), "python", CODE)?;
        }
        let mut pair = Pair {
            how,
            with_disk: Vec::new(),
            without: Vec::new(),
        };
        for i in 0..runs {
            eprint!(
                "\rxtask: bench {how} run with and without a disk {}/{runs}   ",
                i + 1
            );
            // Alternate which goes first, so neither always follows the other.
            let order = if i % 2 == 0 {
                ["2048", "0"]
            } else {
                ["0", "2048"]
            };
            for disk in order {
                let (sample, _) = json_run(airlock, &args(disk), "python", CODE)?;
                if disk == "0" {
                    pair.without.push(sample.wall_ms);
                } else {
                    pair.with_disk.push(sample.wall_ms);
                }
            }
        }
        eprintln!();
        pairs.push(pair);
    }
    Ok(Numbers {
        pairs,
        load: [load_before, load_average()],
    })
}

/// The section of `docs/benchmarks.md`.
pub(super) fn render(n: &Numbers) -> Result<String> {
    let mut d = String::new();
    writeln!(d, "\n{HEADING}\n")?;
    writeln!(
        d,
        "Written by `cargo xtask bench --only disk`: `airlock run -l python` of `{CODE}`, \
         wall time of the whole command, {} runs of each taken in turns, with the default \
         2048 MiB workspace disk and with `--disk 0` (home and `/tmp` in RAM, as before the \
         disk: `docs/persistence.md`); cold (`--cold`) and restored from each one's memory \
         template. Load average (1 min) {} at the start, {} at the end. ms.\n",
        n.pairs.first().map_or(0, |p| p.with_disk.len()),
        n.load[0],
        n.load[1]
    )?;
    writeln!(
        d,
        "| run | `--disk 0` p50 | p95 | `--disk 2048` p50 | p95 | ratio of p50 | goal |\n\
         |---|---|---|---|---|---|---|"
    )?;
    for pair in &n.pairs {
        let (without50, without95) = percentiles(&pair.without);
        let (with50, with95) = percentiles(&pair.with_disk);
        let ratio = with50 / without50;
        writeln!(
            d,
            "| {} | {without50:.0} | {without95:.0} | {with50:.0} | {with95:.0} | {ratio:.3} | <= {GOAL_RATIO}: **{}** |",
            pair.how,
            met(ratio <= GOAL_RATIO)
        )?;
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pair_is_one_row_with_its_ratio_against_the_goal() {
        let n = Numbers {
            pairs: vec![
                Pair {
                    how: "cold",
                    with_disk: vec![1040.0, 1050.0],
                    without: vec![1000.0, 1000.0],
                },
                Pair {
                    how: "restored",
                    with_disk: vec![300.0],
                    without: vec![200.0],
                },
            ],
            load: ["0.5".into(), "0.6".into()],
        };
        let text = render(&n).unwrap();
        assert!(
            text.contains("| cold | 1000 | 1000 | 1040 | 1050 | 1.040 | <= 1.05: **met** |"),
            "{text}"
        );
        assert!(
            text.contains("| restored | 200 | 200 | 300 | 300 | 1.500 | <= 1.05: **not met** |"),
            "{text}"
        );
    }
}
