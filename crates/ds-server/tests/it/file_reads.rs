//! Catch-up reads of a file-backed stream over a plain TCP connection, where runs of the stream
//! file go out with `sendfile`: within the in-memory chunk size they answer exactly what the
//! same reads through the router answer; with a larger `sendfile` chunk size they answer more
//! per response and still reassemble the stream.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use ds_server::{Config, RouterSettings, build_router};
use ds_storage_file::{Durability, FileOptions, FileStorage};

use crate::net::{Client, TestServer, body, header};
use crate::util::{self, append, create, req, send};

/// Response headers a reader relies on.
const COMPARED: [&str; 7] = [
    "content-type",
    "content-length",
    "stream-next-offset",
    "stream-up-to-date",
    "stream-closed",
    "etag",
    "cache-control",
];

const PATH: &str = "/v1/stream/big";

/// A file store with one binary stream of large and small appends, a router over it, a
/// server over it with `sendfile_chunk` as its `sendfile` chunk size, and the stream's bytes.
async fn setup(dir: &std::path::Path, sendfile_chunk: u64) -> (Router, TestServer, Vec<u8>) {
    let store = Arc::new(
        FileStorage::open(FileOptions::new(dir, Durability::Durable))
            .await
            .expect("open store"),
    );
    let mut cfg = Config::default();
    // Responses end inside the large appends as well as between them.
    cfg.limits.max_read_chunk_bytes = 100_000;
    cfg.limits.max_sendfile_chunk_bytes = sendfile_chunk;
    let app = build_router(Arc::clone(&store), RouterSettings::from_config(&cfg));
    let server = TestServer::start_with(cfg, Arc::clone(&store)).await;
    create(&app, PATH, "application/octet-stream").await;
    let mut expected = String::new();
    for (i, len) in [100usize, 300_000, 5, 70_000, 40_000]
        .into_iter()
        .enumerate()
    {
        let part: String = (0..len)
            .map(|j| char::from(b'a' + ((i * 7 + j / 13) % 26) as u8))
            .collect();
        append(&app, PATH, "application/octet-stream", &part).await;
        expected.push_str(&part);
    }
    (app, server, expected.into_bytes())
}

#[tokio::test]
async fn reads_sent_from_the_file_match_reads_through_the_router() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (app, server, expected) = setup(dir.path(), 100_000).await;
    let mut tcp = Client::plain(server.addr).await;
    let mut offset = "-1".to_owned();
    let mut got = Vec::new();
    for _ in 0..20 {
        let uri = format!("{PATH}?offset={offset}");
        let over_tcp = tcp.send("GET", &uri, &[], "").await.expect("GET over TCP");
        let routed = send(&app, req("GET", &uri, &[], Body::empty())).await;
        assert_eq!(over_tcp.status(), routed.status(), "{uri}");
        for name in COMPARED {
            assert_eq!(
                header(&over_tcp, name),
                util::header(&routed, name),
                "{uri}: {name}"
            );
        }
        let next = header(&over_tcp, "stream-next-offset").expect("next offset");
        let up_to_date = header(&over_tcp, "stream-up-to-date").is_some();
        let etag = header(&over_tcp, "etag").expect("etag");
        let sent = body(over_tcp).await;
        assert!(
            sent == util::body_bytes(routed).await,
            "{uri}: bodies differ"
        );
        got.extend_from_slice(&sent);
        // A revalidation on the same connection gets a 304 without a body.
        let again = tcp
            .send("GET", &uri, &[("if-none-match", &etag)], "")
            .await
            .expect("revalidate");
        assert_eq!(again.status(), 304, "{uri}");
        assert!(body(again).await.is_empty());
        if up_to_date {
            break;
        }
        offset = next;
    }
    assert!(got == expected, "the walk reassembles the stream");
    server.stop().await.expect("clean stop");
}

#[tokio::test]
async fn a_larger_sendfile_chunk_answers_more_per_response() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (app, server, expected) = setup(dir.path(), 250_000).await;
    let mut tcp = Client::plain(server.addr).await;
    let mut offset = "-1".to_owned();
    let mut got = Vec::new();
    let mut lengths = Vec::new();
    for _ in 0..20 {
        let uri = format!("{PATH}?offset={offset}");
        let over_tcp = tcp.send("GET", &uri, &[], "").await.expect("GET over TCP");
        assert_eq!(over_tcp.status(), 200, "{uri}");
        let next = header(&over_tcp, "stream-next-offset").expect("next offset");
        let up_to_date = header(&over_tcp, "stream-up-to-date").is_some();
        let sent = body(over_tcp).await;
        // Through the router (no sendfile) the same offset answers a prefix of it.
        let routed = send(&app, req("GET", &uri, &[], Body::empty())).await;
        let routed = util::body_bytes(routed).await;
        assert!(sent.starts_with(&routed), "{uri}");
        assert!(sent.len() <= 250_000, "{uri}: {} bytes", sent.len());
        lengths.push(sent.len());
        got.extend_from_slice(&sent);
        if up_to_date {
            break;
        }
        offset = next;
    }
    assert!(got == expected, "the walk reassembles the stream");
    assert!(
        lengths.iter().any(|&n| n > 100_000),
        "some response is larger than the in-memory chunk: {lengths:?}"
    );
    server.stop().await.expect("clean stop");
}
