//! Integration tests of the file backend: the shared storage contract suite in both modes
//! (restart cases included), power-loss simulation through the I/O seam, file-durable's pipelined group commit, recovery of damaged
//! files, name safety, the descriptor pool, space reclamation, and an ignored group-commit
//! measurement.

mod bench;
mod contract;
mod files;
mod pipeline;
mod powerloss;
mod stats;
mod support;
