//! The `durable-streams-server` binary: parses the command line with `ds-cli`, prints a
//! failure with its startup phase, and exits with that phase's code.

use std::process::ExitCode;

fn main() -> ExitCode {
    match ds_cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.phase.exit_code())
        }
    }
}
