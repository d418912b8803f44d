//! Running the built binary: a child process with a clean `DS_*` environment, its stderr in a
//! file, and a minimal HTTP/1.1 client over plain TCP or rustls (std only, no runtime).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_durable-streams-server");

/// A free loopback port.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A running (or exited) server process; killed when dropped.
pub(crate) struct Server {
    child: Child,
    stderr: PathBuf,
    pub(crate) port: u16,
}

/// Starts the binary in `cwd` with `args` and `env` (plus a free port as
/// `DS_SERVER__BIND_ADDRESS` unless `env` sets it).
pub(crate) fn spawn(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let port = free_port();
    let stderr = cwd.join(format!("server-{port}.log"));
    let mut cmd = Command::new(BIN);
    cmd.current_dir(cwd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("log file"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DS_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    if !env.iter().any(|(k, _)| *k == "DS_SERVER__BIND_ADDRESS") {
        cmd.env("DS_SERVER__BIND_ADDRESS", format!("127.0.0.1:{port}"));
    }
    cmd.envs(env.iter().copied());
    let child = cmd.spawn().expect("start the server binary");
    Server {
        child,
        stderr,
        port,
    }
}

impl Server {
    /// Everything the process wrote to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for the process to exit.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the startup summary is printed (the listener is bound), or the process
    /// exits; returns whether it is listening.
    pub(crate) fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.stderr().contains("listening on") {
                return true;
            }
            if self.child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "server neither listened nor exited; stderr:\n{}",
            self.stderr()
        );
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `HUP`, ...) with `kill`.
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (it is expected to fail at startup).
pub(crate) fn run_to_exit(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut server = spawn(cwd, args, env);
    let status = server.wait_exit(Duration::from_secs(20));
    (status.code().unwrap_or(-1), server.stderr())
}

/// Runs the binary as a one-shot command (`list`, ...) in `cwd` with a clean `DS_*`
/// environment plus `env`, and returns its exit code, stdout and stderr.
pub(crate) fn run_command(
    cwd: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(cwd).args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DS_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run the binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A parsed HTTP/1.1 response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request on `io` and reads a response with a `Content-Length` (or none).
pub(crate) fn request<S: Read + Write>(
    io: &mut S,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n");
    for (k, v) in headers {
        let _ = write!(head, "{k}: {v}\r\n");
    }
    let _ = write!(head, "content-length: {}\r\n\r\n", body.len());
    io.write_all(head.as_bytes())?;
    io.write_all(body)?;
    io.flush()?;
    let mut reader = BufReader::new(io);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body)?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// A plain TCP connection to the server.
pub(crate) fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    s
}

/// A rustls client configuration trusting `ca`, optionally with a client certificate.
pub(crate) fn tls_client(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("pem")).expect("ca cert");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut cfg = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .expect("cert")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("pem"),
                PrivateKeyDer::from_pem_file(key).expect("key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A TLS connection (handshake completed) to the server.
pub(crate) type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects with TLS and completes the handshake.
pub(crate) fn connect_tls(port: u16, cfg: Arc<rustls::ClientConfig>) -> std::io::Result<Tls> {
    let conn = rustls::ClientConnection::new(cfg, ServerName::try_from("localhost").expect("name"))
        .map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, connect(port));
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// The server certificate a TLS connection saw.
pub(crate) fn peer_cert(stream: &Tls) -> Vec<u8> {
    stream
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .expect("server certificate")
}

/// Waits until `/readyz` answers 200 over plain HTTP.
pub(crate) fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port))
            && request(&mut s, "GET", "/readyz", &[], b"").is_ok_and(|r| r.status == 200)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("server on {port} never became ready");
}
