//! Pinned packages end to end, on real VMs, against the real registries
//! (PyPI and npm, reached through gvproxy and the egress proxy): the first
//! run of a list installs it in an install VM whose only network is the
//! registries; the run's own code gets no network; a second run with the
//! same list attaches the stored layer and makes no connection (the egress
//! proxy's counters say so); bad specs are refused before any VM boots;
//! HTTPS to PyPI works behind this host's TLS inspection with the host's
//! CA bundle.
//!
//! Each test has its own layer store (a temp dir) and shares its layer
//! between its assertions.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock::packages::LayerStore;
use airlock::{
    Config, InputError, NetworkRequest, RunError, RunRequest, RunResult, Scheduler, Stage,
};
use airlock_gvproxy::DomainPattern;
use airlock_protocol::Language;
use airlock_tests::{images_or_skip, Stages};
use std::path::Path;

async fn scheduler(packages_dir: &Path) -> Scheduler {
    Scheduler::start(Config {
        packages_dir: packages_dir.to_path_buf(),
        overlay_pool_target: 0,
        ..Config::default()
    })
    .await
    .unwrap()
}

/// A scheduler that restores memory templates (kept in `templates_dir`).
async fn restoring_scheduler(packages_dir: &Path, templates_dir: &Path) -> Scheduler {
    Scheduler::start(Config {
        packages_dir: packages_dir.to_path_buf(),
        templates_dir: templates_dir.to_path_buf(),
        restore_templates: true,
        overlay_pool_target: 0,
        ..Config::default()
    })
    .await
    .unwrap()
}

fn allow(names: &[&str]) -> NetworkRequest {
    NetworkRequest {
        allow: Some(
            names
                .iter()
                .map(|n| n.parse::<DomainPattern>().unwrap())
                .collect(),
        ),
        ..NetworkRequest::default()
    }
}

/// Runs `request`, returning the result and the stages seen.
async fn run(scheduler: &Scheduler, request: RunRequest) -> (RunResult, Vec<Stage>) {
    let mut stages = Stages::default();
    let result = scheduler.run_observed(request, &mut stages).await;
    (result.unwrap(), stages.0)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Python: `six==1.16.0` installs through the proxy (the install VM's own
/// counters show its connections), the run's code imports it from the
/// layer and has no network itself; a second run with the same list
/// spelled differently finds the layer, installs nothing, and its egress
/// proxy (it asked for pypi.org) counts no connection; the layer is
/// read-only in the guest; the store lists it.
#[tokio::test(flavor = "multi_thread")]
async fn a_pip_layer_is_installed_once_through_the_proxy_then_attached_offline() {
    if images_or_skip("packages_pip").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scheduler = scheduler(dir.path()).await;

    // First run: the install.
    let mut first = RunRequest::new(
        Language::Python,
        "import six, socket\n\
         print(six.__version__, six.__file__)\n\
         try:\n    socket.create_connection(('pypi.org', 443), timeout=5)\n    print('online')\n\
         except OSError:\n    print('offline')\n",
    );
    first.spec.packages = vec!["six==1.16.0".into()];
    first.timeout = std::time::Duration::from_secs(60);
    let (result, stages) = run(&scheduler, first).await;
    assert_eq!(
        text(&result.stdout),
        "1.16.0 /opt/python/six.py\noffline\n",
        "stderr: {}",
        text(&result.stderr)
    );
    assert!(stages.contains(&Stage::InstallingPackages), "{stages:?}");
    assert!(result.network.is_none(), "the run itself has no network");
    let packages = result.packages.unwrap();
    assert!(!packages.cached);
    assert_eq!(packages.packages, ["six==1.16.0"]);
    assert_eq!(packages.installed, ["six==1.16.0"]);
    let install = packages.install.unwrap();
    assert_eq!(install.network.mode, "allowlist");
    assert!(
        install.network.allowed_connections >= 1,
        "the install went through the egress proxy: {:?}",
        install.network
    );
    assert_eq!(
        install.network.denied_connections, 0,
        "{:?}",
        install.network
    );

    // Second run: same list (other spelling), its own allowlist network so
    // that an egress proxy is there to count.
    let mut second = RunRequest::new(
        Language::Python,
        "import six\n\
         print(six.__version__)\n\
         try:\n    open('/opt/python/planted.py', 'w')\n    print('writable')\n\
         except OSError as e:\n    print('read-only', e.errno)\n",
    );
    second.spec.packages = vec!["Six==1.16.0".into()];
    second.spec.network = allow(&["pypi.org", "files.pythonhosted.org"]);
    second.timeout = std::time::Duration::from_secs(60);
    let (result, stages) = run(&scheduler, second).await;
    assert_eq!(
        text(&result.stdout),
        "1.16.0\nread-only 30\n",
        "stderr: {}",
        text(&result.stderr)
    );
    assert!(!stages.contains(&Stage::InstallingPackages), "{stages:?}");
    let packages = result.packages.unwrap();
    assert!(packages.cached);
    assert!(packages.install.is_none());
    let network = result.network.unwrap();
    assert_eq!(
        (network.connections, network.bytes_out, network.bytes_in),
        (0, 0, 0),
        "a cached run connects nowhere: {network:?}"
    );

    let listed = LayerStore::new(dir.path()).list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, packages.layer);
    scheduler.shutdown().await;

    // With templates: the first run without a network builds the template
    // over the layer (no install), the next restores it.
    let templates = tempfile::tempdir().unwrap();
    let scheduler = restoring_scheduler(dir.path(), templates.path()).await;
    let request = || {
        let mut r = RunRequest::new(Language::Python, "import six; print(six.__version__)");
        r.spec.packages = vec!["six==1.16.0".into()];
        r
    };
    let (built, stages) = run(&scheduler, request()).await;
    assert_eq!(
        text(&built.stdout),
        "1.16.0\n",
        "stderr: {}",
        text(&built.stderr)
    );
    assert!(stages.contains(&Stage::BuildingTemplate), "{stages:?}");
    assert!(!stages.contains(&Stage::InstallingPackages), "{stages:?}");
    let (restored, stages) = run(&scheduler, request()).await;
    assert_eq!(
        text(&restored.stdout),
        "1.16.0\n",
        "stderr: {}",
        text(&restored.stderr)
    );
    assert!(!stages.contains(&Stage::BuildingTemplate), "{stages:?}");
    assert!(
        restored.timings.restore.is_some(),
        "restored from the template over the layer: {:?}",
        restored.timings
    );
    // A run without packages does not take the layer's template.
    let (plain, _) = run(
        &scheduler,
        RunRequest::new(
            Language::Python,
            "import importlib.util as u; print(u.find_spec('six') is None)",
        ),
    )
    .await;
    assert_eq!(
        text(&plain.stdout),
        "True\n",
        "stderr: {}",
        text(&plain.stderr)
    );
    scheduler.shutdown().await;
}

/// JavaScript: `is-number@7.0.0` installs through the proxy and `require`
/// finds it; the second run attaches the layer without an install.
#[tokio::test(flavor = "multi_thread")]
async fn an_npm_layer_is_installed_once_and_required() {
    if images_or_skip("packages_npm").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scheduler = scheduler(dir.path()).await;
    let request = || {
        let mut r = RunRequest::new(
            Language::Javascript,
            "const isNumber = require('is-number');\n\
             console.log(isNumber(5), isNumber('x'), require.resolve('is-number'));",
        );
        r.spec.packages = vec!["is-number@7.0.0".into()];
        r.timeout = std::time::Duration::from_secs(60);
        r
    };
    let expected = "true false /opt/node/node_modules/is-number/index.js\n";
    let (first, _) = run(&scheduler, request()).await;
    assert_eq!(
        text(&first.stdout),
        expected,
        "stderr: {}",
        text(&first.stderr)
    );
    let packages = first.packages.unwrap();
    assert!(!packages.cached);
    assert_eq!(packages.installed, ["is-number@7.0.0"]);
    let install = packages.install.unwrap();
    assert!(
        install.network.allowed_connections >= 1,
        "{:?}",
        install.network
    );

    let (second, stages) = run(&scheduler, request()).await;
    assert_eq!(
        text(&second.stdout),
        expected,
        "stderr: {}",
        text(&second.stderr)
    );
    assert!(second.packages.unwrap().cached);
    assert!(!stages.contains(&Stage::InstallingPackages), "{stages:?}");
    scheduler.shutdown().await;
}

/// Unpinned, ranged, optioned and malformed specs fail with
/// `PackageSpec` before any stage starts: no install VM, no boot.
#[tokio::test(flavor = "multi_thread")]
async fn bad_specs_are_refused_before_any_vm_boots() {
    if images_or_skip("packages_refused").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scheduler = scheduler(dir.path()).await;
    for (language, spec) in [
        (Language::Python, "six"),
        (Language::Python, "six>=1.16"),
        (Language::Python, "--index-url=https://example.com/simple"),
        (Language::Python, "git+https://github.com/benjaminp/six"),
        (Language::Python, "-e ."),
        (Language::Javascript, "is-number"),
        (Language::Javascript, "is-number@^7.0.0"),
        (Language::Javascript, "is-number@latest"),
        (Language::Javascript, "Is_Number@7.0.0"),
        (Language::Raw, "jq==1.7"),
    ] {
        let mut request = RunRequest::new(language, "print(1)");
        request.spec.packages = vec![spec.into()];
        let mut stages = Stages::default();
        let err = scheduler
            .run_observed(request, &mut stages)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RunError::Input(InputError::PackageSpec { .. })),
            "{language} {spec}: {err}"
        );
        assert!(stages.0.is_empty(), "{spec}: {:?}", stages.0);
        assert!(err.hint().is_some());
    }
    assert!(LayerStore::new(dir.path()).list().is_empty());
    scheduler.shutdown().await;
}

/// HTTPS to PyPI from a guest whose allowlist holds pypi.org: on a host
/// behind a TLS-inspecting proxy the guest's own CA bundle fails, the
/// host's bundle (copied in at start) makes it work.
#[tokio::test(flavor = "multi_thread")]
async fn https_to_pypi_works_with_the_host_ca_bundle() {
    if images_or_skip("packages_ca").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scheduler = scheduler(dir.path()).await;
    let mut request = RunRequest::new(
        Language::Python,
        "import urllib.request\n\
         print(urllib.request.urlopen('https://pypi.org/simple/six/', timeout=20).status)",
    );
    request.spec.network = allow(&["pypi.org"]);
    request.timeout = std::time::Duration::from_secs(60);
    let (result, _) = run(&scheduler, request).await;
    assert_eq!(
        text(&result.stdout),
        "200\n",
        "stderr: {}",
        text(&result.stderr)
    );
    let network = result.network.unwrap();
    assert_eq!(network.allowed_connections, 1, "{network:?}");
    scheduler.shutdown().await;
}
