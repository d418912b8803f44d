//! The server side of an HTTP/1.1 connection: request heads parsed with `httparse`, request
//! bodies framed by `Content-Length` or chunked coding, responses written with vectored writes
//! straight from the body's [`Bytes`] (HTTP/2 stays with hyper, see [`crate::transport`]).
//!
//! Why not hyper's `http1` connection: it keeps an 8 KiB read buffer and an 8 KiB write buffer
//! for each connection's whole life, which is most of the memory of an idle SSE subscriber or
//! long-poller; this connection holds no buffer while it waits on a live response. And on the
//! append path it does less per request: one read, one vectored write of head and body, the
//! head's fields sliced out of the read buffer without copies.
//!
//! What it does, per RFC 9112:
//!
//! - Keep-alive by default for HTTP/1.1, on `Connection: keep-alive` for HTTP/1.0; pipelined
//!   requests are answered in order.
//! - Request bodies by `Content-Length` or `Transfer-Encoding: chunked` (trailers are read and
//!   dropped). Both at once, a coding other than chunked, or conflicting lengths are refused
//!   with `400` and the connection closes (no request smuggling through an ambiguous length).
//!   `Expect: 100-continue` gets its interim response before the body is read.
//! - A body the handler did not read to its end closes the connection after the response.
//! - Responses carry `Content-Length` when the body's size is known and chunked coding when it
//!   is not (or are delimited by closing the connection for an HTTP/1.0 client); `HEAD`, `204`
//!   and `304` responses have no body.
//! - A head must arrive within `header_read_timeout` of the connection starting to wait for
//!   it; a head past `max_head_bytes` or `max_headers` fields gets `431`, a malformed one
//!   `400`, both with a problem body, and the connection closes.
//! - At shutdown ([`ShutdownToken::end_live_reads`]) a connection waiting for a request closes,
//!   and one answering a request closes after that response.
//!
//! On a plain TCP socket ([`SendFile`]), requests are marked [`SendsFiles`], and a response
//! carrying [`FilePieces`] (a catch-up read of a file-backed stream) has its runs of files sent
//! with `sendfile`: the page cache goes to the socket without a copy through the process.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version, header};
use http_body::Frame;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use tokio::sync::{Notify, mpsc};

use ds_storage::{FileRegion, ReadPiece};

use crate::body::{FilePieces, SendsFiles};
use crate::error::ApiError;
use crate::router::ShutdownToken;

/// Limits of one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Longest wait for a complete request head.
    pub(crate) header_read_timeout: Duration,
    /// Most bytes of a request head, request line included.
    pub(crate) max_head_bytes: usize,
    /// Most header fields of a request.
    pub(crate) max_headers: usize,
}

/// The future of one request through the service.
pub(crate) type ServiceFuture =
    Pin<Box<dyn Future<Output = Result<Response, std::convert::Infallible>> + Send>>;

/// Room reserved in the read buffer before a read.
const READ_CHUNK: usize = 4 * 1024;
/// Room reserved before a read of a large request body.
const BODY_READ_CHUNK: usize = 64 * 1024;
/// How long, and how many bytes, a connection closed with unread input drains (see
/// `Connection::linger`).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;
/// Header fields parsed on the stack; more (up to `max_headers`) are parsed into a `Vec`.
const STACK_HEADERS: usize = 100;
/// Header fields whose positions are kept on the stack while the head is taken out of the
/// read buffer; more go to a `Vec`.
const STACK_RANGES: usize = 32;
/// Longest chunk-size line (with extensions) and most trailer bytes of a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Most response body pieces, and bytes, gathered into one write.
const MAX_WRITE_PIECES: usize = 64;
const MAX_WRITE_BYTES: usize = 1024 * 1024;

/// A connection that may send runs of a file itself, without copying them through the
/// process: `sendfile` on a plain TCP socket. The defaults say it cannot (TLS, tests).
pub(crate) trait SendFile {
    /// Whether [`poll_send_file`](SendFile::poll_send_file) works on this connection.
    fn can_send_file(&self) -> bool {
        false
    }

    /// Sends at most `len` bytes of `file` from `pos`; returns how many went out (0: the file
    /// ended).
    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        pos: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let _ = (cx, file, pos, len);
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }
}

#[cfg(target_os = "linux")]
impl SendFile for tokio::net::TcpStream {
    fn can_send_file(&self) -> bool {
        true
    }

    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        pos: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.poll_write_ready(cx))?;
            let mut at = pos;
            let sent = self.try_io(tokio::io::Interest::WRITABLE, || {
                rustix::fs::sendfile(&*self, file, Some(&mut at), len).map_err(io::Error::from)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return Poll::Ready(other),
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl SendFile for tokio::net::TcpStream {}

impl<T> SendFile for tokio_rustls::server::TlsStream<T> {}

/// Serves requests on `io` with `svc` until the client closes, a request asks to close, an
/// error ends the connection, or shutdown.
pub(crate) async fn serve<I, F>(io: I, opts: Options, token: &ShutdownToken, svc: F)
where
    I: AsyncRead + AsyncWrite + SendFile + Unpin + Send,
    F: FnMut(Request<Body>) -> ServiceFuture,
{
    let mut conn = Connection {
        io,
        buf: BytesMut::new(),
        wbuf: Vec::new(),
        pieces: Vec::new(),
        timer: None,
        opts,
        svc,
    };
    if let Err(e) = conn.run(token).await {
        tracing::debug!(error = %e, "HTTP/1.1 connection ended with an error");
    }
}

struct Connection<I, F> {
    io: I,
    /// Bytes read and not yet parsed (empty, without capacity, while a response waits).
    buf: BytesMut,
    /// The response head being written (freed while a body streams).
    wbuf: Vec<u8>,
    /// Response body pieces gathered for one write.
    pieces: Vec<Bytes>,
    /// The header read timer (see [`expire`]).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    opts: Options,
    svc: F,
}

/// Why no request came.
enum HeadError {
    /// The client closed (or shutdown closed an idle connection): close quietly.
    Closed,
    /// Answer this, then close.
    Answer(ApiError),
    /// The head did not arrive in time, or the socket failed: close.
    Io(io::Error),
}

/// How a request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

/// A parsed request head: the request without its body, and how the body is framed.
struct Head {
    req: Request<()>,
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

impl<I, F> Connection<I, F>
where
    I: AsyncRead + AsyncWrite + SendFile + Unpin + Send,
    F: FnMut(Request<Body>) -> ServiceFuture,
{
    async fn run(&mut self, token: &ShutdownToken) -> io::Result<()> {
        let mut shutdown = token.on_live_reads_end();
        loop {
            let head = match self.read_head(&mut shutdown).await {
                Ok(head) => head,
                Err(HeadError::Closed) => {
                    self.close().await;
                    return Ok(());
                }
                Err(HeadError::Io(e)) => return Err(e),
                Err(HeadError::Answer(err)) => {
                    let res = err.into_response();
                    self.respond(res, false, false, false).await?;
                    self.close().await;
                    return Ok(());
                }
            };
            let Head {
                req,
                framing,
                mut keep_alive,
                expect_continue,
            } = head;
            let is_head = req.method() == Method::HEAD;
            let http10 = req.version() == Version::HTTP_10;
            let (mut parts, ()) = req.into_parts();
            if self.io.can_send_file() {
                parts.extensions.insert(SendsFiles);
            }
            let res = match framing {
                Framing::Empty => self.call(Request::from_parts(parts, Body::empty())).await,
                Framing::Length(n) if (self.buf.len() as u64) >= n => {
                    // The whole body is here already (the usual small append): a slice of the
                    // read buffer, no copy.
                    let body = self.buf.split_to(usize::try_from(n).unwrap_or(0)).freeze();
                    self.call(Request::from_parts(parts, Body::from(body)))
                        .await
                }
                _ => {
                    let (tx, rx) = mpsc::channel(2);
                    let remaining = match framing {
                        Framing::Length(n) => Some(n),
                        _ => None,
                    };
                    let complete = Arc::new(AtomicBool::new(false));
                    // `Expect: 100-continue`: the interim answer goes out when the handler
                    // first reads the body, so a request refused without reading it (404,
                    // 413, 429) is not uploaded first.
                    let demand = expect_continue.then(|| Arc::new(Notify::new()));
                    let body = Body::new(StreamedBody {
                        rx,
                        remaining,
                        complete: Arc::clone(&complete),
                        demand: demand.clone(),
                        failed: false,
                    });
                    let mut pump = Pump::new(framing, tx, complete, demand);
                    let mut fut = (self.svc)(Request::from_parts(parts, body));
                    let res = loop {
                        tokio::select! {
                            biased;
                            res = &mut fut => break res,
                            () = pump.step(&mut self.io, &mut self.buf), if pump.active() => {}
                        }
                    };
                    // An interim answer cut short by the response: finish it first.
                    pump.finish_continue(&mut self.io).await?;
                    if !pump.complete() {
                        // The rest of the body is unread: the next request's start is unknown.
                        keep_alive = false;
                    }
                    res
                }
            };
            let Ok(res) = res;
            if token.live_reads_ended() {
                keep_alive = false;
            }
            let keep_alive = self.respond(res, keep_alive, is_head, http10).await?;
            if !keep_alive {
                self.close().await;
                return Ok(());
            }
        }
    }

    /// Closes the connection cleanly: sends FIN (and TLS `close_notify`), then reads and drops
    /// what the client still sends until it closes too (for at most `LINGER`, or
    /// `LINGER_BYTES`). Closing with unread bytes would reset the connection and could destroy
    /// the last answer before the client has read it (an early `413`, a request pipelined
    /// after `Connection: close`).
    async fn close(&mut self) {
        let mut dropped = 0usize;
        let _ = tokio::time::timeout(LINGER, async {
            if self.io.shutdown().await.is_err() {
                return;
            }
            while dropped < LINGER_BYTES {
                self.buf.clear();
                self.buf.reserve(READ_CHUNK);
                match self.io.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => dropped += n,
                }
            }
        })
        .await;
    }

    /// Runs the service on a request whose body is already complete. The read buffer of a read
    /// (`GET`) is freed if the answer is not ready at once: a live read waiting for data holds
    /// no buffer. A write keeps it: it waits only for its commit, and its connection's next
    /// request reuses the same buffer (freeing it cost an allocation per request, made on this
    /// worker and often freed on the storage committer's thread with the request's body).
    async fn call(&mut self, req: Request<Body>) -> Result<Response, std::convert::Infallible> {
        let mut released = req.method() != Method::GET;
        let mut fut = (self.svc)(req);
        let buf = &mut self.buf;
        std::future::poll_fn(|cx| {
            let polled = fut.as_mut().poll(cx);
            if polled.is_pending() && !released {
                released = true;
                if buf.is_empty() {
                    *buf = BytesMut::new();
                }
            }
            polled
        })
        .await
    }

    /// Reads and parses the next request head.
    async fn read_head(
        &mut self,
        shutdown: &mut crate::router::LiveReadsEnd,
    ) -> Result<Head, HeadError> {
        let mut deadline = None;
        loop {
            if !self.buf.is_empty() {
                match parse_head(&mut self.buf, self.opts) {
                    Ok(Some(head)) => return Ok(head),
                    Ok(None) => {}
                    Err(e) => return Err(HeadError::Answer(e)),
                }
                if self.buf.len() > self.opts.max_head_bytes {
                    return Err(HeadError::Answer(head_too_large(self.opts)));
                }
            }
            self.buf.reserve(READ_CHUNK);
            // The deadline starts when the connection first has to wait for this head.
            let deadline = *deadline
                .get_or_insert_with(|| tokio::time::Instant::now() + self.opts.header_read_timeout);
            let waiting_idle = self.buf.is_empty();
            let read = self.io.read_buf(&mut self.buf);
            let n = tokio::select! {
                biased;
                res = read => res.map_err(HeadError::Io)?,
                () = expire(&mut self.timer, deadline) => {
                    return Err(HeadError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not received within the header read timeout",
                    )));
                }
                () = &mut *shutdown, if waiting_idle => return Err(HeadError::Closed),
            };
            if n == 0 {
                return Err(if self.buf.is_empty() {
                    HeadError::Closed
                } else {
                    HeadError::Io(io::ErrorKind::UnexpectedEof.into())
                });
            }
        }
    }

    /// Writes `res`; returns whether the connection stays open.
    async fn respond(
        &mut self,
        res: Response,
        keep_alive: bool,
        is_head: bool,
        http10: bool,
    ) -> io::Result<bool> {
        let (mut parts, mut body) = res.into_parts();
        let mut keep_alive = keep_alive
            && !parts
                .headers
                .get(header::CONNECTION)
                .is_some_and(|v| has_token(v.as_bytes(), b"close"));
        let status = parts.status;
        let bodiless = is_head
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| parse_decimal(v.as_bytes()));
        let out = if bodiless {
            Out::None
        } else if let Some(n) = declared {
            Out::Length(n)
        } else if let Some(n) = http_body::Body::size_hint(&body).exact() {
            Out::Length(n)
        } else if http10 {
            keep_alive = false;
            Out::UntilClose
        } else {
            Out::Chunked
        };
        let mut wbuf = std::mem::take(&mut self.wbuf);
        wbuf.clear();
        // A HEAD answer keeps the length its GET would have (axum's `Content-Length`).
        let head_length = if is_head { declared } else { None };
        encode_head(&mut wbuf, &parts, out, head_length, keep_alive, http10);
        let files = parts.extensions.remove::<FilePieces>();
        drop(parts);
        if let (Out::Length(n), Some(FilePieces(pieces))) = (out, files)
            && self.io.can_send_file()
        {
            drop(body);
            if pieces.iter().map(ReadPiece::len).sum::<u64>() != n {
                tracing::warn!("response body length differs from its Content-Length");
                return Ok(false);
            }
            self.send_pieces(&wbuf, &pieces).await?;
            self.wbuf = wbuf;
            return Ok(keep_alive);
        }
        if matches!(out, Out::None) {
            write_all_vectored(&mut self.io, &mut [IoSlice::new(&wbuf)]).await?;
            self.io.flush().await?;
            self.wbuf = wbuf;
            return Ok(keep_alive);
        }
        let mut remaining = match out {
            Out::Length(n) => Some(n),
            _ => None,
        };
        let mut head = Some(wbuf);
        let mut waited = None;
        loop {
            let gathered = std::future::poll_fn(|cx| {
                Poll::Ready(gather(&mut self.pieces, &mut body, waited.take(), cx))
            })
            .await;
            let Ok(Gathered { total, ended }) = gathered else {
                // The response cannot be completed: cut the connection, so the client sees a
                // short body rather than a well-formed wrong one.
                return Ok(false);
            };
            if let Some(left) = remaining.as_mut() {
                let total = total as u64;
                if total > *left || (ended && total < *left) {
                    tracing::warn!("response body length differs from its Content-Length");
                    return Ok(false);
                }
                *left -= total;
            }
            let chunked = matches!(out, Out::Chunked);
            self.write_batch(head.as_deref(), chunked, total, ended)
                .await?;
            if ended {
                if let Some(h) = head.take() {
                    self.wbuf = h;
                }
                return Ok(keep_alive && !matches!(out, Out::UntilClose));
            }
            if head.take().is_some() {
                // The body streams on (a live read): hold no buffer while it waits.
                if self.buf.is_empty() {
                    self.buf = BytesMut::new();
                }
                self.pieces = Vec::new();
            }
            waited = Some(http_body_util::BodyExt::frame(&mut body).await);
        }
    }

    /// Writes a response head and a body of [`ReadPiece`]s: bytes with vectored writes (the
    /// head with the bytes after it), runs of files with `sendfile`.
    async fn send_pieces(&mut self, head: &[u8], pieces: &[ReadPiece]) -> io::Result<()> {
        let mut head = Some(head);
        let mut i = 0;
        while i < pieces.len() {
            let mut slices: Vec<IoSlice<'_>> = Vec::new();
            if let Some(h) = head.take() {
                slices.push(IoSlice::new(h));
            }
            while let Some(ReadPiece::Bytes(b)) = pieces.get(i)
                && slices.len() < MAX_WRITE_PIECES
            {
                slices.push(IoSlice::new(b));
                i += 1;
            }
            write_all_vectored(&mut self.io, &mut slices).await?;
            drop(slices);
            if let Some(ReadPiece::File(region)) = pieces.get(i) {
                self.send_region(region).await?;
                i += 1;
            }
        }
        if let Some(h) = head {
            write_all_vectored(&mut self.io, &mut [IoSlice::new(h)]).await?;
        }
        self.io.flush().await
    }

    /// Sends a run of a file with `sendfile`; where the file system refuses `sendfile`, reads
    /// the rest of the run on the blocking pool, [`MAX_WRITE_BYTES`] at a time, and writes it.
    async fn send_region(&mut self, region: &FileRegion) -> io::Result<()> {
        let (mut pos, end) = (region.pos(), region.pos() + region.len());
        while pos < end {
            let want = usize::try_from(end - pos).unwrap_or(usize::MAX);
            let sent =
                std::future::poll_fn(|cx| self.io.poll_send_file(cx, region.file(), pos, want))
                    .await;
            let n = match sent {
                Ok(n) => n,
                Err(e) if refused(&e) => {
                    let part = region.part(pos - region.pos(), MAX_WRITE_BYTES as u64);
                    let bytes = tokio::task::spawn_blocking(move || part.read())
                        .await
                        .map_err(io::Error::other)??;
                    write_all_vectored(&mut self.io, &mut [IoSlice::new(&bytes)]).await?;
                    bytes.len()
                }
                Err(e) => return Err(e),
            };
            if n == 0 {
                // The file is shorter than the region: the response cannot be completed.
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            pos += n as u64;
        }
        Ok(())
    }

    /// Writes the response head (if not sent yet) and the gathered body pieces, in chunked
    /// coding if `chunked` (with the last chunk if `ended`).
    async fn write_batch(
        &mut self,
        head: Option<&[u8]>,
        chunked: bool,
        total: usize,
        ended: bool,
    ) -> io::Result<()> {
        let mut size_line = [0u8; 20];
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(self.pieces.len() + 4);
        if let Some(h) = head {
            slices.push(IoSlice::new(h));
        }
        if chunked && total > 0 {
            let n = encode_chunk_size(&mut size_line, total);
            slices.push(IoSlice::new(&size_line[..n]));
        }
        for piece in &self.pieces {
            slices.push(IoSlice::new(piece));
        }
        if chunked && total > 0 {
            slices.push(IoSlice::new(b"\r\n"));
        }
        if chunked && ended {
            slices.push(IoSlice::new(b"0\r\n\r\n"));
        }
        write_all_vectored(&mut self.io, &mut slices).await?;
        drop(slices);
        self.pieces.clear();
        self.io.flush().await
    }
}

/// Resolves once `deadline` has passed.
///
/// One timer per connection, armed lazily: each request only moves `deadline` (a clock read),
/// and the timer, still set for an earlier deadline, is pushed out when it fires early. A timer
/// registered and cancelled per request costs two operations on the runtime's timer wheel.
async fn expire(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>, deadline: tokio::time::Instant) {
    let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if sleep.deadline() > deadline {
        sleep.as_mut().reset(deadline);
    }
    loop {
        sleep.as_mut().await;
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        sleep.as_mut().reset(deadline);
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy)]
enum Out {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// What [`gather`] found ready.
struct Gathered {
    /// Bytes gathered.
    total: usize,
    /// The body ended.
    ended: bool,
}

/// A frame of a response body, as polled.
type Polled = Option<Result<Frame<Bytes>, axum::Error>>;

/// Moves the data frames `body` has ready into `pieces` (after `waited`, a frame already
/// awaited), up to one write's worth; registers `cx` for the next frame if it stopped on one
/// not ready. An error of the body is logged and returned.
fn gather(
    pieces: &mut Vec<Bytes>,
    body: &mut Body,
    mut waited: Option<Polled>,
    cx: &mut Context<'_>,
) -> Result<Gathered, axum::Error> {
    pieces.clear();
    let mut total = 0usize;
    loop {
        let next = match waited.take() {
            Some(frame) => frame,
            None => match http_body::Body::poll_frame(Pin::new(&mut *body), cx) {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    return Ok(Gathered {
                        total,
                        ended: false,
                    });
                }
            },
        };
        match next {
            None => return Ok(Gathered { total, ended: true }),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed");
                return Err(e);
            }
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                total += data.len();
                pieces.push(data);
                if pieces.len() >= MAX_WRITE_PIECES || total >= MAX_WRITE_BYTES {
                    return Ok(Gathered {
                        total,
                        ended: false,
                    });
                }
            }
        }
    }
}

/// Whether a `sendfile` error means this file (or its file system) cannot be sent that way,
/// rather than a failed connection: `EINVAL` (no page-cache reads for it), `ENOSYS`,
/// `EOPNOTSUPP`.
fn refused(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
    )
}

/// Writes every byte of `bufs`.
async fn write_all_vectored<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        // One piece (a bodiless answer's head, or the rest of a short write) is a plain write:
        // on a socket a `send`, which skips the `writev` path's iovec import and file checks.
        let n = if let [one] = bufs {
            io.write(one).await?
        } else {
            io.write_vectored(bufs).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// The `431` of a head past the connection's bounds.
fn head_too_large(opts: Options) -> ApiError {
    ApiError::HeadersTooLarge {
        detail: format!(
            "the request head is larger than {} bytes or has more than {} fields",
            opts.max_head_bytes, opts.max_headers
        ),
    }
}

fn malformed(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request("MALFORMED_REQUEST", detail)
}

/// Parses a request head at the start of `buf`; on success the head's bytes are taken out of
/// `buf`. `Ok(None)`: the head is not complete yet.
fn parse_head(buf: &mut BytesMut, opts: Options) -> Result<Option<Head>, ApiError> {
    let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
    let mut heap = Vec::new();
    let fields: &mut [httparse::Header<'_>] = if opts.max_headers > STACK_HEADERS {
        heap.resize(opts.max_headers, httparse::EMPTY_HEADER);
        &mut heap
    } else {
        &mut stack[..opts.max_headers.max(1)]
    };
    let mut parsed = httparse::Request::new(fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(head_too_large(opts)),
        Err(httparse::Error::Version) => {
            return Err(malformed(
                "only HTTP/1.0 and HTTP/1.1 are served on this connection",
            ));
        }
        Err(e) => return Err(malformed(format!("malformed request head: {e}"))),
    };
    if len > opts.max_head_bytes {
        return Err(head_too_large(opts));
    }
    // Positions of the head's pieces in `buf`, to slice them out of the frozen head.
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        if s.is_empty() {
            return 0..0;
        }
        let start = (s.as_ptr() as usize).wrapping_sub(base);
        start..start + s.len()
    };
    let method = parsed.method.unwrap_or_default();
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| malformed("the request method is not a valid token"))?;
    let path = range(parsed.path.unwrap_or_default().as_bytes());
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // The fields' positions, kept on the stack (a head has a few fields; a `Vec` here was one
    // allocation per request), to be sliced out of the frozen head once `parsed` lets go of it.
    let count = parsed.headers.len();
    let mut stack_ranges = [[0usize; 4]; STACK_RANGES];
    let mut heap_ranges = Vec::new();
    let ranges: &mut [[usize; 4]] = if count > STACK_RANGES {
        heap_ranges.resize(count, [0; 4]);
        &mut heap_ranges
    } else {
        &mut stack_ranges[..count]
    };
    for (slot, h) in ranges.iter_mut().zip(parsed.headers.iter()) {
        let (name, value) = (range(h.name.as_bytes()), range(h.value));
        *slot = [name.start, name.end, value.start, value.end];
    }
    let frozen = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(frozen.slice(path))
        .map_err(|e| malformed(format!("invalid request target: {e}")))?;
    let mut headers = HeaderMap::with_capacity(count);
    for &[name_start, name_end, value_start, value_end] in ranges.iter() {
        let name = &frozen[name_start..name_end];
        let name = HeaderName::from_bytes(name).map_err(|_| {
            malformed(format!(
                "invalid header name {:?}",
                String::from_utf8_lossy(name)
            ))
        })?;
        let value = HeaderValue::from_maybe_shared(frozen.slice(value_start..value_end))
            .map_err(|_| malformed(format!("invalid value of header {name}")))?;
        headers.append(name, value);
    }
    if version == Version::HTTP_10 && headers.contains_key(header::TRANSFER_ENCODING) {
        // RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
        return Err(malformed(
            "an HTTP/1.0 request may not carry Transfer-Encoding",
        ));
    }
    let framing = body_framing(&headers)?;
    let connection = headers.get_all(header::CONNECTION);
    let keep_alive = if version == Version::HTTP_10 {
        connection
            .iter()
            .any(|v| has_token(v.as_bytes(), b"keep-alive"))
    } else {
        !connection.iter().any(|v| has_token(v.as_bytes(), b"close"))
    };
    let expect_continue = version == Version::HTTP_11
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Ok(Some(Head {
        req,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// The request body's framing from its headers (RFC 9112 section 6.3), refusing every
/// ambiguous case.
fn body_framing(headers: &HeaderMap) -> Result<Framing, ApiError> {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter().peekable();
    if codings.peek().is_some() {
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(malformed(
                "a request may not carry both Transfer-Encoding and Content-Length",
            ));
        }
        let last = codings
            .last()
            .and_then(|v| v.as_bytes().rsplit(|b| *b == b',').next())
            .map(<[u8]>::trim_ascii);
        return if last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")) {
            Ok(Framing::Chunked)
        } else {
            Err(malformed(
                "a request's Transfer-Encoding must end with chunked",
            ))
        };
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let n = parse_decimal(part.trim_ascii())
                .ok_or_else(|| malformed("Content-Length is not a number"))?;
            if length.is_some_and(|l| l != n) {
                return Err(malformed("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        None | Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

/// A decimal without sign or spaces that fits a `u64`.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// Whether a comma-separated header value holds `token` (ASCII case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Writes the status line and fields of a response into `w`.
///
/// The framing fields are ours: the handler's `Connection`, `Transfer-Encoding` and
/// `Content-Length` are dropped and `out` written instead (`head_length` for a `HEAD` answer),
/// so a response never carries two lengths or a length beside chunked coding, and a 1xx, 204
/// or 304 carries none (RFC 9110 section 8.6; axum adds one from the body's size).
fn encode_head(
    w: &mut Vec<u8>,
    parts: &http::response::Parts,
    out: Out,
    head_length: Option<u64>,
    keep_alive: bool,
    http10: bool,
) {
    w.extend_from_slice(b"HTTP/1.1 ");
    w.extend_from_slice(parts.status.as_str().as_bytes());
    w.push(b' ');
    w.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    w.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::CONTENT_LENGTH
        {
            continue;
        }
        w.extend_from_slice(name.as_str().as_bytes());
        w.extend_from_slice(b": ");
        w.extend_from_slice(value.as_bytes());
        w.extend_from_slice(b"\r\n");
    }
    let length = match out {
        Out::Length(n) => Some(n),
        Out::None => head_length,
        Out::Chunked | Out::UntilClose => None,
    };
    if let Some(n) = length {
        w.extend_from_slice(b"content-length: ");
        let mut digits = [0u8; 20];
        let len = encode_decimal(&mut digits, n);
        w.extend_from_slice(&digits[..len]);
        w.extend_from_slice(b"\r\n");
    }
    if matches!(out, Out::Chunked) {
        w.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep_alive {
        w.extend_from_slice(b"connection: close\r\n");
    } else if http10 {
        w.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        w.extend_from_slice(b"date: ");
        with_date(|d| w.extend_from_slice(d));
        w.extend_from_slice(b"\r\n");
    }
    w.extend_from_slice(b"\r\n");
}

/// `n` in decimal at the start of `out`; returns its length.
fn encode_decimal(out: &mut [u8; 20], mut n: u64) -> usize {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = tmp.len() - i;
    out[..len].copy_from_slice(&tmp[i..]);
    len
}

/// A chunk-size line (`<hex>\r\n`) at the start of `out`; returns its length.
fn encode_chunk_size(out: &mut [u8; 20], n: usize) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = ((usize::BITS - n.leading_zeros()).div_ceil(4)).max(1) as usize;
    for i in 0..digits {
        out[digits - 1 - i] = HEX[(n >> (4 * i)) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

/// Calls `f` with the current `Date` value (IMF-fixdate), formatted once per second per thread.
fn with_date(f: impl FnOnce(&[u8])) {
    use std::cell::RefCell;
    thread_local! {
        static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                cached.1.copy_from_slice(text.as_bytes());
                cached.0 = secs;
            }
        }
        f(&cached.1);
    });
}

/// A request body that arrives after its head, read by [`Pump`] while the service runs.
struct StreamedBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    /// Bytes still to come, when the length is known.
    remaining: Option<u64>,
    /// Set by the pump once the body was read to its end: a channel closed before that is a
    /// truncated body, not its end.
    complete: Arc<AtomicBool>,
    /// Told on the first read (`Expect: 100-continue`, see [`Pump`]).
    demand: Option<Arc<Notify>>,
    /// An error was returned: the body ends.
    failed: bool,
}

impl http_body::Body for StreamedBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        if let Some(demand) = self.demand.take() {
            demand.notify_one();
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => {
                if let Some(left) = self.remaining.as_mut() {
                    *left = left.saturating_sub(data.len() as u64);
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => {
                self.failed = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) if self.complete.load(Ordering::Acquire) => Poll::Ready(None),
            Poll::Ready(None) => {
                self.failed = true;
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the request body ended before its end was read",
                ))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self.remaining {
            Some(n) => http_body::SizeHint::with_exact(n),
            None => http_body::SizeHint::default(),
        }
    }
}

/// Reads a request body off the connection into a [`StreamedBody`].
struct Pump {
    decoder: Decoder,
    tx: Option<mpsc::Sender<io::Result<Bytes>>>,
    /// The body was read to its end.
    done: bool,
    /// Shared with the body: set with `done`, before the sender is dropped.
    complete: Arc<AtomicBool>,
    /// `Expect: 100-continue`: told when the body is first read; the interim answer goes out
    /// before the first read from the connection.
    demand: Option<Arc<Notify>>,
    /// Bytes of the interim answer written so far.
    continue_sent: usize,
}

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Where the body's framing is.
enum Decoder {
    Length(u64),
    Chunked(ChunkState),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// Reading trailer lines; this many trailer bytes so far.
    Trailers(usize),
}

/// One step of decoding.
enum Decoded {
    Data(Bytes),
    End,
    NeedMore,
}

impl Pump {
    fn new(
        framing: Framing,
        tx: mpsc::Sender<io::Result<Bytes>>,
        complete: Arc<AtomicBool>,
        demand: Option<Arc<Notify>>,
    ) -> Self {
        let decoder = match framing {
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(ChunkState::Size),
            Framing::Empty => Decoder::Length(0),
        };
        Pump {
            decoder,
            tx: Some(tx),
            done: false,
            complete,
            demand,
            continue_sent: 0,
        }
    }

    /// Writes what is left of an interim answer the pump started but a response overtook.
    async fn finish_continue<I: AsyncWrite + Unpin>(&mut self, io: &mut I) -> io::Result<()> {
        if self.continue_sent == 0 {
            return Ok(());
        }
        self.write_continue(io).await
    }

    /// Writes the interim answer from wherever it stands (cancel-safe: progress is kept in
    /// `continue_sent`).
    async fn write_continue<I: AsyncWrite + Unpin>(&mut self, io: &mut I) -> io::Result<()> {
        while self.continue_sent < CONTINUE.len() {
            let n = io.write(&CONTINUE[self.continue_sent..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.continue_sent += n;
        }
        io.flush().await
    }

    /// Whether [`step`](Self::step) has work: the body is unfinished and someone reads it.
    fn active(&self) -> bool {
        self.tx.is_some()
    }

    /// Whether the whole body was read off the connection.
    fn complete(&self) -> bool {
        self.done
    }

    /// Hands the next piece of the body to the reader, reading from `io` as needed.
    /// Cancel-safe: bytes read stay in `buf` until a piece is handed over.
    async fn step<I: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut I, buf: &mut BytesMut) {
        if let Some(demand) = self.demand.as_ref() {
            if self.continue_sent == 0 {
                demand.notified().await;
            }
            if let Err(e) = self.write_continue(io).await {
                if let Some(tx) = self.tx.take() {
                    let _ = tx.try_send(Err(e));
                }
                return;
            }
            self.demand = None;
        }
        let Some(tx) = self.tx.as_ref() else {
            return;
        };
        let Ok(permit) = tx.reserve().await else {
            // The reader dropped the body.
            self.tx = None;
            return;
        };
        loop {
            match decode(&mut self.decoder, &mut self.done, buf) {
                Ok(Decoded::Data(data)) => {
                    if self.done {
                        // Before the sender goes: the reader must see the end as complete.
                        self.complete.store(true, Ordering::Release);
                    }
                    permit.send(Ok(data));
                    if self.done {
                        self.tx = None;
                    }
                    return;
                }
                Ok(Decoded::End) => {
                    drop(permit);
                    self.complete.store(true, Ordering::Release);
                    self.tx = None;
                    return;
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => {
                    permit.send(Err(e));
                    self.tx = None;
                    return;
                }
            }
            let want = match self.decoder {
                Decoder::Length(n) => usize::try_from(n)
                    .unwrap_or(usize::MAX)
                    .min(BODY_READ_CHUNK),
                Decoder::Chunked(_) => BODY_READ_CHUNK,
            };
            buf.reserve(want.max(READ_CHUNK));
            match io.read_buf(buf).await {
                Ok(0) => {
                    permit.send(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the client closed before the end of the request body",
                    )));
                    self.tx = None;
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    permit.send(Err(e));
                    self.tx = None;
                    return;
                }
            }
        }
    }
}

/// Takes the next piece of a body out of `buf`; sets `done` once the body's end is read.
fn decode(decoder: &mut Decoder, done: &mut bool, buf: &mut BytesMut) -> io::Result<Decoded> {
    match decoder {
        Decoder::Length(left) => {
            if *left == 0 {
                *done = true;
                return Ok(Decoded::End);
            }
            if buf.is_empty() {
                return Ok(Decoded::NeedMore);
            }
            let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
            *left -= take as u64;
            if *left == 0 {
                *done = true;
            }
            Ok(Decoded::Data(buf.split_to(take).freeze()))
        }
        Decoder::Chunked(state) => {
            let step = decode_chunked(state, buf)?;
            if matches!(step, Decoded::End) {
                *done = true;
            }
            Ok(step)
        }
    }
}

fn bad_chunk(detail: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed chunked body: {detail}"),
    )
}

/// Decodes chunked coding (RFC 9112 section 7.1) from the front of `buf`.
fn decode_chunked(state: &mut ChunkState, buf: &mut BytesMut) -> io::Result<Decoded> {
    loop {
        match *state {
            ChunkState::Size => {
                let Some(end) = find_crlf(buf) else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(bad_chunk("chunk-size line too long"));
                    }
                    return Ok(Decoded::NeedMore);
                };
                if end > MAX_CHUNK_LINE {
                    return Err(bad_chunk("chunk-size line too long"));
                }
                let size = chunk_size(&buf[..end])?;
                let _ = buf.split_to(end + 2);
                *state = if size == 0 {
                    ChunkState::Trailers(0)
                } else {
                    ChunkState::Data(size)
                };
            }
            ChunkState::Data(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let left = left - take as u64;
                *state = if left == 0 {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data(left)
                };
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            ChunkState::DataEnd => {
                if buf.len() < 2 {
                    return Ok(Decoded::NeedMore);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(bad_chunk("chunk data not followed by CRLF"));
                }
                let _ = buf.split_to(2);
                *state = ChunkState::Size;
            }
            ChunkState::Trailers(seen) => {
                let Some(end) = find_crlf(buf) else {
                    if seen + buf.len() > MAX_TRAILER_BYTES {
                        return Err(bad_chunk("trailers too large"));
                    }
                    return Ok(Decoded::NeedMore);
                };
                if end > 0 && !is_trailer_field(&buf[..end]) {
                    return Err(bad_chunk("malformed trailer field"));
                }
                let _ = buf.split_to(end + 2);
                if end == 0 {
                    return Ok(Decoded::End);
                }
                if seen + end + 2 > MAX_TRAILER_BYTES {
                    return Err(bad_chunk("trailers too large"));
                }
                *state = ChunkState::Trailers(seen + end + 2);
            }
        }
    }
}

/// The size of a chunk-size line (without its CRLF), strictly: hex digits, then optional
/// spaces or tabs and `;` extensions free of control characters (RFC 9112 section 7.1.1). No
/// leading whitespace and no bare CR or LF, which a proxy in front could read as a line end of
/// its own.
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(bad_chunk("invalid chunk size"));
    }
    let rest = &line[digits..];
    let ext = rest.trim_ascii_start();
    if !(ext.is_empty() || ext.starts_with(b";"))
        || rest[..rest.len() - ext.len()]
            .iter()
            .any(|b| !matches!(b, b' ' | b'\t'))
        || ext.iter().any(|b| b.is_ascii_control() && *b != b'\t')
    {
        return Err(bad_chunk("invalid chunk extension"));
    }
    Ok(line[..digits].iter().fold(0u64, |size, d| {
        // Every byte here is a hex digit (`is_ascii_hexdigit` above).
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        (size << 4) | u64::from(v)
    }))
}

/// Whether a trailer line (without its CRLF) is a well-formed field: a token name, a colon,
/// and a value without control characters other than tabs.
fn is_trailer_field(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|b| *b == b':') else {
        return false;
    };
    colon > 0
        && line[..colon]
            .iter()
            .all(|b| b.is_ascii_graphic() && !b"\"(),/:;<=>?@[\\]{}".contains(b))
        && line[colon + 1..]
            .iter()
            .all(|b| !b.is_ascii_control() || *b == b'\t')
}

/// Position of the first CRLF in `buf`.
fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    impl SendFile for DuplexStream {}

    const OPTS: Options = Options {
        header_read_timeout: Duration::from_secs(5),
        max_head_bytes: 4096,
        max_headers: 100,
    };

    /// The test service: `/echo` answers the request body; `/ignore` answers without reading
    /// it; `/stream` answers "ab" then "cd" as a body of unknown size; anything else 200 "ok".
    fn service(req: Request<Body>) -> ServiceFuture {
        Box::pin(async move {
            let path = req.uri().path().to_owned();
            let res = match path.as_str() {
                "/echo" => {
                    let body = req.into_body().collect().await;
                    match body {
                        Ok(b) => Response::new(Body::from(b.to_bytes())),
                        Err(_) => StatusCode::BAD_REQUEST.into_response(),
                    }
                }
                "/ignore" => Response::new(Body::from("ignored")),
                "/nocontent" => {
                    let mut res = StatusCode::NO_CONTENT.into_response();
                    res.headers_mut()
                        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                    res
                }
                "/stream" => {
                    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(2);
                    tokio::spawn(async move {
                        for part in ["ab", "cd"] {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            let _ = tx.send(Ok(Bytes::from_static(part.as_bytes()))).await;
                        }
                    });
                    Response::new(Body::new(StreamedBody {
                        rx,
                        remaining: None,
                        complete: Arc::new(AtomicBool::new(true)),
                        demand: None,
                        failed: false,
                    }))
                }
                _ => Response::new(Body::from("ok")),
            };
            Ok(res)
        })
    }

    fn connect(opts: Options) -> (DuplexStream, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move {
            let token = ShutdownToken::new();
            serve(server, opts, &token, service).await;
        });
        (client, task)
    }

    /// Everything the server sends until it closes the connection.
    async fn until_close(client: &mut DuplexStream) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut out))
            .await
            .expect("the server closed the connection")
            .expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Reads until `needle` has arrived.
    async fn until(client: &mut DuplexStream, needle: &str) -> String {
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        tokio::time::timeout(Duration::from_secs(5), async {
            while !String::from_utf8_lossy(&out).contains(needle) {
                let n = client.read(&mut chunk).await.expect("read");
                assert!(
                    n > 0,
                    "closed before {needle:?}: {}",
                    String::from_utf8_lossy(&out)
                );
                out.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("in time");
        String::from_utf8(out).expect("utf-8")
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let (mut c, _task) = connect(OPTS);
        c.write_all(
            b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nfirstGET /x HTTP/1.1\r\nhost: x\r\n\r\nPOST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nconnection: close\r\n\r\nend",
        )
        .await
        .expect("write");
        let out = until_close(&mut c).await;
        let bodies: Vec<&str> = out
            .split("\r\n\r\n")
            .skip(1)
            .map(|s| &s[..s.find("HTTP/").unwrap_or(s.len())])
            .collect();
        assert_eq!(bodies, ["first", "ok", "end"], "{out}");
        assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{out}");
        assert!(
            out.contains("content-length: 5\r\n") && out.contains("date: "),
            "{out}"
        );
        assert!(out.matches("connection: close\r\n").count() == 1, "{out}");
    }

    #[tokio::test]
    async fn a_chunked_body_is_decoded_with_extensions_and_trailers() {
        let (mut c, _task) = connect(OPTS);
        c.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.write_all(
            b"6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nGET /x HTTP/1.1\r\nconnection: close\r\n\r\n",
        )
        .await
        .expect("write");
        let out = until_close(&mut c).await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(
            out.contains("content-length: 11\r\n") && out.contains("\r\n\r\nhello world"),
            "{out}"
        );
        assert!(
            out.ends_with("\r\n\r\nok"),
            "the pipelined request after the trailers: {out}"
        );
    }

    #[tokio::test]
    async fn ambiguous_or_malformed_framing_is_a_400_problem_and_the_connection_closes() {
        for head in [
            "POST /echo HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\nabc",
            "POST /echo HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
            "POST /echo HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            "POST /echo HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n",
            "GET /x HTTP/1.1\r\nbad header\r\n\r\n",
            "GET /x HTTP/2.0\r\n\r\n",
            "POST /echo HTTP/1.0\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n0\r\n\r\n",
        ] {
            let (mut c, _task) = connect(OPTS);
            c.write_all(head.as_bytes()).await.expect("write");
            let out = until_close(&mut c).await;
            assert!(
                out.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{head:?}: {out}"
            );
            assert!(
                out.contains("application/problem+json") && out.contains("MALFORMED_REQUEST"),
                "{out}"
            );
            assert!(out.contains("connection: close\r\n"), "{out}");
        }
    }

    #[tokio::test]
    async fn a_malformed_chunk_fails_the_body_read_and_closes() {
        let (mut c, _task) = connect(OPTS);
        c.write_all(
            b"POST /echo HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        )
        .await
        .expect("write");
        let out = until_close(&mut c).await;
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
        assert!(out.contains("connection: close\r\n"), "{out}");
    }

    #[tokio::test]
    async fn expect_100_continue_gets_the_interim_response_before_the_body_is_sent() {
        let (mut c, _task) = connect(OPTS);
        c.write_all(b"POST /echo HTTP/1.1\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
            .await
            .expect("write");
        let interim = until(&mut c, "\r\n\r\n").await;
        assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
        c.write_all(b"body").await.expect("write");
        let out = until(&mut c, "\r\n\r\nbody").await;
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    }

    #[tokio::test]
    async fn no_interim_response_when_the_handler_answers_without_reading_the_body() {
        let (mut c, _task) = connect(OPTS);
        c.write_all(b"POST /ignore HTTP/1.1\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
            .await
            .expect("write");
        let out = until(&mut c, "ignored").await;
        assert!(
            out.starts_with("HTTP/1.1 200 OK\r\n"),
            "no 100 Continue first: {out}"
        );
        assert!(out.contains("connection: close\r\n"), "{out}");
    }

    #[tokio::test]
    async fn http_1_0_closes_unless_kept_alive_and_gets_no_chunked_coding() {
        let (mut c, _task) = connect(OPTS);
        c.write_all(b"GET /x HTTP/1.0\r\n\r\n")
            .await
            .expect("write");
        let out = until_close(&mut c).await;
        assert!(
            out.contains("connection: close\r\n") && out.ends_with("ok"),
            "{out}"
        );

        let (mut c, _task) = connect(OPTS);
        c.write_all(b"GET /x HTTP/1.0\r\nconnection: keep-alive\r\n\r\nGET /stream HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .await
            .expect("write");
        let out = until_close(&mut c).await;
        assert!(out.contains("connection: keep-alive\r\n"), "{out}");
        assert!(!out.contains("transfer-encoding"), "{out}");
        assert!(
            out.ends_with("\r\n\r\nabcd"),
            "a body of unknown size ends with the connection: {out}"
        );
    }

    #[tokio::test]
    async fn a_body_of_unknown_size_is_chunked_and_head_has_no_body() {
        let (mut c, _task) = connect(OPTS);
        c.write_all(b"GET /stream HTTP/1.1\r\n\r\nHEAD /x HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let out = until_close(&mut c).await;
        assert!(out.contains("transfer-encoding: chunked\r\n"), "{out}");
        let body = &out[out.find("\r\n\r\n").expect("head") + 4..];
        assert!(
            body.starts_with("2\r\nab\r\n2\r\ncd\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n"),
            "{out}"
        );
        assert!(
            out.ends_with("\r\n\r\n"),
            "HEAD answers without a body: {out}"
        );
    }

    #[tokio::test]
    async fn a_204_carries_no_content_length() {
        let (mut c, _task) = connect(OPTS);
        c.write_all(b"POST /nocontent HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
        let out = until_close(&mut c).await;
        assert!(out.starts_with("HTTP/1.1 204 No Content\r\n"), "{out}");
        assert!(!out.contains("content-length"), "{out}");
    }

    #[tokio::test]
    async fn an_unread_body_closes_the_connection_after_the_response() {
        let (mut c, _task) = connect(OPTS);
        c.write_all(b"POST /ignore HTTP/1.1\r\ncontent-length: 100\r\n\r\npartial")
            .await
            .expect("write");
        let out = until_close(&mut c).await;
        assert!(
            out.starts_with("HTTP/1.1 200 OK\r\n") && out.contains("connection: close\r\n"),
            "{out}"
        );
        assert!(out.ends_with("ignored"), "{out}");
    }

    #[tokio::test]
    async fn a_head_past_the_bounds_is_431() {
        let (mut c, _task) = connect(OPTS);
        let big = format!("GET /x HTTP/1.1\r\nx-big: {}\r\n\r\n", "v".repeat(5000));
        c.write_all(big.as_bytes()).await.expect("write");
        let out = until_close(&mut c).await;
        assert!(
            out.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{out}"
        );
        assert!(out.contains("HEADERS_TOO_LARGE"), "{out}");

        let opts = Options {
            max_headers: 3,
            ..OPTS
        };
        let (mut c, _task) = connect(opts);
        c.write_all(b"GET /x HTTP/1.1\r\na: 1\r\nb: 2\r\nc: 3\r\nd: 4\r\n\r\n")
            .await
            .expect("write");
        let out = until_close(&mut c).await;
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    }

    #[tokio::test]
    async fn a_head_that_does_not_arrive_in_time_closes_the_connection() {
        let opts = Options {
            header_read_timeout: Duration::from_millis(100),
            ..OPTS
        };
        let (mut c, task) = connect(opts);
        c.write_all(b"GET /x HTTP/1.1\r\nhost")
            .await
            .expect("write");
        let out = until_close(&mut c).await;
        assert_eq!(out, "");
        task.await.expect("the connection task ended");
    }

    /// Request-like byte soup: fragments of valid requests mixed with random bytes.
    fn hostile_input() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let fragment = prop_oneof![
            Just(b"POST /echo HTTP/1.1\r\n".to_vec()),
            Just(b"GET /stream HTTP/1.1\r\n".to_vec()),
            Just(b"HEAD /x HTTP/1.0\r\n".to_vec()),
            Just(b"transfer-encoding: chunked\r\n".to_vec()),
            Just(b"content-length: 3\r\n".to_vec()),
            Just(b"expect: 100-continue\r\n".to_vec()),
            Just(b"connection: close\r\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"5\r\nhello\r\n0\r\n\r\n".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..64),
        ];
        proptest::collection::vec(fragment, 0..24).prop_map(|parts| parts.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever a client sends, the connection answers well-formed responses or closes; it
        /// never panics or hangs.
        #[test]
        fn hostile_input_gets_answers_or_a_close_never_a_panic_or_a_hang(input in hostile_input()) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let opts = Options { header_read_timeout: Duration::from_millis(200), ..OPTS };
                let (mut c, task) = connect(opts);
                c.write_all(&input).await.expect("write");
                c.shutdown().await.expect("half-close");
                let out = until_close(&mut c).await;
                tokio::time::timeout(Duration::from_secs(5), task)
                    .await
                    .expect("the connection ended")
                    .expect("no panic");
                assert!(out.is_empty() || out.starts_with("HTTP/1.1 "), "{out:?}");
            });
        }
    }

    #[test]
    fn chunked_decoding_refuses_bad_sizes_and_missing_crlf() {
        for input in [
            &b"2;\nxx\r\n"[..],
            b"\n5\r\n",
            b"  5\r\n",
            b"5 x\r\n",
            b"5;a\rb\r\n",
            b"0\r\nX: a\nGET / HTTP/1.1\r\n\r\n",
            b"0\r\nno-colon\r\n\r\n",
            b"0\r\n: empty name\r\n\r\n",
            b"zz\r\n",
            b"-1\r\n",
            b"11111111111111111\r\n",
            b"3\r\nabcX\r\n",
            b"\r\n",
        ] {
            let mut state = ChunkState::Size;
            let mut buf = BytesMut::from(input);
            let mut failed = false;
            for _ in 0..4 {
                match decode_chunked(&mut state, &mut buf) {
                    Err(_) => {
                        failed = true;
                        break;
                    }
                    Ok(Decoded::NeedMore | Decoded::End) => break,
                    Ok(Decoded::Data(_)) => {}
                }
            }
            assert!(failed, "{:?}", String::from_utf8_lossy(input));
        }
        let mut state = ChunkState::Size;
        let mut buf =
            BytesMut::from(&b"A \t;name=value;x\r\n0123456789\r\n0\r\nx-t: 1\r\n\r\n"[..]);
        assert!(
            matches!(decode_chunked(&mut state, &mut buf), Ok(Decoded::Data(d)) if d.as_ref() == b"0123456789")
        );
        assert!(matches!(
            decode_chunked(&mut state, &mut buf),
            Ok(Decoded::End)
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn numbers_are_encoded_for_the_wire() {
        let mut out = [0u8; 20];
        let n = encode_decimal(&mut out, 0);
        assert_eq!(&out[..n], b"0");
        let n = encode_decimal(&mut out, u64::MAX);
        assert_eq!(&out[..n], u64::MAX.to_string().as_bytes());
        let n = encode_chunk_size(&mut out, 0x1a2f);
        assert_eq!(&out[..n], b"1a2f\r\n");
        let n = encode_chunk_size(&mut out, 1);
        assert_eq!(&out[..n], b"1\r\n");
        assert_eq!(parse_decimal(b"18446744073709551615"), None);
        assert_eq!(parse_decimal(b"1234"), Some(1234));
        assert_eq!(parse_decimal(b"12a"), None);
    }

    /// A file of `len` bytes (a known pattern) and its contents.
    fn pattern_file(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        use std::io::Write;
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(&data).expect("write");
        (f, data)
    }

    /// The answer of a service that sends `pieces` as [`FilePieces`] with an empty body,
    /// declaring `declared` bytes: only the connection's file path can produce the body.
    fn answer_with_files(pieces: &Arc<[ReadPiece]>, declared: u64) -> ServiceFuture {
        let pieces = Arc::clone(pieces);
        Box::pin(async move {
            let mut res = Response::new(Body::empty());
            res.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(declared));
            res.extensions_mut().insert(FilePieces(pieces));
            Ok(res)
        })
    }

    /// Serves one accepted TCP connection with [`answer_with_files`]; records whether each
    /// request was marked [`SendsFiles`].
    async fn tcp_server(
        pieces: Arc<[ReadPiece]>,
        declared: u64,
        marked: Arc<AtomicBool>,
    ) -> (tokio::net::TcpStream, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let token = ShutdownToken::new();
            serve(tcp, OPTS, &token, move |req: Request<Body>| {
                marked.store(
                    req.extensions().get::<SendsFiles>().is_some(),
                    Ordering::SeqCst,
                );
                answer_with_files(&pieces, declared)
            })
            .await;
        });
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        (client, task)
    }

    /// Reads one response with a `Content-Length` body from `client`; returns head and body.
    async fn read_response<C: AsyncRead + Unpin>(client: &mut C) -> (String, Vec<u8>) {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = client.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "closed before the head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).expect("head");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("content-length")
            .trim()
            .parse()
            .expect("length");
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let mut chunk = vec![0u8; 64 * 1024];
            let n = client.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed after {} of {len} body bytes", body.len());
            body.extend_from_slice(&chunk[..n]);
        }
        (head, body)
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn runs_of_files_go_out_with_sendfile_on_tcp() {
        let (file, data) = pattern_file(3 * 1024 * 1024);
        let shared = Arc::new(file.reopen().expect("reopen"));
        let region =
            |pos: u64, len: u64| ReadPiece::File(FileRegion::new(Arc::clone(&shared), pos, len));
        // Bytes before, between and after two runs of the file; the body itself is empty, so
        // only the sendfile path can produce these bytes.
        let pieces: Arc<[ReadPiece]> = vec![
            ReadPiece::Bytes(Bytes::from_static(b"<")),
            region(10, 2 * 1024 * 1024),
            ReadPiece::Bytes(Bytes::from_static(b"|")),
            ReadPiece::Bytes(Bytes::from_static(b"|")),
            region(5, 100_000),
            ReadPiece::Bytes(Bytes::from_static(b">")),
        ]
        .into();
        let mut expected = b"<".to_vec();
        expected.extend_from_slice(&data[10..10 + 2 * 1024 * 1024]);
        expected.extend_from_slice(b"||");
        expected.extend_from_slice(&data[5..100_005]);
        expected.extend_from_slice(b">");
        let marked = Arc::new(AtomicBool::new(false));
        let (mut client, task) =
            tcp_server(pieces, expected.len() as u64, Arc::clone(&marked)).await;
        for _ in 0..2 {
            client
                .write_all(b"GET /s HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .expect("send");
            let (head, body) = read_response(&mut client).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(body == expected, "the body is the pieces in order");
            assert!(marked.load(Ordering::SeqCst), "a TCP request is marked");
        }
        drop(client);
        task.await.expect("server");
    }

    /// Answers one GET over TCP with a region of a 1,024-byte file declared `declared` bytes
    /// long; returns everything the client got until the server closed.
    #[cfg(target_os = "linux")]
    async fn one_region_until_close(pos: u64, len: u64, declared: u64) -> Vec<u8> {
        let (file, _) = pattern_file(1024);
        let shared = Arc::new(file.reopen().expect("reopen"));
        let pieces: Arc<[ReadPiece]> =
            vec![ReadPiece::File(FileRegion::new(shared, pos, len))].into();
        let (mut client, task) =
            tcp_server(pieces, declared, Arc::new(AtomicBool::new(false))).await;
        client
            .write_all(b"GET /s HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("send");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        drop(client);
        task.await.expect("server");
        got
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn file_pieces_that_do_not_add_up_to_the_length_close_the_connection() {
        let got = one_region_until_close(0, 1000, 999).await;
        assert!(
            got.is_empty(),
            "nothing is sent: {:?}",
            String::from_utf8_lossy(&got)
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_region_past_the_end_of_its_file_cuts_the_response_short() {
        let got = one_region_until_close(512, 4096, 4096).await;
        let text = String::from_utf8_lossy(&got);
        let head_end = text.find("\r\n\r\n").expect("head sent") + 4;
        assert!(text.contains("content-length: 4096"), "{text}");
        assert_eq!(
            got.len() - head_end,
            512,
            "what the file has, then the close"
        );
    }

    #[tokio::test]
    async fn requests_on_connections_without_sendfile_are_not_marked() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let marked = Arc::new(AtomicBool::new(true));
        let seen = Arc::clone(&marked);
        let task = tokio::spawn(async move {
            let token = ShutdownToken::new();
            serve(server, OPTS, &token, move |req: Request<Body>| {
                seen.store(
                    req.extensions().get::<SendsFiles>().is_some(),
                    Ordering::SeqCst,
                );
                service(req)
            })
            .await;
        });
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("send");
        let answer = until_close(&mut client).await;
        assert!(answer.ends_with("ok"), "{answer}");
        assert!(!marked.load(Ordering::SeqCst));
        task.await.expect("server");
    }

    /// A connection that claims `sendfile` but whose file system refuses it.
    struct Refusing(DuplexStream);

    impl AsyncRead for Refusing {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Refusing {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl SendFile for Refusing {
        fn can_send_file(&self) -> bool {
            true
        }

        fn poll_send_file(
            &mut self,
            _: &mut Context<'_>,
            _: &std::fs::File,
            _: u64,
            _: usize,
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::Error::from_raw_os_error(22))) // EINVAL
        }
    }

    #[tokio::test]
    async fn runs_of_files_are_read_and_written_where_sendfile_is_refused() {
        let (file, data) = pattern_file(3 * 1024 * 1024 + 17);
        let shared = Arc::new(file.reopen().expect("reopen"));
        let len = data.len() as u64 - 5;
        let pieces: Arc<[ReadPiece]> = vec![
            ReadPiece::Bytes(Bytes::from_static(b"<")),
            ReadPiece::File(FileRegion::new(shared, 5, len)),
        ]
        .into();
        let mut expected = b"<".to_vec();
        expected.extend_from_slice(&data[5..]);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let declared = expected.len() as u64;
        let task = tokio::spawn(async move {
            let token = ShutdownToken::new();
            serve(
                Refusing(server),
                OPTS,
                &token,
                move |_req: Request<Body>| answer_with_files(&pieces, declared),
            )
            .await;
        });
        client
            .write_all(b"GET /s HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("send");
        let (head, body) = read_response(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(body == expected, "the body is whole");
        drop(client);
        task.await.expect("server");
    }
}
