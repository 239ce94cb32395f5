//! Pause, resume and fork end to end, on real VMs (`docs/persistence.md`,
//! "Pause, resume and fork"): a python session with a variable, a file
//! and a thread running in the background paused to disk and resumed with all
//! three; a fork of 3 whose children see the parent's variable and draw
//! different random numbers while the parent goes on. The server's side
//! (REST across a restart) is in `server_e2e.rs`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock::{
    CellRequest, CloseReason, Config, Discard, PauseOptions, Scheduler, Session, SessionError,
    SessionOptions,
};
use airlock_protocol::Language;
use airlock_tests::{images_or_skip, text, wait_until_gone};
use std::path::Path;
use std::time::Duration;

async fn scheduler(cache: &Path, templates: bool) -> Scheduler {
    Scheduler::start(Config {
        restore_templates: templates,
        templates_dir: cache.join("templates"),
        paused_dir: cache.join("paused"),
        overlay_pool_target: 0,
        ..Config::default()
    })
    .await
    .unwrap()
}

/// A scheduler restoring sessions from the shared memory templates (the
/// ones `cargo xtask test` builds), its paused sessions under `cache`.
async fn scheduler_over_shared_templates(cache: &Path) -> Scheduler {
    Scheduler::start(Config {
        restore_templates: true,
        paused_dir: cache.join("paused"),
        overlay_pool_target: 0,
        ..Config::default()
    })
    .await
    .unwrap()
}

/// Runs a cell that must succeed; its stdout, trimmed.
async fn ok(session: &Session, code: &str) -> String {
    let mut request = CellRequest::new(code);
    request.timeout = Duration::from_secs(60);
    let r = session.exec(request, &mut Discard).await.unwrap();
    assert_eq!(r.exit_code, 0, "{code}: stderr {}", text(&r.stderr));
    text(&r.stdout).trim().to_owned()
}

/// A variable, a file and a thread counting in the background: the state
/// a pause must keep. (A cell's child processes do not outlive it: the
/// agent ends them with the cell, `docs/sessions.md`; work that runs on
/// between cells is the interpreter's own threads.)
const SETUP: &str = r#"
import threading, time
x = 41 + 1
ticks = [0]
def count():
    while True:
        ticks[0] += 1
        time.sleep(0.02)
threading.Thread(target=count, daemon=True).start()
open("note.txt", "w").write("kept on disk")
time.sleep(0.3)
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_session_resumes_with_its_variable_file_and_background_work() {
    let Some(_images) = images_or_skip("pause_e2e") else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let scheduler = scheduler(cache.path(), false).await;
    let session = scheduler
        .session(SessionOptions::new(Language::Python))
        .await
        .unwrap();
    let id = session.id().to_owned();
    ok(&session, SETUP).await;
    let before: u64 = ok(&session, "print(ticks[0])").await.parse().unwrap();
    assert!(before > 0);

    let meta = session
        .pause(&scheduler, &PauseOptions::default())
        .await
        .unwrap();
    assert_eq!(meta.session_id, id);
    assert!(meta.state_bytes > 1 << 20, "{meta:?}");
    assert!(meta.disk_bytes > 0, "the workspace disk is saved: {meta:?}");
    assert_eq!(session.close_reason(), Some(CloseReason::Paused));
    assert!(matches!(
        session.exec(CellRequest::new("x"), &mut Discard).await,
        Err(SessionError::Closed {
            reason: CloseReason::Paused,
            ..
        })
    ));
    // Its VM is gone (the slot is free) and it is listed with its size.
    let vm_needle = id.trim_start_matches("s-").to_owned();
    wait_until_gone(&vm_needle, Duration::from_secs(10)).unwrap();
    let listed = scheduler.paused_sessions().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].meta.bytes(), meta.bytes());

    // A scheduler started afresh (as after a restart) finds and resumes it.
    scheduler.shutdown().await;
    drop(session);
    let scheduler = self::scheduler(cache.path(), false).await;
    let resumed = scheduler.resume(&id).await.unwrap();
    assert_eq!(resumed.id(), id);
    assert_eq!(ok(&resumed, "print(x)").await, "42");
    assert_eq!(
        ok(&resumed, "print(open('note.txt').read())").await,
        "kept on disk"
    );
    let after: u64 = ok(&resumed, "time.sleep(0.5); print(ticks[0])")
        .await
        .parse()
        .unwrap();
    assert!(
        after > before,
        "the thread counts on: {before} then {after}"
    );
    // The clock was set: the guest's time is the host's.
    let guest_now: f64 = ok(&resumed, "print(time.time())").await.parse().unwrap();
    let host_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (guest_now - host_now).abs() < 30.0,
        "guest {guest_now} host {host_now}"
    );
    // The paused copy is gone once it runs; a second resume finds nothing.
    assert!(scheduler.paused_sessions().await.unwrap().is_empty());
    assert!(matches!(
        scheduler.resume(&id).await,
        Err(SessionError::Pause(airlock::PauseError::NotFound { .. }))
    ));
    resumed.close().await;
    scheduler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fork_of_three_sees_the_parents_variable_and_draws_its_own_random_numbers() {
    let Some(_images) = images_or_skip("pause_e2e_fork") else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    // The parent is a template clone: its children load only the pages
    // that differ from the template's memory file, which they map.
    let scheduler = scheduler_over_shared_templates(cache.path()).await;
    let parent = scheduler
        .session(SessionOptions::new(Language::Python))
        .await
        .unwrap();
    ok(
        &parent,
        "import os, random\nsecret = 'from the parent'\nopen('shared.txt', 'w').write('parent file')\nbig = bytes(range(256)) * 40000",
    )
    .await;
    let started = std::time::Instant::now();
    let children = parent.fork(&scheduler, 3).await.unwrap();
    eprintln!("fork of 3 ready in {:?}", started.elapsed());
    for child in &children {
        eprintln!("child {}: {:?}", child.id(), child.boot_timings());
    }
    assert_eq!(children.len(), 3);
    let mut ids: Vec<&str> = children.iter().map(Session::id).collect();
    ids.push(parent.id());
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4, "every child has its own id");
    let mut draws = Vec::new();
    for child in &children {
        assert_eq!(ok(child, "print(secret)").await, "from the parent");
        assert_eq!(
            ok(child, "print(open('shared.txt').read())").await,
            "parent file"
        );
        draws.push(ok(child, "print(random.getrandbits(64), os.urandom(8).hex())").await);
        // Each child's disk is its own.
        ok(
            child,
            "open('shared.txt', 'w').write('child ' + str(id(secret)))",
        )
        .await;
    }
    draws.sort_unstable();
    draws.dedup();
    assert_eq!(
        draws.len(),
        3,
        "each child draws its own numbers: {draws:?}"
    );
    // The parent runs on, unchanged by its children.
    assert_eq!(ok(&parent, "print(secret)").await, "from the parent");
    assert_eq!(
        ok(&parent, "print(open('shared.txt').read())").await,
        "parent file"
    );
    assert!(matches!(
        parent.fork(&scheduler, 9).await,
        Err(SessionError::Pause(airlock::PauseError::InvalidCount {
            count: 9,
            ..
        }))
    ));
    // Each child loaded a fraction of what saving the parent whole
    // takes: the pages its template's memory file did not hold.
    let loaded: Vec<u64> = children
        .iter()
        .map(|c| c.boot_timings().restore.map_or(0, |r| r.state_bytes))
        .collect();
    for child in &children {
        child.close().await;
    }
    let whole = parent
        .pause(&scheduler, &PauseOptions::default())
        .await
        .unwrap()
        .state_bytes;
    for bytes in loaded {
        assert!(
            bytes > 10_000_000 && bytes < whole / 2,
            "a child loaded {bytes} bytes; the parent's whole state is {whole}"
        );
    }
    scheduler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn airlock_session_resume_continues_a_paused_session_on_the_command_line() {
    let Some(images) = images_or_skip("pause_e2e_cli") else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let scheduler = scheduler(cache.path(), false).await;
    let session = scheduler
        .session(SessionOptions::new(Language::Python))
        .await
        .unwrap();
    ok(&session, "x = 6 * 7").await;
    let meta = session
        .pause(&scheduler, &PauseOptions::default())
        .await
        .unwrap();
    scheduler.shutdown().await;
    // The command line finds it in its cache dir's `paused`.
    let (cache_dir, images_dir) = (
        cache.path().to_string_lossy().into_owned(),
        images.dir.to_string_lossy().into_owned(),
    );
    let id = meta.session_id.clone();
    let out = tokio::task::spawn_blocking(move || {
        airlock_tests::run_with_stdin(
            env!("CARGO_BIN_EXE_airlock-under-test"),
            &["session", "--resume", &id],
            &[
                ("AIRLOCK_CACHE_DIR", cache_dir.as_str()),
                ("AIRLOCK_IMAGES", images_dir.as_str()),
            ],
            "print(x)\n",
            None,
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "42\n");
    assert!(
        !cache.path().join("paused").join(&meta.session_id).exists(),
        "the paused copy is gone once resumed"
    );
}
