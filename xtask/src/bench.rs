//! `cargo xtask bench`: measures cold runs against the floor (a bare QEMU
//! boot of the same kernel to an init that ends the VM at once), the
//! overlay pool, QEMU's host memory, package lists (first install
//! against cached runs), the fast paths (memory templates, the warm
//! pool, idle cost: [`templates`]), sessions (a cell's round trip, a
//! session's start: `bench/session.rs`) and runs and session execs
//! through `airlock serve` (`bench_server.rs`), E2B's Python SDK against
//! `airlock serve --e2b-listen` (`bench/e2b.rs`), a session's pause,
//! resume and fork (`bench/pause.rs`); writes `docs/benchmarks.md`.
//!
//! Speed goals are checked here and written into the table, never asserted
//! in timed tests.

/// The A/B rows: a baseline binary against this workspace's, interleaved.
mod ab;
/// The data rows: the python-data image's import, chart cells, memory.
mod data;
/// The workspace disk rows: a run with the disk against one without.
mod disk;
/// The E2B rows: E2B's Python SDK against `airlock serve --e2b-listen`.
mod e2b;
/// The pause rows: pause, resume and fork of a session.
mod pause;
/// The secrets rows: what interception costs an HTTPS request.
mod secrets;
/// The session rows: a cell's round trip, a session's start.
mod session;

use crate::host::{self, run_checked, workspace_root};
use crate::images::{self, Kind};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod templates;

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Cold runs per language (and floor boots).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Overlay acquires per mode (pool hit, on demand).
    #[arg(long, default_value_t = 50)]
    pub acquires: usize,
    /// Measure only these groups of rows (repeat or comma-separate); the
    /// sections they write replace the same sections of
    /// docs/benchmarks.md, the others are kept. Default: `standard`,
    /// `data`, `secrets` and `e2b`, and `ab` when `--baseline` is given.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Rows>,
    /// The `airlock` binary of the A/B's baseline (built from the
    /// baseline commit, `cargo build --release -p airlock-cli` there).
    #[arg(long, requires = "baseline_images")]
    pub baseline: Option<PathBuf>,
    /// The images dir of the baseline, built by the baseline commit's own
    /// `AIRLOCK_IMAGES=DIR cargo xtask images`.
    #[arg(long, requires = "baseline")]
    pub baseline_images: Option<PathBuf>,
    /// The baseline's cache dir (its templates and probe verdicts; never
    /// the current side's). Default: `<baseline-images>-cache`.
    #[arg(long, requires = "baseline")]
    pub baseline_cache: Option<PathBuf>,
    /// More sides for the A/B, each `LABEL,AIRLOCK,IMAGES,CACHE` (a binary
    /// over its images and cache dir), between the baseline and this
    /// workspace.
    #[arg(long = "side", requires = "baseline")]
    pub sides: Vec<String>,
    /// Leave this workspace out of the A/B: only the baseline and the
    /// `--side`s run, and nothing is built (with `--only ab`).
    #[arg(long, requires = "sides")]
    pub ab_without_current: bool,
    /// The baseline's name in the table (its commit id).
    #[arg(long, default_value = "baseline")]
    pub baseline_label: String,
    /// Interleaved A/B rounds (each runs every row once per side).
    #[arg(long, default_value_t = 15)]
    pub ab_rounds: usize,
}

/// Groups of rows `cargo xtask bench --only` can measure alone.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// Every row but the A/B: cold runs, the floor, the overlay pool,
    /// packages, sessions, templates, the warm pool, idle cost, memory per
    /// clone, the server.
    Standard,
    /// The interleaved A/B against `--baseline` (issue 19).
    Ab,
    /// The python-data image: its import against `print(1)`, chart cells in
    /// a session, its template's memory (issue 20).
    Data,
    /// The egress proxy: an HTTPS request to a host with a bound secret
    /// against one to a host without (issue 21). No VM.
    Secrets,
    /// The workspace disk: a run with `--disk 2048` against `--disk 0`,
    /// cold and restored (issue 23).
    Disk,
    /// E2B's Python SDK against `airlock serve --e2b-listen` with a warm
    /// pool: create + first cell, a cell in a live sandbox (issue 25).
    E2b,
    /// A session paused to disk, resumed, forked into 4, against a
    /// template restore (issue 23). Through the library, built for release
    /// (a release xtask measures them).
    Pause,
}

/// The pause rows' section, measured in a release build: they time the
/// library's own work (a fork's save reads a 70 MB stream as QEMU writes
/// it), which `cargo xtask` runs unoptimised; the server runs it
/// optimised. A debug xtask builds the release one and has it measure
/// ([`pause_section_into`]).
fn pause_section(runs: usize) -> Result<String> {
    if !cfg!(debug_assertions) {
        return pause::render(&pause::measure(runs)?);
    }
    eprintln!("xtask: building xtask (release) for the pause rows");
    run_checked(host::cargo().args(["build", "--release", "-p", "xtask"]))?;
    let out = std::env::temp_dir().join(format!("airlock-pause-rows-{}.md", std::process::id()));
    let measured = run_checked(
        Command::new(host::target_dir().join("release").join("xtask"))
            .args(["bench-pause-section", "--runs", &runs.to_string(), "--out"])
            .arg(&out)
            .current_dir(workspace_root()),
    )
    .and_then(|()| {
        std::fs::read_to_string(&out).with_context(|| format!("read {}", out.display()))
    });
    let _ = std::fs::remove_file(&out);
    measured
}

/// `cargo xtask bench-pause-section`: the pause rows measured here,
/// their section written to `out`.
///
/// # Errors
/// A measurement failed, or `out` cannot be written.
pub fn pause_section_into(runs: usize, out: &Path) -> Result<()> {
    let section = pause::render(&pause::measure(runs)?)?;
    std::fs::write(out, section).with_context(|| format!("write {}", out.display()))
}

/// Goal: Airlock's overhead over the floor, interpreter start excluded.
const OVERHEAD_GOAL: f64 = 0.15;
/// Goal: a pool hit under 1 ms at p95.
const POOL_HIT_P95_GOAL: Duration = Duration::from_millis(1);

/// The snippets: (language, code).
const SNIPPETS: [(&str, &str); 3] = [
    ("python", "print(1)"),
    ("javascript", "console.log(1)"),
    ("raw", "true"),
];

/// The package lists measured: (language, list, code that imports it,
/// code of the start comparisons, run with and without the list).
const PACKAGE_LISTS: [(&str, &str, &str, &str); 2] = [
    (
        "python",
        "six==1.16.0",
        "import six; print(six.__version__)",
        "print(1)",
    ),
    (
        "javascript",
        "is-number@7.0.0",
        "console.log(require('is-number')(1))",
        "console.log(1)",
    ),
];
/// First installs measured per list (each is a full install VM).
const MAX_INSTALL_RUNS: usize = 3;

/// A package list's first installs, and runs with the stored layer
/// against runs without packages, taken in turns so that load on the
/// machine weighs on both alike.
struct PackageRows {
    language: &'static str,
    list: &'static str,
    /// Runs that built the layer (install VM, then the run).
    installs: Vec<Sample>,
    /// The install VM's share of those (from the result's `packages`).
    install_ms: Vec<f64>,
    /// Cold runs over the stored layer, and cold runs without packages.
    cold: (Vec<Sample>, Vec<Sample>),
    /// Runs restored from their template: over the layer, and without.
    restored: (Vec<Sample>, Vec<Sample>),
}

/// One cold `airlock run --json`.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    wall_ms: f64,
    total_ms: f64,
    overlay_ms: f64,
    spawn_ms: f64,
    ready_ms: f64,
    exec_ms: f64,
    teardown_ms: f64,
    peak_mib: f64,
}

/// How a goal's cell reads.
fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "not met"
    }
}

/// p50 and p95 of values (nearest rank).
fn percentiles(values: &[f64]) -> (f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let i = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v.get(i.saturating_sub(1)).copied().unwrap_or(f64::NAN)
    };
    (rank(50.0), rank(95.0))
}

/// Runs the benchmarks and writes the table.
pub fn run(args: &BenchArgs) -> Result<()> {
    if args.runs == 0 || args.acquires == 0 || args.ab_rounds == 0 {
        bail!("--runs, --acquires and --ab-rounds must be at least 1");
    }
    let mut only = args.only.clone();
    if only.is_empty() {
        only.extend([
            Rows::Standard,
            Rows::Data,
            Rows::Secrets,
            Rows::Disk,
            Rows::E2b,
            Rows::Pause,
        ]);
        if args.baseline.is_some() {
            only.push(Rows::Ab);
        }
    }
    if only.contains(&Rows::Ab) && args.baseline.is_none() {
        bail!("the A/B rows need --baseline AIRLOCK and --baseline-images DIR");
    }
    let mut doc = String::new();
    let mut current = None;
    if only.contains(&Rows::Pause) {
        doc.push_str(&pause_section(args.runs)?);
    }
    // The other rows (and the A/B's current side) need the release binary.
    let rest: Vec<Rows> = only.iter().copied().filter(|r| *r != Rows::Pause).collect();
    if !rest.is_empty() && (rest != [Rows::Ab] || !args.ab_without_current) {
        host::ensure_all()?;
        let manifest = images::ensure()?;
        let airlock = host::release_airlock()?;
        if only.contains(&Rows::Standard) {
            doc.push_str(&standard(args, &manifest, &airlock)?);
        }
        if only.contains(&Rows::Data) {
            doc.push_str(&data::render(&data::measure(&airlock, args.runs)?)?);
        }
        if only.contains(&Rows::Secrets) {
            doc.push_str(&secrets::render(&secrets::measure(secrets::REQUESTS)?)?);
        }
        if only.contains(&Rows::Disk) {
            doc.push_str(&disk::render(&disk::measure(&airlock, args.runs)?)?);
        }
        if only.contains(&Rows::E2b) {
            doc.push_str(&e2b::render(&e2b::measure(&airlock, args.runs)?)?);
        }
        current = Some(airlock);
    }
    if let (true, Some(baseline), Some(images)) = (
        only.contains(&Rows::Ab),
        &args.baseline,
        &args.baseline_images,
    ) {
        let cache = args.baseline_cache.clone().unwrap_or_else(|| {
            let mut name = images.as_os_str().to_owned();
            name.push("-cache");
            PathBuf::from(name)
        });
        let before = ab::Side::baseline(
            args.baseline_label.clone(),
            baseline.clone(),
            images,
            &cache,
        );
        let mut sides = vec![before];
        for spec in &args.sides {
            sides.push(ab::Side::parse(spec)?);
        }
        if let Some(airlock) = current.filter(|_| !args.ab_without_current) {
            sides.push(ab::Side::current(workspace_commit(), airlock));
        }
        doc.push_str(&ab::render(&ab::measure(&sides, args.ab_rounds)?)?);
    }
    let path = workspace_root().join("docs").join("benchmarks.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    std::fs::write(&path, splice_sections(&old, &doc))
        .with_context(|| format!("write {}", path.display()))?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}

/// This workspace's commit, short, `+` when the tree has changes.
fn workspace_commit() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(changes) if !changes.is_empty() => format!("{commit}+"),
        _ => commit,
    }
}

/// `old` with the sections of `new` in place of its own: a section is a
/// `## ` heading and what follows it up to the next; the text before the
/// first heading of `new`, when there is any, replaces the one of `old`.
/// Sections of `new` that `old` lacks go at its end.
fn splice_sections(old: &str, new: &str) -> String {
    fn split(doc: &str) -> (String, Vec<(String, String)>) {
        let mut preamble = String::new();
        let mut sections: Vec<(String, String)> = Vec::new();
        for line in doc.split_inclusive('\n') {
            if line.starts_with("## ") {
                sections.push((line.trim_end().to_owned(), String::new()));
            }
            match sections.last_mut() {
                Some((_, body)) => body.push_str(line),
                None => preamble.push_str(line),
            }
        }
        (preamble, sections)
    }
    let (old_pre, mut sections) = split(old);
    let (new_pre, new_sections) = split(new);
    for (heading, body) in new_sections {
        match sections.iter_mut().find(|(h, _)| *h == heading) {
            Some(slot) => slot.1 = body,
            None => {
                if let Some((_, last)) = sections.last_mut() {
                    if !last.ends_with("\n\n") {
                        last.push('\n');
                    }
                }
                sections.push((heading, body));
            }
        }
    }
    let mut out = if new_pre.trim().is_empty() {
        old_pre
    } else {
        new_pre
    };
    let last = sections.len().saturating_sub(1);
    for (i, (_, mut body)) in sections.into_iter().enumerate() {
        // A blank line before the next heading, whichever side wrote it.
        if i < last && !body.ends_with("\n\n") {
            body.push('\n');
        }
        out.push_str(&body);
    }
    out
}

/// Every row but the A/B: the whole document as it was before `--only`.
fn standard(args: &BenchArgs, manifest: &images::Manifest, airlock: &Path) -> Result<String> {
    let load_before = load_average();
    let airlock = airlock.to_path_buf();

    let mut rows = Vec::new();
    for (language, code) in SNIPPETS {
        let mut samples = Vec::new();
        for i in 0..args.runs {
            eprint!(
                "\rxtask: bench {language} cold run {}/{}   ",
                i + 1,
                args.runs
            );
            samples.push(cold_run(&airlock, language, code)?);
        }
        eprintln!();
        rows.push((language, samples));
    }

    let kernel = manifest
        .path(Kind::Kernel)
        .context("no kernel in the manifest")?;
    let floor = floor_boots(&kernel, args.runs)?;
    let overlay = overlay_bench(
        &manifest.path(Kind::RootfsRaw).context("no raw root disk")?,
        args.acquires,
    )?;
    let packages = PACKAGE_LISTS
        .iter()
        .map(|&list| package_bench(&airlock, list, args.runs))
        .collect::<Result<Vec<_>>>()?;
    let fast = templates::measure(&airlock, args.runs)?;
    let sessions = session::measure(args.runs)?;
    let load = [load_before, load_average()];
    let mut doc = render(&rows, &floor, &overlay, args.runs, &load)?;
    render_packages(&mut doc, &packages)?;
    session::render(&mut doc, &sessions)?;
    let cold_python = rows
        .iter()
        .find(|(language, _)| *language == "python")
        .map(|(_, samples)| samples.as_slice())
        .unwrap_or_default();
    doc.push_str(&templates::render(&fast, cold_python)?);
    doc.push_str(&crate::bench_server::render(
        &crate::bench_server::measure(&airlock, args.runs)?,
    )?);
    Ok(doc)
}

fn cold_run(airlock: &Path, language: &str, code: &str) -> Result<Sample> {
    cold_run_with(airlock, language, code, &[]).map(|(sample, _)| sample)
}

/// A cold run with `extra` arguments; also returns the whole JSON result.
fn cold_run_with(
    airlock: &Path,
    language: &str,
    code: &str,
    extra: &[&str],
) -> Result<(Sample, serde_json::Value)> {
    // --cold: `airlock run` restores memory templates by default.
    let args: Vec<&str> = std::iter::once("--cold")
        .chain(extra.iter().copied())
        .collect();
    json_run(airlock, &args, language, code)
}

/// One fresh `airlock run --json -q [extra] -l LANGUAGE CODE`: its sample
/// and its whole JSON result.
fn json_run(
    airlock: &Path,
    extra: &[&str],
    language: &str,
    code: &str,
) -> Result<(Sample, serde_json::Value)> {
    json_run_in(airlock, &[], extra, language, code)
}

/// [`json_run`] with `env` set for the `airlock` process.
fn json_run_in(
    airlock: &Path,
    env: &[(std::ffi::OsString, std::ffi::OsString)],
    extra: &[&str],
    language: &str,
    code: &str,
) -> Result<(Sample, serde_json::Value)> {
    let start = Instant::now();
    let out = Command::new(airlock)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["run", "--json", "-q"])
        .args(extra)
        .args(["-l", language, code])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start {}", airlock.display()))?;
    let wall_ms = start.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "airlock run {extra:?} -l {language} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parse airlock's JSON result")?;
    let t = &v["timings"];
    let f = |x: &serde_json::Value| x.as_f64().unwrap_or(f64::NAN);
    let sample = Sample {
        wall_ms,
        total_ms: f(&t["total_ms"]),
        overlay_ms: f(&t["overlay_ms"]),
        spawn_ms: f(&t["spawn_ms"]),
        ready_ms: f(&t["guest_ready_ms"]),
        exec_ms: f(&t["exec_ms"]),
        teardown_ms: f(&t["teardown_ms"]),
        peak_mib: f(&v["usage"]["peak_memory_mib"]),
    };
    Ok((sample, v))
}

/// First installs of `list` (its layer removed before each), then runs
/// over the stored layer and runs without packages in turns, cold and
/// restored from templates.
fn package_bench(
    airlock: &Path,
    (language, list, code, start_code): (&'static str, &'static str, &str, &str),
    runs: usize,
) -> Result<PackageRows> {
    let layers = airlock_sys_util::AirlockDirs::from_env()?
        .cache
        .join("packages");
    let with = ["--packages", list];
    let mut rows = PackageRows {
        language,
        list,
        installs: Vec::new(),
        install_ms: Vec::new(),
        cold: (Vec::new(), Vec::new()),
        restored: (Vec::new(), Vec::new()),
    };
    // Learn the layer's key (installing it if needed), then measure.
    let (_, first) = cold_run_with(airlock, language, code, &with)?;
    let key = first["packages"]["layer"]
        .as_str()
        .context("no packages.layer in the result")?
        .to_owned();
    for i in 0..runs.min(MAX_INSTALL_RUNS) {
        eprint!("\rxtask: bench {list} first install {}   ", i + 1);
        let dir = layers.join(&key);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
        }
        let (sample, v) = cold_run_with(airlock, language, code, &with)?;
        if v["packages"]["cached"] != serde_json::Value::Bool(false) {
            bail!("{list}: the layer was not rebuilt after its removal");
        }
        rows.install_ms.push(
            v["packages"]["install"]["build_ms"]
                .as_f64()
                .unwrap_or(f64::NAN),
        );
        rows.installs.push(sample);
    }
    // The templates of both shapes exist before the restored runs.
    restored_run(airlock, language, start_code, &with)?;
    restored_run(airlock, language, start_code, &[])?;
    for i in 0..runs {
        eprint!(
            "\rxtask: bench {list} against no packages {}/{runs}   ",
            i + 1
        );
        let (sample, v) = cold_run_with(airlock, language, start_code, &with)?;
        if v["packages"]["cached"] != serde_json::Value::Bool(true) {
            bail!("{list}: a run after the install did not attach the stored layer");
        }
        rows.cold.0.push(sample);
        rows.cold.1.push(cold_run(airlock, language, start_code)?);
        rows.restored
            .0
            .push(restored_run(airlock, language, start_code, &with)?);
        rows.restored
            .1
            .push(restored_run(airlock, language, start_code, &[])?);
    }
    eprintln!();
    Ok(rows)
}

/// One run restored from its template (not `--cold`).
fn restored_run(airlock: &Path, language: &str, code: &str, extra: &[&str]) -> Result<Sample> {
    json_run(airlock, extra, language, code).map(|(sample, _)| sample)
}

/// The packages section: first installs, then runs over the stored layer
/// against runs without packages.
fn render_packages(d: &mut String, packages: &[PackageRows]) -> Result<()> {
    let pair = |v: Vec<f64>| {
        let (a, b) = percentiles(&v);
        format!("{a:.0} / {b:.0}")
    };
    let total = |s: &[Sample]| pair(s.iter().map(|x| x.total_ms).collect());
    writeln!(d, "\n## Packages\n")?;
    writeln!(
        d,
        "A first install is a run whose package layer is missing: an install VM (allowlist network \
         to the registries, through the egress proxy) builds the layer, then the run boots over it. \
         Then runs over the stored layer (no network connection) and runs without packages, the \
         same trivial code, taken in turns: cold (`--cold`) and restored from their memory \
         template (over the layer, and without). Totals inside airlock.\n"
    )?;
    writeln!(d, "| list | first install: wall | of which the install VM | cold: with layer | cold: without | restored: with layer | restored: without |")?;
    writeln!(d, "|---|---|---|---|---|---|---|")?;
    for p in packages {
        writeln!(
            d,
            "| `{}` ({}) | {} | {} | {} | {} | {} | {} |",
            p.list,
            p.language,
            pair(p.installs.iter().map(|x| x.wall_ms).collect()),
            pair(p.install_ms.clone()),
            total(&p.cold.0),
            total(&p.cold.1),
            total(&p.restored.0),
            total(&p.restored.1),
        )?;
    }
    Ok(())
}

/// Wall times (ms) of bare QEMU boots of the kernel to an init that ends
/// the VM at once: the same machine, CPU, memory and TSC arguments as
/// Airlock's VMs, no disk and no ports.
fn floor_boots(kernel: &Path, runs: usize) -> Result<Vec<f64>> {
    let dir = std::env::temp_dir().join(format!("airlock-bench-floor-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let init = dir.join("init");
    run_checked(
        Command::new("gcc")
            .args(["-static", "-Os", "-o"])
            .arg(&init)
            .arg(workspace_root().join("xtask/bench/floor-init.c")),
    )?;
    let cpio =
        images::initramfs::write_newc(&images::initramfs::airlock_entries(std::fs::read(&init)?));
    let initrd = dir.join("floor.cpio");
    std::fs::write(&initrd, cpio)?;
    let tsc_khz = host_tsc_khz().unwrap_or(0);
    let mut append = String::from("console=ttyS0 acpi=off panic=-1 reboot=t quiet");
    if tsc_khz > 0 {
        let _ = write!(
            append,
            " tsc_early_khz={tsc_khz} lpj={} tsc=reliable no_timer_check",
            tsc_khz * 10
        );
    }
    let mut times = Vec::new();
    for i in 0..runs {
        eprint!("\rxtask: bench floor boot {}/{runs}   ", i + 1);
        let start = Instant::now();
        let status = Command::new("qemu-system-x86_64")
            .args([
                "-M",
                "microvm,x-option-roms=off,isa-serial=on,pit=on,pic=on,rtc=on,acpi=off",
            ])
            .args([
                "-accel",
                &format!("tcg,tb-size={}", airlock_qemu::TCG_TB_SIZE_MIB),
            ])
            .args(["-cpu", "max", "-m", "512", "-smp", "1"])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-no-reboot",
                "-display",
                "none",
            ])
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &append])
            .args(["-serial", "null"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("cannot start qemu-system-x86_64")?;
        if !status.success() {
            bail!("floor boot failed ({status})");
        }
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    eprintln!();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(times)
}

/// The host TSC in kHz from /proc/cpuinfo (enough for the floor's boot).
fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// Pool hit and on-demand acquire latency, in ms (p50, p95).
struct OverlayNumbers {
    hit: (f64, f64),
    miss: (f64, f64),
}

fn overlay_bench(base: &Path, iterations: usize) -> Result<OverlayNumbers> {
    eprintln!("xtask: bench overlay acquires ({iterations} per mode)");
    let scratch: PathBuf =
        std::env::temp_dir().join(format!("airlock-bench-overlay-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(airlock_overlay::measure_acquire(
        &airlock_overlay::AcquireBenchSetup {
            base: base.to_path_buf(),
            scratch_dir: scratch.clone(),
            iterations,
            config: airlock_overlay::PoolConfig::default(),
        },
    ));
    let _ = std::fs::remove_dir_all(&scratch);
    let bench = result?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(OverlayNumbers {
        hit: (ms(bench.hit.p50), ms(bench.hit.p95)),
        miss: (ms(bench.miss.p50), ms(bench.miss.p95)),
    })
}

fn render(
    rows: &[(&str, Vec<Sample>)],
    floor: &[f64],
    overlay: &OverlayNumbers,
    runs: usize,
    load: &[String; 2],
) -> Result<String> {
    let mut d = String::new();
    let (floor50, floor95) = percentiles(floor);
    writeln!(d, "# Benchmarks\n")?;
    writeln!(
        d,
        "Written by `cargo xtask bench` ({runs} cold runs per language, release build). \
         Machine: {} cores, {}, accelerator as `airlock doctor` reports it; \
         load average (1 min) {} at the start, {} at the end: under TCG every figure \
         grows with the load. Times in ms, p50 / p95.\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        qemu_version(),
        load[0],
        load[1]
    )?;
    writeln!(d, "## Cold `airlock run`\n")?;
    writeln!(d, "Each run is a fresh `airlock run --json` process: probe (cached), VM boot, exec, teardown.\n")?;
    writeln!(d, "| language | wall | total (in airlock) | overlay | spawn | guest ready | exec | teardown | peak host memory (MiB) |")?;
    writeln!(d, "|---|---|---|---|---|---|---|---|---|")?;
    let pair = |v: Vec<f64>| {
        let (a, b) = percentiles(&v);
        format!("{a:.0} / {b:.0}")
    };
    for (language, s) in rows {
        let col = |f: fn(&Sample) -> f64| pair(s.iter().map(f).collect());
        writeln!(
            d,
            "| {language} | {} | {} | {} | {} | {} | {} | {} | {} |",
            col(|x| x.wall_ms),
            col(|x| x.total_ms),
            col(|x| x.overlay_ms),
            col(|x| x.spawn_ms),
            col(|x| x.ready_ms),
            col(|x| x.exec_ms),
            col(|x| x.teardown_ms),
            col(|x| x.peak_mib),
        )?;
    }
    writeln!(d, "\n## Against the floor\n")?;
    writeln!(
        d,
        "The floor is a bare `qemu-system-x86_64` boot of the same kernel (same machine type, CPU, \
         memory and TSC arguments) to an init that ends the VM at once: {floor50:.0} / {floor95:.0} ms. \
         Airlock's cost excluding the interpreter is a run's total minus its exec time (boot, \
         overlay, spawn, guest ready, teardown); the wall column adds the `airlock` process itself.\n"
    )?;
    writeln!(d, "| language | airlock excl. exec, p50 | ratio to floor | wall excl. exec, p50 | ratio | goal (< {:.0}% over) |", OVERHEAD_GOAL * 100.0)?;
    writeln!(d, "|---|---|---|---|---|---|")?;
    for (language, s) in rows {
        let (inner, _) = percentiles(&s.iter().map(|x| x.total_ms - x.exec_ms).collect::<Vec<_>>());
        let (wall, _) = percentiles(&s.iter().map(|x| x.wall_ms - x.exec_ms).collect::<Vec<_>>());
        let ratio = inner / floor50;
        let met = if ratio - 1.0 < OVERHEAD_GOAL {
            "met"
        } else {
            "not met"
        };
        writeln!(
            d,
            "| {language} | {inner:.0} | {ratio:.2} | {wall:.0} | {:.2} | {met} |",
            wall / floor50
        )?;
    }
    writeln!(
        d,
        "\nWhat the floor does not do: find and mount the root disk, switch root and start the agent \
         (the init's `ready` line and the agent's, in the console with `airlock run --debug`, show \
         about 35 ms and 75-95 ms under TCG), then answer the host's first ping."
    )?;
    writeln!(d, "\n## Overlay pool\n")?;
    let share: Vec<f64> = rows
        .iter()
        .flat_map(|(_, s)| s.iter().map(|x| x.overlay_ms / x.total_ms * 100.0))
        .collect();
    let (share50, _) = percentiles(&share);
    let met = if overlay.hit.1 < POOL_HIT_P95_GOAL.as_secs_f64() * 1000.0 {
        "met"
    } else {
        "not met"
    };
    writeln!(d, "| acquire | p50 | p95 |\n|---|---|---|")?;
    writeln!(
        d,
        "| pool hit (rename) | {:.3} | {:.3} |",
        overlay.hit.0, overlay.hit.1
    )?;
    writeln!(
        d,
        "| on demand (qemu-img create) | {:.2} | {:.2} |",
        overlay.miss.0, overlay.miss.1
    )?;
    writeln!(
        d,
        "\nGoal: a pool hit under 1 ms at p95: **{met}**. One-shot `airlock run` creates its overlay on \
         demand (a pool would be filled and thrown away); the overlay's share of a cold run's total is \
         {share50:.1}% (p50)."
    )?;
    Ok(d)
}

/// The 1-minute load average (`/proc/loadavg`), or `unknown`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

fn qemu_version() -> String {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "QEMU version unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str =
        "# Benchmarks\n\nold intro\n\n## Cold\n\nold cold\n\n## Issue 19 A/B\n\nold ab\n";

    #[test]
    fn splice_replaces_a_measured_section_and_keeps_the_others() {
        let out = splice_sections(OLD, "\n## Issue 19 A/B\n\nnew ab\n");
        assert_eq!(
            out,
            "# Benchmarks\n\nold intro\n\n## Cold\n\nold cold\n\n## Issue 19 A/B\n\nnew ab\n"
        );
    }

    #[test]
    fn splice_takes_the_new_preamble_and_appends_new_sections() {
        let out = splice_sections(
            OLD,
            "# Benchmarks\n\nnew intro\n\n## Cold\n\nnew cold\n\n## Data\n\nrows\n",
        );
        assert_eq!(
            out,
            "# Benchmarks\n\nnew intro\n\n## Cold\n\nnew cold\n\n## Issue 19 A/B\n\nold ab\n\n## Data\n\nrows\n"
        );
    }

    #[test]
    fn splice_keeps_a_blank_line_before_the_heading_after_a_replaced_section() {
        let out = splice_sections(OLD, "## Cold\n\nnew cold\n");
        assert!(out.contains("new cold\n\n## Issue 19 A/B"), "{out}");
    }

    #[test]
    fn splice_into_an_empty_document_is_the_new_one() {
        let new = "# Benchmarks\n\nintro\n\n## Cold\n\nrows\n";
        assert_eq!(splice_sections("", new), new);
    }
}
