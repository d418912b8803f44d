//! OTLP trace export, against a fake OTLP/HTTP collector on loopback.
//!
//! Each test installs the exporter's layer as the thread's default subscriber and drives the
//! router in-process on the (current-thread) test runtime, so the request spans are the
//! server's own. The collector runs on the same runtime; flushes and shutdowns block, so they
//! go through `spawn_blocking`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use ds_server::telemetry::OtlpExporter;
use ds_server::{Config, MemoryStorage, RouterSettings, build_router};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{
    Span, span::SpanKind, status::StatusCode as OtelStatus,
};
use prost::Message;
use tracing_subscriber::layer::SubscriberExt;

use crate::util::{req, send};

/// What the fake collector received.
#[derive(Default)]
struct Received {
    requests: Vec<ExportTraceServiceRequest>,
    headers: Vec<HeaderMap>,
}

/// A minimal OTLP/HTTP collector: decodes protobuf `ExportTraceServiceRequest`s on
/// `POST /v1/traces` and answers with an empty `ExportTraceServiceResponse`.
async fn fake_collector() -> (std::net::SocketAddr, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            post(
                |State(rx): State<Arc<Mutex<Received>>>, headers: HeaderMap, body: Bytes| async move {
                    let Ok(decoded) = ExportTraceServiceRequest::decode(body) else {
                        return (StatusCode::BAD_REQUEST, Vec::new());
                    };
                    let mut rx = rx.lock().expect("lock");
                    rx.requests.push(decoded);
                    rx.headers.push(headers);
                    (StatusCode::OK, Vec::new())
                },
            ),
        )
        .with_state(Arc::clone(&received));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, received)
}

fn config(endpoint: &str, timeout_secs: u64) -> Config {
    Config::from_toml(&format!(
        "[observability]\notlp_endpoint = \"{endpoint}\"\notlp_service_name = \"ds-under-test\"\n\
         otlp_headers = [\"x-tenant=acme\"]\notlp_timeout_secs = {timeout_secs}\n"
    ))
    .expect("valid config")
}

fn exporter(cfg: &Config) -> Arc<OtlpExporter> {
    interested_global_subscriber();
    Arc::new(
        OtlpExporter::from_config(&cfg.observability)
            .expect("exporter starts")
            .expect("an endpoint is configured"),
    )
}

/// Installs a global subscriber that is interested in every callsite, once per test binary.
///
/// `tracing` caches each callsite's interest process-wide. While a single thread-local
/// (`set_default`) subscriber exists, callsites first hit on any thread are asked of the global
/// subscriber only; without one, they are cached as never enabled, and a test's own subscriber
/// then misses its request spans. Other tests' spans land in this layer-less registry.
fn interested_global_subscriber() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    });
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("no panic")
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key) {
        Some(any_value::Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(any_value::Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

/// Every span the collector received, after checking the request headers and the resource.
fn exported_spans(received: &Mutex<Received>, service_name: &str) -> Vec<Span> {
    let rx = received.lock().expect("lock");
    assert!(!rx.requests.is_empty(), "the collector got an export");
    for headers in &rx.headers {
        assert_eq!(headers["content-type"], "application/x-protobuf");
        assert_eq!(headers["x-tenant"], "acme", "otlp_headers are sent");
    }
    for request in &rx.requests {
        for resource_spans in &request.resource_spans {
            let resource = resource_spans.resource.as_ref().expect("resource");
            assert_eq!(
                str_attr(&resource.attributes, "service.name"),
                Some(service_name)
            );
        }
    }
    rx.requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| s.spans.iter().cloned())
        .collect()
}

/// Finds the server span of the request `method` answered with `status`, and checks it.
fn assert_server_span(spans: &[Span], method: &str, status: i64, stream: &str) {
    let span = spans
        .iter()
        .find(|s| {
            str_attr(&s.attributes, "http.request.method") == Some(method)
                && int_attr(&s.attributes, "http.response.status_code") == Some(status)
        })
        .unwrap_or_else(|| panic!("no span for {method} -> {status}: {spans:#?}"));
    assert_eq!(span.name, format!("{method} /v1/stream/{{name}}"));
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(
        str_attr(&span.attributes, "http.route"),
        Some("/v1/stream/{name}")
    );
    assert_eq!(str_attr(&span.attributes, "ds.stream.name"), Some(stream));
    assert!(int_attr(&span.attributes, "event.duration").is_some_and(|d| d > 0));
    assert_ne!(
        span.status.as_ref().map(|s| s.code),
        Some(OtelStatus::Error as i32),
        "only 5xx marks a span as failed"
    );
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    assert_eq!(span.trace_id.len(), 16);
}

#[tokio::test]
async fn request_spans_reach_the_collector_with_http_attributes() {
    let (addr, received) = fake_collector().await;
    let cfg = config(&format!("http://{addr}"), 5);
    let exporter = exporter(&cfg);
    assert_eq!(exporter.url(), format!("http://{addr}/v1/traces"));
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(exporter.layer()));
    let app = build_router(
        Arc::new(MemoryStorage::default()),
        RouterSettings::from_config(&cfg),
    );

    let path = "/v1/stream/otlp-spans";
    let created = send(
        &app,
        req(
            "PUT",
            path,
            &[("content-type", "text/plain")],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let appended = send(
        &app,
        req("POST", path, &[("content-type", "text/plain")], "hello"),
    )
    .await;
    assert_eq!(appended.status(), StatusCode::NO_CONTENT);
    let read = send(
        &app,
        req("GET", &format!("{path}?offset=-1"), &[], Body::empty()),
    )
    .await;
    assert_eq!(read.status(), StatusCode::OK);
    let missing = send(
        &app,
        req("GET", "/v1/stream/otlp-missing", &[], Body::empty()),
    )
    .await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let flushing = Arc::clone(&exporter);
    blocking(move || flushing.force_flush())
        .await
        .expect("flush reaches the collector");

    let spans = exported_spans(&received, "ds-under-test");
    let expected = [
        ("PUT", 201, "otlp-spans"),
        ("POST", 204, "otlp-spans"),
        ("GET", 200, "otlp-spans"),
        ("GET", 404, "otlp-missing"),
    ];
    assert_eq!(
        spans.len(),
        expected.len(),
        "one span per request: {spans:#?}"
    );
    for (method, status, stream) in expected {
        assert_server_span(&spans, method, status, stream);
    }
    blocking(move || exporter.shutdown())
        .await
        .expect("clean shutdown");
}

/// Sends `n` appends and returns how long they took; every one must succeed.
async fn timed_appends(app: &axum::Router, n: usize) -> Duration {
    let path = "/v1/stream/otlp-down";
    let created = send(
        app,
        req(
            "PUT",
            path,
            &[("content-type", "text/plain")],
            Body::empty(),
        ),
    )
    .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let start = Instant::now();
    for i in 0..n {
        let res = send(
            app,
            req(
                "POST",
                path,
                &[("content-type", "text/plain")],
                format!("m{i}"),
            ),
        )
        .await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "append {i}");
    }
    start.elapsed()
}

#[tokio::test]
async fn a_black_holed_collector_neither_slows_nor_fails_requests_and_shutdown_is_bounded() {
    // Accepts connections and never answers: every export hangs until its timeout.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let held = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            held.lock().expect("lock").push(socket);
        }
    });
    let cfg = config(&format!("http://{addr}"), 1);
    let exporter = exporter(&cfg);
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(exporter.layer()));
    let app = build_router(
        Arc::new(MemoryStorage::default()),
        RouterSettings::from_config(&cfg),
    );

    // A first batch, and an export of it that hangs, while more requests are served.
    let warm = timed_appends(&app, 5).await;
    let flushing = Arc::clone(&exporter);
    let flush = tokio::task::spawn_blocking(move || flushing.force_flush());
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted.lock().expect("lock").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the exporter never connected; max level {:?}, flush {:?}",
            tracing::level_filters::LevelFilter::current(),
            flush.is_finished()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let path = "/v1/stream/otlp-down";
    let start = Instant::now();
    for i in 0..20 {
        let res = send(
            &app,
            req(
                "POST",
                path,
                &[("content-type", "text/plain")],
                format!("n{i}"),
            ),
        )
        .await;
        assert_eq!(
            res.status(),
            StatusCode::NO_CONTENT,
            "append {i} during a hung export"
        );
    }
    let during = start.elapsed();
    // Were the export on the request path, each request would wait out the 1 s timeout (20 s
    // in all); the bound leaves room for a loaded machine.
    assert!(
        during < Duration::from_secs(5),
        "20 appends took {during:?} while the export hung (warm-up of 5: {warm:?})"
    );
    let flushed = flush.await.expect("no panic");
    assert!(flushed.is_err(), "a hung export is reported as failed");

    let start = Instant::now();
    let _ = blocking(move || exporter.shutdown()).await;
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "shutdown waited {took:?}; it is bounded by otlp_timeout_secs = 1"
    );
}

#[tokio::test]
async fn an_unreachable_collector_fails_exports_quickly_and_requests_succeed() {
    // A port nothing listens on: connections are refused.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let cfg = config(&format!("http://{addr}/"), 1);
    let exporter = exporter(&cfg);
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(exporter.layer()));
    let app = build_router(
        Arc::new(MemoryStorage::default()),
        RouterSettings::from_config(&cfg),
    );
    let took = timed_appends(&app, 20).await;
    assert!(took < Duration::from_secs(5), "20 appends took {took:?}");
    let start = Instant::now();
    let flushing = Arc::clone(&exporter);
    let flushed = blocking(move || flushing.force_flush()).await;
    assert!(flushed.is_err(), "the refused export is reported");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the failed export took {:?}",
        start.elapsed()
    );
    blocking(move || exporter.shutdown())
        .await
        .expect("nothing left to send");
}
