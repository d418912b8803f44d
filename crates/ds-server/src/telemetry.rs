//! Logs and request spans.
//!
//! Every request runs inside a `request` span whose fields use OpenTelemetry / ECS names
//! (`http.request.method`, `http.route`, `url.scheme`, `client.address`,
//! `http.response.status_code`, `event.duration`, ...). The stream name is logged as given,
//! as a short stable hash, or not at all (`observability.stream_names`); when it is not logged
//! as given, neither is `url.path`, which contains it. Logs are pretty or JSON
//! (`observability.log_format`). A completed request is logged at `info` and counted in
//! [`Metrics`].
//!
//! With `observability.otlp_endpoint` set, the same spans are also exported as OTLP traces
//! over HTTP, batched and off the request path ([`OtlpExporter`], in the `otlp` module); the
//! span is then named `{method} {route}` with kind `server`, and a `5xx` marks it as an error.
//! [`shutdown_tracing`] sends what is still queued before the process exits.

mod otlp;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::Request;
use axum::http::Version;
use axum::response::Response;
use tracing::Instrument;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{Config, LogFormat, StreamNameLogging};
use crate::metrics::Metrics;
use crate::proxy::ClientOrigin;

pub use otlp::{OtlpError, OtlpExporter};

/// The exporter [`init_tracing`] installed, for [`shutdown_tracing`].
static INSTALLED: OnceLock<OtlpExporter> = OnceLock::new();

/// Initialises `tracing` from `RUST_LOG`, else `observability.rust_log`, in the configured
/// format, plus the OTLP exporter when `observability.otlp_endpoint` is set. A second
/// initialisation (tests, embedders with their own subscriber) is a no-op.
///
/// An exporter that cannot start is reported on stderr and left out: telemetry never stops
/// the server from serving.
pub fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.observability.rust_log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let exporter = OtlpExporter::from_config(&cfg.observability).unwrap_or_else(|e| {
        eprintln!("warning: {e}; continuing without trace export");
        None
    });
    let logs = match cfg.observability.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(exporter.as_ref().map(OtlpExporter::layer))
        .try_init()
        .is_ok();
    if let Some(exporter) = exporter {
        if installed {
            tracing::info!(
                otlp.url = exporter.url(),
                "exporting request spans over OTLP/HTTP"
            );
            let _ = INSTALLED.set(exporter);
        } else {
            // Another subscriber is in charge; this exporter would never see a span.
            let _ = exporter.shutdown();
        }
    }
}

/// Sends the spans still queued for export and stops the exporter, waiting at most
/// `observability.otlp_timeout_secs`. Call once, before the process exits; does nothing when
/// [`init_tracing`] started no exporter.
pub fn shutdown_tracing() {
    if let Some(exporter) = INSTALLED.get()
        && let Err(e) = exporter.shutdown()
    {
        tracing::warn!(error = %e, "spans queued for export were lost at shutdown");
    }
}

/// What the span middleware needs.
#[derive(Debug, Clone)]
pub(crate) struct SpanSettings {
    pub(crate) base_path: String,
    pub(crate) stream_names: StreamNameLogging,
    pub(crate) metrics: Arc<Metrics>,
}

/// A short stable hash of a stream name (FNV-1a, 64 bits), for correlating log lines without
/// revealing names.
#[must_use]
pub fn hash_stream_name(name: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn version_str(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// A request's span, opened before the request is handled.
pub(crate) struct RequestSpan {
    settings: Arc<SpanSettings>,
    start: Instant,
    method: axum::http::Method,
    span: tracing::Span,
    exporting: bool,
}

impl RequestSpan {
    /// Opens the span of `req`. Its fields are computed only when the span is enabled (a `warn`
    /// filter without OTLP export pays for none of them).
    pub(crate) fn open(settings: Arc<SpanSettings>, req: &Request) -> Self {
        let start = Instant::now();
        let method = req.method().clone();
        let mut exporting = false;
        let span = if tracing::enabled!(target: "ds_server::telemetry", tracing::Level::INFO) {
            let path = req.uri().path();
            let stream = path
                .strip_prefix(settings.base_path.as_str())
                .and_then(|r| r.strip_prefix('/'))
                .filter(|r| !r.is_empty() && *r != "__ds" && !r.starts_with("__ds/"));
            let route = match path {
                "/healthz" | "/readyz" | "/metrics" => path.to_owned(),
                _ if stream.is_some() => format!("{}/{{name}}", settings.base_path),
                _ => "other".to_owned(),
            };
            let stream_field = match (stream, settings.stream_names) {
                (Some(n), StreamNameLogging::Plain) => Some(n.to_owned()),
                (Some(n), StreamNameLogging::Hashed) => Some(hash_stream_name(n)),
                (_, _) => None,
            };
            let url_path = (settings.stream_names == StreamNameLogging::Plain).then_some(path);
            let origin = req.extensions().get::<ClientOrigin>();
            let span = tracing::info_span!(
                "request",
                http.request.method = %method,
                http.route = %route,
                url.path = url_path,
                url.scheme = origin.map(|o| o.scheme),
                server.address = origin.and_then(|o| o.host.as_deref()),
                client.address = origin.and_then(|o| o.address).map(tracing::field::display),
                network.protocol.version = version_str(req.version()),
                ds.stream.name = stream_field.as_deref(),
                http.response.status_code = tracing::field::Empty,
                event.duration = tracing::field::Empty,
                otel.name = tracing::field::Empty,
                otel.kind = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            exporting = otlp::active();
            if exporting {
                // Recorded before the span is first entered, while the OpenTelemetry span is
                // still being built: its kind cannot change after that.
                span.record("otel.name", format!("{method} {route}"));
                span.record("otel.kind", "server");
            }
            span
        } else {
            tracing::Span::none()
        };
        RequestSpan {
            settings,
            start,
            method,
            span,
            exporting,
        }
    }

    /// Runs `inner` (the rest of the request's handling) inside the span, then logs the
    /// completion line and counts the request in [`Metrics`].
    pub(crate) async fn run<F>(self, inner: F) -> Response
    where
        F: std::future::Future<Output = Response>,
    {
        let RequestSpan {
            settings,
            start,
            method,
            span,
            exporting,
        } = self;
        let res = inner.instrument(span.clone()).await;
        let elapsed = start.elapsed();
        let status = res.status().as_u16();
        settings
            .metrics
            .record_request(method.as_str(), status, elapsed);
        if span.is_disabled() {
            if res.status().is_server_error() {
                tracing::warn!(
                    http.request.method = %method,
                    http.response.status_code = i64::from(status),
                    "request failed"
                );
            }
            return res;
        }
        // Signed integers: OpenTelemetry attributes have no unsigned type, and
        // `tracing-opentelemetry` would turn a `u64` into a string.
        span.record("http.response.status_code", i64::from(status));
        if exporting && res.status().is_server_error() {
            span.record("otel.status_code", "error");
        }
        // ECS `event.duration` is in nanoseconds.
        span.record(
            "event.duration",
            i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX),
        );
        span.in_scope(|| {
            if res.status().is_server_error() {
                tracing::warn!(
                    http.response.status_code = i64::from(status),
                    "request failed"
                );
            } else {
                tracing::info!(
                    http.response.status_code = i64::from(status),
                    "request completed"
                );
            }
        });
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_name_hash_is_stable_and_short() {
        assert_eq!(hash_stream_name("chat"), hash_stream_name("chat"));
        assert_ne!(hash_stream_name("chat"), hash_stream_name("chat2"));
        assert_eq!(hash_stream_name("a").len(), 16);
    }
}
