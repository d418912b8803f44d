//! The subscription engine: state, wake decisions, delivery, leases and retries.
//!
//! All state lives in one [`Inner`] behind a `std::sync::Mutex` that is never held across an
//! `.await`. Every change goes through [`Inner::commit`], which applies an [`Event`] and queues
//! the same event for the log writer while the lock is held, so the log order is the order the
//! state changed in. HTTP handlers wait for the writer ([`Subscriptions::flush`]) before they
//! answer; the storage hooks on the append path do not wait (a lost link or wake is rebuilt on
//! open: links by re-matching patterns, wakes from `tail > acked_offset`).
//!
//! Three background tasks hold only a `Weak` to the engine: the log writer, the job dispatcher
//! (webhook deliveries and pull-wake event writes, one spawned task each) and the timer (lease
//! expiry and retries, woken early through a `Notify`).
//!
//! In cluster mode ([`Storage::cluster`] is `Some`) the engine opens in standby and the
//! [`leader`] module runs it: a lease task activates it (loads the state, spawns those tasks
//! plus a change-feed task and a task answering forwarded requests) while this node holds the
//! `subscriptions` lease, and deactivates it (ends that activation's tasks, drops the state)
//! when it does not. Each activation is a *run*: [`Inner::run`] numbers it (0 in standby, 1
//! forever in single-node mode), and everything queued by one run (jobs, flushes) checks it is
//! still current, so a later activation starts from the persisted state alone.

mod leader;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ds_protocol::{Offset, StreamName};
use ds_storage::{AppendOutcome, AppendRequest, Cluster, Storage, StreamInfo};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};

use crate::api::ApiError;
use crate::config::SubscriptionsConfig;
use crate::error::{Error, Result};
use crate::keys::{KeyRing, TokenClaims};
use crate::persist::{self, LogOp};
use crate::spec::{self, Kind, Spec};
use crate::ssrf;
use crate::state::{AckEntry, Event, Link, Off, Retry, State, Sub, Wake};
use crate::webhook;

/// How long callback and claim tokens stay valid. Fencing (generation and wake id) is what
/// retires a token in practice; the expiry bounds a leaked one.
const TOKEN_TTL_SECS: u64 = 24 * 60 * 60;
/// The longest the timer sleeps without looking.
const MAX_TICK: Duration = Duration::from_secs(1);
/// Largest accepted request body on the subscription routes.
pub(crate) const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The [`Cluster`] lease naming the one active engine, and the name requests are forwarded to.
pub(crate) const LEASE: &str = "subscriptions";

/// Current Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The retry delay after `attempt` failures: 1 s doubling to 60 s, times `1 + jitter` where
/// `jitter` is uniform in ±20 % (`unit` in `[-1, 1]`).
#[must_use]
pub fn backoff_ms(attempt: u32, unit: f64) -> u64 {
    let base = 1000_u64
        .saturating_mul(1_u64 << attempt.saturating_sub(1).min(16))
        .min(60_000);
    #[allow(clippy::cast_precision_loss, clippy::cast_sign_loss)]
    let jittered = (base as f64 * (1.0 + 0.2 * unit.clamp(-1.0, 1.0))).round() as u64;
    jittered
}

fn random_unit() -> f64 {
    fastrand::f64() * 2.0 - 1.0
}

fn random_id(prefix: &str) -> String {
    let mut bytes = [0_u8; 12];
    if getrandom::fill(&mut bytes).is_err() {
        fastrand::fill(&mut bytes);
    }
    bytes.iter().fold(prefix.to_owned(), |mut s, b| {
        use std::fmt::Write;
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| fastrand::u64(..))
}

/// `created_at` as `2026-05-09T00:00:00.000Z`.
fn rfc3339_ms(ms: u64) -> String {
    let dt = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.millisecond()
    )
}

/// Percent-encodes a path segment (everything but RFC 3986 unreserved characters).
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            use std::fmt::Write;
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Work done outside the lock, for run `run` (see [`Inner::run`]).
#[derive(Debug)]
enum Job {
    /// POST the wake to the webhook.
    Deliver {
        run: u64,
        id: String,
        wake_id: String,
    },
    /// Append the wake event to the wake stream.
    WriteWake {
        run: u64,
        id: String,
        wake_id: String,
    },
}

/// Everything behind the engine's lock.
struct Inner {
    /// The activation this state belongs to: 0 in standby (cluster mode, no state), 1 for the
    /// whole life of a single-node engine, a new number for every cluster-mode activation.
    run: u64,
    /// Cluster mode: the run's stop signal, held only to be dropped. Dropping it (with this
    /// `Inner`) ends the run's writer, jobs, timer, change-feed and serve tasks.
    _stop: Option<watch::Sender<()>>,
    state: State,
    /// Last known tail of every stream some subscription links (or might link).
    tails: HashMap<String, Offset>,
    /// Subscriptions with a delivery job queued or running, and the wake it is for.
    busy: HashMap<String, String>,
    log: mpsc::UnboundedSender<LogOp>,
    jobs: mpsc::UnboundedSender<Job>,
    timer: Arc<Notify>,
    log_bytes: usize,
    snapshot_bytes: usize,
    compact_bytes: usize,
    /// Cluster mode, while no subscription exists: hands the run's change-feed task its
    /// receiver once the first subscription arms the engine. Until then the node does not
    /// follow the feed, so a deployment without subscriptions pays nothing per append.
    feed: Option<oneshot::Sender<broadcast::Receiver<ds_storage::Change>>>,
}

impl Inner {
    /// The state of a standby node: empty, run 0, and channels nobody reads (a flush fails).
    fn standby(compact_bytes: usize) -> Inner {
        Inner {
            run: 0,
            _stop: None,
            state: State::default(),
            tails: HashMap::new(),
            busy: HashMap::new(),
            log: mpsc::unbounded_channel().0,
            jobs: mpsc::unbounded_channel().0,
            timer: Arc::new(Notify::new()),
            log_bytes: 0,
            snapshot_bytes: 0,
            compact_bytes,
            feed: None,
        }
    }

    fn commit(&mut self, event: Event) {
        let bytes = serde_json::to_vec(&event).expect("state events always serialise to JSON");
        self.log_bytes += bytes.len();
        self.state.apply(event);
        let _ = self.log.send(LogOp::Event(bytes));
        if self.log_bytes
            > self
                .compact_bytes
                .max(self.snapshot_bytes.saturating_mul(2))
        {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let snapshot =
            serde_json::to_vec(&self.state.snapshot()).expect("state always serialises to JSON");
        self.snapshot_bytes = snapshot.len();
        self.log_bytes = 0;
        let _ = self.log.send(LogOp::Snapshot(snapshot));
    }

    fn set_wake(&mut self, id: &str, generation: u64, wake: Option<Wake>, retry: Option<Retry>) {
        self.commit(Event::Wake {
            id: id.to_owned(),
            generation,
            wake,
            retry,
        });
    }

    /// Clears the wake, lease and retry.
    fn clear_wake(&mut self, id: &str) {
        if let Some(sub) = self.state.subs.get(id) {
            let generation = sub.generation;
            self.set_wake(id, generation, None, None);
        }
    }

    fn tail(&self, path: &str) -> Off {
        self.tails.get(path).copied().map_or(Off::ZERO, Off)
    }

    fn pending(&self, sub: &Sub) -> BTreeMap<String, Off> {
        sub.links
            .iter()
            .filter_map(|(path, link)| {
                let tail = self.tail(path);
                (tail > link.acked).then(|| (path.clone(), tail))
            })
            .collect()
    }

    /// Issues a new wake when the subscription is idle and has pending work.
    fn issue_wake(&mut self, id: &str, now: u64) -> Option<String> {
        let sub = self.state.subs.get(id)?;
        if sub.wake.is_some() {
            return None;
        }
        let pending = self.pending(sub);
        if pending.is_empty() {
            return None;
        }
        let generation = sub.generation + 1;
        let wake_id = random_id("w_");
        let wake = Wake {
            id: wake_id.clone(),
            issued_at_ms: now,
            snapshot: pending,
            holder: None,
            lease_expires_at_ms: None,
        };
        self.set_wake(id, generation, Some(wake), None);
        Some(wake_id)
    }

    /// Issues a wake if due and queues its delivery. Returns whether a wake was issued.
    fn maybe_wake(&mut self, id: &str, now: u64) -> bool {
        let Some(wake_id) = self.issue_wake(id, now) else {
            return false;
        };
        let kind = self
            .state
            .subs
            .get(id)
            .map_or(Kind::Webhook, |s| s.spec.kind);
        self.queue_delivery(id, wake_id, kind);
        true
    }

    /// Marks the subscription busy and queues the delivery of wake `wake_id`.
    fn queue_delivery(&mut self, id: &str, wake_id: String, kind: Kind) {
        self.busy.insert(id.to_owned(), wake_id.clone());
        let (run, id) = (self.run, id.to_owned());
        let job = match kind {
            Kind::Webhook => Job::Deliver { run, id, wake_id },
            Kind::PullWake => Job::WriteWake { run, id, wake_id },
        };
        let _ = self.jobs.send(job);
    }

    fn busy_done(&mut self, id: &str, wake_id: &str) {
        if self.busy.get(id).is_some_and(|w| w == wake_id) {
            self.busy.remove(id);
        }
    }

    /// The current wake of `id` if it is `wake_id`.
    fn wake_is(&self, id: &str, wake_id: &str) -> bool {
        self.state
            .subs
            .get(id)
            .and_then(|s| s.wake.as_ref())
            .is_some_and(|w| w.id == wake_id)
    }

    fn schedule_retry(&mut self, id: &str, now: u64) {
        let Some(sub) = self.state.subs.get(id) else {
            return;
        };
        let attempt = sub.retry.map_or(1, |r| r.attempt.saturating_add(1));
        let retry = Retry {
            attempt,
            next_attempt_at_ms: now + backoff_ms(attempt, random_unit()),
        };
        let generation = sub.generation;
        let wake = sub.wake.clone().map(|w| Wake {
            lease_expires_at_ms: None,
            ..w
        });
        self.set_wake(id, generation, wake, Some(retry));
        self.timer.notify_one();
    }

    /// Links newly seen `path` to every subscription whose pattern matches, at offset zero:
    /// everything in a stream created after the subscription is new to it.
    fn discover(&mut self, path: &str) {
        let to_link: Vec<String> = self
            .state
            .subs
            .values()
            .filter(|sub| !sub.links.contains_key(path))
            .filter(|sub| sub.spec.wake_stream.as_deref() != Some(path))
            .filter(|sub| sub.glob.as_ref().is_some_and(|g| g.matches(path)))
            .map(|sub| sub.id.clone())
            .collect();
        for id in to_link {
            self.commit(Event::Link {
                id,
                path: path.to_owned(),
                link: Some(Link {
                    explicit: false,
                    glob: true,
                    acked: Off::ZERO,
                }),
            });
        }
    }

    fn wake_linked(&mut self, path: &str, now: u64) {
        let ids: Vec<String> = self
            .state
            .subs
            .values()
            .filter(|sub| sub.wake.is_none() && sub.links.contains_key(path))
            .map(|sub| sub.id.clone())
            .collect();
        for id in ids {
            self.maybe_wake(&id, now);
        }
    }

    fn link_infos(&self, sub: &Sub) -> Vec<LinkInfo> {
        sub.links
            .iter()
            .map(|(path, link)| {
                let tail = self.tail(path).max(link.acked);
                LinkInfo {
                    path: path.clone(),
                    link_type: link.link_type(),
                    acked_offset: link.acked,
                    tail_offset: tail,
                    has_pending: tail > link.acked,
                }
            })
            .collect()
    }
}

/// One stream of a wake (webhook body, claim response).
#[derive(Debug, Serialize)]
struct LinkInfo {
    path: String,
    link_type: &'static str,
    acked_offset: Off,
    tail_offset: Off,
    has_pending: bool,
}

/// The webhook request body (PROTOCOL.md section 7.1).
#[derive(Debug, Serialize)]
struct WakeBody<'a> {
    subscription_id: &'a str,
    wake_id: &'a str,
    generation: u64,
    streams: Vec<LinkInfo>,
    callback_url: String,
    callback_token: String,
}

/// Fields of a callback, ack or release body.
#[derive(Debug, Deserialize)]
struct WakeRequest {
    wake_id: Option<String>,
    generation: Option<u64>,
    #[serde(default)]
    acks: Vec<AckRequest>,
    #[serde(default)]
    done: bool,
}

#[derive(Debug, Deserialize)]
struct AckRequest {
    stream: Option<String>,
    path: Option<String>,
    offset: String,
}

/// The outcome of a `PUT`.
#[derive(Debug)]
pub(crate) enum PutOutcome {
    /// `201`.
    Created(Value),
    /// `200`.
    Existed(Value),
}

/// The subscription engine over a store `S`.
///
/// Build it with [`Subscriptions::open`], serve its routes with [`crate::router`], and build
/// the server's stream routes over [`crate::Notifying`] so every write reaches it.
pub struct Subscriptions<S> {
    storage: Arc<S>,
    cfg: SubscriptionsConfig,
    keys: KeyRing,
    client: webhook::Client,
    inner: Mutex<Inner>,
    stopped: AtomicBool,
    /// Some subscription exists or is being created. Until then the storage hooks return at
    /// once: a store without subscriptions pays one atomic load per write, not the lock.
    ///
    /// Set (`SeqCst`) before a new subscription reads the tails it starts from, and read
    /// (`SeqCst`) by a hook after its write: a write whose hook saw `false` finished before the
    /// flag was set, so that subscription's backfill sees it. Never cleared while open.
    armed: AtomicBool,
    /// This engine decides and delivers wakes: always in single-node mode; in cluster mode
    /// while an activation is installed (see [`leader`]). The storage hooks of a standby node
    /// return after loading it.
    active: AtomicBool,
    /// The coordination handle of a store several servers share; `None` in single-node mode.
    cluster: Option<Arc<dyn Cluster>>,
    /// Cluster mode: the counter half of every `Stream-Seq`, never reset while the process
    /// runs (see [`persist::Fencing`]).
    seq_counter: Arc<AtomicU64>,
    /// Cluster mode: the last run number handed out.
    runs: AtomicU64,
    /// Cluster mode: wakes the lease task early (shutdown).
    lease_wake: Arc<Notify>,
    /// Cluster mode: set by the lease task once a shutdown has flushed the state and released
    /// the lease, with the outcome of that flush.
    retired: watch::Sender<Option<Result<(), String>>>,
}

impl<S> std::fmt::Debug for Subscriptions<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriptions")
            .field("kid", &self.keys.kid())
            .finish_non_exhaustive()
    }
}

impl<S: Storage> Subscriptions<S> {
    /// Loads the signing key and the subscription state from `storage` (creating them on first
    /// start), re-links streams created while the state was not being recorded, resumes wakes
    /// in flight and scheduled retries, and spawns the background tasks. Must be called inside
    /// a tokio runtime.
    ///
    /// When `storage` is shared by several servers ([`Storage::cluster`] is `Some`), only the
    /// signing key is loaded here: the engine opens in standby, and a background task makes it
    /// the active one, as above, while this node holds the `subscriptions` lease (see the crate
    /// docs, "Several nodes").
    pub async fn open(storage: Arc<S>, cfg: SubscriptionsConfig) -> Result<Arc<Self>> {
        if let Some(url) = &cfg.public_base_url {
            let ok = url.parse::<http::Uri>().is_ok_and(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
            });
            if !ok {
                return Err(Error::Config(format!(
                    "public_base_url {url:?} must be an absolute http(s) URL"
                )));
            }
        }
        if cfg.cluster_lease_ms < 100 {
            return Err(Error::Config(format!(
                "cluster_lease_ms {} must be at least 100",
                cfg.cluster_lease_ms
            )));
        }
        if cfg.cluster_call_timeout_ms == 0 {
            return Err(Error::Config(
                "cluster_call_timeout_ms must be at least 1".to_owned(),
            ));
        }
        let client = webhook::Client::new(Duration::from_millis(cfg.webhook_timeout_ms))
            .map_err(Error::Config)?;
        let keys = persist::load_or_create_key(&*storage, now_ms()).await?;
        if let Some(cluster) = storage.cluster() {
            return Ok(leader::open_standby(storage, cfg, keys, client, cluster));
        }
        let loaded = persist::load_state(&*storage).await?;

        let scan = scan_streams(&*storage, &loaded.state, &cfg).await?;

        let compact_bytes = cfg.state_compact_bytes;
        let armed = !loaded.state.subs.is_empty();
        let (log_tx, log_rx) = mpsc::unbounded_channel();
        let (job_tx, job_rx) = mpsc::unbounded_channel();
        let timer = Arc::new(Notify::new());
        tokio::spawn(persist::run_writer(storage.clone(), loaded.epoch, log_rx));
        let engine = Arc::new(Subscriptions {
            storage,
            cfg,
            keys,
            client,
            inner: Mutex::new(Inner {
                run: 1,
                _stop: None,
                state: loaded.state,
                tails: scan.tails,
                busy: HashMap::new(),
                log: log_tx,
                jobs: job_tx,
                timer: timer.clone(),
                log_bytes: loaded.log_bytes,
                snapshot_bytes: loaded.snapshot_bytes,
                compact_bytes,
                feed: None,
            }),
            stopped: AtomicBool::new(false),
            armed: AtomicBool::new(armed),
            active: AtomicBool::new(true),
            cluster: None,
            seq_counter: Arc::new(AtomicU64::new(0)),
            runs: AtomicU64::new(1),
            lease_wake: Arc::new(Notify::new()),
            retired: watch::channel(None).0,
        });
        resume(&mut engine.lock(), &scan.missing, &scan.names, now_ms());
        tokio::spawn(run_jobs(Arc::downgrade(&engine), job_rx, None));
        tokio::spawn(run_timer(Arc::downgrade(&engine), 1, timer, None));
        Ok(engine)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Whether a storage hook has anything to do (see [`Subscriptions::armed`] and
    /// [`Subscriptions::active`]).
    fn hooks_idle(&self) -> bool {
        !self.active.load(Ordering::SeqCst) || !self.armed.load(Ordering::SeqCst) || self.stopped()
    }

    /// Whether this engine is the one deciding and delivering wakes and serving the
    /// subscription routes from its own state: always for a single-node store; in cluster mode
    /// while this node holds the `subscriptions` lease (the other nodes forward the routes to
    /// it).
    #[must_use]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// The cluster handle, in cluster mode.
    pub(crate) fn cluster(&self) -> Option<&Arc<dyn Cluster>> {
        self.cluster.as_ref()
    }

    /// Stops delivering: no new wakes, retries or lease expiries are acted on. State already
    /// queued is still written. For graceful shutdown and tests that reopen the same store.
    ///
    /// In cluster mode it also hands over: a background task flushes the state, deactivates
    /// this node and releases the `subscriptions` lease, so another node takes over at once;
    /// a [`flush`](Self::flush) after `shutdown` waits for that.
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::Release);
        if self.cluster.is_some() {
            self.lease_wake.notify_one();
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &SubscriptionsConfig {
        &self.cfg
    }

    /// The store the engine keeps its state in.
    #[must_use]
    pub fn storage(&self) -> &Arc<S> {
        &self.storage
    }

    /// The active signing key id.
    #[must_use]
    pub fn kid(&self) -> &str {
        self.keys.kid()
    }

    /// The JWK Set of the webhook signing keys.
    #[must_use]
    pub fn jwks(&self) -> Value {
        self.keys.jwks()
    }

    /// When the next webhook (or wake event) retry of subscription `id` is due (Unix ms), while
    /// one is scheduled: the `status: "failed"` period.
    #[must_use]
    pub fn next_attempt_at_ms(&self, id: &str) -> Option<u64> {
        self.lock()
            .state
            .subs
            .get(id)
            .and_then(|s| s.retry)
            .map(|r| r.next_attempt_at_ms)
    }

    /// Waits until every state change made so far has been handed to the store.
    ///
    /// In cluster mode, after [`shutdown`](Self::shutdown), waits until the hand-over is
    /// done (state flushed, lease released) and reports that flush. On a standby node it fails
    /// with [`Error::WriterStopped`]: there is no state to flush.
    pub async fn flush(&self) -> Result<()> {
        if self.cluster.is_some() && self.stopped() {
            let mut retired = self.retired.subscribe();
            let outcome = match retired.wait_for(Option::is_some).await {
                Ok(outcome) => outcome.clone(),
                Err(_) => Some(Err("the lease task ended".to_owned())),
            };
            return match outcome {
                Some(Ok(())) => Ok(()),
                Some(Err(reason)) => Err(Error::Storage {
                    op: "persisting subscription state",
                    source: ds_storage::Error::Backend {
                        op: "append",
                        source: reason.into(),
                    },
                }),
                None => Err(Error::WriterStopped),
            };
        }
        self.flush_run(None).await
    }

    /// [`flush`](Self::flush) of run `run` (any current run when `None`): fails at once when
    /// another run is current, so a handler never reports success for a change that went to
    /// a discarded state.
    async fn flush_run(&self, run: Option<u64>) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        {
            let inner = self.lock();
            if run.is_some_and(|r| r != inner.run) {
                return Err(Error::WriterStopped);
            }
            let _ = inner.log.send(LogOp::Flush(tx));
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(Error::Storage {
                op: "persisting subscription state",
                source: ds_storage::Error::Backend {
                    op: "append",
                    source: reason.into(),
                },
            }),
            Err(_) => Err(Error::WriterStopped),
        }
    }

    /// [`flush`](Self::flush) for handlers whose changes went to run `run`: on a failure,
    /// writes a fresh snapshot (which supersedes the lost events) and tries once more.
    async fn sync(&self, run: u64) -> Result<(), ApiError> {
        if self.flush_run(Some(run)).await.is_ok() {
            return Ok(());
        }
        {
            let mut inner = self.lock();
            if inner.run != run {
                tracing::warn!("this node stopped serving subscriptions during a request");
                return Err(ApiError::NotServing);
            }
            inner.compact();
        }
        self.flush_run(Some(run)).await.map_err(|e| {
            tracing::error!(error = %e, "subscription state could not be persisted");
            ApiError::Unavailable
        })
    }

    /// The lock, for a handler: refused while no activation is installed (a cluster-mode
    /// node between losing the lease and the router noticing).
    fn live(&self) -> Result<MutexGuard<'_, Inner>, ApiError> {
        let inner = self.lock();
        if inner.run == 0 {
            return Err(ApiError::NotServing);
        }
        Ok(inner)
    }

    // ----- Storage hooks (called by `Notifying` after a successful write) -----

    /// A stream was created (or an existing one confirmed).
    pub fn stream_created(&self, name: &StreamName, info: &StreamInfo) {
        if name.is_reserved() || self.hooks_idle() {
            return;
        }
        let path = name.as_str();
        let now = now_ms();
        let mut inner = self.lock();
        inner.tails.insert(path.to_owned(), info.next);
        inner.discover(path);
        inner.wake_linked(path, now);
    }

    /// Data was appended: `next` is the new tail.
    pub fn stream_appended(&self, name: &StreamName, next: Offset) {
        if name.is_reserved() || self.hooks_idle() {
            return;
        }
        let path = name.as_str();
        let now = now_ms();
        let mut inner = self.lock();
        match inner.tails.get_mut(path) {
            Some(tail) => *tail = (*tail).max(next),
            None => {
                inner.tails.insert(path.to_owned(), next);
            }
        }
        inner.discover(path);
        inner.wake_linked(path, now);
    }

    /// A stream was deleted: glob links go, explicit links stay at offset zero for a stream
    /// created again under the name.
    pub fn stream_deleted(&self, name: &StreamName) {
        if name.is_reserved() || self.hooks_idle() {
            return;
        }
        let mut inner = self.lock();
        forget_stream(&mut inner, name.as_str());
    }

    // ----- Operations behind the routes -----

    fn view(&self, inner: &Inner, sub: &Sub, root: &str) -> Value {
        let root = self.root(root);
        let streams: Vec<Value> = sub
            .links
            .iter()
            .map(|(path, link)| {
                json!({
                    "path": path,
                    "link_type": link.link_type(),
                    "acked_offset": link.acked.to_string(),
                })
            })
            .collect();
        let _ = inner;
        let webhook = sub.spec.webhook_url.as_ref().map(|url| {
            json!({
                "url": url,
                "signing": {
                    "alg": "ed25519",
                    "kid": self.keys.kid(),
                    "jwks_url": format!("{root}/__ds/jwks.json"),
                }
            })
        });
        json!({
            "id": sub.id,
            "subscription_id": sub.id,
            "type": sub.spec.kind.as_str(),
            "pattern": sub.spec.pattern,
            "streams": streams,
            "webhook": webhook,
            "wake_stream": sub.spec.wake_stream,
            "lease_ttl_ms": sub.spec.lease_ttl_ms,
            "created_at": rfc3339_ms(sub.created_at_ms),
            "status": if sub.retry.is_some() { "failed" } else { "active" },
            "description": sub.spec.description,
        })
    }

    /// The stream root URL: the configured public one, else the one from the request.
    pub(crate) fn root<'a>(&'a self, from_request: &'a str) -> &'a str {
        self.cfg
            .public_base_url
            .as_deref()
            .map_or(from_request, |u| u.trim_end_matches('/'))
    }

    /// `PUT /subscriptions/{id}`.
    pub(crate) async fn put(
        &self,
        id: &str,
        body: &[u8],
        root: &str,
    ) -> Result<PutOutcome, ApiError> {
        spec::validate_id(id).map_err(|e| ApiError::Invalid(e.0))?;
        let spec =
            spec::parse_spec(body, self.cfg.name_limits).map_err(|e| ApiError::Invalid(e.0))?;
        if let Some(url) = &spec.webhook_url {
            let parsed = ssrf::parse_webhook_url(url, self.cfg.allow_dev_webhooks)
                .map_err(|e| ApiError::UrlRejected(e.0))?;
            ssrf::check_resolved(&parsed, Duration::from_millis(self.cfg.dns_timeout_ms))
                .await
                .map_err(|e| ApiError::UrlRejected(e.0))?;
        }
        let hash = spec.hash();
        if let Some(outcome) = self.existing(id, &hash, root)? {
            return outcome;
        }
        // Before the backfill reads tails: from here on every write reaches the hooks (and, in
        // cluster mode, the change feed is followed).
        self.armed.store(true, Ordering::SeqCst);
        self.follow_changes();
        let tails = self.backfill(&spec).await?;
        let now = now_ms();
        let (view, run) = {
            let mut inner = self.live()?;
            if let Some(outcome) = self.existing_locked(&inner, id, &hash, root) {
                return outcome;
            }
            let mut links = BTreeMap::new();
            for (path, (tail, explicit)) in &tails {
                links.insert(
                    path.clone(),
                    Link {
                        explicit: *explicit,
                        glob: !*explicit
                            || spec.glob().is_some_and(|g| g.matches(path))
                                && spec.wake_stream.as_deref() != Some(path),
                        acked: Off(*tail),
                    },
                );
                let known = inner.tails.entry(path.clone()).or_insert(*tail);
                *known = (*known).max(*tail);
            }
            let generation = inner.state.tombstones.get(id).copied().unwrap_or(0);
            let sub = Sub {
                id: id.to_owned(),
                incarnation: random_u64(),
                spec,
                hash,
                created_at_ms: now,
                base_url: root.to_owned(),
                glob: None,
                links,
                generation,
                wake: None,
                retry: None,
            };
            inner.commit(Event::Put { sub: Box::new(sub) });
            // An append that raced the backfill is pending already.
            inner.maybe_wake(id, now);
            let sub = inner.state.subs.get(id).expect("just inserted");
            (self.view(&inner, sub, root), inner.run)
        };
        let view = if self.link_late_streams(id).await {
            let inner = self.lock();
            inner
                .state
                .subs
                .get(id)
                .map_or(view, |sub| self.view(&inner, sub, root))
        } else {
            view
        };
        self.sync(run).await?;
        Ok(PutOutcome::Created(view))
    }

    /// Links the streams a new subscription's backfill could not see: created after the
    /// listing but before the subscription was committed, so their hooks found nothing to link
    /// them to (and a stream with no further append would never wake anyone). Their hooks did
    /// record a tail, so they are the known streams matching the pattern but not linked; each
    /// is confirmed to exist (a stream that expired leaves a stale tail) and linked at offset
    /// zero, as a stream created after the subscription. Returns whether any was linked.
    async fn link_late_streams(&self, id: &str) -> bool {
        let candidates: Vec<String> = {
            let inner = self.lock();
            let Some(sub) = inner.state.subs.get(id) else {
                return false;
            };
            let Some(glob) = sub.glob.as_ref() else {
                return false;
            };
            inner
                .tails
                .keys()
                .filter(|path| {
                    !sub.links.contains_key(*path)
                        && sub.spec.wake_stream.as_deref() != Some(path.as_str())
                        && glob.matches(path)
                })
                .cloned()
                .collect()
        };
        let mut late = Vec::new();
        for path in candidates {
            let Ok(name) = spec::stream_name(&path, self.cfg.name_limits) else {
                continue;
            };
            if self.storage.head(&name).await.is_ok() {
                late.push(path);
            }
        }
        if late.is_empty() {
            return false;
        }
        let now = now_ms();
        let mut inner = self.lock();
        for path in &late {
            inner.discover(path);
            inner.wake_linked(path, now);
        }
        true
    }

    fn existing(
        &self,
        id: &str,
        hash: &str,
        root: &str,
    ) -> Result<Option<Result<PutOutcome, ApiError>>, ApiError> {
        let inner = self.live()?;
        Ok(self.existing_locked(&inner, id, hash, root))
    }

    fn existing_locked(
        &self,
        inner: &Inner,
        id: &str,
        hash: &str,
        root: &str,
    ) -> Option<Result<PutOutcome, ApiError>> {
        let sub = inner.state.subs.get(id)?;
        Some(if sub.hash == hash {
            Ok(PutOutcome::Existed(self.view(inner, sub, root)))
        } else {
            Err(ApiError::Exists)
        })
    }

    /// Current tails of the streams a new subscription links: explicit ones (zero when absent)
    /// and existing streams matching the pattern. Value: (tail, explicit).
    async fn backfill(&self, spec: &Spec) -> Result<BTreeMap<String, (Offset, bool)>, ApiError> {
        let mut out = BTreeMap::new();
        if let Some(glob) = spec.glob() {
            let listed = self.storage.list().await.map_err(|e| {
                tracing::error!(error = %e, "listing streams for a subscription backfill failed");
                ApiError::Unavailable
            })?;
            for info in listed {
                let path = info.name.as_str();
                if !info.name.is_reserved()
                    && glob.matches(path)
                    && spec.wake_stream.as_deref() != Some(path)
                {
                    out.insert(path.to_owned(), (info.next, false));
                }
            }
        }
        for (path, tail) in self.heads(&spec.streams).await? {
            out.insert(path, (tail, true));
        }
        Ok(out)
    }

    /// Current tails of `paths` (zero for streams that do not exist).
    async fn heads(&self, paths: &[String]) -> Result<Vec<(String, Offset)>, ApiError> {
        let mut out = Vec::with_capacity(paths.len());
        for path in paths {
            let name = spec::stream_name(path, self.cfg.name_limits).map_err(ApiError::Invalid)?;
            let tail = match self.storage.head(&name).await {
                Ok(info) => info.next,
                Err(ds_storage::Error::NotFound | ds_storage::Error::Gone) => Offset::ZERO,
                Err(e) => {
                    tracing::error!(error = %e, "reading a stream for a subscription failed");
                    return Err(ApiError::Unavailable);
                }
            };
            out.push((path.clone(), tail));
        }
        Ok(out)
    }

    /// `GET /subscriptions/{id}`.
    pub(crate) fn get(&self, id: &str, root: &str) -> Result<Value, ApiError> {
        let inner = self.live()?;
        let sub = inner.state.subs.get(id).ok_or(ApiError::NotFound)?;
        Ok(self.view(&inner, sub, root))
    }

    /// `DELETE /subscriptions/{id}`: idempotent.
    pub(crate) async fn delete(&self, id: &str) -> Result<(), ApiError> {
        let run = {
            let mut inner = self.live()?;
            if inner.state.subs.contains_key(id) {
                inner.commit(Event::Delete { id: id.to_owned() });
                inner.busy.remove(id);
            }
            inner.run
        };
        self.sync(run).await
    }

    /// `POST /subscriptions/{id}/streams`.
    pub(crate) async fn add_streams(&self, id: &str, body: &[u8]) -> Result<(), ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::Invalid(format!("body must be JSON: {e}")))?;
        let streams = value
            .get("streams")
            .ok_or_else(|| ApiError::Invalid("streams is required".to_owned()))?;
        let paths = spec::parse_stream_list(streams, self.cfg.name_limits)
            .map_err(|e| ApiError::Invalid(e.0))?;
        if !self.live()?.state.subs.contains_key(id) {
            return Err(ApiError::NotFound);
        }
        let heads = self.heads(&paths).await?;
        let run = {
            let mut inner = self.live()?;
            let sub = inner.state.subs.get(id).ok_or(ApiError::NotFound)?;
            let mut changes = Vec::new();
            for (path, tail) in heads {
                match sub.links.get(&path) {
                    Some(link) if link.explicit => {}
                    Some(link) => changes.push((
                        path,
                        Link {
                            explicit: true,
                            ..link.clone()
                        },
                    )),
                    None => changes.push((
                        path,
                        Link {
                            explicit: true,
                            glob: false,
                            acked: Off(tail),
                        },
                    )),
                }
            }
            for (path, link) in changes {
                let known = inner.tails.entry(path.clone()).or_insert(link.acked.0);
                *known = (*known).max(link.acked.0);
                inner.commit(Event::Link {
                    id: id.to_owned(),
                    path,
                    link: Some(link),
                });
            }
            inner.run
        };
        self.sync(run).await
    }

    /// `DELETE /subscriptions/{id}/streams/{path}`: removes only the explicit link.
    pub(crate) async fn remove_stream(&self, id: &str, raw_path: &str) -> Result<(), ApiError> {
        let path =
            spec::normalize_path(raw_path, self.cfg.name_limits).map_err(ApiError::Invalid)?;
        let run = {
            let mut inner = self.live()?;
            let sub = inner.state.subs.get(id).ok_or(ApiError::NotFound)?;
            let change = match sub.links.get(&path) {
                Some(link) if link.explicit && link.glob => Some(Some(Link {
                    explicit: false,
                    ..link.clone()
                })),
                Some(link) if link.explicit => Some(None),
                _ => None,
            };
            if let Some(link) = change {
                inner.commit(Event::Link {
                    id: id.to_owned(),
                    path,
                    link,
                });
            }
            inner.run
        };
        self.sync(run).await
    }

    /// Checks the bearer token and fencing of a callback, ack or release; returns the token's
    /// claims. `kind` is the subscription type the route serves.
    fn authorize(
        &self,
        inner: &Inner,
        id: &str,
        token: Option<&str>,
        req: &WakeRequest,
        kind: Kind,
        now: u64,
    ) -> Result<(), ApiError> {
        let claims = token
            .and_then(|t| self.keys.verify(t))
            .ok_or(ApiError::TokenInvalid)?;
        if claims.sub != id {
            return Err(ApiError::TokenInvalid);
        }
        if claims.exp < now / 1000 {
            return Err(ApiError::TokenExpired);
        }
        let sub = inner.state.subs.get(id).ok_or(ApiError::NotFound)?;
        if sub.spec.kind != kind {
            return Err(ApiError::WrongType(kind.as_str()));
        }
        if claims.inc != sub.incarnation {
            return Err(ApiError::TokenInvalid);
        }
        let wake = sub.wake.as_ref().ok_or(ApiError::Fenced)?;
        let lease_over = wake.lease_expires_at_ms.is_some_and(|t| t <= now);
        if claims.gen_ != sub.generation
            || req.generation != Some(sub.generation)
            || req.wake_id.as_deref() != Some(wake.id.as_str())
            || claims.wake != wake.id
            || lease_over
        {
            return Err(ApiError::Fenced);
        }
        Ok(())
    }

    /// Validates the acks of a request against the links; all or nothing.
    fn check_acks(
        &self,
        inner: &Inner,
        sub: &Sub,
        acks: &[AckRequest],
    ) -> Result<Vec<AckEntry>, ApiError> {
        let mut out = Vec::with_capacity(acks.len());
        for ack in acks {
            let raw = ack
                .stream
                .as_deref()
                .or(ack.path.as_deref())
                .ok_or_else(|| ApiError::Invalid("each ack needs a stream".to_owned()))?;
            let path = spec::normalize_path(raw, self.cfg.name_limits).map_err(|_| {
                ApiError::InvalidOffset(format!("{raw:?} is not a subscription stream"))
            })?;
            let link = sub.links.get(&path).ok_or_else(|| {
                ApiError::InvalidOffset(format!("{path:?} is not a subscription stream"))
            })?;
            let offset: Offset = ack.offset.parse().map_err(|_| {
                ApiError::InvalidOffset(format!("{:?} is not an offset", ack.offset))
            })?;
            if Off(offset) < link.acked {
                return Err(ApiError::InvalidOffset(format!(
                    "ack {offset} for {path:?} is before the acked offset {}",
                    link.acked
                )));
            }
            if Off(offset) > inner.tail(&path) {
                return Err(ApiError::InvalidOffset(format!(
                    "ack {offset} for {path:?} is past the stream's tail"
                )));
            }
            out.push(AckEntry {
                path,
                offset: Off(offset),
            });
        }
        Ok(out)
    }

    /// Callback (webhook) or ack (pull-wake): applies acks; `done` ends the wake, otherwise the
    /// lease is extended.
    async fn ack_common(
        &self,
        id: &str,
        token: Option<&str>,
        body: &[u8],
        kind: Kind,
    ) -> Result<Value, ApiError> {
        let req: WakeRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::Invalid(format!("body must be a JSON object: {e}")))?;
        let now = now_ms();
        let (next_wake, run) = {
            let mut inner = self.live()?;
            self.authorize(&inner, id, token, &req, kind, now)?;
            let sub = inner.state.subs.get(id).ok_or(ApiError::NotFound)?;
            let acks = self.check_acks(&inner, sub, &req.acks)?;
            let ttl = sub.spec.lease_ttl_ms;
            let generation = sub.generation;
            let wake = sub.wake.clone();
            if !acks.is_empty() {
                inner.commit(Event::Acks {
                    id: id.to_owned(),
                    acks,
                });
            }
            let next_wake = if req.done {
                inner.clear_wake(id);
                inner.maybe_wake(id, now)
            } else {
                let wake = wake.map(|w| Wake {
                    lease_expires_at_ms: Some(now + ttl),
                    ..w
                });
                inner.set_wake(id, generation, wake, None);
                inner.timer.notify_one();
                false
            };
            (next_wake, inner.run)
        };
        self.sync(run).await?;
        Ok(json!({ "ok": true, "next_wake": next_wake }))
    }

    /// `POST /subscriptions/{id}/callback`.
    pub(crate) async fn callback(
        &self,
        id: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        self.ack_common(id, token, body, Kind::Webhook).await
    }

    /// `POST /subscriptions/{id}/ack`.
    pub(crate) async fn ack(
        &self,
        id: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        self.ack_common(id, token, body, Kind::PullWake).await
    }

    /// `POST /subscriptions/{id}/claim`.
    pub(crate) async fn claim(&self, id: &str, body: &[u8]) -> Result<Value, ApiError> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::Invalid(format!("body must be JSON: {e}")))?;
        let worker = match value.get("worker") {
            Some(Value::String(w)) if !w.is_empty() && w.len() <= 256 => w.clone(),
            _ => {
                return Err(ApiError::Invalid(
                    "worker must be a non-empty string of at most 256 bytes".to_owned(),
                ));
            }
        };
        let now = now_ms();
        let (response, run) = {
            let mut inner = self.live()?;
            let sub = inner.state.subs.get(id).ok_or(ApiError::NotFound)?;
            if sub.spec.kind != Kind::PullWake {
                return Err(ApiError::WrongType(Kind::PullWake.as_str()));
            }
            if let Some(holder) = sub.wake.as_ref().and_then(|w| {
                w.holder
                    .as_ref()
                    .map(|h| (h, w.lease_expires_at_ms.is_some_and(|t| t > now)))
            }) {
                if let (holder, true) = holder {
                    return Err(ApiError::AlreadyClaimed {
                        holder: holder.clone(),
                        generation: sub.generation,
                    });
                }
                // The lease ran out and the timer has not noticed yet.
                inner.clear_wake(id);
            }
            let has_wake = inner.state.subs.get(id).is_some_and(|s| s.wake.is_some());
            if !has_wake && inner.issue_wake(id, now).is_none() {
                return Err(ApiError::NoPendingWork);
            }
            let sub = inner.state.subs.get(id).expect("checked above");
            let wake = sub.wake.clone().expect("a wake exists now");
            let (generation, ttl, incarnation) =
                (sub.generation, sub.spec.lease_ttl_ms, sub.incarnation);
            let streams = inner.link_infos(sub);
            let token = self.keys.mint(&TokenClaims {
                sub: id.to_owned(),
                inc: incarnation,
                gen_: generation,
                wake: wake.id.clone(),
                exp: now / 1000 + TOKEN_TTL_SECS,
            });
            let wake_id = wake.id.clone();
            inner.set_wake(
                id,
                generation,
                Some(Wake {
                    holder: Some(worker),
                    lease_expires_at_ms: Some(now + ttl),
                    ..wake
                }),
                None,
            );
            inner.timer.notify_one();
            let response = json!({
                "wake_id": wake_id,
                "generation": generation,
                "token": token,
                "streams": streams,
                "lease_ttl_ms": ttl,
            });
            (response, inner.run)
        };
        self.sync(run).await?;
        Ok(response)
    }

    /// `POST /subscriptions/{id}/release`: ends the wake without acking; pending work gets a new
    /// wake.
    pub(crate) async fn release(
        &self,
        id: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> Result<(), ApiError> {
        let req: WakeRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::Invalid(format!("body must be a JSON object: {e}")))?;
        let now = now_ms();
        let run = {
            let mut inner = self.live()?;
            self.authorize(&inner, id, token, &req, Kind::PullWake, now)?;
            inner.clear_wake(id);
            inner.maybe_wake(id, now);
            inner.run
        };
        self.sync(run).await
    }

    // ----- Background work -----

    async fn run_job(self: Arc<Self>, job: Job) {
        match job {
            Job::Deliver { run, id, wake_id } => self.deliver(run, &id, &wake_id).await,
            Job::WriteWake { run, id, wake_id } => self.write_wake(run, &id, &wake_id).await,
        }
    }

    /// One webhook delivery attempt of wake `wake_id`, queued by run `run`.
    async fn deliver(&self, run: u64, id: &str, wake_id: &str) {
        let now = now_ms();
        let prepared = {
            let mut inner = self.lock();
            if self.stopped() || inner.run != run || !inner.wake_is(id, wake_id) {
                inner.busy_done(id, wake_id);
                return;
            }
            let sub = inner.state.subs.get(id).expect("wake_is checked it");
            // The snapshot is what the receiver is told now: refresh it to the current tails
            // (in memory only: the snapshot is not persisted, see `Wake::snapshot`).
            let pending = inner.pending(sub);
            let streams = inner.link_infos(sub);
            let generation = sub.generation;
            let root = self.root(&sub.base_url).to_owned();
            let claims = TokenClaims {
                sub: id.to_owned(),
                inc: sub.incarnation,
                gen_: generation,
                wake: wake_id.to_owned(),
                exp: now / 1000 + TOKEN_TTL_SECS,
            };
            let url = sub.spec.webhook_url.clone().unwrap_or_default();
            if let Some(wake) = inner.state.subs.get_mut(id).and_then(|s| s.wake.as_mut()) {
                wake.snapshot = pending;
            }
            (url, root, generation, streams, claims)
        };
        let (url, root, generation, streams, claims) = prepared;
        let body = WakeBody {
            subscription_id: id,
            wake_id,
            generation,
            streams,
            callback_url: format!("{root}/__ds/subscriptions/{}/callback", encode_segment(id)),
            callback_token: self.keys.mint(&claims),
        };
        let body = Bytes::from(serde_json::to_vec(&body).expect("a wake body serialises to JSON"));
        let result = match ssrf::parse_webhook_url(&url, self.cfg.allow_dev_webhooks) {
            Ok(parsed) => {
                let signature = self.keys.webhook_signature(now / 1000, &body);
                self.client
                    .post(&parsed, body, &signature)
                    .await
                    .map_err(|e| e.0)
            }
            Err(e) => Err(e.0),
        };
        self.finish_delivery(run, id, wake_id, result);
    }

    /// Acts on the outcome of a delivery attempt: `2xx` with `{ "done": true }` acks the
    /// snapshot and ends the wake, another `2xx` starts the lease, anything else schedules a retry.
    fn finish_delivery(
        &self,
        run: u64,
        id: &str,
        wake_id: &str,
        result: std::result::Result<webhook::Response, String>,
    ) {
        let now = now_ms();
        let mut inner = self.lock();
        if inner.run != run {
            // Deactivated meanwhile: the next activation delivers the wake again.
            return;
        }
        inner.busy_done(id, wake_id);
        if self.stopped() || !inner.wake_is(id, wake_id) {
            // Deleted, fenced by a callback that raced the response, or shutting down.
            return;
        }
        match result {
            Ok(response) if (200..300).contains(&response.status) => {
                let done = serde_json::from_slice::<Value>(&response.body)
                    .ok()
                    .and_then(|v| v.get("done").and_then(Value::as_bool))
                    .unwrap_or(false);
                let sub = inner.state.subs.get(id).expect("wake_is checked it");
                let wake = sub.wake.clone().expect("wake_is checked it");
                let generation = sub.generation;
                if done {
                    let acks: Vec<AckEntry> = wake
                        .snapshot
                        .iter()
                        .filter(|(path, tail)| {
                            sub.links.get(*path).is_some_and(|l| **tail > l.acked)
                        })
                        .map(|(path, tail)| AckEntry {
                            path: path.clone(),
                            offset: *tail,
                        })
                        .collect();
                    if !acks.is_empty() {
                        inner.commit(Event::Acks {
                            id: id.to_owned(),
                            acks,
                        });
                    }
                    inner.clear_wake(id);
                    inner.maybe_wake(id, now);
                } else {
                    let ttl = sub.spec.lease_ttl_ms;
                    inner.set_wake(
                        id,
                        generation,
                        Some(Wake {
                            lease_expires_at_ms: Some(now + ttl),
                            ..wake
                        }),
                        None,
                    );
                    inner.timer.notify_one();
                }
            }
            Ok(response) => {
                tracing::warn!(
                    subscription = id,
                    status = response.status,
                    "webhook answered with a failure status; retrying"
                );
                inner.schedule_retry(id, now);
            }
            Err(reason) => {
                tracing::warn!(subscription = id, %reason, "webhook delivery failed; retrying");
                inner.schedule_retry(id, now);
            }
        }
    }

    /// Appends the wake event of `wake_id` to the wake stream, for run `run`.
    async fn write_wake(&self, run: u64, id: &str, wake_id: &str) {
        let now = now_ms();
        let prepared = {
            let mut inner = self.lock();
            if inner.run != run {
                return;
            }
            let claimed = inner
                .state
                .subs
                .get(id)
                .and_then(|s| s.wake.as_ref())
                .is_some_and(|w| w.holder.is_some());
            if self.stopped() || !inner.wake_is(id, wake_id) || claimed {
                inner.busy_done(id, wake_id);
                return;
            }
            let sub = inner.state.subs.get(id).expect("wake_is checked it");
            let stream = inner
                .pending(sub)
                .into_keys()
                .next()
                .or_else(|| sub.links.keys().next().cloned())
                .unwrap_or_default();
            let event = json!({
                "type": "wake",
                "subscription_id": id,
                "stream": stream,
                "generation": sub.generation,
                "ts": now,
            });
            (sub.spec.wake_stream.clone().unwrap_or_default(), event)
        };
        let (wake_stream, event) = prepared;
        let result = match spec::stream_name(&wake_stream, self.cfg.name_limits) {
            Ok(name) => self
                .append_event(&name, &event)
                .await
                .map(|next| (name, next)),
            Err(e) => Err(e),
        };
        let now = now_ms();
        let appended = {
            let mut inner = self.lock();
            if inner.run != run {
                return;
            }
            inner.busy_done(id, wake_id);
            if inner.wake_is(id, wake_id) {
                match result {
                    Ok(appended) => {
                        let sub = inner.state.subs.get(id).expect("wake_is checked it");
                        if sub.retry.is_some() {
                            let (generation, wake) = (sub.generation, sub.wake.clone());
                            inner.set_wake(id, generation, wake, None);
                        }
                        Some(appended)
                    }
                    Err(reason) => {
                        tracing::warn!(subscription = id, %reason, "writing a wake event failed; retrying");
                        inner.schedule_retry(id, now);
                        None
                    }
                }
            } else {
                None
            }
        };
        // The wake stream is an ordinary stream: other subscriptions may watch it.
        if let Some((name, Some(next))) = appended {
            self.stream_appended(&name, next);
        }
    }

    async fn append_event(
        &self,
        name: &StreamName,
        event: &Value,
    ) -> Result<Option<Offset>, String> {
        let info = self
            .storage
            .head(name)
            .await
            .map_err(|e| format!("wake stream {name}: {e}"))?;
        let req = AppendRequest {
            content_type: Some(info.content_type),
            body: Bytes::from(serde_json::to_vec(event).expect("a wake event serialises to JSON")),
            ..AppendRequest::default()
        };
        match self.storage.append(name, req).await {
            Ok(AppendOutcome::Appended { next, .. }) => Ok(Some(next)),
            Ok(_) => Ok(None),
            Err(e) => Err(format!("wake stream {name}: {e}")),
        }
    }

    /// Acts on due retries and expired leases of run `run`; returns how long to sleep.
    fn tick(&self, run: u64) -> Duration {
        if self.stopped() {
            return MAX_TICK;
        }
        let now = now_ms();
        let mut inner = self.lock();
        if inner.run != run {
            return MAX_TICK;
        }
        let mut next_due = now + u64::try_from(MAX_TICK.as_millis()).unwrap_or(1000);
        let ids: Vec<String> = inner.state.subs.keys().cloned().collect();
        for id in ids {
            if inner.busy.contains_key(&id) {
                continue;
            }
            let Some(sub) = inner.state.subs.get(&id) else {
                continue;
            };
            let kind = sub.spec.kind;
            match (&sub.wake, sub.retry) {
                (Some(wake), Some(retry)) => {
                    if retry.next_attempt_at_ms <= now {
                        let wake_id = wake.id.clone();
                        inner.queue_delivery(&id, wake_id, kind);
                    } else {
                        next_due = next_due.min(retry.next_attempt_at_ms);
                    }
                }
                (Some(wake), None) => {
                    if let Some(expires) = wake.lease_expires_at_ms {
                        if expires <= now {
                            inner.clear_wake(&id);
                            inner.maybe_wake(&id, now);
                        } else {
                            next_due = next_due.min(expires);
                        }
                    }
                }
                (None, Some(_)) => inner.clear_wake(&id),
                (None, None) => {}
            }
        }
        Duration::from_millis(next_due.saturating_sub(now).max(1))
    }
}

/// What [`scan_streams`] found on open.
struct Scan {
    /// Current tails of linked streams and of every stream when some subscription has a pattern.
    tails: HashMap<String, Offset>,
    /// Linked streams that no longer exist.
    missing: Vec<String>,
    /// Every application stream (listed only when some subscription has a pattern).
    names: Vec<String>,
}

async fn scan_streams<S: Storage>(
    storage: &S,
    state: &State,
    cfg: &SubscriptionsConfig,
) -> Result<Scan> {
    let mut scan = Scan {
        tails: HashMap::new(),
        missing: Vec::new(),
        names: Vec::new(),
    };
    if state.subs.values().any(|s| s.spec.pattern.is_some()) {
        let listed = storage
            .list()
            .await
            .map_err(Error::storage("listing streams"))?;
        for info in listed.into_iter().filter(|i| !i.name.is_reserved()) {
            scan.tails.insert(info.name.as_str().to_owned(), info.next);
            scan.names.push(info.name.as_str().to_owned());
        }
    }
    for path in state.subs.values().flat_map(|s| s.links.keys()) {
        if scan.tails.contains_key(path) || scan.missing.contains(path) {
            continue;
        }
        let Ok(name) = spec::stream_name(path, cfg.name_limits) else {
            continue;
        };
        match storage.head(&name).await {
            Ok(info) => {
                scan.tails.insert(path.clone(), info.next);
            }
            Err(ds_storage::Error::NotFound | ds_storage::Error::Gone) => {
                scan.missing.push(path.clone());
            }
            Err(e) => return Err(Error::storage("reading a linked stream")(e)),
        }
    }
    Ok(scan)
}

/// After a load: forgets streams that are gone, links streams created while changes were not
/// recorded, re-delivers unclaimed wakes (at least once) and wakes idle subscriptions with
/// pending work. Leases and retries are left to the timer.
fn resume(inner: &mut Inner, missing: &[String], names: &[String], now: u64) {
    for path in missing {
        forget_stream(inner, path);
    }
    for path in names {
        inner.discover(path);
    }
    let ids: Vec<String> = inner.state.subs.keys().cloned().collect();
    for id in ids {
        let Some(sub) = inner.state.subs.get(&id) else {
            continue;
        };
        match (&sub.wake, sub.retry) {
            (Some(wake), None) if wake.holder.is_none() && wake.lease_expires_at_ms.is_none() => {
                let (wake_id, kind) = (wake.id.clone(), sub.spec.kind);
                inner.queue_delivery(&id, wake_id, kind);
            }
            (Some(_), _) => {}
            (None, _) => {
                inner.maybe_wake(&id, now);
            }
        }
    }
}

/// Unlinks a stream that is gone: glob-only links are removed, explicit links go back to zero.
/// A wake snapshot naming it forgets it, so `{ "done": true }` never acks a new incarnation.
fn forget_stream(inner: &mut Inner, path: &str) {
    inner.tails.remove(path);
    let affected: Vec<(String, Option<Link>)> = inner
        .state
        .subs
        .values()
        .filter_map(|sub| {
            let link = sub.links.get(path)?;
            let new_link = link.explicit.then_some(Link {
                explicit: true,
                glob: false,
                acked: Off::ZERO,
            });
            Some((sub.id.clone(), new_link))
        })
        .collect();
    for (id, link) in affected {
        if let Some(wake) = inner.state.subs.get_mut(&id).and_then(|s| s.wake.as_mut()) {
            wake.snapshot.remove(path);
        }
        inner.commit(Event::Link {
            id,
            path: path.to_owned(),
            link,
        });
    }
}

/// Resolves when the run whose stop signal `stop` is ends (never when `None`).
async fn stopped_run(stop: &mut Option<watch::Receiver<()>>) {
    match stop {
        // Nothing is ever sent: `changed` returns only when the sender is dropped.
        Some(stop) => while stop.changed().await.is_ok() {},
        None => std::future::pending().await,
    }
}

async fn run_jobs<S: Storage>(
    engine: Weak<Subscriptions<S>>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    mut stop: Option<watch::Receiver<()>>,
) {
    loop {
        let job = tokio::select! {
            biased;
            () = stopped_run(&mut stop) => return,
            job = rx.recv() => job,
        };
        let Some(job) = job else {
            return;
        };
        let Some(engine) = engine.upgrade() else {
            return;
        };
        tokio::spawn(engine.run_job(job));
    }
}

async fn run_timer<S: Storage>(
    engine: Weak<Subscriptions<S>>,
    run: u64,
    notify: Arc<Notify>,
    mut stop: Option<watch::Receiver<()>>,
) {
    loop {
        let wait = match engine.upgrade() {
            Some(engine) => engine.tick(run),
            None => return,
        };
        tokio::select! {
            biased;
            () = stopped_run(&mut stop) => return,
            () = tokio::time::sleep(wait) => {}
            () = notify.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_sixty_with_twenty_percent_jitter() {
        let plain: Vec<u64> = (1..=9).map(|a| backoff_ms(a, 0.0)).collect();
        assert_eq!(
            plain,
            vec![
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000
            ]
        );
        assert_eq!(backoff_ms(1, -1.0), 800);
        assert_eq!(backoff_ms(1, 1.0), 1_200);
        assert_eq!(backoff_ms(100, 1.0), 72_000);
        assert_eq!(backoff_ms(100, -1.0), 48_000);
        for _ in 0..1000 {
            let d = backoff_ms(3, random_unit());
            assert!((3_200..=4_800).contains(&d), "{d}");
        }
    }

    #[test]
    fn created_at_has_millisecond_utc_format() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_778_284_800_123), "2026-05-09T00:00:00.123Z");
    }

    #[test]
    fn ids_encode_as_one_segment() {
        assert_eq!(encode_segment("sub-1"), "sub-1");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }
}
