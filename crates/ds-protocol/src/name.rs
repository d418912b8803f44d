//! Stream names: the part of a stream URL below the server's base path.
//!
//! A name is percent-decoded once, then split on `/` into segments. Decoding *before*
//! splitting means `%2F` acts as a separator and `%2E%2E` is a `..` segment, so every request
//! path maps to one canonical name and no encoding trick can smuggle a traversal segment, a
//! control character or a backslash past validation (section 12.2).

use std::fmt;

/// The first segment reserved for protocol control APIs (section 6).
pub const RESERVED_PREFIX: &str = "__ds";

/// Limits on names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameLimits {
    /// Maximum length of the decoded name, in bytes.
    pub max_bytes: usize,
    /// Maximum number of `/`-separated segments.
    pub max_segments: usize,
}

impl Default for NameLimits {
    fn default() -> Self {
        NameLimits {
            max_bytes: 1024,
            max_segments: 16,
        }
    }
}

/// A validated stream name: the path below the base path, `/`-separated non-empty segments,
/// percent-decoded, no leading or trailing `/`, no `.`/`..` segments, no control characters,
/// no backslash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamName(String);

impl StreamName {
    /// Validates `raw_path`, the URL path remainder as received (still percent-encoded).
    ///
    /// Exactly one leading `/` is tolerated and stripped (`"/a/b"` and `"a/b"` are the same
    /// name; `"//a"` is an empty segment). `%XX` escapes are decoded (hex digits of either
    /// case); a malformed escape or a result that is not UTF-8 is
    /// [`InvalidEncoding`](NameError::InvalidEncoding). `+` is not special in paths. The byte
    /// limit applies to the decoded name.
    pub fn parse(raw_path: &str, limits: NameLimits) -> Result<StreamName, NameError> {
        let raw = raw_path.strip_prefix('/').unwrap_or(raw_path);
        if raw.is_empty() {
            return Err(NameError::Empty);
        }
        let name = percent_decode(raw)?;
        if name.len() > limits.max_bytes {
            return Err(NameError::TooLong {
                len: name.len(),
                max: limits.max_bytes,
            });
        }
        let mut count = 0;
        for segment in name.split('/') {
            count += 1;
            if segment.is_empty() {
                return Err(NameError::EmptySegment);
            }
            if segment == "." || segment == ".." {
                return Err(NameError::DotSegment);
            }
        }
        if count > limits.max_segments {
            return Err(NameError::TooManySegments {
                count,
                max: limits.max_segments,
            });
        }
        if name.chars().any(char::is_control) {
            return Err(NameError::ControlCharacter);
        }
        if name.contains('\\') {
            return Err(NameError::Backslash);
        }
        Ok(StreamName(name))
    }

    /// The decoded name, e.g. `"chats/42"`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the first segment is [`RESERVED_PREFIX`] (`__ds`).
    #[must_use]
    pub fn is_reserved(&self) -> bool {
        self.segments().next() == Some(RESERVED_PREFIX)
    }

    /// The `/`-separated segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// The name percent-encoded for use in a URL path: RFC 3986 `pchar`s and `/` are kept,
    /// every other byte becomes `%XX`. [`StreamName::parse`] of the result gives this name
    /// back.
    #[must_use]
    pub fn to_url_path(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = String::with_capacity(self.0.len());
        for &b in self.0.as_bytes() {
            let keep = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b);
            if keep {
                out.push(char::from(b));
            } else {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        }
        out
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Why a stream name was rejected (400 at the edge).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("stream name is empty")]
    Empty,
    /// The decoded name is longer than allowed.
    #[error("stream name is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Decoded length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name has more segments than allowed.
    #[error("stream name has {count} segments; the limit is {max}")]
    TooManySegments {
        /// Number of segments.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The name has an empty segment (`a//b`, a trailing `/`, or a second leading `/`).
    #[error("stream name has an empty segment")]
    EmptySegment,
    /// The name has a `.` or `..` segment.
    #[error("stream name has a '.' or '..' segment")]
    DotSegment,
    /// The name contains a control character (including NUL and DEL).
    #[error("stream name contains a control character")]
    ControlCharacter,
    /// The name contains a backslash.
    #[error("stream name contains a backslash")]
    Backslash,
    /// A `%` escape is malformed or the decoded name is not UTF-8.
    #[error("stream name is not valid percent-encoded UTF-8")]
    InvalidEncoding,
}

/// Decodes `%XX` escapes. The result must be UTF-8.
fn percent_decode(raw: &str) -> Result<String, NameError> {
    if !raw.contains('%') {
        return Ok(raw.to_owned());
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|&b| hex_value(b));
            let lo = bytes.get(i + 2).and_then(|&b| hex_value(b));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(NameError::InvalidEncoding);
            };
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| NameError::InvalidEncoding)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(raw: &str) -> Result<String, NameError> {
        StreamName::parse(raw, NameLimits::default()).map(|n| n.as_str().to_owned())
    }

    #[test]
    fn parse_table() {
        let ok = [
            ("a", "a"),
            ("/a", "a"),
            ("chats/42", "chats/42"),
            ("/chats/42", "chats/42"),
            (
                "fork-create-head-src-1700000000000-abc123",
                "fork-create-head-src-1700000000000-abc123",
            ),
            ("a%20b", "a b"),
            ("a%2fb", "a/b"),
            ("caf%C3%A9", "café"),
            ("café", "café"),
            ("a+b", "a+b"),
            ("...", "..."),
            (".hidden", ".hidden"),
            ("__ds/subscriptions/x", "__ds/subscriptions/x"),
        ];
        for (raw, want) in ok {
            assert_eq!(parse(raw).as_deref(), Ok(want), "raw {raw:?}");
        }
        let bad = [
            ("", NameError::Empty),
            ("/", NameError::Empty),
            ("//a", NameError::EmptySegment),
            ("a//b", NameError::EmptySegment),
            ("a/", NameError::EmptySegment),
            ("a%2F", NameError::EmptySegment),
            (".", NameError::DotSegment),
            ("..", NameError::DotSegment),
            ("a/../b", NameError::DotSegment),
            ("a/./b", NameError::DotSegment),
            ("a/%2e%2E/b", NameError::DotSegment),
            ("a%00b", NameError::ControlCharacter),
            ("a\u{0}b", NameError::ControlCharacter),
            ("a%7Fb", NameError::ControlCharacter),
            ("a%0Ab", NameError::ControlCharacter),
            ("a%C2%85b", NameError::ControlCharacter),
            ("a\\b", NameError::Backslash),
            ("a%5Cb", NameError::Backslash),
            ("a%", NameError::InvalidEncoding),
            ("a%2", NameError::InvalidEncoding),
            ("a%zz", NameError::InvalidEncoding),
            ("a%FF", NameError::InvalidEncoding),
            ("a%C3", NameError::InvalidEncoding),
        ];
        for (raw, want) in bad {
            assert_eq!(parse(raw), Err(want), "raw {raw:?}");
        }
    }

    #[test]
    fn limits_apply_to_decoded_name() {
        let limits = NameLimits {
            max_bytes: 4,
            max_segments: 2,
        };
        assert!(StreamName::parse("%61%62%63%64", limits).is_ok());
        assert_eq!(
            StreamName::parse("abcde", limits),
            Err(NameError::TooLong { len: 5, max: 4 })
        );
        let limits = NameLimits {
            max_bytes: 1024,
            ..limits
        };
        assert_eq!(
            StreamName::parse("a/b/c", limits),
            Err(NameError::TooManySegments { count: 3, max: 2 })
        );
        let long = "a".repeat(1025);
        assert_eq!(
            parse(&long),
            Err(NameError::TooLong {
                len: 1025,
                max: 1024
            })
        );
        assert!(parse(&"a".repeat(1024)).is_ok());
        let sixteen = vec!["s"; 16].join("/");
        assert!(parse(&sixteen).is_ok());
        assert_eq!(
            parse(&format!("{sixteen}/s")),
            Err(NameError::TooManySegments { count: 17, max: 16 })
        );
    }

    #[test]
    fn reserved_prefix_is_the_first_segment_only() {
        let cases = [
            ("__ds", true),
            ("__ds/subscriptions/a", true),
            ("a/__ds", false),
            ("__dsx", false),
            ("__DS", false),
        ];
        for (raw, want) in cases {
            let name = StreamName::parse(raw, NameLimits::default()).expect(raw);
            assert_eq!(name.is_reserved(), want, "raw {raw:?}");
        }
    }

    #[test]
    fn url_path_table() {
        let cases = [
            ("a/b", "a/b"),
            ("a b", "a%20b"),
            ("café", "caf%C3%A9"),
            ("100%", "100%25"),
            ("q?x#y", "q%3Fx%23y"),
        ];
        for (name, want) in cases {
            let parsed = StreamName::parse(
                &StreamName(name.into()).to_url_path(),
                NameLimits::default(),
            );
            assert_eq!(StreamName(name.into()).to_url_path(), want);
            assert_eq!(parsed.as_ref().map(StreamName::as_str), Ok(name));
        }
    }

    proptest! {
        #[test]
        fn encoded_names_parse_back(segments in prop::collection::vec("[^/\\\\\\p{Cc}]{1,12}", 1..5)) {
            prop_assume!(segments.iter().all(|s| s != "." && s != ".."));
            let name = segments.join("/");
            prop_assume!(name.len() <= 1024);
            let encoded = StreamName(name.clone()).to_url_path();
            let parsed = StreamName::parse(&encoded, NameLimits::default());
            prop_assert_eq!(parsed.map(|n| n.0), Ok(name.clone()));
            let with_slash = StreamName::parse(&format!("/{encoded}"), NameLimits::default());
            prop_assert_eq!(with_slash.map(|n| n.0), Ok(name));
        }

        #[test]
        fn valid_names_have_no_forbidden_content(raw in "\\PC{0,40}|[a%/.\\\\0-9A-F]{0,20}") {
            if let Ok(name) = StreamName::parse(&raw, NameLimits::default()) {
                prop_assert!(!name.as_str().is_empty());
                prop_assert!(!name.as_str().contains('\\'));
                prop_assert!(!name.as_str().chars().any(char::is_control));
                for segment in name.segments() {
                    prop_assert!(!segment.is_empty() && segment != "." && segment != "..");
                }
            }
        }
    }
}
