//! The storage section of the configuration against real data dirs (the acid shard count),
//! and the open-file limit the file backends size their descriptor pool from.

use std::path::Path;
use std::time::Duration;

use ds_server::Config;
use ds_server::startup;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::net::free_port;

/// Starts the configured backend on `data_dir` with `acid_shard_count` unset or set, then
/// stops it; `Err` carries the startup error. A store the previous server still holds for a
/// moment (its last connection task lets go of it) is waited for, up to 20 s.
async fn start_and_stop_acid(data_dir: &Path, shards: Option<u32>) -> Result<(), String> {
    for _ in 0..200 {
        match try_start_and_stop_acid(data_dir, shards).await {
            Err(e) if e.contains("in use") => tokio::time::sleep(Duration::from_millis(100)).await,
            res => return res,
        }
    }
    panic!("{} stayed in use", data_dir.display());
}

/// The shard count `data_dir` was created with, once the last server has let go of it.
async fn stored_shards(data_dir: &Path) -> Option<u32> {
    for _ in 0..200 {
        match ds_storage_acid::stored_shard_count(data_dir) {
            Ok(n) => return n,
            Err(e) if e.to_string().contains("in use") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("{} stayed in use", data_dir.display());
}

async fn try_start_and_stop_acid(data_dir: &Path, shards: Option<u32>) -> Result<(), String> {
    let port = free_port();
    let shards = shards.map_or(String::new(), |n| format!("acid_shard_count = {n}\n"));
    let toml = format!(
        "[server]\nbind_address = \"127.0.0.1:{port}\"\ndrain_timeout_secs = 5\n\
         [storage]\nmode = \"acid\"\ndata_dir = {:?}\n{shards}",
        data_dir.display().to_string()
    );
    let cfg = Config::from_toml(&toml).expect("valid config");
    let (stop, rx) = oneshot::channel();
    let task = tokio::spawn(startup::serve(cfg, Some(rx)));
    for _ in 0..500 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            let _ = stop.send(());
            return task.await.expect("server task").map_err(|e| e.to_string());
        }
        if task.is_finished() {
            return task.await.expect("server task").map_err(|e| e.to_string());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("server did not start listening on port {port}");
}

#[tokio::test]
async fn an_unset_acid_shard_count_keeps_an_existing_store_and_gives_a_new_one_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old, new) = (dir.path().join("old"), dir.path().join("new"));
    // A store created with 16 shards (the configured default before the key became optional).
    start_and_stop_acid(&old, Some(16)).await.expect("created");
    start_and_stop_acid(&old, None).await.expect("reopened");
    assert_eq!(stored_shards(&old).await, Some(16));
    start_and_stop_acid(&new, None).await.expect("created");
    // One shard per core, 1 to 4 (the mapping is tested in ds-storage-acid).
    assert_eq!(
        stored_shards(&new).await,
        Some(ds_storage_acid::default_shard_count())
    );
    // A count set explicitly must match the store's.
    let err = start_and_stop_acid(&old, Some(4))
        .await
        .expect_err("mismatch");
    assert!(err.contains("more shards than 4"), "{err}");
}

/// The server raises its soft open-file limit to the hard one, and the file backends size
/// their pool of open stream files from the raised limit (half of it, within 256..=16,384).
#[cfg(unix)]
#[test]
fn the_open_file_limit_is_raised_and_sizes_the_file_pool() {
    use rustix::process::{Resource, getrlimit};
    let raised = startup::raise_open_file_limit();
    let limit = getrlimit(Resource::Nofile);
    assert_eq!(raised, limit.current);
    if let (Some(current), Some(hard)) = (limit.current, limit.maximum) {
        assert_eq!(current, hard, "the soft limit is raised to the hard one");
    }
    let soft = limit.current.unwrap_or(u64::MAX);
    let expected = usize::try_from((soft / 2).clamp(256, 16_384)).expect("fits");
    assert_eq!(ds_storage_file::default_max_open_files(), expected);
    assert_eq!(
        ds_storage_file::FileOptions::new("/tmp/x", ds_storage_file::Durability::Durable)
            .max_open_files,
        expected
    );
}
