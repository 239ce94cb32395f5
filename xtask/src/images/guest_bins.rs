//! The static guest binaries: `airlock-init` and (once its crate exists)
//! `airlock-agent`, built for the guest with glibc linked in.

use super::progress::Step;
use super::Workspace;
use crate::host::{cargo, run_checked};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;

/// The explicit target: with it, RUSTFLAGS apply to the guest binaries only,
/// not to build scripts and proc-macros.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The flags of the guest build: a static executable.
pub const GUEST_RUSTFLAGS: &str = "-C target-feature=+crt-static";

/// The guest RUSTFLAGS: static, and with the checkout's and cargo's paths
/// remapped so that the binaries (and so the images' content hashes) do not
/// depend on where the workspace was cloned: a CI clone then reuses the
/// cached root disks instead of rebuilding them.
fn guest_rustflags(workspace: &std::path::Path) -> String {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let mut flags = format!(
        "{GUEST_RUSTFLAGS} --remap-path-prefix={}=/airlock",
        workspace.display()
    );
    if let Some(home) = cargo_home {
        flags.push_str(&format!(" --remap-path-prefix={}=/cargo", home.display()));
    }
    flags
}

/// Paths of the built binaries.
#[derive(Debug, Clone)]
pub struct GuestBins {
    /// The init (always built).
    pub init: PathBuf,
    /// The agent, `None` while `crates/airlock-agent` does not exist.
    pub agent: Option<PathBuf>,
}

/// The guest target dir: `target/guest` (beside the normal builds, so their
/// cache is not invalidated by other flags).
pub fn target_dir() -> PathBuf {
    crate::host::target_dir().join("guest")
}

/// Builds the guest binaries (incremental: fast when nothing changed) and
/// checks that they are static.
pub fn build(ws: &Workspace) -> Result<GuestBins> {
    let agent_crate = ws.root.join("crates/airlock-agent");
    let has_agent =
        agent_crate.join("Cargo.toml").is_file() && agent_crate.join("src/main.rs").is_file();
    let target_dir = target_dir();
    let step = Step::start("guest binaries: cargo build --release (static)");
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "--target",
        GUEST_TARGET,
        "-p",
        "airlock-init",
    ]);
    if has_agent {
        cmd.args(["-p", "airlock-agent"]);
    }
    cmd.env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", guest_rustflags(&ws.root))
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    run_checked(&mut cmd)?;
    step.done("");
    let release = target_dir.join(GUEST_TARGET).join("release");
    let init = release.join("airlock-init");
    check_static(&init)?;
    let agent = if has_agent {
        let agent = release.join("airlock-agent");
        check_static(&agent)?;
        Some(agent)
    } else {
        None
    };
    Ok(GuestBins { init, agent })
}

fn check_static(path: &std::path::Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    match has_interpreter(&bytes) {
        Some(false) => Ok(()),
        Some(true) => bail!(
            "{} is dynamically linked (it has an ELF interpreter): the guest has no matching \
             libc in the initramfs; build it with RUSTFLAGS=\"{GUEST_RUSTFLAGS}\"",
            path.display()
        ),
        None => bail!("{} is not a 64-bit little-endian ELF file", path.display()),
    }
}

/// Whether a 64-bit little-endian ELF file asks for an interpreter
/// (`PT_INTERP`, i.e. dynamic linking); `None` if it is not such a file.
pub fn has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let p_type = u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)?;
        if p_type == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with `types` as program header types.
    fn elf_with(types: &[u32]) -> Vec<u8> {
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&u16::try_from(types.len()).unwrap().to_le_bytes());
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            elf.extend(ph);
        }
        elf
    }

    #[test]
    fn static_elf_has_no_interpreter() {
        assert_eq!(has_interpreter(&elf_with(&[6, 1, 1])), Some(false));
    }

    #[test]
    fn dynamic_elf_has_an_interpreter() {
        assert_eq!(has_interpreter(&elf_with(&[6, 3, 1])), Some(true));
    }

    #[test]
    fn truncated_or_foreign_files_are_not_elf() {
        assert_eq!(has_interpreter(b"#!/bin/sh\n"), None);
        let mut cut = elf_with(&[3]);
        cut.truncate(66);
        assert_eq!(has_interpreter(&cut), None);
    }

    #[test]
    fn the_hosts_own_shell_is_dynamic() {
        let Ok(bytes) = std::fs::read("/bin/sh") else {
            return;
        };
        assert_eq!(has_interpreter(&bytes), Some(true));
    }
}
