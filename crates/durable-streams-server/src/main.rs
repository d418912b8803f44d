//! The `durable-streams-server` binary: parses the command line with `ds-cli`, prints a
//! failure (with its startup phase, or its chain of causes), and exits with that phase's code
//! (1 for a failed offline command).
use std::process::ExitCode;

fn main() -> ExitCode {
    match ds_cli::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
