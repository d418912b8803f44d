//! Transactional Durable Streams storage on [redb](https://docs.rs/redb), sharded by stream.
//!
//! # Guarantees
//!
//! - **Nothing acknowledged is lost.** Every create, append, close and delete is answered only
//!   after the redb transaction holding it has committed with `Durability::Immediate` (fsync).
//!   A crash or power loss can lose only operations that were not yet answered, and each of
//!   those is either wholly applied or not at all (redb commits atomically; see
//!   `schema` for what a transaction holds). The exception is the opt-in
//!   [bulk-load mode](AcidOptions::bulk_load) of offline tools, whose commits are synced
//!   only by [`AcidStorage::close`].
//! - **One transaction per batch.** An append's records, its producer state, `Stream-Seq`,
//!   closure and the stream's metadata commit together. Each shard has one committer thread
//!   that takes every operation queued for its streams and applies them in one write
//!   transaction (group commit, see `commit`): batches grow with load, without a timer. An
//!   operation the protocol rejects is answered with its error; the rest of its batch commits.
//! - **Live readers only see committed data.** Writers are answered, then tails published,
//!   after the commit.
//! - **Sharded by stream.** A stream lives in `data_dir/shard-XX.redb`, chosen by a stable
//!   hash of its name. Shards commit independently and concurrently; fewer shards give bigger
//!   batches, more give more commits in flight; a new data dir gets one shard per core, 1 to
//!   4 ([`default_shard_count`], measurements there and in `commit`). A data dir must always
//!   be opened with the shard count it was created with.
//! - **Forks across shards.** A fork reads its inherited data from its source's shard. Fork
//!   reference counts are not stored: they are recomputed at open from the forks' metadata,
//!   so no cross-shard write has to be ordered for them. A source deleted while it has forks
//!   is soft-deleted; deleting its last fork removes it (the cascade, run again at open if a
//!   crash interrupted it).
//! - **Space is reclaimed.** Deleting a stream deletes its rows once no fork references it;
//!   redb reuses the freed pages. Expired streams are reclaimed by [`Storage::sweep_expired`]
//!   or when next touched.
//! - **Expiry survives restarts.** The expiry is stored, and for a sliding TTL so is the last
//!   access: with every write, and by a read once half the TTL has passed since the stored
//!   value. After a restart a TTL counts from the stored last access, so a stream kept alive
//!   only by reads may expire up to half a TTL earlier than without the restart.
//! - **Fast restarts.** Opening reads stream metadata (and each stream's last record), never
//!   the data: 100,000 streams open in about a second.
//! - **One process per data dir.** The store holds an exclusive lock on `data_dir/LOCK`, which
//!   records its PID, and redb locks the shard files; a second opener gets an error saying the
//!   directory is in use and naming the holder's PID.
//!
//! A full disk or quota is reported as [`Error::StorageFull`] (`limit: 0`: the disk's limit),
//! and the failed batch changes nothing. redb refuses all further I/O on a database after an
//! I/O error, reads included, until it is reopened; so after a full disk the shard's committer
//! reopens its database at once (redb repairs it from its last committed transaction) and
//! checks that it holds exactly what the cache says is committed before serving again. If the
//! disk is too full even to reopen, the shard's reads and writes fail with
//! [`Error::StorageFull`] (`507`) and [`Storage::is_ready`] is false; the committer tries
//! again before each batch and every 100 ms while none comes, so reads and writes resume once
//! space is freed, without a restart or a write. A commit (`txn.commit()`) that fails, even
//! with ENOSPC, may have reached the disk (its header written, the fsync failed): it is
//! reported as `StorageFull` only when the reopened database shows the last committed state,
//! and as [`Error::Backend`] (`503`, outcome unknown) otherwise; if the reopened database
//! holds the failed batch after all, the shard stops until a restart loads it. After any
//! other I/O error the shard fails its writes with that error and [`Storage::is_ready`] turns
//! false: a restart recovers the last committed state. The backend does not reshard or
//! compact files.
//!
//! Entry points: [`AcidStorage::open`] with [`AcidOptions`], then the [`Storage`] trait;
//! [`AcidStorage::close`] before opening the same data dir again in one process.

mod cache;
mod commit;
mod error;
mod read;
mod schema;
mod shard;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ds_protocol::{Expiry, Offset, StreamName};
use ds_storage::rules::{self, Clock, SystemClock};
use ds_storage::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, Error, ReadChunk, ReadFrom, Result,
    Storage, StorageStats, StreamInfo, Tail,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::cache::{Entry, Status};
use crate::commit::Op;
use crate::read::Reader;
use crate::shard::{Shard, Shared};
use ds_storage::Pieces;

/// Where the shard databases live (`storage.acid_backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AcidBackend {
    /// Files under [`AcidOptions::data_dir`] (`"file"`).
    #[default]
    File,
    /// redb's in-memory backend (`"in-memory"`): same transactions, nothing survives the
    /// process. For tests and ephemeral deployments.
    InMemory,
}

/// Options of an [`AcidStorage`].
#[derive(Clone)]
pub struct AcidOptions {
    /// Directory of the shard files (unused by [`AcidBackend::InMemory`]).
    pub data_dir: PathBuf,
    /// Number of shards: a power of two in 1..=256. Fixed for the life of a data dir.
    pub shard_count: u32,
    /// Where the databases live.
    pub backend: AcidBackend,
    /// Upper bound on payload bytes of one stream (`limits.max_stream_bytes`); `None` is
    /// unbounded.
    pub max_stream_bytes: Option<u64>,
    /// Clock used for TTL and expiry.
    pub clock: Arc<dyn Clock>,
    /// Bulk-load mode (default `false`): commits are not synced (redb's
    /// `Durability::None`); everything is made durable by [`AcidStorage::close`], which
    /// commits every shard once with an fsync. A crash (or a failed commit) before `close`
    /// loses everything written in this mode, and [`Storage::stats`] counts only the syncs
    /// actually done. For offline tools such as `import`, never for serving: an answered
    /// operation is not durable until `close` returns.
    pub bulk_load: bool,
}

/// The most shards [`default_shard_count`] gives a new data dir, however many cores there are.
///
/// With 64 concurrent writers on 1,000 streams, 4 shards sustained 1.2 to 2 times the appends
/// per second of 16 on the development machines' virtual disk (about 9 appends per commit
/// instead of 2.6; `examples/group_commit.rs` and the README).
pub const MAX_DEFAULT_SHARD_COUNT: u32 = 4;

/// The shard count [`AcidOptions::new`] uses on this machine: [`shard_count_for_cores`] of the
/// cores this process may run on (`std::thread::available_parallelism`, which honours CPU
/// affinity and cgroup quotas; 1 if unknown).
///
/// A data dir keeps the count it was created with (see [`stored_shard_count`]), so this only
/// decides the count of new ones.
#[must_use]
pub fn default_shard_count() -> u32 {
    shard_count_for_cores(std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

/// The default shard count for a machine with `cores` cores: one shard per core, rounded down
/// to a power of two, from 1 to [`MAX_DEFAULT_SHARD_COUNT`].
///
/// A commit is mostly CPU work (redb's page writes and checksums, and submitting the sync to
/// the device: two thirds of the server's CPU time in `append-many` on `acid`), and each
/// commit has a fixed cost on top of its appends' (about 140 µs of CPU there); more shards
/// than cores only split the same appends into more, smaller commits that compete with the
/// HTTP workers for the CPUs. On the 2-core development machine (`cargo xtask bench
/// append-many create --backend acid`, 5 rounds, two runs) 2 shards served as many appends
/// per second as 4 (1.06× and 0.99×) and 5% more creates, with 15-19% less CPU per
/// operation; the storage alone (`examples/group_commit.rs`, nothing else competing for the
/// CPUs) still prefers 4 there, which is why machines with 4 cores or more keep 4.
#[must_use]
pub fn shard_count_for_cores(cores: usize) -> u32 {
    let cores = u32::try_from(cores.max(1)).unwrap_or(u32::MAX);
    // Round down to a power of two.
    (1u32 << cores.ilog2()).min(MAX_DEFAULT_SHARD_COUNT)
}

/// The shard count `data_dir` was created with, or `None` if it holds no shard yet (missing or
/// empty directory).
///
/// The count of a data dir can never change; a caller that lets operators leave it unset can
/// open an existing data dir with its stored count and use [`default_shard_count`] (or its
/// own default) only for a new one. Blocking file I/O: call it before [`AcidStorage::open`],
/// off the async workers. Fails like `open` when another process has the data dir open or the
/// first shard file cannot be read.
pub fn stored_shard_count(data_dir: &Path) -> Result<Option<u32>> {
    shard::stored_shard_count(data_dir)
}

impl AcidOptions {
    /// File-backed options for `data_dir`, with [`default_shard_count`] shards, no stream size
    /// limit and the system clock.
    pub fn new(data_dir: impl Into<PathBuf>) -> AcidOptions {
        AcidOptions {
            data_dir: data_dir.into(),
            shard_count: default_shard_count(),
            backend: AcidBackend::File,
            max_stream_bytes: None,
            clock: Arc::new(SystemClock),
            bulk_load: false,
        }
    }
}

impl std::fmt::Debug for AcidOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcidOptions")
            .field("data_dir", &self.data_dir)
            .field("shard_count", &self.shard_count)
            .field("backend", &self.backend)
            .field("max_stream_bytes", &self.max_stream_bytes)
            .field("bulk_load", &self.bulk_load)
            .finish_non_exhaustive()
    }
}

/// The redb backend. Cheap to clone: clones share the same databases.
///
/// Dropping the last clone stops the committers and closes the databases shortly after;
/// [`AcidStorage::close`] does the same and waits for it.
#[derive(Clone)]
pub struct AcidStorage {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for AcidStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcidStorage")
            .field("shards", &self.handle.shared.shard_count)
            .finish_non_exhaustive()
    }
}

/// The part the committers do not hold: dropping it stops them.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        for shard in &self.shared.shards {
            let (done, _) = oneshot::channel();
            // A committer that already stopped needs no second word.
            let _ = shard.tx.send(Op::Shutdown { done });
        }
    }
}

fn closed_error() -> Error {
    Error::Backend {
        op: "queue operation",
        source: "the store is shut down".into(),
    }
}

impl AcidStorage {
    /// Opens (creating if needed) the store: opens every shard, loads stream metadata into
    /// memory, and starts one committer thread per shard. Must be called inside a tokio
    /// runtime (reads use its blocking pool).
    ///
    /// Fails with [`Error::Backend`] when the options are invalid, the data dir is in use by
    /// another process, was created with another shard count, or cannot be read.
    pub async fn open(opts: AcidOptions) -> Result<AcidStorage> {
        AcidStorage::open_inner(opts, None).await
    }

    /// Like [`AcidStorage::open`], with each shard's database on the redb storage backend that
    /// `backends(shard_index)` makes, instead of a file or memory (set [`AcidOptions::backend`]
    /// to [`AcidBackend::InMemory`] so no data dir is created or locked). The factory is
    /// called again for a shard that is reopened after its disk filled up, so a test can wrap
    /// one persistent backend per shard and inject I/O failures (a full disk) into it.
    pub async fn open_with_backends(
        opts: AcidOptions,
        backends: Arc<dyn Fn(usize) -> Box<dyn redb::StorageBackend> + Send + Sync>,
    ) -> Result<AcidStorage> {
        AcidStorage::open_inner(opts, Some(backends)).await
    }

    async fn open_inner(
        opts: AcidOptions,
        custom: Option<shard::BackendFactory>,
    ) -> Result<AcidStorage> {
        shard::check_dir(&opts)?;
        let lock = match (opts.backend, &custom) {
            (AcidBackend::File, None) => Some(shard::lock_dir(&opts.data_dir)?),
            _ => None,
        };
        let load_opts = opts.clone();
        let mut loaded = tokio::task::spawn_blocking(move || {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..load_opts.shard_count as usize)
                    .map(|i| {
                        let opts = &load_opts;
                        let place = shard::Place::of(opts, custom.as_ref(), i);
                        s.spawn(move || shard::load_shard(opts, place, i))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err(panicked("open shard"))))
                    .collect::<Result<Vec<_>>>()
            })
        })
        .await
        .map_err(|_| panicked("open"))??;
        let (maps, reclaim) =
            shard::build_cache(&mut loaded, opts.shard_count, opts.clock.now_ms())?;

        let mut receivers = Vec::new();
        let mut counters = Vec::new();
        let mut shards = Vec::new();
        for (index, (l, map)) in loaded.into_iter().zip(maps).enumerate() {
            let (tx, rx) = mpsc::unbounded_channel();
            receivers.push(rx);
            counters.push(l.next_counter);
            let shard = Shard {
                index,
                db: std::sync::RwLock::new(Some(Arc::new(l.db))),
                place: l.place,
                cache_bytes: shard::shard_cache_bytes(opts.shard_count),
                streams: std::sync::RwLock::new(map),
                tx,
                commits: AtomicU64::default(),
                ops: AtomicU64::default(),
                syncs: AtomicU64::default(),
                commit_micros: AtomicU64::default(),
                live_streams: AtomicU64::default(),
                live_bytes: AtomicU64::default(),
                failed: std::sync::Mutex::new(None),
            };
            for entry in shard.map().values() {
                let mut st = entry.lock();
                let live = !st.soft_deleted;
                shard.recount(&mut st, live);
            }
            shards.push(shard);
        }
        let shared = Arc::new(Shared {
            shards,
            shard_count: opts.shard_count,
            max_stream_bytes: opts.max_stream_bytes,
            clock: opts.clock,
            bulk_load: opts.bulk_load,
            _lock: lock,
        });
        let store = AcidStorage {
            handle: Arc::new(Handle {
                shared: Arc::clone(&shared),
            }),
        };
        for (index, (rx, counter)) in receivers.into_iter().zip(counters).enumerate() {
            commit::spawn(Arc::clone(&shared), index, rx, counter).map_err(|e| Error::Backend {
                op: "start committer thread",
                source: Box::new(e),
            })?;
        }
        for entry in reclaim {
            store.reclaim(entry).await?;
        }
        Ok(store)
    }

    /// Stops the committers (after their current batch) and, when this is the last clone,
    /// waits until the databases are closed, so the data dir can be opened again at once.
    /// Other clones stop working. Acknowledged operations are already durable: this flushes
    /// nothing new, except in [bulk-load mode](AcidOptions::bulk_load), where each committer
    /// first commits its shard once with an fsync, which makes every earlier (unsynced)
    /// commit durable. That final commit cannot report a failure here; redb tries once more
    /// when it closes the database, and a shard whose final commit failed reopens in its
    /// last durable state.
    pub async fn close(self) {
        let last = Arc::strong_count(&self.handle) == 1;
        let shared = Arc::clone(&self.handle.shared);
        let mut done = Vec::new();
        for shard in &shared.shards {
            let (tx, rx) = oneshot::channel();
            if shard.tx.send(Op::Shutdown { done: tx }).is_ok() {
                done.push(rx);
            }
        }
        drop(self);
        for rx in done {
            let _ = rx.await;
        }
        if !last {
            return;
        }
        // The committers have let go; reads still running hold the databases briefly.
        // Closing a redb database writes and syncs its allocator state: off the async
        // workers.
        let _ = tokio::task::spawn_blocking(move || {
            let mut shared = shared;
            for _ in 0..10_000 {
                match Arc::try_unwrap(shared) {
                    Ok(last) => {
                        drop(last);
                        return;
                    }
                    Err(still_shared) => shared = still_shared,
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        })
        .await;
    }

    /// Transactions committed since open, over all shards (for tests and metrics).
    #[must_use]
    pub fn commit_count(&self) -> u64 {
        self.shared()
            .shards
            .iter()
            .map(|s| s.commits.load(Ordering::Relaxed))
            .sum()
    }

    /// Operations answered after a successful commit since open, over all shards.
    #[must_use]
    pub fn committed_ops(&self) -> u64 {
        self.shared()
            .shards
            .iter()
            .map(|s| s.ops.load(Ordering::Relaxed))
            .sum()
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    fn send(&self, shard: usize, op: Op) -> Result<()> {
        self.shared().shards[shard]
            .tx
            .send(op)
            .map_err(|_| closed_error())
    }

    async fn call<T>(&self, shard: usize, op: impl FnOnce(commit::Reply<T>) -> Op) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(shard, op(tx))?;
        rx.await.map_err(|_| closed_error())?
    }

    async fn reclaim(&self, entry: Arc<Entry>) -> Result<Status> {
        let shard = entry.shard;
        self.call(shard, |reply| Op::Reclaim {
            entry,
            reply: Some(reply),
        })
        .await
    }

    /// Looks a stream up for a client operation: missing or removed streams are `NotFound`,
    /// soft-deleted ones `Gone`; an expired one is reclaimed first (once).
    async fn live(&self, name: &StreamName) -> Result<Arc<Entry>> {
        let entry = self.shared().lookup(name).ok_or(Error::NotFound)?;
        let status = {
            let st = entry.lock();
            entry.status(&st, self.shared().now())
        };
        let status = match status {
            Status::NeedsReclaim => self.reclaim(Arc::clone(&entry)).await?,
            status => status,
        };
        match status {
            Status::Live => Ok(entry),
            Status::Gone => Err(Error::Gone),
            Status::Missing | Status::NeedsReclaim => Err(Error::NotFound),
        }
    }

    /// Slides a TTL on a read, asking the committer to persist it once half the TTL passed
    /// since the stored value.
    fn touch(&self, entry: &Arc<Entry>, st: &mut cache::State, now: u64) {
        st.last_access_ms = now;
        if let Expiry::Ttl(secs) = entry.expiry
            && !st.touch_queued
            && now.saturating_sub(st.persisted_access_ms) >= secs.saturating_mul(500)
        {
            st.touch_queued = true;
            let _ = self.send(
                entry.shard,
                Op::Touch {
                    entry: Arc::clone(entry),
                },
            );
        }
    }
}

fn panicked(op: &'static str) -> Error {
    Error::Backend {
        op,
        source: "a storage thread panicked".into(),
    }
}

impl Storage for AcidStorage {
    async fn create(&self, name: &StreamName, req: CreateRequest) -> Result<CreateOutcome> {
        let shard = self.shared().shard_of(name).index;
        let name = name.clone();
        self.call(shard, |reply| Op::Create { name, req, reply })
            .await
    }

    async fn append(&self, name: &StreamName, req: AppendRequest) -> Result<AppendOutcome> {
        let entry = self.live(name).await?;
        // Split (and validate) JSON here, not on the committer; errors are reported in
        // protocol precedence by `rules::plan_append` there.
        let messages = rules::split_body(&entry.content_type, &req.body, false);
        let shard = entry.shard;
        self.call(shard, |reply| Op::Append {
            entry,
            req,
            messages,
            reply,
        })
        .await
    }

    async fn read(&self, name: &StreamName, from: ReadFrom, max_bytes: usize) -> Result<ReadChunk> {
        let entry = self.live(name).await?;
        let (tail, closed) = {
            let mut st = entry.lock();
            self.touch(&entry, &mut st, self.shared().now());
            (st.tail, st.writer.closed)
        };
        let start = match from {
            ReadFrom::Start => Offset::ZERO,
            ReadFrom::Tail => tail,
            ReadFrom::At(o) => o,
        };
        let (pieces, next) = if from == ReadFrom::Tail {
            (Vec::new(), tail)
        } else {
            let shared = Arc::clone(&self.handle.shared);
            let reader_entry = Arc::clone(&entry);
            tokio::task::spawn_blocking(move || {
                let mut pieces = Pieces::default();
                let mut budget = max_bytes.max(1);
                let next = Reader::new(&shared).read_view(
                    &reader_entry,
                    tail,
                    start,
                    None,
                    &mut budget,
                    &mut pieces,
                )?;
                Ok::<_, Error>((pieces.finish(), next))
            })
            .await
            .map_err(|_| panicked("read"))??
        };
        let up_to_date = next == tail;
        Ok(ReadChunk {
            stream_id: entry.id,
            content_type: entry.content_type.clone(),
            start,
            next,
            pieces,
            up_to_date,
            closed: up_to_date && closed,
        })
    }

    async fn head(&self, name: &StreamName) -> Result<StreamInfo> {
        let entry = self.live(name).await?;
        let st = entry.lock();
        Ok(entry.info(&st))
    }

    async fn export_meta(&self, name: &StreamName) -> Result<ds_storage::ExportMeta> {
        let entry = self.live(name).await?;
        let st = entry.lock();
        Ok(ds_storage::ExportMeta {
            info: entry.info(&st),
            base: entry.base,
            fork: entry.fork.as_ref().map(|l| ds_storage::ForkPoint {
                source: l.source.name.clone(),
                offset: l.anchor,
                sub_offset: l.sub_offset,
            }),
            writer: st.writer.clone(),
        })
    }

    async fn delete(&self, name: &StreamName) -> Result<()> {
        let shard = self.shared().shard_of(name).index;
        let name = name.clone();
        self.call(shard, |reply| Op::Delete { name, reply }).await
    }

    async fn restore_writer(&self, name: &StreamName, writer: rules::WriterState) -> Result<()> {
        let entry = self.live(name).await?;
        let shard = entry.shard;
        self.call(shard, |reply| Op::RestoreWriter {
            entry,
            writer: Box::new(writer),
            reply,
        })
        .await
    }

    async fn subscribe(&self, name: &StreamName) -> Result<watch::Receiver<Tail>> {
        let entry = self.live(name).await?;
        // The committer answers writers before it publishes; a subscriber must start at the
        // committed tail all the same.
        let st = entry.lock();
        entry.publish(&st);
        Ok(entry.tail_tx.subscribe())
    }

    async fn list(&self) -> Result<Vec<StreamInfo>> {
        let now = self.shared().now();
        let mut out = Vec::new();
        for shard in &self.shared().shards {
            for entry in shard.map().values() {
                let st = entry.lock();
                if entry.status(&st, now) == Status::Live {
                    out.push(entry.info(&st));
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn sweep_expired(&self) -> Result<usize> {
        let now = self.shared().now();
        let mut expired = Vec::new();
        for shard in &self.shared().shards {
            for entry in shard.map().values() {
                let st = entry.lock();
                if st.removed {
                    continue;
                }
                if st.soft_deleted {
                    // A cascade that did not run (its queue closed): reclaim, uncounted.
                    if st.fork_refs == 0 {
                        let _ = self.send(
                            entry.shard,
                            Op::Reclaim {
                                entry: Arc::clone(entry),
                                reply: None,
                            },
                        );
                    }
                } else if rules::is_expired(entry.expiry, st.last_access_ms, now) {
                    expired.push(Arc::clone(entry));
                }
            }
        }
        let mut waits = Vec::with_capacity(expired.len());
        for entry in expired {
            let (tx, rx) = oneshot::channel();
            self.send(
                entry.shard,
                Op::Reclaim {
                    entry,
                    reply: Some(tx),
                },
            )?;
            waits.push(rx);
        }
        let mut n = 0;
        for rx in waits {
            if rx.await.map_err(|_| closed_error())?? != Status::Live {
                n += 1;
            }
        }
        Ok(n)
    }

    fn is_ready(&self) -> bool {
        self.shared().shards.iter().all(|s| s.failure().is_none())
    }

    /// Live streams and their bytes are kept as counters by the committers (a stream counts
    /// from its create's commit until its delete or soft delete commits; expired streams count
    /// until they are reclaimed). Every commit is one durable redb transaction, so
    /// `commit_batches` and `syncs` are the same figure, and `sync_micros` is the time spent
    /// in `commit` (writing the dirty pages and syncing them). In
    /// [bulk-load mode](AcidOptions::bulk_load) batches commit unsynced: `syncs` and
    /// `sync_micros` stay at zero until the final synced commits of [`AcidStorage::close`].
    fn stats(&self) -> StorageStats {
        let mut stats = StorageStats {
            streams: Some(0),
            bytes: Some(0),
            commit_batches: Some(0),
            commit_ops: Some(0),
            syncs: Some(0),
            sync_micros: Some(0),
        };
        let add = |field: &mut Option<u64>, counter: &AtomicU64| {
            *field = field.map(|v| v.wrapping_add(counter.load(Ordering::Relaxed)));
        };
        for shard in &self.shared().shards {
            add(&mut stats.streams, &shard.live_streams);
            add(&mut stats.bytes, &shard.live_bytes);
            add(&mut stats.commit_batches, &shard.commits);
            add(&mut stats.commit_ops, &shard.ops);
            add(&mut stats.syncs, &shard.syncs);
            add(&mut stats.sync_micros, &shard.commit_micros);
        }
        stats
    }
}
