//! The in-memory view of every stream's metadata, loaded at open and kept in step with the
//! databases by the committers.
//!
//! Which thread may change what:
//!
//! - The *committed* fields (`tail`, `bytes`, `writer`, `counted`) are written only by the
//!   committer of the stream's shard, after the transaction holding the change has committed.
//!   Readers therefore never see a tail whose records are not durable.
//! - `soft_deleted`, `removed` and `fork_refs` change *before* commit, under the entry's lock,
//!   because they are how a fork creation in one shard and a delete of its source in another
//!   agree on who came first (the committer undoes them if its commit fails).
//! - `last_access_ms` is written by whoever touches the stream (a read slides a TTL).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use ds_protocol::{Expiry, Offset, StreamName};
use ds_storage::rules::{self, WriterState};
use ds_storage::{StreamInfo, Tail};
use tokio::sync::watch;

/// One incarnation of a stream.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) name: StreamName,
    pub(crate) id: u64,
    pub(crate) shard: usize,
    pub(crate) content_type: String,
    pub(crate) json: bool,
    pub(crate) expiry: Expiry,
    /// First position owned by this stream (inherited data lies below it).
    pub(crate) base: Offset,
    pub(crate) fork: Option<ForkLink>,
    pub(crate) state: Mutex<State>,
    pub(crate) tail_tx: watch::Sender<Tail>,
}

impl Drop for Entry {
    /// Unlinks a fork chain iteratively: dropping the last fork of a long chain must not
    /// recurse once per level.
    fn drop(&mut self) {
        let mut next = self.fork.take().map(|link| link.source);
        while let Some(source) = next {
            next = match Arc::try_unwrap(source) {
                Ok(mut entry) => entry.fork.take().map(|link| link.source),
                Err(_) => None,
            };
        }
    }
}

/// Where a fork's inherited data comes from.
#[derive(Debug)]
pub(crate) struct ForkLink {
    pub(crate) source: Arc<Entry>,
    /// `Stream-Fork-Offset` as resolved at creation, and the sub-offset (for idempotency).
    pub(crate) anchor: Offset,
    pub(crate) sub_offset: u64,
}

/// The mutable part of an entry (see the module docs for who writes what).
// reason: independent flags under one lock, each with its own writer; an enum would merge them.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) tail: Offset,
    pub(crate) bytes: u64,
    pub(crate) writer: WriterState,
    pub(crate) last_access_ms: u64,
    /// The `last_access_ms` value the database holds.
    pub(crate) persisted_access_ms: u64,
    /// A read asked the committer to persist `last_access_ms` and it has not yet.
    pub(crate) touch_queued: bool,
    /// Live forks whose reads reach into this stream.
    pub(crate) fork_refs: u64,
    /// Deleted (or expired) while forks reference it.
    pub(crate) soft_deleted: bool,
    /// The soft delete is committed (it can no longer be undone by a failed batch).
    pub(crate) soft_delete_durable: bool,
    /// This stream's own reference to its fork source was dropped: it was removed, or it is
    /// soft-deleted for good with no fork left, so nothing reads through it any more.
    pub(crate) source_released: bool,
    /// Its rows are deleted (or being deleted by the current batch).
    pub(crate) removed: bool,
    /// Counted in its shard's live stream and byte totals (committed, neither soft-deleted
    /// nor removed); see `Shard::recount`.
    pub(crate) counted: bool,
}

impl State {
    /// The committed tail as live readers see it.
    pub(crate) fn live_tail(&self) -> Tail {
        Tail {
            next: self.tail,
            closed: self.writer.closed || self.removed || self.soft_deleted,
            gone: self.removed || self.soft_deleted,
        }
    }
}

/// How a stream looks to a client right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Usable.
    Live,
    /// Soft-deleted (or expired) while forks reference it: `Gone`.
    Gone,
    /// Deleted: `NotFound`.
    Missing,
    /// Expired, or soft-deleted with no fork left: its shard's committer must soft-delete or
    /// remove it before the answer is known.
    NeedsReclaim,
}

impl Entry {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation under this lock is a plain field assignment, so a panic elsewhere
        // cannot leave the state half-updated.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn status(&self, st: &State, now_ms: u64) -> Status {
        if st.removed {
            Status::Missing
        } else if st.soft_deleted {
            if st.fork_refs > 0 {
                Status::Gone
            } else {
                Status::NeedsReclaim
            }
        } else if rules::is_expired(self.expiry, st.last_access_ms, now_ms) {
            Status::NeedsReclaim
        } else {
            Status::Live
        }
    }

    /// Whether the stream should be reclaimed (soft-deleted or removed) now.
    pub(crate) fn reclaimable(&self, st: &State, now_ms: u64) -> bool {
        !st.removed
            && (st.soft_deleted || rules::is_expired(self.expiry, st.last_access_ms, now_ms))
    }

    pub(crate) fn info(&self, st: &State) -> StreamInfo {
        StreamInfo {
            name: self.name.clone(),
            stream_id: self.id,
            content_type: self.content_type.clone(),
            expiry: self.expiry,
            next: st.tail,
            closed: st.writer.closed,
            bytes: st.bytes,
            forked_from: self.fork.as_ref().map(|l| l.source.name.clone()),
        }
    }

    /// Brings the watch channel up to the committed state. Called with the entry locked, so
    /// two publishers cannot interleave and move the channel backwards.
    pub(crate) fn publish(&self, st: &State) {
        let tail = st.live_tail();
        self.tail_tx.send_if_modified(|current| {
            let changed = *current != tail;
            *current = tail;
            changed
        });
    }

    /// The configuration a re-`PUT` is compared with, given the (possibly pending) closure.
    pub(crate) fn existing_config(&self, closed: bool) -> rules::ExistingConfig<'_> {
        rules::ExistingConfig {
            content_type: &self.content_type,
            expiry: self.expiry,
            closed,
            fork: self
                .fork
                .as_ref()
                .map(|l| (l.source.name.as_str(), l.anchor, l.sub_offset)),
        }
    }
}

/// Drops one fork reference to `source`, walking up the fork chain through sources that are
/// thereby dead for good (soft-deleted durably, no fork left). Returns the streams that are
/// now unreferenced and reclaimable: their shards should reclaim them.
pub(crate) fn release(source: &Arc<Entry>, now_ms: u64) -> Vec<Arc<Entry>> {
    let mut out = Vec::new();
    let mut next = Some(Arc::clone(source));
    while let Some(src) = next.take() {
        let mut st = src.lock();
        st.fork_refs = st.fork_refs.saturating_sub(1);
        if st.fork_refs > 0 || st.removed {
            continue;
        }
        if st.soft_deleted && st.soft_delete_durable && !st.source_released {
            st.source_released = true;
            next = src.fork.as_ref().map(|l| Arc::clone(&l.source));
        }
        if src.reclaimable(&st, now_ms) {
            out.push(Arc::clone(&src));
        }
    }
    out
}

/// Drops `entry`'s reference to its source once it is removed or dead for good (at most once
/// per entry). Returns the streams to reclaim, `entry` itself included when it is dead.
pub(crate) fn release_source(entry: &Arc<Entry>, now_ms: u64) -> Vec<Arc<Entry>> {
    let mut out = Vec::new();
    {
        let mut st = entry.lock();
        let dead = st.soft_deleted && st.soft_delete_durable && st.fork_refs == 0;
        if st.source_released || !(st.removed || dead) {
            return out;
        }
        st.source_released = true;
        if !st.removed {
            out.push(Arc::clone(entry));
        }
    }
    if let Some(link) = &entry.fork {
        out.extend(release(&link.source, now_ms));
    }
    out
}

/// A new, not yet visible entry.
pub(crate) struct NewEntry {
    pub(crate) name: StreamName,
    pub(crate) id: u64,
    pub(crate) shard: usize,
    pub(crate) content_type: String,
    pub(crate) expiry: Expiry,
    pub(crate) base: Offset,
    pub(crate) fork: Option<ForkLink>,
    pub(crate) tail: Offset,
    pub(crate) bytes: u64,
    pub(crate) writer: WriterState,
    pub(crate) last_access_ms: u64,
    pub(crate) soft_deleted: bool,
}

impl NewEntry {
    pub(crate) fn build(self) -> Arc<Entry> {
        let gone = self.soft_deleted;
        let (tail_tx, _) = watch::channel(Tail {
            next: self.tail,
            closed: self.writer.closed || gone,
            gone,
        });
        Arc::new(Entry {
            json: ds_protocol::content_type::is_json(&self.content_type),
            name: self.name,
            id: self.id,
            shard: self.shard,
            content_type: self.content_type,
            expiry: self.expiry,
            base: self.base,
            fork: self.fork,
            state: Mutex::new(State {
                tail: self.tail,
                bytes: self.bytes,
                writer: self.writer,
                last_access_ms: self.last_access_ms,
                persisted_access_ms: self.last_access_ms,
                touch_queued: false,
                fork_refs: 0,
                soft_deleted: self.soft_deleted,
                soft_delete_durable: self.soft_deleted,
                source_released: false,
                removed: false,
                counted: false,
            }),
            tail_tx,
        })
    }
}

/// The streams of one shard by name.
pub(crate) type StreamMap = HashMap<StreamName, Arc<Entry>>;
