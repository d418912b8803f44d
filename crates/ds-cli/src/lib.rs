//! The command line of `durable-streams-server`.
//!
//! This crate owns argument parsing (clap) and turns each command into calls on `ds-server`.
//! Today it has `serve` (the default command); `list`, `export` and `import` join it with the
//! transfer format. [`run`] returns a typed outcome so the binary can map failures to the exit
//! code of their startup phase.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ds_server::startup::{self, StartupError};
use ds_server::{ConfigLoadOptions, DeploymentProfile};

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
}

/// Parses the process arguments and runs the command.
pub fn main() -> Result<(), StartupError> {
    run(Cli::parse())
}

/// Runs a parsed command line to completion.
pub fn run(cli: Cli) -> Result<(), StartupError> {
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
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let cfg = startup::load_config(&opts)?;
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
    }
}
