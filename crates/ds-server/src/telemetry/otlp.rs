//! Optional export of request spans as OTLP traces over HTTP (`observability.otlp_endpoint`).
//!
//! `tracing-opentelemetry` turns each `request` span into an OpenTelemetry span when it closes.
//! The SDK's batch span processor puts the finished span on a bounded queue with `try_send`
//! (a full queue drops the span; the request never waits) and exports from its own thread,
//! every few seconds or every 512 spans, as OTLP protobuf (`application/x-protobuf`) POSTed to
//! `<endpoint>/v1/traces`.
//!
//! The HTTP client is ours ([`ExportClient`]): hyper's HTTP/1.1 client connection, kept open
//! between exports, with rustls for `https://` endpoints, running on a one-worker tokio runtime
//! that belongs to the exporter. A slow, unreachable or black-holing collector therefore ties
//! up only that worker and the batch thread, never a request task or a server worker. Each
//! export (retries included) is bounded by `observability.otlp_timeout_secs`, and so is the
//! final flush at shutdown ([`OtlpExporter::shutdown`]). Failures are logged once, then at most
//! once a minute, and recovery is logged too.
//!
//! Standard SDK variables still apply where no key overrides them: `OTEL_BSP_*` (queue size,
//! batch size, delay) and `OTEL_EXPORTER_OTLP_HEADERS`/`OTEL_EXPORTER_OTLP_TRACES_HEADERS`
//! (added to `otlp_headers`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracer, SdkTracerProvider};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::registry::LookupSpan;

use crate::config::ObservabilityConfig;

/// Largest collector response body read (an `ExportTraceServiceResponse` is a few bytes).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How often a collector that keeps failing is reported.
const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Set once an exporter exists in this process: request spans then carry the `otel.*` fields
/// (span name, kind, error status) that only matter to OpenTelemetry, and that would otherwise
/// clutter every log line.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Whether an OTLP exporter has been started in this process.
pub(crate) fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Why the exporter could not start, flush or stop.
#[derive(Debug, thiserror::Error)]
#[error("OTLP export: {0}")]
pub struct OtlpError(String);

/// A running OTLP/HTTP trace exporter: a tracer provider with a batch span processor.
///
/// Add [`OtlpExporter::layer`] to a `tracing` subscriber; call [`OtlpExporter::shutdown`] once
/// before exit to send what is still queued.
#[derive(Debug)]
pub struct OtlpExporter {
    provider: SdkTracerProvider,
    timeout: Duration,
    url: String,
}

impl OtlpExporter {
    /// Starts an exporter for `cfg`, or returns `None` when `otlp_endpoint` is unset or empty.
    /// `cfg` must have passed [`Config::validate`](crate::Config::validate).
    pub fn from_config(cfg: &ObservabilityConfig) -> Result<Option<OtlpExporter>, OtlpError> {
        let Some(url) = cfg.otlp_traces_url() else {
            return Ok(None);
        };
        let timeout = Duration::from_secs(cfg.otlp_timeout_secs.max(1));
        let headers: HashMap<String, String> = cfg
            .otlp_header_pairs()
            .map_err(OtlpError)?
            .into_iter()
            .collect();
        let client = ExportClient::new(url.starts_with("https://"), timeout)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(timeout)
            .with_headers(headers)
            .build()
            .map_err(|e| OtlpError(e.to_string()))?;
        let resource = Resource::builder()
            .with_service_name(cfg.otlp_service_name.trim().to_owned())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_resource(resource)
            .build();
        ACTIVE.store(true, Ordering::Relaxed);
        Ok(Some(OtlpExporter {
            provider,
            timeout,
            url,
        }))
    }

    /// The URL spans are POSTed to.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The `tracing` layer feeding this exporter. Spans only: events become span events of
    /// the span they happen in.
    #[must_use]
    pub fn layer<S>(&self) -> OpenTelemetryLayer<S, SdkTracer>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("ds-server"))
            // The request span's location and thread say nothing about the request.
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
    }

    /// Exports everything queued so far and waits for it (blocking; at most about
    /// `otlp_timeout_secs` per batch). For tests and embedders; shutdown flushes by itself.
    pub fn force_flush(&self) -> Result<(), OtlpError> {
        self.provider
            .force_flush()
            .map_err(|e| OtlpError(e.to_string()))
    }

    /// Exports what is still queued and stops the exporter, waiting at most `otlp_timeout_secs`
    /// (blocking). Spans ended afterwards are dropped. A second call does nothing.
    pub fn shutdown(&self) -> Result<(), OtlpError> {
        match self.provider.shutdown_with_timeout(self.timeout) {
            Ok(()) | Err(opentelemetry_sdk::error::OTelSdkError::AlreadyShutdown) => Ok(()),
            Err(e) => Err(OtlpError(e.to_string())),
        }
    }
}

/// The exporter's HTTP client: see the module docs.
struct ExportClient {
    /// Owned so that dropping the client (when the exporter shuts down) stops its worker.
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportClient")
            .field("timeout", &self.inner.timeout)
            .field("tls", &self.inner.tls.is_some())
            .finish_non_exhaustive()
    }
}

struct Inner {
    tls: Option<TlsConnector>,
    timeout: Duration,
    /// The open connection and the `scheme://authority` it goes to.
    conn: tokio::sync::Mutex<Option<(String, SendRequest<Full<Bytes>>)>>,
    health: Mutex<Health>,
}

/// What the operator has been told about the collector.
#[derive(Default)]
struct Health {
    failing: bool,
    last_warning: Option<Instant>,
}

impl ExportClient {
    fn new(https: bool, timeout: Duration) -> Result<ExportClient, OtlpError> {
        let tls = if https {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| OtlpError(format!("TLS setup failed: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ds-otlp-export")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| OtlpError(format!("cannot start the export runtime: {e}")))?;
        Ok(ExportClient {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            inner: Arc::new(Inner {
                tls,
                timeout,
                conn: tokio::sync::Mutex::new(None),
                health: Mutex::new(Health::default()),
            }),
        })
    }
}

impl Drop for ExportClient {
    fn drop(&mut self) {
        // Never blocks: an export still hanging on a dead collector is abandoned.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl HttpClient for ExportClient {
    // The trait is declared with `async_trait`; this is the signature it expands to.
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        Self: 'async_trait,
        'life0: 'async_trait,
    {
        // The batch thread polls this future outside any tokio runtime; the request itself
        // runs on the exporter's own runtime.
        let inner = Arc::clone(&self.inner);
        let task = self.handle.spawn(async move {
            let result = tokio::time::timeout(inner.timeout, inner.send(request))
                .await
                .unwrap_or_else(|_| {
                    Err(format!("no answer from the collector within {:?}", inner.timeout).into())
                });
            inner.report(&result);
            result
        });
        Box::pin(async move {
            task.await
                .map_err(|e| HttpError::from(format!("the export task ended early: {e}")))?
        })
    }
}

impl Inner {
    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (mut parts, body) = request.into_parts();
        let uri = parts.uri.clone();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("unsupported collector URL {uri}").into()),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("collector URL {uri} has no host"))?
            .clone();
        let key = format!("{}://{authority}", if https { "https" } else { "http" });
        // HTTP/1.1 over a client connection: origin-form target plus `Host`.
        parts.uri = uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str)
            .parse()?;
        parts.headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(authority.as_str())?,
        );
        let mut slot = self.conn.lock().await;
        let reused = match slot.take() {
            Some((k, mut sender)) if k == key => sender.ready().await.ok().map(|()| sender),
            _ => None,
        };
        let (mut sender, was_reused) = match reused {
            Some(s) => (s, true),
            None => (self.connect(&authority, https).await?, false),
        };
        let attempt = http::Request::from_parts(parts.clone(), Full::new(body.clone()));
        let response = match sender.send_request(attempt).await {
            Ok(r) => r,
            // The collector may have closed the idle connection just as it was reused.
            Err(_) if was_reused => {
                sender = self.connect(&authority, https).await?;
                sender
                    .send_request(http::Request::from_parts(parts, Full::new(body)))
                    .await?
            }
            Err(e) => return Err(e.into()),
        };
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| format!("cannot read the collector's response: {e}"))?
            .to_bytes();
        *slot = Some((key, sender));
        Ok(Response::from_parts(parts, body))
    }

    async fn connect(
        &self,
        authority: &http::uri::Authority,
        https: bool,
    ) -> Result<SendRequest<Full<Bytes>>, HttpError> {
        let host = authority.host();
        // `Authority::host` keeps the brackets of an IPv6 literal.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let stream = TcpStream::connect((bare, port))
            .await
            .map_err(|e| format!("cannot connect to the collector at {authority}: {e}"))?;
        let _ = stream.set_nodelay(true);
        if https {
            let tls = self
                .tls
                .as_ref()
                .ok_or("an https collector URL needs the TLS client")?;
            let name = ServerName::try_from(bare.to_owned())
                .map_err(|e| format!("invalid TLS server name {bare:?}: {e}"))?;
            let stream = tls
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS handshake with the collector failed: {e}"))?;
            handshake(TokioIo::new(stream)).await
        } else {
            handshake(TokioIo::new(stream)).await
        }
    }

    /// Tells the operator when exports start failing (then at most once a minute) and when
    /// they recover. Runs on the export runtime, outside any request span, so these events are
    /// logged but never exported themselves.
    fn report(&self, result: &Result<Response<Bytes>, HttpError>) {
        let problem = match result {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("the collector answered {}", r.status())),
            Err(e) => Some(e.to_string()),
        };
        let mut health = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match problem {
            None if health.failing => {
                health.failing = false;
                health.last_warning = None;
                tracing::info!("OTLP trace export recovered");
            }
            None => {}
            Some(problem) => {
                let due = health
                    .last_warning
                    .is_none_or(|at| at.elapsed() >= WARN_INTERVAL);
                health.failing = true;
                if due {
                    health.last_warning = Some(Instant::now());
                    tracing::warn!(
                        error = %problem,
                        "OTLP trace export failed; spans are dropped while the collector is unavailable"
                    );
                }
            }
        }
    }
}

/// HTTP/1.1 handshake; the connection is driven by a task on the export runtime until the
/// sender is dropped or the collector closes it.
async fn handshake<IO>(io: IO) -> Result<SendRequest<Full<Bytes>>, HttpError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake with the collector failed: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}
