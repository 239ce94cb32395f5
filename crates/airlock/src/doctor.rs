//! The host checks behind `airlock doctor`: what the host offers and what
//! to fix, as a list of [`Check`]s (the command prints them). Like every
//! start of Airlock, it first ends what dead Airlock processes left
//! (`sweep.rs`) and says so.

use crate::config::Config;
use crate::host::Host;
use crate::images::{Image, Images};
use crate::sweep::SweepReport;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Whether `airlock run` can work as far as this check goes.
    pub ok: bool,
    /// What was found.
    pub found: String,
    /// How to fix it, when not ok.
    pub fix: Option<String>,
}

/// Runs every check, and the sweep of what dead Airlock processes left.
pub async fn checks() -> Vec<Check> {
    let config = Config::default();
    let mut out = Vec::new();
    let images = Images::load(&config.images_dir);
    match &images {
        Ok(images) => {
            out.push(Check {
                name: "images",
                ok: true,
                found: format!(
                    "{} (kernel, initramfs, raw/python/javascript root disks)",
                    images.dir.display()
                ),
                fix: None,
            });
            out.extend(image_checks(images));
        }
        Err(e) => out.push(Check {
            name: "images",
            ok: false,
            found: e.to_string(),
            fix: Some(
                "run `cargo xtask images` (or set AIRLOCK_IMAGES to a built images dir)".into(),
            ),
        }),
    }
    match images.as_ref().ok() {
        Some(images) => match Host::probe(images).await {
            Ok(host) => {
                out.push(Check {
                    name: "qemu",
                    ok: true,
                    found: format!(
                        "{} ({})",
                        host.qemu_binary.display(),
                        host.caps.qemu_version
                    ),
                    fix: None,
                });
                out.push(Check {
                    name: "accelerator",
                    ok: true,
                    found: format!("{} ({})", host.caps.accel.as_str(), host.accel_reason),
                    fix: None,
                });
            }
            Err(e) => out.push(Check {
                name: "qemu",
                ok: false,
                found: e.to_string(),
                fix: e.hint().map(str::to_owned).or_else(|| {
                    Some("install the qemu-system-x86 package or set AIRLOCK_QEMU".into())
                }),
            }),
        },
        None => out.push(Check {
            name: "accelerator",
            ok: false,
            found: "not probed: the KVM probe boots the guest kernel, which is missing".into(),
            fix: Some("build the images first".into()),
        }),
    }
    let limiter = tokio::task::spawn_blocking(|| {
        airlock_limits::Limiter::probe(&airlock_limits::ProbeConfig::default())
    })
    .await;
    let sweeper = limiter.as_ref().ok().cloned();
    match limiter {
        Ok(limiter) => out.push(Check {
            name: "limits",
            ok: true,
            found: format!("{}: {}", limiter.kind(), limiter.reason()),
            fix: (limiter.kind() == airlock_limits::BackendKind::Rlimit).then(|| {
                "only rlimits apply: run as root or in a delegated cgroup v2 (see docs/limits.md) for memory and CPU limits".to_owned()
            }),
        }),
        Err(e) => out.push(Check {
            name: "limits",
            ok: false,
            found: format!("probe failed: {e}"),
            fix: None,
        }),
    }
    let run_dir = config.run_dir.clone();
    let swept = tokio::task::spawn_blocking(move || {
        let mut report = crate::sweep::sweep_orphans(&run_dir, sweeper.as_ref());
        report.pools_removed =
            crate::process_dirs::sweep_dead_process_dirs(&run_dir.join("overlays"));
        report
    })
    .await;
    out.push(leftovers_check(swept.as_ref().map_err(ToString::to_string)));
    out.push(Check {
        name: "run dir",
        ok: config.validate().is_ok(),
        found: config.run_dir.display().to_string(),
        fix: config.validate().err().map(|e| e.to_string()),
    });
    out.push(jail_check(&config.jail, nix::unistd::geteuid().is_root()));
    match airlock_gvproxy::find_gvproxy_cached().await {
        Ok(gvproxy) => out.push(Check {
            name: "gvproxy",
            ok: true,
            found: format!("{} ({})", gvproxy.path.display(), gvproxy.version),
            fix: None,
        }),
        Err(e) => out.push(Check {
            name: "gvproxy",
            ok: true, // only network modes need it
            found: format!("not usable (needed only for --network and --expose): {e}"),
            fix: Some("install the `gvproxy` package or set AIRLOCK_GVPROXY".into()),
        }),
    }
    out
}

/// Whether VMs are jailed (`jail.rs`): as root, each QEMU runs as a uid
/// of its own range without capabilities; not as root, it runs as the
/// caller, which has nothing more to drop.
fn jail_check(config: &crate::jail::JailConfig, root: bool) -> Check {
    let range = format!(
        "uids {}..{}",
        config.uid_base,
        u64::from(config.uid_base) + u64::from(config.uid_count)
    );
    let (ok, found, fix) = match (config.enabled, root) {
        (true, true) => (
            true,
            format!("VMs are jailed: QEMU as {range}, no capabilities, a mount namespace of its own"),
            None,
        ),
        (false, true) => (
            // It works, less safely: the fix says what to change.
            true,
            "VMs are not jailed: QEMU runs as root (turned off by AIRLOCK_JAIL=0 or [jail] enabled = false)".into(),
            Some("unset AIRLOCK_JAIL (or set [jail] enabled = true): a QEMU escape is root on the host otherwise".into()),
        ),
        (_, false) => (
            true,
            "VMs are not jailed: not running as root, QEMU runs as this user".into(),
            None,
        ),
    };
    Check {
        name: "jail",
        ok,
        found,
        fix,
    }
}

/// The line about what dead Airlock processes had left, swept just now.
fn leftovers_check(swept: Result<&SweepReport, String>) -> Check {
    match swept {
        Ok(report) if report.problems.is_empty() => Check {
            name: "leftovers",
            ok: true,
            found: if report.removed.is_empty() && report.pools_removed.is_empty() {
                "none: no VM of a dead Airlock process".to_owned()
            } else {
                format!(
                    "removed {} VM work dir(s) of dead Airlock processes ({} process(es) killed, {} limits group(s) removed) and {} overlay pool dir(s)",
                    report.removed.len(),
                    report.killed.len(),
                    report.groups_removed.len(),
                    report.pools_removed.len()
                )
            },
            fix: None,
        },
        Ok(report) => Check {
            name: "leftovers",
            ok: false,
            found: format!(
                "cannot remove everything dead Airlock processes left: {}",
                report.problems.join("; ")
            ),
            fix: Some("run as the user (or root) that ran those VMs".into()),
        },
        Err(e) => Check {
            name: "leftovers",
            ok: false,
            found: format!("the sweep failed: {e}"),
            fix: None,
        },
    }
}

/// One line per image: where its root disk is, or (an optional image)
/// that it is not built and how to build it (pure).
fn image_checks(images: &Images) -> Vec<Check> {
    Image::ALL
        .into_iter()
        .map(|image| {
            let name = match image {
                Image::Python => "image python",
                Image::Javascript => "image javascript",
                Image::Raw => "image raw",
                Image::PythonData => "image python-data",
            };
            match images.disk(image) {
                Ok(disk) => Check {
                    name,
                    ok: true,
                    found: disk.path.display().to_string(),
                    fix: None,
                },
                Err(_) => Check {
                    name,
                    ok: true,
                    found: "not built (optional; `--image` cannot name it)".into(),
                    fix: Some(format!(
                        "run `cargo xtask images` to build {} ({image}), or set \
                         AIRLOCK_IMAGES to an images dir that has it",
                        image.rootfs_key()
                    )),
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jail_line_says_whether_vms_are_jailed_and_warns_root_without_it() {
        let on = crate::jail::JailConfig {
            enabled: true,
            uid_base: 1000,
            uid_count: 10,
        };
        let jailed = jail_check(&on, true);
        assert!(
            jailed.ok && jailed.found.contains("uids 1000..1010"),
            "{jailed:?}"
        );
        let off = crate::jail::JailConfig {
            enabled: false,
            ..on.clone()
        };
        let root_unjailed = jail_check(&off, true);
        assert!(root_unjailed.found.contains("not jailed") && root_unjailed.fix.is_some());
        let user = jail_check(&on, false);
        assert!(
            user.ok && user.found.contains("not running as root"),
            "{user:?}"
        );
    }

    #[test]
    fn each_image_is_listed_with_its_disk_or_how_to_build_it() {
        let disk = |name: &str| crate::images::ImageDisk {
            path: format!("/images/rootfs-{name}-ab.qcow2").into(),
            hash: "ab".into(),
        };
        let mut images = Images {
            dir: "/images".into(),
            kernel: "/images/k".into(),
            initramfs: "/images/i".into(),
            rootfs: Default::default(),
            rootfs_hash: Default::default(),
            kernel_hash: "k".into(),
            initramfs_hash: "i".into(),
            image_disks: [Image::Python, Image::Javascript, Image::Raw]
                .into_iter()
                .map(|image| (image, disk(image.name())))
                .collect(),
        };
        let checks = image_checks(&images);
        assert_eq!(checks.len(), 4);
        assert!(checks.iter().all(|c| c.ok), "an optional image never fails");
        assert_eq!(checks[0].name, "image python");
        assert_eq!(checks[0].found, "/images/rootfs-python-ab.qcow2");
        let data = &checks[3];
        assert_eq!(data.name, "image python-data");
        assert!(data.found.starts_with("not built"), "{data:?}");
        assert!(
            data.fix.as_deref().unwrap().contains("cargo xtask images"),
            "{data:?}"
        );
        images
            .image_disks
            .insert(Image::PythonData, disk("python-data"));
        let built = image_checks(&images);
        assert_eq!(built[3].found, "/images/rootfs-python-data-ab.qcow2");
        assert_eq!(built[3].fix, None);
    }

    #[test]
    fn the_leftovers_line_counts_what_was_swept_or_names_the_problem() {
        let none = leftovers_check(Ok(&SweepReport::default()));
        assert!(none.ok && none.found.starts_with("none"), "{none:?}");
        let swept = SweepReport {
            removed: vec!["/run/airlock/vms/a".into()],
            killed: vec![("qemu".into(), 42)],
            groups_removed: vec!["airlock/default/a".into()],
            pools_removed: vec!["/run/airlock/overlays/1-2-x".into()],
            problems: Vec::new(),
        };
        let line = leftovers_check(Ok(&swept));
        assert!(line.ok);
        assert!(
            line.found.contains("removed 1 VM work dir(s)"),
            "{}",
            line.found
        );
        assert!(
            line.found.contains("1 process(es) killed"),
            "{}",
            line.found
        );
        assert!(
            line.found.contains("1 overlay pool dir(s)"),
            "{}",
            line.found
        );
        let pools_only = SweepReport {
            pools_removed: vec!["/run/airlock/overlays/1-2-x".into()],
            ..SweepReport::default()
        };
        assert!(!leftovers_check(Ok(&pools_only)).found.starts_with("none"));
        let failed = SweepReport {
            problems: vec!["remove /x: denied".into()],
            ..SweepReport::default()
        };
        let bad = leftovers_check(Ok(&failed));
        assert!(!bad.ok && bad.found.contains("denied") && bad.fix.is_some());
    }
}
