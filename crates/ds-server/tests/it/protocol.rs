//! The HTTP operations of PROTOCOL.md section 5, end to end through the router.

use axum::body::Body;
use axum::http::StatusCode;

use crate::util::{append, body_bytes, create, header, req, router, send};

const ZERO: &str = "0000000000000000_0000000000000000";

#[tokio::test]
async fn create_returns_201_with_location_then_200_when_config_matches() {
    let app = router();
    let res = send(
        &app,
        req(
            "PUT",
            "/v1/stream/a/b",
            &[("content-type", "text/plain"), ("host", "example.test")],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(
        header(&res, "location").as_deref(),
        Some("http://example.test/v1/stream/a/b")
    );
    assert_eq!(header(&res, "stream-next-offset").as_deref(), Some(ZERO));
    assert_eq!(header(&res, "content-type").as_deref(), Some("text/plain"));
    let res = send(
        &app,
        req(
            "PUT",
            "/v1/stream/a/b",
            &[("content-type", "TEXT/PLAIN")],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(header(&res, "location").is_none());
    let res = send(
        &app,
        req(
            "PUT",
            "/v1/stream/a/b",
            &[("content-type", "application/json")],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn appends_advance_the_offset_and_reads_return_the_bytes() {
    let app = router();
    create(&app, "/v1/stream/t", "text/plain").await;
    let first = append(&app, "/v1/stream/t", "text/plain", "hello ").await;
    let second = append(&app, "/v1/stream/t", "text/plain", "world").await;
    assert!(first.as_str() > ZERO && second > first);

    let res = send(&app, req("GET", "/v1/stream/t", &[], Body::empty())).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "stream-next-offset"), Some(second.clone()));
    assert_eq!(header(&res, "stream-up-to-date").as_deref(), Some("true"));
    assert_eq!(
        header(&res, "cache-control").as_deref(),
        Some("public, max-age=60, stale-while-revalidate=300")
    );
    assert!(header(&res, "etag").is_some());
    assert_eq!(body_bytes(res).await, "hello world");

    let res = send(
        &app,
        req(
            "GET",
            &format!("/v1/stream/t?offset={first}"),
            &[],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(body_bytes(res).await, "world");
    let res = send(
        &app,
        req(
            "GET",
            &format!("/v1/stream/t?offset={second}"),
            &[],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "stream-up-to-date").as_deref(), Some("true"));
    assert!(body_bytes(res).await.is_empty());
}

#[tokio::test]
async fn etag_gives_304_and_changes_when_the_stream_closes() {
    let app = router();
    create(&app, "/v1/stream/e", "text/plain").await;
    let tail = append(&app, "/v1/stream/e", "text/plain", "x").await;
    let url = format!("/v1/stream/e?offset={tail}");
    let res = send(&app, req("GET", &url, &[], Body::empty())).await;
    let etag = header(&res, "etag").expect("etag");
    let res = send(
        &app,
        req("GET", &url, &[("if-none-match", &etag)], Body::empty()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    let res = send(
        &app,
        req(
            "POST",
            "/v1/stream/e",
            &[("stream-closed", "true")],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = send(
        &app,
        req("GET", &url, &[("if-none-match", &etag)], Body::empty()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK, "closure must change the ETag");
    assert_eq!(header(&res, "stream-closed").as_deref(), Some("true"));
}

#[tokio::test]
async fn head_is_not_cacheable_and_reports_ttl_and_closure() {
    let app = router();
    let res = send(
        &app,
        req(
            "PUT",
            "/v1/stream/h",
            &[("content-type", "text/plain"), ("stream-ttl", "3600")],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = send(&app, req("HEAD", "/v1/stream/h", &[], Body::empty())).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "cache-control").as_deref(), Some("no-store"));
    assert_eq!(header(&res, "stream-ttl").as_deref(), Some("3600"));
    assert!(header(&res, "stream-closed").is_none());
}

#[tokio::test]
async fn json_streams_flatten_one_level_and_read_as_one_array() {
    let app = router();
    let res = send(
        &app,
        req(
            "PUT",
            "/v1/stream/j",
            &[("content-type", "application/json")],
            "[]",
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    append(&app, "/v1/stream/j", "application/json", r#"{"a":1}"#).await;
    append(
        &app,
        "/v1/stream/j",
        "application/json",
        r#"[{"b":2},[3,4]]"#,
    )
    .await;
    let res = send(
        &app,
        req("GET", "/v1/stream/j?offset=-1", &[], Body::empty()),
    )
    .await;
    let body: serde_json::Value = serde_json::from_slice(&body_bytes(res).await).expect("json");
    assert_eq!(body, serde_json::json!([{"a":1},{"b":2},[3,4]]));
    let res = send(
        &app,
        req("GET", "/v1/stream/j?offset=now", &[], Body::empty()),
    )
    .await;
    assert_eq!(header(&res, "cache-control").as_deref(), Some("no-store"));
    assert_eq!(body_bytes(res).await, "[]");
}

#[tokio::test]
async fn closed_streams_reject_appends_with_the_final_offset() {
    let app = router();
    create(&app, "/v1/stream/c", "text/plain").await;
    let res = send(
        &app,
        req(
            "POST",
            "/v1/stream/c",
            &[("content-type", "text/plain"), ("stream-closed", "true")],
            "end",
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let tail = header(&res, "stream-next-offset").expect("tail");
    let res = send(
        &app,
        req(
            "POST",
            "/v1/stream/c",
            &[("content-type", "application/json")],
            "1",
        ),
    )
    .await;
    assert_eq!(
        res.status(),
        StatusCode::CONFLICT,
        "closed is checked before content type"
    );
    assert_eq!(header(&res, "stream-closed").as_deref(), Some("true"));
    assert_eq!(header(&res, "stream-next-offset"), Some(tail));
}

#[tokio::test]
async fn idempotent_producer_gets_200_then_204_for_a_retry() {
    let app = router();
    create(&app, "/v1/stream/p", "text/plain").await;
    let h = [
        ("content-type", "text/plain"),
        ("producer-id", "w"),
        ("producer-epoch", "0"),
        ("producer-seq", "0"),
    ];
    let res = send(&app, req("POST", "/v1/stream/p", &h, "a")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "producer-seq").as_deref(), Some("0"));
    let res = send(&app, req("POST", "/v1/stream/p", &h, "a")).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let gap = [
        ("content-type", "text/plain"),
        ("producer-id", "w"),
        ("producer-epoch", "0"),
        ("producer-seq", "5"),
    ];
    let res = send(&app, req("POST", "/v1/stream/p", &gap, "b")).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(header(&res, "producer-expected-seq").as_deref(), Some("1"));
    assert_eq!(header(&res, "producer-received-seq").as_deref(), Some("5"));
    let res = send(&app, req("GET", "/v1/stream/p", &[], Body::empty())).await;
    assert_eq!(body_bytes(res).await, "a");
}

#[tokio::test]
async fn forks_stitch_source_data_and_soft_delete_the_source() {
    let app = router();
    let res = send(
        &app,
        req(
            "PUT",
            "/v1/stream/src",
            &[("content-type", "text/plain")],
            "hello",
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = send(
        &app,
        req(
            "PUT",
            "/v1/stream/fork",
            &[
                ("stream-forked-from", "/v1/stream/src"),
                ("stream-fork-offset", ZERO),
                ("stream-fork-sub-offset", "3"),
            ],
            "XY",
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = send(
        &app,
        req("GET", "/v1/stream/fork?offset=-1", &[], Body::empty()),
    )
    .await;
    assert_eq!(body_bytes(res).await, "helXY");
    let res = send(&app, req("DELETE", "/v1/stream/src", &[], Body::empty())).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = send(&app, req("GET", "/v1/stream/src", &[], Body::empty())).await;
    assert_eq!(res.status(), StatusCode::GONE);
    let res = send(
        &app,
        req("GET", "/v1/stream/fork?offset=-1", &[], Body::empty()),
    )
    .await;
    assert_eq!(body_bytes(res).await, "helXY");
    let res = send(&app, req("DELETE", "/v1/stream/fork", &[], Body::empty())).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let res = send(&app, req("GET", "/v1/stream/src", &[], Body::empty())).await;
    assert_eq!(
        res.status(),
        StatusCode::NOT_FOUND,
        "last fork gone: the source is cleaned up"
    );
}

#[tokio::test]
async fn every_response_has_browser_security_headers_and_cors() {
    let app = router();
    let res = send(
        &app,
        req(
            "PUT",
            "/v1/stream/s",
            &[("origin", "https://app.test")],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(
        header(&res, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(
        header(&res, "cross-origin-resource-policy").as_deref(),
        Some("cross-origin")
    );
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    let res = send(
        &app,
        req(
            "OPTIONS",
            "/v1/stream/s",
            &[
                ("origin", "https://app.test"),
                ("access-control-request-method", "GET"),
                (
                    "access-control-request-headers",
                    "if-none-match, producer-id",
                ),
            ],
            Body::empty(),
        ),
    )
    .await;
    assert!(res.status().is_success());
    let allowed = header(&res, "access-control-allow-headers")
        .expect("allow headers")
        .to_lowercase();
    assert!(
        allowed.contains("if-none-match") && allowed.contains("producer-id"),
        "{allowed}"
    );
    assert_eq!(
        header(&res, "x-content-type-options").as_deref(),
        Some("nosniff"),
        "a preflight carries the security headers too"
    );
}

#[tokio::test]
async fn cors_headers_go_to_browsers_and_cacheable_reads_not_to_plain_writes() {
    let app = router();
    let ct = ("content-type", "text/plain");
    let res = send(&app, req("PUT", "/v1/stream/c", &[ct], Body::empty())).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    // A write from outside a browser (no Origin): no CORS headers, security headers still.
    let res = send(&app, req("POST", "/v1/stream/c", &[ct], Body::from("a"))).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&res, "access-control-allow-origin"), None);
    assert_eq!(header(&res, "access-control-expose-headers"), None);
    assert_eq!(
        header(&res, "cross-origin-resource-policy").as_deref(),
        Some("cross-origin")
    );
    // The same write from a browser page: allowed, and the offset header is readable.
    let res = send(
        &app,
        req(
            "POST",
            "/v1/stream/c",
            &[ct, ("origin", "https://app.test")],
            Body::from("b"),
        ),
    )
    .await;
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    let exposed = header(&res, "access-control-expose-headers").expect("exposed");
    assert!(exposed.contains("stream-next-offset"), "{exposed}");
    // A catch-up read without Origin may be cached and served to a browser later: it carries
    // the CORS headers.
    let res = send(
        &app,
        req("GET", "/v1/stream/c?offset=-1", &[], Body::empty()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some("*")
    );
}

#[tokio::test]
async fn health_endpoints_answer() {
    let app = router();
    assert_eq!(
        send(&app, req("GET", "/healthz", &[], Body::empty()))
            .await
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        send(&app, req("GET", "/readyz", &[], Body::empty()))
            .await
            .status(),
        StatusCode::OK
    );
}
