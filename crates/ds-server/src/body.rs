//! Request bodies in, zero-copy response bodies out.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::HeaderMap;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use crate::error::ApiError;

/// A response body made of shared [`Bytes`] pieces, sent one frame each without concatenation,
/// so stored payloads reach the socket without being copied. Its exact length is known, so the
/// response carries a `Content-Length`.
#[derive(Debug, Default)]
pub struct PiecesBody {
    pieces: VecDeque<Bytes>,
    remaining: u64,
}

impl PiecesBody {
    /// A body of these pieces, in order.
    #[must_use]
    pub fn new(pieces: Vec<Bytes>) -> Self {
        let pieces: VecDeque<Bytes> = pieces.into_iter().filter(|p| !p.is_empty()).collect();
        let remaining = pieces.iter().map(|p| p.len() as u64).sum();
        PiecesBody { pieces, remaining }
    }

    /// Into an axum body.
    pub fn into_body(self) -> Body {
        if self.pieces.len() == 1 {
            // One piece: hand it over as a full body (no frame bookkeeping).
            let mut pieces = self.pieces;
            return Body::from(pieces.pop_front().unwrap_or_default());
        }
        Body::new(self)
    }
}

impl http_body::Body for PiecesBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.pieces.pop_front() {
            Some(piece) => {
                self.remaining -= piece.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(piece))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Bodies up to this size are copied into their own allocation (see [`read_limited`]).
const COMPACT_BODY_BYTES: usize = 16 * 1024;

/// Reads a whole request body, refusing more than `limit` bytes with `413`.
///
/// A declared `Content-Length` over the limit is refused before any byte is read. A body that
/// arrives in one frame (the usual case) is returned without a copy, unless it is small (see
/// `COMPACT_BODY_BYTES`, 16 KiB); a body in several frames is joined with one copy.
pub async fn read_limited(headers: &HeaderMap, body: Body, limit: u64) -> Result<Bytes, ApiError> {
    if let Some(len) = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let mut body = body;
    let mut first = Bytes::new();
    let mut more: Vec<Bytes> = Vec::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::bad_request(
                "BODY_READ_FAILED",
                format!("could not read the request body: {e}"),
            )
        })?;
        // Trailers carry no payload.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        total += data.len() as u64;
        if total > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        if first.is_empty() {
            first = data;
        } else {
            more.push(data);
        }
    }
    if !more.is_empty() {
        let mut joined = BytesMut::with_capacity(usize::try_from(total).unwrap_or(usize::MAX));
        joined.extend_from_slice(&first);
        for piece in &more {
            joined.extend_from_slice(piece);
        }
        return Ok(joined.freeze());
    }
    // A small body is a slice of the connection's read buffer; stored as is, it would keep
    // that whole buffer (8 KiB or more) alive for as long as the record lives. One copy into
    // an exact-size allocation is cheaper than the memory it pins.
    Ok(if first.len() <= COMPACT_BODY_BYTES {
        Bytes::copy_from_slice(&first)
    } else {
        first
    })
}
