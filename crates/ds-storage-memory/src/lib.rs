//! In-memory Durable Streams storage.
//!
//! [`MemoryStorage`] keeps every stream in process memory. Payloads are held as shared
//! [`bytes::Bytes`] slices of the request bodies they arrived in, so a read hands out reference
//! counted views and never copies data per reader. Each stream has its own lock: appends to
//! different streams never contend, and no lock is held across an `.await`.
//!
//! Nothing survives a restart: this backend is for development, tests and caches. Memory use is
//! bounded by [`MemoryOptions::max_memory_bytes`] (all streams) and
//! [`MemoryOptions::max_stream_bytes`] (one stream).
//!
//! Forks share their source's data through an [`Arc`]; a deleted source that forks still
//! reference stays in memory, soft-deleted, until the last fork is gone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bytes::Bytes;
use ds_protocol::{Expiry, Offset, StreamName, content_type, fork_expiry};
use ds_storage::rules::{self, Clock, LocateStep, Located, SystemClock, WriterState};
use ds_storage::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, Error, ForkRequest, ReadChunk,
    ReadFrom, Result, Storage, StorageStats, StreamInfo, Tail,
};
use tokio::sync::watch;

/// Options of a [`MemoryStorage`].
#[derive(Clone)]
pub struct MemoryOptions {
    /// Upper bound on payload bytes held by all streams together (`limits.max_memory_bytes`).
    pub max_memory_bytes: u64,
    /// Upper bound on payload bytes of one stream (`limits.max_stream_bytes`).
    pub max_stream_bytes: u64,
    /// Clock used for TTL and expiry.
    pub clock: Arc<dyn Clock>,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        MemoryOptions {
            max_memory_bytes: 100 * 1024 * 1024,
            max_stream_bytes: 10 * 1024 * 1024,
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for MemoryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryOptions")
            .field("max_memory_bytes", &self.max_memory_bytes)
            .field("max_stream_bytes", &self.max_stream_bytes)
            .finish_non_exhaustive()
    }
}

/// The in-memory backend. Cheap to clone: clones share the same streams.
#[derive(Clone, Debug)]
pub struct MemoryStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    streams: RwLock<HashMap<StreamName, Arc<Entry>>>,
    next_id: AtomicU64,
    used_bytes: AtomicU64,
    /// Streams neither removed nor soft-deleted. Changed under the stream's lock, by whoever
    /// moves it into or out of that state.
    live_streams: AtomicU64,
    /// Payload bytes those streams store themselves (`used_bytes` also counts soft-deleted
    /// sources that forks keep alive).
    live_bytes: AtomicU64,
    opts: MemoryOptions,
}

/// One incarnation of a stream.
#[derive(Debug)]
struct Entry {
    name: StreamName,
    id: u64,
    content_type: String,
    json: bool,
    fork: Option<ForkLink>,
    state: Mutex<State>,
    tail_tx: watch::Sender<Tail>,
}

impl Entry {
    /// Tells live readers about a new tail written under the stream's lock; nothing if
    /// nobody listens (a send wakes the channel's waiter lists, eight mutexes, even when they
    /// are empty: 2% of an append in memory mode). `subscribe` refreshes the value.
    ///
    /// Writers publish after releasing the lock, so two appends can send their tails in the
    /// opposite order: the channel only ever moves forward (`next` grows, `closed` and `gone`
    /// are never cleared). Sent backwards, it would tell a reader already at the newer tail
    /// that the tail moved away from it, and the reader would read nothing and wait again,
    /// in a loop, until the next write.
    fn publish(&self, tail: Tail) {
        if self.tail_tx.receiver_count() > 0 {
            self.tail_tx
                .send_if_modified(|current| advance_tail(current, tail));
        }
    }
}

/// Moves `current` forward to `tail`: a later `next`, or `closed` or `gone` newly set. False
/// (and `current` unchanged) if `tail` is not newer.
fn advance_tail(current: &mut Tail, tail: Tail) -> bool {
    let newer = tail.next > current.next
        || (tail.closed && !current.closed)
        || (tail.gone && !current.gone);
    if newer {
        *current = Tail {
            next: tail.next.max(current.next),
            closed: tail.closed || current.closed,
            gone: tail.gone || current.gone,
        };
    }
    newer
}

#[derive(Debug)]
struct ForkLink {
    source: Arc<Entry>,
    /// The `Stream-Fork-Offset` as resolved at creation, and the sub-offset (for idempotency).
    anchor: Offset,
    sub_offset: u64,
}

#[derive(Debug)]
struct State {
    /// First position owned by this stream (inherited data lies below it).
    base: Offset,
    records: Vec<Record>,
    tail: Offset,
    writer: WriterState,
    expiry: Expiry,
    last_access_ms: u64,
    /// Live forks whose data reads reach into this stream.
    fork_refs: usize,
    /// Deleted by a client while forks still reference it.
    soft_deleted: bool,
    /// Removed from the map; the entry only lives on in handles that raced with removal.
    removed: bool,
    bytes: u64,
}

/// One append (binary streams) or one message (JSON streams).
#[derive(Debug, Clone)]
struct Record {
    start: u64,
    data: Bytes,
    /// Last message of its append batch (always true for binary records).
    batch_end: bool,
}

impl State {
    /// `NotFound` for a removed stream and `Gone` for a soft-deleted one: what every operation
    /// on a live stream checks under its lock (a delete may have won the race since the
    /// stream was looked up).
    fn ensure_live(&self) -> Result<()> {
        if self.removed {
            return Err(Error::NotFound);
        }
        if self.soft_deleted {
            return Err(Error::Gone);
        }
        Ok(())
    }

    /// The tail live readers are told about while the stream is live.
    fn live_tail(&self) -> Tail {
        Tail {
            next: self.tail,
            closed: self.writer.closed,
            gone: false,
        }
    }

    fn seq_of(&self, index: usize) -> u64 {
        self.base.seq + index as u64
    }

    /// Index of the record containing byte `byte` (which must be `< tail.byte` and `>= base`).
    fn record_index(&self, byte: u64) -> usize {
        self.records
            .partition_point(|r| r.start <= byte)
            .saturating_sub(1)
    }
}

/// Appends one batch of messages as records starting at `pos`; returns the new tail.
fn push_batch(records: &mut Vec<Record>, mut pos: Offset, messages: Vec<Bytes>) -> Offset {
    let count = messages.len();
    for (k, data) in messages.into_iter().enumerate() {
        let n = data.len() as u64;
        records.push(Record {
            start: pos.byte,
            data,
            batch_end: k + 1 == count,
        });
        pos = Offset::new(pos.seq + 1, pos.byte + n);
    }
    pos
}

fn lock(entry: &Entry) -> MutexGuard<'_, State> {
    // A panic while holding the lock would be a bug; the state itself is still consistent
    // because every mutation below is applied after all fallible checks.
    entry
        .state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MemoryStorage {
    /// An empty store.
    #[must_use]
    pub fn new(opts: MemoryOptions) -> Self {
        MemoryStorage {
            inner: Arc::new(Inner {
                streams: RwLock::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                used_bytes: AtomicU64::new(0),
                live_streams: AtomicU64::new(0),
                live_bytes: AtomicU64::new(0),
                opts,
            }),
        }
    }

    /// Payload bytes currently held (for metrics and tests).
    #[must_use]
    pub fn used_bytes(&self) -> u64 {
        self.inner.used_bytes.load(Ordering::Relaxed)
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        MemoryStorage::new(MemoryOptions::default())
    }
}

impl Inner {
    fn now(&self) -> u64 {
        self.opts.clock.now_ms()
    }

    /// Takes a stream out of the live gauges; called, under its lock, by whoever first marks it
    /// soft-deleted or removed.
    fn retire(&self, st: &State) {
        self.live_streams.fetch_sub(1, Ordering::Relaxed);
        self.live_bytes.fetch_sub(st.bytes, Ordering::Relaxed);
    }

    fn get(&self, name: &StreamName) -> Option<Arc<Entry>> {
        self.streams
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Looks a stream up for a client operation: missing, removed or expired streams are
    /// `NotFound`, soft-deleted ones `Gone`. Expired streams are reclaimed on the way.
    fn live(&self, name: &StreamName) -> Result<Arc<Entry>> {
        let entry = self.get(name).ok_or(Error::NotFound)?;
        let expired = {
            let st = lock(&entry);
            st.ensure_live()?;
            rules::is_expired(st.expiry, st.last_access_ms, self.now())
        };
        if expired {
            return Err(if self.expire(&entry) {
                Error::Gone
            } else {
                Error::NotFound
            });
        }
        Ok(entry)
    }

    /// Expires a stream: soft-deletes it while forks reference it (returns true), else removes it.
    fn expire(&self, entry: &Arc<Entry>) -> bool {
        {
            let mut st = lock(entry);
            if st.removed {
                return false;
            }
            if st.fork_refs > 0 {
                if !st.soft_deleted {
                    self.retire(&st);
                    st.soft_deleted = true;
                    let tail = st.tail;
                    drop(st);
                    entry.tail_tx.send_replace(Tail {
                        next: tail,
                        closed: true,
                        gone: true,
                    });
                }
                return true;
            }
        }
        self.remove(entry);
        false
    }

    /// Removes an entry from the map and releases what it holds, cascading up the fork chain
    /// through soft-deleted sources that no fork references any more.
    fn remove(&self, entry: &Arc<Entry>) {
        let mut next = Some(Arc::clone(entry));
        while let Some(entry) = next.take() {
            let mut map = self
                .streams
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut st = lock(&entry);
            if st.removed {
                return;
            }
            // A fork may have been created after the caller saw no references. Fork creation
            // counts its reference under the map lock held here, so this check is final: keep
            // the data for the fork and soft-delete instead.
            if st.fork_refs > 0 {
                drop(map);
                if !st.soft_deleted {
                    self.retire(&st);
                    st.soft_deleted = true;
                }
                let tail = st.tail;
                drop(st);
                entry.tail_tx.send_replace(Tail {
                    next: tail,
                    closed: true,
                    gone: true,
                });
                return;
            }
            if !st.soft_deleted {
                self.retire(&st);
            }
            st.removed = true;
            if map.get(&entry.name).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                map.remove(&entry.name);
            }
            drop(map);
            // The records stay: a read that looked the stream up just before this removal may
            // still be walking them. They are freed with the last handle to the entry.
            self.used_bytes.fetch_sub(st.bytes, Ordering::Relaxed);
            let tail = st.tail;
            drop(st);
            entry.tail_tx.send_replace(Tail {
                next: tail,
                closed: true,
                gone: true,
            });
            if let Some(link) = &entry.fork {
                let mut src = lock(&link.source);
                src.fork_refs = src.fork_refs.saturating_sub(1);
                if src.fork_refs == 0 && src.soft_deleted && !src.removed {
                    next = Some(Arc::clone(&link.source));
                }
            }
        }
    }

    /// Resolves `at` in `entry`'s view (inherited data included) for fork creation.
    fn locate(entry: &Arc<Entry>, at: Offset) -> Result<Located> {
        let st = lock(entry);
        match rules::locate_step(at, st.tail, st.base)? {
            LocateStep::At(located) => return Ok(located),
            LocateStep::Inherited => {
                let base = st.base;
                drop(st);
                let link = entry
                    .fork
                    .as_ref()
                    .ok_or(Error::ForkOffsetInvalid { offset: at })?;
                return Ok(Self::locate(&link.source, at)?.inherited(base, at));
            }
            LocateStep::Own => {}
        }
        let i = st.record_index(at.byte);
        let rec = &st.records[i];
        if st.seq_of(i) != at.seq || (entry.json && rec.start != at.byte) {
            return Err(Error::ForkOffsetInvalid { offset: at });
        }
        let messages = if entry.json {
            let mut n = 0;
            for r in &st.records[i..] {
                n += 1;
                if r.batch_end {
                    break;
                }
            }
            n
        } else {
            1
        };
        Ok(Located {
            bytes_to_boundary: rec.start + rec.data.len() as u64 - at.byte,
            messages_to_boundary: messages,
        })
    }

    /// Reads `entry`'s view from `from` up to `limit` (a byte position; `None` = the tail),
    /// pushing pieces into `out` while `budget` lasts. Returns the next position.
    fn read_view(
        &self,
        entry: &Arc<Entry>,
        from: Offset,
        limit: Option<u64>,
        budget: &mut usize,
        out: &mut Vec<Bytes>,
    ) -> Result<Offset> {
        let mut from = from;
        let st = lock(entry);
        let end = limit.map_or(st.tail.byte, |l| l.min(st.tail.byte));
        if from.byte > st.tail.byte
            || (limit.is_none() && from.byte == st.tail.byte && from != st.tail)
        {
            return Err(Error::InvalidOffset { offset: from });
        }
        if from.byte < st.base.byte {
            let base = st.base;
            drop(st);
            let link = entry
                .fork
                .as_ref()
                .ok_or(Error::InvalidOffset { offset: from })?;
            let upto = base.byte.min(end);
            let next = self.read_view(&link.source, from, Some(upto), budget, out)?;
            if next.byte < base.byte || end <= base.byte {
                return Ok(if next.byte == base.byte { base } else { next });
            }
            if *budget == 0 {
                return Ok(base);
            }
            from = base;
            return self.read_own(entry, &lock(entry), from, end, budget, out);
        }
        self.read_own(entry, &st, from, end, budget, out)
    }

    /// Reads this stream's own records (positions at or after its base).
    #[allow(clippy::unused_self)]
    fn read_own(
        &self,
        entry: &Entry,
        st: &State,
        from: Offset,
        end: u64,
        budget: &mut usize,
        out: &mut Vec<Bytes>,
    ) -> Result<Offset> {
        if from.byte >= end {
            if from.byte == st.tail.byte && from.seq != st.tail.seq {
                return Err(Error::InvalidOffset { offset: from });
            }
            return Ok(if from.byte == st.tail.byte {
                st.tail
            } else {
                from
            });
        }
        let mut i = st.record_index(from.byte);
        {
            let rec = &st.records[i];
            if st.seq_of(i) != from.seq || (entry.json && rec.start != from.byte) {
                return Err(Error::InvalidOffset { offset: from });
            }
        }
        let mut pos = from;
        while i < st.records.len() && pos.byte < end {
            let rec = &st.records[i];
            let rec_end = (rec.start + rec.data.len() as u64).min(end);
            let skip = (pos.byte - rec.start) as usize;
            let avail = (rec_end - pos.byte) as usize;
            if entry.json {
                if *budget < avail && !out.is_empty() {
                    break;
                }
                out.push(rec.data.clone());
                *budget = budget.saturating_sub(avail);
            } else {
                if *budget == 0 {
                    break;
                }
                let take = avail.min(*budget);
                out.push(rec.data.slice(skip..skip + take));
                *budget -= take;
                if take < avail {
                    pos = Offset::new(st.seq_of(i), pos.byte + take as u64);
                    break;
                }
            }
            pos = if rec_end == rec.start + rec.data.len() as u64 {
                Offset::new(st.seq_of(i + 1), rec_end)
            } else {
                Offset::new(st.seq_of(i), rec_end)
            };
            i += 1;
        }
        Ok(pos)
    }

    fn info(entry: &Entry, st: &State) -> StreamInfo {
        StreamInfo {
            name: entry.name.clone(),
            stream_id: entry.id,
            content_type: entry.content_type.clone(),
            expiry: st.expiry,
            next: st.tail,
            closed: st.writer.closed,
            bytes: st.bytes,
            forked_from: entry.fork.as_ref().map(|l| l.source.name.clone()),
        }
    }

    /// Reserves memory for `len` new bytes on a stream holding `stream_bytes`.
    fn reserve(&self, stream_bytes: u64, len: u64) -> Result<()> {
        if stream_bytes + len > self.opts.max_stream_bytes {
            return Err(Error::StreamTooLarge {
                limit: self.opts.max_stream_bytes,
            });
        }
        let limit = self.opts.max_memory_bytes;
        self.used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + len <= limit).then_some(used + len)
            })
            .map(|_| ())
            .map_err(|_| Error::StorageFull { limit })
    }

    /// Resolves a fork request against its live source: the link the fork keeps, the fork's
    /// first own position, and its expiry (the inheritance table of section 4.2).
    fn resolve_fork(
        &self,
        f: &ForkRequest,
        req: &CreateRequest,
    ) -> Result<(ForkLink, Offset, Expiry)> {
        let source = match self.live(&f.source) {
            Ok(s) => s,
            Err(Error::NotFound) => return Err(Error::ForkSourceNotFound),
            Err(Error::Gone) => return Err(Error::ForkSourceGone),
            Err(e) => return Err(e),
        };
        if let Some(ct) = &req.content_type
            && !content_type::matches(ct, &source.content_type)
        {
            return Err(Error::ContentTypeMismatch {
                expected: source.content_type.clone(),
                actual: ct.clone(),
            });
        }
        let (source_tail, source_expiry) = {
            let st = lock(&source);
            (st.tail, st.expiry)
        };
        let anchor = f.offset.unwrap_or(source_tail);
        let located = Self::locate(&source, anchor)?;
        let base = if f.sub_offset == 0 {
            anchor
        } else {
            located.check_sub_offset(f.sub_offset, source.json)?;
            if source.json {
                self.json_position(&source, anchor, f.sub_offset)?
            } else {
                Offset::new(anchor.seq + 1, anchor.byte + f.sub_offset)
            }
        };
        let link = ForkLink {
            source,
            anchor,
            sub_offset: f.sub_offset,
        };
        Ok((link, base, fork_expiry(source_expiry, req.expiry)))
    }

    fn create(&self, name: &StreamName, req: CreateRequest) -> Result<CreateOutcome> {
        // Existing stream: idempotent success or conflict. No body is written.
        if let Some(existing) = self.get(name) {
            match self.live(name) {
                Ok(entry) => {
                    let st = lock(&entry);
                    let fork = entry
                        .fork
                        .as_ref()
                        .map(|l| (l.source.name.as_str(), l.anchor, l.sub_offset));
                    let cfg = rules::ExistingConfig {
                        content_type: &entry.content_type,
                        expiry: st.expiry,
                        closed: st.writer.closed,
                        fork,
                    };
                    rules::check_create_matches(&cfg, &req)?;
                    return Ok(CreateOutcome::Existed(Self::info(&entry, &st)));
                }
                Err(Error::Gone) => return Err(Error::NameHeldBySoftDeleted),
                Err(Error::NotFound) => {
                    // Expired and reclaimed just now: fall through and create afresh.
                    drop(existing);
                }
                Err(e) => return Err(e),
            }
        }

        let now = self.now();
        let (link, content_type, expiry, base) = match &req.fork {
            None => (
                None,
                rules::effective_content_type(req.content_type.as_deref()),
                req.expiry,
                Offset::ZERO,
            ),
            Some(f) => {
                let (link, base, expiry) = self.resolve_fork(f, &req)?;
                let content_type = link.source.content_type.clone();
                (Some(link), content_type, expiry, base)
            }
        };
        let source = link.as_ref().map(|l| Arc::clone(&l.source));

        let json = content_type::is_json(&content_type);
        let messages = rules::split_body(&content_type, &req.body, true)?;
        let len: u64 = messages.iter().map(|m| m.len() as u64).sum();
        self.reserve(0, len)?;

        let mut records = Vec::with_capacity(messages.len());
        let pos = push_batch(&mut records, base, messages);
        let writer = WriterState {
            closed: req.closed,
            ..WriterState::default()
        };
        let tail = pos;
        let (tail_tx, _) = watch::channel(Tail {
            next: tail,
            closed: req.closed,
            gone: false,
        });
        let entry = Arc::new(Entry {
            name: name.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            content_type,
            json,
            fork: link,
            state: Mutex::new(State {
                base,
                records,
                tail,
                writer,
                expiry,
                last_access_ms: now,
                fork_refs: 0,
                soft_deleted: false,
                removed: false,
                bytes: len,
            }),
            tail_tx,
        });

        let mut map = self
            .streams
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.contains_key(name) {
            // Lost a race with a concurrent create of the same name: answer as if we came second.
            drop(map);
            self.used_bytes.fetch_sub(len, Ordering::Relaxed);
            return self.create(name, req);
        }
        if let Some(source) = &source {
            let mut src = lock(source);
            if src.removed || src.soft_deleted {
                drop(src);
                drop(map);
                self.used_bytes.fetch_sub(len, Ordering::Relaxed);
                return Err(Error::ForkSourceGone);
            }
            src.fork_refs += 1;
        }
        map.insert(name.clone(), Arc::clone(&entry));
        // Counted under the map lock, before anyone can find (and delete) the stream.
        self.live_streams.fetch_add(1, Ordering::Relaxed);
        self.live_bytes.fetch_add(len, Ordering::Relaxed);
        drop(map);
        let st = lock(&entry);
        Ok(CreateOutcome::Created(Self::info(&entry, &st)))
    }

    /// The position `count` JSON messages past `anchor` in `entry`'s view.
    fn json_position(&self, entry: &Arc<Entry>, anchor: Offset, count: u64) -> Result<Offset> {
        let mut budget = usize::MAX;
        let mut pieces = Vec::new();
        // Reading whole messages one by one would be simplest; instead read a bounded run and
        // sum the first `count` message lengths.
        let limit = {
            let st = lock(entry);
            st.tail.byte
        };
        self.read_view(entry, anchor, Some(limit), &mut budget, &mut pieces)?;
        let bytes: u64 = pieces
            .iter()
            .take(count as usize)
            .map(|p| p.len() as u64)
            .sum();
        Ok(Offset::new(anchor.seq + count, anchor.byte + bytes))
    }

    fn append(&self, name: &StreamName, req: &AppendRequest) -> Result<AppendOutcome> {
        let entry = self.live(name)?;
        // Split (and validate) JSON before taking the lock; errors are reported in protocol
        // precedence by `plan_append`.
        let messages = rules::split_body(&entry.content_type, &req.body, false);
        let mut st = lock(&entry);
        // A delete may have won the race since `live` looked the stream up.
        st.ensure_live()?;
        let plan = rules::plan_append(&st.writer, &entry.content_type, st.tail, req, &messages)?;
        match &plan {
            rules::AppendPlan::Duplicate(ack) => {
                return Ok(AppendOutcome::Duplicate {
                    next: st.tail,
                    closed: st.writer.closed,
                    producer: *ack,
                });
            }
            rules::AppendPlan::AlreadyClosed => {
                return Ok(AppendOutcome::AlreadyClosed { next: st.tail });
            }
            rules::AppendPlan::Write { .. } => {}
        }
        let messages = messages?;
        let len: u64 = messages.iter().map(|m| m.len() as u64).sum();
        self.reserve(st.bytes, len)?;
        let tail = st.tail;
        st.tail = push_batch(&mut st.records, tail, messages);
        st.bytes += len;
        self.live_bytes.fetch_add(len, Ordering::Relaxed);
        st.last_access_ms = self.now();
        rules::apply_append(&mut st.writer, req, &plan);
        let producer = match &plan {
            rules::AppendPlan::Write {
                producer: Some((_, p)),
                ..
            } => Some(ds_storage::ProducerAck {
                epoch: p.epoch,
                seq: p.last_seq,
            }),
            _ => None,
        };
        let tail = st.live_tail();
        drop(st);
        entry.publish(tail);
        Ok(AppendOutcome::Appended {
            next: tail.next,
            closed: tail.closed,
            producer,
        })
    }

    fn read(&self, name: &StreamName, from: ReadFrom, max_bytes: usize) -> Result<ReadChunk> {
        let entry = self.live(name)?;
        let (start, tail) = {
            let mut st = lock(&entry);
            st.last_access_ms = self.now();
            let start = match from {
                ReadFrom::Start => Offset::ZERO,
                ReadFrom::Tail => st.tail,
                ReadFrom::At(o) => o,
            };
            (start, st.tail)
        };
        let mut pieces = Vec::new();
        let mut budget = max_bytes.max(1);
        let next = if matches!(from, ReadFrom::Tail) {
            tail
        } else {
            self.read_view(&entry, start, None, &mut budget, &mut pieces)?
        };
        let st = lock(&entry);
        let up_to_date = next == st.tail;
        Ok(ReadChunk {
            stream_id: entry.id,
            content_type: entry.content_type.clone(),
            start,
            next,
            pieces,
            up_to_date,
            closed: up_to_date && st.writer.closed,
        })
    }

    fn delete(&self, name: &StreamName) -> Result<()> {
        let entry = self.live(name)?;
        {
            let mut st = lock(&entry);
            st.ensure_live()?;
            if st.fork_refs > 0 {
                self.retire(&st);
                st.soft_deleted = true;
                let tail = st.tail;
                drop(st);
                entry.tail_tx.send_replace(Tail {
                    next: tail,
                    closed: true,
                    gone: true,
                });
                return Ok(());
            }
        }
        self.remove(&entry);
        Ok(())
    }

    fn sweep_expired(&self) -> usize {
        let entries: Vec<Arc<Entry>> = self
            .streams
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let now = self.now();
        let mut n = 0;
        for entry in entries {
            let expired = {
                let st = lock(&entry);
                !st.removed
                    && !st.soft_deleted
                    && rules::is_expired(st.expiry, st.last_access_ms, now)
            };
            if expired {
                self.expire(&entry);
                n += 1;
            }
        }
        n
    }
}

impl Storage for MemoryStorage {
    async fn create(&self, name: &StreamName, req: CreateRequest) -> Result<CreateOutcome> {
        self.inner.create(name, req)
    }

    async fn append(&self, name: &StreamName, req: AppendRequest) -> Result<AppendOutcome> {
        self.inner.append(name, &req)
    }

    async fn read(&self, name: &StreamName, from: ReadFrom, max_bytes: usize) -> Result<ReadChunk> {
        self.inner.read(name, from, max_bytes)
    }

    async fn head(&self, name: &StreamName) -> Result<StreamInfo> {
        let entry = self.inner.live(name)?;
        let st = lock(&entry);
        Ok(Inner::info(&entry, &st))
    }

    async fn export_meta(&self, name: &StreamName) -> Result<ds_storage::ExportMeta> {
        let entry = self.inner.live(name)?;
        let st = lock(&entry);
        Ok(ds_storage::ExportMeta {
            info: Inner::info(&entry, &st),
            base: st.base,
            fork: entry.fork.as_ref().map(|l| ds_storage::ForkPoint {
                source: l.source.name.clone(),
                offset: l.anchor,
                sub_offset: l.sub_offset,
            }),
            writer: st.writer.clone(),
        })
    }

    async fn delete(&self, name: &StreamName) -> Result<()> {
        self.inner.delete(name)
    }

    async fn restore_writer(&self, name: &StreamName, writer: rules::WriterState) -> Result<()> {
        let entry = self.inner.live(name)?;
        let mut st = lock(&entry);
        st.ensure_live()?;
        rules::check_restore(&st.writer, &writer, st.tail)?;
        st.writer = writer;
        let tail = st.live_tail();
        drop(st);
        entry.publish(tail);
        Ok(())
    }

    async fn subscribe(&self, name: &StreamName) -> Result<watch::Receiver<Tail>> {
        let entry = self.inner.live(name)?;
        // Appends skip the channel while nobody listens (`Entry::publish`): its value is
        // brought up to date first, under the lock that orders the stream's writes.
        let st = lock(&entry);
        st.ensure_live()?;
        entry.tail_tx.send_replace(st.live_tail());
        let rx = entry.tail_tx.subscribe();
        drop(st);
        Ok(rx)
    }

    async fn list(&self) -> Result<Vec<StreamInfo>> {
        let entries: Vec<Arc<Entry>> = self
            .inner
            .streams
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let now = self.inner.now();
        let mut out: Vec<StreamInfo> = entries
            .iter()
            .filter_map(|e| {
                let st = lock(e);
                (!st.removed
                    && !st.soft_deleted
                    && !rules::is_expired(st.expiry, st.last_access_ms, now))
                .then(|| Inner::info(e, &st))
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn sweep_expired(&self) -> Result<usize> {
        Ok(self.inner.sweep_expired())
    }

    /// Streams and bytes from counters kept on create, append, delete and expiry (no scan).
    /// Nothing is committed or synced, so the other fields stay `None`.
    fn stats(&self) -> StorageStats {
        StorageStats {
            streams: Some(self.inner.live_streams.load(Ordering::Relaxed)),
            bytes: Some(self.inner.live_bytes.load(Ordering::Relaxed)),
            ..StorageStats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_protocol::NameLimits;

    /// Appends publish after releasing the stream's lock, so an earlier append's tail can be
    /// sent after a later one's: live readers must keep seeing the later tail.
    #[tokio::test]
    async fn a_late_publish_never_moves_live_readers_back() {
        let store = MemoryStorage::new(MemoryOptions::default());
        let name = StreamName::parse("s", NameLimits::default()).expect("name");
        let create = CreateRequest {
            content_type: Some("application/octet-stream".to_owned()),
            ..CreateRequest::default()
        };
        store.create(&name, create).await.expect("create");
        let append = |body: &'static [u8]| AppendRequest {
            content_type: Some("application/octet-stream".to_owned()),
            body: Bytes::from_static(body),
            ..AppendRequest::default()
        };
        let rx = store.subscribe(&name).await.expect("subscribe");
        store.append(&name, append(b"a")).await.expect("append");
        let earlier = *rx.borrow();
        store.append(&name, append(b"bc")).await.expect("append");
        let later = *rx.borrow();
        assert!(later.next > earlier.next, "{later:?} after {earlier:?}");
        let entry = store.inner.live(&name).expect("live");
        entry.publish(earlier);
        assert_eq!(
            *rx.borrow(),
            later,
            "the late publish of {earlier:?} was ignored"
        );
        // Closing still gets through at the same offset.
        let closed = Tail {
            closed: true,
            ..later
        };
        entry.publish(closed);
        assert_eq!(*rx.borrow(), closed);
    }
}
