//! Integration tests of ds-subscriptions: the router driven with `oneshot` over
//! `Notifying<MemoryStorage>` (the persistence scenarios also over the durable backends, the
//! cluster scenarios over several engines sharing one store through a fake `Cluster`), and a
//! local webhook receiver on 127.0.0.1.

mod api;
mod backends;
mod cluster;
mod delivery;
mod load;
mod nodes;
mod persistence;
mod pull;
mod util;
