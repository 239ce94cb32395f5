//! The workspace disk and host folders end to end, on real VMs
//! (`docs/persistence.md`): a file larger than the VM's memory goes in
//! streamed, is copied on the disk and comes back whole; a full disk is
//! the code's ENOSPC and the VM lives on; a host folder is read-only
//! unless asked writable, and a symbolic link inside it reaches nothing
//! outside it.
//!
//! Each test has its own templates dir (a temp dir); the images are the
//! shared ones (`AIRLOCK_IMAGES`).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock::spec::Mount;
use airlock::{CellRequest, Discard, RunRequest, SessionOptions};
use airlock_protocol::Language;
use airlock_tests::{images_or_skip, template_scheduler, text};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// 1 GiB: twice the VM's memory.
const BIG_BYTES: u64 = 1 << 30;

/// Writes `len` bytes of a fixed pseudo-random sequence (xorshift, so
/// neither zeroes nor a pattern qcow2 could store as holes) to `path`;
/// returns their sha256.
async fn write_big_file(path: &Path, len: u64) -> String {
    let mut file = tokio::fs::File::create(path).await.unwrap();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for word in chunk.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = usize::try_from(left.min(chunk.len() as u64)).unwrap();
        file.write_all(&chunk[..n]).await.unwrap();
        left -= n as u64;
    }
    file.flush().await.unwrap();
    drop(file);
    sha256_of(path).await
}

async fn sha256_of(path: &Path) -> String {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || airlock_sys_util::sha256_file_hex(&path).unwrap())
        .await
        .unwrap()
}

fn cell(code: &str, timeout_s: u64) -> CellRequest {
    CellRequest {
        timeout: Duration::from_secs(timeout_s),
        ..CellRequest::new(code)
    }
}

/// A 512 MiB session restored from a template with a 3 GiB disk: a 1 GiB
/// file uploaded streamed, copied inside the VM (the original and the
/// copy take 2 GiB of disk, four times the VM's memory, more than the
/// default 2 GiB file system holds with its metadata), downloaded back
/// streamed: the same sha256 on the host, in the guest and after the
/// round trip.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_twice_the_vms_memory_goes_in_is_copied_on_the_disk_and_comes_back_whole() {
    if images_or_skip("a_file_twice_the_vms_memory").is_none() {
        return;
    }
    let templates = tempfile::tempdir().unwrap();
    let scheduler = template_scheduler(templates.path(), true).await;
    let mut options = SessionOptions::new(Language::Raw);
    options.spec.shape.memory_mib = 512;
    options.spec.shape.disk_mib = 3072;
    let session = scheduler.session(options).await.unwrap();
    assert!(
        session.boot_timings().restore.is_some(),
        "the session was not restored from its template"
    );

    let host = tempfile::tempdir().unwrap();
    let source = host.path().join("big.bin");
    let sum = write_big_file(&source, BIG_BYTES).await;
    let mut file = tokio::fs::File::open(&source).await.unwrap();
    let uploaded = session
        .write_file_from("big.bin", Some(BIG_BYTES), &mut file, u64::MAX)
        .await
        .unwrap();
    assert_eq!(uploaded.size, BIG_BYTES);
    std::fs::remove_file(&source).unwrap();

    let copied = session
        .exec(
            cell(
                "cp big.bin copy.bin && sha256sum copy.bin | cut -d' ' -f1 && df -m . | tail -1",
                600,
            ),
            &mut Discard,
        )
        .await
        .unwrap();
    let out = text(&copied.stdout);
    assert_eq!(copied.exit_code, 0, "{out}{}", text(&copied.stderr));
    assert_eq!(out.lines().next(), Some(sum.as_str()), "{out}");

    let back = host.path().join("back.bin");
    let mut sink = tokio::fs::File::create(&back).await.unwrap();
    let downloaded = session
        .read_file_into("copy.bin", u64::MAX, &mut sink)
        .await
        .unwrap();
    sink.flush().await.unwrap();
    drop(sink);
    assert_eq!(downloaded.size, BIG_BYTES);
    assert_eq!(sha256_of(&back).await, sum);
    session.close().await;
    scheduler.shutdown().await;
}

/// A 64 MiB disk filled by the code: `ENOSPC` in the guest ("No space
/// left on device"), never a paused or dead VM: the next command runs,
/// and freeing the file gives the space back.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_enospc_for_the_code_and_the_vm_goes_on() {
    if images_or_skip("a_full_disk_is_enospc").is_none() {
        return;
    }
    let templates = tempfile::tempdir().unwrap();
    let scheduler = template_scheduler(templates.path(), false).await;
    let mut options = SessionOptions::new(Language::Raw);
    options.spec.shape.disk_mib = 64;
    let session = scheduler.session(options).await.unwrap();
    let fill = session
        .exec(
            cell(
                "head -c 100M /dev/urandom > ~/fill; echo rc=$?; du -m ~/fill | cut -f1",
                120,
            ),
            &mut Discard,
        )
        .await
        .unwrap();
    let (out, err) = (text(&fill.stdout), text(&fill.stderr));
    assert!(out.contains("rc=1"), "{out}{err}");
    assert!(err.contains("No space left on device"), "{out}{err}");
    let written: u64 = out.lines().last().unwrap().trim().parse().unwrap();
    assert!((50..=64).contains(&written), "{written} MiB written");
    let after = session
        .exec(
            cell("rm ~/fill && echo ok > ~/small && cat ~/small", 30),
            &mut Discard,
        )
        .await
        .unwrap();
    assert_eq!(text(&after.stdout), "ok\n", "{}", text(&after.stderr));
    session.close().await;
    scheduler.shutdown().await;
}

/// A read-only folder (the default) and a writable one: the guest reads
/// the first and cannot write it (EROFS), writes into the second and the
/// host sees it; a link in the share to the host's `/etc/passwd`, and
/// another to a host file outside the share, reveal neither.
#[tokio::test(flavor = "multi_thread")]
async fn host_folders_are_read_only_unless_rw_and_their_links_reach_nothing_outside() {
    if images_or_skip("host_folders").is_none() {
        return;
    }
    let host = tempfile::tempdir().unwrap();
    let (ro, rw, outside) = (
        host.path().join("in"),
        host.path().join("out"),
        host.path().join("outside"),
    );
    for dir in [&ro, &rw, &outside] {
        std::fs::create_dir(dir).unwrap();
    }
    // QEMU reads and writes them as its jail's uid when Airlock is root.
    std::fs::set_permissions(host.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&rw, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(ro.join("data.txt"), "from the host\n").unwrap();
    std::fs::set_permissions(ro.join("data.txt"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let secret = format!("host-secret-{}", std::process::id());
    std::fs::write(outside.join("secret.txt"), &secret).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", ro.join("passwd")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), ro.join("secret")).unwrap();
    std::os::unix::fs::symlink("../outside/secret.txt", ro.join("relative")).unwrap();

    let templates = tempfile::tempdir().unwrap();
    let scheduler = template_scheduler(templates.path(), true).await;
    let mut request = RunRequest::new(
        Language::Raw,
        "exec 2>&1\n\
         cat /mnt/in/data.txt\n\
         echo x > /mnt/in/new.txt || true\n\
         echo written > ~/out/from-guest.txt && echo wrote\n\
         echo passwd:; cat /mnt/in/passwd\n\
         echo secret:; cat /mnt/in/secret 2>&1 || true\n\
         echo relative:; cat /mnt/in/relative 2>&1 || true\n\
         grep -E ' /mnt/in | /home/sandbox/out ' /proc/mounts\n",
    );
    request.spec.mounts = vec![
        Mount::parse(&format!("{}:/mnt/in", ro.display())).unwrap(),
        Mount::parse(&format!("{}:/home/sandbox/out:rw", rw.display())).unwrap(),
    ];
    let result = scheduler.run(request).await.unwrap();
    let out = text(&result.stdout);
    assert_eq!(result.exit_code, 0, "{out}{}", text(&result.stderr));
    assert!(out.starts_with("from the host\n"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(!ro.join("new.txt").exists());
    assert!(out.contains("wrote\n"), "{out}");
    assert_eq!(
        std::fs::read_to_string(rw.join("from-guest.txt")).unwrap(),
        "written\n"
    );
    assert!(!out.contains(&secret), "a link reached a host file: {out}");
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let guest_passwd = out
        .split("passwd:\n")
        .nth(1)
        .and_then(|rest| rest.split("secret:\n").next())
        .unwrap();
    assert_ne!(guest_passwd, host_passwd, "the host's /etc/passwd leaked");
    assert!(
        guest_passwd.contains("sandbox:x:1000"),
        "the link resolved in the guest: {guest_passwd}"
    );
    for (dir, access) in [("/mnt/in", "ro"), ("/home/sandbox/out", "rw")] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!(" {dir} ")))
            .unwrap();
        let options: Vec<&str> = line.split(' ').nth(3).unwrap().split(',').collect();
        assert!(line.contains(" 9p "), "{line}");
        for wanted in [access, "nosuid", "nodev"] {
            assert!(options.contains(&wanted), "{wanted} missing: {line}");
        }
    }
    scheduler.shutdown().await;
}
