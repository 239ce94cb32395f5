//! Boot smoke test of the guest images, with a plain QEMU command (argv
//! from `airlock-qemu`, no orchestrator): every image boots, its agent
//! answers over the two virtio-serial ports, user code runs as uid 1000
//! with a read-only root and a writable home; no set-id file, no program
//! run from `/dev`, no process outliving its exec (see [`hardening`]). Then
//! 10 boots in a row with both cores busy: none may hang (the TCG
//! calibration hang).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock_protocol::client::ExecOutput;
use airlock_protocol::Language;
use airlock_qemu::NetworkAttachment;
use airlock_tests::{boot_plain, host_caps, images_or_skip, text, PlainVm};
use std::time::{Duration, Instant};

/// Runs `code` in `vm` as a process (the agent's timeout 30 s).
async fn exec(vm: &PlainVm, language: Language, code: &str) -> ExecOutput {
    vm.exec(
        language,
        code,
        Duration::from_secs(30),
        Duration::from_secs(10),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_image_boots_runs_its_language_as_uid_1000_with_a_read_only_root() {
    let Some(images) = images_or_skip("images_smoke") else {
        return;
    };
    let caps = host_caps(&images).await;
    let hello = [
        (Language::Python, "print(1)"),
        (Language::Javascript, "console.log(1)"),
        (Language::Raw, "echo 1"),
    ];
    // Boot the three images concurrently: the checks are independent.
    let runs = hello.map(|(language, code)| {
        let (images, caps) = (images.clone(), caps.clone());
        tokio::spawn(async move {
            let start = Instant::now();
            let mut vm = boot_plain(&images, &caps, language, NetworkAttachment::None, |_| Vec::new()).await;
            let boot = start.elapsed();
            let out = exec(&vm, language, code).await;
            assert_eq!(text(&out.stdout), "1\n", "{language}: {}", text(&out.stderr));
            assert_eq!(out.completion.exit_code, 0);
            let probe = exec(
                &vm,
                Language::Raw,
                "id -u; id -g; touch /rootfs-probe 2>/dev/null && echo root-writable || echo root-readonly; \
                 echo data > \"$HOME/probe\" && cat \"$HOME/probe\"; echo \"$HOME\"",
            )
            .await;
            assert_eq!(
                text(&probe.stdout),
                "1000\n1000\nroot-readonly\ndata\n/home/sandbox\n",
                "{language}: {}",
                text(&probe.stderr)
            );
            hardening(&vm, language).await;
            vm.child.kill().await.unwrap();
            eprintln!("{language}: booted to agent in {boot:?}");
        })
    });
    for run in runs {
        run.await.unwrap();
    }
}

/// The guest hardening, checked in one booted VM of each image: no set-id
/// file on the root disk, nothing runs from `/dev`, each exec in its own
/// cgroup, and a process that left the exec's session dies with the exec.
async fn hardening(vm: &PlainVm, language: Language) {
    let setid = exec(
        vm,
        Language::Raw,
        "find / -xdev -perm /6000 2>/dev/null; echo end",
    )
    .await;
    assert_eq!(
        text(&setid.stdout),
        "end\n",
        "{language}: set-id files on the root disk"
    );

    let dev = exec(
        vm,
        Language::Raw,
        "cp /bin/true /dev/shm/t && chmod 755 /dev/shm/t && /dev/shm/t 2>/dev/null; echo $?; \
         cut -d/ -f2 /proc/self/cgroup",
    )
    .await;
    assert_eq!(
        text(&dev.stdout),
        "126\nairlock-exec\n",
        "{language}: an executable in /dev/shm ran, or the exec is not in its cgroup: {}",
        text(&dev.stderr)
    );

    // A `sleep 1000` in a new session and a double-forked writer of a
    // marker: the exec returns at once, and must take them with it.
    let escape = exec(
        vm,
        Language::Raw,
        "setsid sh -c 'sleep 1000 & (sleep 2; echo escaped > \"$HOME/marker\") &' \
         </dev/null >/dev/null 2>&1; echo started",
    )
    .await;
    assert_eq!(text(&escape.stdout), "started\n", "{language}");
    let after = exec(
        vm,
        Language::Raw,
        "sleep 3; test -e \"$HOME/marker\" && echo marker || echo no-marker; \
         for p in /proc/[0-9]*; do cat $p/comm 2>/dev/null; done | grep -cx sleep",
    )
    .await;
    assert_eq!(
        text(&after.stdout),
        "no-marker\n0\n",
        "{language}: a process that left the exec's session survived it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_boots_in_a_row_under_full_cpu_load_never_hang() {
    let Some(images) = images_or_skip("images_smoke_under_load") else {
        return;
    };
    let caps = host_caps(&images).await;
    // Both cores busy for the whole test.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut load: Vec<std::process::Child> = (0..cores)
        .map(|_| {
            std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .unwrap()
        })
        .collect();
    let mut times = Vec::new();
    for i in 0..10 {
        let start = Instant::now();
        let mut vm = boot_plain(
            &images,
            &caps,
            Language::Raw,
            NetworkAttachment::None,
            |_| Vec::new(),
        )
        .await;
        let out = exec(&vm, Language::Raw, "echo up").await;
        assert_eq!(text(&out.stdout), "up\n", "boot {i}");
        times.push(start.elapsed());
        vm.child.kill().await.unwrap();
    }
    for l in &mut load {
        let _ = l.kill();
        let _ = l.wait();
    }
    eprintln!("10 boots under load: {times:?}");
}
