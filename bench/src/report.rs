//! Results: per-run figures, medians across rounds, the Markdown table and the JSON file.

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::args::{Backend, Scenario};
use crate::server::CEILING_NAME;
use crate::stats::median;

/// What one run measured. `None` means "does not apply to this scenario".
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Metrics {
    /// Completed operations per second (appends, creates, read requests).
    pub(crate) ops_per_sec: Option<f64>,
    /// Payload megabytes (10^6) per second: request bodies for writes, response bodies for reads.
    pub(crate) mb_per_sec: Option<f64>,
    /// Median request (or delivery) latency, milliseconds.
    pub(crate) p50_ms: Option<f64>,
    /// 99th percentile latency, milliseconds.
    pub(crate) p99_ms: Option<f64>,
    /// Largest latency, milliseconds.
    pub(crate) max_ms: Option<f64>,
    /// Non-2xx answers plus transport errors.
    pub(crate) errors: u64,
    /// Server RSS at the end of the measured phase, MiB; big-read: the highest RSS sampled
    /// during the read.
    pub(crate) rss_mib: Option<f64>,
    /// The server's CPU time (user + system, all threads) per completed operation over the
    /// measured load, microseconds (closed-loop scenarios: appends, creates, reads). On a
    /// machine whose cores the load generator shares, this is the figure that moves
    /// throughput, and it is far less noisy than throughput itself.
    pub(crate) cpu_us_per_op: Option<f64>,
    /// The load generator's own CPU time per completed operation over the same load,
    /// microseconds: its share of the cores it shares with the server (more per operation
    /// against a slower server, whose answers come fewer to a wake-up).
    pub(crate) client_cpu_us_per_op: Option<f64>,
    /// Server RSS before subscribers connected (fan-out), or before the read (big-read), MiB.
    pub(crate) rss_before_mib: Option<f64>,
    /// (RSS with subscribers − RSS before) / subscribers, KiB (fan-out only).
    pub(crate) rss_per_sub_kib: Option<f64>,
    /// (RSS with the streams − RSS before) / streams created, KiB (idle-streams only).
    pub(crate) rss_per_stream_kib: Option<f64>,
    /// Messages a subscriber never received, summed over subscribers (fan-out only).
    pub(crate) missing: Option<u64>,
    /// Seconds from spawning the server on the old data dir to serving it (idle-streams).
    pub(crate) restart_s: Option<f64>,
    /// Free-form remark shown in the table (e.g. a creation cap that was hit).
    pub(crate) note: Option<String>,
}

/// How one run ended.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // one per run, a few hundred in a whole bench: no box needed
pub(crate) enum Outcome {
    /// The scenario ran; these are its figures.
    Done(Metrics),
    /// The server does not have this storage mode (it said so and exited).
    NotBuilt(String),
    /// Startup or setup failed; the message says why.
    Failed(String),
}

/// One run: a scenario on one server and backend, in one round.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunRecord {
    /// The scenario.
    pub(crate) scenario: Scenario,
    /// Table label: the scenario name plus a variant (`sse-fanout/5000`).
    pub(crate) label: String,
    /// The storage mode, in our server's terms.
    pub(crate) backend: Backend,
    /// Server name: `ours` or the `--against` name.
    pub(crate) server: String,
    /// 1-based round.
    pub(crate) round: u32,
    /// Result.
    pub(crate) outcome: Outcome,
}

/// Physical limits of the machine, measured by the bench itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Ceiling {
    /// Bare-hyper server, append-1 shape: requests per second.
    pub(crate) http_post_per_sec: Option<f64>,
    /// Bare-hyper server, append-1 shape: p50 and p99 latency, ms.
    pub(crate) http_post_p50_ms: Option<f64>,
    /// As above, p99.
    pub(crate) http_post_p99_ms: Option<f64>,
    /// Bare-hyper server, read shape: MB/s.
    pub(crate) http_read_mb_per_sec: Option<f64>,
    /// 256-byte write + fdatasync loop: syncs per second.
    pub(crate) fsync_per_sec: Option<f64>,
    /// Latency of one write + fdatasync, p50, ms.
    pub(crate) fsync_p50_ms: Option<f64>,
    /// As above, p99.
    pub(crate) fsync_p99_ms: Option<f64>,
}

/// Medians of one (label, backend, server) across its rounds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    /// Scenario.
    pub(crate) scenario: Scenario,
    /// Table label.
    pub(crate) label: String,
    /// Backend.
    pub(crate) backend: Backend,
    /// Server name.
    pub(crate) server: String,
    /// Rounds that produced figures.
    pub(crate) rounds: usize,
    /// Median figures (errors and missing are totals over rounds); `None` when no round ran.
    pub(crate) metrics: Option<Metrics>,
    /// Why there are no figures (not built, failed), or failures in some rounds.
    pub(crate) status: Option<String>,
}

impl Row {
    /// The figure the acceptance ratios are about.
    pub(crate) fn primary(&self) -> Option<f64> {
        let m = self.metrics.as_ref()?;
        match self.scenario {
            Scenario::Append1 | Scenario::AppendMany | Scenario::Create => m.ops_per_sec,
            Scenario::Read => m.mb_per_sec,
            Scenario::BigRead => m.rss_mib,
            Scenario::SseFanout | Scenario::LongpollFanout => m.p99_ms,
            Scenario::IdleStreams => m.rss_per_stream_kib,
        }
    }
}

fn med(runs: &[&Metrics], f: impl Fn(&Metrics) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = runs.iter().filter_map(|m| f(m)).collect();
    median(&v)
}

/// Median figures of several rounds; errors and missing deliveries are summed, so one bad
/// round shows.
pub(crate) fn combine(runs: &[&Metrics]) -> Metrics {
    let missing: Vec<u64> = runs.iter().filter_map(|m| m.missing).collect();
    let notes: Vec<&str> = runs.iter().filter_map(|m| m.note.as_deref()).collect();
    let note = notes.first().map(|first| {
        let others = notes.iter().skip(1).filter(|n| *n != first).count();
        if others == 0 {
            (*first).to_owned()
        } else {
            format!("{first} (similar in {others} other rounds)")
        }
    });
    Metrics {
        ops_per_sec: med(runs, |m| m.ops_per_sec),
        mb_per_sec: med(runs, |m| m.mb_per_sec),
        p50_ms: med(runs, |m| m.p50_ms),
        p99_ms: med(runs, |m| m.p99_ms),
        max_ms: med(runs, |m| m.max_ms),
        errors: runs.iter().map(|m| m.errors).sum(),
        rss_mib: med(runs, |m| m.rss_mib),
        cpu_us_per_op: med(runs, |m| m.cpu_us_per_op),
        client_cpu_us_per_op: med(runs, |m| m.client_cpu_us_per_op),
        rss_before_mib: med(runs, |m| m.rss_before_mib),
        rss_per_sub_kib: med(runs, |m| m.rss_per_sub_kib),
        rss_per_stream_kib: med(runs, |m| m.rss_per_stream_kib),
        missing: (!missing.is_empty()).then(|| missing.iter().sum()),
        restart_s: med(runs, |m| m.restart_s),
        note,
    }
}

/// Groups records by (label, backend, server), keeping first-seen order, and takes medians.
pub(crate) fn summarize(records: &[RunRecord]) -> Vec<Row> {
    let mut keys: Vec<(Scenario, String, Backend, String)> = Vec::new();
    for r in records {
        let k = (r.scenario, r.label.clone(), r.backend, r.server.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(scenario, label, backend, server)| {
            let group: Vec<&RunRecord> = records
                .iter()
                .filter(|r| r.label == label && r.backend == backend && r.server == server)
                .collect();
            let done: Vec<&Metrics> = group
                .iter()
                .filter_map(|r| match &r.outcome {
                    Outcome::Done(m) => Some(m),
                    _ => None,
                })
                .collect();
            let mut problems: Vec<String> = group
                .iter()
                .filter_map(|r| match &r.outcome {
                    Outcome::Done(_) => None,
                    Outcome::NotBuilt(_) => Some("not built".to_owned()),
                    Outcome::Failed(why) => Some(format!("failed: {why}")),
                })
                .collect();
            problems.dedup();
            let status = if done.is_empty() || problems.is_empty() {
                (!problems.is_empty()).then(|| problems.join("; "))
            } else {
                Some(format!(
                    "{} of {} rounds: {}",
                    problems.len(),
                    group.len(),
                    problems.join("; ")
                ))
            };
            Row {
                scenario,
                label,
                backend,
                server,
                rounds: done.len(),
                metrics: (!done.is_empty()).then(|| combine(&done)),
                status,
            }
        })
        .collect()
}

/// "Ours vs this peer" on the primary figure: above 1 means ours is ahead (more throughput,
/// or less latency or memory).
pub(crate) fn ours_advantage(scenario: Scenario, ours: f64, peer: f64) -> Option<f64> {
    if !(ours > 0.0 && peer > 0.0) {
        return None;
    }
    Some(if scenario.higher_is_better() {
        ours / peer
    } else {
        peer / ours
    })
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "—".to_owned(),
        Some(x) if x.abs() >= 100.0 => group_thousands(x.round()),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "—".to_owned(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
    }
}

/// `1234567.0` → `1,234,567`.
fn group_thousands(x: f64) -> String {
    let s = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

fn other_column(row: &Row, m: &Metrics) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(missing) = m.missing {
        parts.push(format!("missing {missing}"));
    }
    if let (Some(before), Some(after)) = (m.rss_before_mib, m.rss_mib) {
        if row.scenario == Scenario::BigRead {
            parts.push(format!(
                "RSS {before:.1} MiB before the read, peak {after:.1}"
            ));
        } else {
            parts.push(format!("RSS {before:.1}→{after:.1} MiB"));
        }
    }
    if let Some(k) = m.rss_per_sub_kib {
        parts.push(format!("{k:.1} KiB/sub"));
    }
    if let Some(k) = m.rss_per_stream_kib {
        parts.push(format!("{k:.2} KiB/stream"));
    }
    if row.scenario == Scenario::IdleStreams {
        match m.restart_s {
            Some(s) => parts.push(format!("restart {s:.2} s")),
            None => parts.push("restart n/a".to_owned()),
        }
    }
    if let Some(n) = &m.note {
        parts.push(n.clone());
    }
    if let Some(s) = &row.status {
        parts.push(s.clone());
    }
    parts.join(" · ")
}

fn ceiling_column(row: &Row, m: &Metrics, ceiling: &Ceiling) -> String {
    let mut parts = Vec::new();
    let pct = |v: Option<f64>, c: Option<f64>| match (v, c) {
        (Some(v), Some(c)) if c > 0.0 => Some(100.0 * v / c),
        _ => None,
    };
    match row.scenario {
        Scenario::Append1 | Scenario::AppendMany | Scenario::Create => {
            if let Some(p) = pct(m.ops_per_sec, ceiling.http_post_per_sec) {
                parts.push(format!("{p:.0}% HTTP"));
            }
            if row.backend.persistent()
                && let (Some(v), Some(f)) = (m.ops_per_sec, ceiling.fsync_per_sec)
                && f > 0.0
            {
                parts.push(format!("{:.1}× fsync", v / f));
            }
        }
        Scenario::Read | Scenario::BigRead => {
            if let Some(p) = pct(m.mb_per_sec, ceiling.http_read_mb_per_sec) {
                parts.push(format!("{p:.0}% HTTP"));
            }
        }
        Scenario::SseFanout | Scenario::LongpollFanout | Scenario::IdleStreams => {}
    }
    if parts.is_empty() {
        "—".to_owned()
    } else {
        parts.join(" · ")
    }
}

/// The Markdown table: one line per (scenario, backend, server), ours first in each group.
pub(crate) fn render_table(rows: &[Row], ceiling: &Ceiling) -> String {
    let header = [
        "scenario",
        "backend",
        "server",
        "ops/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "errors",
        "RSS MiB",
        "CPU µs/op",
        "client µs/op",
        "of ceiling",
        "ours ×",
        "other",
    ];
    let mut lines: Vec<Vec<String>> = Vec::new();
    for row in rows {
        let ours = rows
            .iter()
            .find(|r| r.label == row.label && r.backend == row.backend && r.server == "ours")
            .and_then(Row::primary);
        let is_ceiling = row.server == CEILING_NAME;
        let mut cells = vec![
            row.label.clone(),
            if is_ceiling {
                "—"
            } else {
                row.backend.name()
            }
            .to_owned(),
            row.server.clone(),
        ];
        if let Some(m) = &row.metrics {
            {
                let advantage = if row.server == "ours" || is_ceiling {
                    "—".to_owned()
                } else {
                    match (ours, row.primary()) {
                        (Some(o), Some(p)) => ours_advantage(row.scenario, o, p)
                            .map_or("—".to_owned(), |a| format!("{a:.2}×")),
                        _ => "—".to_owned(),
                    }
                };
                cells.extend([
                    num(m.ops_per_sec),
                    num(m.mb_per_sec),
                    ms(m.p50_ms),
                    ms(m.p99_ms),
                    ms(m.max_ms),
                    m.errors.to_string(),
                    num(m.rss_mib),
                    num(m.cpu_us_per_op),
                    num(m.client_cpu_us_per_op),
                    ceiling_column(row, m, ceiling),
                    advantage,
                    other_column(row, m),
                ]);
            }
        } else {
            cells.extend(std::iter::repeat_n("—".to_owned(), 11));
            cells.push(row.status.clone().unwrap_or_default());
        }
        lines.push(cells);
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for l in &lines {
        for (w, c) in widths.iter_mut().zip(l) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let emit = |out: &mut String, cells: &[String]| {
        out.push('|');
        for (c, w) in cells.iter().zip(&widths) {
            let pad = w - c.chars().count();
            let _ = write!(out, " {c}{} |", " ".repeat(pad));
        }
        out.push('\n');
    };
    emit(
        &mut out,
        &header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
    );
    emit(
        &mut out,
        &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
    );
    for l in &lines {
        emit(&mut out, l);
    }
    out
}

/// The ceiling lines printed above the table.
pub(crate) fn render_ceiling(c: &Ceiling) -> String {
    format!(
        "HTTP ceiling (bare hyper, append-1 shape, median of rounds): {} req/s, p50 {} ms, p99 {} ms\n\
         HTTP ceiling (bare hyper, read shape, median of rounds): {} MB/s\n\
         Disk ceiling (256 B write + fdatasync, one thread): {} syncs/s, p50 {} ms, p99 {} ms\n",
        num(c.http_post_per_sec),
        ms(c.http_post_p50_ms),
        ms(c.http_post_p99_ms),
        num(c.http_read_mb_per_sec),
        num(c.fsync_per_sec),
        ms(c.fsync_p50_ms),
        ms(c.fsync_p99_ms),
    )
}

fn metrics_json(m: &Metrics) -> Value {
    json!({
        "ops_per_sec": m.ops_per_sec,
        "mb_per_sec": m.mb_per_sec,
        "p50_ms": m.p50_ms,
        "p99_ms": m.p99_ms,
        "max_ms": m.max_ms,
        "errors": m.errors,
        "rss_mib": m.rss_mib,
        "cpu_us_per_op": m.cpu_us_per_op,
        "client_cpu_us_per_op": m.client_cpu_us_per_op,
        "rss_before_mib": m.rss_before_mib,
        "rss_per_subscriber_kib": m.rss_per_sub_kib,
        "rss_per_stream_kib": m.rss_per_stream_kib,
        "missing": m.missing,
        "restart_s": m.restart_s,
        "note": m.note,
    })
}

fn outcome_json(o: &Outcome) -> Value {
    match o {
        Outcome::Done(m) => json!({"status": "done", "metrics": metrics_json(m)}),
        Outcome::NotBuilt(why) => json!({"status": "not-built", "message": why}),
        Outcome::Failed(why) => json!({"status": "failed", "message": why}),
    }
}

fn ceiling_json(c: &Ceiling) -> Value {
    json!({
        "http_post_per_sec": c.http_post_per_sec,
        "http_post_p50_ms": c.http_post_p50_ms,
        "http_post_p99_ms": c.http_post_p99_ms,
        "http_read_mb_per_sec": c.http_read_mb_per_sec,
        "fsync_per_sec": c.fsync_per_sec,
        "fsync_p50_ms": c.fsync_p50_ms,
        "fsync_p99_ms": c.fsync_p99_ms,
    })
}

/// The results file: run context, ceilings, every run, and the medians the table shows.
pub(crate) fn to_json(
    context: &Value,
    ceiling: &Ceiling,
    records: &[RunRecord],
    rows: &[Row],
) -> Value {
    let runs: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "scenario": r.scenario.name(),
                "label": r.label,
                "backend": r.backend.name(),
                "server": r.server,
                "round": r.round,
                "outcome": outcome_json(&r.outcome),
            })
        })
        .collect();
    let medians: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({
                "scenario": row.scenario.name(),
                "label": row.label,
                "backend": row.backend.name(),
                "server": row.server,
                "rounds": row.rounds,
                "status": row.status,
                "metrics": row.metrics.as_ref().map(metrics_json),
            })
        })
        .collect();
    json!({
        "context": context,
        "ceiling": ceiling_json(ceiling),
        "medians": medians,
        "runs": runs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(server: &str, round: u32, ops: f64, errors: u64) -> RunRecord {
        RunRecord {
            scenario: Scenario::Append1,
            label: "append-1".into(),
            backend: Backend::Memory,
            server: server.into(),
            round,
            outcome: Outcome::Done(Metrics {
                ops_per_sec: Some(ops),
                p99_ms: Some(ops / 1000.0),
                errors,
                ..Metrics::default()
            }),
        }
    }

    #[test]
    fn summarize_takes_medians_and_sums_errors() {
        let records = vec![
            done("ours", 1, 100.0, 0),
            done("peer", 1, 50.0, 1),
            done("ours", 2, 300.0, 0),
            done("peer", 2, 40.0, 2),
            done("ours", 3, 200.0, 0),
            done("peer", 3, 60.0, 0),
        ];
        let rows = summarize(&records);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].server, "ours");
        let ours = rows[0].metrics.as_ref().unwrap();
        assert_eq!(ours.ops_per_sec, Some(200.0));
        assert_eq!(ours.errors, 0);
        let peer = rows[1].metrics.as_ref().unwrap();
        assert_eq!(peer.ops_per_sec, Some(50.0));
        assert_eq!(peer.errors, 3);
        assert_eq!(rows[1].rounds, 3);
        assert_eq!(rows[1].status, None);
    }

    #[test]
    fn not_built_rows_have_a_status_and_no_figures() {
        let records = vec![RunRecord {
            scenario: Scenario::Read,
            label: "read".into(),
            backend: Backend::Acid,
            server: "ours".into(),
            round: 1,
            outcome: Outcome::NotBuilt("storage mode \"acid\" is not built".into()),
        }];
        let rows = summarize(&records);
        assert_eq!(rows[0].metrics, None);
        assert_eq!(rows[0].status.as_deref(), Some("not built"));
        let table = render_table(&rows, &Ceiling::default());
        assert!(table.contains("| read "));
        assert!(table.contains("not built"));
        // As many cells as the header: the columns stay aligned.
        let width = table.lines().next().unwrap().chars().count();
        assert!(table.lines().all(|l| l.chars().count() == width), "{table}");
    }

    #[test]
    fn advantage_is_above_one_when_ours_is_ahead() {
        assert_eq!(ours_advantage(Scenario::Append1, 200.0, 100.0), Some(2.0));
        // Latency: lower is better, so a peer at twice our p99 is a 2× advantage.
        assert_eq!(ours_advantage(Scenario::SseFanout, 5.0, 10.0), Some(2.0));
        assert_eq!(ours_advantage(Scenario::Read, 0.0, 10.0), None);
    }

    #[test]
    fn table_has_aligned_columns_and_ratios() {
        let records = vec![done("ours", 1, 30_000.0, 0), done("v015", 1, 60_000.0, 0)];
        let ceiling = Ceiling {
            http_post_per_sec: Some(120_000.0),
            ..Ceiling::default()
        };
        let table = render_table(&summarize(&records), &ceiling);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        let width = lines[0].chars().count();
        assert!(lines.iter().all(|l| l.chars().count() == width), "{table}");
        assert!(lines[2].contains("30,000"));
        assert!(lines[2].contains("25% HTTP"));
        assert!(lines[3].contains("0.50×"), "{table}");
    }

    #[test]
    fn number_formatting() {
        assert_eq!(group_thousands(1_234_567.0), "1,234,567");
        assert_eq!(group_thousands(999.0), "999");
        assert_eq!(group_thousands(-1000.0), "-1,000");
        assert_eq!(num(Some(12.345)), "12.3");
        assert_eq!(num(Some(1.234)), "1.23");
        assert_eq!(num(None), "—");
        assert_eq!(ms(Some(0.1234)), "0.12");
        assert_eq!(ms(Some(123.4)), "123");
    }

    #[test]
    fn json_keeps_runs_and_medians() {
        let records = vec![done("ours", 1, 10.0, 0), done("ours", 2, 20.0, 0)];
        let rows = summarize(&records);
        let v = to_json(&json!({"date": "x"}), &Ceiling::default(), &records, &rows);
        assert_eq!(v["runs"].as_array().unwrap().len(), 2);
        assert_eq!(v["medians"][0]["metrics"]["ops_per_sec"], json!(15.0));
        assert_eq!(v["medians"][0]["rounds"], json!(2));
        assert_eq!(v["runs"][1]["outcome"]["status"], json!("done"));
        assert_eq!(v["context"]["date"], json!("x"));
        // Round-trips through text.
        let text = serde_json::to_string_pretty(&v).unwrap();
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn big_read_is_judged_by_its_peak_rss() {
        let row = Row {
            scenario: Scenario::BigRead,
            label: "big-read".into(),
            backend: Backend::Acid,
            server: "ours".into(),
            rounds: 1,
            metrics: Some(Metrics {
                mb_per_sec: Some(500.0),
                rss_before_mib: Some(20.0),
                rss_mib: Some(42.5),
                ..Metrics::default()
            }),
            status: None,
        };
        assert_eq!(row.primary(), Some(42.5));
        let s = other_column(&row, row.metrics.as_ref().unwrap());
        assert_eq!(s, "RSS 20.0 MiB before the read, peak 42.5");
        // Less memory is better: a peer at twice our peak is a 2× advantage.
        assert_eq!(ours_advantage(Scenario::BigRead, 42.5, 85.0), Some(2.0));
    }

    #[test]
    fn fanout_other_column_shows_missing_and_memory() {
        let row = Row {
            scenario: Scenario::SseFanout,
            label: "sse-fanout/1000".into(),
            backend: Backend::Memory,
            server: "ours".into(),
            rounds: 1,
            metrics: Some(Metrics {
                missing: Some(0),
                rss_before_mib: Some(10.0),
                rss_mib: Some(20.0),
                rss_per_sub_kib: Some(10.24),
                ..Metrics::default()
            }),
            status: None,
        };
        let s = other_column(&row, row.metrics.as_ref().unwrap());
        assert_eq!(s, "missing 0 · RSS 10.0→20.0 MiB · 10.2 KiB/sub");
    }
}
