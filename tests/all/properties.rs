//! Property tests of what parses input from the network: no input makes
//! them panic, and what they produce is stable.

use arbiter::front_door::ext_authz::normalize_path;
use arbiter::front_door::wire;
use arbiter::mcp::{jsonrpc, sse};
use proptest::prelude::*;
use serde_json::{Value, json};

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,8}".prop_map(Value::String),
        Just(json!("2.0")),
        Just(json!("tools/call")),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("jsonrpc".to_owned()),
                    Just("id".to_owned()),
                    Just("method".to_owned()),
                    Just("result".to_owned()),
                    Just("error".to_owned()),
                    Just("params".to_owned()),
                    "[a-z]{1,4}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bytes that look like an event stream: field names, separators, every
/// line ending, a BOM, and bytes that are not UTF-8.
fn stream_like() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"data: ".to_vec()),
        Just(b"data".to_vec()),
        Just(b"event: message".to_vec()),
        Just(b": comment".to_vec()),
        Just(b"id: 1".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
        Just(b"{\"jsonrpc\":\"2.0\"}".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..6),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|p| p.concat())
}

/// Feeds `bytes` to a reader in chunks cut at `cuts`.
fn read_in_chunks(bytes: &[u8], cuts: &[usize]) -> Result<Vec<sse::Event>, sse::StreamError> {
    let mut reader = sse::Reader::new(1 << 20);
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut events = Vec::new();
    let mut start = 0;
    for end in at.into_iter().chain([bytes.len()]) {
        events.extend(reader.push(&bytes[start..end])?);
        start = end;
    }
    Ok(events)
}

/// Paths built from the pieces that make normalization hard: slashes,
/// dots, escapes good and bad, reserved and odd characters.
fn path_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_owned()),
        Just("//".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("%2e".to_owned()),
        Just("%2E%2e".to_owned()),
        Just("%2f".to_owned()),
        Just("%5C".to_owned()),
        Just("%00".to_owned()),
        Just("%".to_owned()),
        Just("%4".to_owned()),
        Just("%zz".to_owned()),
        Just("%41".to_owned()),
        Just("%3f".to_owned()),
        Just(";".to_owned()),
        Just("\\".to_owned()),
        Just("~".to_owned()),
        "[a-z]{1,3}",
        any::<char>().prop_map(String::from),
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn normalizing_a_path_never_panics_and_is_stable(raw in path_like()) {
        if let Ok(once) = normalize_path(&raw) {
            let twice = normalize_path(&once);
            prop_assert_eq!(twice.as_deref(), Ok(once.as_str()));
            prop_assert!(once.starts_with('/'));
            prop_assert!(!once.contains("//"), "{}", once);
            prop_assert!(!once.split('/').any(|s| s == "." || s == ".."), "{}", once);
        }
    }

    #[test]
    fn an_event_stream_reads_the_same_however_it_is_cut(
        bytes in stream_like(),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let whole = read_in_chunks(&bytes, &[]);
        let cut = read_in_chunks(&bytes, &cuts);
        prop_assert_eq!(whole, cut);
    }

    #[test]
    fn json_rpc_messages_of_any_shape_are_classified_without_panic(msg in any_json()) {
        let kind = jsonrpc::kind(&msg);
        let _ = jsonrpc::id_of(&msg);
        if let jsonrpc::Kind::Request { id, .. } | jsonrpc::Kind::Response { id } = kind {
            prop_assert!(id.is_string() || id.is_number());
            let _ = jsonrpc::id_key(id);
        }
    }

    #[test]
    fn ids_equal_as_json_values_have_one_key(n in -(1i64 << 53) + 1..(1i64 << 53), s in ".{0,12}") {
        let spelled: Value = serde_json::from_str(&format!("{n}.0")).expect("a number");
        prop_assert_eq!(jsonrpc::id_key(&json!(n)), jsonrpc::id_key(&spelled));
        // A string never shares a key with a number.
        prop_assert_ne!(jsonrpc::id_key(&json!(s)), jsonrpc::id_key(&json!(n)));
    }

    #[test]
    fn the_wire_parser_refuses_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), msg in any_json()) {
        let _ = wire::parse_request(&bytes);
        let _ = wire::parse_request(msg.to_string().as_bytes());
    }

    #[test]
    fn any_string_as_a_path_never_panics(raw in any::<String>()) {
        let _ = normalize_path(&raw);
        let _ = normalize_path(&format!("/{raw}"));
    }
}
