//! Every limit answers clearly: a status and a problem+json body naming the limit (in the
//! router), or, for connection limits, a connection that waits or is closed (over sockets).
//! Ends with the slowloris test: 2,000 connections trickling one header byte per second do not
//! stop a concurrent client from completing 1,000 appends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::StatusCode;
use ds_server::proxy::ConnectionInfo;
use ds_server::{Config, MemoryOptions, MemoryStorage, RouterSettings, build_router};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::{Client, TestServer, client_tls, tls_config};
use crate::util::{body_bytes, create, header, req, router_with, send};

/// Asserts a problem+json answer with `status` and `code`; returns the body and the
/// `Retry-After` header.
async fn problem(
    app: &axum::Router,
    r: axum::http::Request<Body>,
    status: StatusCode,
    code: &str,
) -> (serde_json::Value, Option<String>) {
    let what = format!("{} {}", r.method(), r.uri());
    let res = send(app, r).await;
    assert_eq!(res.status(), status, "{what}");
    assert_eq!(
        header(&res, "content-type").as_deref(),
        Some("application/problem+json"),
        "{what}"
    );
    let retry_after = header(&res, "retry-after");
    let json: serde_json::Value =
        serde_json::from_slice(&body_bytes(res).await).expect("problem body is JSON");
    assert_eq!(json["status"], status.as_u16(), "{what}: {json}");
    assert_eq!(json["code"], code, "{what}: {json}");
    assert!(
        json["title"].is_string() && json["type"].is_string(),
        "{json}"
    );
    (json, retry_after)
}

fn detail(json: &serde_json::Value) -> &str {
    json["detail"].as_str().expect("detail")
}

fn settings(toml: &str) -> RouterSettings {
    RouterSettings::from_config(&Config::from_toml(toml).expect("valid config"))
}

fn octets(body: Vec<u8>) -> axum::http::Request<Body> {
    req(
        "POST",
        "/v1/stream/s",
        &[("content-type", "application/octet-stream")],
        body,
    )
}

#[tokio::test]
async fn a_request_body_over_the_limit_is_413_naming_the_limit() {
    let app = build_router(
        Arc::new(MemoryStorage::default()),
        settings("[limits]\nmax_request_body_bytes = 1024\n"),
    );
    create(&app, "/v1/stream/s", "application/octet-stream").await;
    let (json, _) = problem(
        &app,
        octets(vec![0; 1025]),
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
    )
    .await;
    assert!(detail(&json).contains("1024"), "{json}");
    let res = send(&app, octets(vec![0; 1024])).await;
    assert_eq!(
        res.status(),
        StatusCode::NO_CONTENT,
        "a body at the limit fits"
    );
}

#[tokio::test]
async fn an_append_past_the_stream_limit_is_413_with_the_limit_in_the_body() {
    let store = MemoryStorage::new(MemoryOptions {
        max_stream_bytes: 100,
        ..MemoryOptions::default()
    });
    let app = build_router(Arc::new(store), RouterSettings::default());
    create(&app, "/v1/stream/s", "application/octet-stream").await;
    let res = send(&app, octets(vec![1; 60])).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let tail = header(&res, "stream-next-offset");
    let (json, _) = problem(
        &app,
        octets(vec![2; 41]),
        StatusCode::PAYLOAD_TOO_LARGE,
        "STREAM_TOO_LARGE",
    )
    .await;
    assert!(detail(&json).contains("100 bytes"), "{json}");
    // Nothing of the refused append is visible, and what fits still goes in.
    let res = send(&app, req("HEAD", "/v1/stream/s", &[], Body::empty())).await;
    assert_eq!(header(&res, "stream-next-offset"), tail);
    assert_eq!(
        send(&app, octets(vec![3; 40])).await.status(),
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn memory_mode_past_its_total_is_507_with_retry_after() {
    let store = MemoryStorage::new(MemoryOptions {
        max_memory_bytes: 150,
        max_stream_bytes: 100,
        ..MemoryOptions::default()
    });
    let app = build_router(Arc::new(store), RouterSettings::default());
    create(&app, "/v1/stream/s", "application/octet-stream").await;
    create(&app, "/v1/stream/t", "application/octet-stream").await;
    assert_eq!(
        send(&app, octets(vec![1; 100])).await.status(),
        StatusCode::NO_CONTENT
    );
    let (json, retry_after) = problem(
        &app,
        req(
            "POST",
            "/v1/stream/t",
            &[("content-type", "application/octet-stream")],
            vec![2u8; 60],
        ),
        StatusCode::INSUFFICIENT_STORAGE,
        "STORAGE_FULL",
    )
    .await;
    assert!(detail(&json).contains("150"), "{json}");
    assert_eq!(retry_after.as_deref(), Some("1"));
}

#[tokio::test]
async fn stream_names_past_their_byte_or_segment_limit_are_400() {
    let app = build_router(
        Arc::new(MemoryStorage::default()),
        settings("[limits]\nmax_stream_name_bytes = 16\nmax_stream_name_segments = 3\n"),
    );
    for path in ["/v1/stream/aaaaaaaaaaaaaaaa", "/v1/stream/a/b/c"] {
        create(&app, path, "text/plain").await;
    }
    for path in [
        "/v1/stream/aaaaaaaaaaaaaaaaa",
        // Percent-escapes count as the bytes they decode to: 6 bytes of 'é' plus 11.
        "/v1/stream/%C3%A9%C3%A9%C3%A9aaaaaaaaaaa",
        "/v1/stream/a/b/c/d",
    ] {
        let (json, _) = problem(
            &app,
            req(
                "PUT",
                path,
                &[("content-type", "text/plain")],
                Body::empty(),
            ),
            StatusCode::BAD_REQUEST,
            "INVALID_STREAM_NAME",
        )
        .await;
        assert!(
            detail(&json).contains("the limit is 16") || detail(&json).contains("the limit is 3"),
            "{path}: {json}"
        );
    }
}

#[tokio::test]
async fn header_fields_past_the_count_or_byte_limit_are_431() {
    let app = build_router(
        Arc::new(MemoryStorage::default()),
        settings("[limits]\nmax_header_count = 8\nmax_header_bytes = 256\n"),
    );
    let names: Vec<String> = (0..9).map(|i| format!("x-h{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let (json, _) = problem(
        &app,
        req("GET", "/healthz", &many, Body::empty()),
        StatusCode::from_u16(431).expect("status"),
        "HEADERS_TOO_LARGE",
    )
    .await;
    assert!(detail(&json).contains("max_header_count"), "{json}");
    let res = send(&app, req("GET", "/healthz", &many[..8], Body::empty())).await;
    assert_eq!(res.status(), StatusCode::OK, "8 fields fit");
    let big = "v".repeat(300);
    let (json, _) = problem(
        &app,
        req("GET", "/v1/stream/x", &[("x-big", &big)], Body::empty()),
        StatusCode::from_u16(431).expect("status"),
        "HEADERS_TOO_LARGE",
    )
    .await;
    assert!(detail(&json).contains("max_header_bytes"), "{json}");
}

#[tokio::test]
async fn live_readers_past_a_limit_get_503_with_retry_after() {
    let app = router_with(|s| {
        s.max_live_readers = 3;
        s.max_live_readers_per_stream = 2;
        s.long_poll_timeout = Duration::from_secs(30);
    });
    for s in ["a", "b", "c"] {
        create(&app, &format!("/v1/stream/{s}"), "text/plain").await;
    }
    let sse = |s: &str| {
        req(
            "GET",
            &format!("/v1/stream/{s}?offset=now&live=sse"),
            &[],
            Body::empty(),
        )
    };
    let long_poll = |s: &str| {
        req(
            "GET",
            &format!("/v1/stream/{s}?offset=now&live=long-poll"),
            &[],
            Body::empty(),
        )
    };
    // Two SSE readers on `a` fill its share; their bodies hold the slots while they live.
    let a1 = send(&app, sse("a")).await;
    let a2 = send(&app, sse("a")).await;
    assert_eq!((a1.status(), a2.status()), (StatusCode::OK, StatusCode::OK));
    let (json, retry_after) = problem(
        &app,
        long_poll("a"),
        StatusCode::SERVICE_UNAVAILABLE,
        "TOO_MANY_LIVE_READERS",
    )
    .await;
    assert!(
        detail(&json).contains("max_live_readers_per_stream"),
        "{json}"
    );
    assert_eq!(retry_after.as_deref(), Some("5"));
    // A long-poll that has data to return at once never waits, so it needs no slot: catch-up
    // reads keep working while the stream's live readers are at the limit.
    crate::util::append(&app, "/v1/stream/a", "text/plain", "caught up").await;
    let catch_up = send(
        &app,
        req(
            "GET",
            "/v1/stream/a?offset=-1&live=long-poll",
            &[],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(catch_up.status(), StatusCode::OK);
    assert_eq!(&body_bytes(catch_up).await[..], b"caught up");
    // A waiting long-poll on `b` takes the last slot in all.
    let waiting = tokio::spawn({
        let app = app.clone();
        async move { send(&app, long_poll("b")).await }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let res = send(&app, sse("c")).await;
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            let json: serde_json::Value =
                serde_json::from_slice(&body_bytes(res).await).expect("problem");
            assert_eq!(json["code"], "TOO_MANY_LIVE_READERS");
            assert!(detail(&json).contains("limits.max_live_readers)"), "{json}");
            break;
        }
        // The long-poll was not parked yet: give this reader's slot back and try again.
        drop(res);
        assert!(
            Instant::now() < deadline,
            "the long-poll never took its slot"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // An append answers the long-poll, which gives its slot back; so does a dropped SSE body.
    crate::util::append(&app, "/v1/stream/b", "text/plain", "x").await;
    assert_eq!(waiting.await.expect("long-poll").status(), StatusCode::OK);
    drop(a1);
    let c = send(&app, sse("c")).await;
    assert_eq!(c.status(), StatusCode::OK);
    let a3 = send(&app, sse("a")).await;
    assert_eq!(a3.status(), StatusCode::OK, "a has room again");
    let (json, _) = problem(
        &app,
        sse("b"),
        StatusCode::SERVICE_UNAVAILABLE,
        "TOO_MANY_LIVE_READERS",
    )
    .await;
    assert!(detail(&json).contains("limits.max_live_readers)"), "{json}");
    drop((a2, c, a3));
    assert_eq!(send(&app, sse("b")).await.status(), StatusCode::OK);
}

/// A request as the accept loop hands it over, from `peer`.
fn from(peer: &str, uri: &str, headers: &[(&str, &str)]) -> axum::http::Request<Body> {
    let mut r = req("GET", uri, headers, Body::empty());
    r.extensions_mut().insert(ConnectionInfo {
        peer: format!("{peer}:40000").parse::<SocketAddr>().expect("peer"),
        tls: false,
        client_verified: false,
    });
    r
}

#[tokio::test]
async fn a_client_past_its_rate_gets_429_with_retry_after() {
    let app = build_router(
        Arc::new(MemoryStorage::default()),
        settings(
            "[limits]\nrate_limit_requests_per_sec = 1\nrate_limit_burst = 2\n[proxy]\nenabled = true\nforwarded_headers = \"x-forwarded\"\ntrusted_proxies = [\"10.9.0.1\"]\n",
        ),
    );
    for _ in 0..2 {
        let res = send(&app, from("10.0.0.1", "/v1/stream/missing", &[])).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    let (json, retry_after) = problem(
        &app,
        from("10.0.0.1", "/v1/stream/missing", &[]),
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
    )
    .await;
    assert!(detail(&json).contains("retry in 1 s"), "{json}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    // Another client, and the health endpoints, are not affected.
    let res = send(&app, from("10.0.0.2", "/v1/stream/missing", &[])).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = send(&app, from("10.0.0.1", "/healthz", &[])).await;
    assert_eq!(res.status(), StatusCode::OK);
    // Behind the trusted proxy, each forwarded client has its own budget.
    let via_proxy = |client: &str| {
        from(
            "10.9.0.1",
            "/v1/stream/missing",
            &[("x-forwarded-for", client)],
        )
    };
    for _ in 0..2 {
        assert_eq!(
            send(&app, via_proxy("203.0.113.7")).await.status(),
            StatusCode::NOT_FOUND
        );
    }
    problem(
        &app,
        via_proxy("203.0.113.7"),
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
    )
    .await;
    assert_eq!(
        send(&app, via_proxy("203.0.113.8")).await.status(),
        StatusCode::NOT_FOUND
    );
    // An untrusted peer cannot pick its key with a forwarded header.
    let spoof = |client: &str| {
        from(
            "10.0.0.1",
            "/v1/stream/missing",
            &[("x-forwarded-for", client)],
        )
    };
    assert_eq!(
        send(&app, spoof("198.51.100.1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Reads one HTTP/1.1 response (head and `Content-Length` body) from `tcp`.
async fn read_response(tcp: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().expect("content-length"));
            if buf.len() >= end + 4 + len {
                return String::from_utf8_lossy(&buf[..end + 4 + len]).into_owned();
            }
        }
        let n = tcp.read(&mut chunk).await.expect("read");
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Whether the server closes `tcp` within `within` (EOF or reset; any response bytes first are
/// skipped).
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

const GET_HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";

#[tokio::test]
async fn a_head_past_the_hard_bounds_gets_431_and_a_closed_connection() {
    let mut cfg = Config::default();
    cfg.limits.max_header_bytes = 1024;
    let server = TestServer::start(cfg).await;
    // Hard bound: 2 * 1024 + 16 KiB of head.
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let big = "v".repeat(20 * 1024);
    tcp.write_all(format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let res = read_response(&mut tcp).await;
    assert!(res.starts_with("HTTP/1.1 431"), "{res}");
    assert!(
        res.contains("application/problem+json") && res.contains("HEADERS_TOO_LARGE"),
        "{res}"
    );
    assert!(closed_within(&mut tcp, Duration::from_secs(2)).await);
    // Past the configured limit but within the hard bound: the router's problem body.
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let big = "v".repeat(2 * 1024);
    tcp.write_all(format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let res = read_response(&mut tcp).await;
    assert!(res.starts_with("HTTP/1.1 431"), "{res}");
    assert!(
        res.contains("application/problem+json") && res.contains("HEADERS_TOO_LARGE"),
        "{res}"
    );
    // More than 100 fields: the parser's bound.
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let fields = (0..101)
        .map(|i| format!("x-{i}: 1\r\n"))
        .collect::<Vec<_>>()
        .concat();
    tcp.write_all(format!("GET /healthz HTTP/1.1\r\nhost: x\r\n{fields}\r\n").as_bytes())
        .await
        .expect("write");
    let res = read_response(&mut tcp).await;
    assert!(res.starts_with("HTTP/1.1 431"), "{res}");
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn past_max_connections_new_connections_wait_until_one_closes() {
    let mut cfg = Config::default();
    cfg.server.max_connections = 2;
    let server = TestServer::start(cfg).await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        tcp.write_all(GET_HEALTHZ).await.expect("write");
        assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
        open.push(tcp);
    }
    // The third connection is made by the kernel (backlog) but not served.
    let mut third = TcpStream::connect(server.addr).await.expect("connect");
    third.write_all(GET_HEALTHZ).await.expect("write");
    let early = tokio::time::timeout(Duration::from_millis(500), read_response(&mut third)).await;
    assert!(early.is_err(), "served past max_connections: {early:?}");
    drop(open.remove(0));
    let res = tokio::time::timeout(Duration::from_secs(5), read_response(&mut third))
        .await
        .expect("served once a connection closed");
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    drop((open, third));
    server.stop().await.expect("clean stop");
}

/// Fails the test at once, with the fix, if the kernel caps a listener's backlog
/// (`net.core.somaxconn`, Linux) below `queued` connections: they would not wait their turn.
fn assert_backlog_holds(queued: usize) {
    let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok());
    if let Some(cap) = cap {
        assert!(
            cap > queued,
            "this test queues {queued} connections in one listen backlog; raise net.core.somaxconn ({cap})"
        );
    }
}

/// Connections of the burst below: more than the 128 Tokio's `TcpListener::bind` queues.
const BURST: usize = 600;

#[tokio::test]
async fn a_burst_past_max_connections_waits_in_the_backlog_and_is_served_in_turn() {
    assert_backlog_holds(BURST);
    let mut cfg = Config::default();
    cfg.server.max_connections = 1;
    let server = TestServer::start(cfg).await;
    // One idle keep-alive connection takes the only slot.
    let mut held = TcpStream::connect(server.addr).await.expect("connect");
    held.write_all(GET_HEALTHZ).await.expect("write");
    assert!(read_response(&mut held).await.starts_with("HTTP/1.1 200"));
    // Each connect completes as soon as the kernel queues the connection. Past a full backlog
    // it drops the handshake instead, and the connect waits out SYN retransmission until a
    // slot frees, which never happens here.
    let mut burst = Vec::with_capacity(BURST);
    for i in 0..BURST {
        let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(server.addr))
            .await
            .unwrap_or_else(|_| panic!("connection {i} of the burst was not queued in 5 s"))
            .expect("connect");
        burst.push(tcp);
    }
    for tcp in &mut burst {
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .expect("write");
    }
    // Freeing the slot lets the queue through in order, one connection at a time: each is
    // closed once answered, which frees the slot for the next.
    drop(held);
    for (i, mut tcp) in burst.into_iter().enumerate() {
        let res = tokio::time::timeout(Duration::from_secs(10), read_response(&mut tcp))
            .await
            .unwrap_or_else(|_| panic!("queued connection {i} was not served in 10 s"));
        assert!(res.starts_with("HTTP/1.1 200"), "{i}: {res}");
    }
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn tls_connections_count_against_max_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = ds_server::testsupport::TestPki::write(dir.path()).expect("test pki");
    let mut cfg = tls_config(&pki, "tls", false);
    cfg.server.max_connections = 1;
    let server = TestServer::start(cfg).await;
    // The readiness probe of `TestServer::start` held the slot briefly; wait for it back.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let tls = client_tls(&pki.ca_cert, None, &[b"http/1.1"]);
    let (mut first, _) = Client::tls(server.addr, Arc::clone(&tls))
        .await
        .expect("first handshake");
    let res = first
        .send("GET", "/healthz", &[], "")
        .await
        .expect("served");
    assert_eq!(res.status(), 200);
    let second = tokio::spawn(Client::tls(server.addr, Arc::clone(&tls)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "a second TLS handshake ran past max_connections"
    );
    drop(first);
    let (mut second, _) = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("handshake once the first closed")
        .expect("task")
        .expect("handshake");
    let res = second
        .send("GET", "/healthz", &[], "")
        .await
        .expect("served");
    assert_eq!(res.status(), 200);
    drop(second);
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_trickled_request_head_is_cut_at_the_header_read_timeout() {
    let mut cfg = Config::default();
    cfg.transport.connection.header_read_timeout_secs = 1;
    let server = TestServer::start(cfg).await;
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let started = Instant::now();
    let trickle = async {
        for b in b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: "
            .iter()
            .cycle()
        {
            if tcp.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(600), trickle).await;
    assert!(
        closed_within(&mut tcp, Duration::from_secs(3)).await,
        "still open"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
        "cut after {elapsed:?}"
    );
    // A keep-alive connection idle between requests is cut the same way.
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(GET_HEALTHZ).await.expect("write");
    assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut tcp, Duration::from_secs(3)).await,
        "idle keep-alive kept"
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_idle_timeout_but_live_reads_are_not() {
    let mut cfg = Config::default();
    cfg.transport.connection.long_poll_timeout_secs = 1;
    cfg.transport.connection.idle_timeout_secs = Some(2);
    cfg.validate().expect("valid");
    let server = TestServer::start(cfg).await;
    let mut c = Client::plain(server.addr).await;
    let res = c
        .send("PUT", "/v1/stream/s", &[("content-type", "text/plain")], "")
        .await
        .expect("create");
    assert_eq!(res.status(), 201);
    // A stalled upload: the head promises 10 body bytes that never come.
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(
        b"POST /v1/stream/s HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: 10\r\n\r\nabc",
    )
    .await
    .expect("write");
    let started = Instant::now();
    assert!(
        closed_within(&mut tcp, Duration::from_secs(5)).await,
        "still open"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(4),
        "cut after {elapsed:?}"
    );
    // An SSE reader on an idle stream outlives the idle timeout: keep-alive comments move bytes.
    let mut sse = TcpStream::connect(server.addr).await.expect("connect");
    sse.write_all(b"GET /v1/stream/s?offset=now&live=sse HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(
        !closed_within(&mut sse, Duration::from_secs(5)).await,
        "an idle SSE response was cut"
    );
    server.stop().await.expect("clean stop");
}

/// The soft limit on open files, from `/proc/self/limits` (Linux).
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Slowloris connections of the test below.
const SLOWLORIS: usize = 2_000;
/// What the slowloris attackers share.
#[derive(Default)]
struct Attack {
    stop: AtomicBool,
    /// Attackers that have made their first connection.
    connected: AtomicUsize,
    /// Connections the server closed.
    cut: AtomicUsize,
}

/// One attacker: sends one header byte per second, never finishing the head, and reconnects
/// when the server cuts it off.
async fn slowloris(addr: SocketAddr, attack: Arc<Attack>) {
    let head = b"POST /v1/stream/s HTTP/1.1\r\nhost: x\r\nx-slow: ";
    let mut buf = [0u8; 256];
    let mut first = true;
    while !attack.stop.load(Ordering::Relaxed) {
        let Ok(mut tcp) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if std::mem::take(&mut first) {
            attack.connected.fetch_add(1, Ordering::Relaxed);
        }
        for b in head.iter().chain(std::iter::repeat(&b'a')) {
            if attack.stop.load(Ordering::Relaxed) {
                return;
            }
            let closed = tcp.write_all(&[*b]).await.is_err()
                || tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => false,
                    r = tcp.read(&mut buf) => matches!(r, Ok(0) | Err(_)),
                };
            if closed {
                attack.cut.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
}

/// Connection slots of the server under attack: fewer than the attackers.
const MAX_CONNECTIONS: usize = 1_500;
/// Appends the concurrent client must complete.
const APPENDS: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_do_not_stop_a_client_from_appending() {
    if let Some(limit) = open_file_limit() {
        assert!(
            limit >= 5_000,
            "this test opens about 4,000 sockets; raise the open-file limit (ulimit -n {limit})"
        );
    }
    assert_backlog_holds(SLOWLORIS - MAX_CONNECTIONS);
    // Fewer connection slots than attackers, so the attack fills them all: only the header
    // read timeout frees slots for the honest client.
    let mut cfg = Config::default();
    cfg.server.max_connections = MAX_CONNECTIONS;
    cfg.transport.connection.header_read_timeout_secs = 2;
    let server = TestServer::start(cfg).await;
    let addr = server.addr;
    let mut c = Client::plain(addr).await;
    let res = c
        .send("PUT", "/v1/stream/s", &[("content-type", "text/plain")], "")
        .await
        .expect("create");
    assert_eq!(res.status(), 201);
    drop(c);

    let attack = Arc::new(Attack::default());
    let attackers: Vec<_> = (0..SLOWLORIS)
        .map(|_| tokio::spawn(slowloris(addr, Arc::clone(&attack))))
        .collect();
    // Let the attack take every slot before the honest client arrives: once every attacker
    // has connected, 1,500 hold a slot and the other 500 wait in the backlog, where the
    // honest client queues behind them (ahead of the attackers that reconnect once cut).
    let deadline = Instant::now() + Duration::from_secs(10);
    while attack.connected.load(Ordering::Relaxed) < SLOWLORIS {
        assert!(Instant::now() < deadline, "the attackers could not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let started = Instant::now();
    let mut c = Client::plain(addr).await;
    for i in 0..APPENDS {
        let res = tokio::time::timeout(
            Duration::from_secs(20),
            c.send(
                "POST",
                "/v1/stream/s",
                &[("content-type", "text/plain")],
                "x",
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("append {i} did not complete within 20 s"))
        .expect("append");
        assert_eq!(res.status(), 204, "append {i}");
    }
    let elapsed = started.elapsed();
    // The backlog is served in order: the honest client got its slot only after the header
    // read timeout had cut at least as many attackers as were queued ahead of it. An attacker
    // notices its cut at its next one-second tick, so give the count a few ticks to catch up.
    let enough = SLOWLORIS - MAX_CONNECTIONS;
    let deadline = Instant::now() + Duration::from_secs(5);
    while attack.cut.load(Ordering::Relaxed) <= enough && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cut_so_far = attack.cut.load(Ordering::Relaxed);
    attack.stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.abort();
    }
    eprintln!(
        "slowloris: {SLOWLORIS} connections, {cut_so_far} cut by the server; {APPENDS} appends in {elapsed:?}"
    );
    assert!(
        cut_so_far > enough,
        "the header read timeout cut only {cut_so_far} slowloris connections"
    );
    let res = c
        .send("GET", "/v1/stream/s?offset=-1", &[], "")
        .await
        .expect("read");
    assert_eq!(
        crate::net::body(res).await.len(),
        APPENDS,
        "every acknowledged append is there"
    );
    drop(c);
    server.stop().await.expect("clean stop");
}

#[test]
fn limit_keys_load_from_the_environment_and_are_validated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [
        ("DS_SERVER__MAX_CONNECTIONS", "7"),
        ("DS_LIMITS__MAX_HEADER_COUNT", "20"),
        ("DS_LIMITS__MAX_HEADER_BYTES", "4096"),
        ("DS_LIMITS__MAX_LIVE_READERS", "30"),
        ("DS_LIMITS__MAX_LIVE_READERS_PER_STREAM", "3"),
        ("DS_LIMITS__RATE_LIMIT_REQUESTS_PER_SEC", "50"),
        ("DS_LIMITS__RATE_LIMIT_BURST", "10"),
        ("DS_LIMITS__RATE_LIMIT_MAX_CLIENTS", "1000"),
        ("DS_TRANSPORT__CONNECTION__HEADER_READ_TIMEOUT_SECS", "4"),
        ("DS_TRANSPORT__CONNECTION__IDLE_TIMEOUT_SECS", "45"),
    ];
    let cfg = Config::load(&ds_server::ConfigLoadOptions {
        config_dir: Some(dir.path().to_owned()),
        env: Some(
            env.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..ds_server::ConfigLoadOptions::default()
    })
    .expect("valid");
    assert_eq!(cfg.server.max_connections, 7);
    assert_eq!(
        (cfg.limits.max_header_count, cfg.limits.max_header_bytes),
        (20, 4096)
    );
    assert_eq!(
        (
            cfg.limits.max_live_readers,
            cfg.limits.max_live_readers_per_stream
        ),
        (30, 3)
    );
    assert_eq!(
        (
            cfg.limits.rate_limit_requests_per_sec,
            cfg.limits.rate_limit_burst,
            cfg.limits.rate_limit_max_clients
        ),
        (50, 10, 1000)
    );
    assert_eq!(
        (
            cfg.transport.connection.header_read_timeout_secs,
            cfg.transport.connection.idle_timeout_secs
        ),
        (4, Some(45))
    );
    let s = RouterSettings::from_config(&cfg);
    assert!(
        s.rate_limit.is_some(),
        "a positive rate turns the limiter on"
    );
    assert!(
        RouterSettings::default().rate_limit.is_none(),
        "off by default"
    );

    for (toml, key) in [
        ("[server]\nmax_connections = 0\n", "server.max_connections"),
        (
            "[transport.connection]\nheader_read_timeout_secs = 0\n",
            "header_read_timeout_secs",
        ),
        (
            "[transport.connection]\nlong_poll_timeout_secs = 30\nidle_timeout_secs = 30\n",
            "idle_timeout_secs",
        ),
        (
            "[limits]\nmax_header_count = 0\n",
            "limits.max_header_count",
        ),
        (
            "[limits]\nmax_header_bytes = 1000000\n",
            "limits.max_header_bytes",
        ),
        (
            "[limits]\nmax_live_readers = 0\n",
            "limits.max_live_readers",
        ),
        (
            "[limits]\nrate_limit_requests_per_sec = 5\nrate_limit_burst = 0\n",
            "limits.rate_limit_burst",
        ),
    ] {
        let err = Config::from_toml(toml).expect_err(toml).to_string();
        assert!(err.contains(key), "{toml}: {err}");
    }
}
