//! Several servers over one store (cluster mode), with the in-process [`crate::cluster`] fake:
//! one node serves subscriptions at a time, every node answers the routes, writes on any node
//! wake subscribers, a failover resumes from the persisted state, and a stale leader is fenced.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use bytes::Bytes;
use ds_storage::{AppendOutcome, AppendRequest, Change, Storage};
use ds_subscriptions::SubscriptionsConfig;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::cluster::{Hub, Node, NodeStore};
use crate::util::{H, Receiver, Resp, dev_config, name, stream_of, webhook_spec};

const WAIT: Duration = Duration::from_secs(5);
/// Long enough for a webhook that is coming to arrive.
const QUIET: Duration = Duration::from_millis(700);
const LEASE: &str = "subscriptions";

/// One server of the cluster: its coordination handle and its engine, routes and streams.
struct Server {
    node: Arc<Node>,
    h: H<NodeStore>,
}

impl Server {
    fn active(&self) -> bool {
        self.h.engine.is_active()
    }

    async fn post(&self, id: &str, action: &str, body: Value, token: Option<&str>) -> Resp {
        self.h
            .req(
                Method::POST,
                &format!("/subscriptions/{id}/{action}"),
                Some(body),
                token,
            )
            .await
    }
}

fn cfg(lease_ms: u64, call_timeout_ms: u64) -> SubscriptionsConfig {
    SubscriptionsConfig {
        cluster_lease_ms: lease_ms,
        cluster_call_timeout_ms: call_timeout_ms,
        ..dev_config()
    }
}

/// Starts node `id`; its requests carry `Host: {id}.test:4437`.
async fn start(hub: &Arc<Hub>, id: &str, cfg: SubscriptionsConfig) -> Server {
    let node = hub.node(id);
    let mut h = H::open(Arc::new(NodeStore::new(hub, &node)), cfg).await;
    h.host = format!("{id}.test:4437");
    Server { node, h }
}

/// The stream root node `id`'s clients see.
fn root(id: &str) -> String {
    format!("http://{id}.test:4437/v1/stream")
}

/// Polls `f` every 5 ms until it holds or `timeout` passes.
async fn until(timeout: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts `id` and waits until it serves (the first node of a cluster takes the lease).
async fn start_leader(hub: &Arc<Hub>, id: &str, cfg: SubscriptionsConfig) -> Server {
    let s = start(hub, id, cfg).await;
    assert!(until(WAIT, || s.active()).await, "{id} takes the lease");
    s
}

fn pull_spec(stream: &str) -> Value {
    json!({ "type": "pull-wake", "streams": [stream], "wake_stream": "wake/pool", "lease_ttl_ms": 30_000 })
}

async fn wake_events(s: &Server, n: usize) -> Vec<Value> {
    s.h.wait_for(WAIT, || async {
        let e = s.h.read_json("wake/pool").await;
        (e.len() >= n).then_some(e)
    })
    .await
    .unwrap_or_else(|| panic!("{n} wake events"))
}

/// The state log epochs in the shared store.
async fn state_epochs(hub: &Hub) -> Vec<u64> {
    hub.store
        .list()
        .await
        .expect("list")
        .iter()
        .filter_map(|i| i.name.as_str().strip_prefix("__ds/subscriptions/state/"))
        .map(|hex| u64::from_str_radix(hex, 16).expect("hex epoch"))
        .collect()
}

#[tokio::test]
async fn a_webhook_subscription_made_through_a_standby_node_is_woken_once_by_the_active_one() {
    let hub = Hub::new();
    let a = start_leader(&hub, "a", cfg(2_000, 5_000)).await;
    let b = start(&hub, "b", cfg(2_000, 5_000)).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!b.active(), "one node serves at a time");

    let mut rx = Receiver::start(200, "{}").await;
    b.h.create_stream("events/x", r#"{"e":0}"#).await;
    let put =
        b.h.put_sub("s", webhook_spec(&rx.url, "events/*", 30_000))
            .await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);

    // Every node serves it; each builds jwks_url from the request it got.
    let via_a = a.h.get_sub("s").await;
    let via_b = b.h.get_sub("s").await;
    assert_eq!(
        via_a["webhook"]["signing"]["jwks_url"],
        format!("{}/__ds/jwks.json", root("a"))
    );
    assert_eq!(
        via_b["webhook"]["signing"]["jwks_url"],
        format!("{}/__ds/jwks.json", root("b"))
    );
    assert_eq!(via_a["streams"], via_b["streams"]);
    assert!(rx.next(QUIET).await.is_none(), "nothing was pending");

    // An append through the standby node reaches the active one through the change feed.
    let tail = b.h.append("events/x", r#"{"e":1}"#).await;
    let hit = rx.next(WAIT).await.expect("a wake");
    assert_eq!(
        hit.json["callback_url"],
        format!("{}/__ds/subscriptions/s/callback", root("b")),
        "built from the root of the node the subscription was created through"
    );
    assert_eq!(stream_of(&hit, "events/x")["tail_offset"], tail.to_string());
    assert!(rx.next(QUIET).await.is_none(), "woken once");

    // The worker calls back through the standby node.
    let token = hit.json["callback_token"].as_str().expect("token");
    let done = json!({
        "wake_id": hit.json["wake_id"], "generation": hit.json["generation"],
        "acks": [{ "stream": "events/x", "offset": tail.to_string() }], "done": true,
    });
    let r = b.post("s", "callback", done, Some(token)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json(), json!({ "ok": true, "next_wake": false }));
    assert_eq!(a.h.acked("s", "events/x").await, Some(tail.to_string()));

    // An append on the active node reaches it twice (its own hook and the feed): one wake.
    let tail2 = a.h.append("events/x", r#"{"e":2}"#).await;
    let hit2 = rx.next(WAIT).await.expect("second wake");
    assert_eq!(hit2.json["generation"], 2);
    assert_eq!(
        stream_of(&hit2, "events/x")["tail_offset"],
        tail2.to_string()
    );
    assert!(rx.next(QUIET).await.is_none(), "woken once");

    // Every node answers the JWKS itself, with the one shared key.
    let jwks_a = a.h.req(Method::GET, "/jwks.json", None, None).await;
    let jwks_b = b.h.req(Method::GET, "/jwks.json", None, None).await;
    assert_eq!(jwks_b.status, StatusCode::OK);
    assert_eq!(jwks_a.body, jwks_b.body);

    // A delete through the standby node unlinks the stream on the active one.
    b.h.streams.delete(&name("events/x")).await.expect("delete");
    let unlinked =
        a.h.wait_for(WAIT, || async {
            (a.h.get_sub("s").await["streams"] == json!([])).then_some(())
        })
        .await;
    assert!(unlinked.is_some(), "the glob link went with the stream");
}

#[tokio::test]
async fn a_pull_wake_append_on_one_node_is_claimed_and_acked_through_another() {
    let hub = Hub::new();
    let c = start_leader(&hub, "c", cfg(2_000, 5_000)).await;
    let a = start(&hub, "a", cfg(2_000, 5_000)).await;
    let b = start(&hub, "b", cfg(2_000, 5_000)).await;
    a.h.create_stream("wake/pool", "[]").await;
    a.h.create_stream("jobs/1", "[]").await;
    let put = b.h.put_sub("p", pull_spec("jobs/1")).await;
    assert_eq!(put.status, StatusCode::CREATED, "{:?}", put.body);

    let tail = a.h.append("jobs/1", r#"{"job":1}"#).await;
    let events = wake_events(&b, 1).await;
    assert_eq!(events[0]["subscription_id"], "p");
    assert_eq!(events[0]["stream"], "jobs/1");

    let claim = b.post("p", "claim", json!({ "worker": "w1" }), None).await;
    assert_eq!(claim.status, StatusCode::OK, "{:?}", claim.body);
    let claim = claim.json();
    assert_eq!(stream_of_claim(&claim)["tail_offset"], tail.to_string());
    let token = claim["token"].as_str().expect("token");
    let busy = a.post("p", "claim", json!({ "worker": "w2" }), None).await;
    assert_eq!(busy.json()["error"]["code"], "ALREADY_CLAIMED");

    let done = json!({
        "wake_id": claim["wake_id"], "generation": claim["generation"],
        "acks": [{ "stream": "jobs/1", "offset": tail.to_string() }], "done": true,
    });
    let r = b.post("p", "ack", done, Some(token)).await;
    assert_eq!(r.json(), json!({ "ok": true, "next_wake": false }));
    assert_eq!(a.h.acked("p", "jobs/1").await, Some(tail.to_string()));
    assert_eq!(c.h.acked("p", "jobs/1").await, Some(tail.to_string()));
    let idle = a.post("p", "claim", json!({ "worker": "w2" }), None).await;
    assert_eq!(idle.json()["error"]["code"], "NO_PENDING_WORK");
    assert_eq!(b.h.read_json("wake/pool").await.len(), 1, "one wake event");
}

fn stream_of_claim(claim: &Value) -> &Value {
    &claim["streams"][0]
}

#[tokio::test]
async fn a_graceful_shutdown_hands_over_at_once_and_the_new_leader_delivers_the_pending_wake() {
    let hub = Hub::new();
    let a = start_leader(&hub, "a", cfg(5_000, 5_000)).await;
    let b = start(&hub, "b", cfg(5_000, 5_000)).await;
    let mut rx = Receiver::start(500, "{}").await;
    let put =
        b.h.put_sub("s", webhook_spec(&rx.url, "events/*", 30_000))
            .await;
    assert_eq!(put.status, StatusCode::CREATED);
    let tail = b.h.create_stream("events/x", r#"{"e":1}"#).await;
    let first = rx.next(WAIT).await.expect("the first attempt");
    let failed =
        a.h.wait_for(WAIT, || async {
            (a.h.get_sub("s").await["status"] == "failed").then_some(())
        })
        .await;
    assert!(failed.is_some(), "a retry is scheduled");

    let stopping = Instant::now();
    a.h.engine.shutdown();
    a.h.engine
        .flush()
        .await
        .expect("the state is flushed before the hand-over");
    assert!(!a.active());
    assert!(until(WAIT, || b.active()).await, "b takes over");
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "the lease was released, not left to expire: {:?}",
        stopping.elapsed()
    );

    // Whatever the old leader attempted before it stopped came before this point.
    while rx.try_next().is_some() {}
    rx.reply(200, r#"{"done":true}"#, None);
    let again = rx
        .next(WAIT)
        .await
        .expect("the pending wake, from the new leader");
    assert_eq!(again.json["wake_id"], first.json["wake_id"]);
    assert_eq!(again.json["generation"], first.json["generation"]);
    assert_eq!(
        again.json["callback_url"],
        format!("{}/__ds/subscriptions/s/callback", root("b"))
    );
    let acked =
        b.h.wait_for(WAIT, || async {
            let a = b.h.acked("s", "events/x").await?;
            (a == tail.to_string()).then_some(a)
        })
        .await;
    assert!(acked.is_some(), "done: true acked the snapshot");

    let tail2 = b.h.append("events/x", r#"{"e":2}"#).await;
    let next = rx.next(WAIT).await.expect("later appends still wake");
    assert_eq!(
        next.json["generation"],
        first.json["generation"].as_u64().expect("n") + 1
    );
    assert_eq!(
        stream_of(&next, "events/x")["tail_offset"],
        tail2.to_string()
    );
}

#[tokio::test]
async fn a_leader_that_cannot_renew_steps_down_before_another_takes_over_and_no_wake_is_lost() {
    let hub = Hub::new();
    let a = start_leader(&hub, "a", cfg(1_000, 5_000)).await;
    let b = start(&hub, "b", cfg(1_000, 5_000)).await;
    let mut rx = Receiver::start(200, r#"{"done":true}"#).await;
    a.h.create_stream("events/x", r#"{"e":0}"#).await;
    let put =
        a.h.put_sub("s", webhook_spec(&rx.url, "events/*", 30_000))
            .await;
    assert_eq!(put.status, StatusCode::CREATED);

    let frozen = Instant::now();
    a.node.freeze();
    let (mut a_stopped, mut b_started) = (None, None);
    while b_started.is_none() && frozen.elapsed() < WAIT {
        if a_stopped.is_none() && !a.active() {
            a_stopped = Some(frozen.elapsed());
            // Most likely while no node serves: the new leader finds it by scanning the tails.
            b.h.append("events/x", r#"{"e":1}"#).await;
        }
        if b.active() {
            b_started = Some(frozen.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (a_stopped, b_started) = (
        a_stopped.expect("the old leader steps down"),
        b_started.expect("another node takes over"),
    );
    assert!(a_stopped < b_started, "{a_stopped:?} then {b_started:?}");
    assert!(
        b_started < Duration::from_secs(3),
        "within about the ttl: {b_started:?}"
    );

    let tail =
        b.h.streams
            .head(&name("events/x"))
            .await
            .expect("head")
            .next;
    let hit = rx.next(WAIT).await.expect("the append's wake");
    assert_eq!(stream_of(&hit, "events/x")["tail_offset"], tail.to_string());
    assert_eq!(
        hit.json["callback_url"],
        format!("{}/__ds/subscriptions/s/callback", root("a"))
    );
    let tail2 = a.h.append("events/x", r#"{"e":2}"#).await;
    let hit2 = rx.next(WAIT).await.expect("appends keep waking");
    assert_eq!(
        stream_of(&hit2, "events/x")["tail_offset"],
        tail2.to_string()
    );
    assert!(!a.active(), "the frozen node stays out");
}

#[tokio::test]
async fn a_stale_leader_is_fenced_and_the_new_leader_keeps_every_acknowledged_change() {
    let hub = Hub::new();
    // The old leader trusts its lease for long; the others notice an expiry quickly.
    let a = start_leader(&hub, "a", cfg(30_000, 5_000)).await;
    let b = start(&hub, "b", cfg(1_000, 5_000)).await;
    a.h.create_stream("wake/pool", "[]").await;
    a.h.create_stream("jobs/1", "[]").await;
    assert_eq!(
        a.h.put_sub("kept", pull_spec("jobs/1")).await.status,
        StatusCode::CREATED
    );
    let tail = a.h.append("jobs/1", r#"{"job":1}"#).await;
    wake_events(&a, 1).await;
    let claim = a
        .post("kept", "claim", json!({ "worker": "w" }), None)
        .await
        .json();
    let done = json!({
        "wake_id": claim["wake_id"], "generation": claim["generation"],
        "acks": [{ "stream": "jobs/1", "offset": tail.to_string() }], "done": true,
    });
    let token = claim["token"].as_str().expect("token");
    let acked = a.post("kept", "ack", done, Some(token)).await;
    assert_eq!(acked.status, StatusCode::OK, "acknowledged to the client");

    // A pause: a's lease runs out without a noticing, and b takes over.
    a.node.freeze();
    hub.expire(LEASE);
    assert!(until(WAIT, || b.active()).await, "b takes over");
    assert!(a.active(), "a has not noticed yet");

    // a's next state write is refused by the store, and a steps down at once.
    let late = a.h.put_sub("late", pull_spec("jobs/1")).await;
    assert_eq!(
        late.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        late.body
    );
    assert!(late.headers.contains_key("retry-after"));
    assert!(!a.active(), "fenced");

    let (holder, term) = hub.holder(LEASE).expect("held");
    assert_eq!(holder, "b");
    let epochs = state_epochs(&hub).await;
    assert_eq!(epochs.len(), 1, "{epochs:x?}");
    assert!(
        epochs[0] >= term << 32,
        "an epoch of the new term: {epochs:x?}"
    );
    assert_eq!(b.h.acked("kept", "jobs/1").await, Some(tail.to_string()));
    let missing =
        b.h.req(Method::GET, "/subscriptions/late", None, None)
            .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // A node starting from the log alone sees the same.
    b.h.engine.shutdown();
    b.h.engine.flush().await.expect("flush");
    let c = start_leader(&hub, "c", cfg(1_000, 5_000)).await;
    assert_eq!(c.h.acked("kept", "jobs/1").await, Some(tail.to_string()));
    let missing =
        c.h.req(Method::GET, "/subscriptions/late", None, None)
            .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn routes_on_a_standby_node_answer_503_when_no_node_serves() {
    let hub = Hub::new();
    // A holder that never answers: a node that died holding the lease.
    hub.hold(LEASE, "ghost", Duration::from_secs(60));
    let a = start(&hub, "a", cfg(1_000, 300)).await;

    let asked = Instant::now();
    let r = tokio::time::timeout(WAIT, a.h.req(Method::GET, "/subscriptions/x", None, None))
        .await
        .expect("answers, does not hang");
    assert!(asked.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(r.headers["content-type"], ds_protocol::PROBLEM_CONTENT_TYPE);
    assert_eq!(r.json()["error"]["code"], "UNAVAILABLE");
    let put = a.h.put_sub("x", pull_spec("jobs/1")).await;
    assert_eq!(put.status, StatusCode::SERVICE_UNAVAILABLE);

    // The signing key is in the shared store: any node answers the JWKS.
    let jwks = a.h.req(Method::GET, "/jwks.json", None, None).await;
    assert_eq!(jwks.status, StatusCode::OK);
    assert_eq!(jwks.json()["keys"][0]["kid"], a.h.engine.kid());

    // Once the lease is free, the node takes it and serves.
    hub.expire(LEASE);
    assert!(until(WAIT, || a.active()).await);
    let r = a.h.req(Method::GET, "/subscriptions/x", None, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_resync_rescans_the_tails_and_wakes_what_the_feed_missed() {
    let hub = Hub::new();
    let a = start_leader(&hub, "a", cfg(2_000, 5_000)).await;
    let mut rx = Receiver::start(200, r#"{"done":true}"#).await;
    a.h.create_stream("events/x", r#"{"e":0}"#).await;
    let put =
        a.h.put_sub("s", webhook_spec(&rx.url, "events/*", 30_000))
            .await;
    assert_eq!(put.status, StatusCode::CREATED);

    // Written behind every node's back: no change is published.
    let req = AppendRequest {
        content_type: Some("application/json".into()),
        body: Bytes::from_static(br#"{"e":1}"#),
        ..AppendRequest::default()
    };
    let AppendOutcome::Appended { next, .. } = hub
        .store
        .append(&name("events/x"), req)
        .await
        .expect("append")
    else {
        panic!("appended");
    };
    assert!(rx.next(QUIET).await.is_none(), "nobody saw it");

    hub.publish(Change::Resync);
    let hit = rx.next(WAIT).await.expect("found by the rescan");
    assert_eq!(stream_of(&hit, "events/x")["tail_offset"], next.to_string());
}

#[tokio::test]
async fn a_late_deletion_report_does_not_unlink_a_stream_that_exists_again() {
    let hub = Hub::new();
    let a = start_leader(&hub, "a", cfg(2_000, 5_000)).await;
    let rx = Receiver::start(200, r#"{"done":true}"#).await;
    a.h.create_stream("events/x", r#"{"e":0}"#).await;
    let put =
        a.h.put_sub("s", webhook_spec(&rx.url, "events/*", 30_000))
            .await;
    assert_eq!(put.status, StatusCode::CREATED);

    // The report of a deletion that happened before the stream was created again arrives
    // late: the stream is there, so its link stays.
    hub.publish(Change::Gone {
        name: name("events/x"),
    });
    let linked = || async {
        let view = a.h.get_sub("s").await;
        view["streams"]
            .as_array()
            .is_some_and(|s| s.iter().any(|l| l["path"] == "events/x"))
    };
    tokio::time::sleep(QUIET).await;
    assert!(linked().await, "still linked after a stale deletion report");

    // A real deletion is still applied.
    hub.store.delete(&name("events/x")).await.expect("delete");
    hub.publish(Change::Gone {
        name: name("events/x"),
    });
    let gone =
        a.h.wait_for(WAIT, || async { (!linked().await).then_some(()) })
            .await;
    assert!(gone.is_some(), "unlinked once the stream is really gone");
}

#[tokio::test]
async fn the_active_node_follows_the_change_feed_only_once_a_subscription_exists() {
    let hub = Hub::new();
    let a = start_leader(&hub, "a", cfg(2_000, 5_000)).await;
    let b = start(&hub, "b", cfg(2_000, 5_000)).await;
    b.h.create_stream("events/x", r#"{"e":0}"#).await;
    b.h.append("events/x", r#"{"e":1}"#).await;
    assert_eq!(
        hub.followers(),
        0,
        "no subscription: nobody follows the feed"
    );

    // The first subscription (made through the standby) starts it, before it reads tails.
    let mut rx = Receiver::start(200, r#"{"done":true}"#).await;
    let put =
        b.h.put_sub("s", webhook_spec(&rx.url, "events/*", 30_000))
            .await;
    assert_eq!(put.status, StatusCode::CREATED);
    assert_eq!(hub.followers(), 1, "the active node follows the feed");
    let tail = b.h.append("events/x", r#"{"e":2}"#).await;
    let hit = rx.next(WAIT).await.expect("woken for the standby's append");
    assert_eq!(stream_of(&hit, "events/x")["tail_offset"], tail.to_string());
    assert!(a.active() && !b.active());
}
