//! `ds-bench`: a side-by-side benchmark of Durable Streams servers.
//!
//! It drives server binaries from outside (ours and any peers named with `--against`), each
//! on a free loopback port with a fresh data dir, through its own load generator (tokio plus
//! hyper's client connections: one keep-alive connection per worker, sequential requests,
//! prebuilt `Bytes` bodies). Scenarios run alternately across servers for several rounds; the
//! table shows medians, next to the machine's ceilings (a bare hyper server and an fdatasync
//! loop) so each figure can be read as a fraction of the physical limit. It depends on no
//! workspace crate, so it measures exactly what an operator would run.
//!
//! Entry points: [`args`] (the CLI), [`scenarios`] (what is measured), [`report`] (table and
//! JSON). `cargo xtask bench` builds the servers in release and runs this binary.

mod args;
mod ceiling;
mod client;
mod context;
mod fanout;
mod leftovers;
mod load;
mod report;
mod scenarios;
mod server;
mod stats;
mod wire;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use crate::args::{Backend, Command, Options, Scenario, USAGE};
use crate::report::{Outcome, RunRecord};
use crate::scenarios::Sizes;
use crate::server::{Kind, ServerSpec};

fn main() -> ExitCode {
    let cmd = match args::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ds-bench: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match cmd {
        Command::Help => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Command::CeilingServer { port } => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("ds-bench: runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Err(e) = rt.block_on(ceiling::serve(port)) {
                eprintln!("ds-bench: ceiling server: {e:#}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Command::Run(opts) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(opts.client_threads)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("ds-bench: runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // Dropping the run future on Ctrl-C drops every `Running`, which kills its server.
            let result = rt.block_on(async {
                tokio::select! {
                    r = run(*opts) => r,
                    _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
                }
            });
            drop(rt);
            match result {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("ds-bench: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The workspace root: this crate's parent directory, as built.
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

fn label(scenario: Scenario, subscribers: usize, sizes: &Sizes) -> String {
    match scenario {
        Scenario::SseFanout => format!("{}/{subscribers}", scenario.name()),
        Scenario::LongpollFanout => format!("{}/{}", scenario.name(), sizes.lp_readers),
        _ => scenario.name().to_owned(),
    }
}

fn progress(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Done(m) => {
            let mut parts = Vec::new();
            if let Some(v) = m.ops_per_sec {
                parts.push(format!("{v:.0} ops/s"));
            }
            if let Some(v) = m.mb_per_sec {
                parts.push(format!("{v:.1} MB/s"));
            }
            if let Some(v) = m.p99_ms {
                parts.push(format!("p99 {v:.2} ms"));
            }
            parts.push(format!("errors {}", m.errors));
            if let Some(v) = m.missing {
                parts.push(format!("missing {v}"));
            }
            if let Some(v) = m.rss_mib {
                parts.push(format!("RSS {v:.1} MiB"));
            }
            if let Some(v) = m.rss_per_sub_kib {
                parts.push(format!("{v:.1} KiB/sub"));
            }
            if let Some(v) = m.restart_s {
                parts.push(format!("restart {v:.2} s"));
            }
            if let Some(n) = &m.note {
                parts.push(n.clone());
            }
            parts.join(", ")
        }
        Outcome::NotBuilt(m) => format!("not built ({m})"),
        Outcome::Failed(m) => format!("FAILED: {m}"),
    }
}

fn sizes_json(s: &Sizes, subscribers: &[usize]) -> serde_json::Value {
    json!({
        "secs": s.secs,
        "append_1": {"connections": s.append1_conns, "bytes": s.append1_bytes},
        "append_many": {"connections": s.many_conns, "streams": s.many_streams, "bytes": s.many_bytes},
        "read": {"connections": s.read_conns, "stream_bytes": s.read_total, "fill_chunk": s.read_chunk},
        "big_read": {"connections": s.big_read_conns, "stream_bytes": s.big_read_total, "fill_chunk": s.big_read_chunk, "rss_sample_ms": 10},
        "sse_fanout": {"subscribers": subscribers, "messages": s.sse_messages, "rate": s.sse_rate},
        "longpoll_fanout": {"readers": s.lp_readers, "messages": s.lp_messages, "rate": s.lp_rate},
        "create": {"connections": s.create_conns},
        "idle_streams": {"streams": s.idle_streams, "connections": s.idle_conns, "cap_secs": s.idle_cap.as_secs()},
    })
}

/// Ours, the bare-hyper ceiling (unless `--no-ceiling`) and the `--against` peers (none in a
/// smoke run), each with its configuration kind.
async fn servers(opts: &Options, root: &Path) -> Result<Vec<ServerSpec>> {
    let ours = opts
        .ours
        .clone()
        .unwrap_or_else(|| root.join("target/release/durable-streams-server"));
    if !ours.is_file() {
        bail!(
            "{} not found; build it first (cargo build --release -p durable-streams-server) or pass --ours",
            ours.display()
        );
    }
    let mut servers = vec![ServerSpec {
        name: "ours".to_owned(),
        path: ours,
        kind: Kind::EnvConfig,
    }];
    if opts.smoke {
        if !opts.against.is_empty() {
            eprintln!("ds-bench: --smoke runs our server alone; ignoring --against");
        }
    } else {
        for (name, path) in &opts.against {
            let kind = server::detect_kind(path)
                .await
                .with_context(|| format!("--against {name}"))?;
            servers.push(ServerSpec {
                name: name.clone(),
                path: path.clone(),
                kind,
            });
        }
    }
    if !opts.no_ceiling {
        servers.push(ServerSpec {
            name: server::CEILING_NAME.to_owned(),
            path: std::env::current_exe().context("locate ds-bench")?,
            kind: Kind::Ceiling,
        });
    }
    Ok(servers)
}

/// What the matrix of runs needs besides the servers.
struct Plan {
    scenarios: Vec<Scenario>,
    backends: Vec<Backend>,
    rounds: u32,
    subscribers: Vec<usize>,
    sizes: Sizes,
    data_root: PathBuf,
}

/// Every scenario × variant × backend × round × server, servers alternating within a round,
/// each in a fresh data dir. The finished runs' data dirs are handed back with the records, to
/// be removed once the results are out (see [`leftovers`]).
/// A server that lacks a backend is asked once, then skipped. The bare-hyper ceiling runs in
/// the append-1 and read rounds of the first backend only (it has no storage).
async fn run_matrix(plan: &Plan, servers: &[ServerSpec]) -> (Vec<RunRecord>, leftovers::Leftovers) {
    let mut records = Vec::new();
    let mut leftovers = leftovers::Leftovers::new(leftovers::KEEP_BYTES);
    let mut not_built: HashSet<(String, Backend)> = HashSet::new();
    for &scenario in &plan.scenarios {
        let variants = if scenario == Scenario::SseFanout {
            plan.subscribers.clone()
        } else {
            vec![0]
        };
        for &subs in &variants {
            let label = label(scenario, subs, &plan.sizes);
            for &backend in &plan.backends {
                for round in 1..=plan.rounds {
                    for spec in servers {
                        let ceiling_skips = spec.kind == Kind::Ceiling
                            && (!matches!(scenario, Scenario::Append1 | Scenario::Read)
                                || Some(&backend) != plan.backends.first());
                        if ceiling_skips
                            || !spec.supports(backend)
                            || not_built.contains(&(spec.name.clone(), backend))
                        {
                            continue;
                        }
                        let run_dir = plan.data_root.join(format!(
                            "{}-{}-{}-r{round}",
                            label.replace('/', "-"),
                            backend.name(),
                            spec.name
                        ));
                        let t = Instant::now();
                        let outcome = scenarios::run_one(
                            scenario,
                            subs,
                            spec,
                            backend,
                            &run_dir,
                            &plan.sizes,
                        )
                        .await;
                        leftovers.keep(run_dir.join("data"));
                        eprintln!(
                            "[{label} {} {} r{round}] {} ({:.1} s)",
                            backend.name(),
                            spec.name,
                            progress(&outcome),
                            t.elapsed().as_secs_f64()
                        );
                        if matches!(outcome, Outcome::NotBuilt(_)) {
                            not_built.insert((spec.name.clone(), backend));
                        }
                        records.push(RunRecord {
                            scenario,
                            label: label.clone(),
                            backend,
                            server: spec.name.clone(),
                            round,
                            outcome,
                        });
                    }
                }
            }
        }
    }
    (records, leftovers)
}

/// The results file's `context`: when, where, what, and how.
async fn context_json(
    opts: &Options,
    plan: &Plan,
    servers: &[ServerSpec],
    root: &Path,
    loadavg_start: Option<String>,
    wall_secs: f64,
) -> serde_json::Value {
    let mut server_json = Vec::new();
    for s in servers {
        let modes: serde_json::Map<String, serde_json::Value> = plan
            .backends
            .iter()
            .map(|&b| (b.name().to_owned(), json!(s.mode_label(b))))
            .collect();
        server_json.push(json!({
            "name": s.name,
            "path": s.path.display().to_string(),
            "kind": format!("{:?}", s.kind),
            "version": if s.kind == Kind::Ceiling {
                "ds-bench bare hyper 1 (http1)".to_owned()
            } else {
                context::version_of(&s.path).await
            },
            "modes": modes,
        }));
    }
    json!({
        "date": context::now(),
        "machine": context::machine(),
        "loadavg_start": loadavg_start,
        "loadavg_end": context::loadavg(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "workspace_revision": context::git_revision(root).await,
        "rounds": plan.rounds,
        "smoke": opts.smoke,
        "client_threads": opts.client_threads,
        "sizes": sizes_json(&plan.sizes, &plan.subscribers),
        "servers": server_json,
        "wall_secs": wall_secs,
        "notes": [
            "figures are medians over rounds; errors and missing are totals over rounds",
            "idle-streams restart is a crash restart: SIGKILL, then time from spawn to a stream answering HEAD",
        ],
    })
}

async fn run(opts: Options) -> Result<bool> {
    let root = workspace_root();
    let servers = servers(&opts, &root).await?;
    let sizes = if opts.smoke {
        Sizes::smoke()
    } else {
        Sizes::full(opts.secs, opts.readers, opts.big_read_mib)
    };
    let plan = Plan {
        scenarios: opts.scenarios.clone(),
        backends: opts.backends.clone(),
        rounds: if opts.smoke { 1 } else { opts.rounds },
        subscribers: if opts.smoke {
            vec![20]
        } else {
            opts.subscribers.clone()
        },
        sizes,
        data_root: opts
            .data_root
            .clone()
            .unwrap_or_else(|| root.join("target/bench/data")),
    };
    if plan.data_root.exists() {
        std::fs::remove_dir_all(&plan.data_root)
            .with_context(|| format!("clear {}", plan.data_root.display()))?;
    }
    std::fs::create_dir_all(&plan.data_root)?;
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| root.join("target/bench/results.json"));
    let began = Instant::now();
    let loadavg_start = context::loadavg();

    let mut ceiling = if opts.no_ceiling {
        report::Ceiling::default()
    } else {
        let fsync_secs = if opts.smoke { 0.5 } else { 2.0 };
        ceiling::measure_disk(&plan.data_root, fsync_secs).await
    };

    let (records, mut leftovers) = run_matrix(&plan, &servers).await;
    let rows = report::summarize(&records);
    ceiling::absorb_http(&mut ceiling, &rows);
    println!("{}", report::render_ceiling(&ceiling));
    println!("{}", report::render_table(&rows, &ceiling));

    let ctx = context_json(
        &opts,
        &plan,
        &servers,
        &root,
        loadavg_start,
        began.elapsed().as_secs_f64(),
    )
    .await;
    let doc = report::to_json(&ctx, &ceiling, &records, &rows);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("write {}", out.display()))?;
    eprintln!(
        "ds-bench: wrote {} ({:.0} s)",
        out.display(),
        began.elapsed().as_secs_f64()
    );
    // After the results: a full run's data dirs hold hundreds of thousands of files, which
    // take minutes to remove.
    eprintln!("ds-bench: removing the runs' data dirs");
    leftovers.clear();

    // A smoke run fails if any scenario of ours failed, erred or lost a delivery.
    let healthy = records.iter().all(|r| match &r.outcome {
        Outcome::Done(m) => !opts.smoke || (m.errors == 0 && m.missing.unwrap_or(0) == 0),
        Outcome::NotBuilt(_) => true,
        Outcome::Failed(_) => !opts.smoke,
    });
    Ok(healthy)
}
