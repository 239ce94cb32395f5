//! The `airlock` binary's top level: the orchestrator's subcommands
//! ([`airlock::cli::Command`]: `run`, `doctor`, `snapshot`) and the
//! server's (`serve`, `mcp`) parsed as one command line.
//!
//! It does nothing of its own: it parses and hands over. It sits at the
//! very top of the layers, above `airlock` (the orchestrator) and
//! `airlock-server` (which depends on the orchestrator, so the
//! orchestrator's crate cannot hold a binary that serves).
//!
//! ```
//! let status = airlock_cli::main_from_args(["airlock", "--version"]);
//! assert_eq!(status, 0);
//! ```

use clap::{Parser, Subcommand};

/// Runs untrusted code in throw-away QEMU microVMs.
#[derive(Debug, Parser)]
#[command(name = "airlock", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand of `airlock`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The orchestrator's subcommands.
    #[command(flatten)]
    Core(airlock::cli::Command),
    /// Serve runs, sessions and MCP over HTTP (REST, SSE, bearer keys,
    /// quotas, metrics); `airlock serve keys ...` manages the API keys.
    Serve(airlock_server::cli::ServeArgs),
    /// Serve the MCP tools over stdio, for an agent on this host (the
    /// tenant is the local user).
    Mcp(airlock_server::cli::McpArgs),
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
        Ok(cli) => match cli.command {
            Command::Core(command) => airlock::cli::main(airlock::cli::Cli { command }),
            Command::Serve(args) => airlock_server::cli::serve(args),
            Command::Mcp(args) => airlock_server::cli::mcp(args),
        },
        Err(e) => airlock::cli::usage_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_subcommands_parse_through_the_flattened_enum() {
        let cli = Cli::try_parse_from(["airlock", "run", "-l", "raw", "true"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Core(airlock::cli::Command::Run(_))
        ));
        let cli = Cli::try_parse_from(["airlock", "doctor"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Core(airlock::cli::Command::Doctor)
        ));
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
}
