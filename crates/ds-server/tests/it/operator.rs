//! Operator endpoints through the router: `/metrics`, `/readyz` during shutdown.

use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;
use ds_server::{MemoryStorage, RouterSettings, ShutdownToken, build_router_with_ready};

use crate::util::{append, body_bytes, create, req, router, router_with, send};

#[tokio::test]
async fn metrics_are_served_in_prometheus_text_format() {
    let app = router();
    create(&app, "/v1/stream/m", "text/plain").await;
    append(&app, "/v1/stream/m", "text/plain", "hello").await;
    let res = send(
        &app,
        req("GET", "/v1/stream/m?offset=-1", &[], Body::empty()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = send(&app, req("GET", "/metrics", &[], Body::empty())).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(body_bytes(res).await.to_vec()).expect("utf-8");
    for line in [
        "ds_http_requests_total{method=\"PUT\",status=\"201\"} 1",
        "ds_http_requests_total{method=\"POST\",status=\"204\"} 1",
        "ds_appends_total 1",
        "ds_append_bytes_total 5",
        "ds_reads_total 1",
        "ds_read_bytes_total 5",
        "ds_storage_streams 1",
        "ds_long_polls_active 0",
        "ds_sse_connections_active 0",
        "# TYPE ds_http_request_duration_seconds histogram",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let app = router_with(|s| s.metrics_enabled = false);
    let res = send(&app, req("GET", "/metrics", &[], Body::empty())).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn readyz_turns_503_when_draining_while_healthz_stays_200() {
    let token = ShutdownToken::new();
    let app = build_router_with_ready(
        Arc::new(MemoryStorage::default()),
        RouterSettings::default(),
        token.clone(),
    );
    let res = send(&app, req("GET", "/readyz", &[], Body::empty())).await;
    assert_eq!(res.status(), StatusCode::OK);
    token.begin_drain();
    let res = send(&app, req("GET", "/readyz", &[], Body::empty())).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let res = send(&app, req("GET", "/healthz", &[], Body::empty())).await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_waiting_long_poll_answers_when_live_reads_end() {
    let token = ShutdownToken::new();
    let settings = RouterSettings {
        long_poll_timeout: std::time::Duration::from_secs(60),
        ..RouterSettings::default()
    };
    let app = build_router_with_ready(Arc::new(MemoryStorage::default()), settings, token.clone());
    create(&app, "/v1/stream/lp", "text/plain").await;
    let waiting = tokio::spawn({
        let app = app.clone();
        async move {
            send(
                &app,
                req(
                    "GET",
                    "/v1/stream/lp?offset=-1&live=long-poll",
                    &[],
                    Body::empty(),
                ),
            )
            .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    token.end_live_reads();
    let res = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .expect("answers promptly")
        .expect("task");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(res.headers().contains_key("stream-next-offset"));
}
