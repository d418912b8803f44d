//! State, keys and retry schedules survive a restart over the same store; compaction keeps
//! the state.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use ds_storage::Storage;
use ds_subscriptions::SubscriptionsConfig;
use serde_json::json;

use crate::util::{H, Receiver, dev_config, stream_of, webhook_spec};

const WAIT: Duration = Duration::from_secs(3);

#[tokio::test]
async fn subscriptions_links_acks_and_the_signing_key_survive_a_restart() {
    let h = H::new().await;
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
    let before_w = h.get_sub("w").await;
    let before_p = h.get_sub("p").await;

    let h = H::open(h.stop().await, dev_config()).await;
    assert_eq!(h.engine.kid(), kid, "the signing key is persisted");
    assert_eq!(h.get_sub("w").await, before_w);
    assert_eq!(h.get_sub("p").await, before_p);
    assert_eq!(
        h.put_sub("w", spec).await.status,
        StatusCode::OK,
        "same config hash"
    );
    // Nothing pending: no wake on open. New data: the next generation.
    assert!(rx.next(Duration::from_millis(300)).await.is_none());
    h.append("events/a", r#"{"e":2}"#).await;
    assert_eq!(rx.next(WAIT).await.expect("webhook").json["generation"], 2);
}

#[tokio::test]
async fn the_retry_schedule_survives_a_restart() {
    let h = H::new().await;
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
    let store = h.stop().await;

    rx.reply(200, r#"{"done":true}"#, None);
    let h = H::open(store, dev_config()).await;
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

#[tokio::test]
async fn streams_created_while_down_are_linked_on_open_and_woken() {
    let h = H::new().await;
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
    let h = H::open(store, dev_config()).await;
    let hit = rx.next(WAIT).await.expect("woken on open");
    assert_eq!(stream_of(&hit, "events/late")["has_pending"], true);
    drop(h);
}

#[tokio::test]
async fn compaction_rolls_the_log_and_keeps_the_state() {
    let cfg = SubscriptionsConfig {
        state_compact_bytes: 2048,
        ..dev_config()
    };
    let h = H::open(
        std::sync::Arc::new(ds_storage_memory::MemoryStorage::default()),
        cfg.clone(),
    )
    .await;
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
    let h = H::open(store, cfg).await;
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
