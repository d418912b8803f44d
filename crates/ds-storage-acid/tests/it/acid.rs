//! What only this backend promises: group commit, recovery after a restart, one process per
//! data dir, forks across shards, space reclamation and its options.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use ds_protocol::{Expiry, NameLimits, Offset, ProducerHeaders, StreamName};
use ds_storage::rules::ManualClock;
use ds_storage::{
    AppendOutcome, AppendRequest, CreateRequest, Error, ForkRequest, ProducerAck, ReadFrom,
    Storage, StorageStats,
};
use ds_storage_acid::{AcidBackend, AcidOptions, AcidStorage};

const BINARY: &str = "application/octet-stream";
const JSON: &str = "application/json";

fn name(raw: &str) -> StreamName {
    StreamName::parse(raw, NameLimits::default()).expect("valid name")
}

fn options(dir: &Path, shard_count: u32, clock: &Arc<ManualClock>) -> AcidOptions {
    AcidOptions {
        shard_count,
        clock: clock.clone(),
        ..AcidOptions::new(dir)
    }
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_700_000_000_000))
}

fn create_req(content_type: &str) -> CreateRequest {
    CreateRequest {
        content_type: Some(content_type.to_owned()),
        ..CreateRequest::default()
    }
}

fn append_req(content_type: &str, body: impl Into<Bytes>) -> AppendRequest {
    AppendRequest {
        content_type: Some(content_type.to_owned()),
        body: body.into(),
        ..AppendRequest::default()
    }
}

fn fork_req(source: &StreamName, offset: Option<Offset>, sub_offset: u64) -> CreateRequest {
    CreateRequest {
        fork: Some(ForkRequest {
            source: source.clone(),
            offset,
            sub_offset,
        }),
        ..CreateRequest::default()
    }
}

async fn read_all(store: &AcidStorage, s: &StreamName) -> Vec<u8> {
    let mut out = Vec::new();
    let mut from = ReadFrom::Start;
    loop {
        let chunk = store.read(s, from, 1 << 20).await.expect("read");
        out.extend(chunk.pieces.concat());
        if chunk.up_to_date {
            return out;
        }
        from = ReadFrom::At(chunk.next);
    }
}

/// The shard of a name: FNV-1a 64 of the name, masked (part of the on-disk format).
fn shard_of(raw: &str, shard_count: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in raw.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash & (shard_count - 1)
}

/// A name with `prefix` that lives in shard `shard`.
fn name_in_shard(prefix: &str, shard: u64, shard_count: u64) -> StreamName {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|raw| shard_of(raw, shard_count) == shard)
        .map(|raw| name(&raw))
        .expect("some name hashes to every shard")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = AcidStorage::open(options(dir.path(), 1, &clock()))
        .await
        .expect("open");
    let streams: Vec<StreamName> = (0..64).map(|i| name(&format!("s-{i}"))).collect();
    for s in &streams {
        store.create(s, create_req(BINARY)).await.expect("create");
    }
    let (commits, ops) = (store.commit_count(), store.committed_ops());
    let tasks: Vec<_> = streams
        .iter()
        .map(|s| {
            let (store, s) = (store.clone(), s.clone());
            tokio::spawn(async move { store.append(&s, append_req(BINARY, vec![1u8; 256])).await })
        })
        .collect();
    for t in tasks {
        assert!(matches!(
            t.await.expect("task"),
            Ok(AppendOutcome::Appended { .. })
        ));
    }
    let commits = store.commit_count() - commits;
    assert_eq!(store.committed_ops() - ops, 64);
    assert!(
        commits <= 16,
        "64 concurrent appends took {commits} commits: they were not grouped"
    );
    for s in &streams {
        assert_eq!(read_all(&store, s).await, vec![1u8; 256]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejected_operation_does_not_sink_its_batch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = AcidStorage::open(options(dir.path(), 1, &clock()))
        .await
        .expect("open");
    let s = name("mixed");
    store.create(&s, create_req(BINARY)).await.expect("create");
    let commits = store.commit_count();
    let tasks: Vec<_> = (0..32u8)
        .map(|i| {
            let (store, s) = (store.clone(), s.clone());
            // Every other append has the wrong content type; every fourth is a JSON append to
            // a binary stream with a body that is not even JSON.
            let content_type = if i % 2 == 0 { BINARY } else { JSON };
            let body = if i % 4 == 1 { vec![b'{'] } else { vec![i] };
            tokio::spawn(async move { (i, store.append(&s, append_req(content_type, body)).await) })
        })
        .collect();
    let mut accepted = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            (i, Ok(AppendOutcome::Appended { .. })) if i % 2 == 0 => accepted.push(i),
            (i, Err(Error::ContentTypeMismatch { .. })) if i % 2 == 1 => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        store.commit_count() - commits < 16,
        "appends were not grouped"
    );
    let mut data = read_all(&store, &s).await;
    data.sort_unstable();
    accepted.sort_unstable();
    assert_eq!(data, accepted);
    assert_eq!(store.head(&s).await.expect("head").bytes, 16);
}

#[tokio::test]
async fn retry_of_a_committed_append_after_restart_is_a_duplicate() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = clock();
    let s = name("producer");
    let req = AppendRequest {
        producer: Some(ProducerHeaders {
            id: "writer-1".to_owned(),
            epoch: 3,
            seq: 0,
        }),
        ..append_req(BINARY, "once")
    };
    let store = AcidStorage::open(options(dir.path(), 4, &clock))
        .await
        .expect("open");
    store.create(&s, create_req(BINARY)).await.expect("create");
    let first = store.append(&s, req.clone()).await.expect("append");
    let AppendOutcome::Appended { next, .. } = first else {
        panic!("expected Appended, got {first:?}");
    };
    store.close().await;

    // The acknowledgement was lost; the producer retries against the restarted server.
    let store = AcidStorage::open(options(dir.path(), 4, &clock))
        .await
        .expect("reopen");
    assert_eq!(
        store.append(&s, req).await.expect("retry"),
        AppendOutcome::Duplicate {
            next,
            closed: false,
            producer: ProducerAck { epoch: 3, seq: 0 },
        }
    );
    assert_eq!(read_all(&store, &s).await, b"once");
}

#[tokio::test]
async fn a_data_dir_in_use_cannot_be_opened_twice() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = clock();
    let first = AcidStorage::open(options(dir.path(), 4, &clock))
        .await
        .expect("open");
    let err = AcidStorage::open(options(dir.path(), 4, &clock))
        .await
        .expect_err("the directory is locked");
    let source = match &err {
        Error::Backend { source, .. } => source.to_string(),
        other => panic!("expected a backend error, got {other:?}"),
    };
    assert!(source.contains("in use"), "unclear error: {source}");
    assert!(
        source.contains(&dir.path().display().to_string()),
        "{source}"
    );
    assert!(
        source.contains(&format!("pid {}", std::process::id())),
        "the holder's PID is named: {source}"
    );
    first.close().await;
    AcidStorage::open(options(dir.path(), 4, &clock))
        .await
        .expect("free again after close");
}

#[tokio::test]
async fn shard_count_is_checked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = clock();
    for bad in [0, 3, 512] {
        let err = AcidStorage::open(options(&dir.path().join("bad"), bad, &clock))
            .await
            .expect_err("invalid shard count");
        assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    }
    let store = AcidStorage::open(options(dir.path(), 4, &clock))
        .await
        .expect("open");
    store.close().await;
    for other in [2, 8] {
        let err = AcidStorage::open(options(dir.path(), other, &clock))
            .await
            .expect_err("a data dir keeps its shard count");
        let Error::Backend { source, .. } = err else {
            panic!("expected a backend error");
        };
        assert!(source.to_string().contains("shard"), "{source}");
    }
}

/// A new data dir gets one shard per core, rounded down to a power of two (the only counts
/// `open` accepts), from 1 to 4; `AcidOptions::new` uses this machine's.
#[tokio::test]
async fn the_default_shard_count_follows_the_cores() {
    let counts: Vec<u32> = (0..=9)
        .map(ds_storage_acid::shard_count_for_cores)
        .collect();
    assert_eq!(counts, [1, 1, 2, 2, 4, 4, 4, 4, 4, 4]);
    assert_eq!(ds_storage_acid::shard_count_for_cores(usize::MAX), 4);
    assert_eq!(ds_storage_acid::MAX_DEFAULT_SHARD_COUNT, 4);
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let default = ds_storage_acid::default_shard_count();
    assert_eq!(default, ds_storage_acid::shard_count_for_cores(cores));
    let dir = tempfile::tempdir().expect("temp dir");
    let store = AcidStorage::open(AcidOptions::new(dir.path()))
        .await
        .expect("open");
    store.close().await;
    assert_eq!(
        ds_storage_acid::stored_shard_count(dir.path()).expect("readable"),
        Some(default)
    );
}

#[tokio::test]
async fn forks_across_shards_survive_restart_and_cascade() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = clock();
    let (a, b, c) = (
        name_in_shard("a", 0, 4),
        name_in_shard("b", 1, 4),
        name_in_shard("c", 2, 4),
    );
    let store = AcidStorage::open(options(dir.path(), 4, &clock))
        .await
        .expect("open");
    store.create(&a, create_req(BINARY)).await.expect("create");
    store
        .append(&a, append_req(BINARY, "hello"))
        .await
        .expect("append");
    store
        .create(&b, fork_req(&a, Some(Offset::ZERO), 4))
        .await
        .expect("fork b");
    store
        .append(&b, append_req(BINARY, "-B"))
        .await
        .expect("append");
    store
        .create(&c, fork_req(&b, None, 0))
        .await
        .expect("fork c");
    store
        .append(&c, append_req(BINARY, "-C"))
        .await
        .expect("append");
    store.delete(&a).await.expect("soft delete a");
    store.delete(&b).await.expect("soft delete b");
    let before = store.head(&c).await.expect("head");

    let store = {
        store.close().await;
        AcidStorage::open(options(dir.path(), 4, &clock))
            .await
            .expect("reopen")
    };
    assert_eq!(store.head(&c).await.expect("head"), before);
    assert_eq!(read_all(&store, &c).await, b"hell-B-C");
    assert!(matches!(store.head(&a).await, Err(Error::Gone)));
    assert!(matches!(store.head(&b).await, Err(Error::Gone)));
    store.delete(&c).await.expect("delete c");
    for s in [&a, &b, &c] {
        assert!(matches!(store.head(s).await, Err(Error::NotFound)), "{s}");
    }

    let store = {
        store.close().await;
        AcidStorage::open(options(dir.path(), 4, &clock))
            .await
            .expect("reopen")
    };
    assert!(store.list().await.expect("list").is_empty());
    store
        .create(&a, create_req(BINARY))
        .await
        .expect("names are free");
    assert!(read_all(&store, &a).await.is_empty());
}

#[tokio::test]
async fn plain_appends_are_recovered_from_their_records() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = clock();
    let (json, fork) = (name("json"), name("fork"));
    let store = AcidStorage::open(options(dir.path(), 2, &clock))
        .await
        .expect("open");
    store.create(&json, create_req(JSON)).await.expect("create");
    store
        .append(&json, append_req(JSON, "[1,22,333]"))
        .await
        .expect("append");
    store
        .create(&fork, fork_req(&json, Some(Offset::ZERO), 2))
        .await
        .expect("fork");
    store
        .append(&fork, append_req(JSON, r#"["x","y"]"#))
        .await
        .expect("append");
    let heads = (
        store.head(&json).await.expect("head"),
        store.head(&fork).await.expect("head"),
    );
    assert_eq!(heads.1.bytes, 6);
    store.close().await;
    let store = AcidStorage::open(options(dir.path(), 2, &clock))
        .await
        .expect("reopen");
    assert_eq!(
        (
            store.head(&json).await.expect("head"),
            store.head(&fork).await.expect("head")
        ),
        heads
    );
    let chunk = store
        .read(&fork, ReadFrom::Start, 1 << 20)
        .await
        .expect("read");
    let messages: Vec<&[u8]> = chunk.pieces.iter().map(AsRef::as_ref).collect();
    assert_eq!(
        messages,
        [&b"1"[..], &b"22"[..], &br#""x""#[..], &br#""y""#[..]]
    );
}

#[tokio::test]
async fn a_read_persists_a_sliding_ttl_once_half_of_it_passed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = clock();
    let s = name("ttl");
    let store = AcidStorage::open(options(dir.path(), 1, &clock))
        .await
        .expect("open");
    let req = CreateRequest {
        expiry: Expiry::Ttl(10),
        ..create_req(BINARY)
    };
    store.create(&s, req).await.expect("create");
    clock.advance_ms(6_000);
    store.read(&s, ReadFrom::Start, 100).await.expect("read");
    store.close().await;
    let store = AcidStorage::open(options(dir.path(), 1, &clock))
        .await
        .expect("reopen");
    clock.advance_ms(6_000);
    store
        .head(&s)
        .await
        .expect("alive: the read 6 s ago was persisted");
    clock.advance_ms(5_000);
    assert!(matches!(store.head(&s).await, Err(Error::NotFound)));
}

#[tokio::test]
async fn without_a_limit_streams_are_unbounded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = AcidStorage::open(AcidOptions {
        max_stream_bytes: None,
        ..options(dir.path(), 1, &clock())
    })
    .await
    .expect("open");
    let s = name("big");
    store.create(&s, create_req(BINARY)).await.expect("create");
    for _ in 0..3 {
        store
            .append(&s, append_req(BINARY, vec![9u8; 1 << 20]))
            .await
            .expect("append");
    }
    assert_eq!(store.head(&s).await.expect("head").bytes, 3 << 20);
}

#[tokio::test]
async fn deleting_streams_reclaims_space() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = AcidStorage::open(options(dir.path(), 1, &clock()))
        .await
        .expect("open");
    let file = dir.path().join("shard-00.redb");
    let size = || std::fs::metadata(&file).expect("shard file").len();
    let mut after_first = 0;
    for round in 0..8u8 {
        let s = name(&format!("churn-{round}"));
        store.create(&s, create_req(BINARY)).await.expect("create");
        for _ in 0..16 {
            store
                .append(&s, append_req(BINARY, vec![round; 64 * 1024]))
                .await
                .expect("append");
        }
        store.delete(&s).await.expect("delete");
        if round == 0 {
            after_first = size();
        }
    }
    // Eight rounds of 1 MiB each; freed pages are reused, so the file does not grow by 7 MiB.
    assert!(
        size() < after_first + (3 << 20),
        "file grew from {after_first} to {} bytes",
        size()
    );
}

#[tokio::test]
async fn the_in_memory_backend_writes_no_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("unused");
    let store = AcidStorage::open(AcidOptions {
        backend: AcidBackend::InMemory,
        ..options(&data_dir, 16, &clock())
    })
    .await
    .expect("open");
    let s = name("ephemeral");
    store.create(&s, create_req(BINARY)).await.expect("create");
    store
        .append(&s, append_req(BINARY, "x"))
        .await
        .expect("append");
    assert!(store.is_ready());
    assert!(!data_dir.exists());
}

#[tokio::test]
async fn stats_follow_streams_bytes_and_commits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = clock();
    let (a, b, c) = (
        name_in_shard("a", 0, 4),
        name_in_shard("b", 1, 4),
        name_in_shard("c", 2, 4),
    );
    let store = AcidStorage::open(options(dir.path(), 4, &clock))
        .await
        .expect("open");
    assert_eq!(
        store.stats(),
        StorageStats {
            streams: Some(0),
            bytes: Some(0),
            commit_batches: Some(0),
            commit_ops: Some(0),
            syncs: Some(0),
            sync_micros: Some(0),
        }
    );
    let with_body = CreateRequest {
        body: Bytes::from_static(b"abc"),
        ..create_req(BINARY)
    };
    store.create(&a, with_body).await.expect("create a");
    store
        .append(&a, append_req(BINARY, "hello"))
        .await
        .expect("append a");
    store
        .create(&b, fork_req(&a, None, 0))
        .await
        .expect("fork b");
    store
        .append(&b, append_req(BINARY, "-B"))
        .await
        .expect("append b");
    store
        .create(&c, create_req(BINARY))
        .await
        .expect("create c");
    store
        .append(&c, append_req(BINARY, "0123456789"))
        .await
        .expect("append c");
    let s = store.stats();
    // A fork counts only its own bytes.
    assert_eq!((s.streams, s.bytes), (Some(3), Some(3 + 5 + 2 + 10)));
    // One after another, each operation is its own durable commit.
    assert_eq!(
        (s.commit_batches, s.commit_ops, s.syncs),
        (Some(6), Some(6), Some(6))
    );
    assert!(s.sync_micros.is_some_and(|us| us > 0), "{s:?}");

    // A source with a fork is soft-deleted: no longer live.
    store.delete(&a).await.expect("soft delete a");
    let s = store.stats();
    assert_eq!((s.streams, s.bytes), (Some(2), Some(2 + 10)));
    assert_eq!((s.commit_batches, s.commit_ops), (Some(7), Some(7)));

    // The totals are recounted at open; the commit counters start again.
    store.close().await;
    let store = AcidStorage::open(options(dir.path(), 4, &clock))
        .await
        .expect("reopen");
    let s = store.stats();
    assert_eq!((s.streams, s.bytes), (Some(2), Some(12)));
    assert_eq!((s.commit_batches, s.syncs), (Some(0), Some(0)));

    // Deleting the last fork removes it and (then) its soft-deleted source.
    store.delete(&b).await.expect("delete b");
    let s = store.stats();
    assert_eq!((s.streams, s.bytes), (Some(1), Some(10)));
    store.delete(&c).await.expect("delete c");
    store
        .create(&c, create_req(BINARY))
        .await
        .expect("create c");
    let s = store.stats();
    assert_eq!((s.streams, s.bytes), (Some(1), Some(0)));
    assert!(s.commit_batches >= Some(3) && s.commit_batches == s.syncs);
}

#[tokio::test]
async fn the_stored_shard_count_can_be_read_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    assert_eq!(
        ds_storage_acid::stored_shard_count(&data_dir).expect("missing dir"),
        None
    );
    std::fs::create_dir(&data_dir).expect("create dir");
    assert_eq!(
        ds_storage_acid::stored_shard_count(&data_dir).expect("empty dir"),
        None
    );
    let store = AcidStorage::open(options(&data_dir, 8, &clock()))
        .await
        .expect("open");
    // While the store has it open, the count cannot be read (and the dir is reported in use).
    assert!(ds_storage_acid::stored_shard_count(&data_dir).is_err());
    store.close().await;
    assert_eq!(
        ds_storage_acid::stored_shard_count(&data_dir).expect("read back"),
        Some(8)
    );
    let store = AcidStorage::open(options(&data_dir, 8, &clock()))
        .await
        .expect("reopen after the probe");
    store.close().await;
}
