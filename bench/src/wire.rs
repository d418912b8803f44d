//! Pure parsing of what the fan-out subscribers receive: SSE framing, the bench's own
//! timestamped messages, and offsets for query strings.

use std::fmt::Write as _;

/// Kind of a dispatched SSE event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// `event: data` (stream bytes).
    Data,
    /// `event: control` (offsets and flags as JSON).
    Control,
    /// Anything else, including unnamed events.
    Other,
}

/// Incremental SSE parser: feed it body chunks as they arrive; it calls back once per
/// complete event with the joined `data:` lines. Buffers are reused across events.
#[derive(Debug, Default)]
pub(crate) struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    event: Option<Event>,
    has_data: bool,
}

impl SseParser {
    /// Consumes `chunk`, dispatching each event completed by it.
    pub(crate) fn feed(&mut self, chunk: &[u8], mut on_event: impl FnMut(Event, &[u8])) {
        for &b in chunk {
            if b == b'\n' {
                if self.line.last() == Some(&b'\r') {
                    self.line.pop();
                }
                self.end_line(&mut on_event);
                self.line.clear();
            } else {
                self.line.push(b);
            }
        }
    }

    fn end_line(&mut self, on_event: &mut impl FnMut(Event, &[u8])) {
        let line = &self.line[..];
        if line.is_empty() {
            if self.has_data || self.event.is_some() {
                on_event(self.event.unwrap_or(Event::Other), &self.data);
            }
            self.data.clear();
            self.event = None;
            self.has_data = false;
            return;
        }
        let (field, value) = match line.iter().position(|&c| c == b':') {
            Some(0) => return, // comment
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => {
                self.event = Some(match value {
                    b"data" => Event::Data,
                    b"control" => Event::Control,
                    _ => Event::Other,
                });
            }
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            _ => {}
        }
    }
}

/// The body the fan-out producer sends: `<seq>,<send time in µs>;`.
pub(crate) fn encode_message(seq: u32, sent_us: u64) -> String {
    format!("{seq},{sent_us};")
}

/// Calls `f(seq, sent_us)` for every well-formed message in `text` (several may arrive
/// batched in one read or event; SSE line breaks are ignored).
pub(crate) fn parse_messages(text: &[u8], mut f: impl FnMut(u32, u64)) {
    for part in text.split(|&b| b == b';') {
        let Some(comma) = part.iter().position(|&b| b == b',') else {
            continue;
        };
        if let (Some(seq), Some(ts)) = (digits(&part[..comma]), digits(&part[comma + 1..]))
            && let Ok(seq) = u32::try_from(seq)
        {
            f(seq, ts);
        }
    }
}

/// A decimal number, ignoring line breaks an SSE server may have inserted; `None` when
/// empty, too long or not a number.
fn digits(s: &[u8]) -> Option<u64> {
    let mut n = 0u64;
    let mut count = 0;
    for &b in s {
        match b {
            b'\n' | b'\r' => {}
            b'0'..=b'9' if count < 19 => {
                n = n * 10 + u64::from(b - b'0');
                count += 1;
            }
            _ => return None,
        }
    }
    (count > 0).then_some(n)
}

/// `streamNextOffset` from a control event's JSON, without a JSON parser on the hot path.
pub(crate) fn control_next_offset(json: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"streamNextOffset\"";
    let at = json.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &json[at..];
    let open = rest.iter().position(|&b| b == b'"')?;
    if !rest[..open]
        .iter()
        .all(|&b| b == b':' || b.is_ascii_whitespace())
    {
        return None;
    }
    let rest = &rest[open + 1..];
    let close = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..close]).ok()
}

/// Percent-encodes a query value (offsets are opaque; today's are already URL-safe).
pub(crate) fn query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<(Event, String)> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |e, d| {
                out.push((e, String::from_utf8_lossy(d).into_owned()));
            });
        }
        out
    }

    #[test]
    fn sse_events_split_across_chunks() {
        let got = events(&[
            b"event: data\ndata:1,10;2,",
            b"20;\n\nevent: control\r\ndata: {\"streamNextOffset\":\"0_5\"}\r\n\r\n",
        ]);
        assert_eq!(
            got,
            vec![
                (Event::Data, "1,10;2,20;".to_owned()),
                (Event::Control, "{\"streamNextOffset\":\"0_5\"}".to_owned()),
            ]
        );
    }

    #[test]
    fn multi_line_data_is_joined_and_comments_skipped() {
        let got = events(&[b": keepalive\n\nevent: data\ndata: a\ndata: b\n\n"]);
        assert_eq!(got, vec![(Event::Data, "a\nb".to_owned())]);
    }

    #[test]
    fn messages_parse_when_batched_and_split_by_lines() {
        let mut got = Vec::new();
        parse_messages(b"0,100;1,2\n00;junk;3,x;", |s, t| got.push((s, t)));
        assert_eq!(got, vec![(0, 100), (1, 200)]);
        assert_eq!(encode_message(7, 42), "7,42;");
    }

    #[test]
    fn control_offset_is_found() {
        let j = br#"{"streamNextOffset":"0000_0007","streamCursor":"1","upToDate":true}"#;
        assert_eq!(control_next_offset(j), Some("0000_0007"));
        assert_eq!(
            control_next_offset(br#"{"streamNextOffset": "a"}"#),
            Some("a")
        );
        assert_eq!(control_next_offset(br#"{"x":1}"#), None);
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(query_value("-1"), "-1");
        assert_eq!(query_value("0000_0007"), "0000_0007");
        assert_eq!(query_value("a b&c"), "a%20b%26c");
    }
}
