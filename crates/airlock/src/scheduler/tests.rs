//! The run and session paths over fake VM sources (`crate::testing`): no
//! QEMU, no host probe. What a fake VM does with code is in the testing
//! module's docs (`exit N`, `hang`, `die`, `env NAME`, else an echo).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use super::*;
use crate::error::SessionError;
use crate::network::NetworkRequest;
use crate::session::{CellRequest, SessionOptions};
use crate::testing::{test_config, FakeSetup};
use crate::CloseReason;
use airlock_protocol::Language;
use std::time::Duration;

/// Records stages and output.
#[derive(Default)]
struct Seen {
    stages: Vec<Stage>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exposed: usize,
    /// Results and output in the order they came: `out` for a chunk of
    /// stdout, else the result's `text/plain` or MIME types.
    order: Vec<String>,
}

impl RunObserver for Seen {
    fn stage(&mut self, stage: Stage) {
        self.stages.push(stage);
    }
    fn output(&mut self, stream: crate::vm::OutputStream, bytes: &[u8]) {
        if stream == crate::vm::OutputStream::Stdout {
            self.order.push("out".into());
        }
        match stream {
            crate::vm::OutputStream::Stdout => self.stdout.extend_from_slice(bytes),
            crate::vm::OutputStream::Stderr => self.stderr.extend_from_slice(bytes),
        }
    }
    fn exposed(&mut self, ports: &[crate::network::ExposedAddr]) {
        self.exposed = ports.len();
    }
    fn result(&mut self, result: &airlock_protocol::ExecResult) {
        let shown = match result.text() {
            Some(text) => text.to_owned(),
            None => result.mime_types().collect::<Vec<_>>().join(","),
        };
        self.order.push(shown);
    }
}

fn run(code: &str) -> RunRequest {
    RunRequest::new(Language::Python, code)
}

fn allowlist(language: Language) -> NetworkRequest {
    NetworkRequest::from_flags(language, true, &["example.com".into()], &[]).unwrap()
}

/// A PEM file the CA bundle check accepts.
fn pem_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("ca.pem");
    std::fs::write(
        &path,
        b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    path
}

#[tokio::test]
async fn a_run_echoes_its_code_streams_it_and_destroys_its_vm() {
    let fakes = FakeSetup::new();
    let mut seen = Seen::default();

    let result = fakes
        .scheduler
        .run_observed(run("print(42)"), &mut seen)
        .await
        .unwrap();

    assert_eq!(result.stdout, b"print(42)");
    assert_eq!(seen.stdout, b"print(42)");
    assert_eq!(result.exit_code, 0);
    assert!(result.vm_id.starts_with("cold-"), "{}", result.vm_id);
    assert_eq!(
        seen.stages,
        [Stage::Booting, Stage::Running, Stage::TearingDown]
    );
    assert_eq!(fakes.live(), 0);
    assert_eq!(result.timings.boot_attempts, 1);
}

#[tokio::test]
async fn a_runs_results_reach_its_observer_as_they_come_and_its_result() {
    let fakes = FakeSetup::new();
    let mut seen = Seen::default();

    let result = fakes
        .scheduler
        .run_observed(
            run("result image/png iVBORw0KGgo=\nshow 2\nraise ValueError bad"),
            &mut seen,
        )
        .await
        .unwrap();

    assert_eq!(seen.order, ["image/png", "2"]);
    assert_eq!(result.results.len(), 2);
    assert!(!result.results[0].is_main_result);
    assert_eq!(
        result.results[0].binary("image/png").unwrap().unwrap(),
        b"\x89PNG\r\n\x1a\n"
    );
    assert!(result.results[1].is_main_result);
    let error = result.error.as_ref().unwrap();
    assert_eq!(
        (error.name.as_str(), error.value.as_str()),
        ("ValueError", "bad")
    );
    assert_eq!(result.exit_code, 1);
    let json = serde_json::to_value(&result).unwrap();
    assert_eq!(json["results"][1]["data"]["text/plain"], "2");
    assert_eq!(json["results"][1]["is_main_result"], true);
    assert_eq!(json["error"]["name"], "ValueError");
}

#[tokio::test]
async fn a_run_without_results_has_no_results_in_its_json() {
    let fakes = FakeSetup::new();
    let result = fakes.scheduler.run(run("print(1)")).await.unwrap();
    assert!(result.results.is_empty() && result.error.is_none());
    let json = serde_json::to_value(&result).unwrap();
    assert!(json.get("results").is_none() && json.get("error").is_none());
}

#[tokio::test]
async fn a_cold_run_is_a_process_with_the_requests_timeout_and_env() {
    let fakes = FakeSetup::new();
    let mut request = run("env GREETING");
    request.env.insert("GREETING".into(), "hi".into());
    request.timeout = Duration::from_secs(7);

    let result = fakes.scheduler.run(request).await.unwrap();

    assert_eq!(result.stdout, b"hi");
    let exec = &fakes.cold.execs()[0];
    assert_eq!(exec.mode, ExecMode::Process);
    assert_eq!(exec.timeout_ms, 7000);
}

#[tokio::test]
async fn exit_codes_and_stderr_come_back_as_the_code_left_them() {
    let fakes = FakeSetup::new();
    let failed = fakes.scheduler.run(run("exit 3")).await.unwrap();
    assert_eq!(failed.exit_code, 3);
    let noisy = fakes.scheduler.run(run("stderr oops")).await.unwrap();
    assert_eq!(noisy.stderr, b"oops\n");
}

#[tokio::test(start_paused = true)]
async fn a_run_past_its_timeout_is_reported_timed_out_and_its_vm_destroyed() {
    let fakes = FakeSetup::new();
    let mut request = run("hang");
    request.timeout = Duration::from_secs(2);
    let result = fakes.scheduler.run(request).await.unwrap();
    assert!(result.timed_out);
    assert_eq!(fakes.live(), 0);
}

#[tokio::test]
async fn a_refused_request_starts_nothing() {
    let fakes = FakeSetup::new();
    let mut request = run("print(1)");
    request.spec.shape.memory_mib = 1;

    let err = fakes.scheduler.run(request).await.unwrap_err();

    assert!(
        matches!(
            err,
            RunError::Input(InputError::Invalid {
                field: "memory_mib",
                ..
            })
        ),
        "{err}"
    );
    assert!(fakes.cold.acquired().is_empty());
    assert!(fakes.packages.prepared().is_empty());
}

#[tokio::test]
async fn a_boot_error_is_the_runs_error_and_leaves_nothing() {
    let fakes = FakeSetup::new();
    fakes.cold.fail_next_boot(|| BootError::ShutDown);
    let err = fakes.scheduler.run(run("x")).await.unwrap_err();
    assert!(matches!(err, RunError::Boot(BootError::ShutDown)), "{err}");
    assert_eq!(fakes.live(), 0);
}

#[tokio::test]
async fn a_vm_that_dies_during_the_run_is_destroyed_and_the_error_returned() {
    let fakes = FakeSetup::new();
    let mut request = run("die");
    request.downloads = vec!["out.txt".into()];
    let err = fakes.scheduler.run(request).await.unwrap_err();
    assert!(
        matches!(err, RunError::Exec(ExecError::VmDied { .. })),
        "{err}"
    );
    assert_eq!(fakes.live(), 0);
}

#[tokio::test]
async fn uploads_land_before_the_code_and_downloads_are_read_each_on_its_own() {
    let fakes = FakeSetup::new();
    let mut request = run("x");
    request.uploads = vec![FileUpload::new("data/in.csv", b"a,b".to_vec())];
    request.downloads = vec!["data/in.csv".into(), "missing.txt".into()];

    let result = fakes.scheduler.run(request).await.unwrap();

    assert_eq!(result.downloads.len(), 2);
    assert_eq!(result.downloads[0].content.as_deref(), Some(&b"a,b"[..]));
    assert!(result.downloads[1].content.is_none());
    assert!(result.downloads[1].error.is_some());
}

#[tokio::test(start_paused = true)]
async fn uploads_that_stall_past_their_deadline_fail_the_run_and_destroy_its_vm() {
    let fakes = FakeSetup::new();
    let mut request = run("x");
    request.uploads = vec![
        FileUpload::new("first.txt", b"1".to_vec()),
        FileUpload::new("hang.bin", b"2".to_vec()),
    ];
    request.upload_timeout = Duration::from_secs(3);
    let started = tokio::time::Instant::now();

    let err = fakes.scheduler.run(request).await.unwrap_err();

    match &err {
        RunError::Exec(ExecError::UploadTimeout { files, timeout, .. }) => {
            assert_eq!((*files, *timeout), (2, Duration::from_secs(3)));
        }
        other => panic!("{other:?}"),
    }
    assert!(!err.to_string().is_empty());
    assert!(started.elapsed() >= Duration::from_secs(3));
    assert_eq!(fakes.live(), 0);
}

#[tokio::test]
async fn install_limits_reach_the_package_preparer_and_a_too_small_one_is_refused() {
    let fakes = FakeSetup::new();
    let mut request = run("import six");
    request.spec.packages = vec!["six==1.16.0".into()];
    request.spec.install = crate::spec::InstallLimits {
        memory_mib: 128,
        timeout: Duration::from_secs(5),
    };
    let err = fakes.scheduler.run(request.clone()).await.unwrap_err();
    assert!(
        matches!(err, RunError::Packages(PackageError::InstallRefused { .. })),
        "{err}"
    );
    assert_eq!(fakes.live(), 0, "nothing booted");
    request.spec.install.memory_mib = 300;
    fakes.scheduler.run(request).await.unwrap();
    assert_eq!(
        fakes.packages.installs(),
        [crate::spec::InstallLimits {
            memory_mib: 300,
            timeout: Duration::from_secs(5),
        }]
    );
}

#[tokio::test]
async fn packages_are_prepared_once_attached_read_only_and_reported() {
    let fakes = FakeSetup::new();
    let mut request = run("import six");
    request.spec.packages = vec!["six==1.16.0".into()];
    let mut first_seen = Seen::default();

    let first = fakes
        .scheduler
        .run_observed(request.clone(), &mut first_seen)
        .await
        .unwrap();
    let mut second_seen = Seen::default();
    let second = fakes
        .scheduler
        .run_observed(request, &mut second_seen)
        .await
        .unwrap();

    assert_eq!(first_seen.stages[0], Stage::InstallingPackages);
    assert!(!second_seen.stages.contains(&Stage::InstallingPackages));
    let report = first.packages.unwrap();
    assert_eq!(report.packages, ["six==1.16.0"]);
    assert!(!report.cached);
    assert!(second.packages.unwrap().cached);
    let disk = fakes.cold.acquired()[0].packages.clone().unwrap();
    assert!(!disk.writable);
    assert_eq!(disk.layer_key(), Some(report.layer.as_str()));
}

#[tokio::test]
async fn a_failed_package_preparation_starts_no_vm() {
    let fakes = FakeSetup::new();
    fakes.packages.fail_next(|| PackageError::Install {
        vm_id: None,
        packages: "six==1.16.0".into(),
        reason: "registry down".into(),
    });
    let mut request = run("x");
    request.spec.packages = vec!["six==1.16.0".into()];
    let err = fakes.scheduler.run(request).await.unwrap_err();
    assert!(
        matches!(err, RunError::Packages(PackageError::Install { .. })),
        "{err}"
    );
    assert!(fakes.cold.acquired().is_empty());
}

#[tokio::test]
async fn a_pooled_shape_comes_from_the_pool_as_a_one_shot_cell() {
    let shape = MachineShape::new(Language::Python);
    let fakes = FakeSetup::with(test_config(), &[shape]);
    let result = fakes.scheduler.run(run("x")).await.unwrap();
    assert!(result.vm_id.starts_with("pool-"), "{}", result.vm_id);
    let mut other = run("x");
    other.spec.shape.memory_mib = 1024;
    let cold = fakes.scheduler.run(other).await.unwrap();
    assert!(cold.vm_id.starts_with("cold-"), "{}", cold.vm_id);
}

#[tokio::test]
async fn with_templates_on_a_run_restores_and_a_networked_one_boots_cold() {
    let config = Config {
        restore_templates: true,
        ..test_config()
    };
    let fakes = FakeSetup::with(config, &[]);
    let restored = fakes.scheduler.run(run("x")).await.unwrap();
    assert!(
        restored.vm_id.starts_with("template-"),
        "{}",
        restored.vm_id
    );
    let mut networked = run("x");
    networked.spec.network = allowlist(Language::Python);
    let cold = fakes.scheduler.run(networked).await.unwrap();
    assert!(cold.vm_id.starts_with("cold-"), "{}", cold.vm_id);
}

#[tokio::test]
async fn exposed_ports_reach_the_observer() {
    let fakes = FakeSetup::new();
    let mut request = run("x");
    request.spec.network =
        NetworkRequest::from_flags(Language::Python, false, &[], &["8080:18080".into()]).unwrap();
    let mut seen = Seen::default();
    fakes
        .scheduler
        .run_observed(request, &mut seen)
        .await
        .unwrap();
    assert_eq!(seen.exposed, 1);
}

#[tokio::test]
async fn an_allowlist_network_gets_the_ca_bundle_and_its_variables() {
    let dir = tempfile::tempdir().unwrap();
    let fakes = FakeSetup::new();
    let mut request = run("env SSL_CERT_FILE");
    request.spec.network = allowlist(Language::Python);
    request.spec.ca_bundle = Some(CaBundle::File(pem_file(&dir)));
    request.downloads = vec![GUEST_CA_FILE.into()];

    let result = fakes.scheduler.run(request).await.unwrap();

    assert!(
        String::from_utf8_lossy(&result.stdout).ends_with(GUEST_CA_FILE),
        "{:?}",
        result.stdout
    );
    assert!(
        result.downloads[0].content.is_some(),
        "the bundle was copied in"
    );
}

fn secret(name: &str, value: &str, host: &str) -> crate::spec::Secret {
    crate::spec::Secret {
        name: name.into(),
        value: crate::spec::SecretValue::new(value.as_bytes().to_vec()),
        hosts: vec![crate::spec::HostPattern::parse(name, host).unwrap()],
        body: false,
    }
}

#[tokio::test]
async fn a_secret_reaches_the_guest_only_as_a_placeholder_with_airlocks_ca_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let fakes = FakeSetup::with(
        Config {
            secrets_ca_dir: dir.path().join("ca"),
            ..crate::testing::test_config()
        },
        &[],
    );
    let mut request = run("env API_TOKEN");
    request.spec.secrets = vec![secret("API_TOKEN", "sk-real-value", "api.example.com")];
    request.downloads = vec![GUEST_CA_FILE.into()];

    let result = fakes.scheduler.run(request).await.unwrap();

    let seen = String::from_utf8_lossy(&result.stdout).into_owned();
    assert!(seen.starts_with("airlock-secret-"), "{seen:?}");
    assert_eq!(seen.len(), airlock_egress::secret::PLACEHOLDER_LEN);
    let bundle = result.downloads[0]
        .content
        .clone()
        .expect("bundle copied in");
    let ca = std::fs::read_to_string(dir.path().join("ca").join(airlock_egress::ca::CA_FILE_NAME))
        .unwrap();
    let bundle = String::from_utf8(bundle).unwrap();
    assert!(bundle.contains("-----BEGIN CERTIFICATE-----"));
    assert!(
        ca.contains(bundle.trim()),
        "the guest gets Airlock's CA certificate"
    );
    assert!(!bundle.contains("PRIVATE KEY"), "never the key");
    // The secret's host, and only it, was allowed; the VM's options carry
    // the same placeholder its proxy substitutes.
    let options = &fakes.cold.acquired()[0];
    let allow = options.network.allow.as_ref().expect("an allowlist");
    assert_eq!(allow.len(), 1);
    assert!(allow[0].matches("api.example.com"));
    let secrets = options.secrets.as_ref().expect("secrets for the proxy");
    assert_eq!(secrets.guest_env()["API_TOKEN"], seen);
    assert!(!format!("{options:?}").contains("sk-real-value"));
}

#[tokio::test]
async fn placeholders_are_new_for_every_vm() {
    let dir = tempfile::tempdir().unwrap();
    let fakes = FakeSetup::with(
        Config {
            secrets_ca_dir: dir.path().join("ca"),
            ..crate::testing::test_config()
        },
        &[],
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        let mut request = run("env K");
        request.spec.secrets = vec![secret("K", "v", "api.example.com")];
        seen.push(fakes.scheduler.run(request).await.unwrap().stdout);
    }
    assert_ne!(seen[0], seen[1]);
}

#[tokio::test]
async fn without_an_allowlist_network_no_bundle_is_copied() {
    let fakes = FakeSetup::new();
    let result = fakes.scheduler.run(run("env SSL_CERT_FILE")).await.unwrap();
    assert!(result.stdout.is_empty());
}

#[tokio::test]
async fn a_bad_ca_bundle_fails_the_run_and_destroys_the_vm_it_started() {
    let fakes = FakeSetup::new();
    let mut request = run("x");
    request.spec.network = allowlist(Language::Python);
    request.spec.ca_bundle = Some(CaBundle::File("/nonexistent/ca.pem".into()));

    let err = fakes.scheduler.run(request).await.unwrap_err();

    assert!(
        matches!(
            err,
            RunError::Input(InputError::Invalid {
                field: "ca_bundle",
                ..
            })
        ),
        "{err}"
    );
    assert_eq!(fakes.cold.acquired().len(), 1);
    assert_eq!(fakes.live(), 0);
}

#[tokio::test]
async fn a_scheduler_from_parts_has_no_manager_templates_or_pools() {
    let fakes = FakeSetup::new();
    assert!(fakes.scheduler.manager().is_none());
    assert!(fakes.scheduler.templates().is_none());
    assert!(fakes.scheduler.pools().is_empty());
    fakes.scheduler.shutdown().await;
}

// Sessions.

async fn session(fakes: &FakeSetup, tweak: impl FnOnce(&mut SessionOptions)) -> crate::Session {
    let mut options = SessionOptions::new(Language::Python);
    tweak(&mut options);
    fakes.scheduler.session(options).await.unwrap()
}

#[tokio::test]
async fn a_session_warms_its_interpreter_and_runs_cells_in_one_vm() {
    let fakes = FakeSetup::new();
    let session = session(&fakes, |_| {}).await;
    assert_eq!(fakes.cold.warmed(), 1);

    let mut seen = Seen::default();
    let first = session
        .exec(CellRequest::new("a = 1"), &mut seen)
        .await
        .unwrap();
    let second = session
        .exec(CellRequest::new("exit 1"), &mut seen)
        .await
        .unwrap();

    assert_eq!(first.stdout, b"a = 1");
    assert_eq!(second.exit_code, 1);
    assert_eq!(fakes.cold.acquired().len(), 1);
    assert!(fakes.cold.execs().iter().all(|e| e.mode == ExecMode::Cell));
    assert!(session.id().starts_with("s-cold-"), "{}", session.id());
}

#[tokio::test]
async fn a_clusters_node_name_is_carried_by_every_session_id() {
    let config = Config {
        node_name: Some("node-2".into()),
        ..test_config()
    };
    let fakes = FakeSetup::with(config, &[]);
    let session = session(&fakes, |_| {}).await;
    assert!(
        session.id().starts_with("s-node-2-cold-"),
        "{}",
        session.id()
    );
}

#[tokio::test]
async fn a_sessions_spec_and_lifetime_reach_its_vm() {
    let fakes = FakeSetup::new();
    let session = session(&fakes, |o| {
        o.spec.tenant = "team".into();
        o.spec.shape.vcpus = 2;
        o.spec.packages = vec!["six==1.16.0".into()];
    })
    .await;
    let options = &fakes.cold.acquired()[0];
    assert_eq!((options.tenant.as_str(), options.vcpus), ("team", 2));
    assert!(options.packages.is_some());
    assert_eq!(session.tenant(), "team");
}

#[tokio::test]
async fn a_second_call_while_one_runs_is_refused_busy_and_a_cancel_ends_the_first() {
    let fakes = FakeSetup::new();
    let session = std::sync::Arc::new(session(&fakes, |_| {}).await);
    let running = {
        let session = std::sync::Arc::clone(&session);
        tokio::spawn(async move { session.exec(CellRequest::new("hang"), &mut Discard).await })
    };
    while fakes.cold.execs().is_empty() {
        tokio::task::yield_now().await;
    }

    let busy = session.write_file("a.txt", b"x").await;
    session.canceller().cancel();
    let interrupted = running.await.unwrap().unwrap();

    assert!(matches!(busy, Err(SessionError::Busy { .. })), "{busy:?}");
    assert_eq!(interrupted.exit_code, 130);
    assert!(!interrupted.state_lost);
}

#[tokio::test]
async fn files_written_into_a_session_are_read_and_listed_back() {
    let fakes = FakeSetup::new();
    let session = session(&fakes, |_| {}).await;
    let info = session.write_file("dir/a.txt", b"abc").await.unwrap();
    let (bytes, read) = session.read_file("dir/a.txt").await.unwrap();
    let listed = session.list_files("dir").await.unwrap();
    assert_eq!(bytes, b"abc");
    assert_eq!(info, read);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "a.txt");
    let missing = session.read_file("nope.txt").await.unwrap_err();
    assert!(
        matches!(
            missing,
            SessionError::Exec(ExecError::File { action: "read", .. })
        ),
        "{missing}"
    );
    let refused = session.read_file("../etc/passwd").await.unwrap_err();
    assert!(
        matches!(refused, SessionError::Input(InputError::Invalid { .. })),
        "{refused}"
    );
}

#[tokio::test]
async fn a_cells_results_stream_in_order_with_its_output() {
    let fakes = FakeSetup::new();
    let session = session(&fakes, |_| {}).await;
    let mut seen = Seen::default();

    let cell = session
        .exec(
            CellRequest::new("show 41\nresult text/html <b>x</b>"),
            &mut seen,
        )
        .await
        .unwrap();

    assert_eq!(seen.order, ["41", "text/html"]);
    assert_eq!(cell.results.len(), 2);
    assert_eq!(cell.results[0].text(), Some("41"));
    assert!(cell.results[0].is_main_result);
    assert_eq!(cell.results[1].data["text/html"], "<b>x</b>");
    assert!(cell.error.is_none());
    let raised = session
        .exec(
            CellRequest::new("raise ZeroDivisionError division by zero"),
            &mut seen,
        )
        .await
        .unwrap();
    assert_eq!(raised.exit_code, 1);
    assert_eq!(raised.error.unwrap().name, "ZeroDivisionError");
    assert!(String::from_utf8_lossy(&raised.stderr).contains("division by zero"));
    session.close().await;
}

#[tokio::test]
async fn a_closed_session_refuses_calls_and_its_vm_is_gone() {
    let fakes = FakeSetup::new();
    let session = session(&fakes, |_| {}).await;
    let report = session.close().await;
    assert!(report.workdir_removed);
    let again = session.close().await;
    assert!(!again.workdir_removed, "the second close finds nothing");
    let err = session
        .exec(CellRequest::new("x"), &mut Discard)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::Closed {
                reason: CloseReason::Closed,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(fakes.live(), 0);
}

#[tokio::test]
async fn a_vm_that_dies_closes_its_session() {
    let fakes = FakeSetup::new();
    let session = session(&fakes, |_| {}).await;
    let err = session
        .exec(CellRequest::new("die"), &mut Discard)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SessionError::Exec(ExecError::VmDied { .. })),
        "{err}"
    );
    assert_eq!(session.close_reason(), Some(CloseReason::VmDied));
    assert_eq!(fakes.live(), 0);
}

#[tokio::test]
async fn a_cell_that_loses_the_interpreter_says_so_and_the_session_goes_on() {
    let fakes = FakeSetup::new();
    let session = session(&fakes, |_| {}).await;
    let lost = session
        .exec(CellRequest::new("lose-state"), &mut Discard)
        .await
        .unwrap();
    assert!(lost.state_lost);
    assert!(!session.is_closed());
}

#[tokio::test(start_paused = true)]
async fn an_idle_session_is_closed_by_its_watchdog() {
    let fakes = FakeSetup::new();
    let session = session(&fakes, |o| o.idle_timeout = Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(session.close_reason(), Some(CloseReason::IdleTimeout));
    assert_eq!(fakes.live(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_session_past_its_lifetime_is_cut_mid_call() {
    let fakes = FakeSetup::new();
    let session = session(&fakes, |o| o.max_lifetime = Duration::from_secs(5)).await;
    let mut cell = CellRequest::new("hang");
    cell.timeout = Duration::from_secs(60);
    let err = session.exec(cell, &mut Discard).await.unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::Closed {
                reason: CloseReason::MaxLifetime,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn installs_need_a_network_and_run_in_the_session_with_one() {
    let fakes = FakeSetup::new();
    let offline = session(&fakes, |_| {}).await;
    let err = offline
        .install_packages(&["six==1.16.0".into()])
        .await
        .unwrap_err();
    assert!(
        matches!(err, SessionError::Packages(PackageError::Install { .. })),
        "{err}"
    );
    let online = session(&fakes, |o| o.spec.network = allowlist(Language::Python)).await;
    let installed = online
        .install_packages(&["six==1.16.0".into()])
        .await
        .unwrap();
    assert_eq!(installed.exit_code, 0);
    assert_eq!(fakes.cold.installs(), [vec!["six==1.16.0".to_owned()]]);
}

#[tokio::test]
async fn a_session_that_cannot_start_leaves_nothing() {
    let fakes = FakeSetup::new();
    fakes.cold.fail_next_boot(|| BootError::ShutDown);
    let err = fakes
        .scheduler
        .session(SessionOptions::new(Language::Raw))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SessionError::Boot(BootError::ShutDown)),
        "{err}"
    );
    let mut bad = SessionOptions::new(Language::Raw);
    bad.max_lifetime = Duration::ZERO;
    assert!(fakes.scheduler.session(bad).await.is_err());
    assert_eq!(fakes.cold.acquired().len(), 0);
}

#[test]
fn restored_runs_are_cells_of_the_warm_interpreter_and_cold_ones_processes() {
    let restored = BootTimings {
        restore: Some(Default::default()),
        ..BootTimings::default()
    };
    let pooled = BootTimings {
        from_warm_pool: true,
        ..BootTimings::default()
    };
    // Every language's template holds its interpreter, Node included.
    for language in Language::ALL {
        let image = Image::of_language(language);
        assert_eq!(one_shot_mode(&restored, image), ExecMode::OneShot);
        assert_eq!(
            one_shot_mode(&BootTimings::default(), image),
            ExecMode::Process
        );
        assert_eq!(one_shot_mode(&pooled, image), ExecMode::OneShot);
    }
}

#[test]
fn a_python_data_run_is_always_a_cell_so_that_it_returns_results() {
    for boot in [
        BootTimings::default(),
        BootTimings {
            restore: Some(Default::default()),
            ..BootTimings::default()
        },
    ] {
        assert_eq!(one_shot_mode(&boot, Image::PythonData), ExecMode::OneShot);
    }
}

#[tokio::test]
async fn a_cold_python_data_run_warms_its_interpreter_before_the_code() {
    let fakes = FakeSetup::new();
    let mut request = run("show 2");
    request.spec.shape = request.spec.shape.with_image(Image::PythonData);

    let result = fakes.scheduler.run(request).await.unwrap();

    assert_eq!(result.results[0].text(), Some("2"));
    let execs = fakes.cold.execs();
    assert_eq!(execs.last().unwrap().mode, ExecMode::OneShot);
    assert_eq!(fakes.cold.warmed(), 1, "the interpreter started first");
}
