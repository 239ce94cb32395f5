//! Every JSON example in docs/protocol.md decodes, and encodes back to the
//! same text: the page cannot drift from the types.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use airlock_protocol::{decode_event, decode_request, encode_line};
use std::path::Path;

fn doc_examples() -> Vec<String> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/protocol.md");
    let text = std::fs::read_to_string(&doc).expect("docs/protocol.md is readable");
    let mut in_json = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        match line.trim() {
            "```json" => in_json = true,
            "```" => in_json = false,
            l if in_json && !l.is_empty() => lines.push(l.to_owned()),
            _ => {}
        }
    }
    lines
}

#[test]
fn every_doc_example_parses_and_reencodes_identically() {
    let examples = doc_examples();
    assert!(
        examples.len() >= 20,
        "found only {} examples",
        examples.len()
    );
    for line in examples {
        let value: serde_json::Value = serde_json::from_str(&line).expect(&line);
        let encoded = if value.get("action").is_some() {
            encode_line(&decode_request(line.as_bytes()).expect(&line)).unwrap()
        } else {
            encode_line(&decode_event(line.as_bytes()).expect(&line)).unwrap()
        };
        assert_eq!(
            String::from_utf8(encoded).unwrap().trim_end(),
            line,
            "example does not re-encode to itself"
        );
    }
}

#[test]
fn every_action_and_event_type_has_a_doc_example() {
    let examples = doc_examples().join("\n");
    for action in airlock_protocol::RequestBody::ACTIONS {
        assert!(
            examples.contains(&format!("\"action\":\"{action}\"")),
            "no example for action {action}"
        );
    }
    for kind in airlock_protocol::EventBody::TYPES {
        assert!(
            examples.contains(&format!("\"type\":\"{kind}\"")),
            "no example for event {kind}"
        );
    }
}
