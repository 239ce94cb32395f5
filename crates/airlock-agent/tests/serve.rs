//! The agent served in-process over in-memory pipes, with real processes
//! (python3, node, bash) and real files.

mod common;

use airlock_protocol::client::sha256_hex;
use airlock_protocol::{
    Data, ErrorKind, EventBody, ExecMode, ExecRequest, FileKind, Language, ProtocolError,
    RequestBody, HELLO_OP, PROTOCOL_VERSION,
};
use common::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn guest_error(result: Result<impl std::fmt::Debug, ProtocolError>) -> (ErrorKind, String) {
    match result {
        Err(ProtocolError::Guest { kind, message }) => (kind, message),
        other => panic!("expected a guest error, got {other:?}"),
    }
}

#[tokio::test]
async fn ping_reports_version_and_protocol() {
    let agent = start().await;
    let info = agent.client.handshake(T).await.unwrap();
    assert_eq!(info.protocol, PROTOCOL_VERSION);
    assert_eq!(info.version, airlock_agent::AGENT_VERSION);
}

#[tokio::test]
async fn python_javascript_and_bash_run() {
    let agent = start().await;
    let py = run(&agent.client, Language::Python, "print(2 + 2)").await;
    let js = run(&agent.client, Language::Javascript, "console.log(6 * 7)").await;
    let sh = run(&agent.client, Language::Raw, "echo hi; echo err >&2").await;
    assert_eq!(text(&py.stdout), "4\n");
    assert_eq!(text(&js.stdout), "42\n");
    assert_eq!(
        (text(&sh.stdout).as_str(), text(&sh.stderr).as_str()),
        ("hi\n", "err\n")
    );
    for out in [&py, &js, &sh] {
        assert_eq!(out.completion.exit_code, 0);
        assert!(!out.completion.timed_out);
        assert!(out.completion.duration_ms >= out.completion.spawn_ms);
    }
}

#[tokio::test]
async fn code_too_big_for_the_command_line_runs_from_stdin() {
    let agent = start().await;
    let filler = "# padding\n".repeat(10_000); // 100 KB
    let js_filler = "// padding\n".repeat(10_000);
    let py = run(
        &agent.client,
        Language::Python,
        &format!("{filler}import sys\nprint(len(sys.stdin.read()))"),
    )
    .await;
    let js = run(
        &agent.client,
        Language::Javascript,
        &format!("{js_filler}console.log('js ok')"),
    )
    .await;
    let sh = run(
        &agent.client,
        Language::Raw,
        &format!("{filler}read -r x; echo \"sh ok [$x]\""),
    )
    .await;
    assert_eq!(text(&py.stdout), "0\n", "{}", text(&py.stderr));
    assert_eq!(text(&js.stdout), "js ok\n", "{}", text(&js.stderr));
    assert_eq!(text(&sh.stdout), "sh ok []\n", "{}", text(&sh.stderr));
}

#[tokio::test]
async fn exit_codes_are_reported() {
    let agent = start().await;
    let sh = run(&agent.client, Language::Raw, "exit 3").await;
    let py = run(&agent.client, Language::Python, "import sys; sys.exit(5)").await;
    let js = run(&agent.client, Language::Javascript, "process.exit(7)").await;
    assert_eq!(
        [
            sh.completion.exit_code,
            py.completion.exit_code,
            js.completion.exit_code
        ],
        [3, 5, 7]
    );
}

#[tokio::test]
async fn death_by_signal_reports_128_plus_the_signal() {
    let agent = start().await;
    let killed = run(&agent.client, Language::Raw, "kill -KILL $$").await;
    let segv = run(
        &agent.client,
        Language::Python,
        "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
    )
    .await;
    assert_eq!(killed.completion.exit_code, 128 + 9);
    assert_eq!(segv.completion.exit_code, 128 + 11);
    assert!(!killed.completion.timed_out);
}

#[tokio::test]
async fn timeout_terminates_a_busy_loop() {
    let agent = start().await;
    let mut request = exec_request(Language::Python, "while True: pass");
    request.timeout_ms = 1000;
    let started = Instant::now();
    let out = agent.client.exec_collect(request, T).await.unwrap();
    let elapsed = started.elapsed();
    assert!(out.completion.timed_out);
    assert_eq!(out.completion.exit_code, 128 + 15);
    assert!(
        elapsed >= Duration::from_millis(1000) && elapsed < Duration::from_millis(2500),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn timeout_kills_after_the_grace_when_term_is_ignored() {
    let agent = start().await;
    let mut request = exec_request(
        Language::Raw,
        "trap '' TERM; echo armed; while :; do :; done",
    );
    request.timeout_ms = 1000;
    let started = Instant::now();
    let out = agent.client.exec_collect(request, T).await.unwrap();
    let elapsed = started.elapsed();
    assert!(out.completion.timed_out);
    assert_eq!(out.completion.exit_code, 128 + 9);
    assert_eq!(text(&out.stdout), "armed\n");
    // timeout (1 s) + grace (2 s)
    assert!(
        elapsed >= Duration::from_millis(3000) && elapsed < Duration::from_millis(4500),
        "{elapsed:?}"
    );
    assert!(out.completion.duration_ms >= 3000);
}

#[tokio::test]
async fn output_over_the_cap_is_cut_and_the_process_runs_to_completion() {
    let agent = start().await;
    let code = "import sys\n\
                chunk = b'x' * 65536\n\
                for _ in range(320): sys.stdout.buffer.write(chunk)\n\
                sys.stdout.flush()\n\
                open('finished.txt', 'w').write('yes')\n\
                sys.stderr.write('done\\n')\n";
    let started = Instant::now();
    let out = run(&agent.client, Language::Python, code).await;
    let elapsed = started.elapsed();
    let cap = airlock_agent::AgentConfig::default().stdout_cap_bytes;
    let marker = format!("\n[airlock: stdout truncated after {cap} bytes]\n");
    assert_eq!(out.completion.exit_code, 0, "{}", text(&out.stderr));
    assert!(out.completion.stdout_truncated);
    assert!(!out.completion.stderr_truncated);
    assert_eq!(out.stdout.len() as u64, cap + marker.len() as u64);
    assert!(out.stdout.ends_with(marker.as_bytes()));
    assert!(out.stdout[..cap as usize].iter().all(|&b| b == b'x'));
    assert_eq!(text(&out.stderr), "done\n");
    let finished = agent.client.read_file("finished.txt", T).await.unwrap();
    assert_eq!(finished.data, b"yes");
    eprintln!("20 MiB of output, 4 MiB kept: {elapsed:?}");
}

#[tokio::test]
async fn binary_output_round_trips_exactly() {
    let agent = start().await;
    let code = "import sys; sys.stdout.buffer.write(bytes(range(256)) * 3); sys.stderr.buffer.write(b'\\xff\\xfe')";
    let out = run(&agent.client, Language::Python, code).await;
    let expected: Vec<u8> = (0..=255u8).cycle().take(256 * 3).collect();
    assert_eq!(out.stdout, expected);
    assert_eq!(out.stderr, [0xff, 0xfe]);
}

#[tokio::test]
async fn text_output_split_across_writes_stays_text() {
    let mut agent = start_raw();
    // "€" written byte by byte with pauses longer than the flush interval.
    let code = "import sys, time\n\
                for b in '€'.encode() * 2:\n    sys.stdout.buffer.write(bytes([b])); sys.stdout.flush(); time.sleep(0.02)\n";
    agent
        .send(1, RequestBody::Exec(exec_request(Language::Python, code)))
        .await;
    let mut stdout = Vec::new();
    for body in agent.until_last_of(1).await {
        if let EventBody::Stdout { data } = body {
            stdout.extend_from_slice(data.as_bytes());
        }
    }
    assert_eq!(text(&stdout), "€€");
}

#[tokio::test]
async fn refused_environment_variables_are_named_by_class() {
    let agent = start().await;
    for name in [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "GLIBC_TUNABLES",
        "PYTHONSTARTUP",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONINSPECT",
        "NODE_OPTIONS",
        "NODE_PATH",
        "BASH_ENV",
        "ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "BASH_FUNC_f",
        "PATH",
        "HOME",
        "1NOT_POSIX",
        "WITH-DASH",
    ] {
        let mut request = exec_request(Language::Raw, "echo should not run");
        request.env = BTreeMap::from([(name.to_owned(), "x".to_owned())]);
        let (kind, message) = guest_error(agent.client.exec_collect(request, T).await);
        assert_eq!(kind, ErrorKind::EnvRefused, "{name}");
        assert!(message.contains(name), "{name}: {message}");
    }
    let mut request = exec_request(
        Language::Raw,
        "printf '%s|%s|%s' \"$KEY\" \"$HOME\" \"$LANG\"",
    );
    request.env = BTreeMap::from([("KEY".to_owned(), "va lue=1".to_owned())]);
    let out = agent.client.exec_collect(request, T).await.unwrap();
    let home = agent.home.path().display().to_string();
    assert_eq!(text(&out.stdout), format!("va lue=1|{home}|C.UTF-8"));
}

#[tokio::test]
async fn environment_is_clean() {
    let agent = start().await;
    std::env::set_var("AIRLOCK_TEST_LEAK", "leaked");
    let out = run(
        &agent.client,
        Language::Raw,
        "env | cut -d= -f1 | sort | tr '\\n' ' '",
    )
    .await;
    let names = text(&out.stdout);
    assert!(!names.contains("AIRLOCK_TEST_LEAK"), "{names}");
    for expected in ["HOME", "LANG", "PATH", "PYTHONUNBUFFERED", "TMPDIR", "USER"] {
        assert!(names.contains(expected), "{expected} missing from {names}");
    }
}

#[tokio::test]
async fn user_code_runs_as_the_sandbox_user_without_extra_groups() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let agent = start().await;
    let out = run(
        &agent.client,
        Language::Raw,
        "id -u; id -g; grep '^Groups:' /proc/self/status; cat /proc/self/status | grep NoNewPrivs",
    )
    .await;
    let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
    assert_eq!(lines[0], "1000");
    assert_eq!(lines[1], "1000");
    assert!(
        !lines[2].chars().any(|c| c.is_ascii_digit()),
        "supplementary groups: {}",
        lines[2]
    );
    assert!(lines[3].ends_with('1'), "{}", lines[3]);
    agent
        .client
        .write_file("owned.txt", 0o644, b"x", T)
        .await
        .unwrap();
    agent
        .client
        .write_file("sub/dir/owned.txt", 0o644, b"x", T)
        .await
        .unwrap();
    use std::os::unix::fs::MetadataExt;
    for path in ["owned.txt", "sub", "sub/dir", "sub/dir/owned.txt"] {
        let meta = std::fs::metadata(agent.home.path().join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000), "{path}");
    }
    let out = run(
        &agent.client,
        Language::Raw,
        "echo more >> owned.txt && cat owned.txt",
    )
    .await;
    assert_eq!(text(&out.stdout), "xmore\n");
}

#[tokio::test]
async fn concurrent_execs_interleave_and_both_complete() {
    let mut agent = start_raw();
    let code = |tag: &str| {
        format!("import time\nfor i in range(8):\n    print('{tag}', i, flush=True)\n    time.sleep(0.05)\n")
    };
    agent
        .send(
            1,
            RequestBody::Exec(exec_request(Language::Python, &code("a"))),
        )
        .await;
    agent
        .send(
            2,
            RequestBody::Exec(exec_request(Language::Python, &code("b"))),
        )
        .await;
    let mut order = Vec::new();
    let mut complete = 0;
    while complete < 2 {
        let event = agent.next().await;
        match event.body {
            EventBody::Stdout { .. } => order.push(event.op),
            EventBody::Complete(c) => {
                assert_eq!(c.exit_code, 0);
                complete += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let first = |op| order.iter().position(|&o| o == op).unwrap();
    let last = |op| order.iter().rposition(|&o| o == op).unwrap();
    assert!(
        first(2) < last(1) && first(1) < last(2),
        "not interleaved: {order:?}"
    );
}

#[tokio::test]
async fn a_64_mib_file_round_trips_with_matching_sha256() {
    let agent = start().await;
    let content: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let started = Instant::now();
    let sha = agent
        .client
        .write_file("big/blob.bin", 0o600, &content, T)
        .await
        .unwrap();
    let written = started.elapsed();
    let started = Instant::now();
    let back = agent.client.read_file("big/blob.bin", T).await.unwrap();
    let read = started.elapsed();
    assert_eq!(sha, sha256_hex(&content));
    assert_eq!(back.sha256, sha);
    assert!(back.data == content);
    eprintln!("64 MiB: write {written:?}, read {read:?}");
}

#[tokio::test]
async fn traversal_and_symlink_escapes_are_refused() {
    let agent = start().await;
    let home = agent.home.path();
    std::os::unix::fs::symlink("/etc", home.join("etc_link")).unwrap();
    std::os::unix::fs::symlink("..", home.join("up")).unwrap();
    // A name nothing else uses: the home's parent is the shared temp dir.
    let x = format!("airlock-escape-{}", std::process::id());
    let paths = [
        format!("../{x}"),
        "/etc/passwd".to_owned(),
        format!("a/../../{x}"),
        "etc_link/passwd".to_owned(),
        format!("up/{x}"),
        format!("up/../{x}"),
    ];
    for path in paths.iter().map(String::as_str) {
        let (kind, _) = guest_error(agent.client.read_file(path, T).await);
        assert_eq!(kind, ErrorKind::InvalidPath, "read {path}");
        let (kind, _) = guest_error(agent.client.write_file(path, 0o644, b"evil", T).await);
        assert_eq!(kind, ErrorKind::InvalidPath, "write {path}");
    }
    for path in ["etc_link", "up", "..", "/"] {
        let (kind, _) = guest_error(agent.client.list_files(path, T).await);
        assert_eq!(kind, ErrorKind::InvalidPath, "list {path}");
    }
    let mut request = exec_request(Language::Raw, "pwd");
    request.cwd = Some("up".into());
    let (kind, _) = guest_error(agent.client.exec_collect(request, T).await);
    assert_eq!(kind, ErrorKind::InvalidPath);
    let parent = home.parent().unwrap();
    assert!(!parent.join(&x).exists());
    let names: Vec<_> = std::fs::read_dir(home)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "nothing created in the home: {names:?}");
}

#[tokio::test]
async fn symlinks_inside_the_home_are_followed_for_reads() {
    let agent = start().await;
    agent
        .client
        .write_file("data/real.txt", 0o644, b"content", T)
        .await
        .unwrap();
    std::os::unix::fs::symlink("data/real.txt", agent.home.path().join("alias")).unwrap();
    let read = agent.client.read_file("alias", T).await.unwrap();
    assert_eq!(read.data, b"content");
}

#[tokio::test]
async fn list_files_is_sorted_typed_and_does_not_follow() {
    let agent = start().await;
    agent
        .client
        .write_file("d/b.txt", 0o640, b"12345", T)
        .await
        .unwrap();
    agent
        .client
        .write_file("d/a/x", 0o644, b"", T)
        .await
        .unwrap();
    std::os::unix::fs::symlink("/etc", agent.home.path().join("d/c")).unwrap();
    let entries = agent.client.list_files("d", T).await.unwrap();
    let summary: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
    assert_eq!(
        summary,
        [
            ("a", FileKind::Dir),
            ("b.txt", FileKind::File),
            ("c", FileKind::Symlink)
        ]
    );
    assert_eq!((entries[1].size, entries[1].mode), (5, 0o640));
    let root = agent.client.list_files("", T).await.unwrap();
    assert_eq!(
        root.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["d"]
    );
    let (kind, _) = guest_error(agent.client.list_files("missing", T).await);
    assert_eq!(kind, ErrorKind::NotFound);
}

#[tokio::test]
async fn exec_runs_in_the_home_or_a_directory_beneath_it() {
    let agent = start().await;
    agent
        .client
        .write_file("work/in.txt", 0o644, b"input", T)
        .await
        .unwrap();
    let out = run(&agent.client, Language::Raw, "pwd").await;
    assert_eq!(
        text(&out.stdout).trim(),
        agent.home.path().display().to_string()
    );
    let mut request = exec_request(Language::Python, "print(open('in.txt').read())");
    request.cwd = Some("work".into());
    let out = agent.client.exec_collect(request, T).await.unwrap();
    assert_eq!(text(&out.stdout), "input\n");
    let mut request = exec_request(Language::Raw, "pwd");
    request.cwd = Some("missing".into());
    let (kind, _) = guest_error(agent.client.exec_collect(request, T).await);
    assert_eq!(kind, ErrorKind::NotFound);
}

#[tokio::test]
async fn write_protocol_acks_then_commits_and_refuses_stray_chunks() {
    let mut agent = start_raw();
    // A chunk and an end without write_file.
    agent
        .send(
            5,
            RequestBody::FileChunk {
                data: Data::base64("x"),
            },
        )
        .await;
    assert!(matches!(
        agent.next().await.body,
        EventBody::Error {
            kind: ErrorKind::BadState,
            ..
        }
    ));
    agent.send(5, RequestBody::FileEnd).await;
    assert!(matches!(
        agent.next().await.body,
        EventBody::Error {
            kind: ErrorKind::BadState,
            ..
        }
    ));

    // Announced size that does not match: error, no file, no temp file.
    let write = |size| RequestBody::WriteFile {
        path: "f.txt".into(),
        mode: 0o644,
        size: Some(size),
    };
    agent.send(6, write(10)).await;
    assert_eq!(
        agent.next().await.body,
        EventBody::FileAck {
            size: 0,
            sha256: None
        }
    );
    agent
        .send(
            6,
            RequestBody::FileChunk {
                data: Data::base64("hello"),
            },
        )
        .await;
    agent.send(6, RequestBody::FileEnd).await;
    assert!(matches!(
        agent.next().await.body,
        EventBody::Error {
            kind: ErrorKind::InvalidRequest,
            ..
        }
    ));
    assert_eq!(std::fs::read_dir(agent.home.path()).unwrap().count(), 0);

    // A good write; the op id is free again afterwards.
    agent.send(6, write(5)).await;
    assert_eq!(
        agent.next().await.body,
        EventBody::FileAck {
            size: 0,
            sha256: None
        }
    );
    agent
        .send(
            6,
            RequestBody::FileChunk {
                data: Data::base64("hel"),
            },
        )
        .await;
    agent
        .send(
            6,
            RequestBody::FileChunk {
                data: Data::text_or_base64("lo"),
            },
        )
        .await;
    agent.send(6, RequestBody::FileEnd).await;
    let EventBody::FileAck { size, sha256 } = agent.next().await.body else {
        panic!("no ack")
    };
    assert_eq!((size, sha256), (5, Some(sha256_hex(b"hello"))));
    assert_eq!(
        std::fs::read(agent.home.path().join("f.txt")).unwrap(),
        b"hello"
    );
}

#[tokio::test]
async fn a_malformed_chunk_fails_its_write_and_later_chunks_are_dropped() {
    let mut agent = start_raw();
    let write = RequestBody::WriteFile {
        path: "f.bin".into(),
        mode: 0o644,
        size: None,
    };
    agent.send(7, write).await;
    assert_eq!(
        agent.next().await.body,
        EventBody::FileAck {
            size: 0,
            sha256: None
        }
    );
    agent
        .send_line(br#"{"op":7,"action":"file_chunk","data":{"base64":"!!"}}"#)
        .await;
    let event = agent.next().await;
    assert_eq!(event.op, 7);
    assert!(matches!(
        event.body,
        EventBody::Error {
            kind: ErrorKind::Malformed,
            ..
        }
    ));
    agent
        .send(
            7,
            RequestBody::FileChunk {
                data: Data::base64("late"),
            },
        )
        .await;
    agent.send(7, RequestBody::FileEnd).await;
    agent.send(8, RequestBody::Ping).await;
    let next = agent.next().await;
    assert_eq!(next.op, 8, "the late chunk and end got no answer: {next:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(std::fs::read_dir(agent.home.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn file_size_cap_is_enforced() {
    let agent = start_with(|c| c.max_file_bytes = 1000).await;
    let (kind, _) = guest_error(agent.client.write_file("big", 0o644, &[0; 1001], T).await);
    assert_eq!(kind, ErrorKind::LimitExceeded);
    std::fs::write(agent.home.path().join("big"), [0; 1001]).unwrap();
    let (kind, _) = guest_error(agent.client.read_file("big", T).await);
    assert_eq!(kind, ErrorKind::LimitExceeded);
    assert!(agent.client.ping(T).await.is_ok());
}

#[tokio::test]
async fn an_op_id_in_flight_is_refused() {
    let mut agent = start_raw();
    let slow = exec_request(Language::Raw, "sleep 0.5; echo done");
    agent.send(3, RequestBody::Exec(slow.clone())).await;
    agent.send(3, RequestBody::Exec(slow)).await;
    let first = agent.next().await;
    assert_eq!(first.op, 3);
    assert!(
        matches!(
            first.body,
            EventBody::Error {
                kind: ErrorKind::BadState,
                ..
            }
        ),
        "{first:?}"
    );
    let rest = agent.until_last_of(3).await;
    assert!(matches!(rest.last(), Some(EventBody::Complete(c)) if c.exit_code == 0));
}

#[tokio::test]
async fn malformed_lines_are_answered_and_the_next_request_works() {
    let mut agent = start_raw_with(|c| c.max_line_bytes = 1 << 20);
    let oversized = format!(
        "{{\"op\":12,\"action\":\"ping\",\"pad\":\"{}\"}}",
        "x".repeat(2 << 20)
    );
    let cases: Vec<(Vec<u8>, u64, ErrorKind)> = vec![
        (b"{not json".to_vec(), 0, ErrorKind::Malformed),
        (
            br#"{"op":9,"action":"launch_missiles"}"#.to_vec(),
            9,
            ErrorKind::UnknownAction,
        ),
        (
            b"{\"op\":10,\"action\":\"ping\",\"x\":\"\xff\"}".to_vec(),
            0,
            ErrorKind::Malformed,
        ),
        (
            br#"{"op":11,"action":"exec"}"#.to_vec(),
            11,
            ErrorKind::Malformed,
        ),
        (oversized.into_bytes(), 0, ErrorKind::TooLarge),
    ];
    for (i, (line, op, kind)) in cases.into_iter().enumerate() {
        agent.send_line(&line).await;
        let event = agent.next().await;
        assert_eq!(event.op, op, "case {i}");
        assert!(
            matches!(event.body, EventBody::Error { kind: k, .. } if k == kind),
            "case {i}: {event:?}"
        );
        let ping_op = 100 + i as u64;
        agent.send(ping_op, RequestBody::Ping).await;
        let pong = agent.next().await;
        assert_eq!(pong.op, ping_op);
        assert!(matches!(pong.body, EventBody::Pong { .. }));
    }
    assert!(!agent.served.is_finished());
}

#[tokio::test]
async fn warm_repl_completes_without_output() {
    let mut agent = start_raw();
    agent
        .send(
            1,
            RequestBody::WarmRepl {
                language: Language::Python,
                for_template: false,
            },
        )
        .await;
    agent
        .send(
            2,
            RequestBody::WarmRepl {
                language: Language::Raw,
                for_template: false,
            },
        )
        .await;
    let mut done = Vec::new();
    for _ in 0..2 {
        // Only `complete` events: warm_repl sends no output.
        let event = agent.next().await;
        assert!(
            matches!(&event.body, EventBody::Complete(c) if c.exit_code == 0),
            "{event:?}"
        );
        done.push(event.op);
    }
    done.sort_unstable();
    assert_eq!(done, [1, 2]);
}

#[tokio::test]
async fn install_packages_refuses_options_and_raw() {
    let mut agent = start_raw();
    let install = |language, packages: &[&str]| RequestBody::InstallPackages {
        language,
        packages: packages.iter().map(|p| (*p).to_owned()).collect(),
        timeout_ms: 10_000,
        env: Default::default(),
    };
    agent
        .send(1, install(Language::Python, &["-r", "/etc/passwd"]))
        .await;
    agent
        .send(2, install(Language::Javascript, &["ok", "--global"]))
        .await;
    agent.send(3, install(Language::Raw, &["curl"])).await;
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let event = agent.next().await;
        let EventBody::Error { kind, .. } = event.body else {
            panic!("{event:?}")
        };
        kinds.push((event.op, kind));
    }
    kinds.sort_by_key(|(op, _)| *op);
    assert_eq!(
        kinds,
        [
            (1, ErrorKind::InvalidRequest),
            (2, ErrorKind::InvalidRequest),
            (3, ErrorKind::Unsupported)
        ]
    );
}

#[tokio::test]
async fn closing_the_command_stream_kills_running_processes() {
    let mut agent = start_raw();
    agent
        .send(
            1,
            RequestBody::Exec(exec_request(Language::Raw, "echo $$; sleep 30")),
        )
        .await;
    let EventBody::Stdout { data } = agent.next().await.body else {
        panic!("no pid")
    };
    let pid: i32 = text(data.as_bytes()).trim().parse().unwrap();
    drop(agent.writer);
    let served = tokio::time::timeout(Duration::from_secs(10), agent.served).await;
    assert!(matches!(served, Ok(Ok(Ok(())))), "{served:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                !s.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false)
    };
    while alive() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(), "process {pid} survived");
}

#[tokio::test]
async fn a_background_child_holding_the_pipes_does_not_hang_the_exec() {
    let agent = start().await;
    let started = Instant::now();
    let out = run(&agent.client, Language::Raw, "sleep 30 & echo started").await;
    assert_eq!(text(&out.stdout), "started\n");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Starts a `sleep 1000` in a new session (outside the exec's process
/// group) and a double-forked writer of `marker`; prints the sleep's pid, its
/// session id and the exec's own pid (its process group).
const ESCAPE_THE_SESSION: &str = "setsid sh -c 'sleep 1000 & echo $! > pid; \
    (sleep 2; echo escaped > marker) &' </dev/null >/dev/null 2>&1; \
    read p < pid; echo $p $(cut -d' ' -f6 /proc/$p/stat) $$";

#[tokio::test]
async fn a_process_that_left_the_session_does_not_outlive_its_exec() {
    // Arrange
    let Some(cgroups) = TestCgroupParent::new("setsid") else {
        eprintln!("skipped: needs root and a cgroup2 mount");
        return;
    };
    let agent = start_with(|c| c.exec_cgroup_parent = Some(cgroups.path().to_owned())).await;

    // Act
    let out = run(&agent.client, Language::Raw, ESCAPE_THE_SESSION).await;

    // Assert: the sleep had left the exec's session and group, and is dead
    // as soon as the exec returned; the marker never appears.
    let fields: Vec<i32> = text(&out.stdout)
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    let [sleep_pid, sleep_session, exec_pid] = fields[..] else {
        panic!("unexpected output {:?}", text(&out.stdout))
    };
    assert_ne!(sleep_session, exec_pid, "the sleep left the exec's session");
    assert!(
        !is_running(sleep_pid),
        "the setsid'd sleep survived the exec"
    );
    assert!(cgroups.children().is_empty(), "{:?}", cgroups.children());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!agent.home.path().join("marker").exists());
}

#[tokio::test]
async fn a_timed_out_exec_kills_what_left_its_session() {
    // Arrange
    let Some(cgroups) = TestCgroupParent::new("timeout") else {
        eprintln!("skipped: needs root and a cgroup2 mount");
        return;
    };
    let agent = start_with(|c| {
        c.exec_cgroup_parent = Some(cgroups.path().to_owned());
        c.kill_grace = Duration::from_millis(200);
    })
    .await;
    let mut request = exec_request(
        Language::Raw,
        "setsid sh -c 'sleep 1000 & echo $! > pid' </dev/null >/dev/null 2>&1; exec sleep 1000",
    );
    request.timeout_ms = 500;

    // Act
    let out = agent.client.exec_collect(request, T).await.expect("exec");

    // Assert
    assert!(out.completion.timed_out);
    let pid: i32 = std::fs::read_to_string(agent.home.path().join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!is_running(pid), "the setsid'd sleep survived the timeout");
    assert!(cgroups.children().is_empty(), "{:?}", cgroups.children());
}

#[tokio::test]
async fn operations_over_the_limit_are_refused_but_ping_answers() {
    let mut agent = start_raw_with(|c| c.max_ops_in_flight = 2);
    let slow = exec_request(Language::Raw, "sleep 0.3");
    agent.send(1, RequestBody::Exec(slow.clone())).await;
    agent.send(2, RequestBody::Exec(slow.clone())).await;
    agent.send(3, RequestBody::Exec(slow)).await;
    agent.send(4, RequestBody::Ping).await;
    let refused = agent.next().await;
    assert_eq!(refused.op, 3);
    assert!(matches!(
        refused.body,
        EventBody::Error {
            kind: ErrorKind::LimitExceeded,
            ..
        }
    ));
    let pong = agent.next().await;
    assert!(matches!(pong.body, EventBody::Pong { .. }), "{pong:?}");
}

/// A FIFO behaves like a virtio-serial port without a host: reads return
/// end-of-file while no writer is connected. The agent must keep serving.
#[tokio::test]
async fn port_mode_serves_a_host_that_disconnects_and_comes_back() {
    use airlock_agent::ports::EofRetry;
    use airlock_protocol::{FrameReader, Request};
    use tokio::io::AsyncWriteExt;

    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("cmd");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    let config = std::sync::Arc::new(config(&home));
    airlock_agent::prepare_home(&config).unwrap();
    let (agent_event, host_event) = tokio::io::duplex(1 << 16);
    let mut events = FrameReader::new(host_event);

    let agent_side = tokio::spawn(tokio::fs::File::open(fifo.clone()));
    let line = |op| airlock_protocol::encode_line(&Request::new(op, RequestBody::Ping)).unwrap();
    let connect = || {
        let fifo = fifo.clone();
        async move { tokio::fs::OpenOptions::new().write(true).open(fifo).await }
    };

    // First host: connects (which completes the agent's open), asks, leaves.
    let mut host = connect().await.unwrap();
    let port = agent_side.await.unwrap().unwrap();
    let served = EofRetry::new(port, Duration::from_millis(20));
    tokio::spawn(airlock_agent::serve(served, agent_event, config));
    host.write_all(&line(1)).await.unwrap();
    drop(host);
    let hello = next_event(&mut events).await;
    assert_eq!((hello.op, hello.body.type_name()), (HELLO_OP, "pong"));
    let event = next_event(&mut events).await;
    assert_eq!((event.op, event.body.type_name()), (1, "pong"));
    tokio::time::sleep(Duration::from_millis(100)).await; // several ends of file

    // Second host: served by the same agent.
    let mut host = connect().await.unwrap();
    host.write_all(&line(2)).await.unwrap();
    let event = next_event(&mut events).await;
    assert_eq!((event.op, event.body.type_name()), (2, "pong"));
}

#[tokio::test]
async fn a_missing_interpreter_is_a_spawn_failure() {
    let agent = start_with(|c| c.path_env = "/nonexistent".into()).await;
    let (kind, message) = guest_error(
        agent
            .client
            .exec_collect(exec_request(Language::Python, "print(1)"), T)
            .await,
    );
    assert_eq!(kind, ErrorKind::SpawnFailed);
    assert!(message.contains("python3"), "{message}");
    assert!(agent.client.ping(T).await.is_ok());
}

async fn next_event(
    events: &mut airlock_protocol::FrameReader<tokio::io::DuplexStream>,
) -> airlock_protocol::Event {
    tokio::time::timeout(T, events.next_event())
        .await
        .expect("an event in time")
        .expect("transport")
        .expect("not closed")
        .expect("decodable")
}

#[tokio::test]
async fn a_reseed_with_too_little_entropy_is_refused_and_the_agent_goes_on() {
    let agent = start().await;
    // 31 bytes: refused before anything in the system is touched (a test
    // must not set the host's clock).
    let (kind, message) = guest_error(agent.client.reseed(&[7u8; 31], 0, T).await);
    assert_eq!(kind, ErrorKind::InvalidRequest);
    assert!(message.contains("at least 32"), "{message}");
    let sh = run(&agent.client, Language::Raw, "echo still here").await;
    assert_eq!(text(&sh.stdout), "still here\n");
}

#[tokio::test]
async fn warm_repl_through_the_client_reports_the_completion() {
    let agent = start().await;
    let completion = agent
        .client
        .warm_repl(Language::Raw, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(completion.exit_code, 0);
}

/// A source that gives `good` bytes, then fails.
struct FailingSource {
    good: usize,
}

impl tokio::io::AsyncRead for FailingSource {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.good == 0 {
            return std::task::Poll::Ready(Err(std::io::Error::other("the client went away")));
        }
        let n = self.good.min(buf.remaining());
        buf.put_slice(&vec![7u8; n]);
        self.good -= n;
        std::task::Poll::Ready(Ok(()))
    }
}

/// Waits (bounded) until the home holds exactly `expected` names.
async fn home_settles_to(home: &std::path::Path, expected: &[&str]) {
    let names = || {
        let mut names: Vec<String> = std::fs::read_dir(home)
            .expect("the home lists")
            .map(|e| {
                e.expect("an entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    };
    for _ in 0..100 {
        if names() == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(names(), expected, "the home did not settle");
}

#[tokio::test]
async fn a_streamed_upload_and_download_move_many_chunks_and_agree_on_the_sha256() {
    use airlock_protocol::client::FILE_CHUNK_BYTES;
    let agent = start().await;
    let content: Vec<u8> = (0..(FILE_CHUNK_BYTES * 7 / 2) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let mut source = &content[..];
    let written = agent
        .client
        .write_file_from("s/in.bin", 0o644, None, &mut source, u64::MAX, T)
        .await
        .unwrap();
    assert_eq!(written.size, content.len() as u64);
    assert_eq!(written.sha256, sha256_hex(&content));

    let mut sink = Vec::new();
    let read = agent
        .client
        .read_file_into("s/in.bin", u64::MAX, &mut sink, T)
        .await
        .unwrap();
    assert_eq!(read, written);
    assert!(sink == content);
}

#[tokio::test]
async fn an_upload_whose_source_fails_half_way_leaves_no_file_and_no_temporary() {
    let agent = start().await;
    let mut source = FailingSource { good: 600 * 1024 };
    let err = agent
        .client
        .write_file_from("half.bin", 0o644, None, &mut source, u64::MAX, T)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProtocolError::HostStream { path, action: "read the source", .. } if path == "half.bin"),
        "{err}"
    );
    // The guest was told: its temporary file goes, nothing appears.
    home_settles_to(agent.home.path(), &[]).await;
    assert!(agent.client.ping(T).await.is_ok());
}

#[tokio::test]
async fn an_upload_past_its_cap_fails_naming_the_path_and_leaves_nothing() {
    let agent = start().await;
    let content = vec![1u8; 1_000_000];
    let mut source = &content[..];
    let err = agent
        .client
        .write_file_from("capped.bin", 0o644, None, &mut source, 300_000, T)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProtocolError::FileTooLarge { path, limit_bytes: 300_000 } if path == "capped.bin"),
        "{err}"
    );
    home_settles_to(agent.home.path(), &[]).await;
    // A declared size over the cap is refused before anything is sent.
    let mut source = &content[..];
    let err = agent
        .client
        .write_file_from(
            "capped.bin",
            0o644,
            Some(1_000_000),
            &mut source,
            300_000,
            T,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ProtocolError::FileTooLarge { .. }), "{err}");
    assert_eq!(
        source.len(),
        content.len(),
        "nothing was read from the source"
    );
}

#[tokio::test]
async fn a_dropped_upload_is_cancelled_in_the_guest() {
    let agent = start().await;
    // A source that never ends after its first chunk: the write hangs
    // until its future is dropped.
    let (mut feed, mut source) = tokio::io::duplex(64 * 1024);
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _ = feed.write_all(&[5u8; 300 * 1024]).await;
        // Keep the pipe open until the upload is dropped.
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let upload = agent
        .client
        .write_file_from("dropped.bin", 0o644, None, &mut source, u64::MAX, T);
    assert!(tokio::time::timeout(Duration::from_millis(500), upload)
        .await
        .is_err());
    writer.abort();
    home_settles_to(agent.home.path(), &[]).await;
    assert!(agent.client.ping(T).await.is_ok());
}

#[tokio::test]
async fn a_read_over_its_cap_is_refused_before_any_byte_reaches_the_sink() {
    let agent = start().await;
    std::fs::write(agent.home.path().join("big.bin"), vec![3u8; 900_000]).unwrap();
    let mut sink = Vec::new();
    let err = agent
        .client
        .read_file_into("big.bin", 100_000, &mut sink, T)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProtocolError::FileTooLarge { path, limit_bytes: 100_000 } if path == "big.bin"),
        "{err}"
    );
    assert!(
        sink.is_empty(),
        "{} bytes leaked before the refusal",
        sink.len()
    );
    assert!(agent.client.ping(T).await.is_ok());
}

#[tokio::test]
async fn a_read_whose_destination_fails_ends_with_a_host_stream_error() {
    let agent = start().await;
    std::fs::write(agent.home.path().join("f.bin"), vec![3u8; 900_000]).unwrap();
    // A destination that takes a little, then refuses.
    let (sink, reader) = tokio::io::duplex(1024);
    drop(reader);
    let mut sink = sink;
    let err = agent
        .client
        .read_file_into("f.bin", u64::MAX, &mut sink, T)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ProtocolError::HostStream {
                action: "write the destination",
                ..
            }
        ),
        "{err}"
    );
    // The channel is still good for the next call.
    let back = agent.client.read_file("f.bin", T).await.unwrap();
    assert_eq!(back.data.len(), 900_000);
}

/// A `piped_process` exec of `code` (bash).
fn piped(code: &str) -> ExecRequest {
    ExecRequest {
        mode: ExecMode::PipedProcess,
        ..exec_request(Language::Raw, code)
    }
}

#[tokio::test]
async fn a_piped_process_reads_what_the_host_sends_until_it_closes_stdin() {
    let agent = start().await;
    let mut stream = agent.client.exec(piped("cat; echo done")).await.unwrap();
    let op = stream.op();
    agent.client.send_stdin(op, b"hello\n").await.unwrap();
    agent.client.send_stdin(op, &[0xff, b'\n']).await.unwrap();
    agent.client.close_stdin(op).await.unwrap();
    // Sent after the close: dropped, as for a finished target.
    agent.client.send_stdin(op, b"late\n").await.unwrap();
    let out = tokio::time::timeout(T, async {
        let mut stdout = Vec::new();
        while let Some(event) = stream.next().await.unwrap() {
            match event {
                airlock_protocol::client::ExecEvent::Stdout(b) => stdout.extend_from_slice(&b),
                airlock_protocol::client::ExecEvent::Complete(c) => return (stdout, c),
                _ => {}
            }
        }
        panic!("no completion")
    })
    .await
    .unwrap();
    assert_eq!(out.0, b"hello\n\xff\ndone\n");
    assert_eq!(out.1.exit_code, 0);
}

#[tokio::test]
async fn a_plain_process_has_no_stdin_and_stdin_to_it_is_ignored() {
    let agent = start().await;
    let mut stream = agent
        .client
        .exec(exec_request(Language::Raw, "cat; echo eof"))
        .await
        .unwrap();
    agent
        .client
        .send_stdin(stream.op(), b"ignored\n")
        .await
        .unwrap();
    agent.client.close_stdin(424_242).await.unwrap();
    let mut stdout = Vec::new();
    while let Some(event) = tokio::time::timeout(T, stream.next())
        .await
        .unwrap()
        .unwrap()
    {
        if let airlock_protocol::client::ExecEvent::Stdout(b) = event {
            stdout.extend_from_slice(&b);
        }
    }
    assert_eq!(stdout, b"eof\n");
    assert!(agent.client.ping(T).await.is_ok());
}

#[tokio::test]
async fn a_piped_process_whose_code_needs_stdin_is_refused() {
    let agent = start().await;
    let long = format!("echo {}", "x".repeat(200_000));
    let err = agent
        .client
        .exec(piped(&long))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("piped_process"), "{err}");
}
