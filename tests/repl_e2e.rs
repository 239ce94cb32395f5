//! Persistent interpreters end to end, on real VMs: cells keep their state
//! in each language, survive exceptions, timeouts and cancels, are not
//! fooled by printed boundaries, and leave no child behind; restored
//! one-shot runs (which run in the template's warm interpreter) match cold
//! runs, and clones of one template draw different random numbers.
//!
//! VMs are shared between assertions: one python VM (python and raw
//! cells) and one javascript VM for the cells; one templates dir for the
//! restored runs.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock::{RunRequest, RunResult, Scheduler, Vm, VmOptions};
use airlock_protocol::client::{Client, ExecEvent, ExecOutput};
use airlock_protocol::{ExecRequest, Language};
use airlock_tests::{images_or_skip, qemu_processes_mentioning};
use std::path::Path;
use std::time::{Duration, Instant};

/// Host-side slack over a cell's own timeout.
const GRACE: Duration = Duration::from_secs(60);

async fn scheduler(templates_dir: &Path, restore: bool) -> Scheduler {
    airlock_tests::template_scheduler(templates_dir, restore).await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn cell_request(language: Language, code: &str, timeout_ms: u64) -> ExecRequest {
    ExecRequest::cell(language, code, timeout_ms)
}

async fn cell(client: &Client, language: Language, code: &str) -> ExecOutput {
    cell_timeout(client, language, code, 60_000).await
}

async fn cell_timeout(client: &Client, language: Language, code: &str, ms: u64) -> ExecOutput {
    client
        .exec_collect(cell_request(language, code, ms), GRACE)
        .await
        .unwrap()
}

#[track_caller]
fn expect(out: &ExecOutput, exit_code: i32, stdout: &str, state_lost: bool) {
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

async fn boot(scheduler: &Scheduler, language: Language) -> Vm {
    let defaults = RunRequest::new(language, "");
    scheduler
        .manager()
        .expect("a started scheduler has a VM manager")
        .boot(&VmOptions {
            tenant: "repl-e2e".into(),
            language,
            image: None,
            memory_mib: defaults.spec.shape.memory_mib,
            vcpus: defaults.spec.shape.vcpus,
            network: Default::default(),
            packages: None,
            secrets: None,
            disk_mib: defaults.spec.shape.disk_mib,
            mounts: Vec::new(),
        })
        .await
        .unwrap()
}

/// Runs a cell, cancels it once it printed, returns its completion.
async fn cancelled(client: &Client, language: Language, code: &str) -> (String, i32, bool) {
    let mut stream = client
        .exec(cell_request(language, code, 60_000))
        .await
        .unwrap();
    let op = stream.op();
    let mut stdout = Vec::new();
    loop {
        match tokio::time::timeout(GRACE, stream.next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(ExecEvent::Stdout(b)) => {
                stdout.extend_from_slice(&b);
                client.cancel(op).await.unwrap();
            }
            Some(ExecEvent::Stderr(_) | ExecEvent::Result(_) | ExecEvent::CellError(_)) => {}
            Some(ExecEvent::Complete(done)) => {
                return (text(&stdout), done.exit_code, done.state_lost);
            }
            None => panic!("no completion"),
        }
    }
}

/// Every behaviour of cells, on one python VM (python and raw cells) and
/// one javascript VM; and the latency of a `print(1)` cell.
#[tokio::test(flavor = "multi_thread")]
async fn cells_keep_state_and_survive_errors_timeouts_cancels_spoofing_and_children() {
    let Some(_) = images_or_skip("repl_cells") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sched = scheduler(dir.path(), false).await;
    let (py_vm, js_vm) = tokio::join!(
        boot(&sched, Language::Python),
        boot(&sched, Language::Javascript)
    );
    let (py, js) = (py_vm.client().unwrap(), js_vm.client().unwrap());
    let (p, j, r) = (Language::Python, Language::Javascript, Language::Raw);

    // State survives three cells in each language.
    expect(
        &cell(py, p, "x = 40\ndef f(): return x + 2").await,
        0,
        "",
        false,
    );
    expect(&cell(py, p, "import json\nx += 0").await, 0, "", false);
    expect(
        &cell(py, p, "print(f(), json.dumps([x]))").await,
        0,
        "42 [40]\n",
        false,
    );
    expect(
        &cell(js, j, "const x = 40; function f() { return x + 2; }").await,
        0,
        "",
        false,
    );
    expect(
        &cell(
            js,
            j,
            "const path = require('path'); const v = await Promise.resolve(x)",
        )
        .await,
        0,
        "",
        false,
    );
    expect(
        &cell(js, j, "console.log(f(), path.join('a', 'b'), v)").await,
        0,
        "42 a/b 40\n",
        false,
    );
    expect(
        &cell(py, r, "cd /tmp; n=40; inc() { n=$((n + 2)); }").await,
        0,
        "",
        false,
    );
    expect(&cell(py, r, "inc").await, 0, "", false);
    expect(&cell(py, r, "echo $n $PWD").await, 0, "42 /tmp\n", false);

    // An exception does not end the session.
    let raised = cell(py, p, "raise ValueError('bad')").await;
    expect(&raised, 1, "", false);
    assert!(
        text(&raised.stderr).ends_with("ValueError: bad\n"),
        "{}",
        text(&raised.stderr)
    );
    let thrown = cell(js, j, "throw new TypeError('bad')").await;
    expect(&thrown, 1, "", false);
    assert!(text(&thrown.stderr).contains("TypeError: bad"));
    expect(&cell(py, p, "import sys; sys.exit(3)").await, 3, "", false);
    expect(&cell(py, p, "print(x)").await, 0, "40\n", false);
    expect(&cell(js, j, "console.log(x)").await, 0, "40\n", false);

    // A timed-out cell is reported and the interpreter still answers; the
    // state is lost exactly when the interpreter had to be killed.
    for (client, language, busy, check) in [
        (py, p, "while True: pass", "print(x)"),
        (js, j, "while (true) {}", "console.log(x)"),
        (py, r, "sleep 100", "echo $n"),
    ] {
        let out = cell_timeout(client, language, busy, 1_000).await;
        assert!(out.completion.timed_out, "{language}: {out:?}");
        assert_eq!(
            out.completion.exit_code,
            130,
            "{language}: {}",
            text(&out.stderr)
        );
        assert!(!out.completion.state_lost, "{language}");
        let expected = if language == r { "42\n" } else { "40\n" };
        expect(&cell(client, language, check).await, 0, expected, false);
    }
    let deaf = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass";
    let out = cell_timeout(py, p, deaf, 1_000).await;
    assert!(
        out.completion.timed_out && out.completion.state_lost,
        "{out:?}"
    );
    expect(
        &cell(py, p, "print('x' in globals())").await,
        0,
        "False\n",
        false,
    );
    expect(&cell(py, p, "x = 40").await, 0, "", false);

    // Spoofing: printed boundaries and junk are only output.
    let spoof = "import sys\nfor l in ['ready', 'done 0000000000000000 0', 'reseeded']:\n    print(l); print(l, file=sys.stderr)\nsys.stdout.buffer.write(bytes(range(256)))\nprint()\nsys.exit(4)";
    let out = cell(py, p, spoof).await;
    assert_eq!(out.completion.exit_code, 4);
    assert!(!out.completion.state_lost);
    assert!(out
        .stdout
        .starts_with(b"ready\ndone 0000000000000000 0\nreseeded\n"));
    expect(
        &cell(py, r, "printf 'done 0000000000000000 0\\n'; echo $n").await,
        0,
        "done 0000000000000000 0\n42\n",
        false,
    );
    expect(&cell(py, p, "print(x)").await, 0, "40\n", false);

    // Cancel.
    assert_eq!(
        cancelled(
            py,
            p,
            "import time\nprint('go', flush=True)\ntime.sleep(100)"
        )
        .await,
        ("go\n".into(), 130, false)
    );
    assert_eq!(
        cancelled(
            js,
            j,
            "console.log('go'); await new Promise((ok) => setTimeout(ok, 100000))"
        )
        .await,
        ("go\n".into(), 130, false)
    );
    assert_eq!(
        cancelled(py, r, "echo go; sleep 100").await,
        ("go\n".into(), 130, false)
    );
    expect(&cell(py, p, "print(x)").await, 0, "40\n", false);

    // A background child is gone after its cell.
    let out = cell(py, r, "sleep 1000 & echo $!").await;
    let bash_child = text(&out.stdout).trim().to_owned();
    let out = cell(
        py,
        p,
        "import subprocess\nprint(subprocess.Popen(['sleep', '1000'], start_new_session=True).pid)",
    )
    .await;
    let py_child = text(&out.stdout).trim().to_owned();
    let gone = format!(
        "for p in {bash_child} {py_child}; do [ -e /proc/$p ] && ! grep -q '^State:.*Z' /proc/$p/status && echo \"$p alive\"; done; echo checked"
    );
    expect(&cell(py, r, &gone).await, 0, "checked\n", false);

    // Latency of a cell in a warm interpreter: nothing is spawned.
    let mut samples = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        expect(&cell(py, p, "print(1)").await, 0, "1\n", false);
        samples.push(start.elapsed());
    }
    samples.sort();
    eprintln!(
        "cell print(1) in a warm python interpreter: p50 {:?}, p95 {:?} (20 cells)",
        samples[10], samples[18]
    );

    for mut vm in [py_vm, js_vm] {
        vm.destroy().await;
    }
    sched.shutdown().await;
}

/// Restored one-shot runs (in the template's warm interpreter, Node
/// included) match cold runs: output, exit codes, timeouts; the clone's
/// home and /tmp are empty; two clones restored at once draw different
/// random numbers (Node: `crypto.randomBytes`, `Math.random` and
/// `crypto.randomUUID` in the template's Node, reseeded in place), and
/// `getrandom` does not block after the restore.
#[tokio::test(flavor = "multi_thread")]
async fn restored_runs_match_cold_runs_and_clones_draw_their_own_randomness() {
    let Some(_) = images_or_skip("repl_restored_runs") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let restoring = scheduler(dir.path(), true).await;
    let cold = scheduler(dir.path(), false).await;
    let run = |s: &Scheduler, language: Language, code: &str, timeout: u64| {
        let mut request = RunRequest::new(language, code);
        request.timeout = Duration::from_secs(timeout);
        let s = s.clone();
        async move { s.run(request).await.unwrap() }
    };
    let cases = [
        (
            Language::Python,
            "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)",
            "while True: pass",
        ),
        (Language::Raw, "echo out; echo err >&2; exit 3", "sleep 100"),
        (
            Language::Javascript,
            "console.log('out'); console.error('err'); process.exit(3)",
            "while (true) {}",
        ),
    ];
    for (language, code, busy) in cases {
        // The first run builds the template; the second is a clone. (The
        // busy code prints nothing: under load a cold interpreter may not
        // reach its first line within the timeout.)
        let first = run(&restoring, language, code, 30).await;
        let restored = run(&restoring, language, code, 30).await;
        let booted = run(&cold, language, code, 30).await;
        assert!(restored.timings.restore.is_some(), "{language}");
        for (what, r) in [
            ("first", &first),
            ("restored", &restored),
            ("cold", &booted),
        ] {
            assert_eq!(
                (text(&r.stdout), text(&r.stderr), r.exit_code, r.timed_out),
                ("out\n".into(), "err\n".into(), 3, false),
                "{language} {what}"
            );
        }
        let (restored, booted) = tokio::join!(
            run(&restoring, language, busy, 2),
            run(&cold, language, busy, 2)
        );
        let summary = |r: &RunResult| (text(&r.stdout), text(&r.stderr), r.exit_code, r.timed_out);
        assert_eq!(
            summary(&restored),
            summary(&booted),
            "{language}: a timeout"
        );
        assert!(restored.timed_out, "{language}");
    }

    // Nothing of the template is in the clone's home or /tmp.
    let listing = run(&restoring, Language::Raw, "ls -A \"$HOME\" /tmp", 30).await;
    assert_eq!(
        text(&listing.stdout),
        "/home/sandbox:\n\n/tmp:\n",
        "{listing:?}"
    );

    // Two clones at once draw different numbers; getrandom does not block.
    let py_probe = "import os, random, time\nt = time.monotonic()\nos.getrandom(16)\nprint(os.urandom(16).hex(), random.random(), time.monotonic() - t < 0.5)";
    // The last two words: the run was in the template's Node, reseeded in
    // place (the driver rebased its timeOrigin, read on the template's
    // lagging clock), and timeOrigin + performance.now() is the clock.
    let js_probe = "const c = require('crypto');\n\
        console.log(c.randomBytes(16).toString('hex'), Math.random(), c.randomUUID(), \
        Object.hasOwn(performance, 'timeOrigin'), \
        Math.abs(performance.timeOrigin + performance.now() - Date.now()) < 5000)";
    for (language, probe) in [
        (Language::Python, py_probe),
        (Language::Javascript, js_probe),
    ] {
        let (a, b) = tokio::join!(
            run(&restoring, language, probe, 30),
            run(&restoring, language, probe, 30)
        );
        let (a, b) = (text(&a.stdout), text(&b.stdout));
        let (wa, wb): (Vec<&str>, Vec<&str>) = (
            a.split_whitespace().collect(),
            b.split_whitespace().collect(),
        );
        assert_eq!((wa.len(), wb.len()), (wb.len(), wa.len()), "{a} / {b}");
        let draws = match language {
            Language::Javascript => 3,
            _ => 2,
        };
        for (x, y) in wa.iter().zip(&wb).take(draws) {
            assert_ne!(x, y, "{language}: two clones printed the same {x}");
        }
        if language == Language::Python {
            assert_eq!((wa[2], wb[2]), ("True", "True"), "getrandom blocked");
        } else {
            assert_eq!(
                (&wa[3..], &wb[3..]),
                (&["true", "true"][..], &["true", "true"][..]),
                "not run in the template's reseeded Node: {a} / {b}"
            );
        }
    }

    restoring.shutdown().await;
    cold.shutdown().await;
    let needle = dir.path().to_string_lossy().into_owned();
    assert!(qemu_processes_mentioning(&needle).is_empty());
}
