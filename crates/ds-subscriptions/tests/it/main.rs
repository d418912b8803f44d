//! Integration tests of ds-subscriptions: the router driven with `oneshot` over
//! `Notifying<MemoryStorage>` (the persistence scenarios also over the durable backends), and a
//! local webhook receiver on 127.0.0.1.

mod api;
mod backends;
mod delivery;
mod load;
mod persistence;
mod pull;
mod util;
