//! Live reads: long-poll (section 5.7) and Server-Sent Events (section 5.8).
//!
//! Both subscribe to the stream's [`Tail`] *before* reading, so an append that lands between
//! "read the tail" and "start waiting" changes the watched value and wakes the reader: no
//! wake-up is lost, and nobody polls. A long-poll that times out answers with the position it
//! was waiting at, never with a tail past data it did not return.
//!
//! On shutdown ([`ShutdownToken::end_live_reads`](crate::router::ShutdownToken)) a waiting
//! long-poll answers as if its timeout had passed, and an SSE response ends after its current
//! event, so connections drain promptly and clients reconnect elsewhere.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use ds_protocol::headers as h;
use ds_protocol::sse::{self, Control, SseEncoding};
use ds_protocol::{Offset, OffsetParam, StreamName, content_type, cursor};
use ds_storage::{ReadChunk, Storage, Tail};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::ApiError;
use crate::handlers::{read_from, set_closed, set_no_store, set_offset};
use crate::metrics::OwnedGaugeGuard;
use crate::router::{App, ShutdownToken};

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The cursor for a live response (section 10.1).
fn next_cursor(client: Option<&str>) -> u64 {
    cursor::next_cursor(now_secs(), client, fastrand::u64(1..=3600))
}

/// Waits until the tail moves away from `pos`, the stream closes or goes away, or `until`.
/// Returns `None` on timeout, and at once when the server is shutting down.
async fn wait_change(
    rx: &mut watch::Receiver<Tail>,
    pos: Offset,
    until: Instant,
    shutdown: &ShutdownToken,
) -> Option<Tail> {
    let changed = rx.wait_for(|t| t.next != pos || t.closed || t.gone);
    tokio::select! {
        res = tokio::time::timeout_at(until, changed) => match res {
            Ok(Ok(tail)) => Some(*tail),
            // The sender is gone: the stream was removed.
            Ok(Err(_)) => Some(Tail {
                next: pos,
                closed: true,
                gone: true,
            }),
            Err(_) => None,
        },
        () = shutdown.live_reads_end() => None,
    }
}

/// `GET ?live=long-poll`.
pub(crate) async fn long_poll<S: Storage>(
    app: &App<S>,
    name: &StreamName,
    offset: OffsetParam,
    client_cursor: Option<&str>,
) -> Result<Response, ApiError> {
    let _active = app.metrics.long_poll();
    let mut rx = app.storage.subscribe(name).await?;
    let deadline = Instant::now() + app.settings.long_poll_timeout;
    let chunk_bytes = app.settings.read_chunk_bytes;
    // The first read resets a sliding TTL (section 5.1) and returns data already there at once.
    let mut chunk = app
        .storage
        .read(name, read_from(offset), chunk_bytes)
        .await?;
    let pos = chunk.next;
    let stream_id = chunk.stream_id;
    loop {
        if !chunk.is_empty() {
            app.metrics.record_read(chunk.len());
            let mut res = crate::handlers::read::data_response(chunk);
            let out = res.headers_mut();
            out.insert(header::CACHE_CONTROL, app.settings.cacheable.clone());
            out.insert(
                h::STREAM_CURSOR,
                HeaderValue::from(next_cursor(client_cursor)),
            );
            return Ok(res);
        }
        if chunk.closed {
            return Ok(no_content(pos, true, None));
        }
        match wait_change(&mut rx, pos, deadline, &app.shutdown).await {
            None => return Ok(no_content(pos, false, Some(next_cursor(client_cursor)))),
            Some(tail) if tail.gone && tail.next == pos && !tail.closed => {
                return Err(ApiError::Storage(ds_storage::Error::NotFound));
            }
            Some(_) => {}
        }
        // Every reader parked here woke for the same append: one read serves them all.
        chunk = match app
            .shared_reads
            .read(&*app.storage, name, stream_id, pos, chunk_bytes)
            .await
        {
            Some(c) => ReadChunk::clone(&c),
            // Deleted (or deleted and created again) while waiting: answer as a read of the
            // stream's present state would (404, or 410 while forks keep it).
            None => {
                return Err(match app.storage.head(name).await {
                    Err(e) => e.into(),
                    Ok(_) => ApiError::Storage(ds_storage::Error::NotFound),
                });
            }
        };
    }
}

/// A long-poll `204`: caught up at `pos` (and at EOF when `closed`).
fn no_content(pos: Offset, closed: bool, cursor: Option<u64>) -> Response {
    let mut res = Response::new(axum::body::Body::empty());
    *res.status_mut() = StatusCode::NO_CONTENT;
    let out = res.headers_mut();
    set_offset(out, pos);
    out.insert(h::STREAM_UP_TO_DATE, HeaderValue::from_static("true"));
    if closed {
        set_closed(out);
    }
    if let Some(c) = cursor {
        out.insert(h::STREAM_CURSOR, HeaderValue::from(c));
    }
    set_no_store(out);
    res
}

/// State of one SSE connection.
struct SseConn<S> {
    app: App<S>,
    name: StreamName,
    rx: watch::Receiver<Tail>,
    pos: Offset,
    /// The stream incarnation this response follows.
    stream_id: u64,
    pending: Option<Arc<ReadChunk>>,
    encoding: SseEncoding,
    json: bool,
    cursor: u64,
    /// The position of the last control event sent, so an idle tail is announced once.
    announced: Option<Offset>,
    close_at: Instant,
    done: bool,
    /// Counts this response in the SSE gauge until the body is dropped.
    _active: OwnedGaugeGuard,
}

/// `GET ?live=sse`.
pub(crate) async fn sse<S: Storage>(
    app: &App<S>,
    name: StreamName,
    offset: OffsetParam,
    client_cursor: Option<String>,
) -> Result<Response, ApiError> {
    let rx = app.storage.subscribe(&name).await?;
    // Read once before answering, so a bad offset or a missing stream is a plain 4xx.
    let first = app
        .storage
        .read(&name, read_from(offset), app.settings.read_chunk_bytes)
        .await?;
    let ct = first.content_type.clone();
    let encoding = content_type::sse_encoding(&ct);
    let conn = SseConn {
        app: App::clone(app),
        name,
        rx,
        pos: first.next,
        stream_id: first.stream_id,
        pending: Some(Arc::new(first)),
        encoding,
        json: content_type::is_json(&ct),
        cursor: next_cursor(client_cursor.as_deref()),
        announced: None,
        close_at: Instant::now() + app.settings.sse_reconnect_interval,
        done: false,
        _active: app.metrics.sse(),
    };
    let stream = futures_util::stream::unfold(conn, |mut conn| async move {
        let frame = conn.next_frame().await?;
        Some((Ok::<Bytes, Infallible>(frame), conn))
    });
    let mut res = Response::new(axum::body::Body::from_stream(stream));
    let out = res.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if encoding == SseEncoding::Base64 {
        out.insert(
            h::STREAM_SSE_DATA_ENCODING,
            HeaderValue::from_static(sse::BASE64_ENCODING_HEADER_VALUE),
        );
    }
    Ok(res)
}

impl<S: Storage> SseConn<S> {
    fn cursor(&mut self) -> String {
        self.cursor = self.cursor.max(cursor::current_interval(now_secs()));
        self.cursor.to_string()
    }

    /// The next bytes to send, or `None` to end the response.
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if self.done {
                return None;
            }
            let chunk = match self.pending.take() {
                Some(c) => c,
                // Every subscriber at this position woke for the same append: one read serves
                // them all.
                None => match self
                    .app
                    .shared_reads
                    .read(
                        &*self.app.storage,
                        &self.name,
                        self.stream_id,
                        self.pos,
                        self.app.settings.read_chunk_bytes,
                    )
                    .await
                {
                    Some(c) => c,
                    // Deleted or expired under us: end the stream; a reconnect gets the 404.
                    None => return None,
                },
            };
            if !chunk.is_empty() {
                self.app.metrics.record_read(chunk.len());
                let mut frame = BytesMut::new();
                frame.extend_from_slice(&if self.json {
                    sse::json_data_event(&chunk.pieces)
                } else {
                    sse::data_event(&chunk.pieces, self.encoding)
                });
                frame.extend_from_slice(&self.control(&chunk));
                self.pos = chunk.next;
                return Some(frame.freeze());
            }
            self.pos = chunk.next;
            if chunk.closed || self.announced != Some(self.pos) {
                return Some(self.control(&chunk));
            }
            if self.app.shutdown.live_reads_ended() {
                return None;
            }
            let keep_alive = Instant::now() + self.app.settings.sse_keep_alive;
            let until = keep_alive.min(self.close_at);
            match wait_change(&mut self.rx, self.pos, until, &self.app.shutdown).await {
                Some(tail) if tail.gone => return None,
                Some(_) => {}
                None if Instant::now() >= self.close_at => return None,
                None if self.app.shutdown.live_reads_ended() => return None,
                None => return Some(sse::keep_alive()),
            }
        }
    }

    fn control(&mut self, chunk: &ReadChunk) -> Bytes {
        self.announced = Some(chunk.next);
        if chunk.closed {
            self.done = true;
        }
        let control = Control {
            stream_next_offset: chunk.next.to_string(),
            stream_cursor: (!chunk.closed).then(|| self.cursor()),
            up_to_date: chunk.up_to_date,
            stream_closed: chunk.closed,
        };
        sse::control_event(&control)
    }
}
