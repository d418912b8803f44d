//! Live fan-out: many SSE subscribers or long-poll readers on one stream, one paced producer.
//! Each message carries its send time; a reader's latency is arrival minus send, measured on
//! the bench's one clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::Method;
use hyper::header::HeaderValue;
use tokio::sync::{Notify, Semaphore, watch};

use crate::client::{Target, connect_retry, header, request, send, send_collect, send_drain};
use crate::stats::Histogram;
use crate::wire::{
    Event, SseParser, control_next_offset, encode_message, parse_messages, query_value,
};

/// Live-read mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `live=sse`.
    Sse,
    /// `live=long-poll`.
    LongPoll,
}

/// Sizes of one fan-out run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    /// Readers.
    pub(crate) readers: usize,
    /// Messages the producer sends.
    pub(crate) messages: u32,
    /// Messages per second.
    pub(crate) rate: f64,
    /// Wait after the last message for stragglers.
    pub(crate) grace: Duration,
    /// Wait after all readers connected, before measuring RSS and producing.
    pub(crate) settle: Duration,
}

/// What a fan-out run measured (before RSS, which the caller reads).
#[derive(Debug, Default)]
pub(crate) struct FanoutResult {
    /// Delivery latency, ns.
    pub(crate) hist: Histogram,
    /// Messages some reader never received, summed over readers.
    pub(crate) missing: u64,
    /// Reader and producer errors.
    pub(crate) errors: u64,
    /// Deliveries counted.
    pub(crate) delivered: u64,
}

/// Counters shared by the readers.
struct Shared {
    ready: AtomicUsize,
    done: AtomicUsize,
    changed: Notify,
}

struct ReaderResult {
    latencies_us: Vec<u64>,
    received: u32,
    errors: u64,
}

/// Connects `plan.readers` readers to `name`, calls `on_ready` once they are all connected
/// (the caller reads RSS there), produces, waits, and gathers the figures.
pub(crate) async fn run(
    target: &Target,
    name: &str,
    mode: Mode,
    plan: Plan,
    on_ready: impl FnOnce(),
) -> Result<FanoutResult> {
    let epoch = Instant::now();
    let shared = Arc::new(Shared {
        ready: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        changed: Notify::new(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // Bounded connect concurrency keeps the server's accept backlog from overflowing.
    let gate = Arc::new(Semaphore::new(64));
    let mut tasks = Vec::with_capacity(plan.readers);
    for _ in 0..plan.readers {
        let target = target.clone();
        let name = name.to_owned();
        let shared = Arc::clone(&shared);
        let stop = stop_rx.clone();
        let gate = Arc::clone(&gate);
        tasks.push(tokio::spawn(async move {
            match mode {
                Mode::Sse => {
                    sse_reader(target, name, plan.messages, epoch, shared, stop, gate).await
                }
                Mode::LongPoll => {
                    long_poll_reader(target, name, plan.messages, epoch, shared, stop, gate).await
                }
            }
        }));
    }
    let mut out = FanoutResult::default();
    let connect_deadline = Instant::now() + Duration::from_secs(60);
    wait_for(
        &shared,
        |s| s.ready.load(Ordering::Acquire) >= plan.readers,
        connect_deadline,
    )
    .await;
    tokio::time::sleep(plan.settle).await;
    on_ready();

    out.errors += produce(target, name, plan, epoch).await;

    let grace_deadline = Instant::now() + plan.grace;
    wait_for(
        &shared,
        |s| s.done.load(Ordering::Acquire) >= plan.readers,
        grace_deadline,
    )
    .await;
    let _ = stop_tx.send(true);
    for t in tasks {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(10), t).await {
            for &l in &r.latencies_us {
                out.hist.record(l.saturating_mul(1000));
            }
            out.delivered += u64::from(r.received);
            out.missing += u64::from(plan.messages - r.received);
            out.errors += r.errors;
        } else {
            out.missing += u64::from(plan.messages);
            out.errors += 1;
        }
    }
    Ok(out)
}

async fn wait_for(shared: &Shared, cond: impl Fn(&Shared) -> bool, deadline: Instant) {
    while !cond(shared) {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let notified = shared.changed.notified();
        if cond(shared) {
            return;
        }
        let _ =
            tokio::time::timeout((deadline - now).min(Duration::from_millis(50)), notified).await;
    }
}

/// Sends the messages at the planned rate on one connection; returns the error count.
async fn produce(target: &Target, name: &str, plan: Plan, epoch: Instant) -> u64 {
    let Ok(mut sender) = connect_retry(target.addr, Duration::from_secs(10)).await else {
        return u64::from(plan.messages);
    };
    let Ok(uri) = target.uri(name, "") else {
        return u64::from(plan.messages);
    };
    let ct = HeaderValue::from_static("text/plain");
    let start = tokio::time::Instant::now();
    let mut errors = 0;
    for seq in 0..plan.messages {
        let at = start + Duration::from_secs_f64(f64::from(seq) / plan.rate);
        tokio::time::sleep_until(at).await;
        let sent_us = micros_since(epoch);
        let body = Bytes::from(encode_message(seq, sent_us));
        let req = request(Method::POST, uri.clone(), target, Some(&ct), body);
        match send_drain(&mut sender, req).await {
            Ok((parts, _)) if parts.status.is_success() => {}
            Ok(_) => errors += 1,
            Err(_) => {
                errors += 1;
                if let Ok(s) = connect_retry(target.addr, Duration::from_secs(2)).await {
                    sender = s;
                }
            }
        }
    }
    errors
}

fn micros_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Per-reader bookkeeping of which messages arrived and when.
struct Tally {
    seen: Vec<bool>,
    received: u32,
    latencies_us: Vec<u64>,
}

impl Tally {
    fn new(messages: u32) -> Tally {
        Tally {
            seen: vec![false; messages as usize],
            received: 0,
            latencies_us: Vec::with_capacity(messages as usize),
        }
    }

    fn absorb(&mut self, text: &[u8], now_us: u64) {
        parse_messages(text, |seq, sent_us| {
            if let Some(slot) = self.seen.get_mut(seq as usize)
                && !*slot
            {
                *slot = true;
                self.received += 1;
                self.latencies_us.push(now_us.saturating_sub(sent_us));
            }
        });
    }

    fn complete(&self) -> bool {
        self.received as usize == self.seen.len()
    }

    fn finish(self, errors: u64) -> ReaderResult {
        ReaderResult {
            latencies_us: self.latencies_us,
            received: self.received,
            errors,
        }
    }
}

fn mark(shared: &Shared, counter: &AtomicUsize) {
    counter.fetch_add(1, Ordering::AcqRel);
    shared.changed.notify_waiters();
}

/// An SSE subscriber from offset -1; reconnects from the last control offset if the server
/// closes the stream.
async fn sse_reader(
    target: Target,
    name: String,
    messages: u32,
    epoch: Instant,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    gate: Arc<Semaphore>,
) -> ReaderResult {
    let mut tally = Tally::new(messages);
    let mut errors = 0u64;
    let mut offset = "-1".to_owned();
    let mut announced = false;
    let mut finished = false;
    let mut attempts = 0;
    'connection: while attempts < 20 {
        attempts += 1;
        let permit = gate.acquire().await;
        let Ok(mut sender) = connect_retry(target.addr, Duration::from_secs(20)).await else {
            errors += 1;
            break;
        };
        let Ok(uri) = target.uri(&name, &format!("offset={}&live=sse", query_value(&offset)))
        else {
            errors += 1;
            break;
        };
        let req = request(Method::GET, uri, &target, None, Bytes::new());
        let resp = tokio::select! {
            r = send(&mut sender, req) => r,
            _ = stop.changed() => break,
        };
        drop(permit);
        let resp = match resp {
            Ok(r) if r.status().is_success() => r,
            _ => {
                errors += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !announced {
            announced = true;
            mark(&shared, &shared.ready);
        }
        let mut parser = SseParser::default();
        let mut body = resp.into_body();
        loop {
            let frame = tokio::select! {
                biased;
                _ = stop.changed() => break 'connection,
                f = body.frame() => f,
            };
            match frame {
                Some(Ok(frame)) => {
                    let Some(data) = frame.data_ref() else {
                        continue;
                    };
                    let now_us = micros_since(epoch);
                    parser.feed(data, |event, payload| match event {
                        Event::Data => tally.absorb(payload, now_us),
                        Event::Control => {
                            if let Some(o) = control_next_offset(payload) {
                                o.clone_into(&mut offset);
                            }
                        }
                        Event::Other => {}
                    });
                    if !finished && tally.complete() {
                        finished = true;
                        mark(&shared, &shared.done);
                    }
                }
                Some(Err(_)) => {
                    errors += 1;
                    continue 'connection;
                }
                // The server ended the response (reconnect interval): resume from the offset.
                None => continue 'connection,
            }
        }
    }
    tally.finish(errors)
}

/// A long-poll reader: one catch-up read from offset -1, then long-polls from each
/// `Stream-Next-Offset`, echoing the cursor.
async fn long_poll_reader(
    target: Target,
    name: String,
    messages: u32,
    epoch: Instant,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    gate: Arc<Semaphore>,
) -> ReaderResult {
    let mut tally = Tally::new(messages);
    let mut errors = 0u64;
    let permit = gate.acquire().await;
    let Ok(mut sender) = connect_retry(target.addr, Duration::from_secs(20)).await else {
        return tally.finish(1);
    };
    let mut buf = Vec::new();
    let mut offset = "-1".to_owned();
    let mut cursor: Option<String> = None;
    // Catch-up first: it answers at once, so it tells us this reader is in place.
    let mut caught_up = false;
    for _ in 0..20 {
        let Ok(uri) = target.uri(&name, "offset=-1") else {
            break;
        };
        buf.clear();
        match send_collect(
            &mut sender,
            request(Method::GET, uri, &target, None, Bytes::new()),
            &mut buf,
        )
        .await
        {
            Ok(parts) if parts.status.is_success() => {
                tally.absorb(&buf, micros_since(epoch));
                if let Some(n) = header(&parts, "stream-next-offset") {
                    n.clone_into(&mut offset);
                }
                caught_up = true;
                break;
            }
            _ => {
                errors += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Ok(s) = connect_retry(target.addr, Duration::from_secs(5)).await {
                    sender = s;
                }
            }
        }
    }
    drop(permit);
    if !caught_up {
        return tally.finish(errors);
    }
    mark(&shared, &shared.ready);
    let mut finished = false;
    loop {
        if !finished && tally.complete() {
            finished = true;
            mark(&shared, &shared.done);
        }
        if finished {
            let _ = stop.changed().await;
            break;
        }
        let mut query = format!("offset={}&live=long-poll", query_value(&offset));
        if let Some(c) = &cursor {
            query.push_str("&cursor=");
            query.push_str(&query_value(c));
        }
        let Ok(uri) = target.uri(&name, &query) else {
            errors += 1;
            break;
        };
        buf.clear();
        let req = request(Method::GET, uri, &target, None, Bytes::new());
        let res = tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = send_collect(&mut sender, req, &mut buf) => r,
        };
        match res {
            Ok(parts) if parts.status.is_success() => {
                if !buf.is_empty() {
                    tally.absorb(&buf, micros_since(epoch));
                }
                if let Some(n) = header(&parts, "stream-next-offset") {
                    n.clone_into(&mut offset);
                }
                cursor = header(&parts, "stream-cursor").map(str::to_owned);
            }
            _ => {
                errors += 1;
                if errors > 100 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                if let Ok(s) = connect_retry(target.addr, Duration::from_secs(5)).await {
                    sender = s;
                }
            }
        }
    }
    tally.finish(errors)
}
