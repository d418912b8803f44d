//! Server processes under test: how each kind is started for a backend, readiness, RSS, and
//! kill-on-drop so no server outlives the bench.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use hyper::Method;
use tokio::process::{Child, Command};

use crate::args::Backend;
use crate::client::{Target, one_shot};

/// How long a server may take to start (or to recover its data dir on restart).
const STARTUP_PATIENCE: Duration = Duration::from_secs(120);

/// Big enough that no limit of the server under test interferes with a scenario.
const LARGE_LIMIT: &str = "68719476736";

/// How a server binary is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Ours and `durable-streams-server` 0.3.0: `DS_*` environment, streams under
    /// `/v1/stream`, liveness at `/healthz`.
    EnvConfig,
    /// `durable-streams` 0.1.5: flags (`--port`, `--data-dir`, `--durability`), streams at
    /// the root, liveness at `/health`.
    Flags,
    /// The bench's own bare-hyper server (`ds-bench __ceiling-server PORT`): no protocol, no
    /// storage; 204 to POST, a fixed 1 MiB body to anything else.
    Ceiling,
}

/// Table name of the bare-hyper ceiling server.
pub(crate) const CEILING_NAME: &str = "bare-hyper";

/// Extra arguments and environment variables that select a storage mode.
type ModeSettings = (Vec<&'static str>, Vec<(&'static str, &'static str)>);

/// A server binary and the name the table gives it.
#[derive(Debug, Clone)]
pub(crate) struct ServerSpec {
    /// `ours` or the `--against` name.
    pub(crate) name: String,
    /// The binary.
    pub(crate) path: PathBuf,
    /// How to configure it.
    pub(crate) kind: Kind,
}

impl ServerSpec {
    /// The extra command-line arguments and environment for `backend`, or `None` when this
    /// kind of server has no equivalent mode.
    fn mode_settings(&self, backend: Backend) -> Option<ModeSettings> {
        match self.kind {
            Kind::EnvConfig => Some((vec![], vec![("DS_STORAGE__MODE", backend.name())])),
            Kind::Flags => match backend {
                Backend::Memory => Some((vec!["--durability", "memory"], vec![])),
                Backend::FileDurable => Some((vec!["--durability", "wal"], vec![])),
                Backend::Acid => None,
            },
            Kind::Ceiling => Some((vec![], vec![])),
        }
    }

    /// Whether this server has an equivalent of `backend`.
    pub(crate) fn supports(&self, backend: Backend) -> bool {
        self.mode_settings(backend).is_some()
    }

    /// The peer's flag or mode for `backend`, for the docs.
    pub(crate) fn mode_label(&self, backend: Backend) -> Option<String> {
        let (args, env) = self.mode_settings(backend)?;
        Some(if args.is_empty() {
            env.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            args.join(" ")
        })
    }
}

/// Tells the two kinds apart by how they answer `--help` (0.1.5 rejects it).
pub(crate) async fn detect_kind(path: &Path) -> Result<Kind> {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        Command::new(path)
            .arg("--help")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("{} --help did not finish", path.display()))?
    .with_context(|| format!("cannot run {}", path.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("unknown argument") {
        Ok(Kind::Flags)
    } else if text.contains("--config") || text.contains("serve") {
        Ok(Kind::EnvConfig)
    } else {
        bail!(
            "cannot tell how to configure {}: its --help said {:?}",
            path.display(),
            text.chars().take(200).collect::<String>()
        )
    }
}

/// A free loopback port (bound and released; a tiny race we accept on a quiet machine).
pub(crate) fn free_port() -> Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

/// Why a server did not come up.
#[derive(Debug)]
pub(crate) enum StartError {
    /// It has no such storage mode and said so.
    NotBuilt(String),
    /// Anything else.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Failed(e)
    }
}

/// A server process that is answering HTTP. Dropping it kills the process.
#[derive(Debug)]
pub(crate) struct Running {
    child: Child,
    /// Process id, for `/proc/<pid>/status`.
    pub(crate) pid: u32,
    /// Where and how to reach it.
    pub(crate) target: Target,
    /// How it was configured.
    pub(crate) kind: Kind,
    /// Seconds from spawn to the first successful liveness answer.
    pub(crate) startup_s: f64,
}

impl Running {
    /// Server RSS in MiB, if the process is alive.
    pub(crate) fn rss_mib(&self) -> Option<f64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        parse_vm_rss_kib(&text).map(|kib| crate::stats::as_f64(kib) / 1024.0)
    }

    /// The server's and the bench's own CPU time so far (user + system, all threads), for
    /// [`CpuMark::per_op`] and [`CpuMark::client_per_op`].
    pub(crate) fn cpu(&self) -> CpuMark {
        CpuMark {
            server: self.cpu_ticks(),
            client: own_cpu_ticks(),
        }
    }

    /// `utime + stime` of `/proc/<pid>/stat`, in clock ticks.
    fn cpu_ticks(&self) -> Option<u64> {
        read_cpu_ticks(&format!("/proc/{}/stat", self.pid))
    }

    /// Starts sampling the server's RSS every `every`, keeping the highest value.
    pub(crate) fn sample_rss(&self, every: Duration) -> RssPeak {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let status = format!("/proc/{}/status", self.pid);
        let task = tokio::spawn(async move {
            let mut peak: Option<u64> = None;
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tick.tick() => {}
                }
                if let Some(kib) = std::fs::read_to_string(&status)
                    .ok()
                    .and_then(|t| parse_vm_rss_kib(&t))
                {
                    peak = peak.max(Some(kib));
                }
            }
            peak
        });
        RssPeak { stop, task }
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Whether the process has exited.
    pub(crate) fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

/// A running RSS sampler (see [`Running::sample_rss`]).
#[derive(Debug)]
pub(crate) struct RssPeak {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Option<u64>>,
}

impl RssPeak {
    /// Stops sampling; the highest RSS seen, in MiB (`None` if no sample was taken).
    pub(crate) async fn finish(self) -> Option<f64> {
        let _ = self.stop.send(());
        let kib = self.task.await.ok().flatten()?;
        Some(crate::stats::as_f64(kib) / 1024.0)
    }
}

/// Why a server exited during startup, from the last lines of its log.
fn exit_error(name: &str, log: &Path) -> StartError {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
    if text.contains("is not built") {
        StartError::NotBuilt(tail)
    } else {
        StartError::Failed(anyhow::anyhow!("{name} exited during startup: {tail}"))
    }
}

/// `VmRSS:   12345 kB` → 12345.
pub(crate) fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Starts `spec` on `backend` with data in `data_dir` (created if missing) and its output in
/// `log`, and waits until it answers its liveness check (or `ready_path`, when given, with a
/// 2xx).
pub(crate) async fn start(
    spec: &ServerSpec,
    backend: Backend,
    data_dir: &Path,
    log: &Path,
    ready_path: Option<&str>,
) -> Result<Running, StartError> {
    let (args, env) = spec.mode_settings(backend).ok_or_else(|| {
        StartError::NotBuilt(format!("{} has no {} mode", spec.name, backend.name()))
    })?;
    std::fs::create_dir_all(data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let port = free_port()?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    let mut cmd = Command::new(&spec.path);
    // Nothing from our own environment may configure the server under test.
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str()
            && (k.starts_with("DS_") || k == "RUST_LOG")
        {
            cmd.env_remove(k);
        }
    }
    let target = match spec.kind {
        Kind::EnvConfig => {
            // The run dir has no `config/`, so only built-in defaults and these apply.
            cmd.current_dir(data_dir.parent().unwrap_or(data_dir))
                .env("DS_SERVER__BIND_ADDRESS", addr.to_string())
                .env("DS_STORAGE__DATA_DIR", data_dir)
                .env("DS_OBSERVABILITY__RUST_LOG", "warn")
                .env("DS_LIMITS__MAX_STREAM_BYTES", LARGE_LIMIT)
                .env("DS_LIMITS__MAX_MEMORY_BYTES", LARGE_LIMIT);
            Target::new(addr, "/v1/stream", "/healthz")
        }
        Kind::Ceiling => {
            cmd.current_dir(data_dir.parent().unwrap_or(data_dir))
                .arg("__ceiling-server")
                .arg(port.to_string());
            Target::new(addr, "", "/")
        }
        Kind::Flags => {
            cmd.current_dir(data_dir.parent().unwrap_or(data_dir))
                .arg("--port")
                .arg(port.to_string())
                .arg("--host")
                .arg("127.0.0.1")
                .arg("--data-dir")
                .arg(data_dir);
            Target::new(addr, "", "/health")
        }
    };
    cmd.args(&args)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().context("dup log")?)
        .stderr(log_file)
        .kill_on_drop(true);
    let spawned = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("spawn {}", spec.path.display()))?;
    let pid = child.id().context("child has no pid")?;
    let mut running = Running {
        child,
        pid,
        target,
        kind: spec.kind,
        startup_s: 0.0,
    };
    let path = ready_path.map_or_else(|| running.target.health.clone(), str::to_owned);
    let deadline = spawned + STARTUP_PATIENCE;
    loop {
        if running.exited() {
            return Err(exit_error(&spec.name, log));
        }
        let method = if ready_path.is_some() {
            Method::HEAD
        } else {
            Method::GET
        };
        let last = match one_shot(&running.target, method.clone(), &path, None, Bytes::new()).await
        {
            Ok((parts, _)) if parts.status.is_success() => {
                running.startup_s = spawned.elapsed().as_secs_f64();
                return Ok(running);
            }
            Ok((parts, _)) => format!("HTTP {}", parts.status),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            return Err(StartError::Failed(anyhow::anyhow!(
                "{} did not answer {method} {path} with 2xx within {} s (last: {last})",
                spec.name,
                STARTUP_PATIENCE.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Linux's clock tick for `/proc` times (`USER_HZ`, fixed at 100 on every architecture the
/// bench runs on).
const TICKS_PER_SEC: f64 = 100.0;

/// The server's and the bench's CPU time at the start of a measured load.
pub(crate) struct CpuMark {
    server: Option<u64>,
    client: Option<u64>,
}

impl CpuMark {
    /// The server's CPU microseconds per operation since the mark (`None` without `/proc` or
    /// operations).
    pub(crate) fn per_op(&self, server: &Running, ops: u64) -> Option<f64> {
        us_per_op(self.server?, server.cpu_ticks()?, ops)
    }

    /// The bench's own CPU microseconds per operation since the mark: what the load generator
    /// took of the cores it shares with the server (nothing else runs in the bench during a
    /// closed-loop load).
    pub(crate) fn client_per_op(&self, ops: u64) -> Option<f64> {
        us_per_op(self.client?, own_cpu_ticks()?, ops)
    }
}

/// Microseconds per operation of the ticks between two readings.
fn us_per_op(from: u64, to: u64, ops: u64) -> Option<f64> {
    let spent = to.checked_sub(from)?;
    (ops > 0).then(|| crate::stats::as_f64(spent) / TICKS_PER_SEC * 1e6 / crate::stats::as_f64(ops))
}

/// `utime + stime` of the bench process itself, in clock ticks.
fn own_cpu_ticks() -> Option<u64> {
    read_cpu_ticks("/proc/self/stat")
}

/// `utime + stime` of the `/proc/<pid>/stat` file at `path`, in clock ticks.
fn read_cpu_ticks(path: &str) -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string(path).ok()?)
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces, so fields are counted after its closing one.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_from_proc_status() {
        let status = "Name:\tx\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nThreads:\t2\n";
        assert_eq!(parse_vm_rss_kib(status), Some(12345));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn backend_mapping_per_kind() {
        let flags = ServerSpec {
            name: "v015".into(),
            path: "/x".into(),
            kind: Kind::Flags,
        };
        assert_eq!(
            flags.mode_label(Backend::Memory).as_deref(),
            Some("--durability memory")
        );
        assert_eq!(
            flags.mode_label(Backend::FileDurable).as_deref(),
            Some("--durability wal")
        );
        assert!(!flags.supports(Backend::Acid));
        let env = ServerSpec {
            kind: Kind::EnvConfig,
            ..flags
        };
        assert_eq!(
            env.mode_label(Backend::Acid).as_deref(),
            Some("DS_STORAGE__MODE=acid")
        );
    }

    #[test]
    fn own_process_rss_is_readable() {
        let text = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(parse_vm_rss_kib(&text).unwrap() > 0);
    }

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        let stat = "4242 (ds server) S 1 4242 4242 0 -1 4194560 1000 0 0 0 317 58 0 0 20 0 6 0";
        assert_eq!(parse_cpu_ticks(stat), Some(375));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1"), None);
    }

    #[test]
    fn cpu_per_op_is_the_ticks_between_two_readings() {
        // 50 ticks of 10 ms over 1,000 operations: 500 µs each.
        assert_eq!(us_per_op(100, 150, 1_000), Some(500.0));
        assert_eq!(us_per_op(100, 150, 0), None);
        assert_eq!(us_per_op(150, 100, 1_000), None);
        assert!(
            own_cpu_ticks().is_some(),
            "the bench reads its own /proc/self/stat"
        );
    }
}
