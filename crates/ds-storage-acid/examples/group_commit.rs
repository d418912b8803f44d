//! Measures group commit against the disk's raw fsync rate, and how long a large data dir
//! takes to reopen.
//!
//! ```text
//! cargo run --release -p ds-storage-acid --example group_commit -- [options]
//!   --dir PATH        where to put the data (default: a temp dir under the target dir)
//!   --secs N          seconds per measurement (default 3)
//!   --writers N       concurrent appenders (default 64)
//!   --streams N       streams they append to (default 1000)
//!   --shards N        shard count (default: the crate's default for this machine)
//!   --size N          append size in bytes (default 256)
//!   --rounds N        measurement rounds (default 3); each round measures the raw fsync
//!                     rate right before and after the appends, since a shared disk's rate
//!                     drifts
//!   --reopen N        also create N streams with one record each and time a reopen
//! ```

// reason: rates are printed with a few significant digits; counts far below 2^52.
#![allow(clippy::cast_precision_loss)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ds_protocol::{NameLimits, StreamName};
use ds_storage::{AppendRequest, CreateRequest, Storage, StorageStats};
use ds_storage_acid::{AcidOptions, AcidStorage};

const BINARY: &str = "application/octet-stream";

struct Args {
    dir: PathBuf,
    secs: u64,
    writers: usize,
    streams: usize,
    shards: u32,
    size: usize,
    reopen: usize,
    rounds: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/group-commit-bench"),
        secs: 3,
        writers: 64,
        streams: 1000,
        shards: ds_storage_acid::default_shard_count(),
        size: 256,
        reopen: 0,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let number = || {
            value
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("bad {flag}"))
        };
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(&value),
            "--secs" => args.secs = number(),
            "--writers" => args.writers = number() as usize,
            "--streams" => args.streams = number() as usize,
            "--shards" => args.shards = number() as u32,
            "--size" => args.size = number() as usize,
            "--reopen" => args.reopen = number() as usize,
            "--rounds" => args.rounds = number() as usize,
            _ => panic!("unknown option {flag}"),
        }
    }
    args
}

fn name(raw: &str) -> StreamName {
    StreamName::parse(raw, NameLimits::default()).expect("valid name")
}

/// Appends `size` bytes and fdatasyncs, in a loop, for `secs`: the rate one synchronous
/// writer gets from this disk.
fn raw_fsync_rate(dir: &Path, size: usize, secs: u64) -> f64 {
    let path = dir.join("raw-fsync.bin");
    let mut file = std::fs::File::create(&path).expect("create raw file");
    let buf = vec![0x5a; size];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        file.write_all(&buf).expect("write");
        file.sync_data().expect("fdatasync");
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(path);
    rate
}

async fn open(dir: &Path, shards: u32) -> AcidStorage {
    AcidStorage::open(AcidOptions {
        shard_count: shards,
        ..AcidOptions::new(dir)
    })
    .await
    .expect("open store")
}

async fn appends(args: &Args, dir: &Path) -> Measured {
    let store = open(dir, args.shards).await;
    let names: Arc<Vec<StreamName>> = Arc::new(
        (0..args.streams)
            .map(|i| name(&format!("bench/{i}")))
            .collect(),
    );
    let mut creators = Vec::new();
    for chunk in 0..args.writers {
        let (store, names) = (store.clone(), Arc::clone(&names));
        let writers = args.writers;
        creators.push(tokio::spawn(async move {
            for n in names.iter().skip(chunk).step_by(writers) {
                let req = CreateRequest {
                    content_type: Some(BINARY.to_owned()),
                    ..CreateRequest::default()
                };
                store.create(n, req).await.expect("create");
            }
        }));
    }
    for c in creators {
        c.await.expect("creator");
    }

    let body = Bytes::from(vec![0xa5; args.size]);
    let count = Arc::new(AtomicU64::new(0));
    let before = store.stats();
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let (store, names, body, count) = (
            store.clone(),
            Arc::clone(&names),
            body.clone(),
            Arc::clone(&count),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < deadline {
                let req = AppendRequest {
                    content_type: Some(BINARY.to_owned()),
                    body: body.clone(),
                    ..AppendRequest::default()
                };
                store
                    .append(&names[i % names.len()], req)
                    .await
                    .expect("append");
                count.fetch_add(1, Ordering::Relaxed);
                i += 7919;
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = store.stats();
    let delta = |f: fn(&StorageStats) -> Option<u64>| {
        f(&after)
            .unwrap_or(0)
            .saturating_sub(f(&before).unwrap_or(0))
    };
    let commits = delta(|s| s.commit_batches).max(1) as f64;
    let n = count.load(Ordering::Relaxed);
    store.close().await;
    Measured {
        appends_per_sec: n as f64 / elapsed,
        per_commit: delta(|s| s.commit_ops) as f64 / commits,
        commit_ms: delta(|s| s.sync_micros) as f64 / 1000.0 / commits,
    }
}

/// What one round of appends measured.
struct Measured {
    appends_per_sec: f64,
    /// Operations per durable commit.
    per_commit: f64,
    /// Average time in redb's `commit` (writing the pages and syncing), ms.
    commit_ms: f64,
}

async fn reopen(args: &Args, dir: &Path) -> f64 {
    let store = open(dir, args.shards).await;
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        let store = store.clone();
        let (writers, total) = (args.writers, args.reopen);
        tasks.push(tokio::spawn(async move {
            for i in (w..total).step_by(writers) {
                let req = CreateRequest {
                    content_type: Some(BINARY.to_owned()),
                    body: Bytes::from(format!("record {i}")),
                    ..CreateRequest::default()
                };
                store
                    .create(&name(&format!("many/{i}")), req)
                    .await
                    .expect("create");
            }
        }));
    }
    for t in tasks {
        t.await.expect("creator");
    }
    store.close().await;
    let start = Instant::now();
    let store = open(dir, args.shards).await;
    let ready = start.elapsed().as_secs_f64();
    assert!(store.is_ready());
    assert_eq!(store.list().await.expect("list").len(), args.reopen);
    store.close().await;
    ready
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir).expect("create bench dir");
    println!(
        "{} writers, {} streams, {} shards, {} B appends, {} s per measurement",
        args.writers, args.streams, args.shards, args.size, args.secs
    );
    let mut ratios = Vec::new();
    for round in 0..args.rounds {
        let before = raw_fsync_rate(&args.dir, args.size, 1);
        let dir = args.dir.join(format!("appends-{round}"));
        let m = appends(&args, &dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        let after = raw_fsync_rate(&args.dir, args.size, 1);
        let raw = f64::midpoint(before, after);
        let rate = m.appends_per_sec;
        ratios.push(rate / raw);
        println!(
            "round {round}: raw write+fdatasync {before:.0}/s before, {after:.0}/s after; \
             acid {rate:.0} appends/s, {:.1} appends/commit, {:.2} ms/commit: {:.1}x raw",
            m.per_commit,
            m.commit_ms,
            rate / raw
        );
    }
    ratios.sort_by(f64::total_cmp);
    if let Some(median) = ratios.get(ratios.len() / 2) {
        println!("median: {median:.1}x the raw fsync rate");
    }
    if args.reopen > 0 {
        let ready = reopen(&args, &args.dir.join("reopen")).await;
        println!(
            "reopen with {} streams of one record: ready in {ready:.2} s",
            args.reopen
        );
    }
    let _ = std::fs::remove_dir_all(&args.dir);
}
