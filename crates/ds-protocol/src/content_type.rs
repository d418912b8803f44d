//! `Content-Type` handling (PROTOCOL.md sections 5.1, 5.2, 9).
//!
//! A stream's content type is fixed at creation. Appends must match it by *essence*
//! (`type/subtype`, compared ASCII-case-insensitively, parameters ignored); the essence also
//! decides JSON mode (section 9.1) and whether SSE data events are text or base64 (5.8).

use crate::sse::SseEncoding;
use crate::util::truncate;

/// The content type of a stream created without one.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// How much of an offending value an error keeps.
const MAX_VALUE_CHARS: usize = 128;

/// Why a `Content-Type` value was rejected (400 at the edge).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentTypeError {
    /// Not a `type/subtype` media type with well-formed parameters (carries the value,
    /// truncated).
    #[error(
        "invalid content type {0:?}: expected type/subtype with optional ;name=value parameters"
    )]
    Invalid(String),
}

/// Normalises a Content-Type value for storage and echo: trims, lowercases the essence
/// (`type/subtype`) and parameter names, keeps parameter values and their order, and joins
/// parameters with `"; "`. For example `"Application/JSON; Charset=UTF-8"` becomes
/// `"application/json; charset=UTF-8"`. Empty parameters (`"text/plain;"`) are dropped.
///
/// Errors on anything that is not a `type/subtype` pair of RFC 9110 tokens followed by
/// `name=value` parameters (value a token or a quoted string).
pub fn normalize(value: &str) -> Result<String, ContentTypeError> {
    let invalid = || ContentTypeError::Invalid(truncate(value, MAX_VALUE_CHARS));
    let mut p = Parser {
        s: value.trim_matches(is_ows).as_bytes(),
        at: 0,
    };
    let ty = p.token().ok_or_else(invalid)?;
    if !p.eat(b'/') {
        return Err(invalid());
    }
    let subtype = p.token().ok_or_else(invalid)?;
    // Usually one allocation: the normalised value is about as long as the input.
    let mut out = String::with_capacity(p.s.len());
    push_lowercase(&mut out, ty);
    out.push('/');
    push_lowercase(&mut out, subtype);
    loop {
        p.skip_ows();
        if p.done() {
            return Ok(out);
        }
        if !p.eat(b';') {
            return Err(invalid());
        }
        p.skip_ows();
        if p.done() || p.peek() == Some(b';') {
            continue;
        }
        let name = p.token().ok_or_else(invalid)?;
        if !p.eat(b'=') {
            return Err(invalid());
        }
        let param_value = p.param_value().ok_or_else(invalid)?;
        out.push_str("; ");
        push_lowercase(&mut out, name);
        out.push('=');
        out.push_str(param_value);
    }
}

/// The essence `type/subtype`, lowercased, with parameters and surrounding whitespace removed.
///
/// Returns an owned `String` because lowercasing may change the text. It does not validate:
/// for a malformed value it returns the lowercased text before the first `;`.
#[must_use]
pub fn essence(value: &str) -> String {
    raw_essence(value).to_ascii_lowercase()
}

/// Two content types match when their essences are equal ignoring ASCII case (parameters
/// ignored: `"application/json; charset=utf-8"` matches `"application/json"`).
#[must_use]
pub fn matches(a: &str, b: &str) -> bool {
    raw_essence(a).eq_ignore_ascii_case(raw_essence(b))
}

/// JSON mode (section 9.1) applies when the essence is `application/json`.
#[must_use]
pub fn is_json(value: &str) -> bool {
    raw_essence(value).eq_ignore_ascii_case("application/json")
}

/// SSE data events are text for `text/*` and `application/json`, base64 otherwise
/// (section 5.8).
#[must_use]
pub fn sse_encoding(value: &str) -> SseEncoding {
    let essence = raw_essence(value);
    let is_text = essence
        .split_once('/')
        .is_some_and(|(ty, _)| ty.trim_matches(is_ows).eq_ignore_ascii_case("text"));
    if is_text || is_json(value) {
        SseEncoding::Text
    } else {
        SseEncoding::Base64
    }
}

/// The text before the first `;`, without surrounding whitespace; not lowercased.
fn raw_essence(value: &str) -> &str {
    let end = value.find(';').unwrap_or(value.len());
    value[..end].trim_matches(is_ows)
}

/// Optional whitespace (RFC 9110 OWS).
fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Appends `s` ASCII-lowercased.
fn push_lowercase(out: &mut String, s: &str) {
    // A copy and an in-place pass, not a `char` at a time (which showed in the append
    // profile).
    let start = out.len();
    out.push_str(s);
    out[start..].make_ascii_lowercase();
}

/// A cursor over an ASCII byte string. Every slice it hands out ends on an ASCII byte, so it
/// is always valid UTF-8.
struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn done(&self) -> bool {
        self.at >= self.s.len()
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    fn slice(&self, start: usize) -> Option<&'a str> {
        std::str::from_utf8(&self.s[start..self.at]).ok()
    }

    /// One or more `tchar`s.
    fn token(&mut self) -> Option<&'a str> {
        let start = self.at;
        while self.peek().is_some_and(is_tchar) {
            self.at += 1;
        }
        (self.at > start).then(|| self.slice(start)).flatten()
    }

    /// A token or a quoted string (kept with its quotes and escapes, verbatim).
    fn param_value(&mut self) -> Option<&'a str> {
        if self.peek() != Some(b'"') {
            return self.token();
        }
        let start = self.at;
        self.at += 1;
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return self.slice(start);
                }
                b'\\' => {
                    self.at += 1;
                    let escaped = self.peek()?;
                    if escaped != b'\t' && !(0x20..0x7f).contains(&escaped) {
                        return None;
                    }
                    self.at += 1;
                }
                b'\t' | 0x20..=0x7e => self.at += 1,
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn normalize_table() {
        let ok = [
            ("text/plain", "text/plain"),
            ("  text/plain\t", "text/plain"),
            ("TEXT/PLAIN", "text/plain"),
            (
                "Application/JSON; Charset=UTF-8",
                "application/json; charset=UTF-8",
            ),
            (
                "application/json;charset=utf-8",
                "application/json; charset=utf-8",
            ),
            ("text/plain;", "text/plain"),
            ("text/plain; ;a=b", "text/plain; a=b"),
            ("text/plain ; a=b ; C=\"x;y\"", "text/plain; a=b; c=\"x;y\""),
            ("text/plain; a=\"q\\\"z\"", "text/plain; a=\"q\\\"z\""),
            ("application/vnd.api+json", "application/vnd.api+json"),
            ("application/x-protobuf", "application/x-protobuf"),
        ];
        for (input, want) in ok {
            assert_eq!(normalize(input).as_deref(), Ok(want), "input {input:?}");
        }
        let bad = [
            "",
            "   ",
            "text",
            "text/",
            "/plain",
            "text/plain/extra",
            "text plain",
            "text/plain; charset",
            "text/plain; charset=",
            "text/plain; =utf-8",
            "text/plain; a=\"unterminated",
            "text/plain x",
            "tëxt/plain",
            "text/plain; a=b c",
            "text/plain\r\n",
        ];
        for input in bad {
            assert_eq!(
                normalize(input),
                Err(ContentTypeError::Invalid(input.into())),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn essence_and_matching_table() {
        assert_eq!(
            essence(" Application/JSON ; charset=utf-8"),
            "application/json"
        );
        assert_eq!(essence("text/plain"), "text/plain");
        let cases = [
            ("text/plain", "TEXT/PLAIN", true),
            ("application/json; charset=utf-8", "application/json", true),
            ("application/json", "APPLICATION/JSON", true),
            ("text/plain", "application/json", false),
            ("text/plain", "text/html", false),
            ("application/json", "application/json-seq", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(matches(a, b), want, "{a:?} vs {b:?}");
            assert_eq!(matches(b, a), want, "{b:?} vs {a:?}");
        }
    }

    #[test]
    fn json_and_sse_encoding_table() {
        let cases = [
            ("application/json", true, SseEncoding::Text),
            ("Application/JSON; charset=utf-8", true, SseEncoding::Text),
            ("text/plain", false, SseEncoding::Text),
            ("TEXT/HTML; charset=x", false, SseEncoding::Text),
            ("application/octet-stream", false, SseEncoding::Base64),
            ("application/x-protobuf", false, SseEncoding::Base64),
            ("application/ndjson", false, SseEncoding::Base64),
            ("image/png", false, SseEncoding::Base64),
            ("application/problem+json", false, SseEncoding::Base64),
            ("textual/plain", false, SseEncoding::Base64),
        ];
        for (ct, json, enc) in cases {
            assert_eq!(is_json(ct), json, "{ct:?}");
            assert_eq!(sse_encoding(ct), enc, "{ct:?}");
        }
        assert_eq!(sse_encoding(DEFAULT_CONTENT_TYPE), SseEncoding::Base64);
    }

    proptest! {
        #[test]
        fn normalize_is_idempotent_and_matches_input(s in "[A-Za-z]{1,8}/[A-Za-z.+-]{1,8}( ?; ?[A-Za-z]{1,6}=[A-Za-z0-9]{1,6}){0,3}") {
            let once = normalize(&s).expect("generated value is valid");
            prop_assert_eq!(normalize(&once), Ok(once.clone()));
            prop_assert!(matches(&once, &s));
            prop_assert_eq!(essence(&once), essence(&s));
        }

        #[test]
        fn normalize_never_panics(s in "\\PC{0,40}") {
            let _ = normalize(&s);
            let _ = sse_encoding(&s);
        }
    }
}
