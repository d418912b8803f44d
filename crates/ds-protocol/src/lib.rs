//! Wire types of the Durable Streams protocol (see PROTOCOL.md).
//!
//! This crate owns everything about the protocol that can be decided from a string or a byte
//! slice alone:
//!
//! - [`offset`]: the [`Offset`] token (`{seq:016x}_{byte:016x}`) and the `offset` query
//!   parameter with its `-1` / `now` sentinels ([`OffsetParam`]).
//! - [`headers`]: header-name constants and strict parsers for `Stream-TTL`,
//!   `Stream-Expires-At`, `Stream-Closed`, the idempotent-producer triple and the fork headers,
//!   plus the fork expiry-inheritance table ([`fork_expiry`]).
//! - [`content_type`]: normalisation and matching of `Content-Type` values, JSON-mode and
//!   SSE-encoding detection.
//! - [`json`]: JSON mode (section 9.1): validating and flattening append bodies into messages,
//!   and framing messages back into one array without copying them.
//! - [`sse`]: Server-Sent Events framing for `data` and `control` events (section 5.8).
//! - [`cursor`]: the interval-based `Stream-Cursor` (section 10.1).
//! - [`etag`](mod@etag): ETag construction and `If-None-Match` evaluation.
//! - [`problem`]: RFC 9457 `application/problem+json` bodies.
//! - [`name`]: validated, percent-decoded stream names ([`StreamName`]).
//!
//! It deliberately does **not** do I/O, know about HTTP libraries (status codes are plain
//! `u16`), hold any stream state, or decide protocol rules that need that state (producer
//! fencing, `Stream-Seq` ordering, create idempotency): those live in `ds-storage` and
//! `ds-server`. Every function here is pure and never panics on any input.
//!
//! Every public item is also re-exported at the crate root, so `ds_protocol::parse_ttl` and
//! `ds_protocol::headers::parse_ttl` name the same function.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use ds_protocol::{NameLimits, Offset, OffsetParam, StreamName, content_type, headers, json, sse};
//!
//! // Offsets are `{seq:016x}_{byte:016x}`: byte-string order equals stream order.
//! assert_eq!(Offset::ZERO.to_string(), "0000000000000000_0000000000000000");
//! assert_eq!(OffsetParam::parse("-1"), Ok(OffsetParam::Start));
//!
//! // Strict header parsers map straight to 400s.
//! assert_eq!(headers::parse_ttl("3600"), Ok(3600));
//! assert!(headers::parse_ttl("03600").is_err());
//! assert!(headers::is_closed_flag(Some("TRUE")));
//!
//! // Stream names are percent-decoded and validated.
//! let name = StreamName::parse("/chats/42", NameLimits::default()).unwrap();
//! assert_eq!(name.as_str(), "chats/42");
//!
//! // JSON mode flattens one array level without copying.
//! let body = Bytes::from_static(br#"[{"a":1},{"b":2}]"#);
//! let messages = json::split_messages(&body, false).unwrap();
//! assert_eq!(messages.len(), 2);
//!
//! // SSE frames: payload lines can never start an event.
//! assert!(content_type::is_json("Application/JSON; charset=utf-8"));
//! let frame = sse::json_data_event(&messages);
//! assert!(frame.starts_with(b"event: data\ndata:["));
//! ```

pub mod content_type;
pub mod cursor;
pub mod etag;
pub mod fuzzing;
pub mod headers;
pub mod json;
pub mod name;
pub mod offset;
pub mod problem;
pub mod sse;

mod util;

pub use content_type::{
    ContentTypeError, DEFAULT_CONTENT_TYPE, essence, is_json, matches, normalize, sse_encoding,
};
pub use cursor::{CURSOR_EPOCH_UNIX_SECS, CURSOR_INTERVAL_SECS, current_interval, next_cursor};
pub use etag::{etag, if_none_match};
pub use headers::{
    CONTENT_TYPE, Expiry, HeaderError, IF_NONE_MATCH, MAX_SAFE_INTEGER, PRODUCER_EPOCH,
    PRODUCER_EXPECTED_SEQ, PRODUCER_ID, PRODUCER_RECEIVED_SEQ, PRODUCER_SEQ,
    PROTOCOL_REQUEST_HEADERS, PROTOCOL_RESPONSE_HEADERS, ProducerHeaders, STREAM_CLOSED,
    STREAM_CURSOR, STREAM_EXPIRES_AT, STREAM_FORK_OFFSET, STREAM_FORK_SUB_OFFSET,
    STREAM_FORKED_FROM, STREAM_NEXT_OFFSET, STREAM_SEQ, STREAM_SSE_DATA_ENCODING, STREAM_TTL,
    STREAM_UP_TO_DATE, fork_expiry, format_expires_at, is_closed_flag, parse_expires_at,
    parse_expiry, parse_fork_offset, parse_producer, parse_safe_integer, parse_sub_offset,
    parse_ttl,
};
pub use json::{JsonError, array_pieces, split_messages};
pub use name::{NameError, NameLimits, RESERVED_PREFIX, StreamName};
pub use offset::{Offset, OffsetError, OffsetParam};
pub use problem::{PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_BASE, Problem};
pub use sse::{
    BASE64_ENCODING_HEADER_VALUE, Control, SseEncoding, control_event, data_event, json_data_event,
    keep_alive,
};

/// Any error this crate reports, for callers that want one type.
///
/// Each parser returns its own precise error; this enum only gathers them (with `From`
/// conversions) so `?` works across modules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// An offset token or `offset` query parameter was rejected.
    #[error(transparent)]
    Offset(#[from] OffsetError),
    /// A protocol header was rejected.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// A `Content-Type` value was rejected.
    #[error(transparent)]
    ContentType(#[from] ContentTypeError),
    /// A JSON-mode body was rejected.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// A stream name was rejected.
    #[error(transparent)]
    Name(#[from] NameError),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
