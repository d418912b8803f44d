//! The application of the `embed` example, shared with its integration test
//! (`tests/it/embed.rs` includes this file with `#[path]`).

use std::sync::Arc;

use axum::Router;
use axum::http::HeaderValue;
use axum::response::Response;
use axum::routing::get;
use ds_server::{RouterSettings, ShutdownToken, Storage, build_router_with_ready};

/// Where the Durable Streams protocol is mounted inside the app.
pub(crate) const STREAMS_BASE: &str = "/streams";

/// The header the app's own middleware adds to every response, its own and the protocol's.
pub(crate) const APP_HEADER: &str = "x-embedded-by";

/// An existing axum app (a `/hello` route and a middleware adding [`APP_HEADER`]) with the
/// Durable Streams protocol mounted under [`STREAMS_BASE`] over `storage`.
///
/// The protocol router also answers `/healthz`, `/readyz` and `/metrics`; `shutdown` turns
/// `/readyz` to `503` and ends live reads when the app stops.
pub(crate) fn app<S: Storage>(storage: Arc<S>, shutdown: ShutdownToken) -> Router {
    let settings = RouterSettings {
        base_path: STREAMS_BASE.to_owned(),
        ..RouterSettings::default()
    };
    Router::new()
        .route("/hello", get(|| async { "hello from the host app\n" }))
        .merge(build_router_with_ready(storage, settings, shutdown))
        .layer(axum::middleware::map_response(tag_response))
}

/// The app's middleware: tags every response.
async fn tag_response(mut res: Response) -> Response {
    res.headers_mut()
        .insert(APP_HEADER, HeaderValue::from_static("embed-example"));
    res
}
