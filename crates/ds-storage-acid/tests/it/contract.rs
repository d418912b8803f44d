//! The storage contract suite, run against both redb backends.

/// File-backed shards (persistent: restart cases run).
mod file {
    use crate::harness::AcidHarness;

    ds_storage::contract_tests!(AcidHarness::file());
}

/// redb's in-memory backend (not persistent: restart cases skip).
mod in_memory {
    use crate::harness::AcidHarness;

    ds_storage::contract_tests!(AcidHarness::in_memory());
}
