//! The subscription routes, relative to `{base}/__ds`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, NestedPath, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use ds_storage::Storage;
use serde_json::Value;

use crate::api::ApiError;
use crate::engine::{MAX_BODY_BYTES, PutOutcome, Subscriptions};
use crate::forward::{self, Forwarded};

/// The externally visible origin of a request (`https://streams.example.com`), for building
/// `callback_url` and `jwks_url`. The server inserts it as a request extension after applying
/// its reverse-proxy trust rules; without it the `Host` header and `http` are used. A configured
/// [`SubscriptionsConfig::public_base_url`](crate::SubscriptionsConfig::public_base_url)
/// overrides both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicOrigin(pub String);

/// Builds the subscription router. Its paths are relative to `{base}/__ds`: nest it there
/// (`Router::nest("/v1/stream/__ds", router(engine))`), ahead of the stream routes.
///
/// Routes: `PUT|GET|DELETE /subscriptions/{id}`, `POST /subscriptions/{id}/streams`,
/// `DELETE /subscriptions/{id}/streams/{*path}`, `POST /subscriptions/{id}/callback`,
/// `POST /subscriptions/{id}/claim`, `POST /subscriptions/{id}/ack`,
/// `POST /subscriptions/{id}/release` and `GET /jwks.json`.
///
/// In cluster mode every node serves them: a node that is not the active one forwards each
/// request (but `jwks.json`) to the one that is and relays its answer, or answers `503` with
/// `Retry-After` when no node answers within `cluster_call_timeout_ms` (a failover).
pub fn router<S: Storage>(engine: Arc<Subscriptions<S>>) -> Router {
    Router::new()
        .route(
            "/subscriptions/{id}",
            put(put_sub::<S>).get(get_sub::<S>).delete(delete_sub::<S>),
        )
        .route("/subscriptions/{id}/streams", post(add_streams::<S>))
        .route(
            "/subscriptions/{id}/streams/{*path}",
            delete(remove_stream::<S>),
        )
        .route("/subscriptions/{id}/callback", post(callback::<S>))
        .route("/subscriptions/{id}/claim", post(claim::<S>))
        .route("/subscriptions/{id}/ack", post(ack::<S>))
        .route("/subscriptions/{id}/release", post(release::<S>))
        .route("/jwks.json", get(jwks::<S>))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            engine.clone(),
            forward::route::<S>,
        ))
        .with_state(engine)
}

type Engine<S> = State<Arc<Subscriptions<S>>>;

/// What handlers need from the request head: the stream root URL and the bearer token.
struct Ctx {
    /// e.g. `http://127.0.0.1:4437/v1/stream`.
    root: String,
    bearer: Option<String>,
}

/// The stream root of a request, e.g. `http://127.0.0.1:4437/v1/stream`: its public origin
/// (the [`PublicOrigin`] extension, else `Host` and the URI's scheme) and the path the router is
/// nested at, less `/__ds`.
pub(crate) fn request_root(parts: &Parts) -> String {
    let origin = if let Some(o) = parts.extensions.get::<PublicOrigin>() {
        o.0.trim_end_matches('/').to_owned()
    } else {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.as_str().to_owned()))
            .unwrap_or_else(|| "localhost".to_owned());
        let scheme = parts.uri.scheme_str().unwrap_or("http");
        format!("{scheme}://{host}")
    };
    let nested = parts
        .extensions
        .get::<NestedPath>()
        .map(|n| n.as_str().to_owned())
        .unwrap_or_default();
    let base = nested.trim_end_matches('/');
    let base = base.strip_suffix("/__ds").unwrap_or(base);
    format!("{origin}{base}")
}

impl<T: Send + Sync> FromRequestParts<T> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &T) -> Result<Self, Self::Rejection> {
        // A forwarded request carries the root the client's node computed.
        let root = match parts.extensions.get::<Forwarded>() {
            Some(f) => f.root.clone(),
            None => request_root(parts),
        };
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| {
                let (scheme, token) = h.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_owned())
            })
            .filter(|t| !t.is_empty());
        Ok(Ctx { root, bearer })
    }
}

fn json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body.to_string(),
    )
        .into_response()
}

fn result(r: Result<Response, ApiError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn put_sub<S: Storage>(
    State(e): Engine<S>,
    Path(id): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> Response {
    result(e.put(&id, &body, &ctx.root).await.map(|o| match o {
        PutOutcome::Created(v) => json(StatusCode::CREATED, &v),
        PutOutcome::Existed(v) => json(StatusCode::OK, &v),
    }))
}

async fn get_sub<S: Storage>(State(e): Engine<S>, Path(id): Path<String>, ctx: Ctx) -> Response {
    result(e.get(&id, &ctx.root).map(|v| json(StatusCode::OK, &v)))
}

async fn delete_sub<S: Storage>(State(e): Engine<S>, Path(id): Path<String>) -> Response {
    result(
        e.delete(&id)
            .await
            .map(|()| StatusCode::NO_CONTENT.into_response()),
    )
}

async fn add_streams<S: Storage>(
    State(e): Engine<S>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    result(
        e.add_streams(&id, &body)
            .await
            .map(|()| StatusCode::NO_CONTENT.into_response()),
    )
}

async fn remove_stream<S: Storage>(
    State(e): Engine<S>,
    Path((id, path)): Path<(String, String)>,
) -> Response {
    result(
        e.remove_stream(&id, &path)
            .await
            .map(|()| StatusCode::NO_CONTENT.into_response()),
    )
}

async fn callback<S: Storage>(
    State(e): Engine<S>,
    Path(id): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> Response {
    result(
        e.callback(&id, ctx.bearer.as_deref(), &body)
            .await
            .map(|v| json(StatusCode::OK, &v)),
    )
}

async fn claim<S: Storage>(State(e): Engine<S>, Path(id): Path<String>, body: Bytes) -> Response {
    result(e.claim(&id, &body).await.map(|v| json(StatusCode::OK, &v)))
}

async fn ack<S: Storage>(
    State(e): Engine<S>,
    Path(id): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> Response {
    result(
        e.ack(&id, ctx.bearer.as_deref(), &body)
            .await
            .map(|v| json(StatusCode::OK, &v)),
    )
}

async fn release<S: Storage>(
    State(e): Engine<S>,
    Path(id): Path<String>,
    ctx: Ctx,
    body: Bytes,
) -> Response {
    result(
        e.release(&id, ctx.bearer.as_deref(), &body)
            .await
            .map(|()| StatusCode::NO_CONTENT.into_response()),
    )
}

async fn jwks<S: Storage>(State(e): Engine<S>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/jwk-set+json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        e.jwks().to_string(),
    )
        .into_response()
}
