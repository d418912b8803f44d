//! Opening the configured backend's data dir while no server runs on it.

use std::io::Read as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use ds_server::config::AcidBackendMode;
use ds_server::{
    AcidOptions, AcidStorage, Config, Durability, FileOptions, FileStorage, StorageMode,
};

/// A durable store opened by a command (never the memory backend, which has no data dir).
pub(crate) enum Offline {
    /// `file-fast` or `file-durable`.
    File(FileStorage),
    /// `acid` on redb files.
    Acid(AcidStorage),
}

impl Offline {
    /// Closes the store and releases the data dir's lock.
    pub(crate) async fn close(self) {
        match self {
            Offline::File(s) => s.close().await,
            Offline::Acid(s) => s.close().await,
        }
    }
}

/// Opens the data dir of `cfg.storage` for `command`.
///
/// Refuses the memory backend (it has no data dir), a data dir that does not exist unless
/// `create`, and a data dir whose `LOCK` another process (a running server) holds, naming
/// that process's PID.
pub(crate) async fn open(cfg: &Config, command: &str, create: bool) -> anyhow::Result<Offline> {
    let dir = &cfg.storage.data_dir;
    let mode = cfg.storage.mode;
    let durable = match mode {
        StorageMode::Memory => None,
        StorageMode::Acid if cfg.storage.acid_backend == AcidBackendMode::InMemory => None,
        StorageMode::Acid => Some(None),
        StorageMode::FileFast => Some(Some(Durability::Fast)),
        StorageMode::FileDurable => Some(Some(Durability::Durable)),
    };
    let Some(file_durability) = durable else {
        bail!(
            "storage.mode is {}{}: streams live only in a running server's memory, so there is \
             no data dir to {command}; configure file-fast, file-durable or acid \
             (DS_STORAGE__MODE) with storage.data_dir",
            mode.as_str(),
            if mode == StorageMode::Acid {
                " with acid_backend = in-memory"
            } else {
                ""
            }
        );
    };
    if !create && !dir.is_dir() {
        bail!(
            "data dir {} of the {} backend does not exist (check storage.data_dir)",
            dir.display(),
            mode.as_str()
        );
    }
    refuse_if_held(dir, command)?;
    let store = match file_durability {
        None => {
            // A data dir keeps the shard count it was created with.
            let shard_count = ds_storage_acid::stored_shard_count(dir)
                .with_context(|| format!("cannot read the acid data dir {}", dir.display()))?
                .unwrap_or(cfg.storage.acid_shard_count);
            let opts = AcidOptions {
                shard_count,
                ..AcidOptions::new(dir.clone())
            };
            Offline::Acid(
                AcidStorage::open(opts)
                    .await
                    .with_context(|| format!("cannot open the acid data dir {}", dir.display()))?,
            )
        }
        Some(durability) => {
            let opts = FileOptions::new(dir.clone(), durability);
            Offline::File(FileStorage::open(opts).await.with_context(|| {
                format!(
                    "cannot open the {} data dir {}",
                    mode.as_str(),
                    dir.display()
                )
            })?)
        }
    };
    Ok(store)
}

/// Fails, naming the holder's PID, when another process holds `dir/LOCK` (both durable
/// backends take it, with their PID in it, for as long as they have the dir open).
fn refuse_if_held(dir: &Path, command: &str) -> anyhow::Result<()> {
    let path = dir.join("LOCK");
    let Ok(mut file) = std::fs::File::open(&path) else {
        // No lock file: no store has ever opened the dir, or it is not ours to judge.
        return Ok(());
    };
    match file.try_lock() {
        Ok(()) => {
            // Released at once: the store takes it again when it opens.
            drop(file);
            Ok(())
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut pid = String::new();
            // A read failure only makes the message less precise.
            let _ = file.read_to_string(&mut pid);
            let pid = match pid.trim() {
                "" => "unknown",
                p => p,
            };
            bail!(
                "data dir {} is held by another process (pid {pid}, lock file {}); `{command}` \
                 works on the data dir of a stopped server: stop it first",
                dir.display(),
                path.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot check the lock file {}", path.display()))
        }
    }
}
