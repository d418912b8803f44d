//! Recovery: rebuilds every stream from its file and the WAL when the store opens.
//!
//! 1. Take the `LOCK`, read `CHECKPOINT` (WAL floor, stream-id high-water mark), delete WAL
//!    segments below the floor.
//! 2. Read the WAL from the floor once, noting which streams it deletes and the highest record
//!    number it holds for each stream.
//! 3. Scan every stream file (in parallel): check each record's checksum, format version,
//!    stream id and record number, and that it is committed (from a segment below the floor, or
//!    held by the WAL); apply it to the stream's state, and stop at the first record that fails
//!    — a torn, never-written or never-committed tail. Nothing after it is used.
//! 4. Replay the WAL segments from the floor, in order, up to the first torn record of each.
//!    Streams the WAL deletes are removed first and their records skipped (their files may be
//!    stale: a checkpoint skips files already unlinked, but the unlink may not have survived).
//!    Otherwise a record the stream file already holds (`rec_no` below the file's record
//!    count) is skipped, and the next one is written to the file and applied. Replay is
//!    idempotent, so a crash during recovery only means replaying again.
//! 5. Truncate torn tails, drop forks whose source did not survive (possible only after power
//!    loss in file-fast mode), resolve name collisions (the newest incarnation wins), remove
//!    soft-deleted streams no fork references any more, and count fork references.
//! 6. Start a new WAL segment, fsync the files whose torn tails were cut (so no uncommitted
//!    record can reappear behind a newer committed one), and checkpoint: fsync every stream
//!    file and directory the replayed WAL touched (even where the file already held the
//!    records: after a process crash they may only be in the page cache) or recovery wrote,
//!    record the new floor, delete the replayed segments. That checkpoint runs on the
//!    background thread after the store opens (until it is done, the old floor and the
//!    replayed segments still cover everything), unless recovery wrote marker records of its
//!    own, which no WAL holds: then it runs before the store opens.
//!
//! Everything below the checkpointed floor was fsynced in the stream files before the floor
//! moved, so the first record of a stream in the replayed WAL never lies beyond the stream
//! file's valid records; a gap means the data directory was damaged outside the store, and
//! opening fails rather than guess.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::{Arc, Mutex};

use ds_protocol::{Expiry, NameLimits, StreamName, content_type};
use ds_storage::{Error, Result};

use crate::commit::{CheckpointJob, CommitterInit, Dirty, checkpoint, ensure_fanout, sync_streams};
use crate::io::{FsFile, OpenMode, read_exact_at};
use crate::record::{
    self, Checkpoint, DecodeError, Encoder, FIXED_LEN, ForkMeta, Header, Kind, Meta, Record,
};
use crate::stream::{ByName, Entry, ForkLink, IdxEntry, State, StreamState};
use crate::{Shared, backend, layout};

/// Bytes read at a time while scanning.
const SCAN_BLOCK: usize = 1024 * 1024;

/// What recovery hands to the store.
pub(crate) struct Recovered {
    pub streams: HashSet<ByName>,
    pub init: CommitterInit,
}

/// Threads scanning stream files at recovery (I/O-bound: see `scan_streams`).
const SCAN_THREADS: usize = 16;

/// Reads whole records sequentially from a file.
struct Scanner<'f> {
    file: &'f dyn FsFile,
    end: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_start: u64,
}

impl<'f> Scanner<'f> {
    fn new(file: &'f dyn FsFile, end: u64) -> Self {
        Scanner {
            file,
            end,
            pos: 0,
            buf: Vec::new(),
            buf_start: 0,
        }
    }

    fn fill(&mut self, pos: u64, n: usize) -> io::Result<()> {
        if pos >= self.buf_start && pos + n as u64 <= self.buf_start + self.buf.len() as u64 {
            return Ok(());
        }
        let size = n.max(SCAN_BLOCK).min((self.end - pos) as usize);
        self.buf.resize(size, 0);
        read_exact_at(self.file, &mut self.buf, pos)?;
        self.buf_start = pos;
        Ok(())
    }

    fn slice(&self, pos: u64, n: usize) -> &[u8] {
        let at = (pos - self.buf_start) as usize;
        &self.buf[at..at + n]
    }

    /// The next complete-looking record (its position and bytes), or `None` at the end of
    /// the file or where what follows cannot be a record.
    fn next(&mut self) -> io::Result<Option<(u64, &[u8])>> {
        let pos = self.pos;
        if self.end - pos < FIXED_LEN as u64 {
            return Ok(None);
        }
        self.fill(pos, FIXED_LEN)?;
        let Some(len) = record::claimed_len(self.slice(pos, 4)) else {
            return Ok(None);
        };
        if len > self.end - pos {
            return Ok(None);
        }
        self.fill(pos, len as usize)?;
        self.pos = pos + len;
        Ok(Some((pos, self.slice(pos, len as usize))))
    }
}

/// Decodes a scanned record: `Ok(None)` means torn (stop here).
fn decode_scanned(bytes: &[u8]) -> Result<Option<Record<'_>>> {
    match record::decode(bytes) {
        Ok(rec) => Ok(Some(rec)),
        Err(DecodeError::Torn) => Ok(None),
        Err(DecodeError::Unsupported(what)) => Err(corrupt(format!("unsupported {what}"))),
    }
}

fn corrupt(message: String) -> Error {
    backend(
        "recover",
        io::Error::new(io::ErrorKind::InvalidData, message),
    )
}

/// A stream being rebuilt.
struct Found {
    id: u64,
    name: StreamName,
    content_type: String,
    expiry: Expiry,
    fork: Option<ForkMeta>,
    s: StreamState,
    index: Vec<IdxEntry>,
    /// The file's length on disk (may exceed the valid length).
    disk_len: u64,
}

impl Found {
    fn from_create(rec: &Record<'_>, len: u64) -> Result<Found> {
        let Meta::Create {
            name,
            content_type,
            expiry,
            fork,
        } = rec.meta
        else {
            return Err(corrupt(format!(
                "stream {} has no Create record",
                rec.stream_id
            )));
        };
        let limits = NameLimits {
            max_bytes: usize::MAX,
            max_segments: usize::MAX,
        };
        let name = StreamName::parse(name, limits)
            .map_err(|e| corrupt(format!("stream {}: bad stored name: {e}", rec.stream_id)))?;
        let base = fork.map_or(ds_protocol::Offset::ZERO, |f| f.base);
        let mut found = Found {
            id: rec.stream_id,
            name,
            content_type: content_type.to_owned(),
            expiry,
            fork,
            s: StreamState::new(base),
            index: Vec::new(),
            disk_len: len,
        };
        found.apply(rec, 0, len);
        Ok(found)
    }

    fn apply(&mut self, rec: &Record<'_>, pos: u64, len: u64) {
        if let Some(ix) = self.s.apply(rec, pos, len) {
            self.index.push(ix);
        }
    }
}

/// Which stream-file records recovery may trust: those committed below the checkpoint floor
/// (synced by a checkpoint), and those the replayed WAL holds. A record committed at or above
/// the floor that the WAL does not hold belongs to a batch that never committed: it and
/// everything after it in its file are cut off.
struct Trust<'w> {
    floor: u64,
    /// The highest `rec_no` of each stream in the replayed WAL.
    window: &'w HashMap<u64, u64>,
}

impl Trust<'_> {
    fn trusts(&self, rec: &Record<'_>) -> bool {
        rec.segment < self.floor
            || self
                .window
                .get(&rec.stream_id)
                .is_some_and(|max| rec.rec_no <= *max)
    }
}

/// Scans one stream file; `None` when it holds no valid Create record.
fn scan_file(
    shared: &Shared,
    path: &std::path::Path,
    id: u64,
    trust: &Trust<'_>,
) -> Result<Option<Found>> {
    let op = |e| backend("scan stream file", e);
    let file = shared.pool.open(path, OpenMode::Existing).map_err(op)?;
    let disk_len = file.len().map_err(op)?;
    let mut scanner = Scanner::new(&*file, disk_len);
    let Some((_, bytes)) = scanner.next().map_err(op)? else {
        return Ok(None);
    };
    let Some(rec) = decode_scanned(bytes)? else {
        return Ok(None);
    };
    if rec.kind != Kind::Create || rec.stream_id != id || rec.rec_no != 0 || !trust.trusts(&rec) {
        return Ok(None);
    }
    let mut found = Found::from_create(&rec, bytes.len() as u64)?;
    found.disk_len = disk_len;
    while let Some((pos, bytes)) = scanner.next().map_err(op)? {
        let Some(rec) = decode_scanned(bytes)? else {
            break;
        };
        let follows = rec.stream_id == id
            && rec.rec_no == found.s.rec_count
            && matches!(
                rec.kind,
                Kind::Append | Kind::Touch | Kind::SoftDelete | Kind::Writer
            )
            && trust.trusts(&rec);
        if !follows {
            break;
        }
        found.apply(&rec, pos, bytes.len() as u64);
    }
    Ok(Some(found))
}

/// Streams being rebuilt, in a vector (one allocation, returned to the system when recovery
/// ends) with an index by id.
#[derive(Default)]
struct FoundSet {
    list: Vec<Option<Found>>,
    index: HashMap<u64, usize>,
}

impl FoundSet {
    fn insert(&mut self, found: Found) {
        if let Some(&i) = self.index.get(&found.id) {
            self.list[i] = Some(found);
        } else {
            self.index.insert(found.id, self.list.len());
            self.list.push(Some(found));
        }
    }

    fn contains(&self, id: u64) -> bool {
        self.index.contains_key(&id)
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Found> {
        let i = *self.index.get(&id)?;
        self.list[i].as_mut()
    }

    fn remove(&mut self, id: u64) -> Option<Found> {
        let i = self.index.remove(&id)?;
        self.list[i].take()
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut Found> {
        self.list.iter_mut().flatten()
    }

    /// The streams in id order.
    fn into_sorted(self) -> Vec<Found> {
        let mut all: Vec<Found> = self.list.into_iter().flatten().collect();
        all.sort_unstable_by_key(|f| f.id);
        all
    }
}

/// What the scan of the stream files found.
#[derive(Default)]
struct Scan {
    found: FoundSet,
    /// Files without a valid Create record.
    empty: HashSet<u64>,
    max_id: u64,
    /// Fan-out directories that exist.
    fanouts: HashSet<u8>,
}

fn scan_streams(shared: &Shared, trust: &Trust<'_>) -> Result<Scan> {
    let mut fanouts: Vec<u8> = shared
        .pool
        .list_dir(&layout::streams_dir(&shared.root))
        .map_err(|e| backend("list stream directories", e))?
        .iter()
        .filter_map(|n| layout::parse_fanout_dir(n))
        .collect();
    fanouts.sort_unstable();
    // The scan waits on the disk (an open, a stat and a read per stream file) far more than
    // it computes, so it runs more threads than cores: with 100,000 streams on a 2-core VM,
    // 16 threads recover in a fraction of the time 2 take.
    let threads = SCAN_THREADS.min(fanouts.len().max(1));
    let fanouts = &fanouts;
    let parts: Vec<Result<Scan>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> Result<Scan> {
                    let mut part = Scan::default();
                    for dir_index in fanouts.iter().skip(t).step_by(threads).copied() {
                        part.fanouts.insert(dir_index);
                        let dir = layout::fanout_dir(&shared.root, dir_index);
                        let names = shared
                            .pool
                            .list_dir(&dir)
                            .map_err(|e| backend("list stream files", e))?;
                        for name in names {
                            let Some(id) = layout::parse_stream_file(&name) else {
                                continue;
                            };
                            if layout::fanout_of(id) != dir_index {
                                continue;
                            }
                            part.max_id = part.max_id.max(id);
                            match scan_file(shared, &dir.join(&name), id, trust)? {
                                Some(found) => part.found.insert(found),
                                None => {
                                    part.empty.insert(id);
                                }
                            }
                        }
                    }
                    Ok(part)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(corrupt("a recovery scan thread panicked".to_owned())))
            })
            .collect()
    });
    let mut scan = Scan::default();
    for part in parts {
        let part = part?;
        for found in part.found.list.into_iter().flatten() {
            scan.found.insert(found);
        }
        scan.empty.extend(part.empty);
        scan.max_id = scan.max_id.max(part.max_id);
        scan.fanouts.extend(part.fanouts);
    }
    Ok(scan)
}

/// The rebuild in progress.
struct Rebuild<'s> {
    shared: &'s Shared,
    scan: Scan,
    dirty: Dirty,
    /// Streams the replayed WAL deletes.
    deleted: HashSet<u64>,
    /// Stream files whose torn tails `trim` cut off.
    trimmed: Vec<u64>,
    /// Whether `settle_names` wrote marker records (which no WAL holds).
    markers: bool,
}

impl Rebuild<'_> {
    fn unlink(&mut self, id: u64) -> Result<()> {
        let root = &self.shared.root;
        self.shared.pool.remove(id);
        self.dirty.streams.remove(&id);
        match self.shared.fs.remove_file(&layout::stream_file(root, id)) {
            Ok(()) => {
                self.dirty.dirs.insert(layout::stream_dir(root, id));
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(backend("remove stream file", e)),
        }
    }

    /// Reads the valid records of a WAL segment, up to its first torn record.
    fn scan_segment(
        &mut self,
        segment: u64,
        mut each: impl FnMut(&mut Self, &Record<'_>, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let op = |e| backend("replay WAL", e);
        let path = layout::wal_segment(&self.shared.root, segment);
        let file = self
            .shared
            .pool
            .open(&path, OpenMode::Existing)
            .map_err(op)?;
        let len = file.len().map_err(op)?;
        let mut scanner = Scanner::new(&*file, len);
        while let Some((_, bytes)) = scanner.next().map_err(op)? {
            let Some(rec) = decode_scanned(bytes)? else {
                break;
            };
            each(self, &rec, bytes)?;
        }
        Ok(())
    }

    /// Reads the replayed WAL once before replaying it: which streams it deletes, and the
    /// highest record number it holds for each stream.
    fn survey(&mut self, segments: &[u64]) -> Result<(HashSet<u64>, HashMap<u64, u64>)> {
        let mut deleted = HashSet::new();
        let mut window: HashMap<u64, u64> = HashMap::new();
        for segment in segments {
            self.scan_segment(*segment, |_, rec, _| {
                if rec.kind == Kind::Delete {
                    deleted.insert(rec.stream_id);
                } else {
                    let max = window.entry(rec.stream_id).or_insert(rec.rec_no);
                    *max = (*max).max(rec.rec_no);
                }
                Ok(())
            })?;
        }
        Ok((deleted, window))
    }

    /// Removes the streams the replayed WAL deletes, before replaying anything. Their files
    /// may be stale: a checkpoint that ran after the delete skipped them (they were already
    /// unlinked), but the unlink itself may not have survived the crash.
    fn drop_deleted(&mut self, deleted: HashSet<u64>) -> Result<()> {
        let mut sorted: Vec<u64> = deleted.iter().copied().collect();
        sorted.sort_unstable();
        for id in sorted {
            self.scan.found.remove(id);
            self.scan.empty.remove(&id);
            self.unlink(id)?;
            // The dead process's unlink may be visible but not yet durable.
            self.dirty
                .dirs
                .insert(layout::stream_dir(&self.shared.root, id));
        }
        self.deleted = deleted;
        Ok(())
    }

    fn replay(&mut self, rec: &Record<'_>, bytes: &[u8]) -> Result<()> {
        let op = |e| backend("replay WAL", e);
        let id = rec.stream_id;
        self.scan.max_id = self.scan.max_id.max(id);
        if self.deleted.contains(&id) {
            return Ok(());
        }
        let len = bytes.len() as u64;
        match rec.kind {
            Kind::Delete => {}
            Kind::Create => {
                // Whether or not the file holds it, the file and its directory entry may only
                // be in the page cache of a killed process: sync them before the WAL goes.
                self.dirty
                    .dirs
                    .insert(layout::stream_dir(&self.shared.root, id));
                self.dirty
                    .dirs
                    .insert(layout::streams_dir(&self.shared.root));
                if self.scan.found.contains(id) {
                    self.dirty.streams.insert(id);
                    return Ok(());
                }
                ensure_fanout(self.shared, &mut self.scan.fanouts, &mut self.dirty, id)
                    .map_err(op)?;
                let file = self.shared.pool.get(id, OpenMode::Truncate).map_err(op)?;
                file.write_all_at(bytes, 0).map_err(op)?;
                let found = Found::from_create(rec, len)?;
                self.scan.found.insert(found);
                self.scan.empty.remove(&id);
                self.dirty.streams.insert(id);
                self.dirty
                    .dirs
                    .insert(layout::stream_dir(&self.shared.root, id));
            }
            Kind::Append | Kind::Touch | Kind::SoftDelete | Kind::Writer => {
                // A stream that is gone (deleted earlier in the WAL, or dropped by an earlier
                // recovery) has nothing to apply its records to.
                let Some(found) = self.scan.found.get_mut(id) else {
                    return Ok(());
                };
                // Records the file already holds may be there only in the page cache.
                self.dirty.streams.insert(id);
                if rec.rec_no < found.s.rec_count {
                    return Ok(());
                }
                if rec.rec_no > found.s.rec_count {
                    return Err(corrupt(format!(
                        "stream {id}: the WAL continues at record {} but the stream file ends \
                         at record {}",
                        rec.rec_no, found.s.rec_count
                    )));
                }
                let pos = found.s.file_len;
                let file = self.shared.pool.get(id, OpenMode::Existing).map_err(op)?;
                file.write_all_at(bytes, pos).map_err(op)?;
                found.apply(rec, pos, len);
                found.disk_len = found.disk_len.max(pos + len);
                self.dirty.streams.insert(id);
            }
        }
        Ok(())
    }
}

fn read_checkpoint(shared: &Shared) -> Result<Option<Checkpoint>> {
    let op = |e| backend("read CHECKPOINT", e);
    let path = layout::checkpoint_file(&shared.root);
    let file = match shared.pool.open(&path, OpenMode::Existing) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(op(e)),
    };
    let len = file.len().map_err(op)?;
    let mut bytes = vec![0; len.min(4096) as usize];
    read_exact_at(&*file, &mut bytes, 0).map_err(op)?;
    Checkpoint::decode(&bytes)
        .map(Some)
        .ok_or_else(|| corrupt(format!("{} is damaged", path.display())))
}

fn prepare_dirs(shared: &Shared) -> Result<()> {
    let op = |e| backend("create data directories", e);
    let root = &shared.root;
    let fs = &shared.fs;
    fs.create_dir_all(&layout::wal_dir(root)).map_err(op)?;
    fs.create_dir_all(&layout::streams_dir(root)).map_err(op)?;
    shared
        .pool
        .sync_dir(&layout::streams_dir(root))
        .map_err(op)?;
    shared.pool.sync_dir(root).map_err(op)?;
    Ok(())
}

/// Appends one metadata-only record to a recovered stream's file.
fn append_marker(
    shared: &Shared,
    entry: &Entry,
    st: &mut State,
    kind: Kind,
    segment: u64,
) -> Result<()> {
    let op = |e| backend("recover", e);
    let mut buf = Vec::new();
    let header = Header {
        kind,
        flags: 0,
        stream_id: entry.id,
        rec_no: st.s.rec_count,
        at_ms: st.s.last_access_ms,
        segment,
    };
    let range = Encoder::begin(&mut buf, header, &[]).finish(&[]);
    let rec = record::decode_encoded(&buf[range.clone()]).expect("a record just encoded decodes");
    let pos = st.s.file_len;
    let file = shared.pool.get(entry.id, OpenMode::Existing).map_err(op)?;
    file.write_all_at(&buf[range.clone()], pos).map_err(op)?;
    st.s.apply(&rec, pos, range.len() as u64);
    Ok(())
}

/// Creates and locks the data directory and its subdirectories.
fn open_dir(shared: &Shared) -> Result<Box<dyn std::any::Any + Send + Sync>> {
    let root = &shared.root;
    let fs = &shared.fs;
    fs.create_dir_all(root)
        .map_err(|e| backend("create data directory", e))?;
    // A data directory created just now exists durably only once its parent is synced.
    if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
        shared
            .pool
            .sync_dir(parent)
            .map_err(|e| backend("create data directory", e))?;
    }
    let lock = fs
        .lock(&layout::lock_file(root))
        .map_err(|e| backend("lock data directory", e))?;
    prepare_dirs(shared)?;
    Ok(lock)
}

/// The WAL segments to replay (from `floor`, in order) and the highest segment number seen.
fn wal_segments(shared: &Shared, floor: u64) -> Result<(Vec<u64>, u64)> {
    let mut segments: Vec<u64> = shared
        .pool
        .list_dir(&layout::wal_dir(&shared.root))
        .map_err(|e| backend("list WAL segments", e))?
        .iter()
        .filter_map(|n| layout::parse_wal_segment(n))
        .collect();
    segments.sort_unstable();
    let last = segments.last().copied().unwrap_or(0).max(floor);
    segments.retain(|s| *s >= floor);
    Ok((segments, last))
}

/// Recovered entries by stream id.
type ById = HashMap<u64, Arc<Entry>>;

/// Whether `e` is the entry its name maps to.
fn named(names: &HashMap<StreamName, Arc<Entry>>, e: &Arc<Entry>) -> bool {
    names.get(&e.name).is_some_and(|n| Arc::ptr_eq(n, e))
}

impl Rebuild<'_> {
    /// Cuts torn tails, and forgets files that never got a valid Create record.
    fn trim(&mut self) -> Result<()> {
        let op = |e| backend("truncate torn tail", e);
        for found in self.scan.found.values_mut() {
            if found.disk_len > found.s.file_len {
                let file = self
                    .shared
                    .pool
                    .get(found.id, OpenMode::Existing)
                    .map_err(op)?;
                file.set_len(found.s.file_len).map_err(op)?;
                self.dirty.streams.insert(found.id);
                self.trimmed.push(found.id);
            }
        }
        let empty: Vec<u64> = self.scan.empty.drain().collect();
        for id in empty {
            self.unlink(id)?;
        }
        Ok(())
    }

    /// Builds the entries, in id order (a fork's source always has a smaller id), linking
    /// forks to their sources and counting references.
    fn build_entries(&mut self) -> Result<(ById, Vec<u64>)> {
        let found = std::mem::take(&mut self.scan.found).into_sorted();
        let mut by_id: ById = HashMap::with_capacity(found.len());
        let mut order = Vec::with_capacity(found.len());
        for f in found {
            let mut link = None;
            if let Some(fm) = f.fork {
                let source = by_id.get(&fm.source_id).filter(|src| {
                    let tail = src.lock().s.tail;
                    fm.base.byte <= tail.byte && fm.anchor.byte <= tail.byte
                });
                let Some(source) = source else {
                    // The source lost data this fork was created on (power loss in file-fast
                    // mode): the fork cannot be read, so it did not survive.
                    self.unlink(f.id)?;
                    continue;
                };
                source.lock().fork_refs += 1;
                link = Some(ForkLink {
                    source: Arc::clone(source),
                    anchor: fm.anchor,
                    sub_offset: fm.sub_offset,
                });
            }
            let entry = Arc::new(Entry {
                json: content_type::is_json(&f.content_type),
                name: f.name,
                id: f.id,
                content_type: self.shared.intern(&f.content_type),
                expiry: f.expiry,
                base: f.fork.map_or(ds_protocol::Offset::ZERO, |m| m.base),
                fork: link,
                state: Mutex::new(State {
                    s: f.s,
                    index: f.index,
                    fork_refs: 0,
                    touch_pending: false,
                    watch: None,
                    unwritten: None,
                }),
            });
            order.push(f.id);
            by_id.insert(f.id, entry);
        }
        Ok((by_id, order))
    }

    /// Maps names to entries (the newest incarnation of a name wins; two can only coexist
    /// after power loss in file-fast mode lost a Delete), removes what nothing keeps alive
    /// (soft-deleted or unnamed streams without fork references, cascading up fork chains),
    /// and soft-deletes unnamed streams that forks still need (their marker record belongs
    /// to `marker_segment`, below the floor this recovery's checkpoint sets).
    fn settle_names(
        &mut self,
        by_id: &mut ById,
        order: &[u64],
        marker_segment: u64,
    ) -> Result<HashMap<StreamName, Arc<Entry>>> {
        let mut names: HashMap<StreamName, Arc<Entry>> = HashMap::with_capacity(by_id.len());
        for id in order {
            let e = &by_id[id];
            names.insert(e.name.clone(), Arc::clone(e));
        }
        let mut doomed: Vec<u64> = order
            .iter()
            .filter(|id| {
                let e = &by_id[*id];
                let st = e.lock();
                st.fork_refs == 0 && (st.s.soft_deleted || !named(&names, e))
            })
            .copied()
            .collect();
        while let Some(id) = doomed.pop() {
            let Some(e) = by_id.remove(&id) else {
                continue;
            };
            e.lock().s.removed = true;
            if named(&names, &e) {
                names.remove(&e.name);
            }
            self.unlink(id)?;
            if let Some(link) = &e.fork {
                let src = &link.source;
                let mut st = src.lock();
                st.fork_refs = st.fork_refs.saturating_sub(1);
                if st.fork_refs == 0 && (st.s.soft_deleted || !named(&names, src)) {
                    doomed.push(src.id);
                }
            }
        }
        for e in by_id.values() {
            let mut st = e.lock();
            if !named(&names, e) && !st.s.soft_deleted {
                append_marker(self.shared, e, &mut st, Kind::SoftDelete, marker_segment)?;
                self.dirty.streams.insert(e.id);
                self.markers = true;
            }
        }
        Ok(names)
    }
}

/// Runs recovery. Blocking.
pub(crate) fn recover(shared: &Shared) -> Result<Recovered> {
    let root = &shared.root;
    let lock = open_dir(shared)?;
    let ckpt = read_checkpoint(shared)?;
    let floor = ckpt.map_or(0, |c| c.wal_floor);
    let (segments, last_segment) = wal_segments(shared, floor)?;
    // The segment this recovery starts; records it writes itself belong to the one before.
    let segment = last_segment + 1;

    let mut rebuild = Rebuild {
        shared,
        scan: Scan::default(),
        dirty: Dirty::default(),
        deleted: HashSet::new(),
        trimmed: Vec::new(),
        markers: false,
    };
    let (deleted, window) = rebuild.survey(&segments)?;
    rebuild.scan = scan_streams(
        shared,
        &Trust {
            floor,
            window: &window,
        },
    )?;
    rebuild.drop_deleted(deleted)?;
    for segment in &segments {
        rebuild.scan_segment(*segment, Rebuild::replay)?;
    }
    rebuild.trim()?;
    let (mut by_id, order) = rebuild.build_entries()?;
    let names = rebuild.settle_names(&mut by_id, &order, last_segment)?;

    let next_id = ckpt
        .map_or(1, |c| c.next_stream_id)
        .max(rebuild.scan.max_id + 1);
    // A spare segment the last run wrote ahead (whole or not) is never reused: the committer
    // writes a new one once the store is busy.
    for spare in [layout::wal_spare_tmp(root), layout::wal_spare(root)] {
        match shared.fs.remove_file(&spare) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(backend("remove spare WAL segment", e));
            }
            _ => {}
        }
    }
    let wal = shared
        .pool
        .open(&layout::wal_segment(root, segment), OpenMode::Truncate)
        .map_err(|e| backend("create WAL segment", e))?;
    crate::commit::reserve_wal(&*wal, shared.wal_segment_bytes);
    shared
        .pool
        .sync_dir(&layout::wal_dir(root))
        .map_err(|e| backend("create WAL segment", e))?;
    let fanouts = std::mem::take(&mut rebuild.scan.fanouts);
    let job = CheckpointJob {
        floor: segment,
        next_id,
        dirty: rebuild.dirty,
    };
    // A cut-off tail must not come back: after a power loss an uncommitted record behind it
    // could carry the record number of a record committed later, and the replayed WAL would
    // vouch for it. These few files are synced now, before anything new is written to them.
    rebuild.trimmed.sort_unstable();
    sync_streams(shared, &rebuild.trimmed)
        .map_err(|e| backend("sync truncated stream files", e))?;
    // Everything else recovery wrote comes from the WAL segments the old floor keeps, and
    // replaying them again is idempotent: the checkpoint that syncs it all (100,000 files
    // after a burst of creates) runs in the background once the store is open. Marker records
    // are recovery's own, in no WAL, so they are checkpointed before the store opens.
    let pending = if rebuild.markers {
        checkpoint(shared, &job).map_err(|f| backend("checkpoint after recovery", f.error))?;
        None
    } else {
        Some(job)
    };
    let expiring = by_id
        .iter()
        .filter(|(_, e)| e.expiry != Expiry::None)
        .map(|(id, e)| (*id, Arc::clone(e)))
        .collect();
    Ok(Recovered {
        streams: names.into_values().map(ByName).collect(),
        init: CommitterInit {
            wal,
            segment,
            next_id,
            expiring,
            fanouts,
            lock,
            pending,
        },
    })
}
