//! The in-memory picture of one stream: immutable configuration, the state its records build
//! up, and a sparse index into its file.
//!
//! Only the group committer changes a stream's state, and only after the records that
//! describe the change are durable (or, in file-fast mode, written to the kernel). Recovery
//! builds the same state by applying the same records with the same function
//! ([`StreamState::apply`]), so a restarted store cannot disagree with the one that wrote.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use ds_protocol::{Expiry, Offset, ProducerHeaders, StreamName};
use ds_storage::rules::{self, AppendPlan, ProducerState, WriterState};
use ds_storage::{AppendRequest, StreamInfo, Tail};
use tokio::sync::watch;

use crate::record::{Kind, Meta, Record};

/// File bytes between two entries of the sparse index. A read starts at the nearest entry at
/// or before its offset and walks record heads from there, so this bounds the extra I/O of a
/// read while keeping the index at 24 bytes per 64 KiB of stream.
pub(crate) const INDEX_STRIDE: u64 = 64 * 1024;

/// One sparse-index entry: a data record's first position and its place in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdxEntry {
    /// Offset of the record's first message.
    pub at: Offset,
    /// File position of the record.
    pub pos: u64,
}

/// The state of a stream that its records determine.
#[derive(Debug, Clone)]
pub(crate) struct StreamState {
    /// The tail offset.
    pub tail: Offset,
    /// Bytes this stream stores itself.
    pub bytes: u64,
    /// Length of the valid part of the stream's file.
    pub file_len: u64,
    /// Records in the stream's file.
    pub rec_count: u64,
    /// Closure, `Stream-Seq`, producers.
    pub writer: Writer,
    /// Deleted while forks reference it.
    pub soft_deleted: bool,
    /// Deleted for good (its file is gone or going).
    pub removed: bool,
    /// Last read or write (sliding TTL), possibly newer than what is on disk.
    pub last_access_ms: u64,
    /// Last access time recorded on disk.
    pub persisted_access_ms: u64,
    /// File position of the last sparse-index entry.
    pub last_indexed_pos: Option<u64>,
}

impl StreamState {
    /// The state before the Create record.
    pub(crate) fn new(base: Offset) -> Self {
        StreamState {
            tail: base,
            bytes: 0,
            file_len: 0,
            rec_count: 0,
            writer: Writer::default(),
            soft_deleted: false,
            removed: false,
            last_access_ms: 0,
            persisted_access_ms: 0,
            last_indexed_pos: None,
        }
    }

    /// Applies one record found (or just written) at file position `pos`, `len` bytes long.
    /// Returns the sparse-index entry to add, if any.
    pub(crate) fn apply(&mut self, rec: &Record<'_>, pos: u64, len: u64) -> Option<IdxEntry> {
        if rec.kind == Kind::Delete {
            self.removed = true;
            return None;
        }
        self.rec_count += 1;
        self.file_len = pos + len;
        self.last_access_ms = self.last_access_ms.max(rec.at_ms);
        self.persisted_access_ms = self.persisted_access_ms.max(rec.at_ms);
        match (&rec.kind, &rec.meta) {
            (Kind::Create, _) if rec.closes() => self.writer.make_mut().closed = true,
            (
                Kind::Append,
                Meta::Append {
                    stream_seq,
                    producer,
                },
            ) => {
                let req = AppendRequest {
                    stream_seq: stream_seq.map(str::to_owned),
                    producer: producer.map(|(id, epoch, seq)| ProducerHeaders {
                        id: id.to_owned(),
                        epoch,
                        seq,
                    }),
                    close: rec.closes(),
                    ..AppendRequest::default()
                };
                let plan = AppendPlan::Write {
                    producer: producer.map(|(id, epoch, seq)| {
                        (
                            id.to_owned(),
                            ProducerState {
                                epoch,
                                last_seq: seq,
                            },
                        )
                    }),
                    close: rec.closes(),
                };
                rules::apply_append(self.writer.make_mut(), &req, &plan);
            }
            (Kind::Writer, meta) => {
                if let Some(w) = crate::record::writer_state(meta, rec.closes()) {
                    self.writer.replace(w);
                }
            }
            (Kind::SoftDelete, _) => self.soft_deleted = true,
            _ => {}
        }
        if rec.msg_lens.is_empty() {
            return None;
        }
        let first = self.tail;
        for len in rec.msg_lens.iter() {
            let len = u64::from(len);
            self.tail = Offset::new(self.tail.seq + 1, self.tail.byte + len);
            self.bytes += len;
        }
        let index = self
            .last_indexed_pos
            .is_none_or(|last| pos.saturating_sub(last) >= INDEX_STRIDE);
        index.then(|| {
            self.last_indexed_pos = Some(pos);
            IdxEntry { at: first, pos }
        })
    }
}

/// A stream's writer state, allocated only once it differs from the default: most streams
/// have no producers and no `Stream-Seq`, and a million idle streams should not each carry an
/// empty map.
#[derive(Debug, Clone, Default)]
pub(crate) struct Writer(Option<Box<WriterState>>);

static NO_WRITER_STATE: LazyLock<WriterState> = LazyLock::new(WriterState::default);

impl Writer {
    /// The state, for changing it.
    pub(crate) fn make_mut(&mut self) -> &mut WriterState {
        self.0.get_or_insert_with(Box::default)
    }

    /// Replaces the state (keeping nothing allocated for the default one).
    pub(crate) fn replace(&mut self, w: WriterState) {
        self.0 = (w != WriterState::default()).then(|| Box::new(w));
    }
}

impl Deref for Writer {
    type Target = WriterState;

    fn deref(&self) -> &WriterState {
        self.0.as_deref().unwrap_or(&NO_WRITER_STATE)
    }
}

/// An entry keyed by its name, so the name map does not store every name twice.
#[derive(Debug, Clone)]
pub(crate) struct ByName(pub Arc<Entry>);

impl Borrow<StreamName> for ByName {
    fn borrow(&self) -> &StreamName {
        &self.0.name
    }
}

impl Hash for ByName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.name.hash(state);
    }
}

impl PartialEq for ByName {
    fn eq(&self, other: &Self) -> bool {
        self.0.name == other.0.name
    }
}

impl Eq for ByName {}

/// How a fork reaches into its source.
#[derive(Debug)]
pub(crate) struct ForkLink {
    /// The source incarnation (kept alive, soft-deleted if need be, while this fork exists).
    pub source: Arc<Entry>,
    /// `Stream-Fork-Offset` as resolved at creation.
    pub anchor: Offset,
    /// `Stream-Fork-Sub-Offset`.
    pub sub_offset: u64,
}

/// One incarnation of a stream.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The stream's name.
    pub name: StreamName,
    /// Incarnation id; names the stream's file.
    pub id: u64,
    /// Content type (interned: streams share equal ones).
    pub content_type: Arc<str>,
    /// JSON mode.
    pub json: bool,
    /// TTL or absolute expiry.
    pub expiry: Expiry,
    /// First own position (inherited data lies below it).
    pub base: Offset,
    /// The fork source, for forks.
    pub fork: Option<ForkLink>,
    /// Mutable state.
    pub state: Mutex<State>,
}

/// The mutable part of an [`Entry`].
#[derive(Debug)]
pub(crate) struct State {
    /// What the stream's records say (committer-owned, except `last_access_ms`).
    pub s: StreamState,
    /// Sparse index of the stream's own data records.
    pub index: Vec<IdxEntry>,
    /// Forks (not removed) whose reads reach into this stream.
    pub fork_refs: usize,
    /// A Touch record has been requested and not yet written.
    pub touch_pending: bool,
    /// Live readers' channel, created on the first subscribe (shared so that the committer
    /// can send on it after releasing this lock: see [`State::publication`]).
    pub watch: Option<Arc<watch::Sender<Tail>>>,
    /// The stream's Create record while its file does not exist yet: a create without data
    /// writes only the WAL; the file is created by the stream's next record or by the next
    /// checkpoint, whichever comes first (see `commit`).
    pub unwritten: Option<Box<[u8]>>,
}

/// Whether a stream can be used, judged from its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Live,
    Removed,
    SoftDeleted,
    Expired,
}

impl Entry {
    /// Locks the state. A panic while holding the lock would be a bug; the state stays
    /// consistent because the committer replaces it wholesale after each commit.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The stream's status at `now_ms` given state `s`.
    pub(crate) fn status(&self, s: &StreamState, now_ms: u64) -> Status {
        self.status_at(s, s.last_access_ms, now_ms)
    }

    /// [`Entry::status`] with the stream last accessed at `last_access_ms` (which readers may
    /// have moved past `s`'s).
    pub(crate) fn status_at(&self, s: &StreamState, last_access_ms: u64, now_ms: u64) -> Status {
        if s.removed {
            Status::Removed
        } else if s.soft_deleted {
            Status::SoftDeleted
        } else if rules::is_expired(self.expiry, last_access_ms, now_ms) {
            Status::Expired
        } else {
            Status::Live
        }
    }

    /// The stream's metadata from state `s`.
    pub(crate) fn info(&self, s: &StreamState) -> StreamInfo {
        StreamInfo {
            name: self.name.clone(),
            stream_id: self.id,
            content_type: self.content_type.to_string(),
            expiry: self.expiry,
            next: s.tail,
            closed: s.writer.closed,
            bytes: s.bytes,
            forked_from: self.fork.as_ref().map(|l| l.source.name.clone()),
        }
    }

    /// The fork parameters for create idempotency checks.
    pub(crate) fn fork_config(&self) -> Option<(&str, Offset, u64)> {
        self.fork
            .as_ref()
            .map(|l| (l.source.name.as_str(), l.anchor, l.sub_offset))
    }
}

/// A tail to send to a stream's live readers, taken under the stream's lock and sent after
/// it (see [`State::publication`]).
pub(crate) struct Publish {
    tx: Arc<watch::Sender<Tail>>,
    tail: Tail,
}

impl Publish {
    /// Sends the tail, waking the stream's live readers.
    pub(crate) fn send(self) {
        self.tx.send_replace(self.tail);
    }
}

impl State {
    /// What to tell live readers about the current tail, if anyone listens (the channel is
    /// dropped when nobody does).
    ///
    /// The caller sends it after releasing the stream's lock: sending wakes every live reader
    /// of the stream (thousands of SSE subscribers take milliseconds to wake), and each one
    /// woken reads the stream at once, which takes this lock; sending under it would block
    /// them, and the async workers they run on, until the last one is woken. Only the
    /// committer with the turn publishes, and it sends before it gives the turn up, so the
    /// tails of one stream are still sent in order. A reader that subscribes in between gets
    /// the previous tail, reads the installed state (which is newer), and sees the send next.
    pub(crate) fn publication(&mut self) -> Option<Publish> {
        let tail = Tail {
            next: self.s.tail,
            closed: self.s.writer.closed || self.s.removed || self.s.soft_deleted,
            gone: self.s.removed || self.s.soft_deleted,
        };
        let tx = self.watch.as_ref()?;
        if tx.receiver_count() == 0 {
            self.watch = None;
            return None;
        }
        Some(Publish {
            tx: Arc::clone(tx),
            tail,
        })
    }

    /// A receiver of the stream's tail, creating the channel if needed.
    pub(crate) fn subscribe(&mut self) -> watch::Receiver<Tail> {
        if let Some(tx) = &self.watch {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Tail {
            next: self.s.tail,
            closed: self.s.writer.closed,
            gone: false,
        });
        self.watch = Some(Arc::new(tx));
        rx
    }

    /// The sparse-index entry to start a walk to `byte` from (the last at or before it).
    pub(crate) fn index_before(&self, byte: u64) -> Option<IdxEntry> {
        let i = self.index.partition_point(|e| e.at.byte <= byte);
        i.checked_sub(1).map(|i| self.index[i])
    }
}
