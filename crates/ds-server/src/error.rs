//! The HTTP edge of every error: one status and one `application/problem+json` body each.
//!
//! [`ApiError`] covers request errors found by the handlers and every [`ds_storage::Error`].
//! The storage match has no `_` arm, so a new storage error does not compile until its status
//! is decided here. Internal detail goes to `tracing`, never into a body.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ds_protocol::{HeaderError, Offset, Problem, headers as h, problem::PROBLEM_CONTENT_TYPE};

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A storage operation failed.
    #[error(transparent)]
    Storage(#[from] ds_storage::Error),
    /// A request header is malformed.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The request is malformed in another way (query, body, combination of headers).
    #[error("{detail}")]
    BadRequest {
        /// Machine-readable code.
        code: &'static str,
        /// Human-readable explanation.
        detail: String,
    },
    /// The stream name in the URL is invalid.
    #[error("invalid stream name: {0}")]
    Name(#[from] ds_protocol::NameError),
    /// The request body is larger than the server accepts.
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The request's header fields exceed `limits.max_header_count` or
    /// `limits.max_header_bytes`.
    #[error("{detail}")]
    HeadersTooLarge {
        /// Which limit, and by how much.
        detail: String,
    },
    /// A live read (long-poll or SSE) would exceed a live-reader limit.
    #[error("{}", live_readers_detail(*scope, *limit))]
    TooManyLiveReaders {
        /// The limit reached.
        scope: crate::limits::LiveReaderScope,
        /// Its value.
        limit: usize,
    },
    /// The client sent more requests than `limits.rate_limit_requests_per_sec` allows.
    #[error("too many requests from this client; retry in {retry_after_secs} s")]
    RateLimited {
        /// Seconds until the next request would be accepted (`Retry-After`).
        retry_after_secs: u64,
    },
    /// No such endpoint.
    #[error("no such endpoint")]
    NoRoute,
    /// The method is not supported on this URL.
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl ApiError {
    /// A `400` with a code and detail.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code,
            detail: detail.into(),
        }
    }
}

/// The detail of [`ApiError::TooManyLiveReaders`].
fn live_readers_detail(scope: crate::limits::LiveReaderScope, limit: usize) -> String {
    match scope {
        crate::limits::LiveReaderScope::Stream => format!(
            "this stream already has {limit} live readers (long-poll and SSE), its limit (limits.max_live_readers_per_stream); retry later"
        ),
        crate::limits::LiveReaderScope::Total => format!(
            "the server already serves {limit} live readers (long-poll and SSE), its limit (limits.max_live_readers); retry later"
        ),
    }
}

/// Extra headers some errors carry (section 5.2, 5.2.1).
enum Extra {
    None,
    Closed(Offset),
    Epoch(u64),
    SeqGap(u64, u64),
    /// `Retry-After`, in seconds.
    RetryAfter(u64),
}

impl ApiError {
    /// Status, machine code, title and extra headers of this error.
    #[allow(
        clippy::too_many_lines,
        reason = "one arm per error: the exhaustive table is the point"
    )]
    fn classify(&self) -> (u16, &'static str, &'static str, Extra) {
        use ds_storage::Error as E;
        match self {
            ApiError::Storage(e) => match e {
                E::NotFound => (404, "STREAM_NOT_FOUND", "Stream not found", Extra::None),
                E::Gone => (410, "STREAM_GONE", "Stream deleted", Extra::None),
                E::ConfigMismatch { .. } => (
                    409,
                    "STREAM_EXISTS",
                    "Stream exists with a different configuration",
                    Extra::None,
                ),
                E::NameHeldBySoftDeleted => (
                    409,
                    "STREAM_NAME_HELD",
                    "Stream name held by a deleted stream",
                    Extra::None,
                ),
                E::ForkSourceNotFound => (
                    404,
                    "FORK_SOURCE_NOT_FOUND",
                    "Fork source not found",
                    Extra::None,
                ),
                E::ForkSourceGone => (409, "FORK_SOURCE_GONE", "Fork source deleted", Extra::None),
                E::ForkOffsetBeyondTail { .. } => (
                    400,
                    "FORK_OFFSET_BEYOND_TAIL",
                    "Fork offset beyond the source's tail",
                    Extra::None,
                ),
                E::ForkOffsetInvalid { .. } => (
                    400,
                    "INVALID_FORK_OFFSET",
                    "Invalid fork offset",
                    Extra::None,
                ),
                E::SubOffsetOvershoot { .. } => (
                    400,
                    "INVALID_FORK_SUB_OFFSET",
                    "Fork sub-offset past the next data boundary",
                    Extra::None,
                ),
                E::ContentTypeMismatch { .. } => (
                    409,
                    "CONTENT_TYPE_MISMATCH",
                    "Content type mismatch",
                    Extra::None,
                ),
                E::Closed { next } => (409, "STREAM_CLOSED", "Stream closed", Extra::Closed(*next)),
                E::SeqRegression { .. } => (
                    409,
                    "SEQUENCE_CONFLICT",
                    "Stream-Seq not increasing",
                    Extra::None,
                ),
                E::StaleEpoch { current } => (
                    403,
                    "STALE_EPOCH",
                    "Stale producer epoch",
                    Extra::Epoch(*current),
                ),
                E::SeqGap { expected, received } => (
                    409,
                    "SEQUENCE_GAP",
                    "Producer sequence gap",
                    Extra::SeqGap(*expected, *received),
                ),
                E::EpochSeqNotZero { .. } => (
                    400,
                    "INVALID_EPOCH_SEQ",
                    "New producer epoch must start at seq 0",
                    Extra::None,
                ),
                E::EmptyBody => (400, "EMPTY_BODY", "Empty append body", Extra::None),
                E::InvalidJson(_) => (400, "INVALID_JSON", "Invalid JSON", Extra::None),
                E::EmptyJsonArray => (400, "EMPTY_JSON_ARRAY", "Empty JSON array", Extra::None),
                E::InvalidOffset { .. } => (400, "INVALID_OFFSET", "Invalid offset", Extra::None),
                E::StreamTooLarge { .. } => (
                    413,
                    "STREAM_TOO_LARGE",
                    "Stream size limit reached",
                    Extra::None,
                ),
                E::StorageFull { .. } => {
                    (507, "STORAGE_FULL", "Storage full", Extra::RetryAfter(1))
                }
                E::Backend { .. } => (
                    503,
                    "STORAGE_UNAVAILABLE",
                    "Storage unavailable",
                    Extra::RetryAfter(1),
                ),
            },
            ApiError::Header(_) => (400, "INVALID_HEADER", "Invalid header", Extra::None),
            ApiError::BadRequest { code, .. } => (400, *code, "Bad request", Extra::None),
            ApiError::Name(_) => (
                400,
                "INVALID_STREAM_NAME",
                "Invalid stream name",
                Extra::None,
            ),
            ApiError::BodyTooLarge { .. } => {
                (413, "PAYLOAD_TOO_LARGE", "Payload too large", Extra::None)
            }
            ApiError::HeadersTooLarge { .. } => (
                431,
                "HEADERS_TOO_LARGE",
                "Request header fields too large",
                Extra::None,
            ),
            ApiError::TooManyLiveReaders { .. } => (
                503,
                "TOO_MANY_LIVE_READERS",
                "Too many live readers",
                Extra::RetryAfter(crate::limits::LIVE_READERS_RETRY_AFTER_SECS),
            ),
            ApiError::RateLimited { retry_after_secs } => (
                429,
                "RATE_LIMITED",
                "Too many requests",
                Extra::RetryAfter(*retry_after_secs),
            ),
            ApiError::NoRoute => (404, "NOT_FOUND", "Not found", Extra::None),
            ApiError::MethodNotAllowed => {
                (405, "METHOD_NOT_ALLOWED", "Method not allowed", Extra::None)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title, extra) = self.classify();
        let detail = match &self {
            ApiError::Storage(ds_storage::Error::Backend { op, source }) => {
                tracing::error!(op, error = %source, "storage backend failure");
                "the storage backend failed; retry later".to_owned()
            }
            // Backends report a full disk (or quota) with limit 0: there is no configured
            // limit to name.
            ApiError::Storage(ds_storage::Error::StorageFull { limit: 0 }) => {
                "the disk holding the store is full; nothing was written, retry once space is \
                 freed"
                    .to_owned()
            }
            other => other.to_string(),
        };
        let problem = Problem::new(status, code, title).with_detail(detail);
        let mut res = Response::new(Body::from(problem.to_json()));
        *res.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let num = |n: u64| HeaderValue::from(n);
        match extra {
            Extra::None => {}
            Extra::Closed(next) => {
                headers.insert(h::STREAM_CLOSED, HeaderValue::from_static("true"));
                if let Ok(v) = HeaderValue::from_str(&next.to_string()) {
                    headers.insert(h::STREAM_NEXT_OFFSET, v);
                }
            }
            Extra::Epoch(epoch) => {
                headers.insert(h::PRODUCER_EPOCH, num(epoch));
            }
            Extra::SeqGap(expected, received) => {
                headers.insert(h::PRODUCER_EXPECTED_SEQ, num(expected));
                headers.insert(h::PRODUCER_RECEIVED_SEQ, num(received));
            }
            Extra::RetryAfter(secs) => {
                headers.insert(header::RETRY_AFTER, num(secs));
            }
        }
        if status == 405 {
            headers.insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, PUT, POST, DELETE, OPTIONS"),
            );
        }
        res
    }
}
