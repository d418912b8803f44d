//! What the per-storage-mode harnesses (`crash`, `wake`) share: the outcome of testing one
//! mode, the loop over modes with its final summary block, and a random seed.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;

use crate::conformance::Backend;
use crate::crash::Rng;

/// A harness's verdict on one mode.
pub(crate) trait ModeReport: fmt::Display {
    /// Whether the mode passed.
    fn passed(&self) -> bool;
    /// Prints what a reader needs beyond the one-line summary.
    fn print_details(&self, mode: &str);
}

impl<R: ModeReport> ModeReport for Box<R> {
    fn passed(&self) -> bool {
        (**self).passed()
    }

    fn print_details(&self, mode: &str) {
        (**self).print_details(mode);
    }
}

/// How testing one mode went.
pub(crate) enum Outcome<R> {
    /// The harness ran; the report says what it found.
    Tested(R),
    /// The binary was built without this storage mode.
    NotBuilt,
    /// The server or the harness failed before a verdict; the message says how.
    Broken(String),
}

impl<R: ModeReport> Outcome<R> {
    /// Whether this outcome fails the whole run.
    pub(crate) fn is_failure(&self) -> bool {
        match self {
            Outcome::Tested(report) => !report.passed(),
            Outcome::NotBuilt => false,
            Outcome::Broken(_) => true,
        }
    }
}

impl<R: ModeReport> fmt::Display for Outcome<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Tested(report) => report.fmt(f),
            Outcome::NotBuilt => f.write_str("not built"),
            Outcome::Broken(message) => {
                write!(f, "error: {}", message.lines().next().unwrap_or("failed"))
            }
        }
    }
}

/// Runs `one` for each mode in turn (an error counts as a broken mode), then prints the
/// results block: one `{tool} <mode>: ...` line per mode and `N passed, N failed`. Returns
/// whether every built mode passed and at least one was built.
pub(crate) fn run_all<R: ModeReport>(
    tool: &str,
    modes: &[Backend],
    mut one: impl FnMut(Backend) -> Result<Outcome<R>>,
) -> bool {
    let mut results = Vec::new();
    for &mode in modes {
        let outcome = one(mode).unwrap_or_else(|error| Outcome::Broken(format!("{error:#}")));
        match &outcome {
            Outcome::Broken(message) => eprintln!("==> {tool} {} broke: {message}", mode.name()),
            Outcome::Tested(report) => report.print_details(mode.name()),
            Outcome::NotBuilt => {}
        }
        results.push((mode, outcome));
    }

    println!();
    let (mut passed, mut failed) = (0, 0);
    for (mode, outcome) in &results {
        println!("{tool} {}: {outcome}", mode.name());
        match outcome {
            Outcome::NotBuilt => {}
            outcome if outcome.is_failure() => failed += 1,
            _ => passed += 1,
        }
    }
    println!("{passed} passed, {failed} failed");
    let any_built = results
        .iter()
        .any(|(_, outcome)| !matches!(outcome, Outcome::NotBuilt));
    if !any_built {
        eprintln!("error: none of the requested storage modes is built into the server");
    }
    any_built && failed == 0
}

/// A seed from the clock and the process id.
pub(crate) fn random_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    Rng::new(nanos ^ (u64::from(std::process::id()) << 32)).next_u64()
}
