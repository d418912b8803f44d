//! The axum router: health endpoints, the reserved `__ds` namespace, and the stream routes
//! mounted at `http.stream_base_path`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use ds_protocol::NameLimits;
use ds_storage::Storage;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::{CacheVisibility, Config};
use crate::error::ApiError;
use crate::handlers;

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
            long_poll_timeout: Duration::from_secs(cfg.transport.connection.long_poll_timeout_secs),
            sse_reconnect_interval: Duration::from_secs(
                cfg.transport.connection.sse_reconnect_interval_secs,
            ),
            sse_keep_alive: Duration::from_secs(15),
            cacheable: HeaderValue::from_static(match visibility {
                "private" => "private, max-age=60, stale-while-revalidate=300",
                _ => "public, max-age=60, stale-while-revalidate=300",
            }),
            cors_origins: cfg.http.cors_origins.clone(),
        }
    }
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings::from_config(&Config::default())
    }
}

/// Shared state of the handlers.
#[derive(Debug)]
pub struct AppState<S> {
    /// The store.
    pub storage: Arc<S>,
    /// Handler settings.
    pub settings: RouterSettings,
}

/// Handle to [`AppState`] given to every handler.
pub type App<S> = Arc<AppState<S>>;

/// Builds the Durable Streams router over `storage`.
///
/// Mount it as the whole application, or merge it into another axum app. It answers
/// `/healthz`, `/readyz`, the reserved `{base}/__ds/...` namespace, and streams under
/// `{base}/...`; every error is `application/problem+json`.
pub fn build_router<S: Storage>(storage: Arc<S>, settings: RouterSettings) -> Router {
    let base = settings.base_path.clone();
    let cors = cors_layer(&settings.cors_origins);
    let state: App<S> = Arc::new(AppState { storage, settings });
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>));
    // The reserved namespace is routed before stream names, so no stream can shadow it.
    router = router
        .route(&format!("{base}/__ds"), any(reserved))
        .route(&format!("{base}/__ds/{{*rest}}"), any(reserved))
        .route(&format!("{base}/{{*name}}"), any(handlers::stream::<S>));
    router
        .fallback(|| async { ApiError::NoRoute })
        .with_state(state)
        .layer(cors)
        .layer(middleware::from_fn(security_headers))
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
    let (status, body) = if app.storage.is_ready() {
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

/// `{base}/__ds/...`: reserved for the subscription APIs (PROTOCOL.md section 6), which this
/// server does not offer yet; never a stream.
async fn reserved() -> ApiError {
    ApiError::NoRoute
}

/// Browser security headers of PROTOCOL.md section 12.7, on every response.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let headers = res.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("cross-origin"),
    );
    res
}

fn cors_layer(origins: &str) -> CorsLayer {
    let allow_origin = if origins.trim() == "*" {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    let names = |list: &[&str]| -> Vec<HeaderName> {
        list.iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect()
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(names(ds_protocol::headers::PROTOCOL_REQUEST_HEADERS))
        .expose_headers(names(ds_protocol::headers::PROTOCOL_RESPONSE_HEADERS))
        .max_age(Duration::from_secs(86_400))
}
