//! `cargo xtask transfer [--gib N] [--skip-build] [--server-binary PATH]`: a large export and
//! import through the release binary, measuring the CLI's peak memory.
//!
//! Fills a `file-fast` data dir through the server (four streams of 8 MiB appends, `N` GiB in
//! all, default 2), stops it, then with the offline commands:
//! 1. `export -o FILE` from it (as `file-durable`),
//! 2. `import -i FILE` into a fresh `acid` data dir and into a fresh `file-durable` one,
//! 3. `list --json` of source and targets must be equal, and an export of the `file-durable`
//!    target must be byte-identical to the first export (same records, offsets, checksums).
//!
//! Each command's peak RSS (`VmHWM`, sampled from `/proc` while it runs) must stay under
//! 200 MiB. Prints the figures and fails on any mismatch or limit.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::conformance;
use crate::http::Client;
use crate::server::{Server, free_loopback_port};
use crate::tempdir::TempDir;

/// Peak RSS any offline command may reach.
const RSS_LIMIT_KIB: u64 = 200 * 1024;
/// Bytes per append.
const CHUNK: usize = 8 * 1024 * 1024;
/// Streams the data is spread over.
const STREAMS: usize = 4;

/// Options of `cargo xtask transfer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Options {
    /// GiB of data to move.
    pub(crate) gib: u64,
    /// Use the existing release binary.
    pub(crate) skip_build: bool,
    /// Use this binary instead of the workspace's.
    pub(crate) server_binary: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            gib: 2,
            skip_build: false,
            server_binary: None,
        }
    }
}

/// One offline command's outcome.
struct Run {
    /// Wall time.
    elapsed: Duration,
    /// Peak resident set size in KiB.
    peak_kib: u64,
    /// Standard output.
    stdout: String,
}

/// Runs the measurement; `Ok(false)` when a check failed.
pub(crate) fn run(root: &Path, options: &Options) -> Result<bool> {
    ensure!(options.gib > 0, "--gib must be at least 1");
    let binary =
        conformance::server_binary(root, options.skip_build, options.server_binary.as_deref())?;
    let work = TempDir::new("transfer")?;
    let dir = |name: &str| work.path().join(name);
    let (src, acid, file) = (dir("src"), dir("acid"), dir("file"));
    let export = dir("streams.dsx");

    fill(&binary, work.path(), &src, options.gib)?;

    let mut ok = true;
    let mut report = |what: &str, run: &Run| {
        let within = run.peak_kib < RSS_LIMIT_KIB;
        ok &= within;
        println!(
            "{what:<28} {:>7.1} s   peak RSS {:>6.1} MiB{}",
            run.elapsed.as_secs_f64(),
            kib_to_mib(run.peak_kib),
            if within { "" } else { "  (over 200 MiB)" }
        );
    };
    let export_arg = export.as_os_str().to_owned();
    let out = offline(
        &binary,
        &src,
        "file-durable",
        &["export".into(), "-o".into(), export_arg.clone()],
    )?;
    report("export (file-durable)", &out);
    let out = offline(
        &binary,
        &acid,
        "acid",
        &["import".into(), "-i".into(), export_arg.clone()],
    )?;
    report("import (acid)", &out);
    let out = offline(
        &binary,
        &file,
        "file-durable",
        &["import".into(), "-i".into(), export_arg],
    )?;
    report("import (file-durable)", &out);

    let list = |data: &Path, mode: &str| {
        offline(&binary, data, mode, &["list".into(), "--json".into()]).map(|r| r.stdout)
    };
    let want = list(&src, "file-durable")?;
    for (data, mode) in [(&acid, "acid"), (&file, "file-durable")] {
        if list(data, mode)? != want {
            println!("MISMATCH: `list --json` of the {mode} target differs from the source");
            ok = false;
        }
    }
    let again = dir("again.dsx");
    offline(
        &binary,
        &file,
        "file-durable",
        &["export".into(), "-o".into(), again.as_os_str().to_owned()],
    )?;
    if same_bytes(&export, &again)? {
        println!(
            "re-export of the file-durable target is byte-identical ({} bytes)",
            fs::metadata(&export)?.len()
        );
    } else {
        println!("MISMATCH: re-export of the file-durable target differs from the export");
        ok = false;
    }
    work.remove()?;
    println!(
        "transfer of {} GiB: {}",
        options.gib,
        if ok { "passed" } else { "FAILED" }
    );
    Ok(ok)
}

/// Writes `gib` GiB into a fresh `file-fast` data dir through the server.
fn fill(binary: &Path, work: &Path, data: &Path, gib: u64) -> Result<()> {
    let port = free_loopback_port()?;
    let env = [
        ("DS_SERVER__BIND_ADDRESS", format!("127.0.0.1:{port}")),
        ("DS_STORAGE__MODE", "file-fast".to_owned()),
        ("DS_STORAGE__DATA_DIR", data.display().to_string()),
        ("DS_LIMITS__MAX_REQUEST_BODY_BYTES", (2 * CHUNK).to_string()),
    ]
    .map(|(k, v)| (k.to_owned(), OsString::from(v)));
    let mut server = Server::start(binary, work, port, &env, &work.join("server.log"))?;
    server.wait_ready()?;
    let mut client = Client::new(port);
    let total = usize::try_from(gib)? * 1024 * 1024 * 1024;
    let appends = total / CHUNK;
    let mut chunk = vec![0u8; CHUNK];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let started = Instant::now();
    for s in 0..STREAMS {
        let path = format!("/v1/stream/big/{s}");
        let res = client.request(
            port,
            "PUT",
            &path,
            &[("content-type", "application/octet-stream")],
            b"",
        )?;
        ensure!(res.status == 201, "PUT {path}: {}", res.summary());
    }
    for i in 0..appends {
        // Different bytes in every append (xorshift), so nothing lines up by accident.
        for word in chunk.chunks_exact_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            word.copy_from_slice(&seed.to_le_bytes());
        }
        let path = format!("/v1/stream/big/{}", i % STREAMS);
        let res = client.request(
            port,
            "POST",
            &path,
            &[("content-type", "application/octet-stream")],
            &chunk,
        )?;
        ensure!(
            res.status == 200 || res.status == 204,
            "POST {path}: {}",
            res.summary()
        );
    }
    server.stop()?;
    println!(
        "filled {gib} GiB in {STREAMS} streams ({appends} appends of 8 MiB) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `binary args` against `data` in `mode`, sampling its peak RSS; fails if it fails.
fn offline(binary: &Path, data: &Path, mode: &str, args: &[OsString]) -> Result<Run> {
    let mut command = Command::new(binary);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("DS_") {
            command.env_remove(key);
        }
    }
    let started = Instant::now();
    let mut child = command
        .args(args)
        .env("DS_STORAGE__MODE", mode)
        .env("DS_STORAGE__DATA_DIR", data)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut stderr = child.stderr.take().context("stderr")?;
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).map(|_| s)
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).map(|_| s)
    });
    let mut peak_kib = 0;
    let status = loop {
        if let Ok(text) = fs::read_to_string(&status_path) {
            peak_kib = peak_kib.max(vm_hwm_kib(&text).unwrap_or(0));
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let stdout = out_reader
        .join()
        .map_err(|_| anyhow::anyhow!("stdout reader"))??;
    let stderr = err_reader
        .join()
        .map_err(|_| anyhow::anyhow!("stderr reader"))??;
    if !status.success() {
        bail!(
            "{} {:?} failed ({status}): {}",
            binary.display(),
            args,
            stderr.trim()
        );
    }
    Ok(Run {
        elapsed,
        peak_kib,
        stdout,
    })
}

/// `VmHWM` (peak resident set) in KiB from a `/proc/<pid>/status` text.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Whether two files hold the same bytes (compared in 1 MiB blocks).
fn same_bytes(left: &Path, right: &Path) -> Result<bool> {
    if fs::metadata(left)?.len() != fs::metadata(right)?.len() {
        return Ok(false);
    }
    let mut readers = (
        BufReader::new(File::open(left)?),
        BufReader::new(File::open(right)?),
    );
    let mut blocks = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let got = read_full(&mut readers.0, &mut blocks.0)?;
        let other = read_full(&mut readers.1, &mut blocks.1)?;
        if got != other || blocks.0[..got] != blocks.1[..other] {
            return Ok(false);
        }
        if got == 0 {
            return Ok(true);
        }
    }
}

/// Fills `buf` as far as the reader allows; returns the bytes read (0 at the end).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = r.read(&mut buf[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// KiB as MiB for display.
#[allow(clippy::cast_precision_loss)]
fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_peak_resident_set() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t   40064 kB\nVmRSS:\t  1000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(40_064));
        assert_eq!(vm_hwm_kib("Name:\tx\n"), None);
    }

    #[test]
    fn compares_files_by_content() {
        let dir = TempDir::new("transfer-test").expect("tempdir");
        let (one, same, changed) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&one, &data).expect("write");
        fs::write(&same, &data).expect("write");
        let mut other = data.clone();
        other[2_500_000] ^= 1;
        fs::write(&changed, &other).expect("write");
        assert!(same_bytes(&one, &same).expect("compare"));
        assert!(!same_bytes(&one, &changed).expect("compare"));
        dir.remove().expect("remove");
    }
}
