//! `/metrics` store series, read from `Storage::stats()`: counters that move with appends on
//! file-durable, and series a backend cannot measure left out.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use ds_server::{Durability, FileOptions, FileStorage, RouterSettings, build_router};

use crate::util::{body_bytes, create, req, router, send};

/// Scrapes `/metrics` into series → value text (samples without labels only).
async fn scrape(app: &Router) -> HashMap<String, String> {
    let res = send(app, req("GET", "/metrics", &[], Body::empty())).await;
    assert_eq!(res.status(), StatusCode::OK);
    let text = String::from_utf8(body_bytes(res).await.to_vec()).expect("utf-8");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.contains('{'))
        .map(|l| {
            let (name, value) = l.split_once(' ').expect("name value");
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// An integer series (counters and gauges other than seconds).
fn int(m: &HashMap<String, String>, name: &str) -> u64 {
    let v = m
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing from {m:#?}"));
    v.parse()
        .unwrap_or_else(|_| panic!("{name} = {v} is not an integer"))
}

/// A seconds series.
fn secs(m: &HashMap<String, String>, name: &str) -> f64 {
    let v = m
        .get(name)
        .unwrap_or_else(|| panic!("{name} missing from {m:#?}"));
    v.parse()
        .unwrap_or_else(|_| panic!("{name} = {v} is not a number"))
}

async fn post(app: &Router, path: &str, body: &'static str) {
    let res = send(
        app,
        req("POST", path, &[("content-type", "text/plain")], body),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT, "append to {path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_durable_commit_and_sync_counters_move_with_appends() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = FileStorage::open(FileOptions::new(dir.path(), Durability::Durable))
        .await
        .expect("open");
    let app = build_router(Arc::new(store), RouterSettings::default());

    let start = scrape(&app).await;
    for (name, value) in [
        ("ds_storage_ready", 1),
        ("ds_storage_streams", 0),
        ("ds_storage_bytes", 0),
        ("ds_storage_commit_batches_total", 0),
        ("ds_storage_commit_ops_total", 0),
        ("ds_storage_syncs_total", 0),
    ] {
        assert_eq!(int(&start, name), value, "{name} on a fresh store");
    }
    assert!(secs(&start, "ds_storage_sync_seconds_total") <= 0.0);

    create(&app, "/v1/stream/a", "text/plain").await;
    for _ in 0..3 {
        post(&app, "/v1/stream/a", "hello").await;
    }
    let after = scrape(&app).await;
    assert_eq!(int(&after, "ds_storage_streams"), 1);
    assert_eq!(int(&after, "ds_storage_bytes"), 15);
    // One at a time: each request is its own group commit and fdatasync.
    assert_eq!(int(&after, "ds_storage_commit_ops_total"), 4);
    assert_eq!(int(&after, "ds_storage_commit_batches_total"), 4);
    assert_eq!(int(&after, "ds_storage_syncs_total"), 4);
    assert!(secs(&after, "ds_storage_sync_seconds_total") >= 0.0);

    // Concurrent appends share group commits: ops move by exactly the appends, batches by at
    // most as many, and syncs by at most as many as batches (a WAL sync covers every batch
    // written before it started, and batches are written while a sync runs).
    create(&app, "/v1/stream/b", "text/plain").await;
    let before = scrape(&app).await;
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let app = app.clone();
            let path = if i % 2 == 0 {
                "/v1/stream/a"
            } else {
                "/v1/stream/b"
            };
            tokio::spawn(async move { post(&app, path, "hello").await })
        })
        .collect();
    for t in tasks {
        t.await.expect("append task");
    }
    let after = scrape(&app).await;
    let moved = |name: &str| int(&after, name) - int(&before, name);
    assert_eq!(moved("ds_storage_commit_ops_total"), 32);
    let batches = moved("ds_storage_commit_batches_total");
    assert!((1..=32).contains(&batches), "{batches} batches");
    let syncs = moved("ds_storage_syncs_total");
    assert!(
        (1..=batches).contains(&syncs),
        "{syncs} syncs for {batches} batches"
    );
    assert!(
        secs(&after, "ds_storage_sync_seconds_total")
            >= secs(&before, "ds_storage_sync_seconds_total")
    );
    assert_eq!(int(&after, "ds_storage_streams"), 2);
    assert_eq!(int(&after, "ds_storage_bytes"), 15 + 32 * 5);
    assert_eq!(int(&after, "ds_appends_total"), 35);
}

#[tokio::test]
async fn memory_reports_streams_and_bytes_but_no_commits_or_syncs() {
    let app = router();
    create(&app, "/v1/stream/m", "text/plain").await;
    post(&app, "/v1/stream/m", "abc").await;
    let m = scrape(&app).await;
    assert_eq!(int(&m, "ds_storage_streams"), 1);
    assert_eq!(int(&m, "ds_storage_bytes"), 3);
    for absent in [
        "ds_storage_commit_batches_total",
        "ds_storage_commit_ops_total",
        "ds_storage_syncs_total",
        "ds_storage_sync_seconds_total",
    ] {
        assert!(!m.contains_key(absent), "{absent} has no value on memory");
    }
}
