//! The `airlock` command: everything a person types. Each subcommand is a
//! module that parses its arguments (clap), calls the library and prints
//! what it got:
//!
//! - [`run`]: `airlock run`, one piece of code in one fresh VM;
//! - [`session`]: `airlock session`, the REPL and piped `# %%` cells;
//! - [`snapshot`]: `airlock snapshot`, memory templates and package layers;
//! - [`doctor`]: `airlock doctor`, the host checks;
//! - [`serve`]: `airlock serve` and `serve keys`, the HTTP server;
//! - [`serve_secrets`]: `airlock serve secrets`, the server's secrets store;
//! - [`mcp`]: `airlock mcp`, the MCP tools over stdio;
//! - [`transfer`]: `--upload` / `--download` and the REPL's file commands;
//! - [`results`]: the code's results on a terminal (values printed,
//!   images saved into `--output-dir`).
//!
//! [`process`] is what they share as one process: the runtime, logging,
//! stop signals, exit statuses (124 timeout, 125 Airlock failure, 128 + n
//! after signal n) and how a failure is printed, with [`CliError`].
//!
//! It sits at the top of the layers, above the orchestrator (`airlock`)
//! and the server (`airlock-server`), which are libraries: neither parses
//! a command line, installs a signal handler or a log subscriber.
//!
//! ```
//! let status = airlock_cli::main_from_args(["airlock", "--version"]);
//! assert_eq!(status, 0);
//! ```

pub mod doctor;
mod error;
pub mod flags;
pub mod mcp;
pub mod process;
pub mod results;
pub mod run;
pub mod secrets;
pub mod serve;
pub mod serve_secrets;
pub mod session;
pub mod snapshot;
pub mod transfer;

pub use error::CliError;

use clap::{Parser, Subcommand};
use nix::sys::signal::Signal;

/// Runs untrusted code in throw-away QEMU microVMs.
// The help's first line is spelled out: it was this crate's description
// before the move, and the help is part of the command's output.
#[derive(Debug, Parser)]
#[command(
    name = "airlock",
    version,
    about = "The `airlock` binary: the orchestrator's commands (run, doctor, snapshot) and the server's (serve, mcp) under one name."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand of `airlock`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run code in a fresh VM and print its output.
    #[command(allow_negative_numbers = true)]
    Run(run::RunArgs),
    /// Show what the host offers (accelerator, QEMU, images, cgroups,
    /// gvproxy) and what to fix.
    Doctor,
    /// Build, list or prune the memory templates `airlock run` restores.
    Snapshot(snapshot::SnapshotArgs),
    /// Keep a VM and its interpreter across cells: a REPL on a terminal,
    /// piped input run as `# %%` cells otherwise.
    Session(session::SessionArgs),
    /// Serve runs, sessions and MCP over HTTP (REST, SSE, bearer keys,
    /// quotas, metrics); `airlock serve keys ...` manages the API keys.
    Serve(serve::ServeArgs),
    /// Serve the MCP tools over stdio, for an agent on this host (the
    /// tenant is the local user).
    Mcp(mcp::McpArgs),
}

/// Parses the arguments and runs the command; returns the process exit
/// status. Help and version exit 0; bad usage exits 125 like any other
/// failure of Airlock itself (so that 1..=123 belong to the user's code).
pub fn main_from_args<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => main(cli),
        Err(e) => process::usage_error(&e),
    }
}

/// Runs a parsed command line; returns the process exit status.
pub fn main(cli: Cli) -> i32 {
    use airlock_server::config::LogFormat;
    use process::{block_on, default_log_filter, init_logging, STOP_SIGNALS};
    match cli.command {
        Command::Run(args) => {
            init_logging(LogFormat::Text, default_log_filter(args.flags.debug));
            block_on(&STOP_SIGNALS, |mut interrupts| async move {
                run::run(args, &mut interrupts).await
            })
        }
        Command::Session(args) => {
            init_logging(LogFormat::Text, default_log_filter(args.flags.debug));
            // The interactive session takes Ctrl-C for "interrupt the cell".
            let signals: &[Signal] = if args.interactive() {
                &[Signal::SIGTERM, Signal::SIGHUP]
            } else {
                &STOP_SIGNALS
            };
            block_on(signals, |mut interrupts| async move {
                session::run(args, &mut interrupts).await
            })
        }
        Command::Doctor => {
            init_logging(LogFormat::Text, default_log_filter(false));
            block_on(&STOP_SIGNALS, |mut interrupts| async move {
                doctor::run(&mut interrupts).await
            })
        }
        Command::Snapshot(args) => {
            init_logging(LogFormat::Text, default_log_filter(false));
            block_on(&STOP_SIGNALS, |mut interrupts| async move {
                snapshot::run(args, &mut interrupts).await
            })
        }
        Command::Serve(args) => serve::main(args),
        Command::Mcp(args) => mcp::main(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_parses() {
        let cli = Cli::try_parse_from(["airlock", "run", "-l", "raw", "true"]).unwrap();
        assert!(matches!(cli.command, Command::Run(_)));
        let cli = Cli::try_parse_from(["airlock", "doctor"]).unwrap();
        assert!(matches!(cli.command, Command::Doctor));
        let cli = Cli::try_parse_from(["airlock", "snapshot", "list"]).unwrap();
        assert!(matches!(cli.command, Command::Snapshot(_)));
        let cli = Cli::try_parse_from(["airlock", "session", "-l", "js"]).unwrap();
        assert!(matches!(cli.command, Command::Session(_)));
    }

    #[test]
    fn serve_and_mcp_are_subcommands() {
        let cli = Cli::try_parse_from(["airlock", "serve", "--listen", "127.0.0.1:0"]).unwrap();
        assert!(matches!(cli.command, Command::Serve(_)));
        let cli = Cli::try_parse_from(["airlock", "mcp"]).unwrap();
        assert!(matches!(cli.command, Command::Mcp(_)));
    }

    #[test]
    fn bad_usage_exits_125() {
        assert_eq!(main_from_args(["airlock", "no-such-command"]), 125);
    }

    #[test]
    fn help_and_version_exit_0() {
        assert_eq!(main_from_args(["airlock", "--version"]), 0);
        assert_eq!(main_from_args(["airlock", "run", "--help"]), 0);
    }
}
