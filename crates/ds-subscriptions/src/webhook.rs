//! The webhook HTTP client: one connection per delivery, to an address checked right before
//! connecting, over TLS for `https://`. Redirects are never followed: a `3xx` is a failed
//! delivery like any other non-`2xx`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};

use crate::ssrf::{self, Host, WebhookUrl};

/// Largest webhook response body read (a `{ "done": true }` is all we look for).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The webhook response.
#[derive(Debug)]
pub(crate) struct Response {
    /// The status code.
    pub status: u16,
    /// The body, up to [`MAX_RESPONSE_BYTES`] (empty if longer).
    pub body: Bytes,
}

/// Why a delivery failed before a response arrived.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct DeliveryError(pub String);

/// Sends signed webhook requests.
#[derive(Clone)]
pub(crate) struct Client {
    tls: TlsConnector,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client trusting the Mozilla root set, with a whole-request `timeout`.
    pub(crate) fn new(timeout: Duration) -> Result<Client, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Client {
            tls: TlsConnector::from(Arc::new(config)),
            timeout,
        })
    }

    /// POSTs `body` with its `Webhook-Signature`.
    pub(crate) async fn post(
        &self,
        url: &WebhookUrl,
        body: Bytes,
        signature: &str,
    ) -> Result<Response, DeliveryError> {
        tokio::time::timeout(self.timeout, self.post_inner(url, body, signature))
            .await
            .map_err(|_| DeliveryError(format!("timed out after {:?}", self.timeout)))?
    }

    async fn post_inner(
        &self,
        url: &WebhookUrl,
        body: Bytes,
        signature: &str,
    ) -> Result<Response, DeliveryError> {
        let resolved = ssrf::resolve(url)
            .await
            .map_err(|e| DeliveryError(format!("cannot resolve the webhook host: {e}")))?;
        let allowed = ssrf::allowed_addrs(url, &resolved);
        if allowed.is_empty() {
            return Err(DeliveryError(
                "every address of the webhook host is a local or private address".to_owned(),
            ));
        }
        let mut last_err = None;
        let mut stream = None;
        for addr in allowed {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let Some(stream) = stream else {
            return Err(DeliveryError(format!(
                "cannot connect to the webhook host: {}",
                last_err.map_or_else(|| "no address".to_owned(), |e| e.to_string())
            )));
        };
        let _ = stream.set_nodelay(true);
        if url.https {
            let server_name = match &url.host {
                Host::Name(name) => ServerName::try_from(name.clone())
                    .map_err(|e| DeliveryError(format!("invalid TLS server name: {e}")))?,
                Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
            };
            let tls = self
                .tls
                .connect(server_name, stream)
                .await
                .map_err(|e| DeliveryError(format!("TLS handshake failed: {e}")))?;
            send(TokioIo::new(tls), url, body, signature).await
        } else {
            send(TokioIo::new(stream), url, body, signature).await
        }
    }
}

async fn send<IO>(
    io: IO,
    url: &WebhookUrl,
    body: Bytes,
    signature: &str,
) -> Result<Response, DeliveryError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| DeliveryError(format!("HTTP handshake failed: {e}")))?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let request = http::Request::post(url.path_and_query.as_str())
        .header(http::header::HOST, url.authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "durable-streams-subscriptions/1")
        .header("webhook-signature", signature)
        .body(Full::new(body))
        .map_err(|e| DeliveryError(format!("cannot build the request: {e}")))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| DeliveryError(format!("webhook request failed: {e}")))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        Ok(Response { status, body })
    }
    .await;
    conn.abort();
    result
}
