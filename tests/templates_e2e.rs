//! Memory templates end to end, on real VMs: a run restores from the
//! template of its shape (building it first), behaves as a cold run,
//! gets its own entropy and the host's clock, and a damaged template is
//! rebuilt, never restored.
//!
//! Each test has its own templates dir (a temp dir: the shared images and
//! probe cache are used as they are) and shares its template between its
//! assertions.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock::template::{Found, TemplateShape};
use airlock::{RunRequest, RunResult, Scheduler, Stage};
use airlock_protocol::Language;
use airlock_tests::{default_shape, images_or_skip, qemu_processes_mentioning, Stages};
use std::path::Path;
use std::time::{Duration, SystemTime};

async fn scheduler(templates_dir: &Path, restore: bool) -> Scheduler {
    airlock_tests::template_scheduler(templates_dir, restore).await
}

fn request(language: Language, code: &str) -> RunRequest {
    RunRequest::new(language, code)
}

/// Runs `code` and returns the result and whether a template was built.
async fn run(scheduler: &Scheduler, language: Language, code: &str) -> (RunResult, bool) {
    let mut stages = Stages::default();
    let result = scheduler
        .run_observed(request(language, code), &mut stages)
        .await
        .unwrap();
    (result, stages.0.contains(&Stage::BuildingTemplate))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn shape(language: Language) -> TemplateShape {
    default_shape(language)
}

/// Python: the first run builds the template, later runs restore it and
/// match a cold run (output, exit code, timeout); two clones restored at
/// once draw different random bytes; the clock is the host's although the
/// template was saved seconds earlier; a truncated state file makes the
/// next run rebuild the template instead of restoring it.
#[tokio::test(flavor = "multi_thread")]
async fn python_restores_like_a_cold_boot_with_its_own_entropy_and_the_host_clock() {
    let Some(_) = images_or_skip("python_restores") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let restoring = scheduler(dir.path(), true).await;
    let cold = scheduler(dir.path(), false).await;
    let code = "import sys\nprint('hello')\nprint('oops', file=sys.stderr)\nsys.exit(3)";

    // The first run builds the template, then restores it.
    let (first, built) = run(&restoring, Language::Python, code).await;
    assert!(built, "no template existed: the run must build one");
    let found = restoring
        .templates()
        .expect("a started scheduler has templates")
        .find(shape(Language::Python))
        .await
        .unwrap();
    let Found::Ready(template) = found else {
        panic!("the template is not in the store after the build: {found:?}");
    };
    let saved_at = unix_now();

    // A restored run behaves as a cold one.
    let (restored, built) = run(&restoring, Language::Python, code).await;
    assert!(!built, "the template exists: it must be restored");
    let (cold_run, _) = run(&cold, Language::Python, code).await;
    for result in [&first, &restored] {
        assert_eq!(text(&result.stdout), text(&cold_run.stdout));
        assert_eq!(text(&result.stderr), text(&cold_run.stderr));
        assert_eq!(result.exit_code, cold_run.exit_code);
    }
    assert_eq!(
        (text(&restored.stdout), restored.exit_code),
        ("hello\n".into(), 3)
    );
    assert!(restored.timings.restore.is_some(), "{:?}", restored.timings);
    assert!(cold_run.timings.restore.is_none(), "{:?}", cold_run.timings);
    let mut slow = request(Language::Python, "import time\ntime.sleep(30)");
    slow.timeout = Duration::from_secs(1);
    let timed_out = restoring.run(slow).await.unwrap();
    assert!(timed_out.timed_out, "{timed_out:?}");

    // Two clones at once: different entropy; both on the host's clock
    // although the template's clock stopped when it was saved.
    tokio::time::sleep(
        Duration::from_secs(3)
            .saturating_sub(Duration::from_secs_f64((unix_now() - saved_at).max(0.0))),
    )
    .await;
    let probe =
        "import os, random, time\nprint(os.urandom(16).hex() + str(random.random()), time.time())";
    let before = unix_now();
    let (a, b) = tokio::join!(
        run(&restoring, Language::Python, probe),
        run(&restoring, Language::Python, probe)
    );
    let after = unix_now();
    let parse = |r: &RunResult| {
        let out = text(&r.stdout);
        let mut words = out.split_whitespace();
        let random = words.next().unwrap().to_owned();
        let clock: f64 = words.next().unwrap().parse().unwrap();
        (random, clock)
    };
    let ((random_a, clock_a), (random_b, clock_b)) = (parse(&a.0), parse(&b.0));
    assert_ne!(random_a, random_b, "two clones drew the same random bytes");
    for clock in [clock_a, clock_b] {
        assert!(
            clock >= before - 1.0 && clock <= after + 1.0,
            "guest clock {clock} is not the host's ({before}..{after}) within 1 s"
        );
    }

    // A truncated state file: the next run rebuilds, then restores.
    let state = template.state_file();
    let bytes = std::fs::read(&state).unwrap();
    std::fs::write(&state, &bytes[..bytes.len() / 2]).unwrap();
    let (after_damage, built) = run(&restoring, Language::Python, "print(6 * 7)").await;
    assert!(built, "a damaged template must be rebuilt");
    assert_eq!(text(&after_damage.stdout), "42\n");
    // The rebuilt template passes the store's size and sha256 checks.
    assert!(matches!(
        restoring
            .templates()
            .expect("a started scheduler has templates")
            .find(shape(Language::Python))
            .await
            .unwrap(),
        Found::Ready(_)
    ));

    restoring.shutdown().await;
    cold.shutdown().await;
    let needle = dir.path().to_string_lossy().into_owned();
    assert!(
        qemu_processes_mentioning(&needle).is_empty(),
        "a clone of a template outlived its run"
    );
}

/// Raw (bash) and JavaScript: restored runs keep output, exit codes and
/// timeouts; nothing of the template's boot is left in the clone's home
/// or /tmp (they look as after a cold boot).
#[tokio::test(flavor = "multi_thread")]
async fn raw_and_javascript_restore_with_output_exit_codes_timeouts_and_clean_dirs() {
    let Some(_) = images_or_skip("raw_and_javascript_restore") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let restoring = scheduler(dir.path(), true).await;
    let cold = scheduler(dir.path(), false).await;
    let cases = [
        (
            Language::Raw,
            "echo hello; echo oops >&2; exit 3",
            "sleep 30",
        ),
        (
            Language::Javascript,
            "console.log('hello'); console.error('oops'); process.exit(3)",
            "setTimeout(() => {}, 30000)",
        ),
    ];
    for (language, code, slow_code) in cases {
        let (first, built) = run(&restoring, language, code).await;
        assert!(built, "{language}: no template existed");
        let (again, built) = run(&restoring, language, code).await;
        assert!(!built, "{language}: the template must be restored");
        for result in [&first, &again] {
            assert_eq!(text(&result.stdout), "hello\n", "{language}");
            assert_eq!(text(&result.stderr), "oops\n", "{language}");
            assert_eq!(result.exit_code, 3, "{language}");
            assert!(!result.timed_out, "{language}");
        }
        let mut slow = request(language, slow_code);
        slow.timeout = Duration::from_secs(1);
        let timed_out = restoring.run(slow).await.unwrap();
        assert!(timed_out.timed_out, "{language}: {timed_out:?}");
    }
    // A state file QEMU refuses although its checks pass (its metadata
    // rewritten to match): the run boots cold instead, and the template is
    // removed so that the next run rebuilds it.
    let Found::Ready(template) = restoring
        .templates()
        .expect("a started scheduler has templates")
        .find(shape(Language::Raw))
        .await
        .unwrap()
    else {
        panic!("the raw template is gone");
    };
    let garbage = b"QEVM\0\0\0\x03 this is not a device state".to_vec();
    std::fs::write(template.state_file(), &garbage).unwrap();
    let metadata_path = template.dir.join("template.json");
    let mut metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&metadata_path).unwrap()).unwrap();
    metadata["state_bytes"] = garbage.len().into();
    metadata["state_sha256"] = airlock_protocol::client::sha256_hex(&garbage).into();
    std::fs::write(&metadata_path, serde_json::to_vec(&metadata).unwrap()).unwrap();
    let (fallback, built) = run(&restoring, Language::Raw, "echo fine").await;
    assert!(!built, "the template looked intact: no rebuild was due");
    assert_eq!(text(&fallback.stdout), "fine\n");
    assert!(
        fallback.timings.restore.is_none(),
        "the failed restore was not replaced by a cold boot"
    );
    assert!(matches!(
        restoring
            .templates()
            .expect("a started scheduler has templates")
            .find(shape(Language::Raw))
            .await
            .unwrap(),
        Found::Build { .. }
    ));

    let listing = "ls -A \"$HOME\" /tmp";
    let (restored, _) = run(&restoring, Language::Raw, listing).await;
    let (booted, _) = run(&cold, Language::Raw, listing).await;
    assert_eq!(text(&restored.stdout), text(&booted.stdout));
    assert_eq!(restored.exit_code, booted.exit_code);

    restoring.shutdown().await;
    cold.shutdown().await;
    let needle = dir.path().to_string_lossy().into_owned();
    assert!(qemu_processes_mentioning(&needle).is_empty());
}

/// A template is used only by the inputs it was made from: another kernel
/// or QEMU gives another key; a template dir whose metadata names other
/// inputs, whose state file was altered in place (same size) or whose
/// memory file was cut is rebuilt, never restored.
#[tokio::test(flavor = "multi_thread")]
async fn a_template_of_other_inputs_or_altered_files_is_rebuilt_never_restored() {
    let Some(_) = images_or_skip("template_other_inputs") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let restoring = scheduler(dir.path(), true).await;
    let (_, built) = run(&restoring, Language::Raw, "echo 1").await;
    assert!(built, "no template existed");

    // Another kernel or QEMU: another key.
    let inputs = restoring
        .templates()
        .expect("a started scheduler has templates")
        .inputs(shape(Language::Raw))
        .unwrap();
    let other_kernel = airlock::template::TemplateInputs {
        kernel_hash: "another-kernel".into(),
        ..inputs.clone()
    };
    let other_qemu = airlock::template::TemplateInputs {
        qemu_version: "9.9.9".into(),
        ..inputs.clone()
    };
    for other in [&other_kernel, &other_qemu] {
        assert_ne!(other.key(), inputs.key());
    }

    type Damage = fn(&airlock::template::Template);
    let damages: [(&str, Damage); 3] = [
        ("metadata naming another kernel", |t| {
            let path = t.dir.join("template.json");
            let mut metadata: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            metadata["inputs"]["kernel_hash"] = "another-kernel".into();
            std::fs::write(&path, serde_json::to_vec(&metadata).unwrap()).unwrap();
        }),
        ("a state file altered in place", |t| {
            let mut bytes = std::fs::read(t.state_file()).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            std::fs::write(t.state_file(), &bytes).unwrap();
        }),
        ("a cut memory file", |t| {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(t.memory_file())
                .unwrap();
            let len = file.metadata().unwrap().len();
            file.set_len(len / 2).unwrap();
        }),
    ];
    for (what, damage) in damages {
        let Found::Ready(template) = restoring
            .templates()
            .expect("a started scheduler has templates")
            .find(shape(Language::Raw))
            .await
            .unwrap()
        else {
            panic!("{what}: no good template before the damage");
        };
        damage(&template);
        assert!(
            matches!(
                restoring
                    .templates()
                    .expect("a started scheduler has templates")
                    .find(shape(Language::Raw))
                    .await
                    .unwrap(),
                Found::Build {
                    damaged: Some(_),
                    ..
                }
            ),
            "{what}: the damaged template was not refused"
        );
        let (after, built) = run(&restoring, Language::Raw, "echo fine").await;
        assert!(built, "{what}: the template must be rebuilt");
        assert_eq!(text(&after.stdout), "fine\n", "{what}");
        assert!(
            after.timings.restore.is_some(),
            "{what}: restored from the rebuilt one"
        );
    }

    restoring.shutdown().await;
    let needle = dir.path().to_string_lossy().into_owned();
    assert!(qemu_processes_mentioning(&needle).is_empty());
}

/// Over its disk budget, the template store loses the least recently
/// used template after a build, never the one just built: with a budget
/// of one byte, a raw template used an hour ago (its `uses` file aged by
/// hand) goes when another shape's template is built, the new one stays,
/// and the next run of the first shape builds it again.
#[tokio::test(flavor = "multi_thread")]
async fn over_the_disk_budget_the_least_recently_used_template_goes_never_the_new_one() {
    let Some(_) = images_or_skip("template_budget") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let scheduler = airlock::Scheduler::start(airlock::Config {
        templates_dir: dir.path().to_path_buf(),
        restore_templates: true,
        overlay_pool_target: 0,
        templates_budget: Some(1),
        // What eviction spares is derived from these: keep it short.
        queue_timeout: Duration::from_secs(30),
        template_wait: Duration::from_secs(1),
        boot_timeout: Duration::from_secs(60),
        boot_attempts: 1,
        ..airlock::Config::default()
    })
    .await
    .expect("scheduler start");
    let small = |code: &str| {
        let mut request = request(Language::Raw, code);
        request.spec.shape.memory_mib = 256;
        request
    };
    let run_request = |request: RunRequest| {
        let scheduler = scheduler.clone();
        async move {
            let mut stages = Stages::default();
            let result = scheduler.run_observed(request, &mut stages).await.unwrap();
            assert_eq!(
                text(&result.stdout).trim(),
                "ok",
                "{}",
                text(&result.stderr)
            );
            stages.0.contains(&Stage::BuildingTemplate)
        }
    };
    assert!(
        run_request(small("echo ok")).await,
        "the 256 MiB template is built"
    );
    let store = scheduler.templates().expect("templates").store().clone();
    let listed = store.list();
    let [old] = &listed[..] else {
        panic!("one template: {listed:?}");
    };
    let old_key = old.key.clone();
    // Last used an hour ago.
    std::fs::File::options()
        .write(true)
        .open(old.dir.join(airlock::template::store::USES_FILE))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();

    assert!(
        run_request(request(Language::Raw, "echo ok")).await,
        "the 512 MiB template is built"
    );
    let keys: Vec<String> = store.list().into_iter().map(|e| e.key).collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_ne!(
        keys[0], old_key,
        "the old template went, the new one stayed"
    );
    assert!(!old.dir.exists());

    assert!(
        run_request(small("echo ok")).await,
        "the evicted shape's template is built again"
    );
    assert!(
        !run_request(request(Language::Raw, "echo ok")).await,
        "the template just looked up is spared: restored, not rebuilt"
    );
    scheduler.shutdown().await;
}
