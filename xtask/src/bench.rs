//! `cargo xtask bench [args...]`: builds the release server and `ds-bench`
//! (the `bench/` crate), then runs `ds-bench` with the arguments passed
//! through unchanged (`--help` included) and exits with its exit code.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, ExitStatus};

use anyhow::{Context, Result, ensure};

use crate::conformance::{cargo_program, release_dir};

/// Builds both binaries, runs `ds-bench` with `args` in the current
/// directory, and returns its exit code (128 + the signal number if a
/// signal ended it).
pub(crate) fn run(root: &Path, args: &[OsString]) -> Result<u8> {
    let cargo = cargo_program();
    println!("==> building the release server and ds-bench binaries");
    // One build per package: built together, cargo unifies their dependencies' features and
    // rebuilds the server, instead of reusing the binary `conformance` just built.
    for package in ["durable-streams-server", "ds-bench"] {
        let status = Command::new(&cargo)
            .current_dir(root)
            .args(["build", "--release", "--locked", "-p", package])
            .status()
            .with_context(|| format!("running {}", cargo.to_string_lossy()))?;
        ensure!(status.success(), "building {package} failed ({status})");
    }

    let binary = release_dir(root).join(format!("ds-bench{}", std::env::consts::EXE_SUFFIX));
    ensure!(
        binary.is_file(),
        "{} does not exist after the build",
        binary.display()
    );
    let status = Command::new(&binary)
        .args(args)
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    Ok(exit_byte(status))
}

/// The exit code to pass on for `status`.
fn exit_byte(status: ExitStatus) -> u8 {
    #[cfg(unix)]
    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
    #[cfg(not(unix))]
    let signal = None;
    code_for(status.code(), signal)
}

/// An exit code from a process's code or, failing that, the signal that
/// ended it (the shell's `128 + n`); 1 for anything unrepresentable.
fn code_for(code: Option<i32>, signal: Option<i32>) -> u8 {
    match (code, signal) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::code_for;

    #[test]
    fn exit_codes_pass_through() {
        assert_eq!(code_for(Some(0), None), 0);
        assert_eq!(code_for(Some(2), None), 2);
        assert_eq!(code_for(Some(255), None), 255);
        assert_eq!(code_for(Some(-1), None), 1);
        assert_eq!(code_for(Some(-1_073_741_819), None), 1);
        assert_eq!(code_for(None, Some(9)), 137);
        assert_eq!(code_for(None, Some(2)), 130);
        assert_eq!(code_for(None, None), 1);
    }
}
