//! The command line of `durable-streams-server`.
//!
//! This crate owns argument parsing (clap) and turns each command into calls on `ds-server` and
//! the storage backends: `serve` (the default command) runs the server; `list` shows the
//! streams of the configured backend's data dir while no server holds it; `export` and
//! `import` move streams between data dirs (and backends) through the transfer format
//! ([`transfer`], [`export`], [`import`]). [`run`] returns a
//! typed [`Failure`] so the binary can map startup failures to the exit code of their phase.

pub mod export;
pub mod import;
mod list;
mod offline;
pub mod progress;
mod transfer_cmd;

/// The transfer format of `export` and `import` (the `ds-transfer` crate).
pub use ds_transfer as transfer;

use std::io::Write as _;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ds_server::startup::{self, StartupError};
use ds_server::{Config, ConfigLoadOptions, DeploymentProfile};
use ds_storage::Storage as _;

/// Command line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "durable-streams-server",
    version,
    about = "Durable Streams protocol server"
)]
pub struct Cli {
    /// Deployment profile: default, dev, prod, prod-tls or prod-mtls. Its built-in defaults
    /// sit under `config/default.toml`, and `config/<profile>.toml` is read after it.
    #[arg(long, global = true, value_name = "NAME", default_value = "default")]
    pub profile: String,
    /// Extra TOML config file, layered over `config/default.toml`, `config/<profile>.toml` and
    /// `config/local.toml`; it must exist.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Directory holding `default.toml`, `<profile>.toml` and `local.toml` (default `./config`).
    #[arg(long, global = true, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// List the streams in the configured backend's data dir (the server must be stopped).
    List {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Also list the server's internal `__ds/` streams (subscription state, signing key).
        #[arg(long)]
        all: bool,
    },
    /// Write the streams of the configured backend's data dir to a transfer file (the server
    /// must be stopped). Forks stay forks; internal `__ds/` streams are left out.
    Export {
        /// Where to write (default: standard output, which must not be a terminal).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Export only this stream (repeatable). A fork whose source is not exported too is
        /// written as a plain stream holding its inherited data.
        #[arg(long = "stream", value_name = "NAME")]
        streams: Vec<String>,
        /// Also export the webhook signing key (`__ds/keys/webhook-signing`).
        #[arg(long)]
        include_signing_key: bool,
    },
    /// Re-create the streams of a transfer file in the configured backend's data dir (the
    /// server must be stopped). A file is checked completely before anything is written.
    Import {
        /// The file to read (default: standard input, which is imported as it is read).
        #[arg(short, long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// What to do with a stream that already exists in the target.
        #[arg(long, value_enum, default_value_t = import::OnConflict::Fail)]
        on_conflict: import::OnConflict,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The server (or the configuration any command loads) failed in a startup phase.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// An offline command (`list`) failed; shown with its chain of causes.
    #[error("{0:#}")]
    Command(anyhow::Error),
}

impl Failure {
    /// The process exit code: the startup phase's code (10–15), or 1 for a failed command.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Startup(e) => e.phase.exit_code(),
            Failure::Command(_) => 1,
        }
    }
}

/// Parses the process arguments and runs the command.
pub fn main() -> Result<(), Failure> {
    run(Cli::parse())
}

/// Runs a parsed command line to completion.
pub fn run(cli: Cli) -> Result<(), Failure> {
    // An unknown profile is a configuration error, reported (and exiting) as `[load_config]`.
    let profile = cli
        .profile
        .parse::<DeploymentProfile>()
        .map_err(|e| StartupError::new(startup::Phase::LoadConfig, e.to_string()))?;
    let opts = ConfigLoadOptions {
        profile,
        config_dir: cli.config_dir,
        config_file: cli.config,
        ignore_env: false,
        env: None,
    };
    let cfg = startup::load_config(&opts)?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cfg).map_err(Failure::Startup),
        Command::List { json, all } => offline_runtime()?
            .block_on(list(&cfg, json, all))
            .map_err(Failure::Command),
        Command::Export {
            output,
            streams,
            include_signing_key,
        } => {
            let opts = export::ExportOptions {
                streams,
                include_signing_key,
            };
            offline_runtime()?
                .block_on(transfer_cmd::export(&cfg, output, &opts))
                .map_err(Failure::Command)
        }
        Command::Import { input, on_conflict } => offline_runtime()?
            .block_on(transfer_cmd::import(&cfg, input, on_conflict))
            .map_err(Failure::Command),
    }
}

fn serve(cfg: Config) -> Result<(), StartupError> {
    startup::init_tracing(&cfg);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| StartupError {
            phase: startup::Phase::StartServer,
            message: format!("cannot start the async runtime: {e}"),
        })?;
    let result = runtime.block_on(startup::serve(cfg, None));
    // Connections still open past the drain timeout are dropped, not awaited.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    // Spans still queued for OTLP export, bounded by observability.otlp_timeout_secs.
    ds_server::telemetry::shutdown_tracing();
    result
}

/// The runtime of the offline commands (the backends use tokio's blocking pool).
fn offline_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Command(anyhow::anyhow!("cannot start the async runtime: {e}")))
}

/// `list`: prints the data dir's streams to stdout.
async fn list(cfg: &Config, json: bool, all: bool) -> anyhow::Result<()> {
    let store = offline::open(cfg, "list", offline::OpenFor::default()).await?;
    let listed = match &store {
        offline::Offline::File(s) => s.list().await,
        offline::Offline::Acid(s) => s.list().await,
    };
    store.close().await;
    let mut streams = listed.map_err(|e| anyhow::anyhow!(e).context("cannot list the streams"))?;
    if !all {
        streams.retain(|s| !list::is_internal(s));
    }
    let out = if json {
        list::json(&streams)
    } else {
        list::table(&streams)
    };
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}
