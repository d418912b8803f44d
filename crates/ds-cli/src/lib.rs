//! The command line of `durable-streams-server`.
//!
//! This crate owns argument parsing (clap) and turns each command into calls on `ds-server`.
//! Today it has `serve` (the default command); `list`, `export` and `import` join it with the
//! transfer format. [`run`] returns a typed outcome so the binary can map failures to the exit
//! code of their startup phase.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ds_server::ConfigLoadOptions;
use ds_server::startup::{self, StartupError};

/// Command line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "durable-streams-server",
    version,
    about = "Durable Streams protocol server"
)]
pub struct Cli {
    /// Extra TOML config file, layered over `config/default.toml`.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Directory holding `default.toml` (default `./config`).
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
    let opts = ConfigLoadOptions {
        config_dir: cli.config_dir,
        config_file: cli.config,
        ignore_env: false,
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
            runtime.block_on(startup::serve(cfg, None))
        }
    }
}
