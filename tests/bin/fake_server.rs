//! The server's real router (REST, SSE, MCP) over the fake VMs of
//! `airlock::testing`, on a loopback port: what `tests/openapi_fuzz.rs`
//! points schemathesis at, so a fuzzer reaches every route (runs and
//! sessions included) without booting a VM per request.
//!
//! Usage: `airlock-fake-server KEY STATE_DIR`. It binds `127.0.0.1:0`,
//! prints `listening on http://ADDR` on stdout once it accepts, and serves
//! until its stdin closes (its parent ended, however it ended) or it is
//! killed. `KEY` is tenant `fuzz`'s API key; `STATE_DIR` holds the
//! secrets store and the fakes' run dir.

use airlock_server::keys::{hash_key, KeyEntry, Keyring, KeysFile};
use airlock_server::quota::{QuotaOverrides, Quotas};
use airlock_server::{Airlock, ServerConfig};
use std::io::Write;
use std::path::PathBuf;

/// A fixed test key of the secrets store (it only guards fuzz data).
const SECRETS_KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn main() {
    // The parent holds our stdin: when it goes, so do we (no orphan server
    // after a test killed mid-run).
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let mut args = std::env::args().skip(1);
    let (Some(key), Some(state)) = (args.next(), args.next()) else {
        eprintln!("usage: airlock-fake-server KEY STATE_DIR");
        std::process::exit(2);
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("airlock-fake-server: start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(serve(&key, PathBuf::from(state))) {
        eprintln!("airlock-fake-server: {e}");
        std::process::exit(1);
    }
}

async fn serve(key: &str, state: PathBuf) -> Result<(), String> {
    // Quotas high enough that a fuzzer meets the routes, not 429s (a fake
    // session costs a few KiB; a fuzz run opens a few hundred).
    let quotas = Quotas {
        concurrent_runs: 64,
        live_sessions: 4096,
        requests_per_minute: 1_000_000,
        vcpus: u32::MAX,
        vcpus_per_vm: *airlock::spec::VCPUS_RANGE.end(),
        ..Quotas::default()
    };
    // As many VM slots as the fake scheduler has, none pooled: each live
    // session holds one, and a fuzz run opens a few hundred.
    let config = ServerConfig {
        quotas,
        secrets_file: Some(state.join("secrets.json")),
        max_concurrent_vms: Some(4096),
        pools: Some(Vec::new()),
        ..ServerConfig::default()
    };
    let keys = KeysFile {
        keys: vec![KeyEntry {
            id: hash_key(key)[..12].to_owned(),
            sha256: hash_key(key),
            tenant: "fuzz".to_owned(),
            created_unix: 0,
            quotas: QuotaOverrides::default(),
        }],
    };
    let keyring = Keyring::new(&keys, quotas);
    let secrets = config
        .secret_store(Some(SECRETS_KEY_HEX))
        .map_err(|e| format!("open the secrets store: {e}"))?;
    let fakes = airlock::testing::FakeSetup::with(
        airlock::Config {
            run_dir: state.join("run"),
            secrets_ca_dir: state.join("ca"),
            max_concurrent_vms: 4096,
            ..airlock::testing::test_config()
        },
        &[],
    );
    let airlock = Airlock::new(fakes.scheduler.clone(), config, Some(keyring), secrets);
    let router = airlock_server::http::router(
        airlock.clone(),
        Some(airlock_server::mcp::http_service(&airlock)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("the bound address: {e}"))?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on http://{address}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("print the address: {e}"))?;
    axum::serve(listener, router)
        .await
        .map_err(|e| format!("serve: {e}"))
}
