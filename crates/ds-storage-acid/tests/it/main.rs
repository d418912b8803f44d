//! Integration tests of the redb backend: the shared storage contract suite on the file and
//! in-memory backends, plus what only this backend promises (group commit, restart recovery,
//! one process per data dir, cross-shard forks).

mod acid;
mod bulk_load;
mod contract;
mod disk_full;
mod harness;
