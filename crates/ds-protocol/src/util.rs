//! Small helpers shared by the parsers.

/// At most `max_chars` characters of `value`, so an error never carries an unbounded
/// client-supplied string into logs or problem bodies.
pub(crate) fn truncate(value: &str, max_chars: usize) -> String {
    match value.char_indices().nth(max_chars) {
        Some((end, _)) => value[..end].to_owned(),
        None => value.to_owned(),
    }
}

/// Parses a canonical non-negative decimal: one or more ASCII digits, no sign, no leading
/// zero unless the value is exactly `"0"`, fitting in `u64`. Anything else is `None`.
pub(crate) fn parse_canonical_u64(value: &str) -> Option<u64> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || (bytes.len() > 1 && bytes[0] == b'0') {
        return None;
    }
    let mut n: u64 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_u64_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("7", Some(7)),
            ("3600", Some(3600)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("", None),
            ("00", None),
            ("05", None),
            ("+1", None),
            ("-1", None),
            ("1.5", None),
            ("1e3", None),
            (" 1", None),
            ("1 ", None),
            ("abc", None),
            ("١", None),
        ];
        for &(input, want) in cases {
            assert_eq!(parse_canonical_u64(input), want, "input {input:?}");
        }
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 2), "ab");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("ééé", 2), "éé");
        assert_eq!(truncate("", 0), "");
    }
}
