//! The QEMU jail on real VMs (`crates/airlock/src/jail`): two sessions
//! boot as root; each QEMU runs as a uid of its own (not 0), with no
//! capability and `NoNewPrivs`; its work dir is 0700 and its own; in its
//! mount namespace the other VM's work dir does not exist, and its uid
//! cannot read the other's files on the host either. Skipped unless run
//! as root (without root there is no jail).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock::{CellRequest, Config, RunObserver, Scheduler, SessionOptions};
use airlock_protocol::Language;
use airlock_tests::images_or_skip;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Quiet;
impl RunObserver for Quiet {
    fn output(&mut self, _: airlock::OutputStream, _: &[u8]) {}
}

/// One booted VM as seen from the host.
#[derive(Debug)]
struct Seen {
    work_dir: PathBuf,
    qemu_pid: u32,
}

/// The VMs under `run_dir/vms`, with their QEMU's pid from the owner record.
fn vms(run_dir: &Path) -> Vec<Seen> {
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(run_dir.join("vms")).unwrap() {
        let work_dir = entry.unwrap().path();
        let record = std::fs::read_to_string(work_dir.join("owner")).unwrap_or_default();
        let pid = record.lines().find_map(|line| {
            let mut words = line.strip_prefix("process qemu ")?.split(' ');
            words.next()?.parse().ok()
        });
        if let Some(qemu_pid) = pid {
            seen.push(Seen { work_dir, qemu_pid });
        }
    }
    seen.sort_by(|a, b| a.work_dir.cmp(&b.work_dir));
    seen
}

/// The values of `field` in `/proc/<pid>/status`.
fn status_field(pid: u32, field: &str) -> Vec<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    line.split_whitespace().map(str::to_owned).collect()
}

/// Runs `argv` and returns (success, stdout + stderr).
fn command(argv: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Runs `argv` as `uid` (gid the same) in the mount namespace of `pid`.
fn in_namespace(pid: &str, uid: &str, argv: &[&str]) -> (bool, String) {
    let mut full = vec![
        "nsenter", "--target", pid, "--mount", "--setuid", uid, "--setgid", uid, "--",
    ];
    full.extend_from_slice(argv);
    command(&full)
}

/// Runs `argv` as `uid` (gid the same, no groups) on the host.
fn as_uid(uid: &str, argv: &[&str]) -> (bool, String) {
    let mut full = vec![
        "setpriv",
        "--reuid",
        uid,
        "--regid",
        uid,
        "--clear-groups",
        "--",
    ];
    full.extend_from_slice(argv);
    command(&full)
}

#[tokio::test(flavor = "multi_thread")]
async fn each_qemu_runs_as_its_own_unprivileged_uid_and_sees_no_other_vm() {
    if images_or_skip("jail").is_none() {
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP jail: the jail needs root (QEMU runs as the caller otherwise)");
        return;
    }
    // A run dir of its own: its vms/ holds only this test's VMs.
    let run = tempfile::Builder::new()
        .prefix("aj")
        .tempdir_in("/tmp")
        .unwrap();
    let scheduler = Scheduler::start(Config {
        run_dir: run.path().to_path_buf(),
        restore_templates: false,
        overlay_pool_target: 0,
        ..Config::default()
    })
    .await
    .unwrap();
    let (a, b) = tokio::join!(
        scheduler.session(SessionOptions::new(Language::Python)),
        scheduler.session(SessionOptions::new(Language::Python)),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    // Jailed VMs work: each runs a cell.
    for session in [&a, &b] {
        let mut request = CellRequest::new("print(6 * 7)");
        request.timeout = Duration::from_secs(60);
        let result = session.exec(request, &mut Quiet).await.unwrap();
        assert_eq!(result.stdout, b"42\n", "{result:?}");
    }

    let seen = vms(run.path());
    assert_eq!(seen.len(), 2, "{seen:?}");
    let mut uids = Vec::new();
    for vm in &seen {
        let pid = vm.qemu_pid;
        let uid = status_field(pid, "Uid");
        let gid = status_field(pid, "Gid");
        assert_eq!(uid.len(), 4, "{uid:?}");
        assert!(
            uid.iter().all(|u| u == &uid[0]) && uid[0] != "0",
            "QEMU {pid} runs as uids {uid:?}"
        );
        assert_eq!(gid, uid, "QEMU {pid}: gids {gid:?}, uids {uid:?}");
        for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(
                status_field(pid, caps),
                ["0000000000000000"],
                "QEMU {pid}: {caps}"
            );
        }
        assert_eq!(status_field(pid, "NoNewPrivs"), ["1"], "QEMU {pid}");
        let groups = status_field(pid, "Groups");
        assert!(
            !groups.iter().any(|g| g == "0"),
            "QEMU {pid} is in group 0: {groups:?}"
        );
        // Its work dir on the host: its own, private.
        let meta = std::fs::metadata(&vm.work_dir).unwrap();
        assert_eq!(meta.uid().to_string(), uid[0], "{:?}", vm.work_dir);
        assert_eq!(meta.mode() & 0o777, 0o700, "{:?}", vm.work_dir);
        uids.push(uid[0].clone());
    }
    assert_ne!(uids[0], uids[1], "the two QEMUs share a uid");

    // Open the dirs above the work dirs, so that on the host only each
    // work dir's own owner and mode keep another uid out.
    for dir in [run.path().to_path_buf(), run.path().join("vms")] {
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }
    for (me, other, my_uid) in [
        (&seen[0], &seen[1], &uids[0]),
        (&seen[1], &seen[0], &uids[1]),
    ] {
        let pid = me.qemu_pid.to_string();
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let inside = |p: &Path| root.join(p.strip_prefix("/").unwrap());
        // Its namespace shows its own work dir, not the other's, nor the
        // host's home or run dir beside them.
        assert!(inside(&me.work_dir).join("qmp.sock").exists(), "{me:?}");
        assert!(
            !inside(&other.work_dir).exists(),
            "{other:?} seen by {me:?}"
        );
        assert!(
            !root.join("etc/shadow").exists(),
            "the host's /etc is in the jail"
        );
        let mine = me.work_dir.display().to_string();
        let other_owner = other.work_dir.join("owner").display().to_string();
        let (listed, out) = in_namespace(&pid, my_uid, &["ls", &mine]);
        assert!(listed && out.contains("qmp.sock"), "its own dir: {out}");
        let (read, out) = in_namespace(&pid, my_uid, &["cat", &other_owner]);
        assert!(!read, "read the other VM's file in its namespace: {out}");
        // On the host too, its uid can open its own work dir, not the other's.
        let (listed, out) = as_uid(my_uid, &["ls", &mine]);
        assert!(
            listed && out.contains("qmp.sock"),
            "its own dir on the host: {out}"
        );
        let (read, out) = as_uid(my_uid, &["ls", &other.work_dir.display().to_string()]);
        assert!(!read, "listed the other VM's work dir on the host: {out}");
        assert!(out.contains("Permission denied"), "{out}");
    }
    a.close().await;
    b.close().await;
    scheduler.shutdown().await;
}
