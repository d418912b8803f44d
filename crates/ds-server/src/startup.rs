//! Phase-aware startup: every failure names the phase it happened in, and each phase has its
//! own exit code, so operators and process managers can tell a bad config from a busy port.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ds_storage::Storage;
use tokio::net::TcpListener;

use crate::config::{Config, ConfigError, ConfigLoadOptions, StorageMode, TransportMode};
use crate::router::{RouterSettings, build_router};

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

/// Initialises `tracing` from `RUST_LOG`, else `observability.rust_log`.
pub fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.observability.rust_log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second initialisation (tests, embedders with their own subscriber) is not an error.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs the server until `shutdown` completes (or SIGINT/SIGTERM when it is `None`).
pub async fn serve(
    cfg: Config,
    shutdown: Option<tokio::sync::oneshot::Receiver<()>>,
) -> Result<(), StartupError> {
    if cfg.transport.mode != TransportMode::Http {
        return Err(StartupError::new(
            Phase::ValidateConfig,
            format!(
                "transport.mode {:?} is not built yet in this version; use \"http\" behind a TLS-terminating proxy",
                cfg.transport.mode
            ),
        ));
    }
    crate::backend::serve_on_configured_backend(cfg, shutdown).await
}

/// Serves `storage` with `cfg` until shutdown: binds, builds the router, runs the expiry
/// sweeper, and drains on shutdown.
pub async fn run<S: Storage>(
    cfg: Config,
    storage: Arc<S>,
    shutdown: Option<tokio::sync::oneshot::Receiver<()>>,
) -> Result<(), StartupError> {
    let addr: SocketAddr = cfg.server.bind_address.parse().map_err(|e| {
        StartupError::new(
            Phase::ValidateConfig,
            format!("server.bind_address {:?}: {e}", cfg.server.bind_address),
        )
    })?;
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        StartupError::new(Phase::BindListener, format!("cannot listen on {addr}: {e}"))
    })?;
    let local = listener.local_addr().map_err(|e| {
        StartupError::new(
            Phase::BindListener,
            format!("cannot read the bound address: {e}"),
        )
    })?;
    let settings = RouterSettings::from_config(&cfg);
    let router = build_router(Arc::clone(&storage), settings);

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

    eprintln!(
        "durable-streams-server listening on http://{local}\n  transport: {:?}, HTTP versions: {}\n  storage: {} ({})\n  streams: {}",
        cfg.transport.mode,
        cfg.transport.http.versions.join(", "),
        cfg.storage.mode.as_str(),
        if cfg.storage.mode == StorageMode::Memory {
            "in memory, lost on restart".to_owned()
        } else {
            cfg.storage.data_dir.display().to_string()
        },
        cfg.http.stream_base_path,
    );
    tracing::info!(address = %local, storage = cfg.storage.mode.as_str(), "server started");

    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            match shutdown {
                Some(rx) => {
                    let _ = rx.await;
                }
                None => shutdown_signal().await,
            }
        })
        .await
        .map_err(|e| StartupError::new(Phase::StartServer, format!("server failed: {e}")));
    sweeper.abort();
    result
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: draining connections");
}
