//! `airlock session`: a session on the command line (`docs/sessions.md`).
//!
//! - stdin is a terminal: an interactive REPL ([`repl`]) with line editing,
//!   history, multi-line entries ([`input`]), Ctrl-C interrupting the
//!   running cell, Ctrl-D ending the session, and `:` commands.
//! - stdin is not a terminal: the input is split into cells at Jupytext
//!   percent markers ([`cells`]) and each runs in turn, its output printed
//!   in order (or, with `--json`, one JSON result per line); the exit
//!   status is the last cell's (124 when it timed out).

/// Splitting a script into cells at `# %%` / `// %%` markers.
pub mod cells;
/// When a REPL entry is complete (multi-line input).
pub mod input;
/// A cell's output on the terminal, its status and a word on it.
mod printer;
/// The interactive REPL.
mod repl;

use crate::error::CliError;
use crate::flags::VmFlags;
use crate::process::{self, exit_status, Detail, Interrupts, EXIT_AIRLOCK_FAILED};
use crate::results::{OutputArgs, ResultWriter};
use crate::run::{read_off_runtime, timeout_from_secs};
use airlock::spec::args::{LifetimeArgs, SandboxArgs};
use airlock::spec::DEFAULT_TENANT;
use airlock::{CellRequest, CellResult, Scheduler, Session, SessionOptions};
use airlock_protocol::Language;
use clap::Args;
use nix::sys::signal::Signal;
use printer::{cell_status, status_note, Printer};
use serde::Serialize;
use std::io::{IsTerminal, Read};
use std::time::Duration;
use tokio::signal::unix::{signal, Signal as UnixSignal, SignalKind};

/// Arguments of `airlock session`.
#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    /// python, javascript or raw (bash). Default: the language of
    /// `--image`, else python.
    #[arg(short, long)]
    pub language: Option<String>,
    /// The sandbox, as `airlock run`'s: `-m/--memory`, `--cpus`,
    /// `--network`, `--allow-domain`, `--expose`, `--packages` (installed
    /// into a read-only layer before the session starts; `:install` inside
    /// a session needs `--network`).
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// `--secret NAME@HOST[,HOST...][:FILE]` (as `airlock run`'s).
    #[command(flatten)]
    pub secrets: crate::secrets::SecretFlags,
    /// `--idle-timeout`, `--max-lifetime`.
    #[command(flatten)]
    pub lifetime: LifetimeArgs,
    /// Timeout of each cell, in seconds.
    #[arg(short, long, default_value_t = 30.0)]
    pub timeout: f64,
    /// Piped input: print one JSON result per cell (one line each) instead
    /// of the output, with its results (binary ones base64; nothing is
    /// saved) and its uncaught exception.
    #[arg(long)]
    pub json: bool,
    /// `--output-dir DIR`: where images and other binary results go.
    #[command(flatten)]
    pub output: OutputArgs,
    /// `-q/--quiet`, `--debug`, `--cold` (as `airlock run`'s).
    #[command(flatten)]
    pub flags: VmFlags,
    /// Resume the session paused (`:pause`) under this id instead of
    /// starting one: its variables, files and running threads are back.
    /// The sandbox flags are ignored (the session keeps its own).
    #[arg(long, value_name = "ID")]
    pub resume: Option<String>,
}

impl SessionArgs {
    /// The session's options and each cell's timeout.
    ///
    /// # Errors
    /// A refused argument ([`CliError::invalid_field`]) for a bad language,
    /// timeout or network; the orchestrator's `PackageSpec` for a package
    /// that is not pinned.
    pub fn to_options(&self) -> Result<(SessionOptions, Duration), CliError> {
        let asked = match &self.language {
            Some(name) => Some(
                name.parse::<Language>()
                    .map_err(|e| CliError::invalid("language", e.to_string()))?,
            ),
            None => None,
        };
        let language = self.sandbox.shape.language(asked, Language::Python);
        let timeout = timeout_from_secs(self.timeout)?;
        airlock::validate_timeout(timeout)?;
        let mut spec = self.sandbox.to_spec(DEFAULT_TENANT, language)?;
        spec.secrets = self.secrets.read(&|name| std::env::var_os(name))?;
        let mut options = SessionOptions::in_sandbox(spec);
        self.lifetime.apply(&mut options);
        options.validate()?;
        Ok((options, timeout))
    }

    /// Whether to run the REPL (stdin is a terminal) rather than piped cells.
    pub fn interactive(&self) -> bool {
        std::io::stdin().is_terminal()
    }
}

/// Runs `airlock session`; returns the exit status.
pub async fn run(args: SessionArgs, interrupts: &mut Interrupts) -> i32 {
    let (options, timeout) = match args.to_options() {
        Ok(parsed) => parsed,
        Err(e) => {
            process::report(
                e,
                Detail::FirstLine {
                    debug: args.flags.debug,
                },
            );
            return EXIT_AIRLOCK_FAILED;
        }
    };
    let interactive = args.interactive();
    // Interactive, SIGINT is not a stop signal of `Interrupts` (Ctrl-C
    // interrupts a cell): until the REPL takes it over, it stops the
    // start-up like the others.
    let mut sigint = if interactive {
        match signal(SignalKind::interrupt()) {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("airlock: cannot handle Ctrl-C: {e}");
                return EXIT_AIRLOCK_FAILED;
            }
        }
    } else {
        None
    };
    // Piped: the whole script first, so that a bad one starts no VM.
    let cells = if interactive {
        Vec::new()
    } else {
        let script = tokio::select! {
            read = read_stdin() => read,
            stop = interrupts.first() => {
                eprintln!("airlock: interrupted ({stop}) while reading the cells");
                return exit_status(stop);
            }
        };
        let script = match script {
            Ok(script) => script,
            Err(e) => {
                process::report(
                    e,
                    Detail::FirstLine {
                        debug: args.flags.debug,
                    },
                );
                return EXIT_AIRLOCK_FAILED;
            }
        };
        let cells = cells::split_cells(options.language(), &script);
        if cells.is_empty() {
            process::report(
                CliError::invalid("code", "no code on stdin (cells are split at `# %%` lines)"),
                Detail::FirstLine {
                    debug: args.flags.debug,
                },
            );
            return EXIT_AIRLOCK_FAILED;
        }
        cells
    };
    let config = args.flags.config();
    let scheduler = tokio::select! {
        started = Scheduler::start(config) => match started {
            Ok(s) => s,
            Err(e) => {
                process::report(e, Detail::FirstLine { debug: args.flags.debug });
                return EXIT_AIRLOCK_FAILED;
            }
        },
        stop = first_stop(interrupts, &mut sigint) => {
            eprintln!("airlock: interrupted ({stop}) while starting");
            return exit_status(stop);
        }
    };
    if !args.flags.quiet && std::io::stderr().is_terminal() {
        match &args.resume {
            Some(id) => eprintln!("airlock: resuming session {id}..."),
            None => eprintln!("airlock: starting a {} session...", options.language()),
        }
    }
    let start = async {
        match &args.resume {
            Some(id) => scheduler.resume(id).await,
            None => scheduler.session(options).await,
        }
    };
    let started = tokio::select! {
        started = start => started,
        stop = first_stop(interrupts, &mut sigint) => {
            scheduler.shutdown().await;
            eprintln!("airlock: interrupted ({stop}) while starting the session: nothing was left behind");
            return exit_status(stop);
        }
    };
    let session = match started {
        Ok(session) => session,
        Err(e) => {
            process::report(
                e,
                Detail::FirstLine {
                    debug: args.flags.debug,
                },
            );
            scheduler.shutdown().await;
            return EXIT_AIRLOCK_FAILED;
        }
    };
    for port in session.exposed() {
        eprintln!(
            "airlock: guest port {} is served at {}",
            port.guest_port, port.host
        );
    }
    let mut results = ResultWriter::new(args.output.output_dir.clone(), args.flags.quiet);
    let code = if let Some(sigint) = sigint.as_mut() {
        repl::run(
            &scheduler,
            &session,
            args.flags,
            timeout,
            &mut results,
            interrupts,
            sigint,
        )
        .await
    } else {
        run_cells(&session, &cells, &args, timeout, &mut results, interrupts).await
    };
    let report = session.close().await;
    for problem in &report.problems {
        tracing::warn!(vm_id = report.vm_id, problem, "teardown problem");
    }
    drop(session);
    scheduler.shutdown().await;
    code
}

/// The first stop signal: of `interrupts`, or SIGINT when the interactive
/// session handles it itself.
async fn first_stop(interrupts: &mut Interrupts, sigint: &mut Option<UnixSignal>) -> Signal {
    match sigint {
        Some(sigint) => tokio::select! {
            stop = interrupts.first() => stop,
            Some(()) = sigint.recv() => Signal::SIGINT,
        },
        None => interrupts.first().await,
    }
}

/// Reads all of stdin off the runtime (a read cannot be cancelled; an
/// interrupted one ends with the process).
async fn read_stdin() -> Result<String, CliError> {
    read_off_runtime(|| {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map(|_| text)
            .map_err(|source| CliError::ReadStdin { source })
    })
    .await
}

/// One line of `airlock session --json`.
#[derive(Debug, Serialize)]
struct CellLine<'a> {
    /// The cell's number, from 1.
    cell: usize,
    /// The script line where its code starts.
    line: usize,
    #[serde(flatten)]
    result: &'a CellResult,
}

/// Runs piped cells in order; the status is the last cell's.
async fn run_cells(
    session: &Session,
    cells: &[cells::Cell],
    args: &SessionArgs,
    timeout: Duration,
    results: &mut ResultWriter,
    interrupts: &mut Interrupts,
) -> i32 {
    let mut status = 0;
    for (index, cell) in cells.iter().enumerate() {
        let mut observer = Printer::new((!args.json).then_some(&mut *results));
        let mut request = CellRequest::new(cell.code.clone());
        request.timeout = timeout;
        let result = tokio::select! {
            result = session.exec(request, &mut observer) => result,
            stop = interrupts.first() => {
                eprintln!("airlock: interrupted ({stop}): the session's VM is being stopped");
                return exit_status(stop);
            }
        };
        let result = match result {
            Ok(result) => result,
            Err(e) => {
                process::report(
                    e,
                    Detail::FirstLine {
                        debug: args.flags.debug,
                    },
                );
                return EXIT_AIRLOCK_FAILED;
            }
        };
        observer.end_line();
        if args.json {
            let line = CellLine {
                cell: index + 1,
                line: cell.line,
                result: &result,
            };
            match serde_json::to_string(&line) {
                Ok(json) => println!("{json}"),
                Err(e) => {
                    eprintln!("airlock: error: cannot encode the result: {e}");
                    return EXIT_AIRLOCK_FAILED;
                }
            }
        } else if !args.flags.quiet {
            if let Some(note) = status_note(&result) {
                eprintln!("airlock: cell {} (line {}): {note}", index + 1, cell.line);
            }
        }
        status = cell_status(&result);
    }
    status
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

    use super::printer::tests::result;
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> SessionArgs {
        let mut argv = vec!["airlock", "session"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Session(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn session_flags_map_to_options() {
        let (options, timeout) = parse(&["-l", "js", "-m", "256", "-t", "2.5", "--cpus", "2"])
            .to_options()
            .unwrap();
        assert_eq!(options.language(), Language::Javascript);
        assert_eq!(
            (options.spec.shape.memory_mib, options.spec.shape.vcpus),
            (256, 2)
        );
        assert_eq!(timeout, Duration::from_millis(2500));
        let (default, _) = parse(&[]).to_options().unwrap();
        assert_eq!(default.language(), Language::Python);
        assert_eq!(
            default.spec.network.mode(),
            airlock_gvproxy::NetworkMode::None
        );
        let (net, _) = parse(&["--network"]).to_options().unwrap();
        assert_eq!(
            net.spec.network.mode(),
            airlock_gvproxy::NetworkMode::Allowlist
        );
    }

    #[test]
    fn session_packages_are_pinned_specs_checked_before_boot() {
        let (options, _) = parse(&["--packages", "six==1.16.0,idna==3.7"])
            .to_options()
            .unwrap();
        assert_eq!(options.spec.packages, ["six==1.16.0,idna==3.7"]);
        for bad in ["six", "six>=1", "https://example.com/six.whl"] {
            assert!(
                matches!(
                    parse(&[&format!("--packages={bad}")])
                        .to_options()
                        .map_err(|e| e
                            .input()
                            .map(|e| matches!(e, airlock::InputError::PackageSpec { .. }))),
                    Err(Some(true))
                ),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn bad_session_flags_name_the_field() {
        for (args, field) in [
            (&["-l", "cobol"][..], "language"),
            (&["-t", "0"][..], "timeout"),
            (&["-m", "1"][..], "memory_mib"),
            (&["--expose", "0"][..], "network"),
        ] {
            match parse(args).to_options() {
                Err(e) => assert_eq!(e.invalid_field(), Some(field), "{args:?}: {e:?}"),
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_json_line_holds_the_cell_number_and_the_result() {
        let r = result(0, false, false);
        let json = serde_json::to_value(CellLine {
            cell: 2,
            line: 5,
            result: &r,
        })
        .unwrap();
        assert_eq!(
            (json["cell"].as_u64(), json["line"].as_u64()),
            (Some(2), Some(5))
        );
        assert_eq!(json["exit_code"], 0);
        assert!(json["stdout"].is_string());
    }
}
