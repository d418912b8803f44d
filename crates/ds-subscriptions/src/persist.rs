//! Keeping subscription state and the signing key in internal streams of the same store.
//!
//! Layout (all JSON streams under the reserved `__ds` namespace, which clients cannot reach):
//!
//! ```text
//! __ds/keys/webhook-signing            one message per key: {"kid","alg":"EdDSA","d","created_at_ms"};
//!                                      the last one signs.
//! __ds/subscriptions/state/{epoch:016x} message 0: {"op":"snapshot",...} (the whole state);
//!                                      then one message per Event, in the order applied.
//! ```
//!
//! Format version 1: the event shapes of [`crate::state::Event`]. Compaction writes the whole
//! state as the first message of a new epoch (one create with a body, atomic on every backend)
//! and only then deletes the old epoch. On open the highest epoch wins and older ones are
//! deleted, so a crash at any point leaves one complete history. Works on every backend because
//! it uses only the `Storage` trait; on the memory backend it lasts as long as the process.
//!
//! # Several nodes: fencing with `Stream-Seq`
//!
//! In cluster mode (a store shared by several servers) only the holder of the `subscriptions`
//! lease writes the log, but a holder that was paused longer than the lease's ttl may not know
//! it lost it. Every log append of a cluster-mode engine therefore carries
//! `Stream-Seq: {term:016x}{run:016x}{counter:016x}` (term = lease term, run = this process's
//! activation number, counter = a per-process counter that never goes back), and the store
//! rejects a seq that is not greater than the last one on that stream. Lease terms only grow, so
//! once a node with term `T` has appended anything to an epoch, no node with a smaller term can
//! append to it again; the run does the same between two activations of one process under the
//! same term (it lost the lease locally and took it back before anyone else did).
//!
//! Epoch numbers carry their term: a node with term `T` creates epochs only in
//! `[T << 32, (T + 1) << 32)`, and a node that sees an epoch of a newer term knows it is stale
//! and stops (a fresh epoch has no seq until its creator appends, so a stale node must never
//! fence it).
//!
//! Activation with term `T` (`activate_state`): append an `{"op":"fence"}` marker with a
//! term-`T` seq to the highest epoch, list again and repeat on any higher epoch that appeared
//! meanwhile (an old holder compacting), then replay the epoch fenced last, write its state as
//! the snapshot of a fresh epoch of term `T`, *confirm* with a second fenced marker on the
//! replayed epoch, and delete the lower epochs. A compaction by the writer likewise creates the
//! next epoch and confirms on the current one before it deletes it or appends anything to the
//! new one; when the confirm fails it deletes the new epoch and stops.
//!
//! Why no acknowledged change is lost (a client is answered only after its change was appended
//! with the writer's seq). An old holder `O` appends events only to an epoch it created, after
//! confirming on the epoch it came from. Let `E` be the epoch the new holder `N` fenced last,
//! after which its listing showed nothing higher; `N` replays `E`.
//!
//! - Every append `O` made to `E` came before `N`'s fence on `E` (after it `O`'s seqs are too
//!   small), so `N` replays it.
//! - `O` never appends to an epoch past `E`: to get there it must confirm on `E` after creating
//!   the next epoch. A confirm after `N`'s fence fails (and `O` deletes the unused epoch); a
//!   confirm before it means the next epoch existed before `N`'s last listing, which would
//!   have shown it.
//! - Afterwards `O` can acknowledge nothing: its appends to `E` are fenced, and `N`'s fresh
//!   epoch sorts above anything `O` may create, so an activation of `O` sees it and stops.
//!
//! `N`'s own compaction is confirmed the same way, so a third node that takes over meanwhile
//! wins the same argument against `N`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use ds_protocol::{NameLimits, StreamName};
use ds_storage::{AppendRequest, CreateOutcome, CreateRequest, ReadFrom, Storage};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::keys::{KeyRing, StoredKey};
use crate::state::{Event, State};

/// The internal stream holding the signing key.
pub const KEY_STREAM: &str = "__ds/keys/webhook-signing";
/// Prefix of the state log epochs.
pub const STATE_PREFIX: &str = "__ds/subscriptions/state/";
const JSON: &str = "application/json";
/// Read size when replaying.
const READ_CHUNK: usize = 1024 * 1024;

fn name(s: &str) -> StreamName {
    StreamName::parse(s, NameLimits::default()).expect("internal stream names are valid")
}

fn epoch_name(epoch: u64) -> StreamName {
    name(&format!("{STATE_PREFIX}{epoch:016x}"))
}

/// Reads every message of a JSON stream.
async fn read_all<S: Storage>(storage: &S, stream: &StreamName) -> Result<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut from = ReadFrom::Start;
    loop {
        let chunk = storage
            .read(stream, from, READ_CHUNK)
            .await
            .map_err(Error::storage("reading an internal stream"))?;
        let done = chunk.up_to_date || chunk.pieces.is_empty();
        out.extend(chunk.pieces);
        if done {
            return Ok(out);
        }
        from = ReadFrom::At(chunk.next);
    }
}

fn create_json(body: Vec<u8>) -> CreateRequest {
    CreateRequest {
        content_type: Some(JSON.to_owned()),
        body: Bytes::from(body),
        ..CreateRequest::default()
    }
}

/// Loads the signing key, creating and persisting one on first start.
///
/// # Panics
///
/// Never: a stored key is strings and an integer, which always serialise to JSON.
pub async fn load_or_create_key<S: Storage>(storage: &S, now_ms: u64) -> Result<KeyRing> {
    let stream = name(KEY_STREAM);
    for _ in 0..2 {
        match read_all(storage, &stream).await {
            Ok(messages) => {
                let Some(last) = messages.last() else {
                    break;
                };
                let stored: StoredKey =
                    serde_json::from_slice(last).map_err(|e| Error::Corrupt {
                        stream: KEY_STREAM.to_owned(),
                        reason: e.to_string(),
                    })?;
                return KeyRing::from_stored(&stored).map_err(|reason| Error::Corrupt {
                    stream: KEY_STREAM.to_owned(),
                    reason,
                });
            }
            Err(Error::Storage {
                source: ds_storage::Error::NotFound,
                ..
            }) => {
                let ring = KeyRing::generate()?;
                let body = serde_json::to_vec(&ring.to_stored(now_ms))
                    .expect("a stored key serialises to JSON");
                match storage.create(&stream, create_json(body)).await {
                    Ok(CreateOutcome::Created(_)) => return Ok(ring),
                    // Someone else created it first: read theirs.
                    Ok(CreateOutcome::Existed(_))
                    | Err(ds_storage::Error::ConfigMismatch { .. }) => {}
                    Err(e) => return Err(Error::storage("creating the signing key")(e)),
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::Corrupt {
        stream: KEY_STREAM.to_owned(),
        reason: "the key stream is empty".to_owned(),
    })
}

/// The state as loaded: the newest epoch replayed.
pub struct Loaded {
    /// The rebuilt state.
    pub state: State,
    /// The epoch the writer continues.
    pub epoch: u64,
    /// Bytes of events after the snapshot (drives compaction).
    pub log_bytes: usize,
    /// Bytes of the snapshot.
    pub snapshot_bytes: usize,
}

/// Replays the newest state epoch (creating epoch 1 on first start) and deletes older ones.
///
/// # Panics
///
/// Never: the empty state always serialises to JSON.
pub async fn load_state<S: Storage>(storage: &S) -> Result<Loaded> {
    let epochs = list_epochs(storage).await?;
    let Some(&epoch) = epochs.last() else {
        let snapshot =
            serde_json::to_vec(&State::default().snapshot()).expect("state serialises to JSON");
        let snapshot_bytes = snapshot.len();
        storage
            .create(&epoch_name(1), create_json(snapshot))
            .await
            .map_err(Error::storage("creating the state log"))?;
        return Ok(Loaded {
            state: State::default(),
            epoch: 1,
            log_bytes: 0,
            snapshot_bytes,
        });
    };
    let loaded = replay(storage, epoch).await?;
    for old in epochs.iter().filter(|&&e| e < epoch) {
        if let Err(e) = storage.delete(&epoch_name(*old)).await {
            tracing::warn!(epoch = old, error = %e, "could not delete an old subscription state epoch");
        }
    }
    Ok(loaded)
}

/// The state epochs in the store, in ascending order.
async fn list_epochs<S: Storage>(storage: &S) -> Result<Vec<u64>> {
    let mut epochs: Vec<u64> = storage
        .list()
        .await
        .map_err(Error::storage("listing internal streams"))?
        .iter()
        .filter_map(|info| info.name.as_str().strip_prefix(STATE_PREFIX))
        .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
        .collect();
    epochs.sort_unstable();
    Ok(epochs)
}

/// Rebuilds the state from epoch `epoch`: its snapshot, then its events.
async fn replay<S: Storage>(storage: &S, epoch: u64) -> Result<Loaded> {
    let stream = epoch_name(epoch);
    let messages = read_all(storage, &stream).await?;
    let mut state = State::default();
    let mut log_bytes = 0;
    let mut snapshot_bytes = 0;
    for (i, msg) in messages.iter().enumerate() {
        let event: Event = serde_json::from_slice(msg).map_err(|e| Error::Corrupt {
            stream: stream.to_string(),
            reason: format!("record {i}: {e}"),
        })?;
        if i == 0 {
            if !matches!(event, Event::Snapshot { .. }) {
                return Err(Error::Corrupt {
                    stream: stream.to_string(),
                    reason: "the first record is not a snapshot".to_owned(),
                });
            }
            snapshot_bytes = msg.len();
        } else {
            log_bytes += msg.len();
        }
        state.apply(event);
    }
    Ok(Loaded {
        state,
        epoch,
        log_bytes,
        snapshot_bytes,
    })
}

/// The `Stream-Seq` source of a cluster-mode engine: its lease term and a counter shared by
/// every activation of the process, so seqs never repeat even when the same node is
/// re-activated with the same term.
#[derive(Debug, Clone)]
pub(crate) struct Fencing {
    term: u64,
    /// The activation of this process the seqs belong to: a node that lost its lease and took
    /// it back with the same term (nobody else held it meanwhile) activates again with a larger
    /// run, so a writer of its earlier activation still draining is fenced too.
    run: u64,
    counter: Arc<AtomicU64>,
}

impl Fencing {
    pub(crate) fn new(term: u64, run: u64, counter: Arc<AtomicU64>) -> Fencing {
        Fencing { term, run, counter }
    }

    /// The epochs this term may create: `[term << 32, (term + 1) << 32)`, so every epoch of a
    /// later term sorts above every epoch of an earlier one (the first term is 1; epoch 1 is a
    /// single-node log's).
    fn epochs(&self) -> std::ops::Range<u64> {
        let first = self.term.saturating_mul(1 << 32).max(1);
        first..self.term.saturating_add(1).saturating_mul(1 << 32)
    }

    /// The next seq: `{term:016x}{run:016x}{counter:016x}`, so byte order is (term, run,
    /// counter) order.
    pub(crate) fn next_seq(&self) -> String {
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:016x}{:016x}{counter:016x}", self.term, self.run)
    }

    /// Appends a fence marker to `epoch` with the next seq.
    async fn fence<S: Storage>(
        &self,
        storage: &S,
        epoch: u64,
    ) -> std::result::Result<(), ds_storage::Error> {
        let marker = serde_json::to_vec(&Event::Fence { term: self.term })
            .expect("a fence marker serialises to JSON");
        storage
            .append(
                &epoch_name(epoch),
                AppendRequest {
                    content_type: Some(JSON.to_owned()),
                    body: Bytes::from(marker),
                    stream_seq: Some(self.next_seq()),
                    ..AppendRequest::default()
                },
            )
            .await
            .map(|_| ())
    }
}

/// Whether a failed append to a state epoch means a newer lease holder fenced it: its seq is
/// higher than ours, or it compacted the epoch away.
fn is_fenced(e: &ds_storage::Error) -> bool {
    matches!(
        e,
        ds_storage::Error::SeqRegression { .. }
            | ds_storage::Error::NotFound
            | ds_storage::Error::Gone
    )
}

/// How often [`activate_state`] starts over because epochs vanished under it before giving up
/// (each restart means another node deleted an epoch: the lease is changing hands).
const ACTIVATE_ATTEMPTS: usize = 8;

/// Takes the state log over for lease term `fencing.term` (see the module docs): fences the
/// highest epoch (and any higher one that appears meanwhile), replays it, compacts it into a
/// fresh epoch numbered at least `term << 32`, confirms, and deletes the lower epochs. Returns
/// the state and the fresh epoch, which only this term appends to.
///
/// # Errors
///
/// [`Error::Fenced`] when a node with a newer term fenced the log first (this one must not
/// act), and the storage and corruption errors of replaying.
///
/// # Panics
///
/// Never: a state always serialises to JSON.
pub(crate) async fn activate_state<S: Storage>(storage: &S, fencing: &Fencing) -> Result<Loaded> {
    let own = fencing.epochs();
    // An epoch of a newer term means a newer holder took the log over: this node is stale.
    let newer = |epoch: u64| Error::Fenced {
        by: format!("state epoch {epoch:016x} of a newer lease term"),
    };
    'restart: for _ in 0..ACTIVATE_ATTEMPTS {
        let epochs = list_epochs(storage).await?;
        let mut current = if let Some(&highest) = epochs.last() {
            if highest >= own.end {
                return Err(newer(highest));
            }
            highest
        } else {
            let snapshot =
                serde_json::to_vec(&State::default().snapshot()).expect("state serialises to JSON");
            match storage
                .create(&epoch_name(own.start), create_json(snapshot))
                .await
            {
                Ok(_) | Err(ds_storage::Error::ConfigMismatch { .. }) => own.start,
                Err(e) => return Err(Error::storage("creating the state log")(e)),
            }
        };
        // Fence the highest epoch until no higher one appears behind the fence.
        loop {
            match fencing.fence(storage, current).await {
                Ok(()) => {}
                Err(ds_storage::Error::NotFound | ds_storage::Error::Gone) => continue 'restart,
                Err(ds_storage::Error::SeqRegression { last, .. }) => {
                    return Err(Error::Fenced { by: last });
                }
                Err(e) => return Err(Error::storage("fencing the state log")(e)),
            }
            match list_epochs(storage).await?.last() {
                Some(&higher) if higher >= own.end => return Err(newer(higher)),
                Some(&higher) if higher > current => current = higher,
                _ => break,
            }
        }
        let loaded = match replay(storage, current).await {
            Ok(loaded) => loaded,
            Err(Error::Storage {
                source: ds_storage::Error::NotFound | ds_storage::Error::Gone,
                ..
            }) => continue 'restart,
            Err(e) => return Err(e),
        };
        let highest = list_epochs(storage).await?.last().copied().unwrap_or(0);
        if highest >= own.end {
            return Err(newer(highest));
        }
        let fresh = highest.max(current).saturating_add(1).max(own.start);
        if fresh >= own.end {
            return Err(Error::Corrupt {
                stream: STATE_PREFIX.to_owned(),
                reason: format!("no state epoch left for lease term {}", fencing.term),
            });
        }
        let snapshot =
            serde_json::to_vec(&loaded.state.snapshot()).expect("state serialises to JSON");
        let snapshot_bytes = snapshot.len();
        match storage
            .create(&epoch_name(fresh), create_json(snapshot))
            .await
        {
            Ok(CreateOutcome::Created(_)) => {}
            // Not ours: whoever made it outranks this attempt; look again.
            Ok(CreateOutcome::Existed(_)) | Err(ds_storage::Error::ConfigMismatch { .. }) => {
                continue 'restart;
            }
            Err(e) => return Err(Error::storage("compacting the state log")(e)),
        }
        if let Err(e) = fencing.fence(storage, current).await {
            delete_epoch(storage, fresh).await;
            return Err(match e {
                ds_storage::Error::SeqRegression { last, .. } => Error::Fenced { by: last },
                e if is_fenced(&e) => Error::Fenced {
                    by: "a deleted epoch".to_owned(),
                },
                e => Error::storage("confirming the state log")(e),
            });
        }
        for old in list_epochs(storage)
            .await?
            .into_iter()
            .filter(|&e| e < fresh)
        {
            delete_epoch(storage, old).await;
        }
        return Ok(Loaded {
            state: loaded.state,
            epoch: fresh,
            log_bytes: 0,
            snapshot_bytes,
        });
    }
    Err(Error::Fenced {
        by: "epochs that kept changing".to_owned(),
    })
}

async fn delete_epoch<S: Storage>(storage: &S, epoch: u64) {
    match storage.delete(&epoch_name(epoch)).await {
        Ok(()) | Err(ds_storage::Error::NotFound) => {}
        Err(e) => {
            tracing::warn!(epoch, error = %e, "could not delete a subscription state epoch");
        }
    }
}

/// Work for the log writer, in the order the state changed.
pub enum LogOp {
    /// One serialised event.
    Event(Vec<u8>),
    /// Start a new epoch with this serialised snapshot.
    Snapshot(Vec<u8>),
    /// Report once everything before this is durable (as durable as the backend makes appends).
    Flush(oneshot::Sender<Result<(), String>>),
}

/// Appends events in order, batching what queued up meanwhile into one JSON-array append
/// (atomic on every backend). Ends when every sender is gone.
pub async fn run_writer<S: Storage>(
    storage: Arc<S>,
    epoch: u64,
    rx: mpsc::UnboundedReceiver<LogOp>,
) {
    run_fenced_writer(storage, epoch, rx, None).await;
}

/// What makes a cluster-mode writer different: seqs on every append, a confirmed compaction,
/// and what to do once fenced.
pub(crate) struct WriterFence {
    /// The seq source of this activation.
    pub(crate) fencing: Fencing,
    /// Called once, when an append or a compaction finds the log fenced by a newer term.
    pub(crate) on_fenced: Box<dyn FnOnce() + Send>,
    /// The activation's stop signal (its sender is dropped on deactivation): the writer stops
    /// at once, dropping what is queued (flush waiters see the writer gone).
    pub(crate) stop: watch::Receiver<()>,
}

/// [`run_writer`], fenced in cluster mode. After it is fenced it appends nothing more and
/// answers every flush with an error.
pub(crate) async fn run_fenced_writer<S: Storage>(
    storage: Arc<S>,
    epoch: u64,
    mut rx: mpsc::UnboundedReceiver<LogOp>,
    fence: Option<WriterFence>,
) {
    let (fencing, mut on_fenced, mut stop) = match fence {
        Some(f) => (Some(f.fencing), Some(f.on_fenced), Some(f.stop)),
        None => (None, None, None),
    };
    let mut w = Writer {
        storage,
        epoch,
        fencing,
        batch: Vec::new(),
        failed: None,
        fenced: false,
    };
    loop {
        let first = match &mut stop {
            Some(stop) => tokio::select! {
                biased;
                _ = stop.changed() => return,
                op = rx.recv() => op,
            },
            None => rx.recv().await,
        };
        let Some(first) = first else {
            return;
        };
        let mut ops = vec![first];
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        for op in ops {
            match op {
                LogOp::Event(bytes) => {
                    w.batch.push(if w.batch.is_empty() { b'[' } else { b',' });
                    w.batch.extend_from_slice(&bytes);
                }
                LogOp::Snapshot(bytes) => {
                    w.flush().await;
                    w.compact(bytes).await;
                }
                LogOp::Flush(done) => {
                    w.flush().await;
                    // Deactivate before answering: the waiting handler then sees this node as
                    // no longer serving.
                    w.report_fenced(&mut on_fenced);
                    let _ = done.send(w.outcome());
                }
            }
            w.report_fenced(&mut on_fenced);
        }
        w.flush().await;
        w.report_fenced(&mut on_fenced);
    }
}

/// The log writer's state.
struct Writer<S> {
    storage: Arc<S>,
    epoch: u64,
    /// `Some` in cluster mode.
    fencing: Option<Fencing>,
    /// Events not yet appended, as a JSON array being built.
    batch: Vec<u8>,
    /// The last append failure not superseded by a snapshot.
    failed: Option<String>,
    /// A newer lease term fenced the log: nothing more is written.
    fenced: bool,
}

impl<S: Storage> Writer<S> {
    /// Calls `on_fenced` (once) when the log has been fenced.
    fn report_fenced(&self, on_fenced: &mut Option<Box<dyn FnOnce() + Send>>) {
        if self.fenced
            && let Some(on_fenced) = on_fenced.take()
        {
            on_fenced();
        }
    }

    fn outcome(&self) -> Result<(), String> {
        if self.fenced {
            return Err("the state log was fenced by another node".to_owned());
        }
        self.failed.clone().map_or(Ok(()), Err)
    }

    async fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.batch.push(b']');
        let body = Bytes::from(std::mem::take(&mut self.batch));
        if self.fenced {
            return;
        }
        let req = AppendRequest {
            content_type: Some(JSON.to_owned()),
            body,
            stream_seq: self.fencing.as_ref().map(Fencing::next_seq),
            ..AppendRequest::default()
        };
        if let Err(e) = self.storage.append(&epoch_name(self.epoch), req).await {
            if self.fencing.is_some() && is_fenced(&e) {
                tracing::warn!(error = %e, "the subscription state log was fenced by another node");
                self.fenced = true;
            } else {
                tracing::error!(error = %e, "could not persist subscription state");
                self.failed = Some(e.to_string());
            }
        }
    }

    /// Starts a new epoch with `snapshot` and deletes the old one; in cluster mode only after
    /// confirming, with a fenced append to the old epoch, that no newer term took the log over.
    async fn compact(&mut self, snapshot: Vec<u8>) {
        if self.fenced {
            return;
        }
        let next = self.epoch + 1;
        if self
            .fencing
            .as_ref()
            .is_some_and(|f| !f.epochs().contains(&next))
        {
            tracing::error!(
                epoch = self.epoch,
                "no state epoch left for this lease term; continuing the current epoch"
            );
            return;
        }
        let created = self
            .storage
            .create(&epoch_name(next), create_json(snapshot))
            .await;
        let Some(fencing) = &self.fencing else {
            match created {
                Ok(_) => {
                    if let Err(e) = self.storage.delete(&epoch_name(self.epoch)).await {
                        tracing::warn!(epoch = self.epoch, error = %e, "could not delete a compacted state epoch");
                    }
                    self.epoch = next;
                    // A complete snapshot supersedes any earlier write failure.
                    self.failed = None;
                }
                Err(e) => {
                    tracing::error!(error = %e, "subscription state compaction failed; continuing the current epoch");
                }
            }
            return;
        };
        match created {
            Ok(CreateOutcome::Created(_)) => {}
            Ok(CreateOutcome::Existed(_)) => {
                tracing::error!(
                    epoch = next,
                    "subscription state compaction found its new epoch already there; continuing the current epoch"
                );
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "subscription state compaction failed; continuing the current epoch");
                return;
            }
        }
        match fencing.fence(&*self.storage, self.epoch).await {
            Ok(()) => {
                delete_epoch(&*self.storage, self.epoch).await;
                self.epoch = next;
                self.failed = None;
            }
            Err(e) => {
                // The new epoch was never appended to: nothing is lost by deleting it.
                delete_epoch(&*self.storage, next).await;
                if is_fenced(&e) {
                    tracing::warn!(error = %e, "the subscription state log was fenced by another node during compaction");
                    self.fenced = true;
                } else {
                    tracing::error!(error = %e, "could not confirm a subscription state compaction; continuing the current epoch");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use ds_storage_memory::MemoryStorage;

    use super::*;

    fn fencing(term: u64, counter: &Arc<AtomicU64>) -> Fencing {
        Fencing::new(term, 1, counter.clone())
    }

    /// A cluster-mode writer of `epoch` for `term`, and whether it reported being fenced.
    fn writer(
        storage: &Arc<MemoryStorage>,
        epoch: u64,
        fencing: Fencing,
    ) -> (
        mpsc::UnboundedSender<LogOp>,
        Arc<Mutex<bool>>,
        watch::Sender<()>,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop) = watch::channel(());
        let fenced = Arc::new(Mutex::new(false));
        let flag = fenced.clone();
        tokio::spawn(run_fenced_writer(
            storage.clone(),
            epoch,
            rx,
            Some(WriterFence {
                fencing,
                on_fenced: Box::new(move || *flag.lock().expect("lock") = true),
                stop,
            }),
        ));
        (tx, fenced, stop_tx)
    }

    async fn flush(tx: &mpsc::UnboundedSender<LogOp>) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        tx.send(LogOp::Flush(done)).expect("writer running");
        rx.await.expect("writer answers")
    }

    /// A well-formed event (a delete of an unknown id replays as a no-op).
    fn put_event(id: &str) -> Vec<u8> {
        serde_json::to_vec(&Event::Delete { id: id.to_owned() }).expect("json")
    }

    #[test]
    fn seqs_sort_by_term_then_run_then_counter() {
        let counter = Arc::new(AtomicU64::new(u64::from(u32::MAX) + 5));
        let old = fencing(1, &counter).next_seq();
        let newer_term = fencing(2, &Arc::new(AtomicU64::new(0))).next_seq();
        let same_term_later = fencing(1, &counter).next_seq();
        assert_eq!(old, "000000000000000100000000000000010000000100000004");
        assert!(old < same_term_later && same_term_later < newer_term);
        assert_eq!(newer_term.len(), 48);
        // The same term again in a later activation of the process: its first seq sorts
        // above everything the earlier activation's writer can still produce.
        let later_run = Fencing::new(1, 2, Arc::new(AtomicU64::new(0))).next_seq();
        let earlier_run_still_writing = fencing(1, &counter).next_seq();
        assert!(earlier_run_still_writing < later_run && later_run < newer_term);
    }

    #[tokio::test]
    async fn activation_takes_the_log_over_into_an_epoch_of_its_term() {
        let storage = Arc::new(MemoryStorage::default());
        let counter = Arc::new(AtomicU64::new(0));
        // A single-node log exists (epoch 1): the first activation adopts it.
        let single = load_state(&*storage).await.expect("load");
        assert_eq!(single.epoch, 1);
        let first = activate_state(&*storage, &fencing(3, &counter))
            .await
            .expect("activate");
        assert_eq!(first.epoch, 3 << 32);
        assert_eq!(list_epochs(&*storage).await.expect("list"), vec![3 << 32]);
        // The same node, re-activated with the same term, continues after its own epoch.
        let again = activate_state(&*storage, &fencing(3, &counter))
            .await
            .expect("re-activate");
        assert_eq!(again.epoch, (3 << 32) + 1);
        // A newer term wins; an older one is refused.
        let newer = activate_state(&*storage, &fencing(4, &Arc::new(AtomicU64::new(0))))
            .await
            .expect("newer term");
        assert_eq!(newer.epoch, 4 << 32);
        // A stale node whose activation lists the newer term's epoch before that term appended
        // anything to it must not touch it (its seq would still be accepted there).
        let stale = activate_state(&*storage, &fencing(3, &counter)).await.err();
        assert!(matches!(stale, Some(Error::Fenced { .. })), "{stale:?}");
        assert_eq!(list_epochs(&*storage).await.expect("list"), vec![4 << 32]);
        let untouched = read_all(&*storage, &epoch_name(4 << 32))
            .await
            .expect("read");
        assert_eq!(untouched.len(), 1, "only the snapshot");
    }

    #[tokio::test]
    async fn a_fenced_writer_stops_and_reports_it() {
        let storage = Arc::new(MemoryStorage::default());
        let old_counter = Arc::new(AtomicU64::new(0));
        let old = activate_state(&*storage, &fencing(1, &old_counter))
            .await
            .expect("activate");
        let (tx, fenced, _stop) = writer(&storage, old.epoch, fencing(1, &old_counter));
        tx.send(LogOp::Event(put_event("before"))).expect("send");
        assert_eq!(flush(&tx).await, Ok(()));

        let new = activate_state(&*storage, &fencing(2, &Arc::new(AtomicU64::new(0))))
            .await
            .expect("take over");
        let replayed = read_all(&*storage, &epoch_name(new.epoch))
            .await
            .expect("read");
        assert_eq!(replayed.len(), 1, "the new epoch starts with one snapshot");

        tx.send(LogOp::Event(put_event("after"))).expect("send");
        assert!(
            flush(&tx).await.is_err(),
            "the old term's append is refused"
        );
        assert!(*fenced.lock().expect("lock"));
        // Nothing of the old term reached the new epoch.
        let after = read_all(&*storage, &epoch_name(new.epoch))
            .await
            .expect("read");
        assert_eq!(after, replayed);
    }

    /// An activation with `earlier(counter)` writes; `later` fences its epoch (and has not
    /// deleted it yet: it is still replaying); the earlier writer's next append is refused and
    /// it reports being fenced.
    async fn assert_fenced_by(earlier: impl Fn(&Arc<AtomicU64>) -> Fencing, later: Fencing) {
        let storage = Arc::new(MemoryStorage::default());
        let counter = Arc::new(AtomicU64::new(0));
        let old = activate_state(&*storage, &earlier(&counter))
            .await
            .expect("activate");
        let (tx, fenced, _stop) = writer(&storage, old.epoch, earlier(&counter));
        tx.send(LogOp::Event(put_event("before"))).expect("send");
        assert_eq!(flush(&tx).await, Ok(()));
        later.fence(&*storage, old.epoch).await.expect("fence");
        let fenced_log = read_all(&*storage, &epoch_name(old.epoch))
            .await
            .expect("read");
        tx.send(LogOp::Event(put_event("after"))).expect("send");
        assert!(flush(&tx).await.is_err(), "refused by Stream-Seq");
        assert!(*fenced.lock().expect("lock"));
        let after = read_all(&*storage, &epoch_name(old.epoch))
            .await
            .expect("read");
        assert_eq!(after, fenced_log, "nothing appended after the fence");
    }

    #[tokio::test]
    async fn an_older_term_cannot_append_to_an_epoch_a_newer_term_fenced() {
        assert_fenced_by(
            |counter| fencing(1, counter),
            fencing(2, &Arc::new(AtomicU64::new(0))),
        )
        .await;
    }

    #[tokio::test]
    async fn a_later_activation_with_the_same_term_fences_the_earlier_one() {
        // The node lost its lease locally and took it back before anyone else did: same term,
        // a later run, a fresh counter (lower than the earlier run's): the run orders the seqs.
        assert_fenced_by(
            |counter| Fencing::new(4, 1, counter.clone()),
            Fencing::new(4, 2, Arc::new(AtomicU64::new(0))),
        )
        .await;
    }

    #[tokio::test]
    async fn a_stale_compaction_deletes_its_new_epoch_when_the_confirm_fails() {
        let storage = Arc::new(MemoryStorage::default());
        let old_counter = Arc::new(AtomicU64::new(0));
        let old = activate_state(&*storage, &fencing(1, &old_counter))
            .await
            .expect("activate");
        let (tx, fenced, _stop) = writer(&storage, old.epoch, fencing(1, &old_counter));
        // A newer term fences the old epoch (the first step of its activation).
        fencing(2, &Arc::new(AtomicU64::new(0)))
            .fence(&*storage, old.epoch)
            .await
            .expect("fence");
        let snapshot = serde_json::to_vec(&State::default().snapshot()).expect("json");
        tx.send(LogOp::Snapshot(snapshot)).expect("send");
        assert!(flush(&tx).await.is_err());
        assert!(*fenced.lock().expect("lock"));
        assert_eq!(
            list_epochs(&*storage).await.expect("list"),
            vec![old.epoch],
            "the unconfirmed epoch is gone"
        );
    }

    #[tokio::test]
    async fn a_confirmed_compaction_moves_the_writer_to_the_new_epoch() {
        let storage = Arc::new(MemoryStorage::default());
        let counter = Arc::new(AtomicU64::new(0));
        let loaded = activate_state(&*storage, &fencing(1, &counter))
            .await
            .expect("activate");
        let (tx, fenced, _stop) = writer(&storage, loaded.epoch, fencing(1, &counter));
        let snapshot = serde_json::to_vec(&State::default().snapshot()).expect("json");
        tx.send(LogOp::Snapshot(snapshot)).expect("send");
        tx.send(LogOp::Event(put_event("x"))).expect("send");
        assert_eq!(flush(&tx).await, Ok(()));
        assert!(!*fenced.lock().expect("lock"));
        assert_eq!(
            list_epochs(&*storage).await.expect("list"),
            vec![loaded.epoch + 1]
        );
        let replayed = replay(&*storage, loaded.epoch + 1).await.expect("replay");
        assert!(replayed.log_bytes > 0, "the event went to the new epoch");
    }
}
