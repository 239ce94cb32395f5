//! `cargo run --release -p airlock-egress --example measure_interception -- [REQUESTS]`:
//! times whole HTTPS requests through the egress proxy on loopback, to a
//! host with a bound secret and to one without, and prints two lines,
//! `passthrough MS...` and `intercepted MS...` (what `cargo xtask bench`
//! reads).

use std::process::ExitCode;

fn main() -> ExitCode {
    let requests = match std::env::args().nth(1).map(|a| a.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("usage: measure_interception [REQUESTS > 0]");
            return ExitCode::from(2);
        }
    };
    let measured = tempfile::tempdir()
        .map_err(|e| format!("a temporary directory for the CA: {e}"))
        .and_then(|dir| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| format!("a tokio runtime: {e}"))?;
            runtime
                .block_on(airlock_egress::measure_interception(dir.path(), requests))
                .map_err(|e| e.to_string())
        });
    match measured {
        Ok(cost) => {
            let line = |ms: &[f64]| {
                ms.iter()
                    .map(|m| format!("{m:.3}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            println!("passthrough {}", line(&cost.passthrough_ms));
            println!("intercepted {}", line(&cost.intercepted_ms));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("measure_interception: {e}");
            ExitCode::FAILURE
        }
    }
}
