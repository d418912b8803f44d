//! Protocol header names and strict parsers for their values.
//!
//! Names are lowercase (HTTP field names are case-insensitive; lowercase is what HTTP/2 puts on
//! the wire and what `http::HeaderName` stores). Parsers take the field value as the HTTP
//! library hands it over, i.e. with optional surrounding whitespace already removed, and are
//! strict: a value either has its one canonical spelling or is rejected (400 at the edge).

use std::fmt::Write as _;

use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use crate::Offset;
use crate::util::{parse_canonical_u64, truncate};

/// `Content-Type`.
pub const CONTENT_TYPE: &str = "content-type";
/// `Stream-TTL`: sliding time-to-live in seconds.
pub const STREAM_TTL: &str = "stream-ttl";
/// `Stream-Expires-At`: absolute expiry, RFC 3339.
pub const STREAM_EXPIRES_AT: &str = "stream-expires-at";
/// `Stream-Seq`: opaque writer sequence, compared byte-wise.
pub const STREAM_SEQ: &str = "stream-seq";
/// `Stream-Cursor`: CDN collapsing cursor (section 10.1).
pub const STREAM_CURSOR: &str = "stream-cursor";
/// `Stream-Next-Offset`: the offset to read from next.
pub const STREAM_NEXT_OFFSET: &str = "stream-next-offset";
/// `Stream-Up-To-Date`: the response includes all data available.
pub const STREAM_UP_TO_DATE: &str = "stream-up-to-date";
/// `Stream-Closed`: the stream is (or is to be) closed.
pub const STREAM_CLOSED: &str = "stream-closed";
/// `Stream-Forked-From`: source path of a fork.
pub const STREAM_FORKED_FROM: &str = "stream-forked-from";
/// `Stream-Fork-Offset`: divergence offset of a fork.
pub const STREAM_FORK_OFFSET: &str = "stream-fork-offset";
/// `Stream-Fork-Sub-Offset`: sub-position past the fork offset.
pub const STREAM_FORK_SUB_OFFSET: &str = "stream-fork-sub-offset";
/// `Stream-SSE-Data-Encoding`: `base64` on SSE responses of binary streams.
pub const STREAM_SSE_DATA_ENCODING: &str = "stream-sse-data-encoding";
/// `Producer-Id`: idempotent producer identity.
pub const PRODUCER_ID: &str = "producer-id";
/// `Producer-Epoch`: idempotent producer epoch.
pub const PRODUCER_EPOCH: &str = "producer-epoch";
/// `Producer-Seq`: idempotent producer sequence.
pub const PRODUCER_SEQ: &str = "producer-seq";
/// `Producer-Expected-Seq`: on a sequence gap, the sequence the server expected.
pub const PRODUCER_EXPECTED_SEQ: &str = "producer-expected-seq";
/// `Producer-Received-Seq`: on a sequence gap, the sequence the server received.
pub const PRODUCER_RECEIVED_SEQ: &str = "producer-received-seq";
/// `If-None-Match` (RFC 9110), used for `304 Not Modified` on catch-up reads.
pub const IF_NONE_MATCH: &str = "if-none-match";

/// Every request header a protocol client may send (for CORS `Access-Control-Allow-Headers`).
pub const PROTOCOL_REQUEST_HEADERS: &[&str] = &[
    CONTENT_TYPE,
    STREAM_TTL,
    STREAM_EXPIRES_AT,
    STREAM_SEQ,
    STREAM_CLOSED,
    STREAM_FORKED_FROM,
    STREAM_FORK_OFFSET,
    STREAM_FORK_SUB_OFFSET,
    PRODUCER_ID,
    PRODUCER_EPOCH,
    PRODUCER_SEQ,
    IF_NONE_MATCH,
];

/// Every response header a browser client must be able to read (for CORS
/// `Access-Control-Expose-Headers`).
pub const PROTOCOL_RESPONSE_HEADERS: &[&str] = &[
    STREAM_NEXT_OFFSET,
    STREAM_CURSOR,
    STREAM_UP_TO_DATE,
    STREAM_CLOSED,
    STREAM_TTL,
    STREAM_EXPIRES_AT,
    STREAM_SSE_DATA_ENCODING,
    PRODUCER_EPOCH,
    PRODUCER_SEQ,
    PRODUCER_EXPECTED_SEQ,
    PRODUCER_RECEIVED_SEQ,
    "etag",
    "location",
    CONTENT_TYPE,
];

/// The largest integer JavaScript represents exactly (2^53 - 1): the bound on producer epochs
/// and sequences (section 5.2.1).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// How much of an offending header value an error keeps.
const MAX_VALUE_CHARS: usize = 128;

/// Why a protocol header was rejected. Every variant maps to `400 Bad Request`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// `Stream-TTL` is not a canonical non-negative decimal that fits in 64 bits.
    #[error(
        "invalid Stream-TTL {value:?}: expected a non-negative integer of seconds without sign, leading zeros, decimal point or exponent"
    )]
    InvalidTtl {
        /// The offending value (truncated).
        value: String,
    },
    /// `Stream-Expires-At` is not an RFC 3339 timestamp (or is out of range).
    #[error("invalid Stream-Expires-At {value:?}: expected an RFC 3339 timestamp")]
    InvalidExpiresAt {
        /// The offending value (truncated).
        value: String,
    },
    /// Both `Stream-TTL` and `Stream-Expires-At` were supplied.
    #[error("Stream-TTL and Stream-Expires-At are mutually exclusive")]
    TtlAndExpiresAt,
    /// An integer header is not a canonical non-negative decimal `<= 2^53 - 1`.
    #[error(
        "invalid {header} {value:?}: expected a non-negative integer no greater than 9007199254740991"
    )]
    InvalidInteger {
        /// The header name.
        header: &'static str,
        /// The offending value (truncated).
        value: String,
    },
    /// `Producer-Id` is empty.
    #[error("producer-id must not be empty")]
    EmptyProducerId,
    /// Some, but not all, of the producer headers were supplied.
    #[error(
        "producer-id, producer-epoch and producer-seq must be sent together; missing: {}",
        .missing.join(", ")
    )]
    PartialProducerHeaders {
        /// The producer headers that were absent.
        missing: Vec<&'static str>,
    },
    /// `Stream-Fork-Sub-Offset` is not a canonical non-negative decimal.
    #[error("invalid Stream-Fork-Sub-Offset {value:?}: expected a non-negative integer")]
    InvalidSubOffset {
        /// The offending value (truncated).
        value: String,
    },
    /// A header that carries an offset does not hold a canonical offset token.
    #[error("invalid {header} {value:?}: expected an offset previously returned by the server")]
    InvalidOffsetHeader {
        /// The header name.
        header: &'static str,
        /// The offending value (truncated).
        value: String,
    },
}

/// `Stream-TTL`: non-negative decimal, no sign, no leading zeros (but "0" itself is valid), no
/// decimal point/exponent, must fit u64.
pub fn parse_ttl(value: &str) -> Result<u64, HeaderError> {
    parse_canonical_u64(value).ok_or_else(|| HeaderError::InvalidTtl {
        value: truncate(value, MAX_VALUE_CHARS),
    })
}

/// `Stream-Expires-At`: RFC 3339 (`Z` or numeric offset). Returns the instant, in UTC.
///
/// Instants whose UTC calendar year falls outside `0000..=9999` are rejected, so that
/// [`format_expires_at`] can always echo the value back as RFC 3339.
pub fn parse_expires_at(value: &str) -> Result<OffsetDateTime, HeaderError> {
    let invalid = || HeaderError::InvalidExpiresAt {
        value: truncate(value, MAX_VALUE_CHARS),
    };
    let parsed = OffsetDateTime::parse(value, &Rfc3339).map_err(|_| invalid())?;
    let utc = parsed
        .checked_to_offset(UtcOffset::UTC)
        .ok_or_else(invalid)?;
    if !(0..=9999).contains(&utc.year()) {
        return Err(invalid());
    }
    Ok(utc)
}

/// Formats an instant as RFC 3339 in UTC, e.g. `2026-01-02T03:04:05Z`, with fractional
/// seconds (trailing zeros trimmed) only when they are nonzero: `2026-01-02T03:04:05.5Z`.
#[must_use]
pub fn format_expires_at(at: OffsetDateTime) -> String {
    // Converting to UTC can only fail at the very edge of the representable range; the
    // instant is then printed with its own offset's fields, which is still unambiguous.
    let utc = at.checked_to_offset(UtcOffset::UTC).unwrap_or(at);
    let mut out = String::with_capacity(30);
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        utc.year(),
        u8::from(utc.month()),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second()
    );
    let nanos = utc.nanosecond();
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        out.push('.');
        out.push_str(frac.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// `Stream-Closed`: true only when the value is exactly "true" compared
/// ASCII-case-insensitively (surrounding whitespace trimmed); anything else (None, "false",
/// "yes", "1", "") is false. Non-`true` values are ignored, never an error (section 4.1).
#[must_use]
pub fn is_closed_flag(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// A JS-safe non-negative integer: canonical decimal digits (no sign, no leading zeros except
/// "0"), <= [`MAX_SAFE_INTEGER`]. `header` names the header in the error.
pub fn parse_safe_integer(header: &'static str, value: &str) -> Result<u64, HeaderError> {
    parse_canonical_u64(value)
        .filter(|&n| n <= MAX_SAFE_INTEGER)
        .ok_or_else(|| HeaderError::InvalidInteger {
            header,
            value: truncate(value, MAX_VALUE_CHARS),
        })
}

/// The three idempotent-producer headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerHeaders {
    /// `Producer-Id`: non-empty, client-chosen.
    pub id: String,
    /// `Producer-Epoch`.
    pub epoch: u64,
    /// `Producer-Seq`.
    pub seq: u64,
}

/// Parses the idempotent-producer headers, all-or-none: all `None` → `Ok(None)`; some but not
/// all → [`PartialProducerHeaders`](HeaderError::PartialProducerHeaders); an empty (or
/// whitespace-only) id → [`EmptyProducerId`](HeaderError::EmptyProducerId); epoch and seq via
/// [`parse_safe_integer`]. The id is kept verbatim.
pub fn parse_producer(
    id: Option<&str>,
    epoch: Option<&str>,
    seq: Option<&str>,
) -> Result<Option<ProducerHeaders>, HeaderError> {
    let (id, epoch, seq) = match (id, epoch, seq) {
        (None, None, None) => return Ok(None),
        (Some(id), Some(epoch), Some(seq)) => (id, epoch, seq),
        (id, epoch, seq) => {
            let missing = [
                (id.is_none(), PRODUCER_ID),
                (epoch.is_none(), PRODUCER_EPOCH),
                (seq.is_none(), PRODUCER_SEQ),
            ]
            .into_iter()
            .filter_map(|(absent, name)| absent.then_some(name))
            .collect();
            return Err(HeaderError::PartialProducerHeaders { missing });
        }
    };
    if id.trim().is_empty() {
        return Err(HeaderError::EmptyProducerId);
    }
    Ok(Some(ProducerHeaders {
        id: id.to_owned(),
        epoch: parse_safe_integer(PRODUCER_EPOCH, epoch)?,
        seq: parse_safe_integer(PRODUCER_SEQ, seq)?,
    }))
}

/// `Stream-Fork-Sub-Offset`: the same canonical non-negative decimal rules (and
/// [`MAX_SAFE_INTEGER`] bound) as [`parse_safe_integer`]: `"-1"`, `"abc"`, `"1.5"`, `"05"`,
/// `"+1"` are all rejected.
pub fn parse_sub_offset(value: &str) -> Result<u64, HeaderError> {
    parse_canonical_u64(value)
        .filter(|&n| n <= MAX_SAFE_INTEGER)
        .ok_or_else(|| HeaderError::InvalidSubOffset {
            value: truncate(value, MAX_VALUE_CHARS),
        })
}

/// `Stream-Fork-Offset`: a canonical [`Offset`], never the sentinels `-1` / `now`.
pub fn parse_fork_offset(value: &str) -> Result<Offset, HeaderError> {
    value.parse().map_err(|_| HeaderError::InvalidOffsetHeader {
        header: STREAM_FORK_OFFSET,
        value: truncate(value, MAX_VALUE_CHARS),
    })
}

/// The stream's expiry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expiry {
    /// The stream never expires.
    #[default]
    None,
    /// Sliding window: expires this many seconds after the last read or write.
    Ttl(u64),
    /// Absolute deadline.
    ExpiresAt(OffsetDateTime),
}

/// Combines the `Stream-TTL` and `Stream-Expires-At` header values. Both present →
/// [`TtlAndExpiresAt`](HeaderError::TtlAndExpiresAt), even if one of them is malformed
/// (section 5.1: SHOULD reject with 400; we document no precedence rule).
pub fn parse_expiry(ttl: Option<&str>, expires_at: Option<&str>) -> Result<Expiry, HeaderError> {
    match (ttl, expires_at) {
        (None, None) => Ok(Expiry::None),
        (Some(_), Some(_)) => Err(HeaderError::TtlAndExpiresAt),
        (Some(ttl), None) => parse_ttl(ttl).map(Expiry::Ttl),
        (None, Some(at)) => parse_expires_at(at).map(Expiry::ExpiresAt),
    }
}

/// The fork TTL inheritance table of PROTOCOL.md section 4.2: a fork that requests no expiry
/// inherits the source's (its TTL value, or its Expires-At instant); a fork that requests one
/// gets exactly what it requested (no capping by the source).
#[must_use]
pub fn fork_expiry(source: Expiry, requested: Expiry) -> Expiry {
    match requested {
        Expiry::None => source,
        requested => requested,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::{Date, Month, PrimitiveDateTime, Time};

    fn utc(y: i32, mo: Month, d: u8, h: u8, mi: u8, s: u8, nanos: u32) -> OffsetDateTime {
        let date = Date::from_calendar_date(y, mo, d).expect("valid test date");
        let time = Time::from_hms_nano(h, mi, s, nanos).expect("valid test time");
        PrimitiveDateTime::new(date, time).assume_utc()
    }

    #[test]
    fn ttl_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("1", Some(1)),
            ("3600", Some(3600)),
            ("99999", Some(99_999)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("", None),
            ("abc", None),
            ("-1", None),
            ("+3600", None),
            ("03600", None),
            ("00060", None),
            ("00", None),
            ("3600.0", None),
            ("60.5", None),
            ("3.6e3", None),
            ("1e3", None),
            (" 60", None),
            ("60 ", None),
            ("0x10", None),
        ];
        for &(input, want) in cases {
            match want {
                Some(n) => assert_eq!(parse_ttl(input), Ok(n), "input {input:?}"),
                None => assert_eq!(
                    parse_ttl(input),
                    Err(HeaderError::InvalidTtl {
                        value: input.into()
                    }),
                    "input {input:?}"
                ),
            }
        }
    }

    #[test]
    fn expires_at_table() {
        let ok: &[(&str, OffsetDateTime)] = &[
            (
                "2026-01-02T03:04:05Z",
                utc(2026, Month::January, 2, 3, 4, 5, 0),
            ),
            (
                "2026-01-02T03:04:05.123Z",
                utc(2026, Month::January, 2, 3, 4, 5, 123_000_000),
            ),
            (
                "2026-01-02T03:04:05.123+00:00",
                utc(2026, Month::January, 2, 3, 4, 5, 123_000_000),
            ),
            (
                "2026-01-02T05:04:05+02:00",
                utc(2026, Month::January, 2, 3, 4, 5, 0),
            ),
            (
                "2026-01-01T22:04:05-05:00",
                utc(2026, Month::January, 2, 3, 4, 5, 0),
            ),
        ];
        for &(input, want) in ok {
            let got = parse_expires_at(input).expect(input);
            assert_eq!(got, want, "input {input:?}");
            assert_eq!(got.offset(), UtcOffset::UTC, "input {input:?}");
        }
        let bad = [
            "",
            "not-a-timestamp",
            "2026-01-02",
            "2026-01-02T03:04:05",
            "2026-13-02T03:04:05Z",
            "2026-01-02 03:04:05",
            "1767322800",
            "Fri, 02 Jan 2026 03:04:05 GMT",
            "9999-12-31T23:59:59-23:59",
            "0000-01-01T00:00:00+01:00",
        ];
        for input in bad {
            assert_eq!(
                parse_expires_at(input),
                Err(HeaderError::InvalidExpiresAt {
                    value: input.into()
                }),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn format_expires_at_table() {
        let cases = [
            (
                utc(2026, Month::January, 2, 3, 4, 5, 0),
                "2026-01-02T03:04:05Z",
            ),
            (
                utc(2026, Month::January, 2, 3, 4, 5, 500_000_000),
                "2026-01-02T03:04:05.5Z",
            ),
            (
                utc(2026, Month::January, 2, 3, 4, 5, 123_456_789),
                "2026-01-02T03:04:05.123456789Z",
            ),
            (
                utc(2026, Month::January, 2, 3, 4, 5, 1_000),
                "2026-01-02T03:04:05.000001Z",
            ),
            (utc(5, Month::March, 9, 0, 0, 0, 0), "0005-03-09T00:00:00Z"),
        ];
        for (at, want) in cases {
            assert_eq!(format_expires_at(at), want);
            assert_eq!(parse_expires_at(want), Ok(at));
        }
        let plus_two = parse_expires_at("2026-01-02T05:04:05+02:00").expect("valid");
        assert_eq!(format_expires_at(plus_two), "2026-01-02T03:04:05Z");
        let offset = utc(2026, Month::January, 2, 3, 4, 5, 0)
            .to_offset(UtcOffset::from_hms(-5, 0, 0).expect("valid offset"));
        assert_eq!(format_expires_at(offset), "2026-01-02T03:04:05Z");
    }

    #[test]
    fn closed_flag_table() {
        let cases: &[(Option<&str>, bool)] = &[
            (None, false),
            (Some("true"), true),
            (Some("TRUE"), true),
            (Some("True"), true),
            (Some(" true "), true),
            (Some("false"), false),
            (Some("yes"), false),
            (Some("1"), false),
            (Some(""), false),
            (Some("truee"), false),
            (Some("t rue"), false),
        ];
        for &(input, want) in cases {
            assert_eq!(is_closed_flag(input), want, "input {input:?}");
        }
    }

    #[test]
    fn safe_integer_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("5", Some(5)),
            ("9007199254740991", Some(MAX_SAFE_INTEGER)),
            ("9007199254740992", None),
            ("18446744073709551616", None),
            ("1abc", None),
            ("0xyz", None),
            ("1e3", None),
            ("-1", None),
            ("+1", None),
            ("01", None),
            ("", None),
            ("1.0", None),
        ];
        for &(input, want) in cases {
            let got = parse_safe_integer(PRODUCER_SEQ, input);
            match want {
                Some(n) => assert_eq!(got, Ok(n), "input {input:?}"),
                None => assert_eq!(
                    got,
                    Err(HeaderError::InvalidInteger {
                        header: PRODUCER_SEQ,
                        value: input.into()
                    }),
                    "input {input:?}"
                ),
            }
        }
    }

    #[test]
    fn producer_table() {
        type Case = (
            (
                Option<&'static str>,
                Option<&'static str>,
                Option<&'static str>,
            ),
            Result<Option<ProducerHeaders>, HeaderError>,
        );
        let p = |id: &str, epoch, seq| {
            Ok(Some(ProducerHeaders {
                id: id.into(),
                epoch,
                seq,
            }))
        };
        let partial = |missing: &[&'static str]| {
            Err(HeaderError::PartialProducerHeaders {
                missing: missing.to_vec(),
            })
        };
        let cases: Vec<Case> = vec![
            ((None, None, None), Ok(None)),
            ((Some("a"), Some("0"), Some("0")), p("a", 0, 0)),
            ((Some("svc-1"), Some("3"), Some("42")), p("svc-1", 3, 42)),
            (
                (Some("a"), None, None),
                partial(&[PRODUCER_EPOCH, PRODUCER_SEQ]),
            ),
            (
                (None, Some("0"), None),
                partial(&[PRODUCER_ID, PRODUCER_SEQ]),
            ),
            (
                (None, None, Some("0")),
                partial(&[PRODUCER_ID, PRODUCER_EPOCH]),
            ),
            ((Some("a"), Some("0"), None), partial(&[PRODUCER_SEQ])),
            ((Some(""), None, Some("0")), partial(&[PRODUCER_EPOCH])),
            (
                (Some(""), Some("0"), Some("0")),
                Err(HeaderError::EmptyProducerId),
            ),
            (
                (Some("  "), Some("0"), Some("0")),
                Err(HeaderError::EmptyProducerId),
            ),
            (
                (Some("a"), Some("-1"), Some("0")),
                Err(HeaderError::InvalidInteger {
                    header: PRODUCER_EPOCH,
                    value: "-1".into(),
                }),
            ),
            (
                (Some("a"), Some("0"), Some("1abc")),
                Err(HeaderError::InvalidInteger {
                    header: PRODUCER_SEQ,
                    value: "1abc".into(),
                }),
            ),
        ];
        for ((id, epoch, seq), want) in cases {
            assert_eq!(
                parse_producer(id, epoch, seq),
                want,
                "input {id:?} {epoch:?} {seq:?}"
            );
        }
    }

    #[test]
    fn sub_offset_table() {
        assert_eq!(parse_sub_offset("0"), Ok(0));
        assert_eq!(parse_sub_offset("3"), Ok(3));
        for bad in ["-1", "abc", "1.5", "05", "+1", "", " 1", "9007199254740992"] {
            assert_eq!(
                parse_sub_offset(bad),
                Err(HeaderError::InvalidSubOffset { value: bad.into() }),
                "input {bad:?}"
            );
        }
    }

    #[test]
    fn fork_offset_table() {
        assert_eq!(
            parse_fork_offset("0000000000000000_0000000000000000"),
            Ok(Offset::ZERO)
        );
        assert_eq!(
            parse_fork_offset("9999999999999999_9999999999999999"),
            Ok(Offset::new(0x9999_9999_9999_9999, 0x9999_9999_9999_9999))
        );
        for bad in ["-1", "now", "", "garbage", "0_0"] {
            assert_eq!(
                parse_fork_offset(bad),
                Err(HeaderError::InvalidOffsetHeader {
                    header: STREAM_FORK_OFFSET,
                    value: bad.into()
                }),
                "input {bad:?}"
            );
        }
    }

    #[test]
    fn expiry_table() {
        type Case = (
            (Option<&'static str>, Option<&'static str>),
            Result<Expiry, HeaderError>,
        );
        let at = utc(2030, Month::May, 1, 0, 0, 0, 0);
        let cases: &[Case] = &[
            ((None, None), Ok(Expiry::None)),
            ((Some("60"), None), Ok(Expiry::Ttl(60))),
            (
                (None, Some("2030-05-01T00:00:00Z")),
                Ok(Expiry::ExpiresAt(at)),
            ),
            (
                (Some("60"), Some("2030-05-01T00:00:00Z")),
                Err(HeaderError::TtlAndExpiresAt),
            ),
            ((Some("x"), Some("y")), Err(HeaderError::TtlAndExpiresAt)),
            (
                (Some("060"), None),
                Err(HeaderError::InvalidTtl {
                    value: "060".into(),
                }),
            ),
            (
                (None, Some("soon")),
                Err(HeaderError::InvalidExpiresAt {
                    value: "soon".into(),
                }),
            ),
        ];
        for ((ttl, expires), want) in cases {
            assert_eq!(
                &parse_expiry(*ttl, *expires),
                want,
                "input {ttl:?} {expires:?}"
            );
        }
    }

    #[test]
    fn fork_expiry_follows_section_4_2_table() {
        let src_at = utc(2030, Month::May, 1, 0, 0, 0, 0);
        let req_at = utc(2031, Month::May, 1, 0, 0, 0, 0);
        let cases = [
            (Expiry::None, Expiry::None, Expiry::None),
            (Expiry::None, Expiry::Ttl(10), Expiry::Ttl(10)),
            (
                Expiry::None,
                Expiry::ExpiresAt(req_at),
                Expiry::ExpiresAt(req_at),
            ),
            (Expiry::Ttl(3600), Expiry::None, Expiry::Ttl(3600)),
            (Expiry::Ttl(3600), Expiry::Ttl(99_999), Expiry::Ttl(99_999)),
            (
                Expiry::Ttl(3600),
                Expiry::ExpiresAt(req_at),
                Expiry::ExpiresAt(req_at),
            ),
            (
                Expiry::ExpiresAt(src_at),
                Expiry::None,
                Expiry::ExpiresAt(src_at),
            ),
            (Expiry::ExpiresAt(src_at), Expiry::Ttl(7), Expiry::Ttl(7)),
            (
                Expiry::ExpiresAt(src_at),
                Expiry::ExpiresAt(req_at),
                Expiry::ExpiresAt(req_at),
            ),
        ];
        for (source, requested, want) in cases {
            assert_eq!(
                fork_expiry(source, requested),
                want,
                "{source:?} + {requested:?}"
            );
        }
    }

    #[test]
    fn header_lists_are_lowercase_and_complete() {
        for name in PROTOCOL_REQUEST_HEADERS
            .iter()
            .chain(PROTOCOL_RESPONSE_HEADERS)
        {
            assert_eq!(*name, name.to_ascii_lowercase());
        }
        assert_eq!(PROTOCOL_REQUEST_HEADERS.len(), 12);
        assert_eq!(PROTOCOL_RESPONSE_HEADERS.len(), 14);
        assert!(PROTOCOL_REQUEST_HEADERS.contains(&"if-none-match"));
        assert!(PROTOCOL_RESPONSE_HEADERS.contains(&"etag"));
    }

    #[test]
    fn error_values_are_truncated() {
        let long = "9".repeat(1000);
        let Err(HeaderError::InvalidTtl { value }) = parse_ttl(&long) else {
            panic!("expected InvalidTtl");
        };
        assert_eq!(value.len(), 128);
        let msg = HeaderError::PartialProducerHeaders {
            missing: vec![PRODUCER_EPOCH, PRODUCER_SEQ],
        }
        .to_string();
        assert!(
            msg.ends_with("missing: producer-epoch, producer-seq"),
            "{msg}"
        );
    }

    proptest! {
        #[test]
        fn ttl_accepts_every_canonical_decimal(n: u64) {
            prop_assert_eq!(parse_ttl(&n.to_string()), Ok(n));
        }

        #[test]
        fn ttl_accepts_exactly_canonical_decimals(s in "[-+0-9.eE ]{0,22}|\\PC{0,24}") {
            match parse_ttl(&s) {
                Ok(n) => prop_assert_eq!(n.to_string(), s),
                Err(_) => prop_assert!(s.parse::<u64>().map_or(true, |n| n.to_string() != s)),
            }
        }

        #[test]
        fn safe_integer_round_trips(n in 0..=MAX_SAFE_INTEGER) {
            prop_assert_eq!(parse_safe_integer(PRODUCER_EPOCH, &n.to_string()), Ok(n));
            let both = parse_producer(Some("p"), Some(&n.to_string()), Some(&n.to_string()));
            prop_assert_eq!(both, Ok(Some(ProducerHeaders { id: "p".into(), epoch: n, seq: n })));
        }

        #[test]
        fn safe_integer_rejects_above_bound(n in (MAX_SAFE_INTEGER + 1)..=u64::MAX) {
            prop_assert!(parse_safe_integer(PRODUCER_SEQ, &n.to_string()).is_err());
        }

        #[test]
        fn safe_integer_accepts_only_canonical(s in "[-+0-9.e]{0,18}") {
            if let Ok(n) = parse_safe_integer(PRODUCER_SEQ, &s) {
                prop_assert_eq!(n.to_string(), s);
            }
        }

        #[test]
        fn expires_at_format_round_trips(secs in 0i64..253_402_300_799, nanos in 0u32..1_000_000_000) {
            let at = OffsetDateTime::from_unix_timestamp(secs).expect("in range")
                + time::Duration::nanoseconds(i64::from(nanos));
            prop_assert_eq!(parse_expires_at(&format_expires_at(at)), Ok(at));
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,64}") {
            let _ = parse_ttl(&s);
            let _ = parse_expires_at(&s);
            let _ = parse_sub_offset(&s);
            let _ = parse_fork_offset(&s);
            let _ = parse_producer(Some(&s), Some(&s), Some(&s));
            let _ = is_closed_flag(Some(&s));
        }
    }
}
