//! Helpers: a router on a fresh memory store, and request/response shorthands.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use ds_server::{MemoryStorage, RouterSettings, build_router};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// A router over a fresh in-memory store with a short long-poll timeout.
pub(crate) fn router() -> Router {
    router_with(|s| s.long_poll_timeout = Duration::from_millis(300))
}

/// A router with adjusted settings.
pub(crate) fn router_with(f: impl FnOnce(&mut RouterSettings)) -> Router {
    let mut settings = RouterSettings::default();
    f(&mut settings);
    build_router(Arc::new(MemoryStorage::default()), settings)
}

/// Sends a request.
pub(crate) async fn send(app: &Router, req: Request<Body>) -> Response<Body> {
    app.clone()
        .oneshot(req)
        .await
        .expect("router is infallible")
}

/// Builds a request with headers.
pub(crate) fn req(
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Body>,
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body.into()).expect("valid request")
}

/// Collects a body.
pub(crate) async fn body_bytes(res: Response<Body>) -> bytes::Bytes {
    res.into_body().collect().await.expect("body").to_bytes()
}

/// A header as a string.
pub(crate) fn header(res: &Response<Body>, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
}

/// Creates a stream with a content type and returns nothing; panics unless 201.
pub(crate) async fn create(app: &Router, path: &str, content_type: &str) {
    let res = send(
        app,
        req(
            "PUT",
            path,
            &[("content-type", content_type)],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED, "create {path}");
}

/// Appends and returns the new `Stream-Next-Offset`.
pub(crate) async fn append(app: &Router, path: &str, content_type: &str, body: &str) -> String {
    let res = send(
        app,
        req(
            "POST",
            path,
            &[("content-type", content_type)],
            body.to_owned(),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT, "append to {path}");
    header(&res, "stream-next-offset").expect("next offset")
}
