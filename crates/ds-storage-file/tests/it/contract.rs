//! The storage contract suite, once per durability mode, restart cases included.

mod durable {
    use ds_storage_file::Durability;

    use crate::support::FileHarness;

    ds_storage::contract_tests!(FileHarness::new(Durability::Durable));
}

mod fast {
    use ds_storage_file::Durability;

    use crate::support::FileHarness;

    ds_storage::contract_tests!(FileHarness::new(Durability::Fast));
}
