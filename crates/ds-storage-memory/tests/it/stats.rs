//! `Storage::stats()`: live streams and bytes from counters, always equal to what `list()`
//! reports once expired streams are swept.

use std::sync::Arc;

use bytes::Bytes;
use ds_protocol::{Expiry, NameLimits, ProducerHeaders, StreamName};
use ds_storage::rules::ManualClock;
use ds_storage::{AppendRequest, CreateRequest, ForkRequest, Storage, StorageStats};
use ds_storage_memory::{MemoryOptions, MemoryStorage};

const BINARY: &str = "application/octet-stream";

fn name(raw: &str) -> StreamName {
    StreamName::parse(raw, NameLimits::default()).expect("valid name")
}

fn store(clock: Arc<ManualClock>) -> MemoryStorage {
    MemoryStorage::new(MemoryOptions {
        max_memory_bytes: u64::MAX,
        max_stream_bytes: u64::MAX,
        clock,
    })
}

fn create_req(body: &'static [u8]) -> CreateRequest {
    CreateRequest {
        content_type: Some(BINARY.to_owned()),
        body: Bytes::from_static(body),
        ..CreateRequest::default()
    }
}

fn append_req(len: usize) -> AppendRequest {
    AppendRequest {
        content_type: Some(BINARY.to_owned()),
        body: Bytes::from(vec![7u8; len]),
        ..AppendRequest::default()
    }
}

/// Checks the counters against a full listing and returns them.
async fn stats_matching_list(store: &MemoryStorage) -> StorageStats {
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

#[tokio::test]
async fn streams_and_bytes_follow_creates_appends_forks_and_deletes() {
    let clock = Arc::new(ManualClock::new(1_000));
    let store = store(Arc::clone(&clock));
    let (a, b, c) = (name("a"), name("b"), name("c"));
    let empty = stats_matching_list(&store).await;
    assert_eq!(
        empty,
        StorageStats {
            streams: Some(0),
            bytes: Some(0),
            ..StorageStats::default()
        },
        "nothing is committed or synced in memory"
    );

    store
        .create(&a, create_req(b"hello"))
        .await
        .expect("create");
    store.append(&a, append_req(10)).await.expect("append");
    store.create(&b, create_req(b"")).await.expect("create");
    let producer = AppendRequest {
        producer: Some(ProducerHeaders {
            id: "p".to_owned(),
            epoch: 0,
            seq: 0,
        }),
        ..append_req(3)
    };
    store.append(&b, producer.clone()).await.expect("append");
    store.append(&b, producer).await.expect("duplicate");
    let s = stats_matching_list(&store).await;
    assert_eq!(
        (s.streams, s.bytes),
        (Some(2), Some(18)),
        "a duplicate adds nothing"
    );

    // A fork counts only the bytes it stores itself.
    let fork = CreateRequest {
        fork: Some(ForkRequest {
            source: a.clone(),
            offset: None,
            sub_offset: 0,
        }),
        ..CreateRequest::default()
    };
    store.create(&c, fork).await.expect("fork");
    store.append(&c, append_req(4)).await.expect("append");
    let s = stats_matching_list(&store).await;
    assert_eq!((s.streams, s.bytes), (Some(3), Some(22)));

    // Deleting a source that a fork still reads soft-deletes it: no longer counted.
    store.delete(&a).await.expect("delete");
    let s = stats_matching_list(&store).await;
    assert_eq!((s.streams, s.bytes), (Some(2), Some(7)));
    // Deleting the fork then removes both.
    store.delete(&c).await.expect("delete");
    let s = stats_matching_list(&store).await;
    assert_eq!((s.streams, s.bytes), (Some(1), Some(3)));

    // An expired stream counts until it is swept (or touched).
    let ttl = CreateRequest {
        expiry: Expiry::Ttl(1),
        ..create_req(b"xy")
    };
    store.create(&name("ttl"), ttl).await.expect("create");
    clock.advance_ms(2_000);
    assert_eq!(store.stats().streams, Some(2));
    assert_eq!(store.sweep_expired().await.expect("sweep"), 1);
    let s = stats_matching_list(&store).await;
    assert_eq!((s.streams, s.bytes), (Some(1), Some(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_deleters_leave_consistent_counters() {
    let store = store(Arc::new(ManualClock::new(1_000)));
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    // Tasks share names, so creates, appends and deletes race on each stream.
                    let s = name(&format!("s{}", (t * 7 + i) % 16));
                    match i % 4 {
                        0 => {
                            let _ = store.create(&s, create_req(b"abc")).await;
                        }
                        3 => {
                            let _ = store.delete(&s).await;
                        }
                        _ => {
                            let _ = store.append(&s, append_req(i % 9 + 1)).await;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    stats_matching_list(&store).await;
}
