//! Group commit: one committer thread per shard applies every queued operation of its shard
//! in one write transaction and commits it once, with `Durability::Immediate` (fsync). In
//! bulk-load mode ([`AcidOptions::bulk_load`](crate::AcidOptions::bulk_load)) batches commit
//! with `Durability::None` instead, and the committer's last act is one durable commit that
//! syncs them all (`sync_bulk_load`).
//!
//! The loop: block for the first operation, take every other one already queued (that is the
//! batch: while one commit runs the next batch accumulates, so batches grow with load and no
//! timer is involved), apply them in arrival order, commit, then
//!
//! 1. write the new committed state into the cache entries (tails, writer state) and the
//!    stream maps (created and removed streams), and release fork references,
//! 2. answer every waiter,
//! 3. only then publish the new [`Tail`](ds_storage::Tail)s, so live readers only ever see
//!    committed data.
//!
//! Shards commit independently and concurrently, without a limit: concurrent syncs to one
//! disk overlap (the kernel merges their cache flushes), and what a sync costs is mostly the
//! pages it writes back — about one leaf per appended stream plus the branches above and
//! redb's bookkeeping, some 16 pages for a batch of 9 appends. Batches are bounded by the
//! operations queued for one shard, so fewer shards mean bigger batches and fewer pages per
//! operation; more shards mean more commits in flight. `examples/group_commit.rs` measures
//! the trade-off (64 writers, 1,000 streams): 4 shards carry about 9 appends per commit and
//! sustain the most appends per second on a virtual disk, 16 shards only 2.6 (see the
//! README). Bounding the commits in flight (tried: at most 2, 4 or 8 shards at once) or
//! holding a small batch back for more work (tried: 50-200 µs when the queue is under half
//! the previous batch) grew the batches but never the throughput.
//!
//! Each operation is validated with the shared [`rules`] against the state as updated by the
//! earlier operations of the same batch (a per-batch overlay, [`Pending`]), and writes nothing
//! unless it passes: a rejected operation gets its error and the others commit. Only a failure
//! of redb itself fails the whole batch; then the overlay is dropped, the changes made before
//! commit to shared flags are undone, and every waiter of the batch gets the error.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use ds_protocol::{Expiry, Offset, StreamName, content_type, fork_expiry};
use ds_storage::rules::{self, AppendPlan, WriterState};
use ds_storage::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, Error, ForkRequest, ProducerAck,
    Result, StreamInfo,
};
use redb::{Durability, ReadableTable, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use crate::cache::{self, Entry, ForkLink, NewEntry, Status};
use crate::error::Failure;
use crate::read::Reader;
use crate::schema::{
    KEY_NEXT_ID, META, PRODUCERS, RECORDS, STREAMS, StoredFork, StreamMeta, encode_record,
    stream_id,
};
use crate::shard::{Shard, Shared};

/// Upper bound on operations in one transaction.
const MAX_BATCH_OPS: usize = 4096;
/// Upper bound on payload bytes in one transaction (a batch may exceed it by one operation).
const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;
/// How often a committer whose shard a full disk broke tries to reopen its database while no
/// batch comes.
const REOPEN_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// Where a waiter's answer goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// An operation for a shard's committer.
pub(crate) enum Op {
    /// Create a stream (or a fork) in this shard.
    Create {
        name: StreamName,
        req: CreateRequest,
        reply: Reply<CreateOutcome>,
    },
    /// Append to (and/or close) a stream of this shard. `messages` is the body already split
    /// (and JSON-validated) off the committer.
    Append {
        entry: Arc<Entry>,
        req: AppendRequest,
        messages: Result<Vec<Bytes>>,
        reply: Reply<AppendOutcome>,
    },
    /// Delete (or soft-delete) a stream of this shard.
    Delete { name: StreamName, reply: Reply<()> },
    /// Replace a stream's writer state (`Storage::restore_writer`): its row's writer fields
    /// and all its producer rows.
    RestoreWriter {
        entry: Arc<Entry>,
        writer: Box<WriterState>,
        reply: Reply<()>,
    },
    /// Soft-delete or remove a stream that expired or lost its last fork.
    Reclaim {
        entry: Arc<Entry>,
        reply: Option<Reply<Status>>,
    },
    /// Persist a stream's last access (a read slid its TTL).
    Touch { entry: Arc<Entry> },
    /// Finish the current batch and stop.
    Shutdown { done: oneshot::Sender<()> },
}

impl Op {
    fn payload_len(&self) -> usize {
        match self {
            Op::Append { req, .. } => req.body.len(),
            Op::Create { req, .. } => req.body.len(),
            _ => 0,
        }
    }
}

/// Starts shard `index`'s committer thread.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    index: usize,
    rx: mpsc::UnboundedReceiver<Op>,
    next_counter: u64,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("ds-acid-commit-{index:02x}"))
        .spawn(move || run(shared, index, rx, next_counter))
        .map(drop)
}

fn run(shared: Arc<Shared>, index: usize, mut rx: mpsc::UnboundedReceiver<Op>, next: u64) {
    let mut next_counter = next;
    let mut done = None;
    loop {
        let own = &shared.shards[index];
        let first = if own.needs_reopen() {
            // A full disk broke the shard and its database could not be reopened yet: try
            // again on a timer, not only when a batch comes, so reads work again (and
            // `is_ready` turns true) once space is freed even if nobody writes.
            match rx.try_recv() {
                Ok(op) => op,
                Err(mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(REOPEN_RETRY);
                    if own.needs_reopen() && rx.is_empty() {
                        let _ = own.reopen(next_counter);
                    }
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        } else {
            match rx.blocking_recv() {
                Some(op) => op,
                None => break,
            }
        };
        let mut bytes = first.payload_len();
        let mut ops = vec![first];
        while ops.len() < MAX_BATCH_OPS && bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(op) => {
                    bytes += op.payload_len();
                    ops.push(op);
                }
                Err(_) => break,
            }
        }
        if let Some(at) = ops.iter().position(|op| matches!(op, Op::Shutdown { .. })) {
            // Operations queued after a shutdown are dropped; their waiters see the store
            // closed. Only the handle being dropped or closed sends a shutdown.
            if let Some(Op::Shutdown { done: d }) = ops.drain(at..).next() {
                done = Some(d);
            }
            run_batch(&shared, index, &mut next_counter, ops);
            if shared.bulk_load {
                sync_bulk_load(&shared.shards[index]);
            }
            break;
        }
        run_batch(&shared, index, &mut next_counter, ops);
    }
    // Release the databases before saying we are done, so a reopen finds the files unlocked.
    drop(rx);
    drop(shared);
    if let Some(done) = done {
        let _ = done.send(());
    }
}

/// Why an operation did not apply: its own protocol error, or a redb failure that sinks the
/// whole batch.
enum Fail {
    Rejected(Error),
    Fatal(Failure),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Rejected(e)
    }
}

impl From<Failure> for Fail {
    fn from(f: Failure) -> Fail {
        Fail::Fatal(f)
    }
}

/// A stream's state as updated by this batch so far.
struct Pending {
    entry: Arc<Entry>,
    tail: Offset,
    bytes: u64,
    writer: WriterState,
    /// Rewrite the `streams` row at the end of the batch.
    meta_dirty: bool,
    producers_dirty: Vec<String>,
    /// Whether and when to wake the stream's live readers after commit.
    publish: Publish,
    removed: bool,
    /// The `last_access_ms` written with the row.
    access_written: Option<u64>,
}

/// When a committed batch wakes a stream's live readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Publish {
    /// Not at all: nothing they see changed.
    No,
    /// After the writers are answered (appends: answering first keeps their latency low).
    AfterAnswers,
    /// Before the writers are answered: `restore_writer` promises that a closure it applies
    /// is seen by live readers when it returns. (Publishing again after is a no-op.)
    BeforeAnswers,
}

/// A change to shared entry flags made before commit, undone if the commit fails.
enum Undo {
    SoftDeleted(Arc<Entry>),
    Removed(Arc<Entry>),
    Reserved(Arc<Entry>),
}

/// A change to the stream maps, applied after commit.
enum After {
    Insert(Arc<Entry>),
    Remove(Arc<Entry>),
}

/// A waiter and its answer.
enum Answer {
    Create(Reply<CreateOutcome>, Result<CreateOutcome>),
    Append(Reply<AppendOutcome>, Result<AppendOutcome>),
    Delete(Reply<()>, Result<()>),
    Restore(Reply<()>, Result<()>),
    Reclaim(Reply<Status>, Result<Status>),
}

impl Answer {
    fn send(self) {
        // A waiter that went away (its request was cancelled) needs no answer.
        match self {
            Answer::Create(tx, r) => drop(tx.send(r)),
            Answer::Append(tx, r) => drop(tx.send(r)),
            Answer::Delete(tx, r) | Answer::Restore(tx, r) => drop(tx.send(r)),
            Answer::Reclaim(tx, r) => drop(tx.send(r)),
        }
    }

    fn fail(self, failure: &Failure) -> Answer {
        match self {
            Answer::Create(tx, _) => Answer::Create(tx, Err(failure.to_error())),
            Answer::Append(tx, _) => Answer::Append(tx, Err(failure.to_error())),
            Answer::Delete(tx, _) => Answer::Delete(tx, Err(failure.to_error())),
            Answer::Restore(tx, _) => Answer::Restore(tx, Err(failure.to_error())),
            Answer::Reclaim(tx, _) => Answer::Reclaim(tx, Err(failure.to_error())),
        }
    }
}

/// The open tables of a write transaction.
struct Tables<'t> {
    meta: redb::Table<'t, &'static str, u64>,
    streams: redb::Table<'t, &'static str, &'static [u8]>,
    producers: redb::Table<'t, (u64, &'static str), (u64, u64)>,
    records: redb::Table<'t, (u64, u64), &'static [u8]>,
}

impl<'t> Tables<'t> {
    fn open(txn: &'t WriteTransaction) -> Result<Tables<'t>, Failure> {
        let open = |e| Failure::new("open tables", e);
        Ok(Tables {
            meta: txn.open_table(META).map_err(open)?,
            streams: txn.open_table(STREAMS).map_err(open)?,
            producers: txn.open_table(PRODUCERS).map_err(open)?,
            records: txn.open_table(RECORDS).map_err(open)?,
        })
    }
}

fn run_batch(shared: &Shared, index: usize, next_counter: &mut u64, ops: Vec<Op>) {
    if ops.is_empty() {
        return;
    }
    let own = &shared.shards[index];
    let mut batch = Batch {
        shared,
        index,
        now: shared.now(),
        next_counter: *next_counter,
        counter_dirty: false,
        pending: HashMap::new(),
        names: HashMap::new(),
        undo: Vec::new(),
        after: Vec::new(),
        answers: Vec::new(),
    };
    // Whether the failure came from `commit` itself, which may have reached the disk.
    let mut in_commit = false;
    let failure = match begin_write(own, *next_counter) {
        Err(failure) => {
            for op in ops {
                batch.skip(op);
            }
            Some(failure)
        }
        Ok(mut txn) => {
            let mut failure = txn
                .set_durability(batch_durability(shared))
                .err()
                .map(|e| Failure::new("set durability", e));
            if failure.is_none() {
                match Tables::open(&txn) {
                    Err(f) => failure = Some(f),
                    Ok(mut tables) => {
                        for op in ops {
                            if failure.is_some() {
                                batch.skip(op);
                            } else if let Err(f) = batch.apply(&mut tables, op) {
                                failure = Some(f);
                            }
                        }
                        if failure.is_none() {
                            failure = batch.flush(&mut tables).err();
                        }
                    }
                }
            } else {
                for op in ops {
                    batch.skip(op);
                }
            }
            match failure {
                None => {
                    let started = Instant::now();
                    let result = txn.commit();
                    if result.is_ok() && !shared.bulk_load {
                        own.count_sync(started);
                    }
                    in_commit = result.is_err();
                    result.err().map(|e| Failure::new("commit", e))
                }
                Some(f) => {
                    // Nothing of the batch may land. Dropping the transaction aborts it, and
                    // unlike `abort()` it also copes with a storage failure inside the
                    // transaction (redb asserts in `abort()` after a failed file growth, a
                    // full disk).
                    drop(txn);
                    Some(f)
                }
            }
        }
    };
    match failure {
        None => {
            own.commits.fetch_add(1, Ordering::Relaxed);
            own.ops
                .fetch_add(batch.answers.len() as u64, Ordering::Relaxed);
            *next_counter = batch.next_counter;
            batch.committed();
        }
        Some(failure) => {
            if failure.is_io() {
                let mut failed = own
                    .failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                failed.get_or_insert_with(|| failure.clone());
            }
            let counter = *next_counter;
            batch.failed(&failure, || {
                if !failure.is_full() {
                    return None;
                }
                // redb now refuses every read of this database too: reopen it before
                // answering, so a client told "storage full" can read the stream at once.
                // If the disk is too full even for that, the committer retries.
                let reopened = own.reopen(counter);
                match reopened {
                    // A commit that failed may still have reached the disk (its header
                    // written, the fsync failed): only the reopened database, checked
                    // against the committed state, says that nothing was written.
                    Err(why) if in_commit => Some(failure.outcome_unknown(&why)),
                    _ => None,
                }
            });
        }
    }
}

/// How a batch commits: synced, or not at all in bulk-load mode.
fn batch_durability(shared: &Shared) -> Durability {
    if shared.bulk_load {
        Durability::None
    } else {
        Durability::Immediate
    }
}

/// Ends a committer in bulk-load mode: one empty transaction committed with
/// `Durability::Immediate` makes every earlier unsynced commit of the shard durable (redb
/// persists them with the next durable commit). Skipped when a failure broke the shard: its
/// database then holds its last durable state. Nobody is left to tell of a failure; redb
/// tries the same once more when the database closes.
fn sync_bulk_load(own: &Shard) {
    if own.failure().is_some() {
        return;
    }
    let Ok(db) = own.db() else {
        return;
    };
    let Ok(mut txn) = db.begin_write() else {
        return;
    };
    if txn.set_durability(Durability::Immediate).is_err() {
        return;
    }
    let started = Instant::now();
    if txn.commit().is_ok() {
        own.count_sync(started);
    }
}

/// Begins the batch's write transaction, unless an I/O failure broke the shard. A shard a full
/// disk broke reopens first, before each batch until that succeeds: once space is freed,
/// writes carry on without a restart.
fn begin_write(own: &Shard, next_counter: u64) -> Result<WriteTransaction, Failure> {
    if let Some(broken) = own.failure()
        && !(own.needs_reopen() && own.reopen(next_counter).is_ok())
    {
        return Err(broken);
    }
    own.db()?
        .begin_write()
        .map_err(|e| Failure::new("begin write transaction", e))
}

struct Batch<'s> {
    shared: &'s Shared,
    index: usize,
    now: u64,
    next_counter: u64,
    counter_dirty: bool,
    /// Streams touched by this batch, by id.
    pending: HashMap<u64, Pending>,
    /// Names created (`Some`) or removed (`None`) by this batch.
    names: HashMap<StreamName, Option<Arc<Entry>>>,
    undo: Vec<Undo>,
    after: Vec<After>,
    answers: Vec<Answer>,
}

impl Batch<'_> {
    /// Applies one operation and queues its answer. `Err` only for a redb failure, which
    /// sinks the batch (the operation's answer is queued anyway, to be failed).
    fn apply(&mut self, t: &mut Tables<'_>, op: Op) -> Result<(), Failure> {
        match op {
            Op::Create { name, req, reply } => {
                let r = self.create(t, &name, &req);
                self.answer(r, |r| Answer::Create(reply, r))
            }
            Op::Append {
                entry,
                req,
                messages,
                reply,
            } => {
                let r = self.append(t, &entry, &req, messages);
                self.answer(r, |r| Answer::Append(reply, r))
            }
            Op::Delete { name, reply } => {
                let r = self.delete(t, &name);
                self.answer(r, |r| Answer::Delete(reply, r))
            }
            Op::RestoreWriter {
                entry,
                writer,
                reply,
            } => {
                let r = self.restore_writer(t, &entry, *writer);
                self.answer(r, |r| Answer::Restore(reply, r))
            }
            Op::Reclaim { entry, reply } => {
                let r = self.reclaim(t, &entry);
                match reply {
                    Some(reply) => self.answer(r, |r| Answer::Reclaim(reply, r)),
                    None => match r {
                        Err(Fail::Fatal(f)) => Err(f),
                        _ => Ok(()),
                    },
                }
            }
            Op::Touch { entry } => {
                if !entry.lock().removed {
                    self.pending(&entry).meta_dirty = true;
                }
                Ok(())
            }
            Op::Shutdown { .. } => Ok(()),
        }
    }

    fn answer<T>(
        &mut self,
        result: Result<T, Fail>,
        make: impl FnOnce(Result<T>) -> Answer,
    ) -> Result<(), Failure> {
        match result {
            Ok(v) => {
                self.answers.push(make(Ok(v)));
                Ok(())
            }
            Err(Fail::Rejected(e)) => {
                self.answers.push(make(Err(e)));
                Ok(())
            }
            Err(Fail::Fatal(f)) => {
                self.answers.push(make(Err(f.to_error())));
                Err(f)
            }
        }
    }

    /// Queues an answer for an operation that was not applied because the batch failed.
    fn skip(&mut self, op: Op) {
        // The placeholder error is replaced by the batch's failure before anyone sees it.
        match op {
            Op::Create { reply, .. } => self
                .answers
                .push(Answer::Create(reply, Err(Error::NotFound))),
            Op::Append { reply, .. } => self
                .answers
                .push(Answer::Append(reply, Err(Error::NotFound))),
            Op::Delete { reply, .. } => self
                .answers
                .push(Answer::Delete(reply, Err(Error::NotFound))),
            Op::RestoreWriter { reply, .. } => self
                .answers
                .push(Answer::Restore(reply, Err(Error::NotFound))),
            Op::Reclaim {
                reply: Some(reply), ..
            } => self
                .answers
                .push(Answer::Reclaim(reply, Err(Error::NotFound))),
            Op::Reclaim { reply: None, .. } | Op::Touch { .. } | Op::Shutdown { .. } => {}
        }
    }

    /// The batch's view of a stream, starting from its committed state.
    fn pending(&mut self, entry: &Arc<Entry>) -> &mut Pending {
        self.pending.entry(entry.id).or_insert_with(|| {
            let st = entry.lock();
            Pending {
                entry: Arc::clone(entry),
                tail: st.tail,
                bytes: st.bytes,
                writer: st.writer.clone(),
                meta_dirty: false,
                producers_dirty: Vec::new(),
                publish: Publish::No,
                removed: false,
                access_written: None,
            }
        })
    }

    /// The entry holding `name` as this batch sees it.
    fn lookup_name(&self, name: &StreamName) -> Option<Arc<Entry>> {
        match self.names.get(name) {
            Some(entry) => entry.clone(),
            None => self.shared.shards[self.index].map().get(name).cloned(),
        }
    }

    fn status(&self, entry: &Entry) -> Status {
        entry.status(&entry.lock(), self.now)
    }

    fn info(&mut self, entry: &Arc<Entry>) -> StreamInfo {
        let p = self.pending(entry);
        let (tail, closed, bytes) = (p.tail, p.writer.closed, p.bytes);
        StreamInfo {
            name: entry.name.clone(),
            stream_id: entry.id,
            content_type: entry.content_type.clone(),
            expiry: entry.expiry,
            next: tail,
            closed,
            bytes,
            forked_from: entry.fork.as_ref().map(|l| l.source.name.clone()),
        }
    }

    fn create(
        &mut self,
        t: &mut Tables<'_>,
        name: &StreamName,
        req: &CreateRequest,
    ) -> Result<CreateOutcome, Fail> {
        // An existing stream: idempotent success or conflict. No body is written.
        if let Some(existing) = self.lookup_name(name) {
            let mut status = self.status(&existing);
            if status == Status::NeedsReclaim {
                status = self.reclaim(t, &existing)?;
            }
            match status {
                Status::Live => {
                    let closed = self.pending(&existing).writer.closed;
                    rules::check_create_matches(&existing.existing_config(closed), req)?;
                    return Ok(CreateOutcome::Existed(self.info(&existing)));
                }
                Status::Gone => return Err(Error::NameHeldBySoftDeleted.into()),
                // Deleted or expired and reclaimed just now: create afresh.
                Status::Missing | Status::NeedsReclaim => {}
            }
        }

        let (fork, content_type, expiry, base) = match &req.fork {
            None => (
                None,
                rules::effective_content_type(req.content_type.as_deref()),
                req.expiry,
                Offset::ZERO,
            ),
            Some(f) => {
                let (link, base, expiry) = self.resolve_fork(t, f, req)?;
                let content_type = link.source.content_type.clone();
                (Some(link), content_type, expiry, base)
            }
        };
        let messages = rules::split_body(&content_type, &req.body, true)?;
        let len: u64 = messages.iter().map(|m| m.len() as u64).sum();
        if let Some(limit) = self.shared.max_stream_bytes
            && len > limit
        {
            return Err(Error::StreamTooLarge { limit }.into());
        }

        // The fork's reference is taken last, under the source's lock: a delete of the source
        // (in any shard) either saw it and soft-deleted, or marked the source first and we
        // fail here.
        if let Some(link) = &fork {
            let mut src = link.source.lock();
            if src.removed || src.soft_deleted {
                return Err(Error::ForkSourceGone.into());
            }
            src.fork_refs += 1;
            drop(src);
            self.undo.push(Undo::Reserved(Arc::clone(&link.source)));
        }
        let id = stream_id(self.next_counter, self.index);
        self.next_counter += 1;
        self.counter_dirty = true;
        let writer = WriterState {
            closed: req.closed,
            ..WriterState::default()
        };
        let tail = write_records(t, id, base, messages)?;
        let entry = NewEntry {
            name: name.clone(),
            id,
            shard: self.index,
            content_type,
            expiry,
            base,
            fork,
            tail,
            bytes: len,
            writer,
            last_access_ms: self.now,
            soft_deleted: false,
        }
        .build();
        self.pending(&entry).meta_dirty = true;
        self.names.insert(name.clone(), Some(Arc::clone(&entry)));
        self.after.push(After::Insert(Arc::clone(&entry)));
        Ok(CreateOutcome::Created(self.info(&entry)))
    }

    /// Resolves a fork request against its live source (read at its committed state): the
    /// link, the fork's first own position, and its expiry (the table of section 4.2).
    fn resolve_fork(
        &mut self,
        t: &mut Tables<'_>,
        f: &ForkRequest,
        req: &CreateRequest,
    ) -> Result<(ForkLink, Offset, Expiry), Fail> {
        let source = self
            .shared
            .lookup(&f.source)
            .ok_or(Error::ForkSourceNotFound)?;
        let mut status = self.status(&source);
        if status == Status::NeedsReclaim {
            if source.shard == self.index {
                status = self.reclaim(t, &source)?;
            } else {
                // Reclaiming belongs to the source's committer; answer as it will decide.
                status = if source.lock().fork_refs > 0 {
                    Status::Gone
                } else {
                    Status::Missing
                };
                let _ = self.shared.shards[source.shard].tx.send(Op::Reclaim {
                    entry: Arc::clone(&source),
                    reply: None,
                });
            }
        }
        match status {
            Status::Live => {}
            Status::Gone => return Err(Error::ForkSourceGone.into()),
            Status::Missing | Status::NeedsReclaim => return Err(Error::ForkSourceNotFound.into()),
        }
        if let Some(ct) = &req.content_type
            && !content_type::matches(ct, &source.content_type)
        {
            return Err(Error::ContentTypeMismatch {
                expected: source.content_type.clone(),
                actual: ct.clone(),
            }
            .into());
        }
        let source_tail = source.lock().tail;
        let anchor = f.offset.unwrap_or(source_tail);
        let mut reader = Reader::new(self.shared);
        let located = reader.locate(&source, anchor)?;
        let base = if f.sub_offset == 0 {
            anchor
        } else {
            located.check_sub_offset(f.sub_offset, source.json)?;
            if source.json {
                reader.json_position(&source, anchor, f.sub_offset)?
            } else {
                Offset::new(anchor.seq + 1, anchor.byte + f.sub_offset)
            }
        };
        let expiry = fork_expiry(source.expiry, req.expiry);
        let link = ForkLink {
            source,
            anchor,
            sub_offset: f.sub_offset,
        };
        Ok((link, base, expiry))
    }

    fn append(
        &mut self,
        t: &mut Tables<'_>,
        entry: &Arc<Entry>,
        req: &AppendRequest,
        messages: Result<Vec<Bytes>>,
    ) -> Result<AppendOutcome, Fail> {
        {
            // A delete may have won the race since the caller looked the stream up.
            let st = entry.lock();
            if st.removed {
                return Err(Error::NotFound.into());
            }
            if st.soft_deleted {
                return Err(Error::Gone.into());
            }
        }
        let limit = self.shared.max_stream_bytes;
        let now = self.now;
        let p = self.pending(entry);
        let plan = rules::plan_append(&p.writer, &entry.content_type, p.tail, req, &messages)?;
        let producer = match &plan {
            AppendPlan::Duplicate(ack) => {
                return Ok(AppendOutcome::Duplicate {
                    next: p.tail,
                    closed: p.writer.closed,
                    producer: *ack,
                });
            }
            AppendPlan::AlreadyClosed => return Ok(AppendOutcome::AlreadyClosed { next: p.tail }),
            AppendPlan::Write { producer, .. } => producer.clone(),
        };
        let messages = messages?;
        let len: u64 = messages.iter().map(|m| m.len() as u64).sum();
        if let Some(limit) = limit
            && p.bytes + len > limit
        {
            return Err(Error::StreamTooLarge { limit }.into());
        }
        p.tail = write_records(t, entry.id, p.tail, messages)?;
        p.bytes += len;
        rules::apply_append(&mut p.writer, req, &plan);
        if let Some((id, _)) = &producer {
            p.producers_dirty.push(id.clone());
        }
        // A plain append writes only its records: the tail and byte count are recovered from
        // the last record at open. The row changes with `Stream-Seq`, closure, and for a
        // sliding TTL (the last write must survive a restart).
        p.meta_dirty |=
            req.stream_seq.is_some() || req.close || matches!(entry.expiry, Expiry::Ttl(_));
        p.publish = p.publish.max(Publish::AfterAnswers);
        let (next, closed) = (p.tail, p.writer.closed);
        entry.lock().last_access_ms = now;
        Ok(AppendOutcome::Appended {
            next,
            closed,
            producer: producer.map(|(_, s)| ProducerAck {
                epoch: s.epoch,
                seq: s.last_seq,
            }),
        })
    }

    /// Replaces a stream's writer state: the row's closure, closing producer and `Stream-Seq`
    /// are rewritten at flush, and its producer rows are replaced here (all deleted, the new
    /// ones written at flush), in this batch's transaction.
    fn restore_writer(
        &mut self,
        t: &mut Tables<'_>,
        entry: &Arc<Entry>,
        writer: WriterState,
    ) -> Result<(), Fail> {
        {
            // A delete may have won the race since the caller looked the stream up.
            let st = entry.lock();
            if st.removed {
                return Err(Error::NotFound.into());
            }
            if st.soft_deleted {
                return Err(Error::Gone.into());
            }
        }
        let id = entry.id;
        let p = self.pending(entry);
        rules::check_restore(&p.writer, &writer, p.tail)?;
        t.producers
            .retain_in((id, "")..(id.saturating_add(1), ""), |_, _| false)
            .map_err(|e| Failure::new("replace producer rows", e))?;
        p.producers_dirty = writer.producers.keys().cloned().collect();
        p.writer = writer;
        p.meta_dirty = true;
        p.publish = Publish::BeforeAnswers;
        Ok(())
    }

    fn delete(&mut self, t: &mut Tables<'_>, name: &StreamName) -> Result<(), Fail> {
        let entry = self.lookup_name(name).ok_or(Error::NotFound)?;
        let mut status = self.status(&entry);
        if status == Status::NeedsReclaim {
            status = self.reclaim(t, &entry)?;
        }
        match status {
            Status::Live => {}
            Status::Gone => return Err(Error::Gone.into()),
            Status::Missing | Status::NeedsReclaim => return Err(Error::NotFound.into()),
        }
        // One decision under the lock: a fork reserving its reference concurrently either
        // came first (soft delete) or finds the stream removed.
        let soft = {
            let mut st = entry.lock();
            if st.fork_refs > 0 {
                st.soft_deleted = true;
            } else {
                st.removed = true;
            }
            st.soft_deleted
        };
        if soft {
            self.undo.push(Undo::SoftDeleted(Arc::clone(&entry)));
            let p = self.pending(&entry);
            p.meta_dirty = true;
            p.publish = p.publish.max(Publish::AfterAnswers);
        } else {
            self.remove_rows(t, &entry)?;
        }
        Ok(())
    }

    /// Soft-deletes (while forks reference it) or removes a stream that expired or was
    /// soft-deleted; returns what it is now. A stream that is neither (a read slid its TTL
    /// since) is left alone and `Live`.
    fn reclaim(&mut self, t: &mut Tables<'_>, entry: &Arc<Entry>) -> Result<Status, Fail> {
        enum Decision {
            Keep(Status),
            SoftDelete,
            Remove,
        }
        let decision = {
            let mut st = entry.lock();
            if st.removed {
                Decision::Keep(Status::Missing)
            } else if !entry.reclaimable(&st, self.now) {
                Decision::Keep(Status::Live)
            } else if st.fork_refs > 0 {
                if st.soft_deleted {
                    Decision::Keep(Status::Gone)
                } else {
                    st.soft_deleted = true;
                    Decision::SoftDelete
                }
            } else {
                st.removed = true;
                Decision::Remove
            }
        };
        match decision {
            Decision::Keep(status) => Ok(status),
            Decision::SoftDelete => {
                self.undo.push(Undo::SoftDeleted(Arc::clone(entry)));
                let p = self.pending(entry);
                p.meta_dirty = true;
                p.publish = p.publish.max(Publish::AfterAnswers);
                Ok(Status::Gone)
            }
            Decision::Remove => {
                self.remove_rows(t, entry)?;
                Ok(Status::Missing)
            }
        }
    }

    /// Deletes every row of a stream already marked removed.
    fn remove_rows(&mut self, t: &mut Tables<'_>, entry: &Arc<Entry>) -> Result<(), Failure> {
        self.undo.push(Undo::Removed(Arc::clone(entry)));
        let id = entry.id;
        let fail = |e| Failure::new("delete stream rows", e);
        let holds_name = match t.streams.get(entry.name.as_str()).map_err(fail)? {
            Some(row) => StreamMeta::decode(row.value()).is_some_and(|m| m.id == id),
            None => false,
        };
        if holds_name {
            t.streams.remove(entry.name.as_str()).map_err(fail)?;
        }
        t.records
            .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
            .map_err(fail)?;
        t.producers
            .retain_in((id, "")..(id.saturating_add(1), ""), |_, _| false)
            .map_err(fail)?;
        if self
            .lookup_name(&entry.name)
            .is_some_and(|e| Arc::ptr_eq(&e, entry))
        {
            self.names.insert(entry.name.clone(), None);
        }
        let p = self.pending(entry);
        p.removed = true;
        p.publish = p.publish.max(Publish::AfterAnswers);
        self.after.push(After::Remove(Arc::clone(entry)));
        Ok(())
    }

    /// Writes each touched stream's row and producers once, and the id counter.
    fn flush(&mut self, t: &mut Tables<'_>) -> Result<(), Failure> {
        let fail = |e| Failure::new("write stream metadata", e);
        for p in self.pending.values_mut() {
            if p.removed {
                continue;
            }
            let entry = &p.entry;
            if p.meta_dirty {
                let (last_access_ms, soft_deleted) = {
                    let st = entry.lock();
                    (st.last_access_ms, st.soft_deleted)
                };
                let meta = StreamMeta {
                    id: entry.id,
                    last_access_ms,
                    closed: p.writer.closed,
                    soft_deleted,
                    base: entry.base,
                    tail: p.tail,
                    bytes: p.bytes,
                    expiry: entry.expiry,
                    content_type: entry.content_type.clone(),
                    last_stream_seq: p.writer.last_stream_seq.clone(),
                    closed_by: p.writer.closed_by.clone(),
                    fork: entry.fork.as_ref().map(|l| StoredFork {
                        source: l.source.name.as_str().to_owned(),
                        source_id: l.source.id,
                        anchor: l.anchor,
                        sub_offset: l.sub_offset,
                    }),
                };
                t.streams
                    .insert(entry.name.as_str(), meta.encode().as_slice())
                    .map_err(fail)?;
                p.access_written = Some(last_access_ms);
            }
            for producer in p.producers_dirty.drain(..) {
                if let Some(s) = p.writer.producers.get(&producer) {
                    t.producers
                        .insert((entry.id, producer.as_str()), (s.epoch, s.last_seq))
                        .map_err(fail)?;
                }
            }
        }
        if self.counter_dirty {
            t.meta
                .insert(KEY_NEXT_ID, self.next_counter)
                .map_err(|e| Failure::new("write id counter", e))?;
        }
        Ok(())
    }

    /// After a successful commit: make the batch visible, answer, then wake live readers.
    fn committed(self) {
        let shard = &self.shared.shards[self.index];
        let mut reclaim = Vec::new();
        for p in self.pending.values() {
            if p.removed {
                continue;
            }
            let mut st = p.entry.lock();
            st.tail = p.tail;
            shard.set_bytes(&mut st, p.bytes);
            st.writer.clone_from(&p.writer);
            if let Some(at) = p.access_written {
                st.persisted_access_ms = at;
                st.touch_queued = false;
            }
            if st.soft_deleted && !st.soft_delete_durable {
                st.soft_delete_durable = true;
                shard.recount(&mut st, false);
                // Its last fork may have gone while the soft delete was being committed.
                drop(st);
                reclaim.extend(cache::release_source(&p.entry, self.now));
            }
        }
        for after in self.after {
            match after {
                After::Insert(entry) => {
                    {
                        let mut st = entry.lock();
                        let live = !(st.removed || st.soft_deleted);
                        shard.recount(&mut st, live);
                    }
                    shard.map_mut().insert(entry.name.clone(), entry);
                }
                After::Remove(entry) => {
                    shard.recount(&mut entry.lock(), false);
                    {
                        let mut map = shard.map_mut();
                        if map.get(&entry.name).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                            map.remove(&entry.name);
                        }
                    }
                    reclaim.extend(cache::release_source(&entry, self.now));
                }
            }
        }
        // The cascade is decided (references dropped) before anyone is answered, so a client
        // that deleted a last fork sees its soft-deleted source gone at once; the rows follow.
        for entry in reclaim {
            request_reclaim(self.shared, entry);
        }
        let (internal, clients): (Vec<Answer>, Vec<Answer>) = self
            .answers
            .into_iter()
            .partition(|a| matches!(a, Answer::Reclaim(..)));
        for p in self.pending.values() {
            if p.publish == Publish::BeforeAnswers {
                p.entry.publish(&p.entry.lock());
            }
        }
        for answer in clients {
            answer.send();
        }
        for p in self.pending.values() {
            if p.publish != Publish::No {
                p.entry.publish(&p.entry.lock());
            }
        }
        // Reclaims come from sweeps and expiry checks, which promise that subscribers have
        // been told by the time they return.
        for answer in internal {
            answer.send();
        }
    }

    /// After a failed batch: undo the shared flags, run `recover` (the cache is back to the
    /// committed state), and fail every waiter, with the failure `recover` returns if any.
    fn failed(self, failure: &Failure, recover: impl FnOnce() -> Option<Failure>) {
        for undo in self.undo.into_iter().rev() {
            match undo {
                Undo::SoftDeleted(entry) => entry.lock().soft_deleted = false,
                Undo::Removed(entry) => entry.lock().removed = false,
                Undo::Reserved(source) => {
                    for entry in cache::release(&source, self.now) {
                        request_reclaim(self.shared, entry);
                    }
                }
            }
        }
        let replaced = recover();
        let failure = replaced.as_ref().unwrap_or(failure);
        for answer in self.answers {
            answer.fail(failure).send();
        }
    }
}

/// Asks a stream's shard to reclaim it (no answer expected).
fn request_reclaim(shared: &Shared, entry: Arc<Entry>) {
    // A closed queue means the store is shutting down; the next open reclaims it.
    let _ = shared.shards[entry.shard]
        .tx
        .send(Op::Reclaim { entry, reply: None });
}

/// Writes one append's messages as records from `pos`; returns the new tail.
fn write_records(
    t: &mut Tables<'_>,
    id: u64,
    mut pos: Offset,
    messages: Vec<Bytes>,
) -> Result<Offset, Failure> {
    let count = messages.len();
    for (k, data) in messages.into_iter().enumerate() {
        let value = encode_record(k + 1 == count, pos.byte, &data);
        t.records
            .insert((id, pos.seq), value.as_slice())
            .map_err(|e| Failure::new("write records", e))?;
        pos = Offset::new(pos.seq + 1, pos.byte + data.len() as u64);
    }
    Ok(pos)
}
