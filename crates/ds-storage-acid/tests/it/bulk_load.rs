//! Bulk-load mode (`AcidOptions::bulk_load`): batches commit without a sync, `close` makes
//! everything durable with one synced commit per shard, and a reopen finds it all.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ds_protocol::{NameLimits, StreamName};
use ds_storage::rules::{ManualClock, ProducerState, WriterState};
use ds_storage::{AppendRequest, CreateRequest, Error, ForkRequest, ReadFrom, Storage};
use ds_storage_acid::{AcidBackend, AcidOptions, AcidStorage};
use redb::StorageBackend;
use redb::backends::InMemoryBackend;

const TEXT: &str = "text/plain";

fn name(raw: &str) -> StreamName {
    StreamName::parse(raw, NameLimits::default()).expect("valid name")
}

fn create_req() -> CreateRequest {
    CreateRequest {
        content_type: Some(TEXT.to_owned()),
        ..CreateRequest::default()
    }
}

fn append_req(body: impl Into<Bytes>) -> AppendRequest {
    AppendRequest {
        content_type: Some(TEXT.to_owned()),
        body: body.into(),
        ..AppendRequest::default()
    }
}

fn options(dir: &Path, bulk_load: bool) -> AcidOptions {
    AcidOptions {
        shard_count: 4,
        clock: Arc::new(ManualClock::new(1_700_000_000_000)),
        bulk_load,
        ..AcidOptions::new(dir)
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

/// One shard's database in memory that counts the syncs redb asks for; it outlives the
/// databases opened on it, so a reopen finds what the last one wrote.
#[derive(Debug, Clone)]
struct CountingDisk {
    data: Arc<InMemoryBackend>,
    syncs: Arc<AtomicU64>,
}

impl CountingDisk {
    fn new() -> Self {
        CountingDisk {
            data: Arc::new(InMemoryBackend::new()),
            syncs: Arc::new(AtomicU64::new(0)),
        }
    }

    fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }
}

impl StorageBackend for CountingDisk {
    fn len(&self) -> io::Result<u64> {
        self.data.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.data.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.data.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        self.data.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.data.write(offset, data)
    }

    // The disk outlives the database: closing a database must not discard it.
    fn close(&self) -> io::Result<()> {
        Ok(())
    }
}

async fn open_on(disk: &CountingDisk, bulk_load: bool) -> AcidStorage {
    let disk = disk.clone();
    let opts = AcidOptions {
        shard_count: 1,
        backend: AcidBackend::InMemory,
        ..options(Path::new("/nonexistent"), bulk_load)
    };
    AcidStorage::open_with_backends(
        opts,
        Arc::new(move |_| Box::new(disk.clone()) as Box<dyn StorageBackend>),
    )
    .await
    .expect("open")
}

#[tokio::test]
async fn bulk_load_commits_never_sync_until_close() {
    let disk = CountingDisk::new();
    let s = name("bulk");
    let store = open_on(&disk, true).await;
    let at_open = disk.syncs();
    store.create(&s, create_req()).await.expect("create");
    for i in 0..50 {
        store
            .append(&s, append_req(format!("{i};")))
            .await
            .expect("append");
    }
    // 51 commits, one after another, and not one sync.
    assert_eq!(disk.syncs(), at_open);
    let stats = store.stats();
    assert_eq!(
        (
            stats.commit_batches,
            stats.commit_ops,
            stats.syncs,
            stats.sync_micros
        ),
        (Some(51), Some(51), Some(0), Some(0))
    );
    // Unsynced commits are committed all the same: readers see them.
    assert_eq!(read_all(&store, &s).await.len(), 140);

    // Close syncs (once per shard), and reports it while a clone still looks.
    let observer = store.clone();
    store.close().await;
    assert_eq!(observer.stats().syncs, Some(1));
    assert!(disk.syncs() > at_open);
    drop(observer);

    // The same appends without bulk load: every commit syncs.
    let store = open_on(&disk, false).await;
    let expected = (0..50)
        .map(|i| format!("{i};"))
        .collect::<Vec<_>>()
        .concat();
    assert_eq!(read_all(&store, &s).await, expected.as_bytes());
    let before = disk.syncs();
    for i in 0..10 {
        store
            .append(&s, append_req(format!("{i}")))
            .await
            .expect("append");
    }
    assert!(
        disk.syncs() >= before + 10,
        "{} syncs",
        disk.syncs() - before
    );
    assert_eq!(store.stats().syncs, Some(10));
    store.close().await;
}

#[tokio::test]
async fn everything_written_in_bulk_load_mode_is_there_after_close() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = AcidStorage::open(options(dir.path(), true))
        .await
        .expect("open");
    let names: Vec<StreamName> = (0..12).map(|i| name(&format!("s-{i}"))).collect();
    for s in &names {
        store.create(s, create_req()).await.expect("create");
    }
    // Concurrent appends: group commit batches them as usual.
    let writers: Vec<_> = names
        .iter()
        .cloned()
        .map(|s| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    store
                        .append(&s, append_req(format!("{i:03}")))
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    let fork = name("fork");
    store
        .create(
            &fork,
            CreateRequest {
                fork: Some(ForkRequest {
                    source: names[0].clone(),
                    offset: None,
                    sub_offset: 0,
                }),
                ..CreateRequest::default()
            },
        )
        .await
        .expect("fork");
    store
        .append(&fork, append_req("+fork"))
        .await
        .expect("append fork");
    store.delete(&names[11]).await.expect("delete");
    let writer = WriterState {
        closed: true,
        closed_by: Some(("p".to_owned(), 2, 7)),
        last_stream_seq: Some("0042".to_owned()),
        producers: HashMap::from([(
            "p".to_owned(),
            ProducerState {
                epoch: 2,
                last_seq: 7,
            },
        )]),
    };
    store
        .restore_writer(&names[1], writer.clone())
        .await
        .expect("restore writer");
    let stats = store.stats();
    assert_eq!(stats.syncs, Some(0));
    assert!(stats.commit_batches >= Some(12 + 3), "{stats:?}");
    store.close().await;

    // Reopened as a server would (every commit synced), everything is there.
    let store = AcidStorage::open(options(dir.path(), false))
        .await
        .expect("reopen");
    let expected = (0..100)
        .map(|i| format!("{i:03}"))
        .collect::<Vec<_>>()
        .concat();
    for s in &names[..11] {
        assert_eq!(read_all(&store, s).await, expected.as_bytes(), "{s:?}");
    }
    assert!(matches!(store.head(&names[11]).await, Err(Error::NotFound)));
    assert_eq!(
        read_all(&store, &fork).await,
        format!("{expected}+fork").as_bytes()
    );
    let meta = store.export_meta(&names[1]).await.expect("export meta");
    assert_eq!(meta.writer, writer);
    assert_eq!(store.list().await.expect("list").len(), 12);
    store.close().await;
}
