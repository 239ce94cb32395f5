//! Sessions end to end, on real VMs: state across cells in each language,
//! exceptions, timeouts and `state_lost`, a cell that prints protocol-like
//! text, interrupts, the busy rule, the idle timeout, files (a 64 MiB round
//! trip, refused paths, a symlink out of the home), `airlock run
//! --upload/--download` and piped `airlock session`.
//!
//! Each library test shares one session between its assertions; the VMs
//! boot cold (templates are tested in `templates_e2e.rs`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock::{
    CellRequest, CellResult, CloseReason, Config, ExecError, InputError, OutputStream, RunObserver,
    Scheduler, Session, SessionError, SessionOptions,
};
use airlock_protocol::{ErrorKind, FileKind, Language, ProtocolError};
use airlock_tests::{images_or_skip, text, wait_until_gone};
use std::process::Output;
use std::time::{Duration, Instant};

/// Collects a cell's streamed output.
#[derive(Default)]
struct Streamed(Vec<u8>);

impl RunObserver for Streamed {
    fn output(&mut self, stream: OutputStream, bytes: &[u8]) {
        if stream == OutputStream::Stdout {
            self.0.extend_from_slice(bytes);
        }
    }
}

async fn scheduler() -> Scheduler {
    Scheduler::start(Config {
        restore_templates: false,
        overlay_pool_target: 0,
        ..Config::default()
    })
    .await
    .unwrap()
}

async fn cell_with(session: &Session, code: &str, timeout: Duration) -> CellResult {
    let mut request = CellRequest::new(code);
    request.timeout = timeout;
    let mut streamed = Streamed::default();
    let result = session.exec(request, &mut streamed).await.unwrap();
    assert_eq!(streamed.0, result.stdout, "streamed = collected");
    result
}

async fn cell(session: &Session, code: &str) -> CellResult {
    cell_with(session, code, Duration::from_secs(60)).await
}

/// Asserts a cell succeeded and returns its stdout.
async fn ok(session: &Session, code: &str) -> String {
    let r = cell(session, code).await;
    assert_eq!(
        (r.exit_code, r.timed_out, r.state_lost),
        (0, false, false),
        "{code}: stderr {}",
        text(&r.stderr)
    );
    text(&r.stdout)
}

/// The protocol crate's sha256, the one the client checks with.
use airlock_protocol::client::sha256_hex;

fn guest_kind(error: &SessionError) -> Option<ErrorKind> {
    match error {
        SessionError::Exec(ExecError::File {
            source: ProtocolError::Guest { kind, .. },
            ..
        }) => Some(*kind),
        _ => None,
    }
}

/// Python: state across cells, an exception, a timeout the interpreter
/// survives (state kept) and one it does not (state lost, exactly then),
/// a cell printing protocol-like lines, an interrupt, the busy rule, files
/// (64 MiB both ways, refused paths, a symlink to /etc/passwd), close.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_session_keeps_state_through_errors_timeouts_and_files() {
    if images_or_skip("session_python").is_none() {
        return;
    }
    let scheduler = scheduler().await;
    let session = scheduler
        .session(SessionOptions::new(Language::Python))
        .await
        .unwrap();
    let vm_needle = session.id().trim_start_matches("s-").to_owned();

    // State survives three cells.
    assert_eq!(ok(&session, "x = 20").await, "");
    assert_eq!(ok(&session, "x += 1\nprint(x)").await, "21\n");
    assert_eq!(
        ok(
            &session,
            "def double(v):\n    return v * 2\nprint(double(x))"
        )
        .await,
        "42\n"
    );

    // An exception is the cell's exit 1 and a traceback; the session goes on.
    let raised = cell(&session, "1/0").await;
    assert_eq!((raised.exit_code, raised.state_lost), (1, false));
    assert!(
        text(&raised.stderr).contains("ZeroDivisionError"),
        "{}",
        text(&raised.stderr)
    );
    assert_eq!(ok(&session, "print(x)").await, "21\n");

    // Spoofing: whatever a cell prints is its output, never a boundary.
    let spoof = concat!(
        r#"print('{"op":1,"type":"complete","exit_code":0,"timed_out":false,"duration_ms":1,"spawn_ms":0}')"#,
        "\n",
        r#"print('\x00\x1e__CELL_END__ 0\n\x1b]133;D;0\x07')"#,
        "\n",
        "import sys; sys.stdout.flush()\n",
        "raise ValueError('real end')\n",
    );
    let spoofed = cell(&session, spoof).await;
    assert_eq!(spoofed.exit_code, 1, "the real end, not the printed one");
    assert!(text(&spoofed.stdout).contains(r#""type":"complete""#));
    assert!(text(&spoofed.stdout).contains("__CELL_END__"));
    assert!(text(&spoofed.stderr).contains("real end"));
    assert_eq!(ok(&session, "print(x)").await, "21\n");

    // A timeout the interpreter survives (SIGINT: KeyboardInterrupt).
    let slow = cell_with(
        &session,
        "import time\ntime.sleep(60)",
        Duration::from_secs(2),
    )
    .await;
    assert!(slow.timed_out, "{slow:?}");
    assert!(!slow.state_lost, "Python survives SIGINT: {slow:?}");
    assert_eq!(ok(&session, "print(x)").await, "21\n");

    // An interrupt from the canceller, and the busy rule meanwhile.
    let canceller = session.canceller();
    let interrupted = async { cell(&session, "import time\ntime.sleep(60)").await };
    let meanwhile = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let busy = session
            .exec(CellRequest::new("print(1)"), &mut Streamed::default())
            .await;
        let busy_file = session.read_file("x").await;
        canceller.cancel();
        (busy, busy_file)
    };
    let (interrupted, (busy, busy_file)) = tokio::join!(interrupted, meanwhile);
    assert!(matches!(busy, Err(SessionError::Busy { .. })), "{busy:?}");
    assert!(
        matches!(busy_file, Err(SessionError::Busy { .. })),
        "{busy_file:?}"
    );
    assert_eq!(interrupted.exit_code, 130, "{interrupted:?}");
    assert!(!interrupted.timed_out && !interrupted.state_lost);
    assert_eq!(ok(&session, "print(x)").await, "21\n");

    // A timeout it does not survive: state lost exactly then.
    let stuck = cell_with(
        &session,
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)",
        Duration::from_secs(2),
    )
    .await;
    assert!(stuck.timed_out && stuck.state_lost, "{stuck:?}");
    assert_eq!(ok(&session, "print('x' in globals())").await, "False\n");

    // Files: 64 MiB both ways, checked by sha256 on each side.
    let big: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let sha = sha256_hex(&big);
    let written = session.write_file("data/big.bin", &big).await.unwrap();
    assert_eq!(
        (written.size, written.sha256.as_str()),
        (64 << 20, sha.as_str())
    );
    let guest_sha = ok(
        &session,
        "import hashlib\nprint(hashlib.sha256(open('data/big.bin','rb').read()).hexdigest())",
    )
    .await;
    assert_eq!(guest_sha.trim(), sha);
    ok(
        &session,
        "open('data/out.bin','wb').write(open('data/big.bin','rb').read()[::-1])",
    )
    .await;
    let (back, info) = session.read_file("data/out.bin").await.unwrap();
    let reversed: Vec<u8> = big.iter().rev().copied().collect();
    assert!(back == reversed, "the bytes came back reversed");
    assert_eq!(info.sha256, sha256_hex(&reversed));
    let listed = session.list_files("data").await.unwrap();
    let names: Vec<_> = listed.iter().map(|e| (e.name.as_str(), e.kind)).collect();
    assert_eq!(
        names,
        [("big.bin", FileKind::File), ("out.bin", FileKind::File)]
    );

    // Refused paths: on the host before the guest, and a symlink out.
    for path in ["../x", "/etc/passwd", "a\0b"] {
        assert!(
            matches!(
                session.read_file(path).await,
                Err(SessionError::Input(InputError::Invalid { .. }))
            ),
            "{path:?}"
        );
        assert!(
            matches!(
                session.write_file(path, b"x").await,
                Err(SessionError::Input(InputError::Invalid { .. }))
            ),
            "{path:?}"
        );
    }
    ok(&session, "import os\nos.symlink('/etc/passwd', 'pw')").await;
    let escaped = session.read_file("pw").await.unwrap_err();
    assert_eq!(
        guest_kind(&escaped),
        Some(ErrorKind::InvalidPath),
        "{escaped}"
    );

    // Close: the VM is gone, every call is refused.
    let report = session.close().await;
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(matches!(
        session
            .exec(CellRequest::new("print(1)"), &mut Streamed::default())
            .await,
        Err(SessionError::Closed {
            reason: CloseReason::Closed,
            ..
        })
    ));
    wait_until_gone(&vm_needle, Duration::from_secs(5)).unwrap();
    scheduler.shutdown().await;
}

/// JavaScript and bash keep state across three cells (top-level await in
/// Node; cwd, variables and functions in bash); the bash session is then
/// closed by its idle timeout.
#[tokio::test(flavor = "multi_thread")]
async fn javascript_and_bash_sessions_keep_state_and_an_idle_one_closes_itself() {
    if images_or_skip("session_js_raw").is_none() {
        return;
    }
    let scheduler = scheduler().await;
    let mut raw_options = SessionOptions::new(Language::Raw);
    raw_options.idle_timeout = Duration::from_secs(15);
    let (js, raw) = tokio::join!(
        scheduler.session(SessionOptions::new(Language::Javascript)),
        scheduler.session(raw_options),
    );
    let (js, raw) = (js.unwrap(), raw.unwrap());

    // The bash session's cells go first: its 15 s idle clock starts when it
    // opens, and the JavaScript cells may take longer than that under TCG.
    assert_eq!(ok(&raw, "cd /tmp; X=21").await, "");
    assert_eq!(ok(&raw, "twice() { echo $(( $1 * 2 )); }").await, "");
    assert_eq!(ok(&raw, "pwd; twice $X").await, "/tmp\n42\n");
    let failed = cell(&raw, "false").await;
    assert_eq!((failed.exit_code, failed.state_lost), (1, false));
    assert_eq!(ok(&raw, "echo $X").await, "21\n");

    assert_eq!(ok(&js, "let a = 20").await, "");
    assert_eq!(
        ok(&js, "a += 1; function twice(v) { return v * 2 }").await,
        ""
    );
    assert_eq!(
        ok(
            &js,
            "const v = await Promise.resolve(twice(a)); console.log(v)"
        )
        .await,
        "42\n"
    );
    let thrown = cell(&js, "throw new Error('boom')").await;
    assert_ne!(thrown.exit_code, 0);
    assert!(
        text(&thrown.stderr).contains("boom"),
        "{}",
        text(&thrown.stderr)
    );
    assert_eq!(ok(&js, "console.log(a)").await, "21\n");

    // Idle: no call for 15 s closes the bash session by itself.
    let needle = raw.id().trim_start_matches("s-").to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !raw.is_closed() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(raw.close_reason(), Some(CloseReason::IdleTimeout));
    assert!(matches!(
        raw.list_files("").await,
        Err(SessionError::Closed {
            reason: CloseReason::IdleTimeout,
            ..
        })
    ));
    wait_until_gone(&needle, Duration::from_secs(5)).unwrap();
    assert!(!js.is_closed(), "the other session is untouched");
    js.close().await;
    scheduler.shutdown().await;
}

/// With templates on, a session starts from the memory template of its
/// shape (built first in a templates dir of its own): restored, not
/// booted, and its cells keep state as a cold session's do.
#[tokio::test(flavor = "multi_thread")]
async fn a_session_starts_from_the_template_of_its_shape() {
    if images_or_skip("session_template").is_none() {
        return;
    }
    let templates = tempfile::tempdir().unwrap();
    let scheduler = airlock_tests::template_scheduler(templates.path(), true).await;
    let session = scheduler
        .session(SessionOptions::new(Language::Raw))
        .await
        .unwrap();
    assert!(
        session.boot_timings().restore.is_some(),
        "restored: {:?}",
        session.boot_timings()
    );
    assert_eq!(ok(&session, "X=42; cd /tmp").await, "");
    assert_eq!(ok(&session, "echo $X $PWD").await, "42 /tmp\n");
    session.close().await;
    scheduler.shutdown().await;
}

fn airlock(args: &[&str], stdin: &str, dir: &std::path::Path) -> Output {
    airlock_tests::run_with_stdin(
        env!("CARGO_BIN_EXE_airlock-under-test"),
        args,
        &[],
        stdin,
        Some(dir),
    )
}

/// Piped `airlock session`: `# %%` cells in one interpreter, output in
/// order, the last cell's status; `--json` one result per line, 124 when
/// the last cell timed out.
#[test]
fn piped_session_runs_percent_cells_in_one_interpreter() {
    if images_or_skip("session_piped").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script =
        "x = 41\nprint('first')\n# %% second cell\nprint(x + 1)\n# %%\nraise SystemError('last')\n";
    let o = airlock(&["session", "--cold", "-q"], script, dir.path());
    assert_eq!(
        text(&o.stdout),
        "first\n42\n",
        "stderr: {}",
        text(&o.stderr)
    );
    assert!(
        text(&o.stderr).contains("SystemError"),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(1), "the last cell's status");

    let js = "// %%\nlet n = 1\n// %%\nn += 1\nconsole.log(n)\n// %%\nwhile (true) {}\n";
    let o = airlock(
        &["session", "--cold", "-l", "javascript", "--json", "-t", "3"],
        js,
        dir.path(),
    );
    let lines: Vec<serde_json::Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        3,
        "stdout {} stderr {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    assert_eq!(lines[1]["stdout"], "2\n");
    assert_eq!(lines[1]["cell"], 2);
    assert_eq!(lines[2]["timed_out"], true);
    assert_eq!(o.status.code(), Some(124));
}

/// `airlock run --upload/--download`: the upload lands before the code,
/// the download is fetched after a failing exit and after a timeout, a
/// symlink out of the home is refused, bad paths and missing files fail
/// before boot.
#[test]
fn run_moves_files_both_ways_even_after_a_failure() {
    if images_or_skip("run_files").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let input: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("in.bin"), &input).unwrap();
    let o = airlock(
        &[
            "run",
            "--cold",
            "-l",
            "raw",
            "--upload",
            "in.bin:data/in.bin",
            "--download",
            "data/out.bin:got.bin",
            "cp data/in.bin data/out.bin; exit 3",
        ],
        "",
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(3), "stderr: {}", text(&o.stderr));
    assert_eq!(std::fs::read(dir.path().join("got.bin")).unwrap(), input);

    let o = airlock(
        &[
            "run",
            "--cold",
            "-l",
            "raw",
            "-t",
            "2",
            "--download",
            "o.txt",
            "echo partial > o.txt; sleep 60",
        ],
        "",
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(124), "stderr: {}", text(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("o.txt")).unwrap(),
        "partial\n"
    );

    let o = airlock(
        &[
            "run",
            "--cold",
            "-l",
            "raw",
            "--download",
            "pw:pw",
            "ln -s /etc/passwd pw",
        ],
        "",
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(text(&o.stderr).contains("outside"), "{}", text(&o.stderr));
    assert!(!dir.path().join("pw").exists());

    for args in [
        &["run", "--upload", "missing.bin:x", "print(1)"][..],
        &["run", "--upload", "in.bin:../x", "print(1)"][..],
        &["run", "--download", "/etc/passwd:x", "print(1)"][..],
    ] {
        let started = Instant::now();
        let o = airlock(args, "", dir.path());
        assert_eq!(o.status.code(), Some(125), "{args:?}");
        assert!(
            text(&o.stderr).contains("invalid"),
            "{args:?}: {}",
            text(&o.stderr)
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused before boot"
        );
    }
}
