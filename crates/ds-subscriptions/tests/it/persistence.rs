//! Subscriptions, links, acks, wakes in flight, retry schedules and the signing key survive a
//! restart, and compaction keeps the state, on every backend: each scenario is one generic
//! function, run by `on_every_backend!` against the memory store (the engine restarts over the
//! live store) and against `file-fast`, `file-durable` and `acid` (the store is closed and
//! opened again on its data directory).

use std::time::Duration;

use axum::http::{Method, StatusCode};
use ds_storage::Storage;
use ds_subscriptions::SubscriptionsConfig;
use serde_json::{Value, json};

use crate::backends::Backend;
use crate::util::{H, Receiver, dev_config, stream_of, webhook_spec};

const WAIT: Duration = Duration::from_secs(3);
const ZERO: &str = "0000000000000000_0000000000000000";

/// One `#[tokio::test]` per scenario and backend, in one module per backend
/// (`persistence::acid::the_retry_schedule_survives_a_restart`).
macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test]
            async fn $case() {
                super::$case(crate::backends::Memory).await;
            })*
        }
        mod file_fast {
            $(#[tokio::test]
            async fn $case() {
                super::$case(crate::backends::File::new(ds_storage_file::Durability::Fast)).await;
            })*
        }
        mod file_durable {
            $(#[tokio::test]
            async fn $case() {
                super::$case(crate::backends::File::new(ds_storage_file::Durability::Durable))
                    .await;
            })*
        }
        mod acid {
            $(#[tokio::test]
            async fn $case() {
                super::$case(crate::backends::Acid::new()).await;
            })*
        }
    };
}

on_every_backend!(
    subscriptions_links_acks_and_the_signing_key_survive_a_restart,
    the_retry_schedule_survives_a_restart,
    streams_created_while_down_are_linked_on_open_and_woken,
    a_claimed_wake_keeps_its_holder_token_and_acks_across_a_restart,
    an_unclaimed_wake_is_written_again_after_a_restart,
    compaction_rolls_the_log_and_keeps_the_state,
);

/// Stops the engine, restarts the store and opens a new engine over it.
async fn restart<B: Backend>(b: &B, h: H<B::Store>, cfg: SubscriptionsConfig) -> H<B::Store> {
    H::open(b.reopen(h.stop().await).await, cfg).await
}

async fn post<S: Storage>(
    h: &H<S>,
    id: &str,
    action: &str,
    body: Value,
    token: Option<&str>,
) -> crate::util::Resp {
    h.req(
        Method::POST,
        &format!("/subscriptions/{id}/{action}"),
        Some(body),
        token,
    )
    .await
}

/// Creates `wake/pool` and a pull-wake subscription `id` over `events/*`.
async fn pull_setup<S: Storage>(h: &H<S>, id: &str) {
    h.create_stream("wake/pool", "[]").await;
    let spec = json!({ "type": "pull-wake", "pattern": "events/*", "wake_stream": "wake/pool", "lease_ttl_ms": 30_000 });
    assert_eq!(h.put_sub(id, spec).await.status, StatusCode::CREATED);
}

/// The wake events once there are at least `n`.
async fn wake_events<S: Storage>(h: &H<S>, n: usize) -> Vec<Value> {
    h.wait_for(WAIT, || async {
        let e = h.read_json("wake/pool").await;
        (e.len() >= n).then_some(e)
    })
    .await
    .unwrap_or_else(|| panic!("{n} wake events"))
}

async fn subscriptions_links_acks_and_the_signing_key_survive_a_restart<B: Backend>(b: B) {
    let h = H::open(b.open().await, dev_config()).await;
    let mut rx = Receiver::start(200, r#"{"done":true}"#).await;
    let spec = webhook_spec(&rx.url, "events/*", 1000);
    assert_eq!(
        h.put_sub("w", spec.clone()).await.status,
        StatusCode::CREATED
    );
    h.create_stream("wake/pool", "[]").await;
    let pull = json!({ "type": "pull-wake", "streams": ["manual/x"], "wake_stream": "wake/pool" });
    assert_eq!(
        h.put_sub("p", pull.clone()).await.status,
        StatusCode::CREATED
    );
    h.create_stream("events/a", r#"{"e":1}"#).await;
    let hit = rx.next(WAIT).await.expect("webhook");
    let tail = stream_of(&hit, "events/a")["tail_offset"].clone();
    h.wait_for(WAIT, || async {
        (h.acked("w", "events/a").await? == tail).then_some(())
    })
    .await
    .expect("acked");
    let kid = h.engine.kid().to_owned();
    let jwks = h.engine.jwks();
    let before_w = h.get_sub("w").await;
    let before_p = h.get_sub("p").await;

    let h = restart(&b, h, dev_config()).await;
    assert_eq!(h.engine.kid(), kid, "the signing key is persisted");
    assert_eq!(h.engine.jwks(), jwks);
    assert_eq!(h.get_sub("w").await, before_w);
    assert_eq!(h.get_sub("p").await, before_p);
    assert_eq!(
        h.put_sub("w", spec).await.status,
        StatusCode::OK,
        "same config hash"
    );
    assert_eq!(h.put_sub("p", pull).await.status, StatusCode::OK);
    // Nothing pending: no wake on open. New data: the next generation.
    assert!(rx.next(Duration::from_millis(300)).await.is_none());
    h.append("events/a", r#"{"e":2}"#).await;
    assert_eq!(rx.next(WAIT).await.expect("webhook").json["generation"], 2);
}

async fn the_retry_schedule_survives_a_restart<B: Backend>(b: B) {
    let h = H::open(b.open().await, dev_config()).await;
    let mut rx = Receiver::start(503, "{}").await;
    assert_eq!(
        h.put_sub("r", webhook_spec(&rx.url, "events/*", 30_000))
            .await
            .status,
        StatusCode::CREATED
    );
    h.create_stream("events/a", r#"{"e":1}"#).await;
    rx.next(WAIT).await.expect("first attempt");
    let next = h
        .wait_for(WAIT, || async { h.engine.next_attempt_at_ms("r") })
        .await
        .expect("scheduled");

    rx.reply(200, r#"{"done":true}"#, None);
    let h = restart(&b, h, dev_config()).await;
    assert_eq!(
        h.engine.next_attempt_at_ms("r"),
        Some(next),
        "next_attempt_at persisted"
    );
    assert_eq!(h.get_sub("r").await["status"], "failed");
    let hit = rx.next(WAIT).await.expect("retried after the restart");
    let now = crate::delivery::ds_subscriptions_now();
    assert!(
        now + 50 >= next,
        "retried {}ms before next_attempt_at",
        next - now
    );
    assert_eq!(hit.json["generation"], 1, "the same wake");
    h.wait_for(WAIT, || async {
        (h.get_sub("r").await["status"] == "active").then_some(())
    })
    .await
    .expect("active again");
}

async fn streams_created_while_down_are_linked_on_open_and_woken<B: Backend>(b: B) {
    let h = H::open(b.open().await, dev_config()).await;
    let mut rx = Receiver::start(200, r#"{"done":true}"#).await;
    assert_eq!(
        h.put_sub("w", webhook_spec(&rx.url, "events/*", 30_000))
            .await
            .status,
        StatusCode::CREATED
    );
    let store = h.stop().await;
    // Written behind the engine's back (as if the link event was lost in a crash).
    let req = ds_storage::CreateRequest {
        content_type: Some("application/json".into()),
        body: bytes::Bytes::from_static(br#"{"e":1}"#),
        ..ds_storage::CreateRequest::default()
    };
    store
        .create(&crate::util::name("events/late"), req)
        .await
        .expect("create");
    let h = H::open(b.reopen(store).await, dev_config()).await;
    let hit = rx.next(WAIT).await.expect("woken on open");
    assert_eq!(stream_of(&hit, "events/late")["has_pending"], true);
    assert_eq!(stream_of(&hit, "events/late")["acked_offset"], ZERO);
    drop(h);
}

async fn a_claimed_wake_keeps_its_holder_token_and_acks_across_a_restart<B: Backend>(b: B) {
    let h = H::open(b.open().await, dev_config()).await;
    pull_setup(&h, "p").await;
    let a = h.create_stream("events/a", r#"{"e":1}"#).await.to_string();
    wake_events(&h, 1).await;
    let c = post(&h, "p", "claim", json!({ "worker": "worker-1" }), None)
        .await
        .json();
    assert_eq!(c["generation"], 1, "{c}");
    let token = c["token"].as_str().expect("token").to_owned();
    // A heartbeat with an ack is persisted before it is answered.
    let hb = json!({ "wake_id": c["wake_id"], "generation": 1, "acks": [{ "stream": "events/a", "offset": a }] });
    assert_eq!(
        post(&h, "p", "ack", hb, Some(&token)).await.json(),
        json!({ "ok": true, "next_wake": false })
    );
    // New data while the claim is held: no wake yet.
    let b_tail = h.create_stream("events/b", r#"{"e":2}"#).await.to_string();

    let h = restart(&b, h, dev_config()).await;
    assert_eq!(h.acked("p", "events/a").await.as_deref(), Some(a.as_str()));
    assert_eq!(h.acked("p", "events/b").await.as_deref(), Some(ZERO));
    let busy = post(&h, "p", "claim", json!({ "worker": "worker-2" }), None).await;
    assert_eq!(
        busy.json(),
        json!({ "error": { "code": "ALREADY_CLAIMED", "current_holder": "worker-1", "generation": 1 } })
    );
    assert_eq!(
        h.read_json("wake/pool").await.len(),
        1,
        "a claimed wake is not delivered again"
    );
    // The token minted before the restart still works: same key, generation and wake id.
    let done = json!({ "wake_id": c["wake_id"], "generation": 1, "done": true });
    assert_eq!(
        post(&h, "p", "ack", done.clone(), Some(&token))
            .await
            .json(),
        json!({ "ok": true, "next_wake": true })
    );
    let events = wake_events(&h, 2).await;
    assert_eq!(events[1]["generation"], 2);
    assert_eq!(events[1]["stream"], "events/b");
    assert_eq!(
        post(&h, "p", "ack", done, Some(&token)).await.json(),
        json!({ "error": { "code": "FENCED" } })
    );
    let c2 = post(&h, "p", "claim", json!({ "worker": "worker-2" }), None)
        .await
        .json();
    assert_eq!(c2["generation"], 2);
    assert_eq!(
        c2["streams"],
        json!([
            { "path": "events/a", "link_type": "glob", "acked_offset": a, "tail_offset": a, "has_pending": false },
            { "path": "events/b", "link_type": "glob", "acked_offset": ZERO, "tail_offset": b_tail, "has_pending": true },
        ])
    );
}

async fn an_unclaimed_wake_is_written_again_after_a_restart<B: Backend>(b: B) {
    let h = H::open(b.open().await, dev_config()).await;
    pull_setup(&h, "p").await;
    h.create_stream("events/a", r#"{"e":1}"#).await;
    assert_eq!(wake_events(&h, 1).await[0]["generation"], 1);

    let h = restart(&b, h, dev_config()).await;
    let events = wake_events(&h, 2).await;
    assert_eq!(events[1]["generation"], 1, "the same wake, delivered again");
    assert_eq!(events[1]["stream"], "events/a");
    let c = post(&h, "p", "claim", json!({ "worker": "w" }), None)
        .await
        .json();
    assert_eq!(c["generation"], 1, "{c}");
    assert_eq!(c["streams"][0]["has_pending"], true);
}

async fn compaction_rolls_the_log_and_keeps_the_state<B: Backend>(b: B) {
    let cfg = SubscriptionsConfig {
        state_compact_bytes: 2048,
        ..dev_config()
    };
    let h = H::open(b.open().await, cfg.clone()).await;
    h.create_stream("wake/pool", "[]").await;
    for i in 0..40 {
        let spec = json!({ "type": "pull-wake", "streams": [format!("s/{i}")], "wake_stream": "wake/pool", "description": "x".repeat(100) });
        assert_eq!(
            h.put_sub(&format!("sub-{i}"), spec).await.status,
            StatusCode::CREATED
        );
    }
    for i in 0..20 {
        let r = h
            .req(
                Method::DELETE,
                &format!("/subscriptions/sub-{i}"),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
    }
    let store = h.stop().await;
    let epochs: Vec<String> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|i| i.name.to_string())
        .filter(|n| n.starts_with("__ds/subscriptions/state/"))
        .collect();
    assert_eq!(epochs.len(), 1, "{epochs:?}");
    assert_ne!(
        epochs[0], "__ds/subscriptions/state/0000000000000001",
        "compacted at least once"
    );
    let h = H::open(b.reopen(store).await, cfg).await;
    for i in 0..40 {
        let r = h
            .req(Method::GET, &format!("/subscriptions/sub-{i}"), None, None)
            .await;
        let want = if i < 20 {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::OK
        };
        assert_eq!(r.status, want, "sub-{i}");
    }
}
