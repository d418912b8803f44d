//! Durable Streams storage on PostgreSQL, so any number of stateless server nodes can serve
//! the same streams.
//!
//! # Guarantees
//!
//! - **Nothing acknowledged is lost.** Every create, append, close and delete is answered only
//!   after its transaction committed; durability is PostgreSQL's (`synchronous_commit`, and
//!   replication if the operator configured it). A node that crashes loses nothing but the
//!   answers it had not sent; the database keeps each operation wholly or not at all.
//! - **One transaction per batch.** An append's records, the stream's new tail, its producer
//!   states, `Stream-Seq` and closure commit together. Concurrent appends on one node share a
//!   transaction (group commit, see `commit`); an operation the protocol rejects is answered
//!   with its error while the rest of its batch commits.
//! - **Per-stream order from row locks.** A batch locks the rows of the streams it writes
//!   (`SELECT ... FOR UPDATE`, in name order); appends to different streams never wait on each
//!   other, on one node or across nodes. Offsets are `(record, byte)` pairs taken from the
//!   locked row, so they increase strictly whichever node appends.
//! - **Cross-node live reads.** A commit that moves a tail is followed by a `NOTIFY` (stream
//!   id and new tail, no data, short whatever the name; sent after `COMMIT`, not inside it, so notifying commits are
//!   not serialised by PostgreSQL's notification lock). Every node keeps one `LISTEN`
//!   connection and wakes its local readers, which re-read from the database; a re-check
//!   timer reads the tails of every watched stream, so a lost notification or a reconnect
//!   only delays a wake-up (see `live`).
//! - **Stateless nodes.** Nothing about streams is cached between requests: every read starts
//!   from the stream's row, so a node sees every other node's commits at once.
//! - **Expiry.** TTL and absolute expiry are checked on every access, like the other
//!   backends. A read records its access only when the recorded one is older than a tenth of
//!   the TTL (at most 2 s), so reads of a busy TTL stream rarely write; [`Storage::sweep_expired`] reclaims expired streams on whichever node holds the
//!   sweep lease (a row in `ds_leases`), not on all nodes at once.
//! - **Migrations** are applied at startup, versioned, in one transaction under an advisory
//!   lock, so nodes starting at once are safe (see `schema`; version 2 added lease terms and
//!   the `ds_calls` table).
//!
//! # Cluster coordination
//!
//! [`Storage::cluster`] returns a [`Cluster`] (see `cluster`): work that must run on one node
//! at a time (the subscription engine) uses it, with no network path between nodes.
//!
//! - **Leases** are rows of `ds_leases` (shared with the sweep lease), taken or renewed by one
//!   statement that lets the database's clock decide expiry; the term grows whenever the
//!   holder changes, and a released lease keeps its row (holder `''`) so terms never go back.
//! - **Changes** of every node come from the `LISTEN` connection: tail notifications
//!   (`ds_tail_<schema>`) are resolved to stream names by a task with a bounded id → name
//!   cache, only while the feed has receivers; deletes and expiries also send
//!   `gone <id> <name>` on `ds_cluster_<schema>`. A reconnect of the listener, a full queue or
//!   a failed lookup is reported as `Change::Resync`.
//! - **Calls** go through `ds_calls`: the caller inserts a row and sends `call <id> <lease>`;
//!   the holder claims it (`taken_by`, once, only while its lease is valid both locally and in
//!   the database), answers, and sends `done <id>`. The caller polls every 250 ms and the
//!   holder scans for unclaimed rows every 300 ms, so a lost notification only delays; a call
//!   nobody answers fails after its timeout and its row is deleted.
//!
//! Deliberately not here: connection TLS (put PostgreSQL on a private network or behind a
//! TLS-terminating proxy), and any cache of stream data on the nodes.
//!
//! Entry points: [`PostgresStorage::open`] with [`PostgresOptions`], then the [`Storage`]
//! trait (and [`Storage::cluster`]); [`PostgresStorage::close`] to hand the sweep lease and
//! cluster leases on at shutdown.

mod cluster;
mod commit;
mod db;
mod error;
mod live;
mod read;
mod schema;
mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use ds_protocol::{Expiry, Offset, StreamName};
use ds_storage::rules::{self, Clock, SystemClock, WriterState};
use ds_storage::{
    AppendOutcome, AppendRequest, Cluster, CreateOutcome, CreateRequest, ExportMeta, ForkPoint,
    ReadChunk, ReadFrom, Result, Storage, StorageStats, StreamInfo, Tail,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

use crate::cluster::Hub;
use crate::error::{backend, invalid};
use crate::live::Registry;
use crate::read::Reader;
use crate::schema::to_db;
use ds_storage::Pieces;

/// The schema [`PostgresOptions::new`] puts the tables in.
pub const DEFAULT_SCHEMA: &str = "durable_streams";

/// Options of a [`PostgresStorage`].
#[derive(Clone)]
pub struct PostgresOptions {
    /// A libpq-style connection string or URL (`postgres://user@host:5432/db`).
    pub url: String,
    /// The PostgreSQL schema holding the tables (created if missing): a lower-case
    /// identifier of at most 40 characters. Deployments sharing a database use different ones.
    pub schema: String,
    /// Connections in this node's pool (at least 2). The `LISTEN` connection is extra.
    pub pool_size: usize,
    /// `statement_timeout` of every pooled connection, in milliseconds (0 = none). A statement
    /// waiting longer (on a lock, or an overloaded database) fails with a backend error.
    pub statement_timeout_ms: u64,
    /// Upper bound on payload bytes of one stream (`None` = unbounded).
    pub max_stream_bytes: Option<u64>,
    /// Tasks committing append batches on this node. One batch is in flight at a time (what
    /// queues meanwhile is the next batch); another committer starts only when the batch in
    /// flight takes longer than 25 ms, so a batch waiting on a row lock does not stall the node.
    pub committers: usize,
    /// How often live readers' tails are re-read, in case a notification was lost.
    pub recheck_interval: Duration,
    /// How long the sweep lease lasts without renewal (a node that stops sweeping hands the
    /// chore on after this).
    pub sweep_lease: Duration,
    /// Clock used for TTL and expiry.
    pub clock: Arc<dyn Clock>,
}

impl PostgresOptions {
    /// Defaults for the database at `url`: schema [`DEFAULT_SCHEMA`], 16 connections, a 30 s
    /// statement timeout, 4 committers, re-check every 500 ms, a 60 s sweep lease.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        PostgresOptions {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: 16,
            statement_timeout_ms: 30_000,
            max_stream_bytes: None,
            committers: 4,
            recheck_interval: Duration::from_millis(500),
            sweep_lease: Duration::from_secs(60),
            clock: Arc::new(SystemClock),
        }
    }
}

impl std::fmt::Debug for PostgresOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: only its shape is shown.
        f.debug_struct("PostgresOptions")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("statement_timeout_ms", &self.statement_timeout_ms)
            .field("max_stream_bytes", &self.max_stream_bytes)
            .field("committers", &self.committers)
            .field("recheck_interval", &self.recheck_interval)
            .field("sweep_lease", &self.sweep_lease)
            .finish_non_exhaustive()
    }
}

/// Commit counters, kept by the committers.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) batches: AtomicU64,
    pub(crate) ops: AtomicU64,
    pub(crate) commit_micros: AtomicU64,
}

/// What every task of a store shares.
pub(crate) struct Shared {
    pub(crate) pool: Pool,
    pub(crate) registry: Arc<Registry>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) max_stream_bytes: u64,
    /// The `NOTIFY` channel of this schema.
    pub(crate) channel: String,
    pub(crate) stats: Stats,
    /// This store's identity as a lease holder.
    pub(crate) node_id: String,
    pub(crate) sweep_lease_secs: f64,
    /// Cluster coordination: leases, the change feed, forwarded calls.
    pub(crate) hub: Arc<Hub>,
}

/// The PostgreSQL backend. Cheap to clone: clones share one pool and one `LISTEN` connection.
#[derive(Clone)]
pub struct PostgresStorage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("channel", &self.inner.shared.channel)
            .field("node_id", &self.inner.shared.node_id)
            .finish_non_exhaustive()
    }
}

struct Inner {
    shared: Arc<Shared>,
    queue: mpsc::UnboundedSender<commit::Op>,
    /// The listener, re-check, change-resolver and call-scanner tasks, stopped when the store
    /// is dropped. (Committers stop by themselves once the queue is closed and drained.)
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl PostgresStorage {
    /// Connects, applies pending migrations, and starts the committers, the `LISTEN`
    /// connection and the re-check timer. Must run inside a tokio runtime.
    pub async fn open(opts: PostgresOptions) -> Result<PostgresStorage> {
        if !schema::valid_schema_name(&opts.schema) {
            return Err(invalid(
                "check options",
                format!(
                    "schema {:?} must be a lower-case identifier of at most 40 characters",
                    opts.schema
                ),
            ));
        }
        if opts.pool_size < 2 {
            return Err(invalid("check options", "pool_size must be at least 2"));
        }
        let mut config: tokio_postgres::Config = opts
            .url
            .parse()
            .map_err(|e| backend("parse the database URL", e))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("durable-streams");
        }
        let options = format!(
            "{} -c search_path={} -c statement_timeout={}",
            config.get_options().unwrap_or_default(),
            schema::quoted(&opts.schema),
            opts.statement_timeout_ms
        );
        config.options(options.trim_start());

        let (mut client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| backend("connect to the database", e))?;
        let conn_task = tokio::spawn(connection);
        let migrated = schema::migrate(&mut client, &opts.schema).await;
        drop(client);
        let _ = conn_task.await;
        migrated?;

        let pool = pool(&config, opts.pool_size)?;

        let registry = Arc::new(Registry::default());
        let channel = format!("ds_tail_{}", opts.schema);
        let node_id = cluster::node_id();
        let (hub, feed) = Hub::new(&opts.schema, node_id.clone(), pool.clone());
        let shared = Arc::new(Shared {
            pool: pool.clone(),
            registry: Arc::clone(&registry),
            clock: opts.clock,
            max_stream_bytes: opts.max_stream_bytes.unwrap_or(u64::MAX),
            channel: channel.clone(),
            stats: Stats::default(),
            node_id,
            sweep_lease_secs: opts.sweep_lease.as_secs_f64(),
            hub: Arc::clone(&hub),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = commit::queue(rx);
        let gate = commit::Gate::default();
        for _ in 0..opts.committers.max(1) {
            tokio::spawn(commit::committer(
                Arc::clone(&shared),
                Arc::clone(&queue),
                Arc::clone(&gate),
            ));
        }
        let tasks = vec![
            tokio::spawn(live::listen(
                Arc::clone(&registry),
                Arc::clone(&hub),
                config,
                channel,
            )),
            tokio::spawn(live::recheck(
                Arc::clone(&registry),
                pool,
                opts.recheck_interval,
            )),
            tokio::spawn(cluster::resolve(Arc::clone(&hub), feed)),
            tokio::spawn(cluster::scan(hub)),
        ];
        // Live readers are only woken across nodes once the LISTEN is in place; give it a
        // moment (the re-check timer covers the gap if the database is slow to answer).
        for _ in 0..200 {
            if registry.listening.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(PostgresStorage {
            inner: Arc::new(Inner {
                shared,
                queue: tx,
                tasks,
            }),
        })
    }

    /// Hands every lease this node holds on (the sweep lease, and the cluster leases of
    /// [`Cluster::acquire`]) so other nodes take over at once. The store keeps working;
    /// dropping the last clone (and every [`Storage::cluster`] handle) stops its tasks.
    pub async fn close(&self) {
        self.inner.shared.hub.forget_leases();
        if let Ok(client) = self.inner.shared.pool.get().await {
            // The rows stay, with no holder: a lease's term must keep growing.
            let _ = client
                .execute(
                    "UPDATE ds_leases SET holder = '', expires_at = '-infinity' \
                     WHERE holder = $1",
                    &[&self.inner.shared.node_id],
                )
                .await;
        }
    }

    /// Append batches committed so far by this node (for tests and metrics).
    #[must_use]
    pub fn commit_count(&self) -> u64 {
        self.inner.shared.stats.batches.load(Ordering::Relaxed)
    }

    /// Appends carried by those batches.
    #[must_use]
    pub fn committed_ops(&self) -> u64 {
        self.inner.shared.stats.ops.load(Ordering::Relaxed)
    }

    fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.inner.shared)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.inner
            .shared
            .pool
            .get()
            .await
            .map_err(|e| backend("get a database connection", e))
    }

    async fn read_inner(
        &self,
        name: &StreamName,
        from: ReadFrom,
        max_bytes: usize,
    ) -> Result<ReadChunk> {
        let shared = self.shared();
        let client = self.client().await?;
        let row = stream::live(&shared, &client, name.as_str()).await?;
        if let Expiry::Ttl(secs) = row.expiry {
            slide_ttl(&shared, &client, &row, secs).await?;
        }
        let tail = row.tail;
        let start = match from {
            ReadFrom::Start => Offset::ZERO,
            ReadFrom::Tail => tail,
            ReadFrom::At(o) => o,
        };
        let mut pieces = Pieces::default();
        let mut budget = max_bytes.max(1);
        let next = if matches!(from, ReadFrom::Tail) {
            tail
        } else {
            Reader::new(&client)
                .read_view(&row, tail, start, None, &mut budget, &mut pieces)
                .await?
        };
        let up_to_date = next == tail;
        Ok(ReadChunk {
            stream_id: row.id,
            content_type: row.content_type,
            start,
            next,
            pieces: pieces.finish(),
            up_to_date,
            closed: up_to_date && row.closed,
        })
    }
}

/// The connection pool: broken connections are recycled, waits are bounded.
fn pool(config: &tokio_postgres::Config, size: usize) -> Result<Pool> {
    let manager = Manager::from_config(
        config.clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .create_timeout(Some(Duration::from_secs(5)))
        .wait_timeout(Some(Duration::from_secs(30)))
        .build()
        .map_err(|e| backend("build the connection pool", e))
}

/// Longest a read may leave a TTL stream's last access unrecorded (see [`slide_ttl`]).
const MAX_SLIDE_STEP_MS: u64 = 2_000;

/// How stale a TTL stream's last access may be before a read records a new one: a tenth of
/// the TTL, at most [`MAX_SLIDE_STEP_MS`]. A stream read continually thus expires at most
/// that much before its exact TTL.
fn slide_step_ms(ttl_secs: u64) -> u64 {
    (ttl_secs.saturating_mul(1000) / 10).min(MAX_SLIDE_STEP_MS)
}

/// A read slides the TTL. Only TTL streams pay for the write, and only when the recorded
/// access is older than [`slide_step_ms`] (also checked in the `WHERE` clause, so concurrent
/// readers do not queue on the row lock for the same step). Committed without waiting for
/// the WAL flush: losing a slide to a database crash only shortens a TTL by one step.
async fn slide_ttl(
    shared: &Shared,
    client: &deadpool_postgres::Object,
    row: &schema::StreamRow,
    ttl_secs: u64,
) -> Result<()> {
    let now = shared.clock.now_ms();
    let step = slide_step_ms(ttl_secs);
    if now.saturating_sub(row.last_access_ms) <= step {
        return Ok(());
    }
    db::execute(
        client,
        "slide TTL",
        "UPDATE ds_streams SET last_access_ms = $2 \
         FROM (SELECT set_config('synchronous_commit', 'off', true)) AS c \
         WHERE id = $1 AND last_access_ms < $2::bigint - $3::bigint",
        &[&to_db(row.id), &to_db(now), &to_db(step)],
    )
    .await?;
    Ok(())
}

impl Storage for PostgresStorage {
    async fn create(&self, name: &StreamName, req: CreateRequest) -> Result<CreateOutcome> {
        stream::detach(stream::create(self.shared(), name.clone(), req)).await
    }

    async fn append(&self, name: &StreamName, req: AppendRequest) -> Result<AppendOutcome> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .queue
            .send(commit::Op {
                name: name.clone(),
                req,
                reply,
            })
            .map_err(|_| invalid("queue append", "the committers have stopped"))?;
        answer
            .await
            .map_err(|_| invalid("append", "the committer stopped before answering"))?
    }

    async fn read(&self, name: &StreamName, from: ReadFrom, max_bytes: usize) -> Result<ReadChunk> {
        self.read_inner(name, from, max_bytes).await
    }

    async fn head(&self, name: &StreamName) -> Result<StreamInfo> {
        let client = self.client().await?;
        let row = stream::live(&self.shared(), &client, name.as_str()).await?;
        stream::info(&row)
    }

    async fn delete(&self, name: &StreamName) -> Result<()> {
        stream::detach(stream::delete(self.shared(), name.clone())).await
    }

    async fn subscribe(&self, name: &StreamName) -> Result<watch::Receiver<Tail>> {
        let shared = self.shared();
        let client = self.client().await?;
        let row = stream::live(&shared, &client, name.as_str()).await?;
        let rx = shared.registry.subscribe(
            name.as_str(),
            row.id,
            Tail {
                next: row.tail,
                closed: row.closed,
                gone: false,
            },
        );
        // A commit between the read above and the registration was published to nobody:
        // read the tail once more now that the channel is in place.
        match db::stream_by_id(&client, row.id, false).await? {
            Some(now) => shared.registry.publish(
                name.as_str(),
                now.id,
                Tail {
                    next: now.tail,
                    closed: now.closed || now.soft_deleted,
                    gone: now.soft_deleted,
                },
            ),
            None => shared.registry.publish(
                name.as_str(),
                row.id,
                Tail {
                    next: row.tail,
                    closed: true,
                    gone: true,
                },
            ),
        }
        Ok(rx)
    }

    async fn list(&self) -> Result<Vec<StreamInfo>> {
        let client = self.client().await?;
        let rows = db::query(
            &client,
            "list streams",
            &format!(
                "SELECT {} FROM ds_streams WHERE NOT soft_deleted",
                schema::STREAM_COLUMNS
            ),
            &[],
        )
        .await?;
        let now = self.inner.shared.clock.now_ms();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let row = schema::StreamRow::decode(row)?;
            if !rules::is_expired(row.expiry, row.last_access_ms, now) {
                out.push(stream::info(&row)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn sweep_expired(&self) -> Result<usize> {
        stream::detach(stream::sweep(self.shared())).await
    }

    async fn export_meta(&self, name: &StreamName) -> Result<ExportMeta> {
        let client = self.client().await?;
        let row = stream::live(&self.shared(), &client, name.as_str()).await?;
        let writer = stream::writer_state(&client, &row).await?;
        Ok(ExportMeta {
            info: stream::info(&row)?,
            base: row.base,
            fork: row
                .fork
                .as_ref()
                .map(|f| -> Result<ForkPoint> {
                    Ok(ForkPoint {
                        source: stream::stored_name(&f.source_name)?,
                        offset: f.anchor,
                        sub_offset: f.sub_offset,
                    })
                })
                .transpose()?,
            writer,
        })
    }

    async fn restore_writer(&self, name: &StreamName, writer: WriterState) -> Result<()> {
        stream::detach(stream::restore_writer(self.shared(), name.clone(), writer)).await
    }

    /// Ready while the `LISTEN` connection is up: the database answers, and live readers are
    /// woken across nodes.
    fn is_ready(&self) -> bool {
        self.inner.shared.registry.listening.load(Ordering::Relaxed)
    }

    /// Leases, the feed of every node's stream changes, and calls forwarded to a lease holder,
    /// through this schema (see the crate docs). The handle keeps the store alive.
    fn cluster(&self) -> Option<Arc<dyn Cluster>> {
        Some(Arc::new(cluster::Handle {
            store: self.clone(),
        }))
    }

    /// Commits of this node (`commit_batches` = `syncs`: each is one transaction commit),
    /// the appends they carried and the time spent in `COMMIT`. Stream and byte counts are
    /// the cluster's, kept only in the database: they are not reported, since this must not
    /// do I/O.
    fn stats(&self) -> StorageStats {
        let s = &self.inner.shared.stats;
        let batches = s.batches.load(Ordering::Relaxed);
        StorageStats {
            commit_batches: Some(batches),
            commit_ops: Some(s.ops.load(Ordering::Relaxed)),
            syncs: Some(batches),
            sync_micros: Some(s.commit_micros.load(Ordering::Relaxed)),
            ..StorageStats::default()
        }
    }
}
