//! Closed-loop load: N connections, each sending its next request as soon as the previous
//! answer is read, until a deadline. Each connection keeps its own histogram, merged at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Uri};
use tokio::sync::Barrier;

use crate::client::{Sender, Target, connect, connect_retry, header, request, send_drain};
use crate::stats::{Histogram, as_f64};
use crate::wire::query_value;

/// What a closed-loop run measured.
#[derive(Debug, Default)]
pub(crate) struct LoadResult {
    /// 2xx answers.
    pub(crate) ops: u64,
    /// Non-2xx answers and transport errors.
    pub(crate) errors: u64,
    /// Request payload bytes of the 2xx answers.
    pub(crate) req_bytes: u64,
    /// Response body bytes.
    pub(crate) resp_bytes: u64,
    /// Latency of the 2xx answers, ns.
    pub(crate) hist: Histogram,
    /// Seconds from the common start to the last connection's finish.
    pub(crate) elapsed: f64,
    /// The first error seen, for the table's remark column.
    pub(crate) first_error: Option<String>,
}

impl LoadResult {
    /// Operations per second.
    pub(crate) fn ops_per_sec(&self) -> f64 {
        as_f64(self.ops) / self.elapsed.max(1e-9)
    }

    /// Payload MB/s (10^6 bytes) of `bytes`.
    pub(crate) fn mb_per_sec(&self, bytes: u64) -> f64 {
        as_f64(bytes) / 1e6 / self.elapsed.max(1e-9)
    }

    fn absorb(&mut self, other: &Worker) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.req_bytes += other.req_bytes;
        self.resp_bytes += other.resp_bytes;
        self.hist.merge(&other.hist);
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

#[derive(Default)]
struct Worker {
    ops: u64,
    errors: u64,
    req_bytes: u64,
    resp_bytes: u64,
    hist: Histogram,
    first_error: Option<String>,
}

impl Worker {
    fn failed(&mut self, why: impl FnOnce() -> String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }
}

/// Makes connection `worker`'s request number `i` and says how many payload bytes it carries.
pub(crate) type MakeRequest =
    dyn Fn(usize, u64) -> Result<(Request<Full<Bytes>>, u64)> + Send + Sync;

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

async fn open_all(target: &Target, conns: usize) -> Result<Vec<Sender>> {
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        senders.push(connect_retry(target.addr, Duration::from_secs(10)).await?);
    }
    Ok(senders)
}

async fn reconnect(target: &Target, sender: &mut Sender) {
    match connect(target.addr).await {
        Ok(s) => *sender = s,
        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
    }
}

/// Runs `conns` connections for `secs`, all starting together.
pub(crate) async fn closed_loop(
    target: &Target,
    conns: usize,
    secs: f64,
    make: Arc<MakeRequest>,
) -> Result<LoadResult> {
    let senders = open_all(target, conns).await?;
    let barrier = Arc::new(Barrier::new(conns + 1));
    let mut tasks = Vec::with_capacity(conns);
    for (w, mut sender) in senders.into_iter().enumerate() {
        let barrier = Arc::clone(&barrier);
        let make = Arc::clone(&make);
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut me = Worker::default();
            barrier.wait().await;
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            let mut i = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= deadline {
                    break;
                }
                let (req, payload) = match make(w, i) {
                    Ok(r) => r,
                    Err(e) => {
                        me.failed(|| format!("{e:#}"));
                        break;
                    }
                };
                i += 1;
                match send_drain(&mut sender, req).await {
                    Ok((parts, body)) => {
                        me.resp_bytes += body;
                        if parts.status.is_success() {
                            me.ops += 1;
                            me.req_bytes += payload;
                            me.hist.record(ns(t0.elapsed()));
                        } else {
                            me.failed(|| format!("HTTP {}", parts.status));
                        }
                    }
                    Err(e) => {
                        me.failed(|| format!("{e:#}"));
                        reconnect(&target, &mut sender).await;
                    }
                }
            }
            (me, Instant::now())
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut out = LoadResult::default();
    let mut end = start;
    for t in tasks {
        let (w, finished) = t.await?;
        out.absorb(&w);
        end = end.max(finished);
    }
    out.elapsed = (end - start).as_secs_f64();
    Ok(out)
}

/// Reads stream `name` from offset -1 to the tail (following `Stream-Next-Offset` until
/// `Stream-Up-To-Date`), over and over, on `conns` connections for `secs`. A pass that does
/// not return `expected` bytes (when given) counts as an error.
pub(crate) async fn read_loop(
    target: &Target,
    name: &str,
    conns: usize,
    secs: f64,
    expected: Option<u64>,
) -> Result<LoadResult> {
    let senders = open_all(target, conns).await?;
    let barrier = Arc::new(Barrier::new(conns + 1));
    let mut tasks = Vec::with_capacity(conns);
    for mut sender in senders {
        let barrier = Arc::clone(&barrier);
        let target = target.clone();
        let name = name.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut me = Worker::default();
            barrier.wait().await;
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            let mut offset = "-1".to_owned();
            let mut pass_bytes = 0u64;
            let mut guard = 0u32;
            while Instant::now() < deadline {
                let uri: Uri = match target.uri(&name, &format!("offset={}", query_value(&offset)))
                {
                    Ok(u) => u,
                    Err(e) => {
                        me.failed(|| format!("{e:#}"));
                        break;
                    }
                };
                let t0 = Instant::now();
                let req = request(Method::GET, uri, &target, None, Bytes::new());
                match send_drain(&mut sender, req).await {
                    Ok((parts, body)) if parts.status.is_success() => {
                        me.ops += 1;
                        me.resp_bytes += body;
                        me.hist.record(ns(t0.elapsed()));
                        pass_bytes += body;
                        let up_to_date = header(&parts, "stream-up-to-date") == Some("true");
                        let next = header(&parts, "stream-next-offset").map(str::to_owned);
                        guard += 1;
                        match next {
                            Some(n) if !up_to_date && n != offset && guard < 100_000 => offset = n,
                            _ => {
                                if expected.is_some_and(|e| e != pass_bytes) || !up_to_date {
                                    me.failed(|| {
                                        format!(
                                            "a pass read {pass_bytes} bytes, expected {expected:?}"
                                        )
                                    });
                                }
                                "-1".clone_into(&mut offset);
                                pass_bytes = 0;
                                guard = 0;
                            }
                        }
                    }
                    Ok((parts, _)) => {
                        me.failed(|| format!("HTTP {}", parts.status));
                        "-1".clone_into(&mut offset);
                        pass_bytes = 0;
                    }
                    Err(e) => {
                        me.failed(|| format!("{e:#}"));
                        "-1".clone_into(&mut offset);
                        pass_bytes = 0;
                        reconnect(&target, &mut sender).await;
                    }
                }
            }
            (me, Instant::now())
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut out = LoadResult::default();
    let mut end = start;
    for t in tasks {
        let (w, finished) = t.await?;
        out.absorb(&w);
        end = end.max(finished);
    }
    out.elapsed = (end - start).as_secs_f64();
    Ok(out)
}

/// Reads stream `name` once from offset -1 to the tail (following `Stream-Next-Offset` until
/// `Stream-Up-To-Date`) on each of `conns` connections at the same time. A pass that does not
/// return exactly `expected` bytes counts as an error.
pub(crate) async fn read_once(
    target: &Target,
    name: &str,
    conns: usize,
    expected: u64,
) -> Result<LoadResult> {
    let senders = open_all(target, conns).await?;
    let barrier = Arc::new(Barrier::new(conns + 1));
    let mut tasks = Vec::with_capacity(conns);
    for mut sender in senders {
        let barrier = Arc::clone(&barrier);
        let target = target.clone();
        let name = name.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut me = Worker::default();
            barrier.wait().await;
            let mut offset = "-1".to_owned();
            loop {
                let uri = target.uri(&name, &format!("offset={}", query_value(&offset)))?;
                let t0 = Instant::now();
                let req = request(Method::GET, uri, &target, None, Bytes::new());
                let (parts, body) = match send_drain(&mut sender, req).await {
                    Ok(answer) => answer,
                    Err(e) => {
                        me.failed(|| format!("{e:#}"));
                        break;
                    }
                };
                if !parts.status.is_success() {
                    me.failed(|| format!("HTTP {}", parts.status));
                    break;
                }
                me.ops += 1;
                me.resp_bytes += body;
                me.hist.record(ns(t0.elapsed()));
                let up_to_date = header(&parts, "stream-up-to-date") == Some("true");
                match header(&parts, "stream-next-offset") {
                    Some(next) if !up_to_date && next != offset && me.resp_bytes < expected => {
                        next.clone_into(&mut offset);
                    }
                    _ => break,
                }
            }
            if me.errors == 0 && me.resp_bytes != expected {
                let got = me.resp_bytes;
                me.failed(|| format!("the read returned {got} bytes, expected {expected}"));
            }
            Ok::<_, anyhow::Error>((me, Instant::now()))
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut out = LoadResult::default();
    let mut end = start;
    for t in tasks {
        let (w, finished) = t.await??;
        out.absorb(&w);
        end = end.max(finished);
    }
    out.elapsed = (end - start).as_secs_f64();
    Ok(out)
}

/// Creates streams `name(0) .. name(count)` over `conns` connections, each with `body` as its
/// first record, stopping early at `deadline` or once errors pass 1% of `count` (plus 100):
/// a server that has hit a limit would only produce more of them. Returns (created, errors, first error).
pub(crate) async fn create_many(
    target: &Target,
    count: usize,
    conns: usize,
    content_type: &hyper::header::HeaderValue,
    body: &Bytes,
    name: fn(usize) -> String,
    deadline: Instant,
) -> Result<(u64, u64, Option<String>)> {
    let senders = open_all(target, conns.min(count.max(1))).await?;
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let max_failures = count as u64 / 100 + 100;
    let mut tasks = Vec::new();
    for mut sender in senders {
        let next = Arc::clone(&next);
        let failures = Arc::clone(&failures);
        let target = target.clone();
        let ct = content_type.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut me = Worker::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= count
                    || Instant::now() >= deadline
                    || failures.load(Ordering::Relaxed) > max_failures
                {
                    break;
                }
                let uri = match target.uri(&name(i), "") {
                    Ok(u) => u,
                    Err(e) => {
                        me.failed(|| format!("{e:#}"));
                        continue;
                    }
                };
                let req = request(Method::PUT, uri, &target, Some(&ct), body.clone());
                match send_drain(&mut sender, req).await {
                    Ok((parts, _)) if parts.status.is_success() => me.ops += 1,
                    Ok((parts, _)) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        me.failed(|| format!("create: HTTP {}", parts.status));
                    }
                    Err(e) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        me.failed(|| format!("create: {e:#}"));
                        reconnect(&target, &mut sender).await;
                    }
                }
            }
            me
        }));
    }
    let mut out = LoadResult::default();
    for t in tasks {
        out.absorb(&t.await?);
    }
    Ok((out.ops, out.errors, out.first_error))
}

/// Appends `total` bytes to stream `name` in `chunk`-byte requests on one connection.
pub(crate) async fn fill(
    target: &Target,
    name: &str,
    content_type: &hyper::header::HeaderValue,
    total: u64,
    chunk: usize,
) -> Result<()> {
    let mut sender = connect_retry(target.addr, Duration::from_secs(10)).await?;
    let body = Bytes::from(
        (0..chunk)
            .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
            .collect::<Vec<u8>>(),
    );
    let uri = target.uri(name, "")?;
    let mut written = 0u64;
    while written < total {
        let n = (total - written).min(chunk as u64) as usize;
        let req = request(
            Method::POST,
            uri.clone(),
            target,
            Some(content_type),
            body.slice(..n),
        );
        let (parts, _) = send_drain(&mut sender, req).await?;
        if !parts.status.is_success() {
            bail!("filling {name}: append answered {}", parts.status);
        }
        written += n as u64;
    }
    Ok(())
}
