//! The `airlock` command end to end: output, exit statuses, JSON, bad
//! input and missing dependencies, on real VMs (TCG here).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock_tests::{data_images_or_skip, images_or_skip};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn airlock(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    airlock_tests::run_with_stdin(
        env!("CARGO_BIN_EXE_airlock-under-test"),
        args,
        env,
        stdin,
        None,
    )
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn run_prints_42_and_exits_0() {
    if images_or_skip("cli_42").is_none() {
        return;
    }
    let o = airlock(&["run", "print(6*7)"], &[], "");
    assert_eq!(out(&o), "42\n", "stderr: {}", err(&o));
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn the_codes_exit_status_passes_through_and_stdin_is_code() {
    if images_or_skip("cli_exit").is_none() {
        return;
    }
    let o = airlock(&["run", "-q", "-l", "raw"], &[], "echo from-stdin; exit 7");
    assert_eq!(out(&o), "from-stdin\n", "stderr: {}", err(&o));
    assert_eq!(o.status.code(), Some(7));
    assert!(
        err(&o).is_empty(),
        "-q prints nothing of its own: {}",
        err(&o)
    );
}

#[test]
fn a_timeout_exits_124_and_keeps_partial_output() {
    if images_or_skip("cli_timeout").is_none() {
        return;
    }
    let o = airlock(
        &[
            "run",
            "-l",
            "raw",
            "-t",
            "1",
            "echo start; sleep 30; echo never",
        ],
        &[],
        "",
    );
    assert_eq!(o.status.code(), Some(124), "stderr: {}", err(&o));
    assert_eq!(out(&o), "start\n");
}

#[test]
fn json_output_holds_the_whole_result() {
    if images_or_skip("cli_json").is_none() {
        return;
    }
    let o = airlock(
        &[
            "run",
            "--json",
            "-l",
            "javascript",
            "-e",
            "N=5",
            "console.log(process.env.N * 2)",
        ],
        &[],
        "",
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", err(&o));
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["stdout"], "10\n");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["timed_out"], false);
    for field in [
        "validate_ms",
        "overlay_ms",
        "spawn_ms",
        "guest_ready_ms",
        "exec_ms",
        "teardown_ms",
        "total_ms",
    ] {
        assert!(v["timings"][field].is_u64(), "{field} in {v}");
    }
    assert!(v["usage"].is_object(), "{v}");
}

#[test]
fn bad_input_exits_125_at_once_with_the_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&["run", "-l", "cobol", "x"], "unknown language"),
        (&["run", "-m", "8", "print(1)"], "memory_mib"),
        (&["run", "-e", "NOPE", "print(1)"], "KEY=VALUE"),
        (&["run", "-t", "-1", "print(1)"], "timeout"),
    ];
    for (args, needle) in cases {
        let start = Instant::now();
        let o = airlock(args, &[], "");
        assert_eq!(o.status.code(), Some(125), "{args:?}: {}", err(&o));
        assert!(err(&o).contains(needle), "{args:?}: {}", err(&o));
        assert!(err(&o).contains("hint:"), "{args:?}: {}", err(&o));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{args:?} must not boot anything"
        );
    }
}

#[test]
fn a_missing_qemu_names_the_fix() {
    if images_or_skip("cli_missing_qemu").is_none() {
        return;
    }
    let o = airlock(
        &["run", "print(1)"],
        &[("AIRLOCK_QEMU", "/nonexistent/qemu-system-x86_64")],
        "",
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(
        err(&o).contains("qemu-system-x86") || err(&o).contains("AIRLOCK_QEMU"),
        "{}",
        err(&o)
    );
}

#[test]
fn a_missing_kernel_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = serde_json::json!({"format": 1, "artefacts": {
        "kernel": {"file": "kernel-0000000000000000.bzImage", "hash": "00"},
    }});
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    let o = airlock(
        &["run", "print(1)"],
        &[("AIRLOCK_IMAGES", dir.path().to_str().unwrap())],
        "",
    );
    assert_eq!(o.status.code(), Some(125));
    assert!(err(&o).contains("cargo xtask images"), "{}", err(&o));
}

#[test]
fn doctor_reports_the_accelerator_and_limits() {
    if images_or_skip("cli_doctor").is_none() {
        return;
    }
    let o = airlock(&["doctor"], &[], "");
    let report = out(&o);
    assert_eq!(o.status.code(), Some(0), "{report}{}", err(&o));
    for line in ["accelerator", "qemu", "images", "limits", "gvproxy"] {
        assert!(report.contains(line), "{line} missing in:\n{report}");
    }
}

#[test]
fn ctrl_c_stops_the_vm_and_leaves_nothing_behind() {
    if images_or_skip("cli_ctrl_c").is_none() {
        return;
    }
    use std::io::{BufRead, BufReader};
    let run_dir = tempfile::Builder::new()
        .prefix("al-int")
        .tempdir_in("/tmp")
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_airlock-under-test"))
        .args(["run", "-l", "raw", "echo started; sleep 60"])
        .env("AIRLOCK_RUN_DIR", run_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first, "started\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::SIGINT,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", err(&o));
    let vms = run_dir.path().join("vms");
    let left: Vec<_> = std::fs::read_dir(&vms)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "work dirs left: {left:?}");
    assert!(airlock_tests::qemu_processes_mentioning(run_dir.path().to_str().unwrap()).is_empty());
}

/// Whether `bytes` is a whole PNG: the signature, then chunks (length,
/// type, data, CRC) up to `IEND` at the very end; returns the `IHDR` size.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    if bytes.get(..8)? != b"\x89PNG\r\n\x1a\n" || bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let size = (word(16)?, word(20)?);
    let mut at = 8;
    loop {
        let length = usize::try_from(word(at)?).ok()?;
        let kind = bytes.get(at + 4..at + 8)?;
        at = at.checked_add(12 + length)?;
        if kind == b"IEND" {
            return (at == bytes.len()).then_some(size);
        }
    }
}

#[test]
fn a_data_run_prints_the_frame_and_saves_the_chart_as_a_png() {
    let Some(images) = data_images_or_skip("cli_data") else {
        return;
    };
    // Templates in a dir of this test's own (the images are the shared ones).
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let images_dir = images.dir.to_str().unwrap();
    // The driver's warm-up (two charts before `ready`, then gc.freeze())
    // leaves no figure open: the user's first one is number 1.
    let code = "import gc\n\
                import pandas as pd\n\
                import matplotlib.pyplot as plt\n\
                df = pd.DataFrame({'x': [1, 2, 3], 'y': [4, 5, 6]})\n\
                print('drawn', plt.get_fignums(), gc.get_freeze_count() > 0)\n\
                plt.plot(df.x, df.y)\n\
                print(plt.gcf().number)\n\
                plt.show()\n\
                df.head()\n";
    let o = airlock_tests::run_with_stdin(
        env!("CARGO_BIN_EXE_airlock-under-test"),
        &["run", "--image", "python-data", "-t", "120", code],
        &[
            ("AIRLOCK_CACHE_DIR", cache.path().to_str().unwrap()),
            ("AIRLOCK_IMAGES", images_dir),
        ],
        "",
        Some(work.path()),
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", err(&o));
    assert_eq!(
        out(&o),
        "drawn [] True\n1\n   x  y\n0  1  4\n1  2  5\n2  3  6\n",
        "the output, then the value of the last line; stderr: {}",
        err(&o)
    );
    let png = std::fs::read(work.path().join("airlock-output/1.png")).unwrap();
    assert_eq!(png_size(&png), Some((640, 480)), "a whole 640x480 PNG");
    let line = err(&o)
        .lines()
        .find(|l| l.starts_with("image/png "))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no line names the PNG: {}", err(&o)));
    assert!(
        line.starts_with("image/png 640x480 ") && line.ends_with(" -> airlock-output/1.png"),
        "{line}"
    );

    // A second run into the same dir, quiet: the next number, no line.
    let o = airlock_tests::run_with_stdin(
        env!("CARGO_BIN_EXE_airlock-under-test"),
        &[
            "run",
            "--image",
            "python-data",
            "-q",
            "-t",
            "120",
            "--output-dir",
            "airlock-output",
            "import matplotlib.pyplot as plt; plt.plot([1, 2, 3]);",
        ],
        &[
            ("AIRLOCK_CACHE_DIR", cache.path().to_str().unwrap()),
            ("AIRLOCK_IMAGES", images_dir),
        ],
        "",
        Some(work.path()),
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", err(&o));
    assert_eq!(out(&o), "", "a figure left open is saved, not printed");
    assert!(!err(&o).contains("image/png"), "-q: {}", err(&o));
    let second = std::fs::read(work.path().join("airlock-output/2.png")).unwrap();
    assert_eq!(png_size(&second), Some((640, 480)));
    assert_eq!(
        std::fs::read(work.path().join("airlock-output/1.png")).unwrap(),
        png,
        "the first chart is kept"
    );
}

/// Three figures left open by a one-shot run, and each one's savefig PNG
/// printed (base64, one a line): an opaque chart (sent raw as RGB, the
/// host writes the PNG), one with a transparent face (raw RGBA), and one
/// of 1600x1200 px, past the raw limit (the guest writes the PNG itself).
const THREE_FIGURES: &str = "import base64, io\n\
import matplotlib.pyplot as plt\n\
f1 = plt.figure(); plt.plot([1, 3, 2]); plt.title('opaque')\n\
f2 = plt.figure(facecolor=(1, 1, 1, 0)); plt.plot([1, 3, 2])\n\
f3 = plt.figure(figsize=(16, 12)); plt.plot([1, 3, 2])\n\
for f in (f1, f2, f3):\n    \
    buf = io.BytesIO(); f.savefig(buf, format='png'); print(base64.b64encode(buf.getvalue()).decode())\n";

/// A PNG's size and pixels as 8-bit RGBA.
fn rgba_of_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let rgba = match info.color_type {
        png::ColorType::Rgba => buf,
        png::ColorType::Rgb => buf
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect(),
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    (info.width, info.height, rgba)
}

#[test]
fn figures_come_back_as_pngs_of_savefigs_pixels_opaque_translucent_or_large() {
    use base64::Engine as _;
    let Some(images) = data_images_or_skip("cli_figures") else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let o = airlock_tests::run_with_stdin(
        env!("CARGO_BIN_EXE_airlock-under-test"),
        &[
            "run",
            "--json",
            "--image",
            "python-data",
            "-t",
            "120",
            THREE_FIGURES,
        ],
        &[
            ("AIRLOCK_CACHE_DIR", cache.path().to_str().unwrap()),
            ("AIRLOCK_IMAGES", images.dir.to_str().unwrap()),
        ],
        "",
        Some(work.path()),
    );
    assert_eq!(o.status.code(), Some(0), "stderr: {}", err(&o));
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    let stdout = v["stdout"].as_str().unwrap();
    let wanted: Vec<&str> = stdout.lines().collect();
    let results = v["results"].as_array().unwrap();
    assert_eq!((wanted.len(), results.len()), (3, 3), "{stdout}");
    let b64 = base64::engine::general_purpose::STANDARD;
    for (i, ((want, result), size)) in wanted
        .iter()
        .zip(results)
        .zip([(640, 480), (640, 480), (1600, 1200)])
        .enumerate()
    {
        let keys: Vec<&String> = result["data"].as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["image/png", "text/plain"],
            "figure {i}: only image/png reaches a front end"
        );
        let got = b64
            .decode(result["data"]["image/png"].as_str().unwrap())
            .unwrap();
        let (w, h, got) = rgba_of_png(&got);
        let (ww, wh, want) = rgba_of_png(&b64.decode(want).unwrap());
        assert_eq!(((w, h), (ww, wh)), (size, size), "figure {i}");
        assert!(got == want, "figure {i}: the pixels differ from savefig's");
        if i == 1 {
            assert!(
                got.chunks_exact(4).any(|p| p[3] != 255),
                "the face is transparent"
            );
        }
    }
    assert!(
        !v["stderr"].as_str().unwrap_or("").contains("[airlock:"),
        "{v}"
    );
}

/// Python that builds a whole 640x480 grayscale PNG with the standard
/// library and displays it as a raw bundle, then leaves a value.
const PNG_BY_HAND: &str = "import base64, struct, zlib\n\
def chunk(kind, data):\n    \
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))\n\
rows = b''.join(b'\\x00' + bytes(640) for _ in range(480))\n\
png = (b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 640, 480, 8, 0, 0, 0, 0))\n    \
    + chunk(b'IDAT', zlib.compress(rows)) + chunk(b'IEND', b''))\n\
print('made')\n\
display({'image/png': base64.b64encode(png).decode(), 'text/plain': '<png>'}, raw=True)\n\
6 * 7\n";

#[test]
fn a_displayed_png_is_saved_and_named_and_the_last_value_printed() {
    let Some(images) = images_or_skip("cli_results") else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let env = [
        ("AIRLOCK_CACHE_DIR", cache.path().to_str().unwrap()),
        ("AIRLOCK_IMAGES", images.dir.to_str().unwrap()),
    ];
    let run = |args: &[&str]| {
        airlock_tests::run_with_stdin(
            env!("CARGO_BIN_EXE_airlock-under-test"),
            args,
            &env,
            "",
            Some(work.path()),
        )
    };
    let o = run(&["run", "-t", "60", PNG_BY_HAND]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", err(&o));
    assert_eq!(out(&o), "made\n42\n", "stderr: {}", err(&o));
    let png = std::fs::read(work.path().join("airlock-output/1.png")).unwrap();
    assert_eq!(png_size(&png), Some((640, 480)), "a whole 640x480 PNG");
    assert!(
        err(&o)
            .lines()
            .any(|l| l.starts_with("image/png 640x480 ") && l.ends_with(" -> airlock-output/1.png")),
        "{}",
        err(&o)
    );

    // --json: the results in the JSON, base64, and nothing saved.
    let o = run(&[
        "run",
        "--json",
        "-t",
        "60",
        "--output-dir",
        "json-out",
        PNG_BY_HAND,
    ]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", err(&o));
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap();
    assert_eq!(v["results"][0]["data"]["text/plain"], "<png>", "{v}");
    assert_eq!(v["results"][1]["data"]["text/plain"], "42");
    assert_eq!(v["results"][1]["is_main_result"], true);
    assert!(v["results"][0]["data"]["image/png"]
        .as_str()
        .unwrap()
        .starts_with("iVBORw0KGgo"));
    assert!(
        !work.path().join("json-out").exists(),
        "--json saves nothing"
    );

    // On a terminal with kitty's image protocol (a pty made by `script`),
    // the image is also shown inline; into a pipe (above) it never is.
    std::fs::write(work.path().join("png.py"), PNG_BY_HAND).unwrap();
    let command = format!(
        "{} run -t 60 --output-dir tty-out png.py",
        env!("CARGO_BIN_EXE_airlock-under-test")
    );
    let mut tty_env = env.to_vec();
    tty_env.push(("AIRLOCK_INLINE_IMAGES", "kitty"));
    let o = airlock_tests::run_with_stdin(
        "script",
        &["-q", "-e", "-c", &command, "/dev/null"],
        &tty_env,
        "",
        Some(work.path()),
    );
    assert_eq!(o.status.code(), Some(0), "output: {}", out(&o));
    let shown = out(&o);
    let escape = shown
        .find("\x1b_Ga=T,f=100,q=2,m=")
        .unwrap_or_else(|| panic!("no kitty image escape in {shown:?}"));
    assert!(
        shown[escape..].contains(";iVBORw0KGgo"),
        "the escape carries the PNG"
    );
    assert!(shown.contains("42"), "{shown:?}");
    assert!(work.path().join("tty-out/1.png").exists(), "saved as well");
    assert!(
        !out(&run(&["run", "-t", "60", PNG_BY_HAND])).contains("\x1b_G"),
        "no escape into a pipe"
    );
}
