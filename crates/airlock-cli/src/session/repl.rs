//! The interactive REPL of `airlock session`: reedline (line editing,
//! history in `<cache>/session-history-<language>`, multi-line entries by
//! [`super::input::is_complete`]) on a thread of its own, cells and `:`
//! commands run on the runtime.
//!
//! - Ctrl-C at the prompt clears the entry (the editor reads the key in
//!   raw mode); while a cell runs the terminal sends SIGINT, which
//!   interrupts the cell (the session's canceller) and the session goes
//!   on.
//! - Ctrl-D at the prompt ends the session.
//! - An error (a refused path, a failed download) is printed and the REPL
//!   goes on; a closed session (idle timeout, lifetime, dead VM) ends it.
//! - `:pause` saves the session to disk and ends the REPL;
//!   `airlock session --resume ID` starts a REPL in it again.
//! - SIGTERM and SIGHUP end it like `airlock run`: the VM is destroyed and
//!   the status is 128 + the signal.

use super::input::is_complete;
use super::printer::{cell_status, status_note, Printer};
use crate::error::CliError;
use crate::flags::VmFlags;
use crate::process::{self, exit_status, Detail, Interrupts, EXIT_AIRLOCK_FAILED};
use crate::results::ResultWriter;
use crate::transfer::{check_local_target, stream_atomic};

/// Largest file `:download` takes (its deadline follows from it).
const MAX_DOWNLOAD_BYTES: u64 = 16 << 30;
use airlock::{CellRequest, Scheduler, Session};
use airlock_protocol::{FileKind, Language};
use reedline::{
    FileBackedHistory, Prompt, PromptEditMode, PromptHistorySearch, Reedline, Signal,
    ValidationResult, Validator,
};
use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

/// Entries kept in the history file.
const HISTORY_ENTRIES: usize = 1000;

const HELP: &str = "\
Enter code to run it as a cell; state survives from cell to cell.
Multi-line: an open bracket or string, a Python block (`:`), a bash if/case/do
or a trailing `\\` continues the entry; an empty line ends it.
Ctrl-C interrupts the running cell (the session goes on); Ctrl-D ends the session.
  :upload LOCAL REMOTE    copy a host file into the sandbox home
  :download REMOTE LOCAL  copy a file of the sandbox home to the host
  :ls [DIR]               list a directory of the sandbox home
  :install PKG...         install pinned packages (pip name==version, npm name@version)
  :pause                  save the whole session to disk and end; `airlock session --resume ID`
                          brings it back (variables, files, running threads)
  :help                   this text";

/// A `:` command of the REPL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplCommand {
    /// `:upload LOCAL REMOTE`.
    Upload { local: PathBuf, remote: String },
    /// `:download REMOTE LOCAL`.
    Download { remote: String, local: PathBuf },
    /// `:ls [DIR]`.
    List { dir: String },
    /// `:install PKG...`.
    Install { packages: Vec<String> },
    /// `:pause`: the session saved to disk, the REPL ends.
    Pause,
    /// `:help`.
    Help,
}

/// Parses a `:` command. `None`: the entry is code (not a command; in bash
/// a line starting with `:` that names no command is code, `:` being its
/// no-op builtin). `Some(Err)`: a command used wrongly, with its usage.
pub(crate) fn parse_command(
    language: Language,
    entry: &str,
) -> Option<Result<ReplCommand, String>> {
    let entry = entry.trim();
    let rest = entry.strip_prefix(':')?;
    let mut words = rest.split_whitespace();
    let name = words.next().unwrap_or_default();
    let args: Vec<&str> = words.collect();
    let usage = |u: &str| Err(format!("usage: {u}"));
    let parsed = match (name, args.as_slice()) {
        ("upload", [local, remote]) => Ok(ReplCommand::Upload {
            local: PathBuf::from(local),
            remote: (*remote).to_owned(),
        }),
        ("upload", _) => usage(":upload LOCAL REMOTE"),
        ("download", [remote, local]) => Ok(ReplCommand::Download {
            remote: (*remote).to_owned(),
            local: PathBuf::from(local),
        }),
        ("download", _) => usage(":download REMOTE LOCAL"),
        ("ls", []) => Ok(ReplCommand::List { dir: String::new() }),
        ("ls", [dir]) => Ok(ReplCommand::List {
            dir: (*dir).to_owned(),
        }),
        ("ls", _) => usage(":ls [DIR]"),
        ("install", []) => usage(":install PKG..."),
        ("install", packages) => Ok(ReplCommand::Install {
            packages: packages.iter().map(|p| (*p).to_owned()).collect(),
        }),
        ("pause", []) => Ok(ReplCommand::Pause),
        ("pause", _) => usage(":pause"),
        ("help" | "h" | "?", _) => Ok(ReplCommand::Help),
        _ if language == Language::Raw => return None,
        _ => Err(format!("unknown command :{name} (see :help)")),
    };
    Some(parsed)
}

/// The multi-line rule, for reedline.
struct CellValidator(Language);

impl Validator for CellValidator {
    fn validate(&self, line: &str) -> ValidationResult {
        if is_complete(self.0, line) {
            ValidationResult::Complete
        } else {
            ValidationResult::Incomplete
        }
    }
}

/// `python> ` and `   ... ` for continued lines.
struct CellPrompt(Language);

impl Prompt for CellPrompt {
    fn render_prompt_left(&self) -> Cow<'_, str> {
        Cow::Borrowed(match self.0 {
            Language::Python => "python",
            Language::Javascript => "node",
            Language::Raw => "bash",
        })
    }

    fn render_prompt_right(&self) -> Cow<'_, str> {
        Cow::Borrowed("")
    }

    fn render_prompt_indicator(&self, _: PromptEditMode) -> Cow<'_, str> {
        Cow::Borrowed("> ")
    }

    fn render_prompt_multiline_indicator(&self) -> Cow<'_, str> {
        Cow::Borrowed("   ... ")
    }

    fn render_prompt_history_search_indicator(&self, search: PromptHistorySearch) -> Cow<'_, str> {
        Cow::Owned(format!("(search: {}) ", search.term))
    }
}

/// What the editor thread hands over.
enum Entry {
    Line(String),
    End,
    Failed(String),
}

/// Starts the editor thread: it reads one entry, hands it over, and waits
/// for the go-ahead before the next prompt (so output and prompt never mix).
fn start_editor(
    language: Language,
) -> std::io::Result<(
    tokio::sync::mpsc::Receiver<Entry>,
    std::sync::mpsc::Sender<()>,
)> {
    let (entries_tx, entries) = tokio::sync::mpsc::channel(1);
    let (next_tx, next_rx) = std::sync::mpsc::channel::<()>();
    let history_file = airlock::cache_dir().join(format!("session-history-{language}"));
    std::thread::Builder::new()
        .name("airlock-repl".into())
        .spawn(move || {
            let mut editor = Reedline::create().with_validator(Box::new(CellValidator(language)));
            let history = history_file
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    FileBackedHistory::with_file(HISTORY_ENTRIES, history_file.clone())
                        .map_err(|e| e.to_string())
                });
            match history {
                Ok(history) => editor = editor.with_history(Box::new(history)),
                Err(e) => eprintln!("airlock: no history ({}: {e})", history_file.display()),
            }
            let prompt = CellPrompt(language);
            loop {
                let entry = match editor.read_line(&prompt) {
                    Ok(Signal::Success(line)) => Entry::Line(line),
                    Ok(Signal::CtrlC) => continue,
                    Ok(Signal::CtrlD) => Entry::End,
                    Err(e) => Entry::Failed(e.to_string()),
                };
                let last = !matches!(entry, Entry::Line(_));
                if entries_tx.blocking_send(entry).is_err() || last || next_rx.recv().is_err() {
                    return;
                }
            }
        })?;
    Ok((entries, next_tx))
}

/// Runs the REPL until Ctrl-D, a stop signal or the session's end.
pub(super) async fn run(
    scheduler: &Scheduler,
    session: &Session,
    args: VmFlags,
    timeout: Duration,
    results: &mut ResultWriter,
    interrupts: &mut Interrupts,
    sigint: &mut tokio::signal::unix::Signal,
) -> i32 {
    let language = session.language();
    let (mut entries, next) = match start_editor(language) {
        Ok(editor) => editor,
        Err(e) => {
            eprintln!("airlock: cannot start the line editor: {e}");
            return EXIT_AIRLOCK_FAILED;
        }
    };
    if !args.quiet {
        eprintln!(
            "airlock: {language} session {} ready in {} ms; :help for commands, Ctrl-D to end",
            session.id(),
            session.start_ms()
        );
    }
    let mut status = 0;
    loop {
        let entry = tokio::select! {
            entry = entries.recv() => entry,
            stop = interrupts.first() => {
                eprintln!("\nairlock: {stop}: ending the session");
                return exit_status(stop);
            }
        };
        let line = match entry {
            Some(Entry::Line(line)) => line,
            Some(Entry::Failed(e)) => {
                eprintln!("airlock: error: the line editor failed: {e}");
                return EXIT_AIRLOCK_FAILED;
            }
            Some(Entry::End) | None => return status,
        };
        if !line.trim().is_empty() {
            let outcome = match parse_command(language, &line) {
                Some(Ok(ReplCommand::Pause)) => match pause(scheduler, session).await {
                    Ok(()) => return status,
                    Err(e) => Err(e),
                },
                Some(Ok(command)) => run_command(session, command).await.map(|()| None),
                Some(Err(usage)) => {
                    eprintln!("airlock: {usage}");
                    Ok(None)
                }
                None => {
                    let mut request = CellRequest::new(line);
                    request.timeout = timeout;
                    run_cell(session, request, results, sigint, interrupts).await
                }
            };
            match outcome {
                Ok(Some(code)) => status = code,
                Ok(None) => {}
                Err(Stop::Signal(stop)) => {
                    eprintln!("airlock: {stop}: ending the session");
                    return exit_status(stop);
                }
                Err(Stop::Error(e))
                    if matches!(e.session(), Some(airlock::SessionError::Closed { .. })) =>
                {
                    process::report(e, Detail::FirstLine { debug: args.debug });
                    return EXIT_AIRLOCK_FAILED;
                }
                Err(Stop::Error(e)) => process::report(e, Detail::FirstLine { debug: args.debug }),
            }
        }
        if next.send(()).is_err() {
            return status;
        }
    }
}

/// Why an entry stopped the REPL or failed.
enum Stop {
    Signal(nix::sys::signal::Signal),
    Error(CliError),
}

impl From<CliError> for Stop {
    fn from(e: CliError) -> Self {
        Stop::Error(e)
    }
}

impl From<airlock::SessionError> for Stop {
    fn from(e: airlock::SessionError) -> Self {
        Stop::Error(e.into())
    }
}

/// Runs one cell; Ctrl-C meanwhile interrupts it. Returns its status.
async fn run_cell(
    session: &Session,
    request: CellRequest,
    results: &mut ResultWriter,
    sigint: &mut tokio::signal::unix::Signal,
    interrupts: &mut Interrupts,
) -> Result<Option<i32>, Stop> {
    let canceller = session.canceller();
    let mut printer = Printer::new(Some(results));
    let result = {
        let exec = session.exec(request, &mut printer);
        tokio::pin!(exec);
        loop {
            tokio::select! {
                result = &mut exec => break result,
                Some(()) = sigint.recv() => {
                    eprintln!("^C (interrupting the cell)");
                    canceller.cancel();
                }
                stop = interrupts.first() => return Err(Stop::Signal(stop)),
            }
        }
    };
    let result = result?;
    printer.end_line();
    if let Some(note) = status_note(&result) {
        eprintln!("[{note}]");
    }
    Ok(Some(cell_status(&result)))
}

/// `:pause`: saves the session and tells how to resume it.
async fn pause(scheduler: &Scheduler, session: &Session) -> Result<(), Stop> {
    let meta = session
        .pause(scheduler, &airlock::PauseOptions::default())
        .await?;
    eprintln!(
        "airlock: session {} paused ({:.1} MiB on disk, kept {} days); resume it with: airlock session --resume {}",
        meta.session_id,
        meta.bytes() as f64 / f64::from(1u32 << 20),
        airlock::pause::DEFAULT_PAUSED_TTL.as_secs() / 86400,
        meta.session_id
    );
    Ok(())
}

/// Runs a `:` command, printing what it did.
async fn run_command(session: &Session, command: ReplCommand) -> Result<(), Stop> {
    match command {
        ReplCommand::Help => println!("{HELP}"),
        // Handled by the loop (it ends the REPL).
        ReplCommand::Pause => {}
        ReplCommand::Upload { local, remote } => {
            airlock::validate_guest_path("remote", &remote).map_err(CliError::from)?;
            let unreadable = |e: std::io::Error| {
                CliError::invalid("local", format!("cannot read {}: {e}", local.display()))
            };
            // Streamed from the file: a large one is never held whole.
            let mut file = tokio::fs::File::open(&local).await.map_err(unreadable)?;
            let size = file.metadata().await.map_err(unreadable)?.len();
            let info = session
                .write_file_from(&remote, Some(size), &mut file, size)
                .await?;
            println!(
                "uploaded {} -> {} ({} bytes, sha256 {})",
                local.display(),
                info.path,
                info.size,
                info.sha256
            );
        }
        ReplCommand::Download { remote, local } => {
            check_local_target(&local)?;
            // Streamed into a temporary file renamed into place at the end.
            let info = stream_atomic(&local, |mut file| async move {
                let info = session
                    .read_file_into(&remote, MAX_DOWNLOAD_BYTES, &mut file)
                    .await?;
                Ok((info, file))
            })
            .await?;
            println!(
                "downloaded {} -> {} ({} bytes, sha256 {})",
                info.path,
                local.display(),
                info.size,
                info.sha256
            );
        }
        ReplCommand::List { dir } => {
            for entry in session.list_files(&dir).await? {
                let kind = match entry.kind {
                    FileKind::Dir => "d",
                    FileKind::File => "-",
                    FileKind::Symlink => "l",
                    FileKind::Other => "?",
                };
                println!("{kind} {:o} {:>10} {}", entry.mode, entry.size, entry.name);
            }
        }
        ReplCommand::Install { packages } => {
            let result = session.install_packages(&packages).await?;
            std::io::Write::write_all(&mut std::io::stdout(), &result.stdout).ok();
            std::io::Write::write_all(&mut std::io::stderr(), &result.stderr).ok();
            match status_note(&result) {
                Some(note) => eprintln!("[install: {note}]"),
                None => println!("installed {}", packages.join(" ")),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(language: Language, line: &str) -> Option<Result<ReplCommand, String>> {
        parse_command(language, line)
    }

    #[test]
    fn commands_parse_with_their_arguments() {
        let py = Language::Python;
        assert_eq!(
            command(py, ":upload data.csv in/data.csv"),
            Some(Ok(ReplCommand::Upload {
                local: "data.csv".into(),
                remote: "in/data.csv".into()
            }))
        );
        assert_eq!(
            command(py, "  :download out.png /tmp/out.png "),
            Some(Ok(ReplCommand::Download {
                remote: "out.png".into(),
                local: "/tmp/out.png".into()
            }))
        );
        assert_eq!(
            command(py, ":ls"),
            Some(Ok(ReplCommand::List { dir: String::new() }))
        );
        assert_eq!(
            command(py, ":install numpy==2.2.4 six==1.16.0"),
            Some(Ok(ReplCommand::Install {
                packages: vec!["numpy==2.2.4".into(), "six==1.16.0".into()]
            }))
        );
        assert_eq!(command(py, ":help"), Some(Ok(ReplCommand::Help)));
        assert_eq!(command(py, ":pause"), Some(Ok(ReplCommand::Pause)));
        assert!(command(py, ":pause now").unwrap().is_err());
    }

    #[test]
    fn wrong_uses_give_the_usage_and_code_is_not_a_command() {
        let py = Language::Python;
        assert!(command(py, ":upload only-one")
            .unwrap()
            .unwrap_err()
            .contains("usage"));
        assert!(command(py, ":install").unwrap().is_err());
        assert!(command(py, ":frobnicate")
            .unwrap()
            .unwrap_err()
            .contains("unknown"));
        assert_eq!(command(py, "print(':ls')"), None);
        // In bash, `:` is a builtin: unknown `:` lines are code.
        assert_eq!(command(Language::Raw, ": ${X:=1}"), None);
        assert!(command(Language::Raw, ":ls").is_some());
    }

    #[test]
    fn the_validator_follows_the_multi_line_rule() {
        let v = CellValidator(Language::Python);
        assert!(matches!(
            v.validate("def f():"),
            ValidationResult::Incomplete
        ));
        assert!(matches!(v.validate("x = 1"), ValidationResult::Complete));
    }
}
