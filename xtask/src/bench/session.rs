//! The session rows of `cargo xtask bench`: a cell's round trip through a
//! live interpreter (`print(1)`), and a session's start, cold and from the
//! memory template of its shape. Through the library (as the server uses
//! it), one Python session of the default shape.

use super::percentiles;
use airlock::{CellRequest, Config, OutputStream, RunObserver, Scheduler, SessionOptions};
use airlock_protocol::Language;
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::time::Instant;

/// Goal: a session exec of `print(1)` at p50, in ms (no process per cell).
const EXEC_P50_GOAL_MS: f64 = 10.0;
/// Cells timed (after a few to warm the interpreter).
const CELLS: usize = 200;
const WARM_CELLS: usize = 5;

/// Measured session figures, in ms.
pub(super) struct SessionNumbers {
    exec: Vec<f64>,
    start_cold: Vec<f64>,
    start_template: Vec<f64>,
}

struct Discard;

impl RunObserver for Discard {
    fn output(&mut self, _: OutputStream, _: &[u8]) {}
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// Starts `starts` sessions cold and `starts` from the template (built
/// first when missing), and times [`CELLS`] cells in the first one.
pub(super) fn measure(starts: usize) -> Result<SessionNumbers> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start a tokio runtime")?;
    runtime.block_on(async {
        let mut numbers = SessionNumbers {
            exec: Vec::new(),
            start_cold: Vec::new(),
            start_template: Vec::new(),
        };
        for restore in [false, true] {
            let scheduler = Scheduler::start(Config {
                restore_templates: restore,
                overlay_pool_target: 0,
                ..Config::default()
            })
            .await?;
            let options = SessionOptions::new(Language::Python);
            if restore {
                let shape = airlock::template::TemplateShape {
                    language: options.language(),
                    image: None,
                    memory_mib: options.spec.shape.memory_mib,
                    vcpus: options.spec.shape.vcpus,
                    disk_mib: options.spec.shape.disk_mib,
                };
                scheduler
                    .templates()
                    .expect("a started scheduler has templates")
                    .ensure(shape)
                    .await?;
            }
            for i in 0..starts {
                eprint!(
                    "\rxtask: bench session start ({}) {}/{starts}   ",
                    if restore { "template" } else { "cold" },
                    i + 1
                );
                let start = Instant::now();
                let session = scheduler.session(options.clone()).await?;
                let took = ms_since(start);
                if restore {
                    numbers.start_template.push(took);
                } else {
                    numbers.start_cold.push(took);
                }
                if !restore && i == 0 {
                    numbers.exec = time_cells(&session).await?;
                }
                session.close().await;
            }
            eprintln!();
            scheduler.shutdown().await;
        }
        Ok(numbers)
    })
}

async fn time_cells(session: &airlock::Session) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(CELLS);
    for i in 0..WARM_CELLS + CELLS {
        let start = Instant::now();
        let result = session
            .exec(CellRequest::new("print(1)"), &mut Discard)
            .await?;
        let took = ms_since(start);
        if result.exit_code != 0 || result.stdout != b"1\n" {
            bail!(
                "session cell failed: exit {}, stdout {:?}, stderr {:?}",
                result.exit_code,
                String::from_utf8_lossy(&result.stdout),
                String::from_utf8_lossy(&result.stderr)
            );
        }
        if i >= WARM_CELLS {
            times.push(took);
        }
    }
    Ok(times)
}

/// The `## Sessions` section.
pub(super) fn render(d: &mut String, numbers: &SessionNumbers) -> Result<()> {
    let (exec50, exec95) = percentiles(&numbers.exec);
    let (cold50, cold95) = percentiles(&numbers.start_cold);
    let (tpl50, tpl95) = percentiles(&numbers.start_template);
    let met = if exec50 <= EXEC_P50_GOAL_MS {
        "met"
    } else {
        "not met"
    };
    writeln!(d, "\n## Sessions\n")?;
    writeln!(
        d,
        "One Python session of the default shape through the library (`Scheduler::session`, \
         `Session::exec`), as the host sees it. A cell runs in the live interpreter; a start \
         includes the boot or restore and warming the interpreter.\n"
    )?;
    writeln!(d, "| measure | p50 | p95 |\n|---|---|---|")?;
    writeln!(
        d,
        "| exec of `print(1)` ({} cells) | {exec50:.1} | {exec95:.1} |",
        numbers.exec.len()
    )?;
    writeln!(
        d,
        "| session start, cold ({} starts) | {cold50:.0} | {cold95:.0} |",
        numbers.start_cold.len()
    )?;
    writeln!(
        d,
        "| session start, from the template ({} starts) | {tpl50:.0} | {tpl95:.0} |",
        numbers.start_template.len()
    )?;
    writeln!(
        d,
        "\nGoal: a session exec of `print(1)` at p50 <= {EXEC_P50_GOAL_MS:.0} ms: **{met}**."
    )?;
    Ok(())
}
