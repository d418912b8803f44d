//! Coordination between the nodes sharing one schema ([`ds_storage::Cluster`]): leases, the
//! feed of stream changes, and requests forwarded to a lease holder, all through the database
//! (nodes never talk to each other directly).
//!
//! # Leases
//!
//! A lease is a row of `ds_leases` (`name`, `holder`, `term`, `expires_at`), the table the
//! expiry sweep already uses (its lease is named `sweep`). [`Cluster::acquire`] is one
//! `INSERT ... ON CONFLICT DO UPDATE ... WHERE holder = me OR expires_at < now() RETURNING
//! term`: the database's clock decides expiry, so node clocks need not agree, and the term
//! grows by one whenever the holder changes. Releasing a lease (and
//! `PostgresStorage::close`) keeps the row, with holder `''` and `expires_at = -infinity`, so
//! the next holder's term is still larger than every earlier one. The node also remembers
//! "held until (local instant before the request was sent) + ttl" for each lease it holds;
//! it takes forwarded calls only while that is in the future.
//!
//! # Channels
//!
//! Two `NOTIFY` channels per schema, both received by the one `LISTEN` connection of
//! `live`:
//!
//! ```text
//! ds_tail_<schema>     "<stream id> <tail seq> <tail byte> <flags>"   after every commit
//!                                                                     that moves a tail
//! ds_cluster_<schema>  "gone <stream id> [<name>]"   a stream was deleted or expired (the
//!                                                    name is left out past 7900 bytes)
//!                      "call <call id> <lease>"      a call row awaits the lease holder
//!                      "done <call id>"              its response is written
//! ```
//!
//! # Changes
//!
//! While [`Cluster::changes`] has receivers, every tail notification is queued (bounded) to a
//! resolver task that maps the stream id to its name (a bounded cache, filled by one query
//! per batch of misses; ids are never reused, so a cached name is never wrong) and
//! broadcasts `Change::Tail`. A tail lower than one already reported for the same stream is
//! dropped (notifications of different commits may arrive out of order). A `gone` message
//! becomes `Change::Gone` (carrying the name, because the row is gone by then). With no
//! receivers the listener does nothing beyond waking local readers, so nodes that do not
//! lead pay nothing. `Change::Resync` follows a reconnect of the `LISTEN` connection, a full
//! queue and a failed name lookup.
//!
//! # Calls
//!
//! The caller inserts a `ds_calls` row (`RETURNING id`), registers itself for the id's `done`
//! message, and sends `call`. A node serving that lease (a [`Cluster::serve`] receiver is
//! open, and its local lease record is valid) claims the row with `UPDATE ... SET taken_by =
//! me WHERE id = $1 AND taken_by IS NULL AND lease = $2 AND <the lease row names me and has
//! not expired>`: one node, once. It hands the request to the receiver, and writes the reply
//! plus `done` in one statement. The caller then deletes the row and returns the response.
//!
//! Safety nets, so a lost notification only delays: the caller polls its row every 250 ms;
//! the holder scans every 300 ms (while it holds a lease it serves) for unclaimed rows of its
//! leases, which also picks up calls sent before it took the lease, and deletes rows older
//! than 5 minutes every 30 s or so. On timeout the caller deletes its row (a reply written
//! meanwhile is discarded) and fails with a backend error, op `cluster call`. A call whose
//! reply sender is dropped unanswered, or whose holder dies, is left to the caller's timeout:
//! it is never handed to a second node.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::Pool;
use ds_protocol::{Offset, StreamName};
use ds_storage::cluster::BoxFuture;
use ds_storage::{Call, Change, Cluster, Result, Tail};
use tokio::sync::{Notify, broadcast, mpsc, oneshot};
use tokio::time::Instant;

use crate::PostgresStorage;
use crate::db;
use crate::error::{backend, invalid};
use crate::schema::{from_db, to_db};
use crate::stream::stored_name;

/// Changes a slow receiver may fall behind by before it gets `Lagged`.
const CHANGES_CAPACITY: usize = 4096;
/// Notifications waiting for the resolver; past this, the next change is a `Resync`.
const FEED_CAPACITY: usize = 8192;
/// Stream names the resolver remembers.
const NAME_CACHE: usize = 65_536;
/// Calls a `serve` receiver may hold before claiming waits for room.
const SERVE_CAPACITY: usize = 64;
/// How often a caller reads its row in case the `done` message was lost.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often a serving holder looks for calls nobody claimed.
const SCAN_INTERVAL: Duration = Duration::from_millis(300);
/// Rows older than this are deleted by a holder's scan (their caller gave up long ago).
const CALL_MAX_AGE: Duration = Duration::from_secs(300);
/// Every this many scans (about 30 s), a holder deletes old rows.
const CLEANUP_EVERY: u32 = 100;
/// Longest `NOTIFY` payload PostgreSQL accepts (it must be shorter than 8000 bytes), with
/// room for the prefix and id.
const MAX_NAME_IN_PAYLOAD: usize = 7900;
/// How long a caller whose deadline passed still waits to delete its row.
const CLEANUP_GRACE: Duration = Duration::from_secs(1);

/// A notification on its way to the resolver.
#[derive(Debug)]
pub(crate) enum Event {
    /// Stream `id`'s tail moved to this offset.
    Tail(u64, Offset),
    /// Stream `id` is gone; its name when the message carried it.
    Gone(u64, Option<String>),
    /// Notifications may have been missed.
    Resync,
}

/// This node's side of the cluster: what the listener, the resolver, the scanner and the
/// [`Cluster`] methods share.
#[derive(Debug)]
pub(crate) struct Hub {
    /// The `NOTIFY` channel of calls and `gone` messages.
    pub(crate) channel: String,
    node_id: String,
    pool: Pool,
    changes: broadcast::Sender<Change>,
    feed: mpsc::Sender<Event>,
    /// Set when the feed was full: the resolver sends `Resync`.
    lagged: AtomicBool,
    /// Leases this node holds, until when (local clock, measured from before the request).
    leases: Mutex<HashMap<String, Instant>>,
    /// The `serve` receiver of each lease.
    servers: Mutex<HashMap<String, mpsc::Sender<Call>>>,
    /// Callers of this node waiting for their `done` message, by call id.
    waiters: Mutex<HashMap<i64, oneshot::Sender<()>>>,
    /// Wakes the scanner early (a lease was taken, or a receiver opened).
    scan_now: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A node id unique for each process start: host name, process id and 128 random bits.
pub(crate) fn node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(63)
        .collect();
    let host = if host.is_empty() { "node" } else { &host };
    format!(
        "{host}-{}-{:016x}{:016x}",
        std::process::id(),
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

/// The `gone` message of stream `id`, named `name` (left out when too long for a payload).
pub(crate) fn gone_payload(id: u64, name: &str) -> String {
    if name.len() <= MAX_NAME_IN_PAYLOAD {
        format!("gone {id} {name}")
    } else {
        format!("gone {id}")
    }
}

impl Hub {
    /// The hub of a store in `schema`, and the receiver its resolver task reads.
    pub(crate) fn new(
        schema: &str,
        node_id: String,
        pool: Pool,
    ) -> (Arc<Hub>, mpsc::Receiver<Event>) {
        let (feed, rx) = mpsc::channel(FEED_CAPACITY);
        let hub = Hub {
            channel: format!("ds_cluster_{schema}"),
            node_id,
            pool,
            changes: broadcast::channel(CHANGES_CAPACITY).0,
            feed,
            lagged: AtomicBool::new(false),
            leases: Mutex::new(HashMap::new()),
            servers: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            scan_now: Notify::new(),
        };
        (Arc::new(hub), rx)
    }

    fn push(&self, event: Event) {
        if self.feed.try_send(event).is_err() {
            self.lagged.store(true, Ordering::Relaxed);
        }
    }

    /// A notification on the tail channel (called by the listener; cheap, never waits).
    pub(crate) fn on_tail(&self, id: u64, tail: Tail) {
        // A gone stream is reported by its `gone` message, which carries the name.
        if tail.gone || self.changes.receiver_count() == 0 {
            return;
        }
        self.push(Event::Tail(id, tail.next));
    }

    /// A notification on the cluster channel (called by the listener; never waits).
    pub(crate) fn on_message(self: &Arc<Self>, payload: &str) {
        let mut parts = payload.splitn(3, ' ');
        let (kind, id, rest) = (parts.next(), parts.next(), parts.next());
        match (kind, id) {
            (Some("done"), Some(id)) => {
                if let Some(waiter) = id
                    .parse()
                    .ok()
                    .and_then(|id| lock(&self.waiters).remove(&id))
                {
                    let _ = waiter.send(());
                }
            }
            (Some("call"), Some(id)) => {
                let (Ok(id), Some(lease)) = (id.parse::<i64>(), rest) else {
                    return;
                };
                if let Some(tx) = self.server(lease) {
                    tokio::spawn(take(Arc::clone(self), id, lease.to_owned(), tx));
                }
            }
            (Some("gone"), Some(id)) => {
                if self.changes.receiver_count() == 0 {
                    return;
                }
                if let Ok(id) = id.parse() {
                    self.push(Event::Gone(id, rest.map(str::to_owned)));
                }
            }
            _ => tracing::debug!(payload, "unknown cluster message"),
        }
    }

    /// The `LISTEN` connection is back after an outage: changes may have been missed.
    pub(crate) fn on_reconnect(&self) {
        if self.changes.receiver_count() > 0 {
            self.push(Event::Resync);
        }
    }

    /// Forgets every lease this node held (their rows were handed on).
    pub(crate) fn forget_leases(&self) {
        lock(&self.leases).clear();
    }

    /// Whether this node's record of lease `name` is still valid.
    fn holds(&self, name: &str) -> bool {
        lock(&self.leases)
            .get(name)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// The receiver's sender for lease `name`, while it is open and the lease is held.
    fn server(&self, name: &str) -> Option<mpsc::Sender<Call>> {
        if !self.holds(name) {
            return None;
        }
        lock(&self.servers)
            .get(name)
            .filter(|tx| !tx.is_closed())
            .cloned()
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| backend("get a database connection", e))
    }
}

/// Turns queued notifications into [`Change`]s, resolving stream ids to names. Runs until
/// aborted.
pub(crate) async fn resolve(hub: Arc<Hub>, mut rx: mpsc::Receiver<Event>) {
    let mut names = NameCache::default();
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        if hub.changes.receiver_count() == 0 {
            batch.clear();
            hub.lagged.store(false, Ordering::Relaxed);
            continue;
        }
        let mut missing: Vec<i64> = batch
            .iter()
            .filter_map(|e| match e {
                Event::Tail(id, _) if !names.map.contains_key(id) => Some(to_db(*id)),
                _ => None,
            })
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty()
            && let Err(e) = names.load(&hub, &missing).await
        {
            tracing::warn!(error = %e, "cannot resolve changed streams; sending a resync");
            batch.clear();
            let _ = hub.changes.send(Change::Resync);
            continue;
        }
        for event in batch.drain(..) {
            let change = match event {
                Event::Tail(id, next) => names
                    .advance(id, next)
                    .map(|name| Change::Tail { name, next }),
                Event::Gone(id, name) => names.forget(id, name).map(|name| Change::Gone { name }),
                Event::Resync => Some(Change::Resync),
            };
            if let Some(change) = change {
                let _ = hub.changes.send(change);
            }
        }
        if hub.lagged.swap(false, Ordering::Relaxed) {
            let _ = hub.changes.send(Change::Resync);
        }
    }
}

/// Stream names by id, with the highest tail reported for each, evicted oldest first.
#[derive(Debug, Default)]
struct NameCache {
    map: HashMap<u64, (StreamName, Offset)>,
    /// Insertion order; may hold ids already forgotten (skipped on eviction, compacted).
    order: VecDeque<u64>,
}

impl NameCache {
    fn insert(&mut self, id: u64, name: StreamName) {
        while self.map.len() >= NAME_CACHE {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.map.remove(&old);
        }
        if self.map.insert(id, (name, Offset::ZERO)).is_none() {
            self.order.push_back(id);
        }
        if self.order.len() > 2 * NAME_CACHE {
            let map = &self.map;
            self.order.retain(|id| map.contains_key(id));
        }
    }

    /// Reads the names of live streams `ids` (soft-deleted ones are gone for watchers).
    async fn load(&mut self, hub: &Hub, ids: &[i64]) -> Result<()> {
        let client = hub.client().await?;
        let rows = db::query(
            &client,
            "resolve changed streams",
            "SELECT id, name FROM ds_streams WHERE id = ANY($1) AND NOT soft_deleted",
            &[&ids],
        )
        .await?;
        for row in rows {
            let id: i64 = row
                .try_get(0)
                .map_err(|e| backend("resolve changed streams", e))?;
            let name: String = row
                .try_get(1)
                .map_err(|e| backend("resolve changed streams", e))?;
            if let Ok(name) = stored_name(&name) {
                self.insert(from_db(id), name);
            }
        }
        Ok(())
    }

    /// The name to report a tail of `id` under; `None` for an unknown (removed) stream or a
    /// tail lower than one already reported.
    fn advance(&mut self, id: u64, next: Offset) -> Option<StreamName> {
        let (name, last) = self.map.get_mut(&id)?;
        if next < *last {
            return None;
        }
        *last = next;
        Some(name.clone())
    }

    /// The name to report `id` gone under, forgetting it.
    fn forget(&mut self, id: u64, name: Option<String>) -> Option<StreamName> {
        let cached = self.map.remove(&id).map(|(name, _)| name);
        match name {
            Some(raw) => stored_name(&raw).ok(),
            None => cached,
        }
    }
}

/// Claims call `id` announced by a `call` message, if this node still serves `lease`.
async fn take(hub: Arc<Hub>, id: i64, lease: String, tx: mpsc::Sender<Call>) {
    // Room first: a claimed call must never wait for a receiver that is gone.
    let Ok(permit) = tx.reserve_owned().await else {
        return;
    };
    if !hub.holds(&lease) {
        return;
    }
    let claimed = async {
        let client = hub.client().await?;
        db::query_opt(
            &client,
            "claim cluster call",
            "UPDATE ds_calls SET taken_by = $3 \
             WHERE id = $1 AND taken_by IS NULL AND lease = $2 \
             AND EXISTS (SELECT 1 FROM ds_leases WHERE name = $2 AND holder = $3 \
             AND expires_at > now()) \
             RETURNING request",
            &[&id, &lease, &hub.node_id],
        )
        .await?
        .map(|row| row.try_get::<_, Vec<u8>>(0))
        .transpose()
        .map_err(|e| backend("claim cluster call", e))
    };
    match claimed.await {
        Ok(Some(request)) => {
            let (reply, answer) = oneshot::channel();
            permit.send(Call {
                request: Bytes::from(request),
                reply,
            });
            answer_call(&hub, id, answer).await;
        }
        // A scan (or another message) took it first, or the caller gave up.
        Ok(None) => {}
        Err(e) => {
            tracing::debug!(error = %e, id, "claiming a cluster call failed; the scan retries");
        }
    }
}

/// Waits for the reply to claimed call `id` and writes it, with its `done` message.
async fn answer_call(hub: &Hub, id: i64, answer: oneshot::Receiver<Bytes>) {
    // A dropped reply sender leaves the caller to its timeout.
    let Ok(Ok(response)) = tokio::time::timeout(CALL_MAX_AGE, answer).await else {
        return;
    };
    let written = async {
        let client = hub.client().await?;
        // The notification is delivered at commit, when the response is visible. Committed
        // without waiting for the WAL flush: the row is transient, and the notification lock
        // is held only briefly (see `stream::notify_committed`).
        db::query(
            &client,
            "answer cluster call",
            "WITH u AS (UPDATE ds_calls SET response = $2 WHERE id = $1 AND taken_by = $3 \
             RETURNING id) \
             SELECT set_config('synchronous_commit', 'off', true), pg_notify($4, concat('done ', u.id)) \
             FROM u",
            &[&id, &response.as_ref(), &hub.node_id, &hub.channel],
        )
        .await
    };
    if let Err(e) = written.await {
        tracing::warn!(error = %e, id, "cannot answer a cluster call; the caller will time out");
    }
}

/// While this node holds a lease it serves, claims calls nobody claimed (sent before it took
/// the lease, or whose message was lost), and now and then deletes abandoned rows. Runs until
/// aborted.
pub(crate) async fn scan(hub: Arc<Hub>) {
    let mut scans = 0u32;
    loop {
        tokio::select! {
            () = tokio::time::sleep(SCAN_INTERVAL) => {}
            () = hub.scan_now.notified() => {}
        }
        let served: Vec<(String, mpsc::Sender<Call>)> = {
            let names: Vec<String> = lock(&hub.servers).keys().cloned().collect();
            names
                .into_iter()
                .filter_map(|n| hub.server(&n).map(|tx| (n, tx)))
                .collect()
        };
        if served.is_empty() {
            continue;
        }
        for (lease, tx) in &served {
            if let Err(e) = scan_lease(&hub, lease, tx).await {
                tracing::debug!(error = %e, lease, "scan for cluster calls failed; retrying");
            }
        }
        if scans.is_multiple_of(CLEANUP_EVERY)
            && let Err(e) = clean_up(&hub).await
        {
            tracing::debug!(error = %e, "deleting old cluster calls failed");
        }
        scans = scans.wrapping_add(1);
    }
}

async fn scan_lease(hub: &Arc<Hub>, lease: &str, tx: &mpsc::Sender<Call>) -> Result<()> {
    // Claim no more than the receiver has room for, so handing them over does not wait.
    let room = i64::try_from(tx.capacity()).unwrap_or(i64::MAX);
    if room == 0 {
        return Ok(());
    }
    let client = hub.client().await?;
    let rows = db::query(
        &client,
        "claim cluster calls",
        "UPDATE ds_calls SET taken_by = $2 \
         WHERE id IN (SELECT id FROM ds_calls WHERE lease = $1 AND taken_by IS NULL \
         ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) \
         AND taken_by IS NULL \
         AND EXISTS (SELECT 1 FROM ds_leases WHERE name = $1 AND holder = $2 \
         AND expires_at > now()) \
         RETURNING id, request",
        &[&lease, &hub.node_id, &room],
    )
    .await?;
    drop(client);
    let mut calls = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row
            .try_get(0)
            .map_err(|e| backend("claim cluster calls", e))?;
        let request: Vec<u8> = row
            .try_get(1)
            .map_err(|e| backend("claim cluster calls", e))?;
        calls.push((id, request));
    }
    calls.sort_unstable_by_key(|(id, _)| *id);
    for (id, request) in calls {
        let (reply, answer) = oneshot::channel();
        let call = Call {
            request: Bytes::from(request),
            reply,
        };
        if tx.send(call).await.is_err() {
            // The receiver closed: the rest of these calls time out at their callers.
            break;
        }
        let hub = Arc::clone(hub);
        tokio::spawn(async move { answer_call(&hub, id, answer).await });
    }
    Ok(())
}

async fn clean_up(hub: &Hub) -> Result<()> {
    let client = hub.client().await?;
    db::execute(
        &client,
        "delete old cluster calls",
        "DELETE FROM ds_calls WHERE created_at < now() - make_interval(secs => $1)",
        &[&CALL_MAX_AGE.as_secs_f64()],
    )
    .await?;
    Ok(())
}

/// The error of a call nobody answered.
fn no_answer(lease: &str, timeout: Duration) -> ds_storage::Error {
    invalid(
        "cluster call",
        format!("no node holding lease {lease:?} answered within {timeout:?}"),
    )
}

/// A caller's claim on its row: unregisters the waiter, and deletes the row unless the call
/// finished (also when the caller's future is dropped).
struct Pending {
    hub: Arc<Hub>,
    id: i64,
    armed: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        lock(&self.hub.waiters).remove(&self.id);
        if self.armed
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let (hub, id) = (Arc::clone(&self.hub), self.id);
            runtime.spawn(async move {
                let _ = delete_call(&hub, id).await;
            });
        }
    }
}

/// Deletes call row `id`, returning its response if one was written.
async fn delete_call(hub: &Hub, id: i64) -> Result<Option<Bytes>> {
    let client = hub.client().await?;
    let row = db::query_opt(
        &client,
        "finish cluster call",
        "DELETE FROM ds_calls WHERE id = $1 RETURNING response",
        &[&id],
    )
    .await?;
    row.map(|r| r.try_get::<_, Option<Vec<u8>>>(0))
        .transpose()
        .map(|r| r.flatten().map(Bytes::from))
        .map_err(|e| backend("finish cluster call", e))
}

/// Deletes call row `id` if its response was written, returning the response.
async fn take_response(hub: &Hub, id: i64) -> Result<Option<Bytes>> {
    let client = hub.client().await?;
    let row = db::query_opt(
        &client,
        "read cluster call",
        "DELETE FROM ds_calls WHERE id = $1 AND response IS NOT NULL RETURNING response",
        &[&id],
    )
    .await?;
    row.map(|r| r.try_get::<_, Vec<u8>>(0))
        .transpose()
        .map(|r| r.map(Bytes::from))
        .map_err(|e| backend("read cluster call", e))
}

/// Whether call row `id` was taken by a node that no longer holds its lease (it died, shut
/// down or was superseded): its answer will never come.
async fn abandoned(hub: &Hub, id: i64) -> Result<bool> {
    let client = hub.client().await?;
    let row = db::query_opt(
        &client,
        "check cluster call",
        "SELECT c.taken_by IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ds_leases l \
         WHERE l.name = c.lease AND l.holder = c.taken_by AND l.expires_at > now()) \
         FROM ds_calls c WHERE c.id = $1",
        &[&id],
    )
    .await?;
    row.map_or(Ok(false), |r| {
        r.try_get::<_, bool>(0)
            .map_err(|e| backend("check cluster call", e))
    })
}

async fn call(hub: Arc<Hub>, lease: String, request: Bytes, timeout: Duration) -> Result<Bytes> {
    let deadline = Instant::now() + timeout;
    let insert = async {
        let client = hub.client().await?;
        // Committed without waiting for the WAL flush: a call lost to a database crash only
        // times out.
        let row = db::query_opt(
            &client,
            "send cluster call",
            "INSERT INTO ds_calls (lease, request) SELECT $1, $2 \
             FROM (SELECT set_config('synchronous_commit', 'off', true)) AS c RETURNING id",
            &[&lease, &request.as_ref()],
        )
        .await?
        .ok_or_else(|| invalid("send cluster call", "INSERT returned no row"))?;
        row.try_get::<_, i64>(0)
            .map_err(|e| backend("send cluster call", e))
    };
    let id = tokio::time::timeout_at(deadline, insert)
        .await
        .map_err(|_| no_answer(&lease, timeout))??;
    let (tx, rx) = oneshot::channel();
    lock(&hub.waiters).insert(id, tx);
    let mut pending = Pending {
        hub: Arc::clone(&hub),
        id,
        armed: true,
    };
    // Registered before announcing, so the `done` message cannot come first. A lost
    // announcement is found by the holder's scan.
    let payload = format!("call {id} {lease}");
    if payload.len() <= MAX_NAME_IN_PAYLOAD {
        let announce = async {
            let client = hub.client().await?;
            db::query(
                &client,
                "announce cluster call",
                "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, $2)",
                &[&hub.channel, &payload],
            )
            .await
        };
        if let Ok(Err(e)) = tokio::time::timeout_at(deadline, announce).await {
            tracing::debug!(error = %e, id, "announcing a cluster call failed; the holder's scan finds it");
        }
    }
    let mut woken = Some(rx);
    let mut gave_up = no_answer(&lease, timeout);
    loop {
        let polled = tokio::select! {
            biased;
            () = tokio::time::sleep_until(deadline) => break,
            _ = async { woken.as_mut().expect("checked by the precondition").await },
                if woken.is_some() => { woken = None; false }
            () = tokio::time::sleep(POLL_INTERVAL) => true,
        };
        match tokio::time::timeout_at(deadline, take_response(&hub, id)).await {
            Ok(Ok(Some(response))) => {
                pending.armed = false;
                return Ok(response);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, id, "polling a cluster call failed"),
            Err(_) => break,
        }
        // A holder that took the call and then lost its lease (killed, shut down) will never
        // answer: give up now rather than at the deadline.
        if polled && let Ok(Ok(true)) = tokio::time::timeout_at(deadline, abandoned(&hub, id)).await
        {
            gave_up = invalid(
                "cluster call",
                format!("the node that took the call lost lease {lease:?} before answering"),
            );
            break;
        }
    }
    // Out of time: delete the row (a reply written at the last moment is still taken).
    match tokio::time::timeout(CLEANUP_GRACE, delete_call(&hub, id)).await {
        Ok(Ok(response)) => {
            pending.armed = false;
            response.ok_or(gave_up)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(gave_up),
    }
}

/// The [`Cluster`] of a [`PostgresStorage`]; keeps the store (and its tasks) alive.
#[derive(Debug)]
pub(crate) struct Handle {
    pub(crate) store: PostgresStorage,
}

impl Handle {
    fn hub(&self) -> &Arc<Hub> {
        &self.store.inner.shared.hub
    }
}

impl Cluster for Handle {
    fn node_id(&self) -> &str {
        &self.hub().node_id
    }

    fn acquire(&self, name: &str, ttl: Duration) -> BoxFuture<'_, Result<Option<u64>>> {
        let name = name.to_owned();
        Box::pin(async move {
            let hub = self.hub();
            let client = hub.client().await?;
            // Measured before the request leaves: the local record never outlives the row.
            let sent = Instant::now();
            let row = db::query_opt(
                &client,
                "acquire lease",
                "INSERT INTO ds_leases (name, holder, term, expires_at) \
                 VALUES ($1, $2, 1, now() + make_interval(secs => $3)) \
                 ON CONFLICT (name) DO UPDATE SET \
                 term = CASE WHEN ds_leases.holder = excluded.holder THEN ds_leases.term \
                 ELSE ds_leases.term + 1 END, \
                 holder = excluded.holder, expires_at = excluded.expires_at \
                 WHERE ds_leases.holder = excluded.holder OR ds_leases.expires_at < now() \
                 RETURNING term",
                &[&name, &hub.node_id, &ttl.as_secs_f64()],
            )
            .await?;
            let Some(row) = row else {
                lock(&hub.leases).remove(&name);
                return Ok(None);
            };
            let term: i64 = row.try_get(0).map_err(|e| backend("acquire lease", e))?;
            let until = sent
                .checked_add(ttl)
                .unwrap_or_else(|| sent + Duration::from_secs(86_400 * 365));
            let was_held = lock(&hub.leases)
                .insert(name, until)
                .is_some_and(|old| Instant::now() < old);
            if !was_held {
                // Calls may be waiting for whoever takes the lease.
                hub.scan_now.notify_one();
            }
            Ok(Some(from_db(term)))
        })
    }

    fn release(&self, name: &str) -> BoxFuture<'_, Result<()>> {
        let name = name.to_owned();
        Box::pin(async move {
            let hub = self.hub();
            lock(&hub.leases).remove(&name);
            let client = hub.client().await?;
            // The row stays (its term must keep growing); holder '' matches no node.
            db::execute(
                &client,
                "release lease",
                "UPDATE ds_leases SET holder = '', expires_at = '-infinity' \
                 WHERE name = $1 AND holder = $2",
                &[&name, &hub.node_id],
            )
            .await?;
            Ok(())
        })
    }

    fn changes(&self) -> broadcast::Receiver<Change> {
        self.hub().changes.subscribe()
    }

    fn call(&self, lease: &str, request: Bytes, timeout: Duration) -> BoxFuture<'_, Result<Bytes>> {
        Box::pin(call(
            Arc::clone(self.hub()),
            lease.to_owned(),
            request,
            timeout,
        ))
    }

    fn serve(&self, lease: &str) -> mpsc::Receiver<Call> {
        let hub = self.hub();
        let (tx, rx) = mpsc::channel(SERVE_CAPACITY);
        lock(&hub.servers).insert(lease.to_owned(), tx);
        hub.scan_now.notify_one();
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(raw: &str) -> StreamName {
        stored_name(raw).expect("valid name")
    }

    #[test]
    fn gone_payloads_fit_a_notification() {
        assert_eq!(gone_payload(7, "a b/c"), "gone 7 a b/c");
        let long = "n".repeat(9000);
        assert_eq!(gone_payload(7, &long), "gone 7");
        let edge = "n".repeat(MAX_NAME_IN_PAYLOAD);
        assert!(gone_payload(u64::MAX, &edge).len() < 8000);
    }

    #[test]
    fn the_cache_reports_tails_in_order_and_forgets_gone_streams() {
        let mut cache = NameCache::default();
        assert_eq!(cache.advance(1, Offset::new(1, 1)), None, "unknown id");
        cache.insert(1, name("s"));
        assert_eq!(cache.advance(1, Offset::new(2, 5)), Some(name("s")));
        assert_eq!(cache.advance(1, Offset::new(1, 3)), None, "an older tail");
        assert_eq!(
            cache.advance(1, Offset::new(2, 5)),
            Some(name("s")),
            "a repeat"
        );
        assert_eq!(cache.forget(1, None), Some(name("s")));
        assert_eq!(cache.advance(1, Offset::new(3, 6)), None);
        assert_eq!(cache.forget(2, Some("t".to_owned())), Some(name("t")));
        assert_eq!(cache.forget(3, None), None);
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cache = NameCache::default();
        for id in 0..(NAME_CACHE as u64 + 10) {
            cache.insert(id, name("s"));
        }
        assert_eq!(cache.map.len(), NAME_CACHE);
        assert!(!cache.map.contains_key(&0), "the oldest is evicted");
        for id in 0..(3 * NAME_CACHE as u64) {
            cache.insert(id + 1_000_000, name("s"));
            cache.forget(id + 1_000_000, None);
        }
        assert!(cache.order.len() <= 2 * NAME_CACHE + 1);
    }

    #[test]
    fn node_ids_differ() {
        let (a, b) = (node_id(), node_id());
        assert_ne!(a, b);
        assert!(a.contains(&std::process::id().to_string()));
    }
}
