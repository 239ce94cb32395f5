//! schemathesis (from PyPI, in the clients' venv `cargo xtask test` makes)
//! against `/v1/openapi.json` of the real router over fake VMs
//! (`airlock-fake-server`, tests/bin/fake_server.rs): every route with a
//! bounded number of generated requests, then the stateful phase, which
//! follows the document's links from `POST /v1/sessions` into the session
//! routes. Any 5xx, or any answer whose status or body the document does
//! not describe, fails the test with schemathesis's report.
//!
//! No QEMU: it runs where the VM tests cannot (it skips only without the
//! venv).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The longest the whole fuzz run may take (it needs about 20 s on two
/// cores).
const FUZZ_DEADLINE: Duration = Duration::from_secs(240);

/// What schemathesis checks on every answer: no 5xx; status, content
/// type, headers and body as documented; a request the document forbids
/// (a bad field, a wrong type, no key) refused; a deleted session or
/// secret gone, a created one there.
const CHECKS: &str = "not_a_server_error,status_code_conformance,response_schema_conformance,\
content_type_conformance,response_headers_conformance,negative_data_rejection,ignored_auth,\
use_after_free,ensure_resource_availability";

/// Generated requests per operation and phase.
const MAX_EXAMPLES: &str = "50";

/// Links the stateful phase must follow at least (it follows 16 of 26 with
/// the seed below; a document without links gives 0).
const MIN_LINKS_COVERED: u32 = 8;

/// The number in schemathesis's `API Links: N covered / ...` line.
fn links_covered(report: &str) -> u32 {
    report
        .lines()
        .find_map(|line| {
            let rest = line.trim().strip_prefix("API Links:")?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// The fake server's key for tenant `fuzz`.
const KEY: &str = "airlock_fuzz_key";

/// The venv's `schemathesis`, or `None` after printing why the test is
/// skipped.
fn schemathesis_or_skip() -> Option<PathBuf> {
    let Some(python) = std::env::var_os("AIRLOCK_TEST_PYTHON") else {
        assert!(
            !airlock_tests::vm_tests_required(),
            "AIRLOCK_TEST_PYTHON is not set: run `cargo xtask test`, which makes the clients' venv"
        );
        eprintln!("SKIP openapi_fuzz: AIRLOCK_TEST_PYTHON is not set (run `cargo xtask test`)");
        return None;
    };
    let bin = Path::new(&python)
        .parent()
        .expect("the venv's python is in a bin dir")
        .join("schemathesis");
    assert!(
        bin.exists(),
        "{} is missing: the clients' venv predates schemathesis (tests/clients/requirements.txt)",
        bin.display()
    );
    Some(bin)
}

/// The fake server, killed on drop.
struct FakeServer {
    child: Child,
    url: String,
}

impl FakeServer {
    fn start(state: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_airlock-fake-server"))
            .arg(KEY)
            .arg(state)
            .env("RUST_LOG", "warn")
            // It exits when its stdin closes: with this process.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start airlock-fake-server");
        let stdout = child.stdout.take().expect("piped stdout");
        // The first line comes as soon as the socket is bound; a server
        // that dies first closes stdout and the read returns.
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the fake server's address");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("the fake server did not start: {line:?}")
            })
            .to_owned();
        Self { child, url }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn schemathesis_finds_no_server_error_and_no_answer_off_the_document() {
    let Some(schemathesis) = schemathesis_or_skip() else {
        return;
    };
    let dir = tempfile::Builder::new()
        .prefix("al-fuzz")
        .tempdir_in("/tmp")
        .expect("temp dir");
    let server = FakeServer::start(dir.path());
    let report = dir.path().join("schemathesis.txt");
    let out = std::fs::File::create(&report).expect("create the report file");
    let started = Instant::now();
    let mut fuzz = Command::new(&schemathesis)
        .arg("run")
        .arg(format!("{}/v1/openapi.json", server.url))
        .args(["--header", &format!("Authorization: Bearer {KEY}")])
        .args(["--checks", CHECKS])
        .args(["--phases", "examples,coverage,fuzzing,stateful"])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", "22"])
        // One worker: hypothesis's lambda-source cache is not thread-safe
        // (an "AST constructor recursion depth mismatch" error with 2).
        .args(["--workers", "1"])
        .args(["--request-timeout", "30"])
        .arg("--no-color")
        .current_dir(dir.path())
        .env_remove("SCHEMATHESIS_HOOKS")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone the report file"))
        .stderr(out)
        .spawn()
        .expect("start schemathesis");
    let status = loop {
        if let Some(status) = fuzz.try_wait().expect("wait for schemathesis") {
            break status;
        }
        if started.elapsed() > FUZZ_DEADLINE {
            let _ = fuzz.kill();
            let _ = fuzz.wait();
            let text = std::fs::read_to_string(&report).unwrap_or_default();
            panic!("schemathesis ran over {FUZZ_DEADLINE:?}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&report).expect("read the report");
    eprintln!(
        "schemathesis took {:.1} s:\n{text}",
        started.elapsed().as_secs_f64()
    );
    assert!(status.success(), "schemathesis failed ({status}):\n{text}");
    // The stateful phase followed the document's links (from a started
    // session into its routes, from a written file to its read): without
    // them it covers none.
    let covered = links_covered(&text);
    assert!(
        covered >= MIN_LINKS_COVERED,
        "the stateful phase followed {covered} links, fewer than {MIN_LINKS_COVERED}:\n{text}"
    );
    drop(server);
}
