//! `cargo xtask images` builds where `airlock doctor` looks, whichever of
//! the variables that move Airlock's dirs is set: `AIRLOCK_CACHE_DIR`,
//! `AIRLOCK_IMAGES` or `XDG_CACHE_HOME`.
//!
//! Each case seeds a fresh images dir at the place the variable names with
//! the built artefacts (hard links) and a manifest that lacks the initramfs
//! entry, runs the real `xtask images` (which adopts the initramfs found on
//! disk and writes the manifest where *it* resolves the dir), then the real
//! `airlock doctor`, which must find complete images at that same place. If
//! the two resolved the variable differently, the doctor reads an incomplete
//! (or no) manifest and fails.

use airlock_tests::images_or_skip;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The variables this test moves; each case sets one and clears the others.
const VARS: [&str; 3] = ["AIRLOCK_CACHE_DIR", "AIRLOCK_IMAGES", "XDG_CACHE_HOME"];

/// The `xtask` binary that `cargo xtask` built beside this test.
fn xtask_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/xtask
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in target/<profile>/deps");
    let xtask = profile_dir.join("xtask");
    assert!(
        xtask.is_file(),
        "{} is missing: run the tests through `cargo xtask test` (which builds it)",
        xtask.display()
    );
    xtask
}

/// Hard-links the current artefacts of `from` into `to` and writes a
/// manifest there without the initramfs entry.
fn seed_without_initramfs(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the seeded images dir");
    let text = std::fs::read_to_string(from.join("manifest.json")).expect("read manifest");
    let mut manifest: serde_json::Value = serde_json::from_str(&text).expect("parse manifest");
    let artefacts = manifest["artefacts"]
        .as_object()
        .expect("manifest artefacts")
        .clone();
    for artefact in artefacts.values() {
        let file = artefact["file"].as_str().expect("artefact file");
        std::fs::hard_link(from.join(file), to.join(file)).expect("link an artefact");
    }
    // The cached `apt-cache madison` answers: the planner then asks apt nothing.
    let versions = from.join("apt-versions.json");
    if versions.is_file() {
        std::fs::copy(&versions, to.join("apt-versions.json")).expect("copy apt versions");
    }
    manifest["artefacts"]
        .as_object_mut()
        .expect("manifest artefacts")
        .remove("initramfs");
    std::fs::write(
        to.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).expect("serialize manifest"),
    )
    .expect("write the seeded manifest");
}

fn with_only(cmd: &mut Command, var: &str, value: &Path) {
    for v in VARS {
        cmd.env_remove(v);
    }
    cmd.env(var, value);
}

fn xtask_images_then_doctor_agree(var: &str, images_under: fn(&Path) -> PathBuf) {
    let Some(images) = images_or_skip(&format!("dirs_e2e {var}")) else {
        return;
    };
    let root = tempfile::Builder::new()
        .prefix("airlock-dirs-")
        .tempdir()
        .expect("temp dir");
    let expected = images_under(root.path());
    seed_without_initramfs(&images.dir, &expected);

    let mut xtask = Command::new(xtask_binary());
    xtask.arg("images");
    with_only(&mut xtask, var, root.path());
    let out = xtask.output().expect("run xtask images");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "xtask images with {var} failed:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("({})", expected.display())),
        "xtask images with {var} did not build in {}:\n{stderr}",
        expected.display()
    );

    let mut doctor = Command::new(env!("CARGO_BIN_EXE_airlock-under-test"));
    doctor.arg("doctor");
    with_only(&mut doctor, var, root.path());
    let out = doctor.output().expect("run airlock doctor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let images_line = stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("images"))
        .unwrap_or_else(|| panic!("no images line in doctor's report:\n{stdout}"));
    assert!(
        images_line.starts_with("ok") && images_line.contains(&expected.display().to_string()),
        "with {var}, doctor does not find the images xtask built in {}:\n{stdout}",
        expected.display()
    );
}

#[test]
fn airlock_cache_dir_moves_images_for_xtask_and_doctor_alike() {
    xtask_images_then_doctor_agree("AIRLOCK_CACHE_DIR", |root| root.join("images"));
}

#[test]
fn airlock_images_moves_images_for_xtask_and_doctor_alike() {
    xtask_images_then_doctor_agree("AIRLOCK_IMAGES", Path::to_path_buf);
}

#[test]
fn xdg_cache_home_moves_images_for_xtask_and_doctor_alike() {
    xtask_images_then_doctor_agree("XDG_CACHE_HOME", |root| root.join("airlock").join("images"));
}
