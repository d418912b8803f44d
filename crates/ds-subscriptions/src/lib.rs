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
//! - [`SubscriptionsConfig`], the `[subscriptions]` configuration section.
//!
//! What it deliberately does not own: the stream routes, TLS serving, proxy trust (the server
//! passes the trusted origin as a [`PublicOrigin`] request extension) and any backend. State is
//! kept in internal streams under the reserved `__ds/` namespace of the same store (see
//! [`persist`]), so it is as durable as the backend: lost on restart with the memory backend,
//! kept by the file and acid backends, with no backend changes.
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
