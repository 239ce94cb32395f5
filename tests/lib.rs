//! Shared support for Airlock's end-to-end tests (in `tests/*.rs` of this
//! package): finding the guest images and QEMU, and skipping with a clear
//! message where they are missing.
//!
//! `cargo xtask test` builds the images first and sets
//! `AIRLOCK_REQUIRE_VM_TESTS=1`, so there a missing prerequisite fails the
//! test instead of skipping it: VM tests never silently skip on a machine
//! that is set up to run them.

use airlock::Images;
use std::path::PathBuf;

/// The variable that turns skips into failures.
pub const REQUIRE_ENV: &str = "AIRLOCK_REQUIRE_VM_TESTS";

/// Whether VM tests must run (not skip).
pub fn vm_tests_required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// The guest images and a QEMU binary, or `None` after printing why the
/// test is skipped.
///
/// # Panics
/// When something is missing and [`vm_tests_required`].
pub fn images_or_skip(test: &str) -> Option<Images> {
    let missing = match Images::load(&Images::default_dir()) {
        Ok(images) => match qemu_binary() {
            Some(_) => return Some(images),
            None => "qemu-system-x86_64 not found (install qemu-system-x86 or set AIRLOCK_QEMU)"
                .to_owned(),
        },
        Err(e) => e.to_string(),
    };
    assert!(
        !vm_tests_required(),
        "{test}: VM tests are required ({REQUIRE_ENV}=1) but cannot run: {missing}"
    );
    eprintln!("SKIP {test}: {missing}");
    None
}

/// The QEMU binary: `$AIRLOCK_QEMU`, else `qemu-system-x86_64` on PATH.
pub fn qemu_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AIRLOCK_QEMU") {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
}

/// QEMU processes whose command line mentions `needle`.
pub fn qemu_processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let text = String::from_utf8_lossy(&c);
                text.contains("qemu-system") && text.contains(needle)
            })
        })
        .collect()
}
