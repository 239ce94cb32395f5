//! Sessions on the fake launcher (no VM boots): its machines are harmless
//! real processes, and a fake agent answers on the channel, so the busy,
//! cancel, close and lifetime rules are checked for real.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use super::*;
use crate::factory::tests::{alive, options, Setup};
use crate::source::StdinChunk;
use crate::testing::completion;
use crate::vm::OutputStream;
use airlock_protocol::{Data, Event, EventBody, FrameReader, FrameWriter, OpId, RequestBody};
use std::collections::HashMap;
use tokio::sync::mpsc;

/// What the fake agent saw.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Exec {
        op: OpId,
        code: String,
        mode: ExecMode,
    },
    Cancel {
        target: OpId,
    },
    Install {
        packages: Vec<String>,
    },
}

/// A fake agent on `peer`: a cell `block` waits for its cancel (then
/// exit 130); any other cell prints its code and exits 0; `list_files`
/// answers an empty list; `warm_repl` completes. Reports what it sees.
fn fake_agent(peer: tokio::io::DuplexStream) -> mpsc::UnboundedReceiver<Seen> {
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (read, write) = tokio::io::split(peer);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Event>();
    tokio::spawn(async move {
        let mut writer = FrameWriter::new(write);
        while let Some(event) = out_rx.recv().await {
            if writer.send(&event).await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(async move {
        let mut reader = FrameReader::new(read);
        let mut blocked: HashMap<OpId, ()> = HashMap::new();
        while let Ok(Some(line)) = reader.next_request().await {
            let Ok(request) = line else { continue };
            let send = |body| {
                let _ = out_tx.send(Event::new(request.op, body));
            };
            match request.body {
                RequestBody::Exec(exec) => {
                    let _ = seen_tx.send(Seen::Exec {
                        op: request.op,
                        code: exec.code.clone(),
                        mode: exec.mode,
                    });
                    if exec.code == "block" || exec.mode == ExecMode::PipedProcess {
                        blocked.insert(request.op, ());
                    } else {
                        send(EventBody::Stdout {
                            data: Data::text_or_base64(exec.code.into_bytes()),
                        });
                        send(EventBody::Complete(completion(0)));
                    }
                }
                RequestBody::Cancel { target } => {
                    let _ = seen_tx.send(Seen::Cancel { target });
                    if blocked.remove(&target).is_some() {
                        let _ =
                            out_tx.send(Event::new(target, EventBody::Complete(completion(130))));
                    }
                }
                RequestBody::InstallPackages { packages, .. } => {
                    let _ = seen_tx.send(Seen::Install { packages });
                    send(EventBody::Complete(completion(0)));
                }
                RequestBody::ListFiles { .. } => send(EventBody::FileList {
                    entries: Vec::new(),
                }),
                RequestBody::WarmRepl { .. } => send(EventBody::Complete(completion(0))),
                // A piped process echoes its stdin and ends at its close.
                RequestBody::Stdin { target, data } => {
                    let _ = out_tx.send(Event::new(target, EventBody::Stdout { data }));
                }
                RequestBody::CloseStdin { target } => {
                    let _ = out_tx.send(Event::new(target, EventBody::Complete(completion(0))));
                }
                _ => {}
            }
        }
    });
    seen
}

struct Fixture {
    setup: Setup,
    session: Session,
    seen: mpsc::UnboundedReceiver<Seen>,
    qemu_pid: u32,
}

async fn fixture(tweak: impl FnOnce(&mut SessionOptions)) -> Fixture {
    let setup = Setup::new(&[]);
    let vm = setup.factory.boot(&options(Language::Raw)).await.unwrap();
    let qemu_pid = vm.qemu_pid().unwrap();
    let peer = setup.launcher.peers.lock().unwrap().pop().unwrap();
    let seen = fake_agent(peer);
    let mut opts = SessionOptions::new(Language::Raw);
    tweak(&mut opts);
    let session = Session::start(
        Box::new(vm),
        &opts,
        SessionExtras {
            start_ms: 0,
            base_env: BTreeMap::new(),
            ca: crate::packages::CaBundle::default(),
            node: None,
            packages: None,
            resumed: None,
        },
    );
    Fixture {
        setup,
        session,
        seen,
        qemu_pid,
    }
}

/// Collects output like a terminal would.
#[derive(Default)]
struct Collect(Vec<u8>);

impl RunObserver for Collect {
    fn output(&mut self, _: OutputStream, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }
}

/// Runs a quick cell and returns its exit code (the session still answers).
async fn quick_cell(session: &Session, code: &str) -> i32 {
    session
        .exec(CellRequest::new(code), &mut Collect::default())
        .await
        .unwrap()
        .exit_code
}

fn is_busy(result: &Result<impl std::fmt::Debug, SessionError>) -> bool {
    matches!(result, Err(SessionError::Busy { .. }))
}

fn closed_reason<T: std::fmt::Debug>(result: Result<T, SessionError>) -> CloseReason {
    match result {
        Err(SessionError::Closed { reason, .. }) => reason,
        other => panic!("expected SessionClosed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_cell_runs_as_a_cell_and_streams_its_output() {
    let mut f = fixture(|_| {}).await;
    let mut out = Collect::default();
    let result = f
        .session
        .exec(CellRequest::new("x = 1"), &mut out)
        .await
        .unwrap();
    assert_eq!(
        (result.exit_code, result.stdout.as_slice()),
        (0, &b"x = 1"[..])
    );
    assert_eq!(out.0, b"x = 1");
    match f.seen.recv().await.unwrap() {
        Seen::Exec { mode, code, .. } => {
            assert_eq!((mode, code.as_str()), (ExecMode::Cell, "x = 1"))
        }
        other => panic!("{other:?}"),
    }
    assert!(f.session.id().starts_with("s-"));
    assert!(f.session.last_used() >= f.session.created_at());
}

#[tokio::test]
async fn a_second_call_during_a_cell_is_refused_at_once_and_cancel_interrupts_the_cell() {
    // Arrange: a cell that runs until cancelled.
    let mut f = fixture(|_| {}).await;
    let session = &f.session;
    let canceller = session.canceller();
    let first = async {
        let mut out = Collect::default();
        session.exec(CellRequest::new("block"), &mut out).await
    };
    let others = async {
        let Some(Seen::Exec { op, .. }) = f.seen.recv().await else {
            panic!("no exec")
        };
        // Act: every kind of call while the cell runs.
        let exec = session
            .exec(CellRequest::new("print(2)"), &mut Collect::default())
            .await;
        let write = session.write_file("a.txt", b"a").await;
        let read = session.read_file("a.txt").await;
        let list = session.list_files("").await;
        canceller.cancel();
        let cancelled = f.seen.recv().await;
        (op, exec, write, read, list, cancelled)
    };
    let (first, (op, exec, write, read, list, cancelled)) =
        tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(first, others)
        })
        .await
        .unwrap();

    // Assert: refused at once, not queued; the cancel named the cell's op
    // and its result is the interrupted cell's.
    assert!(is_busy(&exec), "{exec:?}");
    assert!(is_busy(&write) && is_busy(&read) && is_busy(&list));
    assert_eq!(cancelled, Some(Seen::Cancel { target: op }));
    assert_eq!(first.unwrap().exit_code, 130);
    // The session goes on.
    assert_eq!(quick_cell(&f.session, "ok").await, 0);
}

#[tokio::test]
async fn a_process_beside_runs_while_a_cell_holds_the_session_and_stops_at_its_own_interrupt() {
    // Arrange: a cell that runs until cancelled holds the session.
    let mut f = fixture(|_| {}).await;
    let session = &f.session;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let cell = async {
        session
            .exec(CellRequest::new("block"), &mut Collect::default())
            .await
    };
    let beside = async {
        let Some(Seen::Exec { op: cell_op, .. }) = f.seen.recv().await else {
            panic!("no cell")
        };
        // Act: a process beside the cell runs to its end at once...
        let mut out = Collect::default();
        let quick = session
            .run_process_beside(
                Language::Raw,
                CellRequest::new("echo beside"),
                &mut out,
                Box::pin(std::future::pending()),
                None,
            )
            .await
            .unwrap();
        let quick_seen = f.seen.recv().await;
        // ...and a blocking one ends at its own interrupt, not the
        // session's canceller.
        let mut blocked_out = Collect::default();
        let blocking = session.run_process_beside(
            Language::Raw,
            CellRequest::new("block"),
            &mut blocked_out,
            Box::pin(async {
                let _ = stop_rx.await;
            }),
            None,
        );
        let interrupt = async {
            let Some(Seen::Exec { op, .. }) = f.seen.recv().await else {
                panic!("no process")
            };
            stop_tx.send(()).unwrap();
            let cancelled = f.seen.recv().await;
            assert_eq!(cancelled, Some(Seen::Cancel { target: op }));
            session.canceller().cancel();
            let cancelled = f.seen.recv().await;
            assert_eq!(cancelled, Some(Seen::Cancel { target: cell_op }));
        };
        let (blocked, ()) = tokio::join!(blocking, interrupt);
        (quick, out, quick_seen, blocked.unwrap())
    };
    let (cell, (quick, out, quick_seen, blocked)) =
        tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(cell, beside)
        })
        .await
        .unwrap();

    // Assert
    assert_eq!(
        (quick.exit_code, out.0.as_slice()),
        (0, &b"echo beside"[..])
    );
    assert!(
        matches!(
            quick_seen,
            Some(Seen::Exec {
                mode: ExecMode::Process,
                ..
            })
        ),
        "{quick_seen:?}"
    );
    assert_eq!(blocked.exit_code, 130);
    assert_eq!(cell.unwrap().exit_code, 130);
}

#[tokio::test]
async fn a_process_beside_with_input_runs_piped_and_gets_what_the_host_sends() {
    let mut f = fixture(|_| {}).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(StdinChunk::Data("one ".into())).await.unwrap();
    tx.send(StdinChunk::Data("two".into())).await.unwrap();
    tx.send(StdinChunk::Close).await.unwrap();
    let mut out = Collect::default();
    let done = tokio::time::timeout(
        Duration::from_secs(10),
        f.session.run_process_beside(
            Language::Raw,
            CellRequest::new("cat"),
            &mut out,
            Box::pin(std::future::pending()),
            Some(rx),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!((done.exit_code, out.0.as_slice()), (0, &b"one two"[..]));
    assert!(matches!(
        f.seen.recv().await,
        Some(Seen::Exec {
            mode: ExecMode::PipedProcess,
            ..
        })
    ));
}

#[tokio::test]
async fn a_process_beside_is_refused_once_the_session_is_closed() {
    let f = fixture(|_| {}).await;
    f.session.close().await;
    let result = f
        .session
        .run_process_beside(
            Language::Raw,
            CellRequest::new("echo late"),
            &mut Collect::default(),
            Box::pin(std::future::pending()),
            None,
        )
        .await;
    assert_eq!(closed_reason(result), CloseReason::Closed);
}

#[tokio::test]
async fn a_cancel_while_no_cell_runs_does_not_touch_the_next_cell() {
    let mut f = fixture(|_| {}).await;
    f.session.canceller().cancel();
    assert_eq!(quick_cell(&f.session, "quick").await, 0);
    assert!(matches!(f.seen.recv().await, Some(Seen::Exec { .. })));
    assert!(f.seen.try_recv().is_err(), "no cancel was sent");
}

#[tokio::test]
async fn close_stops_a_running_cell_destroys_the_vm_and_refuses_every_later_call() {
    let f = fixture(|_| {}).await;
    let session = &f.session;
    let running = async {
        session
            .exec(CellRequest::new("block"), &mut Collect::default())
            .await
    };
    let closing = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        session.close().await
    };
    let (running, report) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(running, closing)
    })
    .await
    .unwrap();
    assert_eq!(closed_reason(running), CloseReason::Closed);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(!alive(f.qemu_pid), "the VM's process is gone");
    assert!(session.is_closed());
    assert_eq!(
        closed_reason(
            session
                .exec(CellRequest::new("x"), &mut Collect::default())
                .await
        ),
        CloseReason::Closed
    );
    assert_eq!(
        closed_reason(session.list_files("").await),
        CloseReason::Closed
    );
    let again = session.close().await;
    assert!(again.problems.is_empty());
}

#[tokio::test]
async fn an_idle_session_is_closed_by_its_watchdog() {
    let f = fixture(|o| o.idle_timeout = Duration::from_millis(300)).await;
    // A call restarts the idle clock.
    tokio::time::sleep(Duration::from_millis(200)).await;
    f.session.list_files("").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!f.session.is_closed(), "used 200 ms ago");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f.session.is_closed() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(f.session.close_reason(), Some(CloseReason::IdleTimeout));
    assert_eq!(
        closed_reason(f.session.read_file("x").await),
        CloseReason::IdleTimeout
    );
    f.setup.flush().await;
    assert!(!alive(f.qemu_pid));
}

#[tokio::test]
async fn the_maximum_lifetime_cuts_a_running_cell() {
    let f = fixture(|o| o.max_lifetime = Duration::from_millis(300)).await;
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        f.session
            .exec(CellRequest::new("block"), &mut Collect::default()),
    )
    .await
    .unwrap();
    assert_eq!(closed_reason(result), CloseReason::MaxLifetime);
}

#[tokio::test]
async fn dropping_a_session_destroys_its_vm() {
    let f = fixture(|_| {}).await;
    drop(f.session);
    f.setup.flush().await;
    assert!(!alive(f.qemu_pid));
}

#[tokio::test]
async fn bad_cells_and_paths_are_refused_before_the_session_is_touched() {
    let f = fixture(|_| {}).await;
    for code in ["", "  \n", "a\0b"] {
        let refused = f
            .session
            .exec(CellRequest::new(code), &mut Collect::default())
            .await;
        assert!(
            matches!(
                refused,
                Err(SessionError::Input(InputError::Invalid {
                    field: "code",
                    ..
                }))
            ),
            "{code:?}: {refused:?}"
        );
    }
    for path in ["../x", "/etc/passwd", "a\0b", ""] {
        assert!(matches!(
            f.session.write_file(path, b"x").await,
            Err(SessionError::Input(InputError::Invalid { .. }))
        ));
        assert!(matches!(
            f.session.read_file(path).await,
            Err(SessionError::Input(InputError::Invalid { .. }))
        ));
    }
}

#[tokio::test]
async fn an_install_without_a_network_or_pin_is_refused_before_the_guest() {
    let mut f = fixture(|_| {}).await;
    let unpinned = f.session.install_packages(&["numpy".into()]).await;
    assert!(
        matches!(
            unpinned,
            Err(SessionError::Input(InputError::PackageSpec { .. }))
        ),
        "{unpinned:?}"
    );
    // Raw has no package manager: the spec check refuses it too.
    let refused = f.session.install_packages(&["six==1.16.0".into()]).await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(f.seen.try_recv().is_err(), "nothing reached the agent");
    // The session goes on.
    assert_eq!(quick_cell(&f.session, "ok").await, 0);
}

#[test]
fn session_options_are_validated() {
    let ok = SessionOptions::new(Language::Python);
    ok.validate().unwrap();
    assert_eq!(ok.idle_timeout, Duration::from_secs(600));
    assert_eq!(ok.max_lifetime, Duration::from_secs(3600));
    let mut zero = ok.clone();
    zero.idle_timeout = Duration::ZERO;
    assert!(matches!(
        zero.validate(),
        Err(InputError::Invalid {
            field: "idle_timeout",
            ..
        })
    ));
    let mut small = ok.clone();
    small.spec.shape.memory_mib = 1;
    assert!(small.validate().is_err());
    let mut tenant = ok;
    tenant.spec.tenant = "a b".into();
    assert!(tenant.validate().is_err());
}

#[test]
fn sessions_and_cancellers_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Session>();
    send_sync::<SessionCanceller>();
}

#[test]
fn a_cell_result_serializes_its_output_as_text() {
    let result = CellResult {
        stdout: b"1\n".to_vec(),
        stderr: Vec::new(),
        exit_code: 0,
        timed_out: false,
        state_lost: false,
        stdout_truncated: false,
        stderr_truncated: false,
        duration_ms: 3,
        results: Vec::new(),
        error: None,
    };
    let json = serde_json::to_value(&result).unwrap();
    assert_eq!(json["stdout"], "1\n");
    assert_eq!(json["state_lost"], false);
    assert!(json.get("results").is_none(), "no results, no field");
}
