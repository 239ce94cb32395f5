//! Round trips of every message, and property tests of the decoder.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock_protocol::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn all_requests() -> Vec<Request> {
    let bodies = vec![
        RequestBody::Ping,
        RequestBody::Exec(ExecRequest {
            mode: Default::default(),
            language: Language::Javascript,
            code: "console.log('é\\n')".into(),
            timeout_ms: 5,
            env: BTreeMap::from([("A".into(), "b c".into())]),
            cwd: Some("sub/dir".into()),
        }),
        RequestBody::Exec(ExecRequest {
            mode: Default::default(),
            language: Language::Raw,
            code: String::new(),
            timeout_ms: 0,
            env: BTreeMap::new(),
            cwd: None,
        }),
        RequestBody::WriteFile {
            path: "a.txt".into(),
            mode: 0o600,
            size: None,
        },
        RequestBody::FileChunk {
            data: Data::base64(vec![0u8, 1, 2, 255]),
        },
        RequestBody::FileEnd,
        RequestBody::ReadFile { path: "x".into() },
        RequestBody::ListFiles { path: "".into() },
        RequestBody::WarmRepl {
            language: Language::Python,
            for_template: false,
        },
        RequestBody::WarmRepl {
            language: Language::Javascript,
            for_template: true,
        },
        RequestBody::Reseed {
            entropy: Data::base64(vec![9u8; 32]),
            unix_time_ns: u64::MAX,
            copy: false,
        },
        RequestBody::Reseed {
            entropy: Data::base64(vec![9u8; 32]),
            unix_time_ns: 1,
            copy: true,
        },
        RequestBody::Exec(ExecRequest {
            mode: ExecMode::Cell,
            language: Language::Javascript,
            code: "await 1".into(),
            timeout_ms: 5,
            env: BTreeMap::new(),
            cwd: None,
        }),
        RequestBody::Exec(ExecRequest {
            mode: ExecMode::OneShot,
            language: Language::Raw,
            code: "exit 3".into(),
            timeout_ms: 5,
            env: BTreeMap::new(),
            cwd: None,
        }),
        RequestBody::Cancel { target: 7 },
        RequestBody::Exec(ExecRequest {
            mode: ExecMode::PipedProcess,
            language: Language::Raw,
            code: "cat".into(),
            timeout_ms: 5,
            env: BTreeMap::new(),
            cwd: None,
        }),
        RequestBody::Stdin {
            target: 7,
            data: Data::text_or_base64(b"line\n\xff".to_vec()),
        },
        RequestBody::CloseStdin { target: 7 },
        RequestBody::ResetRepl {
            language: Language::Javascript,
        },
        RequestBody::InstallPackages {
            language: Language::Python,
            packages: vec!["numpy".into()],
            timeout_ms: 1,
            env: BTreeMap::from([("PIP_CERT".into(), "/home/sandbox/.ca.pem".into())]),
        },
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, b)| Request::new(u64::MAX - i as u64, b))
        .collect()
}

fn all_events() -> Vec<Event> {
    let bodies = vec![
        EventBody::Pong {
            version: "1.2.3".into(),
            protocol: PROTOCOL_VERSION,
        },
        EventBody::Stdout {
            data: Data::text_or_base64("out\n"),
        },
        EventBody::Stderr {
            data: Data::text_or_base64(vec![0xc3u8, 0x28]),
        },
        EventBody::Complete(Completion {
            state_lost: false,
            exit_code: -1,
            timed_out: true,
            duration_ms: 9,
            spawn_ms: 1,
            stdout_truncated: true,
            stderr_truncated: false,
        }),
        EventBody::Complete(Completion {
            state_lost: true,
            exit_code: 130,
            timed_out: false,
            duration_ms: 9,
            spawn_ms: 0,
            stdout_truncated: false,
            stderr_truncated: false,
        }),
        EventBody::FileAck {
            size: 0,
            sha256: None,
        },
        EventBody::FileData {
            data: Data::base64("abc"),
            size: Some(3),
        },
        EventBody::FileDone {
            size: 3,
            sha256: "00".into(),
        },
        EventBody::FileList {
            entries: vec![FileEntry {
                name: "f".into(),
                size: 1,
                kind: FileKind::Symlink,
                mode: 0o777,
            }],
        },
        EventBody::Reseeded {
            entropy_bytes: 32,
            clock_step_ms: -5,
        },
        EventBody::Result(ExecResult {
            data: MimeBundle::from([
                ("text/plain".to_owned(), serde_json::json!("   a\n0  1")),
                ("text/html".to_owned(), serde_json::json!("<table></table>")),
                ("image/png".to_owned(), serde_json::json!("iVBORw0KGgo=")),
                (
                    "application/json".to_owned(),
                    serde_json::json!({"a": [1, 2.5, null]}),
                ),
            ]),
            is_main_result: true,
            truncated: false,
        }),
        EventBody::Result(ExecResult {
            data: MimeBundle::new(),
            is_main_result: false,
            truncated: true,
        }),
        EventBody::CellError(CellError {
            name: "ZeroDivisionError".into(),
            value: "division by zero".into(),
            traceback: "Traceback (most recent call last):\n  File \"<string>\", line 1\n".into(),
        }),
        EventBody::Error {
            kind: ErrorKind::InvalidPath,
            message: "no".into(),
        },
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, b)| Event::new(i as u64, b))
        .collect()
}

#[test]
fn every_request_round_trips() {
    let requests = all_requests();
    let actions: Vec<_> = requests.iter().map(|r| r.body.action()).collect();
    for action in RequestBody::ACTIONS {
        assert!(actions.contains(action), "{action} not covered");
    }
    for request in requests {
        let line = encode_line(&request).unwrap();
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(decode_request(&line[..line.len() - 1]).unwrap(), request);
    }
}

#[test]
fn every_event_round_trips() {
    let events = all_events();
    let types: Vec<_> = events.iter().map(|e| e.body.type_name()).collect();
    for kind in EventBody::TYPES {
        assert!(types.contains(kind), "{kind} not covered");
    }
    for event in events {
        let line = encode_line(&event).unwrap();
        assert_eq!(decode_event(&line[..line.len() - 1]).unwrap(), event);
    }
}

#[test]
fn warm_repl_without_for_template_is_a_plain_warm_up_and_false_is_not_sent() {
    let plain = br#"{"op":7,"action":"warm_repl","language":"javascript"}"#;
    let request = decode_request(plain).unwrap();
    assert_eq!(
        request.body,
        RequestBody::WarmRepl {
            language: Language::Javascript,
            for_template: false,
        }
    );
    let line = encode_line(&request).unwrap();
    assert!(!String::from_utf8_lossy(&line).contains("for_template"));
    let templated = Request::new(
        7,
        RequestBody::WarmRepl {
            language: Language::Javascript,
            for_template: true,
        },
    );
    let line = encode_line(&templated).unwrap();
    assert!(String::from_utf8_lossy(&line).contains(r#""for_template":true"#));
}

#[test]
fn version_mismatch_is_typed_and_says_what_to_do() {
    assert!(check_protocol("0.1.0", PROTOCOL_VERSION).is_ok());
    let err = check_protocol("9.9.9", PROTOCOL_VERSION + 1).unwrap_err();
    assert!(matches!(err, ProtocolError::VersionMismatch { .. }));
    assert!(err.to_string().contains("cargo xtask images"));
}

#[test]
fn languages_parse_from_names_aliases_and_extensions() {
    assert_eq!("Python".parse::<Language>().unwrap(), Language::Python);
    assert_eq!("js".parse::<Language>().unwrap(), Language::Javascript);
    assert_eq!("bash".parse::<Language>().unwrap(), Language::Raw);
    assert!("cobol"
        .parse::<Language>()
        .unwrap_err()
        .to_string()
        .contains("python, javascript or raw"));
    assert_eq!(Language::from_extension("mjs"), Some(Language::Javascript));
    assert_eq!(Language::from_extension("txt"), None);
}

fn any_data() -> impl Strategy<Value = Data> {
    prop_oneof![
        any::<Vec<u8>>().prop_map(Data::text_or_base64),
        any::<Vec<u8>>().prop_map(Data::base64),
        ".*".prop_map(Data::text_or_base64),
    ]
}

fn any_request() -> impl Strategy<Value = Request> {
    let body = prop_oneof![
        Just(RequestBody::Ping),
        (
            ".*",
            any::<u64>(),
            proptest::collection::btree_map("[A-Z_]{1,8}", ".*", 0..3),
            proptest::option::of(".*")
        )
            .prop_map(
                |(code, timeout_ms, env, cwd)| RequestBody::Exec(ExecRequest {
                    mode: Default::default(),
                    language: Language::Python,
                    code,
                    timeout_ms,
                    env,
                    cwd,
                })
            ),
        (".*", any::<u32>(), proptest::option::of(any::<u64>()))
            .prop_map(|(path, mode, size)| RequestBody::WriteFile { path, mode, size }),
        any_data().prop_map(|data| RequestBody::FileChunk { data }),
        Just(RequestBody::FileEnd),
        ".*".prop_map(|path| RequestBody::ReadFile { path }),
    ];
    (any::<u64>(), body).prop_map(|(op, body)| Request::new(op, body))
}

/// A JSON value as a representation may hold (no floats: they may not
/// round-trip bit for bit through text).
fn any_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".*".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(".*", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn any_result() -> impl Strategy<Value = ExecResult> {
    let representation = prop_oneof![
        ".*".prop_map(serde_json::Value::from),
        any::<Vec<u8>>().prop_map(|bytes| {
            use base64::Engine as _;
            serde_json::Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
        }),
        any_json(),
    ];
    (
        proptest::collection::btree_map("[a-z]{1,11}/[a-z+.-]{1,15}", representation, 0..5),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(data, is_main_result, truncated)| ExecResult {
            data,
            is_main_result,
            truncated,
        })
}

fn any_event() -> impl Strategy<Value = Event> {
    let body = prop_oneof![
        any_result().prop_map(EventBody::Result),
        (".*", ".*", ".*").prop_map(|(name, value, traceback)| EventBody::CellError(CellError {
            name,
            value,
            traceback
        })),
        any_data().prop_map(|data| EventBody::Stdout { data }),
        any_data().prop_map(|data| EventBody::Stderr { data }),
        (any::<i32>(), any::<bool>(), any::<u64>()).prop_map(|(exit_code, timed_out, d)| {
            EventBody::Complete(Completion {
                state_lost: false,
                exit_code,
                timed_out,
                duration_ms: d,
                spawn_ms: d / 2,
                stdout_truncated: timed_out,
                stderr_truncated: false,
            })
        }),
        ".*".prop_map(|message| EventBody::Error {
            kind: ErrorKind::Io,
            message
        }),
    ];
    (any::<u64>(), body).prop_map(|(op, body)| Event::new(op, body))
}

proptest! {
    #[test]
    fn any_result_round_trips_and_its_binary_data_decodes(result in any_result()) {
        let event = Event::new(3, EventBody::Result(result.clone()));
        let line = encode_line(&event).unwrap();
        prop_assert_eq!(decode_event(&line[..line.len() - 1]).unwrap(), event);
        for mime in result.mime_types() {
            if let Some(Ok(bytes)) = result.binary(mime) {
                use base64::Engine as _;
                let again = base64::engine::general_purpose::STANDARD.encode(bytes);
                prop_assert_eq!(Some(again.as_str()), result.data[mime].as_str());
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..20),
        limit in 1usize..300,
    ) {
        let mut decoder = FrameDecoder::new(limit);
        for chunk in chunks {
            decoder.extend(&chunk);
            while let Some(line) = decoder.next_line() {
                if let Ok(line) = line {
                    prop_assert!(line.len() <= limit);
                    let _ = decode_request(&line);
                    let _ = decode_event(&line);
                }
            }
            // Memory stays bounded by the limit.
            prop_assert!(decoder.pending_bytes() <= limit + 1);
        }
    }

    #[test]
    fn any_request_survives_a_split_at_any_byte(request in any_request(), split in any::<proptest::sample::Index>()) {
        let line = encode_line(&request).unwrap();
        let at = split.index(line.len() + 1);
        let mut decoder = FrameDecoder::default();
        decoder.extend(&line[..at]);
        let early = decoder.next_line();
        prop_assert!(early.is_none() || at == line.len());
        decoder.extend(&line[at..]);
        let got = early.or_else(|| decoder.next_line()).unwrap().unwrap();
        prop_assert_eq!(decode_request(&got).unwrap(), request);
    }

    #[test]
    fn any_event_stream_survives_splits_at_any_bytes(
        events in proptest::collection::vec(any_event(), 1..6),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..8),
    ) {
        let stream: Vec<u8> = events.iter().flat_map(|e| encode_line(e).unwrap()).collect();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        let mut decoder = FrameDecoder::default();
        let mut got = Vec::new();
        for pair in points.windows(2) {
            decoder.extend(&stream[pair[0]..pair[1]]);
            while let Some(line) = decoder.next_line() {
                got.push(decode_event(&line.unwrap()).unwrap());
            }
        }
        prop_assert_eq!(got, events);
    }
}
