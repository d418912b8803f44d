//! `Storage::stats()`: live streams and bytes kept by the committer (equal to what `list()`
//! reports, and rebuilt by recovery), group commits and the operations they carried, and WAL
//! syncs with their time, in both modes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ds_protocol::Expiry;
use ds_storage::rules::ManualClock;
use ds_storage::{CreateRequest, ForkRequest, Storage, StorageStats};
use ds_storage_file::{Durability, FileOptions, FileStorage};

use crate::support::{append_req, create_req, name, producer_req};

fn options(
    dir: impl Into<PathBuf>,
    durability: Durability,
    clock: &Arc<ManualClock>,
) -> FileOptions {
    FileOptions {
        clock: Arc::clone(clock) as Arc<dyn ds_storage::rules::Clock>,
        fsync_interval: Duration::from_millis(5),
        ..FileOptions::new(dir, durability)
    }
}

/// Checks the stream counters against a full listing and returns the stats.
async fn stats_matching_list(store: &FileStorage) -> StorageStats {
    let listed = store.list().await.expect("list");
    let stats = store.stats();
    assert_eq!(stats.streams, Some(listed.len() as u64), "{listed:?}");
    assert_eq!(
        stats.bytes,
        Some(listed.iter().map(|s| s.bytes).sum::<u64>()),
        "{listed:?}"
    );
    stats
}

fn counts(s: &StorageStats) -> (u64, u64, u64, u64) {
    (
        s.commit_batches.expect("batches"),
        s.commit_ops.expect("ops"),
        s.syncs.expect("syncs"),
        s.sync_micros.expect("sync time"),
    )
}

#[tokio::test]
async fn durable_counters_follow_every_commit_and_survive_a_restart_as_gauges() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let store = FileStorage::open(options(dir.path(), Durability::Durable, &clock))
        .await
        .expect("open");
    let fresh = stats_matching_list(&store).await;
    assert_eq!(counts(&fresh), (0, 0, 0, 0));

    let (a, b, c) = (name("a"), name("b"), name("c"));
    store
        .create(
            &a,
            CreateRequest {
                body: Bytes::from_static(b"hello"),
                ..create_req()
            },
        )
        .await
        .expect("create");
    store
        .append(&a, append_req("0123456789"))
        .await
        .expect("append");
    store.create(&b, create_req()).await.expect("create");
    store
        .append(&b, producer_req("xyz", "p", 0, 0))
        .await
        .expect("append");
    store
        .append(&b, producer_req("xyz", "p", 0, 0))
        .await
        .expect("duplicate");
    let s = stats_matching_list(&store).await;
    assert_eq!((s.streams, s.bytes), (Some(2), Some(18)));
    let (batches, ops, syncs, _) = counts(&s);
    // Sequential requests: one group commit, and one fdatasync, each; a duplicate writes nothing.
    assert_eq!((batches, ops, syncs), (4, 4, 4));

    let fork = CreateRequest {
        fork: Some(ForkRequest {
            source: a.clone(),
            offset: None,
            sub_offset: 0,
        }),
        ..CreateRequest::default()
    };
    store.create(&c, fork).await.expect("fork");
    store.append(&c, append_req("abcd")).await.expect("append");
    let s = stats_matching_list(&store).await;
    assert_eq!(
        (s.streams, s.bytes),
        (Some(3), Some(22)),
        "a fork counts its own bytes"
    );
    // A source that a fork still reads is soft-deleted: no longer counted.
    store.delete(&a).await.expect("delete");
    let s = stats_matching_list(&store).await;
    assert_eq!((s.streams, s.bytes), (Some(2), Some(7)));
    let (batches, ops, syncs, _) = counts(&s);
    assert_eq!((batches, ops, syncs), (7, 7, 7));

    // Recovery rebuilds the gauges; the counters start again.
    drop(store);
    let store = FileStorage::open(options(dir.path(), Durability::Durable, &clock))
        .await
        .expect("reopen");
    let s = stats_matching_list(&store).await;
    assert_eq!((s.streams, s.bytes), (Some(2), Some(7)));
    assert_eq!(counts(&s), (0, 0, 0, 0));
    // Deleting the fork removes the soft-deleted source with it.
    store.delete(&c).await.expect("delete");
    let s = stats_matching_list(&store).await;
    assert_eq!((s.streams, s.bytes), (Some(1), Some(3)));

    // An expired stream counts until it is swept.
    let ttl = CreateRequest {
        expiry: Expiry::Ttl(1),
        body: Bytes::from_static(b"xy"),
        ..create_req()
    };
    store.create(&name("ttl"), ttl).await.expect("create");
    clock.advance_ms(2_000);
    assert_eq!(store.stats().streams, Some(2));
    assert_eq!(store.sweep_expired().await.expect("sweep"), 1);
    let s = stats_matching_list(&store).await;
    assert_eq!((s.streams, s.bytes), (Some(1), Some(3)));
    let (batches, ops, syncs, _) = counts(&s);
    // delete, create, sweep: the sweep is a commit but no client operation.
    assert_eq!((batches, ops, syncs), (3, 2, 3));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_group_commits_and_syncs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let store = FileStorage::open(options(dir.path(), Durability::Durable, &clock))
        .await
        .expect("open");
    let streams: Vec<_> = (0..8).map(|i| name(&format!("s{i}"))).collect();
    for s in &streams {
        store.create(s, create_req()).await.expect("create");
    }
    let before = store.stats();
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let (store, s) = (store.clone(), streams[i % streams.len()].clone());
            tokio::spawn(async move { store.append(&s, append_req("12345678")).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("task").expect("append");
    }
    let after = stats_matching_list(&store).await;
    assert_eq!(after.bytes, Some(64 * 8));
    let ops = after.commit_ops.expect("ops") - before.commit_ops.expect("ops");
    let batches = after.commit_batches.expect("batches") - before.commit_batches.expect("batches");
    let syncs = after.syncs.expect("syncs") - before.syncs.expect("syncs");
    assert_eq!(ops, 64, "every append is one operation");
    assert!((1..=64).contains(&batches), "{batches} batches");
    // A sync covers every batch written before it started: while one runs, the next batches
    // are written, and the next sync covers them all.
    assert!(
        (1..=batches).contains(&syncs),
        "{syncs} syncs for {batches} group commits"
    );
    assert!(
        after.sync_micros >= before.sync_micros,
        "sync time only grows"
    );
    store.close().await;
}

#[tokio::test]
async fn fast_mode_counts_background_syncs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let store = FileStorage::open(options(dir.path(), Durability::Fast, &clock))
        .await
        .expect("open");
    let s = name("fast");
    store.create(&s, create_req()).await.expect("create");
    store.append(&s, append_req("data")).await.expect("append");
    let stats = stats_matching_list(&store).await;
    assert_eq!(stats.commit_ops, Some(2));
    // The WAL is fsynced every fsync_interval (5 ms here), off the acknowledgement path.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.stats().syncs == Some(0) {
        assert!(tokio::time::Instant::now() < deadline, "no background sync");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let synced = store.stats();
    assert!(synced.syncs.expect("syncs") <= synced.commit_batches.expect("batches"));
    store.close().await;
}
