//! The storage contract suite, run against both redb backends and the bulk-load mode.

/// File-backed shards (persistent: restart cases run).
mod file {
    use crate::harness::AcidHarness;

    ds_storage::contract_tests!(AcidHarness::file());
}

/// File-backed shards in bulk-load mode (unsynced commits, synced by `close`).
mod bulk_load {
    use crate::harness::AcidHarness;

    ds_storage::contract_tests!(AcidHarness::bulk_load());
}

/// redb's in-memory backend (not persistent: restart cases skip).
mod in_memory {
    use crate::harness::AcidHarness;

    ds_storage::contract_tests!(AcidHarness::in_memory());
}
