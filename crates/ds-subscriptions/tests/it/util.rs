//! Test harness: an engine over a store (the memory backend unless a test picks another, see
//! [`crate::backends`]), its router, and a webhook receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use bytes::Bytes;
use ds_protocol::{NameLimits, Offset, StreamName};
use ds_storage::{AppendOutcome, AppendRequest, CreateRequest, ReadFrom, Storage};
use ds_storage_memory::MemoryStorage;
use ds_subscriptions::{Notifying, Subscriptions, SubscriptionsConfig, router};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tower::ServiceExt;

pub(crate) const HOST: &str = "streams.test:4437";
pub(crate) const ROOT: &str = "http://streams.test:4437/v1/stream";

pub(crate) fn dev_config() -> SubscriptionsConfig {
    SubscriptionsConfig {
        allow_dev_webhooks: true,
        ..SubscriptionsConfig::default()
    }
}

pub(crate) struct H<S: Storage = MemoryStorage> {
    pub(crate) store: Arc<S>,
    pub(crate) engine: Arc<Subscriptions<S>>,
    pub(crate) streams: Arc<Notifying<S>>,
    pub(crate) app: Router,
    /// The `Host` header of [`H::req`] ([`HOST`] unless a test sets another).
    pub(crate) host: String,
}

pub(crate) struct Resp {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Resp {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

pub(crate) fn name(path: &str) -> StreamName {
    StreamName::parse(path, NameLimits::default()).expect("valid name")
}

impl H {
    pub(crate) async fn new() -> H {
        H::open(Arc::new(MemoryStorage::default()), dev_config()).await
    }
}

impl<S: Storage> H<S> {
    pub(crate) async fn open(store: Arc<S>, cfg: SubscriptionsConfig) -> H<S> {
        let engine = Subscriptions::open(store.clone(), cfg).await.expect("open");
        let streams = Arc::new(Notifying::new(engine.clone()));
        let app = Router::new().nest("/v1/stream/__ds", router(engine.clone()));
        H {
            store,
            engine,
            streams,
            app,
            host: HOST.to_owned(),
        }
    }

    /// Persists everything and stops the engine, as before a restart. The engine's background
    /// tasks may still hold the store for a moment (see [`crate::backends::sole`]).
    pub(crate) async fn stop(self) -> Arc<S> {
        self.engine.flush().await.expect("flush");
        self.engine.shutdown();
        self.store
    }

    pub(crate) async fn req(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        bearer: Option<&str>,
    ) -> Resp {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/v1/stream/__ds{path}"))
            .header("host", &self.host);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        if let Some(token) = bearer {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let body = body.map_or_else(Body::empty, |v| Body::from(v.to_string()));
        let res = self
            .app
            .clone()
            .oneshot(req.body(body).expect("request"))
            .await
            .expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn put_sub(&self, id: &str, spec: Value) -> Resp {
        self.req(
            Method::PUT,
            &format!("/subscriptions/{id}"),
            Some(spec),
            None,
        )
        .await
    }

    pub(crate) async fn get_sub(&self, id: &str) -> Value {
        let r = self
            .req(Method::GET, &format!("/subscriptions/{id}"), None, None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        r.json()
    }

    pub(crate) async fn acked(&self, id: &str, path: &str) -> Option<String> {
        let sub = self.get_sub(id).await;
        sub["streams"]
            .as_array()?
            .iter()
            .find(|s| s["path"] == path)
            .map(|s| s["acked_offset"].as_str().unwrap_or_default().to_owned())
    }

    pub(crate) async fn create_stream(&self, path: &str, body: &str) -> Offset {
        let req = CreateRequest {
            content_type: Some("application/json".into()),
            body: Bytes::from(body.to_owned()),
            ..CreateRequest::default()
        };
        self.streams
            .create(&name(path), req)
            .await
            .expect("create")
            .info()
            .next
    }

    pub(crate) async fn append(&self, path: &str, body: &str) -> Offset {
        let req = AppendRequest {
            content_type: Some("application/json".into()),
            body: Bytes::from(body.to_owned()),
            ..AppendRequest::default()
        };
        match self.streams.append(&name(path), req).await.expect("append") {
            AppendOutcome::Appended { next, .. } => next,
            other => panic!("unexpected {other:?}"),
        }
    }

    pub(crate) async fn read_json(&self, path: &str) -> Vec<Value> {
        let chunk = self
            .streams
            .read(&name(path), ReadFrom::Start, 1 << 20)
            .await
            .expect("read");
        chunk
            .pieces
            .iter()
            .map(|p| serde_json::from_slice(p).expect("json message"))
            .collect()
    }

    /// Polls `f` until it returns `Some` or `timeout` passes.
    pub(crate) async fn wait_for<T, F, Fut>(&self, timeout: Duration, mut f: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(v) = f().await {
                return Some(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Hit {
    pub(crate) headers: HeaderMap,
    pub(crate) raw: Bytes,
    pub(crate) json: Value,
}

/// How the receiver answers: status, body, optional `Location`.
type Reply = (u16, String, Option<String>);

/// A webhook receiver on 127.0.0.1:0.
pub(crate) struct Receiver {
    pub(crate) url: String,
    rx: mpsc::UnboundedReceiver<Hit>,
    reply: Arc<Mutex<Reply>>,
}

impl Receiver {
    pub(crate) async fn start(status: u16, body: &str) -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let reply = Arc::new(Mutex::new((status, body.to_owned(), None)));
        let state = (tx, reply.clone());
        let app = Router::new().fallback(move |headers: HeaderMap, raw: Bytes| {
            let (tx, reply) = state.clone();
            async move {
                let json = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                let _ = tx.send(Hit { headers, raw, json });
                let (status, body, location) = reply.lock().expect("lock").clone();
                let mut res = axum::response::Response::builder()
                    .status(status)
                    .header("content-type", "application/json");
                if let Some(loc) = location {
                    res = res.header("location", loc);
                }
                res.body(Body::from(body)).expect("response")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            rx,
            reply,
        }
    }

    pub(crate) fn reply(&self, status: u16, body: &str, location: Option<&str>) {
        *self.reply.lock().expect("lock") = (status, body.to_owned(), location.map(str::to_owned));
    }

    /// A request already received, without waiting.
    pub(crate) fn try_next(&mut self) -> Option<Hit> {
        self.rx.try_recv().ok()
    }

    pub(crate) async fn next(&mut self, timeout: Duration) -> Option<Hit> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }
}

pub(crate) fn webhook_spec(url: &str, pattern: &str, lease_ms: u64) -> Value {
    serde_json::json!({
        "type": "webhook",
        "pattern": pattern,
        "webhook": { "url": url },
        "lease_ttl_ms": lease_ms,
    })
}

pub(crate) fn stream_of<'a>(hit: &'a Hit, path: &str) -> &'a Value {
    hit.json["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["path"] == path))
        .unwrap_or_else(|| panic!("{path} not in {}", hit.json))
}
