//! The data rows of `cargo xtask bench` (issue 20, "Speed and memory"),
//! through the CLI as a person runs it, `--image python-data`:
//! - a restored one-shot `import pandas, numpy, matplotlib` against a
//!   restored python `print(1)`, in turns (goal: <= 1.3x, wall p50);
//! - a session's first cell that builds a 1,000-row DataFrame and draws a
//!   line chart, returning its PNG (goal: p50 <= 1.5 s), and the second
//!   such cell (goal: p50 <= 0.7 s), each session a fresh `airlock session
//!   --json` restored from the python-data template;
//! - the python-data template's memory file (size, allocated) and one
//!   clone's private memory (`/proc/PID/smaps_rollup` of its QEMU).

use super::{json_run, load_average, met, percentiles};
use airlock_sys_util::proc_scan::{memory_rollup, MemoryRollup};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Goal: the data stack's import, restored, at most this times `print(1)`.
const IMPORT_RATIO_GOAL: f64 = 1.3;
/// Goal: the first chart cell of a session, p50, ms.
const FIRST_CHART_GOAL_MS: f64 = 1500.0;
/// Goal: the second chart cell, p50, ms.
const SECOND_CHART_GOAL_MS: f64 = 700.0;
/// The image measured, as `--image` takes it.
const IMAGE: &str = "python-data";
/// The one-shot import.
const IMPORT: &str = "import pandas, numpy, matplotlib";
/// The chart cell: a 1,000-row frame, a line chart left open (the driver
/// returns it as `image/png`).
const CHART_CELL: &str = "import numpy as np, pandas as pd, matplotlib.pyplot as plt\n\
df = pd.DataFrame({'x': np.arange(1000), 'y': np.random.randn(1000).cumsum()})\n\
df.plot(x='x', y='y')\n\
plt.title('walk');\n";
/// How long a memory clone is kept alive while it is read.
const HOLD: &str = "import time; time.sleep(20)";
/// How long the memory row waits for the clone's QEMU.
const QEMU_DEADLINE: Duration = Duration::from_secs(60);

/// What the data rows measured.
pub(super) struct Numbers {
    import_wall: Vec<f64>,
    print_wall: Vec<f64>,
    first_cell: Vec<f64>,
    second_cell: Vec<f64>,
    template: Option<(PathBuf, u64, u64)>,
    clone: Option<MemoryRollup>,
    /// The 1-minute load average at the start and at the end.
    load: [String; 2],
}

/// Measures `runs` of each row.
///
/// # Errors
/// A run or a session failing, a chart cell without its PNG.
pub(super) fn measure(airlock: &Path, runs: usize) -> Result<Numbers> {
    let load_before = load_average();
    let image = ["--image", IMAGE];
    // Unmeasured: builds a missing template of either side.
    json_run(airlock, &image, "python", IMPORT)?;
    json_run(airlock, &[], "python", "print(1)")?;
    let (mut import_wall, mut print_wall) = (Vec::new(), Vec::new());
    for i in 0..runs {
        eprint!(
            "\rxtask: bench data import against print(1) {}/{runs}   ",
            i + 1
        );
        let (sample, v) = json_run(airlock, &image, "python", IMPORT)?;
        if v["timings"]["restore"].is_null() {
            bail!("a python-data run was not restored from its template: {v}");
        }
        import_wall.push(sample.wall_ms);
        print_wall.push(json_run(airlock, &[], "python", "print(1)")?.0.wall_ms);
    }
    eprintln!();
    let (mut first_cell, mut second_cell) = (Vec::new(), Vec::new());
    for i in 0..runs {
        eprint!("\rxtask: bench data chart session {}/{runs}   ", i + 1);
        let [first, second] = chart_session(airlock)?;
        first_cell.push(first);
        second_cell.push(second);
    }
    eprintln!();
    Ok(Numbers {
        import_wall,
        print_wall,
        first_cell,
        second_cell,
        template: template_memory()?,
        clone: clone_memory(airlock)?,
        load: [load_before, load_average()],
    })
}

/// `airlock session --json --image python-data` with two chart cells:
/// each cell's duration (ms), after checking it returned a PNG.
fn chart_session(airlock: &Path) -> Result<[f64; 2]> {
    let script = format!("{CHART_CELL}# %%\n{CHART_CELL}");
    let out = session(airlock, &script)?
        .wait_with_output()
        .context("wait for airlock session")?;
    if !out.status.success() {
        bail!(
            "airlock session --image {IMAGE} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("parse airlock session's JSON lines")?;
    let mut durations = [0.0; 2];
    for (slot, line) in durations.iter_mut().zip(&lines) {
        let has_png = line["results"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["data"]["image/png"].is_string()));
        if !has_png {
            bail!("a chart cell returned no image/png result: {line}");
        }
        *slot = line["duration_ms"].as_f64().unwrap_or(f64::NAN);
    }
    if lines.len() != 2 {
        bail!("expected 2 cells, got {}: {lines:?}", lines.len());
    }
    Ok(durations)
}

/// A started `airlock session --json -q --image python-data` fed `script`.
fn session(airlock: &Path, script: &str) -> Result<Child> {
    let mut child = Command::new(airlock)
        .args(["session", "--json", "-q", "--image", IMAGE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", airlock.display()))?;
    let mut stdin = child.stdin.take().context("no stdin pipe")?;
    stdin
        .write_all(script.as_bytes())
        .context("write the cells")?;
    drop(stdin);
    Ok(child)
}

/// The newest python-data template: its memory file, apparent and
/// allocated bytes.
fn template_memory() -> Result<Option<(PathBuf, u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let dir = airlock_sys_util::AirlockDirs::from_env()?
        .cache
        .join("templates");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    let newest = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("python-data-"))
        .filter_map(|e| {
            let memory = e.path().join("memory");
            let meta = std::fs::metadata(&memory).ok()?;
            Some((meta.mtime(), memory, meta.len(), meta.blocks() * 512))
        })
        .max_by_key(|(mtime, ..)| *mtime);
    Ok(newest.map(|(_, path, len, allocated)| (path, len, allocated)))
}

/// One clone's memory after a cell: a session that imports the stack and
/// waits, its QEMU read while it waits.
fn clone_memory(airlock: &Path) -> Result<Option<MemoryRollup>> {
    eprintln!("xtask: bench data clone memory");
    let mut child = session(airlock, &format!("{IMPORT}\n# %%\n{HOLD}\n"))?;
    let deadline = Instant::now() + QEMU_DEADLINE;
    let mut rollup = None;
    while Instant::now() < deadline && child.try_wait()?.is_none() {
        std::thread::sleep(Duration::from_secs(5));
        if let Some(qemu) = descendant_named(child.id(), "qemu-system") {
            // Let the first cell end and the second start.
            std::thread::sleep(Duration::from_secs(5));
            rollup = memory_rollup(qemu);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(rollup)
}

/// A descendant of `pid` whose command name starts with `prefix`.
fn descendant_named(pid: u32, prefix: &str) -> Option<u32> {
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        let tasks = std::fs::read_dir(format!("/proc/{p}/task")).ok()?;
        for task in tasks.filter_map(|t| t.ok()) {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                let comm =
                    std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
                if comm.starts_with(prefix) {
                    return Some(child);
                }
                stack.push(child);
            }
        }
    }
    None
}

/// The heading of the section [`render`] writes.
pub(super) const HEADING: &str = "## Data analysis (python-data)";

/// The section, markdown.
///
/// # Errors
/// Formatting only.
pub(super) fn render(n: &Numbers) -> Result<String> {
    let mut d = String::new();
    let pair = |v: &[f64]| {
        let (a, b) = percentiles(v);
        format!("{a:.0} / {b:.0}")
    };
    writeln!(d, "\n{HEADING}\n")?;
    writeln!(
        d,
        "Written by `cargo xtask bench --only data`, through the CLI: `airlock run --json \
         --image python-data` and `airlock session --json --image python-data` (cells piped), \
         each a fresh process restored from its template. Load average (1 min) {} at the \
         start, {} at the end: under TCG every time grows with the load. ms, p50 / p95.\n",
        n.load[0], n.load[1]
    )?;
    let import = percentiles(&n.import_wall).0;
    let print = percentiles(&n.print_wall).0;
    let first = percentiles(&n.first_cell).0;
    let second = percentiles(&n.second_cell).0;
    writeln!(d, "| measure | value | goal |\n|---|---|---|")?;
    writeln!(
        d,
        "| restored `{IMPORT}` (python-data), wall | {} | |",
        pair(&n.import_wall)
    )?;
    writeln!(
        d,
        "| restored `print(1)` (python), wall, in turns | {} | |",
        pair(&n.print_wall)
    )?;
    writeln!(
        d,
        "| import / print(1), p50 | {:.2}x | <= {IMPORT_RATIO_GOAL}x: **{}** |",
        import / print,
        met(import / print <= IMPORT_RATIO_GOAL)
    )?;
    writeln!(
        d,
        "| session cell: 1,000-row DataFrame and a line chart, PNG back (first cell) | {} | p50 <= {FIRST_CHART_GOAL_MS:.0}: **{}** |",
        pair(&n.first_cell),
        met(first <= FIRST_CHART_GOAL_MS)
    )?;
    writeln!(
        d,
        "| the same cell again (second cell) | {} | p50 <= {SECOND_CHART_GOAL_MS:.0}: **{}** |",
        pair(&n.second_cell),
        met(second <= SECOND_CHART_GOAL_MS)
    )?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    match &n.template {
        Some((path, len, allocated)) => writeln!(
            d,
            "| python-data template memory file: size / allocated (MiB) | {:.0} / {:.1} | reported (`{}`) |",
            mib(*len),
            mib(*allocated),
            path.parent()
                .and_then(Path::file_name)
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned())
        )?,
        None => writeln!(d, "| python-data template memory file | not found | reported |")?,
    }
    match &n.clone {
        Some(r) => writeln!(
            d,
            "| one clone after importing the stack: private / Rss (MiB) | {:.1} / {:.1} | reported |",
            r.private_kib() as f64 / 1024.0,
            r.rss_kib as f64 / 1024.0
        )?,
        None => writeln!(d, "| one clone's private memory | not read (no QEMU found in time) | reported |")?,
    }
    Ok(d)
}
