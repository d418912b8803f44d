//! The one place that matches on `storage.mode` and opens a concrete backend; everything else
//! in the server is generic over [`Storage`](ds_storage::Storage).
//!
//! Every backend is wrapped in the subscription engine's [`Notifying`] store, so each write
//! path reports to the engine, and the engine's router serves the reserved `__ds` namespace.

use std::sync::Arc;

use ds_storage::Storage;
use ds_storage_acid::{AcidBackend, AcidOptions, AcidStorage};
use ds_storage_file::{Durability, FileOptions, FileStorage};
use ds_storage_memory::{MemoryOptions, MemoryStorage};
use ds_storage_postgres::{PostgresOptions, PostgresStorage};
use ds_subscriptions::{Notifying, Subscriptions};

use crate::config::{AcidBackendMode, Config, StorageMode};
use crate::startup::{Extras, Phase, StartupError, run_with};

/// Opens the backend `cfg.storage.mode` names and serves it until shutdown.
pub(crate) async fn serve_on_configured_backend(
    cfg: Config,
    shutdown: Option<tokio::sync::oneshot::Receiver<()>>,
) -> Result<(), StartupError> {
    match cfg.storage.mode {
        StorageMode::Memory => {
            let storage = MemoryStorage::new(MemoryOptions {
                max_memory_bytes: cfg.limits.max_memory_bytes,
                max_stream_bytes: cfg
                    .limits
                    .effective_max_stream_bytes(StorageMode::Memory)
                    .unwrap_or(u64::MAX),
                ..MemoryOptions::default()
            });
            serve_with_subscriptions(cfg, storage, shutdown).await
        }
        StorageMode::Acid => {
            let shard_count = match cfg.storage.acid_shard_count {
                Some(n) => n,
                // Unset: the data dir's own count, or the default for a new one.
                None => ds_storage_acid::stored_shard_count(&cfg.storage.data_dir)
                    .map_err(|e| {
                        StartupError::new(
                            Phase::StartServer,
                            format!(
                                "cannot read the acid data dir {}: {}",
                                cfg.storage.data_dir.display(),
                                error_chain(&e)
                            ),
                        )
                    })?
                    .unwrap_or_else(ds_storage_acid::default_shard_count),
            };
            let opts = AcidOptions {
                data_dir: cfg.storage.data_dir.clone(),
                shard_count,
                backend: match cfg.storage.acid_backend {
                    AcidBackendMode::File => AcidBackend::File,
                    AcidBackendMode::InMemory => AcidBackend::InMemory,
                },
                max_stream_bytes: cfg.limits.effective_max_stream_bytes(StorageMode::Acid),
                ..AcidOptions::new(cfg.storage.data_dir.clone())
            };
            let storage = AcidStorage::open(opts).await.map_err(|e| {
                StartupError::new(
                    Phase::StartServer,
                    format!(
                        "cannot open the acid store in {}: {}",
                        cfg.storage.data_dir.display(),
                        error_chain(&e)
                    ),
                )
            })?;
            serve_with_subscriptions(cfg, storage, shutdown).await
        }
        StorageMode::Postgres => {
            let pg = &cfg.storage.postgres;
            let opts = PostgresOptions {
                schema: pg.schema.clone(),
                pool_size: pg.pool_size,
                statement_timeout_ms: pg.statement_timeout_ms,
                max_stream_bytes: cfg.limits.effective_max_stream_bytes(StorageMode::Postgres),
                ..PostgresOptions::new(pg.url.clone())
            };
            let storage = PostgresStorage::open(opts).await.map_err(|e| {
                // The URL may hold a password: name the schema, not the URL.
                StartupError::new(
                    Phase::StartServer,
                    format!(
                        "cannot open the postgres store (schema {}, storage.postgres.url): {}",
                        pg.schema,
                        error_chain(&e)
                    ),
                )
            })?;
            serve_with_subscriptions(cfg, storage, shutdown).await
        }
        mode @ (StorageMode::FileFast | StorageMode::FileDurable) => {
            let durability = if mode == StorageMode::FileFast {
                Durability::Fast
            } else {
                Durability::Durable
            };
            let opts = FileOptions {
                max_stream_bytes: cfg.limits.effective_max_stream_bytes(mode),
                ..FileOptions::new(cfg.storage.data_dir.clone(), durability)
            };
            let storage = FileStorage::open(opts).await.map_err(|e| {
                StartupError::new(
                    Phase::StartServer,
                    format!(
                        "cannot open the {} store in {}: {}",
                        mode.as_str(),
                        cfg.storage.data_dir.display(),
                        error_chain(&e)
                    ),
                )
            })?;
            serve_with_subscriptions(cfg, storage, shutdown).await
        }
    }
}

/// Opens the subscription engine over `storage` and serves both.
async fn serve_with_subscriptions<S: Storage>(
    cfg: Config,
    storage: S,
    shutdown: Option<tokio::sync::oneshot::Receiver<()>>,
) -> Result<(), StartupError> {
    let mut sub_cfg = cfg.subscriptions.clone();
    sub_cfg.name_limits = ds_protocol::NameLimits {
        max_bytes: cfg.limits.max_stream_name_bytes,
        max_segments: cfg.limits.max_stream_name_segments,
    };
    let engine = Subscriptions::open(Arc::new(storage), sub_cfg)
        .await
        .map_err(|e| {
            StartupError::new(
                Phase::StartServer,
                format!("cannot open the subscription engine: {e}"),
            )
        })?;
    let notifying = Arc::new(Notifying::new(Arc::clone(&engine)));
    let drained = Arc::clone(&engine);
    let extras = Extras {
        reserved: Some(ds_subscriptions::router(Arc::clone(&engine))),
        on_drained: Some(Box::pin(async move {
            drained.shutdown();
            if let Err(e) = drained.flush().await {
                tracing::warn!(error = %e, "subscription state flush failed");
            }
        })),
    };
    drop(engine);
    run_with(cfg, notifying, shutdown, extras).await
}

/// An error and its sources, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
