//! Helpers for tests over real sockets: a server on a loopback port, and hyper clients over
//! plain TCP or rustls (HTTP/1.1 or HTTP/2).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ds_server::startup::{self, StartupError};
use ds_server::testsupport::TestPki;
use ds_server::{Config, MemoryStorage};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A free loopback port (bound, read, released: the server binds it right after).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A server started in-process with [`startup::run`] on the memory backend.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub(crate) task: JoinHandle<Result<(), StartupError>>,
}

impl TestServer {
    /// Starts `cfg` (its bind address is replaced by a free loopback port) and waits until
    /// the port accepts connections.
    pub(crate) async fn start(cfg: Config) -> TestServer {
        TestServer::start_with(cfg, Arc::new(MemoryStorage::default())).await
    }

    /// [`TestServer::start`] over a store the test keeps a handle to.
    pub(crate) async fn start_with<S: ds_storage::Storage>(
        mut cfg: Config,
        storage: Arc<S>,
    ) -> TestServer {
        let port = free_port();
        cfg.server.bind_address = format!("127.0.0.1:{port}");
        let addr: SocketAddr = cfg.server.bind_address.parse().expect("addr");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(startup::run(cfg, storage, Some(rx)));
        for _ in 0..200 {
            if TcpStream::connect(addr).await.is_ok() {
                return TestServer {
                    addr,
                    stop: Some(tx),
                    task,
                };
            }
            if task.is_finished() {
                let res = task.await.expect("server task");
                panic!("server exited during startup: {res:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server did not start listening on {addr}");
    }

    /// Requests shutdown (like SIGTERM).
    pub(crate) fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    /// Requests shutdown and waits for the server to return.
    pub(crate) async fn stop(mut self) -> Result<(), StartupError> {
        self.shutdown();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("server stops")
            .expect("server task")
    }
}

/// A configuration over the test PKI: `mode` is `"tls"` or `"mtls"`.
pub(crate) fn tls_config(pki: &TestPki, mode: &str, http2: bool) -> Config {
    let versions = if http2 {
        "[\"http1\", \"http2\"]"
    } else {
        "[\"http1\"]"
    };
    let alpn = if http2 {
        "[\"http/1.1\", \"h2\"]"
    } else {
        "[\"http/1.1\"]"
    };
    let ca = if mode == "mtls" {
        format!("client_ca_path = {:?}\n", pki.ca_cert.display().to_string())
    } else {
        String::new()
    };
    Config::from_toml(&format!(
        "[transport]\nmode = \"{mode}\"\n[transport.http]\nversions = {versions}\n[transport.tls]\ncert_path = {:?}\nkey_path = {:?}\n{ca}alpn_protocols = {alpn}\n",
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string()
    ))
    .expect("valid TLS config")
}

/// A rustls client trusting `ca`, offering `alpn`, optionally presenting a certificate.
pub(crate) fn client_tls(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca file") {
        roots.add(cert.expect("ca pem")).expect("ca cert");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut cfg = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .expect("client cert")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("client pem"),
                PrivateKeyDer::from_pem_file(key).expect("client key"),
            )
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A connected HTTP client over one connection.
pub(crate) enum Client {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Client {
    /// Plain HTTP/1.1.
    pub(crate) async fn plain(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        Client::H1(send)
    }

    /// TLS; HTTP/2 when the server selects `h2` by ALPN. The error is the handshake failure.
    pub(crate) async fn tls(
        addr: SocketAddr,
        cfg: Arc<rustls::ClientConfig>,
    ) -> Result<(Client, Option<Vec<u8>>), std::io::Error> {
        let tcp = TcpStream::connect(addr).await?;
        let stream = tokio_rustls::TlsConnector::from(cfg)
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await?;
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(stream);
        let client = if alpn.as_deref() == Some(b"h2".as_slice()) {
            let (send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Client::H2(send)
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Client::H1(send)
        };
        Ok((client, alpn))
    }

    /// Sends a request; `uri` is a path (HTTP/1.1 gets a `Host` header, HTTP/2 an authority).
    pub(crate) async fn send(
        &mut self,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Response<Incoming>, hyper::Error> {
        let h2 = matches!(self, Client::H2(_));
        let uri = if h2 {
            format!("https://localhost{uri}")
        } else {
            uri.to_owned()
        };
        let mut b = Request::builder().method(method).uri(uri);
        if !h2 && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header("host", "localhost");
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        match self {
            Client::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Client::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }
}

/// A response header as text.
pub(crate) fn header(res: &Response<Incoming>, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
}

/// The whole body.
pub(crate) async fn body(res: Response<Incoming>) -> Bytes {
    res.into_body().collect().await.expect("body").to_bytes()
}
