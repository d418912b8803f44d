//! Stream offsets (PROTOCOL.md section 8).
//!
//! An offset is minted by the server as `{seq:016x}_{byte:016x}`: two fixed-width lowercase
//! hex numbers. Fixed width is what makes the token *lexicographically sortable*: comparing
//! two tokens as byte strings gives the same answer as comparing `(seq, byte)` numerically,
//! which is the order the derived [`Ord`] on [`Offset`] uses. The token never contains `,`,
//! `&`, `=`, `?` or `/`, and can never be one of the sentinels `-1` or `now`.

use std::fmt;
use std::str::FromStr;

use crate::util::truncate;

/// A position in a stream: `seq` = index of the record/message containing (or starting at)
/// this position, `byte` = logical byte position.
///
/// The derived order (by `seq`, then `byte`) equals the lexicographic order of the
/// [`Display`](fmt::Display) strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset {
    /// Index of the record (or JSON message) at this position.
    pub seq: u64,
    /// Logical byte position in the stream.
    pub byte: u64,
}

impl Offset {
    /// The start of every stream: `0000000000000000_0000000000000000`.
    pub const ZERO: Offset = Offset { seq: 0, byte: 0 };

    /// Length of the encoded token: 16 hex digits, `_`, 16 hex digits.
    pub const ENCODED_LEN: usize = 33;

    /// An offset at record `seq`, byte `byte`.
    #[must_use]
    pub const fn new(seq: u64, byte: u64) -> Self {
        Offset { seq, byte }
    }

    /// The encoded token as bytes, without the formatting machinery (offsets are written into
    /// every append response and every read).
    #[must_use]
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; Self::ENCODED_LEN];
        for (half, value) in [(0, self.seq), (17, self.byte)] {
            for i in 0..16 {
                // The nibble is masked to 0..=15, so the cast cannot truncate.
                #[allow(clippy::cast_possible_truncation)]
                let nibble = ((value >> (60 - 4 * i)) & 0xf) as usize;
                out[half + i] = HEX[nibble];
            }
        }
        out[16] = b'_';
        out
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let encoded = self.encode();
        // `encode` writes ASCII only.
        f.write_str(std::str::from_utf8(&encoded).map_err(|_| fmt::Error)?)
    }
}

impl FromStr for Offset {
    type Err = OffsetError;

    /// Accepts only the canonical form: exactly 33 bytes, lowercase hex, `_` at index 16.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(OffsetError::Empty);
        }
        let malformed = || OffsetError::Malformed(truncate(s, OffsetError::MAX_VALUE_CHARS));
        let bytes = s.as_bytes();
        if bytes.len() != Self::ENCODED_LEN || bytes[16] != b'_' {
            return Err(malformed());
        }
        let seq = parse_hex16(&bytes[..16]).ok_or_else(malformed)?;
        let byte = parse_hex16(&bytes[17..]).ok_or_else(malformed)?;
        Ok(Offset { seq, byte })
    }
}

/// Parses exactly 16 lowercase hex digits. Uppercase is rejected so that each offset has one
/// spelling (offsets are case-sensitive tokens, section 8).
fn parse_hex16(digits: &[u8]) -> Option<u64> {
    if digits.len() != 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        // 16 hex digits always fit in a u64, so the shift cannot lose bits.
        Some((acc << 4) | u64::from(v))
    })
}

/// The `offset` query parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetParam {
    /// `-1`: the beginning of the stream (same as omitting the parameter).
    Start,
    /// `now`: the current tail, skipping existing data.
    Now,
    /// A concrete offset previously returned by the server.
    At(Offset),
}

impl OffsetParam {
    /// The sentinel for the stream beginning.
    pub const START_SENTINEL: &'static str = "-1";
    /// The sentinel for the current tail.
    pub const NOW_SENTINEL: &'static str = "now";

    /// Parses the value of the `offset` query parameter: `""` is an error, `"-1"` is
    /// [`Start`](OffsetParam::Start), `"now"` is [`Now`](OffsetParam::Now), anything else must
    /// be a canonical [`Offset`].
    pub fn parse(s: &str) -> Result<OffsetParam, OffsetError> {
        match s {
            "" => Err(OffsetError::Empty),
            Self::START_SENTINEL => Ok(OffsetParam::Start),
            Self::NOW_SENTINEL => Ok(OffsetParam::Now),
            _ => s.parse().map(OffsetParam::At),
        }
    }
}

impl fmt::Display for OffsetParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OffsetParam::Start => f.write_str(Self::START_SENTINEL),
            OffsetParam::Now => f.write_str(Self::NOW_SENTINEL),
            OffsetParam::At(offset) => offset.fmt(f),
        }
    }
}

/// Why an offset token was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffsetError {
    /// The value was empty.
    #[error("offset is empty")]
    Empty,
    /// The value is not a canonical offset token (carries the value, truncated to 64 chars).
    #[error(
        "malformed offset {0:?}: expected 16 lowercase hex digits, '_', 16 lowercase hex digits"
    )]
    Malformed(String),
}

impl OffsetError {
    /// How much of an offending value an error keeps.
    pub const MAX_VALUE_CHARS: usize = 64;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_displays_as_suite_start_token() {
        assert_eq!(
            Offset::ZERO.to_string(),
            "0000000000000000_0000000000000000"
        );
        assert_eq!(Offset::ZERO.to_string().len(), Offset::ENCODED_LEN);
        assert_eq!(Offset::default(), Offset::ZERO);
    }

    #[test]
    fn display_table() {
        let cases = [
            (Offset::new(1, 2), "0000000000000001_0000000000000002"),
            (
                Offset::new(0xab, 0xcdef),
                "00000000000000ab_000000000000cdef",
            ),
            (
                Offset::new(u64::MAX, u64::MAX),
                "ffffffffffffffff_ffffffffffffffff",
            ),
        ];
        for (offset, want) in cases {
            assert_eq!(offset.to_string(), want);
            assert_eq!(want.parse::<Offset>(), Ok(offset));
        }
    }

    #[test]
    fn non_canonical_tokens_are_rejected() {
        let long = "0".repeat(200);
        let cases = [
            "0",
            "-1",
            "now",
            "0000000000000000-0000000000000000",
            "0000000000000000_000000000000000",
            "0000000000000000_00000000000000000",
            "000000000000000_00000000000000000",
            "000000000000000A_0000000000000000",
            "0000000000000000_000000000000000F",
            "000000000000000g_0000000000000000",
            "+000000000000000_0000000000000000",
            " 000000000000000_0000000000000000",
            "0000000000000000_0000000000000000 ",
            "0000000000000000__000000000000000",
            "ééééééééé_0000000000000000",
            "../etc",
            "a,b",
            long.as_str(),
        ];
        for input in cases {
            let err = input.parse::<Offset>().expect_err(input);
            match err {
                OffsetError::Malformed(v) => {
                    assert!(v.chars().count() <= OffsetError::MAX_VALUE_CHARS);
                    assert!(input.starts_with(&v));
                }
                OffsetError::Empty => panic!("{input:?} is not empty"),
            }
        }
        assert_eq!("".parse::<Offset>(), Err(OffsetError::Empty));
    }

    #[test]
    fn offset_param_table() {
        let cases: [(&str, Result<OffsetParam, OffsetError>); 6] = [
            ("", Err(OffsetError::Empty)),
            ("-1", Ok(OffsetParam::Start)),
            ("now", Ok(OffsetParam::Now)),
            (
                "0000000000000003_0000000000000010",
                Ok(OffsetParam::At(Offset::new(3, 16))),
            ),
            ("NOW", Err(OffsetError::Malformed("NOW".into()))),
            ("-2", Err(OffsetError::Malformed("-2".into()))),
        ];
        for (input, want) in cases {
            assert_eq!(OffsetParam::parse(input), want, "input {input:?}");
            if let Ok(param) = want {
                assert_eq!(param.to_string(), input);
            }
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(seq: u64, byte: u64) {
            let offset = Offset::new(seq, byte);
            let text = offset.to_string();
            prop_assert_eq!(text.len(), Offset::ENCODED_LEN);
            prop_assert_eq!(text.parse::<Offset>(), Ok(offset));
            prop_assert_eq!(OffsetParam::parse(&text), Ok(OffsetParam::At(offset)));
            // The hand-rolled encoder agrees with the formatting machinery.
            prop_assert_eq!(text, format!("{seq:016x}_{byte:016x}"));
        }

        #[test]
        fn order_equals_byte_string_order(a: (u64, u64), b: (u64, u64)) {
            let (x, y) = (Offset::new(a.0, a.1), Offset::new(b.0, b.1));
            prop_assert_eq!(x.cmp(&y), x.to_string().as_bytes().cmp(y.to_string().as_bytes()));
        }

        #[test]
        fn order_equals_byte_string_order_near_boundaries(
            seq in 0u64..4, byte in 0u64..4, dseq in 0u64..4, dbyte in 0u64..4,
        ) {
            let x = Offset::new(seq, byte);
            let y = Offset::new(seq + dseq, byte + dbyte);
            prop_assert_eq!(x.cmp(&y), x.to_string().cmp(&y.to_string()));
        }

        #[test]
        fn only_canonical_strings_parse(s in "[0-9a-fA-F_]{31,35}|\\PC{0,40}") {
            if let Ok(offset) = s.parse::<Offset>() {
                prop_assert_eq!(offset.to_string(), s);
            }
        }
    }
}
