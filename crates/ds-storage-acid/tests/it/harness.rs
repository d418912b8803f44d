//! Harnesses that open [`AcidStorage`] for the contract suite and the backend's own tests.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ds_storage::rules::ManualClock;
use ds_storage::testkit::{Capabilities, Harness, Limits};
use ds_storage_acid::{AcidBackend, AcidOptions, AcidStorage};
use tempfile::TempDir;

/// Opens stores in a fresh temporary directory on a manual clock. With the file backend a
/// reopen closes the store and opens the same directory again, as a process restart would.
pub(crate) struct AcidHarness {
    backend: AcidBackend,
    shard_count: u32,
    /// [`AcidOptions::bulk_load`].
    bulk_load: bool,
    dir: TempDir,
    clock: Arc<ManualClock>,
    /// The directory and limits of the store last opened (what `reopen` opens again).
    current: Mutex<Option<(PathBuf, Limits)>>,
    opened: Mutex<u32>,
}

impl AcidHarness {
    /// File-backed stores with four shards, so forks and their sources often live in
    /// different shards.
    pub(crate) fn file() -> Self {
        Self::new(AcidBackend::File, 4)
    }

    /// Like [`AcidHarness::file`], in bulk-load mode: commits are synced only by `close`,
    /// which a reopen runs, so every restart case must still find everything.
    pub(crate) fn bulk_load() -> Self {
        AcidHarness {
            bulk_load: true,
            ..Self::file()
        }
    }

    /// redb's in-memory backend: nothing survives a restart.
    pub(crate) fn in_memory() -> Self {
        Self::new(AcidBackend::InMemory, 2)
    }

    fn new(backend: AcidBackend, shard_count: u32) -> Self {
        AcidHarness {
            backend,
            shard_count,
            bulk_load: false,
            dir: tempfile::tempdir().expect("a temporary directory can be created"),
            clock: Arc::new(ManualClock::new(1_700_000_000_000)),
            current: Mutex::new(None),
            opened: Mutex::new(0),
        }
    }

    fn options(&self, dir: PathBuf, limits: Limits) -> AcidOptions {
        AcidOptions {
            shard_count: self.shard_count,
            backend: self.backend,
            max_stream_bytes: Some(limits.max_stream_bytes),
            clock: self.clock.clone(),
            bulk_load: self.bulk_load,
            ..AcidOptions::new(dir)
        }
    }
}

impl Harness for AcidHarness {
    type Store = AcidStorage;

    async fn open_with(&self, limits: Limits) -> AcidStorage {
        let dir = {
            let mut n = self.opened.lock().expect("harness lock");
            *n += 1;
            self.dir.path().join(format!("store-{n}"))
        };
        *self.current.lock().expect("harness lock") = Some((dir.clone(), limits));
        AcidStorage::open(self.options(dir, limits))
            .await
            .expect("a fresh store opens")
    }

    async fn reopen(&self, store: AcidStorage) -> AcidStorage {
        store.close().await;
        let (dir, limits) = self
            .current
            .lock()
            .expect("harness lock")
            .clone()
            .expect("a store was opened");
        AcidStorage::open(self.options(dir, limits))
            .await
            .expect("the store reopens")
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistent: self.backend == AcidBackend::File,
        }
    }

    fn clock(&self) -> Arc<ManualClock> {
        Arc::clone(&self.clock)
    }
}
