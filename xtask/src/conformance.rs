//! `cargo xtask conformance`: runs the pinned conformance suite and the
//! client integration test (both in `conformance/`) against the release
//! server binary, once per storage backend.
//!
//! With `--transport tls` the server serves HTTPS (HTTP/1.1 and HTTP/2 by
//! ALPN) with a throwaway PKI that the `gen-test-certs` example of
//! `ds-server` writes once per run into a temp dir; the suite reaches it at
//! `https://localhost:<port>` and trusts the test CA through
//! `NODE_EXTRA_CA_CERTS`. The example runs through `cargo run --release`
//! even with `--skip-build` or `--server-binary` (it builds only if stale).

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use anyhow::{Context, Result, bail, ensure};

use crate::server::{self, Probe, Server, Startup};
use crate::tempdir::TempDir;
use crate::vitest::{self, Report};

/// Long-poll timeout the server is configured with, in seconds; the suite
/// is told the same value in milliseconds.
const LONG_POLL_TIMEOUT_SECS: u64 = 1;

/// The test files vitest runs, relative to `conformance/`.
const TEST_FILES: [&str; 2] = ["conformance.test.mjs", "client.test.mjs"];

/// A storage backend, as named by `DS_STORAGE__MODE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// In-memory storage.
    Memory,
    /// File storage without fsync on every write.
    FileFast,
    /// File storage with fsync on every write.
    FileDurable,
    /// Transactional (ACID) storage.
    Acid,
    /// PostgreSQL (see `pg`): needs a database, so only run when named.
    Postgres,
}

impl Backend {
    /// The backends that need nothing outside the server process, in the order `all` runs
    /// them (`soak`'s default).
    pub(crate) const ALL: [Backend; 4] = [
        Backend::Memory,
        Backend::FileFast,
        Backend::FileDurable,
        Backend::Acid,
    ];

    /// What `conformance` runs by default and for `all`: every backend (postgres needs the
    /// database of `DS_TEST_POSTGRES_URL`, which CI and the development machines run).
    pub(crate) const CONFORMANCE: [Backend; 5] = Backend::KNOWN;

    /// Every backend a command line may name.
    pub(crate) const KNOWN: [Backend; 5] = [
        Backend::Memory,
        Backend::FileFast,
        Backend::FileDurable,
        Backend::Acid,
        Backend::Postgres,
    ];

    /// The `DS_STORAGE__MODE` value, also used on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::FileFast => "file-fast",
            Backend::FileDurable => "file-durable",
            Backend::Acid => "acid",
            Backend::Postgres => "postgres",
        }
    }

    /// Parses one command-line name; `all` is handled by the caller.
    pub(crate) fn from_name(name: &str) -> Option<Backend> {
        Backend::KNOWN.into_iter().find(|b| b.name() == name)
    }

    /// Server environment beyond `DS_STORAGE__MODE` and `DS_STORAGE__DATA_DIR` for a run
    /// whose data directory is `data_dir` (the postgres schema of that run).
    pub(crate) fn storage_env(self, data_dir: &Path) -> Vec<(String, OsString)> {
        match self {
            Backend::Postgres => crate::pg::env(data_dir),
            _ => Vec::new(),
        }
    }

    /// Removes what a run stored outside its data directory (the postgres schema).
    pub(crate) fn cleanup(self, data_dir: &Path) -> Result<()> {
        match self {
            Backend::Postgres => crate::pg::drop_schema(data_dir),
            _ => Ok(()),
        }
    }
}

/// How the suite reaches the server, as named by `DS_TRANSPORT__MODE`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Plain HTTP/1.1.
    #[default]
    Http,
    /// HTTPS (server certificate only), HTTP/1.1 and HTTP/2 by ALPN.
    Tls,
}

impl Transport {
    /// Every transport.
    pub(crate) const ALL: [Transport; 2] = [Transport::Http, Transport::Tls];

    /// The `DS_TRANSPORT__MODE` value, also used on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::Tls => "tls",
        }
    }

    /// Parses one command-line name.
    pub(crate) fn from_name(name: &str) -> Option<Transport> {
        Transport::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// The throwaway PKI of a TLS run and how to probe readiness with it.
struct TlsSetup {
    /// The test CA's certificate, which the suite and the probe trust.
    ca_cert: PathBuf,
    /// The server's certificate (for `localhost` and `127.0.0.1`).
    server_cert: PathBuf,
    /// The server's private key.
    server_key: PathBuf,
    /// Whether `curl` is available for the readiness probe.
    curl: bool,
}

/// Options of one `conformance` invocation.
#[derive(Debug)]
pub(crate) struct Options {
    /// Backends to test, in order, without duplicates.
    pub(crate) backends: Vec<Backend>,
    /// How the suite reaches the server.
    pub(crate) transport: Transport,
    /// Run the subscription tests and allow development webhooks.
    pub(crate) subscriptions: bool,
    /// Use the existing release binary instead of building it.
    pub(crate) skip_build: bool,
    /// Test this binary instead of the workspace's release build (implies no build).
    pub(crate) server_binary: Option<PathBuf>,
}

/// How testing one backend went.
enum Outcome {
    /// The tests ran; the report says how they went.
    Tested(Report),
    /// The binary was built without this backend.
    NotBuilt,
    /// The server or the test runner misbehaved; the message says how.
    Broken(String),
}

impl Outcome {
    /// Whether this outcome fails the whole run.
    fn is_failure(&self) -> bool {
        match self {
            Outcome::Tested(report) => report.failed > 0,
            Outcome::NotBuilt => false,
            Outcome::Broken(_) => true,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Tested(r) => {
                write!(
                    f,
                    "{} passed, {} failed, {} skipped",
                    r.passed, r.failed, r.skipped
                )?;
                let files: Vec<String> = r
                    .per_file
                    .iter()
                    .map(|(file, passed, failed)| {
                        format!("{file}: {passed} passed, {failed} failed")
                    })
                    .collect();
                if !files.is_empty() {
                    write!(f, " ({})", files.join("; "))?;
                }
                Ok(())
            }
            Outcome::NotBuilt => f.write_str("not built"),
            Outcome::Broken(message) => {
                let first = message.lines().next().unwrap_or("failed");
                write!(f, "error: {first}")
            }
        }
    }
}

/// Runs the conformance tests; returns whether every built backend passed
/// (and at least one was built).
///
/// Progress and diagnostics go out on lines starting with `==>`; the results
/// are the final block: one `conformance <backend>: ...` line per backend
/// (`conformance <backend> (tls): ...` over TLS), then `N passed, N failed`
/// (totals; a backend whose server or test run broke counts as one failure).
pub(crate) fn run(root: &Path, options: &Options) -> Result<bool> {
    let binary = server_binary(root, options.skip_build, options.server_binary.as_deref())?;

    // The certificates live for the whole run, in a temp dir of their own.
    let cert_dir = match options.transport {
        Transport::Http => None,
        Transport::Tls => Some(TempDir::new("conformance-certs")?),
    };
    let tls = match &cert_dir {
        Some(dir) => Some(generate_certs(root, dir.path())?),
        None => None,
    };

    let conformance_dir = root.join("conformance");
    ensure_node_modules(&conformance_dir)?;

    let mut results = Vec::new();
    for &backend in &options.backends {
        let name = label(backend, options.transport);
        println!("==> conformance {name}: starting {}", binary.display());
        let outcome = match test_backend(
            &binary,
            &conformance_dir,
            backend,
            options.subscriptions,
            tls.as_ref(),
        ) {
            Ok(outcome) => outcome,
            Err(error) => Outcome::Broken(format!("{error:#}")),
        };
        if let Outcome::Broken(message) = &outcome {
            eprintln!("==> conformance {name} broke: {message}");
        }
        results.push((backend, outcome));
    }
    if let Some(dir) = cert_dir {
        dir.remove()?;
    }

    println!();
    let (mut passed, mut failed) = (0, 0);
    for (backend, outcome) in &results {
        println!(
            "conformance {}: {outcome}",
            label(*backend, options.transport)
        );
        match outcome {
            Outcome::Tested(report) => {
                passed += report.passed;
                failed += report.failed;
            }
            // A broken server counts as one failure so the totals show it.
            Outcome::Broken(_) => failed += 1,
            Outcome::NotBuilt => {}
        }
    }
    println!("{passed} passed, {failed} failed");

    let any_built = results
        .iter()
        .any(|(_, outcome)| !matches!(outcome, Outcome::NotBuilt));
    if !any_built {
        eprintln!("error: none of the requested backends is built into the server");
    }
    let any_failure = results.iter().any(|(_, outcome)| outcome.is_failure());
    Ok(any_built && !any_failure)
}

/// The server binary to test: `explicit` if given (never built), else the
/// workspace's release binary, built first unless `skip_build`.
pub(crate) fn server_binary(
    root: &Path,
    skip_build: bool,
    explicit: Option<&Path>,
) -> Result<PathBuf> {
    let binary = if let Some(path) = explicit {
        std::path::absolute(path)
            .with_context(|| format!("resolving --server-binary {}", path.display()))?
    } else {
        if !skip_build {
            build_server(root)?;
        }
        release_binary(root)
    };
    ensure!(
        binary.is_file(),
        "server binary {} does not exist{}",
        binary.display(),
        if skip_build && explicit.is_none() {
            " (drop --skip-build to build it)"
        } else {
            ""
        }
    );
    Ok(binary)
}

/// How results name a backend: `memory` over HTTP, `memory (tls)` over TLS.
fn label(backend: Backend, transport: Transport) -> String {
    match transport {
        Transport::Http => backend.name().to_owned(),
        Transport::Tls => format!("{} ({})", backend.name(), transport.name()),
    }
}

/// The cargo that runs the xtask (`$CARGO`), else `cargo` from `PATH`.
pub(crate) fn cargo_program() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"))
}

/// Writes a throwaway PKI into `dir` with the `gen-test-certs` example of
/// `ds-server`, and checks whether `curl` is there to probe readiness.
fn generate_certs(root: &Path, dir: &Path) -> Result<TlsSetup> {
    let cargo = cargo_program();
    println!("==> generating test certificates in {}", dir.display());
    // Its stdout only lists the files written; cargo's progress and any
    // error (stderr) show.
    let output = Command::new(&cargo)
        .current_dir(root)
        .args([
            "run",
            "--release",
            "--locked",
            "-p",
            "ds-server",
            "--example",
            "gen-test-certs",
            "--",
        ])
        .arg(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", cargo.to_string_lossy()))?;
    ensure!(
        output.status.success(),
        "generating test certificates failed ({}; its error is above)",
        output.status
    );
    let setup = TlsSetup {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
        curl: server::curl_available(),
    };
    for file in [&setup.ca_cert, &setup.server_cert, &setup.server_key] {
        ensure!(
            file.is_file(),
            "gen-test-certs did not write {}",
            file.display()
        );
    }
    if !setup.curl {
        println!(
            "==> curl not found: readiness over TLS is the server's `listening on https://` \
             line and an accepting port"
        );
    }
    Ok(setup)
}

/// Builds the release server binary.
fn build_server(root: &Path) -> Result<()> {
    let cargo = cargo_program();
    println!("==> building the release server binary");
    let status = Command::new(&cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "durable-streams-server",
        ])
        .status()
        .with_context(|| format!("running {}", cargo.to_string_lossy()))?;
    ensure!(
        status.success(),
        "building durable-streams-server failed ({status})"
    );
    Ok(())
}

/// The release profile's output directory, honouring `CARGO_TARGET_DIR`.
pub(crate) fn release_dir(root: &Path) -> PathBuf {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), |dir| root.join(dir));
    target_dir.join("release")
}

/// Path of the release server binary.
fn release_binary(root: &Path) -> PathBuf {
    release_dir(root).join(format!(
        "durable-streams-server{}",
        std::env::consts::EXE_SUFFIX
    ))
}

/// Runs `npm ci` in `conformance/` unless `node_modules` is installed and
/// newer than `package.json` and `package-lock.json`.
fn ensure_node_modules(conformance_dir: &Path) -> Result<()> {
    // npm records what it installed here; its age is the age of the install.
    let marker = conformance_dir
        .join("node_modules")
        .join(".package-lock.json");
    let installed = modified(&marker);
    let stale = match installed {
        None => true,
        Some(installed) => ["package.json", "package-lock.json"]
            .iter()
            .filter_map(|file| modified(&conformance_dir.join(file)))
            .any(|changed| changed > installed),
    };
    if !stale {
        return Ok(());
    }

    println!("==> npm ci in {}", conformance_dir.display());
    let npm = if cfg!(windows) { "npm.cmd" } else { "npm" };
    let status = Command::new(npm)
        .current_dir(conformance_dir)
        .args(["ci", "--no-audit", "--no-fund"])
        .status()
        .context("running npm (is Node.js 20+ with npm installed?)")?;
    ensure!(status.success(), "npm ci failed ({status})");
    Ok(())
}

/// Modification time of `path`, if it exists and the platform reports it.
fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Starts a server for `backend` (serving HTTPS if `tls` is given), runs
/// the tests against it, and stops it.
fn test_backend(
    binary: &Path,
    conformance_dir: &Path,
    backend: Backend,
    subscriptions: bool,
    tls: Option<&TlsSetup>,
) -> Result<Outcome> {
    let name = label(
        backend,
        if tls.is_some() {
            Transport::Tls
        } else {
            Transport::Http
        },
    );
    let temp = TempDir::new(&format!("conformance-{}", backend.name()))?;
    // The store gets a directory of its own, so the log and the report do not
    // sit among its files.
    let data_dir = temp.path().join("data");
    fs::create_dir(&data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let log_path = temp.path().join("server.log");
    let port = server::free_loopback_port()?;

    let mut env: Vec<(String, OsString)> = vec![
        (
            "DS_SERVER__BIND_ADDRESS".into(),
            format!("127.0.0.1:{port}").into(),
        ),
        ("DS_STORAGE__MODE".into(), backend.name().into()),
        (
            "DS_STORAGE__DATA_DIR".into(),
            data_dir.clone().into_os_string(),
        ),
        (
            "DS_TRANSPORT__CONNECTION__LONG_POLL_TIMEOUT_SECS".into(),
            LONG_POLL_TIMEOUT_SECS.to_string().into(),
        ),
        ("DS_OBSERVABILITY__RUST_LOG".into(), "warn".into()),
    ];
    env.extend(backend.storage_env(&data_dir));
    if subscriptions {
        env.push(("DS_SUBSCRIPTIONS__ALLOW_DEV_WEBHOOKS".into(), "true".into()));
    }
    if let Some(tls) = tls {
        env.extend([
            ("DS_TRANSPORT__MODE".into(), "tls".into()),
            (
                "DS_TRANSPORT__TLS__CERT_PATH".into(),
                tls.server_cert.clone().into_os_string(),
            ),
            (
                "DS_TRANSPORT__TLS__KEY_PATH".into(),
                tls.server_key.clone().into_os_string(),
            ),
            ("DS_TRANSPORT__HTTP__VERSIONS".into(), "http1,http2".into()),
            (
                "DS_TRANSPORT__TLS__ALPN_PROTOCOLS".into(),
                "http/1.1,h2".into(),
            ),
        ]);
    }

    let mut server = Server::start(binary, temp.path(), port, &env, &log_path)?;
    let probe = match tls {
        None => Probe::Http,
        Some(tls) => Probe::Tls {
            ca_cert: &tls.ca_cert,
            curl: tls.curl,
        },
    };
    match server.wait_ready_with(&probe)? {
        Startup::NotBuilt => {
            backend.cleanup(&data_dir)?;
            temp.remove()?;
            return Ok(Outcome::NotBuilt);
        }
        Startup::Ready => {}
    }

    let report_path = temp.path().join("vitest-report.json");
    // The server certificate names `localhost` (and `127.0.0.1`).
    let base_url = match tls {
        None => format!("http://127.0.0.1:{port}"),
        Some(_) => format!("https://localhost:{port}"),
    };
    let vitest_ok = run_vitest(
        conformance_dir,
        &base_url,
        subscriptions,
        tls.map(|tls| tls.ca_cert.as_path()),
        &report_path,
    )?;
    let still_running = server.check_running();
    let log_tail = server.log_tail();
    server.stop()?;

    let outcome = interpret(&report_path, vitest_ok, still_running);
    if outcome.is_failure() {
        if let Outcome::Tested(report) = &outcome {
            println!("==> conformance {name} failing tests:");
            for failure in &report.failures {
                println!("  FAIL {failure}");
            }
        }
        println!("==> conformance {name} server log tail:\n{log_tail}");
    }
    backend.cleanup(&data_dir)?;
    temp.remove()?;
    Ok(outcome)
}

/// Turns the vitest report, vitest's exit status and the server's state
/// after the run into an outcome.
fn interpret(report_path: &Path, vitest_ok: bool, still_running: Result<()>) -> Outcome {
    let report = match fs::read_to_string(report_path)
        .with_context(|| format!("reading {}", report_path.display()))
        .and_then(|text| vitest::parse_report(&text))
    {
        Ok(report) => report,
        Err(error) => return Outcome::Broken(format!("no usable vitest report: {error:#}")),
    };
    if let Err(error) = still_running {
        return Outcome::Broken(format!("{error:#}"));
    }
    if report.passed + report.failed == 0 {
        return Outcome::Broken("vitest ran no tests".to_owned());
    }
    if !vitest_ok && report.failed == 0 {
        return Outcome::Broken(
            "vitest failed without a failing test (unhandled error? see its output above)"
                .to_owned(),
        );
    }
    Outcome::Tested(report)
}

/// Runs vitest on the test files against `base_url`, trusting `ca_cert` in
/// addition to the usual roots if given, writing the JSON report to
/// `report_path`; returns whether vitest exited successfully.
fn run_vitest(
    conformance_dir: &Path,
    base_url: &str,
    subscriptions: bool,
    ca_cert: Option<&Path>,
    report_path: &Path,
) -> Result<bool> {
    let vitest = conformance_dir
        .join("node_modules")
        .join("vitest")
        .join("vitest.mjs");
    if !vitest.is_file() {
        bail!(
            "{} is missing; run `npm ci` in {}",
            vitest.display(),
            conformance_dir.display()
        );
    }
    let mut output_file = OsString::from("--outputFile.json=");
    output_file.push(report_path);
    let mut node = Command::new("node");
    if let Some(ca_cert) = ca_cert {
        node.env("NODE_EXTRA_CA_CERTS", ca_cert);
    }
    let status = node
        .current_dir(conformance_dir)
        .arg(&vitest)
        .args([
            "run",
            "--config",
            "vitest.config.mjs",
            "--reporter=default",
            "--reporter=json",
        ])
        .arg(output_file)
        .args(TEST_FILES)
        .env("DS_BASE_URL", base_url)
        .env(
            "DS_LONG_POLL_TIMEOUT_MS",
            (LONG_POLL_TIMEOUT_SECS * 1000).to_string(),
        )
        .env(
            "DS_SUBSCRIPTIONS",
            if subscriptions { "true" } else { "false" },
        )
        .status()
        .context("running node (is Node.js 20+ installed?)")?;
    Ok(status.success())
}

#[cfg(test)]
mod tests {
    use super::{Backend, Transport, label};

    #[test]
    fn transport_names_round_trip_and_label_results() {
        for transport in Transport::ALL {
            assert_eq!(Transport::from_name(transport.name()), Some(transport));
        }
        assert_eq!(Transport::from_name("https"), None);
        assert_eq!(Transport::default(), Transport::Http);
        assert_eq!(label(Backend::Memory, Transport::Http), "memory");
        assert_eq!(label(Backend::Acid, Transport::Tls), "acid (tls)");
    }

    #[test]
    fn backend_names_round_trip() {
        for backend in Backend::KNOWN {
            assert_eq!(Backend::from_name(backend.name()), Some(backend));
        }
        assert_eq!(Backend::from_name("all"), None);
        assert_eq!(Backend::from_name("Memory"), None);
    }
}
