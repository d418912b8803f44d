//! Entity tags for catch-up reads (PROTOCOL.md section 10.1).
//!
//! The tag names the stream and the exact byte range served, and changes when the stream is
//! closed, so a `304 Not Modified` can never hide the closure signal.

/// `"{stream_id}:{start}:{end}"`, with `:c` appended inside the quotes when the stream is
/// closed; quoted per RFC 9110 (offsets use only hex digits and `_`, all valid `etagc`).
#[must_use]
pub fn etag(stream_id: u64, start: crate::Offset, end: crate::Offset, closed: bool) -> String {
    let closed = if closed { ":c" } else { "" };
    format!("\"{stream_id}:{start}:{end}{closed}\"")
}

/// `If-None-Match` evaluation: `*` matches; otherwise the header is a comma-separated list of
/// entity tags, compared weakly (a `W/` prefix on either side is ignored). An element that is
/// not a quoted entity tag is compared verbatim against `etag` and against its unquoted text,
/// to tolerate clients that drop the quotes.
#[must_use]
pub fn if_none_match(header_value: &str, etag: &str) -> bool {
    let header_value = header_value.trim();
    if header_value == "*" {
        return true;
    }
    let ours = opaque(etag.trim());
    let ours_unquoted = ours
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(ours);
    let mut rest = header_value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return false;
        }
        let candidate = opaque(rest);
        let (tag, after) = if let Some(inner) = candidate.strip_prefix('"') {
            // A quoted tag ends at the next quote; commas inside it are part of the tag.
            match inner.find('"') {
                Some(close) => candidate.split_at(close + 2),
                None => (candidate, ""),
            }
        } else {
            candidate.split_at(candidate.find(',').unwrap_or(candidate.len()))
        };
        let tag = tag.trim();
        if tag == ours || tag == ours_unquoted {
            return true;
        }
        rest = after;
    }
}

/// The entity tag without its weakness indicator.
fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Offset;
    use proptest::prelude::*;

    #[test]
    fn etag_format() {
        let start = Offset::ZERO;
        let end = Offset::new(1, 9);
        assert_eq!(
            etag(7, start, end, false),
            "\"7:0000000000000000_0000000000000000:0000000000000001_0000000000000009\""
        );
        assert_eq!(
            etag(7, start, end, true),
            "\"7:0000000000000000_0000000000000000:0000000000000001_0000000000000009:c\""
        );
        assert_ne!(etag(7, start, end, true), etag(7, start, end, false));
        assert_ne!(etag(7, start, end, false), etag(8, start, end, false));
    }

    #[test]
    fn if_none_match_table() {
        let tag = "\"1:a:b\"";
        let cases = [
            ("*", true),
            (" * ", true),
            ("\"1:a:b\"", true),
            ("W/\"1:a:b\"", true),
            ("\"x\", \"1:a:b\"", true),
            ("\"x\",W/\"1:a:b\"", true),
            ("\"a,b\", \"1:a:b\"", true),
            ("1:a:b", true),
            ("\"wrong-etag\"", false),
            ("\"1:a:b:c\"", false),
            ("\"1:a\"", false),
            ("", false),
            (",,", false),
            ("\"unterminated", false),
            ("\"a,\"1:a:b\"\"", false),
        ];
        for (header, want) in cases {
            assert_eq!(if_none_match(header, tag), want, "header {header:?}");
        }
        assert!(if_none_match("\"1:a:b\"", "W/\"1:a:b\""));
    }

    proptest! {
        #[test]
        fn etag_matches_itself(id: u64, s: (u64, u64), e: (u64, u64), closed: bool, other in "\\PC{0,20}") {
            let tag = etag(id, Offset::new(s.0, s.1), Offset::new(e.0, e.1), closed);
            prop_assert!(if_none_match(&tag, &tag));
            let listed = format!("\"zzz\", W/{tag}");
            prop_assert!(if_none_match(&listed, &tag));
            let _ = if_none_match(&other, &tag);
        }
    }
}
