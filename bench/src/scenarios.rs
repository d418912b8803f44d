//! The eight scenarios: setup, the measured phase, and the figures each one reports.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use hyper::Method;
use hyper::header::HeaderValue;

use crate::args::{Backend, Scenario};
use crate::client::{Target, one_shot, request};
use crate::fanout::{self, Mode, Plan};
use crate::load::{LoadResult, closed_loop, create_many, fill, read_loop, read_once};
use crate::report::{Metrics, Outcome};
use crate::server::{Kind, Running, ServerSpec, StartError, start};
use crate::stats::{Histogram, as_f64};

const OCTET: HeaderValue = HeaderValue::from_static("application/octet-stream");

/// How big each scenario is.
#[derive(Debug, Clone)]
pub(crate) struct Sizes {
    /// Seconds of each timed phase.
    pub(crate) secs: f64,
    /// append-1: connections and message size.
    pub(crate) append1_conns: usize,
    /// append-1 payload bytes.
    pub(crate) append1_bytes: usize,
    /// append-many: connections.
    pub(crate) many_conns: usize,
    /// append-many: streams.
    pub(crate) many_streams: usize,
    /// append-many payload bytes.
    pub(crate) many_bytes: usize,
    /// read: connections.
    pub(crate) read_conns: usize,
    /// read: stream size in bytes.
    pub(crate) read_total: u64,
    /// read: append size used to fill the stream.
    pub(crate) read_chunk: usize,
    /// big-read: stream size in bytes.
    pub(crate) big_read_total: u64,
    /// big-read: append size used to fill the stream.
    pub(crate) big_read_chunk: usize,
    /// big-read: connections, each reading the whole stream once.
    pub(crate) big_read_conns: usize,
    /// sse-fanout: messages, rate (subscriber counts come from the variant).
    pub(crate) sse_messages: u32,
    /// sse-fanout messages per second.
    pub(crate) sse_rate: f64,
    /// longpoll-fanout: readers.
    pub(crate) lp_readers: usize,
    /// longpoll-fanout messages.
    pub(crate) lp_messages: u32,
    /// longpoll-fanout messages per second.
    pub(crate) lp_rate: f64,
    /// Fan-out: wait for stragglers after the last message.
    pub(crate) grace: Duration,
    /// Fan-out: pause after connecting before RSS and producing.
    pub(crate) settle: Duration,
    /// create: connections.
    pub(crate) create_conns: usize,
    /// idle-streams: streams.
    pub(crate) idle_streams: usize,
    /// idle-streams: connections used to create them.
    pub(crate) idle_conns: usize,
    /// idle-streams: most time spent creating (a server that fsyncs each create is slow).
    pub(crate) idle_cap: Duration,
}

impl Sizes {
    /// The sizes; big-read's stream is `big_read_mib` MiB.
    pub(crate) fn full(secs: f64, readers: usize, big_read_mib: u64) -> Sizes {
        Sizes {
            secs,
            append1_conns: 32,
            append1_bytes: 100,
            many_conns: 64,
            many_streams: 1000,
            many_bytes: 256,
            read_conns: 4,
            read_total: 64 << 20,
            read_chunk: 256 << 10,
            big_read_total: big_read_mib << 20,
            big_read_chunk: 1 << 20,
            big_read_conns: 1,
            sse_messages: 200,
            sse_rate: 50.0,
            lp_readers: readers,
            lp_messages: 100,
            lp_rate: 20.0,
            grace: Duration::from_secs(5),
            settle: Duration::from_millis(300),
            create_conns: 32,
            idle_streams: 100_000,
            idle_conns: 32,
            idle_cap: Duration::from_secs(120),
        }
    }

    /// Tiny sizes: every scenario in about a second, to prove the bench still works.
    pub(crate) fn smoke() -> Sizes {
        Sizes {
            secs: 1.0,
            append1_conns: 4,
            append1_bytes: 100,
            many_conns: 8,
            many_streams: 50,
            many_bytes: 256,
            read_conns: 2,
            read_total: 1 << 20,
            read_chunk: 64 << 10,
            big_read_total: 8 << 20,
            big_read_chunk: 1 << 20,
            big_read_conns: 1,
            sse_messages: 10,
            sse_rate: 20.0,
            lp_readers: 20,
            lp_messages: 10,
            lp_rate: 20.0,
            grace: Duration::from_secs(2),
            settle: Duration::from_millis(50),
            create_conns: 4,
            idle_streams: 1000,
            idle_conns: 8,
            idle_cap: Duration::from_secs(20),
        }
    }
}

fn ms(ns: Option<u64>) -> Option<f64> {
    ns.map(|v| as_f64(v) / 1e6)
}

fn latency(m: &mut Metrics, h: &Histogram) {
    m.p50_ms = ms(h.quantile(0.50));
    m.p99_ms = ms(h.quantile(0.99));
    m.max_ms = ms(h.max());
}

/// Figures of a closed-loop run; `payload` picks request or response bytes for MB/s.
pub(crate) fn load_metrics(r: &LoadResult, payload: u64) -> Metrics {
    let mut m = Metrics {
        ops_per_sec: Some(r.ops_per_sec()),
        mb_per_sec: Some(r.mb_per_sec(payload)),
        errors: r.errors,
        note: r.first_error.as_ref().map(|e| format!("first error: {e}")),
        ..Metrics::default()
    };
    latency(&mut m, &r.hist);
    m
}

async fn create(target: &Target, name: &str, content_type: &HeaderValue) -> Result<()> {
    let path = target.uri(name, "")?.to_string();
    let (parts, _) = one_shot(target, Method::PUT, &path, Some(content_type), Bytes::new()).await?;
    if !parts.status.is_success() {
        bail!("create {name}: {}", parts.status);
    }
    Ok(())
}

fn filler(n: usize) -> Bytes {
    Bytes::from(vec![b'x'; n])
}

/// Runs `scenario` once on a fresh server and data dir under `run_dir`.
pub(crate) async fn run_one(
    scenario: Scenario,
    subscribers: usize,
    spec: &ServerSpec,
    backend: Backend,
    run_dir: &Path,
    sizes: &Sizes,
) -> Outcome {
    let data = run_dir.join("data");
    let log = run_dir.join("server.log");
    let server = match start(spec, backend, &data, &log, None).await {
        Ok(s) => s,
        Err(StartError::NotBuilt(m)) => return Outcome::NotBuilt(m),
        Err(StartError::Failed(e)) => return Outcome::Failed(format!("{e:#}")),
    };
    let result = match scenario {
        Scenario::Append1 => append_1(&server, sizes).await,
        Scenario::AppendMany => append_many(&server, sizes).await,
        Scenario::Read => read(&server, sizes).await,
        Scenario::BigRead => big_read(&server, sizes).await,
        Scenario::SseFanout => {
            let plan = Plan {
                readers: subscribers,
                messages: sizes.sse_messages,
                rate: sizes.sse_rate,
                grace: sizes.grace,
                settle: sizes.settle,
            };
            fan_out(&server, Mode::Sse, plan).await
        }
        Scenario::LongpollFanout => {
            let plan = Plan {
                readers: sizes.lp_readers,
                messages: sizes.lp_messages,
                rate: sizes.lp_rate,
                grace: sizes.grace,
                settle: sizes.settle,
            };
            fan_out(&server, Mode::LongPoll, plan).await
        }
        Scenario::Create => create_streams(&server, sizes).await,
        Scenario::IdleStreams => {
            return match idle_streams(server, spec, backend, &data, &log, sizes).await {
                Ok(m) => Outcome::Done(m),
                Err(e) => Outcome::Failed(format!("{e:#}")),
            };
        }
    };
    server.stop().await;
    match result {
        Ok(m) => Outcome::Done(m),
        Err(e) => Outcome::Failed(format!("{e:#}")),
    }
}

async fn append_1(server: &Running, sizes: &Sizes) -> Result<Metrics> {
    let target = server.target.clone();
    create(&target, "bench-append-1", &OCTET).await?;
    let uri = target.uri("bench-append-1", "")?;
    let body = filler(sizes.append1_bytes);
    let n = body.len() as u64;
    let t = target.clone();
    let cpu = server.cpu();
    let r = closed_loop(
        &target,
        sizes.append1_conns,
        sizes.secs,
        Arc::new(move |_, _| {
            Ok((
                request(Method::POST, uri.clone(), &t, Some(&OCTET), body.clone()),
                n,
            ))
        }),
    )
    .await?;
    let mut m = load_metrics(&r, r.req_bytes);
    m.cpu_us_per_op = cpu.per_op(server, r.ops);
    m.client_cpu_us_per_op = cpu.client_per_op(r.ops);
    m.rss_mib = server.rss_mib();
    Ok(m)
}

async fn append_many(server: &Running, sizes: &Sizes) -> Result<Metrics> {
    let target = server.target.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (created, errors, first_error) = create_many(
        &target,
        sizes.many_streams,
        sizes.many_conns,
        &OCTET,
        &Bytes::new(),
        |i| format!("bench-many-{i}"),
        deadline,
    )
    .await?;
    if errors > 0 || created < sizes.many_streams as u64 {
        bail!(
            "setup created {created} of {} streams ({errors} errors; first: {})",
            sizes.many_streams,
            first_error.unwrap_or_default()
        );
    }
    let uris = (0..sizes.many_streams)
        .map(|i| target.uri(&format!("bench-many-{i}"), ""))
        .collect::<Result<Vec<_>>>()?;
    let body = filler(sizes.many_bytes);
    let n = body.len() as u64;
    let conns = sizes.many_conns;
    let t = target.clone();
    let cpu = server.cpu();
    let r = closed_loop(
        &target,
        conns,
        sizes.secs,
        Arc::new(move |w, i| {
            // Connection w walks the streams w, w + conns, ...: spread, and no two
            // connections on one stream at the same step.
            let idx = (w as u64 + i * conns as u64) % uris.len() as u64;
            let uri = uris[idx as usize].clone();
            Ok((
                request(Method::POST, uri, &t, Some(&OCTET), body.clone()),
                n,
            ))
        }),
    )
    .await?;
    let mut m = load_metrics(&r, r.req_bytes);
    m.cpu_us_per_op = cpu.per_op(server, r.ops);
    m.client_cpu_us_per_op = cpu.client_per_op(r.ops);
    m.rss_mib = server.rss_mib();
    Ok(m)
}

async fn read(server: &Running, sizes: &Sizes) -> Result<Metrics> {
    let target = &server.target;
    // The ceiling server has no storage: it answers every read with one fixed body.
    let expected = if server.kind == Kind::Ceiling {
        None
    } else {
        create(target, "bench-read", &OCTET).await?;
        fill(
            target,
            "bench-read",
            &OCTET,
            sizes.read_total,
            sizes.read_chunk,
        )
        .await?;
        Some(sizes.read_total)
    };
    let cpu = server.cpu();
    let r = read_loop(target, "bench-read", sizes.read_conns, sizes.secs, expected).await?;
    let mut m = load_metrics(&r, r.resp_bytes);
    m.cpu_us_per_op = cpu.per_op(server, r.ops);
    m.client_cpu_us_per_op = cpu.client_per_op(r.ops);
    m.rss_mib = server.rss_mib();
    Ok(m)
}

/// How often big-read samples the server's RSS.
const RSS_SAMPLE_EVERY: Duration = Duration::from_millis(10);

async fn big_read(server: &Running, sizes: &Sizes) -> Result<Metrics> {
    let target = &server.target;
    let name = "bench-big-read";
    create(target, name, &OCTET).await?;
    let started = Instant::now();
    fill(
        target,
        name,
        &OCTET,
        sizes.big_read_total,
        sizes.big_read_chunk,
    )
    .await?;
    let fill_mb_per_sec = as_f64(sizes.big_read_total) / 1e6 / started.elapsed().as_secs_f64();
    let before = server.rss_mib();
    let sampler = server.sample_rss(RSS_SAMPLE_EVERY);
    let read = read_once(target, name, sizes.big_read_conns, sizes.big_read_total).await;
    let peak = sampler.finish().await;
    let r = read?;
    let mut m = load_metrics(&r, r.resp_bytes);
    m.rss_before_mib = before;
    m.rss_mib = match (peak, server.rss_mib()) {
        (Some(p), Some(now)) => Some(p.max(now)),
        (p, now) => p.or(now),
    };
    add_note(&mut m, &format!("filled at {fill_mb_per_sec:.0} MB/s"));
    Ok(m)
}

async fn fan_out(server: &Running, mode: Mode, plan: Plan) -> Result<Metrics> {
    let target = &server.target;
    create(
        target,
        "bench-fanout",
        &HeaderValue::from_static("text/plain"),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = server.rss_mib();
    let mut with_readers = None;
    let r = fanout::run(target, "bench-fanout", mode, plan, || {
        with_readers = server.rss_mib();
    })
    .await?;
    let mut m = Metrics {
        errors: r.errors,
        missing: Some(r.missing),
        rss_before_mib: before,
        rss_mib: with_readers,
        ..Metrics::default()
    };
    latency(&mut m, &r.hist);
    if let (Some(b), Some(a)) = (before, with_readers) {
        m.rss_per_sub_kib = Some((a - b) * 1024.0 / as_f64(plan.readers as u64));
    }
    Ok(m)
}

async fn create_streams(server: &Running, sizes: &Sizes) -> Result<Metrics> {
    let target = server.target.clone();
    let t = target.clone();
    let cpu = server.cpu();
    let r = closed_loop(
        &target,
        sizes.create_conns,
        sizes.secs,
        Arc::new(move |w, i| {
            let uri = t.uri(&format!("bench-create-{w}-{i}"), "")?;
            Ok((request(Method::PUT, uri, &t, Some(&OCTET), Bytes::new()), 0))
        }),
    )
    .await?;
    let mut m = load_metrics(&r, 0);
    m.cpu_us_per_op = cpu.per_op(server, r.ops);
    m.client_cpu_us_per_op = cpu.client_per_op(r.ops);
    m.mb_per_sec = None;
    m.rss_mib = server.rss_mib();
    Ok(m)
}

fn add_note(m: &mut Metrics, text: &str) {
    match &mut m.note {
        Some(n) => {
            n.push_str("; ");
            n.push_str(text);
        }
        None => m.note = Some(text.to_owned()),
    }
}

fn idle_name(i: usize) -> String {
    format!("idle-{i}")
}

async fn idle_streams(
    server: Running,
    spec: &ServerSpec,
    backend: Backend,
    data: &Path,
    log: &Path,
    sizes: &Sizes,
) -> Result<Metrics> {
    let target = server.target.clone();
    let baseline = server.rss_mib();
    let started = Instant::now();
    let (created, errors, first_error) = create_many(
        &target,
        sizes.idle_streams,
        sizes.idle_conns,
        &OCTET,
        &Bytes::from_static(b"idle-record-0001"),
        idle_name,
        started + sizes.idle_cap,
    )
    .await?;
    let took = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut m = Metrics {
        ops_per_sec: Some(as_f64(created) / took.max(1e-9)),
        errors,
        rss_mib: server.rss_mib(),
        rss_before_mib: baseline,
        ..Metrics::default()
    };
    if let (Some(b), Some(a)) = (baseline, m.rss_mib)
        && created > 0
    {
        m.rss_per_stream_kib = Some((a - b) * 1024.0 / as_f64(created));
    }
    if created < sizes.idle_streams as u64 {
        let mut note = format!("created {created} of {}", sizes.idle_streams);
        if took >= sizes.idle_cap.as_secs_f64() {
            let _ = write!(note, " (time cap {} s)", sizes.idle_cap.as_secs());
        }
        if let Some(e) = first_error {
            let _ = write!(note, "; first error: {e}");
        }
        m.note = Some(note);
    }
    server.stop().await;
    if backend.persistent() && created > 0 {
        // Crash-restart (SIGKILL above): time from spawn until a stream answers HEAD.
        let first = target.uri(&idle_name(0), "")?.to_string();
        match start(spec, backend, data, log, Some(&first)).await {
            Ok(again) => {
                m.restart_s = Some(again.startup_s);
                let last = again
                    .target
                    .uri(&idle_name(created as usize - 1), "")?
                    .to_string();
                match one_shot(&again.target, Method::HEAD, &last, None, Bytes::new()).await {
                    Ok((parts, _)) if parts.status.is_success() => {}
                    _ => m.errors += 1,
                }
                again.stop().await;
            }
            // Keep the figures already measured; the remark says what went wrong.
            Err(StartError::NotBuilt(e)) => {
                m.errors += 1;
                add_note(&mut m, &format!("restart: not built: {e}"));
            }
            Err(StartError::Failed(e)) => {
                m.errors += 1;
                add_note(&mut m, &format!("restart failed: {e:#}"));
            }
        }
    }
    Ok(m)
}
