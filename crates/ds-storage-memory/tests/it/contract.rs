//! The storage contract suite, run against [`MemoryStorage`].

use std::sync::Arc;

use ds_storage::rules::ManualClock;
use ds_storage::testkit::{Capabilities, Harness, Limits};
use ds_storage_memory::{MemoryOptions, MemoryStorage};

/// Opens in-memory stores on a manual clock. Nothing survives a restart, so restart cases skip.
pub(crate) struct MemoryHarness {
    clock: Arc<ManualClock>,
}

impl MemoryHarness {
    pub(crate) fn new() -> Self {
        MemoryHarness {
            clock: Arc::new(ManualClock::new(1_700_000_000_000)),
        }
    }
}

impl Harness for MemoryHarness {
    type Store = MemoryStorage;

    async fn open_with(&self, limits: Limits) -> MemoryStorage {
        MemoryStorage::new(MemoryOptions {
            max_stream_bytes: limits.max_stream_bytes,
            max_memory_bytes: u64::MAX,
            clock: self.clock.clone(),
        })
    }

    async fn reopen(&self, _store: MemoryStorage) -> MemoryStorage {
        unreachable!("restart cases check `capabilities().persistent` before reopening")
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities { persistent: false }
    }

    fn clock(&self) -> Arc<ManualClock> {
        Arc::clone(&self.clock)
    }
}

ds_storage::contract_tests!(MemoryHarness::new());
