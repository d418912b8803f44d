//! The storage contract suite, run against PostgreSQL (persistent: restart cases run).

use crate::harness::PostgresHarness;

ds_storage::contract_tests!(PostgresHarness::new());
