//! Integration tests of the in-memory backend: the shared storage contract suite, plus what
//! only this backend promises (memory accounting).

mod contract;
mod memory;
mod stats;
