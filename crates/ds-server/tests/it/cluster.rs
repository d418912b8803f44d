//! Subscriptions across two real servers sharing one PostgreSQL schema (cluster mode, see
//! docs/scaling.md): the node holding the `subscriptions` lease runs the engine, the other
//! forwards the subscription routes to it through the database; a graceful shutdown of the
//! holder hands the engine over; with the lease held by a node that is gone, the routes answer
//! `503` with `Retry-After` while the stream routes keep working.
//!
//! Each test gets a fresh schema (`ds_srv_<hex>`), dropped with `psql` at the end (also when
//! the test fails). The database is `DS_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/test`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ds_server::Config;
use ds_server::startup::{self, StartupError};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::net::{Client, free_port};

/// How long something that is coming may take (a wake, a forwarded answer, a takeover).
const WAIT: Duration = Duration::from_secs(8);
/// How long to listen for a wake that must not come.
const QUIET: Duration = Duration::from_millis(1_500);
/// The lease ttl. Long enough that a graceful hand-over (one renewal period, 800 ms) is told
/// apart from waiting for the lease to lapse (4 s), and that a loaded machine never loses it.
const LEASE_MS: u64 = 4_000;
/// How long a standby node waits for the holder to answer a forwarded request.
const CALL_TIMEOUT_MS: u64 = 1_500;
/// The subscription routes' answer when no node serves them comes within the call timeout
/// plus this.
const CALL_SLACK: Duration = Duration::from_millis(2_500);

// ----- The database -----

fn db_url() -> String {
    std::env::var("DS_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Runs SQL with `psql`; the unaligned, tuples-only output.
fn psql(sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .arg(db_url())
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running psql (these tests need the PostgreSQL client): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "psql failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A schema of its own for one test, dropped (with everything in it) when the test ends.
struct Schema(String);

impl Schema {
    fn new() -> Schema {
        Schema(format!("ds_srv_{:016x}", fastrand::u64(..)))
    }

    /// `(holder, term, unexpired)` of the `subscriptions` lease row, if there is one.
    fn lease(&self) -> Option<(String, u64, bool)> {
        let out = psql(&format!(
            "SELECT holder || '|' || term || '|' || (expires_at > now()) \
             FROM \"{}\".ds_leases WHERE name = 'subscriptions'",
            self.0
        ))
        .expect("read the lease row");
        if out.is_empty() {
            return None;
        }
        let mut parts = out.split('|');
        let holder = parts.next().expect("holder").to_owned();
        let term = parts.next().expect("term").parse().expect("numeric term");
        // `boolean || text` spells it out.
        let valid = parts.next() == Some("true");
        Some((holder, term, valid))
    }

    /// Waits until some node holds the `subscriptions` lease; returns `(holder, term)`.
    async fn held_lease(&self) -> (String, u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((holder, term, true)) = self.lease()
                && !holder.is_empty()
            {
                return (holder, term);
            }
            assert!(
                Instant::now() < deadline,
                "no node took the subscriptions lease within {WAIT:?}: {:?}",
                self.lease()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!(
            "SET lock_timeout = '10s'; DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.0
        );
        if let Err(e) = psql(&sql) {
            eprintln!("could not drop test schema {}: {e}", self.0);
        }
    }
}

// ----- Servers -----

/// A real server (`startup::serve`, the `postgres` backend, the subscription engine) on a
/// loopback port.
struct Node {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), StartupError>>,
}

impl Node {
    /// Starts a node on `schema` and waits until it accepts connections.
    async fn start(schema: &Schema) -> Node {
        let port = free_port();
        let cfg = Config::from_toml(&format!(
            "[server]\n\
             bind_address = \"127.0.0.1:{port}\"\n\
             shutdown_delay_secs = 0\n\
             drain_timeout_secs = 2\n\
             [storage]\n\
             mode = \"postgres\"\n\
             [storage.postgres]\n\
             url = {url:?}\n\
             schema = {schema:?}\n\
             pool_size = 4\n\
             [subscriptions]\n\
             allow_dev_webhooks = true\n\
             cluster_lease_ms = {LEASE_MS}\n\
             cluster_call_timeout_ms = {CALL_TIMEOUT_MS}\n",
            url = db_url(),
            schema = schema.0,
        ))
        .expect("valid config");
        let addr: SocketAddr = cfg.server.bind_address.parse().expect("addr");
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(startup::serve(cfg, Some(rx)));
        // Opening the store applies the migrations first: allow for a slow database.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(addr).await.is_ok() {
                return Node {
                    addr,
                    stop: Some(tx),
                    task,
                };
            }
            if task.is_finished() {
                let res = task.await.expect("server task");
                panic!("server exited during startup: {res:?}");
            }
            assert!(Instant::now() < deadline, "server did not listen on {addr}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The stream root this node's clients see.
    fn root(&self) -> String {
        format!("http://{}/v1/stream", self.addr)
    }

    /// Sends a request on a fresh connection with `Host` set to this node's address.
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let host = self.addr.to_string();
        let mut all = vec![("host", host.as_str())];
        all.extend_from_slice(headers);
        let exchange = async {
            let mut c = Client::plain(self.addr).await;
            let res = c.send(method, path, &all, body).await.expect("response");
            let status = res.status();
            let headers = res.headers().clone();
            let body = crate::net::body(res).await;
            Reply {
                status,
                headers,
                body,
            }
        };
        // Nothing here may hang: every route answers, at worst `503` after the call timeout.
        tokio::time::timeout(Duration::from_secs(15), exchange)
            .await
            .unwrap_or_else(|_| panic!("{method} {path} on {} did not answer", self.addr))
    }

    async fn get_sub(&self, id: &str) -> Reply {
        self.send(
            "GET",
            &format!("/v1/stream/__ds/subscriptions/{id}"),
            &[],
            "",
        )
        .await
    }

    async fn put_sub(&self, id: &str, spec: &Value) -> Reply {
        self.send(
            "PUT",
            &format!("/v1/stream/__ds/subscriptions/{id}"),
            &[("content-type", "application/json")],
            &spec.to_string(),
        )
        .await
    }

    async fn jwks(&self) -> Value {
        let r = self.send("GET", "/v1/stream/__ds/jwks.json", &[], "").await;
        assert_eq!(r.status, StatusCode::OK, "jwks.json: {}", r.text());
        r.json()
    }

    /// Creates an empty JSON stream; panics unless `201`.
    async fn create_stream(&self, path: &str) {
        let r = self
            .send(
                "PUT",
                &format!("/v1/stream/{path}"),
                &[("content-type", "application/json")],
                "",
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "create {path}: {}", r.text());
    }

    /// Appends and returns the new tail (`Stream-Next-Offset`).
    async fn append(&self, path: &str, body: &str) -> String {
        let r = self
            .send(
                "POST",
                &format!("/v1/stream/{path}"),
                &[("content-type", "application/json")],
                body,
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::NO_CONTENT,
            "append to {path} through {}: {}",
            self.addr,
            r.text()
        );
        r.header("stream-next-offset")
            .expect("next offset")
            .to_owned()
    }

    /// `POST callback_url` (which must point at this node) as a worker would.
    async fn callback(&self, callback_url: &str, token: &str, body: &Value) -> Reply {
        let path = callback_url
            .strip_prefix(&format!("http://{}", self.addr))
            .unwrap_or_else(|| panic!("{callback_url} is not on {}", self.addr));
        let auth = format!("Bearer {token}");
        self.send(
            "POST",
            path,
            &[
                ("content-type", "application/json"),
                ("authorization", &auth),
            ],
            &body.to_string(),
        )
        .await
    }

    /// Graceful shutdown (like SIGTERM); waits for the server to return.
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let res = tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("server stops")
            .expect("server task");
        res.expect("clean shutdown");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // A failed test: end the server so its connections go before the schema is dropped.
        self.task.abort();
    }
}

/// A response, collected.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header"))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

// ----- The webhook receiver -----

/// A webhook request as received.
struct Hit {
    headers: HeaderMap,
    raw: Bytes,
    json: Value,
}

impl Hit {
    fn str(&self, field: &str) -> &str {
        self.json[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} in {}", self.json))
    }

    /// The wake's entry for stream `path`.
    fn stream(&self, path: &str) -> &Value {
        self.json["streams"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["path"] == path))
            .unwrap_or_else(|| panic!("{path} not in {}", self.json))
    }
}

/// Records every POST and answers `204` (not `done`: the worker calls back).
struct Receiver {
    url: String,
    rx: mpsc::UnboundedReceiver<Hit>,
}

impl Receiver {
    async fn start() -> Receiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Router::new().fallback(move |headers: HeaderMap, raw: Bytes| {
            let tx = tx.clone();
            async move {
                let json = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                let _ = tx.send(Hit { headers, raw, json });
                StatusCode::NO_CONTENT
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
        }
    }

    async fn next(&mut self, timeout: Duration) -> Option<Hit> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    async fn expect_wake(&mut self, what: &str) -> Hit {
        self.next(WAIT)
            .await
            .unwrap_or_else(|| panic!("no wake within {WAIT:?}: {what}"))
    }

    async fn expect_quiet(&mut self, what: &str) {
        if let Some(hit) = self.next(QUIET).await {
            panic!("unexpected wake ({what}): {}", hit.json);
        }
    }
}

/// Checks `Webhook-Signature` (PROTOCOL.md section 7.1) against the JWK Set: its `kid` is
/// there, and the Ed25519 signature over `<t>.<raw body>` verifies with that key.
fn verify_signature(hit: &Hit, jwks: &Value) {
    let header = hit
        .headers
        .get("webhook-signature")
        .expect("a Webhook-Signature header")
        .to_str()
        .expect("ascii");
    let field = |name: &str| {
        header
            .split(',')
            .find_map(|p| p.trim().strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{name} in {header}"))
    };
    let (t, kid, sig) = (field("t"), field("kid"), field("ed25519"));
    let t_secs: u64 = t.parse().expect("decimal t");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(t_secs.abs_diff(now) < 300, "t={t} is far from now ({now})");
    let key = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
        .unwrap_or_else(|| panic!("kid {kid} not in {jwks}"));
    assert_eq!(
        (&key["kty"], &key["crv"]),
        (&json!("OKP"), &json!("Ed25519"))
    );
    let x = B64
        .decode(key["x"].as_str().expect("x"))
        .expect("x is base64url");
    let sig = B64.decode(sig).expect("signature is base64url");
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(&hit.raw);
    // rustls' ring provider verifies Ed25519 (raw 32-byte public key), no extra dependency.
    let provider = rustls::crypto::ring::default_provider();
    let ed25519 = provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == rustls::SignatureScheme::ED25519)
        .expect("the ring provider verifies Ed25519")
        .1[0];
    ed25519
        .verify_signature(&x, &msg, &sig)
        .unwrap_or_else(|_| panic!("Webhook-Signature {header} does not verify"));
    // And a different body does not.
    let mut tampered = msg.clone();
    tampered.push(b' ');
    assert!(ed25519.verify_signature(&x, &tampered, &sig).is_err());
}

/// The callback body that acks `tail` of `path` and ends wake `hit`.
fn done(hit: &Hit, path: &str, tail: &str) -> Value {
    json!({
        "wake_id": hit.json["wake_id"],
        "generation": hit.json["generation"],
        "acks": [{ "stream": path, "offset": tail }],
        "done": true,
    })
}

fn webhook_spec(url: &str) -> Value {
    json!({
        "type": "webhook",
        "pattern": "events/*",
        "webhook": { "url": url },
        "lease_ttl_ms": 30_000,
        "description": "cluster test",
    })
}

/// `acked_offset` of `path` in a subscription view.
fn acked(view: &Value, path: &str) -> Option<String> {
    view["streams"]
        .as_array()?
        .iter()
        .find(|s| s["path"] == path)
        .and_then(|s| s["acked_offset"].as_str())
        .map(str::to_owned)
}

/// Polls `GET` of a subscription that does not exist until it answers `404` (the engine runs
/// somewhere and answered); panics after [`WAIT`].
async fn until_serving(node: &Node) {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = node.get_sub("nobody").await;
        if r.status == StatusCode::NOT_FOUND {
            return;
        }
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "only 404 or 503 before serving: {}",
            r.text()
        );
        assert!(
            Instant::now() < deadline,
            "{} did not serve subscriptions within {WAIT:?}",
            node.addr
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The answer of a subscription route when no node serves them: `503` with `Retry-After: 1`
/// and code `UNAVAILABLE`, within the call timeout of `sent` (not a `500`, not a hang).
fn assert_not_serving(r: &Reply, sent: Instant, what: &str) {
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{what}: {}",
        r.text()
    );
    assert_eq!(r.header("retry-after"), Some("1"), "{what}");
    assert_eq!(r.json()["error"]["code"], "UNAVAILABLE", "{what}");
    assert!(
        sent.elapsed() < Duration::from_millis(CALL_TIMEOUT_MS) + CALL_SLACK,
        "{what} answered after {:?}",
        sent.elapsed()
    );
}

// ----- Tests -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // one scenario, read top to bottom
async fn a_subscription_made_through_the_standby_survives_the_holders_shutdown() {
    let schema = Schema::new();
    let a = Node::start(&schema).await;
    // A is alone: once it answers, it runs the engine and holds the lease.
    until_serving(&a).await;
    let (holder_a, term_a) = schema.held_lease().await;
    let b = Node::start(&schema).await;
    until_serving(&b).await;
    let mut rx = Receiver::start().await;

    // 1. Created through the standby node B: 201, and every node serves it.
    let put = b.put_sub("s", &webhook_spec(&rx.url)).await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());
    let created = put.json();
    assert_eq!(
        schema.lease().map(|(h, ..)| h),
        Some(holder_a.clone()),
        "B's start and forwarded PUT leave the lease with A"
    );
    let via_a = a.get_sub("s").await;
    let via_b = b.get_sub("s").await;
    assert_eq!(via_a.status, StatusCode::OK, "{}", via_a.text());
    assert_eq!(via_b.status, StatusCode::OK, "{}", via_b.text());
    let (via_a, via_b) = (via_a.json(), via_b.json());
    for field in [
        "id",
        "subscription_id",
        "type",
        "pattern",
        "streams",
        "wake_stream",
        "lease_ttl_ms",
        "created_at",
        "status",
        "description",
    ] {
        assert_eq!(via_a[field], via_b[field], "{field} through A and B");
        assert_eq!(via_b[field], created[field], "{field} as created");
    }
    assert_eq!(via_b["id"], "s");
    assert_eq!(via_b["type"], "webhook");
    assert_eq!(via_b["pattern"], "events/*");
    assert_eq!(via_b["streams"], json!([]));
    assert_eq!(via_b["webhook"]["url"], rx.url);
    assert_eq!(via_a["webhook"]["url"], rx.url);
    // Every node answers the JWK Set itself, with the one key in the store.
    let jwks = b.jwks().await;
    assert_eq!(a.jwks().await, jwks, "one signing key for the cluster");
    let kid = jwks["keys"][0]["kid"].clone();
    assert_eq!(via_a["webhook"]["signing"]["kid"], kid);
    assert_eq!(via_b["webhook"]["signing"]["kid"], kid);
    // jwks_url is built from the client's node's view of the request (docs/scaling.md).
    assert_eq!(
        created["webhook"]["signing"]["jwks_url"],
        format!("{}/__ds/jwks.json", b.root())
    );
    assert_eq!(
        via_b["webhook"]["signing"]["jwks_url"],
        format!("{}/__ds/jwks.json", b.root())
    );
    assert_eq!(
        via_a["webhook"]["signing"]["jwks_url"],
        format!("{}/__ds/jwks.json", a.root())
    );

    // 2. A matching stream created and appended through B: A learns it from the change feed
    // and delivers one signed wake.
    b.create_stream("events/x").await;
    let tail1 = b.append("events/x", r#"{"e":1}"#).await;
    let wake1 = rx.expect_wake("append through B").await;
    assert_eq!(wake1.str("subscription_id"), "s");
    assert_eq!(wake1.stream("events/x")["tail_offset"], tail1);
    assert_eq!(wake1.stream("events/x")["has_pending"], true);
    // Built from the root of the request that created the subscription (B's), whichever node
    // delivers (engine.rs `deliver`: `sub.base_url`).
    let callback_url = wake1.str("callback_url").to_owned();
    assert_eq!(
        callback_url,
        format!("{}/__ds/subscriptions/s/callback", b.root())
    );
    verify_signature(&wake1, &jwks);
    rx.expect_quiet("one append, one wake").await;

    // 3. The worker calls back through B (forwarded to A): accepted, acked at the tail.
    let token1 = wake1.str("callback_token").to_owned();
    let ok = b
        .callback(&callback_url, &token1, &done(&wake1, "events/x", &tail1))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(ok.json(), json!({ "ok": true, "next_wake": false }));
    for node in [&a, &b] {
        let view = node.get_sub("s").await.json();
        assert_eq!(
            acked(&view, "events/x").as_deref(),
            Some(tail1.as_str()),
            "acked through {}: {view}",
            node.addr
        );
    }
    // An append on the holder reaches its engine twice (its own hook and the change feed):
    // still exactly one wake.
    let tail2 = a.append("events/x", r#"{"e":2}"#).await;
    let wake2 = rx.expect_wake("append through A").await;
    assert_eq!(wake2.stream("events/x")["acked_offset"], tail1);
    assert_eq!(wake2.stream("events/x")["tail_offset"], tail2);
    assert_ne!(wake2.json["wake_id"], wake1.json["wake_id"]);
    assert!(
        wake2.json["generation"].as_u64() > wake1.json["generation"].as_u64(),
        "a new generation: {} then {}",
        wake1.json,
        wake2.json
    );
    assert_eq!(wake2.str("callback_url"), callback_url);
    verify_signature(&wake2, &jwks);
    rx.expect_quiet("one append on the holder, one wake").await;
    // The first wake's token is fenced now, also when forwarded.
    let stale = b
        .callback(&callback_url, &token1, &done(&wake1, "events/x", &tail2))
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT, "{}", stale.text());
    assert_eq!(stale.json()["error"]["code"], "FENCED");
    // The callback of the second wake, sent through B again, ends it.
    let ok = b
        .callback(
            &callback_url,
            wake2.str("callback_token"),
            &done(&wake2, "events/x", &tail2),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(
        acked(&a.get_sub("s").await.json(), "events/x").as_deref(),
        Some(tail2.as_str())
    );

    // 4. Failover: A shuts down gracefully and hands the lease over; B takes over well before
    // the lease would have lapsed.
    let stopping = Instant::now();
    a.stop().await;
    let stopped = Instant::now();
    // The shutdown released the lease before the server returned (B may hold it already).
    let (holder, ..) = schema.lease().expect("the lease row stays");
    assert_ne!(holder, holder_a, "A's graceful shutdown released the lease");
    let view = loop {
        let r = b.get_sub("s").await;
        if r.status == StatusCode::OK {
            break r.json();
        }
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "during the failover: {}",
            r.text()
        );
        assert!(
            r.header("retry-after").is_some(),
            "a 503 carries Retry-After"
        );
        assert!(
            stopped.elapsed() < WAIT,
            "B did not serve subscriptions within {WAIT:?} of A's shutdown"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let takeover = stopped.elapsed();
    eprintln!(
        "A stopped in {:?}; B served {takeover:?} later",
        stopped - stopping
    );
    // B asks every fifth of the ttl (800 ms), then loads the state; waiting for the lease to
    // lapse would take 3.2 s or more.
    assert!(
        takeover < Duration::from_millis(LEASE_MS * 3 / 4),
        "a graceful shutdown hands the lease over at once, not after the {LEASE_MS} ms ttl: {takeover:?}"
    );
    let (holder_b, term_b) = schema.held_lease().await;
    assert_ne!(holder_b, holder_a, "B holds the lease now");
    assert!(term_b > term_a, "a new holder has a higher term");
    // The subscription and its acked offset survived.
    assert_eq!(view["pattern"], "events/*");
    assert_eq!(view["created_at"], created["created_at"]);
    assert_eq!(acked(&view, "events/x").as_deref(), Some(tail2.as_str()));
    assert_eq!(
        view["webhook"]["signing"]["kid"], kid,
        "the key survived too"
    );
    assert!(
        rx.next(Duration::ZERO).await.is_none(),
        "nothing was pending at the failover"
    );

    // An append through B wakes the subscription, delivered by B (A is gone).
    let tail3 = b.append("events/x", r#"{"e":3}"#).await;
    let wake3 = rx.expect_wake("append through B after the failover").await;
    assert_eq!(wake3.stream("events/x")["acked_offset"], tail2);
    assert_eq!(wake3.stream("events/x")["tail_offset"], tail3);
    assert!(wake3.json["generation"].as_u64() > wake2.json["generation"].as_u64());
    assert_eq!(wake3.str("callback_url"), callback_url);
    verify_signature(&wake3, &b.jwks().await);
    let ok = b
        .callback(
            &callback_url,
            wake3.str("callback_token"),
            &done(&wake3, "events/x", &tail3),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(ok.json(), json!({ "ok": true, "next_wake": false }));
    assert_eq!(
        acked(&b.get_sub("s").await.json(), "events/x").as_deref(),
        Some(tail3.as_str())
    );
    rx.expect_quiet("one wake after the failover").await;

    b.stop().await;
    drop(schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_lease_held_by_a_vanished_node_the_routes_answer_503_and_streams_still_work() {
    let schema = Schema::new();
    let a = Node::start(&schema).await;
    until_serving(&a).await;
    let (_, term) = schema.held_lease().await;
    let mut rx = Receiver::start().await;
    let put = a.put_sub("s", &webhook_spec(&rx.url)).await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text());
    a.create_stream("events/y").await;

    // A node that took the lease and died: its row is valid for an hour and names nobody alive.
    psql(&format!(
        "UPDATE \"{}\".ds_leases SET holder = 'ghost', term = term + 1, \
         expires_at = now() + interval '1 hour' WHERE name = 'subscriptions'",
        schema.0
    ))
    .expect("plant the ghost holder");
    // A's next renewal is refused: it stops serving, and its subscription routes answer 503
    // with Retry-After, within the call timeout (never 500, never a hang).
    let deadline = Instant::now() + WAIT;
    loop {
        let sent = Instant::now();
        let r = a.get_sub("s").await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_not_serving(&r, sent, "GET");
            break;
        }
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(
            Instant::now() < deadline,
            "A kept serving subscriptions with the lease held elsewhere"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (method, path, body) in [
        (
            "PUT",
            "/v1/stream/__ds/subscriptions/t",
            webhook_spec(&rx.url).to_string(),
        ),
        (
            "POST",
            "/v1/stream/__ds/subscriptions/s/callback",
            json!({ "wake_id": "w", "generation": 1, "done": true }).to_string(),
        ),
        ("DELETE", "/v1/stream/__ds/subscriptions/s", String::new()),
    ] {
        let sent = Instant::now();
        let r = a
            .send(
                method,
                path,
                &[
                    ("content-type", "application/json"),
                    ("authorization", "Bearer x.y"),
                ],
                &body,
            )
            .await;
        assert_not_serving(&r, sent, &format!("{method} {path}"));
    }
    // The stream routes and the JWK Set do not need the engine.
    let tail = a.append("events/y", r#"{"e":1}"#).await;
    let r = a
        .send("GET", "/v1/stream/events/y?offset=-1", &[], "")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!([{ "e": 1 }]));
    let jwks = a.jwks().await;
    rx.expect_quiet("nobody serves subscriptions").await;

    // The ghost's lease lapses: A takes over, with its state from the database, and the
    // append made meanwhile still wakes the subscriber.
    psql(&format!(
        "UPDATE \"{}\".ds_leases SET expires_at = now() - interval '1 second' \
         WHERE name = 'subscriptions'",
        schema.0
    ))
    .expect("end the ghost's lease");
    let wake = rx.expect_wake("the append made while nobody served").await;
    assert_eq!(wake.str("subscription_id"), "s");
    assert_eq!(wake.stream("events/y")["tail_offset"], tail);
    verify_signature(&wake, &jwks);
    let (_, new_term) = schema.held_lease().await;
    assert!(new_term > term + 1, "A took the lease back with a new term");
    let view = a.get_sub("s").await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.text());
    let view = view.json();
    assert_eq!(view["webhook"]["url"], rx.url);
    assert_eq!(
        view["streams"][0]["path"], "events/y",
        "the link made before the outage: {view}"
    );

    a.stop().await;
    drop(schema);
}
