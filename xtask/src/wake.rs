//! `cargo xtask wake`: the subscription wake check against the real
//! binary. With one pull-wake subscription whose glob matches `--streams`
//! streams and a steady append load across them, every acknowledged append
//! must be reported to the worker by a claim within 1 s, and no wake may be
//! lost across SIGKILL and restart of the server.
//!
//! Per storage mode:
//!
//! 1. Start the server on a fresh data directory and a free loopback port
//!    (subscriptions are always served; a pull-wake subscription needs no
//!    webhook receiver). Create the wake stream `wakes/pool` and half of the
//!    streams `load/s0000`, ..., then the subscription `wake-check`
//!    (`pattern: "load/*"`, `lease_ttl_ms: 1000`, the shortest allowed, so
//!    a lease orphaned by a kill runs out quickly), then the other half:
//!    both the eager backfill and the linking of later streams are in play.
//! 2. Run the load: [`PRODUCERS`] threads append to random streams at
//!    `--rate` appends per second in total, and one worker follows the wake
//!    stream with long-polls; for each batch of wake events it claims, and
//!    acks the tail of every stream the claim reports pending with
//!    `done: true` ([`load::Worker`]). It claims only when a wake event
//!    tells it to, so a lost wake shows up as appends nobody reported.
//! 3. Kill loop, `--kills` times: after 1.5 to 3 s of load (seeded), hold
//!    the producers, start a burst of one to three appends to random streams
//!    from a connected client and SIGKILL the server 0 to 0.6 ms after the
//!    first request (seeded), so appends and the wakes they cause are caught
//!    mid-flight; restart it on the same data directory, check that the
//!    subscription is still there, read the tails of the burst's streams (an
//!    append the server applied is owed a wake even if its acknowledgement
//!    was lost), and wait, with no new append that could cover for a lost
//!    wake, until the worker has been woken for everything that was written
//!    before the kill (at most 10 s: a lease the kill orphaned runs out
//!    first); then resume the load. A final load window follows the last
//!    restart; then the producers stop and the worker drains.
//! 4. Verdict ([`analysis`]): each acknowledged append is matched with the
//!    first claim whose reported tail reaches it. Appends with no kill
//!    between acknowledgement and claim (and not acknowledged while delivery
//!    was recovering from a kill) are the steady state: their latency
//!    (p50/p99/max) must stay within 1 s. The others must be covered too,
//!    after the restart. Cursors must never go back behind an ack the server
//!    confirmed: checked on every claim and, at the end, every stream's
//!    `acked_offset` must have reached its last acknowledged append.
//!
//! With `postgres`, two server processes (nodes 0 and 1) share one schema,
//! as behind a load balancer without stickiness: one node holds the
//! subscription engine's lease and delivers every wake, the other forwards
//! subscription requests to it through the database. Producers append
//! through both nodes, the worker changes node after every claim round
//! (its long-polls, claims and acks reach both), and each kill hits the
//! node holding the lease (its pid is part of the holder's
//! node id in `ds_leases`): the survivor must take over
//! (`DS_SUBSCRIPTIONS__CLUSTER_LEASE_MS` is 2 s here) and wake for
//! everything the killed node was owed, while the killed node restarts as
//! a standby.
//!
//! The seed fixes the schedule (load windows, stream choice), not the
//! thread interleaving; it is printed so `--seed` can replay a schedule.

mod analysis;
mod load;

use std::ffi::OsString;
use std::fmt::{self, Write as _};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use self::analysis::{Coverage, Kill, Off};
use self::load::{Rng, Shared, Worker, lock};
use crate::conformance::{self, Backend};
use crate::http::{Client, Response};
use crate::json::{self, Value};
use crate::modes::{self, ModeReport, Outcome, random_seed};
use crate::server::{self, Server, Startup};
use crate::tempdir::TempDir;

/// Default number of streams matched by the glob.
pub(crate) const DEFAULT_STREAMS: usize = 1000;
/// Most streams `--streams` accepts (the names have four digits).
pub(crate) const MAX_STREAMS: usize = 10_000;
/// Default kills per mode.
pub(crate) const DEFAULT_KILLS: u32 = 10;
/// Default total append rate (appends per second).
pub(crate) const DEFAULT_RATE: u32 = 200;
/// Producer threads.
const PRODUCERS: usize = 4;
/// Threads creating the streams.
const CREATORS: usize = 4;
/// Shortest and longest stretch of load between two kills, in milliseconds.
const WINDOW_MS: (u64, u64) = (1500, 3000);
/// Where the server mounts streams.
pub(crate) const STREAM_BASE_PATH: &str = "/v1/stream";
/// The pull-wake subscription.
pub(crate) const SUBSCRIPTION: &str = "wake-check";
/// The worker's name in claims.
pub(crate) const WORKER: &str = "wake-worker";
/// The wake stream (outside the pattern).
pub(crate) const WAKE_STREAM: &str = "wakes/pool";
/// The subscription's lease: the shortest the protocol allows.
const LEASE_TTL_MS: u64 = 1000;
/// Long-poll timeout of the server, below the client's 10 s read timeout.
const LONG_POLL_TIMEOUT_SECS: &str = "2";
/// How long a request of the coordinating thread may keep failing.
const REQUEST_RETRY_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between retries of the coordinating thread.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long the restarted server may take to wake the worker for every
/// append acknowledged before the kill (a lease the kill orphaned must run
/// out first).
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the worker may take to cover the last appends once the load stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts to restart the server (the first on the old port, then fresh ports).
const START_ATTEMPTS: usize = 3;
/// Findings listed per category before the rest is summarised.
const MAX_DETAILS: usize = 20;

/// Storage modes `--mode all` runs: the durable ones.
pub(crate) const DURABLE_MODES: [Backend; 4] = [
    Backend::FileFast,
    Backend::FileDurable,
    Backend::Acid,
    Backend::Postgres,
];
/// The subscription engine's lease on a shared (postgres) store in this
/// check: a killed leader's successor takes over within this.
const CLUSTER_LEASE_MS: &str = "2000";

/// Server processes of a mode: two on one schema for `postgres`, as a load
/// balancer without stickiness would use them; one otherwise.
fn node_count(mode: Backend) -> usize {
    if mode == Backend::Postgres { 2 } else { 1 }
}

/// Options of one `wake` invocation.
#[derive(Debug)]
pub(crate) struct Options {
    /// Storage modes to test, in order, without duplicates.
    pub(crate) modes: Vec<Backend>,
    /// Kills per mode (0: latency only).
    pub(crate) kills: u32,
    /// Streams matched by the glob.
    pub(crate) streams: usize,
    /// Total appends per second.
    pub(crate) rate: u32,
    /// Seed of the schedule; random if not given.
    pub(crate) seed: Option<u64>,
    /// Use the existing release binary instead of building it.
    pub(crate) skip_build: bool,
    /// Test this binary instead of the workspace's release build.
    pub(crate) server_binary: Option<PathBuf>,
}

/// The name of stream `index`.
pub(crate) fn stream_name(index: usize) -> String {
    format!("load/s{index:04}")
}

/// The URL path of stream `index`.
pub(crate) fn stream_path(index: usize) -> String {
    format!("{STREAM_BASE_PATH}/{}", stream_name(index))
}

/// The URL path of the subscription.
fn subscription_path() -> String {
    format!("{STREAM_BASE_PATH}/__ds/subscriptions/{SUBSCRIPTION}")
}

/// Time limit of one mode: generous for a healthy server, bounded for a sick one.
fn time_limit(kills: u32, streams: usize) -> Duration {
    Duration::from_secs(90)
        + Duration::from_secs(10) * kills
        + Duration::from_millis(20) * u32::try_from(streams).unwrap_or(u32::MAX)
}

/// The verdict on one mode.
#[derive(Debug, Default)]
struct Report {
    streams: usize,
    kills: u32,
    /// Appends acknowledged.
    appends: usize,
    /// Successful claims.
    claims: usize,
    /// Wake events the worker read.
    wake_events: u64,
    /// Claims answered ALREADY_CLAIMED and acks answered FENCED (kills orphan leases).
    already_claimed: u64,
    fenced: u64,
    /// Longest restart (kill to ready).
    slowest_restart: Duration,
    /// Longest time from a kill until everything acknowledged before it was woken.
    slowest_recovery: Duration,
    coverage: Coverage,
    /// Cursor regressions and unexpected responses.
    violations: Vec<String>,
}

impl ModeReport for Report {
    fn passed(&self) -> bool {
        self.coverage.lost.is_empty()
            && self.coverage.late.is_empty()
            && self.violations.is_empty()
            && self.coverage.steady.count > 0
    }

    fn print_details(&self, mode: &str) {
        for (label, lines) in [
            ("lost wake", &self.coverage.lost),
            ("late wake", &self.coverage.late),
            ("violation", &self.violations),
        ] {
            for line in lines.iter().take(MAX_DETAILS) {
                println!("==> wake {mode}: {label}: {line}");
            }
            if lines.len() > MAX_DETAILS {
                println!(
                    "==> wake {mode}: {label}: ... and {} more",
                    lines.len() - MAX_DETAILS
                );
            }
        }
        if self.coverage.steady.count == 0 {
            println!("==> wake {mode}: no append was measured in steady state");
        }
        println!(
            "==> wake {mode}: {} wake events read, {} claims, {} answered ALREADY_CLAIMED, {} acks FENCED; slowest restart {}, slowest recovery {}",
            self.wake_events,
            self.claims,
            self.already_claimed,
            self.fenced,
            millis(self.slowest_restart),
            millis(self.slowest_recovery)
        );
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.coverage.steady;
        let d = &self.coverage.disturbed;
        write!(
            f,
            "{} streams, {} kills, {} appends acknowledged; wake latency p50 {}, p99 {}, max {} ({} steady appends); {} appends across kills woken after restart{}; {} lost, {} late (> 1 s), {} violations",
            self.streams,
            self.kills,
            self.appends,
            millis(s.p50),
            millis(s.p99),
            millis(s.max),
            s.count,
            d.count,
            if d.count > 0 {
                format!(" (max {})", millis(d.max))
            } else {
                String::new()
            },
            self.coverage.lost.len(),
            self.coverage.late.len(),
            self.violations.len()
        )
    }
}

/// `d` in milliseconds with one decimal: `12.3 ms`.
fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Runs the wake check; returns whether every built mode passed (and at
/// least one was built). Results are the final block: one `wake <mode>: ...`
/// line per mode, then `N passed, N failed` (modes).
pub(crate) fn run(root: &Path, options: &Options) -> Result<bool> {
    let binary =
        conformance::server_binary(root, options.skip_build, options.server_binary.as_deref())?;
    let seed = options.seed.unwrap_or_else(random_seed);
    println!("==> wake: seed {seed} (replay the schedule with --seed {seed})");

    Ok(modes::run_all("wake", &options.modes, |mode| {
        println!(
            "==> wake {}: {} streams, {} kills, {} appends/s, starting {}",
            mode.name(),
            options.streams,
            options.kills,
            options.rate,
            binary.display()
        );
        let mode_seed = mode.name().bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        wake_mode(&binary, mode, options, mode_seed)
    }))
}

/// Starts server processes for one mode on the same data directory.
struct Launcher<'a> {
    binary: &'a Path,
    mode: Backend,
    work_dir: &'a Path,
    data_dir: PathBuf,
    starts: u32,
    /// Per node, the number of its latest log (`server-{n}.log`).
    latest: Vec<u32>,
}

impl Launcher<'_> {
    /// Starts node `node` on `port` and waits for `/readyz`.
    fn start(&mut self, node: usize, port: u16) -> Result<(Server, Startup)> {
        self.starts += 1;
        if self.latest.len() <= node {
            self.latest.resize(node + 1, 0);
        }
        self.latest[node] = self.starts;
        let log_path = self.work_dir.join(format!("server-{}.log", self.starts));
        let mut env: Vec<(String, OsString)> = vec![
            (
                "DS_SERVER__BIND_ADDRESS".into(),
                format!("127.0.0.1:{port}").into(),
            ),
            ("DS_STORAGE__MODE".into(), self.mode.name().into()),
            (
                "DS_STORAGE__DATA_DIR".into(),
                self.data_dir.clone().into_os_string(),
            ),
            ("DS_OBSERVABILITY__RUST_LOG".into(), "warn".into()),
            (
                "DS_TRANSPORT__CONNECTION__LONG_POLL_TIMEOUT_SECS".into(),
                LONG_POLL_TIMEOUT_SECS.into(),
            ),
            (
                "DS_SUBSCRIPTIONS__CLUSTER_LEASE_MS".into(),
                CLUSTER_LEASE_MS.into(),
            ),
        ];
        env.extend(self.mode.storage_env(&self.data_dir));
        let mut server = Server::start(self.binary, self.work_dir, port, &env, &log_path)?;
        let startup = server.wait_ready()?;
        Ok((server, startup))
    }

    /// Restarts node `node` after a kill, on `port` if possible; returns the
    /// server and its port.
    fn restart(&mut self, node: usize, port: u16) -> Result<(Server, u16)> {
        let mut port = port;
        for attempt in 1..=START_ATTEMPTS {
            match self.start(node, port) {
                Ok((server, Startup::Ready)) => return Ok((server, port)),
                Ok((_, Startup::NotBuilt)) => {
                    bail!("the server claims the mode is not built on a restart")
                }
                Err(error) if attempt < START_ATTEMPTS => {
                    let next = server::free_loopback_port()?;
                    println!(
                        "==> wake {}: restart on port {port} failed ({}); trying port {next}",
                        self.mode.name(),
                        error.to_string().lines().next().unwrap_or("?")
                    );
                    port = next;
                }
                Err(error) => return Err(error.context("restarting the server")),
            }
        }
        bail!("no restart attempt left")
    }

    /// The tail of each node's latest server log, and the warnings and
    /// errors of every earlier one (a wake delayed or lost before the last
    /// restart left its trace there).
    fn log_report(&self) -> String {
        let read = |n: u32| {
            fs::read(self.work_dir.join(format!("server-{n}.log")))
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default()
        };
        let mut out = String::new();
        let earlier: Vec<String> = (1..self.starts)
            .filter(|n| !self.latest.contains(n))
            .flat_map(|n| {
                read(n)
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .map(|l| format!("    | server-{n}.log: {l}"))
                    .collect::<Vec<_>>()
            })
            .collect();
        if !earlier.is_empty() {
            out.push_str("warnings and errors of the earlier server runs:\n");
            out.push_str(&earlier[earlier.len().saturating_sub(40)..].join("\n"));
            out.push('\n');
        }
        for (node, &n) in self.latest.iter().enumerate() {
            let text = read(n);
            let lines: Vec<&str> = text.lines().collect();
            if node > 0 {
                out.push('\n');
            }
            let _ = writeln!(
                out,
                "latest server log tail of node {node} (server-{n}.log):"
            );
            if lines.is_empty() {
                out.push_str("    (server log is empty)");
            } else {
                let tail: Vec<String> = lines[lines.len().saturating_sub(40)..]
                    .iter()
                    .map(|line| format!("    | {line}"))
                    .collect();
                out.push_str(&tail.join("\n"));
            }
        }
        out
    }
}

/// Sends a request from the coordinating thread, retrying connection errors and 503.
fn request(
    client: &mut Client,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response> {
    let give_up = Instant::now() + REQUEST_RETRY_TIMEOUT;
    loop {
        match client.request(port, method, path, headers, body) {
            Ok(response) if response.status != 503 => return Ok(response),
            _ if Instant::now() < give_up => thread::sleep(RETRY_PAUSE),
            Ok(response) => bail!("{method} {path} answered {}", response.summary()),
            Err(error) => return Err(error.context(format!("{method} {path}"))),
        }
    }
}

/// Creates streams `indices` (empty, `text/plain`) from [`CREATORS`] threads.
fn create_streams(port: u16, indices: std::ops::Range<usize>) -> Result<()> {
    thread::scope(|scope| {
        let handles: Vec<_> = (0..CREATORS)
            .map(|t| {
                let indices = indices.clone();
                scope.spawn(move || -> Result<()> {
                    let mut client = Client::new(port);
                    for i in indices.filter(|i| i % CREATORS == t) {
                        let path = stream_path(i);
                        let r = request(
                            &mut client,
                            port,
                            "PUT",
                            &path,
                            &[("Content-Type", "text/plain")],
                            b"",
                        )?;
                        if !matches!(r.status, 200 | 201) {
                            bail!("creating {path} answered {}", r.summary());
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| anyhow::anyhow!("a stream-creating thread panicked"))?
        })
    })
}

/// The subscription's `acked_offset` per stream index (`None` for streams
/// it does not link), or `Ok(None)` when the subscription is gone.
fn acked_offsets(
    client: &mut Client,
    port: u16,
    streams: usize,
) -> Result<Option<Vec<Option<Off>>>> {
    let r = request(client, port, "GET", &subscription_path(), &[], b"")?;
    if r.status == 404 {
        return Ok(None);
    }
    if r.status != 200 {
        bail!("GET {} answered {}", subscription_path(), r.summary());
    }
    let value = json::parse(std::str::from_utf8(&r.body)?)?;
    let mut out = vec![None; streams];
    for s in value
        .get("streams")
        .and_then(Value::as_array)
        .context("the subscription has no streams array")?
    {
        let path = s.get("path").and_then(Value::as_str).unwrap_or_default();
        let index = path
            .strip_prefix("load/s")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&i| i < streams && stream_name(i) == path)
            .with_context(|| format!("the subscription links an unexpected stream {path:?}"))?;
        out[index] = s
            .get("acked_offset")
            .and_then(Value::as_str)
            .and_then(Off::parse);
    }
    Ok(Some(out))
}

/// What a stuck recovery looks like from outside: where the worker reads
/// the wake stream and its tail, and the subscription's wake state.
fn stuck_state(client: &mut Client, port: u16, shared: &Shared) -> String {
    let reading = lock(&shared.wake_offset).clone();
    let path = format!("{STREAM_BASE_PATH}/{WAKE_STREAM}");
    let tail = request(client, port, "HEAD", &path, &[], b"")
        .ok()
        .and_then(|r| r.header("stream-next-offset").map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    let sub = match request(client, port, "GET", &subscription_path(), &[], b"") {
        Ok(r) => {
            let body = String::from_utf8_lossy(&r.body);
            let status = body
                .find("\"status\"")
                .map_or("", |i| &body[i..(i + 20).min(body.len())]);
            format!("subscription {} {status}", r.status)
        }
        Err(e) => format!("subscription unreadable: {e:#}"),
    };
    format!("worker reads the wake stream at {reading}, its tail is {tail}; {sub}")
}

/// The tail of stream `index` (`HEAD`).
fn stream_tail(client: &mut Client, port: u16, index: usize) -> Result<Off> {
    let path = stream_path(index);
    let r = request(client, port, "HEAD", &path, &[], b"")?;
    if r.status != 200 {
        bail!("HEAD {path} answered {}", r.summary());
    }
    r.header("stream-next-offset")
        .and_then(Off::parse)
        .with_context(|| format!("HEAD {path} answered without a valid Stream-Next-Offset"))
}

/// Runs one mode: setup, load with kills, drain, verdict.
fn wake_mode(
    binary: &Path,
    mode: Backend,
    options: &Options,
    seed: u64,
) -> Result<Outcome<Box<Report>>> {
    let temp = TempDir::new(&format!("wake-{}", mode.name()))?;
    let data_dir = temp.path().join("data");
    fs::create_dir(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let mut launcher = Launcher {
        binary,
        mode,
        work_dir: temp.path(),
        data_dir: data_dir.clone(),
        starts: 0,
        latest: Vec::new(),
    };
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    // Node 0 starts first, so it takes the subscription lease on a shared store.
    for node in 0..node_count(mode) {
        let port = server::free_loopback_port()?;
        let (server, startup) = launcher.start(node, port)?;
        if let Startup::NotBuilt = startup {
            drop(server);
            drop(servers);
            temp.remove()?;
            return Ok(Outcome::NotBuilt);
        }
        servers.push(server);
        ports.push(port);
    }
    let mut run = Run {
        launcher,
        servers,
        ports,
        deadline: Instant::now() + time_limit(options.kills, options.streams),
    };
    let result = drive(&mut run, options, seed);
    for server in &mut run.servers {
        server.stop()?;
    }
    let logs = run.launcher.log_report();
    let outcome = match result {
        Ok(report) => Outcome::Tested(Box::new(report)),
        Err(error) => Outcome::Broken(format!("{error:#}\n{logs}")),
    };
    if let Outcome::Tested(report) = &outcome
        && !report.passed()
    {
        println!("==> wake {} {logs}", mode.name());
    }
    drop(run);
    mode.cleanup(&data_dir)?;
    temp.remove()?;
    Ok(outcome)
}

/// The coordinating side of one mode.
struct Run<'a> {
    launcher: Launcher<'a>,
    /// The server process of each node, and its port.
    servers: Vec<Server>,
    ports: Vec<u16>,
    deadline: Instant,
}

impl Run<'_> {
    /// The port of node 0 (for the coordinating thread's own requests).
    fn port(&self) -> u16 {
        self.ports[0]
    }

    /// The node holding the subscription lease on a shared store (waiting
    /// for one to take it, as after a kill); node 0 with a single node.
    fn lease_holder(&self) -> Result<usize> {
        if self.servers.len() == 1 {
            return Ok(0);
        }
        let give_up = Instant::now() + REQUEST_RETRY_TIMEOUT;
        loop {
            let pid = crate::pg::lease_holder_pid(&self.launcher.data_dir, "subscriptions")?;
            if let Some(node) = self
                .servers
                .iter()
                .position(|server| pid.is_some() && server.pid() == pid)
            {
                return Ok(node);
            }
            if Instant::now() >= give_up {
                bail!("no running node holds the subscriptions lease (holder pid {pid:?})");
            }
            thread::sleep(RETRY_PAUSE);
        }
    }

    fn check_deadline(&self, what: &str) -> Result<()> {
        if Instant::now() >= self.deadline {
            bail!("time limit exceeded {what}");
        }
        Ok(())
    }
}

/// Sets up the streams and the subscription, runs the load and the kill
/// loop, drains and judges.
#[allow(clippy::too_many_lines)] // one linear script of the run reads best in one place
fn drive(run: &mut Run<'_>, options: &Options, seed: u64) -> Result<Report> {
    let mode = run.launcher.mode.name();
    let streams = options.streams;
    let mut rng = Rng::new(seed);
    let mut client = Client::new(run.port());
    let mut violations = Vec::new();

    let setup = Instant::now();
    let wake = format!("{STREAM_BASE_PATH}/{WAKE_STREAM}");
    let r = request(
        &mut client,
        run.port(),
        "PUT",
        &wake,
        &[("Content-Type", "application/json")],
        b"",
    )?;
    if r.status != 201 {
        bail!("creating {wake} answered {}", r.summary());
    }
    let before = streams / 2;
    create_streams(run.port(), 0..before)?;
    let spec = format!(
        r#"{{"type":"pull-wake","pattern":"load/*","wake_stream":"{WAKE_STREAM}","lease_ttl_ms":{LEASE_TTL_MS},"description":"cargo xtask wake"}}"#
    );
    let r = request(
        &mut client,
        run.port(),
        "PUT",
        &subscription_path(),
        &[("Content-Type", "application/json")],
        spec.as_bytes(),
    )?;
    if r.status != 201 {
        bail!("creating the subscription answered {}", r.summary());
    }
    create_streams(run.port(), before..streams)?;
    let linked = acked_offsets(&mut client, run.port(), streams)?
        .context("the subscription vanished right after its creation")?;
    let missing = linked.iter().filter(|o| o.is_none()).count();
    if missing > 0 {
        violations.push(format!(
            "{missing} of {streams} matching streams are not linked after setup"
        ));
    }
    println!(
        "==> wake {mode}: {streams} streams created ({before} before the subscription) in {} ms",
        setup.elapsed().as_millis()
    );

    let shared = Shared::new(&run.ports, streams);
    let paths: Vec<String> = (0..streams).map(stream_name).collect();
    let interval = Duration::from_secs(PRODUCERS as u64) / options.rate.max(1);
    let producer_seeds: Vec<u64> = (0..PRODUCERS).map(|_| rng.next_u64()).collect();
    let mut kills: Vec<Kill> = Vec::new();
    // Each kill's time on the wall clock, to tell wake events stamped before it.
    let mut kill_clocks: Vec<u64> = Vec::new();
    let mut slowest_restart = Duration::ZERO;
    let mut slowest_recovery = Duration::ZERO;
    // The appends of the coordinating thread, just before each kill.
    let mut triggers = load::ProducerLog::default();

    let (producers, worker) = thread::scope(|scope| -> Result<_> {
        let shared = &shared;
        let _stop = StopOnDrop(shared);
        let worker = scope.spawn(|| Worker::new(shared, &paths).run());
        let producers: Vec<_> = producer_seeds
            .iter()
            .enumerate()
            .map(|(i, &seed)| {
                scope.spawn(move || load::produce(shared, streams, seed, interval, i))
            })
            .collect();

        for kill in 1..=options.kills {
            thread::sleep(Duration::from_millis(rng.range(WINDOW_MS.0, WINDOW_MS.1)));
            run.check_deadline("during the load")?;
            for (node, server) in run.servers.iter_mut().enumerate() {
                if let Err(error) = server.check_running() {
                    violations.push(format!("before kill #{kill}: node {node}: {error:#}"));
                }
            }
            // With two nodes, each kill hits the node holding the
            // subscription lease: the one delivering wakes.
            let victim = run.lease_holder()?;
            let survivor = (victim + 1) % run.servers.len();
            // No new appends from here until the restarted server has woken
            // the worker for everything acknowledged before the kill: no
            // later append can cover for a wake the restart lost.
            shared.paused.store(true, Ordering::SeqCst);
            // A burst of appends from another thread, and the kill 0 to 0.6 ms
            // after it starts: before an append arrives, while it is applied,
            // or while the wake it causes is on its way (not yet logged,
            // logged but its event unwritten, written, claimed but not acked).
            // Whatever the server applied is owed a wake, acknowledged or not.
            thread::sleep(Duration::from_millis(rng.range(0, 20)));
            let burst: Vec<usize> = (0..rng.range(1, 3))
                .map(|_| rng.range(0, streams as u64 - 1) as usize)
                .collect();
            // Tails before the burst: an empty stream the burst did not
            // reach owes nothing.
            let before: Vec<Off> = burst
                .iter()
                .map(|&stream| stream_tail(&mut client, run.ports[victim], stream))
                .collect::<Result<_>>()?;
            let burst_seed = rng.next_u64();
            let delay = Duration::from_micros(rng.range(0, 600));
            let mut burst_acked = 0;
            let burst_ref = &burst;
            let (at, at_unix_ms) = thread::scope(|inner| -> Result<(Instant, u64)> {
                let (ready_tx, ready) = std::sync::mpsc::channel();
                let appender = inner.spawn(move || {
                    let burst = burst_ref;
                    let port = shared.port(victim);
                    let mut client = Client::new(port);
                    // Connected before the clock starts: the delay is
                    // measured from the first append's request.
                    let _ = client.request(port, "HEAD", &stream_path(burst[0]), &[], b"");
                    let _ = ready_tx.send(());
                    let mut rng = Rng::new(burst_seed);
                    let mut log = load::ProducerLog::default();
                    for &stream in burst {
                        load::append(shared, &mut client, port, stream, &mut rng, &mut log);
                    }
                    log
                });
                let _ = ready.recv();
                thread::sleep(delay);
                let at = Instant::now();
                let at_unix_ms = load::unix_ms();
                run.servers[victim].stop()?;
                let log = appender
                    .join()
                    .map_err(|_| anyhow::anyhow!("the burst thread panicked"))?;
                burst_acked = log.appends.len();
                triggers.appends.extend(log.appends);
                triggers.violations.extend(log.violations);
                Ok((at, at_unix_ms))
            })?;
            kills.push(Kill {
                at,
                recovered_at: None,
            });
            kill_clocks.push(at_unix_ms);
            let (server, port) = run.launcher.restart(victim, run.ports[victim])?;
            run.servers[victim] = server;
            run.ports[victim] = port;
            shared.set_port(victim, port);
            let restart = at.elapsed();
            slowest_restart = slowest_restart.max(restart);
            // The restarted node first: on a shared store it forwards to the
            // node that took over.
            if acked_offsets(&mut client, port, streams)?.is_none() {
                violations.push(format!("after kill #{kill}: the subscription is gone"));
            }
            for (&stream, &before) in burst.iter().zip(&before) {
                let tail = stream_tail(&mut client, port, stream)?;
                if tail > before {
                    let mut appended = lock(&shared.appended);
                    appended[stream] = appended[stream].max(Some(tail));
                }
            }
            let give_up = (Instant::now() + RECOVERY_TIMEOUT).min(run.deadline);
            while shared.uncovered() > 0 && Instant::now() < give_up {
                thread::sleep(Duration::from_millis(5));
            }
            let recovered = at.elapsed();
            slowest_recovery = slowest_recovery.max(recovered);
            let stuck = shared.uncovered();
            if stuck > 0 {
                violations.push(format!(
                    "after kill #{kill}: {stuck} streams with data written before the kill (acknowledged, or found by HEAD after the restart) were not woken within {} s of the restart ({})",
                    RECOVERY_TIMEOUT.as_secs(),
                    stuck_state(&mut client, run.ports[survivor], shared)
                ));
            }
            shared.paused.store(false, Ordering::SeqCst);
            println!(
                "==> wake {mode}: kill {kill}, {} µs after a burst of {} appends ({} acknowledged): restarted in {}, everything written before it woken {} after the kill; {} appends acknowledged, {} claims so far",
                delay.as_micros(),
                burst.len(),
                burst_acked,
                millis(restart),
                millis(recovered),
                shared.appends.load(Ordering::Relaxed),
                shared.claims.load(Ordering::Relaxed)
            );
        }
        thread::sleep(Duration::from_millis(rng.range(WINDOW_MS.0, WINDOW_MS.1)));
        shared.stop_load.store(true, Ordering::SeqCst);
        let producers: Vec<load::ProducerLog> = producers
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a producer panicked")))
            .collect::<Result<_>>()?;

        let drain = Instant::now();
        let give_up = (drain + DRAIN_TIMEOUT).min(run.deadline);
        while shared.uncovered() > 0 && Instant::now() < give_up {
            thread::sleep(RETRY_PAUSE);
        }
        println!(
            "==> wake {mode}: load stopped; {} streams still uncovered after {} ms of draining",
            shared.uncovered(),
            drain.elapsed().as_millis()
        );
        shared.stop_worker.store(true, Ordering::SeqCst);
        let worker = worker
            .join()
            .map_err(|_| anyhow::anyhow!("the worker panicked"))?;
        Ok((producers, worker))
    })?;

    // Cursors at the end: never behind what the server confirmed, and up to
    // every acknowledged append once the worker has drained.
    let appended = lock(&shared.appended).clone();
    match acked_offsets(&mut client, run.port(), streams)? {
        None => violations.push("at the end: the subscription is gone".to_owned()),
        Some(acked) => {
            for (i, acked) in acked.iter().enumerate() {
                let name = stream_name(i);
                if let Some(confirmed) = worker.confirmed[i]
                    && *acked < Some(confirmed)
                {
                    violations.push(format!(
                        "{name}: acked_offset {} is behind the ack to {confirmed} the server confirmed",
                        acked.map_or_else(|| "absent".to_owned(), |o| o.to_string())
                    ));
                }
                if let Some(last) = appended[i]
                    && *acked < Some(last)
                {
                    violations.push(format!(
                        "{name}: acked_offset {} never reached the last acknowledged append ({last})",
                        acked.map_or_else(|| "absent".to_owned(), |o| o.to_string())
                    ));
                }
            }
        }
    }

    for (kill, &at_unix_ms) in kills.iter_mut().zip(&kill_clocks) {
        kill.recovered_at = analysis::recovery(&worker.claims, kill.at, at_unix_ms);
    }
    let mut appends = Vec::new();
    for log in producers.into_iter().chain([triggers]) {
        appends.extend(log.appends);
        violations.extend(log.violations);
    }
    violations.extend(worker.violations);
    let coverage = analysis::analyse(&appends, &worker.claims, &kills, &stream_name);
    Ok(Report {
        streams,
        kills: options.kills,
        appends: appends.len(),
        claims: worker.claims.len(),
        wake_events: worker.wake_events,
        already_claimed: worker.already_claimed,
        fenced: worker.fenced,
        slowest_restart,
        slowest_recovery,
        coverage,
        violations,
    })
}

/// Stops the producers and the worker when dropped, so an error in the
/// coordinating thread cannot leave them running.
struct StopOnDrop<'a>(&'a Shared);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop_load.store(true, Ordering::SeqCst);
        self.0.stop_worker.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::{ModeReport, Outcome, Report, stream_name, time_limit};
    use crate::wake::analysis::{Coverage, Latencies};
    use std::time::Duration;

    #[test]
    fn stream_names_sort_in_index_order() {
        assert_eq!(stream_name(7), "load/s0007");
        assert!(stream_name(999) < stream_name(1000));
    }

    #[test]
    fn report_line_and_verdict() {
        let ms = Duration::from_millis;
        let mut report = Report {
            streams: 1000,
            kills: 5,
            appends: 4000,
            coverage: Coverage {
                steady: Latencies {
                    count: 3800,
                    p50: ms(8),
                    p99: ms(40),
                    max: ms(90),
                },
                disturbed: Latencies {
                    count: 200,
                    p50: ms(500),
                    p99: ms(1400),
                    max: ms(1500),
                },
                ..Coverage::default()
            },
            ..Report::default()
        };
        assert!(report.passed());
        assert_eq!(
            report.to_string(),
            "1000 streams, 5 kills, 4000 appends acknowledged; wake latency p50 8.0 ms, p99 40.0 ms, \
             max 90.0 ms (3800 steady appends); 200 appends across kills woken after restart \
             (max 1500.0 ms); 0 lost, 0 late (> 1 s), 0 violations"
        );
        report.coverage.lost.push("x".into());
        assert!(!report.passed());
        assert!(Outcome::Tested(Box::new(report)).is_failure());
        assert!(!Outcome::<Box<Report>>::NotBuilt.is_failure());
        let idle = Report::default();
        assert!(!idle.passed(), "a run that measured nothing fails");
        assert!(time_limit(5, 1000) > Duration::from_secs(100));
    }
}
