//! The guest kernel: Debian's `linux-source-X.Y` (the newest series the
//! host's apt offers: 6.1 on Debian 12, 6.12 on Debian 13), `make
//! tinyconfig`, our fragment (`xtask/guest/kernel.fragment`),
//! `olddefconfig`, then a check that every option of the fragment survived.

use super::progress::Step;
use super::{command_output, run_logged, Workspace};
use crate::host::kernel_source::KernelSource;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The fragment, relative to the workspace root.
pub const FRAGMENT_PATH: &str = "xtask/guest/kernel.fragment";
/// Parallel jobs for `make` (the development machines have 2 cores).
const MAKE_JOBS: &str = "-j2";
/// Fixed build metadata, so two builds of the same inputs are identical.
const BUILD_ENV: [(&str, &str); 4] = [
    ("KBUILD_BUILD_TIMESTAMP", "1970-01-01"),
    ("KBUILD_BUILD_USER", "airlock"),
    ("KBUILD_BUILD_HOST", "airlock"),
    ("KBUILD_BUILD_VERSION", "1"),
];

/// What one option of the fragment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// `CONFIG_X=value`.
    Value(String),
    /// `# CONFIG_X is not set`.
    Unset,
}

/// Parses a config fragment (or a `.config`) into option -> wanted value.
/// Comments other than `# CONFIG_X is not set` and blank lines are ignored.
pub fn parse_config(text: &str) -> BTreeMap<String, Wanted> {
    let mut options = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            if name.starts_with("CONFIG_") {
                options.insert(name.to_owned(), Wanted::Unset);
            }
        } else if let Some((name, value)) = line.split_once('=') {
            if name.starts_with("CONFIG_") && !line.starts_with('#') {
                options.insert(name.to_owned(), Wanted::Value(value.to_owned()));
            }
        }
    }
    options
}

/// The options of `fragment` that the final `.config` does not honour, as
/// readable lines (`CONFIG_X=y (got: not set)`). Empty when all survived.
pub fn dropped_options(fragment: &str, final_config: &str) -> Vec<String> {
    let got = parse_config(final_config);
    parse_config(fragment)
        .into_iter()
        .filter_map(|(name, wanted)| {
            let actual = got.get(&name);
            let ok = match (&wanted, actual) {
                (Wanted::Value(v), Some(Wanted::Value(a))) => v == a,
                (Wanted::Value(_), _) => false,
                (Wanted::Unset, None | Some(Wanted::Unset)) => true,
                (Wanted::Unset, Some(Wanted::Value(a))) => a == "n",
            };
            if ok {
                return None;
            }
            let want = match wanted {
                Wanted::Value(v) => format!("{name}={v}"),
                Wanted::Unset => format!("# {name} is not set"),
            };
            let have = match actual {
                Some(Wanted::Value(a)) => format!("{name}={a}"),
                Some(Wanted::Unset) | None => "not set".to_owned(),
            };
            Some(format!("{want} (got: {have})"))
        })
        .collect()
}

/// Reads the fragment from the workspace.
pub fn read_fragment(ws: &Workspace) -> Result<String> {
    let path = ws.root.join(FRAGMENT_PATH);
    std::fs::read_to_string(&path)
        .with_context(|| format!("read the kernel fragment {}", path.display()))
}

/// Builds the kernel into `out` (a `bzImage`). The extracted sources and the
/// object tree are kept under `work_dir` so that a fragment change rebuilds
/// only what it touches.
pub fn build(
    ws: &Workspace,
    source: &KernelSource,
    source_version: &str,
    work_dir: &Path,
    out: &Path,
) -> Result<()> {
    let fragment = read_fragment(ws)?;
    let src = extract_sources(source, source_version, work_dir)?;
    let obj = work_dir.join(format!("linux-obj-{source_version}"));
    std::fs::create_dir_all(&obj).with_context(|| format!("create {}", obj.display()))?;
    let log = work_dir.join("kernel-build.log");

    let step = Step::start("kernel: configure (tinyconfig + fragment)");
    run_logged(make(&src, &obj).arg("tinyconfig"), &log)?;
    let config_path = obj.join(".config");
    let mut config = std::fs::read_to_string(&config_path)
        .with_context(|| format!("read {}", config_path.display()))?;
    config.push_str("\n# --- airlock fragment ---\n");
    config.push_str(&fragment);
    std::fs::write(&config_path, config)
        .with_context(|| format!("write {}", config_path.display()))?;
    run_logged(make(&src, &obj).arg("olddefconfig"), &log)?;
    let final_config = std::fs::read_to_string(&config_path)
        .with_context(|| format!("read {}", config_path.display()))?;
    let dropped = dropped_options(&fragment, &final_config);
    if !dropped.is_empty() {
        bail!(
            "kernel: {} option(s) of {FRAGMENT_PATH} did not survive `make olddefconfig` \
             (a dependency is missing or the option does not exist in this kernel):\n  {}\n\
             fix the fragment (see {} for the final config)",
            dropped.len(),
            dropped.join("\n  "),
            config_path.display()
        );
    }
    step.done("every fragment option survived");

    let step = Step::start(format!(
        "kernel: make {MAKE_JOBS} bzImage (~4 min when clean)"
    ));
    run_logged(make(&src, &obj).args([MAKE_JOBS, "bzImage"]), &log)?;
    step.done("");
    let image = obj.join("arch/x86/boot/bzImage");
    std::fs::copy(&image, out)
        .with_context(|| format!("copy {} to {}", image.display(), out.display()))?;
    Ok(())
}

fn make(src: &Path, obj: &Path) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(src)
        .arg(format!("O={}", obj.display()))
        .arg("ARCH=x86_64");
    cmd.envs(BUILD_ENV);
    cmd
}

/// Extracts the source tarball once per package version (into a temp dir,
/// renamed when complete).
fn extract_sources(
    source: &KernelSource,
    source_version: &str,
    work_dir: &Path,
) -> Result<PathBuf> {
    let src = work_dir.join(format!("linux-src-{source_version}"));
    if src.join("Makefile").is_file() {
        return Ok(src);
    }
    let step = Step::start(format!("kernel: extract {}", source.tarball.display()));
    let tmp = work_dir.join(format!("linux-src-{source_version}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("remove {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("create {}", tmp.display()))?;
    let log = work_dir.join("kernel-extract.log");
    run_logged(
        Command::new("tar")
            .arg("-xJf")
            .arg(&source.tarball)
            .arg("--strip-components=1")
            .arg("-C")
            .arg(&tmp),
        &log,
    )?;
    std::fs::rename(&tmp, &src).with_context(|| format!("rename to {}", src.display()))?;
    step.done("");
    Ok(src)
}

/// The compiler's version, an input of the kernel hash.
pub fn compiler_version() -> Result<String> {
    let out = command_output(Command::new("gcc").arg("-dumpfullversion"))?;
    Ok(out.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_values_and_unset_options() {
        let parsed = parse_config(
            "# comment\nCONFIG_A=y\n\n# CONFIG_B is not set\nCONFIG_C=\"x y\"\nFOO=1\n",
        );
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed["CONFIG_A"], Wanted::Value("y".into()));
        assert_eq!(parsed["CONFIG_B"], Wanted::Unset);
        assert_eq!(parsed["CONFIG_C"], Wanted::Value("\"x y\"".into()));
    }

    #[test]
    fn nothing_dropped_when_all_survive() {
        let fragment = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_N=8\n";
        let config = "CONFIG_A=y\nCONFIG_N=8\n# CONFIG_B is not set\nCONFIG_Z=y\n";
        assert!(dropped_options(fragment, config).is_empty());
    }

    #[test]
    fn names_every_dropped_option() {
        let fragment = "CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_N=8\n";
        let config = "# CONFIG_A is not set\nCONFIG_C=y\nCONFIG_N=4\n";
        let dropped = dropped_options(fragment, config);
        assert_eq!(
            dropped,
            [
                "CONFIG_A=y (got: not set)",
                "CONFIG_B=y (got: not set)",
                "# CONFIG_C is not set (got: CONFIG_C=y)",
                "CONFIG_N=8 (got: CONFIG_N=4)",
            ]
        );
    }

    #[test]
    fn an_unset_option_absent_from_the_config_survived() {
        assert!(dropped_options("# CONFIG_PCI is not set\n", "CONFIG_A=y\n").is_empty());
    }

    #[test]
    fn the_repo_fragment_parses_and_keeps_the_contract() {
        let text =
            std::fs::read_to_string(crate::host::workspace_root().join(FRAGMENT_PATH)).unwrap();
        let f = parse_config(&text);
        for on in [
            "CONFIG_HZ_100",
            "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
            "CONFIG_64BIT",
            "CONFIG_EXT4_FS",
        ] {
            assert_eq!(f.get(on), Some(&Wanted::Value("y".into())), "{on}");
        }
        for off in [
            "CONFIG_MODULES",
            "CONFIG_ACPI",
            "CONFIG_PCI",
            "CONFIG_KEXEC",
            "CONFIG_BPF_SYSCALL",
        ] {
            assert_eq!(f.get(off), Some(&Wanted::Unset), "{off}");
        }
    }
}
