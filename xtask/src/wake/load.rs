//! The client side of a `wake` run: producers appending at a steady pace,
//! and the pull-wake worker that follows the wake stream, claims and acks.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::analysis::{Append, Claim, Off};
use super::{SUBSCRIPTION, WAKE_STREAM, WORKER, stream_path};
use crate::http::{self, Client, Response};
use crate::json::{self, Value};

/// Pause before retrying a request that found no server.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// How long the worker keeps retrying an ack that got no answer.
const ACK_RETRY_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a producer catches up after a stall (a restart) before it
/// resets its schedule instead of bursting.
const MAX_BACKLOG: u32 = 10;

/// State shared by the coordinating thread, the producers and the worker.
pub(crate) struct Shared {
    /// Port of each server node (one, or two sharing a PostgreSQL schema).
    ports: Vec<AtomicU16>,
    /// Tells the producers to stop.
    pub(crate) stop_load: AtomicBool,
    /// Holds the producers (around a kill, until everything acknowledged
    /// before it has been woken).
    pub(crate) paused: AtomicBool,
    /// Tells the worker to stop.
    pub(crate) stop_worker: AtomicBool,
    /// Per stream: the highest offset an acknowledged append reached.
    pub(crate) appended: Mutex<Vec<Option<Off>>>,
    /// Per stream: the highest tail a claim reported pending.
    pub(crate) covered: Mutex<Vec<Option<Off>>>,
    /// Appends acknowledged so far.
    pub(crate) appends: AtomicU64,
    /// Successful claims so far.
    pub(crate) claims: AtomicU64,
    /// The offset the worker reads the wake stream from (for failure reports).
    pub(crate) wake_offset: Mutex<String>,
}

impl Shared {
    /// Fresh state for `streams` streams and server nodes on `ports`.
    pub(crate) fn new(ports: &[u16], streams: usize) -> Self {
        Self {
            ports: ports.iter().map(|&p| AtomicU16::new(p)).collect(),
            stop_load: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            stop_worker: AtomicBool::new(false),
            appended: Mutex::new(vec![None; streams]),
            covered: Mutex::new(vec![None; streams]),
            appends: AtomicU64::new(0),
            claims: AtomicU64::new(0),
            wake_offset: Mutex::new("-1".to_owned()),
        }
    }

    /// The current port of node `node` (modulo the number of nodes).
    pub(crate) fn port(&self, node: usize) -> u16 {
        self.ports[node % self.ports.len()].load(Ordering::SeqCst)
    }

    /// Records that node `node` now listens on `port` (after a restart).
    pub(crate) fn set_port(&self, node: usize, port: u16) {
        self.ports[node].store(port, Ordering::SeqCst);
    }

    /// Streams with an acknowledged append that no claim has reported yet.
    pub(crate) fn uncovered(&self) -> usize {
        let appended = lock(&self.appended);
        let covered = lock(&self.covered);
        appended
            .iter()
            .zip(covered.iter())
            .filter(|(a, c)| a.is_some() && *c < *a)
            .count()
    }
}

/// Locks `m`, shrugging off poisoning (a panicking thread is reported by its join).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A small deterministic generator (SplitMix64) for the schedule.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `low..=high`.
    pub(crate) fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }
}

/// What a producer reports.
#[derive(Debug, Default)]
pub(crate) struct ProducerLog {
    /// Its acknowledged appends.
    pub(crate) appends: Vec<Append>,
    /// Unexpected responses.
    pub(crate) violations: Vec<String>,
}

/// One producer: every `interval`, one append to a random stream, until
/// told to stop; none while paused. Appends that get no answer are not
/// retried (they are not acknowledged, so nothing is owed for them). It
/// sends to node `node` and moves on to the next node after an append that
/// got no answer.
pub(crate) fn produce(
    shared: &Shared,
    streams: usize,
    seed: u64,
    interval: Duration,
    mut node: usize,
) -> ProducerLog {
    let mut rng = Rng::new(seed);
    let mut client = Client::new(shared.port(node));
    let mut log = ProducerLog::default();
    let mut due = Instant::now();
    while !shared.stop_load.load(Ordering::SeqCst) {
        if shared.paused.load(Ordering::SeqCst) {
            thread::sleep(RETRY_PAUSE);
            due = Instant::now();
            continue;
        }
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        } else if now - due > interval * MAX_BACKLOG {
            due = now;
        }
        due += interval;
        let stream = rng.range(0, streams as u64 - 1) as usize;
        let port = shared.port(node);
        if !append(shared, &mut client, port, stream, &mut rng, &mut log) {
            node += 1;
            thread::sleep(RETRY_PAUSE);
        }
    }
    log
}

/// Appends one line to `stream` through the node on `port`; an acknowledged
/// append goes into `log` and raises `shared.appended`. Returns whether it
/// was acknowledged.
pub(crate) fn append(
    shared: &Shared,
    client: &mut Client,
    port: u16,
    stream: usize,
    rng: &mut Rng,
    log: &mut ProducerLog,
) -> bool {
    let body = format!("append {} to {stream}\n", rng.next_u64());
    let response = client.request(
        port,
        "POST",
        &stream_path(stream),
        &[("Content-Type", "text/plain")],
        body.as_bytes(),
    );
    let Ok(response) = response else {
        return false;
    };
    match response.status {
        200 | 204 => {
            let acked_at = Instant::now();
            let acked_unix_ms = unix_ms();
            let Some(next) = response.header("stream-next-offset").and_then(Off::parse) else {
                log.violations.push(format!(
                    "append to stream {stream} answered {} without a valid Stream-Next-Offset",
                    response.status
                ));
                return false;
            };
            log.appends.push(Append {
                stream,
                next,
                acked_at,
                acked_unix_ms,
            });
            let mut appended = lock(&shared.appended);
            appended[stream] = appended[stream].max(Some(next));
            drop(appended);
            shared.appends.fetch_add(1, Ordering::Relaxed);
            true
        }
        503 => false,
        _ => {
            log.violations.push(format!(
                "append to stream {stream} answered {}",
                response.summary()
            ));
            false
        }
    }
}

/// The wall clock in Unix milliseconds.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the worker reports.
#[derive(Debug, Default)]
pub(crate) struct WorkerLog {
    /// Its successful claims, in order.
    pub(crate) claims: Vec<Claim>,
    /// Wake events read from the wake stream.
    pub(crate) wake_events: u64,
    /// Per stream: the highest offset an ack the server confirmed carried.
    pub(crate) confirmed: Vec<Option<Off>>,
    /// Claims answered `ALREADY_CLAIMED` (a claim whose answer a kill
    /// swallowed holds the lease until it expires).
    pub(crate) already_claimed: u64,
    /// Acks answered `FENCED` (their lease ran out across a restart).
    pub(crate) fenced: u64,
    /// Cursors reported behind a confirmed ack, and unexpected responses.
    pub(crate) violations: Vec<String>,
}

/// The worker: follows the wake stream with long-polls; for every batch of
/// wake events it claims the subscription, acks the tail of every pending
/// stream with `done: true`, and goes back to waiting. It never claims
/// without a wake event, so a lost wake shows as appends never covered.
pub(crate) struct Worker<'a> {
    shared: &'a Shared,
    client: Client,
    /// Stream path to index.
    index: HashMap<String, usize>,
    log: WorkerLog,
    /// The node it talks to (modulo the number of nodes): the next one after
    /// every claim round and after a request that got no answer, so with two
    /// nodes its reads, claims and acks reach the node that delivers wakes
    /// and the one that forwards to it.
    node: usize,
}

impl<'a> Worker<'a> {
    /// A worker for the streams named by `paths` (index order).
    pub(crate) fn new(shared: &'a Shared, paths: &[String]) -> Self {
        Self {
            shared,
            client: Client::new(shared.port(0)),
            node: 0,
            index: paths
                .iter()
                .enumerate()
                .map(|(i, p)| (p.clone(), i))
                .collect(),
            log: WorkerLog {
                confirmed: vec![None; paths.len()],
                ..WorkerLog::default()
            },
        }
    }

    fn stopped(&self) -> bool {
        self.shared.stop_worker.load(Ordering::SeqCst)
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<Response> {
        let port = self.shared.port(self.node);
        let result = self.client.request(port, method, path, headers, body);
        if result.is_err() {
            // That node is down (killed and restarting): use the next one.
            self.node += 1;
        }
        result
    }

    /// Runs until told to stop; returns what it saw.
    pub(crate) fn run(mut self) -> WorkerLog {
        let wake_path = format!("{}/{WAKE_STREAM}", super::STREAM_BASE_PATH);
        let mut offset = "-1".to_owned();
        while !self.stopped() {
            lock(&self.shared.wake_offset).clone_from(&offset);
            let url = if offset == "-1" {
                format!("{wake_path}?offset=-1")
            } else {
                format!(
                    "{wake_path}?offset={}&live=long-poll",
                    http::encode_query_value(&offset)
                )
            };
            let Ok(response) = self.request("GET", &url, &[], b"") else {
                thread::sleep(RETRY_PAUSE);
                continue;
            };
            let next = response.header("stream-next-offset").map(str::to_owned);
            match (response.status, next) {
                (200, Some(next)) => {
                    offset = next;
                    let read_at = Instant::now();
                    match read_wake_events(&response.body) {
                        Ok((0, _)) => {}
                        Ok((n, newest_ts)) => {
                            self.log.wake_events += n;
                            self.claim_and_ack((read_at, newest_ts));
                            self.node += 1;
                        }
                        Err(e) => self
                            .log
                            .violations
                            .push(format!("the wake stream holds something else: {e:#}")),
                    }
                }
                (204, Some(next)) => offset = next,
                (503, _) => thread::sleep(RETRY_PAUSE),
                _ => {
                    self.log.violations.push(format!(
                        "reading the wake stream at {offset} answered {}",
                        response.summary()
                    ));
                    thread::sleep(RETRY_PAUSE * 10);
                }
            }
        }
        self.log
    }

    /// Claims, and on success acks everything the claim reported pending;
    /// `events` says when the wake events that prompted it were read, and
    /// their newest `ts`.
    fn claim_and_ack(&mut self, events: (Instant, u64)) {
        let claim_path = format!(
            "{}/__ds/subscriptions/{SUBSCRIPTION}/claim",
            super::STREAM_BASE_PATH
        );
        let body = format!(r#"{{"worker":"{WORKER}"}}"#);
        let response = loop {
            if self.stopped() {
                return;
            }
            match self.request(
                "POST",
                &claim_path,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            ) {
                Ok(r) if r.status != 503 => break r,
                // No answer: the claim may have landed; if so the retry
                // sees ALREADY_CLAIMED and the lease has to run out.
                _ => thread::sleep(RETRY_PAUSE),
            }
        };
        let at = Instant::now();
        match (response.status, error_code(&response).as_deref()) {
            (200, _) => {}
            (409, Some("ALREADY_CLAIMED")) => {
                self.log.already_claimed += 1;
                return;
            }
            (409, Some("NO_PENDING_WORK")) => return,
            _ => {
                self.log
                    .violations
                    .push(format!("claim answered {}", response.summary()));
                return;
            }
        }
        let parsed = std::str::from_utf8(&response.body)
            .map_err(anyhow::Error::from)
            .and_then(json::parse);
        let claim = match parsed.and_then(|v| self.read_claim(&v)) {
            Ok(claim) => claim,
            Err(e) => {
                self.log
                    .violations
                    .push(format!("claim answered 200 with an unreadable body: {e:#}"));
                return;
            }
        };
        self.shared.claims.fetch_add(1, Ordering::Relaxed);
        let ClaimBody {
            wake_id,
            generation,
            token,
            pending,
        } = claim;
        {
            let mut covered = lock(&self.shared.covered);
            for &(stream, tail) in &pending {
                covered[stream] = covered[stream].max(Some(tail));
            }
        }
        self.log.claims.push(Claim {
            at,
            pending: pending.clone(),
            events: Some(events),
        });
        self.ack(&wake_id, &generation, &token, &pending);
    }

    /// Checks a claim body and extracts what the ack needs; reports any
    /// cursor behind an ack the server confirmed.
    fn read_claim(&mut self, v: &Value) -> anyhow::Result<ClaimBody> {
        let text = |key: &str| {
            v.get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("no {key}"))
        };
        let wake_id = text("wake_id")?;
        let token = text("token")?;
        let generation = match v.get("generation") {
            Some(Value::Number(n)) if *n >= 0.0 && n.fract() == 0.0 => format!("{n:.0}"),
            _ => anyhow::bail!("no generation"),
        };
        let streams = v
            .get("streams")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow::anyhow!("no streams"))?;
        let mut pending = Vec::new();
        for s in streams {
            let path = s.get("path").and_then(Value::as_str).unwrap_or_default();
            let Some(&stream) = self.index.get(path) else {
                anyhow::bail!("unknown stream {path:?}");
            };
            let offset = |key: &str| {
                s.get(key)
                    .and_then(Value::as_str)
                    .and_then(Off::parse)
                    .ok_or_else(|| anyhow::anyhow!("stream {path}: no valid {key}"))
            };
            let acked = offset("acked_offset")?;
            let tail = offset("tail_offset")?;
            if let Some(confirmed) = self.log.confirmed[stream]
                && acked < confirmed
            {
                self.log.violations.push(format!(
                    "claim reports {path} acked at {acked}, behind the ack to {confirmed} the server confirmed"
                ));
            }
            if matches!(s.get("has_pending"), Some(Value::Bool(true))) {
                pending.push((stream, tail));
            }
        }
        Ok(ClaimBody {
            wake_id,
            generation,
            token,
            pending,
        })
    }

    /// Acks `pending` with `done: true`, retrying through restarts; a
    /// confirmed ack raises the floor the cursors are checked against.
    fn ack(&mut self, wake_id: &str, generation: &str, token: &str, pending: &[(usize, Off)]) {
        let ack_path = format!(
            "{}/__ds/subscriptions/{SUBSCRIPTION}/ack",
            super::STREAM_BASE_PATH
        );
        let acks: Vec<String> = pending
            .iter()
            .map(|&(stream, tail)| {
                format!(
                    r#"{{"stream":"{}","offset":"{tail}"}}"#,
                    super::stream_name(stream)
                )
            })
            .collect();
        let body = format!(
            r#"{{"wake_id":"{wake_id}","generation":{generation},"acks":[{}],"done":true}}"#,
            acks.join(",")
        );
        let bearer = format!("Bearer {token}");
        let give_up = Instant::now() + ACK_RETRY_TIMEOUT;
        loop {
            if self.stopped() || Instant::now() >= give_up {
                return;
            }
            let response = self.request(
                "POST",
                &ack_path,
                &[
                    ("Content-Type", "application/json"),
                    ("Authorization", &bearer),
                ],
                body.as_bytes(),
            );
            match response {
                Ok(r) if r.status == 200 => {
                    for &(stream, tail) in pending {
                        let c = &mut self.log.confirmed[stream];
                        *c = (*c).max(Some(tail));
                    }
                    return;
                }
                Ok(r) if r.status == 409 && error_code(&r).as_deref() == Some("FENCED") => {
                    // The lease ran out (a restart took longer than it), or
                    // an earlier attempt whose answer was lost did land.
                    self.log.fenced += 1;
                    return;
                }
                Ok(r) if r.status == 503 => thread::sleep(RETRY_PAUSE),
                Ok(r) => {
                    self.log
                        .violations
                        .push(format!("ack answered {}", r.summary()));
                    return;
                }
                Err(_) => thread::sleep(RETRY_PAUSE),
            }
        }
    }
}

/// The parts of a claim response the worker uses.
struct ClaimBody {
    wake_id: String,
    /// As sent back in the ack (a JSON integer).
    generation: String,
    token: String,
    /// Streams reported pending and their tails.
    pending: Vec<(usize, Off)>,
}

/// `error.code` of a subscription error body.
fn error_code(response: &Response) -> Option<String> {
    let text = std::str::from_utf8(&response.body).ok()?;
    let value = json::parse(text).ok()?;
    value.get("error")?.get("code")?.as_str().map(str::to_owned)
}

/// Counts the wake events in a JSON-mode read of the wake stream (a JSON
/// array of messages) and finds their newest `ts`.
fn read_wake_events(body: &[u8]) -> anyhow::Result<(u64, u64)> {
    if body.is_empty() {
        return Ok((0, 0));
    }
    let value = json::parse(std::str::from_utf8(body)?)?;
    let items = value
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("not a JSON array"))?;
    let mut newest = 0;
    for item in items {
        if item.get("type").and_then(Value::as_str) != Some("wake") {
            anyhow::bail!("a message that is not a wake event");
        }
        if item.get("subscription_id").and_then(Value::as_str) != Some(SUBSCRIPTION) {
            anyhow::bail!("a wake event of another subscription");
        }
        match item.get("ts") {
            #[allow(clippy::cast_sign_loss)] // checked: a non-negative whole number
            Some(Value::Number(ts)) if *ts >= 0.0 && ts.fract() == 0.0 => {
                newest = newest.max(*ts as u64);
            }
            _ => anyhow::bail!("a wake event without a valid ts"),
        }
    }
    Ok((items.len() as u64, newest))
}

#[cfg(test)]
mod tests {
    use super::{Rng, read_wake_events};

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for _ in 0..100 {
            let x = a.range(3, 9);
            assert_eq!(x, b.range(3, 9));
            assert!((3..=9).contains(&x));
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
    }

    #[test]
    fn wake_events_are_counted_and_checked() {
        assert_eq!(read_wake_events(b"").expect("empty"), (0, 0));
        assert_eq!(read_wake_events(b"[]").expect("empty array"), (0, 0));
        let two = br#"[{"type":"wake","subscription_id":"wake-check","stream":"load/s0001","generation":1,"ts":1},
                       {"type":"wake","subscription_id":"wake-check","stream":"load/s0002","generation":2,"ts":2}]"#;
        assert_eq!(read_wake_events(two).expect("two"), (2, 2));
        assert!(read_wake_events(br#"[{"type":"other"}]"#).is_err());
        assert!(read_wake_events(br#"[{"type":"wake","subscription_id":"x","ts":1}]"#).is_err());
        assert!(read_wake_events(br#"[{"type":"wake","subscription_id":"wake-check"}]"#).is_err());
        assert!(read_wake_events(b"{").is_err());
    }
}
