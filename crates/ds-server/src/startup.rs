//! Phase-aware startup: every failure names the phase it happened in, and each phase has its
//! own exit code, so operators and process managers can tell a bad config from a busy port.
//!
//! The phases, in order: `[load_config]` (files, environment), `[validate_config]`
//! (cross-key rules), `[check_tls_files]` (paths exist and are readable files),
//! `[build_tls_context]` (PEM contents, key fits certificate, client CA), `[bind_listener]`,
//! `[start_server]` (storage, runtime). Once bound, a one-screen summary is printed.

use std::sync::Arc;
use std::time::Duration;

use ds_storage::Storage;
use tokio::net::{TcpListener, TcpSocket};

use crate::config::{Config, ConfigError, ConfigLoadOptions, StorageMode};
use crate::metrics::Metrics;
use crate::router::{RouterSettings, ShutdownToken, build_router_with_metrics};
use crate::tls::{self, TlsReloader};
use crate::transport::{self, ServeOptions, Trigger};

/// The startup phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading files and environment.
    LoadConfig,
    /// Checking that the values agree.
    ValidateConfig,
    /// Checking TLS files exist and are readable.
    CheckTlsFiles,
    /// Building the TLS configuration.
    BuildTlsContext,
    /// Binding the listen socket.
    BindListener,
    /// Opening storage and serving.
    StartServer,
}

impl Phase {
    /// The name shown in brackets in error messages.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Phase::LoadConfig => "load_config",
            Phase::ValidateConfig => "validate_config",
            Phase::CheckTlsFiles => "check_tls_files",
            Phase::BuildTlsContext => "build_tls_context",
            Phase::BindListener => "bind_listener",
            Phase::StartServer => "start_server",
        }
    }

    /// The process exit code for a failure in this phase.
    #[must_use]
    pub fn exit_code(self) -> u8 {
        match self {
            Phase::LoadConfig => 10,
            Phase::ValidateConfig => 11,
            Phase::CheckTlsFiles => 12,
            Phase::BuildTlsContext => 13,
            Phase::BindListener => 14,
            Phase::StartServer => 15,
        }
    }
}

/// A startup failure: the phase and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("[{}] {message}", phase.name())]
pub struct StartupError {
    /// Where startup failed.
    pub phase: Phase,
    /// What went wrong, for the operator.
    pub message: String,
}

impl StartupError {
    /// A failure in `phase`.
    pub fn new(phase: Phase, message: impl Into<String>) -> Self {
        StartupError {
            phase,
            message: message.into(),
        }
    }
}

/// Loads the configuration, mapping failures to their phase.
pub fn load_config(opts: &ConfigLoadOptions) -> Result<Config, StartupError> {
    Config::load(opts).map_err(|e| match e {
        ConfigError::Load(m) => StartupError::new(Phase::LoadConfig, m),
        ConfigError::Invalid(m) => StartupError::new(Phase::ValidateConfig, m),
    })
}

/// Initialises `tracing` (see [`telemetry::init_tracing`](crate::telemetry::init_tracing)) and
/// logs the configuration's deprecation warnings.
pub fn init_tracing(cfg: &Config) {
    crate::telemetry::init_tracing(cfg);
    for note in &cfg.deprecations {
        tracing::warn!(target: "ds_server::config", "deprecated config: {note}");
    }
}

/// `[check_tls_files]` then `[build_tls_context]`: the TLS configuration, or `None` in http
/// mode.
pub fn check_tls(cfg: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, StartupError> {
    if !cfg.transport.mode.is_tls() {
        return Ok(None);
    }
    tls::check_files(cfg)?;
    tls::server_config(cfg).map(Some)
}

/// Runs the server until `shutdown` completes (or SIGINT/SIGTERM when it is `None`).
///
/// The TLS phases run before the backend opens storage, so a bad certificate is reported
/// without touching the data directory. Before storage opens, the process's soft open-file
/// limit is raised to its hard limit ([`raise_open_file_limit`]).
pub async fn serve(
    cfg: Config,
    shutdown: Option<tokio::sync::oneshot::Receiver<()>>,
) -> Result<(), StartupError> {
    check_tls(&cfg)?;
    raise_open_file_limit();
    crate::backend::serve_on_configured_backend(cfg, shutdown).await
}

/// Raises the soft open-file limit (`RLIMIT_NOFILE`) to the hard limit, as servers holding
/// many connections and files do (the soft limit is often 1,024 while the hard one is far
/// higher), and returns the soft limit in force afterwards (`None` where it is unlimited or
/// cannot be read). The file backends size their pool of open stream files from it (see
/// `ds_storage_file::default_max_open_files`). A failure to raise it is logged and leaves
/// the limit as it was.
pub fn raise_open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        /// Linux refuses a soft limit above `fs.nr_open` (1,048,576 by default), which an
        /// unlimited hard limit would ask for.
        const UNLIMITED_CAP: u64 = 1 << 20;
        let limit = getrlimit(Resource::Nofile);
        let target = limit.maximum.unwrap_or(UNLIMITED_CAP);
        match limit.current {
            Some(current) if current < target => {
                let raised = Rlimit {
                    current: Some(target),
                    maximum: limit.maximum,
                };
                match setrlimit(Resource::Nofile, raised) {
                    Ok(()) => {
                        tracing::debug!(from = current, to = target, "raised the open-file limit");
                        Some(target)
                    }
                    Err(e) => {
                        tracing::warn!(
                            limit = current,
                            hard = target,
                            error = %e,
                            "cannot raise the open-file limit"
                        );
                        Some(current)
                    }
                }
            }
            current => current,
        }
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Serves `storage` with `cfg` until shutdown: builds the TLS context, binds, builds the
/// router, runs the expiry sweeper, and drains on shutdown (see the `transport` module docs).
pub async fn run<S: Storage>(
    cfg: Config,
    storage: Arc<S>,
    shutdown: Option<tokio::sync::oneshot::Receiver<()>>,
) -> Result<(), StartupError> {
    run_with(cfg, storage, shutdown, Extras::default()).await
}

/// What a server adds around the protocol routes.
#[derive(Default)]
pub struct Extras {
    /// Serves the reserved `{base}/__ds/...` namespace (the subscription APIs).
    pub reserved: Option<axum::Router>,
    /// Runs once connections have drained, before the store is closed (e.g. to stop and flush
    /// the subscription engine, which holds the store).
    pub on_drained: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl std::fmt::Debug for Extras {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extras")
            .field("reserved", &self.reserved.is_some())
            .field("on_drained", &self.on_drained.is_some())
            .finish()
    }
}

/// Connections the kernel queues for the listener while every connection slot is taken
/// (`server.max_connections`); Linux caps it at `net.core.somaxconn`. Tokio's `bind` asks for
/// 128, which a burst of clients past the connection limit overflows: the kernel then drops
/// their handshakes and they wait out TCP's retransmission back-off (seconds) instead of
/// their turn. nginx and Node ask for 511, Go for `somaxconn` itself.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds the listener with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as `TcpListener::bind`
/// sets, so a restart does not wait for the old connections' `TIME_WAIT`).
fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// [`run`] with [`Extras`].
pub async fn run_with<S: Storage>(
    cfg: Config,
    storage: Arc<S>,
    shutdown: Option<tokio::sync::oneshot::Receiver<()>>,
    extras: Extras,
) -> Result<(), StartupError> {
    let tls_config = check_tls(&cfg)?;
    let addr = cfg
        .bind_address()
        .map_err(|e| StartupError::new(Phase::ValidateConfig, e.to_string()))?;
    let listener = bind(addr).map_err(|e| {
        StartupError::new(Phase::BindListener, format!("cannot listen on {addr}: {e}"))
    })?;
    let local = listener.local_addr().map_err(|e| {
        StartupError::new(
            Phase::BindListener,
            format!("cannot read the bound address: {e}"),
        )
    })?;
    let settings = RouterSettings::from_config(&cfg);
    let token = ShutdownToken::new();
    let metrics = Arc::new(Metrics::default());
    let (router, stream) = build_router_with_metrics(
        Arc::clone(&storage),
        settings,
        token.clone(),
        Arc::clone(&metrics),
        extras.reserved,
    );
    let tls = tls_config.map(|c| Arc::new(TlsReloader::new(cfg.clone(), c)));

    // Expired streams are invisible at once; this reclaims their memory or disk in the background.
    let sweeper = {
        let storage = Arc::clone(&storage);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                if let Err(e) = storage.sweep_expired().await {
                    tracing::warn!(error = %e, "expiry sweep failed");
                }
            }
        })
    };

    eprintln!("{}", summary(&cfg, local));
    tracing::info!(
        server.address = %local,
        transport = cfg.transport.mode.as_str(),
        storage = cfg.storage.mode.as_str(),
        profile = cfg.profile.as_str(),
        "server started"
    );

    let trigger = match shutdown {
        Some(rx) => Trigger::Channel(Some(rx)),
        None => Trigger::Signals,
    };
    let opts = ServeOptions {
        drain_timeout: Duration::from_secs(cfg.server.drain_timeout_secs),
        shutdown_delay: Duration::from_secs(cfg.server.shutdown_delay_secs),
        max_connections: cfg.server.max_connections,
        conn: transport::ConnLimits {
            header_read_timeout: Duration::from_secs(
                cfg.transport.connection.header_read_timeout_secs,
            ),
            idle_timeout: Duration::from_secs(
                cfg.transport.connection.effective_idle_timeout_secs(),
            ),
            max_header_bytes: cfg.limits.max_header_bytes,
            max_header_count: cfg.limits.max_header_count,
        },
    };
    transport::serve(
        listener,
        tls,
        transport::Routes { router, stream },
        metrics,
        token,
        opts,
        trigger,
    )
    .await;
    if let Some(on_drained) = extras.on_drained {
        on_drained.await;
    }
    sweeper.abort();
    // Wait for the aborted task to be dropped, so it no longer holds the store.
    let _ = sweeper.await;
    // The store closes (and a durable backend flushes) when its last handle drops; a
    // connection that outlived the drain timeout may still hold one until it ends.
    if let Ok(store) = Arc::try_unwrap(storage) {
        drop(store);
        tracing::info!("storage closed");
    } else {
        tracing::warn!("storage still in use by connections past the drain timeout");
    }
    Ok(())
}

/// The one-screen startup summary.
#[must_use]
pub fn summary(cfg: &Config, local: std::net::SocketAddr) -> String {
    let scheme = if cfg.transport.mode.is_tls() {
        "https"
    } else {
        "http"
    };
    let tls = &cfg.transport.tls;
    let mut lines = vec![
        format!("durable-streams-server listening on {scheme}://{local}"),
        format!("  profile:    {}", cfg.profile),
        format!(
            "  transport:  {} (HTTP versions: {})",
            cfg.transport.mode.as_str(),
            cfg.transport.http.versions.join(", ")
        ),
    ];
    if cfg.transport.mode.is_tls() {
        lines.push(format!(
            "  tls:        {}..{}, ALPN {}, client certificates {}",
            tls.min_version,
            tls.max_version,
            tls.alpn_protocols.join(", "),
            if cfg.transport.mode == crate::config::TransportMode::Mtls {
                "required"
            } else {
                "not requested"
            }
        ));
    }
    lines.push(format!(
        "  storage:    {} ({})",
        cfg.storage.mode.as_str(),
        if cfg.storage.mode == StorageMode::Memory {
            "in memory, lost on restart".to_owned()
        } else {
            cfg.storage.data_dir.display().to_string()
        }
    ));
    lines.push(format!(
        "  streams:    {}{}",
        cfg.http.stream_base_path,
        if cfg.observability.metrics_enabled {
            "   health: /healthz /readyz   metrics: /metrics"
        } else {
            "   health: /healthz /readyz"
        }
    ));
    lines.push(format!(
        "  proxy:      {}",
        if cfg.proxy.enabled {
            format!(
                "trusting {} from {}",
                cfg.proxy.forwarded_headers.as_str(),
                cfg.proxy.trusted_proxies.join(", ")
            )
        } else {
            "no forwarded headers trusted".to_owned()
        }
    ));
    let limits = &cfg.limits;
    lines.push(format!(
        "  limits:     {} connections, {} live readers ({} per stream), rate limit {}",
        cfg.server.max_connections,
        limits.max_live_readers,
        limits.max_live_readers_per_stream,
        if limits.rate_limit_requests_per_sec == 0 {
            "off".to_owned()
        } else {
            format!(
                "{}/s per client (burst {})",
                limits.rate_limit_requests_per_sec, limits.rate_limit_burst
            )
        }
    ));
    lines.push(format!(
        "  shutdown:   drain up to {}s",
        cfg.server.drain_timeout_secs
    ));
    lines.join("\n")
}
