//! JSON mode (PROTOCOL.md section 9.1).
//!
//! An `application/json` stream stores *messages*. An append body is validated and split into
//! messages by flattening exactly one array level; a read returns the messages of its range as
//! one JSON array. Both directions avoid copying message bytes: messages are slices of the
//! request body, and the response array is a list of pieces around them.

use bytes::Bytes;
use serde_json::value::RawValue;

/// Why a JSON-mode body was rejected (400 at the edge).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The body is not exactly one valid JSON value (carries serde_json's message).
    #[error("invalid JSON: {0}")]
    Invalid(String),
    /// The body is `[]`, which appends nothing (section 9.1.3).
    #[error("empty JSON array: an append must contain at least one message")]
    EmptyArray,
}

/// Validates `body` as JSON and splits it into messages, flattening exactly one array level: a
/// top-level array yields each element as a message; any other value yields one message.
///
/// Each message is a zero-copy slice of `body`, without surrounding whitespace. A top-level
/// `[]` is [`JsonError::EmptyArray`] unless `allow_empty_array` (true for PUT, false for POST),
/// in which case it yields no messages. An empty or whitespace-only body is
/// [`JsonError::Invalid`].
pub fn split_messages(body: &Bytes, allow_empty_array: bool) -> Result<Vec<Bytes>, JsonError> {
    let invalid = |e: serde_json::Error| JsonError::Invalid(e.to_string());
    // Parsing into borrowed `RawValue`s validates the whole document (including UTF-8 and
    // trailing garbage) in one pass and hands back sub-slices of `body` itself, which
    // `slice_ref` turns into shared `Bytes`.
    let is_array = body
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .is_some_and(|&b| b == b'[');
    if !is_array {
        let value: &RawValue = serde_json::from_slice(body).map_err(invalid)?;
        return Ok(vec![body.slice_ref(trim_json_ws(value.get()))]);
    }
    let elements: Vec<&RawValue> = serde_json::from_slice(body).map_err(invalid)?;
    if elements.is_empty() && !allow_empty_array {
        return Err(JsonError::EmptyArray);
    }
    Ok(elements
        .into_iter()
        .map(|element| body.slice_ref(trim_json_ws(element.get())))
        .collect())
}

/// `text` without surrounding JSON whitespace (space, tab, LF, CR).
fn trim_json_ws(text: &str) -> &[u8] {
    text.trim_matches([' ', '\t', '\n', '\r']).as_bytes()
}

/// Frames messages as one JSON array for a read response: the pieces `[`, m0, `,`, m1, ...,
/// `]`. Message bytes are not copied (brackets and commas are static). No messages → `[]`.
///
/// The pieces are [`Bytes`], or any piece type that bytes convert into (a storage backend's
/// piece that may also be a run of a file).
#[must_use]
pub fn array_pieces<P: Clone + From<Bytes>>(messages: &[P]) -> Vec<P> {
    let mut pieces = Vec::with_capacity(messages.len() * 2 + 1);
    pieces.push(Bytes::from_static(b"[").into());
    for (i, message) in messages.iter().enumerate() {
        if i > 0 {
            pieces.push(Bytes::from_static(b",").into());
        }
        pieces.push(message.clone());
    }
    pieces.push(Bytes::from_static(b"]").into());
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn split(body: &str, allow_empty: bool) -> Result<Vec<String>, JsonError> {
        let body = Bytes::copy_from_slice(body.as_bytes());
        split_messages(&body, allow_empty).map(|messages| {
            messages
                .into_iter()
                .map(|m| String::from_utf8(m.to_vec()).expect("messages are UTF-8"))
                .collect()
        })
    }

    fn concat(pieces: &[Bytes]) -> String {
        let bytes: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
        String::from_utf8(bytes).expect("pieces are UTF-8")
    }

    #[test]
    fn split_table() {
        let cases: &[(&str, &[&str])] = &[
            (r#"{"event": "created"}"#, &[r#"{"event": "created"}"#]),
            (
                r#"[{"event": "a"}, {"event": "b"}]"#,
                &[r#"{"event": "a"}"#, r#"{"event": "b"}"#],
            ),
            ("[[1,2], [3,4]]", &["[1,2]", "[3,4]"]),
            ("[[[1,2,3]]]", &["[[1,2,3]]"]),
            ("  \n 42 \r\n", &["42"]),
            ("\"text\"", &["\"text\""]),
            ("null", &["null"]),
            ("[ 1 ,\n 2\t]", &["1", "2"]),
            ("[[]]", &["[]"]),
            ("[\"a,b\",\"]\"]", &["\"a,b\"", "\"]\""]),
        ];
        for &(body, want) in cases {
            let want: Vec<String> = want.iter().map(|m| (*m).to_owned()).collect();
            assert_eq!(split(body, false), Ok(want), "body {body:?}");
        }
    }

    #[test]
    fn empty_array_depends_on_method() {
        assert_eq!(split("[]", false), Err(JsonError::EmptyArray));
        assert_eq!(split(" [ ] ", false), Err(JsonError::EmptyArray));
        assert_eq!(split("[]", true), Ok(vec![]));
    }

    #[test]
    fn invalid_bodies_are_rejected() {
        for body in [
            "",
            "   ",
            "{",
            "[1,",
            "{\"a\":}",
            "1 2",
            "[1] [2]",
            "undefined",
            "'a'",
        ] {
            assert!(
                matches!(split(body, true), Err(JsonError::Invalid(_))),
                "body {body:?}"
            );
        }
        let not_utf8 = Bytes::from_static(b"\"\xff\"");
        assert!(matches!(
            split_messages(&not_utf8, false),
            Err(JsonError::Invalid(_))
        ));
        let deep = "[".repeat(10_000);
        assert!(matches!(split(&deep, false), Err(JsonError::Invalid(_))));
    }

    #[test]
    fn messages_share_the_body_allocation() {
        let body = Bytes::from_static(b"[{\"a\":1}, 2]");
        let messages = split_messages(&body, false).expect("valid");
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len();
        for m in &messages {
            assert!(range.contains(&(m.as_ptr() as usize)));
        }
    }

    #[test]
    fn array_pieces_table() {
        assert_eq!(concat(&array_pieces(&[])), "[]");
        let one = [Bytes::from_static(b"{\"a\":1}")];
        assert_eq!(concat(&array_pieces(&one)), "[{\"a\":1}]");
        let three = [
            Bytes::from_static(b"1"),
            Bytes::from_static(b"\"x\""),
            Bytes::from_static(b"[2]"),
        ];
        assert_eq!(array_pieces(&three).len(), 7);
        assert_eq!(concat(&array_pieces(&three)), "[1,\"x\",[2]]");
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            // Quarters are exact in binary and print exactly, so parsing them back is exact
            // (serde_json's default float parser is not correctly rounded for every input).
            (-1_000_000i32..1_000_000).prop_map(|n| Value::from(f64::from(n) / 4.0)),
            "\\PC{0,8}|[\\n\\r\\t \"\\\\]{0,4}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn split_flattens_one_level_and_array_pieces_restores_it(
            values in prop::collection::vec(arb_json(), 1..6),
            pretty: bool,
        ) {
            let array = Value::Array(values.clone());
            let text = if pretty {
                serde_json::to_string_pretty(&array)
            } else {
                serde_json::to_string(&array)
            }.expect("serialisable");
            let body = Bytes::from(text);
            let messages = split_messages(&body, false).expect("valid array");
            prop_assert_eq!(messages.len(), values.len());
            for (m, v) in messages.iter().zip(&values) {
                let parsed: Value = serde_json::from_slice(m).expect("message is JSON");
                prop_assert_eq!(&parsed, v);
            }
            let framed = concat(&array_pieces(&messages));
            let reparsed: Value = serde_json::from_str(&framed).expect("framed array is JSON");
            prop_assert_eq!(reparsed, array);
        }

        #[test]
        fn non_array_value_is_one_message(value in arb_json()) {
            prop_assume!(!value.is_array());
            let body = Bytes::from(format!(" {value} "));
            let messages = split_messages(&body, false).expect("valid");
            prop_assert_eq!(messages.len(), 1);
            let parsed: Value = serde_json::from_slice(&messages[0]).expect("JSON");
            prop_assert_eq!(parsed, value);
        }

        #[test]
        fn split_never_panics(s in "\\PC{0,40}") {
            let _ = split_messages(&Bytes::from(s), false);
        }
    }
}
