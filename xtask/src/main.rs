//! Project automation for the Durable Streams workspace, run as
//! `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! Commands:
//!
//! - `conformance`: builds the release server binary, then for each storage
//!   backend starts it on a free loopback port with a fresh data directory
//!   and runs the pinned conformance suite plus the official client's
//!   integration test (`conformance/`) against it. Prints one line per
//!   backend and a final `N passed, N failed` line; exits non-zero on any
//!   failure. `--transport tls` runs it all over HTTPS (HTTP/1.1 and
//!   HTTP/2 by ALPN): a throwaway PKI from `ds-server`'s `gen-test-certs`
//!   example goes into a temp dir once per run, the server is ready once it
//!   logs `listening on https://` and `curl` gets 200 from `/readyz` (or,
//!   without curl, its port accepts connections), and the suite reaches it
//!   at `https://localhost:<port>` with `NODE_EXTRA_CA_CERTS` set to the
//!   test CA; the result lines read `conformance <backend> (tls): ...`.
//! - `crash`: builds the release server binary, then for each durable
//!   storage mode (`file-fast`, `file-durable`, `acid`) runs it on a fresh
//!   data directory under a load of idempotent producers, SIGKILLs and
//!   restarts it `--kills` times at seeded random moments (closing one
//!   stream mid-run), and finally reads every stream back: every
//!   acknowledged append must be there exactly once, in order and intact,
//!   and the closed stream must still be closed. Prints one line per mode
//!   (`not built` for a mode the binary lacks) and a final
//!   `N passed, N failed` line (modes); exits non-zero if a built mode
//!   failed or no requested mode is built. See `crash.rs` for the details.
//! - `wake`: builds the release server binary, then for each durable
//!   storage mode runs it with one pull-wake subscription whose glob
//!   matches `--streams` streams under a steady append load, a worker that
//!   claims and acks on every wake event, and `--kills` SIGKILL/restart
//!   cycles; every acknowledged append must be reported by a claim within
//!   1 s in steady state, none may be lost across a restart, and the acked
//!   cursors must never go back. With `postgres` it runs two nodes on one
//!   schema and each kill hits the node delivering wakes. Prints wake
//!   latency p50/p99/max per mode and a final `N passed, N failed` line.
//!   See `wake.rs`.
//! - `bench [args...]`: builds the release server and `ds-bench` (the
//!   `bench/` crate) with `cargo build --release --locked`, then runs
//!   `target/release/ds-bench` with the remaining arguments passed through
//!   unchanged (so `cargo xtask bench --help` is `ds-bench`'s help) and
//!   exits with its exit code.
//! - `fuzz`: builds the libFuzzer targets of `fuzz/` with nightly cargo (the flags of
//!   `cargo fuzz build`, no cargo-fuzz needed) and runs each for `--secs` seconds with
//!   hang, RSS and allocation limits; prints execs/s per target and exits non-zero on any
//!   crash. See `fuzz.rs` and `docs/fuzzing.md`.
//! - `soak`: builds the release server binary, then for each backend runs mixed traffic
//!   (appends, catch-up reads, live SSE and long-poll readers, creates, deletes, TTL
//!   expiries) for `--secs` seconds, printing errors, p99 append latency and server RSS per
//!   interval; fails on any 5xx, RSS growth of 10 % after warm-up or a degraded p99. See
//!   `soak.rs` and `docs/soak.md`.
//! - `transfer`: fills a data dir with `--gib` GiB through the release server, then
//!   exports it and imports it into `acid` and `file-durable` with the offline commands,
//!   checking equal listings, a byte-identical re-export and a peak RSS under 200 MiB per
//!   command. See `transfer.rs`.
//! - `help`: prints usage.
//!
//! `conformance` also accepts `--server-binary <path>`, left out of its
//! usage text (`crash` lists it): it tests the given binary (for instance
//! another implementation of the protocol that reads the same `DS_*`
//! variables) instead of building the workspace's. `crash --mode memory` and
//! `wake --mode memory` are accepted too, outside `all` and the usage text:
//! the memory backend forgets everything on a kill, so they are self-checks
//! that the harness reports lost data (`wake --mode memory --kills 0`
//! measures wake latency alone, and passes).
//!
//! The xtask drives the built binary from outside, through its environment
//! (`DS_*` variables) and HTTP only (over TLS, which it cannot speak, the
//! server's log and `curl` tell readiness and the suite does the talking).
//! It depends on `anyhow` alone; arguments are parsed by hand.

mod bench;
mod conformance;
mod crash;
mod fuzz;
mod http;
mod json;
mod modes;
mod pg;
mod server;
mod soak;
mod tempdir;
mod transfer;
mod twonode;
mod vitest;
mod wake;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};

use crate::conformance::{Backend, Transport};

/// Usage text for `help`, no arguments, and argument errors.
const USAGE: &str = "\
Usage: cargo xtask <command> [options]

Commands:
  conformance   Run the conformance suite and the client test against the
                release server binary, once per storage backend
  crash         Kill -9 the release server binary repeatedly under a load
                of idempotent producers and check that no acknowledged
                append is lost, duplicated, torn or reordered, once per
                durable storage mode
  wake          Check subscription wakes against the release server binary:
                one glob over many streams under a steady append load, a
                pull-wake worker, and kill -9/restart cycles; every append
                must be woken within 1 s and no wake may be lost, once per
                durable storage mode
  bench [args...]
                Build the release server and ds-bench, then run
                target/release/ds-bench with the arguments unchanged
                (`cargo xtask bench --help` shows its options; `--smoke`
                runs every scenario briefly); exits with its exit code
  fuzz          Build the fuzz targets (nightly, AddressSanitizer) and run each
                for a fixed time; fails on any crash, hang or over-allocation
  soak          Mixed traffic against the release server binary (appends,
                catch-up, live SSE and long-poll readers, creates, deletes,
                TTL expiries) per backend; reports errors, p99 append latency
                and server RSS over time; fails on any 5xx, RSS growth or a
                degraded p99
  twonode       Two release server nodes on one PostgreSQL schema: SSE and
                long-poll readers on node B must get every append made via
                node A in order (p99 wake < 100 ms); then appends to 1,000
                streams through one node vs both (`twonode --help`)
  transfer      Export and import N GiB (default 2) through the release
                binary: listings equal, re-export byte-identical, each
                command's peak RSS under 200 MiB
  help          Show this message

Options of `conformance`:
  --backend <names>   Backends to test: memory, file-fast, file-durable, acid,
                      postgres (needs a database, see DS_TEST_POSTGRES_URL)
                      or all (default all). Repeatable or comma-separated.
  --transport <name>  http (default) or tls: serve HTTPS with throwaway test
                      certificates (HTTP/1.1 and HTTP/2 by ALPN)
  --no-subscriptions  Skip the subscription tests (they run by default, with
                      development webhooks allowed); --subscriptions is accepted
  --skip-build        Use the existing target/release binary, do not build

Options of `crash`:
  --mode <names>      Storage modes: file-fast, file-durable, acid, postgres
                      or all (default all). Repeatable or comma-separated.
  --kills <n>         Kills per mode, at least 1 (default 20)
  --seed <s>          Seed of the schedule (default random; printed)
  --skip-build        Use the existing target/release binary, do not build
  --server-binary <path>
                      Test this binary instead of building the workspace's

Options of `wake`:
  --mode <names>      Storage modes: file-fast, file-durable, acid, postgres
                      or all (default all). Repeatable or comma-separated.
                      postgres runs two nodes on one schema and kills the
                      node that delivers wakes.
  --kills <n>         Kills per mode; 0 measures latency only (default 10)
  --streams <n>       Streams matched by the glob, 1 to 10000 (default 1000)
  --rate <n>          Appends per second over all streams (default 200)
  --seed <s>          Seed of the schedule (default random; printed)
  --skip-build        Use the existing target/release binary, do not build
  --server-binary <path>
                      Test this binary instead of building the workspace's

Options of `fuzz`:
  --secs <n>          Seconds per target (default 60)
  --target <names>    Targets: offset, headers, json, sse, name, file_names,
                      transfer or all (default all). Repeatable or comma-separated.
  --skip-build        Use the existing fuzz/target binaries, do not build

Options of `soak`:
  --backend <names>   Backends: memory, file-fast, file-durable, acid or all
                      (default all). Repeatable or comma-separated.
  --secs <n>          Seconds of traffic per backend (default 120)
  --readers <n>       Live readers, half SSE and half long-poll (default 1000)
  --streams <n>       Live streams the readers and appends spread over (default 50)
  --rate <n>          Appends per second (default 200)
  --interval <n>      Seconds between report rows (default 10)
  --warmup <n>        Seconds before the RSS and latency baseline (default: a
                      quarter of --secs, at most 180)
  --seed <s>          Seed of the traffic (default random; printed)
  --skip-build        Use the existing target/release binary, do not build
  --server-binary <path>
                      Soak this binary instead of building the workspace's

Options of `transfer`:
  --gib <n>           GiB to move (default 2)
  --skip-build        Use the existing target/release binary, do not build
  --server-binary <path>
                      Use this binary instead of building the workspace's
";

/// Default number of kills per mode of `crash`.
const DEFAULT_KILLS: u32 = 20;

/// Exit code for command-line mistakes.
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let args_os: Vec<OsString> = std::env::args_os().skip(1).collect();
    // `bench` passes its arguments on untouched, whatever their encoding.
    if args_os.first().is_some_and(|arg| arg == "bench") {
        return match workspace_root().and_then(|root| bench::run(&root, &args_os[1..])) {
            Ok(code) => ExitCode::from(code),
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let args = match args_os
        .into_iter()
        .map(|arg| {
            arg.into_string()
                .map_err(|arg| anyhow::anyhow!("argument {} is not valid UTF-8", arg.display()))
        })
        .collect::<Result<Vec<String>>>()
    {
        Ok(args) => args,
        Err(error) => return usage_error(&error),
    };

    match args.first().map(String::as_str) {
        None | Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("conformance") => command(&args[1..], parse_conformance_args, conformance::run),
        Some("twonode") => {
            match workspace_root().and_then(|root| twonode::run(&root, &args[1..])) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(error) => {
                    eprintln!("error: {error:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("crash") => command(&args[1..], parse_crash_args, crash::run),
        Some("wake") => command(&args[1..], parse_wake_args, wake::run),
        Some("fuzz") => command(&args[1..], parse_fuzz_args, fuzz::run),
        Some("soak") => command(&args[1..], parse_soak_args, soak::run),
        Some("transfer") => command(&args[1..], parse_transfer_args, transfer::run),
        Some(other) => usage_error(&anyhow::anyhow!("unknown command {other:?}")),
    }
}

/// Parses a command's arguments with `parse` and runs it with `run`, which returns whether
/// it passed; help and argument errors print the usage text.
fn command<O>(
    args: &[String],
    parse: fn(&[String]) -> Result<Option<O>>,
    run: fn(&Path, &O) -> Result<bool>,
) -> ExitCode {
    let options = match parse(args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => return usage_error(&error),
    };
    match workspace_root().and_then(|root| run(&root, &options)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reports a command-line mistake with the usage text.
fn usage_error(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}\n\n{USAGE}");
    ExitCode::from(USAGE_ERROR)
}

/// The workspace root: the parent of this crate's manifest directory.
fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .with_context(|| format!("{} has no parent directory", manifest_dir.display()))
}

/// Walks command-line options: an option with a value accepts `--opt value` and `--opt=value`.
struct Opts<'a> {
    iter: std::slice::Iter<'a, String>,
    current: &'a str,
    inline: Option<&'a str>,
}

impl<'a> Opts<'a> {
    fn new(args: &'a [String]) -> Self {
        Opts {
            iter: args.iter(),
            current: "",
            inline: None,
        }
    }

    /// The next option's name (without an inline `=value`), or `None` at the end.
    fn next_flag(&mut self) -> Option<&'a str> {
        let arg = self.iter.next()?;
        self.current = arg;
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value)),
            _ => (arg.as_str(), None),
        };
        self.inline = inline;
        Some(flag)
    }

    /// The whole current argument, as given.
    fn current(&self) -> &'a str {
        self.current
    }

    /// Whether the current option was given as `--opt=value`.
    fn has_inline(&self) -> bool {
        self.inline.is_some()
    }

    /// The current option's value: inline, or the next argument.
    fn value(&mut self, name: &str) -> Result<String> {
        match self.inline.take() {
            Some(value) => Ok(value.to_owned()),
            None => self
                .iter
                .next()
                .cloned()
                .with_context(|| format!("{name} needs a value")),
        }
    }
}

/// Adds the comma-separated `list` of backend names to `into` (without duplicates, in order);
/// `all` stands for `everything`.
fn add_backends(
    into: &mut Vec<Backend>,
    list: &str,
    everything: &[Backend],
    what: &str,
    expected: &str,
) -> Result<()> {
    for name in list.split(',').map(str::trim) {
        let selected: Vec<Backend> = if name == "all" {
            everything.to_vec()
        } else {
            vec![
                Backend::from_name(name)
                    .with_context(|| format!("unknown {what} {name:?} (expected {expected})"))?,
            ]
        };
        for backend in selected {
            if !into.contains(&backend) {
                into.push(backend);
            }
        }
    }
    Ok(())
}

/// Parses the arguments after `conformance`; `Ok(None)` means help was asked for.
fn parse_conformance_args(args: &[String]) -> Result<Option<conformance::Options>> {
    let mut backends: Vec<Backend> = Vec::new();
    let mut transport = None;
    let mut subscriptions = true;
    let mut skip_build = false;
    let mut server_binary = None;

    let mut opts = Opts::new(args);
    while let Some(flag) = opts.next_flag() {
        let mut value = |name: &str| opts.value(name);
        match flag {
            "-h" | "--help" => return Ok(None),
            "--backend" => add_backends(
                &mut backends,
                &value("--backend")?,
                &Backend::CONFORMANCE,
                "backend",
                "memory, file-fast, file-durable, acid, postgres or all",
            )?,
            "--transport" => {
                let name = value("--transport")?;
                let selected = Transport::from_name(name.trim()).with_context(|| {
                    format!("unknown transport {name:?} (expected http or tls)")
                })?;
                if transport.is_some_and(|earlier| earlier != selected) {
                    bail!("--transport given twice with different values");
                }
                transport = Some(selected);
            }
            "--server-binary" => server_binary = Some(PathBuf::from(value("--server-binary")?)),
            "--subscriptions" | "--no-subscriptions" | "--skip-build" if opts.has_inline() => {
                bail!("{flag} takes no value")
            }
            "--subscriptions" => subscriptions = true,
            "--no-subscriptions" => subscriptions = false,
            "--skip-build" => skip_build = true,
            _ => bail!("unknown argument {:?} for conformance", opts.current()),
        }
    }

    if backends.is_empty() {
        backends = Backend::CONFORMANCE.to_vec();
    }
    Ok(Some(conformance::Options {
        backends,
        transport: transport.unwrap_or_default(),
        subscriptions,
        skip_build,
        server_binary,
    }))
}

/// Parses the arguments after `crash`; `Ok(None)` means help was asked for.
fn parse_crash_args(args: &[String]) -> Result<Option<crash::Options>> {
    let mut modes: Vec<Backend> = Vec::new();
    let mut kills = DEFAULT_KILLS;
    let mut seed = None;
    let mut skip_build = false;
    let mut server_binary = None;

    let mut opts = Opts::new(args);
    while let Some(flag) = opts.next_flag() {
        let mut value = |name: &str| opts.value(name);
        match flag {
            "-h" | "--help" => return Ok(None),
            "--mode" => add_backends(
                &mut modes,
                &value("--mode")?,
                &crash::DURABLE_MODES,
                "storage mode",
                "file-fast, file-durable, acid or all",
            )?,
            "--kills" => kills = number("--kills", &value("--kills")?, 1)?,
            "--seed" => {
                let text = value("--seed")?;
                seed = Some(
                    text.parse()
                        .with_context(|| format!("--seed needs a whole number, not {text:?}"))?,
                );
            }
            "--server-binary" => server_binary = Some(PathBuf::from(value("--server-binary")?)),
            "--skip-build" if opts.has_inline() => bail!("{flag} takes no value"),
            "--skip-build" => skip_build = true,
            _ => bail!("unknown argument {:?} for crash", opts.current()),
        }
    }

    if modes.is_empty() {
        modes = crash::DURABLE_MODES.to_vec();
    }
    Ok(Some(crash::Options {
        modes,
        kills,
        seed,
        skip_build,
        server_binary,
    }))
}

/// Parses the arguments after `wake`; `Ok(None)` means help was asked for.
fn parse_wake_args(args: &[String]) -> Result<Option<wake::Options>> {
    let mut modes: Vec<Backend> = Vec::new();
    let mut kills = wake::DEFAULT_KILLS;
    let mut streams = wake::DEFAULT_STREAMS;
    let mut rate = wake::DEFAULT_RATE;
    let mut seed = None;
    let mut skip_build = false;
    let mut server_binary = None;

    let mut opts = Opts::new(args);
    while let Some(flag) = opts.next_flag() {
        let mut value = |name: &str| opts.value(name);
        match flag {
            "-h" | "--help" => return Ok(None),
            "--mode" => add_backends(
                &mut modes,
                &value("--mode")?,
                &wake::DURABLE_MODES,
                "storage mode",
                "file-fast, file-durable, acid, postgres or all",
            )?,
            "--kills" => {
                let text = value("--kills")?;
                kills = text
                    .parse()
                    .with_context(|| format!("--kills needs a whole number, not {text:?}"))?;
            }
            "--streams" => {
                let text = value("--streams")?;
                streams = text
                    .parse()
                    .ok()
                    .filter(|n| (1..=wake::MAX_STREAMS).contains(n))
                    .with_context(|| {
                        format!(
                            "--streams needs a whole number from 1 to {}, not {text:?}",
                            wake::MAX_STREAMS
                        )
                    })?;
            }
            "--rate" => rate = number("--rate", &value("--rate")?, 1)?,
            "--seed" => {
                let text = value("--seed")?;
                seed = Some(
                    text.parse()
                        .with_context(|| format!("--seed needs a whole number, not {text:?}"))?,
                );
            }
            "--server-binary" => server_binary = Some(PathBuf::from(value("--server-binary")?)),
            "--skip-build" if opts.has_inline() => bail!("{flag} takes no value"),
            "--skip-build" => skip_build = true,
            _ => bail!("unknown argument {:?} for wake", opts.current()),
        }
    }

    if modes.is_empty() {
        modes = wake::DURABLE_MODES.to_vec();
    }
    Ok(Some(wake::Options {
        modes,
        kills,
        streams,
        rate,
        seed,
        skip_build,
        server_binary,
    }))
}

/// Parses a whole number option value of at least `min`.
fn number<T>(name: &str, text: &str, min: T) -> Result<T>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    text.parse()
        .ok()
        .filter(|n| *n >= min)
        .with_context(|| format!("{name} needs a whole number of at least {min}, not {text:?}"))
}

/// Parses the arguments after `fuzz`; `Ok(None)` means help was asked for.
fn parse_fuzz_args(args: &[String]) -> Result<Option<fuzz::Options>> {
    let mut secs = fuzz::DEFAULT_SECS;
    let mut targets: Vec<&'static str> = Vec::new();
    let mut skip_build = false;

    let mut opts = Opts::new(args);
    while let Some(flag) = opts.next_flag() {
        let mut value = |name: &str| opts.value(name);
        match flag {
            "-h" | "--help" => return Ok(None),
            "--secs" => secs = number("--secs", &value("--secs")?, 1)?,
            "--target" => {
                for name in value("--target")?.split(',').map(str::trim) {
                    let selected: Vec<&'static str> = if name == "all" {
                        fuzz::TARGETS.to_vec()
                    } else {
                        vec![fuzz::target_by_name(name).with_context(|| {
                            format!(
                                "unknown fuzz target {name:?} (expected {} or all)",
                                fuzz::TARGETS.join(", ")
                            )
                        })?]
                    };
                    for target in selected {
                        if !targets.contains(&target) {
                            targets.push(target);
                        }
                    }
                }
            }
            "--skip-build" if opts.has_inline() => bail!("{flag} takes no value"),
            "--skip-build" => skip_build = true,
            _ => bail!("unknown argument {:?} for fuzz", opts.current()),
        }
    }
    if targets.is_empty() {
        targets = fuzz::TARGETS.to_vec();
    }
    Ok(Some(fuzz::Options {
        secs,
        targets,
        skip_build,
    }))
}

/// Parses the arguments after `transfer`; `Ok(None)` means help was asked for.
fn parse_transfer_args(args: &[String]) -> Result<Option<transfer::Options>> {
    let mut options = transfer::Options::default();
    let mut opts = Opts::new(args);
    while let Some(flag) = opts.next_flag() {
        let mut value = |name: &str| opts.value(name);
        match flag {
            "-h" | "--help" => return Ok(None),
            "--gib" => options.gib = number("--gib", &value("--gib")?, 1)?,
            "--server-binary" => {
                options.server_binary = Some(PathBuf::from(value("--server-binary")?));
            }
            "--skip-build" if opts.has_inline() => bail!("{flag} takes no value"),
            "--skip-build" => options.skip_build = true,
            _ => bail!("unknown argument {:?} for transfer", opts.current()),
        }
    }
    Ok(Some(options))
}

/// Parses the arguments after `soak`; `Ok(None)` means help was asked for.
fn parse_soak_args(args: &[String]) -> Result<Option<soak::Options>> {
    let mut options = soak::Options {
        backends: Vec::new(),
        secs: soak::DEFAULT_SECS,
        readers: soak::DEFAULT_READERS,
        streams: soak::DEFAULT_STREAMS,
        rate: soak::DEFAULT_RATE,
        interval: soak::DEFAULT_INTERVAL,
        warmup: None,
        seed: None,
        skip_build: false,
        server_binary: None,
    };

    let mut opts = Opts::new(args);
    while let Some(flag) = opts.next_flag() {
        let mut value = |name: &str| opts.value(name);
        match flag {
            "-h" | "--help" => return Ok(None),
            "--backend" => add_backends(
                &mut options.backends,
                &value("--backend")?,
                &Backend::ALL,
                "backend",
                "memory, file-fast, file-durable, acid or all",
            )?,
            "--secs" => options.secs = number("--secs", &value("--secs")?, 1)?,
            "--readers" => options.readers = number("--readers", &value("--readers")?, 0)?,
            "--streams" => options.streams = number("--streams", &value("--streams")?, 1)?,
            "--rate" => options.rate = number("--rate", &value("--rate")?, 1)?,
            "--interval" => options.interval = number("--interval", &value("--interval")?, 1)?,
            "--warmup" => options.warmup = Some(number("--warmup", &value("--warmup")?, 0)?),
            "--seed" => options.seed = Some(number("--seed", &value("--seed")?, 0)?),
            "--server-binary" => {
                options.server_binary = Some(PathBuf::from(value("--server-binary")?));
            }
            "--skip-build" if opts.has_inline() => bail!("{flag} takes no value"),
            "--skip-build" => options.skip_build = true,
            _ => bail!("unknown argument {:?} for soak", opts.current()),
        }
    }
    if options.backends.is_empty() {
        options.backends = Backend::ALL.to_vec();
    }
    Ok(Some(options))
}

#[cfg(test)]
mod tests {
    use super::{
        Backend, DEFAULT_KILLS, Transport, parse_conformance_args, parse_crash_args,
        parse_fuzz_args, parse_soak_args, parse_wake_args,
    };

    /// Splits `args` on spaces.
    fn words(args: &str) -> Vec<String> {
        args.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn fuzz_options() {
        let options = parse_fuzz_args(&[]).expect("valid").expect("not help");
        assert_eq!(options.secs, super::fuzz::DEFAULT_SECS);
        assert_eq!(options.targets, super::fuzz::TARGETS);
        assert!(!options.skip_build);
        let options = parse_fuzz_args(&words(
            "--secs=5 --target sse,json --target sse --skip-build",
        ))
        .expect("valid")
        .expect("not help");
        assert_eq!((options.secs, options.skip_build), (5, true));
        assert_eq!(options.targets, ["sse", "json"]);
        for bad in [
            "--secs 0",
            "--secs x",
            "--target nope",
            "--skip-build=1",
            "--kills 3",
        ] {
            assert!(parse_fuzz_args(&words(bad)).is_err(), "accepted {bad:?}");
        }
        assert!(parse_fuzz_args(&words("-h")).expect("valid").is_none());
    }

    #[test]
    fn soak_options() {
        let options = parse_soak_args(&[]).expect("valid").expect("not help");
        assert_eq!(options.backends, Backend::ALL);
        assert_eq!(
            (options.secs, options.readers, options.streams, options.rate),
            (120, 1000, 50, 200)
        );
        assert_eq!((options.warmup, options.seed), (None, None));
        let options = parse_soak_args(&words(
            "--backend memory,file-durable --secs 30 --readers=10 --streams 2 --rate 50 \
             --interval 5 --warmup 0 --seed 7 --skip-build",
        ))
        .expect("valid")
        .expect("not help");
        assert_eq!(options.backends, [Backend::Memory, Backend::FileDurable]);
        assert_eq!(
            (
                options.secs,
                options.readers,
                options.streams,
                options.rate,
                options.interval
            ),
            (30, 10, 2, 50, 5)
        );
        assert_eq!((options.warmup, options.seed), (Some(0), Some(7)));
        assert!(options.skip_build);
        for bad in [
            "--secs 0",
            "--streams 0",
            "--rate 0",
            "--backend sqlite",
            "--readers -1",
        ] {
            assert!(parse_soak_args(&words(bad)).is_err(), "accepted {bad:?}");
        }
    }

    /// Parses `wake` arguments (space-separated), expecting success.
    fn parse_wake(args: &str) -> super::wake::Options {
        let args: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
        parse_wake_args(&args)
            .expect("valid arguments")
            .expect("not a help request")
    }

    #[test]
    fn wake_defaults_and_options() {
        let options = parse_wake("");
        assert_eq!(
            options.modes,
            [
                Backend::FileFast,
                Backend::FileDurable,
                Backend::Acid,
                Backend::Postgres
            ]
        );
        assert_eq!(options.kills, super::wake::DEFAULT_KILLS);
        assert_eq!(options.streams, 1000);
        assert_eq!(options.rate, super::wake::DEFAULT_RATE);
        assert!(options.seed.is_none() && !options.skip_build);
        let options = parse_wake(
            "--mode acid,file-fast --mode=acid --kills 0 --streams=50 --rate 10 --seed 9 --skip-build",
        );
        assert_eq!(options.modes, [Backend::Acid, Backend::FileFast]);
        assert_eq!(
            (options.kills, options.streams, options.rate, options.seed),
            (0, 50, 10, Some(9))
        );
        assert!(options.skip_build);
        assert_eq!(parse_wake("--mode memory").modes, [Backend::Memory]);
        assert!(
            parse_wake_args(&["--help".to_owned()])
                .expect("valid")
                .is_none()
        );
    }

    #[test]
    fn wake_rejects_bad_arguments() {
        for bad in [
            &["--mode", "sqlite"][..],
            &["--kills", "-1"],
            &["--streams", "0"],
            &["--streams", "10001"],
            &["--rate", "0"],
            &["--seed"],
            &["--skip-build=yes"],
            &["--subscriptions"],
        ] {
            let args: Vec<String> = bad.iter().map(|s| (*s).to_owned()).collect();
            assert!(parse_wake_args(&args).is_err(), "accepted {bad:?}");
        }
    }

    /// Parses `crash` arguments (space-separated), expecting success.
    fn parse_crash(args: &str) -> super::crash::Options {
        let args: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
        parse_crash_args(&args)
            .expect("valid arguments")
            .expect("not a help request")
    }

    #[test]
    fn crash_defaults() {
        let options = parse_crash("");
        assert_eq!(options.modes, super::crash::DURABLE_MODES);
        assert_eq!(options.kills, DEFAULT_KILLS);
        assert!(options.seed.is_none());
        assert!(!options.skip_build);
        assert!(options.server_binary.is_none());
    }

    #[test]
    fn crash_options() {
        let options = parse_crash(
            "--mode file-durable --mode=acid,file-durable --kills 5 --seed=42 --skip-build --server-binary /tmp/x",
        );
        assert_eq!(options.modes, [Backend::FileDurable, Backend::Acid]);
        assert_eq!(options.kills, 5);
        assert_eq!(options.seed, Some(42));
        assert!(options.skip_build);
        assert_eq!(
            options.server_binary.as_deref(),
            Some(std::path::Path::new("/tmp/x"))
        );
        // `all` means the durable modes; memory only when named.
        assert_eq!(parse_crash("--mode all").modes, super::crash::DURABLE_MODES);
        assert_eq!(parse_crash("--mode memory").modes, [Backend::Memory]);
        assert!(
            parse_crash_args(&["-h".to_owned()])
                .expect("valid")
                .is_none()
        );
    }

    #[test]
    fn crash_rejects_bad_arguments() {
        for bad in [
            &["--mode", "sqlite"][..],
            &["--mode"],
            &["--kills", "0"],
            &["--kills", "-3"],
            &["--kills=many"],
            &["--seed", "x"],
            &["--subscriptions"],
            &["--skip-build=yes"],
        ] {
            let args: Vec<String> = bad.iter().map(|s| (*s).to_owned()).collect();
            assert!(parse_crash_args(&args).is_err(), "accepted {bad:?}");
        }
    }

    /// Parses `args` (space-separated), expecting success.
    fn parse(args: &str) -> super::conformance::Options {
        let args: Vec<String> = args.split_whitespace().map(str::to_owned).collect();
        parse_conformance_args(&args)
            .expect("valid arguments")
            .expect("not a help request")
    }

    #[test]
    fn defaults_to_all_backends() {
        let options = parse("");
        assert_eq!(options.backends, Backend::CONFORMANCE);
        assert_eq!(options.transport, Transport::Http);
        assert!(options.subscriptions, "subscription tests run by default");
        assert!(!options.skip_build);
        assert!(options.server_binary.is_none());
    }

    #[test]
    fn backends_are_repeatable_comma_separated_and_deduplicated() {
        let options = parse("--backend acid,memory --backend=memory --backend file-fast");
        assert_eq!(
            options.backends,
            [Backend::Acid, Backend::Memory, Backend::FileFast]
        );
        assert_eq!(parse("--backend memory,all").backends, Backend::CONFORMANCE);
    }

    #[test]
    fn flags_and_server_binary() {
        let options = parse("--subscriptions --skip-build --server-binary /tmp/x");
        assert!(options.subscriptions);
        assert!(options.skip_build);
        assert_eq!(
            options.server_binary.as_deref(),
            Some(std::path::Path::new("/tmp/x"))
        );
    }

    #[test]
    fn transport() {
        assert_eq!(parse("--transport tls").transport, Transport::Tls);
        assert_eq!(parse("--transport=http").transport, Transport::Http);
        assert_eq!(
            parse("--transport tls --backend memory --transport=tls").transport,
            Transport::Tls
        );
    }

    #[test]
    fn rejects_bad_arguments() {
        for bad in [
            &["--backend", "sqlite"][..],
            &["--backend"],
            &["--frobnicate"],
            &["--skip-build=yes"],
            &["--transport"],
            &["--transport", "https"],
            &["--transport", "http", "--transport", "tls"],
        ] {
            let args: Vec<String> = bad.iter().map(|s| (*s).to_owned()).collect();
            assert!(parse_conformance_args(&args).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn help_is_recognised() {
        assert!(
            parse_conformance_args(&["--help".to_owned()])
                .expect("valid")
                .is_none()
        );
    }
}
