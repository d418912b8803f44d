//! The one place that matches on `storage.mode` and opens a concrete backend; everything else
//! in the server is generic over [`Storage`](ds_storage::Storage).

use std::sync::Arc;

use ds_storage_memory::{MemoryOptions, MemoryStorage};

use crate::config::{Config, StorageMode};
use crate::startup::{Phase, StartupError, run};

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
            run(cfg, Arc::new(storage), shutdown).await
        }
        mode @ (StorageMode::FileFast | StorageMode::FileDurable | StorageMode::Acid) => {
            Err(StartupError::new(
                Phase::ValidateConfig,
                format!(
                    "storage mode \"{}\" is not built in this version; use \"memory\"",
                    mode.as_str()
                ),
            ))
        }
    }
}
