//! The axum router: health endpoints, `/metrics`, the reserved `__ds` namespace, and the
//! stream routes mounted at `http.stream_base_path`, wrapped in proxy trust and request spans.
//! The server's own connections take stream requests to the same handler through
//! `StreamRoute`, without the router's per-request work, and get the same answers.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use ds_protocol::NameLimits;
use ds_storage::Storage;

use crate::config::{CacheVisibility, Config, StreamNameLogging};
use crate::cors::Cors;
use crate::error::ApiError;
use crate::h1::ServiceFuture;
use crate::handlers;
use crate::limits::{HeaderLimits, LiveReaders};
use crate::metrics::{Metrics, StorageGauges};
use crate::proxy::{self, ClientOrigin, ConnectionInfo, ProxyTrust};
use crate::ratelimit::{RateLimitSettings, RateLimiter};
use crate::telemetry::{self, SpanSettings};

/// The default mount path of the protocol.
pub const DEFAULT_STREAM_BASE_PATH: &str = "/v1/stream";

/// Settings the handlers need, derived from [`Config`].
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// Mount path of the protocol, without a trailing `/` (empty for `/`).
    pub base_path: String,
    /// Stream name limits.
    pub name_limits: NameLimits,
    /// Largest accepted request body.
    pub max_body_bytes: u64,
    /// Largest catch-up read chunk.
    pub read_chunk_bytes: usize,
    /// Largest catch-up read chunk sent from files with `sendfile` (see
    /// [`LimitsConfig::max_sendfile_chunk_bytes`](crate::config::LimitsConfig::max_sendfile_chunk_bytes)).
    pub sendfile_chunk_bytes: u64,
    /// Long-poll wait before `204`.
    pub long_poll_timeout: Duration,
    /// SSE connection lifetime before the server closes it.
    pub sse_reconnect_interval: Duration,
    /// Interval of SSE keep-alive comments on idle connections.
    pub sse_keep_alive: Duration,
    /// `Cache-Control` of cacheable catch-up reads.
    pub cacheable: HeaderValue,
    /// Allowed CORS origins (`*` or a list).
    pub cors_origins: String,
    /// Reverse-proxy trust.
    pub proxy: ProxyTrust,
    /// How request spans name streams.
    pub stream_names: StreamNameLogging,
    /// Serve `/metrics`.
    pub metrics_enabled: bool,
    /// Header count and size limits of every request.
    pub header_limits: HeaderLimits,
    /// Most live reads (long-poll and SSE) open at once, in all.
    pub max_live_readers: usize,
    /// Most live reads open at once on one stream.
    pub max_live_readers_per_stream: usize,
    /// Per-client rate limiting, when on.
    pub rate_limit: Option<RateLimitSettings>,
}

impl RouterSettings {
    /// Settings from a loaded configuration.
    #[must_use]
    pub fn from_config(cfg: &Config) -> Self {
        let base = cfg.http.stream_base_path.trim_end_matches('/').to_owned();
        let visibility = match cfg.http.cache_visibility {
            CacheVisibility::Public => "public",
            CacheVisibility::Private => "private",
        };
        debug_assert!(visibility == "public" || visibility == "private");
        RouterSettings {
            base_path: base,
            name_limits: NameLimits {
                max_bytes: cfg.limits.max_stream_name_bytes,
                max_segments: cfg.limits.max_stream_name_segments,
            },
            max_body_bytes: cfg.limits.effective_max_body_bytes(cfg.storage.mode),
            read_chunk_bytes: cfg.limits.max_read_chunk_bytes,
            sendfile_chunk_bytes: cfg.limits.max_sendfile_chunk_bytes,
            long_poll_timeout: Duration::from_secs(cfg.transport.connection.long_poll_timeout_secs),
            sse_reconnect_interval: Duration::from_secs(
                cfg.transport.connection.sse_reconnect_interval_secs,
            ),
            // Keep-alive comments also keep an idle SSE connection under the idle timeout.
            sse_keep_alive: Duration::from_secs(
                (cfg.transport.connection.effective_idle_timeout_secs() / 2).clamp(1, 15),
            ),
            cacheable: HeaderValue::from_static(match visibility {
                "private" => "private, max-age=60, stale-while-revalidate=300",
                _ => "public, max-age=60, stale-while-revalidate=300",
            }),
            cors_origins: cfg.http.cors_origins.clone(),
            proxy: ProxyTrust::from_config(cfg),
            stream_names: cfg.observability.stream_names,
            metrics_enabled: cfg.observability.metrics_enabled,
            header_limits: HeaderLimits {
                max_count: cfg.limits.max_header_count,
                max_bytes: cfg.limits.max_header_bytes,
            },
            max_live_readers: cfg.limits.max_live_readers,
            max_live_readers_per_stream: cfg.limits.max_live_readers_per_stream,
            rate_limit: (cfg.limits.rate_limit_requests_per_sec > 0).then_some(RateLimitSettings {
                requests_per_sec: cfg.limits.rate_limit_requests_per_sec,
                burst: cfg.limits.rate_limit_burst,
                max_clients: cfg.limits.rate_limit_max_clients,
            }),
        }
    }
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings::from_config(&Config::default())
    }
}

/// Shutdown plumbing shared by the server loop and the handlers.
///
/// Shutdown has two steps: [`ShutdownToken::begin_drain`] turns `/readyz` to `503` (load
/// balancers stop routing here) while requests are still served, then
/// [`ShutdownToken::end_live_reads`] makes every waiting long-poll answer at once and every SSE
/// response end after its current event, so connections can drain.
#[derive(Debug, Clone)]
pub struct ShutdownToken {
    draining: Arc<AtomicBool>,
    /// Set (before `live` is) once live reads are told to end: what a poll checks.
    ended: Arc<AtomicBool>,
    /// Wakes whoever waits for live reads to end.
    live: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for ShutdownToken {
    fn default() -> Self {
        ShutdownToken {
            draining: Arc::default(),
            ended: Arc::default(),
            live: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }
}

impl ShutdownToken {
    /// A token that has not been triggered.
    #[must_use]
    pub fn new() -> Self {
        ShutdownToken::default()
    }

    /// Step one: `/readyz` answers `503` from now on.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether [`begin_drain`](Self::begin_drain) was called.
    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Step two: live reads return now (implies [`begin_drain`](Self::begin_drain)).
    pub fn end_live_reads(&self) {
        self.begin_drain();
        self.ended.store(true, Ordering::SeqCst);
        self.live.send_replace(true);
    }

    /// Whether live reads were told to end.
    #[must_use]
    pub fn live_reads_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    /// Resolves once live reads are told to end.
    pub async fn live_reads_end(&self) {
        let mut rx = self.live.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we hold it.
        let _ = rx.wait_for(|ended| *ended).await;
    }

    /// [`live_reads_end`](Self::live_reads_end) for a future that sits in a long-lived task
    /// and is polled on each of its wake-ups (every event of an SSE response): see
    /// [`LiveReadsEnd`].
    pub(crate) fn on_live_reads_end(&self) -> LiveReadsEnd {
        let token = self.clone();
        LiveReadsEnd {
            ended: Arc::clone(&self.ended),
            wait: Box::pin(async move { token.live_reads_end().await }),
            waker: None,
        }
    }
}

/// Resolves once live reads are told to end, cheaply when polled again and again.
///
/// Waiting on the shutdown `watch` means a waiter in its list, behind one lock shared by every
/// connection; polling that waiter again takes the lock again. Here the waiter is registered on
/// the first poll (and again only if the task's waker changes) and every later poll is one
/// atomic load, so thousands of SSE responses woken for each event do not queue on that lock.
pub(crate) struct LiveReadsEnd {
    ended: Arc<AtomicBool>,
    /// The registered wait; it wakes the task when live reads end.
    wait: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The waker `wait` was last polled with.
    waker: Option<Waker>,
}

impl Future for LiveReadsEnd {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // `end_live_reads` sets the flag before it wakes the waiters, so a wake-up from `wait`
        // always finds it set.
        if this.ended.load(Ordering::SeqCst) {
            return Poll::Ready(());
        }
        if this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        this.waker = Some(cx.waker().clone());
        this.wait.as_mut().poll(cx)
    }
}

/// Shared state of the handlers.
#[derive(Debug)]
pub struct AppState<S> {
    /// The store.
    pub storage: Arc<S>,
    /// Handler settings.
    pub settings: RouterSettings,
    /// Shutdown plumbing.
    pub shutdown: ShutdownToken,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Reads shared by live readers waiting at the same position.
    pub(crate) shared_reads: crate::shared_read::SharedReads,
    /// Open live reads, against `max_live_readers` and `max_live_readers_per_stream`.
    pub(crate) live_readers: Arc<LiveReaders>,
}

/// Handle to [`AppState`] given to every handler.
pub type App<S> = Arc<AppState<S>>;

/// Builds the Durable Streams router over `storage`.
///
/// Mount it as the whole application, or merge it into another axum app. It answers
/// `/healthz`, `/readyz`, `/metrics` (unless disabled), the reserved `{base}/__ds/...`
/// namespace, and streams under `{base}/...`; every error is `application/problem+json`.
pub fn build_router<S: Storage>(storage: Arc<S>, settings: RouterSettings) -> Router {
    build_router_with_ready(storage, settings, ShutdownToken::new())
}

/// [`build_router`] with shutdown plumbing: after [`ShutdownToken::begin_drain`], `/readyz`
/// answers `503`; after [`ShutdownToken::end_live_reads`], long-polls and SSE responses end.
pub fn build_router_with_ready<S: Storage>(
    storage: Arc<S>,
    settings: RouterSettings,
    shutdown: ShutdownToken,
) -> Router {
    build_router_with_metrics(storage, settings, shutdown, Arc::default(), None).0
}

/// [`build_router_with_ready`] recording into `metrics` (shared with the accept loop), with the
/// [`StreamRoute`] the server's own connections take to the stream handler.
///
/// `reserved`, when given, serves the reserved `{base}/__ds/...` namespace (the subscription
/// APIs); without it that namespace answers `404`.
pub(crate) fn build_router_with_metrics<S: Storage>(
    storage: Arc<S>,
    settings: RouterSettings,
    shutdown: ShutdownToken,
    metrics: Arc<Metrics>,
    reserved: Option<Router>,
) -> (Router, StreamRoute) {
    let base = settings.base_path.clone();
    let edge = Arc::new(Edge {
        trust: settings.proxy.clone(),
        spans: Arc::new(SpanSettings {
            base_path: base.clone(),
            stream_names: settings.stream_names,
            metrics: Arc::clone(&metrics),
        }),
        cors: Cors::new(&settings.cors_origins),
        reserved_prefix: format!("{base}/__ds"),
        header_limits: settings.header_limits,
        rate_limiter: settings.rate_limit.map(RateLimiter::new),
    });
    let live_readers = Arc::new(LiveReaders::new(
        settings.max_live_readers,
        settings.max_live_readers_per_stream,
    ));
    let metrics_enabled = settings.metrics_enabled;
    let state: App<S> = Arc::new(AppState {
        storage,
        settings,
        shutdown,
        metrics,
        shared_reads: crate::shared_read::SharedReads::default(),
        live_readers,
    });
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>));
    if metrics_enabled {
        router = router.route("/metrics", get(metrics_text::<S>));
    }
    // The reserved namespace is routed before stream names, so no stream can shadow it.
    router = match reserved {
        Some(api) => router.nest_service(&format!("{base}/__ds"), api),
        None => router
            .route(&format!("{base}/__ds"), any(reserved_namespace))
            .route(&format!("{base}/__ds/{{*rest}}"), any(reserved_namespace)),
    };
    router = router.route(&format!("{base}/{{*name}}"), any(handlers::stream::<S>));
    let stream = StreamRoute {
        edge: EdgeService {
            edge: Arc::clone(&edge),
            inner: StreamService {
                handler: Arc::new({
                    let app = Arc::clone(&state);
                    move |req| handlers::boxed(Arc::clone(&app), req)
                }),
            },
        },
        prefix: format!("{base}/"),
        root: base.is_empty(),
    };
    let router = router
        .fallback(|| async { ApiError::NoRoute })
        .with_state(state)
        .layer(EdgeLayer(edge));
    (router, stream)
}

/// The stream routes (`{base}/{name}`) without axum's router, for the server's own
/// connections: the same [`EdgeService`] around the same handler, and the same finishing
/// touches axum's method router gives an answer that the connection would not give it anyway
/// (see [`finish_route`]), so an answer does not depend on which way the request came.
///
/// Axum's router matches the path, collects and percent-decodes the route's parameters, and
/// clones and boxes the route's service and futures on every request: about a dozen
/// allocations per append, a third of all the server made. This route makes three. Anything
/// it does not certainly own (the health and metrics paths, the reserved `{base}/__ds`
/// namespace, other methods) goes to the router.
#[derive(Clone)]
pub(crate) struct StreamRoute {
    edge: EdgeService<StreamService>,
    /// `{base}/`.
    prefix: String,
    /// The base path is `/`: the health and metrics paths are under it too.
    root: bool,
}

impl StreamRoute {
    /// Whether the router would send `req` to the stream handler: a method the handler
    /// serves, and a non-empty name under the base path outside the reserved namespace.
    pub(crate) fn owns(&self, req: &Request) -> bool {
        if !matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::POST | Method::PUT | Method::DELETE
        ) {
            return false;
        }
        let path = req.uri().path();
        let Some(name) = path.strip_prefix(self.prefix.as_str()) else {
            return false;
        };
        let reserved = path
            .strip_prefix(self.edge.edge.reserved_prefix.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
        let health = self.root && matches!(path, "/healthz" | "/readyz" | "/metrics");
        !(name.is_empty() || reserved || health)
    }

    /// Answers a request it [owns](StreamRoute::owns) that came on a connection described by
    /// `conn`, given here rather than as a request extension (the extension map is allocated
    /// on its first insert, and this way a request needs one fewer).
    pub(crate) fn call(&self, req: Request, conn: Option<ConnectionInfo>) -> ServiceFuture {
        self.edge.clone().call_edge(req, true, conn)
    }
}

/// What axum's method router does to the answer to `HEAD`: the `Content-Length` of the body
/// it would have, and no body.
///
/// Other answers keep their body and get no `Content-Length` here: both connections write
/// one from the body's exact size (ours in `h1::Connection::respond`, hyper's HTTP/2 server
/// likewise), so a header made here would be built, hashed in and dropped again unread: two
/// allocations per append.
fn finish_route(res: &mut Response, head: bool) {
    if !head {
        return;
    }
    if !res.headers().contains_key(header::CONTENT_LENGTH)
        && let Some(size) = http_body::Body::size_hint(res.body()).exact()
    {
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    *res.body_mut() = axum::body::Body::empty();
}

/// The stream handler as a tower service, for [`StreamRoute`]'s [`EdgeService`].
#[derive(Clone)]
struct StreamService {
    handler: Arc<dyn Fn(Request) -> ServiceFuture + Send + Sync>,
}

impl tower::Service<Request> for StreamService {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = ServiceFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), std::convert::Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> ServiceFuture {
        (self.handler)(req)
    }
}

/// What every request passes through before routing (see [`EdgeLayer`]).
struct Edge {
    trust: ProxyTrust,
    spans: Arc<SpanSettings>,
    cors: Cors,
    /// `{base}/__ds`: requests under it need the public origin.
    reserved_prefix: String,
    header_limits: HeaderLimits,
    rate_limiter: Option<RateLimiter>,
}

impl Edge {
    /// The checks every request passes before routing: header limits, then the client's rate
    /// (health and metrics endpoints are never rate limited, so probes keep working).
    fn admit(&self, req: &Request) -> Result<(), ApiError> {
        self.header_limits.check(req.headers())?;
        if let Some(limiter) = &self.rate_limiter
            && !matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics")
            && let Some(client) = req
                .extensions()
                .get::<ClientOrigin>()
                .and_then(|o| o.address)
        {
            limiter.check(client).map_err(|l| ApiError::RateLimited {
                retry_after_secs: l.retry_after_secs(),
            })?;
        }
        Ok(())
    }
}

/// The one middleware of the router, in this order: proxy trust resolves the client, the
/// request span and metrics wrap the rest, header limits and the client's rate are checked
/// (see [`Edge::admit`]), a CORS preflight is answered at once (anything else is routed), and
/// the response gets the CORS and browser security headers.
///
/// A tower layer of its own rather than `axum::middleware::from_fn`: that clones the inner
/// service and boxes it into a `Next` on every request, on top of boxing the future, and the
/// moves of request and future state between those layers showed in the append profile. Here
/// everything before the inner call runs synchronously in `call`, and one boxed future awaits
/// the inner response and finishes it.
#[derive(Clone)]
struct EdgeLayer(Arc<Edge>);

impl<S> tower::Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> EdgeService<S> {
        EdgeService {
            edge: Arc::clone(&self.0),
            inner,
        }
    }
}

/// The service of [`EdgeLayer`] around a route.
#[derive(Clone)]
struct EdgeService<S> {
    edge: Arc<Edge>,
    inner: S,
}

impl<S> tower::Service<Request> for EdgeService<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = ServiceFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), std::convert::Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        self.call_edge(req, false, None)
    }
}

impl<S> EdgeService<S>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    /// [`tower::Service::call`], also for [`StreamRoute`] (whose inner service is always
    /// ready): with `route`, the answer is also finished as axum's router would
    /// ([`finish_route`]), in the same future (one allocation fewer per request).
    ///
    /// `conn` describes the request's connection when it is not in the request's extensions.
    fn call_edge(
        &mut self,
        mut req: Request,
        route: bool,
        conn: Option<ConnectionInfo>,
    ) -> ServiceFuture {
        let head = route && req.method() == Method::HEAD;
        let edge = Arc::clone(&self.edge);
        let reserved = req.uri().path().starts_with(edge.reserved_prefix.as_str());
        proxy::resolve_origin(&edge.trust, &mut req, reserved, conn);
        let decision = edge.cors.decide(req.method(), req.headers());
        let span = telemetry::RequestSpan::open(Arc::clone(&edge.spans), &req);
        let answer = match edge.admit(&req) {
            Err(refused) => Answer::Now(refused.into_response(), decision),
            Ok(()) if req.method() == Method::OPTIONS => {
                let mut res = StatusCode::NO_CONTENT.into_response();
                edge.cors.apply_preflight(decision, res.headers_mut());
                Answer::Preflight(res)
            }
            Ok(()) => Answer::Routed(self.inner.call(req), decision),
        };
        Box::pin(async move {
            let inner = async {
                match answer {
                    Answer::Preflight(res) => res,
                    Answer::Now(mut res, decision) => {
                        edge.cors.apply(decision, res.headers_mut());
                        res
                    }
                    Answer::Routed(fut, decision) => {
                        let Ok(mut res) = fut.await;
                        edge.cors.apply(decision, res.headers_mut());
                        res
                    }
                }
            };
            let mut res = span.run(inner).await;
            if route {
                finish_route(&mut res, head);
            }
            security_headers(res.headers_mut());
            Ok(res)
        })
    }
}

/// How [`EdgeService`] answers a request.
enum Answer<F> {
    /// Refused before routing (limits, rate); CORS headers still to add.
    Now(Response, crate::cors::Decision),
    /// A CORS preflight, answered here.
    Preflight(Response),
    /// Routed: the route's future; CORS headers still to add.
    Routed(F, crate::cors::Decision),
}

async fn healthz() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        "{\"status\":\"ok\"}",
    )
}

async fn readyz<S: Storage>(State(app): State<App<S>>) -> Response {
    let (status, body) = if app.storage.is_ready() && !app.shutdown.is_draining() {
        (StatusCode::OK, "{\"status\":\"ready\"}")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"status\":\"not ready\"}",
        )
    };
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// `/metrics`: Prometheus text exposition, with the store's counters read now. `stats()` reads
/// counters and never lists streams, so a scrape stays cheap however many streams there are.
async fn metrics_text<S: Storage>(State(app): State<App<S>>) -> Response {
    let storage = Some(StorageGauges {
        stats: app.storage.stats(),
        ready: app.storage.is_ready(),
    });
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        app.metrics.render(storage),
    )
        .into_response()
}

/// `{base}/__ds/...` when the subscription APIs (PROTOCOL.md section 6) are not mounted: never a
/// stream.
async fn reserved_namespace() -> ApiError {
    ApiError::NoRoute
}

/// `Cross-Origin-Resource-Policy`, parsed once (not on every response).
static CROSS_ORIGIN_RESOURCE_POLICY: HeaderName =
    HeaderName::from_static("cross-origin-resource-policy");

/// Browser security headers of PROTOCOL.md section 12.7, on every response.
fn security_headers(headers: &mut axum::http::HeaderMap) {
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        CROSS_ORIGIN_RESOURCE_POLICY.clone(),
        HeaderValue::from_static("cross-origin"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;

    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// One request of the equivalence test: method, path, headers, body.
    type Step = (
        &'static str,
        String,
        Vec<(&'static str, &'static str)>,
        &'static [u8],
    );

    /// The requests: every method on a stream (create, append, read, head, an error, delete),
    /// and the paths and methods the stream route must leave to the router.
    fn steps(base: &str) -> Vec<Step> {
        let ct = vec![("content-type", "application/octet-stream")];
        let s = format!("{base}/a%20b/c");
        vec![
            ("PUT", s.clone(), ct.clone(), b""),
            ("POST", s.clone(), ct.clone(), b"hello"),
            (
                "POST",
                s.clone(),
                vec![("content-type", "text/plain")],
                b"x",
            ),
            ("GET", format!("{s}?offset=-1"), vec![], b""),
            ("HEAD", s.clone(), vec![], b""),
            ("GET", format!("{s}?offset=nonsense"), vec![], b""),
            ("PATCH", s.clone(), vec![], b""),
            (
                "OPTIONS",
                s.clone(),
                vec![
                    ("origin", "https://a.example"),
                    ("access-control-request-method", "POST"),
                ],
                b"",
            ),
            ("DELETE", s.clone(), vec![], b""),
            ("GET", s.clone(), vec![], b""),
            ("GET", format!("{base}/"), vec![], b""),
            ("GET", format!("{base}/__ds"), vec![], b""),
            ("GET", format!("{base}/__ds/subscriptions"), vec![], b""),
            ("GET", format!("{base}/__dsx"), vec![], b""),
            ("GET", "/healthz".to_owned(), vec![], b""),
            ("GET", "/readyz".to_owned(), vec![], b""),
        ]
    }

    fn request((method, path, headers, body): &Step) -> Request {
        let mut req = Request::builder().method(*method).uri(path.as_str());
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(axum::body::Body::from(body.to_vec()))
            .expect("a valid request")
    }

    /// An answer as the client sees it: a `Content-Length` that states the body's size is
    /// left out, because the connection writes that one itself from the body (the router's
    /// answers carry it, the stream route's do not); any other (a `HEAD` answer's) stays.
    async fn parts(res: Response) -> (StatusCode, Vec<(String, Vec<u8>)>, Vec<u8>) {
        let status = res.status();
        let mut headers: Vec<(String, Vec<u8>)> = res
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        headers.sort();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        let own_length = body.len().to_string().into_bytes();
        headers.retain(|(n, v)| n != "content-length" || *v != own_length);
        (status, headers, body.to_vec())
    }

    /// The stream route answers exactly as the router does (status, every header, body), and
    /// takes the requests it should: a server's answer does not depend on the way it took.
    #[tokio::test]
    async fn the_stream_route_answers_as_the_router_does() {
        for base in ["/v1/stream", ""] {
            let settings = RouterSettings {
                base_path: base.to_owned(),
                cors_origins: "*".to_owned(),
                ..RouterSettings::default()
            };
            let build = || {
                build_router_with_metrics(
                    Arc::new(ds_storage_memory::MemoryStorage::default()),
                    settings.clone(),
                    ShutdownToken::new(),
                    Arc::default(),
                    None,
                )
            };
            // Two stores, the same requests: one only through the router, one the way the
            // server's connections send them.
            let (router_only, _) = build();
            let (router, stream) = build();
            let mut taken = Vec::new();
            for step in steps(base) {
                let expected = parts(
                    router_only
                        .clone()
                        .oneshot(request(&step))
                        .await
                        .expect("infallible"),
                )
                .await;
                let req = request(&step);
                let owned = stream.owns(&req);
                taken.push(owned);
                let res = if owned {
                    stream.call(req, None).await
                } else {
                    router.clone().oneshot(req).await
                }
                .expect("infallible");
                let got = parts(res).await;
                assert_eq!(got, expected, "{} {} (base {base:?})", step.0, step.1);
            }
            // Requests on the stream take the stream route, except PATCH and OPTIONS (the
            // router answers 405 and the CORS preflight); of the other paths only
            // `{base}/__dsx`, a stream name the handler refuses, does.
            let stream_steps = [true, true, true, true, true, true, false, false, true, true];
            assert_eq!(taken[..10], stream_steps, "base {base:?}");
            assert_eq!(
                taken[10..],
                [false, false, false, true, false, false],
                "base {base:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_live_reads_end_polled_again_is_still_woken_at_shutdown() {
        let token = ShutdownToken::new();
        let mut end = token.on_live_reads_end();
        // The first poll registers the wait; the second takes the path without the lock.
        for _ in 0..2 {
            let pending =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut end).poll(cx).is_pending()))
                    .await;
            assert!(pending, "live reads have not ended yet");
        }
        let trigger = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            trigger.end_live_reads();
        });
        tokio::time::timeout(Duration::from_secs(5), end)
            .await
            .expect("the registered wait wakes the task when live reads end");
        assert!(token.live_reads_ended());
        // Created after the fact, it resolves at once.
        tokio::time::timeout(Duration::from_secs(5), token.on_live_reads_end())
            .await
            .expect("already ended");
    }
}
