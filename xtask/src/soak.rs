//! `cargo xtask soak`: mixed traffic against the release server for a fixed time, per storage
//! backend, watching errors, append latency and the server's memory.
//!
//! The traffic, all from threads of this process over loopback HTTP/1.1:
//!
//! - **live streams**: `--streams` slots, each holding one stream incarnation
//!   (`soak/live/<slot>-<generation>`). A rotator replaces one slot's stream at a time (create
//!   the next generation, publish it, close the old one, delete it a few seconds later), so
//!   every slot is renewed about once a minute and the stored data stays bounded: a memory
//!   backend that keeps everything would otherwise grow for the whole run.
//! - **appends**: `--rate` appends per second in total (16 to 256 random bytes, paced, over
//!   four threads) to random live streams; each append's latency is recorded.
//! - **live readers**: `--readers` threads, half SSE and half long-poll, spread over the slots.
//!   They follow their slot to the next generation when the stream closes or disappears. The
//!   server ends SSE responses every 15 s and long-polls after 5 s, so reconnects are part of
//!   the load.
//! - **catch-up readers**: two threads reading random live streams from where they last left
//!   them (from the start the first time).
//! - **churn**: create, append, read, delete and check-gone cycles on short-lived streams,
//!   plus streams with a one-second `Stream-TTL` that must disappear on their own.
//!
//! Every `--interval` seconds it prints one row: appends, append latency p50/p99/max, live
//! deliveries, churn cycles, TTL expiries seen, errors and the server's `VmRSS` (from
//! `/proc/<pid>/status`). A backend fails on any 5xx or unexpected status, any transport
//! error, a TTL stream that never expires, live readers that receive nothing, a resident set
//! that grows by 10 % or more between the end of the warm-up and the end of the run (median of
//! three samples each), or a p99 append latency at the end more than twice that after warm-up
//! plus 5 ms.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::conformance::{self, Backend};
use crate::crash::Rng;
use crate::http::{self, Client, Response};
use crate::modes::{self, ModeReport, Outcome};
use crate::server::{self, Server, Startup};
use crate::tempdir::TempDir;

/// Default run time per backend, in seconds.
pub(crate) const DEFAULT_SECS: u64 = 120;
/// Default number of live readers.
pub(crate) const DEFAULT_READERS: usize = 1000;
/// Default number of live stream slots.
pub(crate) const DEFAULT_STREAMS: usize = 50;
/// Default appends per second, over all appenders.
pub(crate) const DEFAULT_RATE: u32 = 200;
/// Longest default warm-up, in seconds: file-durable's resident set settles within about three
/// minutes of this traffic.
const MAX_DEFAULT_WARMUP: u64 = 180;
/// Default seconds between two report rows.
pub(crate) const DEFAULT_INTERVAL: u64 = 10;

/// Where the protocol is mounted.
const BASE: &str = "/v1/stream";
/// Appender threads.
const APPENDERS: u32 = 4;
/// Catch-up reader threads.
const CATCH_UP_READERS: usize = 2;
/// Seconds between two renewals of the same slot.
const ROTATE_EVERY_SECS: u64 = 60;
/// How long a closed generation lives before it is deleted.
const DELETE_GRACE: Duration = Duration::from_secs(5);
/// Seconds a long-poll waits (server setting).
const LONG_POLL_SECS: u64 = 5;
/// Seconds an SSE response stays open (server setting).
const SSE_RECONNECT_SECS: u64 = 15;
/// Read timeout of an SSE connection: well over the keep-alive and reconnect intervals.
const SSE_READ_TIMEOUT: Duration = Duration::from_secs(40);
/// `Stream-TTL` of the TTL streams, in seconds.
const TTL_SECS: u64 = 1;
/// First check of a TTL stream, and the pause between checks.
const TTL_CHECK_AFTER: Duration = Duration::from_secs(4);
/// Checks of a TTL stream before it counts as never expiring.
const TTL_CHECKS: u32 = 3;
/// Relative RSS growth after warm-up that fails the run, in percent.
const MAX_RSS_GROWTH_PERCENT: u64 = 10;
/// Samples (each end) the RSS comparison takes the median of.
const RSS_SAMPLES: usize = 3;
/// Unexpected responses kept as examples.
const MAX_EXAMPLES: usize = 10;
/// Time over which the live readers connect (all at once would overflow the listen backlog
/// of any server on a small machine, which is a test artefact rather than a finding).
const READER_RAMP: Duration = Duration::from_secs(10);
/// Stack size of the many reader threads.
const READER_STACK: usize = 256 * 1024;

/// Options of `cargo xtask soak`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    /// Backends to soak, in order.
    pub(crate) backends: Vec<Backend>,
    /// Seconds per backend.
    pub(crate) secs: u64,
    /// Live readers.
    pub(crate) readers: usize,
    /// Live stream slots.
    pub(crate) streams: usize,
    /// Appends per second.
    pub(crate) rate: u32,
    /// Seconds between report rows.
    pub(crate) interval: u64,
    /// Seconds of warm-up (default: a quarter of the run, at most [`MAX_DEFAULT_WARMUP`]).
    pub(crate) warmup: Option<u64>,
    /// Seed of the traffic's randomness.
    pub(crate) seed: Option<u64>,
    /// Use the existing release binary.
    pub(crate) skip_build: bool,
    /// Soak this binary instead of the workspace's.
    pub(crate) server_binary: Option<PathBuf>,
}

/// Builds the server, then soaks each backend; returns whether all passed.
pub(crate) fn run(root: &Path, options: &Options) -> Result<bool> {
    let binary =
        conformance::server_binary(root, options.skip_build, options.server_binary.as_deref())?;
    let seed = options.seed.unwrap_or_else(modes::random_seed);
    let warmup = options
        .warmup
        .unwrap_or_else(|| (options.secs / 4).min(MAX_DEFAULT_WARMUP));
    println!(
        "==> soak: {} s per backend ({warmup} s warm-up), {} live readers on {} streams, \
         {} appends/s, seed {seed}",
        options.secs, options.readers, options.streams, options.rate
    );
    Ok(modes::run_all("soak", &options.backends, |backend| {
        soak_backend(&binary, backend, options, warmup, seed)
    }))
}

/// One report row.
#[derive(Debug, Clone, Default)]
struct Row {
    /// Seconds since the traffic started.
    at_secs: u64,
    /// Appends acknowledged in the interval.
    appends: u64,
    /// Append latency percentiles in the interval, microseconds.
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    /// SSE data events and long-poll responses with data, in the interval.
    live: u64,
    /// Catch-up reads in the interval.
    catch_up: u64,
    /// Churn cycles in the interval.
    churn: u64,
    /// TTL streams seen expired so far.
    ttl_expired: u64,
    /// Errors so far.
    errors: u64,
    /// Server resident set, KiB.
    rss_kib: u64,
    /// The machine's one-minute load average (`/proc/loadavg`), to tell contention from
    /// degradation.
    load: String,
}

/// What one backend's soak found.
struct Report {
    /// The rows, in order.
    rows: Vec<Row>,
    /// Responses by operation and status.
    statuses: BTreeMap<(&'static str, u16), u64>,
    /// Examples of what went wrong.
    examples: Vec<String>,
    /// Problems that fail the run.
    failures: Vec<String>,
    /// RSS at the end of warm-up and at the end, KiB.
    rss: (u64, u64),
    /// p99 append latency after warm-up and at the end, microseconds.
    p99: (u64, u64),
}

impl ModeReport for Report {
    fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    fn print_details(&self, mode: &str) {
        println!("==> soak {mode}: responses by operation and status");
        for ((op, status), count) in &self.statuses {
            println!("    {op:<12} {status}  {count}");
        }
        for example in &self.examples {
            println!("    example: {example}");
        }
        for failure in &self.failures {
            println!("==> soak {mode}: FAILED: {failure}");
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = self.rows.last().map_or(0, |row| row.errors);
        let appends: u64 = self.rows.iter().map(|row| row.appends).sum();
        write!(
            f,
            "{}: {appends} appends, {errors} errors, p99 {} -> {}, RSS {} -> {}",
            if self.passed() { "ok" } else { "FAILED" },
            millis(self.p99.0),
            millis(self.p99.1),
            mib(self.rss.0),
            mib(self.rss.1),
        )?;
        if let Some(first) = self.failures.first() {
            write!(f, " ({first})")?;
        }
        Ok(())
    }
}

/// Microseconds as milliseconds with one decimal.
fn millis(us: u64) -> String {
    format!("{}.{} ms", us / 1000, us % 1000 / 100)
}

/// KiB as MiB with one decimal.
fn mib(kib: u64) -> String {
    format!("{}.{} MiB", kib / 1024, kib % 1024 * 10 / 1024)
}

/// State shared by the traffic threads.
struct Shared {
    /// The server's port.
    port: u16,
    /// Set when the traffic should end.
    stop: AtomicBool,
    /// Current generation of each live slot.
    generations: Vec<AtomicU64>,
    /// Responses by operation and status.
    statuses: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Examples of errors.
    examples: Mutex<Vec<String>>,
    /// Errors: 5xx, unexpected statuses and transport failures.
    errors: AtomicU64,
    /// Latencies of the appends acknowledged since the last row, microseconds.
    latencies: Mutex<Vec<u64>>,
    /// SSE data events plus long-poll responses with data.
    live: AtomicU64,
    /// SSE data events alone.
    sse_events: AtomicU64,
    /// Long-poll responses with data alone.
    long_poll_data: AtomicU64,
    /// Catch-up reads.
    catch_up: AtomicU64,
    /// Churn cycles.
    churn: AtomicU64,
    /// TTL streams seen gone.
    ttl_expired: AtomicU64,
    /// TTL streams that outlived every check.
    ttl_stuck: AtomicU64,
}

impl Shared {
    fn new(port: u16, streams: usize) -> Self {
        Self {
            port,
            stop: AtomicBool::new(false),
            generations: (0..streams).map(|_| AtomicU64::new(0)).collect(),
            statuses: Mutex::new(BTreeMap::new()),
            examples: Mutex::new(Vec::new()),
            errors: AtomicU64::new(0),
            latencies: Mutex::new(Vec::new()),
            live: AtomicU64::new(0),
            sse_events: AtomicU64::new(0),
            long_poll_data: AtomicU64::new(0),
            catch_up: AtomicU64::new(0),
            churn: AtomicU64::new(0),
            ttl_expired: AtomicU64::new(0),
            ttl_stuck: AtomicU64::new(0),
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The path of `slot`'s stream in `generation`.
    fn live_path(slot: usize, generation: u64) -> String {
        format!("{BASE}/soak/live/{slot}-{generation}")
    }

    /// The current stream of `slot` and its generation.
    fn current(&self, slot: usize) -> (u64, String) {
        let generation = self.generations[slot].load(Ordering::Acquire);
        (generation, Self::live_path(slot, generation))
    }

    /// Counts a response of `op`; a 5xx or a status outside `expected` is an error.
    /// Returns whether the status was expected.
    fn record(&self, op: &'static str, response: &Response, expected: &[u16]) -> bool {
        let status = response.status;
        *self
            .statuses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((op, status))
            .or_default() += 1;
        let ok = status < 500 && expected.contains(&status);
        if !ok {
            self.error(format!("{op}: {}", response.summary()));
        }
        ok
    }

    /// Counts a transport failure of `op`, unless the run is ending.
    fn transport(&self, op: &'static str, error: &anyhow::Error) {
        if !self.stopping() {
            self.error(format!("{op}: {error:#}"));
        }
    }

    fn error(&self, example: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut examples = self.examples.lock().unwrap_or_else(PoisonError::into_inner);
        if examples.len() < MAX_EXAMPLES {
            examples.push(example);
        }
    }

    /// Sleeps `duration` in short steps; returns false if the run is ending.
    fn pause(&self, duration: Duration) -> bool {
        let until = Instant::now() + duration;
        while !self.stopping() {
            let now = Instant::now();
            if now >= until {
                return true;
            }
            thread::sleep((until - now).min(Duration::from_millis(100)));
        }
        false
    }
}

/// Soaks one backend.
fn soak_backend(
    binary: &Path,
    backend: Backend,
    options: &Options,
    warmup: u64,
    seed: u64,
) -> Result<Outcome<Report>> {
    let work = TempDir::new(&format!("soak-{}", backend.name()))?;
    let port = server::free_loopback_port()?;
    let env: Vec<(String, OsString)> = vec![
        (
            "DS_SERVER__BIND_ADDRESS".into(),
            format!("127.0.0.1:{port}").into(),
        ),
        ("DS_STORAGE__MODE".into(), backend.name().into()),
        (
            "DS_STORAGE__DATA_DIR".into(),
            work.path().join("data").into_os_string(),
        ),
        ("DS_OBSERVABILITY__RUST_LOG".into(), "warn".into()),
        (
            "DS_TRANSPORT__CONNECTION__LONG_POLL_TIMEOUT_SECS".into(),
            LONG_POLL_SECS.to_string().into(),
        ),
        (
            "DS_TRANSPORT__CONNECTION__SSE_RECONNECT_INTERVAL_SECS".into(),
            SSE_RECONNECT_SECS.to_string().into(),
        ),
    ];
    let log = work.path().join("server.log");
    let mut server = Server::start(binary, work.path(), port, &env, &log)?;
    if let Startup::NotBuilt = server.wait_ready()? {
        return Ok(Outcome::NotBuilt);
    }
    let pid = child_pid(binary)?;
    println!(
        "==> soak {}: server pid {pid} on port {port}",
        backend.name()
    );

    let shared = Arc::new(Shared::new(port, options.streams));
    let mut client = Client::new(port);
    for slot in 0..options.streams {
        create_live(&shared, &mut client, slot, 0)?;
    }
    let threads = start_traffic(&shared, options, seed)?;
    let rows = sample(&shared, options, pid, &mut server);
    shared.stop.store(true, Ordering::Relaxed);
    let server_result = server.check_running();
    server.stop()?;
    for handle in threads {
        // A panicked traffic thread is a harness bug; it shows on stderr.
        let _ = handle.join();
    }
    let rows = rows?;
    server_result?;
    let report = judge(&shared, options, warmup, rows);
    if !report.passed() {
        println!(
            "==> soak {}: server log tail:\n{}",
            backend.name(),
            server.log_tail()
        );
    }
    work.remove()?;
    Ok(Outcome::Tested(report))
}

/// Creates live stream `slot` in `generation`.
fn create_live(shared: &Shared, client: &mut Client, slot: usize, generation: u64) -> Result<()> {
    let path = Shared::live_path(slot, generation);
    let response = client
        .request(
            shared.port,
            "PUT",
            &path,
            &[("Content-Type", "application/octet-stream")],
            b"",
        )
        .with_context(|| format!("creating {path}"))?;
    if !shared.record("create", &response, &[201]) {
        bail!("creating {path}: {}", response.summary());
    }
    Ok(())
}

/// The pid of our child process running `binary` (the server just started).
fn child_pid(binary: &Path) -> Result<u32> {
    let me = std::process::id();
    let binary = fs::canonicalize(binary).unwrap_or_else(|_| binary.to_path_buf());
    for entry in fs::read_dir("/proc").context("listing /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the parenthesised command name.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        // A binary rebuilt while it runs shows as `<path> (deleted)`.
        let exe = fs::read_link(format!("/proc/{pid}/exe"))
            .map(|exe| {
                exe.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_owned()
            })
            .ok();
        if parent == Some(me) && exe.as_deref() == Some(&*binary.to_string_lossy()) {
            return Ok(pid);
        }
    }
    bail!("could not find the server process among this process's children")
}

/// The resident set of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    parse_vm_rss(&status).context("no VmRSS line in /proc/<pid>/status")
}

/// The `VmRSS:  1234 kB` value.
fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// Starts every traffic thread.
fn start_traffic(
    shared: &Arc<Shared>,
    options: &Options,
    seed: u64,
) -> Result<Vec<thread::JoinHandle<()>>> {
    let mut threads = Vec::new();
    let mut spawn = |name: String, stack: usize, work: Box<dyn FnOnce() + Send>| -> Result<()> {
        let handle = thread::Builder::new()
            .name(name.clone())
            .stack_size(stack)
            .spawn(work)
            .with_context(|| format!("starting thread {name}"))?;
        threads.push(handle);
        Ok(())
    };
    for i in 0..options.readers {
        let shared = Arc::clone(shared);
        let slot = i % options.streams;
        let delay = READER_RAMP * u32::try_from(i).unwrap_or(u32::MAX)
            / u32::try_from(options.readers).unwrap_or(u32::MAX);
        if i % 2 == 0 {
            spawn(
                format!("sse-{i}"),
                READER_STACK,
                Box::new(move || {
                    if shared.pause(delay) {
                        sse_reader(&shared, slot);
                    }
                }),
            )?;
        } else {
            spawn(
                format!("long-poll-{i}"),
                READER_STACK,
                Box::new(move || {
                    if shared.pause(delay) {
                        long_poll_reader(&shared, slot);
                    }
                }),
            )?;
        }
    }
    let period = Duration::from_secs(u64::from(APPENDERS)) / options.rate.max(1);
    for i in 0..APPENDERS {
        let shared = Arc::clone(shared);
        let rng = Rng::new(seed ^ u64::from(i));
        spawn(
            format!("append-{i}"),
            READER_STACK,
            Box::new(move || appender(&shared, rng, period)),
        )?;
    }
    for i in 0..CATCH_UP_READERS {
        let shared = Arc::clone(shared);
        let rng = Rng::new(seed ^ (0x100 + i as u64));
        spawn(
            format!("catch-up-{i}"),
            READER_STACK,
            Box::new(move || catch_up_reader(&shared, rng)),
        )?;
    }
    let churn_shared = Arc::clone(shared);
    spawn(
        "churn".into(),
        READER_STACK,
        Box::new(move || churn(&churn_shared)),
    )?;
    let rotate_shared = Arc::clone(shared);
    spawn(
        "rotate".into(),
        READER_STACK,
        Box::new(move || rotator(&rotate_shared)),
    )?;
    Ok(threads)
}

/// Appends random payloads to random live streams, one every `period`.
fn appender(shared: &Shared, mut rng: Rng, period: Duration) {
    let mut client = Client::new(shared.port);
    let mut next = Instant::now();
    let slots = shared.generations.len() as u64;
    while !shared.stopping() {
        let now = Instant::now();
        if next > now && !shared.pause(next - now) {
            break;
        }
        next += period;
        let slot = rng.range(0, slots - 1) as usize;
        let (_, path) = shared.current(slot);
        let len = rng.range(16, 256) as usize;
        let body: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let started = Instant::now();
        let result = client.request(
            shared.port,
            "POST",
            &path,
            &[("Content-Type", "application/octet-stream")],
            &body,
        );
        let took = started.elapsed();
        match result {
            // 409: the slot was closed for renewal between reading its generation and
            // appending; 404: it was already deleted.
            Ok(response) => {
                if shared.record("append", &response, &[200, 204, 404, 409])
                    && response.status / 100 == 2
                {
                    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                    shared
                        .latencies
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(us);
                }
            }
            Err(error) => shared.transport("append", &error),
        }
    }
}

/// Long-polls its slot's stream from the tail, following renewals.
fn long_poll_reader(shared: &Shared, slot: usize) {
    let mut client = Client::new(shared.port);
    let (mut generation, _) = shared.current(slot);
    let mut offset = "now".to_owned();
    while !shared.stopping() {
        let path = format!(
            "{}?offset={}&live=long-poll",
            Shared::live_path(slot, generation),
            http::encode_query_value(&offset)
        );
        match client.request(shared.port, "GET", &path, &[], b"") {
            Ok(response) => {
                if !shared.record("long-poll", &response, &[200, 204, 404]) {
                    shared.pause(Duration::from_secs(1));
                    continue;
                }
                if response.status == 200 && !response.body.is_empty() {
                    shared.live.fetch_add(1, Ordering::Relaxed);
                    shared.long_poll_data.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(next) = response.header("stream-next-offset") {
                    next.clone_into(&mut offset);
                }
                if response.status == 404 || response.flag("stream-closed") {
                    // Renewed: the next generation is published before the old one closes.
                    generation = next_generation(shared, slot, generation);
                    "-1".clone_into(&mut offset);
                }
            }
            Err(error) => {
                shared.transport("long-poll", &error);
                shared.pause(Duration::from_secs(1));
            }
        }
    }
}

/// The slot's generation after `seen`, waiting briefly if the rotator is mid-renewal.
fn next_generation(shared: &Shared, slot: usize, seen: u64) -> u64 {
    loop {
        let (current, _) = shared.current(slot);
        if current > seen || !shared.pause(Duration::from_millis(50)) {
            return current;
        }
    }
}

/// Follows its slot's stream over SSE, reconnecting from the last control event's offset.
fn sse_reader(shared: &Shared, slot: usize) {
    let (mut generation, _) = shared.current(slot);
    let mut offset = "now".to_owned();
    while !shared.stopping() {
        let path = format!(
            "{}?offset={}&live=sse",
            Shared::live_path(slot, generation),
            http::encode_query_value(&offset)
        );
        match sse_session(shared.port, &path) {
            Ok(response) => {
                if !shared.record("sse", &response, &[200, 404]) {
                    shared.pause(Duration::from_secs(1));
                    continue;
                }
                let events = parse_sse_body(&response.body);
                shared.live.fetch_add(events.data, Ordering::Relaxed);
                shared.sse_events.fetch_add(events.data, Ordering::Relaxed);
                if let Some(next) = events.next_offset {
                    offset = next;
                }
                if response.status == 404 || events.closed {
                    generation = next_generation(shared, slot, generation);
                    "-1".clone_into(&mut offset);
                }
            }
            Err(error) => {
                shared.transport("sse", &error);
                shared.pause(Duration::from_secs(1));
            }
        }
    }
}

/// One SSE response, read to its end (the server ends it after the reconnect interval).
fn sse_session(port: u16, path: &str) -> Result<Response> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    stream
        .set_read_timeout(Some(SSE_READ_TIMEOUT))
        .context("setting the read timeout")?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\
         Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .context("sending the request")?;
    let mut reader = BufReader::new(stream);
    http::read_response(&mut reader, false).map(|(response, _)| response)
}

/// What an SSE body held.
#[derive(Debug, Default, PartialEq, Eq)]
struct SseSummary {
    /// `event: data` events.
    data: u64,
    /// The last control event's `streamNextOffset`.
    next_offset: Option<String>,
    /// A control event said `streamClosed`.
    closed: bool,
}

/// Counts data events and reads the control events of an SSE body.
fn parse_sse_body(body: &[u8]) -> SseSummary {
    let text = String::from_utf8_lossy(body);
    let mut summary = SseSummary::default();
    let mut in_control = false;
    for line in text.lines() {
        if line == "event: data" {
            summary.data += 1;
        }
        if line.starts_with("event:") {
            in_control = line == "event: control";
        } else if in_control && let Some(json) = line.strip_prefix("data:") {
            if let Ok(value) = crate::json::parse(json)
                && let Some(next) = value.get("streamNextOffset").and_then(|v| v.as_str())
            {
                summary.next_offset = Some(next.to_owned());
            }
            summary.closed |= json.contains("\"streamClosed\":true");
        }
    }
    summary
}

/// Reads random live streams from where this reader last left each one.
fn catch_up_reader(shared: &Shared, mut rng: Rng) {
    let mut client = Client::new(shared.port);
    let mut offsets: BTreeMap<(usize, u64), String> = BTreeMap::new();
    let slots = shared.generations.len() as u64;
    while shared.pause(Duration::from_millis(50)) {
        let slot = rng.range(0, slots - 1) as usize;
        let (generation, path) = shared.current(slot);
        let offset = offsets
            .get(&(slot, generation))
            .cloned()
            .unwrap_or_else(|| "-1".to_owned());
        let url = format!("{path}?offset={}", http::encode_query_value(&offset));
        match client.request(shared.port, "GET", &url, &[], b"") {
            Ok(response) => {
                if shared.record("catch-up", &response, &[200, 404]) && response.status == 200 {
                    shared.catch_up.fetch_add(1, Ordering::Relaxed);
                    if let Some(next) = response.header("stream-next-offset") {
                        offsets.insert((slot, generation), next.to_owned());
                    }
                }
            }
            Err(error) => shared.transport("catch-up", &error),
        }
        // Forget generations that have been renewed.
        offsets.retain(|&(slot, generation), _| shared.current(slot).0 == generation);
    }
}

/// One request of a churn cycle: operation, method, headers, body, expected statuses.
type ChurnStep<'a> = (
    &'static str,
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a [u8],
    &'a [u16],
);

/// Short-lived streams: create, append, read, delete, check gone; and TTL streams that must
/// expire by themselves.
fn churn(shared: &Shared) {
    let mut client = Client::new(shared.port);
    let mut ttl_pending: Vec<(String, Instant, u32)> = Vec::new();
    let mut n: u64 = 0;
    while shared.pause(Duration::from_millis(200)) {
        n += 1;
        let path = format!("{BASE}/soak/churn/{n}");
        let steps: [ChurnStep<'_>; 5] = [
            (
                "churn-create",
                "PUT",
                &[("Content-Type", "text/plain")],
                b"",
                &[201],
            ),
            (
                "churn-append",
                "POST",
                &[("Content-Type", "text/plain")],
                b"churn",
                &[200, 204],
            ),
            ("churn-read", "GET", &[], b"", &[200]),
            ("churn-delete", "DELETE", &[], b"", &[200, 204]),
            ("churn-gone", "GET", &[], b"", &[404]),
        ];
        let mut complete = true;
        for (op, method, headers, body, expected) in steps {
            let target = if method == "GET" {
                format!("{path}?offset=-1")
            } else {
                path.clone()
            };
            match client.request(shared.port, method, &target, headers, body) {
                Ok(response) => complete &= shared.record(op, &response, expected),
                Err(error) => {
                    shared.transport(op, &error);
                    complete = false;
                }
            }
            if !complete {
                break;
            }
        }
        if complete {
            shared.churn.fetch_add(1, Ordering::Relaxed);
        }

        if n.is_multiple_of(5) {
            let path = format!("{BASE}/soak/ttl/{n}");
            let ttl = TTL_SECS.to_string();
            match client.request(
                shared.port,
                "PUT",
                &path,
                &[("Content-Type", "text/plain"), ("Stream-TTL", &ttl)],
                b"expiring",
            ) {
                Ok(response) => {
                    if shared.record("ttl-create", &response, &[201]) {
                        ttl_pending.push((path, Instant::now() + TTL_CHECK_AFTER, 0));
                    }
                }
                Err(error) => shared.transport("ttl-create", &error),
            }
        }
        check_ttl_streams(shared, &mut client, &mut ttl_pending);
    }
}

/// Checks the TTL streams that are due: gone is an expiry; still there is checked again
/// later, up to [`TTL_CHECKS`] times, then counted as stuck.
fn check_ttl_streams(
    shared: &Shared,
    client: &mut Client,
    pending: &mut Vec<(String, Instant, u32)>,
) {
    let now = Instant::now();
    let mut still = Vec::new();
    for (path, due, checks) in pending.drain(..) {
        if due > now {
            still.push((path, due, checks));
            continue;
        }
        match client.request(shared.port, "HEAD", &path, &[], b"") {
            Ok(response) => {
                if !shared.record("ttl-check", &response, &[200, 404]) {
                    continue;
                }
                if response.status == 404 {
                    shared.ttl_expired.fetch_add(1, Ordering::Relaxed);
                } else if checks + 1 >= TTL_CHECKS {
                    shared.ttl_stuck.fetch_add(1, Ordering::Relaxed);
                    shared.error(format!(
                        "{path} still exists {} checks after its TTL",
                        checks + 1
                    ));
                } else {
                    still.push((path, now + TTL_CHECK_AFTER, checks + 1));
                }
            }
            Err(error) => shared.transport("ttl-check", &error),
        }
    }
    *pending = still;
}

/// Renews one slot at a time so each is renewed every [`ROTATE_EVERY_SECS`].
fn rotator(shared: &Shared) {
    let mut client = Client::new(shared.port);
    let slots = shared.generations.len();
    let step = Duration::from_secs(ROTATE_EVERY_SECS) / u32::try_from(slots).unwrap_or(u32::MAX);
    let mut retired: Vec<(String, Instant)> = Vec::new();
    let mut slot = 0;
    while shared.pause(step) {
        let (old, old_path) = shared.current(slot);
        if create_live(shared, &mut client, slot, old + 1).is_ok() {
            shared.generations[slot].store(old + 1, Ordering::Release);
            match client.request(
                shared.port,
                "POST",
                &old_path,
                &[
                    ("Content-Type", "application/octet-stream"),
                    ("Stream-Closed", "true"),
                ],
                b"",
            ) {
                Ok(response) => {
                    shared.record("close", &response, &[200, 204]);
                }
                Err(error) => shared.transport("close", &error),
            }
            retired.push((old_path, Instant::now() + DELETE_GRACE));
        }
        slot = (slot + 1) % slots;
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = retired.drain(..).partition(|(_, at)| *at <= now);
        retired = later;
        for (path, _) in due {
            match client.request(shared.port, "DELETE", &path, &[], b"") {
                Ok(response) => {
                    shared.record("delete", &response, &[200, 204]);
                }
                Err(error) => shared.transport("delete", &error),
            }
        }
    }
}

/// Prints a row every interval until the run time is over; returns the rows.
fn sample(shared: &Shared, options: &Options, pid: u32, server: &mut Server) -> Result<Vec<Row>> {
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut last = (0u64, 0u64, 0u64);
    println!(
        "    {:>6} {:>8} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6} {:>5} {:>6} {:>10} {:>6}",
        "t",
        "appends",
        "p50",
        "p99",
        "max",
        "live",
        "catchup",
        "churn",
        "ttl",
        "errors",
        "rss",
        "load"
    );
    let mut at = 0;
    while at < options.secs {
        at = (at + options.interval).min(options.secs);
        let until = started + Duration::from_secs(at);
        while Instant::now() < until {
            thread::sleep((until - Instant::now()).min(Duration::from_millis(200)));
        }
        server.check_running()?;
        let mut latencies = std::mem::take(
            &mut *shared
                .latencies
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        latencies.sort_unstable();
        let live = shared.live.load(Ordering::Relaxed);
        let catch_up = shared.catch_up.load(Ordering::Relaxed);
        let churn = shared.churn.load(Ordering::Relaxed);
        let row = Row {
            at_secs: at,
            appends: latencies.len() as u64,
            p50_us: percentile(&latencies, 50),
            p99_us: percentile(&latencies, 99),
            max_us: latencies.last().copied().unwrap_or(0),
            live: live - last.0,
            catch_up: catch_up - last.1,
            churn: churn - last.2,
            ttl_expired: shared.ttl_expired.load(Ordering::Relaxed),
            errors: shared.errors.load(Ordering::Relaxed),
            rss_kib: rss_kib(pid)?,
            load: fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|text| text.split_whitespace().next().map(str::to_owned))
                .unwrap_or_default(),
        };
        last = (live, catch_up, churn);
        println!(
            "    {:>5}s {:>8} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6} {:>5} {:>6} {:>10} {:>6}",
            row.at_secs,
            row.appends,
            millis(row.p50_us),
            millis(row.p99_us),
            millis(row.max_us),
            row.live,
            row.catch_up,
            row.churn,
            row.ttl_expired,
            row.errors,
            mib(row.rss_kib),
            row.load
        );
        rows.push(row);
    }
    Ok(rows)
}

/// The `p`th percentile of sorted `values` (nearest rank), 0 when empty.
fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// The median of `values`, 0 when empty.
fn median(values: &[u64]) -> u64 {
    let mut values = values.to_vec();
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// Decides the verdict from the rows and counters.
fn judge(shared: &Shared, options: &Options, warmup: u64, rows: Vec<Row>) -> Report {
    let statuses = shared
        .statuses
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let examples = shared
        .examples
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut failures = Vec::new();

    let server_errors: u64 = statuses
        .iter()
        .filter(|((_, status), _)| *status >= 500)
        .map(|(_, count)| count)
        .sum();
    if server_errors > 0 {
        failures.push(format!("{server_errors} responses with a 5xx status"));
    }
    let errors = shared.errors.load(Ordering::Relaxed);
    if errors > 0 {
        failures.push(format!(
            "{errors} errors (unexpected statuses or transport failures)"
        ));
    }
    if options.readers > 0 {
        if options.readers >= 2 && shared.sse_events.load(Ordering::Relaxed) == 0 {
            failures.push("SSE readers received no data event".to_owned());
        }
        if shared.long_poll_data.load(Ordering::Relaxed) == 0 {
            failures.push("long-poll readers received no data".to_owned());
        }
    }
    let stuck = shared.ttl_stuck.load(Ordering::Relaxed);
    if stuck > 0 {
        failures.push(format!("{stuck} TTL streams never expired"));
    }
    if options.secs >= 20 && shared.ttl_expired.load(Ordering::Relaxed) == 0 {
        failures.push("no TTL stream was seen expiring".to_owned());
    }

    let after: Vec<&Row> = rows.iter().filter(|row| row.at_secs > warmup).collect();
    let window = RSS_SAMPLES.min(after.len() / 2).max(1);
    let early: Vec<&Row> = after.iter().take(window).copied().collect();
    let late: Vec<&Row> = after.iter().rev().take(window).copied().collect();
    let rss_of = |rows: &[&Row]| median(&rows.iter().map(|row| row.rss_kib).collect::<Vec<_>>());
    let p99_of = |rows: &[&Row]| median(&rows.iter().map(|row| row.p99_us).collect::<Vec<_>>());
    let rss = (rss_of(&early), rss_of(&late));
    let p99 = (p99_of(&early), p99_of(&late));
    if after.len() < 2 {
        failures.push(format!(
            "too few samples after the {warmup} s warm-up to judge memory and latency \
             (run longer or shorten --interval)"
        ));
    } else {
        if rss.1 * 100 >= rss.0 * (100 + MAX_RSS_GROWTH_PERCENT) {
            failures.push(format!(
                "server RSS grew from {} to {} after warm-up (limit {MAX_RSS_GROWTH_PERCENT} %)",
                mib(rss.0),
                mib(rss.1)
            ));
        }
        if p99.1 > 2 * p99.0 + 5_000 {
            failures.push(format!(
                "p99 append latency degraded from {} to {}",
                millis(p99.0),
                millis(p99.1)
            ));
        }
    }
    Report {
        rows,
        statuses,
        examples,
        failures,
        rss,
        p99,
    }
}

#[cfg(test)]
mod tests {
    use super::{SseSummary, median, parse_sse_body, parse_vm_rss, percentile};

    #[test]
    fn percentiles_use_nearest_rank() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50), 50);
        assert_eq!(percentile(&values, 99), 99);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[], 99), 0);
        assert_eq!(median(&[5, 1, 3]), 3);
        assert_eq!(median(&[]), 0);
    }

    #[test]
    fn reads_vm_rss() {
        let status = "Name:\tds\nVmPeak:\t  9000 kB\nVmRSS:\t   4321 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(4321));
        assert_eq!(parse_vm_rss("Name:\tds\n"), None);
    }

    #[test]
    fn summarises_sse_bodies() {
        let body = b"event: data\ndata:AAAA\n\nevent: control\n\
                     data:{\"streamNextOffset\":\"0000000000000001_0000000000000003\",\"streamCursor\":\"5\"}\n\n\
                     : keep-alive\n\nevent: data\ndata:QQ==\n\nevent: control\n\
                     data:{\"streamNextOffset\":\"0000000000000002_0000000000000004\",\"streamClosed\":true}\n\n";
        assert_eq!(
            parse_sse_body(body),
            SseSummary {
                data: 2,
                next_offset: Some("0000000000000002_0000000000000004".to_owned()),
                closed: true,
            }
        );
        assert_eq!(parse_sse_body(b""), SseSummary::default());
    }
}
