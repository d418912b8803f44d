//! Shards: one redb database per shard, what the store shares between the API and the
//! committers, and opening (recovery) of a data dir.
//!
//! Opening reads every shard's `streams` and `producers` rows (never `records`) into the
//! in-memory cache, in parallel, then links forks to their sources across shards and counts
//! each source's forks. Fork reference counts are derived here rather than stored, so a crash
//! between a fork's commit in one shard and anything in its source's shard cannot leave a
//! count wrong: a source soft-deleted while a fork was being created, whose fork never
//! committed, has no forks after the restart and is reclaimed right after open.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use ds_protocol::{Offset, StreamName};
use ds_storage::Result;
use ds_storage::rules::{Clock, ProducerState};
use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::mpsc;

use crate::cache::{Entry, ForkLink, NewEntry, State, StreamMap};
use crate::commit::Op;
use crate::error::{Failure, OpenError, backend};
use crate::schema::{
    FORMAT_VERSION, KEY_FORMAT_VERSION, KEY_NEXT_ID, KEY_SHARD_COUNT, KEY_SHARD_INDEX, META,
    PRODUCERS, RECORDS, STREAMS, StreamMeta, decode_record, shard_of, stored_name,
};
use crate::{AcidBackend, AcidOptions};

/// redb's page cache (read cache and write buffer), shared out between the shards: redb's
/// own default is 1 GiB per database, which every shard would multiply.
const TOTAL_CACHE_BYTES: usize = 256 * 1024 * 1024;
const MIN_SHARD_CACHE_BYTES: usize = 4 * 1024 * 1024;
/// At most this much per shard: a read of a large stream goes through one shard's cache
/// (every page it reads is cached), so this bounds what a big read adds to the process's
/// memory whatever the shard count. The hot pages of appends (each stream's last leaf and the
/// branches above) take far less.
const MAX_SHARD_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// The cache size of each shard of a store with `shard_count` shards.
pub(crate) fn shard_cache_bytes(shard_count: u32) -> usize {
    (TOTAL_CACHE_BYTES / shard_count.max(1) as usize)
        .clamp(MIN_SHARD_CACHE_BYTES, MAX_SHARD_CACHE_BYTES)
}

/// What the API and the committers share.
pub(crate) struct Shared {
    pub(crate) shards: Vec<Shard>,
    pub(crate) shard_count: u32,
    pub(crate) max_stream_bytes: Option<u64>,
    pub(crate) clock: Arc<dyn Clock>,
    /// [`AcidOptions::bulk_load`]: batches commit without a sync, and each committer makes
    /// its shard durable with one synced commit when it shuts down.
    pub(crate) bulk_load: bool,
    /// The data dir's `LOCK` file (file backend), held while the store is open. Declared last
    /// so the shard databases are closed before another process can take the lock.
    pub(crate) _lock: Option<std::fs::File>,
}

/// Makes the storage backend of shard `index`'s database (see
/// [`AcidStorage::open_with_backends`](crate::AcidStorage::open_with_backends)).
pub(crate) type BackendFactory = Arc<dyn Fn(usize) -> Box<dyn redb::StorageBackend> + Send + Sync>;

/// Where a shard's database lives, which says how to open it again.
#[derive(Clone)]
pub(crate) enum Place {
    /// The file at this path.
    File(PathBuf),
    /// redb's in-memory backend: nothing to reopen.
    Memory,
    /// A backend made by a factory for this shard index (tests that inject I/O failures).
    Custom(BackendFactory, usize),
}

impl Place {
    /// The place of shard `index` of a store with these options.
    pub(crate) fn of(opts: &AcidOptions, custom: Option<&BackendFactory>, index: usize) -> Place {
        match (custom, opts.backend) {
            (Some(factory), _) => Place::Custom(Arc::clone(factory), index),
            (None, AcidBackend::File) => Place::File(shard_path(&opts.data_dir, index)),
            (None, AcidBackend::InMemory) => Place::Memory,
        }
    }

    /// The name errors give the database.
    fn label(&self) -> PathBuf {
        match self {
            Place::File(path) => path.clone(),
            Place::Memory => PathBuf::from("(in memory)"),
            Place::Custom(_, index) => PathBuf::from(format!("(custom backend of shard {index})")),
        }
    }
}

/// One shard: its database, its streams, and its committer's queue.
pub(crate) struct Shard {
    pub(crate) index: usize,
    /// The database; `None` only while a reopen after a full disk has not succeeded yet.
    pub(crate) db: RwLock<Option<Arc<Database>>>,
    /// Where the database lives, to reopen it.
    pub(crate) place: Place,
    /// redb's cache size for this shard.
    pub(crate) cache_bytes: usize,
    pub(crate) streams: RwLock<StreamMap>,
    pub(crate) tx: mpsc::UnboundedSender<Op>,
    /// Transactions committed (for tests and metrics).
    pub(crate) commits: AtomicU64,
    /// Operations answered after a commit.
    pub(crate) ops: AtomicU64,
    /// Durable (synced) commits: every commit, or in bulk-load mode only the final one.
    pub(crate) syncs: AtomicU64,
    /// Time spent in the durable commits (writing the pages and syncing them), in
    /// microseconds.
    pub(crate) commit_micros: AtomicU64,
    /// Live streams of this shard (counted entries, see [`Shard::recount`]).
    pub(crate) live_streams: AtomicU64,
    /// Payload bytes those streams store themselves.
    pub(crate) live_bytes: AtomicU64,
    /// The I/O error a commit failed with: redb refuses writes until the file is reopened,
    /// so every later batch fails with it too.
    pub(crate) failed: std::sync::Mutex<Option<Failure>>,
}

impl Shared {
    pub(crate) fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    pub(crate) fn shard_of(&self, name: &StreamName) -> &Shard {
        &self.shards[shard_of(name.as_str(), self.shard_count)]
    }

    /// The entry currently holding `name`, if any.
    pub(crate) fn lookup(&self, name: &StreamName) -> Option<Arc<Entry>> {
        self.shard_of(name).map().get(name).cloned()
    }
}

impl Shard {
    /// Counts a durable commit that began at `started`.
    pub(crate) fn count_sync(&self, started: std::time::Instant) {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.commit_micros.fetch_add(micros, Ordering::Relaxed);
        self.syncs.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn map(&self) -> RwLockReadGuard<'_, StreamMap> {
        self.streams
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The database, unless it is closed for a reopen that has not succeeded yet.
    pub(crate) fn db(&self) -> Result<Arc<Database>, Failure> {
        self.db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| {
                self.failure().unwrap_or_else(|| {
                    Failure::new("open shard database", redb::StorageError::DatabaseClosed)
                })
            })
    }

    /// After a full disk broke the database (redb refuses all I/O on a database after an I/O
    /// error, reads included), closes it and opens it again, which makes redb repair it from
    /// its last committed transaction; then checks that the database holds exactly what the
    /// cache says is committed (the stream rows, tails, writer state and producers, and the id
    /// counter `next_counter`). Only then is the failure cleared and the shard back in
    /// service. Called by the shard's committer, the only writer, between batches.
    ///
    /// A read transaction begun on the old database keeps its file (and, for a file, redb's
    /// lock on it) until it ends, so opening the file again is retried for up to
    /// [`REOPEN_WAIT`] while it reports the database in use.
    ///
    /// Returns why the shard stays broken: the disk is still too full to open it, a reader
    /// still holds the old database, or the database and the cache disagree (a failed commit
    /// did reach the disk), in which case only a restart, which rebuilds the cache from the
    /// database, helps: the shard's failure then stops being a full disk, so nothing retries
    /// the reopen and the shard's operations fail with `Error::Backend`.
    pub(crate) fn reopen(&self, next_counter: u64) -> Result<(), String> {
        if matches!(self.place, Place::Memory) {
            return Err("an in-memory database cannot be reopened".to_owned());
        }
        let old = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(mut old) = old {
            // Readers hold the database only to begin a transaction, so they let go at once;
            // redb releases the file's lock when the last holder drops it.
            for _ in 0..2_000 {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(shared) => old = shared,
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        let deadline = std::time::Instant::now() + REOPEN_WAIT;
        let db = loop {
            match open_db(&self.place, self.cache_bytes) {
                Ok(db) => break db,
                Err(e) if in_use(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        let rows = read_rows(&db, &self.place.label()).map_err(|e| e.to_string())?;
        if let Err(why) = self.matches_cache(&rows, next_counter) {
            *self
                .failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(Failure::needs_restart(&why));
            return Err(why);
        }
        *self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(db));
        *self
            .failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        Ok(())
    }

    /// Whether a full disk broke the shard and its database is to be reopened (by its
    /// committer, before its next batch and on a timer while no batch comes).
    pub(crate) fn needs_reopen(&self) -> bool {
        !matches!(self.place, Place::Memory) && self.failure().is_some_and(|f| f.is_full())
    }

    /// Checks the rows read from the database against the committed state in the cache.
    fn matches_cache(&self, rows: &Rows, next_counter: u64) -> Result<(), String> {
        if rows.next_counter != next_counter {
            return Err(format!(
                "the stored id counter is {}, the committer's {next_counter}",
                rows.next_counter
            ));
        }
        let map = self.map();
        if rows.streams.len() != map.len() {
            return Err(format!(
                "the database holds {} streams, the cache {}",
                rows.streams.len(),
                map.len()
            ));
        }
        let no_producers = HashMap::new();
        for (raw, meta) in &rows.streams {
            let entry = stored_name(raw)
                .and_then(|name| map.get(&name))
                .ok_or_else(|| format!("stream {raw:?} is not in the cache"))?;
            let st = entry.lock();
            let producers = rows.producers.get(&meta.id).unwrap_or(&no_producers);
            let same = entry.id == meta.id
                && st.tail == meta.tail
                && st.soft_deleted == meta.soft_deleted
                && st.writer.closed == meta.closed
                && st.writer.closed_by == meta.closed_by
                && st.writer.last_stream_seq == meta.last_stream_seq
                && st.writer.producers == *producers;
            if !same {
                return Err(format!("stream {raw:?} differs from the cache"));
            }
        }
        Ok(())
    }

    /// The failure that broke this shard, if one did.
    pub(crate) fn failure(&self) -> Option<Failure> {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn map_mut(&self) -> std::sync::RwLockWriteGuard<'_, StreamMap> {
        self.streams
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts an entry of this shard in the live totals (`live`) or takes it out, at most
    /// once each way. Called with the entry locked, by the shard's committer (or at open), so
    /// the totals never go below zero.
    pub(crate) fn recount(&self, st: &mut State, live: bool) {
        if live == st.counted {
            return;
        }
        st.counted = live;
        if live {
            self.live_streams.fetch_add(1, Ordering::Relaxed);
            self.live_bytes.fetch_add(st.bytes, Ordering::Relaxed);
        } else {
            self.live_streams.fetch_sub(1, Ordering::Relaxed);
            self.live_bytes.fetch_sub(st.bytes, Ordering::Relaxed);
        }
    }

    /// Sets a committed entry's byte count, keeping the live totals in step.
    pub(crate) fn set_bytes(&self, st: &mut State, bytes: u64) {
        if st.counted {
            // Wrapping: the difference of two counts is added modulo 2^64.
            self.live_bytes
                .fetch_add(bytes.wrapping_sub(st.bytes), Ordering::Relaxed);
        }
        st.bytes = bytes;
    }
}

/// A shard's database and rows as read at open.
pub(crate) struct LoadedShard {
    pub(crate) path: Option<PathBuf>,
    pub(crate) place: Place,
    pub(crate) db: Database,
    /// The next value of the shard's stream-id counter.
    pub(crate) next_counter: u64,
    rows: Vec<(String, StreamMeta)>,
    producers: HashMap<u64, HashMap<String, ProducerState>>,
}

/// A shard's metadata rows as its database holds them.
struct Rows {
    /// Each stream's row, its tail and bytes taken from its last record.
    streams: Vec<(String, StreamMeta)>,
    producers: HashMap<u64, HashMap<String, ProducerState>>,
    /// The stored id counter.
    next_counter: u64,
}

/// The path of shard `index`'s database.
pub(crate) fn shard_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("shard-{index:02x}.redb"))
}

/// Checks the options and the data dir before any database is opened.
pub(crate) fn check_dir(opts: &AcidOptions) -> Result<()> {
    let count = opts.shard_count;
    if !(1..=256).contains(&count) || !count.is_power_of_two() {
        return Err(OpenError::ShardCount(count).into());
    }
    if opts.backend == AcidBackend::InMemory {
        return Ok(());
    }
    std::fs::create_dir_all(&opts.data_dir).map_err(|source| OpenError::CreateDir {
        dir: opts.data_dir.clone(),
        source,
    })?;
    for index in count as usize..256 {
        let file = shard_path(&opts.data_dir, index);
        if file.exists() {
            return Err(OpenError::StrayShard {
                file,
                requested: count,
            }
            .into());
        }
    }
    Ok(())
}

/// The lock file of a data dir; it holds the owner's PID while a store has the dir open.
pub(crate) fn lock_path(dir: &Path) -> PathBuf {
    dir.join("LOCK")
}

/// Takes the data dir's exclusive `LOCK` and writes this process's PID into it, so whoever
/// finds the dir in use (another server, `list`, `export`) can name the holder. redb's own
/// per-file locks still guard the shards against a holder that predates the `LOCK` file.
pub(crate) fn lock_dir(dir: &Path) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    let path = lock_path(dir);
    let io_err = |source: std::io::Error| ds_storage::Error::Backend {
        op: "lock data directory",
        source: Box::new(source),
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            // The holder wrote its PID when it took the lock; a read failure only makes the
            // message less precise.
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(OpenError::Locked {
                dir: dir.to_owned(),
                file: path,
                pid: if holder.is_empty() {
                    "unknown".to_owned()
                } else {
                    holder.to_owned()
                },
            }
            .into());
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
    }
    file.set_len(0).map_err(io_err)?;
    file.rewind().map_err(io_err)?;
    writeln!(file, "{}", std::process::id()).map_err(io_err)?;
    file.sync_data().map_err(io_err)?;
    Ok(file)
}

/// The shard count stored in `dir`'s first shard file, or `None` when there is none.
pub(crate) fn stored_shard_count(dir: &Path) -> Result<Option<u32>> {
    let path = shard_path(dir, 0);
    if !path.is_file() {
        return Ok(None);
    }
    let db = Database::open(&path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => OpenError::InUse {
            dir: dir.to_owned(),
            file: path.clone(),
            source: e,
        }
        .into(),
        e => backend("open shard database", e),
    })?;
    let txn = db
        .begin_read()
        .map_err(|e| backend("begin read transaction", e))?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        // Created by an open that stopped before writing anything: no count yet.
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(backend("open meta table", e)),
    };
    let stored = meta
        .get(KEY_SHARD_COUNT)
        .map_err(|e| backend("read meta", e))?
        .map(|v| v.value());
    match stored {
        None => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| {
            OpenError::Corrupt {
                file: path,
                what: format!("shard count {n}"),
            }
            .into()
        }),
    }
}

/// How long [`Shard::reopen`] waits for read transactions on the old database to end.
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether opening a database failed because it is still open (redb's lock on the file).
fn in_use(e: &ds_storage::Error) -> bool {
    match e {
        ds_storage::Error::Backend { source, .. } => matches!(
            source.downcast_ref::<OpenError>(),
            Some(OpenError::InUse { .. })
        ),
        _ => false,
    }
}

/// Opens (creating if needed) the database at `place`.
fn open_db(place: &Place, cache_bytes: usize) -> Result<Database> {
    let mut builder = Database::builder();
    builder.set_cache_size(cache_bytes);
    match place {
        Place::File(path) => builder.create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => OpenError::InUse {
                dir: path.parent().map(Path::to_owned).unwrap_or_default(),
                file: path.clone(),
                source: e,
            }
            .into(),
            e => backend("open shard database", e),
        }),
        Place::Memory => builder
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| backend("open in-memory shard database", e)),
        Place::Custom(factory, index) => builder
            .create_with_backend(Boxed(factory(*index)))
            .map_err(|e| backend("open shard database", e)),
    }
}

/// A boxed storage backend, as redb takes one by value.
#[derive(Debug)]
struct Boxed(Box<dyn redb::StorageBackend>);

impl redb::StorageBackend for Boxed {
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write(offset, data)
    }

    fn close(&self) -> std::io::Result<()> {
        self.0.close()
    }
}

/// Opens (creating if needed) shard `index` and reads its metadata rows.
pub(crate) fn load_shard(opts: &AcidOptions, place: Place, index: usize) -> Result<LoadedShard> {
    let db = open_db(&place, shard_cache_bytes(opts.shard_count))?;
    let file = place.label();
    init_meta(&db, &file, opts.shard_count, index)?;
    let rows = read_rows(&db, &file)?;
    Ok(LoadedShard {
        path: matches!(place, Place::File(_)).then_some(file),
        place,
        db,
        next_counter: rows.next_counter,
        rows: rows.streams,
        producers: rows.producers,
    })
}

/// Reads a shard's stream rows (with tails from their last records), producers and id
/// counter.
fn read_rows(db: &Database, file: &Path) -> Result<Rows> {
    let txn = db
        .begin_read()
        .map_err(|e| backend("begin read transaction", e))?;
    let meta_table = txn
        .open_table(META)
        .map_err(|e| backend("open meta table", e))?;
    let next_counter = meta_table
        .get(KEY_NEXT_ID)
        .map_err(|e| backend("read meta", e))?
        .map_or(1, |v| v.value());
    let streams = txn
        .open_table(STREAMS)
        .map_err(|e| backend("open streams table", e))?;
    let records = txn
        .open_table(RECORDS)
        .map_err(|e| backend("open records table", e))?;
    let mut rows = Vec::new();
    for row in streams.iter().map_err(|e| backend("read streams", e))? {
        let (name, value) = row.map_err(|e| backend("read streams", e))?;
        let corrupt = |what: &str| OpenError::Corrupt {
            file: file.to_owned(),
            what: format!("{what} of stream {:?}", name.value()),
        };
        let mut meta =
            StreamMeta::decode(value.value()).ok_or_else(|| corrupt("undecodable metadata"))?;
        // Plain appends do not rewrite the row: the last record says where the tail is.
        let last = records
            .range((meta.id, 0)..=(meta.id, u64::MAX))
            .map_err(|e| backend("read records", e))?
            .next_back()
            .transpose()
            .map_err(|e| backend("read records", e))?;
        if let Some((key, value)) = last {
            let (_, seq) = key.value();
            let rec = decode_record(value.value()).ok_or_else(|| corrupt("undecodable record"))?;
            if seq >= meta.tail.seq {
                meta.tail = Offset::new(seq + 1, rec.end());
                meta.bytes = meta.tail.byte.saturating_sub(meta.base.byte);
            }
        }
        rows.push((name.value().to_owned(), meta));
    }
    let table = txn
        .open_table(PRODUCERS)
        .map_err(|e| backend("open producers table", e))?;
    let mut producers: HashMap<u64, HashMap<String, ProducerState>> = HashMap::new();
    for row in table.iter().map_err(|e| backend("read producers", e))? {
        let (key, value) = row.map_err(|e| backend("read producers", e))?;
        let (id, producer) = key.value();
        let (epoch, last_seq) = value.value();
        producers
            .entry(id)
            .or_default()
            .insert(producer.to_owned(), ProducerState { epoch, last_seq });
    }
    Ok(Rows {
        streams: rows,
        producers,
        next_counter,
    })
}

/// Creates the tables and checks (or writes) the shard's metadata; returns the id counter.
fn init_meta(db: &Database, file: &Path, shard_count: u32, index: usize) -> Result<u64> {
    let txn = db
        .begin_write()
        .map_err(|e| backend("begin write transaction", e))?;
    let next_counter = {
        let mut meta = txn
            .open_table(META)
            .map_err(|e| backend("open meta table", e))?;
        txn.open_table(STREAMS)
            .map_err(|e| backend("create tables", e))?;
        txn.open_table(RECORDS)
            .map_err(|e| backend("create tables", e))?;
        txn.open_table(PRODUCERS)
            .map_err(|e| backend("create tables", e))?;
        let get = |meta: &redb::Table<&str, u64>, key: &str| -> Result<Option<u64>> {
            Ok(meta
                .get(key)
                .map_err(|e| backend("read meta", e))?
                .map(|g| g.value()))
        };
        match get(&meta, KEY_FORMAT_VERSION)? {
            None => {
                let set = [
                    (KEY_FORMAT_VERSION, FORMAT_VERSION),
                    (KEY_SHARD_COUNT, u64::from(shard_count)),
                    (KEY_SHARD_INDEX, index as u64),
                    (KEY_NEXT_ID, 1),
                ];
                for (key, value) in set {
                    meta.insert(key, value)
                        .map_err(|e| backend("write meta", e))?;
                }
            }
            Some(FORMAT_VERSION) => {}
            Some(found) => {
                return Err(OpenError::FormatVersion {
                    file: file.to_owned(),
                    found,
                    expected: FORMAT_VERSION,
                }
                .into());
            }
        }
        let stored = get(&meta, KEY_SHARD_COUNT)?.unwrap_or(0);
        if stored != u64::from(shard_count) {
            return Err(OpenError::ShardCountChanged {
                dir: file.parent().map(Path::to_owned).unwrap_or_default(),
                stored,
                requested: shard_count,
            }
            .into());
        }
        if get(&meta, KEY_SHARD_INDEX)? != Some(index as u64) {
            return Err(OpenError::Corrupt {
                file: file.to_owned(),
                what: format!("it is not shard {index}"),
            }
            .into());
        }
        get(&meta, KEY_NEXT_ID)?.unwrap_or(1)
    };
    txn.commit().map_err(|e| backend("commit", e))?;
    Ok(next_counter)
}

/// One `streams` row with its producers, ready to become an entry.
struct Row {
    shard: usize,
    name: StreamName,
    meta: StreamMeta,
    producers: HashMap<String, ProducerState>,
}

/// Builds the cache from the loaded rows: entries (sources before their forks), fork links
/// and reference counts. Returns one stream map per shard and the streams to reclaim
/// (soft-deleted with no fork left: a cascade a crash interrupted).
pub(crate) fn build_cache(
    loaded: &mut [LoadedShard],
    shard_count: u32,
    now_ms: u64,
) -> Result<(Vec<StreamMap>, Vec<Arc<Entry>>)> {
    let (mut rows, by_name) = collect_rows(loaded, shard_count)?;
    let sources = link_sources(&rows, &by_name)?;
    let built = build_entries(&mut rows, &sources)?;
    let mut maps: Vec<StreamMap> = (0..loaded.len()).map(|_| StreamMap::new()).collect();
    for entry in built {
        maps[entry.shard].insert(entry.name.clone(), entry);
    }
    let mut reclaim = Vec::new();
    for map in &maps {
        for entry in map.values() {
            reclaim.extend(crate::cache::release_source(entry, now_ms));
        }
    }
    Ok((maps, reclaim))
}

/// Every shard's rows, checked, with an index by name.
fn collect_rows(
    loaded: &mut [LoadedShard],
    shard_count: u32,
) -> Result<(Vec<Row>, HashMap<String, usize>)> {
    let mut rows = Vec::new();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for (shard, l) in loaded.iter_mut().enumerate() {
        let file = l
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from("(in memory)"));
        let corrupt = |what: String| OpenError::Corrupt {
            file: file.clone(),
            what,
        };
        for (raw, meta) in std::mem::take(&mut l.rows) {
            let name = stored_name(&raw).ok_or_else(|| corrupt(format!("bad name {raw:?}")))?;
            if shard_of(&raw, shard_count) != shard {
                return Err(corrupt(format!("stream {raw:?} belongs to another shard")).into());
            }
            let producers = l.producers.remove(&meta.id).unwrap_or_default();
            by_name.insert(raw, rows.len());
            rows.push(Row {
                shard,
                name,
                meta,
                producers,
            });
        }
    }
    Ok((rows, by_name))
}

/// The row index of each row's fork source.
fn link_sources(rows: &[Row], by_name: &HashMap<String, usize>) -> Result<Vec<Option<usize>>> {
    let sources = rows
        .iter()
        .map(|row| {
            let Some(fork) = &row.meta.fork else {
                return Ok(None);
            };
            match by_name.get(&fork.source) {
                Some(&s) if rows[s].meta.id == fork.source_id => Ok(Some(s)),
                // A dead fork releases its source before its own rows go, so a crash can
                // leave it without one; it is reclaimed after open.
                _ if row.meta.soft_deleted => Ok(None),
                _ => Err(OpenError::Corrupt {
                    file: PathBuf::from(format!("shard {}", row.shard)),
                    what: format!(
                        "fork {:?} links to missing source {:?}",
                        row.name.as_str(),
                        fork.source
                    ),
                }),
            }
        })
        .collect::<Result<Vec<Option<usize>>, OpenError>>()?;
    Ok(sources)
}

/// Builds the entries depth-first without recursion (fork chains can be long): a source is
/// built before the forks that link to it, and counts them.
fn build_entries(rows: &mut [Row], sources: &[Option<usize>]) -> Result<Vec<Arc<Entry>>> {
    let mut built: Vec<Option<Arc<Entry>>> = vec![None; rows.len()];
    let mut on_stack = vec![false; rows.len()];
    for root in 0..rows.len() {
        let mut stack = vec![root];
        while let Some(&top) = stack.last() {
            if built[top].is_some() {
                stack.pop();
                continue;
            }
            let source = sources[top];
            if let Some(s) = source
                && built[s].is_none()
            {
                if on_stack[s] {
                    return Err(OpenError::Corrupt {
                        file: PathBuf::from(format!("shard {}", rows[top].shard)),
                        what: "fork links form a cycle".to_owned(),
                    }
                    .into());
                }
                on_stack[top] = true;
                stack.push(s);
                continue;
            }
            let row = &mut rows[top];
            let fork = match (source, &row.meta.fork) {
                (Some(s), Some(f)) => {
                    let source = Arc::clone(built[s].as_ref().expect("sources are built first"));
                    source.lock().fork_refs += 1;
                    Some(ForkLink {
                        source,
                        anchor: f.anchor,
                        sub_offset: f.sub_offset,
                    })
                }
                _ => None,
            };
            let mut writer = row.meta.writer();
            writer.producers = std::mem::take(&mut row.producers);
            built[top] = Some(
                NewEntry {
                    name: row.name.clone(),
                    id: row.meta.id,
                    shard: row.shard,
                    content_type: row.meta.content_type.clone(),
                    expiry: row.meta.expiry,
                    base: row.meta.base,
                    fork,
                    tail: row.meta.tail,
                    bytes: row.meta.bytes,
                    writer,
                    last_access_ms: row.meta.last_access_ms,
                    soft_deleted: row.meta.soft_deleted,
                }
                .build(),
            );
            on_stack[top] = false;
            stack.pop();
        }
    }
    Ok(built.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use ds_protocol::Expiry;

    use super::*;
    use crate::schema::StoredFork;

    fn meta(id: u64, fork: Option<(&str, u64)>, soft_deleted: bool) -> StreamMeta {
        StreamMeta {
            id,
            last_access_ms: 0,
            closed: false,
            soft_deleted,
            base: Offset::ZERO,
            tail: Offset::ZERO,
            bytes: 0,
            expiry: Expiry::None,
            content_type: "text/plain".to_owned(),
            last_stream_seq: None,
            closed_by: None,
            fork: fork.map(|(source, source_id)| StoredFork {
                source: source.to_owned(),
                source_id,
                anchor: Offset::ZERO,
                sub_offset: 0,
            }),
        }
    }

    /// One in-memory shard holding `rows`.
    fn build(rows: Vec<(&str, StreamMeta)>) -> Result<(StreamMap, Vec<String>)> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("in-memory database");
        let mut loaded = vec![LoadedShard {
            path: None,
            place: Place::Memory,
            db,
            next_counter: 1,
            rows: rows
                .into_iter()
                .map(|(name, meta)| (name.to_owned(), meta))
                .collect(),
            producers: HashMap::new(),
        }];
        let (mut maps, reclaim) = build_cache(&mut loaded, 1, 0)?;
        let mut names: Vec<String> = reclaim.iter().map(|e| e.name.to_string()).collect();
        names.sort();
        Ok((maps.remove(0), names))
    }

    fn refs(map: &StreamMap, raw: &str) -> u64 {
        map[&stored_name(raw).expect("name")].lock().fork_refs
    }

    #[test]
    fn the_cache_is_shared_out_and_bounded_per_shard() {
        const MIB: usize = 1024 * 1024;
        // One big read goes through one shard's cache: never more than 32 MiB of it.
        assert_eq!(shard_cache_bytes(1), 32 * MIB);
        assert_eq!(shard_cache_bytes(4), 32 * MIB);
        assert_eq!(shard_cache_bytes(16), 16 * MIB);
        assert_eq!(shard_cache_bytes(64), 4 * MIB);
        assert_eq!(shard_cache_bytes(256), 4 * MIB);
    }

    #[test]
    fn an_interrupted_cascade_is_finished_at_open() {
        let (map, reclaim) = build(vec![
            ("a", meta(1, None, true)),
            ("b", meta(2, Some(("a", 1)), true)),
        ])
        .expect("loads");
        assert_eq!(reclaim, ["a", "b"]);
        assert_eq!(refs(&map, "a"), 0);
    }

    #[test]
    fn a_live_fork_keeps_its_soft_deleted_source() {
        let (map, reclaim) = build(vec![
            ("b", meta(2, Some(("a", 1)), false)),
            ("a", meta(1, None, true)),
            ("c", meta(3, Some(("a", 1)), false)),
        ])
        .expect("loads");
        assert!(reclaim.is_empty());
        assert_eq!(refs(&map, "a"), 2);
        assert_eq!(
            map[&stored_name("b").expect("name")]
                .fork
                .as_ref()
                .map(|l| l.source.id),
            Some(1)
        );
    }

    #[test]
    fn a_dead_fork_whose_source_is_gone_is_reclaimed() {
        let (_, reclaim) = build(vec![("b", meta(2, Some(("a", 1)), true))]).expect("loads");
        assert_eq!(reclaim, ["b"]);
    }

    #[test]
    fn a_live_fork_without_its_source_is_corrupt() {
        for rows in [
            vec![("b", meta(2, Some(("a", 1)), false))],
            // The name is held by another incarnation.
            vec![
                ("a", meta(5, None, false)),
                ("b", meta(2, Some(("a", 1)), false)),
            ],
        ] {
            assert!(build(rows).is_err());
        }
    }

    #[test]
    fn long_fork_chains_load_without_recursion() {
        let names: Vec<String> = (0..50_000).map(|i| format!("s{i}")).collect();
        let rows = (0..names.len())
            .rev()
            .map(|i| {
                let fork = (i > 0).then(|| (names[i - 1].as_str(), i as u64));
                (names[i].as_str(), meta(i as u64 + 1, fork, false))
            })
            .collect();
        let (map, reclaim) = build(rows).expect("loads");
        assert!(reclaim.is_empty());
        assert_eq!(map.len(), names.len());
        assert_eq!(refs(&map, "s0"), 1);
        assert_eq!(refs(&map, "s49999"), 0);
    }

    /// Readers in flight while a file-backed shard is reopened: one in a read transaction
    /// (redb 4 releases the file's lock when the `Database` is dropped, so that one alone does
    /// not block the reopen), and one still holding the `Database` itself past the time the
    /// reopen waits for it to be released, so the file is still open and locked by redb when
    /// the reopen opens it again. The reopen retries until it is released instead of leaving
    /// the shard without a database.
    #[tokio::test]
    async fn a_reopen_of_a_file_database_waits_for_readers_in_flight() {
        use ds_storage::{CreateRequest, ReadFrom, Storage};

        let dir = tempfile::tempdir().expect("temp dir");
        let opts = crate::AcidOptions {
            shard_count: 1,
            ..crate::AcidOptions::new(dir.path())
        };
        let store = crate::AcidStorage::open(opts).await.expect("open");
        let name = StreamName::parse("s", ds_protocol::NameLimits::default()).expect("name");
        let req = CreateRequest {
            content_type: Some("text/plain".to_owned()),
            body: bytes::Bytes::from_static(b"hello"),
            ..CreateRequest::default()
        };
        store.create(&name, req).await.expect("create");
        let shard = &store.shared().shards[0];
        assert!(matches!(shard.place, Place::File(_)));
        let db = shard.db().expect("db");
        let counter = read_rows(&db, Path::new("shard"))
            .expect("rows")
            .next_counter;
        let txn = db.begin_read().expect("begin read");
        let reader = std::thread::spawn(move || {
            // Longer than the reopen waits for the `Database` to be released (2 s).
            std::thread::sleep(std::time::Duration::from_millis(2_500));
            drop(txn);
            drop(db);
        });
        shard
            .reopen(counter)
            .expect("the reopen waits for the read to end");
        reader.join().expect("reader");
        assert!(shard.db().is_ok());
        assert!(store.is_ready());
        let chunk = store
            .read(&name, ReadFrom::Start, 1024)
            .await
            .expect("read after the reopen");
        assert_eq!(chunk.pieces.concat(), b"hello");
        store.close().await;
    }
}
