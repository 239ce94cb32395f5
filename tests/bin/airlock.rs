//! The `airlock` command, built inside the test package so that the CLI
//! tests can run it (`CARGO_BIN_EXE_airlock-under-test`): the same one
//! line as the real binary's `main`.

fn main() {
    std::process::exit(airlock_cli::main_from_args(std::env::args_os()));
}
