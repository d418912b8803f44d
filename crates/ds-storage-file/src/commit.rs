//! Group commit: one committer at a time decides, writes and publishes every change.
//!
//! Every state-changing request (create, append, close, delete, expiry, TTL touch, writer-state
//! restore) is queued in the committer's inbox ([`Commit`]). Whoever queues a request while
//! nobody is committing takes the turn on its own thread (see [`Commit`] for who that is and
//! why), and the committer state is only ever used by the one with the turn. The committer
//! takes whatever is queued (at least one request, at most [`MAX_BATCH_OPS`] or about
//! [`MAX_BATCH_BYTES`]), and for each request in order:
//!
//! 1. validates it against the stream's state *including the earlier requests of the same
//!    batch* (a private draft per touched stream; the shared state is not changed yet), calling
//!    the shared protocol rules (`ds_storage::rules`) for producers, `Stream-Seq`, closure and
//!    create idempotency;
//! 2. encodes the records that describe the change — data and the new producer/seq/closure
//!    state in one record — into the batch buffer, and applies them to the draft with the same
//!    function recovery uses.
//!
//! Then it writes each record to its stream's own file (no fsync: the WAL covers them until the
//! next checkpoint) and appends the whole batch to the WAL with one write. In file-fast mode
//! that is the commit. In file-durable mode the batch is now *pending*: a syncer thread
//! `fdatasync`s the WAL. Requests that arrive during the sync wait in the inbox (until
//! [`SYNC_QUEUE_BATCH`] of them have, which are then written at once); when the sync returns,
//! the syncer takes the turn, installs the batches it covered, in order, as the streams'
//! state, publishes the new tails to live readers, answers their requests, writes everything
//! that arrived meanwhile as one batch, and starts the next `fdatasync`. Under load the device
//! flushes back to back, each flush covering the WAL writes of everything that came during
//! the one before, and the batch size follows the load, not a timer. A committer with
//! more than one batch to write (a turn that found a full batch queued, or requests that came
//! while it wrote) writes the later ones while the earlier ones sync, planning them on the
//! state the pending batches leave (`Ahead`; the streams' installed state is still the one
//! before them). Answers that wrote nothing (a producer's
//! duplicate, a conflict, a create that finds the stream) were decided on pending state, so
//! they wait for the batches before them too. Readers never look past a stream's installed
//! length, so they never see a byte that is not committed. (A crash between the stream-file
//! write and the WAL fsync can leave an unacknowledged record in a stream file; recovery keeps
//! it, which is one of the two outcomes an unanswered request may have.) A failed sync fails
//! every pending batch and stops the store.
//!
//! A stream created without data gets no file in its batch: its Create record goes to the WAL
//! only, and the installed entry keeps a copy (`State::unwritten`). Reads of it never open a
//! file (there is nothing to read). Its next record writes the file, Create record first; if
//! none comes, the next checkpoint writes it (under the stream's lock, skipping removed
//! streams) before it lets the WAL segment holding the Create go, and syncs it either way.
//! Creating an inode is the most expensive part of a create on ext4 (after many deletions,
//! finding a free inode dominates), and this keeps it off the acknowledgement path.
//!
//! If a write fails with ENOSPC or EDQUOT, the batch's writes are taken back (truncated, and
//! the truncation synced, so none of its records can resurface and no later record lands
//! behind a torn one), every request of the batch gets `StorageFull`, and the store carries
//! on; its state was never changed, so readers saw nothing of the batch. A WAL rotation or a
//! checkpoint that runs out of space is retried later (a checkpoint's files carry over to the
//! next one, and the old floor holds until then). Any other write failure, and any fsync
//! failure (after a failed fsync the page cache cannot be trusted), stops the store from
//! accepting writes; a restart recovers from the WAL.
//!
//! When the current WAL segment grows past `wal_segment_bytes`, the committer lets the pending
//! batches finish (holding new requests back for that one sync), starts a new
//! segment and hands the list of stream files and directories written since the previous
//! checkpoint to the background thread, which fsyncs them, records the new WAL floor in
//! `CHECKPOINT`, and deletes the old segments. In file-durable mode the new segment is
//! usually a spare that a thread of its own (`ds-file-spare`) wrote ahead as zeros and synced
//! (`wal/spare.zero`, renamed into place): an `fdatasync` that only overwrites allocated,
//! initialised blocks has no block allocation, length or extent change to commit, and a
//! busy store's syncs are most of its disk time. A segment that is not a spare (the first
//! after an open, or one whose spare was not ready) asks for one after 1 MiB and is left
//! for it as soon as it is ready, so a busy store runs on spares within a second.
//!
//! In file-fast mode a thread of its own
//! `fdatasync`s the WAL every `fsync_interval`, checkpoint or not: a checkpoint may create and
//! sync up to 100,000 stream files after a burst of creates (and recovery's runs right after
//! open), and the writes a power loss can take must stay bounded by `fsync_interval` all the
//! while. It only ever syncs the current segment; the committer syncs a segment itself before
//! it rotates away from it, and the checkpoint only deletes older segments.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ds_protocol::{Expiry, Offset, StreamName, content_type};
use ds_storage::rules::{self, AppendPlan, ExistingConfig, WriterState};
use ds_storage::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, Error, ProducerAck, Result,
};
use tokio::sync::oneshot;

use crate::io::{FsFile, OpenMode};
use crate::record::{self, Checkpoint, Encoder, FIXED_LEN, FLAG_CLOSE, ForkMeta, Header, Kind};
use crate::stream::{ByName, Entry, ForkLink, IdxEntry, State, Status, StreamState};
use crate::{Durability, Shared, layout};

/// Most requests in one batch.
pub(crate) const MAX_BATCH_OPS: usize = 4096;
/// About the most payload bytes in one batch (one request may exceed it on its own).
pub(crate) const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Most emptied record buffers the committer keeps for later batches, and the largest.
const MAX_SPARE_BUFS: usize = 4;
const MAX_SPARE_BUF: usize = 256 * 1024;

/// A fork request resolved against its source before it is queued. The source's data below
/// its tail never changes, so the resolution stays valid as long as the committer still finds
/// the same source incarnation live.
pub(crate) struct ResolvedFork {
    pub source: Arc<Entry>,
    pub anchor: Offset,
    pub sub_offset: u64,
    pub base: Offset,
}

/// A create, prepared by the caller.
pub(crate) struct CreateOp {
    pub name: StreamName,
    /// The request, for the idempotency comparison when the name turns out to exist.
    pub req: CreateRequest,
    pub content_type: String,
    pub expiry: Expiry,
    pub messages: Vec<Bytes>,
    pub fork: Option<ResolvedFork>,
}

/// What the committer is asked to do.
pub(crate) enum Op {
    Create(Box<CreateOp>),
    Append {
        entry: Arc<Entry>,
        req: AppendRequest,
        messages: Result<Vec<Bytes>>,
    },
    Delete {
        entry: Arc<Entry>,
    },
    /// Replace the stream's writer state (`Storage::restore_writer`).
    RestoreWriter {
        entry: Arc<Entry>,
        writer: Box<WriterState>,
    },
    /// Apply expiry to a stream an operation found expired.
    Expire {
        entry: Arc<Entry>,
    },
    Sweep,
    /// Persist the stream's last read time (sliding TTL); nobody waits for it.
    Touch {
        entry: Arc<Entry>,
    },
    Shutdown,
    /// From the WAL syncer (file-durable): the batches up to `seq` are durable, or the sync
    /// failed.
    Synced {
        seq: u64,
        result: io::Result<()>,
    },
}

/// What the committer answers.
pub(crate) enum Reply {
    Created(CreateOutcome),
    Appended(AppendOutcome),
    Done,
    Swept(usize),
}

pub(crate) struct Request {
    pub op: Op,
    pub reply: Option<oneshot::Sender<Result<Reply>>>,
}

impl Request {
    fn payload_len(&self) -> usize {
        match &self.op {
            Op::Create(c) => c.req.body.len(),
            Op::Append { req, .. } => req.body.len(),
            _ => 0,
        }
    }
}

/// A failure that ends a batch, rebuilt into an [`Error`] for each of its requests.
#[derive(Debug, Clone)]
struct BatchFailure {
    op: &'static str,
    kind: io::ErrorKind,
    /// ENOSPC or EDQUOT: the batch is taken back and the store carries on.
    disk_full: bool,
    message: String,
}

impl BatchFailure {
    /// A failed write: ENOSPC or EDQUOT means the disk is full.
    fn new(op: &'static str, e: &io::Error) -> Self {
        BatchFailure {
            op,
            kind: e.kind(),
            disk_full: crate::is_disk_full(e),
            message: e.to_string(),
        }
    }

    /// A failed `fsync` (or a failure to take a write back), whatever its error: ENOSPC from
    /// an fsync (NFS, thin provisioning) says nothing about what reached the disk, so it is
    /// never "nothing was written", and it stops the store like any failed fsync.
    fn sync(op: &'static str, e: &io::Error) -> Self {
        BatchFailure {
            disk_full: false,
            ..BatchFailure::new(op, e)
        }
    }

    fn to_error(&self) -> Error {
        if self.disk_full {
            return crate::disk_full_error();
        }
        // Not `crate::backend`, which would turn an fsync's ENOSPC back into `StorageFull`.
        Error::Backend {
            op: self.op,
            source: Box::new(io::Error::new(self.kind, self.message.clone())),
        }
    }
}

/// Files and directories written since the last checkpoint, which the next one must sync.
#[derive(Default)]
pub(crate) struct Dirty {
    pub streams: HashSet<u64>,
    pub dirs: HashSet<PathBuf>,
    pub unlinks: Vec<PathBuf>,
    /// Streams created without a file (their Create record only in the WAL): the checkpoint
    /// writes the files of those still without one before it lets the WAL go.
    pub unwritten: Vec<Arc<Entry>>,
    /// Streams removed since `unwritten` was last pruned of removed ones.
    removed: usize,
}

impl Dirty {
    fn is_empty(&self) -> bool {
        self.streams.is_empty()
            && self.dirs.is_empty()
            && self.unlinks.is_empty()
            && self.unwritten.is_empty()
    }

    /// Adds what `other` still has to sync.
    fn merge(&mut self, other: Dirty) {
        self.streams.extend(other.streams);
        self.dirs.extend(other.dirs);
        self.unlinks.extend(other.unlinks);
        self.unwritten.extend(other.unwritten);
        self.removed += other.removed;
    }

    /// Forgets stream `id`, just removed: its file needs no sync, and the checkpoint skips a
    /// removed stream in `unwritten`. Without this, every stream created and deleted between
    /// two checkpoints (which come only when a WAL segment fills) stays in memory until then.
    /// The pruning is amortized: `unwritten` is scanned once its removed streams may make up
    /// half of it, so it holds at most about twice the streams still without a file.
    fn forget(&mut self, id: u64) {
        self.streams.remove(&id);
        self.removed += 1;
        if self.removed * 2 >= self.unwritten.len() {
            self.unwritten.retain(|e| !e.lock().s.removed);
            self.removed = 0;
        }
    }
}

/// Why a checkpoint failed.
#[derive(Debug)]
pub(crate) struct CheckpointFailure {
    pub error: io::Error,
    /// An `fsync` failed: what it covered may never reach the disk, and the page cache no
    /// longer says so, so a retry could not be trusted.
    pub sync: bool,
}

impl CheckpointFailure {
    fn io(error: io::Error) -> Self {
        CheckpointFailure { error, sync: false }
    }

    fn sync(error: io::Error) -> Self {
        CheckpointFailure { error, sync: true }
    }

    /// Whether the checkpoint can simply run again later: the disk was full, and no fsync
    /// failed.
    fn retryable(&self) -> bool {
        !self.sync && crate::is_disk_full(&self.error)
    }
}

/// A checkpoint for the background thread.
pub(crate) struct CheckpointJob {
    pub floor: u64,
    pub next_id: u64,
    pub dirty: Dirty,
}

pub(crate) enum BgMsg {
    Checkpoint(CheckpointJob),
    Stop,
}

/// What the committer starts from (built by recovery).
pub(crate) struct CommitterInit {
    pub wal: Arc<dyn FsFile>,
    pub segment: u64,
    pub next_id: u64,
    pub expiring: HashMap<u64, Arc<Entry>>,
    /// Fan-out directories that exist.
    pub fanouts: HashSet<u8>,
    pub lock: Box<dyn std::any::Any + Send + Sync>,
    /// Recovery's checkpoint, left to the background thread so the store is ready before the
    /// files the replayed WAL touched are synced (the WAL covers them until then).
    pub pending: Option<CheckpointJob>,
}

pub(crate) struct Committer {
    shared: Arc<Shared>,
    wal: Arc<dyn FsFile>,
    segment: u64,
    wal_len: u64,
    next_id: u64,
    expiring: HashMap<u64, Arc<Entry>>,
    fanouts: HashSet<u8>,
    dirty: Dirty,
    bg_tx: mpsc::Sender<BgMsg>,
    bg: Option<JoinHandle<()>>,
    /// file-fast: the periodic WAL sync thread, which stops (after one last sync) when the
    /// sender is dropped.
    wal_sync: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    /// file-durable: the thread that `fdatasync`s the WAL while the committer plans and writes
    /// the next batches.
    syncer: Option<Syncer>,
    /// Batches written to the WAL and waiting for a sync, oldest first (file-durable).
    pending: VecDeque<Pending>,
    /// What the pending batches did to the streams they touched.
    ahead: Ahead,
    /// The sequence number of the last batch planned.
    seq: u64,
    /// Requests held back while the pending batches finish before a WAL rotation.
    held: Vec<Request>,
    /// Record buffers of installed batches, emptied, for the next batches (see
    /// [`Committer::recycle`]).
    spare_bufs: Vec<Vec<u8>>,
    /// file-durable with [`crate::FileOptions::wal_spares`]: the thread that writes the next
    /// WAL segment ahead ([`spare_writer`]); each message asks for a spare. Dropping the
    /// sender stops it.
    spare: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    /// The current segment was a spare: its blocks are written (zeros) and synced.
    wal_zeroed: bool,
    /// A spare was asked for since the last rotation.
    spare_asked: bool,
    /// The data directory's lock, released once the shutdown is done.
    lock: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// The WAL syncer thread and what it is to cover.
struct Syncer {
    work: Arc<SyncWork>,
    thread: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Stops the syncer (once it has synced what was written); returns its thread to join.
    fn stop(mut self) -> Option<JoinHandle<()>> {
        self.thread.take()
    }
}

/// What the committer has written, for the syncer.
struct SyncWork {
    state: Mutex<SyncState>,
    wake: Condvar,
}

struct SyncState {
    /// The WAL segment being written.
    wal: Arc<dyn FsFile>,
    /// The last batch written to it.
    written: u64,
    /// The syncer is waiting for a batch (so a write must wake it).
    idle: bool,
    /// Stop once everything written is synced.
    stop: bool,
}

impl Drop for Syncer {
    /// Stops the syncer once it has synced what was written (also if the committer unwinds).
    fn drop(&mut self) {
        self.work.state().stop = true;
        self.work.wake.notify_one();
    }
}

impl SyncWork {
    fn state(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A batch written to the WAL whose requests are answered (and whose drafts installed) once
/// it, and every batch before it, is durable.
struct Pending {
    seq: u64,
    batch: Batch,
    written: Vec<Written>,
    results: Vec<Answer>,
}

/// A request's reply channel and its outcome.
type Answer = (Option<oneshot::Sender<Result<Reply>>>, Result<Reply>);

/// What the batches written but not yet synced did to the streams they touched: the state
/// the next batch plans on, while readers still see the streams' installed state from before
/// them. Each value remembers the batch (`seq`) that last changed it, and goes once that batch
/// is installed.
#[derive(Default)]
struct Ahead {
    streams: HashMap<u64, AheadStream>,
    names: HashMap<StreamName, (u64, Option<Arc<Entry>>)>,
}

/// A stream's state after the pending batches.
struct AheadStream {
    seq: u64,
    s: StreamState,
    fork_refs: usize,
    /// The Create record, while the stream's file is still not written.
    unwritten: Option<Box<[u8]>>,
}

impl Ahead {
    fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.names.is_empty()
    }

    /// Forgets what batch `seq` and those before it did, now installed.
    fn installed(&mut self, seq: u64) {
        self.streams.retain(|_, a| a.seq > seq);
        self.names.retain(|_, (s, _)| *s > seq);
    }
}

/// A stream file written by a batch being committed.
struct Written {
    id: u64,
    from: u64,
    new_file: bool,
    /// The file of a stream created earlier without one was created (its Create record
    /// written first): an undo cuts it back to that record instead of removing it.
    materialized: bool,
}

/// One stream's pending state within a batch.
struct Draft {
    entry: Arc<Entry>,
    s: StreamState,
    fork_refs: usize,
    new_index: Vec<IdxEntry>,
    writes: Vec<Range<usize>>,
    write_from: u64,
    new_file: bool,
    /// The Create record of a stream whose file does not exist yet.
    unwritten: Option<Box<[u8]>>,
    changed: bool,
    clear_touch: bool,
}

impl Draft {
    /// Whether this batch leaves the stream's file unwritten: a create without data (reads
    /// of it never open the file) and nothing else. A stream file costs an inode, which on
    /// ext4 after many deletions can take longer than the rest of the create; the checkpoint
    /// creates it in the background.
    fn defers_file(&self) -> bool {
        self.new_file && self.writes.len() == 1 && self.s.bytes == 0 && !self.s.removed
    }

    /// What this batch does to the stream's unwritten Create record (`buf`: the batch's
    /// buffer).
    fn create_record(&self, buf: &[u8]) -> CreateRecord {
        if self.defers_file() {
            CreateRecord::Unwritten(buf[self.writes[0].clone()].into())
        } else if !self.writes.is_empty() && !self.s.removed {
            CreateRecord::Written
        } else {
            CreateRecord::AsItWas
        }
    }
}

/// What a batch does to a stream's Create record while the stream has no file.
enum CreateRecord {
    /// Created without data: the file stays unwritten, the record kept in memory.
    Unwritten(Box<[u8]>),
    /// The file was written (with its Create record, if it did not exist).
    Written,
    /// Left as it was.
    AsItWas,
}

/// The requests of one group commit being planned.
struct Batch {
    now: u64,
    segment: u64,
    /// The pending batches' changes this one plans on (file-durable; empty otherwise).
    base: Ahead,
    buf: Vec<u8>,
    drafts: HashMap<u64, Draft>,
    order: Vec<u64>,
    names: HashMap<StreamName, Option<Arc<Entry>>>,
    records: u64,
    /// Creates, appends and deletes that wrote records.
    ops: u64,
}

impl Batch {
    fn new(now: u64, segment: u64, base: Ahead) -> Self {
        Batch {
            now,
            segment,
            base,
            buf: Vec::new(),
            drafts: HashMap::new(),
            order: Vec::new(),
            names: HashMap::new(),
            records: 0,
            ops: 0,
        }
    }

    fn draft(&mut self, entry: &Arc<Entry>) -> &mut Draft {
        let order = &mut self.order;
        let base = &self.base;
        self.drafts.entry(entry.id).or_insert_with(|| {
            order.push(entry.id);
            let st = entry.lock();
            let (s, fork_refs, unwritten) = match base.streams.get(&entry.id) {
                // Written by a pending batch: its file exists unless it is still unwritten.
                // Readers keep the installed state's access time current (sliding TTL).
                Some(a) => {
                    let mut s = a.s.clone();
                    s.last_access_ms = s.last_access_ms.max(st.s.last_access_ms);
                    (s, a.fork_refs, a.unwritten.clone())
                }
                None => (st.s.clone(), st.fork_refs, st.unwritten.clone()),
            };
            Draft {
                entry: Arc::clone(entry),
                write_from: s.file_len,
                s,
                fork_refs,
                new_index: Vec::new(),
                writes: Vec::new(),
                new_file: false,
                unwritten,
                changed: false,
                clear_touch: false,
            }
        })
    }

    /// The stream's status and fork references as of this point of the batch, without
    /// drafting it.
    fn peek(&self, entry: &Entry) -> (Status, usize) {
        if let Some(d) = self.drafts.get(&entry.id) {
            (entry.status(&d.s, self.now), d.fork_refs)
        } else if let Some(a) = self.base.streams.get(&entry.id) {
            let access = a.s.last_access_ms.max(entry.lock().s.last_access_ms);
            (entry.status_at(&a.s, access, self.now), a.fork_refs)
        } else {
            let st = entry.lock();
            (entry.status(&st.s, self.now), st.fork_refs)
        }
    }

    /// The entry `name` maps to at this point of the batch.
    fn named(&self, shared: &Shared, name: &StreamName) -> Option<Arc<Entry>> {
        match (self.names.get(name), self.base.names.get(name)) {
            (Some(found), _) | (None, Some((_, found))) => found.clone(),
            (None, None) => shared.get(name),
        }
    }

    /// Whether the stream is closed, and its info, at this point of the batch.
    fn closed_and_info(&self, entry: &Entry) -> (bool, ds_storage::StreamInfo) {
        let of = |s: &StreamState| (s.writer.closed, entry.info(s));
        if let Some(d) = self.drafts.get(&entry.id) {
            of(&d.s)
        } else if let Some(a) = self.base.streams.get(&entry.id) {
            of(&a.s)
        } else {
            of(&entry.lock().s)
        }
    }

    /// Takes this written batch's changes into its base, which the next batch plans on, and
    /// returns it.
    fn advance(&mut self, seq: u64) -> Ahead {
        let mut base = std::mem::take(&mut self.base);
        for id in &self.order {
            let d = &self.drafts[id];
            let unwritten = match d.create_record(&self.buf) {
                CreateRecord::Unwritten(record) => Some(record),
                CreateRecord::Written => None,
                CreateRecord::AsItWas => d.unwritten.clone(),
            };
            base.streams.insert(
                *id,
                AheadStream {
                    seq,
                    s: d.s.clone(),
                    fork_refs: d.fork_refs,
                    unwritten,
                },
            );
        }
        for (name, value) in &self.names {
            base.names.insert(name.clone(), (seq, value.clone()));
        }
        base
    }

    /// Encodes one record for `entry` and applies it to its draft.
    fn emit(
        &mut self,
        entry: &Arc<Entry>,
        kind: Kind,
        flags: u16,
        at_ms: u64,
        messages: &[Bytes],
        meta: impl FnOnce(&mut Encoder<'_>),
    ) {
        let (rec_no, pos) = {
            let d = self.draft(entry);
            (d.s.rec_count, d.s.file_len)
        };
        let header = Header {
            kind,
            flags,
            stream_id: entry.id,
            rec_no,
            at_ms,
            segment: self.segment,
        };
        let mut enc = Encoder::begin(&mut self.buf, header, messages);
        meta(&mut enc);
        let range = enc.finish(messages);
        let rec = record::decode_encoded(&self.buf[range.clone()])
            .expect("a record just encoded decodes");
        let d = self.drafts.get_mut(&entry.id).expect("drafted above");
        if let Some(ix) = d.s.apply(&rec, pos, range.len() as u64) {
            d.new_index.push(ix);
        }
        if kind != Kind::Delete {
            d.writes.push(range);
        }
        d.changed = true;
        self.records += 1;
    }
}

/// What one turn of the committer's loop received.
struct Gathered {
    requests: Vec<Request>,
    /// The syncer's report, if one came: the last batch covered, and an error if any sync
    /// reported since failed.
    synced: Option<(u64, io::Result<()>)>,
    /// Payload bytes of `requests`.
    size: usize,
    /// A shutdown request came: nothing follows it.
    stop: bool,
}

impl Gathered {
    fn take(&mut self, r: Request) {
        if let Op::Synced { seq, result } = r.op {
            // A failed sync is never hidden behind a later report (the syncer stops after
            // one, but be sure): the pages it failed to write may be marked clean, and a later
            // `fdatasync` would not write them again.
            self.synced = Some(match self.synced.take() {
                Some((_, Err(e))) => (seq, Err(e)),
                _ => (seq, result),
            });
            return;
        }
        self.size += r.payload_len();
        self.stop |= matches!(r.op, Op::Shutdown);
        self.requests.push(r);
    }
}

/// Answers requests after the store has failed (for `reason`).
fn refuse(replies: impl Iterator<Item = Option<oneshot::Sender<Result<Reply>>>>, reason: &str) {
    for reply in replies.flatten() {
        let _ = reply.send(Err(crate::failed_error("commit", reason)));
    }
}

/// Sends each request its outcome, or the batch's failure.
fn answer(results: Vec<Answer>, failure: Option<&BatchFailure>) {
    for (reply, outcome) in results {
        if let Some(reply) = reply {
            let _ = reply.send(match failure {
                Some(f) => Err(f.to_error()),
                None => outcome,
            });
        }
    }
}

fn closed_flag(close: bool) -> u16 {
    if close { FLAG_CLOSE } else { 0 }
}

/// How many requests may queue during a WAL sync before the caller of the last one writes
/// them (planned on the pending state, as the next batch) instead of leaving them for the
/// syncer.
///
/// Whatever is queued when a sync returns is written by the syncer before it starts the
/// next sync, so the device idles while the syncer plans the batch and writes its records to
/// the stream files: with many streams that is one `pwrite` per stream, and the gap grew to as
/// long as the sync itself (1,000 streams, 64 writers). Writing a large queue during the sync
/// moves that work beside the device's flush, at the price of one more WAL write per sync;
/// a small queue is cheaper to leave for the syncer (one write per sync, fewer wake-ups). On
/// the 2-core bench machine (`append-many`, file-durable, 5 alternating rounds) 16 gave 1.08×
/// the throughput of never writing during a sync (24 and 32 a little less; three runs of
/// 3–5 rounds put 16–24 at 1.05–1.4×), `append-1` (32 writers, about 10 per sync) was
/// unchanged, and writing every arrival at once (1) cost 10–30% more CPU per append. (The
/// pipeline tests count on a value between 3 and 64.)
const SYNC_QUEUE_BATCH: usize = 16;

/// How many batches a request's caller (or the WAL syncer) commits in one turn before it
/// hands what is still queued to the committer thread.
const CALLER_BATCHES: usize = 4;

/// The committer's inbox and state, and who commits next.
///
/// Whoever queues a request while nobody is committing commits it, with whatever is queued
/// meanwhile, on its own thread: the request's caller (a tokio worker: planning a batch and
/// writing it to the page cache takes microseconds) or the WAL syncer with its report (which
/// installs and answers the batches it covered, then writes what arrived during the sync for
/// the next one). A request that arrives while someone commits is queued, and that committer
/// takes it before it stops; one that arrives while the syncer is in an `fdatasync` is queued
/// for the syncer, unless it makes [`SYNC_QUEUE_BATCH`] queued requests: then its caller
/// writes them while the sync runs (see there). So no request waits for another thread to be
/// scheduled on its way to the WAL, and no answer waits for one on its way back: on two cores
/// each such hop was a wake-up and a wait in the run queue. The committer thread
/// (`ds-file-commit`) takes over what must not block a caller: a WAL rotation (an `fdatasync`
/// and a directory sync), the shutdown (which waits for the last syncs and checkpoints), and
/// the rest of a long run (a caller commits at most [`CALLER_BATCHES`] batches per turn).
pub(crate) struct Commit {
    shared: Arc<Shared>,
    inbox: Mutex<Inbox>,
    /// The committer thread waits here for a hand-off, and for the syncer's reports while it
    /// drains at shutdown.
    wake: Condvar,
    /// Locked only by whoever has the turn (`Inbox::committing`), so never contended.
    committer: Mutex<Committer>,
}

#[derive(Default)]
struct Inbox {
    queue: VecDeque<Request>,
    committing: Committing,
    /// The committer thread waits for the syncer's reports (shutdown).
    draining: bool,
    /// A shutdown is queued: no request is taken after it.
    closed: bool,
    /// The WAL syncer is in an `fdatasync` (file-durable): a request that arrives now waits
    /// in the queue, and the syncer commits it, with every other one that arrived during the
    /// sync, when the sync returns (one batch, one WAL write per sync, written just before
    /// the next sync starts); unless [`SYNC_QUEUE_BATCH`] are queued, which their last
    /// caller writes at once.
    syncing: bool,
}

/// Who commits.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Committing {
    /// Nobody: whoever queues a request next takes the turn.
    #[default]
    Nobody,
    /// Somebody (a caller, the syncer, or the committer thread) has the turn.
    Somebody,
    /// The turn is handed to the committer thread, which has not taken it yet.
    HandedOff,
}

/// How a turn of committing ended.
enum TurnEnd {
    /// Nothing left to do now; nobody has the turn.
    Idle,
    /// The committer thread takes over.
    HandedOff,
    /// The store is shut down (the committer thread only).
    Shutdown,
}

/// Releases the turn if the one committing panics: the store stops (it cannot tell what the
/// batch did), every request waiting for an answer (held, pending or queued) fails, and later
/// requests are refused by whoever commits them. If the committer thread itself panicked,
/// nobody is left to take a shutdown: the inbox closes, so requests and `close` stop at once.
struct Turn<'a> {
    commit: &'a Commit,
    thread: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        const REASON: &str = "the committer panicked";
        if !std::thread::panicking() {
            return;
        }
        self.commit.shared.fail(REASON);
        // Dropped before us, so this lock is free (and poisoned).
        let waiting = {
            let mut c = self.commit.state();
            let held = std::mem::take(&mut c.held);
            let pending = std::mem::take(&mut c.pending);
            c.ahead = Ahead::default();
            let mut inbox = self.commit.inbox();
            inbox.committing = Committing::Nobody;
            inbox.closed |= self.thread;
            let queued = std::mem::take(&mut inbox.queue);
            (held, pending, queued)
        };
        let (held, pending, queued) = waiting;
        let replies = held
            .into_iter()
            .chain(queued)
            .map(|r| r.reply)
            .chain(pending.into_iter().flat_map(|p| p.results).map(|(r, _)| r));
        refuse(replies, REASON);
    }
}

impl Commit {
    /// Builds the committer's state, starts the WAL syncer (file-durable) and the committer
    /// thread, and returns the thread to join after [`Commit::close`].
    pub(crate) fn start(
        shared: Arc<Shared>,
        init: CommitterInit,
    ) -> io::Result<(Arc<Commit>, JoinHandle<()>)> {
        let wal = Arc::clone(&init.wal);
        let committer = Committer::new(Arc::clone(&shared), init)?;
        let commit = Arc::new(Commit {
            shared: Arc::clone(&shared),
            inbox: Mutex::new(Inbox::default()),
            wake: Condvar::new(),
            committer: Mutex::new(committer),
        });
        if shared.durability == Durability::Durable {
            let work = Arc::new(SyncWork {
                state: Mutex::new(SyncState {
                    wal,
                    written: 0,
                    idle: false,
                    stop: false,
                }),
                wake: Condvar::new(),
            });
            let sync_work = Arc::clone(&work);
            // Weak: the syncer stops when the committer's state goes, not the other way round.
            let reports = Arc::downgrade(&commit);
            let thread = std::thread::Builder::new()
                .name("ds-file-wal-sync".to_owned())
                .spawn(move || syncer(&shared, &sync_work, &reports))?;
            commit.state().syncer = Some(Syncer {
                work,
                thread: Some(thread),
            });
        }
        let runner = Arc::clone(&commit);
        let thread = std::thread::Builder::new()
            .name("ds-file-commit".to_owned())
            .spawn(move || runner.run())?;
        Ok((commit, thread))
    }

    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn state(&self) -> MutexGuard<'_, Committer> {
        self.committer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a request, and commits it (with whatever else is queued) on this thread unless
    /// someone is committing already or a sync is running. False (and the request dropped)
    /// if the store is shutting down.
    pub(crate) fn submit(&self, r: Request) -> bool {
        {
            let mut inbox = self.inbox();
            if inbox.closed {
                return false;
            }
            inbox.queue.push_back(r);
            let wait_for_sync = inbox.syncing && inbox.queue.len() < SYNC_QUEUE_BATCH;
            if inbox.committing != Committing::Nobody || wait_for_sync {
                return true;
            }
            inbox.committing = Committing::Somebody;
        }
        self.commit(false);
        true
    }

    /// The WAL syncer starts an `fdatasync`.
    fn syncing(&self) {
        self.inbox().syncing = true;
    }

    /// The WAL syncer stopped: nobody waits for a report any more.
    fn syncer_stopped(&self) {
        let mut inbox = self.inbox();
        inbox.syncing = false;
        if inbox.committing == Committing::Nobody && !inbox.queue.is_empty() {
            self.hand_off(&mut inbox);
        }
    }

    /// The WAL syncer's report; taken even while the store shuts down (which waits for it).
    fn report(&self, r: Request) {
        {
            let mut inbox = self.inbox();
            inbox.syncing = false;
            inbox.queue.push_back(r);
            if inbox.draining {
                self.wake.notify_one();
            }
            if inbox.committing != Committing::Nobody {
                return;
            }
            inbox.committing = Committing::Somebody;
        }
        self.commit(false);
    }

    /// Queues the shutdown for the committer thread: the requests queued before it complete,
    /// later ones are refused. False if it was queued before.
    pub(crate) fn close(&self, reply: Option<oneshot::Sender<Result<Reply>>>) -> bool {
        let mut inbox = self.inbox();
        if inbox.closed {
            return false;
        }
        inbox.closed = true;
        inbox.queue.push_back(Request {
            op: Op::Shutdown,
            reply,
        });
        if inbox.committing == Committing::Nobody {
            self.hand_off(&mut inbox);
        }
        true
    }

    /// Whether the shutdown is queued (or done).
    pub(crate) fn is_closed(&self) -> bool {
        self.inbox().closed
    }

    /// Hands the turn to the committer thread.
    fn hand_off(&self, inbox: &mut Inbox) {
        inbox.committing = Committing::HandedOff;
        self.wake.notify_one();
    }

    /// The committer thread: takes the turns handed to it, until the shutdown.
    fn run(&self) {
        loop {
            {
                let mut inbox = self.inbox();
                while inbox.committing != Committing::HandedOff {
                    inbox = self
                        .wake
                        .wait(inbox)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                inbox.committing = Committing::Somebody;
            }
            if matches!(self.commit(true), TurnEnd::Shutdown) {
                return;
            }
        }
    }

    /// One turn of committing, which we have: batch after batch of what is queued,
    /// until nothing is (or, off the committer `thread`, until something is for the thread).
    fn commit(&self, thread: bool) -> TurnEnd {
        // Declared first, dropped last: on a panic it locks the committer state itself.
        let _turn = Turn {
            commit: self,
            thread,
        };
        let mut c = self.state();
        let mut batches = 0;
        loop {
            if self.rotate_or_hand_off(&mut c, thread) {
                return TurnEnd::HandedOff;
            }
            let g = {
                let mut inbox = self.inbox();
                let g = (thread || batches < CALLER_BATCHES)
                    .then(|| c.gather(&mut inbox.queue, thread));
                match g {
                    Some(g) if !c.idle(&g) => g,
                    g => {
                        if let Some(g) = g {
                            c.held = g.requests;
                        }
                        // Requests held for a rotation (and any queued behind them) wait for
                        // the syncer's report, which takes the turn; unless the report is in
                        // the queue already (a caller at its batch limit gathered nothing), and
                        // nobody would take it.
                        let report_queued = inbox
                            .queue
                            .iter()
                            .any(|r| matches!(r.op, Op::Synced { .. }));
                        if (c.must_hold() && !report_queued)
                            || (inbox.queue.is_empty() && c.held.is_empty())
                        {
                            inbox.committing = Committing::Nobody;
                            return TurnEnd::Idle;
                        }
                        // Only a request for the committer thread (or the batch limit) stops
                        // a caller with requests still to commit; the thread takes everything.
                        debug_assert!(!thread, "the committer thread hands off to itself");
                        self.hand_off(&mut inbox);
                        return TurnEnd::HandedOff;
                    }
                }
            };
            if let Some((seq, result)) = g.synced {
                c.synced(seq, result);
            }
            let mut requests = g.requests;
            let shutdown = requests.pop_if(|r| matches!(r.op, Op::Shutdown));
            // A report may have made the rotation possible: it comes before these requests.
            if self.rotate_or_hand_off(&mut c, thread) {
                c.held = requests;
                return TurnEnd::HandedOff;
            }
            if shutdown.is_none() && c.must_hold() {
                c.held = requests;
                continue;
            }
            c.process(requests);
            batches += 1;
            if let Some(shutdown) = shutdown {
                self.drain(&mut c);
                c.shutdown();
                c.lock = None;
                if let Some(reply) = shutdown.reply {
                    let _ = reply.send(Ok(Reply::Done));
                }
                return TurnEnd::Shutdown;
            }
        }
    }

    /// A due WAL rotation: the committer thread rotates; anyone else hands it the turn (and
    /// gets `true`: stop committing).
    fn rotate_or_hand_off(&self, c: &mut Committer, thread: bool) -> bool {
        if !c.rotation_due() {
            return false;
        }
        if !thread {
            self.hand_off(&mut self.inbox());
            return true;
        }
        c.rotate_if_due();
        false
    }

    /// Waits (on the committer thread) until every pending batch is synced and answered.
    fn drain(&self, c: &mut Committer) {
        while !c.pending.is_empty() {
            let r = {
                let mut inbox = self.inbox();
                loop {
                    if let Some(r) = inbox.queue.pop_front() {
                        break r;
                    }
                    if c.syncer_gone() {
                        // It reports before it stops, so nothing more will come.
                        drop(inbox);
                        c.shared.fail("the WAL syncer stopped");
                        c.synced(0, Ok(()));
                        return;
                    }
                    inbox.draining = true;
                    inbox = self
                        .wake
                        .wait_timeout(inbox, Duration::from_millis(100))
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    inbox.draining = false;
                }
            };
            match r.op {
                Op::Synced { seq, result } => c.synced(seq, result),
                // Nothing but the syncer queues after a shutdown request.
                _ => c.process(vec![r]),
            }
        }
    }
}

impl Committer {
    /// The committer's state; in file-durable mode [`Commit::start`] adds the WAL syncer.
    fn new(shared: Arc<Shared>, init: CommitterInit) -> io::Result<Self> {
        let (bg_tx, bg_rx) = mpsc::channel();
        let bg_shared = Arc::clone(&shared);
        let bg = std::thread::Builder::new()
            .name("ds-file-sync".to_owned())
            .spawn(move || background(&bg_shared, &bg_rx))?;
        let wal_sync = if shared.durability == Durability::Fast {
            Some(spawn_fed(&shared, "ds-file-wal-sync", wal_syncer)?)
        } else {
            None
        };
        let spare = if shared.wal_spares {
            Some(spawn_fed(&shared, "ds-file-spare", spare_writer)?)
        } else {
            None
        };
        if let Some(job) = init.pending {
            // No rotation starts another checkpoint until this one is done.
            shared.checkpointing.store(true, Ordering::Release);
            if bg_tx.send(BgMsg::Checkpoint(job)).is_err() {
                shared.checkpointing.store(false, Ordering::Release);
            }
        }
        Ok(Committer {
            shared,
            wal: init.wal,
            segment: init.segment,
            wal_len: 0,
            next_id: init.next_id,
            expiring: init.expiring,
            fanouts: init.fanouts,
            dirty: Dirty::default(),
            bg_tx,
            bg: Some(bg),
            wal_sync,
            syncer: None,
            pending: VecDeque::new(),
            ahead: Ahead::default(),
            seq: 0,
            held: Vec::new(),
            spare_bufs: Vec::new(),
            spare,
            wal_zeroed: false,
            spare_asked: false,
            lock: Some(init.lock),
        })
    }

    /// The next batch's requests: those held back, then the queued ones (up to the batch
    /// limits), and the syncer's reports among them. Only the committer thread takes a
    /// shutdown request; anyone else stops in front of it.
    fn gather(&mut self, queue: &mut VecDeque<Request>, thread: bool) -> Gathered {
        let mut requests = std::mem::take(&mut self.held);
        // Sized once: grown one push at a time it was reallocated a few times per batch.
        requests.reserve(queue.len().min(MAX_BATCH_OPS));
        let mut g = Gathered {
            size: requests.iter().map(Request::payload_len).sum(),
            requests,
            synced: None,
            stop: false,
        };
        while !g.stop && g.requests.len() < MAX_BATCH_OPS && g.size < MAX_BATCH_BYTES {
            if !thread && queue.front().is_some_and(|r| matches!(r.op, Op::Shutdown)) {
                break;
            }
            let Some(r) = queue.pop_front() else {
                break;
            };
            g.take(r);
        }
        // The syncer's reports are taken whatever the batch holds: a full batch held back for
        // a rotation waits for exactly such a report.
        if queue.iter().any(|r| matches!(r.op, Op::Synced { .. })) {
            for r in std::mem::take(queue) {
                if matches!(r.op, Op::Synced { .. }) {
                    g.take(r);
                } else {
                    queue.push_back(r);
                }
            }
        }
        g
    }

    /// Whether a gathered turn has nothing to do now: no report, and no request (or only
    /// requests that must wait for a WAL rotation, which a report will make possible).
    fn idle(&self, g: &Gathered) -> bool {
        g.synced.is_none() && (g.requests.is_empty() || (!g.stop && self.must_hold()))
    }

    /// Whether the WAL syncer (file-durable) has stopped: after a failed sync, or if it
    /// panicked.
    fn syncer_gone(&self) -> bool {
        self.syncer.as_ref().is_none_or(|s| {
            s.thread
                .as_ref()
                .is_none_or(std::thread::JoinHandle::is_finished)
        })
    }

    /// Whether new requests wait: a WAL rotation is due, and it waits for the pending batches
    /// (file-durable), which all live in the current segment.
    fn must_hold(&self) -> bool {
        !self.pending.is_empty()
            && self.segment_done()
            && !self.shared.checkpointing.load(Ordering::Acquire)
            && self.shared.failure().is_none()
    }

    fn process(&mut self, requests: Vec<Request>) {
        if requests.is_empty() {
            return;
        }
        if let Some(reason) = self.shared.failure() {
            refuse(requests.into_iter().map(|r| r.reply), &reason);
            return;
        }
        let mut batch = Batch::new(
            self.shared.now(),
            self.segment,
            std::mem::take(&mut self.ahead),
        );
        batch.buf = self.spare_bufs.pop().unwrap_or_default();
        let mut results = Vec::with_capacity(requests.len());
        for r in requests {
            let client_op = matches!(r.op, Op::Create(_) | Op::Append { .. } | Op::Delete { .. });
            let records = batch.records;
            let outcome = self.plan(&mut batch, r.op);
            if client_op && batch.records > records {
                batch.ops += 1;
            }
            results.push((r.reply, outcome));
        }
        self.shared
            .stats
            .requests
            .fetch_add(results.len() as u64, Ordering::Relaxed);
        if self.syncer.is_some() {
            self.pipeline(batch, results);
            return;
        }
        let failure = if batch.buf.is_empty() {
            None
        } else {
            match self
                .write_streams(&batch)
                .and_then(|written| self.commit(&batch, &written, true).map(|()| written))
            {
                Ok(written) => {
                    self.install(batch, &written);
                    None
                }
                Err(failure) => Some(failure),
            }
        };
        answer(results, failure.as_ref());
    }

    /// file-durable: writes a planned batch to its stream files and the WAL, and leaves it
    /// pending until a sync covers it; its answers (even those that wrote nothing, which were
    /// decided on the state the pending batches leave) go out only once it and every batch
    /// before it are durable. A sync is started unless one is in flight; batches written
    /// meanwhile wait for the next one, which starts as soon as it returns, so the WAL is
    /// synced back to back under load.
    fn pipeline(&mut self, mut batch: Batch, results: Vec<Answer>) {
        self.seq += 1;
        let seq = self.seq;
        if batch.buf.is_empty() {
            self.ahead = std::mem::take(&mut batch.base);
            if self.pending.is_empty() {
                answer(results, None);
            } else {
                self.pending.push_back(Pending {
                    seq,
                    batch,
                    written: Vec::new(),
                    results,
                });
            }
            return;
        }
        match self
            .write_streams(&batch)
            .and_then(|written| self.commit(&batch, &written, false).map(|()| written))
        {
            Ok(written) => {
                self.ahead = batch.advance(seq);
                self.pending.push_back(Pending {
                    seq,
                    batch,
                    written,
                    results,
                });
                if let Some(syncer) = &self.syncer {
                    let mut st = syncer.work.state();
                    if !Arc::ptr_eq(&st.wal, &self.wal) {
                        st.wal = Arc::clone(&self.wal);
                    }
                    st.written = seq;
                    if st.idle {
                        syncer.work.wake.notify_one();
                    }
                }
            }
            Err(failure) => {
                // Taken back (or the store has failed): the pending batches are unaffected.
                self.ahead = std::mem::take(&mut batch.base);
                answer(results, Some(&failure));
            }
        }
    }

    /// The syncer's report: installs and answers the batches it covered (and the empty ones
    /// right behind them). A failed sync stops the store, and every pending batch fails.
    fn synced(&mut self, seq: u64, result: io::Result<()>) {
        if let Err(e) = result {
            self.shared
                .fail(&BatchFailure::sync("sync WAL", &e).message);
        }
        if let Some(reason) = self.shared.failure() {
            let pending = std::mem::take(&mut self.pending);
            let replies = pending.into_iter().flat_map(|p| p.results).map(|(r, _)| r);
            refuse(replies, &reason);
            self.ahead = Ahead::default();
            return;
        }
        while self
            .pending
            .front()
            .is_some_and(|p| p.seq <= seq || p.batch.buf.is_empty())
        {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            if !p.batch.buf.is_empty() {
                self.install(p.batch, &p.written);
            }
            self.ahead.installed(p.seq);
            answer(p.results, None);
        }
        debug_assert!(
            !self.pending.is_empty() || self.ahead.is_empty(),
            "every pending change is installed"
        );
    }

    fn rotate_if_due(&mut self) {
        if let Err(f) = self.maybe_rotate() {
            // A full disk only delays the rotation (the current segment keeps growing, and the
            // next batch tries again); any other failure, and a failed fsync whatever its
            // error, stops the store.
            if !f.retryable() {
                self.shared
                    .fail(&BatchFailure::new("rotate WAL", &f.error).message);
            }
        }
    }

    fn plan(&mut self, b: &mut Batch, op: Op) -> Result<Reply> {
        match op {
            Op::Create(c) => self.create(b, *c),
            Op::Append {
                entry,
                req,
                messages,
            } => self.append(b, &entry, &req, messages),
            Op::Delete { entry } => {
                self.live_check(b, &entry)?;
                if b.peek(&entry).1 > 0 {
                    soft_delete(b, &entry);
                } else {
                    remove(&self.shared, b, &entry);
                }
                Ok(Reply::Done)
            }
            Op::RestoreWriter { entry, writer } => self.restore_writer(b, &entry, &writer),
            Op::Expire { entry } => self.live_check(b, &entry).map(|()| Reply::Done),
            Op::Sweep => Ok(Reply::Swept(self.sweep(b))),
            Op::Touch { entry } => {
                touch(b, &entry);
                Ok(Reply::Done)
            }
            Op::Shutdown | Op::Synced { .. } => Ok(Reply::Done),
        }
    }

    /// Checks that a stream is live at this point of the batch. An expired stream is expired
    /// here and now, as part of the batch: soft-deleted (`Gone`) while forks reference it,
    /// removed (`NotFound`) otherwise.
    fn live_check(&self, b: &mut Batch, entry: &Arc<Entry>) -> Result<()> {
        match b.peek(entry) {
            (Status::Live, _) => Ok(()),
            (Status::Removed, _) => Err(Error::NotFound),
            (Status::SoftDeleted, _) => Err(Error::Gone),
            (Status::Expired, refs) => {
                if refs > 0 {
                    soft_delete(b, entry);
                    Err(Error::Gone)
                } else {
                    remove(&self.shared, b, entry);
                    Err(Error::NotFound)
                }
            }
        }
    }

    fn lookup(&self, b: &Batch, name: &StreamName) -> Option<Arc<Entry>> {
        b.named(&self.shared, name)
    }

    fn check_size(&self, current: u64, len: u64, messages: usize) -> Result<()> {
        if let Some(limit) = self.shared.max_stream_bytes
            && current + len > limit
        {
            return Err(Error::StreamTooLarge { limit });
        }
        if len + record::head_estimate(messages, 0) > record::MAX_RECORD_LEN {
            return Err(Error::StreamTooLarge {
                limit: current + record::MAX_RECORD_LEN - record::head_estimate(messages, 0),
            });
        }
        Ok(())
    }

    fn create(&mut self, b: &mut Batch, op: CreateOp) -> Result<Reply> {
        if let Some(existing) = self.lookup(b, &op.name) {
            match self.live_check(b, &existing) {
                Ok(()) => {
                    let (closed, info) = b.closed_and_info(&existing);
                    let cfg = ExistingConfig {
                        content_type: &existing.content_type,
                        expiry: existing.expiry,
                        closed,
                        fork: existing.fork_config(),
                    };
                    rules::check_create_matches(&cfg, &op.req)?;
                    return Ok(Reply::Created(CreateOutcome::Existed(info)));
                }
                Err(Error::Gone) => return Err(Error::NameHeldBySoftDeleted),
                Err(Error::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(f) = &op.fork
            && self.live_check(b, &f.source).is_err()
        {
            return Err(Error::ForkSourceGone);
        }
        let len: u64 = op.messages.iter().map(|m| m.len() as u64).sum();
        self.check_size(0, len, op.messages.len())?;
        let id = self.next_id;
        self.next_id += 1;
        let base = op.fork.as_ref().map_or(Offset::ZERO, |f| f.base);
        let fork_meta = op.fork.as_ref().map(|f| ForkMeta {
            source_id: f.source.id,
            anchor: f.anchor,
            sub_offset: f.sub_offset,
            base: f.base,
        });
        let source = op.fork.as_ref().map(|f| Arc::clone(&f.source));
        let entry = Arc::new(Entry {
            name: op.name.clone(),
            id,
            json: content_type::is_json(&op.content_type),
            content_type: self.shared.intern(&op.content_type),
            expiry: op.expiry,
            base,
            fork: op.fork.map(|f| ForkLink {
                source: f.source,
                anchor: f.anchor,
                sub_offset: f.sub_offset,
            }),
            state: Mutex::new(State {
                s: StreamState::new(base),
                index: Vec::new(),
                fork_refs: 0,
                touch_pending: false,
                watch: None,
                unwritten: None,
            }),
        });
        b.draft(&entry).new_file = true;
        let url_name = entry.name.to_url_path();
        let expiry = entry.expiry;
        let ct = entry.content_type.clone();
        b.emit(
            &entry,
            Kind::Create,
            closed_flag(op.req.closed),
            b.now,
            &op.messages,
            |e| {
                e.str(&url_name).str(&ct).expiry(expiry);
                match fork_meta {
                    None => {
                        e.u8(0);
                    }
                    Some(f) => {
                        e.u8(1)
                            .u64(f.source_id)
                            .u64(f.anchor.seq)
                            .u64(f.anchor.byte)
                            .u64(f.sub_offset)
                            .u64(f.base.seq)
                            .u64(f.base.byte);
                    }
                }
            },
        );
        b.names.insert(op.name, Some(Arc::clone(&entry)));
        if let Some(source) = source {
            let d = b.draft(&source);
            d.fork_refs += 1;
        }
        let info = entry.info(&b.draft(&entry).s);
        Ok(Reply::Created(CreateOutcome::Created(info)))
    }

    fn append(
        &mut self,
        b: &mut Batch,
        entry: &Arc<Entry>,
        req: &AppendRequest,
        messages: Result<Vec<Bytes>>,
    ) -> Result<Reply> {
        self.live_check(b, entry)?;
        let d = b.draft(entry);
        let plan = rules::plan_append(&d.s.writer, &entry.content_type, d.s.tail, req, &messages)?;
        let producer = match &plan {
            AppendPlan::Duplicate(ack) => {
                return Ok(Reply::Appended(AppendOutcome::Duplicate {
                    next: d.s.tail,
                    closed: d.s.writer.closed,
                    producer: *ack,
                }));
            }
            AppendPlan::AlreadyClosed => {
                return Ok(Reply::Appended(AppendOutcome::AlreadyClosed {
                    next: d.s.tail,
                }));
            }
            AppendPlan::Write { producer, .. } => producer.as_ref().map(|(_, p)| ProducerAck {
                epoch: p.epoch,
                seq: p.last_seq,
            }),
        };
        let messages = messages?;
        let len: u64 = messages.iter().map(|m| m.len() as u64).sum();
        let current = d.s.bytes;
        self.check_size(current, len, messages.len())?;
        let stream_seq = req.stream_seq.as_deref();
        let producer_headers = req.producer.as_ref();
        b.emit(
            entry,
            Kind::Append,
            closed_flag(req.close),
            b.now,
            &messages,
            |e| {
                match stream_seq {
                    None => e.u8(0),
                    Some(s) => e.u8(1).str(s),
                };
                match producer_headers {
                    None => e.u8(0),
                    Some(p) => e.u8(1).str(&p.id).u64(p.epoch).u64(p.seq),
                };
            },
        );
        let d = b.draft(entry);
        Ok(Reply::Appended(AppendOutcome::Appended {
            next: d.s.tail,
            closed: d.s.writer.closed,
            producer,
        }))
    }

    /// Replaces a stream's writer state with one Writer record, which recovery applies the
    /// same way; the install that follows the commit tells live readers about a closure.
    fn restore_writer(
        &mut self,
        b: &mut Batch,
        entry: &Arc<Entry>,
        writer: &WriterState,
    ) -> Result<Reply> {
        self.live_check(b, entry)?;
        let d = b.draft(entry);
        rules::check_restore(&d.s.writer, writer, d.s.tail)?;
        if FIXED_LEN as u64 + record::writer_meta_len(writer) > record::MAX_RECORD_LEN {
            return Err(Error::Backend {
                op: "restore writer state",
                source: Box::new(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the writer state is too large for one record",
                )),
            });
        }
        let now = b.now;
        b.emit(
            entry,
            Kind::Writer,
            closed_flag(writer.closed),
            now,
            &[],
            |e| {
                e.writer(writer);
            },
        );
        Ok(Reply::Done)
    }

    fn sweep(&self, b: &mut Batch) -> usize {
        let mut candidates: Vec<Arc<Entry>> = self.expiring.values().cloned().collect();
        candidates.sort_by_key(|e| e.id);
        let mut count = 0;
        for entry in candidates {
            if let (Status::Expired, refs) = b.peek(&entry) {
                if refs > 0 {
                    soft_delete(b, &entry);
                } else {
                    remove(&self.shared, b, &entry);
                }
                count += 1;
            }
        }
        count
    }

    /// Writes the batch's records to the stream files (no fsync: the WAL covers them until
    /// the next checkpoint). Readers do not look past a stream's committed length, so these
    /// bytes stay invisible until [`Committer::install`]. Returns what was written, so a
    /// failed WAL write can take it back.
    fn write_streams(&mut self, b: &Batch) -> std::result::Result<Vec<Written>, BatchFailure> {
        let mut written = Vec::new();
        for id in &b.order {
            let d = &b.drafts[id];
            if d.writes.is_empty() || d.s.removed || d.defers_file() {
                continue;
            }
            let this = Written {
                id: *id,
                from: d.write_from,
                new_file: d.new_file,
                materialized: d.unwritten.is_some(),
            };
            let result = (|| -> io::Result<()> {
                if d.new_file || d.unwritten.is_some() {
                    ensure_fanout(&self.shared, &mut self.fanouts, &mut self.dirty, *id)?;
                }
                let mode = if d.new_file {
                    OpenMode::Truncate
                } else if d.unwritten.is_some() {
                    // A checkpoint may be writing the same Create record at the same place;
                    // never truncate what it wrote.
                    OpenMode::Create
                } else {
                    OpenMode::Existing
                };
                let file = self.shared.pool.get(*id, mode)?;
                if let Some(create) = &d.unwritten {
                    file.write_all_at(create, 0)?;
                }
                // Records encoded back to back (a stream's appends of one batch, unless other
                // streams' records came between them) go to the file in one write.
                let mut pos = d.write_from;
                let mut i = 0;
                while i < d.writes.len() {
                    let start = d.writes[i].start;
                    let mut end = d.writes[i].end;
                    i += 1;
                    while i < d.writes.len() && d.writes[i].start == end {
                        end = d.writes[i].end;
                        i += 1;
                    }
                    file.write_all_at(&b.buf[start..end], pos)?;
                    pos += (end - start) as u64;
                }
                Ok(())
            })();
            written.push(this);
            if let Err(e) = result {
                return Err(self.undo(&written, BatchFailure::new("write stream file", &e)));
            }
        }
        Ok(written)
    }

    /// Takes back stream-file writes of a batch that failed with ENOSPC, durably, so no record
    /// of it can resurface after a crash; returns the failure to report. Any other failure, or
    /// a failed undo, stops the store.
    fn undo(&mut self, written: &[Written], failure: BatchFailure) -> BatchFailure {
        if !failure.disk_full {
            self.shared.fail(&failure.message);
            return failure;
        }
        for w in written {
            let undone = if w.new_file {
                self.shared.pool.remove(w.id);
                let root = &self.shared.root;
                match self.shared.fs.remove_file(&layout::stream_file(root, w.id)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => match self.shared.pool.sync_dir(&layout::stream_dir(root, w.id)) {
                        // The fan-out directory could not be created either.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                        other => other,
                    },
                }
            } else {
                match self.shared.pool.get(w.id, OpenMode::Existing) {
                    Ok(f) => f.set_len(w.from).and_then(|()| f.sync_data()),
                    // The file of a stream created without one could not be created: nothing
                    // was written.
                    Err(e) if w.materialized && e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = undone {
                // The batch's records may stay in the stream file and resurface: not "nothing
                // was written".
                let failure = BatchFailure::sync("undo stream file write", &e);
                self.shared.fail(&failure.message);
                return failure;
            }
        }
        failure
    }

    /// Appends the batch to the WAL; in file-durable mode also syncs it if `sync` (otherwise
    /// the syncer will).
    fn commit(
        &mut self,
        b: &Batch,
        written: &[Written],
        sync: bool,
    ) -> std::result::Result<(), BatchFailure> {
        let start = self.wal_len;
        if let Err(e) = self.wal.write_all_at(&b.buf, start) {
            let failure = BatchFailure::new("write WAL", &e);
            if failure.disk_full {
                // Take the partial write back so a later batch cannot be torn by it, and make
                // the truncation durable before anything else is written.
                let undone = self.wal.set_len(start).and_then(|()| self.wal.sync_data());
                match undone {
                    Ok(()) => return Err(self.undo(written, failure)),
                    Err(e) => {
                        // The torn write (and the batch's stream-file records) may stay: not
                        // "nothing was written".
                        let failure = BatchFailure::sync("take back WAL write", &e);
                        self.shared.fail(&failure.message);
                        return Err(failure);
                    }
                }
            }
            self.shared.fail(&failure.message);
            return Err(failure);
        }
        self.wal_len += b.buf.len() as u64;
        self.ask_for_spare();
        let stats = &self.shared.stats;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .wal_bytes
            .fetch_add(b.buf.len() as u64, Ordering::Relaxed);
        stats.records.fetch_add(b.records, Ordering::Relaxed);
        stats.ops.fetch_add(b.ops, Ordering::Relaxed);
        match self.shared.durability {
            Durability::Durable if !sync => {}
            Durability::Durable => {
                let started = Instant::now();
                if let Err(e) = self.wal.sync_data() {
                    // The batch may be replayed from the WAL at the next open.
                    let failure = BatchFailure::sync("sync WAL", &e);
                    self.shared.fail(&failure.message);
                    return Err(failure);
                }
                stats.synced(started.elapsed());
            }
            Durability::Fast => self.shared.wal_dirty.store(true, Ordering::Release),
        }
        Ok(())
    }

    /// Installs a committed batch: the drafts become the streams' state, names are mapped and
    /// unmapped, live readers are told, and removed streams' files are unlinked.
    fn install(&mut self, mut b: Batch, written: &[Written]) {
        let root = self.shared.root.clone();
        for w in written {
            self.dirty.streams.insert(w.id);
            if w.new_file || w.materialized {
                self.dirty.dirs.insert(layout::stream_dir(&root, w.id));
            }
        }
        let mut removed = Vec::new();
        // Tails to send to live readers once the streams' locks are released.
        let mut publish = Vec::new();
        // The change to the live-stream gauges: a stream counts while it is neither removed
        // nor soft-deleted (a stream created in this batch did not count before it).
        let (mut streams_delta, mut bytes_delta) = (0i64, 0i64);
        let live = |s: &StreamState| !s.removed && !s.soft_deleted;
        let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for id in &b.order {
            let d = b.drafts.remove(id).expect("every ordered id has a draft");
            let record = d.create_record(&b.buf);
            let entry = d.entry;
            let mut st = entry.lock();
            match record {
                CreateRecord::Unwritten(record) => {
                    st.unwritten = Some(record);
                    self.dirty.unwritten.push(Arc::clone(&entry));
                }
                CreateRecord::Written => st.unwritten = None,
                CreateRecord::AsItWas => {}
            }
            if !d.new_file && live(&st.s) {
                streams_delta -= 1;
                bytes_delta -= signed(st.s.bytes);
            }
            if live(&d.s) {
                streams_delta += 1;
                bytes_delta += signed(d.s.bytes);
            }
            let access = st.s.last_access_ms.max(d.s.last_access_ms);
            st.s = d.s;
            st.s.last_access_ms = access;
            st.index.extend(d.new_index);
            st.fork_refs = d.fork_refs;
            if d.clear_touch {
                st.touch_pending = false;
            }
            if d.changed {
                publish.extend(st.publication());
            }
            if st.s.removed {
                removed.push((Arc::clone(&entry), d.new_file));
            } else if d.new_file && entry.expiry != Expiry::None {
                self.expiring.insert(entry.id, Arc::clone(&entry));
            }
        }
        crate::Stats::adjust(&self.shared.stats.live_streams, streams_delta);
        crate::Stats::adjust(&self.shared.stats.live_bytes, bytes_delta);
        // Most batches (appends) map no name: the map's write lock is not taken for them.
        if !b.names.is_empty() {
            let mut map = self.shared.write_streams();
            for (name, value) in b.names {
                match value {
                    Some(entry) => {
                        map.replace(ByName(entry));
                    }
                    None => {
                        map.remove(&name);
                    }
                }
            }
        }
        for p in publish {
            p.send();
        }
        for (entry, new_file) in removed {
            self.expiring.remove(&entry.id);
            self.shared.pool.remove(entry.id);
            self.dirty.forget(entry.id);
            if new_file {
                continue;
            }
            let path = layout::stream_file(&root, entry.id);
            match self.shared.fs.remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // The WAL holds the Delete; the checkpoint retries the unlink before it lets
                // the WAL go.
                Err(_) => self.dirty.unlinks.push(path),
            }
            // A checkpoint already running may list this file; it skips files that are gone.
            self.dirty.dirs.insert(layout::stream_dir(&root, entry.id));
        }
        self.recycle(b.buf);
    }

    /// Keeps an installed batch's record buffer for a later batch: grown again from empty,
    /// a buffer took a handful of reallocations per batch. A few are kept (one per batch
    /// that can be pending at once under load), and none larger than [`MAX_SPARE_BUF`], so
    /// one burst of large appends does not hold its memory for good.
    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare_bufs.len() < MAX_SPARE_BUFS && buf.capacity() <= MAX_SPARE_BUF {
            buf.clear();
            self.spare_bufs.push(buf);
        }
    }

    /// Whether the current WAL segment is to be left: it is full, or it was not written ahead,
    /// holds something, and a spare is ready to take its place.
    fn segment_done(&self) -> bool {
        self.wal_len >= self.shared.wal_segment_bytes
            || (!self.wal_zeroed
                && self.wal_len > 0
                && self.shared.spare_ready.load(Ordering::Acquire))
    }

    /// Asks the spare thread for the next segment once the current one is busy: half full if
    /// it is a spare itself (the next one is then ready long before it is needed), or after
    /// [`SPARE_AFTER`] bytes if it is not (a store that never writes much never writes a
    /// spare). At most once per segment, so a spare that fails (a full disk) is not retried
    /// batch after batch.
    fn ask_for_spare(&mut self) {
        let Some((tx, _)) = &self.spare else {
            return;
        };
        let half = self.shared.wal_segment_bytes / 2;
        let due = if self.wal_zeroed {
            half
        } else {
            half.min(SPARE_AFTER)
        };
        if !self.spare_asked && self.wal_len >= due {
            self.spare_asked = true;
            let _ = tx.send(());
        }
    }

    /// Whether the WAL is to move to a new segment now: the current one is done, nothing
    /// written to it waits for a sync, and no checkpoint is running.
    fn rotation_due(&self) -> bool {
        self.segment_done()
            && self.pending.is_empty()
            && !self.shared.checkpointing.load(Ordering::Acquire)
            && self.shared.failure().is_none()
    }

    fn maybe_rotate(&mut self) -> std::result::Result<(), CheckpointFailure> {
        if !self.rotation_due() {
            return Ok(());
        }
        let job = self.rotate()?;
        self.shared.checkpointing.store(true, Ordering::Release);
        if self.bg_tx.send(BgMsg::Checkpoint(job)).is_err() {
            self.shared.checkpointing.store(false, Ordering::Release);
            self.shared.checkpoint_done.notify_waiters();
        }
        Ok(())
    }

    /// Starts a new WAL segment and returns the checkpoint that makes the old ones obsolete.
    /// Only a failed create of the new segment can be retried later (on a full disk); a
    /// failed fsync cannot.
    fn rotate(&mut self) -> std::result::Result<CheckpointJob, CheckpointFailure> {
        // Every byte of the old segment must be durable before a newer segment can hold
        // records, or recovery could find a hole followed by newer data.
        self.wal.sync_data().map_err(CheckpointFailure::sync)?;
        let segment = self.segment + 1;
        let root = &self.shared.root;
        let path = layout::wal_segment(root, segment);
        let zeroed = self.take_spare(&path);
        let wal = if zeroed {
            self.shared.pool.open(&path, OpenMode::Existing)
        } else {
            self.shared.pool.open(&path, OpenMode::Truncate)
        }
        .map_err(CheckpointFailure::io)?;
        if !zeroed {
            reserve_wal(&*wal, self.shared.wal_segment_bytes);
        }
        self.shared
            .pool
            .sync_dir(&layout::wal_dir(root))
            .map_err(CheckpointFailure::sync)?;
        self.wal = Arc::clone(&wal);
        *self.shared.wal_current() = Some(wal);
        self.segment = segment;
        self.wal_len = 0;
        self.wal_zeroed = zeroed;
        self.spare_asked = false;
        // Without a spare this segment is like the first: it asks for one early, and is left
        // for it once it is ready.
        self.ask_for_spare();
        let mut dirty = std::mem::take(&mut self.dirty);
        // What a checkpoint that failed on a full disk did not get to sync.
        dirty.merge(std::mem::take(&mut *self.shared.carry()));
        Ok(CheckpointJob {
            floor: segment,
            next_id: self.next_id,
            dirty,
        })
    }

    /// Renames the ready spare segment to `path` (the new segment); `false` if there is none
    /// (or the rename failed, and the new segment is created empty instead).
    fn take_spare(&self, path: &std::path::Path) -> bool {
        if !self.shared.spare_ready.load(Ordering::Acquire) {
            return false;
        }
        // Cleared first: whatever the rename did, the spare is gone or not to be trusted, and
        // the spare thread writes the next one from scratch.
        self.shared.spare_ready.store(false, Ordering::Release);
        self.shared
            .fs
            .rename(&layout::wal_spare(&self.shared.root), path)
            .is_ok()
    }

    /// Persists last-access times, stops the background thread, and checkpoints so the next
    /// open has nothing to replay.
    fn shutdown(&mut self) {
        if let Some((tx, thread)) = self.spare.take() {
            self.shared.spare_stop.store(true, Ordering::Release);
            drop(tx);
            let _ = thread.join();
        }
        if self.shared.failure().is_none() {
            let mut b = Batch::new(self.shared.now(), self.segment, Ahead::default());
            let mut ttl: Vec<Arc<Entry>> = self
                .expiring
                .values()
                .filter(|e| matches!(e.expiry, Expiry::Ttl(_)))
                .cloned()
                .collect();
            ttl.sort_by_key(|e| e.id);
            for entry in ttl {
                touch(&mut b, &entry);
            }
            if !b.buf.is_empty()
                && let Ok(written) = self.write_streams(&b)
                && self.commit(&b, &written, true).is_ok()
            {
                self.install(b, &written);
            }
        }
        if let Some(thread) = self.syncer.take().and_then(Syncer::stop) {
            let _ = thread.join();
        }
        let _ = self.bg_tx.send(BgMsg::Stop);
        if let Some(bg) = self.bg.take() {
            let _ = bg.join();
        }
        // Only now: a checkpoint the background thread finished above may have run long.
        if let Some((stop, thread)) = self.wal_sync.take() {
            drop(stop);
            let _ = thread.join();
        }
        if self.shared.failure().is_some() || (self.wal_len == 0 && self.dirty.is_empty()) {
            return;
        }
        let done = self.rotate().and_then(|job| checkpoint(&self.shared, &job));
        if let Err(f) = done {
            // The WAL still holds everything; the next open replays it.
            self.shared
                .fail(&BatchFailure::new("checkpoint", &f.error).message);
        }
    }
}

/// Creates the fan-out directory of stream `id` if it does not exist yet; the next
/// checkpoint syncs it and its parent.
pub(crate) fn ensure_fanout(
    shared: &Shared,
    fanouts: &mut HashSet<u8>,
    dirty: &mut Dirty,
    id: u64,
) -> io::Result<()> {
    let index = layout::fanout_of(id);
    if fanouts.contains(&index) {
        return Ok(());
    }
    shared
        .fs
        .create_dir_all(&layout::fanout_dir(&shared.root, index))?;
    fanouts.insert(index);
    dirty.dirs.insert(layout::streams_dir(&shared.root));
    Ok(())
}

/// Marks a stream deleted while forks still reference it.
fn soft_delete(b: &mut Batch, entry: &Arc<Entry>) {
    let now = b.now;
    b.emit(entry, Kind::SoftDelete, 0, now, &[], |_| {});
}

/// Removes a stream, cascading up the fork chain through sources that are soft-deleted (or
/// expired) and no longer referenced.
fn remove(shared: &Shared, b: &mut Batch, entry: &Arc<Entry>) {
    let mut next = Some(Arc::clone(entry));
    while let Some(entry) = next.take() {
        let (removed, refs, soft) = {
            let d = b.draft(&entry);
            (d.s.removed, d.fork_refs, d.s.soft_deleted)
        };
        if removed {
            return;
        }
        if refs > 0 {
            if !soft {
                soft_delete(b, &entry);
            }
            return;
        }
        let now = b.now;
        b.emit(&entry, Kind::Delete, 0, now, &[], |_| {});
        // Unmap the name only if it still names this incarnation (after recovery resolved a
        // name collision, an older incarnation may live on for its forks, unnamed).
        let named_here = b
            .named(shared, &entry.name)
            .is_some_and(|e| Arc::ptr_eq(&e, &entry));
        if named_here {
            b.names.insert(entry.name.clone(), None);
        }
        if let Some(link) = &entry.fork {
            let source = Arc::clone(&link.source);
            let d = b.draft(&source);
            d.fork_refs = d.fork_refs.saturating_sub(1);
            let status = source.status(&d.s, now);
            if d.fork_refs == 0 && matches!(status, Status::SoftDeleted | Status::Expired) {
                next = Some(source);
            }
        }
    }
}

/// Records a stream's latest access time if it is newer than what is on disk.
fn touch(b: &mut Batch, entry: &Arc<Entry>) {
    if matches!(b.peek(entry).0, Status::Removed) {
        return;
    }
    let shared_access = entry.lock().s.last_access_ms;
    let d = b.draft(entry);
    d.clear_touch = true;
    let access = d.s.last_access_ms.max(shared_access);
    if access > d.s.persisted_access_ms {
        b.emit(entry, Kind::Touch, 0, access, &[], |_| {});
    }
}

/// The background thread: checkpoints.
fn background(shared: &Arc<Shared>, rx: &mpsc::Receiver<BgMsg>) {
    while let Ok(BgMsg::Checkpoint(job)) = rx.recv() {
        if let Err(f) = checkpoint(shared, &job) {
            if f.retryable() {
                // Nothing was lost: the floor did not move, so the WAL still covers the job.
                // Its files go into the next checkpoint, which the committer starts at its
                // next rotation.
                shared.carry().merge(job.dirty);
            } else {
                shared.fail(&BatchFailure::new("checkpoint", &f.error).message);
            }
        }
        shared.checkpointing.store(false, Ordering::Release);
        shared.checkpoint_done.notify_waiters();
    }
}

/// file-fast: `fdatasync`s the WAL every `fsync_interval` (if it was written) until `stop`
/// is dropped, then once more. Runs on its own thread, so a long checkpoint never delays it.
fn wal_syncer(shared: &Shared, stop: &mpsc::Receiver<()>) {
    let interval = shared.fsync_interval.max(Duration::from_millis(1));
    let mut next_sync = Instant::now() + interval;
    loop {
        match stop.recv_timeout(next_sync.saturating_duration_since(Instant::now())) {
            Err(RecvTimeoutError::Timeout) => {
                let started = Instant::now();
                sync_wal(shared);
                next_sync = started + interval;
            }
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                sync_wal(shared);
                return;
            }
        }
    }
}

/// file-durable: `fdatasync`s the WAL whenever the committer has written a batch since the
/// last sync, and reports each sync to the committer. It goes straight on to the next sync if
/// batches were written during the last one, without waiting for the committer to answer
/// them, so under load the device flushes back to back.
fn syncer(shared: &Shared, work: &SyncWork, commit: &Weak<Commit>) {
    /// However the syncer ends (a failed sync, a stop, a panic), requests stop waiting for it;
    /// after a panic nothing written from now on could become durable, so the store stops.
    struct Stopped<'a>(&'a Weak<Commit>);
    impl Drop for Stopped<'_> {
        fn drop(&mut self) {
            if let Some(commit) = self.0.upgrade() {
                if std::thread::panicking() {
                    commit.shared.fail("the WAL syncer panicked");
                }
                commit.syncer_stopped();
            }
        }
    }
    let _stopped = Stopped(commit);
    let mut synced = 0;
    loop {
        let (wal, seq) = {
            let mut st = work.state();
            while st.written <= synced && !st.stop {
                st.idle = true;
                st = work.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            st.idle = false;
            if st.written <= synced {
                return;
            }
            (Arc::clone(&st.wal), st.written)
        };
        let Some(commit) = commit.upgrade() else {
            return;
        };
        commit.syncing();
        let started = Instant::now();
        let result = wal.sync_data();
        let failed = match &result {
            Ok(()) => {
                shared.stats.synced(started.elapsed());
                false
            }
            Err(e) => {
                // After a failed `fdatasync` the page cache no longer says what is on disk: a
                // later sync could report success for pages that never got there. Stop the
                // store before anyone is answered, and sync nothing more.
                shared.fail(&BatchFailure::sync("sync WAL", e).message);
                true
            }
        };
        synced = seq;
        let report = Request {
            op: Op::Synced { seq, result },
            reply: None,
        };
        commit.report(report);
        if failed {
            return;
        }
    }
}

/// Starts a thread running `run` on a channel's receiving end; it stops when the returned
/// sender is dropped (its receiver then fails).
fn spawn_fed(
    shared: &Arc<Shared>,
    name: &str,
    run: fn(&Shared, &mpsc::Receiver<()>),
) -> io::Result<(mpsc::Sender<()>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let shared = Arc::clone(shared);
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || run(&shared, &rx))?;
    Ok((tx, thread))
}

/// How much a segment that is not a spare takes before a spare is written for it.
const SPARE_AFTER: u64 = 1024 * 1024;

/// The spare thread: writes a spare WAL segment whenever asked and none is ready.
fn spare_writer(shared: &Shared, asks: &mpsc::Receiver<()>) {
    while asks.recv().is_ok() {
        if shared.spare_ready.load(Ordering::Acquire) {
            continue;
        }
        match write_spare(shared) {
            Ok(true) => shared.spare_ready.store(true, Ordering::Release),
            Ok(false) => {}
            Err(_) => {
                // Only an optimisation: the next rotation creates an empty segment. Take back
                // the space (a full disk is the likely cause).
                let _ = shared.fs.remove_file(&layout::wal_spare_tmp(&shared.root));
            }
        }
    }
}

/// Writes `wal/spare.tmp` as `wal_segment_bytes` of zeros, syncs it and renames it to
/// `wal/spare.zero`. `Ok(false)` if the store is shutting down (the part written is left for
/// the next open to remove). It syncs every [`SPARE_SYNC_BYTES`], so the device never has a
/// whole segment of writeback queued in front of a WAL sync.
fn write_spare(shared: &Shared) -> io::Result<bool> {
    /// Bytes per write.
    const CHUNK: u64 = 1024 * 1024;
    /// Bytes written between syncs.
    const SPARE_SYNC_BYTES: u64 = 8 * 1024 * 1024;
    let root = &shared.root;
    let tmp = layout::wal_spare_tmp(root);
    let file = shared.pool.open(&tmp, OpenMode::Truncate)?;
    let len = shared.wal_segment_bytes;
    let zeros = vec![0u8; usize::try_from(CHUNK.min(len)).unwrap_or(1 << 20)];
    let mut pos = 0;
    while pos < len {
        if shared.spare_stop.load(Ordering::Acquire) {
            return Ok(false);
        }
        let n = (len - pos).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], pos)?;
        pos += n;
        if pos.is_multiple_of(SPARE_SYNC_BYTES) {
            file.sync_data()?;
        }
    }
    file.sync_data()?;
    drop(file);
    shared.fs.rename(&tmp, &layout::wal_spare(root))?;
    Ok(true)
}

/// Extends a new WAL segment to its rotation size ahead of the batches (see
/// [`FsFile::reserve`]: the WAL's syncs then need no journal commit for its length). Recovery
/// reads a segment up to its first torn record, and the zeros after the last batch are one.
/// Only an optimisation: if it fails, batches extend the segment as they go.
pub(crate) fn reserve_wal(wal: &dyn FsFile, len: u64) {
    let _ = wal.reserve(len);
}

/// `fdatasync`s the current WAL segment if it was written since the last sync.
fn sync_wal(shared: &Shared) {
    if !shared.wal_dirty.swap(false, Ordering::AcqRel) {
        return;
    }
    let Some(wal) = shared.wal_current().clone() else {
        return;
    };
    let started = Instant::now();
    match wal.sync_data() {
        Ok(()) => shared.stats.synced(started.elapsed()),
        Err(e) => shared.fail(&BatchFailure::new("sync WAL", &e).message),
    }
}

/// Makes everything written before the job's WAL floor durable in the stream files, records
/// the floor, and deletes the WAL segments below it. Until the new `CHECKPOINT` is in place
/// nothing is lost by failing: the old floor still holds, and the WAL still covers the job.
pub(crate) fn checkpoint(
    shared: &Shared,
    job: &CheckpointJob,
) -> std::result::Result<(), CheckpointFailure> {
    let fs = &shared.fs;
    let (made, made_dirs) =
        write_unwritten(shared, &job.dirty.unwritten).map_err(CheckpointFailure::io)?;
    for path in &job.dirty.unlinks {
        match fs.remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CheckpointFailure::io(e)),
        }
    }
    let mut ids: Vec<u64> = job.dirty.streams.iter().copied().chain(made).collect();
    ids.sort_unstable();
    ids.dedup();
    sync_streams(shared, &ids).map_err(CheckpointFailure::sync)?;
    let mut dirs: Vec<&PathBuf> = job.dirty.dirs.iter().chain(&made_dirs).collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        match shared.pool.sync_dir(dir) {
            // A fan-out directory that did not survive a crash holds nothing to persist.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => other.map_err(CheckpointFailure::sync)?,
        }
    }
    write_checkpoint(
        shared,
        Checkpoint {
            wal_floor: job.floor,
            next_stream_id: job.next_id,
        },
    )?;
    remove_segments_below(shared, job.floor).map_err(CheckpointFailure::io)
}

/// Creates the files of streams created without one (see [`Draft::defers_file`]) that are
/// still without one and not removed, each holding its Create record; returns the ids of all
/// those not removed and the directories to sync. A file the committer created meanwhile
/// (because the stream got another record) is synced too: its Create record is in a WAL
/// segment this checkpoint deletes.
///
/// The directory and file are created without the stream's lock (the descriptor pool may
/// wait out a shortage of descriptors, and the committer must not wait on that to install the
/// stream); the lock is taken only to check the stream and write the record. The committer
/// marks a stream removed (under the lock) before it unlinks the file, so if the stream turns
/// out removed by then, the file just created may have missed that unlink: it is removed here,
/// or a later checkpoint would let the Delete go while a file holding the Create stays.
fn write_unwritten(
    shared: &Shared,
    entries: &[Arc<Entry>],
) -> io::Result<(Vec<u64>, HashSet<PathBuf>)> {
    let mut ids = Vec::new();
    let mut dirs = HashSet::new();
    for entry in entries {
        let (removed, unwritten) = {
            let st = entry.lock();
            (st.s.removed, st.unwritten.is_some())
        };
        if removed {
            continue;
        }
        let dir = layout::stream_dir(&shared.root, entry.id);
        let file = if unwritten {
            if !dirs.contains(&dir) {
                shared.fs.create_dir_all(&dir)?;
            }
            Some(shared.pool.get(entry.id, OpenMode::Create)?)
        } else {
            None
        };
        {
            let mut st = entry.lock();
            if !st.s.removed {
                if let (Some(create), Some(file)) = (&st.unwritten, &file) {
                    file.write_all_at(create, 0)?;
                    st.unwritten = None;
                }
                // Reported even when written earlier: a checkpoint that wrote it and then
                // failed (on a full disk) is retried with the same entries and must still
                // sync the file and entry.
                dirs.insert(dir);
                ids.push(entry.id);
                continue;
            }
        }
        if file.is_some() {
            // Removed while the file was being created: the committer's unlink may have come
            // first. Its Delete record is in a segment this checkpoint keeps.
            drop(file);
            shared.pool.remove(entry.id);
            let path = layout::stream_file(&shared.root, entry.id);
            match shared.fs.remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Whichever checkpoint runs next must unlink it before it moves the floor
                    // past the Delete.
                    shared.carry().unlinks.push(path);
                    return Err(e);
                }
            }
            dirs.insert(dir);
        }
    }
    if !ids.is_empty() {
        dirs.insert(layout::streams_dir(&shared.root));
    }
    Ok((ids, dirs))
}

/// Most threads a checkpoint uses to fsync stream files.
const SYNC_THREADS: usize = 16;

/// `fdatasync`s stream files, several at a time: devices and file systems overlap concurrent
/// flushes (and journal commits), so many dirty files sync far faster than one by one.
pub(crate) fn sync_streams(shared: &Shared, ids: &[u64]) -> io::Result<()> {
    let sync_one = |id: u64| match shared.pool.get(id, OpenMode::Existing) {
        Ok(file) => file.sync_data(),
        // Deleted since; its Delete record is in a newer segment.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    let threads = (ids.len() / 64).clamp(1, SYNC_THREADS);
    if threads == 1 {
        return ids.iter().try_for_each(|id| sync_one(*id));
    }
    let chunk = ids.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = ids
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().try_for_each(|id| sync_one(*id))))
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|_| Err(io::Error::other("a checkpoint sync thread panicked")))
        })
    })
}

/// Replaces the CHECKPOINT file atomically.
pub(crate) fn write_checkpoint(
    shared: &Shared,
    ckpt: Checkpoint,
) -> std::result::Result<(), CheckpointFailure> {
    let root = &shared.root;
    let tmp = layout::checkpoint_tmp(root);
    let file = shared
        .pool
        .open(&tmp, OpenMode::Truncate)
        .map_err(CheckpointFailure::io)?;
    file.write_all_at(&ckpt.encode(), 0)
        .map_err(CheckpointFailure::io)?;
    file.sync_data().map_err(CheckpointFailure::sync)?;
    drop(file);
    shared
        .fs
        .rename(&tmp, &layout::checkpoint_file(root))
        .map_err(CheckpointFailure::io)?;
    shared.pool.sync_dir(root).map_err(CheckpointFailure::sync)
}

/// Deletes WAL segments numbered below `floor` (already obsolete by the CHECKPOINT file).
pub(crate) fn remove_segments_below(shared: &Shared, floor: u64) -> io::Result<()> {
    let dir = layout::wal_dir(&shared.root);
    for name in shared.pool.list_dir(&dir)? {
        if let Some(seg) = layout::parse_wal_segment(&name)
            && seg < floor
        {
            match shared.fs.remove_file(&dir.join(&name)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u64, result: io::Result<()>) -> Request {
        Request {
            op: Op::Synced { seq, result },
            reply: None,
        }
    }

    /// The committer may find two of the syncer's reports queued at once; a failure in the
    /// first must survive a success in the second (which a failed `fdatasync` can be followed
    /// by, for pages it marked clean without writing).
    #[test]
    fn a_failed_sync_is_not_hidden_by_a_later_report() {
        let mut g = Gathered {
            requests: Vec::new(),
            synced: None,
            size: 0,
            stop: false,
        };
        g.take(report(5, Err(io::Error::from_raw_os_error(5))));
        g.take(report(6, Ok(())));
        let (seq, result) = g.synced.expect("a report");
        assert_eq!(seq, 6);
        assert!(result.is_err(), "the failure stays");
        assert!(g.requests.is_empty());

        g.synced = None;
        g.take(report(7, Ok(())));
        g.take(report(8, Ok(())));
        assert!(matches!(g.synced, Some((8, Ok(())))));
    }
}
