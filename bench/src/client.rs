//! HTTP/1.1 client plumbing over hyper's connection API: one keep-alive connection per
//! worker, sequential requests, bodies as shared `Bytes`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::http::response::Parts;
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The request half of one client connection.
pub(crate) type Sender = SendRequest<Full<Bytes>>;

/// Where a server listens and how it lays out its URLs.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Loopback address.
    pub(crate) addr: SocketAddr,
    /// `Host` header value, built once.
    pub(crate) host: HeaderValue,
    /// Path prefix of streams, without a trailing slash (`/v1/stream` or empty).
    pub(crate) base: String,
    /// Path of the liveness check.
    pub(crate) health: String,
}

impl Target {
    /// A target at `addr` with streams under `base`.
    pub(crate) fn new(addr: SocketAddr, base: &str, health: &str) -> Target {
        Target {
            addr,
            host: HeaderValue::from_str(&addr.to_string()).expect("a socket address is ASCII"),
            base: base.trim_end_matches('/').to_owned(),
            health: health.to_owned(),
        }
    }

    /// The origin-form URI of stream `name` with an optional query (without `?`).
    pub(crate) fn uri(&self, name: &str, query: &str) -> Result<Uri> {
        let s = if query.is_empty() {
            format!("{}/{name}", self.base)
        } else {
            format!("{}/{name}?{query}", self.base)
        };
        s.parse().with_context(|| format!("bad URI {s:?}"))
    }
}

/// Opens one keep-alive connection; its driver runs as a task until either side closes.
pub(crate) async fn connect(addr: SocketAddr) -> Result<Sender> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        // The connection ends when the server closes it or the sender is dropped; either
        // way the worker sees it on its next request.
        let _ = conn.await;
    });
    Ok(sender)
}

/// Connects, retrying for up to `patience` (a server under load may be slow to accept).
pub(crate) async fn connect_retry(addr: SocketAddr, patience: Duration) -> Result<Sender> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Builds a request; `content_type` only where the protocol wants one.
pub(crate) fn request(
    method: Method,
    uri: Uri,
    target: &Target,
    content_type: Option<&HeaderValue>,
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    let h = req.headers_mut();
    h.insert(HOST, target.host.clone());
    if let Some(ct) = content_type {
        h.insert(CONTENT_TYPE, ct.clone());
    }
    req
}

/// Sends on a ready connection and waits for the response head.
pub(crate) async fn send(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
) -> Result<Response<Incoming>> {
    sender.ready().await?;
    Ok(sender.send_request(req).await?)
}

/// Sends and reads the whole response, counting body bytes without keeping them.
pub(crate) async fn send_drain(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
) -> Result<(Parts, u64)> {
    let (parts, mut body) = send(sender, req).await?.into_parts();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame?.data_ref() {
            n += d.len() as u64;
        }
    }
    Ok((parts, n))
}

/// Sends and appends the whole response body to `buf`.
pub(crate) async fn send_collect(
    sender: &mut Sender,
    req: Request<Full<Bytes>>,
    buf: &mut Vec<u8>,
) -> Result<Parts> {
    let (parts, mut body) = send(sender, req).await?.into_parts();
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame?.data_ref() {
            buf.extend_from_slice(d);
        }
    }
    Ok(parts)
}

/// A header as text, if present and ASCII.
pub(crate) fn header<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// One request on a fresh connection: for readiness checks and setup.
pub(crate) async fn one_shot(
    target: &Target,
    method: Method,
    path: &str,
    content_type: Option<&HeaderValue>,
    body: Bytes,
) -> Result<(Parts, u64)> {
    let mut s = connect(target.addr).await?;
    let uri: Uri = path.parse()?;
    send_drain(&mut s, request(method, uri, target, content_type, body)).await
}
