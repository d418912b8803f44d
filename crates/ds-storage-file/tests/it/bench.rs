//! Quick measurements, ignored by default. Run them with
//!
//! ```text
//! cargo test --release -p ds-storage-file --test it -- --ignored --nocapture bench::
//! ```
//!
//! - `group_commit_throughput`: the disk's raw write+fdatasync rate, measured in the same run,
//!   against file-durable appends from 64 concurrent writers over 1,000 streams (256 bytes
//!   each). `DS_BENCH_DIR` picks the directory (default: a temporary one), `DS_BENCH_SECS` the
//!   duration (default 3), `DS_BENCH_MODE=fast` measures file-fast instead.
//! - `recovery_of_100k_streams`: creates 100,000 streams with one record each, then opens the
//!   store again in a child process and reports the time to ready and the child's memory.

// reason: measurements are reported as floating-point rates; counts stay far below 2^52.
#![allow(clippy::cast_precision_loss)]

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ds_storage::{CreateRequest, Storage};
use ds_storage_file::{Durability, FileOptions, FileStorage};

use crate::support::{append_req, create_req, name};

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("DS_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("temp dir in DS_BENCH_DIR"),
        None => tempfile::tempdir().expect("temp dir"),
    }
}

fn bench_secs() -> f64 {
    std::env::var("DS_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0)
}

/// Appends per second of a plain write(256 B) + fdatasync loop on one file.
fn raw_fdatasync_rate(dir: &std::path::Path, secs: f64) -> f64 {
    let mut file = std::fs::File::create(dir.join("raw-fsync-probe")).expect("probe file");
    let block = [0x5Au8; 256];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed().as_secs_f64() < secs {
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

#[test]
#[ignore = "measurement: run with --release -- --ignored --nocapture"]
fn group_commit_throughput() {
    const WRITERS: usize = 64;
    const STREAMS: usize = 1000;
    let secs = bench_secs();
    let dir = bench_dir();
    let raw = raw_fdatasync_rate(dir.path(), secs.min(2.0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let durability = if std::env::var("DS_BENCH_MODE").as_deref() == Ok("fast") {
            Durability::Fast
        } else {
            Durability::Durable
        };
        let store = FileStorage::open(FileOptions::new(dir.path().join("store"), durability))
            .await
            .expect("open");
        let streams: Arc<Vec<_>> = Arc::new((0..STREAMS).map(|i| name(&format!("s{i}"))).collect());
        let creates: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (store, streams) = (store.clone(), Arc::clone(&streams));
                tokio::spawn(async move {
                    for s in streams.iter().skip(w).step_by(WRITERS) {
                        store.create(s, create_req()).await.expect("create");
                    }
                })
            })
            .collect();
        for c in creates {
            c.await.expect("create task");
        }
        let before = store.commit_stats();
        let appended = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let started = Instant::now();
        let body = Bytes::from(vec![0x42u8; 256]);
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (store, streams, appended, body) = (
                    store.clone(),
                    Arc::clone(&streams),
                    Arc::clone(&appended),
                    body.clone(),
                );
                tokio::spawn(async move {
                    let mut x = (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    while Instant::now() < deadline {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let s = &streams[(x % STREAMS as u64) as usize];
                        store
                            .append(s, append_req(body.clone()))
                            .await
                            .expect("append");
                        appended.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.expect("writer");
        }
        let elapsed = started.elapsed().as_secs_f64();
        let after = store.commit_stats();
        let n = appended.load(Ordering::Relaxed);
        let fsyncs = after.fsyncs - before.fsyncs;
        let rate = n as f64 / elapsed;
        println!("raw write+fdatasync loop: {raw:.0} fsyncs/s");
        println!(
            "{durability:?}, {WRITERS} writers x {STREAMS} streams, 256 B appends: {n} appends in \
             {elapsed:.2} s = {rate:.0} appends/s; {fsyncs} fsyncs, {:.1} appends per fsync; \
             {:.1}x the raw rate",
            n as f64 / fsyncs.max(1) as f64,
            rate / raw
        );
        store.close().await;
    });
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[test]
#[ignore = "measurement: run with --release -- --ignored --nocapture"]
fn recovery_of_100k_streams() {
    const STREAMS: usize = 100_000;
    let dir = bench_dir();
    let data = dir.path().join("store");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let mut closing = Duration::ZERO;
    runtime.block_on(async {
        let store = FileStorage::open(FileOptions::new(&data, Durability::Fast))
            .await
            .expect("open");
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let store = store.clone();
                tokio::spawn(async move {
                    for i in (t..STREAMS).step_by(64) {
                        let req = CreateRequest {
                            body: Bytes::from(format!("record of stream {i}")),
                            ..create_req()
                        };
                        store
                            .create(&name(&format!("tenant-{}/stream-{i}", i % 97)), req)
                            .await
                            .expect("create");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("create task");
        }
        let close = Instant::now();
        store.close().await;
        closing = close.elapsed();
    });
    println!(
        "created {STREAMS} streams in {:.1?} (of which {closing:.1?} closing: the checkpoint \
         fsyncs every new stream file)",
        started.elapsed()
    );
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args(["--ignored", "--exact", "bench::recover_only", "--nocapture"])
        .env("DS_BENCH_RECOVER_DIR", &data)
        .output()
        .expect("child");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if std::env::var_os("DS_BENCH_KEEP").is_some() {
        println!("kept {}", dir.keep().display());
    }
}

/// The child half of `recovery_of_100k_streams`.
#[test]
#[ignore = "run by recovery_of_100k_streams"]
fn recover_only() {
    let Some(dir) = std::env::var_os("DS_BENCH_RECOVER_DIR") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let base = rss_kib("VmRSS:");
    let started = Instant::now();
    let store = runtime
        .block_on(FileStorage::open(FileOptions::new(
            dir,
            Durability::Durable,
        )))
        .expect("reopen");
    let ready = started.elapsed();
    let listed = runtime.block_on(store.list()).expect("list").len();
    println!(
        "recovered {listed} streams to ready in {ready:.2?}; RSS {} MiB (before open {} MiB, \
         peak {} MiB)",
        rss_kib("VmRSS:") / 1024,
        base / 1024,
        rss_kib("VmHWM:") / 1024
    );
    runtime.block_on(store.close());
}
