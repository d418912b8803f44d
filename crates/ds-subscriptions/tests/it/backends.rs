//! The stores the persistence scenarios run on: the memory backend (the engine restarts over
//! the same live store: its reload logic, not durability) and the durable backends, closed and
//! reopened on the same data directory as a process restart would.

use std::sync::Arc;
use std::time::Duration;

use ds_storage::Storage;
use ds_storage_acid::{AcidOptions, AcidStorage};
use ds_storage_file::{Durability, FileOptions, FileStorage};
use ds_storage_memory::MemoryStorage;
use tempfile::TempDir;

/// How a scenario opens its store and restarts it.
pub(crate) trait Backend {
    /// The store.
    type Store: Storage;

    /// Opens the store: empty on the first call.
    async fn open(&self) -> Arc<Self::Store>;

    /// Closes `store` (once the stopped engine has let go of it) and opens the same data again.
    async fn reopen(&self, store: Arc<Self::Store>) -> Arc<Self::Store>;
}

/// Waits until `store` has no other owner: a stopped engine's background tasks (the state
/// writer, a delivery finishing) drop their handles shortly after the engine goes.
pub(crate) async fn sole<S>(mut store: Arc<S>) -> S {
    for _ in 0..1000 {
        match Arc::try_unwrap(store) {
            Ok(store) => return store,
            Err(shared) => store = shared,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the store is still shared 10 s after the engine stopped");
}

/// The memory backend: a restart keeps the live store.
pub(crate) struct Memory;

impl Backend for Memory {
    type Store = MemoryStorage;

    async fn open(&self) -> Arc<MemoryStorage> {
        Arc::new(MemoryStorage::default())
    }

    async fn reopen(&self, store: Arc<MemoryStorage>) -> Arc<MemoryStorage> {
        store
    }
}

/// `file-fast` or `file-durable` in a temporary directory.
pub(crate) struct File {
    dir: TempDir,
    durability: Durability,
}

impl File {
    pub(crate) fn new(durability: Durability) -> File {
        File {
            dir: tempfile::tempdir().expect("temp dir"),
            durability,
        }
    }
}

impl Backend for File {
    type Store = FileStorage;

    async fn open(&self) -> Arc<FileStorage> {
        let opts = FileOptions::new(self.dir.path().join("data"), self.durability);
        Arc::new(FileStorage::open(opts).await.expect("open the file store"))
    }

    async fn reopen(&self, store: Arc<FileStorage>) -> Arc<FileStorage> {
        sole(store).await.close().await;
        self.open().await
    }
}

/// `acid` with file-backed shards in a temporary directory.
pub(crate) struct Acid {
    dir: TempDir,
}

impl Acid {
    pub(crate) fn new() -> Acid {
        Acid {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
}

impl Backend for Acid {
    type Store = AcidStorage;

    async fn open(&self) -> Arc<AcidStorage> {
        let opts = AcidOptions {
            shard_count: 4,
            ..AcidOptions::new(self.dir.path().join("data"))
        };
        Arc::new(AcidStorage::open(opts).await.expect("open the acid store"))
    }

    async fn reopen(&self, store: Arc<AcidStorage>) -> Arc<AcidStorage> {
        sole(store).await.close().await;
        self.open().await
    }
}
