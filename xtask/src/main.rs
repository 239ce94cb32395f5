//! `cargo xtask`: the developer tasks of the Airlock workspace.
//!
//! Every task first makes sure the host has what it needs (Debian packages,
//! guest images), so that a fresh clone on a fresh machine works with one
//! command. Tasks print what they do on stderr.

mod bench;
mod bench_server;
mod clients;
mod cluster;
mod demo;
mod host;
mod images;
mod lint;
mod soak;
mod soak_server;
mod test;

use clap::{Parser, Subcommand};

/// Command line of `cargo xtask`.
#[derive(Parser)]
#[command(name = "cargo xtask", about = "Airlock developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

/// The tasks.
#[derive(Subcommand)]
enum Task {
    /// Build the guest images (kernel, initramfs, root disks) into the cache.
    Images(images::ImagesArgs),
    /// Install what the host lacks, then run fmt check, clippy and every test.
    Test(test::TestArgs),
    /// fmt check and clippy only.
    Lint,
    /// Install what the host lacks, build the images, run code in VMs.
    Demo,
    /// Measure cold runs against the floor and the overlay pool; write
    /// docs/benchmarks.md.
    Bench(bench::BenchArgs),
    /// The Kubernetes manifests validated and checked, then three
    /// `airlock serve` nodes in network namespaces behind nginx with the
    /// shipped routing (root; `test` runs it too): docs/deploy.md.
    ClusterTest,
    /// Fault soak (not part of `test`): runs mixing languages, timeouts,
    /// kills and signals, then a report of leftovers and of a long-lived
    /// orchestrator's descriptors and memory; `--write` updates
    /// docs/reliability.md. `--server`: `airlock serve` under clients
    /// without a key, and a stream to a client that does not read.
    Soak(soak::SoakArgs),
    /// (Internal) the pause rows of `bench`, measured by a release build
    /// of xtask, their section written to `out`.
    #[command(hide = true)]
    BenchPauseSection {
        /// Rounds.
        #[arg(long)]
        runs: usize,
        /// Where the section goes.
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// With `AIRLOCK_LOG` set (a `tracing` filter, e.g. `airlock=debug`),
/// the library's log goes to stderr with timestamps: the step timings
/// behind a bench row (a VM's boot, a fork's save).
fn log_when_asked() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    log_when_asked();
    match cli.task {
        Task::Images(args) => images::run(&args).map(|_| ()),
        Task::Test(args) => test::run(&args),
        Task::Lint => lint::run(),
        Task::Demo => demo::run(),
        Task::Bench(args) => bench::run(&args),
        Task::Soak(args) => soak::run(&args),
        Task::ClusterTest => cluster::run(),
        Task::BenchPauseSection { runs, out } => bench::pause_section_into(runs, &out),
    }
}
