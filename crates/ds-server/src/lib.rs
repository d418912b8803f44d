//! The Durable Streams HTTP server.
//!
//! This crate owns everything between a socket and the [`ds_storage::Storage`] trait: the
//! configuration with its profiles and validation ([`config`]), phase-aware startup
//! ([`startup`]), the transport (plain HTTP/1.1, or rustls with HTTP/1.1 and HTTP/2 by ALPN,
//! optionally with client certificates, reloaded on `SIGHUP`), graceful shutdown, reverse-proxy
//! trust ([`proxy`]), request spans and logs ([`telemetry`]), Prometheus metrics ([`metrics`]),
//! the axum router ([`build_router`]), one handler per protocol operation, live reads
//! (long-poll and SSE), limits on connections, headers, live readers ([`limits`]) and
//! per-client request rates ([`ratelimit`]), and the mapping of every error to a status and an
//! `application/problem+json` body ([`error`]).
//! It does not know how bytes are stored: handlers are generic over `S: Storage`, and only
//! [`startup::serve`] picks a concrete backend from `storage.mode`.
//!
//! Embedding: [`build_router`] (or [`build_router_with_ready`] with a [`ShutdownToken`]) over
//! any [`Storage`] — [`MemoryStorage`] (alias [`InMemoryStorage`]), [`FileStorage`],
//! [`AcidStorage`] or [`PostgresStorage`] — mounts the protocol at [`RouterSettings::base_path`] (default
//! [`DEFAULT_STREAM_BASE_PATH`]); [`Config`], [`ConfigLoadOptions`], [`DeploymentProfile`] and
//! [`StorageMode`] load the operator configuration. The `embed` example of the
//! `durable-streams-server` crate (`cargo run --example embed`) mounts it under `/streams` in an
//! app with its own routes and middleware.
//!
//!
//! ```no_run
//! use std::sync::Arc;
//! use ds_server::{build_router, RouterSettings, MemoryStorage};
//!
//! # async fn demo() {
//! let app = axum::Router::new().merge(build_router(
//!     Arc::new(MemoryStorage::default()),
//!     RouterSettings::default(),
//! ));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:4437").await.unwrap();
//! axum::serve(listener, app).await.unwrap();
//! # }
//! ```

mod backend;
pub mod body;
pub mod config;
mod cors;
pub mod error;
mod h1;
mod handlers;
pub mod limits;
mod live;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod router;
mod shared_read;
pub mod startup;
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testsupport;
mod tls;
mod transport;

pub use config::{Config, ConfigLoadOptions, DeploymentProfile, StorageMode};
pub use ds_storage::Storage;
pub use ds_storage_acid::{AcidBackend, AcidOptions, AcidStorage};
pub use ds_storage_file::{Durability, FileOptions, FileStorage};
/// The seed's name for [`MemoryStorage`].
pub use ds_storage_memory::MemoryStorage as InMemoryStorage;
pub use ds_storage_memory::{MemoryOptions, MemoryStorage};
pub use ds_storage_postgres::{PostgresOptions, PostgresStorage};
pub use router::{
    AppState, DEFAULT_STREAM_BASE_PATH, RouterSettings, ShutdownToken, build_router,
    build_router_with_ready,
};
