//! Graceful shutdown under load: 32 appenders and 100 SSE readers when shutdown is requested.
//! `/readyz` turns 503 first, every acknowledged append is in the store, every SSE reader sees
//! a complete response (no truncated event), a waiting long-poll answers, and the server
//! returns within the drain timeout.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ds_protocol::StreamName;
use ds_server::{Config, MemoryStorage, Storage};
use ds_storage::ReadFrom;
use http_body_util::BodyExt;

use crate::net::{Client, TestServer};

const APPENDERS: usize = 32;
const READERS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
async fn shutdown_under_load_drains_cleanly() {
    let cfg = Config::from_toml(
        "[server]\nshutdown_delay_secs = 1\ndrain_timeout_secs = 10\n[transport.connection]\nlong_poll_timeout_secs = 60\n",
    )
    .expect("config");
    let storage = Arc::new(MemoryStorage::default());
    let mut server = TestServer::start_with(cfg, Arc::clone(&storage)).await;
    let addr = server.addr;
    let mut c = Client::plain(addr).await;
    let res = c
        .send(
            "PUT",
            "/v1/stream/load",
            &[("content-type", "text/plain")],
            "",
        )
        .await
        .expect("create");
    assert_eq!(res.status(), 201);

    let mut readers = Vec::new();
    for _ in 0..READERS {
        readers.push(tokio::spawn(async move {
            let mut c = Client::plain(addr).await;
            let res = c
                .send("GET", "/v1/stream/load?offset=-1&live=sse", &[], "")
                .await
                .expect("sse");
            assert_eq!(res.status(), 200);
            // A clean end: the body completes without a transport error.
            res.into_body()
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
        }));
    }
    let long_poll = tokio::spawn(async move {
        let mut c = Client::plain(addr).await;
        let res = c
            .send("GET", "/v1/stream/load?offset=now&live=long-poll", &[], "")
            .await
            .expect("long-poll");
        res.status()
    });
    let mut appenders = Vec::new();
    for a in 0..APPENDERS {
        appenders.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut c = Client::plain(addr).await;
            for i in 0.. {
                let payload = format!("<{a}:{i}>");
                match c
                    .send(
                        "POST",
                        "/v1/stream/load",
                        &[("content-type", "text/plain")],
                        &payload,
                    )
                    .await
                {
                    Ok(res) if res.status().is_success() => acked.push(payload),
                    _ => break,
                }
                if i % 8 == 7 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stop_at = Instant::now();
    server.shutdown();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Inside the shutdown delay: still accepting, but not ready.
    let mut probe = Client::plain(addr).await;
    let res = probe.send("GET", "/readyz", &[], "").await.expect("readyz");
    assert_eq!(res.status(), 503, "/readyz turns 503 first");

    let status = tokio::time::timeout(Duration::from_secs(10), long_poll)
        .await
        .expect("long-poll answers during the drain")
        .expect("task");
    assert!(
        status == 204 || status == 200,
        "long-poll answered {status}"
    );
    let mut acked = HashSet::new();
    for a in appenders {
        acked.extend(a.await.expect("appender"));
    }
    for r in readers {
        let body = tokio::time::timeout(Duration::from_secs(15), r)
            .await
            .expect("SSE reader ends")
            .expect("task")
            .expect("SSE body ends cleanly");
        let text = String::from_utf8(body.to_vec()).expect("utf-8");
        assert!(
            text.ends_with("\n\n"),
            "last SSE event is complete: {text:?}"
        );
    }
    let result = tokio::time::timeout(Duration::from_secs(15), server.task)
        .await
        .expect("server returns")
        .expect("task");
    result.expect("clean shutdown");
    assert!(
        stop_at.elapsed() < Duration::from_secs(1 + 10),
        "exits within delay + drain timeout, took {:?}",
        stop_at.elapsed()
    );
    // No refused connections after: the listener is closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    assert!(
        acked.len() >= APPENDERS,
        "appends were acknowledged: {}",
        acked.len()
    );
    let name = StreamName::parse("load", ds_protocol::NameLimits::default()).expect("name");
    let mut stored = String::new();
    let mut from = ReadFrom::Start;
    loop {
        let chunk = storage.read(&name, from, 1 << 20).await.expect("read");
        for p in &chunk.pieces {
            stored.push_str(std::str::from_utf8(p).expect("utf-8"));
        }
        if chunk.up_to_date {
            break;
        }
        from = ReadFrom::At(chunk.next);
    }
    for payload in &acked {
        assert!(
            stored.contains(payload.as_str()),
            "acknowledged {payload} is stored"
        );
    }
}
