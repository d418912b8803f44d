//! `cargo xtask fuzz`: builds the libFuzzer targets of `fuzz/` and runs each for a fixed time.
//!
//! The targets are built without `cargo-fuzz`, by `cargo +nightly build` with the flags
//! `cargo fuzz build` passes (SanitizerCoverage with inline 8-bit counters, PC table and
//! compare tracing, `--cfg fuzzing`, debug assertions, overflow checks and AddressSanitizer),
//! for the host triple given explicitly so build scripts and proc macros stay uninstrumented.
//! A fresh machine thus needs only the nightly toolchain and a C++ compiler (for libFuzzer,
//! which `libfuzzer-sys` compiles); the fuzz crate keeps the cargo-fuzz layout, so
//! `cargo fuzz run <target>` works too. Binaries land where cargo-fuzz puts them,
//! `fuzz/target/<host>/release/<target>`.
//!
//! Each target runs with `-max_total_time=<secs>`, a per-input `-timeout` (hangs), and
//! `-rss_limit_mb`/`-malloc_limit_mb` (over-allocation: no single allocation may exceed one
//! transfer frame, `MAX_FRAME`, the largest buffer any target legitimately holds). Its working
//! corpus is `fuzz/corpus/<target>/` (git-ignored), seeded from the committed
//! `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`; a crash is written to
//! `fuzz/artifacts/<target>/` and fails the run. `cargo test` replays the committed inputs
//! through the same check functions (the `fuzzing` modules of the owning crates).

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// Every fuzz target, in run order.
pub(crate) const TARGETS: [&str; 7] = [
    "offset",
    "headers",
    "json",
    "sse",
    "name",
    "file_names",
    "transfer",
];

/// Default seconds per target.
pub(crate) const DEFAULT_SECS: u64 = 60;

/// The flags `cargo fuzz build` passes to rustc for the default (`address`) sanitizer.
const RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "-Cllvm-args=-sanitizer-coverage-stack-depth",
    "--cfg",
    "fuzzing",
    "-Cdebug-assertions",
    "-Coverflow-checks",
    "-Zsanitizer=address",
    "-Cforce-frame-pointers",
];

/// Seconds one input may take before libFuzzer reports a hang.
const INPUT_TIMEOUT_SECS: u64 = 10;
/// Resident memory limit of a fuzzing process, in MiB.
const RSS_LIMIT_MB: u64 = 2048;
/// Largest single allocation, in MiB: the transfer reader may hold one 64 MiB frame
/// (`ds_transfer::MAX_FRAME`); libFuzzer fails on an allocation of this size or more.
const MALLOC_LIMIT_MB: u64 = 65;
/// Extra wall time a target gets beyond `--secs` (start-up, corpus loading) before it is
/// killed as hung.
const WALL_SLACK: Duration = Duration::from_secs(120);
/// Lines of a failing target's log shown.
const LOG_TAIL_LINES: usize = 40;

/// Options of `cargo xtask fuzz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    /// Seconds per target.
    pub(crate) secs: u64,
    /// Targets to run, in order.
    pub(crate) targets: Vec<&'static str>,
    /// Use the existing binaries.
    pub(crate) skip_build: bool,
}

/// What one target's run reported.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stats {
    /// `stat::number_of_executed_units`.
    execs: u64,
    /// `stat::average_exec_per_sec`.
    execs_per_sec: u64,
    /// `stat::new_units_added`.
    new_units: u64,
    /// `stat::peak_rss_mb`.
    peak_rss_mb: u64,
}

/// Builds (unless `skip_build`) and runs every requested target; returns whether none crashed.
pub(crate) fn run(root: &Path, options: &Options) -> Result<bool> {
    let fuzz_dir = root.join("fuzz");
    let host = nightly_host()?;
    if !options.skip_build {
        build(&fuzz_dir, &host, &options.targets)?;
    }
    let bin_dir = fuzz_dir.join("target").join(&host).join("release");
    let log_dir = fuzz_dir.join("target").join("xtask-logs");
    fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;

    let mut results = Vec::new();
    for &target in &options.targets {
        println!("==> fuzzing {target} for {} s", options.secs);
        let outcome = run_target(&fuzz_dir, &bin_dir, &log_dir, target, options.secs);
        if let Err(error) = &outcome {
            eprintln!("==> fuzz {target} failed: {error:#}");
        }
        results.push((target, outcome));
    }

    println!();
    let (mut passed, mut failed) = (0, 0);
    for (target, outcome) in &results {
        match outcome {
            Ok(stats) => {
                passed += 1;
                println!(
                    "fuzz {target}: ok, {} execs ({} exec/s), {} new corpus units, peak RSS {} MiB",
                    stats.execs, stats.execs_per_sec, stats.new_units, stats.peak_rss_mb
                );
            }
            Err(error) => {
                failed += 1;
                let first = format!("{error:#}");
                println!(
                    "fuzz {target}: FAILED: {}",
                    first.lines().next().unwrap_or("")
                );
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// `cargo +nightly` with the variables that would change the build removed.
fn nightly(program: &str) -> Command {
    let mut command = Command::new(program);
    command.arg("+nightly");
    for var in [
        "RUSTC",
        "RUSTDOC",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        command.env_remove(var);
    }
    command
}

/// The nightly toolchain's host triple; fails with a hint when nightly is missing.
fn nightly_host() -> Result<String> {
    let output = nightly("rustc")
        .arg("-vV")
        .stderr(Stdio::inherit())
        .output()
        .context("running `rustc +nightly -vV` (is rustup on PATH?)")?;
    ensure!(
        output.status.success(),
        "the nightly toolchain is missing: install it with `rustup toolchain install nightly`"
    );
    host_triple(&String::from_utf8_lossy(&output.stdout))
        .context("`rustc +nightly -vV` printed no host triple")
}

/// The `host:` line of `rustc -vV` output.
fn host_triple(version: &str) -> Option<String> {
    version
        .lines()
        .find_map(|line| line.strip_prefix("host:"))
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
}

/// Builds the requested targets with the cargo-fuzz flags.
fn build(fuzz_dir: &Path, host: &str, targets: &[&str]) -> Result<()> {
    println!("==> building fuzz targets (cargo +nightly, AddressSanitizer, SanitizerCoverage)");
    let mut command = nightly("cargo");
    command
        .current_dir(fuzz_dir)
        .env("RUSTFLAGS", RUSTFLAGS.join(" "))
        .args(["build", "--release", "--manifest-path"])
        .arg(fuzz_dir.join("Cargo.toml"))
        .args(["--target", host]);
    for target in targets {
        command.args(["--bin", target]);
    }
    let status = command
        .status()
        .context("running `cargo +nightly build` for the fuzz targets")?;
    ensure!(
        status.success(),
        "building the fuzz targets failed ({status})"
    );
    Ok(())
}

/// Runs one target for `secs` seconds; returns its stats, or an error naming the crash.
fn run_target(
    fuzz_dir: &Path,
    bin_dir: &Path,
    log_dir: &Path,
    target: &str,
    secs: u64,
) -> Result<Stats> {
    let binary = bin_dir.join(target);
    ensure!(
        binary.is_file(),
        "{} does not exist (drop --skip-build to build it)",
        binary.display()
    );
    let corpus = fuzz_dir.join("corpus").join(target);
    let artifacts = fuzz_dir.join("artifacts").join(target);
    for dir in [&corpus, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log_path = log_dir.join(format!("{target}.log"));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;

    let mut command = Command::new(&binary);
    // New inputs go to the first directory only; the committed ones are read.
    command.arg(&corpus);
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir.join(kind).join(target);
        if dir.is_dir() {
            command.arg(dir);
        }
    }
    let mut artifact_prefix = artifacts.into_os_string();
    artifact_prefix.push("/");
    let mut prefix_arg = std::ffi::OsString::from("-artifact_prefix=");
    prefix_arg.push(&artifact_prefix);
    command
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
        .arg("-print_final_stats=1")
        .arg(prefix_arg)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log handle")?)
        .stderr(log);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;

    let deadline = Instant::now() + Duration::from_secs(secs) + WALL_SLACK;
    let exit = loop {
        if let Some(exit) = child.try_wait().context("polling the fuzzer")? {
            break exit;
        }
        if Instant::now() >= deadline {
            // Killing an exited child fails harmlessly; wait reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "still running {} s after its time limit; killed (log: {})",
                WALL_SLACK.as_secs(),
                log_path.display()
            );
        }
        thread::sleep(Duration::from_millis(200));
    };

    let text = String::from_utf8_lossy(
        &fs::read(&log_path).with_context(|| format!("reading {}", log_path.display()))?,
    )
    .into_owned();
    if !exit.success() {
        let artifact = text
            .lines()
            .find_map(|line| line.split_once("Test unit written to "))
            .map_or_else(
                || "no input was saved".to_owned(),
                |(_, path)| format!("input saved to {}", path.trim()),
            );
        let tail: Vec<&str> = text.lines().rev().take(LOG_TAIL_LINES).collect();
        let tail: Vec<String> = tail.iter().rev().map(|l| format!("    | {l}")).collect();
        bail!(
            "fuzzer exited with {exit}; {artifact}\n\
             reproduce: {} <input>; keep it: copy it into fuzz/regressions/{target}/\n\
             log tail ({}):\n{}",
            binary.display(),
            log_path.display(),
            tail.join("\n")
        );
    }
    let stats = parse_stats(&text);
    ensure!(
        stats.execs > 0,
        "the fuzzer printed no statistics (log: {})",
        log_path.display()
    );
    Ok(stats)
}

/// The `stat::` lines libFuzzer prints with `-print_final_stats=1`.
fn parse_stats(log: &str) -> Stats {
    let mut stats = Stats::default();
    for line in log.lines() {
        let Some((key, value)) = line
            .strip_prefix("stat::")
            .and_then(|rest| rest.split_once(':'))
        else {
            continue;
        };
        let Ok(value) = value.trim().parse::<u64>() else {
            continue;
        };
        match key {
            "number_of_executed_units" => stats.execs = value,
            "average_exec_per_sec" => stats.execs_per_sec = value,
            "new_units_added" => stats.new_units = value,
            "peak_rss_mb" => stats.peak_rss_mb = value,
            _ => {}
        }
    }
    stats
}

/// Checks a `--target` name.
pub(crate) fn target_by_name(name: &str) -> Option<&'static str> {
    TARGETS.iter().copied().find(|&target| target == name)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{Stats, TARGETS, host_triple, parse_stats};

    /// The committed input directories of `target` that exist.
    fn committed_dirs(root: &Path, target: &str) -> Vec<PathBuf> {
        ["seeds", "regressions"]
            .iter()
            .map(|kind| root.join("fuzz").join(kind).join(target))
            .filter(|dir| dir.is_dir())
            .collect()
    }

    #[test]
    fn parses_final_stats() {
        let log = "#1024\tDONE   cov: 10 ft: 12 corp: 3/9b exec/s: 512 rss: 40Mb\n\
                   Done 1024 runs in 2 second(s)\n\
                   stat::number_of_executed_units: 1024\n\
                   stat::average_exec_per_sec:     512\n\
                   stat::new_units_added:          7\n\
                   stat::slowest_unit_time_sec:    0\n\
                   stat::peak_rss_mb:              40\n";
        assert_eq!(
            parse_stats(log),
            Stats {
                execs: 1024,
                execs_per_sec: 512,
                new_units: 7,
                peak_rss_mb: 40
            }
        );
        assert_eq!(parse_stats("no stats here"), Stats::default());
    }

    #[test]
    fn finds_the_host_triple() {
        let out = "rustc 1.97.0-nightly\nbinary: rustc\nhost: x86_64-unknown-linux-gnu\n";
        assert_eq!(
            host_triple(out).as_deref(),
            Some("x86_64-unknown-linux-gnu")
        );
        assert_eq!(host_triple("rustc 1.0\n"), None);
    }

    /// Every target has a binary in `fuzz/Cargo.toml` and committed seeds.
    #[test]
    fn targets_match_the_fuzz_crate() {
        let root = crate::workspace_root().expect("workspace root");
        let manifest =
            std::fs::read_to_string(root.join("fuzz/Cargo.toml")).expect("fuzz/Cargo.toml");
        for target in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target} is not a bin of fuzz/Cargo.toml"
            );
            assert!(
                root.join(format!("fuzz/fuzz_targets/{target}.rs"))
                    .is_file(),
                "fuzz/fuzz_targets/{target}.rs is missing"
            );
            assert!(
                !committed_dirs(&root, target).is_empty(),
                "{target} has no committed inputs"
            );
        }
        let bins = manifest.matches("[[bin]]").count();
        assert_eq!(
            bins,
            TARGETS.len(),
            "fuzz/Cargo.toml has targets xtask does not run"
        );
    }
}
