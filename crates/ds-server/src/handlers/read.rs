//! `GET`: catch-up reads, and the entry to live reads (sections 5.6 to 5.8, 8 and 10).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ds_protocol::{Offset, OffsetParam, StreamName, content_type, etag, json};
use ds_storage::{ReadChunk, ReadFrom, ReadPiece, Storage};

use super::{
    Query, header_str, respond, set_closed, set_content_type, set_no_store, set_offset, stream_name,
};
use crate::body::{FileBody, FilePieces, PiecesBody, SendsFiles};
use crate::error::ApiError;
use crate::h1::ServiceFuture;
use crate::live;
use crate::router::App;

/// A read, boxed for the server's connections (see `handlers::boxed`): the request is
/// parsed first, and each kind of read boxes only its own future (a catch-up read's is a
/// fraction of a live read's), without the request.
pub(super) fn boxed<S: Storage>(app: App<S>, req: Request) -> ServiceFuture {
    let get = Get::parse(&app, &req);
    // Not kept while a live read waits, which may be minutes.
    drop(req);
    match get {
        Err(e) => Box::pin(std::future::ready(Ok(e.into_response()))),
        Ok(Get::CatchUp {
            name,
            offset,
            if_none_match,
            sends_files,
        }) => Box::pin(async move {
            let inm = if_none_match.as_deref();
            Ok(respond(
                catch_up(&app, &name, offset, inm, sends_files).await,
            ))
        }),
        Ok(Get::LongPoll {
            name,
            offset,
            cursor,
        }) => Box::pin(async move {
            let cursor = cursor.as_deref();
            Ok(respond(live::long_poll(&app, &name, offset, cursor).await))
        }),
        Ok(Get::Sse {
            name,
            offset,
            cursor,
        }) => Box::pin(async move { Ok(respond(live::sse(&app, name, offset, cursor).await)) }),
    }
}

/// A parsed `GET`.
enum Get {
    CatchUp {
        name: StreamName,
        offset: OffsetParam,
        if_none_match: Option<String>,
        sends_files: bool,
    },
    LongPoll {
        name: StreamName,
        offset: OffsetParam,
        cursor: Option<String>,
    },
    Sse {
        name: StreamName,
        offset: OffsetParam,
        cursor: Option<String>,
    },
}

impl Get {
    fn parse<S: Storage>(app: &App<S>, req: &Request) -> Result<Get, ApiError> {
        let name = stream_name(app, req.uri().path())?;
        let q = Query::parse(req.uri().query())?;
        let offset = q
            .offset
            .as_deref()
            .map(OffsetParam::parse)
            .transpose()
            .map_err(|e| ApiError::bad_request("INVALID_OFFSET", e.to_string()))?;
        match q.live.as_deref() {
            None => Ok(Get::CatchUp {
                name,
                offset: offset.unwrap_or(OffsetParam::Start),
                if_none_match: header_str(req.headers(), &header::IF_NONE_MATCH)?
                    .map(str::to_owned),
                sends_files: req.extensions().get::<SendsFiles>().is_some(),
            }),
            Some(mode @ ("long-poll" | "sse")) => {
                let offset = offset.ok_or_else(|| {
                    ApiError::bad_request(
                        "MISSING_OFFSET",
                        format!("live={mode} requires an offset"),
                    )
                })?;
                let cursor = q.cursor;
                Ok(if mode == "sse" {
                    Get::Sse {
                        name,
                        offset,
                        cursor,
                    }
                } else {
                    Get::LongPoll {
                        name,
                        offset,
                        cursor,
                    }
                })
            }
            Some(other) => Err(ApiError::bad_request(
                "INVALID_LIVE_MODE",
                format!("live={other:?} is not a live mode (use long-poll or sse)"),
            )),
        }
    }
}

/// Maps the `offset` parameter to a storage read position.
pub(crate) fn read_from(offset: OffsetParam) -> ReadFrom {
    match offset {
        OffsetParam::Start => ReadFrom::Start,
        OffsetParam::Now => ReadFrom::Tail,
        OffsetParam::At(o) => ReadFrom::At(o),
    }
}

/// A catch-up read's answer: bytes, or (for a connection that [`SendsFiles`]) pieces that may
/// be runs of files.
enum Answer {
    Bytes(ReadChunk),
    Pieces(ReadChunk<ReadPiece>),
}

impl Answer {
    fn chunk_len(&self) -> u64 {
        match self {
            Answer::Bytes(c) => c.len() as u64,
            Answer::Pieces(c) => c.len(),
        }
    }

    fn meta(&self) -> (u64, Offset, Offset, bool) {
        match self {
            Answer::Bytes(c) => (c.stream_id, c.start, c.next, c.closed),
            Answer::Pieces(c) => (c.stream_id, c.start, c.next, c.closed),
        }
    }

    fn into_response(self) -> Response {
        match self {
            Answer::Bytes(c) => data_response(c),
            Answer::Pieces(c) => match c.in_memory() {
                Ok(c) => data_response(c),
                Err(c) => file_response(c),
            },
        }
    }
}

/// A `200` whose body has runs of files: sent with `sendfile` by a connection that
/// [`SendsFiles`] ([`FilePieces`]), read by the body ([`FileBody`]) anywhere else.
fn file_response(mut chunk: ReadChunk<ReadPiece>) -> Response {
    let pieces = std::mem::take(&mut chunk.pieces);
    let pieces: Arc<[ReadPiece]> = if content_type::is_json(&chunk.content_type) {
        json::array_pieces(&pieces).into()
    } else {
        pieces.into()
    };
    let mut res = chunk_response(&chunk, Body::new(FileBody::new(Arc::clone(&pieces))));
    res.extensions_mut().insert(FilePieces(pieces));
    res
}

async fn catch_up<S: Storage>(
    app: &App<S>,
    name: &ds_protocol::StreamName,
    offset: OffsetParam,
    if_none_match: Option<&str>,
    sends_files: bool,
) -> Result<Response, ApiError> {
    let (from, max) = (read_from(offset), app.settings.read_chunk_bytes);
    let answer = if sends_files {
        let files = app.settings.sendfile_chunk_bytes;
        Answer::Pieces(app.storage.read_regions(name, from, max, files).await?)
    } else {
        Answer::Bytes(app.storage.read(name, from, max).await?)
    };
    let len = answer.chunk_len();
    if len > 0 {
        app.metrics
            .record_read(usize::try_from(len).unwrap_or(usize::MAX));
    }
    if offset == OffsetParam::Now {
        // The tail position changes with every append: never cached, no ETag (section 8).
        let mut res = answer.into_response();
        set_no_store(res.headers_mut());
        return Ok(res);
    }
    let (stream_id, start, next, closed) = answer.meta();
    let tag = etag::etag(stream_id, start, next, closed);
    if let Some(inm) = if_none_match
        && etag::if_none_match(inm, &tag)
    {
        let mut res = Response::new(axum::body::Body::empty());
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        let out = res.headers_mut();
        insert_etag(out, &tag);
        out.insert(header::CACHE_CONTROL, app.settings.cacheable.clone());
        return Ok(res);
    }
    let mut res = answer.into_response();
    let out = res.headers_mut();
    insert_etag(out, &tag);
    out.insert(header::CACHE_CONTROL, app.settings.cacheable.clone());
    Ok(res)
}

fn insert_etag(out: &mut HeaderMap, tag: &str) {
    if let Ok(v) = HeaderValue::from_str(tag) {
        out.insert(header::ETAG, v);
    }
}

/// A `200` carrying a chunk: body (a JSON array for JSON streams), `Content-Type`,
/// `Stream-Next-Offset`, and `Stream-Up-To-Date` / `Stream-Closed` when they hold.
pub(crate) fn data_response(mut chunk: ReadChunk) -> Response {
    let pieces = std::mem::take(&mut chunk.pieces);
    let body = if content_type::is_json(&chunk.content_type) {
        PiecesBody::new(json::array_pieces(&pieces))
    } else {
        PiecesBody::new(pieces)
    };
    chunk_response(&chunk, body.into_body())
}

/// A `200` with `body` and the headers of `chunk` (whose pieces `body` carries).
fn chunk_response<P>(chunk: &ReadChunk<P>, body: Body) -> Response {
    let mut res = Response::new(body);
    let out = res.headers_mut();
    set_content_type(out, &chunk.content_type);
    set_offset(out, chunk.next);
    if chunk.up_to_date {
        out.insert(
            super::names::STREAM_UP_TO_DATE.clone(),
            HeaderValue::from_static("true"),
        );
    }
    if chunk.closed {
        set_closed(out);
    }
    res
}
