//! The `embed` example's app (included from `examples/embed/app.rs`): the protocol's
//! conformance-critical paths under `/streams`, beside the host app's own route and middleware.

#[path = "../../examples/embed/app.rs"]
mod app;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use ds_server::{MemoryStorage, ShutdownToken};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn embedded() -> Router {
    app::app(Arc::new(MemoryStorage::default()), ShutdownToken::new())
}

async fn send(
    router: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Body::from(body.to_owned())).expect("valid request");
    router.clone().oneshot(req).await.expect("infallible")
}

fn header(res: &Response<Body>, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
}

async fn text(res: Response<Body>) -> String {
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

/// Every response, the app's and the protocol's, passed through the app's middleware.
fn tagged(res: &Response<Body>) -> bool {
    header(res, app::APP_HEADER).as_deref() == Some("embed-example")
}

#[tokio::test]
async fn host_routes_and_middleware_still_work() {
    let router = embedded();
    let res = send(&router, "GET", "/hello", &[], "").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(tagged(&res));
    assert_eq!(text(res).await, "hello from the host app\n");

    let res = send(&router, "GET", "/healthz", &[], "").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(tagged(&res));

    // The default mount path is not served: the protocol lives under /streams only.
    let res = send(
        &router,
        "PUT",
        "/v1/stream/x",
        &[("content-type", "text/plain")],
        "",
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn create_append_read_head_close_delete_under_streams() {
    let router = embedded();
    let path = "/streams/embed/a";
    let ct = [("content-type", "text/plain")];

    let res = send(&router, "PUT", path, &ct, "").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert!(tagged(&res));

    let res = send(&router, "POST", path, &ct, "hello ").await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let after_first = header(&res, "stream-next-offset").expect("next offset");
    let res = send(&router, "POST", path, &ct, "world").await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let tail = header(&res, "stream-next-offset").expect("next offset");

    let res = send(&router, "GET", &format!("{path}?offset=-1"), &[], "").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(tagged(&res));
    assert_eq!(header(&res, "stream-next-offset").as_deref(), Some(&*tail));
    assert_eq!(text(res).await, "hello world");

    let res = send(
        &router,
        "GET",
        &format!("{path}?offset={after_first}"),
        &[],
        "",
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(text(res).await, "world");

    let res = send(&router, "HEAD", path, &[], "").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "stream-next-offset").as_deref(), Some(&*tail));
    assert!(
        header(&res, "content-type").is_some_and(|c| c.starts_with("text/plain")),
        "HEAD content type"
    );
    assert_eq!(header(&res, "stream-closed"), None);

    let res = send(&router, "POST", path, &[("stream-closed", "true")], "").await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&res, "stream-closed").as_deref(), Some("true"));
    let res = send(&router, "POST", path, &ct, "late").await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    let res = send(&router, "HEAD", path, &[], "").await;
    assert_eq!(header(&res, "stream-closed").as_deref(), Some("true"));

    let res = send(&router, "DELETE", path, &[], "").await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = send(&router, "HEAD", path, &[], "").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn long_poll_returns_data_appended_while_waiting() {
    let router = embedded();
    let path = "/streams/embed/poll";
    let ct = [("content-type", "text/plain")];
    assert_eq!(
        send(&router, "PUT", path, &ct, "first").await.status(),
        StatusCode::CREATED
    );
    let res = send(&router, "HEAD", path, &[], "").await;
    let tail = header(&res, "stream-next-offset").expect("next offset");

    let waiting = {
        let router = router.clone();
        let uri = format!("{path}?offset={tail}&live=long-poll");
        tokio::spawn(async move { send(&router, "GET", &uri, &[], "").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "long-poll answered before any data");
    assert_eq!(
        send(&router, "POST", path, &ct, "second").await.status(),
        StatusCode::NO_CONTENT
    );
    let res = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("long-poll answered")
        .expect("task");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(tagged(&res));
    assert_eq!(text(res).await, "second");
}

#[tokio::test]
async fn sse_delivers_an_appended_event() {
    let router = embedded();
    let path = "/streams/embed/sse";
    let ct = [("content-type", "application/json")];
    assert_eq!(
        send(&router, "PUT", path, &ct, "").await.status(),
        StatusCode::CREATED
    );
    let res = send(
        &router,
        "GET",
        &format!("{path}?offset=-1&live=sse"),
        &[],
        "",
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(tagged(&res));
    assert!(header(&res, "content-type").is_some_and(|c| c.starts_with("text/event-stream")));
    assert_eq!(
        send(&router, "POST", path, &ct, r#"{"n":1}"#)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );

    let mut body = res.into_body();
    let mut seen = String::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.expect("frame").data_ref() {
                seen.push_str(std::str::from_utf8(data).expect("utf-8"));
            }
            if seen.contains("event: data") && seen.contains(r#"{"n":1}"#) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap_or_else(|_| panic!("no data event; got {seen:?}"));
    assert!(seen.contains(r#"{"n":1}"#), "{seen}");
}
