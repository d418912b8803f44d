//! Request bodies in, zero-copy response bodies out.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::HeaderMap;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::task::JoinHandle;

use ds_storage::ReadPiece;

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

/// Marks a request whose connection can send runs of files itself (`sendfile` on a plain TCP
/// socket, see `h1`): a catch-up read may then answer with file regions ([`FilePieces`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendsFiles;

/// A response extension holding the pieces of a body that has runs of files, for the
/// connection that marked the request with [`SendsFiles`]: it sends them with `sendfile` and
/// drops the body unread. The body ([`FileBody`]) holds the same pieces and reads the runs
/// itself, so a response that goes anywhere else is still whole.
#[derive(Debug, Clone)]
pub(crate) struct FilePieces(pub(crate) Arc<[ReadPiece]>);

/// A response body of [`ReadPiece`]s that reads its file regions on the blocking pool when it
/// is polled (the fallback when they are not sent with `sendfile`). Its exact length is known.
#[derive(Debug)]
pub(crate) struct FileBody {
    pieces: Arc<[ReadPiece]>,
    next: usize,
    reading: Option<JoinHandle<io::Result<Bytes>>>,
    remaining: u64,
}

impl FileBody {
    /// A body of these pieces, in order.
    pub(crate) fn new(pieces: Arc<[ReadPiece]>) -> Self {
        let remaining = pieces.iter().map(ReadPiece::len).sum();
        FileBody {
            pieces,
            next: 0,
            reading: None,
            remaining,
        }
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        loop {
            if let Some(reading) = self.reading.as_mut() {
                let read = std::task::ready!(Pin::new(reading).poll(cx));
                self.reading = None;
                let data = read.map_err(io::Error::other).and_then(|r| r)?;
                self.remaining -= data.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            let Some(piece) = self.pieces.get(self.next).cloned() else {
                return Poll::Ready(None);
            };
            self.next += 1;
            match piece {
                ReadPiece::Bytes(b) if b.is_empty() => {}
                ReadPiece::Bytes(b) => {
                    self.remaining -= b.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                ReadPiece::File(region) => {
                    self.reading = Some(tokio::task::spawn_blocking(move || region.read()));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
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
    check_declared_length(headers, limit)?;
    read_body(body, limit).await
}

/// Refuses a request whose declared `Content-Length` is over `limit` (`413`), before any of
/// its body is read.
pub fn check_declared_length(headers: &HeaderMap, limit: u64) -> Result<(), ApiError> {
    if let Some(len) = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit
    {
        return Err(ApiError::BodyTooLarge { limit });
    }
    Ok(())
}

/// [`read_limited`] after [`check_declared_length`]: reads the body, refusing more than
/// `limit` bytes with `413`.
pub async fn read_body(body: Body, limit: u64) -> Result<Bytes, ApiError> {
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use ds_storage::FileRegion;

    use super::*;

    #[tokio::test]
    async fn a_file_body_reads_its_regions_in_order() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(&data).expect("write");
        let file = Arc::new(f.reopen().expect("reopen"));
        let pieces: Arc<[ReadPiece]> = vec![
            ReadPiece::Bytes(Bytes::from_static(b"[")),
            ReadPiece::File(FileRegion::new(Arc::clone(&file), 7, 150_000)),
            ReadPiece::Bytes(Bytes::new()),
            ReadPiece::File(FileRegion::new(file, 0, 3)),
            ReadPiece::Bytes(Bytes::from_static(b"]")),
        ]
        .into();
        let body = FileBody::new(pieces);
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(150_005));
        let got = body.collect().await.expect("body").to_bytes();
        let mut expected = b"[".to_vec();
        expected.extend_from_slice(&data[7..150_007]);
        expected.extend_from_slice(&data[..3]);
        expected.push(b']');
        assert!(got == expected, "the pieces in order");
    }

    #[tokio::test]
    async fn a_file_body_whose_file_is_short_fails() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(&[1; 100]).expect("write");
        let file = Arc::new(f.reopen().expect("reopen"));
        let pieces: Arc<[ReadPiece]> = vec![ReadPiece::File(FileRegion::new(file, 50, 100))].into();
        let err = FileBody::new(pieces)
            .collect()
            .await
            .expect_err("short file");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
