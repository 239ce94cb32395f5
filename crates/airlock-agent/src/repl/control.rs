//! The control channel between the agent and a cell driver: the pure
//! codec.
//!
//! Commands go to the driver on its fd 3, reports come back on its fd 4;
//! the driver's stdout and stderr carry only the cell's output, so nothing
//! a cell prints can end a cell or set its exit code. Both directions are
//! lines of ASCII words:
//!
//! ```text
//! agent -> driver                      driver -> agent
//! cell <id> <path> <n>                 ready
//! NAME=VALUE      (n lines)            done <id> <exit code>
//! reseed <seed>                        reseeded
//!                                      error <message>
//! ack                                  result <id> <n>      + n bytes
//! ack                                  cell_error <id> <n>  + n bytes
//! ```
//!
//! `result` and `cell_error` announce a payload of `<n>` bytes that follows
//! the line at once: the JSON of an [`airlock_protocol::ExecResult`] (a
//! value the cell showed) or of an [`airlock_protocol::CellError`] (its
//! uncaught exception). The driver flushes stdout and stderr before it
//! writes one, so the agent, reading what the output pipes hold first,
//! forwards it in order with the cell's output, then answers `ack`; the
//! Python driver waits for it, so that what the cell prints next cannot be
//! read before the result (Node's driver cannot block on its command
//! socket and goes on). A payload over
//! [`MAX_PAYLOAD_BYTES`] is a violation (the driver cuts results to
//! [`airlock_protocol::result::MAX_RESULT_BYTES`] itself).
//!
//! `<id>` is 16 random hex digits per cell: a `done` for another id is a
//! violation, as is any line that is not one of the above (a cell that
//! writes to fd 4 itself). A violation ends the interpreter: its cell's
//! state is lost, the host is never misled. Environment values never hold
//! a newline (the shared env policy refuses control characters but TAB),
//! and `<path>` is the agent's own cell file, so every command is exactly
//! the lines it announces.

use std::collections::BTreeMap;
use std::path::Path;

/// The longest report line accepted (a `done` is under 40 bytes).
pub const MAX_REPORT_BYTES: usize = 256;

/// The largest payload a `result` or `cell_error` may announce: a result
/// at its cap ([`airlock_protocol::result::MAX_RESULT_BYTES`]).
pub const MAX_PAYLOAD_BYTES: usize = airlock_protocol::result::MAX_RESULT_BYTES;

/// The agent's answer to each payload, once it has forwarded it.
pub const ACK: &[u8] = b"ack\n";

/// The agent's interrupt of a running JavaScript cell, as a command: the
/// driver ends a cell that awaits without a signal.
pub const INTERRUPT: &[u8] = b"interrupt\n";

/// What a payload that follows a report line holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// An [`airlock_protocol::ExecResult`].
    Result,
    /// An [`airlock_protocol::CellError`].
    CellError,
}

/// What a driver reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Started, common modules imported: ready for cells.
    Ready,
    /// The cell `id` ended with `exit_code`, its output flushed.
    Done {
        /// The cell's id as sent.
        id: u64,
        /// Its exit code (0-255).
        exit_code: i32,
    },
    /// The driver reseeded its random state.
    Reseeded,
    /// The driver did not understand a command.
    Error(String),
    /// A payload of `bytes` bytes follows the line.
    Payload {
        /// What it holds.
        kind: PayloadKind,
        /// The cell it belongs to.
        id: u64,
        /// Its length.
        bytes: usize,
    },
}

/// Parses one report line (without its newline).
///
/// # Errors
/// A description of what is wrong with the line.
pub fn parse_report(line: &[u8]) -> Result<Report, String> {
    if line.len() > MAX_REPORT_BYTES {
        return Err(format!("a report of {} bytes", line.len()));
    }
    let text = std::str::from_utf8(line).map_err(|_| "a report that is not UTF-8".to_owned())?;
    let words: Vec<&str> = text.split(' ').collect();
    match words.as_slice() {
        ["ready"] => Ok(Report::Ready),
        ["reseeded"] => Ok(Report::Reseeded),
        ["done", id, code] => {
            let id = parse_id(id).ok_or_else(|| format!("a done with a bad id: {text:?}"))?;
            let exit_code = code
                .parse::<u8>()
                .map_err(|_| format!("a done with a bad exit code: {text:?}"))?;
            Ok(Report::Done {
                id,
                exit_code: i32::from(exit_code),
            })
        }
        [verb @ ("result" | "cell_error"), id, bytes] => {
            let id = parse_id(id).ok_or_else(|| format!("a {verb} with a bad id: {text:?}"))?;
            let bytes = bytes
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= MAX_PAYLOAD_BYTES && bytes.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("a {verb} with a bad size: {text:?}"))?;
            let kind = if *verb == "result" {
                PayloadKind::Result
            } else {
                PayloadKind::CellError
            };
            Ok(Report::Payload { kind, id, bytes })
        }
        ["error", ..] => Ok(Report::Error(
            text.strip_prefix("error").unwrap_or("").trim().to_owned(),
        )),
        _ => Err(format!("an unknown report: {:?}", shorten(text))),
    }
}

/// A cell id on the wire: exactly 16 lower-case hex digits.
pub fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

fn parse_id(text: &str) -> Option<u64> {
    let hex = text.len() == 16 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    hex.then(|| u64::from_str_radix(text, 16).ok()).flatten()
}

fn shorten(text: &str) -> String {
    text.chars().take(64).collect()
}

/// The command running the cell in `path` as cell `id` with `env` set for
/// it alone.
///
/// # Errors
/// When the path or a variable would break the line framing (a space or
/// newline in the path, a newline in a variable, `=` in a name): the
/// agent's own paths and checked variables never do.
pub fn encode_cell(
    id: u64,
    path: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Vec<u8>, String> {
    let path = path
        .to_str()
        .filter(|p| !p.is_empty() && !p.contains([' ', '\n', '\r']))
        .ok_or_else(|| format!("cell path {} cannot be sent", path.display()))?;
    let mut out = format!("cell {} {path} {}\n", format_id(id), env.len());
    for (name, value) in env {
        if name.is_empty() || name.contains(['=', '\n', '\r']) || value.contains(['\n', '\r']) {
            return Err(format!("variable {name:?} cannot be sent to a cell"));
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
        out.push('\n');
    }
    Ok(out.into_bytes())
}

/// The command reseeding a driver's random state (`seed` for bash's
/// `$RANDOM`; Python seeds itself from the kernel).
pub fn encode_reseed(seed: u32) -> Vec<u8> {
    format!("reseed {seed}\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_reports_a_driver_sends_are_read() {
        assert_eq!(parse_report(b"ready"), Ok(Report::Ready));
        assert_eq!(parse_report(b"reseeded"), Ok(Report::Reseeded));
        assert_eq!(
            parse_report(b"done 00000000000000ff 3"),
            Ok(Report::Done {
                id: 255,
                exit_code: 3
            })
        );
        assert_eq!(
            parse_report(b"error unknown command"),
            Ok(Report::Error("unknown command".into()))
        );
    }

    #[test]
    fn anything_else_is_a_violation() {
        for bad in [
            &b""[..],
            b"done",
            b"done 00000000000000ff",
            b"done ff 3",
            b"done 00000000000000FF 3",
            b"done 00000000000000ff 256",
            b"done 00000000000000ff -1",
            b"done 00000000000000ff 3 extra",
            b"ready ",
            b"READY",
            b"\xff\xfe",
            b"result 00000000000000ff",
            b"result 00000000000000ff -1",
            b"result 00000000000000ff +5",
            b"result 00000000000000ff 99999999999",
            b"cell_error ff 3",
            b"result 00000000000000ff 3 x",
        ] {
            assert!(parse_report(bad).is_err(), "{bad:?}");
        }
        assert!(parse_report(&[b'a'; MAX_REPORT_BYTES + 1]).is_err());
    }

    #[test]
    fn a_cell_command_announces_its_variable_lines() {
        let env = BTreeMap::from([("A".to_owned(), "x\ty=z".to_owned())]);
        let line = encode_cell(1, Path::new("/run/c/1"), &env).unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "cell 0000000000000001 /run/c/1 1\nA=x\ty=z\n"
        );
    }

    #[test]
    fn what_would_break_the_framing_is_refused() {
        let none = BTreeMap::new();
        assert!(encode_cell(1, Path::new("/a b"), &none).is_err());
        assert!(encode_cell(1, Path::new("/a\nb"), &none).is_err());
        for (name, value) in [("A", "x\ny"), ("A=B", "x"), ("", "x"), ("A", "x\r")] {
            let env = BTreeMap::from([(name.to_owned(), value.to_owned())]);
            assert!(encode_cell(1, Path::new("/c"), &env).is_err(), "{name:?}");
        }
        assert_eq!(encode_reseed(7), b"reseed 7\n");
    }

    #[test]
    fn payload_headers_announce_their_kind_cell_and_size() {
        assert_eq!(
            parse_report(b"result 00000000000000ff 12"),
            Ok(Report::Payload {
                kind: PayloadKind::Result,
                id: 255,
                bytes: 12
            })
        );
        assert_eq!(
            parse_report(b"cell_error 0000000000000001 0"),
            Ok(Report::Payload {
                kind: PayloadKind::CellError,
                id: 1,
                bytes: 0
            })
        );
        let at_cap = format!("result 0000000000000001 {MAX_PAYLOAD_BYTES}");
        assert!(parse_report(at_cap.as_bytes()).is_ok());
        let over = format!("result 0000000000000001 {}", MAX_PAYLOAD_BYTES + 1);
        assert!(parse_report(over.as_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn done_round_trips(id in any::<u64>(), code in 0u8..=255) {
            let line = format!("done {} {code}", format_id(id));
            prop_assert_eq!(
                parse_report(line.as_bytes()),
                Ok(Report::Done { id, exit_code: i32::from(code) })
            );
        }

        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_report(&bytes);
        }

        #[test]
        fn a_cell_command_is_exactly_its_announced_lines(
            id in any::<u64>(),
            env in proptest::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,12}", "[^\\n\\r]{0,20}", 0..5),
        ) {
            let text = String::from_utf8(encode_cell(id, Path::new("/run/cells/x"), &env).unwrap()).unwrap();
            let lines: Vec<&str> = text.strip_suffix('\n').unwrap().split('\n').collect();
            prop_assert_eq!(lines.len(), 1 + env.len());
            let head: Vec<&str> = lines[0].split(' ').collect();
            let (id_text, count) = (format_id(id), env.len().to_string());
            prop_assert_eq!(head, vec!["cell", id_text.as_str(), "/run/cells/x", count.as_str()]);
            for (line, (name, value)) in lines[1..].iter().zip(&env) {
                prop_assert_eq!(line.split_once('='), Some((name.as_str(), value.as_str())));
            }
        }
    }
}
