//! `cargo xtask crash`: kills the server with SIGKILL again and again under
//! a write load of idempotent producers, restarts it on the same data
//! directory, and checks that every acknowledged append survived exactly
//! once, in order and intact, and that a stream closed mid-run stays closed.
//!
//! Per storage mode:
//!
//! 1. Start the server on a fresh data directory and a free loopback port;
//!    create the streams `crash-0` to `crash-3` (`text/plain`).
//! 2. Run 8 producers (threads), two per stream. Producer `i` appends with
//!    `Producer-Id: p<i>`, `Producer-Epoch: 0` and `Producer-Seq: 0, 1, ...`,
//!    one self-checking line per append (see [`record`]). It sends seq `n+1`
//!    only once `n` was acknowledged (200 new, 204 duplicate), and retries an
//!    unacknowledged append with the same seq and body through connection
//!    errors and restarts.
//! 3. Kill loop, `--kills` times: let the load run 50 to 400 ms (seeded),
//!    SIGKILL the server, restart it on the same data directory, wait for
//!    `/readyz` and for every producer to get its in-flight append
//!    acknowledged. Before one kill in the middle of the run one stream is
//!    closed (`POST` with `Stream-Closed: true`, expecting 204); nothing may
//!    follow the tail the close reported, its producers must then get `409`
//!    with `Stream-Closed: true`, and every later restart must still show
//!    the stream closed (`HEAD`) with the same tail. The last kill stops the
//!    producers instead of letting them retry, so their final appends stay
//!    unacknowledged.
//! 4. After the last restart, read every stream from `offset=-1` to its tail
//!    and check it against the acknowledgements ([`verify`]).
//!
//! The seed fixes the schedule (load windows, which stream is closed and
//! when, the padding of every record), not the thread interleaving; it is
//! printed so that `--seed` can replay a failing schedule.
//!
//! With the `postgres` backend, each load window also has every database
//! connection of the server terminated halfway through (`pg::reset_connections`).

mod record;
mod verify;

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub(crate) use self::record::Rng;
use self::record::{fnv1a64, make_line};
use self::verify::{Findings, ProducerLog};
use crate::conformance::{self, Backend};
use crate::http::{self, Client, Response};
use crate::modes::{self, ModeReport, Outcome, random_seed};
use crate::server::{self, Server, Startup};
use crate::tempdir::TempDir;

/// Storage modes `--mode all` runs: the durable ones (postgres needs the database of
/// `DS_TEST_POSTGRES_URL`, see `pg`).
pub(crate) const DURABLE_MODES: [Backend; 4] = [
    Backend::FileFast,
    Backend::FileDurable,
    Backend::Acid,
    Backend::Postgres,
];

/// Number of streams written.
const STREAMS: usize = 4;
/// Producers per stream.
const PRODUCERS_PER_STREAM: usize = 2;
/// Number of producers.
const PRODUCERS: usize = STREAMS * PRODUCERS_PER_STREAM;
/// Shortest stretch of load between two kills, in milliseconds.
const LOAD_MIN_MS: u64 = 50;
/// Longest stretch of load between two kills, in milliseconds.
const LOAD_MAX_MS: u64 = 400;
/// Pause before retrying a request that found no server.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// How long the producers may take to get an append acknowledged after a restart.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a request of the coordinating thread may keep failing to connect.
const REQUEST_RETRY_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts to restart the server (the first on the old port, then fresh ports).
const START_ATTEMPTS: usize = 3;
/// `limits.max_stream_bytes`, large enough never to interfere.
const MAX_STREAM_BYTES: &str = "1073741824";
/// Findings listed per category before the rest is summarised.
const MAX_DETAILS: usize = 20;
/// Where the server mounts streams.
const STREAM_BASE_PATH: &str = "/v1/stream";

/// Time limit of one mode: generous for a healthy server, bounded for a sick one.
fn time_limit(kills: u32) -> Duration {
    Duration::from_secs(60) + Duration::from_secs(3) * kills
}

/// Options of one `crash` invocation.
#[derive(Debug)]
pub(crate) struct Options {
    /// Storage modes to test, in order, without duplicates.
    pub(crate) modes: Vec<Backend>,
    /// How many times to kill the server per mode (at least 1).
    pub(crate) kills: u32,
    /// Seed of the schedule; random if not given.
    pub(crate) seed: Option<u64>,
    /// Use the existing release binary instead of building it.
    pub(crate) skip_build: bool,
    /// Test this binary instead of the workspace's release build (implies no build).
    pub(crate) server_binary: Option<PathBuf>,
}

/// The verdict on one mode.
#[derive(Debug, Default)]
struct Report {
    /// Kills performed.
    kills: u32,
    /// Appends acknowledged over the whole run.
    acknowledged: u64,
    /// What the final read found.
    findings: Findings,
    /// Protocol violations seen while running: unexpected responses,
    /// appends accepted after the close, a reopened stream, a stuck producer.
    violations: Vec<String>,
    /// Whether the close was acknowledged and every later check saw it.
    closure_survived: bool,
    /// Requests answered 503 and retried (reported, not a failure).
    unavailable: u64,
}

impl ModeReport for Report {
    fn passed(&self) -> bool {
        self.findings.is_clean() && self.violations.is_empty() && self.closure_survived
    }

    /// Prints every finding and violation (bounded per category).
    fn print_details(&self, mode: &str) {
        let f = &self.findings;
        for (label, lines) in [
            ("lost", &f.lost),
            ("duplicated", &f.duplicated),
            ("torn", &f.torn),
            ("out of order", &f.out_of_order),
            ("unexpected", &f.unexpected),
            ("violation", &self.violations),
        ] {
            for line in lines.iter().take(MAX_DETAILS) {
                println!("==> crash {mode}: {label}: {line}");
            }
            if lines.len() > MAX_DETAILS {
                println!(
                    "==> crash {mode}: {label}: ... and {} more",
                    lines.len() - MAX_DETAILS
                );
            }
        }
        if self.unavailable > 0 {
            println!(
                "==> crash {mode}: {} requests were answered 503 and retried",
                self.unavailable
            );
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let found = &self.findings;
        write!(
            f,
            "{} kills, {} acknowledged appends, {} lost, {} duplicated, {} torn, {} out of order, {}",
            self.kills,
            self.acknowledged,
            found.lost.len(),
            found.duplicated.len(),
            found.torn.len(),
            found.out_of_order.len(),
            if self.closure_survived {
                "closure survived"
            } else {
                "closure FAILED"
            }
        )?;
        if !found.unexpected.is_empty() {
            write!(f, ", {} unexpected records", found.unexpected.len())?;
        }
        if !self.violations.is_empty() {
            write!(f, ", {} protocol violations", self.violations.len())?;
        }
        Ok(())
    }
}

/// Runs the crash test; returns whether every built mode passed (and at
/// least one was built).
///
/// Progress and diagnostics go out on lines starting with `==>`; the results
/// are the final block: one `crash <mode>: ...` line per mode, then
/// `N passed, N failed` (modes).
pub(crate) fn run(root: &Path, options: &Options) -> Result<bool> {
    let binary =
        conformance::server_binary(root, options.skip_build, options.server_binary.as_deref())?;
    let seed = options.seed.unwrap_or_else(random_seed);
    println!("==> crash: seed {seed} (replay the schedule with --seed {seed})");

    Ok(modes::run_all("crash", &options.modes, |mode| {
        println!(
            "==> crash {}: {} kills, starting {}",
            mode.name(),
            options.kills,
            binary.display()
        );
        let mode_seed = seed ^ fnv1a64(mode.name().as_bytes());
        crash_mode(&binary, mode, options.kills, mode_seed)
    }))
}

/// The path of stream `index`.
fn stream_name(index: usize) -> String {
    format!("crash-{index}")
}

/// The URL path of stream `index`.
fn stream_path(index: usize) -> String {
    format!("{STREAM_BASE_PATH}/{}", stream_name(index))
}

/// Starts server processes for one mode, each with its own log file.
struct Launcher<'a> {
    /// The server binary.
    binary: &'a Path,
    /// The storage mode.
    mode: Backend,
    /// Working directory, also home of the logs.
    work_dir: &'a Path,
    /// The data directory, the same for every start.
    data_dir: PathBuf,
    /// Starts so far.
    starts: u32,
    /// Log of the latest start.
    last_log: Option<PathBuf>,
}

impl Launcher<'_> {
    /// Starts the server on `port` and waits for it to be ready.
    fn start(&mut self, port: u16) -> Result<(Server, Startup)> {
        self.starts += 1;
        let log_path = self.work_dir.join(format!("server-{}.log", self.starts));
        self.last_log = Some(log_path.clone());
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
                "DS_LIMITS__MAX_STREAM_BYTES".into(),
                MAX_STREAM_BYTES.into(),
            ),
        ];
        // The same data dir means the same postgres schema on every restart.
        env.extend(self.mode.storage_env(&self.data_dir));
        let mut server = Server::start(self.binary, self.work_dir, port, &env, &log_path)?;
        let startup = server.wait_ready()?;
        Ok((server, startup))
    }

    /// Restarts the server after a kill, on `port` if possible, else on a
    /// fresh port; returns it and its port.
    fn restart(&mut self, port: u16) -> Result<(Server, u16)> {
        let mut port = port;
        let mut attempt = 1;
        loop {
            match self.start(port) {
                Ok((server, Startup::Ready)) => return Ok((server, port)),
                Ok((_, Startup::NotBuilt)) => {
                    bail!("the server claims the mode is not built on a restart")
                }
                Err(error) if attempt < START_ATTEMPTS => {
                    let next = server::free_loopback_port()?;
                    println!(
                        "==> crash {}: restart on port {port} failed ({}); trying port {next}",
                        self.mode.name(),
                        error.to_string().lines().next().unwrap_or("?")
                    );
                    port = next;
                    attempt += 1;
                }
                Err(error) => return Err(error.context("restarting the server")),
            }
        }
    }

    /// The tail of the latest server log.
    fn last_log_tail(&self) -> String {
        let text = self
            .last_log
            .as_ref()
            .and_then(|path| fs::read(path).ok())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.is_empty() {
            return "    (server log is empty)".to_owned();
        }
        lines[lines.len().saturating_sub(40)..]
            .iter()
            .map(|line| format!("    | {line}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// State shared between the producers and the coordinating thread.
struct Shared {
    /// Port of the current server.
    port: AtomicU16,
    /// Tells the producers to stop (checked before every attempt).
    stop: AtomicBool,
    /// Per stream: the close request has been sent.
    close_issued: [AtomicBool; STREAMS],
    /// Per stream: the close was acknowledged.
    close_acked: [AtomicBool; STREAMS],
    /// Per producer: appends acknowledged so far.
    acks: [AtomicU64; PRODUCERS],
    /// Per producer: it has ended.
    done: [AtomicBool; PRODUCERS],
}

impl Shared {
    /// Fresh state for a server on `port`.
    fn new(port: u16) -> Self {
        Self {
            port: AtomicU16::new(port),
            stop: AtomicBool::new(false),
            close_issued: [const { AtomicBool::new(false) }; STREAMS],
            close_acked: [const { AtomicBool::new(false) }; STREAMS],
            acks: [const { AtomicU64::new(0) }; PRODUCERS],
            done: [const { AtomicBool::new(false) }; PRODUCERS],
        }
    }
}

/// Sets the stop flag when dropped, so producers end whatever happens.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What one producer thread reports.
#[derive(Debug, Default)]
struct ProducerResult {
    /// Its acknowledgements and in-flight append.
    log: ProducerLog,
    /// Protocol violations it saw.
    violations: Vec<String>,
    /// Responses 503 it retried.
    unavailable: u64,
}

/// One producer: appends seq 0, 1, ... to stream `stream` until told to
/// stop, the stream is closed, or the server answers something unexpected.
fn produce(shared: &Shared, id: u32, stream: usize, seed: u64) -> ProducerResult {
    let index = id as usize;
    let mut rng = Rng::new(seed);
    let mut client = Client::new(shared.port.load(Ordering::SeqCst));
    let path = stream_path(stream);
    let name = stream_name(stream);
    let producer_id = format!("p{id}");
    let mut result = ProducerResult {
        log: ProducerLog {
            id,
            stream,
            ..ProducerLog::default()
        },
        ..ProducerResult::default()
    };

    let mut seq: u64 = 0;
    'appends: loop {
        let body = make_line(id, seq, &mut rng);
        let seq_text = seq.to_string();
        let mut attempted = false;
        loop {
            if shared.stop.load(Ordering::SeqCst) {
                if attempted {
                    result.log.in_flight = Some(seq);
                }
                break 'appends;
            }
            let sent_after_close = shared.close_acked[stream].load(Ordering::SeqCst);
            attempted = true;
            let response = client.request(
                shared.port.load(Ordering::SeqCst),
                "POST",
                &path,
                &[
                    ("Content-Type", "text/plain"),
                    ("Producer-Id", &producer_id),
                    ("Producer-Epoch", "0"),
                    ("Producer-Seq", &seq_text),
                ],
                &body,
            );
            let Ok(response) = response else {
                thread::sleep(RETRY_PAUSE);
                continue;
            };
            match response.status {
                200 | 204 => {
                    if response.status == 200 && sent_after_close {
                        result.violations.push(format!(
                            "stream {name}: producer {producer_id} seq {seq}: append sent after the \
                             close was acknowledged was accepted (200)"
                        ));
                    }
                    result.log.acked.push(seq);
                    shared.acks[index].fetch_add(1, Ordering::SeqCst);
                    break;
                }
                409 if response.flag("stream-closed")
                    && shared.close_issued[stream].load(Ordering::SeqCst) =>
                {
                    // The stream was closed: this producer is done.
                    result.log.in_flight = Some(seq);
                    break 'appends;
                }
                503 => {
                    result.unavailable += 1;
                    thread::sleep(RETRY_PAUSE);
                }
                _ => {
                    result.violations.push(format!(
                        "stream {name}: producer {producer_id} seq {seq}: unexpected response {}",
                        describe(&response)
                    ));
                    result.log.in_flight = Some(seq);
                    break 'appends;
                }
            }
        }
        seq += 1;
    }
    shared.done[index].store(true, Ordering::SeqCst);
    result
}

/// Status, closure flag and body start of a response, for reports.
fn describe(response: &Response) -> String {
    if response.flag("stream-closed") {
        format!("{} (Stream-Closed: true)", response.summary())
    } else {
        response.summary()
    }
}

/// The stream closed mid-run and what became of its closure.
#[derive(Debug)]
struct Closure {
    /// Index of the stream.
    stream: usize,
    /// It is closed just before this kill's load window.
    before_kill: u32,
    /// The close was acknowledged.
    acked: bool,
    /// The tail right after the close (from `HEAD`): final.
    final_offset: Option<String>,
    /// Whether every check so far passed.
    intact: bool,
}

/// The coordinating side of one mode's run.
struct Run<'a> {
    /// Starts servers.
    launcher: Launcher<'a>,
    /// The current server.
    server: Server,
    /// Its port.
    port: u16,
    /// Client of the coordinating thread.
    client: Client,
    /// The schedule.
    rng: Rng,
    /// When the mode must be done.
    deadline: Instant,
    /// The stream to close.
    closure: Closure,
    /// Violations seen by the coordinating thread.
    violations: Vec<String>,
    /// Kills performed.
    kills: u32,
}

impl Run<'_> {
    /// Sends a request, retrying connection errors and 503 for a while.
    fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response> {
        let give_up = Instant::now() + REQUEST_RETRY_TIMEOUT;
        loop {
            match self.client.request(self.port, method, path, headers, body) {
                Ok(response) if response.status != 503 => return Ok(response),
                _ if Instant::now() < give_up => {}
                Ok(response) => bail!("{method} {path} answered {}", response.summary()),
                Err(error) => return Err(error.context(format!("{method} {path}"))),
            }
            thread::sleep(RETRY_PAUSE * 5);
        }
    }

    /// Creates the streams.
    fn create_streams(&mut self) -> Result<()> {
        for stream in 0..STREAMS {
            let path = stream_path(stream);
            let response = self.request("PUT", &path, &[("Content-Type", "text/plain")], b"")?;
            if !matches!(response.status, 200 | 201) {
                bail!("creating {path} answered {}", describe(&response));
            }
        }
        Ok(())
    }

    /// Closes the chosen stream.
    fn close_stream(&mut self, shared: &Shared) -> Result<()> {
        let stream = self.closure.stream;
        let name = stream_name(stream);
        println!(
            "==> crash {}: closing stream {name} before kill #{}",
            self.launcher.mode.name(),
            self.closure.before_kill
        );
        shared.close_issued[stream].store(true, Ordering::SeqCst);
        let response = self.request(
            "POST",
            &stream_path(stream),
            &[("Stream-Closed", "true")],
            b"",
        )?;
        if response.status != 204 {
            self.closure.intact = false;
            self.violations.push(format!(
                "stream {name}: close answered {} instead of 204",
                describe(&response)
            ));
            return Ok(());
        }
        self.closure.acked = true;
        shared.close_acked[stream].store(true, Ordering::SeqCst);
        let Some(closed_at) = response.header("stream-next-offset").map(str::to_owned) else {
            self.violations.push(format!(
                "stream {name}: close answered 204 without Stream-Next-Offset"
            ));
            return Ok(());
        };
        self.check_nothing_after_close(&name, &closed_at)?;
        // Later checks compare with the tail as it stands now.
        let head = self.request("HEAD", &stream_path(stream), &[], b"")?;
        self.closure.final_offset = head.header("stream-next-offset").map(str::to_owned);
        Ok(())
    }

    /// Reads the closed stream from the tail its close reported: nothing may
    /// follow. Data there means an append concurrent with the close was
    /// accepted after it (or the close reported a stale tail); either way a
    /// reader told "closed at this offset" would miss it.
    fn check_nothing_after_close(&mut self, name: &str, closed_at: &str) -> Result<()> {
        let url = format!(
            "{STREAM_BASE_PATH}/{name}?offset={}",
            http::encode_query_value(closed_at)
        );
        let response = self.request("GET", &url, &[], b"")?;
        if response.status != 200 {
            self.violations.push(format!(
                "stream {name}: reading from the tail the close reported answered {}",
                describe(&response)
            ));
        } else if !response.body.is_empty() {
            let records: Vec<String> = response
                .body
                .split(|&b| b == b'\n')
                .filter_map(|line| record::parse_line(line).ok())
                .map(|(producer, seq)| format!("p{producer} seq {seq}"))
                .collect();
            self.violations.push(format!(
                "stream {name}: the close answered Stream-Next-Offset {closed_at}, yet {} bytes \
                 follow it ({}): an append racing the close was accepted after it, or the close \
                 reported a stale tail",
                response.body.len(),
                records.join(", ")
            ));
        } else if !response.flag("stream-closed") {
            self.violations.push(format!(
                "stream {name}: reading at the tail right after the close lacks Stream-Closed: true"
            ));
        }
        Ok(())
    }

    /// Checks with `HEAD` that the closed stream is still closed, with the
    /// tail it had right after the close.
    fn check_closed(&mut self) -> Result<()> {
        if !self.closure.acked {
            return Ok(());
        }
        let name = stream_name(self.closure.stream);
        let response = self.request("HEAD", &stream_path(self.closure.stream), &[], b"")?;
        let problem = if response.status != 200 {
            Some(format!("HEAD answered {}", response.status))
        } else if !response.flag("stream-closed") {
            Some("the stream is open again (HEAD without Stream-Closed: true)".to_owned())
        } else {
            match (
                &self.closure.final_offset,
                response.header("stream-next-offset"),
            ) {
                (Some(closed_at), Some(now)) if closed_at != now => Some(format!(
                    "the tail moved from {closed_at} (right after the close) to {now}"
                )),
                _ => None,
            }
        };
        if let Some(problem) = problem {
            self.closure.intact = false;
            self.violations.push(format!(
                "stream {name}: after kill #{}: {problem}",
                self.kills
            ));
        }
        Ok(())
    }

    /// SIGKILLs the server; a server that already exited on its own is a
    /// violation (the kill would hide its crash).
    fn kill(&mut self) -> Result<()> {
        if let Err(error) = self.server.check_running() {
            self.violations
                .push(format!("before kill #{}: {error:#}", self.kills + 1));
        }
        self.server.stop()?;
        self.kills += 1;
        Ok(())
    }

    /// Restarts the server after a kill and tells the producers its port.
    fn restart(&mut self, shared: &Shared) -> Result<()> {
        let (server, port) = self.launcher.restart(self.port)?;
        self.server = server;
        self.port = port;
        shared.port.store(port, Ordering::SeqCst);
        Ok(())
    }

    /// Waits until every producer still running got an append acknowledged
    /// since `before` (its ack counts then); a producer that does not is a
    /// violation.
    fn wait_for_progress(&mut self, shared: &Shared, before: &[u64; PRODUCERS]) {
        let give_up = (Instant::now() + PROGRESS_TIMEOUT).min(self.deadline);
        loop {
            let stuck: Vec<usize> = (0..PRODUCERS)
                .filter(|&i| {
                    !shared.done[i].load(Ordering::SeqCst)
                        && shared.acks[i].load(Ordering::SeqCst) <= before[i]
                })
                .collect();
            if stuck.is_empty() {
                return;
            }
            if Instant::now() >= give_up {
                let names: Vec<String> = stuck.iter().map(|i| format!("p{i}")).collect();
                self.violations.push(format!(
                    "after kill #{}: producers {} got no append acknowledged within {}s",
                    self.kills,
                    names.join(", "),
                    PROGRESS_TIMEOUT.as_secs()
                ));
                return;
            }
            thread::sleep(RETRY_PAUSE);
        }
    }

    /// Reads stream `index` from the start to the tail; returns its bytes
    /// and whether the last response carried `Stream-Closed: true`.
    fn read_stream(&mut self, index: usize) -> Result<(Vec<u8>, bool)> {
        let path = stream_path(index);
        let mut content = Vec::new();
        let mut offset = "-1".to_owned();
        loop {
            if Instant::now() >= self.deadline {
                bail!("reading {path} did not finish within the time limit");
            }
            let url = format!("{path}?offset={}", http::encode_query_value(&offset));
            let response = self.request("GET", &url, &[], b"")?;
            if response.status != 200 {
                bail!("GET {url} answered {}", describe(&response));
            }
            content.extend_from_slice(&response.body);
            let next = response
                .header("stream-next-offset")
                .with_context(|| format!("GET {url} answered without Stream-Next-Offset"))?
                .to_owned();
            if response.flag("stream-up-to-date") {
                return Ok((content, response.flag("stream-closed")));
            }
            if response.body.is_empty() && next == offset {
                bail!("GET {url} made no progress and is not up to date");
            }
            offset = next;
        }
    }
}

/// Runs the crash loop for one mode.
fn crash_mode(binary: &Path, mode: Backend, kills: u32, seed: u64) -> Result<Outcome<Report>> {
    let temp = TempDir::new(&format!("crash-{}", mode.name()))?;
    let data_dir = temp.path().join("data");
    fs::create_dir(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let mut launcher = Launcher {
        binary,
        mode,
        work_dir: temp.path(),
        data_dir: data_dir.clone(),
        starts: 0,
        last_log: None,
    };
    let port = server::free_loopback_port()?;
    let (server, startup) = launcher.start(port)?;
    if let Startup::NotBuilt = startup {
        drop(server);
        drop(launcher);
        mode.cleanup(&data_dir)?;
        temp.remove()?;
        return Ok(Outcome::NotBuilt);
    }

    let mut rng = Rng::new(seed);
    let close_before_kill =
        (1 + kills / 4 + rng.range(0, u64::from((kills / 2).max(1)) - 1) as u32).min(kills);
    let closed_stream = rng.range(0, STREAMS as u64 - 1) as usize;
    let producer_seeds: Vec<u64> = (0..PRODUCERS).map(|_| rng.next_u64()).collect();
    let mut run = Run {
        launcher,
        server,
        port,
        client: Client::new(port),
        rng,
        deadline: Instant::now() + time_limit(kills),
        closure: Closure {
            stream: closed_stream,
            before_kill: close_before_kill,
            acked: false,
            final_offset: None,
            intact: true,
        },
        violations: Vec::new(),
        kills: 0,
    };

    let result = drive(&mut run, kills, &producer_seeds);
    let log_tail = run.launcher.last_log_tail();
    run.server.stop()?;
    let outcome = match result {
        Ok(report) => Outcome::Tested(report),
        Err(error) => Outcome::Broken(format!(
            "{error:#} (after {} kills)\nlatest server log tail:\n{log_tail}",
            run.kills
        )),
    };
    if outcome.is_failure() && matches!(outcome, Outcome::Tested(_)) {
        println!(
            "==> crash {} latest server log tail:\n{log_tail}",
            mode.name()
        );
    }
    drop(run);
    mode.cleanup(&data_dir)?;
    temp.remove()?;
    Ok(outcome)
}

/// Creates the streams, runs the producers and the kill loop, and verifies.
fn drive(run: &mut Run<'_>, kills: u32, producer_seeds: &[u64]) -> Result<Report> {
    run.create_streams()?;
    let shared = Shared::new(run.port);
    let mode = run.launcher.mode.name();

    let producers: Vec<ProducerResult> = thread::scope(|scope| -> Result<Vec<ProducerResult>> {
        let _stop = StopOnDrop(&shared.stop);
        let shared = &shared;
        let mut handles: Vec<_> = producer_seeds
            .iter()
            .enumerate()
            .map(|(index, &seed)| {
                scope.spawn(move || {
                    produce(shared, index as u32, index / PRODUCERS_PER_STREAM, seed)
                })
            })
            .collect();
        let mut results = Vec::new();

        for kill in 1..=kills {
            if kill == run.closure.before_kill {
                run.close_stream(shared)?;
            }
            let window = Duration::from_millis(run.rng.range(LOAD_MIN_MS, LOAD_MAX_MS));
            if run.launcher.mode == Backend::Postgres {
                // Halfway through the window the database drops every connection of the
                // server (as a database restart would); the server must recover without
                // losing or duplicating anything, then it is killed as usual.
                let half = window / 2;
                thread::sleep(half);
                let reset = crate::pg::reset_connections(&run.launcher.data_dir)?;
                if reset == 0 {
                    bail!("the server had no database connection to reset");
                }
                thread::sleep(half);
            } else {
                thread::sleep(window);
            }
            if Instant::now() >= run.deadline {
                bail!("time limit exceeded");
            }
            run.kill()?;
            if kill == kills {
                // The last kill ends the load: nobody retries, so the final
                // appends stay unacknowledged.
                shared.stop.store(true, Ordering::SeqCst);
                for handle in handles.drain(..) {
                    results.push(
                        handle
                            .join()
                            .map_err(|_| anyhow::anyhow!("a producer thread panicked"))?,
                    );
                }
            }
            let before: [u64; PRODUCERS] =
                std::array::from_fn(|i| shared.acks[i].load(Ordering::SeqCst));
            run.restart(shared)?;
            run.check_closed()?;
            if kill < kills {
                run.wait_for_progress(shared, &before);
            }
            if kill % 5 == 0 || kill == kills {
                println!(
                    "==> crash {mode}: {kill} kills, {} appends acknowledged",
                    shared
                        .acks
                        .iter()
                        .map(|a| a.load(Ordering::SeqCst))
                        .sum::<u64>()
                );
            }
        }
        Ok(results)
    })?;
    Ok(final_report(run, producers))
}

/// Collects the producers' results, reads the streams back and verifies them.
fn final_report(run: &mut Run<'_>, producers: Vec<ProducerResult>) -> Report {
    let mut report = Report {
        kills: run.kills,
        ..Report::default()
    };
    let mut logs = Vec::new();
    for result in producers {
        report.acknowledged += result.log.acked.len() as u64;
        report.violations.extend(result.violations);
        report.unavailable += result.unavailable;
        logs.push(result.log);
    }
    report.violations.append(&mut run.violations);

    let mut streams = Vec::new();
    for index in 0..STREAMS {
        let name = stream_name(index);
        let content = match run.read_stream(index) {
            Ok((content, closed)) => {
                let should_be_closed = index == run.closure.stream && run.closure.acked;
                if closed != should_be_closed {
                    if should_be_closed {
                        run.closure.intact = false;
                    }
                    report.violations.push(format!(
                        "stream {name}: the final read {} Stream-Closed: true",
                        if closed { "carries" } else { "lacks" }
                    ));
                }
                content
            }
            Err(error) => {
                // Count whatever it held as gone; the acknowledged appends show up as lost.
                report
                    .violations
                    .push(format!("stream {name}: reading it failed: {error:#}"));
                if index == run.closure.stream {
                    run.closure.intact = false;
                }
                Vec::new()
            }
        };
        streams.push((name, content));
    }
    report.findings = verify::verify(&streams, &logs);
    report.closure_survived = run.closure.acked && run.closure.intact;
    report
}

#[cfg(test)]
mod tests {
    use super::{ModeReport, Outcome, Report, time_limit};
    use crate::crash::verify::Findings;

    #[test]
    fn report_line_format() {
        let mut report = Report {
            kills: 20,
            acknowledged: 1234,
            closure_survived: true,
            ..Report::default()
        };
        assert!(report.passed());
        assert_eq!(
            Outcome::Tested(report).to_string(),
            "20 kills, 1234 acknowledged appends, 0 lost, 0 duplicated, 0 torn, 0 out of order, closure survived"
        );
        report = Report {
            kills: 5,
            acknowledged: 10,
            findings: Findings {
                lost: vec!["x".into(), "y".into()],
                unexpected: vec!["z".into()],
                ..Findings::default()
            },
            violations: vec!["v".into()],
            ..Report::default()
        };
        assert!(!report.passed());
        assert_eq!(
            report.to_string(),
            "5 kills, 10 acknowledged appends, 2 lost, 0 duplicated, 0 torn, 0 out of order, \
             closure FAILED, 1 unexpected records, 1 protocol violations"
        );
        assert!(!Outcome::<Report>::NotBuilt.is_failure());
        assert_eq!(Outcome::<Report>::NotBuilt.to_string(), "not built");
    }

    #[test]
    fn time_limit_scales_with_kills() {
        assert_eq!(time_limit(20).as_secs(), 120);
    }
}
