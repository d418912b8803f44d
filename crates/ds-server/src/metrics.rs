//! Process metrics in the Prometheus text exposition format (version 0.0.4), served at
//! `/metrics`.
//!
//! Hand-written on purpose: a handful of counters, gauges and one histogram do not justify a
//! metrics framework. Counters are atomics, the per-(method, status) request table too: a
//! request takes no lock to be counted (statuses outside the table's list, which the server does
//! not produce, fall back to a short `Mutex`). The store's series come from
//! [`Storage::stats`](ds_storage::Storage::stats), which reads counters (no listing of streams),
//! so a scrape costs the same with a hundred thousand streams as with ten; a series the backend
//! cannot measure is left out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use ds_storage::StorageStats;

/// Upper bounds (seconds) of the request-duration histogram buckets.
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Default, Clone)]
struct RequestStats {
    count: u64,
    sum_secs: f64,
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [u64; BUCKETS.len() + 1],
}

/// Method labels: the protocol's methods, and `OTHER` for anything else, so a client cannot
/// grow the label set by inventing methods.
const METHODS: [&str; 7] = ["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "OTHER"];

/// Statuses counted without a lock: every status the server answers with.
const STATUSES: [u16; 24] = [
    200, 201, 204, 206, 304, 400, 401, 403, 404, 405, 408, 409, 410, 412, 413, 415, 416, 422, 429,
    431, 500, 501, 503, 504,
];

/// One (method, status) series, updated with atomics.
#[derive(Debug, Default)]
struct RequestCell {
    count: AtomicU64,
    sum_nanos: AtomicU64,
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
}

/// The request series: a fixed table of atomic cells, plus a locked map for rare statuses.
#[derive(Debug)]
struct RequestTable {
    cells: Box<[RequestCell]>,
    rare: Mutex<BTreeMap<(&'static str, u16), RequestStats>>,
}

impl Default for RequestTable {
    fn default() -> Self {
        RequestTable {
            cells: (0..METHODS.len() * STATUSES.len())
                .map(|_| RequestCell::default())
                .collect(),
            rare: Mutex::default(),
        }
    }
}

impl RequestTable {
    fn record(&self, method: &str, status: u16, elapsed: Duration) {
        let m = METHODS[..METHODS.len() - 1]
            .iter()
            .position(|x| *x == method)
            .unwrap_or(METHODS.len() - 1);
        let secs = elapsed.as_secs_f64();
        let slot = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        if let Some(s) = STATUSES.iter().position(|x| *x == status) {
            let cell = &self.cells[m * STATUSES.len() + s];
            cell.count.fetch_add(1, Ordering::Relaxed);
            cell.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
            cell.buckets[slot].fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut rare = self
            .rare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = rare.entry((METHODS[m], status)).or_default();
        entry.count += 1;
        entry.sum_secs += secs;
        entry.buckets[slot] += 1;
    }

    /// Every series seen so far, in label order.
    fn snapshot(&self) -> BTreeMap<(&'static str, u16), RequestStats> {
        let mut out = self
            .rare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for (m, method) in METHODS.iter().enumerate() {
            for (s, status) in STATUSES.iter().enumerate() {
                let cell = &self.cells[m * STATUSES.len() + s];
                let count = cell.count.load(Ordering::Relaxed);
                if count == 0 {
                    continue;
                }
                let mut stats = RequestStats {
                    count,
                    #[allow(clippy::cast_precision_loss)] // seconds as a float, by definition
                    sum_secs: cell.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
                    buckets: [0; BUCKETS.len() + 1],
                };
                for (b, n) in stats.buckets.iter_mut().zip(&cell.buckets) {
                    *b = n.load(Ordering::Relaxed);
                }
                out.insert((method, *status), stats);
            }
        }
        out
    }
}

/// The server's metrics. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: RequestTable,
    appends: AtomicU64,
    append_bytes: AtomicU64,
    reads: AtomicU64,
    read_bytes: AtomicU64,
    long_polls_active: AtomicI64,
    sse_active: AtomicI64,
    sse_total: AtomicU64,
    connections_active: AtomicI64,
    connections_total: AtomicU64,
    tls_handshake_failures: AtomicU64,
}

/// Decrements a gauge when dropped, so a gauge cannot leak on an early return or a dropped
/// response body.
#[derive(Debug)]
pub struct GaugeGuard<'a>(&'a AtomicI64);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Like [`GaugeGuard`], for guards that must outlive a borrow (SSE bodies).
#[derive(Debug)]
pub struct OwnedGaugeGuard {
    metrics: std::sync::Arc<Metrics>,
    which: Gauge,
}

#[derive(Debug, Clone, Copy)]
enum Gauge {
    Sse,
    Connections,
}

impl Drop for OwnedGaugeGuard {
    fn drop(&mut self) {
        let gauge = match self.which {
            Gauge::Sse => &self.metrics.sse_active,
            Gauge::Connections => &self.metrics.connections_active,
        };
        gauge.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Records one finished request (duration until the response head).
    pub fn record_request(&self, method: &str, status: u16, elapsed: Duration) {
        self.requests.record(method, status, elapsed);
    }

    /// Records a successful append of `bytes` payload bytes.
    pub fn record_append(&self, bytes: usize) {
        self.appends.fetch_add(1, Ordering::Relaxed);
        self.append_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Records data sent to a reader (catch-up, long-poll or SSE).
    pub fn record_read(&self, bytes: usize) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Counts an open long-poll until the guard drops.
    pub fn long_poll(&self) -> GaugeGuard<'_> {
        self.long_polls_active.fetch_add(1, Ordering::Relaxed);
        GaugeGuard(&self.long_polls_active)
    }

    /// Counts an open SSE response until the guard drops.
    pub fn sse(self: &std::sync::Arc<Self>) -> OwnedGaugeGuard {
        self.sse_active.fetch_add(1, Ordering::Relaxed);
        self.sse_total.fetch_add(1, Ordering::Relaxed);
        OwnedGaugeGuard {
            metrics: std::sync::Arc::clone(self),
            which: Gauge::Sse,
        }
    }

    /// Counts an accepted connection until the guard drops.
    pub fn connection(self: &std::sync::Arc<Self>) -> OwnedGaugeGuard {
        self.connections_active.fetch_add(1, Ordering::Relaxed);
        self.connections_total.fetch_add(1, Ordering::Relaxed);
        OwnedGaugeGuard {
            metrics: std::sync::Arc::clone(self),
            which: Gauge::Connections,
        }
    }

    /// Counts a failed TLS handshake (including a refused client certificate).
    pub fn record_tls_handshake_failure(&self) {
        self.tls_handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Open SSE responses.
    #[must_use]
    pub fn sse_active(&self) -> i64 {
        self.sse_active.load(Ordering::Relaxed)
    }

    /// Open long-polls.
    #[must_use]
    pub fn long_polls_active(&self) -> i64 {
        self.long_polls_active.load(Ordering::Relaxed)
    }

    /// The exposition text; `storage` carries the gauges read from the store at scrape time.
    #[must_use]
    #[allow(clippy::too_many_lines)] // one flat list of series reads better than helpers
    pub fn render(&self, storage: Option<StorageGauges>) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gauge = |a: &AtomicI64| a.load(Ordering::Relaxed);
        {
            let table = self.requests.snapshot();
            header(
                &mut out,
                "ds_http_requests_total",
                "counter",
                "HTTP requests answered, by method and status.",
            );
            for ((method, status), s) in &table {
                let _ = writeln!(
                    out,
                    "ds_http_requests_total{{method=\"{method}\",status=\"{status}\"}} {}",
                    s.count
                );
            }
            header(
                &mut out,
                "ds_http_request_duration_seconds",
                "histogram",
                "Time from request to response head, by method and status.",
            );
            for ((method, status), s) in &table {
                let labels = format!("method=\"{method}\",status=\"{status}\"");
                let mut cumulative = 0;
                for (i, bound) in BUCKETS.iter().enumerate() {
                    cumulative += s.buckets[i];
                    let _ = writeln!(
                        out,
                        "ds_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                    );
                }
                cumulative += s.buckets[BUCKETS.len()];
                let _ = writeln!(
                    out,
                    "ds_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
                );
                let _ = writeln!(
                    out,
                    "ds_http_request_duration_seconds_sum{{{labels}}} {}",
                    s.sum_secs
                );
                let _ = writeln!(
                    out,
                    "ds_http_request_duration_seconds_count{{{labels}}} {}",
                    s.count
                );
            }
        }
        let counters = [
            (
                "ds_appends_total",
                "Successful appends (including close-with-data).",
                load(&self.appends),
            ),
            (
                "ds_append_bytes_total",
                "Payload bytes accepted by appends.",
                load(&self.append_bytes),
            ),
            (
                "ds_reads_total",
                "Responses or SSE events that carried stream data.",
                load(&self.reads),
            ),
            (
                "ds_read_bytes_total",
                "Payload bytes sent to readers.",
                load(&self.read_bytes),
            ),
            (
                "ds_sse_connections_total",
                "SSE responses started.",
                load(&self.sse_total),
            ),
            (
                "ds_connections_total",
                "Connections accepted.",
                load(&self.connections_total),
            ),
            (
                "ds_tls_handshake_failures_total",
                "TLS handshakes that failed, including refused client certificates.",
                load(&self.tls_handshake_failures),
            ),
        ];
        for (name, help, value) in counters {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }
        let gauges = [
            (
                "ds_long_polls_active",
                "Long-poll requests waiting for data.",
                gauge(&self.long_polls_active),
            ),
            (
                "ds_sse_connections_active",
                "Open SSE responses.",
                gauge(&self.sse_active),
            ),
            (
                "ds_connections_active",
                "Open client connections.",
                gauge(&self.connections_active),
            ),
        ];
        for (name, help, value) in gauges {
            header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        if let Some(s) = storage {
            render_storage(&mut out, &s);
        }
        out
    }
}

/// What the store reports at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct StorageGauges {
    /// The backend's counters ([`Storage::stats`](ds_storage::Storage::stats)).
    pub stats: StorageStats,
    /// Whether the store is ready.
    pub ready: bool,
}

/// The `ds_storage_*` series; those the backend reports no value for are left out.
fn render_storage(out: &mut String, s: &StorageGauges) {
    header(
        out,
        "ds_storage_ready",
        "gauge",
        "1 when the store can serve requests.",
    );
    let _ = writeln!(out, "ds_storage_ready {}", u8::from(s.ready));
    let st = &s.stats;
    let integers = [
        (
            "ds_storage_streams",
            "gauge",
            "Live streams in the store (expired ones count until swept).",
            st.streams,
        ),
        (
            "ds_storage_bytes",
            "gauge",
            "Payload bytes the live streams store themselves (forks exclude inherited data).",
            st.bytes,
        ),
        (
            "ds_storage_commit_batches_total",
            "counter",
            "Group commits (one write, or one durable transaction) since the store opened; in file-durable mode one WAL sync covers every group commit written before it started.",
            st.commit_batches,
        ),
        (
            "ds_storage_commit_ops_total",
            "counter",
            "Creates, appends, closes and deletes carried by those group commits; divided by ds_storage_commit_batches_total, the mean batch size.",
            st.commit_ops,
        ),
        (
            "ds_storage_syncs_total",
            "counter",
            "Syncs to stable storage on the write path (WAL fdatasync or durable transaction commit) since the store opened.",
            st.syncs,
        ),
    ];
    for (name, kind, help, value) in integers {
        if let Some(v) = value {
            header(out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
    }
    if let Some(micros) = st.sync_micros {
        let name = "ds_storage_sync_seconds_total";
        header(
            out,
            name,
            "counter",
            "Time spent waiting for those syncs, in seconds.",
        );
        // Exact for any realistic total (f64 holds integers up to 2^53 µs, 285 years).
        #[allow(clippy::cast_precision_loss)]
        let secs = micros as f64 / 1e6;
        let _ = writeln!(out, "{name} {secs}");
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_cumulative_buckets_and_gauges() {
        let m = std::sync::Arc::new(Metrics::default());
        m.record_request("GET", 200, Duration::from_millis(3));
        m.record_request("GET", 200, Duration::from_secs(100));
        m.record_append(10);
        let guard = m.sse();
        let text = m.render(Some(StorageGauges {
            stats: StorageStats {
                streams: Some(2),
                ..StorageStats::default()
            },
            ready: true,
        }));
        assert!(text.contains("ds_http_requests_total{method=\"GET\",status=\"200\"} 2"));
        assert!(text.contains(
            "ds_http_request_duration_seconds_bucket{method=\"GET\",status=\"200\",le=\"0.005\"} 1"
        ));
        assert!(text.contains(
            "ds_http_request_duration_seconds_bucket{method=\"GET\",status=\"200\",le=\"+Inf\"} 2"
        ));
        assert!(text.contains("ds_append_bytes_total 10"));
        assert!(text.contains("ds_sse_connections_active 1"));
        assert!(text.contains("ds_storage_streams 2"));
        drop(guard);
        assert!(m.render(None).contains("ds_sse_connections_active 0"));
    }

    #[test]
    fn invented_methods_share_one_label_and_rare_statuses_are_still_counted() {
        let m = Metrics::default();
        m.record_request("BREW", 405, Duration::from_millis(1));
        m.record_request("PATCH", 405, Duration::from_millis(1));
        m.record_request("POST", 418, Duration::from_millis(2));
        m.record_request("POST", 204, Duration::from_millis(2));
        let text = m.render(None);
        assert!(text.contains("ds_http_requests_total{method=\"OTHER\",status=\"405\"} 2"));
        assert!(text.contains("ds_http_requests_total{method=\"POST\",status=\"418\"} 1"));
        assert!(text.contains("ds_http_requests_total{method=\"POST\",status=\"204\"} 1"));
        assert!(!text.contains("BREW"));
        assert!(text.contains(
            "ds_http_request_duration_seconds_sum{method=\"POST\",status=\"204\"} 0.002"
        ));
    }

    /// Checks the text format: every sample belongs to a family announced by `# HELP` and
    /// `# TYPE` (histogram samples by their suffixes), and every value is a number. Returns the
    /// samples as (series, value text) pairs.
    fn parse_exposition(text: &str) -> Vec<(String, String)> {
        let mut typed = std::collections::HashMap::new();
        let mut helped = std::collections::HashSet::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty(), "{line}");
                assert!(helped.insert(name.to_owned()), "duplicate HELP: {line}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(helped.contains(name), "TYPE before HELP: {line}");
                assert!(
                    typed.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "duplicate TYPE: {line}"
                );
            } else {
                let (series, value) = line.rsplit_once(' ').expect("series value");
                let name = series.split('{').next().expect("name");
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| {
                        name.strip_suffix(suffix)
                            .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
                    })
                    .unwrap_or(name);
                assert!(typed.contains_key(family), "sample without TYPE: {line}");
                if typed[family] == "counter" {
                    assert!(name.ends_with("_total"), "counter named {name}");
                }
                assert!(value.parse::<f64>().is_ok(), "value: {line}");
                samples.push((series.to_owned(), value.to_owned()));
            }
        }
        samples
    }

    fn sample<'a>(samples: &'a [(String, String)], series: &str) -> Option<&'a str> {
        samples
            .iter()
            .find(|(s, _)| s == series)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn storage_stats_render_as_prometheus_series() {
        let m = Metrics::default();
        m.record_request("PUT", 201, Duration::from_millis(1));
        let text = m.render(Some(StorageGauges {
            stats: StorageStats {
                streams: Some(120_000),
                bytes: Some(7_340_032),
                commit_batches: Some(250),
                commit_ops: Some(1_000),
                syncs: Some(250),
                sync_micros: Some(1_234_567),
            },
            ready: true,
        }));
        let samples = parse_exposition(&text);
        for (series, value) in [
            ("ds_storage_ready", "1"),
            ("ds_storage_streams", "120000"),
            ("ds_storage_bytes", "7340032"),
            ("ds_storage_commit_batches_total", "250"),
            ("ds_storage_commit_ops_total", "1000"),
            ("ds_storage_syncs_total", "250"),
            ("ds_storage_sync_seconds_total", "1.234567"),
        ] {
            assert_eq!(sample(&samples, series), Some(value), "{series} in\n{text}");
        }
        assert!(text.contains("# TYPE ds_storage_streams gauge\nds_storage_streams 120000\n"));
        assert!(text.contains(
            "# TYPE ds_storage_sync_seconds_total counter\nds_storage_sync_seconds_total 1.234567\n"
        ));
    }

    #[test]
    fn storage_series_without_a_value_are_left_out() {
        let m = Metrics::default();
        // What the memory backend reports: no commits, no syncs.
        let text = m.render(Some(StorageGauges {
            stats: StorageStats {
                streams: Some(3),
                bytes: Some(0),
                ..StorageStats::default()
            },
            ready: false,
        }));
        let samples = parse_exposition(&text);
        assert_eq!(sample(&samples, "ds_storage_ready"), Some("0"));
        assert_eq!(sample(&samples, "ds_storage_streams"), Some("3"));
        assert_eq!(sample(&samples, "ds_storage_bytes"), Some("0"));
        for absent in [
            "ds_storage_commit_batches_total",
            "ds_storage_commit_ops_total",
            "ds_storage_syncs_total",
            "ds_storage_sync_seconds_total",
        ] {
            assert!(!text.contains(absent), "{absent} has no value:\n{text}");
        }
        // A backend that reports nothing (the trait's default) still gets readiness.
        let text = m.render(Some(StorageGauges {
            stats: StorageStats::default(),
            ready: true,
        }));
        let samples = parse_exposition(&text);
        assert_eq!(sample(&samples, "ds_storage_ready"), Some("1"));
        assert!(!text.contains("ds_storage_streams"));
        assert!(
            parse_exposition(&m.render(None))
                .iter()
                .all(|(s, _)| !s.starts_with("ds_storage"))
        );
    }
}
