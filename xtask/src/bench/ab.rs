//! The A/B rows of `cargo xtask bench --baseline AIRLOCK --baseline-images
//! DIR [--side LABEL,AIRLOCK,IMAGES,CACHE]...`: the one-shot rows
//! (`print(1)`, `console.log(1)`, `true`; restored from the memory template
//! and `--cold`) run by a baseline `airlock` binary over its own images and
//! cache, by any further sides, and by this workspace's release binary over
//! the current images and cache, interleaved: round after round, every row
//! once per side, the side that goes first turning. The machine is
//! shared and its load moves; interleaving lets a moving load weigh on both
//! sides alike, which two benches run one after the other cannot.

use super::{json_run_in, load_average, percentiles, Sample, SNIPPETS};
use airlock_sys_util::dirs::{CACHE_DIR_ENV, IMAGES_ENV};
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One side of the comparison: a binary and the environment it runs in.
pub(super) struct Side {
    /// Its name in the table (a commit id).
    pub label: String,
    /// The `airlock` binary.
    pub airlock: PathBuf,
    /// Variables set for its runs (its images and cache dirs).
    pub env: Vec<(OsString, OsString)>,
}

impl Side {
    /// The baseline: `airlock` over `images`, with `cache` for its
    /// templates and probe verdicts, so that it never reads or writes the
    /// current side's.
    pub fn baseline(label: String, airlock: PathBuf, images: &Path, cache: &Path) -> Self {
        Self {
            label,
            airlock,
            env: vec![
                (IMAGES_ENV.into(), images.into()),
                (CACHE_DIR_ENV.into(), cache.into()),
            ],
        }
    }

    /// A side from `LABEL,AIRLOCK,IMAGES,CACHE` (`--side`).
    ///
    /// # Errors
    /// Not four comma-separated fields.
    pub fn parse(spec: &str) -> Result<Self> {
        let fields: Vec<&str> = spec.split(',').collect();
        let [label, airlock, images, cache] = fields[..] else {
            bail!("--side {spec:?}: expected LABEL,AIRLOCK,IMAGES,CACHE");
        };
        Ok(Self::baseline(
            label.to_owned(),
            PathBuf::from(airlock),
            Path::new(images),
            Path::new(cache),
        ))
    }

    /// This workspace's binary in the environment of the bench itself.
    pub fn current(label: String, airlock: PathBuf) -> Self {
        Self {
            label,
            airlock,
            env: Vec::new(),
        }
    }

    fn run(&self, restored: bool, language: &str, code: &str) -> Result<Sample> {
        let extra: &[&str] = if restored { &[] } else { &["--cold"] };
        let (sample, v) = json_run_in(&self.airlock, &self.env, extra, language, code)
            .with_context(|| format!("the {} side", self.label))?;
        if restored && v["timings"]["restore"].is_null() {
            bail!(
                "{}: a run of {language} was not restored from its template: {v}",
                self.label
            );
        }
        Ok(sample)
    }
}

/// One row: restored or cold, a language and its snippet.
#[derive(Debug, Clone, Copy)]
struct Row {
    restored: bool,
    language: &'static str,
    code: &'static str,
}

fn rows() -> Vec<Row> {
    [true, false]
        .into_iter()
        .flat_map(|restored| {
            SNIPPETS.iter().map(move |&(language, code)| Row {
                restored,
                language,
                code,
            })
        })
        .collect()
}

/// What the A/B measured: per row, each side's samples.
pub(super) struct Numbers {
    /// The sides' labels, the baseline first.
    labels: Vec<String>,
    rounds: usize,
    /// Per row, each side's samples (in the order of `labels`).
    rows: Vec<(Row, Vec<Vec<Sample>>)>,
    /// The 1-minute load average at the start of each round, and at the end.
    load: Vec<String>,
}

/// Runs `rounds` interleaved rounds over `sides` (the baseline first),
/// after one unmeasured restored run per language and side, which builds
/// a missing template.
///
/// # Errors
/// A run failing, or a restored row that was not restored.
pub(super) fn measure(sides: &[Side], rounds: usize) -> Result<Numbers> {
    for side in sides {
        for (language, code) in SNIPPETS {
            eprintln!(
                "xtask: bench A/B: {} warms its {language} template",
                side.label
            );
            side.run(true, language, code)?;
        }
    }
    let rows = rows();
    let mut samples: Vec<Vec<Vec<Sample>>> =
        rows.iter().map(|_| vec![Vec::new(); sides.len()]).collect();
    let mut load = Vec::new();
    for round in 0..rounds {
        load.push(load_average());
        // The side that runs first turns with each round, so that none
        // always finds the page cache warmed or the machine calmed by
        // another.
        let order: Vec<usize> = (0..sides.len())
            .map(|i| (i + round) % sides.len())
            .collect();
        for (i, row) in rows.iter().enumerate() {
            eprint!(
                "\rxtask: bench A/B round {}/{rounds}: {} {}        ",
                round + 1,
                if row.restored { "restored" } else { "cold" },
                row.language
            );
            for &s in &order {
                samples[i][s].push(sides[s].run(row.restored, row.language, row.code)?);
            }
        }
    }
    eprintln!();
    load.push(load_average());
    Ok(Numbers {
        labels: sides.iter().map(|s| s.label.clone()).collect(),
        rounds,
        rows: rows.into_iter().zip(samples).collect(),
        load,
    })
}

/// The heading of the section [`render`] writes.
pub(super) const HEADING: &str = "## Issue 19 A/B";

/// The section, markdown.
///
/// # Errors
/// Formatting only.
pub(super) fn render(n: &Numbers) -> Result<String> {
    let mut d = String::new();
    let loads: Vec<f64> = n.load.iter().filter_map(|l| l.parse().ok()).collect();
    let (lo, hi) = loads.iter().fold((f64::INFINITY, 0.0_f64), |(lo, hi), &l| {
        (lo.min(l), hi.max(l))
    });
    writeln!(d, "\n{HEADING}\n")?;
    let names: Vec<String> = n.labels.iter().map(|l| format!("`{l}`")).collect();
    writeln!(
        d,
        "Written by `cargo xtask bench --only ab --baseline AIRLOCK --baseline-images DIR \
         [--side LABEL,AIRLOCK,IMAGES,CACHE]...`. Sides: {}; the baseline first, each an \
         `airlock` release binary over images built by its own commit's `cargo xtask images` \
         and a cache dir of its own (templates); this workspace's last, unless \
         `--ab-without-current`. {} rounds; in each, \
         every row runs once per side, the side that goes first turning. Other engineers \
         compile on this 2-core machine at the same time: the load average (1 min) moved \
         between {lo:.2} and {hi:.2} during the A/B ({} at the start, {} at the end). Under TCG \
         every figure grows with the load, so only the interleaved comparison is fair: every \
         side met the same load. ms, p50 / p95; the ratio is the side's wall p50 over the \
         baseline's.\n",
        names.join(", "),
        n.rounds,
        n.load.first().map_or("unknown", String::as_str),
        n.load.last().map_or("unknown", String::as_str),
    )?;
    writeln!(
        d,
        "| run | side | wall | / baseline (p50) | exec | guest ready |"
    )?;
    writeln!(d, "|---|---|---|---|---|---|")?;
    let pair = |s: &[Sample], f: fn(&Sample) -> f64| {
        let (a, b) = percentiles(&s.iter().map(f).collect::<Vec<_>>());
        format!("{a:.0} / {b:.0}")
    };
    let p50 = |s: &[Sample]| percentiles(&s.iter().map(|x| x.wall_ms).collect::<Vec<_>>()).0;
    for (row, sides) in &n.rows {
        let base = sides.first().map_or(f64::NAN, |s| p50(s));
        for (label, samples) in n.labels.iter().zip(sides) {
            writeln!(
                d,
                "| {} {} `{}` | `{label}` | {} | {:.2} | {} | {} |",
                if row.restored { "restored" } else { "cold" },
                row.language,
                row.code,
                pair(samples, |x| x.wall_ms),
                p50(samples) / base,
                pair(samples, |x| x.exec_ms),
                pair(samples, |x| x.ready_ms),
            )?;
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(wall_ms: f64) -> Sample {
        Sample {
            wall_ms,
            exec_ms: wall_ms / 2.0,
            ready_ms: 10.0,
            ..Sample::default()
        }
    }

    #[test]
    fn a_side_is_parsed_from_four_fields_and_refused_otherwise() {
        let side = Side::parse("main,/bin/airlock,/img,/cache").unwrap();
        assert_eq!(side.label, "main");
        assert_eq!(side.airlock, Path::new("/bin/airlock"));
        assert_eq!(side.env.len(), 2);
        assert!(Side::parse("main,/bin/airlock").is_err());
    }

    #[test]
    fn rows_cover_every_snippet_restored_and_cold() {
        let rows = rows();
        assert_eq!(rows.len(), 2 * SNIPPETS.len());
        assert_eq!(rows.iter().filter(|r| r.restored).count(), SNIPPETS.len());
    }

    #[test]
    fn render_gives_each_side_a_line_with_its_ratio_to_the_baseline() {
        let row = rows()[0];
        let n = Numbers {
            labels: vec!["f3c1902".into(), "abc1234".into()],
            rounds: 2,
            rows: vec![(
                row,
                vec![
                    vec![sample(100.0), sample(100.0)],
                    vec![sample(150.0), sample(150.0)],
                ],
            )],
            load: vec!["1.50".into(), "2.50".into(), "0.50".into()],
        };
        let md = render(&n).unwrap();
        assert!(md.contains(HEADING), "{md}");
        assert!(md.contains("`f3c1902`") && md.contains("`abc1234`"), "{md}");
        assert!(md.contains("between 0.50 and 2.50"), "{md}");
        for line in [
            "| restored python `print(1)` | `f3c1902` | 100 / 100 | 1.00 | 50 / 50 | 10 / 10 |",
            "| restored python `print(1)` | `abc1234` | 150 / 150 | 1.50 | 75 / 75 | 10 / 10 |",
        ] {
            assert!(md.contains(line), "{md}");
        }
    }
}
