//! The accept loop: plain TCP or rustls, HTTP/1.1 or HTTP/2 (chosen by ALPN) served by
//! hyper-util, and the graceful shutdown sequence.
//!
//! Shutdown, on the first SIGINT/SIGTERM (or the embedder's channel):
//!
//! 1. `/readyz` answers `503`; requests are still served for `server.shutdown_delay_secs`.
//! 2. The listener closes: new connections are refused.
//! 3. Long-polls answer at once and SSE responses end after their current event; every
//!    connection is told to finish its in-flight requests and close (HTTP/2 sends GOAWAY).
//! 4. The loop waits for connections to close, at most `server.drain_timeout_secs`; a second
//!    signal stops waiting at once.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tower::ServiceExt;

use crate::metrics::Metrics;
use crate::proxy::ConnectionInfo;
use crate::router::ShutdownToken;
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

/// Per-connection context shared by the accept loop.
struct ConnCtx<'a> {
    router: Router,
    tls: Option<Arc<TlsReloader>>,
    metrics: Arc<Metrics>,
    graceful: &'a GracefulShutdown,
    token: ShutdownToken,
}

impl ConnCtx<'_> {
    /// Serves one accepted connection on its own task.
    ///
    /// Plain and TLS connections are spawned as different futures: a task's allocation is the
    /// size of its largest state, and a plain connection should not carry the room of a TLS
    /// handshake for its whole life (it showed as 4 KiB per idle SSE subscriber).
    fn spawn(&self, tcp: TcpStream, peer: SocketAddr) {
        let guard = self.metrics.connection();
        let router = self.router.clone();
        let watcher = self.graceful.watcher();
        let token = self.token.clone();
        let _ = tcp.set_nodelay(true);
        let Some(tls) = self.tls.clone() else {
            let info = ConnectionInfo {
                peer,
                tls: false,
                client_verified: false,
            };
            tokio::spawn(async move {
                let _guard = guard;
                serve_io(TokioIo::new(tcp), info, false, router, watcher, token).await;
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
            // Boxed: the serving state is allocated once the handshake state is gone.
            Box::pin(serve_io(
                TokioIo::new(stream),
                info,
                h2,
                router,
                watcher,
                token,
            ))
            .await;
        });
    }
}

/// Grace, after the drain starts, for a connection that has not sent a single request (an
/// HTTP/2 client that never sent its preface cannot be told to go away).
const SILENT_CONNECTION_GRACE: Duration = Duration::from_secs(1);

/// Serves one connection until it closes (or drains after shutdown).
///
/// HTTP/1.1 is served by hyper's `http1` connection directly, HTTP/2 (chosen by ALPN) by its
/// `http2` connection: each future holds only its own protocol's state.
async fn serve_io<I>(
    io: I,
    info: ConnectionInfo,
    h2: bool,
    router: Router,
    watcher: Watcher,
    token: ShutdownToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let served = Arc::new(AtomicBool::new(false));
    let svc = {
        let served = Arc::clone(&served);
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            served.store(true, Ordering::Relaxed);
            req.extensions_mut().insert(info);
            router.clone().oneshot(req)
        })
    };
    let silent_cut = async {
        token.live_reads_end().await;
        tokio::time::sleep(SILENT_CONNECTION_GRACE).await;
        if served.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
    };
    let served_conn = async {
        if h2 {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .serve_connection(io, svc);
            watcher.watch(conn).await
        } else {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                // No read to detect a client's EOF while a response streams: that read needs an
                // 8 KiB buffer per connection, which idle SSE subscribers would all hold. A
                // client that went away is noticed on the next write instead (SSE keep-alives
                // every 15 s, long-polls end within their timeout).
                .half_close(true)
                .serve_connection(io, svc);
            watcher.watch(conn).await
        }
    };
    tokio::select! {
        res = served_conn => {
            if let Err(e) = res {
                tracing::debug!(client.address = %info.peer, error = %e, "connection ended with an error");
            }
        }
        () = silent_cut => {
            tracing::debug!(client.address = %info.peer, "closed a connection that sent no request");
        }
    }
}

/// Accepts connections until `stop` resolves.
async fn accept_until(listener: &TcpListener, ctx: &ConnCtx<'_>, stop: impl Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => ctx.spawn(tcp, peer),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves `router` on `listener` until shutdown, then drains (see the module docs).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<TlsReloader>>,
    router: Router,
    metrics: Arc<Metrics>,
    token: ShutdownToken,
    opts: ServeOptions,
    mut trigger: Trigger,
) {
    let reload = tls.as_ref().map(|t| spawn_reload_on_sighup(Arc::clone(t)));
    let graceful = GracefulShutdown::new();
    let mut forced = false;
    {
        let ctx = ConnCtx {
            router,
            tls,
            metrics,
            graceful: &graceful,
            token: token.clone(),
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
            open = graceful.count(),
            "listener closed; draining connections"
        );
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections drained"),
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
