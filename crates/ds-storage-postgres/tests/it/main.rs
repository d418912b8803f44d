//! Integration tests of the PostgreSQL backend: the shared storage contract suite, plus what
//! only this backend promises (group commit, several nodes on one database, the re-check
//! under NOTIFY, the sweep lease, migrations, and the cluster coordination of
//! `Storage::cluster`: leases, the change feed, forwarded calls).
//!
//! They need a PostgreSQL server: `DS_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). Every store lives in a schema of its own,
//! dropped when the test ends, so runs never collide.

mod cluster;
mod contract;
mod harness;
mod postgres;
