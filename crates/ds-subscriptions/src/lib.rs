//! Durable Streams subscriptions (PROTOCOL.md sections 6, 7 and 12.8–12.10): durable cursors
//! over a glob pattern and/or an explicit list of streams that wake a worker when any of them
//! has data past its acked offset, by a signed webhook or by a wake event in a pull-wake stream.
//!
//! What this crate owns:
//!
//! - [`Subscriptions`], the engine: configuration validation and idempotency by config hash,
//!   glob and explicit links, wake generations and fencing, leases, webhook retries with
//!   backoff, and the persistence of all of it.
//! - [`router`], the HTTP routes relative to `{base}/__ds`, including `jwks.json`.
//! - [`Notifying`], a [`ds_storage::Storage`] wrapper through which the server's writes reach
//!   the engine.
//! - Cluster mode (see "Several nodes" below): one active engine among servers sharing a
//!   store, fencing of its state log, and forwarding of the routes to it.
//! - [`SubscriptionsConfig`], the `[subscriptions]` configuration section.
//!
//! What it deliberately does not own: the stream routes, TLS serving, proxy trust (the server
//! passes the trusted origin as a [`PublicOrigin`] request extension) and any backend. State is
//! kept in internal streams under the reserved `__ds/` namespace of the same store (see
//! [`persist`]), so it is as durable as the backend: lost on restart with the memory backend,
//! kept by the file and acid backends, with no backend changes.
//!
//! # Several nodes
//!
//! When several servers open the same store (PostgreSQL), the store's
//! [`Cluster`](ds_storage::Cluster) coordinates them ([`ds_storage::Storage::cluster`] is
//! `Some`), and exactly one engine acts at a time; with a store one process owns, everything
//! above runs locally and none of this applies.
//!
//! - **Lease.** Every engine opens in standby and asks for the `subscriptions` lease every
//!   fifth of `cluster_lease_ms` (default 10 s). The holder *activates*: it loads the state
//!   from the store as a restart would, then decides and delivers every wake, learning about
//!   writes made on any node from the cluster's change feed (its own also through
//!   [`Notifying`]; the hooks of a standby node return after one atomic load). It stops acting
//!   once three quarters of the ttl pass without a successful renewal, before the store lets
//!   anyone else take over, and releases the lease on [`Subscriptions::shutdown`].
//! - **Fencing.** A holder that was paused past its ttl cannot corrupt the state: every state
//!   log append carries a `Stream-Seq` made of its lease term, and a new holder fences the log
//!   with its own, higher term before replaying it and compacts it into an epoch of its term
//!   (see [`persist`]). A fenced writer deactivates at once; the request waiting on it gets `503`.
//! - **Forwarding.** Every node serves the [`router`]: a standby node forwards each request
//!   through the cluster to the holder, with the stream root it computed, so `callback_url` and
//!   `jwks_url` are those of the client's node (nodes should share `public_base_url`).
//!   `jwks.json` is answered locally: the signing key is in the shared store.
//! - **Failover.** After a graceful shutdown another node takes over within one renewal period
//!   (2 s by default); after a crash or a partition, within about the ttl (10 s). Meanwhile
//!   subscription requests answer `503` with `Retry-After` (after `cluster_call_timeout_ms`
//!   when nobody holds the lease). The new holder resumes from the persisted state, like a
//!   restart: wakes in flight are delivered again, retries keep their schedule, and tails are
//!   rescanned, so an append made while no node was active still wakes its subscribers.
//!   Delivery stays at least once: a wake in flight at the failover may arrive twice.
//!
//! Wiring (the server nests the router ahead of its stream routes):
//!
//! ```no_run
//! use std::sync::Arc;
//! use ds_subscriptions::{Notifying, Subscriptions, SubscriptionsConfig, router};
//! # async fn demo<S: ds_storage::Storage>(store: Arc<S>) -> ds_subscriptions::Result<()> {
//! let engine = Subscriptions::open(store, SubscriptionsConfig::default()).await?;
//! let storage = Arc::new(Notifying::new(engine.clone())); // build the stream routes over this
//! let app: axum::Router = axum::Router::new().nest("/v1/stream/__ds", router(engine));
//! # let _ = (storage, app); Ok(()) }
//! ```

mod api;
pub mod config;
mod engine;
pub mod error;
mod forward;
pub mod glob;
pub mod keys;
mod notifying;
pub mod persist;
mod router;
pub mod spec;
pub mod ssrf;
pub mod state;
mod webhook;

pub use api::ApiError;
pub use config::SubscriptionsConfig;
pub use engine::{Subscriptions, backoff_ms};
pub use error::{Error, Result};
pub use notifying::Notifying;
pub use router::{PublicOrigin, router};
