//! Group commit of appends: every append (and close) is queued; a few committer tasks each
//! take everything queued (up to 512 operations and 16 MiB of bodies), apply it in one
//! transaction and commit once.
//!
//! Normally one batch is in flight per node ([`Gate`]): what queues up while it commits is
//! the next batch, so batches grow with the load and the database runs a few statements per
//! batch rather than per append. A batch that takes longer than [`STALL`] (waiting on a row
//! lock another node holds, or a slow flush) lets the next committer start, so one slow batch
//! never holds up every stream of the node.
//!
//! A batch locks the rows of the streams it touches with one `SELECT ... ORDER BY name FOR
//! UPDATE`: per-stream order comes from the row lock, never from a global lock, and every
//! batch on every node locks in the same order, so batches do not deadlock each other. (A
//! deadlock with a delete cascading up a fork chain is still possible; PostgreSQL breaks it by
//! failing one transaction, and the batch runs again: nothing of it had committed.)
//!
//! Inside the transaction each operation is validated by [`ds_storage::rules`] against the
//! stream's state as the operations before it in the batch left it. A rejected operation
//! writes nothing and is answered with its error; the rest of the batch commits. Then, in a
//! handful of statements for the whole batch: the records, the stream rows (tail, bytes,
//! closure, `Stream-Seq`, last access), the producer states, and one `NOTIFY` per stream.
//! Writers are answered only after `COMMIT` returned.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_postgres::{ClientWrapper, Object};
use ds_protocol::StreamName;
use ds_storage::rules::{self, AppendPlan, ProducerState};
use ds_storage::{AppendOutcome, AppendRequest, Error, ProducerAck, Result, Tail};
use futures_util::future::{try_join, try_join3};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::Shared;
use crate::db;
use crate::error::{again, backend, is_retryable};
use crate::schema::{STREAM_COLUMNS, StreamRow, from_db, to_db};
use crate::stream::{Changes, expire_locked, notify_committed};

/// Most operations one transaction carries.
const MAX_BATCH: usize = 512;

/// Most body bytes one transaction carries (all its records travel in one `bytea[]`
/// parameter, and PostgreSQL refuses messages over 1 GiB); a larger single append goes alone.
const MAX_BATCH_BYTES: usize = 16 << 20;

/// How often a batch that lost a deadlock or serialization race is run again.
const MAX_ATTEMPTS: u32 = 8;

/// How long a committer waits for the batch in flight before starting one of its own.
const STALL: Duration = Duration::from_millis(25);

/// The turn to commit: held by the committer whose batch is in flight.
pub(crate) type Gate = Arc<Mutex<()>>;

/// One queued append.
pub(crate) struct Op {
    pub(crate) name: StreamName,
    pub(crate) req: AppendRequest,
    pub(crate) reply: oneshot::Sender<Result<AppendOutcome>>,
}

/// What the committers share: the queue, and an operation taken from it that did not fit
/// the batch being gathered (the next batch starts with it).
pub(crate) struct Inbox {
    rx: mpsc::UnboundedReceiver<Op>,
    held: Option<Op>,
}

/// The queue the committers share.
pub(crate) type Queue = Arc<Mutex<Inbox>>;

/// A queue over `rx` for the committers.
pub(crate) fn queue(rx: mpsc::UnboundedReceiver<Op>) -> Queue {
    Arc::new(Mutex::new(Inbox { rx, held: None }))
}

/// One committer: waits for an operation, then for its turn (the batch in flight committed,
/// or has taken longer than [`STALL`]), takes what is queued by then, commits it, answers.
/// Ends when the store is dropped.
pub(crate) async fn committer(shared: Arc<Shared>, queue: Queue, gate: Gate) {
    loop {
        let (batch, _turn) = {
            // One committer gathers at a time; the others wait for the queue.
            let mut inbox = queue.lock().await;
            let Some(first) = next_op(&mut inbox).await else {
                return;
            };
            let turn = tokio::time::timeout(STALL, Arc::clone(&gate).lock_owned())
                .await
                .ok();
            (take_batch(&mut inbox, first), turn)
        };
        run(&shared, batch).await;
    }
}

/// Waits for the next operation; `None` once the queue is closed and drained.
async fn next_op(inbox: &mut Inbox) -> Option<Op> {
    match inbox.held.take() {
        Some(op) => Some(op),
        None => inbox.rx.recv().await,
    }
}

/// Starts a batch with `first` and takes what else is queued, up to [`MAX_BATCH`] operations
/// and [`MAX_BATCH_BYTES`] of bodies (an operation larger than that goes alone).
fn take_batch(inbox: &mut Inbox, first: Op) -> Vec<Op> {
    let mut bytes = first.req.body.len();
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
        let Ok(op) = inbox.rx.try_recv() else {
            break;
        };
        let len = op.req.body.len();
        if bytes.saturating_add(len) > MAX_BATCH_BYTES {
            inbox.held = Some(op);
            break;
        }
        bytes += len;
        batch.push(op);
    }
    batch
}

/// Commits one batch (running it again after a lost race) and answers its writers.
async fn run(shared: &Shared, batch: Vec<Op>) {
    let mut attempt = 0;
    let result = loop {
        attempt += 1;
        match try_batch(shared, &batch).await {
            Err(e) if attempt < MAX_ATTEMPTS && is_retryable(&e) => {
                tracing::debug!(error = %e, attempt, "append batch lost a race; running it again");
            }
            other => break other,
        }
    };
    match result {
        Ok((outcomes, tails, client)) => {
            for (name, id, tail) in &tails {
                shared.registry.publish(name, *id, *tail);
            }
            for (op, outcome) in batch.into_iter().zip(outcomes) {
                // The writer may have gone away; its append is committed all the same.
                let _ = op.reply.send(outcome);
            }
            notify_committed(shared, &client, &tails).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, ops = batch.len(), "append batch failed");
            for op in batch {
                let _ = op.reply.send(Err(again(&e)));
            }
        }
    }
}

type Committed = (Vec<Result<AppendOutcome>>, Vec<(String, u64, Tail)>, Object);

async fn try_batch(shared: &Shared, batch: &[Op]) -> Result<Committed> {
    let client = shared
        .pool
        .get()
        .await
        .map_err(|e| backend("get a database connection", e))?;
    let applied = apply(shared, &client, batch).await;
    let applied = match applied {
        Ok(a) => a,
        Err(e) => {
            rollback(client).await;
            return Err(e);
        }
    };
    let started = Instant::now();
    db::simple(&client, "commit append batch", "COMMIT").await?;
    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    shared.stats.batches.fetch_add(1, Ordering::Relaxed);
    shared
        .stats
        .ops
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    shared
        .stats
        .commit_micros
        .fetch_add(micros, Ordering::Relaxed);
    let (outcomes, tails) = applied;
    Ok((outcomes, tails, client))
}

/// Rolls back; a connection that cannot even do that is discarded, never reused.
pub(crate) async fn rollback(client: Object) {
    if client.batch_execute("ROLLBACK").await.is_err() {
        drop(Object::take(client));
    }
}

/// A stream as the batch has left it so far.
struct Work {
    row: StreamRow,
    writer: rules::WriterState,
    dirty: bool,
    /// Expired during this batch: later operations on it get this answer.
    ended: Option<bool>,
}

/// Records to insert, column by column.
#[derive(Default)]
struct Records {
    ids: Vec<i64>,
    seqs: Vec<i64>,
    starts: Vec<i64>,
    batch_ends: Vec<bool>,
    data: Vec<Bytes>,
}

async fn apply(
    shared: &Shared,
    client: &ClientWrapper,
    batch: &[Op],
) -> Result<(Vec<Result<AppendOutcome>>, Changes)> {
    // Statements sent together are pipelined on the connection (one round trip), and
    // PostgreSQL runs them in order: BEGIN, then the row locks.
    let ((), mut work) = try_join(
        db::simple(client, "begin append batch", "BEGIN"),
        lock_streams(client, batch),
    )
    .await?;
    load_producers(client, batch, &mut work).await?;

    let now = shared.clock.now_ms();
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut records = Records::default();
    let mut producers: HashMap<(u64, String), ProducerState> = HashMap::new();
    // Streams this batch found expired (and expired): their readers learn they are gone.
    let mut ended = Vec::new();
    for op in batch {
        let Some(w) = work.get_mut(op.name.as_str()) else {
            outcomes.push(Err(Error::NotFound));
            continue;
        };
        if w.ended.is_none()
            && !w.row.soft_deleted
            && rules::is_expired(w.row.expiry, w.row.last_access_ms, now)
        {
            w.ended = Some(expire_locked(client, &w.row, &mut ended).await?);
        }
        match w.ended {
            Some(true) => outcomes.push(Err(Error::Gone)),
            Some(false) => outcomes.push(Err(Error::NotFound)),
            None if w.row.soft_deleted => outcomes.push(Err(Error::Gone)),
            None => outcomes.push(apply_one(
                shared,
                w,
                &op.req,
                now,
                &mut records,
                &mut producers,
            )),
        }
    }

    let dirty: Vec<&Work> = work
        .values()
        .filter(|w| w.dirty && w.ended.is_none())
        .collect();
    let mut tails: Vec<(String, u64, Tail)> = dirty
        .iter()
        .map(|w| {
            (
                w.row.name.clone(),
                w.row.id,
                Tail {
                    next: w.row.tail,
                    closed: w.writer.closed,
                    gone: false,
                },
            )
        })
        .collect();
    tails.append(&mut ended);
    // The writes are independent of each other: one pipelined round trip. COMMIT is sent
    // only once all of them succeeded (a COMMIT after a failed statement would roll back
    // without an error).
    let data: Vec<&[u8]> = records.data.iter().map(AsRef::as_ref).collect();
    let insert = async {
        if records.ids.is_empty() {
            return Ok(());
        }
        db::execute(
            client,
            "insert records",
            "INSERT INTO ds_records (stream_id, seq, start_byte, batch_end, data) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::boolean[], \
             $5::bytea[])",
            &[
                &records.ids,
                &records.seqs,
                &records.starts,
                &records.batch_ends,
                &data,
            ],
        )
        .await
        .map(drop)
    };
    let update = async {
        if dirty.is_empty() {
            return Ok(());
        }
        update_streams(client, &dirty).await
    };
    let save = async {
        if producers.is_empty() {
            return Ok(());
        }
        save_producers(client, &producers).await
    };
    try_join3(insert, update, save).await?;
    Ok((outcomes, tails))
}

/// Locks the rows of every stream the batch names, in name order (see the module docs).
async fn lock_streams(client: &ClientWrapper, batch: &[Op]) -> Result<HashMap<String, Work>> {
    let mut names: Vec<&str> = batch.iter().map(|op| op.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let rows = db::query(
        client,
        "lock streams",
        &format!(
            "SELECT {STREAM_COLUMNS} FROM ds_streams WHERE name = ANY($1) ORDER BY name FOR UPDATE"
        ),
        &[&names],
    )
    .await?;
    let mut work: HashMap<String, Work> = HashMap::with_capacity(rows.len());
    for row in &rows {
        let row = StreamRow::decode(row)?;
        work.insert(
            row.name.clone(),
            Work {
                writer: row.writer_without_producers(),
                row,
                dirty: false,
                ended: None,
            },
        );
    }
    Ok(work)
}

/// Writes the new states of the producers a batch advanced.
async fn save_producers(
    client: &ClientWrapper,
    producers: &HashMap<(u64, String), ProducerState>,
) -> Result<()> {
    let mut ids = Vec::with_capacity(producers.len());
    let mut pids = Vec::with_capacity(producers.len());
    let mut epochs = Vec::with_capacity(producers.len());
    let mut seqs = Vec::with_capacity(producers.len());
    for ((id, pid), state) in producers {
        ids.push(to_db(*id));
        pids.push(pid.as_str());
        epochs.push(to_db(state.epoch));
        seqs.push(to_db(state.last_seq));
    }
    db::execute(
        client,
        "save producers",
        "INSERT INTO ds_producers (stream_id, producer_id, epoch, last_seq) \
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[]) \
         ON CONFLICT (stream_id, producer_id) \
         DO UPDATE SET epoch = excluded.epoch, last_seq = excluded.last_seq",
        &[&ids, &pids, &epochs, &seqs],
    )
    .await?;
    Ok(())
}

/// Loads the state of every producer the batch names on the streams it found.
async fn load_producers(
    client: &ClientWrapper,
    batch: &[Op],
    work: &mut HashMap<String, Work>,
) -> Result<()> {
    let mut ids = Vec::new();
    let mut pids = Vec::new();
    for op in batch {
        if let (Some(p), Some(w)) = (&op.req.producer, work.get(op.name.as_str())) {
            ids.push(to_db(w.row.id));
            pids.push(p.id.as_str());
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    let rows = db::query(
        client,
        "read producers",
        "SELECT p.stream_id, p.producer_id, p.epoch, p.last_seq FROM ds_producers p \
         JOIN (SELECT DISTINCT * FROM unnest($1::bigint[], $2::text[])) AS r(sid, pid) \
         ON p.stream_id = r.sid AND p.producer_id = r.pid",
        &[&ids, &pids],
    )
    .await?;
    let by_id: HashMap<u64, String> = work
        .values()
        .map(|w| (w.row.id, w.row.name.clone()))
        .collect();
    for row in rows {
        let sid = from_db(row.try_get(0).map_err(|e| backend("read producers", e))?);
        let pid: String = row.try_get(1).map_err(|e| backend("read producers", e))?;
        let state = ProducerState {
            epoch: from_db(row.try_get(2).map_err(|e| backend("read producers", e))?),
            last_seq: from_db(row.try_get(3).map_err(|e| backend("read producers", e))?),
        };
        if let Some(w) = by_id.get(&sid).and_then(|n| work.get_mut(n)) {
            w.writer.producers.insert(pid, state);
        }
    }
    Ok(())
}

/// Validates and applies one append to the batch's view of its stream.
fn apply_one(
    shared: &Shared,
    w: &mut Work,
    req: &AppendRequest,
    now: u64,
    records: &mut Records,
    producers: &mut HashMap<(u64, String), ProducerState>,
) -> Result<AppendOutcome> {
    let messages = rules::split_body(&w.row.content_type, &req.body, false);
    let plan = rules::plan_append(&w.writer, &w.row.content_type, w.row.tail, req, &messages)?;
    let producer = match &plan {
        AppendPlan::Duplicate(ack) => {
            return Ok(AppendOutcome::Duplicate {
                next: w.row.tail,
                closed: w.writer.closed,
                producer: *ack,
            });
        }
        AppendPlan::AlreadyClosed => return Ok(AppendOutcome::AlreadyClosed { next: w.row.tail }),
        AppendPlan::Write { producer, .. } => producer.clone(),
    };
    let messages = messages?;
    let len: u64 = messages.iter().map(|m| m.len() as u64).sum();
    if w.row.bytes + len > shared.max_stream_bytes {
        return Err(Error::StreamTooLarge {
            limit: shared.max_stream_bytes,
        });
    }
    let count = messages.len();
    for (k, data) in messages.into_iter().enumerate() {
        records.ids.push(to_db(w.row.id));
        records.seqs.push(to_db(w.row.tail.seq));
        records.starts.push(to_db(w.row.tail.byte));
        records.batch_ends.push(k + 1 == count);
        w.row.tail =
            ds_protocol::Offset::new(w.row.tail.seq + 1, w.row.tail.byte + data.len() as u64);
        records.data.push(data);
    }
    w.row.bytes += len;
    w.row.last_access_ms = now;
    rules::apply_append(&mut w.writer, req, &plan);
    w.dirty = true;
    let ack = producer.map(|(pid, state)| {
        producers.insert((w.row.id, pid), state);
        ProducerAck {
            epoch: state.epoch,
            seq: state.last_seq,
        }
    });
    Ok(AppendOutcome::Appended {
        next: w.row.tail,
        closed: w.writer.closed,
        producer: ack,
    })
}

/// Writes the new tail, size, closure, `Stream-Seq` and last access of every changed stream.
async fn update_streams(client: &ClientWrapper, dirty: &[&Work]) -> Result<()> {
    let n = dirty.len();
    let mut ids = Vec::with_capacity(n);
    let mut tail_seqs = Vec::with_capacity(n);
    let mut tail_bytes = Vec::with_capacity(n);
    let mut bytes = Vec::with_capacity(n);
    let mut closed = Vec::with_capacity(n);
    let mut by_id: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut by_epoch: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut by_seq: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut stream_seqs: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut access = Vec::with_capacity(n);
    for w in dirty {
        ids.push(to_db(w.row.id));
        tail_seqs.push(to_db(w.row.tail.seq));
        tail_bytes.push(to_db(w.row.tail.byte));
        bytes.push(to_db(w.row.bytes));
        closed.push(w.writer.closed);
        by_id.push(w.writer.closed_by.as_ref().map(|(id, _, _)| id.as_str()));
        by_epoch.push(w.writer.closed_by.as_ref().map(|(_, e, _)| to_db(*e)));
        by_seq.push(w.writer.closed_by.as_ref().map(|(_, _, s)| to_db(*s)));
        stream_seqs.push(w.writer.last_stream_seq.as_deref());
        access.push(to_db(w.row.last_access_ms));
    }
    db::execute(
        client,
        "update streams",
        "UPDATE ds_streams AS s SET tail_seq = u.tail_seq, tail_byte = u.tail_byte, \
         bytes = u.bytes, closed = u.closed, closed_by_id = u.by_id, \
         closed_by_epoch = u.by_epoch, closed_by_seq = u.by_seq, \
         last_stream_seq = u.stream_seq, last_access_ms = u.access \
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::boolean[], \
         $6::text[], $7::bigint[], $8::bigint[], $9::text[], $10::bigint[]) \
         AS u(id, tail_seq, tail_byte, bytes, closed, by_id, by_epoch, by_seq, stream_seq, access) \
         WHERE s.id = u.id",
        &[
            &ids,
            &tail_seqs,
            &tail_bytes,
            &bytes,
            &closed,
            &by_id,
            &by_epoch,
            &by_seq,
            &stream_seqs,
            &access,
        ],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batches committers would take from `inbox` with no batch in flight.
    async fn next_batch(inbox: &mut Inbox) -> Option<Vec<Op>> {
        let first = next_op(inbox).await?;
        Some(take_batch(inbox, first))
    }

    fn op(len: usize) -> Op {
        let (reply, _) = oneshot::channel();
        Op {
            name: StreamName::parse("s", ds_protocol::NameLimits::default()).expect("valid name"),
            req: AppendRequest {
                body: Bytes::from(vec![0u8; len]),
                ..AppendRequest::default()
            },
            reply,
        }
    }

    #[tokio::test]
    async fn batches_are_cut_by_bytes_and_a_large_append_goes_alone() {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = queue(rx);
        let mut inbox = queue.lock().await;
        let mib = 1 << 20;
        for len in [6 * mib, 6 * mib, 6 * mib, 40 * mib, 1, 2] {
            assert!(tx.send(op(len)).is_ok(), "queued");
        }
        drop(tx);
        let mut sizes = Vec::new();
        while let Some(batch) = next_batch(&mut inbox).await {
            sizes.push(batch.iter().map(|o| o.req.body.len()).collect::<Vec<_>>());
        }
        assert_eq!(
            sizes,
            vec![
                vec![6 * mib, 6 * mib],
                vec![6 * mib],
                vec![40 * mib],
                vec![1, 2]
            ]
        );
    }

    #[tokio::test]
    async fn batches_are_cut_by_count() {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = queue(rx);
        let mut inbox = queue.lock().await;
        for _ in 0..MAX_BATCH + 3 {
            assert!(tx.send(op(1)).is_ok(), "queued");
        }
        drop(tx);
        assert_eq!(
            next_batch(&mut inbox).await.map(|b| b.len()),
            Some(MAX_BATCH)
        );
        assert_eq!(next_batch(&mut inbox).await.map(|b| b.len()), Some(3));
        assert!(next_batch(&mut inbox).await.is_none());
    }
}
