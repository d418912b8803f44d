//! Memory accounting, which only this backend has (`limits.max_memory_bytes`).

use std::sync::Arc;

use bytes::Bytes;
use ds_protocol::{Expiry, NameLimits, StreamName};
use ds_storage::rules::ManualClock;
use ds_storage::{AppendRequest, CreateRequest, Error, ForkRequest, Storage};
use ds_storage_memory::{MemoryOptions, MemoryStorage};

const BINARY: &str = "application/octet-stream";

fn name(raw: &str) -> StreamName {
    StreamName::parse(raw, NameLimits::default()).expect("valid name")
}

fn store(max_memory_bytes: u64, clock: Arc<ManualClock>) -> MemoryStorage {
    MemoryStorage::new(MemoryOptions {
        max_memory_bytes,
        max_stream_bytes: u64::MAX,
        clock,
    })
}

fn create_req() -> CreateRequest {
    CreateRequest {
        content_type: Some(BINARY.to_owned()),
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

fn fork_req(source: &StreamName) -> CreateRequest {
    CreateRequest {
        fork: Some(ForkRequest {
            source: source.clone(),
            offset: None,
            sub_offset: 0,
        }),
        ..CreateRequest::default()
    }
}

#[tokio::test]
async fn append_beyond_max_memory_bytes_is_storage_full_and_writes_nothing() {
    let store = store(100, Arc::new(ManualClock::new(0)));
    let (a, b) = (name("a"), name("b"));
    store.create(&a, create_req()).await.expect("create");
    store.create(&b, create_req()).await.expect("create");
    store.append(&a, append_req(60)).await.expect("append");
    let before = store.head(&b).await.expect("head");
    assert!(matches!(
        store.append(&b, append_req(41)).await,
        Err(Error::StorageFull { limit: 100 })
    ));
    assert_eq!(store.head(&b).await.expect("head"), before);
    assert_eq!(store.used_bytes(), 60);
    store
        .append(&b, append_req(40))
        .await
        .expect("fits exactly");
    assert_eq!(store.used_bytes(), 100);
}

#[tokio::test]
async fn create_beyond_max_memory_bytes_is_storage_full() {
    let store = store(10, Arc::new(ManualClock::new(0)));
    let req = CreateRequest {
        body: Bytes::from_static(b"eleven byte"),
        ..create_req()
    };
    assert!(matches!(
        store.create(&name("a"), req).await,
        Err(Error::StorageFull { limit: 10 })
    ));
    assert!(matches!(store.head(&name("a")).await, Err(Error::NotFound)));
    assert_eq!(store.used_bytes(), 0);
}

#[tokio::test]
async fn deleting_a_stream_frees_its_memory() {
    let store = store(100, Arc::new(ManualClock::new(0)));
    let (a, b) = (name("a"), name("b"));
    store.create(&a, create_req()).await.expect("create");
    store.append(&a, append_req(100)).await.expect("append");
    store.create(&b, create_req()).await.expect("create");
    assert!(matches!(
        store.append(&b, append_req(1)).await,
        Err(Error::StorageFull { .. })
    ));
    store.delete(&a).await.expect("delete");
    assert_eq!(store.used_bytes(), 0);
    store
        .append(&b, append_req(100))
        .await
        .expect("memory was freed");
}

#[tokio::test]
async fn forks_share_their_source_data() {
    let store = store(1000, Arc::new(ManualClock::new(0)));
    let (source, fork) = (name("src"), name("fork"));
    store.create(&source, create_req()).await.expect("create");
    store
        .append(&source, append_req(100))
        .await
        .expect("append");
    store.create(&fork, fork_req(&source)).await.expect("fork");
    assert_eq!(store.used_bytes(), 100);
    store.append(&fork, append_req(10)).await.expect("append");
    assert_eq!(store.used_bytes(), 110);
}

#[tokio::test]
async fn soft_deleted_source_holds_memory_until_last_fork_is_deleted() {
    let store = store(1000, Arc::new(ManualClock::new(0)));
    let (source, fork) = (name("src"), name("fork"));
    store.create(&source, create_req()).await.expect("create");
    store
        .append(&source, append_req(100))
        .await
        .expect("append");
    store.create(&fork, fork_req(&source)).await.expect("fork");
    store.append(&fork, append_req(10)).await.expect("append");
    store.delete(&source).await.expect("soft delete");
    assert_eq!(store.used_bytes(), 110);
    store.delete(&fork).await.expect("delete fork");
    assert_eq!(store.used_bytes(), 0);
}

#[tokio::test]
async fn sweeping_expired_streams_frees_memory() {
    let clock = Arc::new(ManualClock::new(0));
    let store = store(1000, Arc::clone(&clock));
    let s = name("ttl");
    let req = CreateRequest {
        expiry: Expiry::Ttl(1),
        ..create_req()
    };
    store.create(&s, req).await.expect("create");
    store.append(&s, append_req(100)).await.expect("append");
    clock.advance_ms(2_000);
    assert_eq!(store.sweep_expired().await.expect("sweep"), 1);
    assert_eq!(store.used_bytes(), 0);
}

#[tokio::test]
async fn rejected_appends_reserve_no_memory() {
    let store = MemoryStorage::new(MemoryOptions {
        max_memory_bytes: 1000,
        max_stream_bytes: 50,
        clock: Arc::new(ManualClock::new(0)),
    });
    let s = name("s");
    store.create(&s, create_req()).await.expect("create");
    store.append(&s, append_req(40)).await.expect("append");
    for _ in 0..10 {
        assert!(matches!(
            store.append(&s, append_req(20)).await,
            Err(Error::StreamTooLarge { limit: 50 })
        ));
    }
    assert_eq!(store.used_bytes(), 40);
}
