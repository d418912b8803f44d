//! Live reads never miss data: many long-poll and SSE readers on one stream while appends
//! arrive, each reader receiving every append exactly once and in order.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use http_body_util::BodyExt;

use crate::util::{body_bytes, create, header, req, router_with, send};

const MESSAGES: usize = 100;

/// Reads with long-polls from the start until EOF; returns the message numbers seen.
async fn long_poll_reader(app: Router, path: String) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut offset = "-1".to_owned();
    loop {
        let res = send(
            &app,
            req(
                "GET",
                &format!("{path}?offset={offset}&live=long-poll"),
                &[],
                Body::empty(),
            ),
        )
        .await;
        let status = res.status();
        let next = header(&res, "stream-next-offset").expect("next offset on every live answer");
        let closed = header(&res, "stream-closed").is_some();
        match status {
            StatusCode::OK => {
                let body = body_bytes(res).await;
                let msgs: Vec<serde_json::Value> =
                    serde_json::from_slice(&body).expect("JSON array");
                seen.extend(msgs.iter().map(|m| m["i"].as_u64().expect("i")));
            }
            StatusCode::NO_CONTENT => {
                assert!(next >= offset || offset == "-1", "204 went backwards");
            }
            other => panic!("unexpected status {other}"),
        }
        assert!(
            offset == "-1" || next >= offset,
            "offsets never go backwards"
        );
        offset = next;
        if closed {
            return seen;
        }
    }
}

/// Reads one SSE connection (reconnecting if the server ends it) until `streamClosed`.
async fn sse_reader(app: Router, path: String) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut offset = "-1".to_owned();
    loop {
        let res = send(
            &app,
            req(
                "GET",
                &format!("{path}?offset={offset}&live=sse"),
                &[],
                Body::empty(),
            ),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        let mut body = res.into_body();
        let mut buf = String::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("frame");
            let Some(data) = frame.data_ref() else {
                continue;
            };
            buf.push_str(std::str::from_utf8(data).expect("utf-8"));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                let mut kind = "";
                let mut payload = String::new();
                for line in event.lines() {
                    if let Some(k) = line.strip_prefix("event: ") {
                        kind = if k == "data" { "data" } else { "control" };
                    } else if let Some(d) = line.strip_prefix("data:") {
                        if !payload.is_empty() {
                            payload.push('\n');
                        }
                        payload.push_str(d.strip_prefix(' ').unwrap_or(d));
                    }
                }
                match kind {
                    "data" => {
                        let msgs: Vec<serde_json::Value> =
                            serde_json::from_str(&payload).expect("JSON array");
                        seen.extend(msgs.iter().map(|m| m["i"].as_u64().expect("i")));
                    }
                    "control" => {
                        let c: serde_json::Value =
                            serde_json::from_str(&payload).expect("control JSON");
                        c["streamNextOffset"]
                            .as_str()
                            .expect("offset")
                            .clone_into(&mut offset);
                        if c["streamClosed"] == true {
                            return seen;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_live_reader_gets_every_append_exactly_once_in_order() {
    let app = router_with(|s| {
        // A short long-poll timeout makes timeouts race with appends as often as possible.
        s.long_poll_timeout = Duration::from_millis(40);
        s.sse_reconnect_interval = Duration::from_millis(700);
    });
    let path = "/v1/stream/live-fanout".to_owned();
    create(&app, &path, "application/json").await;

    let mut readers = Vec::new();
    for _ in 0..200 {
        readers.push(tokio::spawn(long_poll_reader(app.clone(), path.clone())));
        readers.push(tokio::spawn(sse_reader(app.clone(), path.clone())));
    }
    for i in 0..MESSAGES {
        let res = send(
            &app,
            req(
                "POST",
                &path,
                &[("content-type", "application/json")],
                format!("{{\"i\":{i}}}"),
            ),
        )
        .await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..15))).await;
    }
    let res = send(
        &app,
        req("POST", &path, &[("stream-closed", "true")], Body::empty()),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    let expected: Vec<u64> = (0..MESSAGES as u64).collect();
    for (k, reader) in readers.into_iter().enumerate() {
        let seen = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("reader finished")
            .expect("reader did not panic");
        assert_eq!(
            seen,
            expected,
            "reader {k} ({})",
            if k % 2 == 0 { "long-poll" } else { "sse" }
        );
    }
}

#[tokio::test]
async fn long_poll_at_tail_times_out_with_204_and_the_waited_offset() {
    let app = router_with(|s| s.long_poll_timeout = Duration::from_millis(50));
    create(&app, "/v1/stream/lp", "text/plain").await;
    let res = send(
        &app,
        req(
            "GET",
            "/v1/stream/lp?offset=now&live=long-poll",
            &[],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        header(&res, "stream-next-offset").as_deref(),
        Some("0000000000000000_0000000000000000")
    );
    assert_eq!(header(&res, "stream-up-to-date").as_deref(), Some("true"));
    assert!(header(&res, "stream-cursor").is_some());
    assert_eq!(header(&res, "cache-control").as_deref(), Some("no-store"));
}

#[tokio::test]
async fn long_poll_on_closed_stream_at_tail_returns_at_once() {
    let app = router_with(|s| s.long_poll_timeout = Duration::from_secs(30));
    let res = send(
        &app,
        req(
            "PUT",
            "/v1/stream/c",
            &[("content-type", "text/plain"), ("stream-closed", "true")],
            "x",
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let tail = header(&res, "stream-next-offset").expect("tail");
    let res = tokio::time::timeout(
        Duration::from_secs(2),
        send(
            &app,
            req(
                "GET",
                &format!("/v1/stream/c?offset={tail}&live=long-poll"),
                &[],
                Body::empty(),
            ),
        ),
    )
    .await
    .expect("no wait on a closed stream");
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&res, "stream-closed").as_deref(), Some("true"));
    assert_eq!(header(&res, "stream-up-to-date").as_deref(), Some("true"));
}

#[tokio::test]
async fn sse_binary_streams_are_base64_with_a_control_after_each_data_event() {
    let app = router_with(|_| {});
    let res = send(
        &app,
        req(
            "PUT",
            "/v1/stream/b",
            &[
                ("content-type", "application/octet-stream"),
                ("stream-closed", "true"),
            ],
            vec![0u8, 1, 2, 255],
        ),
    )
    .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let res = send(
        &app,
        req("GET", "/v1/stream/b?offset=-1&live=sse", &[], Body::empty()),
    )
    .await;
    assert_eq!(
        header(&res, "stream-sse-data-encoding").as_deref(),
        Some("base64")
    );
    assert_eq!(
        header(&res, "content-type").as_deref(),
        Some("text/event-stream")
    );
    let text = String::from_utf8(body_bytes(res).await.to_vec()).expect("utf-8");
    assert!(text.contains("event: data\ndata:AAEC/w==\n\n"), "{text}");
    let control_at = text.find("event: control").expect("control event");
    assert!(control_at > text.find("event: data").expect("data"));
    assert!(text.contains("\"streamClosed\":true"), "{text}");
}
