//! Live reads across nodes: a registry of this node's watch channels, woken by `NOTIFY`
//! messages on one `LISTEN` connection, and by a re-check timer that reads the tails of every
//! watched stream, so a lost notification (or a reconnect of the listening connection) only
//! delays a wake-up.
//!
//! A commit that changes a stream's tail is followed by `pg_notify(channel, payload)` on the
//! same connection (see `stream::notify_committed` for why not inside the transaction), so
//! the data is visible to readers before anyone is woken. The payload is `"<stream id> <tail
//! seq> <tail byte> <flags>"` (flags: 1 closed, 2 gone): a wake-up, never data, and short
//! whatever the stream's name (PostgreSQL caps payloads at 8000 bytes). Stream ids are never
//! reused, so the registry maps an id to the one name it watches it under. The committing
//! node also publishes the new tail locally right after its commit, without waiting for its
//! own notification.
//!
//! The same connection listens on the schema's cluster channel (calls, their answers, and
//! the names of gone streams) and feeds both channels to the cluster hub (see `cluster`),
//! which does nothing with tails while nobody reads the change feed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ds_protocol::Offset;
use ds_storage::Tail;
use futures_util::future::poll_fn;
use tokio::sync::{Notify, watch};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::cluster::Hub;
use crate::schema::{from_db, to_db};

/// One watched incarnation of a stream on this node.
#[derive(Debug)]
struct Watch {
    id: u64,
    tx: watch::Sender<Tail>,
}

/// This node's watch channels by stream name, and the name of each watched incarnation id
/// (notifications carry only the id).
#[derive(Debug, Default)]
struct Watches {
    by_name: HashMap<String, Watch>,
    names: HashMap<u64, String>,
}

impl Watches {
    fn insert(&mut self, name: &str, w: Watch) {
        self.names.insert(w.id, name.to_owned());
        if let Some(old) = self.by_name.insert(name.to_owned(), w) {
            self.names.remove(&old.id);
        }
    }

    fn remove(&mut self, name: &str) {
        if let Some(old) = self.by_name.remove(name) {
            self.names.remove(&old.id);
        }
    }
}

/// This node's watch channels.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    watches: Mutex<Watches>,
    /// Set while the `LISTEN` connection is up.
    pub(crate) listening: AtomicBool,
    /// Wakes the re-check task early (after the listener reconnects).
    pub(crate) recheck_now: Notify,
}

/// Whether `new` moves a reader forward from `cur`. Tails only grow and a closed or gone
/// stream stays so; notifications may arrive out of order, and the older one must not win.
fn advances(cur: &Tail, new: &Tail) -> bool {
    if cur.gone {
        return false;
    }
    new.gone || new.next > cur.next || (new.closed && !cur.closed)
}

const GONE: Tail = Tail {
    next: Offset::ZERO,
    closed: true,
    gone: true,
};

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Watches> {
        self.watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A receiver for incarnation `id` of `name`, whose tail was `tail` when read.
    pub(crate) fn subscribe(&self, name: &str, id: u64, tail: Tail) -> watch::Receiver<Tail> {
        let mut map = self.lock();
        if let Some(w) = map.by_name.get(name) {
            if w.id == id {
                w.tx.send_if_modified(|cur| {
                    let go = advances(cur, &tail);
                    if go {
                        *cur = tail;
                    }
                    go
                });
                return w.tx.subscribe();
            }
            if w.id > id {
                // The caller read an incarnation that a newer one has replaced since: it is
                // gone, and the newer one's readers keep their channel.
                let (_, rx) = watch::channel(Tail {
                    next: tail.next,
                    ..GONE
                });
                return rx;
            }
            // The watched incarnation is gone: a newer one holds the name.
            let next = w.tx.borrow().next;
            w.tx.send_replace(Tail { next, ..GONE });
        }
        let (tx, rx) = watch::channel(tail);
        map.insert(name, Watch { id, tx });
        rx
    }

    /// Moves the readers of incarnation `id` of `name` to `tail`.
    pub(crate) fn publish(&self, name: &str, id: u64, tail: Tail) {
        let mut map = self.lock();
        Self::publish_locked(&mut map, name, id, tail);
    }

    /// Moves the readers of incarnation `id` (whatever its name) to `tail`; nothing if this
    /// node watches no such incarnation.
    pub(crate) fn publish_id(&self, id: u64, tail: Tail) {
        let mut map = self.lock();
        if let Some(name) = map.names.get(&id).cloned() {
            Self::publish_locked(&mut map, &name, id, tail);
        }
    }

    fn publish_locked(map: &mut Watches, name: &str, id: u64, tail: Tail) {
        let Some(w) = map.by_name.get(name) else {
            return;
        };
        if w.id > id {
            // A late message about an older incarnation.
            return;
        }
        // A newer incarnation means the watched one is gone.
        let tail = if w.id == id {
            tail
        } else {
            let next = w.tx.borrow().next;
            Tail { next, ..GONE }
        };
        w.tx.send_if_modified(|cur| {
            let go = advances(cur, &tail);
            if go {
                *cur = tail;
            }
            go
        });
        if tail.gone {
            map.remove(name);
        }
    }

    /// The incarnations some reader still watches; forgets the rest.
    fn watched(&self) -> Vec<(String, u64)> {
        let mut map = self.lock();
        let Watches { by_name, names } = &mut *map;
        by_name.retain(|_, w| {
            let keep = w.tx.receiver_count() > 0;
            if !keep {
                names.remove(&w.id);
            }
            keep
        });
        by_name.iter().map(|(n, w)| (n.clone(), w.id)).collect()
    }
}

/// The `NOTIFY` payload for a tail: `"<stream id> <tail seq> <tail byte> <flags>"`, at most
/// 67 bytes whatever the stream's name (listeners map the id to the name they watch).
pub(crate) fn payload(id: u64, tail: Tail) -> String {
    let flags = u8::from(tail.closed) | (u8::from(tail.gone) << 1);
    format!("{id} {} {} {flags}", tail.next.seq, tail.next.byte)
}

/// Parses a payload written by [`payload`].
pub(crate) fn parse_payload(s: &str) -> Option<(u64, Tail)> {
    let mut parts = s.split(' ');
    let id = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let byte = parts.next()?.parse().ok()?;
    let flags: u8 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((
        id,
        Tail {
            next: Offset::new(seq, byte),
            closed: flags & 1 != 0,
            gone: flags & 2 != 0,
        },
    ))
}

/// Keeps one `LISTEN` connection open (reconnecting with a short back-off) on the tail
/// channel `channel` and on the cluster channel of `hub`, and publishes every notification it
/// receives: tails to the registry (and the hub's change feed), cluster messages to the hub.
/// Runs until aborted.
pub(crate) async fn listen(
    registry: Arc<Registry>,
    hub: Arc<Hub>,
    config: tokio_postgres::Config,
    channel: String,
) {
    let mut backoff = Duration::from_millis(50);
    let mut listened_before = false;
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let listen_sql = format!("LISTEN \"{channel}\"; LISTEN \"{}\"", hub.channel);
                let pump_registry = Arc::clone(&registry);
                let pump_hub = Arc::clone(&hub);
                let tail_channel = channel.clone();
                // The connection must be polled for the LISTEN to complete, so the pump runs
                // beside it and the LISTEN only counts once it returned.
                let pump = tokio::spawn(async move {
                    loop {
                        match poll_fn(|cx| connection.poll_message(cx)).await {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                if n.channel() != tail_channel {
                                    pump_hub.on_message(n.payload());
                                } else if let Some((id, tail)) = parse_payload(n.payload()) {
                                    pump_registry.publish_id(id, tail);
                                    pump_hub.on_tail(id, tail);
                                }
                            }
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "LISTEN connection failed");
                                return;
                            }
                            None => return,
                        }
                    }
                });
                if let Err(e) = client.batch_execute(&listen_sql).await {
                    tracing::warn!(error = %e, "LISTEN failed");
                    pump.abort();
                } else {
                    registry.listening.store(true, Ordering::Relaxed);
                    backoff = Duration::from_millis(50);
                    // Anything committed while we were not listening is found by a re-check,
                    // and the change feed's receivers are told to re-read.
                    registry.recheck_now.notify_one();
                    if listened_before {
                        hub.on_reconnect();
                    }
                    listened_before = true;
                    // Hold the client so the connection stays open while the pump runs.
                    let _ = pump.await;
                    drop(client);
                    registry.listening.store(false, Ordering::Relaxed);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the LISTEN connection");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Every `interval` (or when woken), reads the tails of all watched streams and publishes
/// them: the safety net under `NOTIFY`. Runs until aborted.
pub(crate) async fn recheck(
    registry: Arc<Registry>,
    pool: deadpool_postgres::Pool,
    interval: Duration,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = registry.recheck_now.notified() => {}
        }
        let watched = registry.watched();
        if watched.is_empty() {
            continue;
        }
        if let Err(e) = recheck_once(&registry, &pool, &watched).await {
            tracing::debug!(error = %e, "live re-check failed; retrying on the next tick");
        }
    }
}

async fn recheck_once(
    registry: &Registry,
    pool: &deadpool_postgres::Pool,
    watched: &[(String, u64)],
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let client = pool.get().await?;
    let ids: Vec<i64> = watched.iter().map(|(_, id)| to_db(*id)).collect();
    let stmt = client
        .prepare_cached(
            "SELECT id, tail_seq, tail_byte, closed, soft_deleted FROM ds_streams \
             WHERE id = ANY($1)",
        )
        .await?;
    let rows = client.query(&stmt, &[&ids]).await?;
    let mut found: HashMap<u64, Tail> = HashMap::with_capacity(rows.len());
    for row in rows {
        let id = from_db(row.try_get(0)?);
        let next = Offset::new(from_db(row.try_get(1)?), from_db(row.try_get(2)?));
        let closed: bool = row.try_get(3)?;
        let soft_deleted: bool = row.try_get(4)?;
        found.insert(
            id,
            Tail {
                next,
                closed: closed || soft_deleted,
                gone: soft_deleted,
            },
        );
    }
    for (name, id) in watched {
        // A row that is missing was removed: its readers must stop.
        let tail = found.get(id).copied().unwrap_or(GONE);
        registry.publish(name, *id, tail);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(seq: u64, byte: u64, closed: bool, gone: bool) -> Tail {
        Tail {
            next: Offset::new(seq, byte),
            closed,
            gone,
        }
    }

    #[test]
    fn payload_round_trips_and_is_short() {
        let t = tail(3, 17, true, false);
        let p = payload(9, t);
        assert_eq!(parse_payload(&p), Some((9, t)));
        assert_eq!(parse_payload("x 1 2 0"), None);
        assert_eq!(parse_payload("1 2 3 0 name"), None);
        let max = tail(u64::MAX, u64::MAX, true, true);
        assert!(payload(u64::MAX, max).len() <= 67);
    }

    #[test]
    fn a_notification_by_id_reaches_the_watched_name() {
        let reg = Registry::default();
        let rx = reg.subscribe("s", 5, tail(0, 0, false, false));
        reg.publish_id(5, tail(2, 10, false, false));
        assert_eq!(*rx.borrow(), tail(2, 10, false, false));
        reg.publish_id(6, tail(9, 99, false, false));
        assert_eq!(
            *rx.borrow(),
            tail(2, 10, false, false),
            "another id is ignored"
        );
        // A newer incarnation replaces the id mapping; the old id no longer reaches anyone.
        let newer = reg.subscribe("s", 7, tail(0, 0, false, false));
        assert!(rx.borrow().gone);
        reg.publish_id(5, tail(5, 50, false, false));
        assert_eq!(*newer.borrow(), tail(0, 0, false, false));
        reg.publish_id(7, tail(1, 1, false, true));
        assert!(newer.borrow().gone);
        assert!(reg.lock().names.is_empty() && reg.lock().by_name.is_empty());
    }

    #[test]
    fn an_older_notification_never_moves_a_reader_back() {
        let reg = Registry::default();
        let rx = reg.subscribe("s", 5, tail(2, 10, false, false));
        reg.publish("s", 5, tail(1, 4, false, false));
        assert_eq!(*rx.borrow(), tail(2, 10, false, false));
        reg.publish("s", 5, tail(3, 12, true, false));
        assert_eq!(*rx.borrow(), tail(3, 12, true, false));
        reg.publish("s", 4, tail(9, 99, false, true));
        assert!(
            !rx.borrow().gone,
            "a message about an older incarnation is ignored"
        );
    }

    #[test]
    fn a_newer_incarnation_ends_the_old_one() {
        let reg = Registry::default();
        let old = reg.subscribe("s", 5, tail(2, 10, false, false));
        let new = reg.subscribe("s", 6, tail(0, 0, false, false));
        assert!(old.borrow().gone);
        assert!(!new.borrow().gone);
        reg.publish("s", 7, tail(0, 0, false, false));
        assert!(new.borrow().gone);
    }

    #[test]
    fn a_late_subscriber_to_a_replaced_incarnation_does_not_take_over() {
        let reg = Registry::default();
        let current = reg.subscribe("s", 8, tail(0, 0, false, false));
        let stale = reg.subscribe("s", 7, tail(4, 4, false, false));
        assert!(stale.borrow().gone);
        reg.publish("s", 8, tail(1, 3, false, false));
        assert_eq!(*current.borrow(), tail(1, 3, false, false));
    }
}
