//! Running the server binary under test: free ports, spawning with a clean
//! environment, the readiness probes (`/readyz` over plain HTTP; over TLS the
//! server's `listening on https://` line, then `/readyz` through `curl` or,
//! without curl, an accepting port), and guaranteed shutdown.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long the server may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two readiness probes.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Connect, read and write timeout of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Text the server prints when asked for a storage backend it was built without.
const NOT_BUILT_MARKER: &str = "is not built";
/// Text the server prints once its TLS listener is bound (`startup::summary`).
const LISTENING_TLS_MARKER: &str = "listening on https://";
/// Lines of server log shown with a failure.
const LOG_TAIL_LINES: usize = 40;

/// Picks a free TCP port on the loopback interface.
///
/// Binds port 0, reads the port the OS chose and releases it again. Another
/// process could take it in between; on a test machine that is rare enough.
pub(crate) fn free_loopback_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding 127.0.0.1:0 to find a free port")?;
    let port = listener
        .local_addr()
        .context("reading the port of the probe listener")?
        .port();
    Ok(port)
}

/// How to tell that a started server is ready.
pub(crate) enum Probe<'a> {
    /// `GET /readyz` over plain HTTP/1.1 answers 200.
    Http,
    /// The server serves HTTPS, which the xtask cannot speak: its log says
    /// `listening on https://`, then `curl` (if `curl` is true) gets 200
    /// from `https://localhost:<port>/readyz` trusting `ca_cert`, or else
    /// the port accepts a TCP connection.
    Tls {
        /// The CA certificate that signed the server's certificate.
        ca_cert: &'a Path,
        /// Whether `curl` is available.
        curl: bool,
    },
}

impl Probe<'_> {
    /// What readiness means, for the timeout error.
    fn describe(&self) -> &'static str {
        match self {
            Probe::Http => "answer GET /readyz with 200",
            Probe::Tls { curl: true, .. } => {
                "log `listening on https://` and answer GET /readyz over TLS (curl) with 200"
            }
            Probe::Tls { curl: false, .. } => "log `listening on https://` and accept connections",
        }
    }
}

/// Whether `curl` can be run.
pub(crate) fn curl_available() -> bool {
    Command::new("curl")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// How a started server ended its start-up.
pub(crate) enum Startup {
    /// `/readyz` answered 200.
    Ready,
    /// The process exited saying the requested backend is not compiled in.
    NotBuilt,
}

/// A running server process; killed and reaped when dropped.
pub(crate) struct Server {
    /// The child process; `None` once it has been stopped.
    child: Option<Child>,
    /// Loopback port the server was told to listen on.
    port: u16,
    /// File receiving the server's stdout and stderr.
    log_path: PathBuf,
}

impl Server {
    /// Starts `binary` with no arguments, in `work_dir`, with `env` added to
    /// an environment from which every inherited `DS_*` variable has been
    /// removed (so the caller's shell cannot change the configuration).
    /// Its stdout and stderr both go to `log_path`.
    pub(crate) fn start(
        binary: &Path,
        work_dir: &Path,
        port: u16,
        env: &[(String, OsString)],
        log_path: &Path,
    ) -> Result<Self> {
        let log = File::create(log_path)
            .with_context(|| format!("creating server log {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .context("duplicating the server log handle")?;

        let mut command = Command::new(binary);
        command
            .current_dir(work_dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DS_") {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));

        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child: Some(child),
            port,
            log_path: log_path.to_path_buf(),
        })
    }

    /// The process id, while the process has not been stopped.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits until `GET /readyz` answers 200 over plain HTTP.
    ///
    /// Returns [`Startup::NotBuilt`] if the process exits and its output
    /// mentions that the backend is not built; any other exit, or no
    /// readiness within the time limit, is an error carrying the log's tail.
    pub(crate) fn wait_ready(&mut self) -> Result<Startup> {
        self.wait_ready_with(&Probe::Http)
    }

    /// Waits until `probe` says the server is ready; otherwise as
    /// [`Server::wait_ready`].
    pub(crate) fn wait_ready_with(&mut self, probe: &Probe<'_>) -> Result<Startup> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().context("server already stopped")?;
            if let Some(status) = child.try_wait().context("polling the server process")? {
                self.child = None;
                let log = self.log_text();
                if log.contains(NOT_BUILT_MARKER) {
                    return Ok(Startup::NotBuilt);
                }
                bail!(
                    "server exited before becoming ready ({status})\nserver log tail:\n{}",
                    tail(&log, LOG_TAIL_LINES)
                );
            }
            let ready = match probe {
                Probe::Http => probe_readyz(self.port) == Some(200),
                Probe::Tls { ca_cert, curl } => {
                    self.log_text().contains(LISTENING_TLS_MARKER)
                        && if *curl {
                            curl_readyz(self.port, ca_cert)
                        } else {
                            accepts_connections(self.port)
                        }
                }
            };
            if ready {
                return Ok(Startup::Ready);
            }
            if Instant::now() >= deadline {
                bail!(
                    "server did not {} within {}s\nserver log tail:\n{}",
                    probe.describe(),
                    READY_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            thread::sleep(READY_POLL_INTERVAL);
        }
    }

    /// Whether the process is still running; an exit is reported with its status.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        let child = self.child.as_mut().context("server already stopped")?;
        if let Some(status) = child.try_wait().context("polling the server process")? {
            self.child = None;
            bail!("server exited during the test run ({status})");
        }
        Ok(())
    }

    /// Kills the process and waits for it to exit.
    pub(crate) fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // Killing an already exited child fails harmlessly; wait reaps it either way.
            let _ = child.kill();
            child.wait().context("waiting for the server to exit")?;
        }
        Ok(())
    }

    /// The last lines of the server log, for failure reports.
    pub(crate) fn log_tail(&self) -> String {
        tail(&self.log_text(), LOG_TAIL_LINES)
    }

    /// The whole server log, lossily decoded; empty if it cannot be read.
    fn log_text(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; stop() is best effort here.
        let _ = self.stop();
    }
}

/// The last `lines` lines of `text`, or a note that it is empty.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    if all.is_empty() {
        return "    (server log is empty)".to_owned();
    }
    let start = all.len().saturating_sub(lines);
    all[start..]
        .iter()
        .map(|line| format!("    | {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sends `GET /readyz` over HTTP/1.1 to `127.0.0.1:port` and returns the
/// response status code, or `None` if there was no well-formed answer.
fn probe_readyz(port: u16) -> Option<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
    let request =
        format!("GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;

    // Only the status line matters: read until its end.
    let mut head = Vec::new();
    let mut buf = [0_u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    parse_status_line(&head)
}

/// Whether `curl` gets a success status from `https://localhost:port/readyz`,
/// trusting `ca_cert` (and ignoring any proxy settings of the environment).
fn curl_readyz(port: u16, ca_cert: &Path) -> bool {
    Command::new("curl")
        .args(["-sf", "--noproxy", "*", "--max-time"])
        .arg(PROBE_TIMEOUT.as_secs().to_string())
        .arg("--cacert")
        .arg(ca_cert)
        .arg(format!("https://localhost:{port}/readyz"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether `127.0.0.1:port` accepts a TCP connection.
fn accepts_connections(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok()
}

/// Extracts the status code from the start of an HTTP/1.x response.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head).ok()?;
    let line = text.split("\r\n").next()?;
    let mut parts = line.split(' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::{parse_status_line, tail};

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable\r\nx: y\r\n"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 204\r\n"), Some(204));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[test]
    fn tails_logs() {
        assert_eq!(tail("a\nb\nc\n", 2), "    | b\n    | c");
        assert_eq!(tail("", 2), "    (server log is empty)");
    }
}
