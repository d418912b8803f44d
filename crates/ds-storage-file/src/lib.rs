//! Durable Streams storage on plain files, in two modes: `file-durable` and `file-fast`.
//!
//! [`FileStorage`] keeps a shared write-ahead log (WAL) and one file per stream under
//! [`FileOptions::data_dir`]. One committer at a time (whoever queued a request while nobody
//! was committing, or the WAL syncer when a sync returns) applies every change in **group
//! commits**: it takes all queued requests, validates them in order with the shared protocol
//! rules, writes their records to the streams' own files (read by catch-up reads), appends the
//! same bytes to the WAL with one write, and then (file-durable) calls `fdatasync` once. Each
//! record carries a stream's data *and* its new producer, `Stream-Seq` and closure state, so
//! the two can never disagree after a crash. After the commit the new tails are published to
//! live readers, and the requests are answered. (A stream created without data gets its file
//! with its next record, or from the next checkpoint: a create then costs no inode.)
//! Background checkpoints fsync the stream files and drop old WAL segments; recovery on
//! [`FileStorage::open`] replays the WAL tail and leaves its own checkpoint to the background.
//! See the `commit`, `recovery` and `record` modules for the details and the byte layout.
//!
//! # What is guaranteed, and what a crash can lose
//!
//! - **file-durable** ([`Durability::Durable`]): a create, append, close or delete is
//!   acknowledged only after its records are on stable storage. A process crash, a kernel
//!   panic or a power loss loses nothing that was acknowledged. A request in flight at the
//!   crash is either fully applied or not at all; an idempotent producer retrying it gets
//!   `Duplicate` if it was applied, so nothing is ever appended twice.
//! - **file-fast** ([`Durability::Fast`]): a request is acknowledged once its records are
//!   written to the kernel (`write(2)` done; nothing is buffered in the process), and the WAL is
//!   `fdatasync`ed in the background every [`FileOptions::fsync_interval`] (on a thread of its
//!   own, so a checkpoint never stretches the interval). A process crash
//!   (`kill -9`) loses nothing acknowledged. A kernel panic or power loss can lose the requests
//!   acknowledged during the last interval; each stream then comes back as a consistent prefix
//!   of its history (data, producer state and closure together), and a fork created on data
//!   that was lost is dropped with it.
//! - In both modes a torn or partially written record is detected by its CRC-32 and never
//!   replayed, and everything after it in that file is ignored. A record that reached a
//!   stream file but whose batch never committed to the WAL is cut off the same way.
//! - Sliding TTLs: writes record their time with the data; reads record theirs with a small
//!   Touch record at most every tenth of the TTL (between 1 s and 60 s) and on [`close`]. After
//!   a crash, a stream that was only *read* during that window may expire up to that much
//!   earlier than it would have. Absolute expiry (`Stream-Expires-At`) is exact.
//! - Reads, heads and live readers only ever see committed data.
//!
//! Open descriptors: at most [`FileOptions::max_open_files`] stream files (by default half the
//! process's soft `RLIMIT_NOFILE`, see [`default_max_open_files`]), plus the current WAL
//! segment, the `LOCK` file and whatever operations are in flight hold for a moment. Running
//! out of descriptors (`EMFILE`) closes pooled files and retries; clients never see it.
//!
//! A full disk or quota (`ENOSPC`, `EDQUOT`) fails the affected requests with
//! [`Error::StorageFull`] (`limit: 0`: the disk's limit, not a configured one) and the store
//! carries on: the batch's partial writes are truncated away (durably) before anything else is
//! written, readers never saw any of it, and appends succeed again once space is freed. A WAL
//! rotation or checkpoint that runs out of space is retried later. After any other I/O error
//! (a failed `fsync` in particular: the page cache can no longer be trusted) the store stops
//! accepting writes (`Error::Backend`, which the server answers with `503`) and reports not
//! ready; reads keep working, and a restart recovers from the WAL.
//!
//! [`close`]: FileStorage::close
//!
//! # Use
//!
//! ```no_run
//! use ds_storage::Storage;
//! use ds_storage_file::{Durability, FileOptions, FileStorage};
//!
//! # async fn demo() -> ds_storage::Result<()> {
//! let store = FileStorage::open(FileOptions::new("/var/lib/ds", Durability::Durable)).await?;
//! let streams = store.list().await?;
//! store.close().await;
//! # Ok(()) }
//! ```

pub mod fuzzing;
pub mod io;

mod commit;
mod layout;
mod pool;
mod read;
mod record;
mod recovery;
mod stream;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use ds_protocol::{Expiry, Offset, StreamName, fork_expiry};
use ds_storage::rules::{self, Clock, SystemClock, WriterState};
use ds_storage::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, Error, ForkRequest, ReadChunk,
    ReadFrom, ReadPiece, Result, Storage, StorageStats, StreamInfo, Tail,
};
use tokio::sync::{oneshot, watch};

use crate::commit::{Commit, CreateOp, Op, Reply, Request, ResolvedFork};
use crate::io::{Fs, FsFile, RealFs};
use crate::pool::FilePool;
use crate::read::Budget;
use crate::stream::{ByName, Entry, Status};

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `file-fast`: once written to the kernel; the WAL is fsynced in the background.
    Fast,
    /// `file-durable`: once `fdatasync`ed (shared by concurrent requests via group commit).
    Durable,
}

/// Options of a [`FileStorage`].
#[derive(Clone)]
pub struct FileOptions {
    /// Directory holding the store (created if missing).
    pub data_dir: PathBuf,
    /// When requests are acknowledged.
    pub durability: Durability,
    /// Upper bound on the payload bytes of one stream; `None` = bounded by the disk.
    pub max_stream_bytes: Option<u64>,
    /// Clock used for TTL and expiry.
    pub clock: Arc<dyn Clock>,
    /// file-fast: how often the WAL is fsynced in the background (default 100 ms).
    pub fsync_interval: Duration,
    /// Most stream files kept open at once (default [`default_max_open_files`]).
    pub max_open_files: usize,
    /// WAL size at which a new segment starts and a checkpoint runs (default 64 MiB). Bounds
    /// how much WAL recovery replays.
    pub wal_segment_bytes: u64,
    /// file-durable: write the next WAL segment ahead of time, as zeros, on a background
    /// thread (default `true`). Once a busy store has written 1 MiB of WAL (or half a segment,
    /// if that is less), a thread writes `wal/spare.tmp` with `wal_segment_bytes` of zeros,
    /// syncs it and renames it to `wal/spare.zero`; the next rotation renames the spare into
    /// place instead of creating an empty segment, and a segment that was not written ahead is
    /// left for the spare as soon as one is ready. Every `fdatasync` of the WAL then
    /// overwrites allocated, initialised blocks, and syncs data only: no block allocation, no
    /// length, no extent conversion to commit (on ext4 this made appends 5–15% faster under
    /// load). Costs one segment of disk space and one segment of background writes per
    /// rotation. Ignored in file-fast mode, whose syncs are off the acknowledgement path.
    pub wal_spares: bool,
}

impl FileOptions {
    /// Options for `data_dir` with the given durability and the defaults above.
    pub fn new(data_dir: impl Into<PathBuf>, durability: Durability) -> Self {
        FileOptions {
            data_dir: data_dir.into(),
            durability,
            max_stream_bytes: None,
            clock: Arc::new(SystemClock),
            fsync_interval: Duration::from_millis(100),
            max_open_files: default_max_open_files(),
            wal_segment_bytes: 64 * 1024 * 1024,
            wal_spares: true,
        }
    }
}

/// The default of [`FileOptions::max_open_files`]: half the process's soft open-file limit
/// (`RLIMIT_NOFILE`), at least 256 and at most 16,384; 256 where the limit cannot be read.
///
/// The other half is left to connections and everything else the process opens. A pool
/// smaller than the set of streams being written keeps reopening files: writes spread over
/// 1,000 streams with 256 pooled files cost an `open` and a `close` per append (the LRU
/// order makes every access a miss), about half of the committer's system calls.
#[must_use]
pub fn default_max_open_files() -> usize {
    const FLOOR: u64 = 256;
    const CEILING: u64 = 16_384;
    #[cfg(unix)]
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    #[cfg(not(unix))]
    let soft = 2 * FLOOR;
    usize::try_from((soft / 2).clamp(FLOOR, CEILING)).unwrap_or(256)
}

impl std::fmt::Debug for FileOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileOptions")
            .field("data_dir", &self.data_dir)
            .field("durability", &self.durability)
            .field("max_stream_bytes", &self.max_stream_bytes)
            .field("fsync_interval", &self.fsync_interval)
            .field("max_open_files", &self.max_open_files)
            .field("wal_segment_bytes", &self.wal_segment_bytes)
            .field("wal_spares", &self.wal_spares)
            .finish_non_exhaustive()
    }
}

/// Counters of the group committer (for tests, benchmarks and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Requests the committer handled.
    pub requests: u64,
    /// Group commits that wrote to the WAL.
    pub batches: u64,
    /// Records written.
    pub records: u64,
    /// WAL `fdatasync` calls (per batch in file-durable mode, periodic in file-fast mode).
    pub fsyncs: u64,
    /// Bytes appended to the WAL.
    pub wal_bytes: u64,
    /// Stream files currently held open by the descriptor pool.
    pub open_files: u64,
}

#[derive(Default)]
pub(crate) struct Stats {
    requests: AtomicU64,
    batches: AtomicU64,
    records: AtomicU64,
    /// Creates, appends and deletes that wrote records, in committed batches.
    ops: AtomicU64,
    fsyncs: AtomicU64,
    /// Time spent in the WAL `fdatasync`s counted by `fsyncs`.
    fsync_micros: AtomicU64,
    wal_bytes: AtomicU64,
    /// Streams neither deleted nor removed, kept by the committer as it installs batches.
    live_streams: AtomicU64,
    /// Payload bytes those streams store themselves.
    live_bytes: AtomicU64,
}

impl Stats {
    /// Adds a (possibly negative) change to a gauge. Only the committer (and `open`, before it
    /// starts) changes the gauges, so the result never goes below zero.
    pub(crate) fn adjust(gauge: &AtomicU64, delta: i64) {
        if delta >= 0 {
            gauge.fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
        } else {
            gauge.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
        }
    }

    /// Records one completed WAL sync that took `took`.
    pub(crate) fn synced(&self, took: Duration) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.fsync_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// State shared by the request side, the committer and the background threads.
pub(crate) struct Shared {
    fs: Arc<dyn Fs>,
    root: PathBuf,
    durability: Durability,
    max_stream_bytes: Option<u64>,
    clock: Arc<dyn Clock>,
    fsync_interval: Duration,
    wal_segment_bytes: u64,
    /// Whether the committer keeps a zeroed spare WAL segment ready (file-durable only).
    wal_spares: bool,
    /// A complete spare segment (`wal/spare.zero`) is waiting for the next rotation. Only the
    /// spare thread sets it (after the rename), only the committer clears it (when it takes
    /// the spare), so the two never touch the spare files at the same time.
    spare_ready: AtomicBool,
    /// Set at shutdown: the spare thread abandons the spare it is writing.
    spare_stop: AtomicBool,
    streams: RwLock<HashSet<ByName>>,
    content_types: Mutex<HashSet<Arc<str>>>,
    pool: FilePool,
    failure: Mutex<Option<String>>,
    wal_current: Mutex<Option<Arc<dyn FsFile>>>,
    wal_dirty: AtomicBool,
    checkpointing: AtomicBool,
    /// Woken whenever a background checkpoint ends (`checkpointing` went back to false).
    checkpoint_done: tokio::sync::Notify,
    /// Files a checkpoint that failed on a full disk did not sync; the next one does.
    carry: Mutex<commit::Dirty>,
    stats: Stats,
}

impl Shared {
    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    fn get(&self, name: &StreamName) -> Option<Arc<Entry>> {
        self.streams
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .map(|b| Arc::clone(&b.0))
    }

    fn write_streams(&self) -> RwLockWriteGuard<'_, HashSet<ByName>> {
        self.streams
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Why the store stopped accepting writes, if it did.
    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Stops accepting writes (the first reason is kept).
    fn fail(&self, reason: &str) {
        let mut f = self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if f.is_none() {
            *f = Some(reason.to_owned());
        }
    }

    /// The shared copy of a content type.
    fn intern(&self, content_type: &str) -> Arc<str> {
        let mut set = self
            .content_types
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(ct) = set.get(content_type) {
            return Arc::clone(ct);
        }
        let ct: Arc<str> = Arc::from(content_type);
        set.insert(Arc::clone(&ct));
        ct
    }

    fn carry(&self) -> MutexGuard<'_, commit::Dirty> {
        self.carry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wal_current(&self) -> MutexGuard<'_, Option<Arc<dyn FsFile>>> {
        self.wal_current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether an I/O error means the disk or the user's quota is full (ENOSPC, EDQUOT).
pub(crate) fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || (cfg!(target_os = "linux") && matches!(e.raw_os_error(), Some(28 | 122)))
}

/// The error of a write the disk had no room for. The limit is the disk's, not a configured
/// one, and its size is not known here: 0 says so.
pub(crate) fn disk_full_error() -> Error {
    Error::StorageFull { limit: 0 }
}

/// Maps an I/O error to the storage error: a full disk is `StorageFull`, anything else a
/// `Backend` error naming the failed operation and keeping the source.
pub(crate) fn backend(op: &'static str, e: std::io::Error) -> Error {
    if is_disk_full(&e) {
        disk_full_error()
    } else {
        Error::Backend {
            op,
            source: Box::new(e),
        }
    }
}

/// The error of a write after the store stopped accepting writes.
pub(crate) fn failed_error(op: &'static str, reason: &str) -> Error {
    Error::Backend {
        op,
        source: Box::new(std::io::Error::other(format!(
            "the store stopped accepting writes after an I/O failure ({reason}); restart it \
             to recover from the write-ahead log"
        ))),
    }
}

fn closed_error(op: &'static str) -> Error {
    Error::Backend {
        op,
        source: Box::new(std::io::Error::other("the store is closed")),
    }
}

/// How often a read-only TTL stream records its last access (a tenth of the TTL, 1 s to 60 s).
fn touch_interval_ms(ttl_secs: u64) -> u64 {
    (ttl_secs.saturating_mul(1000) / 10).clamp(1_000, 60_000)
}

/// Owns the committer; the last [`FileStorage`] clone to go stops it.
struct Handle {
    shared: Arc<Shared>,
    commit: Arc<Commit>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

impl Handle {
    fn take_thread(&self) -> Option<JoinHandle<()>> {
        self.committer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Same as `close`, blocking: the committer finishes queued requests, persists access
        // times, checkpoints, releases the lock and exits.
        self.commit.close(None);
        if let Some(thread) = self.take_thread() {
            let _ = thread.join();
        }
    }
}

/// The file backend. Cheap to clone: clones share the same store.
///
/// Dropping the last clone (or calling [`FileStorage::close`]) stops the committer after the
/// requests already queued, writes pending TTL access times, checkpoints (so the next open has
/// nothing to replay), and releases the data directory's lock. Dropping blocks the current
/// thread for that; call `close().await` to wait without blocking.
#[derive(Clone)]
pub struct FileStorage {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for FileStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStorage")
            .field("data_dir", &self.handle.shared.root)
            .field("durability", &self.handle.shared.durability)
            .finish_non_exhaustive()
    }
}

impl FileStorage {
    /// Opens (creating if needed) the store in `opts.data_dir`: locks the directory, runs
    /// recovery, and starts the committer. Must be called inside a tokio runtime.
    ///
    /// Fails with a `Backend` error naming the holder's PID when another process (or another
    /// open store in this one) holds the directory's lock.
    pub async fn open(opts: FileOptions) -> Result<FileStorage> {
        FileStorage::open_with_fs(opts, Arc::new(RealFs)).await
    }

    /// Like [`FileStorage::open`], on another file system (tests use [`io::SimFs`] to
    /// simulate power loss).
    pub async fn open_with_fs(opts: FileOptions, fs: Arc<dyn Fs>) -> Result<FileStorage> {
        let shared = Arc::new(Shared {
            pool: FilePool::new(Arc::clone(&fs), opts.data_dir.clone(), opts.max_open_files),
            fs,
            root: opts.data_dir,
            durability: opts.durability,
            max_stream_bytes: opts.max_stream_bytes,
            clock: opts.clock,
            fsync_interval: opts.fsync_interval,
            wal_segment_bytes: opts.wal_segment_bytes.max(1),
            wal_spares: opts.wal_spares && opts.durability == Durability::Durable,
            spare_ready: AtomicBool::new(false),
            spare_stop: AtomicBool::new(false),
            streams: RwLock::new(HashSet::new()),
            content_types: Mutex::new(HashSet::new()),
            failure: Mutex::new(None),
            wal_current: Mutex::new(None),
            wal_dirty: AtomicBool::new(false),
            checkpointing: AtomicBool::new(false),
            checkpoint_done: tokio::sync::Notify::new(),
            carry: Mutex::new(commit::Dirty::default()),
            stats: Stats::default(),
        });
        let recovering = Arc::clone(&shared);
        let recovered = tokio::task::spawn_blocking(move || recovery::recover(&recovering))
            .await
            .map_err(|e| backend("recover", std::io::Error::other(e)))??;
        // The committer keeps these up to date from here on (see `Committer::install`).
        let (live, bytes) = recovered
            .streams
            .iter()
            .map(|b| b.0.lock())
            .filter(|st| !st.s.removed && !st.s.soft_deleted)
            .fold((0u64, 0u64), |(n, b), st| (n + 1, b + st.s.bytes));
        shared.stats.live_streams.store(live, Ordering::Relaxed);
        shared.stats.live_bytes.store(bytes, Ordering::Relaxed);
        *shared.write_streams() = recovered.streams;
        *shared.wal_current() = Some(Arc::clone(&recovered.init.wal));
        let (commit, thread) = Commit::start(Arc::clone(&shared), recovered.init)
            .map_err(|e| backend("start committer", e))?;
        Ok(FileStorage {
            handle: Arc::new(Handle {
                shared,
                commit,
                committer: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Stops the store: requests already queued complete, later ones fail; pending TTL access
    /// times are written, everything is synced and checkpointed, background threads stop and
    /// the directory's lock is released. Idempotent.
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.handle.commit.close(Some(reply)) {
            let _ = done.await;
        }
        if let Some(thread) = self.handle.take_thread() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Waits until no background checkpoint is running. Right after [`FileStorage::open`]
    /// that is recovery's checkpoint: the store serves requests while it syncs what the
    /// replayed WAL touched, and the replayed segments stay until it is done. Tests use this
    /// to know when recovery's file operations are over; tools, to know the WAL was trimmed.
    pub async fn wait_for_checkpoint(&self) {
        let shared = self.shared();
        loop {
            let mut done = std::pin::pin!(shared.checkpoint_done.notified());
            done.as_mut().enable();
            if !shared.checkpointing.load(Ordering::Acquire) {
                return;
            }
            done.await;
        }
    }

    /// The data directory.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.handle.shared.root
    }

    /// The committer's counters (the operator-facing subset is [`Storage::stats`]).
    #[must_use]
    pub fn commit_stats(&self) -> CommitStats {
        let s = &self.handle.shared.stats;
        CommitStats {
            requests: s.requests.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            records: s.records.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            wal_bytes: s.wal_bytes.load(Ordering::Relaxed),
            open_files: self.handle.shared.pool.len() as u64,
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Queues `op` for the committer now (and commits it on this thread if nobody else is
    /// committing), and returns the wait for its answer. Not an `async fn`: the operation
    /// is handed over before the first poll, so the future that waits keeps only the
    /// receiver, not a copy of the request (it is part of every append's future).
    fn submit(&self, op_name: &'static str, op: Op) -> impl Future<Output = Result<Reply>> + use<> {
        let (reply, rx) = oneshot::channel();
        let queued = self.handle.commit.submit(Request {
            op,
            reply: Some(reply),
        });
        async move {
            if !queued {
                return Err(closed_error(op_name));
            }
            rx.await.map_err(|_| closed_error(op_name))?
        }
    }

    /// Looks a stream up for a client operation: missing or removed streams are `NotFound`,
    /// soft-deleted ones `Gone`; an expired one is expired through the committer first.
    async fn live(&self, name: &StreamName, op: &'static str) -> Result<Arc<Entry>> {
        let entry = self.shared().get(name).ok_or(Error::NotFound)?;
        let status = {
            let st = entry.lock();
            entry.status(&st.s, self.shared().now())
        };
        match status {
            Status::Live => Ok(entry),
            Status::Removed => Err(Error::NotFound),
            Status::SoftDeleted => Err(Error::Gone),
            Status::Expired => {
                self.submit(
                    op,
                    Op::Expire {
                        entry: Arc::clone(&entry),
                    },
                )
                .await?;
                Ok(entry)
            }
        }
    }

    /// Resolves a fork request against its live source: the resolved fork, its content type,
    /// and its expiry (the inheritance table of section 4.2).
    async fn resolve_fork(
        &self,
        f: &ForkRequest,
        req: &CreateRequest,
    ) -> Result<(ResolvedFork, String, Expiry)> {
        let source = match self.live(&f.source, "create").await {
            Ok(s) => s,
            Err(Error::NotFound) => return Err(Error::ForkSourceNotFound),
            Err(Error::Gone) => return Err(Error::ForkSourceGone),
            Err(e) => return Err(e),
        };
        if let Some(ct) = &req.content_type
            && !ds_protocol::content_type::matches(ct, &source.content_type)
        {
            return Err(Error::ContentTypeMismatch {
                expected: source.content_type.to_string(),
                actual: ct.clone(),
            });
        }
        let anchor = f.offset.unwrap_or_else(|| source.lock().s.tail);
        let sub_offset = f.sub_offset;
        let shared = Arc::clone(self.shared());
        let src = Arc::clone(&source);
        let base = tokio::task::spawn_blocking(move || -> Result<Offset> {
            let located = read::locate(&shared.pool, &src, anchor)?;
            if sub_offset == 0 {
                Ok(anchor)
            } else {
                located.check_sub_offset(sub_offset, src.json)?;
                if src.json {
                    read::json_position(&shared.pool, &src, anchor, sub_offset)
                } else {
                    Ok(Offset::new(anchor.seq + 1, anchor.byte + sub_offset))
                }
            }
        })
        .await
        .map_err(|e| backend("create", std::io::Error::other(e)))?
        .map_err(|e| match e {
            Error::Backend { .. } if source.lock().s.removed => Error::ForkSourceGone,
            e => e,
        })?;
        let content_type = source.content_type.to_string();
        let expiry = fork_expiry(source.expiry, req.expiry);
        Ok((
            ResolvedFork {
                source,
                anchor,
                sub_offset,
                base,
            },
            content_type,
            expiry,
        ))
    }

    async fn create_stream(&self, name: &StreamName, req: CreateRequest) -> Result<CreateOutcome> {
        // An existing stream: idempotent success or conflict, answered from committed state.
        if self.shared().get(name).is_some() {
            match self.live(name, "create").await {
                Ok(entry) => {
                    let st = entry.lock();
                    let cfg = rules::ExistingConfig {
                        content_type: &entry.content_type,
                        expiry: entry.expiry,
                        closed: st.s.writer.closed,
                        fork: entry.fork_config(),
                    };
                    rules::check_create_matches(&cfg, &req)?;
                    return Ok(CreateOutcome::Existed(entry.info(&st.s)));
                }
                Err(Error::Gone) => return Err(Error::NameHeldBySoftDeleted),
                Err(Error::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        let (fork, content_type, expiry) = match &req.fork {
            None => (
                None,
                rules::effective_content_type(req.content_type.as_deref()),
                req.expiry,
            ),
            Some(f) => {
                let (fork, ct, expiry) = self.resolve_fork(f, &req).await?;
                (Some(fork), ct, expiry)
            }
        };
        let messages = rules::split_body(&content_type, &req.body, true)?;
        let len: u64 = messages.iter().map(|m| m.len() as u64).sum();
        if let Some(limit) = self.shared().max_stream_bytes
            && len > limit
        {
            return Err(Error::StreamTooLarge { limit });
        }
        let op = CreateOp {
            name: name.clone(),
            req,
            content_type,
            expiry,
            messages,
            fork,
        };
        match self.submit("create", Op::Create(Box::new(op))).await? {
            Reply::Created(outcome) => Ok(outcome),
            _ => Err(unexpected_reply("create")),
        }
    }

    /// A read whose pieces are `P`: [`bytes::Bytes`], or [`ReadPiece`]s (large runs of a binary
    /// stream as file regions, within `max_file_bytes`; see `Storage::read_regions`).
    async fn read_stream<P: read::Piece>(
        &self,
        name: &StreamName,
        from: ReadFrom,
        max_bytes: usize,
        max_file_bytes: u64,
    ) -> Result<ReadChunk<P>> {
        let entry = self.live(name, "read").await?;
        let now = self.shared().now();
        let (start, tail, touch) = {
            let mut st = entry.lock();
            st.s.last_access_ms = st.s.last_access_ms.max(now);
            let touch = match entry.expiry {
                Expiry::Ttl(secs)
                    if !st.touch_pending
                        && now.saturating_sub(st.s.persisted_access_ms)
                            >= touch_interval_ms(secs) =>
                {
                    st.touch_pending = true;
                    true
                }
                _ => false,
            };
            let start = match from {
                ReadFrom::Start => Offset::ZERO,
                ReadFrom::Tail => st.s.tail,
                ReadFrom::At(o) => o,
            };
            (start, st.s.tail, touch)
        };
        if touch {
            // Nobody waits for it; if the store is closing, the close writes access times.
            let _ = self.handle.commit.submit(Request {
                op: Op::Touch {
                    entry: Arc::clone(&entry),
                },
                reply: None,
            });
        }
        let (pieces, next) = if matches!(from, ReadFrom::Tail) || start == tail {
            (Vec::new(), tail)
        } else {
            let shared = Arc::clone(self.shared());
            let target = Arc::clone(&entry);
            let read = tokio::task::spawn_blocking(move || -> Result<(Vec<P>, Offset)> {
                let mut pieces = Vec::new();
                let mut bytes = max_bytes.max(1);
                let mut units = usize::MAX;
                let total = max_file_bytes.max(bytes as u64);
                let next = read::read_view(
                    &shared.pool,
                    &target,
                    start,
                    None,
                    &mut Budget {
                        bytes: &mut bytes,
                        units: &mut units,
                        total,
                        by_units: false,
                    },
                    &mut pieces,
                )?;
                P::finish(&mut pieces);
                Ok((pieces, next))
            })
            .await
            .map_err(|e| backend("read", std::io::Error::other(e)))?;
            match read {
                Ok(r) => r,
                // The stream was deleted under the read (its file is gone).
                Err(Error::Backend { .. }) if entry.lock().s.removed => {
                    return Err(Error::NotFound);
                }
                Err(e) => return Err(e),
            }
        };
        let st = entry.lock();
        let up_to_date = next == st.s.tail;
        Ok(ReadChunk {
            stream_id: entry.id,
            content_type: entry.content_type.to_string(),
            start,
            next,
            pieces,
            up_to_date,
            closed: up_to_date && st.s.writer.closed,
        })
    }
}

fn unexpected_reply(op: &'static str) -> Error {
    Error::Backend {
        op,
        source: Box::new(std::io::Error::other(
            "the committer answered another request",
        )),
    }
}

impl Storage for FileStorage {
    async fn create(&self, name: &StreamName, req: CreateRequest) -> Result<CreateOutcome> {
        self.create_stream(name, req).await
    }

    async fn append(&self, name: &StreamName, req: AppendRequest) -> Result<AppendOutcome> {
        let entry = self.live(name, "append").await?;
        // Split (and validate) JSON here, off the committer; errors are reported in protocol
        // precedence by the committer's `plan_append`.
        let messages = rules::split_body(&entry.content_type, &req.body, false);
        match self
            .submit(
                "append",
                Op::Append {
                    entry,
                    req,
                    messages,
                },
            )
            .await?
        {
            Reply::Appended(outcome) => Ok(outcome),
            _ => Err(unexpected_reply("append")),
        }
    }

    async fn read(&self, name: &StreamName, from: ReadFrom, max_bytes: usize) -> Result<ReadChunk> {
        self.read_stream(name, from, max_bytes, 0).await
    }

    async fn read_regions(
        &self,
        name: &StreamName,
        from: ReadFrom,
        max_bytes: usize,
        max_file_bytes: u64,
    ) -> Result<ReadChunk<ReadPiece>> {
        self.read_stream(name, from, max_bytes, max_file_bytes)
            .await
    }

    async fn head(&self, name: &StreamName) -> Result<StreamInfo> {
        let entry = self.live(name, "head").await?;
        let st = entry.lock();
        Ok(entry.info(&st.s))
    }

    async fn export_meta(&self, name: &StreamName) -> Result<ds_storage::ExportMeta> {
        let entry = self.live(name, "export metadata").await?;
        let st = entry.lock();
        Ok(ds_storage::ExportMeta {
            info: entry.info(&st.s),
            base: entry.base,
            fork: entry.fork.as_ref().map(|l| ds_storage::ForkPoint {
                source: l.source.name.clone(),
                offset: l.anchor,
                sub_offset: l.sub_offset,
            }),
            writer: WriterState::clone(&st.s.writer),
        })
    }

    async fn delete(&self, name: &StreamName) -> Result<()> {
        let entry = self.live(name, "delete").await?;
        self.submit("delete", Op::Delete { entry }).await?;
        Ok(())
    }

    async fn restore_writer(&self, name: &StreamName, writer: WriterState) -> Result<()> {
        let entry = self.live(name, "restore writer state").await?;
        self.submit(
            "restore writer state",
            Op::RestoreWriter {
                entry,
                writer: Box::new(writer),
            },
        )
        .await?;
        Ok(())
    }

    async fn subscribe(&self, name: &StreamName) -> Result<watch::Receiver<Tail>> {
        let entry = self.live(name, "subscribe").await?;
        let mut st = entry.lock();
        Ok(st.subscribe())
    }

    async fn list(&self) -> Result<Vec<StreamInfo>> {
        let entries: Vec<Arc<Entry>> = self
            .shared()
            .streams
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|b| Arc::clone(&b.0))
            .collect();
        let now = self.shared().now();
        let mut out: Vec<StreamInfo> = entries
            .iter()
            .filter_map(|e| {
                let st = e.lock();
                (e.status(&st.s, now) == Status::Live).then(|| e.info(&st.s))
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn sweep_expired(&self) -> Result<usize> {
        match self.submit("sweep", Op::Sweep).await? {
            Reply::Swept(n) => Ok(n),
            _ => Err(unexpected_reply("sweep")),
        }
    }

    fn is_ready(&self) -> bool {
        self.shared().failure().is_none() && !self.handle.commit.is_closed()
    }

    /// Streams and bytes are kept by the committer as it installs each batch (no scan);
    /// `syncs` and `sync_micros` count the WAL `fdatasync`s, on the acknowledgement path in
    /// file-durable mode and in the background in file-fast mode (checkpoint syncs of stream
    /// files are not counted).
    fn stats(&self) -> StorageStats {
        let s = &self.shared().stats;
        let load = |a: &AtomicU64| Some(a.load(Ordering::Relaxed));
        StorageStats {
            streams: load(&s.live_streams),
            bytes: load(&s.live_bytes),
            commit_batches: load(&s.batches),
            commit_ops: load(&s.ops),
            syncs: load(&s.fsyncs),
            sync_micros: load(&s.fsync_micros),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_or_quota_is_storage_full_and_other_errors_are_backend_errors() {
        for e in [
            std::io::Error::from(std::io::ErrorKind::StorageFull),
            std::io::Error::from(std::io::ErrorKind::QuotaExceeded),
            std::io::Error::from_raw_os_error(28),
            std::io::Error::from_raw_os_error(122),
        ] {
            assert!(is_disk_full(&e), "{e}");
            assert!(matches!(
                backend("write WAL", e),
                Error::StorageFull { limit: 0 }
            ));
        }
        let eio = std::io::Error::from_raw_os_error(5);
        assert!(!is_disk_full(&eio));
        match backend("sync WAL", eio) {
            Error::Backend { op, source } => {
                assert_eq!(op, "sync WAL");
                assert!(
                    source.to_string().contains("Input/output error"),
                    "{source}"
                );
            }
            e => panic!("unexpected {e:?}"),
        }
    }

    /// A stream created without data waits in the committer's list of streams the next
    /// checkpoint must write a file for, and checkpoints come only when a WAL segment fills.
    /// Deleting such a stream must let its entry go then, not at that checkpoint: a soak
    /// that created and deleted streams for 30 minutes grew by their entries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_deleted_before_the_checkpoint_is_not_kept_for_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FileStorage::open(FileOptions::new(dir.path(), Durability::Durable))
            .await
            .expect("open");
        store.wait_for_checkpoint().await;
        let create = || ds_storage::CreateRequest {
            content_type: Some("text/plain".to_owned()),
            ..ds_storage::CreateRequest::default()
        };
        let keep = StreamName::parse("keep", ds_protocol::NameLimits::default()).expect("name");
        store.create(&keep, create()).await.expect("create");
        let mut gone = Vec::new();
        for i in 0..20 {
            let name = StreamName::parse(&format!("s{i}"), ds_protocol::NameLimits::default())
                .expect("name");
            store.create(&name, create()).await.expect("create");
            let entry = store.shared().get(&name).expect("created");
            gone.push(Arc::downgrade(&entry));
            drop(entry);
            store.delete(&name).await.expect("delete");
        }
        let kept = gone.iter().filter(|w| w.upgrade().is_some()).count();
        assert_eq!(kept, 0, "entries of deleted streams still held");
        assert!(store.shared().get(&keep).is_some());
    }
}
