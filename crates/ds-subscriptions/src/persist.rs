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

use std::sync::Arc;

use bytes::Bytes;
use ds_protocol::{NameLimits, StreamName};
use ds_storage::{AppendRequest, CreateOutcome, CreateRequest, ReadFrom, Storage};
use tokio::sync::{mpsc, oneshot};

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
    let mut epochs: Vec<u64> = storage
        .list()
        .await
        .map_err(Error::storage("listing internal streams"))?
        .iter()
        .filter_map(|info| info.name.as_str().strip_prefix(STATE_PREFIX))
        .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
        .collect();
    epochs.sort_unstable();
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
    for old in epochs.iter().filter(|&&e| e < epoch) {
        if let Err(e) = storage.delete(&epoch_name(*old)).await {
            tracing::warn!(epoch = old, error = %e, "could not delete an old subscription state epoch");
        }
    }
    Ok(Loaded {
        state,
        epoch,
        log_bytes,
        snapshot_bytes,
    })
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
    mut epoch: u64,
    mut rx: mpsc::UnboundedReceiver<LogOp>,
) {
    let mut batch: Vec<u8> = Vec::new();
    let mut failed: Option<String> = None;
    while let Some(first) = rx.recv().await {
        let mut ops = vec![first];
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        for op in ops {
            match op {
                LogOp::Event(bytes) => {
                    batch.push(if batch.is_empty() { b'[' } else { b',' });
                    batch.extend_from_slice(&bytes);
                }
                LogOp::Snapshot(bytes) => {
                    flush(&*storage, epoch, &mut batch, &mut failed).await;
                    match storage
                        .create(&epoch_name(epoch + 1), create_json(bytes))
                        .await
                    {
                        Ok(_) => {
                            if let Err(e) = storage.delete(&epoch_name(epoch)).await {
                                tracing::warn!(epoch, error = %e, "could not delete a compacted state epoch");
                            }
                            epoch += 1;
                            // A complete snapshot supersedes any earlier write failure.
                            failed = None;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "subscription state compaction failed; continuing the current epoch");
                        }
                    }
                }
                LogOp::Flush(done) => {
                    flush(&*storage, epoch, &mut batch, &mut failed).await;
                    let _ = done.send(failed.clone().map_or(Ok(()), Err));
                }
            }
        }
        flush(&*storage, epoch, &mut batch, &mut failed).await;
    }
}

async fn flush<S: Storage>(
    storage: &S,
    epoch: u64,
    batch: &mut Vec<u8>,
    failed: &mut Option<String>,
) {
    if batch.is_empty() {
        return;
    }
    batch.push(b']');
    let body = Bytes::from(std::mem::take(batch));
    let req = AppendRequest {
        content_type: Some(JSON.to_owned()),
        body,
        ..AppendRequest::default()
    };
    if let Err(e) = storage.append(&epoch_name(epoch), req).await {
        tracing::error!(error = %e, "could not persist subscription state");
        *failed = Some(e.to_string());
    }
}
