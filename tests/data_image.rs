//! The `python-data` image and the shell tools, booted with a plain QEMU
//! command (no orchestrator): the data stack imports, the cell driver has
//! numpy, pandas and matplotlib imported when it is ready, a chart drawn
//! with the Agg backend is a PNG of the figure's size, and every disk has
//! the shell tools (`free` in the raw image).
//!
//! Skipped (or failed under `AIRLOCK_REQUIRE_VM_TESTS=1`) when the images
//! dir has no `python-data` disk.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock::Image;
use airlock_protocol::client::ExecOutput;
use airlock_protocol::Language;
use airlock_qemu::NetworkAttachment;
use airlock_tests::{boot_plain, host_caps, images_or_skip, text, PlainVm};
use std::time::Duration;

/// Runs `code` in `vm` as a process (the agent's timeout 120 s).
async fn exec(vm: &PlainVm, language: Language, code: &str) -> ExecOutput {
    vm.exec(
        language,
        code,
        Duration::from_secs(120),
        Duration::from_secs(150),
    )
    .await
}

/// The shell tools of every disk, each asked for its version.
const SHELL_TOOLS: &str = "set -e; free -m >/dev/null; ps -o pid= -p $$ >/dev/null; \
    for t in find grep sed gawk tar gzip xz unzip file jq less git curl; do \
    command -v $t >/dev/null || { echo missing $t; exit 1; }; done; \
    test -s /etc/ssl/certs/ca-certificates.crt; echo tools-ok";

#[tokio::test(flavor = "multi_thread")]
async fn the_data_image_imports_its_stack_and_draws_with_agg() {
    let Some(mut images) = images_or_skip("data_image") else {
        return;
    };
    let Ok(disk) = images.disk(Image::PythonData).map(|d| d.path.clone()) else {
        eprintln!("SKIP data_image: no python-data disk (cargo xtask images builds it)");
        return;
    };
    // boot_plain boots a language's disk: make python's the data disk.
    images.rootfs.insert(Language::Python, disk);
    let caps = host_caps(&images).await;
    let vm = boot_plain(
        &images,
        &caps,
        Language::Python,
        NetworkAttachment::None,
        |_| Vec::new(),
    )
    .await;

    let tools = exec(&vm, Language::Raw, SHELL_TOOLS).await;
    assert_eq!(text(&tools.stdout), "tools-ok\n", "{}", text(&tools.stderr));
    let setid = exec(&vm, Language::Raw, "find / -xdev -perm /6000").await;
    assert_eq!(text(&setid.stdout), "", "set-id files in python-data");

    let imports = exec(
        &vm,
        Language::Python,
        "import numpy, pandas, matplotlib, scipy, sklearn, PIL, seaborn, sympy, statsmodels, \
         openpyxl, xlsxwriter, networkx, bs4, lxml, tabulate\n\
         import matplotlib.pyplot as plt\n\
         print(matplotlib.get_backend(), pandas.__version__.split('.')[0])",
    )
    .await;
    assert_eq!(
        (imports.completion.exit_code, text(&imports.stdout)),
        (0, "agg 1\n".to_owned()),
        "{}",
        text(&imports.stderr)
    );

    // A figure saved with the Agg backend is a PNG of its size in pixels.
    let chart = exec(
        &vm,
        Language::Python,
        "import io, struct, pandas as pd, matplotlib.pyplot as plt\n\
         df = pd.DataFrame({'x': range(1000)}); df['y'] = df.x ** 0.5\n\
         ax = df.plot(x='x', y='y'); buf = io.BytesIO(); ax.figure.savefig(buf, format='png')\n\
         png = buf.getvalue(); print(png[:8] == b'\\x89PNG\\r\\n\\x1a\\n', struct.unpack('>II', png[16:24]))",
    )
    .await;
    assert_eq!(
        text(&chart.stdout),
        "True (640, 480)\n",
        "{}",
        text(&chart.stderr)
    );

    // The cell driver reads the image's preload list: ready with the stack
    // imported (a template saved then holds it).
    vm.client
        .warm_repl(Language::Python, Duration::from_secs(120))
        .await
        .unwrap();
    let ps = exec(
        &vm,
        Language::Raw,
        "cat /etc/airlock/python-preload; \
         for p in /proc/[0-9]*; do grep -l -s 'pandas' $p/maps; done | wc -l",
    )
    .await;
    let out = text(&ps.stdout);
    assert!(
        out.starts_with("numpy\npandas\nmatplotlib\nmatplotlib.pyplot\n"),
        "{out}"
    );
    let mapped: u32 = out.lines().last().unwrap().trim().parse().unwrap();
    assert!(mapped >= 1, "no process has pandas mapped: {out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_raw_image_has_the_shell_tools() {
    let Some(images) = images_or_skip("data_image_raw") else {
        return;
    };
    let caps = host_caps(&images).await;
    let vm = boot_plain(
        &images,
        &caps,
        Language::Raw,
        NetworkAttachment::None,
        |_| Vec::new(),
    )
    .await;
    let tools = exec(&vm, Language::Raw, SHELL_TOOLS).await;
    assert_eq!(text(&tools.stdout), "tools-ok\n", "{}", text(&tools.stderr));
}
