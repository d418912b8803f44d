//! Cluster mode: exactly one engine among the servers sharing a store acts, chosen by the
//! `subscriptions` lease of [`Cluster`].
//!
//! Every node opens in standby ([`open_standby`]): no state, storage hooks idle, routes
//! forwarded. The lease task ([`run_lease`]) asks for the lease every fifth of
//! `cluster_lease_ms`. When it gets it, it *activates* the engine: [`persist::activate_state`]
//! fences the state log with the lease term and loads it (so a failover is like a restart:
//! wakes in flight and retries resume from the persisted state), the tails are scanned as on
//! open, and the run's tasks start (log writer, jobs, timer, change feed, forwarded requests).
//! It *deactivates* it when the lease is refused, when no renewal succeeded for three quarters
//! of the ttl (counted from when the last successful one was sent, so the store's expiry is
//! always later), when the writer finds the log fenced by a newer term, and on shutdown (which
//! also releases the lease so another node takes over at once).
//!
//! While active, the engine learns about writes made on every node from [`Cluster::changes`]
//! (its own local writes also reach it through the storage hooks; both paths are idempotent).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use ds_storage::{Call, Change, Cluster, Storage};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::{
    Inner, LEASE, Scan, Subscriptions, forget_stream, now_ms, resume, run_jobs, run_timer,
    scan_streams, stopped_run,
};
use crate::config::SubscriptionsConfig;
use crate::error::Result;
use crate::keys::KeyRing;
use crate::persist::{self, Fencing, WriterFence};
use crate::webhook;

/// How long a failed rescan waits before trying again.
const RESCAN_RETRY: Duration = Duration::from_secs(1);
/// Activations in a row that may fail before the node lets the lease go.
const MAX_FAILED_ACTIVATIONS: u32 = 3;
/// How often the active node re-reads the tails of every stream, while subscriptions exist:
/// the bound on the delay of a wake whose notification was lost (a node killed between its
/// commit and its `NOTIFY`).
const RECONCILE_EVERY: Duration = Duration::from_secs(30);

/// Builds a standby engine over a shared store and spawns its lease task.
pub(super) fn open_standby<S: Storage>(
    storage: Arc<S>,
    cfg: SubscriptionsConfig,
    keys: KeyRing,
    client: webhook::Client,
    cluster: Arc<dyn Cluster>,
) -> Arc<Subscriptions<S>> {
    let lease_wake = Arc::new(Notify::new());
    let engine = Arc::new(Subscriptions {
        storage,
        inner: Mutex::new(Inner::standby(cfg.state_compact_bytes)),
        cfg,
        keys,
        client,
        stopped: AtomicBool::new(false),
        armed: AtomicBool::new(false),
        active: AtomicBool::new(false),
        cluster: Some(cluster.clone()),
        seq_counter: Arc::new(AtomicU64::new(0)),
        runs: AtomicU64::new(0),
        lease_wake: lease_wake.clone(),
        retired: watch::channel(None).0,
    });
    tokio::spawn(run_lease(Arc::downgrade(&engine), cluster, lease_wake));
    engine
}

/// The activation the lease task installed.
struct Held {
    run: u64,
    term: u64,
    /// Until when it may act on its last successful renewal.
    until: Instant,
    /// Not renewed since it activated.
    fresh: bool,
}

impl Held {
    /// How long a renewal sent at `sent` may take: until `until`, except right after a long
    /// activation, when `until` may have passed and that one renewal still gets a quarter of
    /// the ttl (the state log is fenced against a successor meanwhile).
    fn renew_by(&self, sent: Instant, ttl: Duration) -> Instant {
        if self.fresh {
            self.until.max(sent + ttl / 4)
        } else {
            self.until
        }
    }
}

/// Keeps the lease and activates or deactivates the engine accordingly; on shutdown hands
/// over and ends. Holds the engine only while working, never while sleeping.
async fn run_lease<S: Storage>(
    weak: Weak<Subscriptions<S>>,
    cluster: Arc<dyn Cluster>,
    wake: Arc<Notify>,
) {
    let Some(ttl) = weak
        .upgrade()
        .map(|e| Duration::from_millis(e.cfg.cluster_lease_ms))
    else {
        return;
    };
    let period = ttl / 5;
    // The store lets the lease go `ttl` after it received the renewal, which is after it was
    // sent; stopping a quarter of the ttl earlier leaves room for clock drift and for work
    // already under way.
    let trusted_for = ttl.saturating_sub(ttl / 4);
    let mut held: Option<Held> = None;
    let mut failed_activations = 0_u32;
    loop {
        let Some(engine) = weak.upgrade() else {
            return;
        };
        if engine.stopped() {
            engine.retire(&*cluster, held.map(|h| h.run), ttl).await;
            return;
        }
        // The writer ends an activation by itself when it finds the log fenced.
        if held.as_ref().is_some_and(|h| engine.current_run() != h.run) {
            held = None;
        }
        let sent = Instant::now();
        let limit = held.as_ref().map_or(sent + ttl, |h| h.renew_by(sent, ttl));
        // Activation reads the whole state and scans tails, which may use up much of the
        // lease: renew at once afterwards instead of acting on the renewal sent before it.
        let mut renew_now = false;
        let answer = tokio::select! {
            biased;
            () = wake.notified() => continue,
            answer = tokio::time::timeout_at(limit, cluster.acquire(LEASE, ttl)) => answer,
        };
        match answer {
            Ok(Ok(Some(term))) => {
                let until = sent + trusted_for;
                match &mut held {
                    Some(h) if h.term == term => {
                        h.until = until;
                        h.fresh = false;
                    }
                    _ => {
                        if let Some(h) = held.take() {
                            // Lost and won again in between: the state may be stale.
                            engine.deactivate(h.run, "the lease changed hands meanwhile");
                        }
                        match engine.activate(&cluster, term).await {
                            Ok(Some(run)) => {
                                held = Some(Held {
                                    run,
                                    term,
                                    until,
                                    fresh: true,
                                });
                                failed_activations = 0;
                                renew_now = true;
                            }
                            Ok(None) => {}
                            Err(e) => {
                                failed_activations += 1;
                                tracing::warn!(term, error = %e, attempt = failed_activations, "could not take over the subscription state");
                                if failed_activations >= MAX_FAILED_ACTIVATIONS {
                                    failed_activations = 0;
                                    drop(engine);
                                    step_aside(&*cluster, &wake, ttl).await;
                                    continue;
                                }
                            }
                        }
                    }
                }
            }
            Ok(Ok(None)) => {
                if let Some(h) = held.take() {
                    engine.deactivate(h.run, "another node holds the lease");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "could not renew the subscriptions lease");
            }
            Err(_) => tracing::warn!("renewing the subscriptions lease timed out"),
        }
        if renew_now {
            continue;
        }
        let now = Instant::now();
        if let Some(h) = held.take_if(|h| now >= h.until) {
            engine.deactivate(h.run, "the lease could not be renewed in time");
        }
        let next = held
            .as_ref()
            .map_or(now + period, |h| (now + period).min(h.until));
        drop(engine);
        tokio::select! {
            () = tokio::time::sleep_until(next) => {}
            () = wake.notified() => {}
        }
    }
}

/// Lets the lease go after activations kept failing (holding it without serving blocks every
/// node), and waits a lease before trying again so another node can take it.
async fn step_aside(cluster: &dyn Cluster, wake: &Notify, ttl: Duration) {
    if let Err(e) = cluster.release(LEASE).await {
        tracing::warn!(error = %e, "could not release the subscriptions lease");
    }
    tokio::select! {
        () = tokio::time::sleep(ttl) => {}
        () = wake.notified() => {}
    }
}

impl<S: Storage> Subscriptions<S> {
    /// The current run (0 in standby).
    fn current_run(&self) -> u64 {
        self.lock().run
    }

    /// Takes over the state with lease term `term` and starts a run. Returns the run, or
    /// `None` when the engine was shut down meanwhile.
    async fn activate(
        self: &Arc<Self>,
        cluster: &Arc<dyn Cluster>,
        term: u64,
    ) -> Result<Option<u64>> {
        // Subscribe before reading anything, so no change between the scan and the start of
        // the run is missed.
        let changes = cluster.changes();
        let run = self.runs.fetch_add(1, Ordering::Relaxed) + 1;
        let fencing = Fencing::new(term, run, self.seq_counter.clone());
        let loaded = persist::activate_state(&*self.storage, &fencing).await?;
        let scan = scan_streams(&*self.storage, &loaded.state, &self.cfg).await?;
        let epoch = loaded.epoch;
        let (log_tx, log_rx) = mpsc::unbounded_channel();
        let (job_tx, job_rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = watch::channel(());
        let timer = Arc::new(Notify::new());
        let feed = {
            let mut inner = self.lock();
            if self.stopped() {
                return Ok(None);
            }
            *inner = Inner {
                run,
                _stop: Some(stop_tx),
                state: loaded.state,
                tails: scan.tails,
                busy: std::collections::HashMap::new(),
                log: log_tx,
                jobs: job_tx,
                timer: timer.clone(),
                log_bytes: loaded.log_bytes,
                snapshot_bytes: loaded.snapshot_bytes,
                compact_bytes: self.cfg.state_compact_bytes,
                feed: None,
            };
            if !inner.state.subs.is_empty() {
                self.armed.store(true, Ordering::SeqCst);
            }
            self.active.store(true, Ordering::SeqCst);
            resume(&mut inner, &scan.missing, &scan.names, now_ms());
            // Decided under the lock that `follow_changes` takes after arming, so the first
            // subscription either finds the run following the feed or hands it the receiver.
            if self.armed.load(Ordering::SeqCst) {
                Feed::Now(changes)
            } else {
                let (tx, rx) = oneshot::channel();
                inner.feed = Some(tx);
                Feed::Later(rx)
            }
        };
        let weak = Arc::downgrade(self);
        let fenced = weak.clone();
        let fence = WriterFence {
            fencing,
            on_fenced: Box::new(move || {
                if let Some(engine) = fenced.upgrade() {
                    engine.deactivate(run, "a node with a newer lease term fenced the state log");
                }
            }),
            stop: stop_rx.clone(),
        };
        tokio::spawn(persist::run_fenced_writer(
            self.storage.clone(),
            epoch,
            log_rx,
            Some(fence),
        ));
        tokio::spawn(run_jobs(weak.clone(), job_rx, Some(stop_rx.clone())));
        tokio::spawn(run_timer(weak.clone(), run, timer, Some(stop_rx.clone())));
        tokio::spawn(run_changes(weak.clone(), run, feed, stop_rx.clone()));
        tokio::spawn(run_serve(weak, cluster.serve(LEASE), stop_rx));
        tracing::info!(term, run, epoch, "this node now serves subscriptions");
        Ok(Some(run))
    }

    /// Cluster mode: makes the current run follow the change feed if it was waiting for the
    /// first subscription to do so. Synchronous, so the caller reads no tail before the feed
    /// is followed.
    pub(super) fn follow_changes(&self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let waiting = self.lock().feed.take();
        if let Some(tx) = waiting {
            let _ = tx.send(cluster.changes());
        }
    }

    /// Ends run `run` if it is current: no more deliveries, timers or state writes from it,
    /// and its state is dropped. Idempotent.
    pub(super) fn deactivate(&self, run: u64, why: &str) {
        let old = {
            let mut inner = self.lock();
            if run == 0 || inner.run != run {
                return;
            }
            self.active.store(false, Ordering::SeqCst);
            std::mem::replace(&mut *inner, Inner::standby(self.cfg.state_compact_bytes))
        };
        // Dropping the run's senders and stop signal ends its tasks.
        drop(old);
        tracing::warn!(run, reason = why, "this node stopped serving subscriptions");
    }

    /// Graceful hand-over on shutdown: flush run `run` (if still current), deactivate, release
    /// the lease, and report to [`Subscriptions::flush`].
    async fn retire(&self, cluster: &dyn Cluster, run: Option<u64>, ttl: Duration) {
        let run = run.filter(|&r| self.current_run() == r);
        let flushed = match run {
            Some(run) => self.flush_run(Some(run)).await.map_err(|e| e.to_string()),
            None => Ok(()),
        };
        if let Some(run) = run {
            self.deactivate(run, "shutting down");
        }
        match tokio::time::timeout(ttl, cluster.release(LEASE)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not release the subscriptions lease"),
            Err(_) => tracing::warn!("releasing the subscriptions lease timed out"),
        }
        self.retired.send_replace(Some(flushed));
    }

    /// After changes may have been missed: reads the tails again as open does, then links and
    /// wakes what is pending. Retries until it succeeds or run `run` ends.
    async fn rescan(&self, run: u64) {
        loop {
            let state = {
                let inner = self.lock();
                if inner.run != run {
                    return;
                }
                inner.state.clone()
            };
            match scan_streams(&*self.storage, &state, &self.cfg).await {
                Ok(scan) => {
                    let mut inner = self.lock();
                    if inner.run == run {
                        refresh(&mut inner, scan, now_ms());
                    }
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rescanning stream tails failed; retrying");
                    tokio::time::sleep(RESCAN_RETRY).await;
                }
            }
        }
    }
}

/// Applies a rescan: tails move forward only, vanished streams are forgotten, new ones linked,
/// and idle subscriptions with pending work woken.
fn refresh(inner: &mut Inner, scan: Scan, now: u64) {
    for (path, tail) in scan.tails {
        let known = inner.tails.entry(path).or_insert(tail);
        *known = (*known).max(tail);
    }
    for path in &scan.missing {
        forget_stream(inner, path);
    }
    for path in &scan.names {
        inner.discover(path);
    }
    let idle: Vec<String> = inner
        .state
        .subs
        .values()
        .filter(|s| s.wake.is_none())
        .map(|s| s.id.clone())
        .collect();
    for id in idle {
        inner.maybe_wake(&id, now);
    }
}

/// The change feed of a run: followed from the start when subscriptions exist, else handed
/// over by the first one ([`Subscriptions::follow_changes`]).
enum Feed {
    Now(broadcast::Receiver<Change>),
    Later(oneshot::Receiver<broadcast::Receiver<Change>>),
}

/// Feeds the stream changes of every node to run `run`.
async fn run_changes<S: Storage>(
    weak: Weak<Subscriptions<S>>,
    run: u64,
    feed: Feed,
    stop: watch::Receiver<()>,
) {
    let mut stop = Some(stop);
    let mut changes = match feed {
        Feed::Now(changes) => changes,
        Feed::Later(handed) => tokio::select! {
            biased;
            () = stopped_run(&mut stop) => return,
            handed = handed => match handed {
                Ok(changes) => changes,
                Err(_) => return,
            },
        },
    };
    let mut reconcile = tokio::time::interval_at(Instant::now() + RECONCILE_EVERY, RECONCILE_EVERY);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let change = tokio::select! {
            biased;
            () = stopped_run(&mut stop) => return,
            change = changes.recv() => change,
            _ = reconcile.tick() => Ok(Change::Resync),
        };
        let Some(engine) = weak.upgrade() else {
            return;
        };
        match change {
            Ok(Change::Tail { name, next }) => engine.stream_appended(&name, next),
            Ok(Change::Gone { name }) => {
                if engine.hooks_idle() {
                    continue;
                }
                // A deletion may be reported after the name was created again (each node
                // notifies after its own commit): forget the stream only if it is still gone.
                let now = tokio::select! {
                    biased;
                    () = stopped_run(&mut stop) => return,
                    head = engine.storage().head(&name) => head,
                };
                match now {
                    Ok(info) => engine.stream_appended(&name, info.next),
                    Err(_) => engine.stream_deleted(&name),
                }
            }
            Ok(Change::Resync) | Err(RecvError::Lagged(_)) => {
                if !engine.hooks_idle() {
                    tokio::select! {
                        biased;
                        () = stopped_run(&mut stop) => return,
                        () = engine.rescan(run) => {}
                    }
                }
            }
            Err(RecvError::Closed) => {
                engine.deactivate(run, "the cluster's change feed closed");
                return;
            }
        }
    }
}

/// Answers the requests other nodes forward to this one while run `run` lasts; when it ends,
/// answers what is still queued with `503` at once instead of leaving it to time out.
async fn run_serve<S: Storage>(
    weak: Weak<Subscriptions<S>>,
    mut calls: mpsc::Receiver<Call>,
    stop: watch::Receiver<()>,
) {
    let mut stop = Some(stop);
    loop {
        let call = tokio::select! {
            biased;
            () = stopped_run(&mut stop) => break,
            call = calls.recv() => call,
        };
        let Some(call) = call else {
            return;
        };
        let Some(engine) = weak.upgrade() else {
            return;
        };
        tokio::spawn(crate::forward::answer(engine, call));
    }
    // Also answers the calls the store claimed with room it reserved before the close:
    // `recv` ends only once those are delivered or given up.
    calls.close();
    let mut refusal = None;
    while let Some(call) = calls.recv().await {
        let answer = match &refusal {
            Some(answer) => Clone::clone(answer),
            None => refusal.insert(crate::forward::not_serving().await).clone(),
        };
        let _ = call.reply.send(answer);
    }
}
