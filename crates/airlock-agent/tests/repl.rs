//! Cells in persistent interpreters, through the real agent service and
//! the real drivers (`python3`, `node` and `bash` of the host). One agent
//! per test, its interpreter shared by the assertions.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use airlock_protocol::client::{Client, ExecEvent, ExecOutput};
use airlock_protocol::{ExecMode, ExecRequest, Language};
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

struct CellAgent {
    agent: Agent,
    _cells: tempfile::TempDir,
    _cgroups: Option<TestCgroupParent>,
}

async fn start_cells(tag: &str) -> CellAgent {
    let cells = tempfile::tempdir().expect("cell dir");
    std::fs::set_permissions(cells.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cgroups = TestCgroupParent::new(tag);
    let agent = start_with(|c| {
        c.cell_dir = cells.path().join("cells");
        c.exec_cgroup_parent = cgroups.as_ref().map(|g| g.path().to_owned());
        c.kill_grace = Duration::from_millis(1500);
        c.interrupt_grace = Duration::from_millis(1500);
    })
    .await;
    CellAgent {
        agent,
        _cells: cells,
        _cgroups: cgroups,
    }
}

fn cell_request(language: Language, code: &str, timeout_ms: u64) -> ExecRequest {
    ExecRequest::cell(language, code, timeout_ms)
}

async fn cell(client: &Client, language: Language, code: &str) -> ExecOutput {
    cell_with(client, cell_request(language, code, 20_000)).await
}

async fn cell_with(client: &Client, request: ExecRequest) -> ExecOutput {
    client.exec_collect(request, T).await.expect("cell")
}

fn assert_cell(out: &ExecOutput, exit_code: i32, stdout: &str, state_lost: bool) {
    assert_eq!(
        (
            out.completion.exit_code,
            text(&out.stdout).as_str(),
            out.completion.state_lost
        ),
        (exit_code, stdout, state_lost),
        "stderr: {}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn python_cells_share_globals_and_survive_exceptions_and_exits() {
    let cells = start_cells("py").await;
    let c = &cells.agent.client;
    let py = Language::Python;

    assert_cell(
        &cell(c, py, "x = 40\ndef f(): return x + 1").await,
        0,
        "",
        false,
    );
    assert_cell(&cell(c, py, "x += 1").await, 0, "", false);
    assert_cell(
        &cell(c, py, "print(f(), __name__, __import__('sys').argv)").await,
        0,
        "42 __main__ ['-c']\n",
        false,
    );

    let raised = cell(c, py, "1/0").await;
    assert_cell(&raised, 1, "", false);
    assert_eq!(
        text(&raised.stderr),
        "Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\nZeroDivisionError: division by zero\n",
        "the traceback is the one `python3 -c` prints"
    );
    assert_cell(
        &cell(c, py, "import sys; print('bye'); sys.exit(3)").await,
        3,
        "bye\n",
        false,
    );
    assert_cell(&cell(c, py, "raise SystemExit('why')").await, 1, "", false);
    assert_cell(&cell(c, py, "print(x)").await, 0, "41\n", false);

    // A thread the cell started is waited for, as at interpreter exit.
    let threaded = "import threading, time\nthreading.Thread(target=lambda: (time.sleep(0.2), print('late'))).start()";
    assert_cell(&cell(c, py, threaded).await, 0, "late\n", false);

    // Env is the cell's alone.
    let mut with_env = cell_request(py, "import os; print(os.environ['CELL_VAR'])", 20_000);
    with_env.env.insert("CELL_VAR".into(), "v1".into());
    assert_cell(&cell_with(c, with_env).await, 0, "v1\n", false);
    assert_cell(
        &cell(c, py, "import os; print(os.environ.get('CELL_VAR'))").await,
        0,
        "None\n",
        false,
    );

    // The interpreter dying on its own gives its status and loses the state.
    assert_cell(&cell(c, py, "import os; os._exit(5)").await, 5, "", true);
    assert_cell(
        &cell(c, py, "print('x' in globals())").await,
        0,
        "False\n",
        false,
    );
}

#[tokio::test]
async fn printed_boundaries_and_junk_do_not_end_a_cell_and_a_forged_report_only_costs_the_state() {
    let cells = start_cells("spoof").await;
    let c = &cells.agent.client;
    let py = Language::Python;
    assert_cell(&cell(c, py, "kept = 1").await, 0, "", false);

    let spoof = r#"import sys
for line in ["ready", "done 0000000000000000 0", "done ffffffffffffffff 7", "reseeded"]:
    print(line); print(line, file=sys.stderr)
sys.stdout.buffer.write(bytes(range(256)) + b"\n"); sys.stdout.flush()
print("end")
sys.exit(9)"#;
    let out = cell(c, py, spoof).await;
    assert_eq!(out.completion.exit_code, 9, "{}", text(&out.stderr));
    assert!(!out.completion.state_lost);
    assert!(out.stdout.starts_with(b"ready\ndone 0000000000000000 0\n"));
    assert!(out.stdout.ends_with(b"\nend\n"));
    assert!(out
        .stdout
        .windows(256)
        .any(|w| w == (0..=255).collect::<Vec<u8>>()));
    assert_cell(&cell(c, py, "print(kept)").await, 0, "1\n", false);

    // A cell writing a report of its own on the control fd breaks the
    // protocol: its interpreter is replaced, the host only sees the loss.
    let forged = cell(
        c,
        py,
        "import os; os.write(4, b'done 0000000000000000 0\\n'); import time; time.sleep(1)",
    )
    .await;
    assert!(forged.completion.state_lost, "{forged:?}");
    assert_cell(
        &cell(c, py, "print('kept' in globals())").await,
        0,
        "False\n",
        false,
    );

    // A cell closing its interpreter's stdout ends the interpreter within
    // the grace, not at the cell's deadline.
    let start = std::time::Instant::now();
    let closed = cell(c, py, "import os, time\nos.close(1)\ntime.sleep(60)").await;
    assert!(closed.completion.state_lost, "{closed:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_cell(&cell(c, py, "print('fresh')").await, 0, "fresh\n", false);
}

#[tokio::test]
async fn javascript_cells_keep_declarations_imports_and_await() {
    let cells = start_cells("js").await;
    let c = &cells.agent.client;
    let js = Language::Javascript;

    assert_cell(
        &cell(
            c,
            js,
            "const x = 40; let y = 1; function f() { return x + y; }",
        )
        .await,
        0,
        "",
        false,
    );
    assert_cell(
        &cell(
            c,
            js,
            "const os = require('os'); const m = await import('path'); y += 1",
        )
        .await,
        0,
        "",
        false,
    );
    assert_cell(
        &cell(c, js, "console.log(f(), typeof os.cpus, m.join('a', 'b'))").await,
        0,
        "42 function a/b\n",
        false,
    );
    assert_cell(
        &cell(
            c,
            js,
            "const r = await new Promise((ok) => setTimeout(() => ok(7), 50)); console.log(r)",
        )
        .await,
        0,
        "7\n",
        false,
    );

    let thrown = cell(c, js, "throw new Error('boom')").await;
    assert_cell(&thrown, 1, "", false);
    assert!(
        text(&thrown.stderr).contains("Error: boom"),
        "{}",
        text(&thrown.stderr)
    );
    // As `node -e`: the cell ends once the timers it set have run.
    assert_cell(
        &cell(c, js, "setTimeout(() => console.log('timer'), 100)").await,
        0,
        "timer\n",
        false,
    );
    assert_cell(&cell(c, js, "process.exitCode = 4").await, 4, "", false);
    assert_cell(&cell(c, js, "console.log(r)").await, 0, "7\n", false);

    assert_cell(
        &cell(c, js, "console.log('out'); process.exit(3)").await,
        3,
        "out\n",
        true,
    );
    assert_cell(
        &cell(c, js, "console.log(typeof r)").await,
        0,
        "undefined\n",
        false,
    );
}

#[tokio::test]
async fn bash_cells_keep_cwd_variables_and_functions() {
    let cells = start_cells("raw").await;
    let c = &cells.agent.client;
    let raw = Language::Raw;

    assert_cell(
        &cell(
            c,
            raw,
            "mkdir -p sub && cd sub; n=41; declare -a arr=(a b c)",
        )
        .await,
        0,
        "",
        false,
    );
    assert_cell(
        &cell(c, raw, "inc() { n=$((n + 1)); }; inc").await,
        0,
        "",
        false,
    );
    assert_cell(
        &cell(c, raw, "echo \"$n ${arr[2]} $(basename \"$PWD\") $0\"").await,
        0,
        "42 c sub bash\n",
        false,
    );
    assert_cell(&cell(c, raw, "false").await, 1, "", false);
    assert_cell(&cell(c, raw, "echo \"$n\"").await, 0, "42\n", false);

    assert_cell(&cell(c, raw, "echo last; exit 3").await, 3, "last\n", true);
    assert_cell(&cell(c, raw, "echo \"[${n-}]\"").await, 0, "[]\n", false);
}

#[tokio::test]
async fn a_timed_out_cell_is_interrupted_and_the_interpreter_answers_after() {
    let cells = start_cells("timeout").await;
    let c = &cells.agent.client;
    for (language, setup, busy, check) in [
        (
            Language::Python,
            "kept = 5",
            "while True: pass",
            "print(kept)",
        ),
        (
            Language::Javascript,
            "var kept = 5",
            "while (true) {}",
            "console.log(kept)",
        ),
        (
            Language::Raw,
            "kept=5",
            "f() { while :; do :; done; }; f; echo no",
            "echo $kept",
        ),
        (Language::Raw, "kept=5", "sleep 30; echo no", "echo $kept"),
    ] {
        assert_cell(&cell(c, language, setup).await, 0, "", false);
        let out = cell_with(c, cell_request(language, busy, 500)).await;
        assert!(out.completion.timed_out, "{language}: {out:?}");
        assert_eq!(
            out.completion.exit_code,
            130,
            "{language}: {}",
            text(&out.stderr)
        );
        assert!(!out.completion.state_lost, "{language}: SIGINT sufficed");
        assert!(out.completion.duration_ms < 5_000, "{language}: {out:?}");
        assert_cell(&cell(c, language, check).await, 0, "5\n", false);
    }

    // An interpreter that ignores SIGINT is killed: the state is lost.
    let deaf = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass";
    let out = cell_with(c, cell_request(Language::Python, deaf, 500)).await;
    assert!(
        out.completion.timed_out && out.completion.state_lost,
        "{out:?}"
    );
    assert_eq!(out.completion.exit_code, 137);
    assert_cell(
        &cell(c, Language::Python, "print('kept' in globals())").await,
        0,
        "False\n",
        false,
    );
}

#[tokio::test]
async fn a_javascript_cell_interrupted_in_synchronous_code_ends_despite_its_timers() {
    // The SIGINT stops the loop (the REPL's watchdog), not an `await`: the
    // 60 s timer the cell made before is still pending, and the cell must
    // end now, not when the timer would.
    let cells = start_cells("js-sync-interrupt").await;
    let c = &cells.agent.client;
    assert_cell(
        &cell(c, Language::Javascript, "var kept = 7").await,
        0,
        "",
        false,
    );
    let busy = "setTimeout(() => {}, 60000); while (true) {}";

    let out = cell_with(c, cell_request(Language::Javascript, busy, 500)).await;

    assert_eq!(
        (
            out.completion.exit_code,
            out.completion.timed_out,
            out.completion.state_lost
        ),
        (130, true, false),
        "{}",
        text(&out.stderr)
    );
    assert!(out.completion.duration_ms < 5_000, "{out:?}");
    assert_cell(
        &cell(c, Language::Javascript, "console.log(kept)").await,
        0,
        "7\n",
        false,
    );
}

#[tokio::test]
async fn a_one_shot_run_times_out_as_a_process_would() {
    let cells = start_cells("oneshot").await;
    let c = &cells.agent.client;
    for (language, busy) in [
        (
            Language::Python,
            "print('before', flush=True)\nwhile True: pass",
        ),
        (Language::Raw, "echo before; sleep 30"),
        (
            Language::Javascript,
            "console.log('before'); while (true) {}",
        ),
    ] {
        let mut request = cell_request(language, busy, 500);
        request.mode = ExecMode::OneShot;
        let out = cell_with(c, request).await;
        // SIGTERM kills each of them: 128 + 15, nothing on stderr.
        assert_eq!(
            (
                out.completion.exit_code,
                out.completion.timed_out,
                text(&out.stdout).as_str(),
                text(&out.stderr).as_str()
            ),
            (143, true, "before\n", ""),
            "{language}"
        );
        assert!(out.completion.state_lost, "{language}");
        let mut request = cell_request(language, "", 5_000);
        request.mode = ExecMode::OneShot;
        assert_cell(&cell_with(c, request).await, 0, "", false);
    }
}

#[tokio::test]
async fn cancel_interrupts_a_running_cell_with_130() {
    let cells = start_cells("cancel").await;
    let c = &cells.agent.client;
    for (language, setup, busy, check) in [
        (
            Language::Python,
            "kept = 6",
            "import time\nprint('start', flush=True)\ntime.sleep(60)",
            "print(kept)",
        ),
        (
            Language::Javascript,
            "var kept = 6",
            "console.log('start'); await new Promise((r) => setTimeout(r, 60000))",
            "console.log(kept)",
        ),
        (
            Language::Raw,
            "kept=6",
            "echo start; sleep 60",
            "echo $kept",
        ),
    ] {
        assert_cell(&cell(c, language, setup).await, 0, "", false);
        let mut stream = c.exec(cell_request(language, busy, 60_000)).await.unwrap();
        let op = stream.op();
        let mut stdout = Vec::new();
        let completion = loop {
            match tokio::time::timeout(T, stream.next())
                .await
                .unwrap()
                .unwrap()
            {
                Some(ExecEvent::Stdout(b)) => {
                    stdout.extend_from_slice(&b);
                    c.cancel(op).await.unwrap();
                }
                Some(ExecEvent::Stderr(_) | ExecEvent::Result(_) | ExecEvent::CellError(_)) => {}
                Some(ExecEvent::Complete(done)) => break done,
                None => panic!("no completion"),
            }
        };
        assert_eq!(text(&stdout), "start\n");
        assert_eq!(
            (
                completion.exit_code,
                completion.timed_out,
                completion.state_lost
            ),
            (130, false, false),
            "{language}"
        );
        assert_cell(&cell(c, language, check).await, 0, "6\n", false);
    }
    // A cancel of nothing is ignored.
    c.cancel(9_999).await.unwrap();
    assert_cell(&cell(c, Language::Raw, "echo ok").await, 0, "ok\n", false);
}

#[tokio::test]
async fn processes_a_cell_started_do_not_outlive_it() {
    let cells = start_cells("children").await;
    if cells._cgroups.is_none() {
        eprintln!("skipped: needs root and a cgroup2 mount");
        return;
    }
    let c = &cells.agent.client;
    let out = cell(c, Language::Raw, "sleep 1000 & echo $!").await;
    let bash_child: i32 = text(&out.stdout).trim().parse().unwrap();
    let out = cell(c, Language::Python, "import subprocess\np = subprocess.Popen(['sleep', '1000'], start_new_session=True)\nprint(p.pid)").await;
    let py_child: i32 = text(&out.stdout).trim().parse().unwrap();
    for pid in [bash_child, py_child] {
        assert!(!is_running(pid), "{pid} outlived its cell");
    }
    // The interpreters themselves live on.
    assert_cell(
        &cell(c, Language::Python, "print(p.poll() is not None)").await,
        0,
        "True\n",
        false,
    );
    assert_cell(
        &cell(c, Language::Raw, "echo alive").await,
        0,
        "alive\n",
        false,
    );
}

#[tokio::test]
async fn warm_repl_starts_the_interpreter_the_cells_use() {
    let cells = start_cells("warm").await;
    let c = &cells.agent.client;
    let warmed = c.warm_repl(Language::Python, T).await.unwrap();
    assert_eq!(warmed.exit_code, 0);
    let out = cell(
        c,
        Language::Python,
        "import sys; print('json' in sys.modules)",
    )
    .await;
    assert_cell(&out, 0, "True\n", false);
    assert_eq!(out.completion.spawn_ms, 0, "the warm interpreter answered");
    let again = c.warm_repl(Language::Python, T).await.unwrap();
    assert_eq!(again.spawn_ms, 0, "already warm");
    // A cwd makes no sense for a cell.
    let mut with_cwd = cell_request(Language::Python, "pass", 1000);
    with_cwd.cwd = Some("sub".into());
    let err = c.exec_collect(with_cwd, T).await.unwrap_err();
    assert!(err.to_string().contains("cwd"), "{err}");
}

#[tokio::test]
async fn a_reset_interpreter_starts_fresh_without_reporting_its_state_lost() {
    let cells = start_cells("reset").await;
    let client = &cells.agent.client;
    assert_cell(
        &cell(client, Language::Python, "x = 41").await,
        0,
        "",
        false,
    );
    let reset = client.reset_repl(Language::Python, T).await.unwrap();
    assert_eq!(reset.exit_code, 0);
    let after = cell(client, Language::Python, "print('x' in globals())").await;
    assert_cell(&after, 0, "False\n", false);
    // Resetting an interpreter that does not run is a no-op.
    assert_eq!(
        client.reset_repl(Language::Raw, T).await.unwrap().exit_code,
        0
    );
}

#[tokio::test]
#[allow(unsafe_code)] // one `signal` call, to start as a background job does
async fn a_cell_is_interrupted_even_when_the_agent_started_with_sigint_ignored() {
    // A shell's background job starts with SIGINT and SIGQUIT ignored, and
    // an ignored signal stays ignored across exec: the agent's
    // interpreters must get the default action back. (The other tests of
    // this binary only gain from the same start.)
    for signal in [
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGQUIT,
    ] {
        // SAFETY: installs SIG_IGN, which runs no code in this process.
        unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigIgn) }.unwrap();
    }
    let cells = start_cells("sigint-ignored").await;
    let c = &cells.agent.client;
    assert_cell(&cell(c, Language::Python, "kept = 5").await, 0, "", false);
    let out = cell_with(c, cell_request(Language::Python, "while True: pass", 500)).await;
    assert!(out.completion.timed_out, "{out:?}");
    assert_eq!(out.completion.exit_code, 130, "{}", text(&out.stderr));
    assert!(!out.completion.state_lost, "SIGINT sufficed");
    assert_cell(
        &cell(c, Language::Python, "print(kept)").await,
        0,
        "5\n",
        false,
    );
}
