//! A cell's output as it comes, and what is said about the cell after:
//! its exit status (124 when it timed out) and a word when it did not
//! simply succeed. Shared by piped cells and the REPL.

use crate::process::EXIT_TIMEOUT;
use crate::results::ResultWriter;
use crate::run::{write_output, write_result_text};
use airlock::{CellResult, OutputStream, RunObserver};

/// The exit status of a cell: its own, 124 when it timed out.
pub(super) fn cell_status(result: &CellResult) -> i32 {
    if result.timed_out {
        EXIT_TIMEOUT
    } else {
        result.exit_code
    }
}

/// A word on a cell that did not simply succeed.
pub(super) fn status_note(result: &CellResult) -> Option<String> {
    let mut notes = Vec::new();
    if result.timed_out {
        notes.push("timed out".to_owned());
    } else if result.exit_code != 0 {
        notes.push(format!("exit {}", result.exit_code));
    }
    if result.state_lost {
        notes.push("the interpreter was restarted: earlier state is lost".to_owned());
    }
    (!notes.is_empty()).then(|| notes.join("; "))
}

/// Prints a cell's output and results as they come (`results`: `None`
/// prints nothing, for `--json`), and remembers whether stdout ended its
/// last line (so that what follows starts on a line of its own).
pub(super) struct Printer<'a> {
    results: Option<&'a mut ResultWriter>,
    open_line: bool,
}

impl<'a> Printer<'a> {
    pub(super) fn new(results: Option<&'a mut ResultWriter>) -> Self {
        Self {
            results,
            open_line: false,
        }
    }

    /// Ends an unfinished last line of output.
    pub(super) fn end_line(&mut self) {
        if self.open_line {
            println!();
            self.open_line = false;
        }
    }
}

impl RunObserver for Printer<'_> {
    fn output(&mut self, stream: OutputStream, bytes: &[u8]) {
        if self.results.is_none() || bytes.is_empty() {
            return;
        }
        if stream == OutputStream::Stdout {
            self.open_line = !bytes.ends_with(b"\n");
        }
        write_output(stream, bytes);
    }

    fn result(&mut self, result: &airlock_protocol::ExecResult) {
        if let Some(text) = self.results.as_mut().and_then(|w| w.show(result)) {
            write_result_text(&mut self.open_line, &text);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A cell's result with no output (for the session's tests too).
    pub(in crate::session) fn result(
        exit_code: i32,
        timed_out: bool,
        state_lost: bool,
    ) -> CellResult {
        CellResult {
            stdout: Vec::new(),
            stderr: Vec::new(),
            exit_code,
            timed_out,
            state_lost,
            stdout_truncated: false,
            stderr_truncated: false,
            duration_ms: 1,
            results: Vec::new(),
            error: None,
        }
    }

    #[test]
    fn a_timed_out_cell_exits_124_and_others_their_own_status() {
        assert_eq!(cell_status(&result(0, false, false)), 0);
        assert_eq!(cell_status(&result(1, false, false)), 1);
        assert_eq!(cell_status(&result(137, true, true)), 124);
    }

    #[test]
    fn notes_say_timeouts_failures_and_lost_state() {
        assert_eq!(status_note(&result(0, false, false)), None);
        assert_eq!(status_note(&result(1, false, false)).unwrap(), "exit 1");
        let note = status_note(&result(137, true, true)).unwrap();
        assert!(
            note.starts_with("timed out;") && note.contains("lost"),
            "{note}"
        );
    }
}
