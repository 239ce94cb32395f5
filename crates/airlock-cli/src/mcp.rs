//! `airlock mcp`: the server's MCP tools over stdio, for an agent on this
//! host (the tenant is the local user), until stdin ends or a stop
//! signal comes; every VM is destroyed before the exit.

use crate::process::{self, exit_status, STOP_SIGNALS};
use airlock_server::config::LogFormat;
use airlock_server::mcp::serve_stdio;
use airlock_server::{Airlock, ServerConfig};
use clap::Args;

/// Arguments of `airlock mcp`.
#[derive(Debug, Clone, Args)]
pub struct McpArgs {
    /// Boot every VM cold instead of restoring memory templates.
    #[arg(long)]
    pub cold: bool,
}

/// Runs `airlock mcp` (stdio); returns the process exit status.
pub fn main(args: McpArgs) -> i32 {
    process::init_logging(LogFormat::Text, "warn");
    // One local user: the CLI's behaviour (any exposed port, no upload
    // cap), not a shared server's policy.
    let config = ServerConfig::local_user(!args.cold);
    process::block_on(&STOP_SIGNALS, |mut interrupts| async move {
        let airlock = tokio::select! {
            started = Airlock::start(config, None) => match started {
                Ok(a) => a,
                Err(e) => return process::failed(e),
            },
            stop = interrupts.first() => {
                // The dropped start-up takes its manager's processes along.
                return exit_status(stop);
            }
        };
        let served = tokio::select! {
            served = serve_stdio(airlock.clone()) => served,
            _ = interrupts.first() => Ok(()),
        };
        airlock.shutdown().await;
        match served {
            Ok(()) => 0,
            Err(e) => process::failed(e),
        }
    })
}
