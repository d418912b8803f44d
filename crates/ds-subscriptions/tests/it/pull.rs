//! Pull-wake: wake events, claim, ack as heartbeat and with done, release, leases.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::util::{H, Resp};

const WAIT: Duration = Duration::from_secs(3);

async fn post(h: &H, id: &str, action: &str, body: Value, token: Option<&str>) -> Resp {
    h.req(
        Method::POST,
        &format!("/subscriptions/{id}/{action}"),
        Some(body),
        token,
    )
    .await
}

async fn setup(h: &H, id: &str, lease_ms: u64) {
    h.create_stream("wake/pool", "[]").await;
    let spec = json!({ "type": "pull-wake", "pattern": "events/*", "wake_stream": "wake/pool", "lease_ttl_ms": lease_ms });
    assert_eq!(h.put_sub(id, spec).await.status, StatusCode::CREATED);
}

async fn wake_events(h: &H, n: usize) -> Vec<Value> {
    h.wait_for(WAIT, || async {
        let e = h.read_json("wake/pool").await;
        (e.len() >= n).then_some(e)
    })
    .await
    .unwrap_or_else(|| panic!("{n} wake events"))
}

#[tokio::test]
async fn claim_ack_and_release_follow_the_lease() {
    let h = H::new().await;
    setup(&h, "p", 30_000).await;
    let tail = h.create_stream("events/a", r#"{"e":1}"#).await;
    let events = wake_events(&h, 1).await;
    let ts = events[0]["ts"].as_u64().expect("ts");
    assert_eq!(
        events[0],
        json!({ "type": "wake", "subscription_id": "p", "stream": "events/a", "generation": 1, "ts": ts })
    );

    let claim = post(&h, "p", "claim", json!({ "worker": "worker-1" }), None).await;
    assert_eq!(claim.status, StatusCode::OK);
    let c = claim.json();
    assert_eq!(c["generation"], 1);
    assert_eq!(c["lease_ttl_ms"], 30_000);
    assert_eq!(
        c["streams"],
        json!([{ "path": "events/a", "link_type": "glob", "acked_offset": "0000000000000000_0000000000000000",
                 "tail_offset": tail.to_string(), "has_pending": true }])
    );
    let token = c["token"].as_str().expect("token").to_owned();

    let busy = post(&h, "p", "claim", json!({ "worker": "worker-2" }), None).await;
    assert_eq!(busy.status, StatusCode::CONFLICT);
    assert_eq!(
        busy.json(),
        json!({ "error": { "code": "ALREADY_CLAIMED", "current_holder": "worker-1", "generation": 1 } })
    );

    // Heartbeat: acks, keeps the claim.
    let hb = json!({ "wake_id": c["wake_id"], "generation": 1, "acks": [{ "stream": "events/a", "offset": tail.to_string() }] });
    let r = post(&h, "p", "ack", hb, Some(&token)).await;
    assert_eq!(r.json(), json!({ "ok": true, "next_wake": false }));
    assert_eq!(
        post(&h, "p", "claim", json!({ "worker": "worker-2" }), None)
            .await
            .status,
        StatusCode::CONFLICT
    );

    // New data while claimed: no new wake until the worker is done; then next_wake.
    h.append("events/a", r#"{"e":2}"#).await;
    let done = json!({ "wake_id": c["wake_id"], "generation": 1, "done": true });
    let r = post(&h, "p", "ack", done.clone(), Some(&token)).await;
    assert_eq!(r.json(), json!({ "ok": true, "next_wake": true }));
    let events = wake_events(&h, 2).await;
    assert_eq!(events[1]["generation"], 2);
    let r = post(&h, "p", "ack", done, Some(&token)).await;
    assert_eq!(r.json(), json!({ "error": { "code": "FENCED" } }));

    // Release without acking: the work is still pending, so another wake follows.
    let c2 = post(&h, "p", "claim", json!({ "worker": "worker-2" }), None)
        .await
        .json();
    assert_eq!(c2["generation"], 2);
    let token2 = c2["token"].as_str().expect("token");
    let stale = post(
        &h,
        "p",
        "release",
        json!({ "wake_id": c["wake_id"], "generation": 1 }),
        Some(token2),
    )
    .await;
    assert_eq!(stale.json(), json!({ "error": { "code": "FENCED" } }));
    let r = post(
        &h,
        "p",
        "release",
        json!({ "wake_id": c2["wake_id"], "generation": 2 }),
        Some(token2),
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let events = wake_events(&h, 3).await;
    assert_eq!(events[2]["generation"], 3);
}

#[tokio::test]
async fn claims_need_pending_work_and_the_right_type() {
    let h = H::new().await;
    setup(&h, "p", 30_000).await;
    let r = post(&h, "p", "claim", json!({ "worker": "w" }), None).await;
    assert_eq!(r.json()["error"]["code"], "NO_PENDING_WORK");
    let r = post(&h, "p", "claim", json!({}), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post(&h, "nope", "claim", json!({ "worker": "w" }), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = post(&h, "p", "callback", json!({}), Some("x.y")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_expired_lease_clears_the_holder_and_wakes_again() {
    let h = H::new().await;
    setup(&h, "p", 1000).await;
    h.create_stream("events/a", r#"{"e":1}"#).await;
    wake_events(&h, 1).await;
    let c = post(&h, "p", "claim", json!({ "worker": "slow" }), None)
        .await
        .json();
    let token = c["token"].as_str().expect("token").to_owned();
    // Heartbeats keep it alive past the original lease.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let hb = json!({ "wake_id": c["wake_id"], "generation": 1 });
        assert_eq!(
            post(&h, "p", "ack", hb, Some(&token)).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        post(&h, "p", "claim", json!({ "worker": "other" }), None)
            .await
            .status,
        StatusCode::CONFLICT
    );
    // Then silence: the lease ends, the holder is cleared and the pending work is re-woken.
    let events = wake_events(&h, 2).await;
    assert_eq!(events[1]["generation"], 2);
    let stale = post(
        &h,
        "p",
        "ack",
        json!({ "wake_id": c["wake_id"], "generation": 1, "done": true }),
        Some(&token),
    )
    .await;
    assert_eq!(stale.json(), json!({ "error": { "code": "FENCED" } }));
    let c2 = post(&h, "p", "claim", json!({ "worker": "other" }), None).await;
    assert_eq!(c2.status, StatusCode::OK);
    assert_eq!(c2.json()["generation"], 2);
}
