//! `cargo xtask twonode`: two server processes on one PostgreSQL schema (the `postgres`
//! backend), as a load balancer without sticky connections would use them.
//!
//! 1. **Wake latency.** Node A and node B start on the same schema. An SSE reader and a
//!    long-poll reader on node B follow one stream from the start while a writer appends to it
//!    through node A at `--rate` appends per second for `--secs` seconds, one line per append
//!    (`00000042\n`). Both readers must receive every append exactly once and in order. The
//!    wake latency of an append is the time from node A's acknowledgement to the reader on
//!    node B receiving it (0 when B delivered it before A's answer arrived); p50/p99/max are
//!    printed per reader, and p99 must stay under 100 ms.
//! 2. **Throughput** (skipped with `--no-scale`). 1,000 streams; `--writers` writer threads
//!    per node append 64-byte bodies to random streams for `--scale-secs` seconds, through
//!    node A alone, then through A and B at once, `--scale-rounds` times. With the medians,
//!    each node of the pair must sustain at least 60 % of the single-node figure.
//! 3. **Failover.** Idempotent producers send each append to node A or B in turn, retrying
//!    an unacknowledged one on the other node; node A is SIGKILLed mid-load and restarted.
//!    Read back through node B, every acknowledged append is there exactly once, in order.
//!
//! Prints one line per check and a final `N passed, N failed` line; exits non-zero on any
//! failure. The database is `DS_TEST_POSTGRES_URL` (see `pg`); the schema is dropped at the
//! end.

use std::ffi::OsString;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::conformance::{self, Backend};
use crate::crash::Rng;
use crate::http::Client;
use crate::server::{self, Server, Startup};
use crate::tempdir::TempDir;

/// Where the server mounts streams.
const STREAM_BASE_PATH: &str = "/v1/stream";
/// The stream the wake check follows.
const LIVE_STREAM: &str = "twonode/live";
/// Streams of the throughput check.
const SCALE_STREAMS: usize = 1000;
/// The p99 wake latency the check allows.
const P99_LIMIT: Duration = Duration::from_millis(100);
/// Per-node share of the single-node throughput the pair must sustain.
const SCALE_SHARE: f64 = 0.6;
/// How long the readers may take to catch up once the writer is done.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);
/// Long-poll timeout of the servers.
const LONG_POLL_TIMEOUT_SECS: &str = "2";

const USAGE: &str = "\
Usage: cargo xtask twonode [options]

Two server processes on one PostgreSQL schema: SSE and long-poll readers on node B must receive
every append made through node A, in order, with p99 wake latency under 100 ms; then appends
to 1,000 streams through one node and through both (each must sustain 60 % of one alone).

Options:
  --secs <n>          Seconds of appends in the wake check (default 10)
  --rate <n>          Appends per second in the wake check (default 200)
  --scale-secs <n>    Seconds per throughput run (default 5)
  --scale-rounds <n>  Rounds of one node then two; medians compared (default 3)
  --writers <n>       Writer threads per node in the throughput runs (default 16)
  --no-scale          Skip the throughput check
  --skip-build        Use the existing target/release binary, do not build
  --server-binary <path>
                      Test this binary instead of building the workspace's
";

/// Options of one run.
#[derive(Debug)]
struct Options {
    secs: u64,
    rate: u32,
    scale_secs: u64,
    scale_rounds: u32,
    writers: usize,
    scale: bool,
    skip_build: bool,
    server_binary: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Option<Options>> {
    let mut o = Options {
        secs: 10,
        rate: 200,
        scale_secs: 5,
        scale_rounds: 3,
        writers: 16,
        scale: true,
        skip_build: false,
        server_binary: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let (flag, inline) = match flag.split_once('=') {
            Some((f, v)) => (f, Some(v.to_owned())),
            None => (flag.as_str(), None),
        };
        let mut value = || -> Result<String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .with_context(|| format!("{flag} needs a value"))
        };
        let number = |text: String| -> Result<u64> {
            text.parse::<u64>()
                .ok()
                .filter(|&n| n >= 1)
                .with_context(|| format!("{flag} needs a whole number of at least 1, not {text:?}"))
        };
        match flag {
            "-h" | "--help" => return Ok(None),
            "--secs" => o.secs = number(value()?)?,
            "--rate" => {
                o.rate = u32::try_from(number(value()?)?).context("--rate is too large")?;
            }
            "--scale-secs" => o.scale_secs = number(value()?)?,
            "--scale-rounds" => {
                o.scale_rounds =
                    u32::try_from(number(value()?)?).context("--scale-rounds is too large")?;
            }
            "--writers" => {
                o.writers = usize::try_from(number(value()?)?).context("--writers is too large")?;
            }
            "--no-scale" => o.scale = false,
            "--skip-build" => o.skip_build = true,
            "--server-binary" => o.server_binary = Some(PathBuf::from(value()?)),
            other => bail!("unknown option {other:?}\n\n{USAGE}"),
        }
    }
    Ok(Some(o))
}

/// Runs `cargo xtask twonode` with the arguments after the command name; returns whether
/// every check passed.
pub(crate) fn run(root: &Path, args: &[String]) -> Result<bool> {
    let Some(opts) = parse(args)? else {
        print!("{USAGE}");
        return Ok(true);
    };
    let binary = conformance::server_binary(root, opts.skip_build, opts.server_binary.as_deref())?;
    let temp = TempDir::new("twonode")?;
    // Both nodes get the same data dir path, hence the same schema (see `pg::schema_for`).
    let data_dir = temp.path().join("data");
    fs::create_dir(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let result = run_checks(&binary, temp.path(), &data_dir, &opts);
    Backend::Postgres.cleanup(&data_dir)?;
    temp.remove()?;
    let lines = result?;
    println!();
    let (mut passed, mut failed) = (0, 0);
    for (line, ok) in &lines {
        println!("twonode {line}");
        if *ok {
            passed += 1;
        } else {
            failed += 1;
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// Starts a node on the shared schema and waits for it.
fn start_node(
    binary: &Path,
    work_dir: &Path,
    data_dir: &Path,
    label: &str,
) -> Result<(Server, u16)> {
    let port = server::free_loopback_port()?;
    let mut env: Vec<(String, OsString)> = vec![
        (
            "DS_SERVER__BIND_ADDRESS".into(),
            format!("127.0.0.1:{port}").into(),
        ),
        ("DS_STORAGE__MODE".into(), Backend::Postgres.name().into()),
        (
            "DS_STORAGE__DATA_DIR".into(),
            data_dir.as_os_str().to_owned(),
        ),
        (
            "DS_TRANSPORT__CONNECTION__LONG_POLL_TIMEOUT_SECS".into(),
            LONG_POLL_TIMEOUT_SECS.into(),
        ),
        ("DS_OBSERVABILITY__RUST_LOG".into(), "warn".into()),
    ];
    env.extend(Backend::Postgres.storage_env(data_dir));
    let log = work_dir.join(format!("node-{label}.log"));
    let mut node = Server::start(binary, work_dir, port, &env, &log)?;
    match node.wait_ready()? {
        Startup::Ready => Ok((node, port)),
        Startup::NotBuilt => bail!("the server binary was built without the postgres backend"),
    }
}

fn run_checks(
    binary: &Path,
    work_dir: &Path,
    data_dir: &Path,
    opts: &Options,
) -> Result<Vec<(String, bool)>> {
    let (mut a, port_a) = start_node(binary, work_dir, data_dir, "a")?;
    let (mut b, port_b) = start_node(binary, work_dir, data_dir, "b")?;
    println!("==> twonode: node A on port {port_a}, node B on port {port_b}, one schema");
    let mut lines = wake_check(port_a, port_b, opts).map_err(|e| {
        e.context(format!(
            "wake check\nnode A log tail:\n{}\nnode B log tail:\n{}",
            a.log_tail(),
            b.log_tail()
        ))
    })?;
    if opts.scale {
        lines.push(scale_check(port_a, port_b, opts)?);
    }
    b.check_running().context("node B")?;
    let port_a = AtomicU16::new(port_a);
    let kill_and_restart = || -> Result<()> {
        // SIGKILL: no drain, no goodbye to the database.
        a.stop()?;
        thread::sleep(Duration::from_millis(500));
        let (new_a, new_port) = start_node(binary, work_dir, data_dir, "a-restarted")?;
        a = new_a;
        port_a.store(new_port, Ordering::SeqCst);
        Ok(())
    };
    lines.push(failover_check(&port_a, port_b, kill_and_restart)?);
    b.check_running().context("node B")?;
    b.stop()?;
    Ok(lines)
}

/// One producer of the failover check: appends `p<id> <seq>` lines until told to stop,
/// alternating nodes; returns the sequence numbers acknowledged.
fn failover_producer(
    p: u32,
    port_a: &AtomicU16,
    port_b: u16,
    stream: &str,
    stop: &AtomicBool,
) -> Result<Vec<u64>> {
    let mut acked = Vec::new();
    let (mut to_a, mut to_b) = (Client::new(0), Client::new(port_b));
    let id = format!("p{p}");
    let path = stream_path(stream);
    let mut seq: u64 = 0;
    let mut attempt: u64 = u64::from(p);
    while !stop.load(Ordering::SeqCst) {
        attempt += 1;
        let body = format!("{id} {seq:08}\n");
        let seq_text = seq.to_string();
        let headers = [
            ("Content-Type", "text/plain"),
            ("Producer-Id", id.as_str()),
            ("Producer-Epoch", "0"),
            ("Producer-Seq", seq_text.as_str()),
        ];
        let result = if attempt.is_multiple_of(2) {
            let port = port_a.load(Ordering::SeqCst);
            to_a.request(port, "POST", &path, &headers, body.as_bytes())
        } else {
            to_b.request(port_b, "POST", &path, &headers, body.as_bytes())
        };
        match result {
            Ok(r) if matches!(r.status, 200 | 204) => {
                acked.push(seq);
                seq += 1;
            }
            // No server, or the node is going away: retry on the other node.
            Ok(r) if r.status == 503 => {}
            Err(_) => {}
            Ok(r) => bail!("producer {id} seq {seq}: {}", r.summary()),
        }
    }
    Ok(acked)
}

/// The whole stream, read from the start through `port`.
fn read_back(port: u16, stream: &str) -> Result<Vec<u8>> {
    let mut client = Client::new(port);
    let mut offset = "-1".to_owned();
    let mut content = Vec::new();
    loop {
        let path = format!("{}?offset={offset}", stream_path(stream));
        let r = client.request(port, "GET", &path, &[], b"")?;
        ensure!(r.status == 200, "reading back answered {}", r.summary());
        content.extend_from_slice(&r.body);
        if r.flag("stream-up-to-date") {
            return Ok(content);
        }
        r.header("stream-next-offset")
            .context("no Stream-Next-Offset")?
            .clone_into(&mut offset);
    }
}

/// Idempotent producers send each append to node A or node B in turn (a balancer without
/// stickiness), retrying an unacknowledged one on the other node; node A is SIGKILLed
/// mid-load and restarted. Every acknowledged append must be in the stream exactly once, in
/// each producer's order.
fn failover_check(
    port_a: &AtomicU16,
    port_b: u16,
    kill_and_restart: impl FnOnce() -> Result<()>,
) -> Result<(String, bool)> {
    const PRODUCERS: u32 = 4;
    const STREAM: &str = "twonode/failover";
    println!("==> twonode: failover: {PRODUCERS} producers over both nodes; SIGKILL node A");
    create_stream(&mut Client::new(port_b), port_b, STREAM)?;
    let stop = AtomicBool::new(false);
    let (acked, killed) = thread::scope(|scope| -> Result<(Vec<Vec<u64>>, Result<()>)> {
        let handles: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let stop = &stop;
                scope.spawn(move || failover_producer(p, port_a, port_b, STREAM, stop))
            })
            .collect();
        thread::sleep(Duration::from_secs(1));
        let killed = kill_and_restart();
        thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::SeqCst);
        let mut acked = Vec::new();
        for h in handles {
            acked.push(
                h.join()
                    .map_err(|_| anyhow::anyhow!("a producer panicked"))??,
            );
        }
        Ok((acked, killed))
    })?;
    killed.context("killing and restarting node A")?;

    let content = read_back(port_b, STREAM)?;
    let text = String::from_utf8_lossy(&content);
    let mut problems = Vec::new();
    let mut total = 0;
    for (p, acked) in acked.iter().enumerate() {
        let id = format!("p{p}");
        let stored: Vec<u64> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{id} ")))
            .filter_map(|n| n.parse().ok())
            .collect();
        total += acked.len();
        // Each producer's appends in order, once; its last one may be applied but unacked.
        let expected: Vec<u64> = (0..acked.len() as u64).collect();
        if stored.get(..acked.len()) != Some(&expected[..]) || stored.len() > acked.len() + 1 {
            problems.push(format!(
                "{id}: {} acknowledged, stored {:?}...",
                acked.len(),
                &stored[..stored.len().min(8)]
            ));
        }
    }
    let ok = problems.is_empty() && total > 0;
    Ok((
        format!(
            "failover: node A SIGKILLed and restarted mid-load, {total} acknowledged appends via \
             both nodes, {}",
            if ok {
                "0 lost, 0 duplicated, in order".to_owned()
            } else {
                format!("PROBLEMS: {}", problems.join("; "))
            }
        ),
        ok,
    ))
}

/// A count as a float for rates (counts here stay far below 2^32).
fn count_f64(n: u64) -> f64 {
    f64::from(u32::try_from(n).unwrap_or(u32::MAX))
}

fn stream_path(name: &str) -> String {
    format!("{STREAM_BASE_PATH}/{name}")
}

fn create_stream(client: &mut Client, port: u16, name: &str) -> Result<()> {
    let response = client.request(
        port,
        "PUT",
        &stream_path(name),
        &[("Content-Type", "text/plain")],
        b"",
    )?;
    ensure!(
        matches!(response.status, 200 | 201),
        "PUT {name} answered {}",
        response.summary()
    );
    Ok(())
}

/// What one reader saw: each sequence number with the moment it arrived.
type Seen = Arc<Mutex<Vec<(u64, Instant)>>>;

/// Parses the `00000042` lines of a chunk of stream data.
fn record_lines(data: &[u8], at: Instant, seen: &Seen) {
    let mut seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for line in data.split(|&b| b == b'\n') {
        if let Some(seq) = std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.trim().parse::<u64>().ok())
        {
            seen.push((seq, at));
        }
    }
}

fn wake_check(port_a: u16, port_b: u16, opts: &Options) -> Result<Vec<(String, bool)>> {
    create_stream(&mut Client::new(port_a), port_a, LIVE_STREAM)?;
    let total = opts.secs * u64::from(opts.rate);
    let stop = Arc::new(AtomicBool::new(false));
    let sse_seen: Seen = Arc::default();
    let poll_seen: Seen = Arc::default();
    let sse = {
        let (stop, seen) = (Arc::clone(&stop), Arc::clone(&sse_seen));
        thread::spawn(move || sse_reader(port_b, &stop, &seen))
    };
    let poll = {
        let (stop, seen) = (Arc::clone(&stop), Arc::clone(&poll_seen));
        thread::spawn(move || long_poll_reader(port_b, &stop, &seen))
    };
    // Let both readers connect before the first append.
    thread::sleep(Duration::from_millis(300));

    println!(
        "==> twonode: appending {total} records through node A at {}/s",
        opts.rate
    );
    let mut writer = Client::new(port_a);
    let interval = Duration::from_secs(1) / opts.rate;
    let start = Instant::now();
    let mut acks = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for seq in 0..total {
        let due = start + interval * u32::try_from(seq).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let body = format!("{seq:08}\n");
        let response = writer.request(
            port_a,
            "POST",
            &stream_path(LIVE_STREAM),
            &[("Content-Type", "text/plain")],
            body.as_bytes(),
        )?;
        let acked = Instant::now();
        ensure!(
            matches!(response.status, 200 | 204),
            "append {seq} answered {}",
            response.summary()
        );
        acks.push(acked);
    }
    let achieved = count_f64(total) / start.elapsed().as_secs_f64();

    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let len = |s: &Seen| s.lock().map_or(0, |v| v.len());
    while (len(&sse_seen) < acks.len() || len(&poll_seen) < acks.len()) && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let sse_result = sse
        .join()
        .map_err(|_| anyhow::anyhow!("the SSE reader panicked"))?;
    let poll_result = poll
        .join()
        .map_err(|_| anyhow::anyhow!("the long-poll reader panicked"))?;

    let mut lines = Vec::new();
    for (label, result, seen) in [
        ("sse", sse_result, &sse_seen),
        ("long-poll", poll_result, &poll_seen),
    ] {
        let seen = seen.lock().map(|v| v.clone()).unwrap_or_default();
        lines.push(verdict(label, &result, &seen, &acks, achieved));
    }
    Ok(lines)
}

/// One reader's line: completeness, order, latency percentiles.
fn verdict(
    label: &str,
    result: &Result<()>,
    seen: &[(u64, Instant)],
    acks: &[Instant],
    rate: f64,
) -> (String, bool) {
    if let Err(e) = result {
        return (format!("{label} on node B: error: {e:#}"), false);
    }
    let in_order = seen
        .iter()
        .enumerate()
        .all(|(i, (seq, _))| *seq == i as u64);
    let complete = seen.len() == acks.len();
    let mut latencies: Vec<Duration> = seen
        .iter()
        .filter_map(|(seq, at)| {
            let ack = acks.get(usize::try_from(*seq).ok()?)?;
            Some(at.saturating_duration_since(*ack))
        })
        .collect();
    latencies.sort_unstable();
    let pct = |p: usize| {
        latencies
            .get((latencies.len() * p / 100).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let (p50, p99) = (pct(50), pct(99));
    let max = latencies.last().copied().unwrap_or_default();
    let ok = complete && in_order && p99 < P99_LIMIT;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        format!(
            "{label} on node B: {}/{} appends via node A{}, wake latency p50 {:.1} ms, p99 {:.1} ms, \
             max {:.1} ms at {rate:.0} appends/s (p99 limit {} ms)",
            seen.len(),
            acks.len(),
            if in_order {
                ", in order"
            } else {
                ", OUT OF ORDER or duplicated"
            },
            ms(p50),
            ms(p99),
            ms(max),
            P99_LIMIT.as_millis()
        ),
        ok,
    )
}

/// Follows the stream with long-polls from the start until told to stop.
fn long_poll_reader(port: u16, stop: &AtomicBool, seen: &Seen) -> Result<()> {
    let mut client = Client::new(port);
    let mut offset = "-1".to_owned();
    while !stop.load(Ordering::Relaxed) {
        let path = format!(
            "{}?offset={offset}&live=long-poll",
            stream_path(LIVE_STREAM)
        );
        let response = client.request(port, "GET", &path, &[], b"")?;
        let at = Instant::now();
        match response.status {
            200 => record_lines(&response.body, at, seen),
            204 => {}
            _ => bail!("long-poll answered {}", response.summary()),
        }
        response
            .header("stream-next-offset")
            .context("long-poll answer without Stream-Next-Offset")?
            .clone_into(&mut offset);
    }
    Ok(())
}

/// Follows the stream over SSE from the start until told to stop, reconnecting from the last
/// control event's offset when the server closes the connection.
fn sse_reader(port: u16, stop: &AtomicBool, seen: &Seen) -> Result<()> {
    let mut offset = "-1".to_owned();
    while !stop.load(Ordering::Relaxed) {
        sse_connection(port, &mut offset, stop, seen)?;
    }
    Ok(())
}

/// Where the SSE response parser is.
enum Framing {
    Head,
    ChunkSize,
    ChunkData(usize),
    Plain,
}

/// One SSE connection: de-chunks the body and parses events as bytes arrive.
fn sse_connection(port: u16, offset: &mut String, stop: &AtomicBool, seen: &Seen) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let path = format!("{}?offset={offset}&live=sse", stream_path(LIVE_STREAM));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    let mut pending: Vec<u8> = Vec::new();
    let mut framing = Framing::Head;
    let mut events = SseParser::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e).context("reading the SSE response"),
        };
        let at = Instant::now();
        pending.extend_from_slice(&buf[..n]);
        loop {
            match framing {
                Framing::Head => {
                    let Some(end) = find(&pending, b"\r\n\r\n") else {
                        break;
                    };
                    let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
                    ensure!(
                        head.starts_with("http/1.1 200"),
                        "SSE request answered {}",
                        head.lines().next().unwrap_or_default()
                    );
                    framing = if head.contains("transfer-encoding: chunked") {
                        Framing::ChunkSize
                    } else {
                        Framing::Plain
                    };
                    pending.drain(..end + 4);
                }
                Framing::ChunkSize => {
                    let Some(end) = find(&pending, b"\r\n") else {
                        break;
                    };
                    let text = String::from_utf8_lossy(&pending[..end]).into_owned();
                    let size =
                        usize::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16)
                            .with_context(|| format!("bad chunk size {text:?}"))?;
                    pending.drain(..end + 2);
                    if size == 0 {
                        return Ok(());
                    }
                    framing = Framing::ChunkData(size);
                }
                Framing::ChunkData(size) => {
                    if pending.len() < size + 2 {
                        break;
                    }
                    let chunk: Vec<u8> = pending.drain(..size + 2).take(size).collect();
                    if events.feed(&chunk, at, offset, seen) {
                        return Ok(());
                    }
                    framing = Framing::ChunkSize;
                }
                Framing::Plain => {
                    let chunk = std::mem::take(&mut pending);
                    if events.feed(&chunk, at, offset, seen) {
                        return Ok(());
                    }
                    break;
                }
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Server-sent events, line by line.
#[derive(Default)]
struct SseParser {
    line: Vec<u8>,
    event: String,
    data: Vec<u8>,
}

impl SseParser {
    /// Feeds body bytes; returns true when the stream reported it is closed.
    fn feed(&mut self, bytes: &[u8], at: Instant, offset: &mut String, seen: &Seen) -> bool {
        for &b in bytes {
            if b != b'\n' {
                self.line.push(b);
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            if line.is_empty() {
                let data = std::mem::take(&mut self.data);
                match std::mem::take(&mut self.event).as_str() {
                    "data" => record_lines(&data, at, seen),
                    "control" => {
                        let text = String::from_utf8_lossy(&data);
                        if let Some(next) = json_string(&text, "streamNextOffset") {
                            *offset = next;
                        }
                        if text.contains("\"streamClosed\":true") {
                            return true;
                        }
                    }
                    _ => {}
                }
            } else if let Some(rest) = line.strip_prefix(b"event:") {
                String::from_utf8_lossy(rest)
                    .trim()
                    .clone_into(&mut self.event);
            } else if let Some(rest) = line.strip_prefix(b"data:") {
                let rest = rest.strip_prefix(b" ").unwrap_or(rest);
                self.data.extend_from_slice(rest);
                self.data.push(b'\n');
            }
        }
        false
    }
}

/// The string value of `"key":"..."` in a flat JSON object.
fn json_string(text: &str, key: &str) -> Option<String> {
    let start = text.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let end = text[start..].find('"')? + start;
    Some(text[start..end].to_owned())
}

/// Appends to random streams through `ports` (`writers` threads per port) for `secs`;
/// returns the appends per second each port sustained.
fn throughput(ports: &[u16], writers: usize, secs: u64, seed: u64) -> Result<Vec<f64>> {
    let counts: Vec<Arc<AtomicU64>> = ports.iter().map(|_| Arc::default()).collect();
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    thread::scope(|scope| {
        for (k, &port) in ports.iter().enumerate() {
            for w in 0..writers {
                let (count, errors) = (Arc::clone(&counts[k]), Arc::clone(&errors));
                scope.spawn(move || {
                    let mut rng = Rng::new(seed ^ ((k as u64) << 32) ^ w as u64);
                    let mut client = Client::new(port);
                    let body = [b'x'; 64];
                    while Instant::now() < end {
                        let s = rng.range(0, SCALE_STREAMS as u64 - 1);
                        let path = stream_path(&format!("scale/s{s:04}"));
                        match client.request(
                            port,
                            "POST",
                            &path,
                            &[("Content-Type", "text/plain")],
                            &body,
                        ) {
                            Ok(r) if matches!(r.status, 200 | 204) => {
                                count.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => {
                                if let Ok(mut e) = errors.lock() {
                                    e.push(format!("port {port}: {}", r.summary()));
                                }
                            }
                            Err(err) => {
                                if let Ok(mut e) = errors.lock() {
                                    e.push(format!("port {port}: {err:#}"));
                                }
                            }
                        }
                    }
                });
            }
        }
    });
    let elapsed = start.elapsed().as_secs_f64();
    let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
    if !errors.is_empty() {
        bail!(
            "{} appends failed, first: {}",
            errors.len(),
            errors.first().map_or("", String::as_str)
        );
    }
    Ok(counts
        .iter()
        .map(|c| count_f64(c.load(Ordering::Relaxed)) / elapsed)
        .collect())
}

/// The median of some rates.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn scale_check(port_a: u16, port_b: u16, opts: &Options) -> Result<(String, bool)> {
    println!("==> twonode: creating {SCALE_STREAMS} streams");
    thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                scope.spawn(move || -> Result<()> {
                    let mut client = Client::new(port_a);
                    for s in (t..SCALE_STREAMS).step_by(4) {
                        create_stream(&mut client, port_a, &format!("scale/s{s:04}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("a creator panicked"))??;
        }
        Ok(())
    })?;
    // Rounds alternate one node and two, so load from elsewhere on the machine affects both
    // figures alike; the medians are compared.
    let (mut singles, mut pairs) = (Vec::new(), Vec::new());
    for round in 0..opts.scale_rounds {
        let seed = u64::from(round) * 2;
        let single = throughput(&[port_a], opts.writers, opts.scale_secs, seed + 1)?[0];
        let pair = throughput(&[port_a, port_b], opts.writers, opts.scale_secs, seed + 2)?;
        println!(
            "==> twonode: round {}: node A alone {single:.0} appends/s; A and B at once \
             {:.0} + {:.0} appends/s ({} writers per node, {}s each)",
            round + 1,
            pair[0],
            pair[1],
            opts.writers,
            opts.scale_secs
        );
        singles.push(single);
        pairs.push((pair[0], pair[1]));
    }
    let single = median(singles.clone());
    let a = median(pairs.iter().map(|p| p.0).collect());
    let b = median(pairs.iter().map(|p| p.1).collect());
    let worst = a.min(b) / single;
    Ok((
        format!(
            "throughput, {SCALE_STREAMS} streams, median of {} rounds: one node {single:.0} \
             appends/s; two nodes {a:.0} + {b:.0} = {:.0} appends/s; per node {:.0} % of one \
             node alone (need {:.0} %)",
            opts.scale_rounds,
            a + b,
            worst * 100.0,
            SCALE_SHARE * 100.0
        ),
        worst >= SCALE_SHARE,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_parsed_across_chunk_boundaries() {
        let seen: Seen = Arc::default();
        let mut offset = "-1".to_owned();
        let mut p = SseParser::default();
        let at = Instant::now();
        let text = "event: data\ndata: 00000000\ndata: 00000001\n\nevent: control\ndata: \
                    {\"streamNextOffset\":\"0000_0018\",\"streamCursor\":\"c\"}\n\n";
        let (x, y) = text.as_bytes().split_at(20);
        assert!(!p.feed(x, at, &mut offset, &seen));
        assert!(!p.feed(y, at, &mut offset, &seen));
        assert_eq!(offset, "0000_0018");
        let seqs: Vec<u64> = seen.lock().expect("lock").iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [0, 1]);
        assert!(p.feed(
            b"event: control\ndata: {\"streamNextOffset\":\"x\",\"streamClosed\":true}\n\n",
            at,
            &mut offset,
            &seen
        ));
    }

    #[test]
    fn options_parse_and_reject_nonsense() {
        let args = |a: &[&str]| a.iter().map(ToString::to_string).collect::<Vec<_>>();
        let o = parse(&args(&["--secs", "3", "--rate=50", "--no-scale"]))
            .expect("valid")
            .expect("not help");
        assert_eq!((o.secs, o.rate, o.scale), (3, 50, false));
        assert!(parse(&args(&["--secs", "0"])).is_err());
        assert!(parse(&args(&["--bogus"])).is_err());
        assert!(parse(&args(&["--help"])).expect("help").is_none());
    }
}
