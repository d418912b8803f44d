//! Server-Sent Events framing (PROTOCOL.md section 5.8).
//!
//! A live SSE read is a sequence of `event: data` frames, each followed by an
//! `event: control` frame carrying the next offset and cursor. Frames look like
//!
//! ```text
//! event: data
//! data:first line
//! data:second line
//!
//! event: control
//! data:{"streamNextOffset":"…","streamCursor":"…"}
//!
//! ```
//!
//! Payload text is split on every line terminator SSE recognises (`\r\n`, `\n`, `\r`) and each
//! piece gets its own `data:` line, so no payload byte sequence can end a field or an event:
//! stream content can never inject an event. Field values follow `data:` directly; SSE
//! parsers strip one optional space after the colon, so a line that itself begins with a space
//! is written as `data: ` + line and survives intact.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut as _, Bytes, BytesMut};

/// How `data` event payloads are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseEncoding {
    /// UTF-8 text as is (`text/*` and `application/json` streams).
    Text,
    /// Standard base64 with padding (every other content type).
    Base64,
}

/// The value of the `stream-sse-data-encoding` header for base64 streams.
pub const BASE64_ENCODING_HEADER_VALUE: &str = "base64";

/// Characters of base64 text per `data:` line: a multiple of 4, so every line but the last
/// decodes on its own, and the classic MIME width.
const BASE64_LINE_CHARS: usize = 76;

const DATA_EVENT: &[u8] = b"event: data\n";
const CONTROL_EVENT: &[u8] = b"event: control\n";
const DATA_FIELD: &[u8] = b"data:";

/// An `event: data` frame for a batch of payload pieces (concatenated logically).
///
/// - [`SseEncoding::Text`]: the payload is split into lines on `\r\n`, `\n` and `\r` (also
///   across piece boundaries); each line becomes its own `data:` line, so a client joining
///   the lines with `\n` gets the payload with every line terminator normalised to `\n`.
///   An empty payload is a single empty `data:` line.
/// - [`SseEncoding::Base64`]: standard base64 with padding over the whole concatenated
///   payload, split into `data:` lines of at most 76 characters (a multiple of 4). An empty
///   payload is a single empty `data:` line (the empty string).
#[must_use]
pub fn data_event(pieces: &[Bytes], encoding: SseEncoding) -> Bytes {
    let payload_len: usize = pieces.iter().map(Bytes::len).sum();
    match encoding {
        SseEncoding::Text => {
            let mut out = BytesMut::with_capacity(DATA_EVENT.len() + payload_len + 16);
            out.put_slice(DATA_EVENT);
            write_text_lines(&mut out, pieces);
            out.put_u8(b'\n');
            out.freeze()
        }
        SseEncoding::Base64 => {
            let mut payload = Vec::with_capacity(payload_len);
            for piece in pieces {
                payload.extend_from_slice(piece);
            }
            let text = STANDARD.encode(&payload);
            let lines = text.len().div_ceil(BASE64_LINE_CHARS).max(1);
            let mut out = BytesMut::with_capacity(DATA_EVENT.len() + text.len() + lines * 6 + 1);
            out.put_slice(DATA_EVENT);
            if text.is_empty() {
                out.put_slice(DATA_FIELD);
                out.put_u8(b'\n');
            }
            for line in text.as_bytes().chunks(BASE64_LINE_CHARS) {
                out.put_slice(DATA_FIELD);
                out.put_slice(line);
                out.put_u8(b'\n');
            }
            out.put_u8(b'\n');
            out.freeze()
        }
    }
}

/// For JSON streams: a `data` event whose data lines, joined with `\n`, are a JSON array of
/// the messages:
///
/// ```text
/// event: data
/// data:[
/// data:{"k":"v"},
/// data:{"k":"w"}
/// data:]
/// ```
///
/// Pretty-printed messages spanning several lines are split like text, which is harmless:
/// the line breaks fall where the message had JSON whitespace.
#[must_use]
pub fn json_data_event(messages: &[Bytes]) -> Bytes {
    let mut pieces = Vec::with_capacity(messages.len() * 2 + 2);
    pieces.push(Bytes::from_static(b"["));
    for (i, message) in messages.iter().enumerate() {
        let separator: &'static [u8] = if i == 0 { b"\n" } else { b",\n" };
        pieces.push(Bytes::from_static(separator));
        pieces.push(message.clone());
    }
    pieces.push(Bytes::from_static(b"\n]"));
    data_event(&pieces, SseEncoding::Text)
}

/// The control event payload (camelCase JSON, fields omitted when `None`/`false`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Control {
    /// The offset to resume from.
    pub stream_next_offset: String,
    /// The cursor to echo (required while the stream is open; may be omitted once closed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_cursor: Option<String>,
    /// The client has all data available at the time of the event.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub up_to_date: bool,
    /// The stream is closed and everything up to its final offset has been sent.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub stream_closed: bool,
}

/// An `event: control` frame: `event: control\ndata:{json}\n\n`. Compact JSON never contains
/// a raw line break (string escapes are used), so it is always one `data:` line.
///
/// # Panics
///
/// Never: serialising strings and booleans to JSON cannot fail.
#[must_use]
pub fn control_event(control: &Control) -> Bytes {
    let json = serde_json::to_vec(control)
        .expect("a struct of strings and bools always serialises to JSON");
    let mut out = BytesMut::with_capacity(CONTROL_EVENT.len() + DATA_FIELD.len() + json.len() + 2);
    out.put_slice(CONTROL_EVENT);
    out.put_slice(DATA_FIELD);
    out.put_slice(&json);
    out.put_slice(b"\n\n");
    out.freeze()
}

/// A comment frame (`: keep-alive\n\n`) for idle connections; SSE clients ignore it.
#[must_use]
pub fn keep_alive() -> Bytes {
    Bytes::from_static(b": keep-alive\n\n")
}

/// Writes the logical concatenation of `pieces` as `data:` lines, one per payload line, each
/// terminated by `\n`. A trailing line terminator in the payload yields a final empty `data:`
/// line, exactly as the SSE data buffer would reproduce it.
fn write_text_lines(out: &mut BytesMut, pieces: &[Bytes]) {
    // `at_line_start`: no `data:` field has been opened for the current line yet.
    // `after_cr`: the previous byte was a `\r`, so an immediately following `\n` (possibly in
    // the next piece) belongs to the same terminator.
    let mut at_line_start = true;
    let mut after_cr = false;
    for piece in pieces {
        let mut rest: &[u8] = piece;
        if rest.is_empty() {
            continue;
        }
        if after_cr {
            after_cr = false;
            if rest[0] == b'\n' {
                rest = &rest[1..];
            }
        }
        while !rest.is_empty() {
            let end = rest
                .iter()
                .position(|&b| b == b'\n' || b == b'\r')
                .unwrap_or(rest.len());
            if end > 0 {
                if at_line_start {
                    out.put_slice(DATA_FIELD);
                    if rest[0] == b' ' {
                        out.put_u8(b' ');
                    }
                    at_line_start = false;
                }
                out.put_slice(&rest[..end]);
            }
            let Some(&terminator) = rest.get(end) else {
                break;
            };
            if at_line_start {
                out.put_slice(DATA_FIELD);
            }
            out.put_u8(b'\n');
            at_line_start = true;
            rest = &rest[end + 1..];
            if terminator == b'\r' {
                if rest.first() == Some(&b'\n') {
                    rest = &rest[1..];
                } else if rest.is_empty() {
                    after_cr = true;
                }
            }
        }
    }
    if at_line_start {
        out.put_slice(DATA_FIELD);
    }
    out.put_u8(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A port of the conformance suite's `parseSSEEvents`: normalise line breaks, split events
    /// on blank lines, strip one space after `data:`, join data lines with `\n`.
    fn parse_events(text: &str) -> Vec<(String, String)> {
        let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
        let mut events = Vec::new();
        for block in normalized.split("\n\n").filter(|b| !b.trim().is_empty()) {
            let mut event_type = String::new();
            let mut data = Vec::new();
            for line in block.split('\n') {
                if let Some(t) = line.strip_prefix("event:") {
                    event_type = t.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d).to_owned());
                }
            }
            if !event_type.is_empty() && !data.is_empty() {
                events.push((event_type, data.join("\n")));
            }
        }
        events
    }

    fn text(bytes: &Bytes) -> String {
        String::from_utf8(bytes.to_vec()).expect("test payloads are UTF-8")
    }

    fn normalize_newlines(s: &str) -> String {
        s.replace("\r\n", "\n").replace('\r', "\n")
    }

    #[test]
    fn text_event_table() {
        let cases: &[(&[&str], &str)] = &[
            (&["hello"], "event: data\ndata:hello\n\n"),
            (&[""], "event: data\ndata:\n\n"),
            (&[], "event: data\ndata:\n\n"),
            (
                &["line1\nline2\nline3"],
                "event: data\ndata:line1\ndata:line2\ndata:line3\n\n",
            ),
            (&["a\r\nb"], "event: data\ndata:a\ndata:b\n\n"),
            (&["a\rb"], "event: data\ndata:a\ndata:b\n\n"),
            (&["a\n"], "event: data\ndata:a\ndata:\n\n"),
            (&["a\n\nb"], "event: data\ndata:a\ndata:\ndata:b\n\n"),
            (&[" x"], "event: data\ndata:  x\n\n"),
            (&["a\r", "\nb"], "event: data\ndata:a\ndata:b\n\n"),
            (&["a\r", "", "\nb"], "event: data\ndata:a\ndata:b\n\n"),
            (
                &["a\r", "\n", "\nb"],
                "event: data\ndata:a\ndata:\ndata:b\n\n",
            ),
            (
                &["a\r", "\r", "\nb"],
                "event: data\ndata:a\ndata:\ndata:b\n\n",
            ),
            (&["a\r", "b"], "event: data\ndata:a\ndata:b\n\n"),
            (&["ab", "cd"], "event: data\ndata:abcd\n\n"),
            (&["ab\n", " cd"], "event: data\ndata:ab\ndata:  cd\n\n"),
            (&["\r\n"], "event: data\ndata:\ndata:\n\n"),
        ];
        for &(pieces, want) in cases {
            let pieces: Vec<Bytes> = pieces
                .iter()
                .map(|p| Bytes::copy_from_slice(p.as_bytes()))
                .collect();
            assert_eq!(
                text(&data_event(&pieces, SseEncoding::Text)),
                want,
                "pieces {pieces:?}"
            );
        }
    }

    #[test]
    fn injection_attempts_stay_inside_one_data_event() {
        let attacks = [
            "safe content\r\n\r\nevent: control\r\ndata: {\"injected\":true}\r\n\r\nmore safe content",
            "start\n\nevent: data\ndata: fake-event\n\nend",
            "start\r\revent: control\rdata: {\"cr_injected\":true}\r\rend",
        ];
        for attack in attacks {
            let frame = data_event(&[Bytes::from(attack)], SseEncoding::Text);
            let framed = text(&frame);
            let events = parse_events(&framed);
            assert_eq!(events.len(), 1, "{framed:?}");
            assert_eq!(events[0].0, "data");
            assert_eq!(events[0].1, normalize_newlines(attack));
            for line in framed.lines().skip(1) {
                assert!(line.is_empty() || line.starts_with("data:"), "{line:?}");
            }
        }
    }

    #[test]
    fn base64_event_table() {
        let cases: &[(&[&[u8]], &str)] = &[
            (&[b"Hello"], "event: data\ndata:SGVsbG8=\n\n"),
            (&[b"He", b"llo"], "event: data\ndata:SGVsbG8=\n\n"),
            (&[], "event: data\ndata:\n\n"),
            (&[b""], "event: data\ndata:\n\n"),
            (
                &[&[0, 1, 2, 3], &[4, 5, 6, 7]],
                "event: data\ndata:AAECAwQFBgc=\n\n",
            ),
        ];
        for &(pieces, want) in cases {
            let pieces: Vec<Bytes> = pieces.iter().map(|p| Bytes::copy_from_slice(p)).collect();
            assert_eq!(text(&data_event(&pieces, SseEncoding::Base64)), want);
        }
    }

    #[test]
    fn long_base64_is_split_into_lines_of_multiples_of_four() {
        let payload: Vec<u8> = (0..1024u32).map(|i| (i % 256) as u8).collect();
        let frame = text(&data_event(
            &[Bytes::from(payload.clone())],
            SseEncoding::Base64,
        ));
        let events = parse_events(&frame);
        assert_eq!(events.len(), 1);
        let lines: Vec<&str> = events[0].1.split('\n').collect();
        assert!(lines.len() > 1);
        for line in &lines[..lines.len() - 1] {
            assert_eq!(line.len(), BASE64_LINE_CHARS);
        }
        let joined: String = lines.concat();
        assert_eq!(joined.len() % 4, 0);
        assert_eq!(STANDARD.decode(joined).expect("valid base64"), payload);
    }

    #[test]
    fn json_event_parses_as_array() {
        let messages = [
            Bytes::from_static(br#"{"id":1,"message":"hello"}"#),
            Bytes::from_static(
                br#"{"message":"line1\nline2","attack":"try\r\n\r\nevent: control"}"#,
            ),
            Bytes::from_static(b"{\n  \"pretty\": [\r\n 1,\r 2 ]\n}"),
        ];
        let frame = text(&json_data_event(&messages));
        assert!(
            frame.starts_with("event: data\ndata:[\ndata:{\"id\":1"),
            "{frame:?}"
        );
        let events = parse_events(&frame);
        assert_eq!(events.len(), 1);
        let parsed: serde_json::Value = serde_json::from_str(&events[0].1).expect("JSON array");
        let want: serde_json::Value = serde_json::json!([
            {"id": 1, "message": "hello"},
            {"message": "line1\nline2", "attack": "try\r\n\r\nevent: control"},
            {"pretty": [1, 2]},
        ]);
        assert_eq!(parsed, want);

        let empty = text(&json_data_event(&[]));
        assert_eq!(empty, "event: data\ndata:[\ndata:]\n\n");
        let events = parse_events(&empty);
        assert_eq!(events[0].1, "[\n]");
    }

    #[test]
    fn control_event_table() {
        let cases = [
            (
                Control {
                    stream_next_offset: "0000000000000001_0000000000000005".into(),
                    stream_cursor: Some("1000".into()),
                    up_to_date: false,
                    stream_closed: false,
                },
                "event: control\ndata:{\"streamNextOffset\":\"0000000000000001_0000000000000005\",\"streamCursor\":\"1000\"}\n\n",
            ),
            (
                Control {
                    stream_next_offset: "x".into(),
                    stream_cursor: Some("7".into()),
                    up_to_date: true,
                    stream_closed: false,
                },
                "event: control\ndata:{\"streamNextOffset\":\"x\",\"streamCursor\":\"7\",\"upToDate\":true}\n\n",
            ),
            (
                Control {
                    stream_next_offset: "x".into(),
                    stream_cursor: None,
                    up_to_date: true,
                    stream_closed: true,
                },
                "event: control\ndata:{\"streamNextOffset\":\"x\",\"upToDate\":true,\"streamClosed\":true}\n\n",
            ),
        ];
        for (control, want) in cases {
            let frame = text(&control_event(&control));
            assert_eq!(frame, want);
            let events = parse_events(&frame);
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].0, "control");
        }
    }

    #[test]
    fn keep_alive_is_a_comment() {
        assert_eq!(&keep_alive()[..], b": keep-alive\n\n");
        assert!(parse_events(&text(&keep_alive())).is_empty());
    }

    fn arb_pieces() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(
            "([ a-z:]|\\r|\\n|\\r\\n|event: |data: ){0,12}|\\PC{0,8}",
            0..5,
        )
    }

    proptest! {
        #[test]
        fn text_payload_never_starts_an_event(pieces in arb_pieces()) {
            let payload: String = pieces.concat();
            let pieces: Vec<Bytes> = pieces.into_iter().map(Bytes::from).collect();
            let frame = text(&data_event(&pieces, SseEncoding::Text));
            prop_assert!(frame.starts_with("event: data\n"));
            prop_assert!(frame.ends_with("\n\n"));
            let body = &frame["event: data\n".len()..frame.len() - 1];
            for line in body.split_terminator('\n') {
                prop_assert!(line.starts_with("data:"), "line {:?}", line);
                prop_assert!(!line.contains('\r'));
            }
            let events = parse_events(&frame);
            prop_assert_eq!(events.len(), 1);
            prop_assert_eq!(&events[0].0, "data");
            prop_assert_eq!(&events[0].1, &normalize_newlines(&payload));
        }

        #[test]
        fn base64_payload_round_trips(pieces in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..100), 0..4)) {
            let payload: Vec<u8> = pieces.concat();
            let pieces: Vec<Bytes> = pieces.into_iter().map(Bytes::from).collect();
            let frame = text(&data_event(&pieces, SseEncoding::Base64));
            let events = parse_events(&frame);
            prop_assert_eq!(events.len(), 1);
            let joined: String = events[0].1.chars().filter(|c| *c != '\n' && *c != '\r').collect();
            prop_assert_eq!(joined.len() % 4, 0);
            prop_assert_eq!(STANDARD.decode(joined).expect("valid base64"), payload);
        }

        #[test]
        fn json_event_round_trips(values in prop::collection::vec("\\PC{0,6}|[\\r\\n \"]{0,3}", 0..5), pretty: bool) {
            let messages: Vec<Bytes> = values
                .iter()
                .map(|v| {
                    let value = serde_json::json!({ "v": v, "n": [1, 2] });
                    let text = if pretty { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) };
                    Bytes::from(text.expect("serialisable"))
                })
                .collect();
            let frame = text(&json_data_event(&messages));
            let events = parse_events(&frame);
            prop_assert_eq!(events.len(), 1);
            let parsed: Vec<serde_json::Value> = serde_json::from_str(&events[0].1).expect("JSON array");
            prop_assert_eq!(parsed.len(), values.len());
            for (p, v) in parsed.iter().zip(&values) {
                prop_assert_eq!(&p["v"], &serde_json::Value::String(v.clone()));
            }
        }
    }
}
