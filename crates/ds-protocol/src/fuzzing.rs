//! Property checks driven by the fuzz targets in `fuzz/` and replayed by `cargo test`.
//!
//! Each `check_*` function takes arbitrary bytes, feeds them to one family of parsers or
//! encoders and asserts the properties that must hold for every input (round trips, canonical
//! spellings, invariants of accepted values); a violated property panics, which is what
//! libFuzzer reports as a crash. The fuzz targets are one-line calls into these functions, and
//! the unit tests at the bottom replay every committed seed and regression input
//! (`fuzz/seeds/<target>/`, `fuzz/regressions/<target>/`) through the same code, so a bug found
//! once stays fixed. Not part of the supported API.
#![doc(hidden)]

use std::fmt::Write as _;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;

use crate::content_type::{self, ContentTypeError};
use crate::headers::{self, Expiry, HeaderError, MAX_SAFE_INTEGER};
use crate::name::{NameLimits, StreamName};
use crate::offset::{Offset, OffsetError, OffsetParam};
use crate::sse::{self, Control, SseEncoding};
use crate::{cursor, etag, json};

/// The input as text: fuzzed header values and paths arrive as `&str`.
fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Eight bytes of `data` from `at` (zero-padded) as a little-endian `u64`.
fn word(data: &[u8], at: usize) -> u64 {
    let mut buf = [0u8; 8];
    for (i, slot) in buf.iter_mut().enumerate() {
        *slot = data.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(buf)
}

/// Offsets: the parser accepts exactly the canonical spelling, the `offset` parameter adds
/// only its two sentinels, and encoded order equals numeric order.
pub fn check_offset(data: &[u8]) {
    let s = text(data);
    match s.parse::<Offset>() {
        Ok(offset) => {
            assert_eq!(offset.to_string(), s, "accepted a non-canonical offset");
            assert_eq!(s.len(), Offset::ENCODED_LEN);
        }
        Err(OffsetError::Empty) => assert!(s.is_empty()),
        Err(OffsetError::Malformed(kept)) => {
            assert!(kept.chars().count() <= OffsetError::MAX_VALUE_CHARS);
            assert!(s.starts_with(&kept));
        }
    }
    match OffsetParam::parse(&s) {
        Ok(param) => {
            assert_eq!(param.to_string(), s, "offset parameter does not round-trip");
            if let OffsetParam::At(offset) = param {
                assert_eq!(s.parse::<Offset>(), Ok(offset));
            }
        }
        Err(_) => assert!(s != "-1" && s != "now" && s.parse::<Offset>().is_err()),
    }

    let a = Offset::new(word(data, 0), word(data, 8));
    let b = Offset::new(word(data, 16), word(data, 24));
    for offset in [a, b] {
        let encoded = offset.to_string();
        assert_eq!(encoded.as_bytes(), offset.encode());
        assert_eq!(encoded.parse::<Offset>(), Ok(offset));
        assert_eq!(OffsetParam::parse(&encoded), Ok(OffsetParam::At(offset)));
    }
    assert_eq!(
        a.cmp(&b),
        a.to_string().cmp(&b.to_string()),
        "offset order differs from byte order"
    );
}

/// Every header parser: accepted values have one canonical spelling and survive a round trip,
/// errors keep a bounded excerpt, and the combined parsers agree with the single ones.
///
/// The input is split on `\n` into up to three values, used by the parsers that combine
/// several headers (the producer triple, TTL versus Expires-At) and by `If-None-Match`.
pub fn check_headers(data: &[u8]) {
    let s = text(data);
    let s = s.as_ref();

    // Canonical decimals.
    let ttl = headers::parse_ttl(s);
    match &ttl {
        Ok(n) => assert_eq!(
            n.to_string(),
            s,
            "Stream-TTL accepted a non-canonical value"
        ),
        Err(e) => assert_bounded(e),
    }
    let safe = headers::parse_safe_integer(headers::PRODUCER_SEQ, s);
    assert_eq!(
        safe.as_ref().ok(),
        ttl.as_ref().ok().filter(|&&n| n <= MAX_SAFE_INTEGER),
        "safe integers are canonical decimals up to 2^53 - 1"
    );
    assert_eq!(
        headers::parse_sub_offset(s).ok(),
        safe.as_ref().ok().copied(),
        "Stream-Fork-Sub-Offset follows the safe-integer rules"
    );
    if let Err(e) = &safe {
        assert_bounded(e);
    }
    assert_eq!(headers::parse_fork_offset(s).ok(), s.parse::<Offset>().ok());

    // Stream-Expires-At: accepted instants are UTC, in 0000..=9999, and echo back exactly.
    match headers::parse_expires_at(s) {
        Ok(at) => {
            assert!(at.offset().is_utc());
            assert!((0..=9999).contains(&at.year()));
            let echoed = headers::format_expires_at(at);
            assert_eq!(headers::parse_expires_at(&echoed), Ok(at), "{echoed}");
            assert_eq!(headers::format_expires_at(at), echoed);
        }
        Err(e) => assert_bounded(&e),
    }

    assert_eq!(
        headers::is_closed_flag(Some(s)),
        s.trim().eq_ignore_ascii_case("true")
    );
    assert!(!headers::is_closed_flag(None));

    check_combined_headers(data, s);
    check_content_type(s);
    check_if_none_match(data, s);

    // Stream-Cursor: an echoed cursor at or ahead of the current interval always gets a
    // strictly greater one back (unless it is u64::MAX), so cached responses cannot loop.
    let now = word(data, 0) >> 20;
    let jitter = 1 + word(data, 8) % 3600;
    let current = cursor::current_interval(now);
    let next = cursor::next_cursor(now, Some(s), jitter);
    assert!(next >= current);
    if let Ok(client) = s.parse::<u64>()
        && s == client.to_string()
        && client >= current
    {
        assert!(next > client || client == u64::MAX);
    }
}

/// The parsers that combine several headers (the producer triple, TTL versus Expires-At), fed
/// from up to three `\n`-separated parts of `s`; bits of the first input byte say which
/// headers were sent.
fn check_combined_headers(data: &[u8], s: &str) {
    let mut parts = s.splitn(3, '\n');
    let (first, second, third) = (parts.next(), parts.next(), parts.next());
    let selector = data.first().copied().unwrap_or(0);
    // A selector bit present means "this header was sent" with the matching part as value.
    let pick = |bit: u8, part: Option<&str>| {
        (selector & bit != 0)
            .then(|| part.map(str::to_owned))
            .flatten()
    };
    let id = pick(1, first);
    let epoch = pick(2, second);
    let seq = pick(4, third);
    match headers::parse_producer(id.as_deref(), epoch.as_deref(), seq.as_deref()) {
        Ok(None) => assert!(id.is_none() && epoch.is_none() && seq.is_none()),
        Ok(Some(producer)) => {
            let (id, epoch, seq) = (id.expect("id"), epoch.expect("epoch"), seq.expect("seq"));
            assert_eq!(producer.id, id, "producer ids are kept verbatim");
            assert!(!id.trim().is_empty());
            assert_eq!(
                Ok(producer.epoch),
                headers::parse_safe_integer(headers::PRODUCER_EPOCH, &epoch)
            );
            assert_eq!(
                Ok(producer.seq),
                headers::parse_safe_integer(headers::PRODUCER_SEQ, &seq)
            );
        }
        Err(HeaderError::PartialProducerHeaders { missing }) => {
            let expected: Vec<&str> = [
                (id.is_none(), headers::PRODUCER_ID),
                (epoch.is_none(), headers::PRODUCER_EPOCH),
                (seq.is_none(), headers::PRODUCER_SEQ),
            ]
            .into_iter()
            .filter_map(|(absent, name)| absent.then_some(name))
            .collect();
            assert!(!expected.is_empty() && expected.len() < 3);
            assert_eq!(missing, expected);
        }
        Err(HeaderError::EmptyProducerId) => {
            assert!(id.is_some_and(|id| id.trim().is_empty()));
        }
        Err(e) => assert_bounded(&e),
    }

    let ttl_part = pick(8, first);
    let at_part = pick(16, second);
    match headers::parse_expiry(ttl_part.as_deref(), at_part.as_deref()) {
        Ok(Expiry::None) => assert!(ttl_part.is_none() && at_part.is_none()),
        Ok(Expiry::Ttl(n)) => {
            assert!(at_part.is_none());
            assert_eq!(headers::parse_ttl(ttl_part.as_deref().expect("ttl")), Ok(n));
        }
        Ok(Expiry::ExpiresAt(at)) => {
            assert!(ttl_part.is_none());
            assert_eq!(
                headers::parse_expires_at(at_part.as_deref().expect("expires-at")),
                Ok(at)
            );
        }
        Err(HeaderError::TtlAndExpiresAt) => assert!(ttl_part.is_some() && at_part.is_some()),
        Err(e) => assert_bounded(&e),
    }
}

/// `Content-Type`: normalisation is idempotent, ASCII and preserves the essence.
fn check_content_type(s: &str) {
    assert!(content_type::matches(s, s));
    match content_type::normalize(s) {
        Ok(normal) => {
            assert!(normal.is_ascii());
            assert_eq!(content_type::normalize(&normal).as_ref(), Ok(&normal));
            assert!(content_type::matches(s, &normal));
            assert_eq!(content_type::essence(s), content_type::essence(&normal));
            assert_eq!(content_type::is_json(s), content_type::is_json(&normal));
            assert_eq!(
                content_type::sse_encoding(s),
                content_type::sse_encoding(&normal)
            );
            let essence = content_type::essence(&normal);
            assert!(normal.starts_with(&essence));
            assert_eq!(essence.matches('/').count(), 1);
        }
        Err(ContentTypeError::Invalid(kept)) => assert!(kept.chars().count() <= 128),
    }
    if content_type::is_json(s) {
        assert_eq!(content_type::sse_encoding(s), SseEncoding::Text);
    }
}

/// `If-None-Match`: a header matches only if it is `*` or contains our tag's text, and a
/// header starting with our tag (weak or strong) always matches.
fn check_if_none_match(data: &[u8], header: &str) {
    let tag = etag::etag(
        word(data, 0),
        Offset::new(word(data, 8), word(data, 16)),
        Offset::new(word(data, 24), word(data, 32)),
        data.last().is_some_and(|b| b & 1 == 1),
    );
    let unquoted = &tag[1..tag.len() - 1];
    if etag::if_none_match(header, &tag) {
        assert!(header.trim() == "*" || header.contains(unquoted));
    }
    assert!(etag::if_none_match(&format!("{tag}, {header}"), &tag));
    assert!(etag::if_none_match(&format!(" W/{tag},{header}"), &tag));
}

/// An error whose message carries a truncated excerpt of the offending value.
fn assert_bounded(error: &HeaderError) {
    let excerpt = match error {
        HeaderError::InvalidTtl { value }
        | HeaderError::InvalidExpiresAt { value }
        | HeaderError::InvalidInteger { value, .. }
        | HeaderError::InvalidSubOffset { value }
        | HeaderError::InvalidOffsetHeader { value, .. } => value.as_str(),
        HeaderError::TtlAndExpiresAt
        | HeaderError::EmptyProducerId
        | HeaderError::PartialProducerHeaders { .. } => "",
    };
    assert!(
        excerpt.chars().count() <= 128,
        "unbounded excerpt in {error}"
    );
}

/// JSON mode: the validator agrees with serde_json, messages are trimmed sub-slices of the body
/// that are each one JSON value, and framing the messages back into an array and splitting it
/// again gives the same messages.
pub fn check_json(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    let allow_empty = data.first().is_some_and(|b| b & 1 == 1);
    let result = json::split_messages(&body, allow_empty);
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let empty_array = value.as_array().is_some_and(Vec::is_empty);
        assert!(
            result.is_ok() || (empty_array && !allow_empty),
            "serde_json accepts what JSON mode rejects: {result:?}"
        );
    }
    let Ok(messages) = result else {
        return;
    };
    let range = body.as_ptr_range();
    for message in &messages {
        assert!(range.start <= message.as_ptr() && message.as_ptr_range().end <= range.end);
        assert!(!message.is_empty());
        assert!(!matches!(message[0], b' ' | b'\t' | b'\n' | b'\r'));
        assert!(!matches!(
            message[message.len() - 1],
            b' ' | b'\t' | b'\n' | b'\r'
        ));
        let raw: &serde_json::value::RawValue =
            serde_json::from_slice(message).expect("each message is one JSON value");
        assert_eq!(raw.get().as_bytes(), &message[..]);
    }
    let framed: Vec<u8> = json::array_pieces(&messages).concat();
    let again = json::split_messages(&Bytes::from(framed), true).expect("framed array parses");
    assert_eq!(
        again, messages,
        "framing and splitting changed the messages"
    );
}

/// SSE framing: every frame parses (with a strict WHATWG-style parser) into exactly the event
/// it was built for, so payload bytes can never end a line, a field or an event.
///
/// The first input byte chooses the encoding and flags; the rest is split on `0xff` into
/// payload pieces (which may contain any line terminator).
pub fn check_sse(data: &[u8]) {
    let (flags, rest) = data.split_first().unwrap_or((&0, &[]));
    let pieces: Vec<Bytes> = rest
        .split(|&b| b == 0xff)
        .map(Bytes::copy_from_slice)
        .collect();
    let payload: Vec<u8> = pieces.concat();

    // Text: the data lines, joined with LF, are the payload with CR LF and CR turned into LF.
    let frame = sse::data_event(&pieces, SseEncoding::Text);
    let events = parse_sse(&frame);
    assert_eq!(
        events,
        [SseEvent {
            kind: b"data".to_vec(),
            data: normalize_newlines(&payload)
        }],
        "text frame {:?}",
        String::from_utf8_lossy(&frame)
    );

    // Base64: lines of at most 76 characters that decode to the payload.
    let frame = sse::data_event(&pieces, SseEncoding::Base64);
    let events = parse_sse(&frame);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, b"data");
    let lines: Vec<&[u8]> = events[0].data.split(|&b| b == b'\n').collect();
    assert!(lines.iter().all(|line| line.len() <= 76));
    let decoded = STANDARD
        .decode(lines.concat())
        .expect("base64 data lines decode");
    assert_eq!(decoded, payload);

    // JSON: the data is an array of the messages (line terminators normalised).
    if let Ok(messages) = json::split_messages(&Bytes::copy_from_slice(rest), false) {
        let frame = sse::json_data_event(&messages);
        let events = parse_sse(&frame);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, b"data");
        let array = json::split_messages(&Bytes::from(events[0].data.clone()), true)
            .expect("the data of a JSON frame is a JSON array");
        let expected: Vec<Vec<u8>> = messages.iter().map(|m| normalize_newlines(m)).collect();
        let actual: Vec<Vec<u8>> = array.iter().map(|m| m.to_vec()).collect();
        assert_eq!(actual, expected);
    }

    // Control: one data line of JSON carrying exactly the fields set.
    let strings: Vec<String> = rest
        .splitn(2, |&b| b == 0xff)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let control = Control {
        stream_next_offset: strings.first().cloned().unwrap_or_default(),
        stream_cursor: strings.get(1).cloned().filter(|_| flags & 1 == 1),
        up_to_date: flags & 2 == 2,
        stream_closed: flags & 4 == 4,
    };
    let frame = sse::control_event(&control);
    let events = parse_sse(&frame);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, b"control");
    let value: serde_json::Value =
        serde_json::from_slice(&events[0].data).expect("control data is JSON");
    assert_eq!(
        value["streamNextOffset"].as_str(),
        Some(control.stream_next_offset.as_str())
    );
    assert_eq!(
        value.get("streamCursor").and_then(|v| v.as_str()),
        control.stream_cursor.as_deref()
    );
    assert_eq!(value.get("upToDate").is_some(), control.up_to_date);
    assert_eq!(value.get("streamClosed").is_some(), control.stream_closed);

    assert!(parse_sse(&sse::keep_alive()).is_empty());
}

/// One dispatched SSE event.
#[derive(Debug, PartialEq, Eq)]
struct SseEvent {
    /// The `event` field (`message` when absent).
    kind: Vec<u8>,
    /// The data buffer without its final LF.
    data: Vec<u8>,
}

/// Parses an SSE byte stream as the WHATWG event-stream interpretation does (lines end at
/// CR LF, LF or CR; one space after the colon is dropped; a blank line dispatches), and
/// asserts the frame is one we could have meant: only `event`, `data` and comment lines, and
/// nothing after the last blank line.
fn parse_sse(stream: &[u8]) -> Vec<SseEvent> {
    let mut events = Vec::new();
    let mut kind: Option<Vec<u8>> = None;
    let mut data: Vec<u8> = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let end = rest
            .iter()
            .position(|&b| b == b'\n' || b == b'\r')
            .unwrap_or_else(|| panic!("unterminated line {:?}", String::from_utf8_lossy(rest)));
        let line = &rest[..end];
        let terminator = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[end + terminator..];
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                events.push(SseEvent {
                    kind: kind.take().unwrap_or_else(|| b"message".to_vec()),
                    data: std::mem::take(&mut data),
                });
            }
            kind = None;
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"event" => kind = Some(value.to_vec()),
            b"data" => {
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            other => panic!(
                "unexpected SSE field {:?}: payload escaped its data line",
                String::from_utf8_lossy(other)
            ),
        }
    }
    assert!(
        data.is_empty() && kind.is_none(),
        "frame does not end with a blank line"
    );
    events
}

/// `bytes` with CR LF and lone CR replaced by LF.
fn normalize_newlines(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' {
            out.push(b'\n');
            if bytes.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
        } else {
            out.push(bytes[i]);
        }
        i += 1;
    }
    out
}

/// Stream names: accepted names satisfy every documented invariant, and both the server's own
/// URL encoding and a percent-encoding of every byte parse back to the same name.
///
/// The first input byte also sets tight limits, checked alongside the defaults.
pub fn check_name(data: &[u8]) {
    let raw = text(data);
    let b = usize::from(data.first().copied().unwrap_or(0));
    let tight = NameLimits {
        max_bytes: 1 + b * 4,
        max_segments: 1 + b % 8,
    };
    for limits in [NameLimits::default(), tight] {
        let Ok(name) = StreamName::parse(&raw, limits) else {
            continue;
        };
        let s = name.as_str();
        assert!(!s.is_empty() && s.len() <= limits.max_bytes);
        assert!(!s.starts_with('/') && !s.ends_with('/'));
        assert!(!s.contains('\\') && !s.chars().any(char::is_control));
        let segments: Vec<&str> = name.segments().collect();
        assert!(segments.len() <= limits.max_segments);
        assert!(
            segments
                .iter()
                .all(|seg| !seg.is_empty() && *seg != "." && *seg != "..")
        );
        assert_eq!(
            name.is_reserved(),
            segments[0] == crate::name::RESERVED_PREFIX
        );

        let url = name.to_url_path();
        assert!(url.bytes().all(|c| c.is_ascii_graphic()), "{url:?}");
        assert_eq!(StreamName::parse(&url, limits).as_ref(), Ok(&name));
        assert_eq!(
            StreamName::parse(&format!("/{url}"), limits).as_ref(),
            Ok(&name)
        );
        let encoded = s.bytes().fold(String::new(), |mut out, c| {
            let _ = write!(out, "%{c:02x}");
            out
        });
        assert_eq!(StreamName::parse(&encoded, limits), Ok(name.clone()));
    }
}

/// Runs `check` over every file of `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`
/// under the workspace root `root`, naming the file that fails; returns how many ran. Used by
/// the replay tests of every crate that owns a fuzz target.
///
/// # Panics
///
/// When a check fails (with the file's path), or a directory cannot be read.
pub fn replay(root: &Path, target: &str, check: fn(&[u8])) -> usize {
    let mut ran = 0;
    for kind in ["seeds", "regressions"] {
        let dir = root.join("fuzz").join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries
            .map(|entry| entry.expect("readable fuzz input directory").path())
            .filter(|path| path.is_file())
            .collect();
        paths.sort();
        for path in paths {
            let input = std::fs::read(&path).expect("readable fuzz input");
            let outcome = std::panic::catch_unwind(|| check(&input));
            assert!(outcome.is_ok(), "fuzz input {} fails", path.display());
            ran += 1;
        }
    }
    ran
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The workspace root, two levels above this crate.
    fn root() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// A check function.
    type Check = fn(&[u8]);

    #[test]
    fn committed_fuzz_inputs_pass() {
        let targets: [(&str, Check); 5] = [
            ("offset", check_offset),
            ("headers", check_headers),
            ("json", check_json),
            ("sse", check_sse),
            ("name", check_name),
        ];
        for (target, check) in targets {
            assert!(replay(&root(), target, check) > 0, "no inputs for {target}");
        }
    }

    #[test]
    fn sse_parser_rejects_an_injected_field() {
        let outcome = std::panic::catch_unwind(|| parse_sse(b"event: data\ndata:a\nid: 1\n\n"));
        assert!(outcome.is_err());
        assert_eq!(
            parse_sse(b"event: data\r\ndata: x\rdata:\n\n"),
            [SseEvent {
                kind: b"data".to_vec(),
                data: b"x\n".to_vec()
            }]
        );
    }

    #[test]
    fn newlines_are_normalised() {
        assert_eq!(normalize_newlines(b"a\r\nb\rc\n\r"), b"a\nb\nc\n\n");
    }
}
