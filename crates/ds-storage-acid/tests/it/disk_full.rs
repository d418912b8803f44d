//! A full disk, injected through redb's `StorageBackend`: appends fail with `StorageFull` and
//! change nothing, the stream stays readable, nothing acknowledged is lost, and appends
//! succeed again once space is freed, without a restart.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use ds_protocol::{NameLimits, ProducerHeaders, StreamName};
use ds_storage::rules::ManualClock;
use ds_storage::{AppendOutcome, AppendRequest, CreateRequest, Error, ReadFrom, Storage};
use ds_storage_acid::{AcidBackend, AcidOptions, AcidStorage};
use redb::StorageBackend;
use redb::backends::InMemoryBackend;

const BINARY: &str = "application/octet-stream";

/// A disk of limited size holding one shard's database: it outlives the databases opened on
/// it (a reopen finds what the last one wrote), and a write or growth past its capacity fails
/// with ENOSPC after writing what fits, as a real disk tears a write that runs out of space.
#[derive(Debug, Clone)]
struct Disk {
    data: Arc<InMemoryBackend>,
    capacity: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    /// How many of the next `sync_data` calls fail with ENOSPC (after the writes landed).
    failing_syncs: Arc<AtomicU64>,
    /// Every write, growth and sync fails with ENOSPC (reopening the database fails too).
    refuse_all: Arc<AtomicBool>,
}

impl Disk {
    fn new() -> Self {
        Disk {
            data: Arc::new(InMemoryBackend::new()),
            capacity: Arc::new(AtomicU64::new(u64::MAX)),
            refused: Arc::new(AtomicU64::new(0)),
            failing_syncs: Arc::new(AtomicU64::new(0)),
            refuse_all: Arc::new(AtomicBool::new(false)),
        }
    }

    fn len(&self) -> u64 {
        self.data.len().expect("in-memory length")
    }

    fn set_capacity(&self, bytes: u64) {
        self.capacity.store(bytes, Ordering::SeqCst);
    }

    fn full(&self) -> io::Error {
        self.refused.fetch_add(1, Ordering::SeqCst);
        io::Error::from_raw_os_error(28)
    }
}

impl StorageBackend for Disk {
    fn len(&self) -> io::Result<u64> {
        self.data.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.data.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if self.refuse_all.load(Ordering::SeqCst) {
            return Err(self.full());
        }
        if len > self.data.len()? && len > self.capacity.load(Ordering::SeqCst) {
            return Err(self.full());
        }
        self.data.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        let failing = self
            .failing_syncs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() || self.refuse_all.load(Ordering::SeqCst) {
            return Err(self.full());
        }
        self.data.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.refuse_all.load(Ordering::SeqCst) {
            return Err(self.full());
        }
        let capacity = self.capacity.load(Ordering::SeqCst);
        let end = offset + data.len() as u64;
        if end > capacity {
            let fits = usize::try_from(capacity.saturating_sub(offset)).unwrap_or(usize::MAX);
            if fits > 0 {
                self.data.write(offset, &data[..fits.min(data.len())])?;
            }
            return Err(self.full());
        }
        self.data.write(offset, data)
    }

    // The disk outlives the database: closing a database must not discard it.
    fn close(&self) -> io::Result<()> {
        Ok(())
    }
}

fn name(raw: &str) -> StreamName {
    StreamName::parse(raw, NameLimits::default()).expect("valid name")
}

fn append_req(body: impl Into<Bytes>, seq: u64) -> AppendRequest {
    AppendRequest {
        content_type: Some(BINARY.to_owned()),
        body: body.into(),
        producer: Some(ProducerHeaders {
            id: "p".to_owned(),
            epoch: 0,
            seq,
        }),
        ..AppendRequest::default()
    }
}

async fn open(disk: &Disk) -> AcidStorage {
    let disk = disk.clone();
    let opts = AcidOptions {
        shard_count: 1,
        backend: AcidBackend::InMemory,
        clock: Arc::new(ManualClock::new(1_700_000_000_000)),
        ..AcidOptions::new("/nonexistent")
    };
    AcidStorage::open_with_backends(
        opts,
        Arc::new(move |_| Box::new(disk.clone()) as Box<dyn StorageBackend>),
    )
    .await
    .expect("open")
}

async fn read_all(store: &AcidStorage, s: &StreamName) -> Vec<u8> {
    let mut out = Vec::new();
    let mut from = ReadFrom::Start;
    loop {
        let chunk = store.read(s, from, 1 << 20).await.expect("read");
        out.extend(chunk.pieces.iter().flat_map(|p| p.iter().copied()));
        if chunk.up_to_date {
            return out;
        }
        from = ReadFrom::At(chunk.next);
    }
}

#[tokio::test]
async fn a_full_disk_fails_appends_cleanly_and_writes_resume_once_space_is_freed() {
    let disk = Disk::new();
    let store = open(&disk).await;
    let s = name("full");
    let create = CreateRequest {
        content_type: Some(BINARY.to_owned()),
        ..CreateRequest::default()
    };
    store.create(&s, create).await.expect("create");
    let mut acked = Vec::new();
    let mut seq = 0;
    store
        .append(&s, append_req("before", seq))
        .await
        .expect("append");
    acked.extend_from_slice(b"before");
    seq += 1;

    // Room for a few more appends, then none.
    disk.set_capacity(disk.len() + 64 * 1024);
    let mut failures = 0;
    for i in 0..10_000u32 {
        let body = vec![u8::try_from(i % 251).expect("small"); 1000];
        match store.append(&s, append_req(body.clone(), seq)).await {
            Ok(AppendOutcome::Appended { .. }) => {
                acked.extend_from_slice(&body);
                seq += 1;
            }
            Err(Error::StorageFull { limit }) => {
                assert_eq!(limit, 0, "the limit is the disk's, not a configured one");
                failures += 1;
                if failures == 3 {
                    break;
                }
            }
            other => panic!("append on a full disk: {other:?}"),
        }
    }
    assert_eq!(failures, 3, "the disk filled up");
    assert!(
        disk.refused.load(Ordering::SeqCst) > 0,
        "the disk refused writes"
    );

    // Nothing of the failed appends is visible, everything acknowledged is, and the shard
    // reopened its database so reads keep working while the disk is full.
    let head = store.head(&s).await.expect("head while full");
    assert_eq!(head.bytes, acked.len() as u64);
    assert_eq!(read_all(&store, &s).await, acked);
    assert!(store.is_ready(), "the shard reopened");

    // Space is freed: the producer's next sequence number (which failed) is accepted as new,
    // not as a duplicate, and more appends follow.
    disk.set_capacity(u64::MAX);
    for body in [&b"after"[..], b"-more"] {
        match store.append(&s, append_req(body.to_vec(), seq)).await {
            Ok(AppendOutcome::Appended { .. }) => {}
            other => panic!("append after space was freed: {other:?}"),
        }
        acked.extend_from_slice(body);
        seq += 1;
    }
    assert_eq!(read_all(&store, &s).await, acked);
    assert!(store.is_ready());

    // A restart finds exactly what was acknowledged, producer state included.
    store.close().await;
    let store = open(&disk).await;
    assert_eq!(read_all(&store, &s).await, acked);
    let meta = store.export_meta(&s).await.expect("meta");
    assert_eq!(
        meta.writer.producers.get("p").map(|p| p.last_seq),
        Some(seq - 1)
    );
    store.close().await;
}

#[tokio::test]
async fn a_create_on_a_full_disk_leaves_no_stream_behind() {
    let disk = Disk::new();
    let store = open(&disk).await;
    disk.set_capacity(disk.len() + 256 * 1024);
    let create = CreateRequest {
        content_type: Some(BINARY.to_owned()),
        body: Bytes::from(vec![7u8; 64 * 1024]),
        ..CreateRequest::default()
    };
    let mut created = 0;
    let refused = loop {
        let s = name(&format!("s{created}"));
        match store.create(&s, create.clone()).await {
            Ok(_) => created += 1,
            Err(Error::StorageFull { .. }) => break s,
            Err(e) => panic!("create on a full disk: {e:?}"),
        }
        assert!(created < 1000, "the disk never filled up");
    };
    assert!(matches!(store.head(&refused).await, Err(Error::NotFound)));
    assert_eq!(store.list().await.expect("list").len(), created);
    disk.set_capacity(u64::MAX);
    store
        .create(&refused, create)
        .await
        .expect("create once space is freed");
    assert_eq!(read_all(&store, &refused).await, vec![7u8; 64 * 1024]);
    for i in 0..created {
        assert_eq!(
            read_all(&store, &name(&format!("s{i}"))).await,
            vec![7u8; 64 * 1024]
        );
    }
    store.close().await;
}

/// An fsync failing with ENOSPC (NFS, thin provisioning) after the commit's writes landed: the
/// commit reached the disk, so the client must not be told that nothing was written (a retry
/// would duplicate the append). The shard stops (its database no longer matches what the
/// store thinks is committed), and a restart finds the append.
#[tokio::test]
async fn a_commit_whose_fsync_fails_with_enospc_is_not_reported_as_nothing_written() {
    let disk = Disk::new();
    let store = open(&disk).await;
    let s = name("s");
    let create = CreateRequest {
        content_type: Some(BINARY.to_owned()),
        ..CreateRequest::default()
    };
    store.create(&s, create).await.expect("create");
    store
        .append(&s, append_req("before", 0))
        .await
        .expect("append");
    disk.failing_syncs.store(1, Ordering::SeqCst);
    let failed = store.append(&s, append_req("-landed", 1)).await;
    assert!(
        matches!(failed, Err(Error::Backend { .. })),
        "a commit that may have reached the disk is not \"storage full\": {failed:?}"
    );
    assert!(!store.is_ready());
    store.close().await;
    let store = open(&disk).await;
    assert_eq!(read_all(&store, &s).await, b"before-landed");
    store.close().await;
}

/// A full disk that leaves the shard unable even to reopen its database: once space is freed
/// the committer reopens it on its own, without waiting for a write, so reads work again and
/// the store reports ready.
#[tokio::test]
async fn a_shard_too_full_to_reopen_recovers_without_a_write_once_space_is_freed() {
    let disk = Disk::new();
    let store = open(&disk).await;
    let s = name("s");
    let create = CreateRequest {
        content_type: Some(BINARY.to_owned()),
        ..CreateRequest::default()
    };
    store.create(&s, create).await.expect("create");
    store
        .append(&s, append_req("before", 0))
        .await
        .expect("append");
    disk.refuse_all.store(true, Ordering::SeqCst);
    let failed = store.append(&s, append_req(vec![1u8; 100_000], 1)).await;
    assert!(
        matches!(
            failed,
            Err(Error::StorageFull { .. } | Error::Backend { .. })
        ),
        "{failed:?}"
    );
    assert!(!store.is_ready(), "the shard could not reopen its database");
    assert!(store.read(&s, ReadFrom::Start, 1024).await.is_err());
    disk.refuse_all.store(false, Ordering::SeqCst);
    let mut waited = 0;
    while !store.is_ready() {
        assert!(waited < 100, "the shard was not reopened without a write");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        waited += 1;
    }
    assert_eq!(read_all(&store, &s).await, b"before");
    store
        .append(&s, append_req("-after", 1))
        .await
        .expect("append once space is freed");
    assert_eq!(read_all(&store, &s).await, b"before-after");
    store.close().await;
}
