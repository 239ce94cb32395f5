//! The `airlock` command: run code in a throw-away VM, check the host,
//! serve runs and sessions over HTTP and MCP.
//!
//! Exit status of `airlock run`: the code's own exit status; 124 when the
//! code timed out; 125 when Airlock itself failed (with a one-line reason
//! and a hint on stderr), bad usage included.

fn main() {
    std::process::exit(airlock_cli::main_from_args(std::env::args_os()));
}
