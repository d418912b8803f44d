//! Helpers shared by the test modules.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use ds_protocol::{NameLimits, ProducerHeaders, StreamName};
use ds_storage::rules::ManualClock;
use ds_storage::testkit::{Capabilities, Harness, Limits};
use ds_storage::{AppendRequest, CreateRequest, ReadFrom, Storage};
use ds_storage_file::{Durability, FileOptions, FileStorage};
use tempfile::TempDir;

pub(crate) const BINARY: &str = "application/octet-stream";

/// Opens file stores in a temporary directory on a manual clock; `reopen` drops the store (as
/// a process exit would) and opens the same directory again.
pub(crate) struct FileHarness {
    dir: TempDir,
    clock: Arc<ManualClock>,
    durability: Durability,
    opened: AtomicUsize,
    limits: Mutex<Limits>,
}

impl FileHarness {
    pub(crate) fn new(durability: Durability) -> Self {
        FileHarness {
            dir: tempfile::tempdir().expect("temp dir"),
            clock: Arc::new(ManualClock::new(1_700_000_000_000)),
            durability,
            opened: AtomicUsize::new(0),
            limits: Mutex::new(Limits::default()),
        }
    }

    fn options(&self, dir: std::path::PathBuf, limits: Limits) -> FileOptions {
        FileOptions {
            max_stream_bytes: Some(limits.max_stream_bytes),
            clock: self.clock.clone(),
            ..FileOptions::new(dir, self.durability)
        }
    }
}

impl Harness for FileHarness {
    type Store = FileStorage;

    async fn open_with(&self, limits: Limits) -> FileStorage {
        *self.limits.lock().expect("limits") = limits;
        let n = self.opened.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.path().join(format!("store-{n}"));
        FileStorage::open(self.options(dir, limits))
            .await
            .expect("open store")
    }

    async fn reopen(&self, store: FileStorage) -> FileStorage {
        let dir = store.data_dir().to_owned();
        drop(store);
        let limits = *self.limits.lock().expect("limits");
        FileStorage::open(self.options(dir, limits))
            .await
            .expect("reopen store")
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { persistent: true }
    }

    fn clock(&self) -> Arc<ManualClock> {
        Arc::clone(&self.clock)
    }
}

pub(crate) fn name(raw: &str) -> StreamName {
    StreamName::parse(raw, NameLimits::default()).expect("valid name")
}

pub(crate) fn create_req() -> CreateRequest {
    CreateRequest {
        content_type: Some(BINARY.to_owned()),
        ..CreateRequest::default()
    }
}

pub(crate) fn append_req(body: impl Into<Bytes>) -> AppendRequest {
    AppendRequest {
        content_type: Some(BINARY.to_owned()),
        body: body.into(),
        ..AppendRequest::default()
    }
}

pub(crate) fn producer_req(
    body: impl Into<Bytes>,
    id: &str,
    epoch: u64,
    seq: u64,
) -> AppendRequest {
    AppendRequest {
        producer: Some(ProducerHeaders {
            id: id.to_owned(),
            epoch,
            seq,
        }),
        ..append_req(body)
    }
}

/// The whole stream's bytes.
pub(crate) async fn read_all<S: Storage>(
    store: &S,
    stream: &StreamName,
) -> ds_storage::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut from = ReadFrom::Start;
    loop {
        let chunk = store.read(stream, from, 1 << 20).await?;
        for p in &chunk.pieces {
            out.extend_from_slice(p);
        }
        if chunk.up_to_date {
            return Ok(out);
        }
        from = ReadFrom::At(chunk.next);
    }
}
