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

/// How a command opens a data dir.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OpenFor {
    /// Create the data dir when it does not exist.
    pub create: bool,
    /// Bulk writing: the file backends skip the sync after each write, and the acid backend
    /// commits without syncing (`AcidOptions::bulk_load`). The caller must [`Offline::close`]
    /// the store, which syncs everything; a crash before that loses what was written.
    pub bulk: bool,
}

/// Opens the data dir of `cfg.storage` for `command`.
///
/// Refuses the memory backend (it has no data dir), a data dir that does not exist unless
/// `how.create`, and a data dir whose `LOCK` another process (a running server) holds, naming
/// that process's PID.
pub(crate) async fn open(cfg: &Config, command: &str, how: OpenFor) -> anyhow::Result<Offline> {
    let create = how.create;
    let dir = &cfg.storage.data_dir;
    let mode = cfg.storage.mode;
    if mode == StorageMode::Postgres {
        bail!(
            "storage.mode is postgres: streams live in the database, not in a data dir, and \
             running servers keep serving them; `{command}` needs a data-dir backend \
             (file-fast, file-durable or acid)"
        );
    }
    let durable = match mode {
        StorageMode::Memory | StorageMode::Postgres => None,
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
                .or(cfg.storage.acid_shard_count)
                .unwrap_or_else(ds_storage_acid::default_shard_count);
            let opts = AcidOptions {
                shard_count,
                bulk_load: how.bulk,
                ..AcidOptions::new(dir.clone())
            };
            Offline::Acid(
                AcidStorage::open(opts)
                    .await
                    .with_context(|| format!("cannot open the acid data dir {}", dir.display()))?,
            )
        }
        Some(durability) => {
            let durability = if how.bulk {
                Durability::Fast
            } else {
                durability
            };
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

/// Evaluates `$body`, an async call using `$s` (the concrete store inside an [`Offline`]), and
/// awaits it: the [`Storage`](ds_storage::Storage) trait is generic, so each backend gets its
/// own instance of the call.
macro_rules! with_store {
    ($store:expr, |$s:ident| $body:expr) => {
        match $store {
            $crate::offline::Offline::File($s) => $body.await,
            $crate::offline::Offline::Acid($s) => $body.await,
        }
    };
}
pub(crate) use with_store;

#[cfg(test)]
mod tests {
    use super::*;
    use ds_protocol::{NameLimits, StreamName};
    use ds_storage::{AppendRequest, CreateRequest, Storage as _};

    /// Opens an acid data dir, writes a stream with three appends, and returns the syncs
    /// counted before closing.
    async fn acid_syncs(dir: &Path, how: OpenFor) -> Option<u64> {
        let cfg = Config::from_toml(&format!(
            "[storage]\nmode = \"acid\"\ndata_dir = {:?}\n",
            dir.display().to_string()
        ))
        .expect("config");
        let Offline::Acid(store) = open(&cfg, "test", how).await.expect("open") else {
            panic!("acid mode opens the acid backend");
        };
        let s = StreamName::parse("s", NameLimits::default()).expect("name");
        let text = || Some("text/plain".to_owned());
        let create = CreateRequest {
            content_type: text(),
            ..CreateRequest::default()
        };
        store.create(&s, create).await.expect("create");
        for body in ["a", "b", "c"] {
            let req = AppendRequest {
                content_type: text(),
                body: body.into(),
                ..AppendRequest::default()
            };
            store.append(&s, req).await.expect("append");
        }
        let syncs = store.stats().syncs;
        Offline::Acid(store).close().await;
        syncs
    }

    #[tokio::test]
    async fn bulk_opens_acid_in_bulk_load_mode() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (bulk, durable) = (dir.path().join("bulk"), dir.path().join("durable"));
        let how = |bulk| OpenFor { create: true, bulk };
        assert_eq!(acid_syncs(&bulk, how(true)).await, Some(0));
        // Without `bulk`, every commit syncs.
        assert_eq!(acid_syncs(&durable, how(false)).await, Some(4));
    }
}
