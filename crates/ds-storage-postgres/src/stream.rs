//! Stream-level transactions: create (and fork), delete (and the cascade up a fork chain),
//! expiry, restoring writer state, and the sweep. Each runs in its own transaction on a pooled
//! connection, locking the rows it changes `FOR UPDATE`: a stream's row first, then (for a
//! fork or a cascade) its source's, so every path locks child before parent.

use std::sync::Arc;

use deadpool_postgres::{ClientWrapper, Object};
use ds_protocol::{Offset, StreamName, content_type, fork_expiry};
use ds_storage::rules::{self, ProducerState, WriterState};
use ds_storage::{CreateOutcome, CreateRequest, Error, ForkRequest, Result, StreamInfo, Tail};

use crate::Shared;
use crate::commit::rollback;
use crate::db;
use crate::error::{backend, invalid, is_retryable};
use crate::read::Reader;
use crate::schema::{STREAM_COLUMNS, StreamRow, expiry_cols, from_db, to_db};

/// How often a transaction that lost a deadlock, serialization or unique-key race runs again.
const MAX_ATTEMPTS: u32 = 8;

/// Tails a transaction changed: notified inside it, published locally after its commit.
pub(crate) type Changes = Vec<(String, u64, Tail)>;

/// Runs `$body` (an expression using `$client: &ClientWrapper` and `$changes: &mut Changes`)
/// in a transaction, committing on `Ok`, rolling back on `Err`, and running it again after a
/// lost race.
macro_rules! in_txn {
    ($shared:expr, |$client:ident, $changes:ident| $body:expr) => {{
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let object = begin($shared).await?;
            let $client: &ClientWrapper = &object;
            let mut changes = Changes::new();
            let $changes = &mut changes;
            let result = $body;
            match end($shared, object, result, changes).await {
                Err(e) if attempt < MAX_ATTEMPTS && is_retryable(&e) => {}
                other => break other,
            }
        }
    }};
}

async fn begin(shared: &Shared) -> Result<Object> {
    let client = shared
        .pool
        .get()
        .await
        .map_err(|e| backend("get a database connection", e))?;
    db::simple(&client, "begin transaction", "BEGIN").await?;
    Ok(client)
}

async fn end<T>(shared: &Shared, client: Object, result: Result<T>, changes: Changes) -> Result<T> {
    match result {
        Ok(v) => {
            db::simple(&client, "commit transaction", "COMMIT").await?;
            for (name, id, tail) in &changes {
                shared.registry.publish(name, *id, *tail);
            }
            notify_committed(shared, &client, &changes).await;
            Ok(v)
        }
        Err(e) => {
            rollback(client).await;
            Err(e)
        }
    }
}

/// Sends one `NOTIFY` per changed tail, in a statement of its own right after the commit
/// that changed them.
///
/// Not inside the data transaction: PostgreSQL makes every committing transaction that sent
/// a notification take one cluster-wide lock until its commit record is flushed, which would
/// serialise the commits of all nodes and undo group commit across connections. The statement
/// commits with `synchronous_commit = off` so it holds that lock only briefly. A node that
/// stops between the commit and this statement leaves other nodes' readers to the re-check
/// timer; a failure is only logged, for the same reason.
pub(crate) async fn notify_committed(shared: &Shared, client: &ClientWrapper, tails: &Changes) {
    if let Err(e) = notify(shared, client, tails).await {
        tracing::warn!(error = %e, "NOTIFY after commit failed; readers on other nodes wait for the re-check");
    }
}

async fn notify(shared: &Shared, client: &ClientWrapper, tails: &Changes) -> Result<()> {
    if tails.is_empty() {
        return Ok(());
    }
    let mut channels: Vec<&str> = Vec::with_capacity(tails.len());
    let mut payloads: Vec<String> = Vec::with_capacity(tails.len());
    for (name, id, tail) in tails {
        channels.push(&shared.channel);
        payloads.push(crate::live::payload(*id, *tail));
        if tail.gone {
            // The row is gone: the cluster's change feed learns the name from this message.
            channels.push(&shared.hub.channel);
            payloads.push(crate::cluster::gone_payload(*id, name));
        }
    }
    db::query(
        client,
        "notify readers",
        // Its own (implicit) transaction, committed without waiting for the WAL flush: a lost
        // wake-up only delays readers, and the notification lock is held only briefly.
        "SELECT set_config('synchronous_commit', 'off', true), pg_notify(c, p) \
         FROM unnest($1::text[], $2::text[]) AS u(c, p)",
        &[&channels, &payloads],
    )
    .await?;
    Ok(())
}

/// The tail readers of a live stream see.
fn current(row: &StreamRow) -> (String, u64, Tail) {
    (
        row.name.clone(),
        row.id,
        Tail {
            next: row.tail,
            closed: row.closed,
            gone: false,
        },
    )
}

/// The tail readers of a gone stream see.
fn gone(row: &StreamRow) -> (String, u64, Tail) {
    (
        row.name.clone(),
        row.id,
        Tail {
            next: row.tail,
            closed: true,
            gone: true,
        },
    )
}

/// The metadata of a stream row.
pub(crate) fn info(row: &StreamRow) -> Result<StreamInfo> {
    Ok(StreamInfo {
        name: stored_name(&row.name)?,
        stream_id: row.id,
        content_type: row.content_type.clone(),
        expiry: row.expiry,
        next: row.tail,
        closed: row.closed,
        bytes: row.bytes,
        forked_from: row
            .fork
            .as_ref()
            .map(|f| stored_name(&f.source_name))
            .transpose()?,
    })
}

/// Rebuilds a [`StreamName`] from its stored (decoded) form. `StreamName::parse`
/// percent-decodes, so a literal `%` is escaped first; limits were checked when the stream was
/// created and are not applied again (they may have changed since).
pub(crate) fn stored_name(raw: &str) -> Result<StreamName> {
    let limits = ds_protocol::NameLimits {
        max_bytes: usize::MAX,
        max_segments: usize::MAX,
    };
    StreamName::parse(&raw.replace('%', "%25"), limits)
        .map_err(|e| invalid("decode stream name", e.to_string()))
}

/// Expires a locked stream: soft-deletes it while forks reference it (returns true), else
/// removes it.
pub(crate) async fn expire_locked(
    client: &ClientWrapper,
    row: &StreamRow,
    changes: &mut Changes,
) -> Result<bool> {
    if row.fork_refs > 0 {
        if !row.soft_deleted {
            db::execute(
                client,
                "soft-delete stream",
                "UPDATE ds_streams SET soft_deleted = true WHERE id = $1",
                &[&to_db(row.id)],
            )
            .await?;
            changes.push(gone(row));
        }
        return Ok(true);
    }
    remove_locked(client, row, changes).await?;
    Ok(false)
}

/// Removes a locked stream's rows, cascading up the fork chain through soft-deleted sources
/// that no fork references any more.
async fn remove_locked(
    client: &ClientWrapper,
    row: &StreamRow,
    changes: &mut Changes,
) -> Result<()> {
    let mut current = row.clone();
    loop {
        db::execute(
            client,
            "remove stream",
            "WITH r AS (DELETE FROM ds_records WHERE stream_id = $1), \
             p AS (DELETE FROM ds_producers WHERE stream_id = $1) \
             DELETE FROM ds_streams WHERE id = $1",
            &[&to_db(current.id)],
        )
        .await?;
        changes.push(gone(&current));
        let Some(fork) = &current.fork else {
            return Ok(());
        };
        let Some(source) = db::stream_by_id(client, fork.source_id, true).await? else {
            return Ok(());
        };
        db::execute(
            client,
            "release fork reference",
            "UPDATE ds_streams SET fork_refs = greatest(fork_refs - 1, 0) WHERE id = $1",
            &[&to_db(source.id)],
        )
        .await?;
        if source.fork_refs > 1 || !source.soft_deleted {
            return Ok(());
        }
        current = source;
    }
}

/// Locks a stream for a client operation: missing streams are `NotFound`, soft-deleted ones
/// `Gone`; an expired one is expired on the way (and answers like one that does not exist).
async fn live_locked(
    shared: &Shared,
    client: &ClientWrapper,
    name: &str,
    changes: &mut Changes,
) -> Result<StreamRow> {
    let row = db::stream_by_name(client, name, true)
        .await?
        .ok_or(Error::NotFound)?;
    if row.soft_deleted {
        return Err(Error::Gone);
    }
    if rules::is_expired(row.expiry, row.last_access_ms, shared.clock.now_ms()) {
        let soft = expire_locked(client, &row, changes).await?;
        return Err(if soft { Error::Gone } else { Error::NotFound });
    }
    Ok(row)
}

/// Looks a stream up without locking it, for reads: like [`live_locked`], and an expired
/// stream is expired in its own transaction before the error is returned.
pub(crate) async fn live(
    shared: &Arc<Shared>,
    client: &ClientWrapper,
    name: &str,
) -> Result<StreamRow> {
    let row = db::stream_by_name(client, name, false)
        .await?
        .ok_or(Error::NotFound)?;
    if row.soft_deleted {
        return Err(Error::Gone);
    }
    if rules::is_expired(row.expiry, row.last_access_ms, shared.clock.now_ms()) {
        let soft = expire(shared, name.to_owned()).await?;
        return Err(if soft { Error::Gone } else { Error::NotFound });
    }
    Ok(row)
}

/// Expires `name` if it (still) has expired; true when it is soft-deleted afterwards.
async fn expire(shared: &Arc<Shared>, name: String) -> Result<bool> {
    let shared = Arc::clone(shared);
    detach(async move {
        in_txn!(&shared, |client, changes| {
            match db::stream_by_name(client, &name, true).await {
                Ok(Some(row)) if row.soft_deleted => Ok(true),
                Ok(Some(row))
                    if rules::is_expired(row.expiry, row.last_access_ms, shared.clock.now_ms()) =>
                {
                    expire_locked(client, &row, changes).await
                }
                Ok(_) => Ok(false),
                Err(e) => Err(e),
            }
        })
    })
    .await
}

/// Runs a transaction to completion even if the caller stops waiting (a client that went
/// away must not leave a connection inside an open transaction).
pub(crate) async fn detach<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(fut)
        .await
        .map_err(|e| backend("run transaction", e))?
}

/// `PUT`: creates a stream (or a fork), or confirms an existing one with the same config.
pub(crate) async fn create(
    shared: Arc<Shared>,
    name: StreamName,
    req: CreateRequest,
) -> Result<CreateOutcome> {
    in_txn!(&shared, |client, changes| {
        create_in(&shared, client, &name, &req, changes).await
    })
}

async fn create_in(
    shared: &Shared,
    client: &ClientWrapper,
    name: &StreamName,
    req: &CreateRequest,
    changes: &mut Changes,
) -> Result<CreateOutcome> {
    let now = shared.clock.now_ms();
    if let Some(existed) = existing(client, name, req, now, changes).await? {
        return Ok(existed);
    }

    let (content_type, expiry, base, fork) = match &req.fork {
        None => (
            rules::effective_content_type(req.content_type.as_deref()),
            req.expiry,
            Offset::ZERO,
            None,
        ),
        Some(f) => {
            let resolved = resolve_fork(shared, client, f, req, changes).await?;
            (
                resolved.content_type,
                resolved.expiry,
                resolved.base,
                Some((resolved.source, f, resolved.anchor)),
            )
        }
    };
    let json = content_type::is_json(&content_type);
    let messages = rules::split_body(&content_type, &req.body, true)?;
    let len: u64 = messages.iter().map(|m| m.len() as u64).sum();
    if len > shared.max_stream_bytes {
        return Err(Error::StreamTooLarge {
            limit: shared.max_stream_bytes,
        });
    }
    let id: i64 = db::query(
        client,
        "allocate stream id",
        "SELECT nextval('ds_stream_ids')",
        &[],
    )
    .await?
    .first()
    .ok_or_else(|| invalid("allocate stream id", "nextval returned no row"))?
    .try_get(0)
    .map_err(|e| backend("allocate stream id", e))?;
    let id = from_db(id);

    let tail = messages
        .iter()
        .fold(base, |t, m| Offset::new(t.seq + 1, t.byte + m.len() as u64));
    let (kind, a, nanos, offset) = expiry_cols(expiry);
    let (source_id, source_name, anchor_seq, anchor_byte, sub_offset) = match &fork {
        None => (None, None, None, None, None),
        Some((source, f, anchor)) => (
            Some(to_db(source.id)),
            Some(source.name.as_str()),
            Some(to_db(anchor.seq)),
            Some(to_db(anchor.byte)),
            Some(to_db(f.sub_offset)),
        ),
    };
    // A concurrent create of the same name makes this a unique violation; the transaction
    // then runs again and finds the other one's stream.
    db::execute(
        client,
        "insert stream",
        "INSERT INTO ds_streams (id, name, content_type, json, expiry_kind, expiry_a, \
         expiry_nanos, expiry_offset, base_seq, base_byte, tail_seq, tail_byte, bytes, closed, \
         last_access_ms, fork_source_id, fork_source_name, fork_anchor_seq, fork_anchor_byte, \
         fork_sub_offset) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20)",
        &[
            &to_db(id),
            &name.as_str(),
            &content_type,
            &json,
            &kind,
            &a,
            &nanos,
            &offset,
            &to_db(base.seq),
            &to_db(base.byte),
            &to_db(tail.seq),
            &to_db(tail.byte),
            &to_db(len),
            &req.closed,
            &to_db(now),
            &source_id,
            &source_name,
            &anchor_seq,
            &anchor_byte,
            &sub_offset,
        ],
    )
    .await?;
    insert_initial(client, id, base, &messages).await?;
    let row = db::stream_by_id(client, id, false)
        .await?
        .ok_or_else(|| invalid("read created stream", "row missing after insert"))?;
    // Announced like an append (empty or not, fork or not): the cluster's change feed reports
    // new streams too. (No local reader can watch this incarnation yet.)
    changes.push(current(&row));
    Ok(CreateOutcome::Created(info(&row)?))
}

/// A re-`PUT` of an existing stream: the idempotent answer, a conflict, or `None` when no
/// live stream holds the name (an expired one is removed on the way).
async fn existing(
    client: &ClientWrapper,
    name: &StreamName,
    req: &CreateRequest,
    now: u64,
    changes: &mut Changes,
) -> Result<Option<CreateOutcome>> {
    if let Some(row) = db::stream_by_name(client, name.as_str(), true).await? {
        if row.soft_deleted {
            return Err(Error::NameHeldBySoftDeleted);
        }
        if rules::is_expired(row.expiry, row.last_access_ms, now) {
            if expire_locked(client, &row, changes).await? {
                return Err(Error::NameHeldBySoftDeleted);
            }
            // Expired and removed just now: create afresh below.
        } else {
            let fork = row
                .fork
                .as_ref()
                .map(|f| (f.source_name.as_str(), f.anchor, f.sub_offset));
            let cfg = rules::ExistingConfig {
                content_type: &row.content_type,
                expiry: row.expiry,
                closed: row.closed,
                fork,
            };
            rules::check_create_matches(&cfg, req)?;
            return Ok(Some(CreateOutcome::Existed(info(&row)?)));
        }
    }
    Ok(None)
}

/// Inserts the records of a new stream's initial body (one append batch) from `base`.
async fn insert_initial(
    client: &ClientWrapper,
    id: u64,
    base: Offset,
    messages: &[bytes::Bytes],
) -> Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut pos = base;
    let (mut seqs, mut starts, mut ends, mut data) = (vec![], vec![], vec![], vec![]);
    for (k, m) in messages.iter().enumerate() {
        seqs.push(to_db(pos.seq));
        starts.push(to_db(pos.byte));
        ends.push(k + 1 == messages.len());
        data.push(m.as_ref());
        pos = Offset::new(pos.seq + 1, pos.byte + m.len() as u64);
    }
    let ids = vec![to_db(id); seqs.len()];
    db::execute(
        client,
        "insert records",
        "INSERT INTO ds_records (stream_id, seq, start_byte, batch_end, data) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::boolean[], \
         $5::bytea[])",
        &[&ids, &seqs, &starts, &ends, &data],
    )
    .await?;
    Ok(())
}

/// A fork request resolved against its locked, live source.
struct ResolvedFork {
    source: StreamRow,
    anchor: Offset,
    base: Offset,
    content_type: String,
    expiry: ds_protocol::Expiry,
}

async fn resolve_fork(
    shared: &Shared,
    client: &ClientWrapper,
    f: &ForkRequest,
    req: &CreateRequest,
    changes: &mut Changes,
) -> Result<ResolvedFork> {
    let source = match live_locked(shared, client, f.source.as_str(), changes).await {
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
    let anchor = f.offset.unwrap_or(source.tail);
    let mut reader = Reader::new(client);
    let located = reader.locate(&source, anchor).await?;
    let base = if f.sub_offset == 0 {
        anchor
    } else {
        located.check_sub_offset(f.sub_offset, source.json)?;
        if source.json {
            reader.json_position(&source, anchor, f.sub_offset).await?
        } else {
            Offset::new(anchor.seq + 1, anchor.byte + f.sub_offset)
        }
    };
    // Taken now; if the create fails after this, the transaction rolls it back.
    db::execute(
        client,
        "take fork reference",
        "UPDATE ds_streams SET fork_refs = fork_refs + 1 WHERE id = $1",
        &[&to_db(source.id)],
    )
    .await?;
    Ok(ResolvedFork {
        content_type: source.content_type.clone(),
        expiry: fork_expiry(source.expiry, req.expiry),
        source,
        anchor,
        base,
    })
}

/// `DELETE`: removes a stream, or soft-deletes it while forks reference it.
pub(crate) async fn delete(shared: Arc<Shared>, name: StreamName) -> Result<()> {
    let outcome: Result<Result<()>> = in_txn!(&shared, |client, changes| {
        delete_in(&shared, client, name.as_str(), changes).await
    });
    outcome?
}

/// The outer error rolls back; the inner one is an answer, committed with any expiry found on
/// the way.
async fn delete_in(
    shared: &Shared,
    client: &ClientWrapper,
    name: &str,
    changes: &mut Changes,
) -> Result<Result<()>> {
    match live_locked(shared, client, name, changes).await {
        Ok(row) if row.fork_refs > 0 => expire_locked(client, &row, changes).await.map(|_| Ok(())),
        Ok(row) => remove_locked(client, &row, changes).await.map(Ok),
        Err(e @ (Error::NotFound | Error::Gone)) => Ok(Err(e)),
        Err(e) => Err(e),
    }
}

/// Replaces a stream's writer state (see `Storage::restore_writer`).
pub(crate) async fn restore_writer(
    shared: Arc<Shared>,
    name: StreamName,
    writer: WriterState,
) -> Result<()> {
    in_txn!(&shared, |client, changes| {
        restore_in(&shared, client, &name, &writer, changes).await
    })
}

async fn restore_in(
    shared: &Shared,
    client: &ClientWrapper,
    name: &StreamName,
    writer: &WriterState,
    changes: &mut Changes,
) -> Result<()> {
    let row = live_locked(shared, client, name.as_str(), changes).await?;
    let current = writer_state(client, &row).await?;
    rules::check_restore(&current, writer, row.tail)?;
    let by = writer.closed_by.as_ref();
    db::execute(
        client,
        "restore writer state",
        "UPDATE ds_streams SET closed = $2, closed_by_id = $3, closed_by_epoch = $4, \
         closed_by_seq = $5, last_stream_seq = $6 WHERE id = $1",
        &[
            &to_db(row.id),
            &writer.closed,
            &by.map(|(id, _, _)| id.as_str()),
            &by.map(|(_, e, _)| to_db(*e)),
            &by.map(|(_, _, s)| to_db(*s)),
            &writer.last_stream_seq.as_deref(),
        ],
    )
    .await?;
    let mut pids = Vec::with_capacity(writer.producers.len());
    let mut epochs = Vec::with_capacity(writer.producers.len());
    let mut seqs = Vec::with_capacity(writer.producers.len());
    for (pid, state) in &writer.producers {
        pids.push(pid.as_str());
        epochs.push(to_db(state.epoch));
        seqs.push(to_db(state.last_seq));
    }
    // Two statements: a data-modifying CTE's deletions are not visible to the INSERT of the
    // same statement, which would then collide with a producer it meant to replace.
    db::execute(
        client,
        "clear producers",
        "DELETE FROM ds_producers WHERE stream_id = $1",
        &[&to_db(row.id)],
    )
    .await?;
    if !pids.is_empty() {
        db::execute(
            client,
            "restore producers",
            "INSERT INTO ds_producers (stream_id, producer_id, epoch, last_seq) \
             SELECT $1, * FROM unnest($2::text[], $3::bigint[], $4::bigint[])",
            &[&to_db(row.id), &pids, &epochs, &seqs],
        )
        .await?;
    }
    changes.push((
        row.name.clone(),
        row.id,
        Tail {
            next: row.tail,
            closed: writer.closed,
            gone: false,
        },
    ));
    Ok(())
}

/// A stream's full writer state, producers included.
pub(crate) async fn writer_state(client: &ClientWrapper, row: &StreamRow) -> Result<WriterState> {
    let mut writer = row.writer_without_producers();
    let rows = db::query(
        client,
        "read producers",
        "SELECT producer_id, epoch, last_seq FROM ds_producers WHERE stream_id = $1",
        &[&to_db(row.id)],
    )
    .await?;
    for r in rows {
        let pid: String = r.try_get(0).map_err(|e| backend("read producers", e))?;
        writer.producers.insert(
            pid,
            ProducerState {
                epoch: from_db(r.try_get(1).map_err(|e| backend("read producers", e))?),
                last_seq: from_db(r.try_get(2).map_err(|e| backend("read producers", e))?),
            },
        );
    }
    Ok(writer)
}

/// Expires every stream whose TTL or expiry has passed, if this node holds the sweep lease
/// (taking it when it is free or has lapsed). Returns how many streams it expired.
pub(crate) async fn sweep(shared: Arc<Shared>) -> Result<usize> {
    let client = shared
        .pool
        .get()
        .await
        .map_err(|e| backend("get a database connection", e))?;
    let held = db::query_opt(
        &client,
        "take sweep lease",
        "INSERT INTO ds_leases (name, holder, expires_at) \
         VALUES ('sweep', $1, now() + make_interval(secs => $2)) \
         ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
         expires_at = excluded.expires_at \
         WHERE ds_leases.holder = excluded.holder OR ds_leases.expires_at < now() \
         RETURNING holder",
        &[&shared.node_id, &shared.sweep_lease_secs],
    )
    .await?;
    if held.is_none() {
        return Ok(0);
    }
    let now = shared.clock.now_ms();
    // A superset (absolute expiries are compared by whole second); each is checked exactly
    // under its row lock below.
    let rows = db::query(
        &client,
        "find expired streams",
        &format!(
            "SELECT {STREAM_COLUMNS} FROM ds_streams WHERE expiry_kind <> 0 AND NOT soft_deleted \
             AND ((expiry_kind = 1 AND last_access_ms + expiry_a * 1000 <= $1) \
             OR (expiry_kind = 2 AND expiry_a * 1000 <= $1))"
        ),
        &[&to_db(now)],
    )
    .await?;
    drop(client);
    let mut n = 0;
    for row in &rows {
        let row = StreamRow::decode(row)?;
        if !rules::is_expired(row.expiry, row.last_access_ms, now) {
            continue;
        }
        let name = row.name.clone();
        let expired = in_txn!(&shared, |client, changes| {
            match db::stream_by_name(client, &name, true).await {
                Ok(Some(row))
                    if !row.soft_deleted
                        && rules::is_expired(row.expiry, row.last_access_ms, now) =>
                {
                    expire_locked(client, &row, changes).await.map(|_| true)
                }
                Ok(_) => Ok(false),
                Err(e) => Err(e),
            }
        })?;
        n += usize::from(expired);
    }
    Ok(n)
}
