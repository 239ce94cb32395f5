//! Persistent interpreters: one per language per VM, running the cells of
//! `exec` with `mode: cell` (`docs/protocol.md`, "cells").
//!
//! Each interpreter is a small driver program (`drivers/`, embedded in the
//! agent) that runs cells inside one live process: Python in the globals of
//! `__main__`, JavaScript through Node's REPL machinery, bash by sourcing
//! each cell at its top level. Nothing is spawned per cell. The agent writes
//! a cell's code to a root-owned file in [`AgentConfig::cell_dir`] and sends
//! the driver a command on its fd 3; the driver runs it with the cell's
//! `env` set for that cell alone, flushes stdout and stderr, and reports
//! `done` with the exit code on its fd 4 ([`control`]). The agent then reads
//! what the output pipes still hold (`FIONREAD`: the driver flushed before
//! reporting) and answers `complete`. Output is never parsed, so a cell
//! printing anything cannot end a cell or fake an exit code.
//!
//! The interpreter lives in its own cgroup ([`crate::exec_cgroup`]): after
//! each cell every other process in it is killed, so children a cell
//! started (`sleep 1000 &`, `subprocess.Popen`) do not outlive it.
//! A timeout or `cancel` sends SIGINT to the interpreter (Python raises
//! `KeyboardInterrupt`, Node's REPL breaks the script, bash's trap unwinds
//! to the cell's top) and kills the cell's other processes; a driver that
//! has not reported after the kill grace is killed with its whole cgroup:
//! the completion says `state_lost` and the next cell starts a fresh
//! interpreter. An interpreter that dies by itself (`exit 3`,
//! `process.exit(3)`, `os._exit(3)`) gives its status and `state_lost`.
//! Cancelled cells exit 130. A `one_shot` exec (a restored VM's single
//! run) is a cell whose timeout or cancel ends the interpreter as a
//! process exec is ended (SIGTERM or SIGINT to its group, then SIGKILL),
//! so its exit code is what a new process would report.
//!
//! After a restore from a memory template ([`Repls::reseed`]), running
//! interpreters are reseeded: Python's `random` from the freshly reseeded
//! kernel, bash's `$RANDOM` from a fresh seed, and Node's two generators
//! (`docs/templates.md`, "After a restore, before user code"):
//! - `Math.random`: V8 seeds a context's generator on its first
//!   `Math.random()`, from `--random-seed` when that flag is set. The
//!   driver sets it to a fresh seed from the agent, draws once in its
//!   (never drawn) main context and once in a new context, and sets it back
//!   to 0; the two draws are equal only if the main context was unseeded,
//!   else the driver answers an error.
//! - `crypto`: OpenSSL's DRBGs reseed from the kernel on their first draw
//!   once the clock is more than their reseed interval from their last
//!   seeding. A Node started for a template runs with the clock a day back
//!   ([`crate::reseed::lag_clock_for_template`]); the clone's reseed sets
//!   the real time: each DRBG reseeds (the primary from the clone's kernel)
//!   on its first draw, whenever the run makes it.
//!
//! A Node that was running at this agent's first reseed but did not start
//! on a template's lagging clock cannot be reseeded in place: it is ended
//! (the next cell starts a fresh one and says `state_lost`), as is any
//! interpreter whose driver does not answer its reseed. A Node started
//! after the first reseed seeded itself from this clone's reseeded kernel,
//! as does one reseeded in place: no other VM shares its state, so later
//! reseeds (a warm pool's take, after the fill's) keep it. The host never
//! snapshots a VM after its first reseed.

pub mod control;
mod interpreter;
mod reports;

use crate::exec::{blocking, Sink};
use crate::{AgentConfig, AgentError};
use airlock_protocol::{Completion, Event, ExecMode, ExecRequest, Language, OpId};
use airlock_sys_util::{IoError, IoResultExt};
use interpreter::{elapsed_ms, CellInput, Interpreter};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Mutex};

/// Longest wait for a language's interpreter to be free for a reseed.
const RESEED_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// One language's interpreter slot.
#[derive(Default)]
struct Slot {
    interpreter: Option<Interpreter>,
    /// An interpreter was ended outside a cell (reseed): the next cell
    /// reports the state lost.
    lost: bool,
    /// The running interpreter's random state is this VM's own: it started
    /// after this agent's first reseed, or was reseeded in place.
    seeded_here: bool,
    /// The running interpreter started while the clock lagged for a
    /// template (before any reseed): its OpenSSL DRBGs reseed themselves
    /// once a reseed sets the real time.
    on_template_clock: bool,
}

/// What a reseed does to a running interpreter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReseedAction {
    /// Nothing: its state is this VM's own already.
    Keep,
    /// Ask its driver to reseed itself.
    Reseed,
    /// End it: its state may be shared and cannot be reseeded in place.
    End,
}

/// What a reseed does to an interpreter of `language` (see the module
/// docs).
fn reseed_action(language: Language, seeded_here: bool, on_template_clock: bool) -> ReseedAction {
    match language {
        Language::Python | Language::Raw => ReseedAction::Reseed,
        Language::Javascript if seeded_here => ReseedAction::Keep,
        Language::Javascript if on_template_clock => ReseedAction::Reseed,
        Language::Javascript => ReseedAction::End,
    }
}

/// The persistent interpreters of one agent, one per language. Share it
/// behind an `Arc`; cells of one language run one at a time.
pub struct Repls {
    config: Arc<AgentConfig>,
    slots: [Mutex<Slot>; 3],
    /// Whether a reseed has run (interpreters started after it seeded
    /// from a kernel no template shares).
    reseeded: AtomicBool,
    /// Whether the clock was set back for a template (and no reseed has
    /// set it since).
    template_clock: AtomicBool,
}

impl std::fmt::Debug for Repls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repls").finish_non_exhaustive()
    }
}

fn index(language: Language) -> usize {
    match language {
        Language::Python => 0,
        Language::Javascript => 1,
        Language::Raw => 2,
    }
}

impl Repls {
    /// No interpreter yet; they start on the first cell or `warm_repl`.
    pub fn new(config: Arc<AgentConfig>) -> Self {
        Self {
            config,
            slots: Default::default(),
            reseeded: AtomicBool::new(false),
            template_clock: AtomicBool::new(false),
        }
    }

    /// Runs one cell, streaming its output as events of `op`.
    ///
    /// # Errors
    /// [`AgentError::InvalidRequest`] for a zero timeout or a `cwd` (a
    /// cell runs where the previous one left the interpreter);
    /// [`AgentError::EnvRefused`]; [`AgentError::Spawn`] when the
    /// interpreter cannot start; [`AgentError::Io`] for the cell file.
    pub(crate) async fn run_cell(
        &self,
        op: OpId,
        request: ExecRequest,
        events: &mpsc::Sender<Event>,
        mut cancel: watch::Receiver<bool>,
    ) -> Result<Completion, AgentError> {
        let config = &self.config;
        if request.timeout_ms == 0 {
            return Err(AgentError::InvalidRequest(
                "timeout_ms must be above 0".into(),
            ));
        }
        if request.cwd.is_some() {
            return Err(AgentError::InvalidRequest(
                "a cell has no cwd: it runs where the previous cell left the interpreter \
                 (change it in the cell: os.chdir, process.chdir, cd)"
                    .into(),
            ));
        }
        crate::env_policy::check_env(&request.env, config.max_env_bytes)?;
        let mut slot = self.slots[index(request.language)].lock().await;
        let mut state_lost = std::mem::take(&mut slot.lost);
        let started = Instant::now();
        let mut spawn_ms = 0;
        if !slot.interpreter.as_mut().is_some_and(Interpreter::is_alive) {
            if let Some(dead) = slot.interpreter.take() {
                dead.end().await;
                state_lost = true;
            }
            slot.interpreter = Some(Interpreter::start(request.language, config).await?);
            self.mark_started(&mut slot);
            spawn_ms = elapsed_ms(started);
        }
        let Some(interpreter) = slot.interpreter.as_mut() else {
            return Err(AgentError::Internal {
                op,
                message: "no interpreter after its start".into(),
            });
        };
        let cell = CellFile::write(&config.cell_dir, request.language, request.code).await?;
        let sink = Sink::new(op, events.clone(), true);
        let cell_start = Instant::now();
        let end = interpreter
            .run_cell(
                CellInput {
                    id: cell.id,
                    path: &cell.path,
                    env: &request.env,
                    timeout: Duration::from_millis(request.timeout_ms),
                    one_shot: request.mode == ExecMode::OneShot,
                },
                &mut cancel,
                &sink,
                config,
            )
            .await;
        let duration_ms = elapsed_ms(cell_start);
        drop(cell);
        let end = end?;
        if end.interpreter_lost {
            if let Some(lost) = slot.interpreter.take() {
                lost.end().await;
            }
        } else {
            interpreter
                .kill_cell_processes(crate::exec::KILL_REAP_TIMEOUT)
                .await;
        }
        tracing::info!(
            op,
            language = %request.language,
            exit_code = end.exit_code,
            timed_out = end.timed_out,
            state_lost = end.interpreter_lost,
            duration_ms,
            "cell ended"
        );
        Ok(Completion {
            exit_code: end.exit_code,
            timed_out: end.timed_out,
            duration_ms,
            spawn_ms,
            stdout_truncated: end.stdout_truncated,
            stderr_truncated: end.stderr_truncated,
            state_lost: state_lost || end.interpreter_lost,
        })
    }

    /// Where a just started interpreter's random state comes from.
    fn mark_started(&self, slot: &mut Slot) {
        slot.seeded_here = self.reseeded.load(Ordering::SeqCst);
        slot.on_template_clock = !slot.seeded_here && self.template_clock.load(Ordering::SeqCst);
    }

    /// Starts `language`'s interpreter (its common modules imported) unless
    /// it runs already. `for_template`: the VM is about to be saved as a
    /// memory template; the clock is first set a day back (once, and never
    /// after a reseed: a clone is not a template), so that the OpenSSL
    /// DRBGs the interpreter seeds reseed themselves in every clone.
    ///
    /// # Errors
    /// [`AgentError::Spawn`] when it cannot start; [`AgentError::Io`] when
    /// the clock cannot be set back.
    pub(crate) async fn warm(
        &self,
        language: Language,
        for_template: bool,
    ) -> Result<Completion, AgentError> {
        let started = Instant::now();
        let mut slot = self.slots[index(language)].lock().await;
        if for_template && !self.reseeded.load(Ordering::SeqCst) {
            self.lag_clock_once()?;
        }
        let mut spawn_ms = 0;
        if !slot.interpreter.as_mut().is_some_and(Interpreter::is_alive) {
            if let Some(dead) = slot.interpreter.take() {
                dead.end().await;
                slot.lost = true;
            }
            slot.interpreter = Some(Interpreter::start(language, &self.config).await?);
            self.mark_started(&mut slot);
            spawn_ms = elapsed_ms(started);
        }
        Ok(Completion {
            exit_code: 0,
            timed_out: false,
            duration_ms: elapsed_ms(started),
            spawn_ms,
            stdout_truncated: false,
            stderr_truncated: false,
            state_lost: false,
        })
    }

    /// Ends `language`'s interpreter, if one runs (after the cell running
    /// in it, if any); the next cell starts a fresh one and does not
    /// report its state lost: the end was asked for.
    pub(crate) async fn reset(&self, language: Language) -> Completion {
        let started = Instant::now();
        let mut slot = self.slots[index(language)].lock().await;
        if let Some(interpreter) = slot.interpreter.take() {
            interpreter.end().await;
        }
        slot.lost = false;
        Completion {
            exit_code: 0,
            timed_out: false,
            duration_ms: elapsed_ms(started),
            spawn_ms: 0,
            stdout_truncated: false,
            stderr_truncated: false,
            state_lost: false,
        }
    }

    /// Sets the clock back for a template, once.
    fn lag_clock_once(&self) -> Result<(), AgentError> {
        if self.template_clock.load(Ordering::SeqCst) {
            return Ok(());
        }
        let step_ms = crate::reseed::lag_clock_for_template()?;
        self.template_clock.store(true, Ordering::SeqCst);
        tracing::info!(step_ms, "clock set back for a template");
        Ok(())
    }

    /// After the kernel was reseeded and the clock set (a restore from a
    /// memory template): reseeds the running interpreters, or ends a
    /// running Node that may be shared and cannot be reseeded in place (see
    /// the module docs). An interpreter that does not answer is ended too:
    /// better a lost state than a shared random stream.
    ///
    /// With `copy` (one of several copies of one live machine, a fork) a
    /// Node that started in that machine is ended all the same: its state
    /// is every copy's.
    pub(crate) async fn reseed(&self, copy: bool) {
        self.reseeded.store(true, Ordering::SeqCst);
        self.template_clock.store(false, Ordering::SeqCst);
        for language in Language::ALL {
            let Ok(mut slot) =
                tokio::time::timeout(RESEED_LOCK_TIMEOUT, self.slots[index(language)].lock()).await
            else {
                tracing::warn!(%language, "interpreter busy during reseed: not reseeded");
                continue;
            };
            let action = reseed_action(language, slot.seeded_here && !copy, slot.on_template_clock);
            let Some(interpreter) = slot.interpreter.as_mut() else {
                continue;
            };
            let reseeded = match action {
                ReseedAction::Keep => Ok(()),
                ReseedAction::End => Err(
                    "a Node that did not start on a template's clock cannot be reseeded in place"
                        .to_owned(),
                ),
                ReseedAction::Reseed => match fresh_seed(language).await {
                    Ok(seed) => interpreter.reseed(seed).await,
                    Err(e) => Err(e.to_string()),
                },
            };
            match reseeded {
                Ok(()) => {
                    slot.seeded_here = true;
                    slot.on_template_clock = false;
                }
                Err(reason) => {
                    tracing::info!(%language, %reason, "interpreter ended at reseed");
                    if let Some(ended) = slot.interpreter.take() {
                        ended.end().await;
                    }
                    slot.lost = true;
                }
            }
        }
    }

    /// Ends every interpreter.
    pub async fn shutdown(&self) {
        for slot in &self.slots {
            if let Some(interpreter) = slot.lock().await.interpreter.take() {
                interpreter.end().await;
            }
        }
    }
}

/// A seed for `language`'s driver from the kernel (reseeded just before).
async fn fresh_seed(language: Language) -> Result<u32, AgentError> {
    blocking(move || {
        let mut bytes = [0u8; 4];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .with_path("read", "/dev/urandom")?;
        Ok(seed_of(language, bytes))
    })
    .await
}

/// The seed `language`'s driver takes from four random bytes: bash's
/// `$RANDOM` a 31-bit one; Node all 32 bits but never 0 (the driver passes
/// it to V8 as `--random-seed`, a 32-bit int where 0 means "none"); Python
/// seeds itself from the kernel and ignores it.
fn seed_of(language: Language, bytes: [u8; 4]) -> u32 {
    let seed = u32::from_ne_bytes(bytes);
    match language {
        Language::Raw => seed & 0x7fff_ffff,
        Language::Javascript => seed.max(1),
        Language::Python => seed,
    }
}

/// A cell's code in a root-owned file the interpreter can read but the
/// sandbox user cannot change (the directory is the agent's, mode 0755;
/// the file is created exclusively, never through a symlink).
struct CellFile {
    id: u64,
    path: PathBuf,
}

impl CellFile {
    async fn write(dir: &Path, language: Language, code: String) -> Result<Self, AgentError> {
        let dir = dir.to_owned();
        blocking(move || {
            let io =
                |action, path: &Path, source| AgentError::from(IoError::new(action, path, source));
            std::fs::DirBuilder::new()
                .mode(0o755)
                .recursive(true)
                .create(&dir)
                .map_err(|e| io("create", &dir, e))?;
            // A directory made by someone else's umask still lets the
            // interpreter in.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| io("chmod", &dir, e))?;
            let mut id_bytes = [0u8; 8];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut id_bytes))
                .map_err(|e| io("read", Path::new("/dev/urandom"), e))?;
            let id = u64::from_ne_bytes(id_bytes);
            let path = dir.join(format!("{language}-{}", control::format_id(id)));
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| io("create", &path, e))?;
            file.write_all(code.as_bytes())
                .map_err(|e| io("write", &path, e))?;
            Ok(Self { id, path })
        })
        .await
    }
}

impl Drop for CellFile {
    /// Removed however the cell ends, a cancelled operation too (one
    /// unlink on a tmpfs: too small to hand to the blocking pool).
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "cell file not removed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_and_bash_are_reseeded_at_every_reseed() {
        for language in [Language::Python, Language::Raw] {
            for (seeded_here, on_template_clock) in [(false, false), (true, false), (false, true)] {
                assert_eq!(
                    reseed_action(language, seeded_here, on_template_clock),
                    ReseedAction::Reseed,
                    "{language}"
                );
            }
        }
    }

    #[test]
    fn a_node_is_reseeded_in_place_only_when_it_started_on_a_template_clock() {
        let js = Language::Javascript;
        assert_eq!(reseed_action(js, false, true), ReseedAction::Reseed);
        assert_eq!(reseed_action(js, false, false), ReseedAction::End);
        // Its state is this clone's own already (a warm pool's take).
        assert_eq!(reseed_action(js, true, false), ReseedAction::Keep);
    }

    #[test]
    fn node_seeds_are_never_zero_and_bash_seeds_fit_31_bits() {
        assert_eq!(seed_of(Language::Javascript, [0; 4]), 1);
        assert_eq!(seed_of(Language::Javascript, [0xff; 4]), u32::MAX);
        assert_eq!(seed_of(Language::Raw, [0xff; 4]), 0x7fff_ffff);
        assert_eq!(seed_of(Language::Python, [0xff; 4]), u32::MAX);
    }
}
