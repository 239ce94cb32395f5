//! The fast-path rows of `cargo xtask bench` (issue "Fast paths"): one-shot
//! `print(1)` cold against restored from a memory template, with the
//! restore broken down; the library's warm pool, take to result; idle host
//! CPU of a running and a paused VM; private memory of 20 clones of one
//! template; template build time and size. Each figure is written with its
//! goal beside it, met or not.

use super::{json_run, met, percentiles, Sample};
use airlock::template::{Found, TemplateShape};
use airlock::{Config, PoolConfig, RunRequest, Scheduler, VmOptions};
use airlock_protocol::Language;
use airlock_sys_util::proc_scan::{clock_ticks_per_second, cpu_ticks, memory_rollup};
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

/// Goal: a restored one-shot run at most this fraction of a cold one.
const RESTORED_RATIO_GOAL: f64 = 0.15;
/// Goal: a warm-pool run, take to result, p50.
const POOL_P50_GOAL_MS: f64 = 50.0;
/// Goal: a running idle VM's host CPU, % of a core.
const IDLE_CPU_GOAL_PERCENT: f64 = 1.0;
/// Goal: a clone's private memory with 20 clones of one template.
const CLONE_PRIVATE_GOAL_MIB: f64 = 40.0;
/// Clones idle at once for the memory row.
const CLONES: usize = 20;
/// How long idle CPU is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(10);
/// The longest wait for a pool to fill (a template build included).
const FILL_DEADLINE: Duration = Duration::from_secs(600);

/// Ignores a VM's progress and output.
struct Discard;

impl airlock::RunObserver for Discard {
    fn output(&mut self, _: airlock::OutputStream, _: &[u8]) {}
}

/// One restored `airlock run --json`: the run and its restore's parts.
#[derive(Debug, Clone, Copy, Default)]
struct Restored {
    run: Sample,
    load_ms: f64,
    resume_ms: f64,
    agent_ms: f64,
    reseed_ms: f64,
}

/// Everything this module measured.
pub struct Numbers {
    restored: Vec<Restored>,
    pool_ms: Vec<f64>,
    pool_take_ms: Vec<f64>,
    idle_running_percent: f64,
    idle_paused_percent: f64,
    clones: Vec<airlock_sys_util::proc_scan::MemoryRollup>,
    templates: Vec<(TemplateShape, f64, u64, u64)>,
}

/// Runs the measurements (the images and default templates are built).
///
/// # Errors
/// A run, the orchestrator or a measurement failing.
pub fn measure(airlock: &Path, runs: usize) -> Result<Numbers> {
    let mut restored = Vec::new();
    for i in 0..runs {
        eprint!("\rxtask: bench python restored run {}/{runs}   ", i + 1);
        restored.push(restored_run(airlock)?);
    }
    eprintln!();
    let runtime = tokio::runtime::Runtime::new().context("start a tokio runtime")?;
    let (pool_ms, pool_take_ms, idle_running_percent, idle_paused_percent) =
        runtime.block_on(pool_numbers(runs))?;
    let clones = runtime.block_on(clone_memory())?;
    let templates = runtime.block_on(template_sizes())?;
    Ok(Numbers {
        restored,
        pool_ms,
        pool_take_ms,
        idle_running_percent,
        idle_paused_percent,
        clones,
        templates,
    })
}

fn restored_run(airlock: &Path) -> Result<Restored> {
    let (run, v) = json_run(airlock, &[], "python", "print(1)")?;
    let r = &v["timings"]["restore"];
    if r.is_null() {
        bail!("the run was not restored from a template: {v}");
    }
    let f = |x: &serde_json::Value| x.as_f64().unwrap_or(f64::NAN);
    Ok(Restored {
        run,
        load_ms: f(&r["load_ms"]),
        resume_ms: f(&r["resume_ms"]),
        agent_ms: f(&r["agent_ms"]),
        reseed_ms: f(&r["reseed_ms"]),
    })
}

/// A VM of the default python shape, no network.
fn python_options() -> VmOptions {
    let shape = python_shape();
    VmOptions {
        packages: None,
        tenant: "bench".into(),
        language: shape.language,
        image: None,
        memory_mib: shape.memory_mib,
        vcpus: shape.vcpus,
        network: Default::default(),
        secrets: None,
        disk_mib: shape.disk_mib,
        mounts: Vec::new(),
    }
}

fn python_shape() -> TemplateShape {
    TemplateShape {
        language: Language::Python,
        image: None,
        memory_mib: airlock::DEFAULT_MEMORY_MIB,
        vcpus: 1,
        disk_mib: airlock::spec::DEFAULT_DISK_MIB,
    }
}

/// % of one core that `pids` used together over `window`, each.
async fn cpu_percent(pids: &[u32], window: Duration) -> Result<f64> {
    let ticks = |pid: &u32| cpu_ticks(*pid).with_context(|| format!("QEMU {pid} is gone"));
    let before: Vec<u64> = pids.iter().map(ticks).collect::<Result<_>>()?;
    tokio::time::sleep(window).await;
    let after: Vec<u64> = pids.iter().map(ticks).collect::<Result<_>>()?;
    let used: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    let per_vm = used as f64 / pids.len().max(1) as f64;
    Ok(per_vm * 100.0 / clock_ticks_per_second() as f64 / window.as_secs_f64())
}

/// Warm-pool runs of `print(1)` (take to result, and the take alone),
/// then the idle CPU of a paused pool VM and of a running one.
async fn pool_numbers(runs: usize) -> Result<(Vec<f64>, Vec<f64>, f64, f64)> {
    let scheduler = Scheduler::start(Config {
        overlay_pool_target: 0,
        max_concurrent_vms: 4,
        warm_pools: vec![PoolConfig {
            size: 2,
            ..PoolConfig::new(python_shape())
        }],
        ..Config::default()
    })
    .await?;
    let measured = pool_runs(&scheduler, runs).await;
    scheduler.shutdown().await;
    measured
}

async fn pool_runs(scheduler: &Scheduler, runs: usize) -> Result<(Vec<f64>, Vec<f64>, f64, f64)> {
    let pool = &scheduler.pools()[0];
    let (mut take_to_result, mut take) = (Vec::new(), Vec::new());
    for i in 0..runs {
        eprint!("\rxtask: bench warm-pool run {}/{runs}   ", i + 1);
        if !pool.wait_full(FILL_DEADLINE).await {
            bail!("the warm pool did not fill: {:?}", pool.stats());
        }
        let result = scheduler
            .run(RunRequest::new(Language::Python, "print(1)"))
            .await?;
        if !result.timings.from_warm_pool || result.stdout != b"1\n" {
            bail!("a warm-pool run went wrong: {result:?}");
        }
        let t = &result.timings;
        take_to_result.push(t.total_ms.saturating_sub(t.teardown_ms) as f64);
        take.push(t.guest_ready_ms as f64);
    }
    eprintln!();
    if !pool.wait_full(FILL_DEADLINE).await {
        bail!("the warm pool did not refill: {:?}", pool.stats());
    }
    eprintln!("xtask: bench idle CPU (paused, then running)");
    let paused = cpu_percent(&pool.idle_qemu_pids(), IDLE_WINDOW).await?;
    let options = python_options();
    let mut vm = scheduler.start_vm(&options, &mut Discard).await?;
    // Let the resume's own work end before the window opens.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let running = cpu_percent(&vm.qemu_pid().into_iter().collect::<Vec<_>>(), IDLE_WINDOW).await;
    vm.destroy().await;
    Ok((take_to_result, take, running?, paused))
}

/// Restores `CLONES` clones of the python template, runs `print(1)` in
/// each, and reads every QEMU's memory while all are alive.
async fn clone_memory() -> Result<Vec<airlock_sys_util::proc_scan::MemoryRollup>> {
    let scheduler = Scheduler::start(Config {
        overlay_pool_target: 0,
        max_concurrent_vms: CLONES + 1,
        restore_templates: true,
        ..Config::default()
    })
    .await?;
    let measured = clones(&scheduler).await;
    scheduler.shutdown().await;
    measured
}

async fn clones(scheduler: &Scheduler) -> Result<Vec<airlock_sys_util::proc_scan::MemoryRollup>> {
    let options = python_options();
    let mut vms = Vec::new();
    for i in 0..CLONES {
        eprint!("\rxtask: bench clone {}/{CLONES}   ", i + 1);
        let mut vm = scheduler.start_vm(&options, &mut Discard).await?;
        let exec = airlock_protocol::ExecRequest {
            mode: Default::default(),
            language: Language::Python,
            code: "print(1)".into(),
            timeout_ms: 60_000,
            env: Default::default(),
            cwd: None,
        };
        vm.exec(exec, &mut |_| {}).await?;
        vms.push(vm);
    }
    eprintln!();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rollups = vms
        .iter()
        .filter_map(|vm| vm.qemu_pid().and_then(memory_rollup))
        .collect();
    for mut vm in vms {
        vm.destroy().await;
    }
    Ok(rollups)
}

/// Build time and size (device state, memory file allocated) of the
/// default templates.
async fn template_sizes() -> Result<Vec<(TemplateShape, f64, u64, u64)>> {
    let scheduler = Scheduler::start(Config {
        overlay_pool_target: 0,
        ..Config::default()
    })
    .await?;
    let mut rows = Vec::new();
    for shape in crate::images::templates::default_shapes() {
        if let Found::Ready(t) = scheduler
            .templates()
            .expect("a started scheduler has templates")
            .find(shape)
            .await?
        {
            let allocated = allocated_bytes(&t.memory_file());
            rows.push((
                shape,
                t.metadata.build_ms as f64,
                t.metadata.state_bytes,
                allocated,
            ));
        }
    }
    scheduler.shutdown().await;
    Ok(rows)
}

fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

fn pair(values: &[f64]) -> String {
    let (a, b) = percentiles(values);
    format!("{a:.0} / {b:.0}")
}

/// The markdown sections, given the cold python runs of the same bench.
///
/// # Errors
/// Formatting only.
pub fn render(n: &Numbers, cold_python: &[Sample]) -> Result<String> {
    let mut d = String::new();
    let mib = |kib: u64| kib as f64 / 1024.0;
    writeln!(
        d,
        "\n## Memory templates: one-shot `print(1)`, cold and restored\n"
    )?;
    writeln!(
        d,
        "Each run a fresh `airlock run --json -l python 'print(1)'` process (`--cold` for cold); \
         restored runs restore the python template of the default shape. p50 / p95, ms.\n"
    )?;
    writeln!(d, "| | cold | restored |\n|---|---|---|")?;
    let cold = |f: fn(&Sample) -> f64| pair(&cold_python.iter().map(f).collect::<Vec<_>>());
    let rest = |f: fn(&Restored) -> f64| pair(&n.restored.iter().map(f).collect::<Vec<_>>());
    type Row = (
        &'static str,
        Option<fn(&Sample) -> f64>,
        fn(&Restored) -> f64,
    );
    let table: [Row; 9] = [
        ("wall", Some(|s| s.wall_ms), |r| r.run.wall_ms),
        ("QEMU start (spawn)", Some(|s| s.spawn_ms), |r| {
            r.run.spawn_ms
        }),
        ("boot / restore to agent ready", Some(|s| s.ready_ms), |r| {
            r.run.ready_ms
        }),
        ("- state load", None, |r| r.load_ms),
        ("- resume (`cont`)", None, |r| r.resume_ms),
        ("- agent answered", None, |r| r.agent_ms),
        ("- reseed", None, |r| r.reseed_ms),
        ("first exec", Some(|s| s.exec_ms), |r| r.run.exec_ms),
        ("teardown", Some(|s| s.teardown_ms), |r| r.run.teardown_ms),
    ];
    for (label, cold_part, restored_part) in table {
        let cold_cell = cold_part.map(cold).unwrap_or_default();
        writeln!(d, "| {label} | {cold_cell} | {} |", rest(restored_part))?;
    }
    let (cold50, _) = percentiles(&cold_python.iter().map(|s| s.wall_ms).collect::<Vec<_>>());
    let (rest50, _) = percentiles(&n.restored.iter().map(|r| r.run.wall_ms).collect::<Vec<_>>());
    let ratio = rest50 / cold50;
    writeln!(
        d,
        "\nRestored / cold wall, p50: **{ratio:.2}x**; goal <= {RESTORED_RATIO_GOAL}x: **{}**.",
        met(ratio <= RESTORED_RATIO_GOAL)
    )?;
    let p50_of =
        |f: fn(&Restored) -> f64| percentiles(&n.restored.iter().map(f).collect::<Vec<_>>()).0;
    let restore = p50_of(|r| r.load_ms + r.resume_ms + r.agent_ms + r.reseed_ms);
    let exec = p50_of(|r| r.run.exec_ms);
    writeln!(
        d,
        "\nWhere a restored run's time goes (p50): the restore itself (state load, resume, \
         agent, reseed) {restore:.0} ms; the first exec {exec:.0} ms, a new `python3` process in a \
         new QEMU whose TCG translation cache starts empty; the rest is the `airlock` process \
         (probe cache, overlay, QEMU start, teardown)."
    )?;

    writeln!(d, "\n## Warm pool (library)\n")?;
    let (p50, p95) = percentiles(&n.pool_ms);
    writeln!(
        d,
        "`Scheduler::run` of python `print(1)` with a warm pool of 2 (each run waits until the \
         pool is full again, so each takes a paused VM): take to result (the run's total \
         without its teardown), and the take alone (`cont` and reseed). ms.\n"
    )?;
    writeln!(d, "| | p50 | p95 | goal |\n|---|---|---|---|")?;
    writeln!(
        d,
        "| take to result | {p50:.0} | {p95:.0} | p50 <= {POOL_P50_GOAL_MS:.0}: **{}** |",
        met(p50 <= POOL_P50_GOAL_MS)
    )?;
    let (t50, t95) = percentiles(&n.pool_take_ms);
    writeln!(d, "| take (resume, reseed) | {t50:.0} | {t95:.0} | |")?;

    writeln!(d, "\n## Idle cost\n")?;
    writeln!(
        d,
        "Host CPU of one VM's QEMU over {} s (`/proc/PID/stat`), % of one core.\n",
        IDLE_WINDOW.as_secs()
    )?;
    writeln!(d, "| VM | CPU | goal |\n|---|---|---|")?;
    writeln!(
        d,
        "| running, idle (agent waiting) | {:.2}% | < {IDLE_CPU_GOAL_PERCENT:.0}%: **{}** |",
        n.idle_running_percent,
        met(n.idle_running_percent < IDLE_CPU_GOAL_PERCENT)
    )?;
    writeln!(
        d,
        "| paused in the warm pool | {:.2}% | 0: **{}** |",
        n.idle_paused_percent,
        met(n.idle_paused_percent == 0.0)
    )?;

    writeln!(d, "\n## Memory per clone\n")?;
    writeln!(
        d,
        "{} clones of the python template alive at once, each after one `print(1)`; each QEMU's \
         `/proc/PID/smaps_rollup`, MiB, p50 / max. Private is Private_Clean + Private_Dirty: \
         pages mapped by this QEMU alone; Anonymous is what it wrote (TCG translation cache, \
         QEMU's heap, copy-on-write copies of template pages).\n",
        n.clones.len()
    )?;
    let col = |f: fn(&airlock_sys_util::proc_scan::MemoryRollup) -> u64| {
        let v: Vec<f64> = n.clones.iter().map(|r| mib(f(r))).collect();
        let max = v.iter().copied().fold(0.0, f64::max);
        (percentiles(&v).0, max)
    };
    let private = col(|r| r.private_kib());
    writeln!(d, "| | p50 | max |\n|---|---|---|")?;
    for (label, (p, m)) in [
        ("Private", private),
        ("Pss", col(|r| r.pss_kib)),
        ("Anonymous", col(|r| r.anonymous_kib)),
        ("Rss", col(|r| r.rss_kib)),
    ] {
        writeln!(d, "| {label} | {p:.1} | {m:.1} |")?;
    }
    writeln!(
        d,
        "\nGoal: <= {CLONE_PRIVATE_GOAL_MIB:.0} MiB private per clone: **{}**.",
        met(private.0 <= CLONE_PRIVATE_GOAL_MIB)
    )?;

    writeln!(d, "\n## Templates\n")?;
    writeln!(
        d,
        "| template | build (ms) | device state (KiB) | memory file allocated (MiB) |"
    )?;
    writeln!(d, "|---|---|---|---|")?;
    for (shape, build_ms, state, allocated) in &n.templates {
        writeln!(
            d,
            "| {shape} | {build_ms:.0} | {:.0} | {:.1} |",
            *state as f64 / 1024.0,
            *allocated as f64 / (1024.0 * 1024.0)
        )?;
    }
    Ok(d)
}
