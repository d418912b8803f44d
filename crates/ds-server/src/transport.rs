//! The accept loop: plain TCP or rustls, HTTP/1.1 (served by [`crate::h1`]) or HTTP/2 (chosen
//! by ALPN, served by hyper), and the graceful shutdown sequence.
//!
//! Shutdown, on the first SIGINT/SIGTERM (or the embedder's channel):
//!
//! 1. `/readyz` answers `503`; requests are still served for `server.shutdown_delay_secs`.
//! 2. The listener closes: new connections are refused.
//! 3. Long-polls answer at once and SSE responses end after their current event; every
//!    connection finishes its in-flight request and closes (HTTP/2 sends GOAWAY); an HTTP/1.1
//!    connection waiting for its next request closes at once.
//! 4. The loop waits for connections to close, at most `server.drain_timeout_secs`; a second
//!    signal stops waiting at once.
//!
//! Connection limits, so slow or hostile clients cannot pin the server:
//!
//! - At most `server.max_connections` connections are open at once, plain and TLS alike (a
//!   slot is taken before `accept`, so a TLS handshake holds one too). When all are taken the
//!   listener is not polled: new connections wait in the kernel's listen backlog and are
//!   accepted, in order, as slots free up.
//! - An HTTP/1.1 request head must arrive within `transport.connection.header_read_timeout_secs`
//!   of the connection starting to wait for it, so a client trickling header bytes, or idling
//!   between keep-alive requests, is cut off.
//! - A connection on which no byte moves either way for
//!   `transport.connection.idle_timeout_secs` is closed (a stalled upload, a client that stops
//!   reading, an idle HTTP/2 connection). Live reads stay above it: long-polls answer sooner
//!   and SSE sends keep-alive comments.
//! - A request head past the connection's hard bounds (more bytes than twice
//!   `limits.max_header_bytes` plus 16 KiB, or more fields than the larger of
//!   `limits.max_header_count` and 100, at most 8,192) gets `431` with a problem body and the
//!   connection closes; a head within them reaches the router, which answers `431` past the
//!   configured limits and keeps the connection.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tower::ServiceExt;

use crate::h1;
use crate::metrics::Metrics;
use crate::proxy::ConnectionInfo;
use crate::router::{ShutdownToken, StreamRoute};
use crate::tls::TlsReloader;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the serving loop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeOptions {
    /// Longest wait for connections to drain.
    pub(crate) drain_timeout: Duration,
    /// Time between `/readyz` turning `503` and the listener closing.
    pub(crate) shutdown_delay: Duration,
    /// Most connections open at once.
    pub(crate) max_connections: usize,
    /// Per-connection limits.
    pub(crate) conn: ConnLimits,
}

/// Limits applied to every connection (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    /// `transport.connection.header_read_timeout_secs`.
    pub(crate) header_read_timeout: Duration,
    /// `transport.connection.idle_timeout_secs`.
    pub(crate) idle_timeout: Duration,
    /// `limits.max_header_bytes`.
    pub(crate) max_header_bytes: usize,
    /// `limits.max_header_count`.
    pub(crate) max_header_count: usize,
}

/// The least hard bound on header fields (parsed on the stack; a larger limit moves the parse
/// to the heap for every request).
const MIN_HARD_MAX_HEADERS: usize = 100;
/// The most header fields a connection parses, whatever `limits.max_header_count` says (a
/// header map holds at most 32,768 entries, and the parse allocates room for all of them).
const MAX_HARD_MAX_HEADERS: usize = 8192;

impl ConnLimits {
    /// The hard bound on a request head in bytes (request line included): well above the
    /// router's check, so heads near the limit get the router's answer and keep the connection.
    fn hard_head_bytes(self) -> usize {
        self.max_header_bytes
            .saturating_mul(2)
            .saturating_add(16 * 1024)
    }
}

/// What starts (and, a second time, forces) shutdown.
pub(crate) enum Trigger {
    /// The embedder's channel (a dropped sender counts as a request).
    Channel(Option<oneshot::Receiver<()>>),
    /// SIGINT or SIGTERM.
    Signals,
}

impl Trigger {
    /// Resolves on the next shutdown request.
    async fn next(&mut self) {
        match self {
            Trigger::Channel(rx) => match rx.take() {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => std::future::pending().await,
            },
            Trigger::Signals => os_signal().await,
        }
    }
}

async fn os_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => {
                tokio::select! {
                    _ = int.recv() => tracing::info!("SIGINT received"),
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// What requests are served by: the stream route, and the router for everything else.
#[derive(Clone)]
pub(crate) struct Routes {
    pub(crate) router: Router,
    pub(crate) stream: StreamRoute,
}

impl Routes {
    /// The answer to `req`, which came on the connection `info`: through the stream route if
    /// it is a stream request, otherwise through the router (which finds `info` among the
    /// request's extensions, where embedders' handlers can read it too).
    fn call(&self, mut req: axum::extract::Request, info: ConnectionInfo) -> h1::ServiceFuture {
        if self.stream.owns(&req) {
            self.stream.call(req, Some(info))
        } else {
            req.extensions_mut().insert(info);
            Box::pin(self.router.clone().oneshot(req))
        }
    }
}

/// Per-connection context shared by the accept loop.
struct ConnCtx {
    routes: Routes,
    tls: Option<Arc<TlsReloader>>,
    metrics: Arc<Metrics>,
    token: ShutdownToken,
    /// One permit per open connection (`server.max_connections`).
    slots: Arc<Semaphore>,
    limits: ConnLimits,
}

impl ConnCtx {
    /// Serves one accepted connection on its own task.
    ///
    /// Plain and TLS connections are spawned as different futures: a task's allocation is the
    /// size of its largest state, and a plain connection should not carry the room of a TLS
    /// handshake for its whole life (it showed as 4 KiB per idle SSE subscriber).
    fn spawn(&self, tcp: TcpStream, peer: SocketAddr, slot: OwnedSemaphorePermit) {
        let guard = (self.metrics.connection(), slot);
        let routes = self.routes.clone();
        let token = self.token.clone();
        let limits = self.limits;
        let _ = tcp.set_nodelay(true);
        let active = Arc::new(AtomicBool::new(true));
        let tcp = Tracked {
            inner: tcp,
            active: Arc::clone(&active),
        };
        let Some(tls) = self.tls.clone() else {
            let info = ConnectionInfo {
                peer,
                tls: false,
                client_verified: false,
            };
            tokio::spawn(async move {
                let _guard = guard;
                let conn = Conn {
                    info,
                    h2: false,
                    active,
                    limits,
                };
                serve_io(tcp, conn, routes, token).await;
            });
            return;
        };
        let metrics = Arc::clone(&self.metrics);
        tokio::spawn(async move {
            let _guard = guard;
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        metrics.record_tls_handshake_failure();
                        tracing::info!(client.address = %peer, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        metrics.record_tls_handshake_failure();
                        tracing::info!(client.address = %peer, "TLS handshake timed out");
                        return;
                    }
                };
            let (_, session) = stream.get_ref();
            let h2 = session.alpn_protocol() == Some(b"h2".as_slice());
            let info = ConnectionInfo {
                peer,
                tls: true,
                client_verified: session.peer_certificates().is_some_and(|c| !c.is_empty()),
            };
            let conn = Conn {
                info,
                h2,
                active,
                limits,
            };
            // Boxed: the serving state is allocated once the handshake state is gone.
            Box::pin(serve_io(stream, conn, routes, token)).await;
        });
    }
}

/// Grace, after the drain starts, for an HTTP/2 connection that has not sent a single request
/// (a client that never sent its preface cannot be told to go away).
const SILENT_CONNECTION_GRACE: Duration = Duration::from_secs(1);

/// What [`serve_io`] knows about its connection.
struct Conn {
    info: ConnectionInfo,
    /// HTTP/2 was chosen by ALPN.
    h2: bool,
    /// Set by [`Tracked`] whenever bytes move; cleared by [`idle_watch`].
    active: Arc<AtomicBool>,
    limits: ConnLimits,
}

/// Serves one connection until it closes, goes idle (see [`idle_watch`]), or drains after
/// shutdown.
///
/// HTTP/1.1 is served by our own connection ([`crate::h1`]), HTTP/2 (chosen by ALPN) by
/// hyper's `http2` connection.
async fn serve_io<I>(io: I, conn: Conn, routes: Routes, token: ShutdownToken)
where
    I: AsyncRead + AsyncWrite + h1::SendFile + Unpin + Send + 'static,
{
    let Conn {
        info,
        h2,
        active,
        limits,
    } = conn;
    let served = async {
        if h2 {
            // Boxed: an HTTP/1.1 connection's task is not sized for hyper's HTTP/2 state.
            Box::pin(serve_h2(io, info, routes, limits, &token)).await;
        } else {
            let opts = h1::Options {
                header_read_timeout: limits.header_read_timeout,
                max_head_bytes: limits.hard_head_bytes(),
                max_headers: limits
                    .max_header_count
                    .clamp(MIN_HARD_MAX_HEADERS, MAX_HARD_MAX_HEADERS),
            };
            h1::serve(io, opts, &token, move |req| {
                // Boxed: the connection's future holds a pointer, not the request's state, so
                // an idle live-read connection does not carry it.
                routes.call(req, info)
            })
            .await;
        }
    };
    tokio::select! {
        () = served => {}
        () = idle_watch(&active, limits.idle_timeout) => {
            tracing::debug!(client.address = %info.peer, "closed an idle connection");
        }
    }
}

/// Serves an HTTP/2 connection with hyper; at shutdown it sends GOAWAY and finishes the
/// requests in flight (a connection that never sent a request is closed after a grace).
async fn serve_h2<I>(
    io: I,
    info: ConnectionInfo,
    routes: Routes,
    limits: ConnLimits,
    token: &ShutdownToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let served = Arc::new(AtomicBool::new(false));
    let svc = {
        let served = Arc::clone(&served);
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            served.store(true, Ordering::Relaxed);
            // Boxed: hyper keeps one allocation the size of this future per stream slot.
            routes.call(req.map(axum::body::Body::new), info)
        })
    };
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.hard_head_bytes()).unwrap_or(u32::MAX))
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut shutdown = token.on_live_reads_end();
    let mut going_away = false;
    let silent_cut = async {
        token.on_live_reads_end().await;
        tokio::time::sleep(SILENT_CONNECTION_GRACE).await;
        if served.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(silent_cut);
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(client.address = %info.peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = &mut shutdown, if !going_away => {
                going_away = true;
                conn.as_mut().graceful_shutdown();
            }
            () = &mut silent_cut => {
                tracing::debug!(client.address = %info.peer, "closed a connection that sent no request");
                return;
            }
        }
    }
}

/// Checks of `active` per idle timeout: a connection is closed after between one and
/// `1 + 1/IDLE_CHECKS` idle timeouts without a byte moving.
const IDLE_CHECKS: u32 = 4;

/// Resolves once no byte has moved on the connection for `idle` (give or take a quarter).
///
/// [`Tracked`] sets `active` on every read or write that moves bytes; this clears it every
/// quarter of `idle` and gives up after four quarters in a row found it clear. One relaxed
/// store per I/O call and one timer per connection, instead of a clock read per call.
async fn idle_watch(active: &AtomicBool, idle: Duration) {
    let tick = idle / IDLE_CHECKS;
    let mut quiet = 0;
    loop {
        tokio::time::sleep(tick).await;
        if active.swap(false, Ordering::Relaxed) {
            quiet = 0;
        } else {
            quiet += 1;
            if quiet >= IDLE_CHECKS {
                return;
            }
        }
    }
}

/// A socket that records, in `active`, that bytes moved (for [`idle_watch`]).
struct Tracked<T> {
    inner: T,
    active: Arc<AtomicBool>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.active.store(true, Ordering::Relaxed);
        }
        res
    }
}

impl<T> Tracked<T> {
    /// Passes on the result of a write, marking the connection active if bytes went out.
    fn wrote(&self, res: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.active.store(true, Ordering::Relaxed);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(res)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: h1::SendFile> h1::SendFile for Tracked<T> {
    fn can_send_file(&self) -> bool {
        self.inner.can_send_file()
    }

    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        pos: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let res = self.inner.poll_send_file(cx, file, pos, len);
        self.wrote(res)
    }
}

/// Accepts connections until `stop` resolves.
async fn accept_until(listener: &TcpListener, ctx: &ConnCtx, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        // A slot first: while every slot is taken the listener is not polled, and new
        // connections wait in the kernel's backlog.
        let slot = tokio::select! {
            () = &mut stop => return,
            slot = Arc::clone(&ctx.slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                // The semaphore is never closed; stop accepting if it ever is.
                Err(_) => return,
            },
        };
        tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => ctx.spawn(tcp, peer, slot),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves `routes` on `listener` until shutdown, then drains (see the module docs).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<TlsReloader>>,
    routes: Routes,
    metrics: Arc<Metrics>,
    token: ShutdownToken,
    opts: ServeOptions,
    mut trigger: Trigger,
) {
    let reload = tls.as_ref().map(|t| spawn_reload_on_sighup(Arc::clone(t)));
    let mut forced = false;
    // One permit per open connection: all permits back means every connection has closed.
    let max_open = u32::try_from(opts.max_connections.max(1)).unwrap_or(u32::MAX);
    let slots = Arc::new(Semaphore::new(max_open as usize));
    {
        let ctx = ConnCtx {
            routes,
            tls,
            metrics,
            token: token.clone(),
            slots: Arc::clone(&slots),
            limits: opts.conn,
        };
        accept_until(&listener, &ctx, trigger.next()).await;
        token.begin_drain();
        tracing::info!(
            delay_secs = opts.shutdown_delay.as_secs_f64(),
            "shutdown requested: /readyz answers 503"
        );
        if !opts.shutdown_delay.is_zero() {
            accept_until(&listener, &ctx, async {
                tokio::select! {
                    () = tokio::time::sleep(opts.shutdown_delay) => {}
                    () = trigger.next() => forced = true,
                }
            })
            .await;
        }
    }
    drop(listener);
    token.end_live_reads();
    if forced {
        tracing::warn!("second shutdown signal: exiting without draining");
    } else {
        tracing::info!(
            timeout_secs = opts.drain_timeout.as_secs_f64(),
            open = max_open as usize - slots.available_permits(),
            "listener closed; draining connections"
        );
        tokio::select! {
            _ = slots.acquire_many(max_open) => tracing::info!("all connections drained"),
            () = tokio::time::sleep(opts.drain_timeout) => {
                tracing::warn!("drain timeout reached; closing the remaining connections");
            }
            () = trigger.next() => tracing::warn!("second shutdown signal: exiting without waiting"),
        }
    }
    if let Some(task) = reload {
        task.abort();
    }
}

/// Reloads the TLS files on every SIGHUP; new connections use them, established ones keep
/// theirs.
fn spawn_reload_on_sighup(tls: Arc<TlsReloader>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                tracing::warn!("cannot listen for SIGHUP; certificate reload is off");
                return;
            };
            while hup.recv().await.is_some() {
                match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIGHUP: reload failed; keeping the previous certificates");
                    }
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tls;
        }
    })
}
