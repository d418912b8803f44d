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
//!
//! Each live read holds a slot of `limits.max_live_readers` and
//! `limits.max_live_readers_per_stream` for as long as it is open (an SSE response until its
//! body is dropped); past either limit it is refused with `503` and `Retry-After`.

use std::convert::Infallible;
use std::pin::Pin;
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
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;
use crate::handlers::{names, read_from, set_closed, set_no_store, set_offset};
use crate::limits::LiveReaderPermit;
use crate::metrics::OwnedGaugeGuard;
use crate::router::{App, LiveReadsEnd, ShutdownToken};
use crate::shared_read::SharedChunk;

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
    // Taken only before the first wait: a long-poll answered at once (catch-up data, a closed
    // stream, a 404) never counts against the live-reader limits.
    let mut slot = None;
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
                names::STREAM_CURSOR.clone(),
                HeaderValue::from(next_cursor(client_cursor)),
            );
            return Ok(res);
        }
        if chunk.closed {
            return Ok(no_content(pos, true, None));
        }
        if slot.is_none() {
            slot = Some(app.live_readers.try_acquire(name)?);
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
    out.insert(
        names::STREAM_UP_TO_DATE.clone(),
        HeaderValue::from_static("true"),
    );
    if closed {
        set_closed(out);
    }
    if let Some(c) = cursor {
        out.insert(names::STREAM_CURSOR.clone(), HeaderValue::from(c));
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
    pending: Option<Arc<SharedChunk>>,
    encoding: SseEncoding,
    json: bool,
    cursor: u64,
    /// The position of the last control event sent, so an idle tail is announced once.
    announced: Option<Offset>,
    /// `pos` was the stream's tail when the records just sent were read: wait for the tail to
    /// move before reading again (a read now would find nothing, one per subscriber).
    at_tail: bool,
    close_at: Instant,
    /// Fires at the next keep-alive or at `close_at`, whichever comes first. One timer for the
    /// response's life, moved only when it fires, so delivering an event neither registers
    /// nor cancels a timer.
    tick: Pin<Box<Sleep>>,
    /// When the last frame went out (a keep-alive is due `sse_keep_alive` after it).
    last_sent: Instant,
    /// Resolves once live reads are told to end; created once, polled by every wait.
    live_end: LiveReadsEnd,
    done: bool,
    /// Counts this response in the SSE gauge until the body is dropped.
    _active: OwnedGaugeGuard,
    /// Holds this response's live-reader slot until the body is dropped.
    _slot: LiveReaderPermit,
}

/// Why an SSE response stopped waiting.
enum Wake {
    /// The tail moved, or the stream closed.
    Changed,
    /// Nothing was sent for a keep-alive interval.
    KeepAlive,
    /// The stream went away, the response reached its lifetime, or the server is draining.
    End,
}

/// `GET ?live=sse`.
pub(crate) async fn sse<S: Storage>(
    app: &App<S>,
    name: StreamName,
    offset: OffsetParam,
    client_cursor: Option<String>,
) -> Result<Response, ApiError> {
    let slot = app.live_readers.try_acquire(&name)?;
    let rx = app.storage.subscribe(&name).await?;
    // Read once before answering, so a bad offset or a missing stream is a plain 4xx.
    let first = app
        .storage
        .read(&name, read_from(offset), app.settings.read_chunk_bytes)
        .await?;
    let encoding = content_type::sse_encoding(&first.content_type);
    let json = content_type::is_json(&first.content_type);
    let now = Instant::now();
    let close_at = now + app.settings.sse_reconnect_interval;
    let conn = SseConn {
        app: App::clone(app),
        name,
        rx,
        pos: first.next,
        stream_id: first.stream_id,
        pending: Some(Arc::new(SharedChunk::new(first))),
        encoding,
        json,
        cursor: next_cursor(client_cursor.as_deref()),
        announced: None,
        at_tail: false,
        close_at,
        tick: Box::pin(tokio::time::sleep_until(
            (now + app.settings.sse_keep_alive).min(close_at),
        )),
        last_sent: now,
        live_end: app.shutdown.on_live_reads_end(),
        done: false,
        _active: app.metrics.sse(),
        _slot: slot,
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
    /// The cursor of the next control event: never behind the current interval.
    fn cursor(&mut self) -> u64 {
        self.cursor = self.cursor.max(cursor::current_interval(now_secs()));
        self.cursor
    }

    /// The next bytes to send, or `None` to end the response.
    async fn next_frame(&mut self) -> Option<Bytes> {
        let frame = self.next_frame_inner().await?;
        self.last_sent = Instant::now();
        Some(frame)
    }

    async fn next_frame_inner(&mut self) -> Option<Bytes> {
        loop {
            if self.done {
                return None;
            }
            if !self.at_tail {
                let chunk = match self.pending.take() {
                    Some(c) => c,
                    // Every subscriber at this position woke for the same append: one read
                    // serves them all.
                    None => {
                        self.app
                            .shared_reads
                            .read(
                                &*self.app.storage,
                                &self.name,
                                self.stream_id,
                                self.pos,
                                self.app.settings.read_chunk_bytes,
                            )
                            .await?
                    } // `None`: deleted or expired under us: end the stream; a reconnect gets
                      // the 404.
                };
                self.pos = chunk.next;
                if !chunk.is_empty() {
                    self.app.metrics.record_read(chunk.len());
                    self.at_tail = chunk.up_to_date && !chunk.closed;
                    return Some(self.data_frame(&chunk));
                }
                if chunk.closed || self.announced != Some(self.pos) {
                    return Some(self.control_frame(&chunk));
                }
            }
            self.at_tail = false;
            if self.app.shutdown.live_reads_ended() {
                return None;
            }
            match self.wait().await {
                Wake::Changed => {}
                Wake::KeepAlive => return Some(sse::keep_alive()),
                Wake::End => return None,
            }
        }
    }

    /// Waits until the tail moves away from `pos` (or the stream closes or goes away), a
    /// keep-alive is due, the response's lifetime ends, or live reads are told to end.
    async fn wait(&mut self) -> Wake {
        let keep_alive = self.app.settings.sse_keep_alive;
        loop {
            let pos = self.pos;
            // Polled in order: a moved tail wins, and then the timer and the shutdown future
            // (registered once, still armed) are not polled at all.
            let woke = tokio::select! {
                biased;
                tail = self.rx.wait_for(|t| t.next != pos || t.closed || t.gone) => match tail {
                    Ok(t) if !t.gone => Wake::Changed,
                    // Removed, or the sender is gone with the stream.
                    _ => Wake::End,
                },
                () = &mut self.live_end => Wake::End,
                () = &mut self.tick => Wake::KeepAlive,
            };
            if !matches!(woke, Wake::KeepAlive) {
                return woke;
            }
            let now = Instant::now();
            if now >= self.close_at {
                return Wake::End;
            }
            let due = self.last_sent + keep_alive;
            if due <= now {
                self.tick
                    .as_mut()
                    .reset((now + keep_alive).min(self.close_at));
                return Wake::KeepAlive;
            }
            // Frames went out since the timer was set: nothing is due yet.
            self.tick.as_mut().reset(due.min(self.close_at));
        }
    }

    /// A data event and its control event, encoded once per chunk for every subscriber that
    /// sends the same cursor.
    fn data_frame(&mut self, chunk: &SharedChunk) -> Bytes {
        let cursor = self.note_control(chunk);
        let (json, encoding) = (self.json, self.encoding);
        chunk.frame(cursor, || {
            let data = if json {
                sse::json_data_event(&chunk.pieces)
            } else {
                sse::data_event(&chunk.pieces, encoding)
            };
            let control = control_event(chunk, cursor);
            let mut frame = BytesMut::with_capacity(data.len() + control.len());
            frame.extend_from_slice(&data);
            frame.extend_from_slice(&control);
            frame.freeze()
        })
    }

    /// A control event alone.
    fn control_frame(&mut self, chunk: &ReadChunk) -> Bytes {
        let cursor = self.note_control(chunk);
        control_event(chunk, cursor)
    }

    /// Records that a control event for `chunk` is being sent; its cursor (`None` once closed).
    fn note_control(&mut self, chunk: &ReadChunk) -> Option<u64> {
        self.announced = Some(chunk.next);
        if chunk.closed {
            self.done = true;
            None
        } else {
            Some(self.cursor())
        }
    }
}

/// The control event after `chunk`.
fn control_event(chunk: &ReadChunk, cursor: Option<u64>) -> Bytes {
    sse::control_event(&Control {
        stream_next_offset: chunk.next.to_string(),
        stream_cursor: cursor.map(|c| c.to_string()),
        up_to_date: chunk.up_to_date,
        stream_closed: chunk.closed,
    })
}
