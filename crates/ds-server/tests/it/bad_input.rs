//! Bad input is a 4xx with an `application/problem+json` body, never a 5xx.

use axum::body::Body;
use axum::http::StatusCode;

use crate::util::{body_bytes, create, header, req, router, send};

async fn assert_problem(app: &axum::Router, r: axum::http::Request<Body>, status: StatusCode) {
    let what = format!("{} {}", r.method(), r.uri());
    let res = send(app, r).await;
    assert_eq!(res.status(), status, "{what}");
    assert_eq!(
        header(&res, "content-type").as_deref(),
        Some("application/problem+json"),
        "{what}"
    );
    assert_eq!(
        header(&res, "x-content-type-options").as_deref(),
        Some("nosniff")
    );
    let body = body_bytes(res).await;
    let json: serde_json::Value = serde_json::from_slice(&body).expect("problem body is JSON");
    assert_eq!(json["status"], status.as_u16(), "{what}: {json}");
    assert!(
        json["title"].is_string() && json["type"].is_string(),
        "{json}"
    );
}

#[tokio::test]
async fn malformed_offsets_are_400() {
    let app = router();
    create(&app, "/v1/stream/s", "text/plain").await;
    for q in [
        "offset=",
        "offset=0,1",
        "offset=0%201",
        "offset=abc",
        "offset=-2",
        "offset=NOW",
        "offset=0000000000000000_000000000000000G",
        "offset=0000000000000000_0000000000000001",
        "offset=ffffffffffffffff_ffffffffffffffff",
        "offset=-1&offset=now",
        "offset=-1&live=forever",
        "live=long-poll",
        "live=sse",
    ] {
        assert_problem(
            &app,
            req("GET", &format!("/v1/stream/s?{q}"), &[], Body::empty()),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
}

#[tokio::test]
async fn malformed_headers_are_400() {
    let app = router();
    for (k, v) in [
        ("stream-ttl", "-1"),
        ("stream-ttl", "01"),
        ("stream-ttl", "1.5"),
        ("stream-ttl", "1e3"),
        ("stream-ttl", "99999999999999999999999"),
        ("stream-expires-at", "tomorrow"),
        ("stream-fork-offset", "0000000000000000_0000000000000000"),
        ("stream-fork-sub-offset", "0"),
        ("content-type", "not a type"),
    ] {
        assert_problem(
            &app,
            req("PUT", "/v1/stream/h", &[(k, v)], Body::empty()),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    assert_problem(
        &app,
        req(
            "PUT",
            "/v1/stream/h",
            &[
                ("stream-ttl", "10"),
                ("stream-expires-at", "2030-01-01T00:00:00Z"),
            ],
            Body::empty(),
        ),
        StatusCode::BAD_REQUEST,
    )
    .await;
    create(&app, "/v1/stream/h", "text/plain").await;
    for headers in [
        vec![("producer-id", "p")],
        vec![("producer-id", "p"), ("producer-epoch", "0")],
        vec![
            ("producer-id", ""),
            ("producer-epoch", "0"),
            ("producer-seq", "0"),
        ],
        vec![
            ("producer-id", "p"),
            ("producer-epoch", "-1"),
            ("producer-seq", "0"),
        ],
        vec![
            ("producer-id", "p"),
            ("producer-epoch", "0"),
            ("producer-seq", "9007199254740992"),
        ],
        vec![
            ("producer-id", "p"),
            ("producer-epoch", "0x1"),
            ("producer-seq", "0"),
        ],
    ] {
        let mut h = headers.clone();
        h.push(("content-type", "text/plain"));
        assert_problem(
            &app,
            req("POST", "/v1/stream/h", &h, "x"),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    // Missing Content-Type on an append with a body.
    assert_problem(
        &app,
        req("POST", "/v1/stream/h", &[], "x"),
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Empty body without Stream-Closed.
    assert_problem(
        &app,
        req(
            "POST",
            "/v1/stream/h",
            &[("content-type", "text/plain")],
            Body::empty(),
        ),
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn malformed_json_is_400() {
    let app = router();
    create(&app, "/v1/stream/j", "application/json").await;
    for body in ["{", "[1,", "nope", "[]", "   ", "{\"a\":1}{"] {
        assert_problem(
            &app,
            req(
                "POST",
                "/v1/stream/j",
                &[("content-type", "application/json")],
                body,
            ),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    assert_problem(
        &app,
        req(
            "PUT",
            "/v1/stream/j2",
            &[("content-type", "application/json")],
            "[1,",
        ),
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn malformed_stream_names_are_400() {
    let app = router();
    for path in [
        "/v1/stream/a//b",
        "/v1/stream/a/../b",
        "/v1/stream/./a",
        "/v1/stream/a%00b",
        "/v1/stream/a%zz",
        "/v1/stream/%ff%fe",
    ] {
        assert_problem(
            &app,
            req(
                "PUT",
                path,
                &[("content-type", "text/plain")],
                Body::empty(),
            ),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let long = format!("/v1/stream/{}", "x".repeat(2000));
    assert_problem(
        &app,
        req("PUT", &long, &[], Body::empty()),
        StatusCode::BAD_REQUEST,
    )
    .await;
    let deep = format!("/v1/stream/{}", vec!["a"; 40].join("/"));
    assert_problem(
        &app,
        req("PUT", &deep, &[], Body::empty()),
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let app = crate::util::router_with(|s| s.max_body_bytes = 1024);
    create(&app, "/v1/stream/big", "application/octet-stream").await;
    assert_problem(
        &app,
        req(
            "POST",
            "/v1/stream/big",
            &[("content-type", "application/octet-stream")],
            vec![0u8; 2048],
        ),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    // A body without Content-Length (streamed) is cut off at the limit too.
    let stream = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(vec![1u8; 512]))),
    );
    assert_problem(
        &app,
        req(
            "POST",
            "/v1/stream/big",
            &[("content-type", "application/octet-stream")],
            Body::from_stream(stream),
        ),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    // Nothing was stored.
    let res = send(&app, req("HEAD", "/v1/stream/big", &[], Body::empty())).await;
    assert_eq!(
        header(&res, "stream-next-offset").as_deref(),
        Some("0000000000000000_0000000000000000")
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = router();
    assert_problem(
        &app,
        req("GET", "/nope", &[], Body::empty()),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_problem(
        &app,
        req("GET", "/v1/stream/__ds/anything", &[], Body::empty()),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_problem(
        &app,
        req("PUT", "/v1/stream/__ds", &[], Body::empty()),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_problem(
        &app,
        req("PATCH", "/v1/stream/x", &[], Body::empty()),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    assert_problem(
        &app,
        req("GET", "/v1/stream/missing", &[], Body::empty()),
        StatusCode::NOT_FOUND,
    )
    .await;
}
