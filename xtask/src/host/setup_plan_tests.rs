//! The set-up plan as a whole, against apt's resolver: everything
//! `cargo xtask` may install ([`super::test_requirements`] and
//! [`super::image_requirements`]), planned on a fresh machine and on this
//! one. Tests only; they need apt's package lists (fetched when missing).

use super::apt_plan::{plan, Apt, InstallRequest, Simulation, QEMU_SYSTEM, QEMU_UTILS};
use super::kernel_source::KernelSource;
use super::{ensure_apt_lists, image_requirements, test_requirements, workspace_root};
use std::collections::BTreeSet;

/// The status file of a fresh machine of the kind Airlock is developed
/// on (Debian 12 with a `qemu-utils` 10.0 backport and no QEMU system
/// emulator), trimmed to the fields apt's resolver reads.
fn fresh_machine() -> Apt {
    Apt {
        status_file: Some(workspace_root().join("xtask/src/host/testdata/fresh-debian12.status")),
    }
}

/// Every package set-up may install on a fresh machine.
fn everything() -> Vec<String> {
    let kernel = KernelSource::of_series("6.1");
    let mut reqs = test_requirements();
    reqs.extend(image_requirements(&kernel));
    reqs.into_iter().map(|r| r.package).collect()
}

/// Plans against this host's package lists: fetched first when missing.
fn plan_on_fresh_machine() -> (InstallRequest, Simulation, String) {
    ensure_apt_lists().expect("apt package lists");
    let names = everything();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    plan(&fresh_machine(), &names).expect("set-up plans on a fresh machine")
}

#[test]
fn naive_install_on_a_fresh_machine_would_remove_qemu_utils() {
    // The failure this planner exists for: apt's own plan for
    // `apt-get install qemu-system-x86` removes the backported qemu-utils.
    ensure_apt_lists().expect("apt package lists");
    let naive = InstallRequest {
        packages: [QEMU_SYSTEM.to_owned()].into(),
        downgrades: BTreeSet::new(),
    };
    let sim = fresh_machine().simulate(&naive).expect("apt plans");
    assert!(sim.removals.iter().any(|r| r == QEMU_UTILS), "{sim:?}");
    assert!(sim.check(&naive).is_err());
}

#[test]
fn set_up_on_a_fresh_machine_removes_nothing_and_matches_the_qemu_tools() {
    let (request, sim, notice) = plan_on_fresh_machine();
    assert!(sim.removals.is_empty(), "removes {:?}", sim.removals);
    let system = sim
        .version_of(QEMU_SYSTEM)
        .expect("installs qemu-system-x86");
    let utils = sim.version_of(QEMU_UTILS).expect("installs qemu-utils");
    assert_eq!(system, utils, "qemu-img and QEMU must match");
    assert_eq!(request.downgrades, [QEMU_UTILS.to_owned()].into());
    assert!(sim.downgrades.iter().all(|d| d == QEMU_UTILS), "{sim:?}");
    assert!(!notice.is_empty(), "the downgrade is announced");
    for package in ["debootstrap", "linux-source-6.1"] {
        assert!(
            sim.version_of(package).is_some(),
            "{package} planned: {sim:?}"
        );
    }
}

#[test]
fn set_up_on_this_machine_removes_nothing() {
    // Whatever this machine already has, the planned transaction of
    // everything set-up may install never removes a package.
    ensure_apt_lists().expect("apt package lists");
    let names = everything();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let (_, sim, _) = plan(&Apt::default(), &names).expect("plans on this machine");
    assert!(sim.removals.is_empty(), "{sim:?}");
}
