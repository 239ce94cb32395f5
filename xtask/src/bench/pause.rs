//! The pause rows of `cargo xtask bench` (issue 23): a python session of
//! the default shape, restored from its memory template, forked into 4,
//! paused to disk (time and size), resumed, and forked into 4 again; each
//! set against a template restore (a session start from the template) in
//! the same run. Through the library built for release, as the server
//! uses it; paused sessions go to a temporary dir.

use super::percentiles;
use airlock::{
    CellRequest, Config, OutputStream, PauseOptions, RunObserver, Scheduler, SessionOptions,
};
use airlock_protocol::Language;
use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::time::Instant;

/// Goal: a resume at p50 within this many template restores at p50.
const RESUME_GOAL_RATIO: f64 = 2.0;
/// Goal: a fork of [`FORKS`] with every child ready, p50, in ms.
const FORK_GOAL_MS: f64 = 400.0;
/// Children per fork.
const FORKS: usize = 4;

/// Measured pause figures.
pub(super) struct PauseNumbers {
    /// Session starts from the template, ms.
    restore: Vec<f64>,
    /// Pauses, ms.
    pause: Vec<f64>,
    /// Their size on disk (state and disk), bytes.
    bytes: Vec<f64>,
    /// Resumes, ms.
    resume: Vec<f64>,
    /// Forks of [`FORKS`] of a session started from its template, ms.
    fork: Vec<f64>,
    /// Forks of [`FORKS`] of a resumed session, ms.
    fork_resumed: Vec<f64>,
    /// [`FORKS`] sessions started from the template at once, every one
    /// ready, ms: what a fork's children cost without any parent.
    together: Vec<f64>,
    /// The load average before and after.
    load: [String; 2],
}

struct Discard;

impl RunObserver for Discard {
    fn output(&mut self, _: OutputStream, _: &[u8]) {}
}

fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

async fn cell(session: &airlock::Session, code: &str) -> Result<()> {
    let result = session.exec(CellRequest::new(code), &mut Discard).await?;
    if result.exit_code != 0 {
        bail!(
            "cell {code:?} failed: {}",
            String::from_utf8_lossy(&result.stderr)
        );
    }
    Ok(())
}

/// `rounds` rounds of: a session from the template, a cell, a fork of
/// [`FORKS`], its pause, its resume, a fork of [`FORKS`] again, all closed.
pub(super) fn measure(rounds: usize) -> Result<PauseNumbers> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start a tokio runtime")?;
    let paused = std::env::temp_dir().join(format!("airlock-bench-paused-{}", std::process::id()));
    let measured = runtime.block_on(measure_into(&paused, rounds));
    if let Err(e) = std::fs::remove_dir_all(&paused) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("xtask: cannot remove {}: {e}", paused.display());
        }
    }
    measured
}

async fn measure_into(paused: &std::path::Path, rounds: usize) -> Result<PauseNumbers> {
    let scheduler = Scheduler::start(Config {
        restore_templates: true,
        overlay_pool_target: 0,
        // The session and its children at once.
        max_concurrent_vms: FORKS + 1,
        paused_dir: paused.to_path_buf(),
        ..Config::default()
    })
    .await?;
    let options = SessionOptions::new(Language::Python);
    scheduler
        .templates()
        .context("a started scheduler has templates")?
        .ensure(options.spec.shape)
        .await?;
    let mut n = PauseNumbers {
        restore: Vec::new(),
        pause: Vec::new(),
        bytes: Vec::new(),
        resume: Vec::new(),
        fork: Vec::new(),
        fork_resumed: Vec::new(),
        together: Vec::new(),
        load: [super::load_average(), String::new()],
    };
    for i in 0..rounds {
        eprint!("\rxtask: bench pause, resume, fork {}/{rounds}   ", i + 1);
        let start = Instant::now();
        let session = scheduler.session(options.clone()).await?;
        n.restore.push(ms_since(start));
        cell(&session, "x = list(range(100000))").await?;
        let start = Instant::now();
        let children = session.fork(&scheduler, FORKS).await?;
        n.fork.push(ms_since(start));
        for child in children {
            cell(&child, "assert len(x) == 100000").await?;
            child.close().await;
        }
        let start = Instant::now();
        let meta = session.pause(&scheduler, &PauseOptions::default()).await?;
        n.pause.push(ms_since(start));
        n.bytes.push(meta.bytes() as f64);
        let start = Instant::now();
        let resumed = scheduler.resume(&meta.session_id).await?;
        n.resume.push(ms_since(start));
        cell(&resumed, "assert len(x) == 100000").await?;
        let start = Instant::now();
        let children = resumed.fork(&scheduler, FORKS).await?;
        n.fork_resumed.push(ms_since(start));
        for child in &children {
            cell(child, "assert len(x) == 100000").await?;
            child.close().await;
        }
        resumed.close().await;
        let start = Instant::now();
        let starts = (0..FORKS).map(|_| {
            let (scheduler, options) = (scheduler.clone(), options.clone());
            async move { scheduler.session(options).await }
        });
        let sessions = futures_join_all(starts).await?;
        n.together.push(ms_since(start));
        for session in sessions {
            let session = session?;
            cell(&session, "print(1)").await?;
            session.close().await;
        }
    }
    eprintln!();
    n.load[1] = super::load_average();
    scheduler.shutdown().await;
    Ok(n)
}

/// Awaits every future of `futures` at once; their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Result<Vec<F::Output>>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.context("a task of the bench ended early")?);
    }
    Ok(outputs)
}

/// The `## Pause, resume and fork` section.
pub(super) fn render(n: &PauseNumbers) -> Result<String> {
    let mut d = String::new();
    let (restore50, restore95) = percentiles(&n.restore);
    let (pause50, pause95) = percentiles(&n.pause);
    let (bytes50, _) = percentiles(&n.bytes);
    let (resume50, resume95) = percentiles(&n.resume);
    let (fork50, fork95) = percentiles(&n.fork);
    let (resumed50, resumed95) = percentiles(&n.fork_resumed);
    let (together50, together95) = percentiles(&n.together);
    let met = |ok: bool| if ok { "met" } else { "not met" };
    writeln!(d, "\n## Pause, resume and fork\n")?;
    writeln!(
        d,
        "A python session of the default shape restored from its memory template, a cell \
         (`x = list(range(100000))`), forked into {FORKS} (`Session::fork`: the parent saved \
         once, the stream filtered against the template's memory file, the children built \
         meanwhile and loaded from it at once over that file, each reseeded), then paused to disk \
         (`Session::pause`: the whole RAM migrated to a file, the workspace disk copied), \
         resumed (`Scheduler::resume`) and forked into {FORKS} again, {} rounds, through the \
         library built for release; the load average (1 min) was {} at the start and {} at \
         the end. Wall times in ms as the host sees them; see `docs/persistence.md`.\n",
        n.pause.len(),
        n.load[0],
        n.load[1]
    )?;
    writeln!(d, "| measure | p50 | p95 | goal |\n|---|---|---|---|")?;
    writeln!(
        d,
        "| session start from the template (the restore it is measured against) | {restore50:.0} | {restore95:.0} | |"
    )?;
    writeln!(d, "| pause | {pause50:.0} | {pause95:.0} | (measured) |")?;
    writeln!(
        d,
        "| pause: size on disk (MiB) | {:.1} | | (measured) |",
        bytes50 / f64::from(1u32 << 20)
    )?;
    writeln!(
        d,
        "| resume | {resume50:.0} | {resume95:.0} | <= {RESUME_GOAL_RATIO}x the restore: **{}** ({:.1}x) |",
        met(resume50 <= RESUME_GOAL_RATIO * restore50),
        resume50 / restore50.max(1.0)
    )?;
    writeln!(
        d,
        "| fork of {FORKS} of the session started from the template, every child ready | {fork50:.0} | {fork95:.0} | <= {FORK_GOAL_MS:.0}: **{}** |",
        met(fork50 <= FORK_GOAL_MS)
    )?;
    writeln!(
        d,
        "| fork of {FORKS} of the resumed session, every child ready | {resumed50:.0} | {resumed95:.0} | <= {FORK_GOAL_MS:.0}: **{}** |",
        met(resumed50 <= FORK_GOAL_MS)
    )?;
    writeln!(
        d,
        "| {FORKS} sessions from the template at once, every one ready (no parent: the floor of a fork's children) | {together50:.0} | {together95:.0} | |"
    )?;
    Ok(d)
}
