//! Webhook delivery: signatures, synchronous done, callbacks and fencing, deletion, leases,
//! retries and SSRF checks at delivery time.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ds_subscriptions::SubscriptionsConfig;
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::{Value, json};

use crate::util::{H, Hit, ROOT, Receiver, stream_of, webhook_spec};

const WAIT: Duration = Duration::from_secs(3);

/// Verifies `Webhook-Signature` the way a receiver would: pick the key by `kid` from the JWKS,
/// check the replay window, verify Ed25519 over `<t>.<raw body>`.
fn verify(hit: &Hit, jwks: &Value) -> Result<(), String> {
    let header = hit.headers["webhook-signature"]
        .to_str()
        .map_err(|e| e.to_string())?;
    let rest = header.strip_prefix("t=").ok_or("no t")?;
    let (t, rest) = rest.split_once(",kid=").ok_or("no kid")?;
    let (kid, sig) = rest.split_once(",ed25519=").ok_or("no ed25519")?;
    let t: u64 = t.parse().map_err(|_| "t is not decimal")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    if now.abs_diff(t) > 300 {
        return Err("outside the replay window".into());
    }
    let key = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid))
        .ok_or("unknown kid")?;
    let x: [u8; 32] = B64
        .decode(key["x"].as_str().ok_or("no x")?)
        .map_err(|e| e.to_string())?
        .try_into()
        .map_err(|_| "x is not 32 bytes")?;
    let vk = VerifyingKey::from_bytes(&x).map_err(|e| e.to_string())?;
    let sig = Signature::from_slice(&B64.decode(sig).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let msg = [format!("{t}.").as_bytes(), &hit.raw].concat();
    vk.verify_strict(&msg, &sig).map_err(|e| e.to_string())
}

async fn callback(h: &H, id: &str, token: Option<&str>, body: Value) -> crate::util::Resp {
    h.req(
        Method::POST,
        &format!("/subscriptions/{id}/callback"),
        Some(body),
        token,
    )
    .await
}

#[tokio::test]
async fn webhook_is_signed_and_verifies_against_the_jwks() {
    let h = H::new().await;
    let mut rx = Receiver::start(200, "{}").await;
    assert_eq!(
        h.put_sub("sig", webhook_spec(&rx.url, "events/*", 30_000))
            .await
            .status,
        StatusCode::CREATED
    );
    let tail = h.create_stream("events/a", r#"{"e":1}"#).await;
    let hit = rx.next(WAIT).await.expect("a webhook");
    let jwks = h.req(Method::GET, "/jwks.json", None, None).await.json();
    verify(&hit, &jwks).expect("signature verifies");

    // Tampering with the body or the timestamp breaks it.
    let mut tampered = hit.clone();
    tampered.raw = bytes::Bytes::from(hit.raw.iter().copied().rev().collect::<Vec<u8>>());
    assert!(verify(&tampered, &jwks).is_err());

    assert_eq!(hit.headers["content-type"], "application/json");
    let body = &hit.json;
    assert_eq!(body["subscription_id"], "sig");
    assert_eq!(body["generation"], 1);
    assert!(body["wake_id"].as_str().is_some_and(|w| !w.is_empty()));
    assert_eq!(
        body["callback_url"],
        format!("{ROOT}/__ds/subscriptions/sig/callback")
    );
    assert!(
        body["callback_token"]
            .as_str()
            .is_some_and(|t| t.len() > 20)
    );
    assert_eq!(
        *stream_of(&hit, "events/a"),
        json!({
            "path": "events/a", "link_type": "glob",
            "acked_offset": "0000000000000000_0000000000000000",
            "tail_offset": tail.to_string(), "has_pending": true,
        })
    );
}

#[tokio::test]
async fn synchronous_done_acks_the_snapshot_and_releases() {
    let h = H::new().await;
    let mut rx = Receiver::start(200, r#"{"done":true}"#).await;
    assert_eq!(
        h.put_sub("sync", webhook_spec(&rx.url, "events/*", 1000))
            .await
            .status,
        StatusCode::CREATED
    );
    h.create_stream("events/a", r#"{"e":1}"#).await;
    let first = rx.next(WAIT).await.expect("webhook");
    let tail = stream_of(&first, "events/a")["tail_offset"].clone();
    let acked = h
        .wait_for(WAIT, || async {
            let a = h.acked("sync", "events/a").await?;
            (a == tail).then_some(a)
        })
        .await;
    assert!(acked.is_some(), "auto-acked to the snapshot tail");

    // More data: a new wake with a new id and generation.
    let tail2 = h.append("events/a", r#"{"e":2}"#).await;
    let second = rx.next(WAIT).await.expect("second webhook");
    assert_eq!(second.json["generation"], 2);
    assert_ne!(second.json["wake_id"], first.json["wake_id"]);
    assert_eq!(stream_of(&second, "events/a")["acked_offset"], tail);
    assert_eq!(
        stream_of(&second, "events/a")["tail_offset"],
        tail2.to_string()
    );
}

#[tokio::test]
async fn callbacks_ack_extend_and_fence_stale_wakes() {
    let h = H::new().await;
    let mut rx = Receiver::start(200, "{}").await;
    assert_eq!(
        h.put_sub("cb", webhook_spec(&rx.url, "events/*", 30_000))
            .await
            .status,
        StatusCode::CREATED
    );
    h.create_stream("events/a", r#"{"e":1}"#).await;
    let hit = rx.next(WAIT).await.expect("webhook");
    let token = hit.json["callback_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let wake_id = hit.json["wake_id"].clone();
    let tail = stream_of(&hit, "events/a")["tail_offset"].clone();
    let ack = |done: bool| json!({ "wake_id": wake_id, "generation": 1, "acks": [{ "stream": "events/a", "offset": tail }], "done": done });

    // Token only from Authorization, and only for its subscription.
    let r = callback(&h, "cb", None, ack(true)).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (StatusCode::UNAUTHORIZED, json!("TOKEN_INVALID"))
    );
    let r = callback(&h, "cb", Some("not.a-token"), ack(true)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let other = H::new().await;
    let r = h
        .req(
            Method::POST,
            "/subscriptions/other/callback",
            Some(ack(true)),
            Some(&token),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    drop(other);

    // Stale generation or wake id: exactly the mandated body.
    for stale in [
        json!({ "wake_id": wake_id, "generation": 0 }),
        json!({ "wake_id": "w_other", "generation": 1 }),
        json!({ "generation": 1 }),
    ] {
        let r = callback(&h, "cb", Some(&token), stale.clone()).await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{stale}");
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.json(), json!({ "error": { "code": "FENCED" } }));
    }
    // An ack past the tail is refused and moves nothing.
    let bad = json!({ "wake_id": wake_id, "generation": 1, "acks": [{ "stream": "events/a", "offset": "0000000000000009_0000000000000999" }] });
    let r = callback(&h, "cb", Some(&token), bad).await;
    assert_eq!(r.json()["error"]["code"], "INVALID_OFFSET");
    assert_eq!(
        h.acked("cb", "events/a").await.as_deref(),
        Some("0000000000000000_0000000000000000")
    );

    // A heartbeat (no done) acks and keeps the wake; done ends it.
    let r = callback(&h, "cb", Some(&token), ack(false)).await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, json!({ "ok": true, "next_wake": false }))
    );
    assert_eq!(
        h.acked("cb", "events/a").await,
        tail.as_str().map(str::to_owned)
    );
    let r = callback(&h, "cb", Some(&token), ack(true)).await;
    assert_eq!(
        (r.status, r.json()),
        (StatusCode::OK, json!({ "ok": true, "next_wake": false }))
    );
    // The same request again is stale.
    let r = callback(&h, "cb", Some(&token), ack(true)).await;
    assert_eq!(r.json(), json!({ "error": { "code": "FENCED" } }));

    // Done with work left over: next_wake, and a new generation arrives.
    h.append("events/a", r#"{"e":2}"#).await;
    let hit2 = rx.next(WAIT).await.expect("second webhook");
    assert_eq!(hit2.json["generation"], 2);
    let token2 = hit2.json["callback_token"]
        .as_str()
        .expect("token")
        .to_owned();
    h.append("events/a", r#"{"e":3}"#).await;
    let partial = json!({
        "wake_id": hit2.json["wake_id"], "generation": 2, "done": true,
        "acks": [{ "stream": "events/a", "offset": stream_of(&hit2, "events/a")["tail_offset"] }],
    });
    let r = callback(&h, "cb", Some(&token2), partial).await;
    assert_eq!(r.json(), json!({ "ok": true, "next_wake": true }));
    assert_eq!(
        rx.next(WAIT).await.expect("third webhook").json["generation"],
        3
    );
    // The generation-1 token is fenced for the new wake.
    let r = callback(
        &h,
        "cb",
        Some(&token),
        json!({ "wake_id": wake_id, "generation": 3 }),
    )
    .await;
    assert_eq!(r.json(), json!({ "error": { "code": "FENCED" } }));
}

#[tokio::test]
async fn deleting_a_subscription_fails_in_flight_callbacks_without_moving_cursors() {
    let h = H::new().await;
    let mut rx = Receiver::start(200, "{}").await;
    let spec = webhook_spec(&rx.url, "events/*", 30_000);
    assert_eq!(
        h.put_sub("del", spec.clone()).await.status,
        StatusCode::CREATED
    );
    h.create_stream("events/a", r#"{"e":1}"#).await;
    let hit = rx.next(WAIT).await.expect("webhook");
    let token = hit.json["callback_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let tail = stream_of(&hit, "events/a")["tail_offset"].clone();
    let ack = json!({ "wake_id": hit.json["wake_id"], "generation": 1, "acks": [{ "stream": "events/a", "offset": tail }], "done": true });
    assert_eq!(
        h.req(Method::DELETE, "/subscriptions/del", None, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let r = callback(&h, "del", Some(&token), ack.clone()).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A new subscription under the same id: the old token is not valid for it.
    assert_eq!(h.put_sub("del", spec).await.status, StatusCode::CREATED);
    let r = callback(&h, "del", Some(&token), ack).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        h.acked("del", "events/a").await,
        tail.as_str().map(str::to_owned),
        "linked at the tail"
    );
}

#[tokio::test]
async fn an_unanswered_wake_expires_with_its_lease_and_wakes_again() {
    let h = H::new().await;
    let mut rx = Receiver::start(200, "{}").await;
    assert_eq!(
        h.put_sub("lease", webhook_spec(&rx.url, "events/*", 1000))
            .await
            .status,
        StatusCode::CREATED
    );
    h.create_stream("events/a", r#"{"e":1}"#).await;
    let first = rx.next(WAIT).await.expect("webhook");
    let started = std::time::Instant::now();
    let second = rx.next(WAIT).await.expect("a new wake after the lease");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert_eq!(second.json["generation"], 2);
    let token = first.json["callback_token"].as_str().expect("token");
    let r = callback(
        &h,
        "lease",
        Some(token),
        json!({ "wake_id": first.json["wake_id"], "generation": 1, "done": true }),
    )
    .await;
    assert_eq!(r.json(), json!({ "error": { "code": "FENCED" } }));
}

#[tokio::test]
async fn failed_deliveries_retry_with_backoff_and_report_failed_status() {
    let h = H::new().await;
    let mut rx = Receiver::start(500, "{}").await;
    assert_eq!(
        h.put_sub("retry", webhook_spec(&rx.url, "events/*", 30_000))
            .await
            .status,
        StatusCode::CREATED
    );
    h.create_stream("events/a", r#"{"e":1}"#).await;
    let first = rx.next(WAIT).await.expect("first attempt");
    let failed_at = std::time::Instant::now();
    let next = h
        .wait_for(WAIT, || async { h.engine.next_attempt_at_ms("retry") })
        .await
        .expect("a retry is scheduled");
    let now = ds_subscriptions_now();
    assert!(
        (700..=1300).contains(&next.saturating_sub(now)),
        "{}",
        next - now
    );
    assert_eq!(h.get_sub("retry").await["status"], "failed");

    rx.reply(200, r#"{"done":true}"#, None);
    let second = rx.next(WAIT).await.expect("retried");
    let gap = failed_at.elapsed();
    assert!(
        gap >= Duration::from_millis(700) && gap <= Duration::from_millis(1500),
        "{gap:?}"
    );
    // A retry re-sends the same wake.
    assert_eq!(second.json["wake_id"], first.json["wake_id"]);
    let active = h
        .wait_for(WAIT, || async {
            (h.get_sub("retry").await["status"] == "active").then_some(())
        })
        .await;
    assert!(active.is_some());
    assert_eq!(h.engine.next_attempt_at_ms("retry"), None);
}

pub(crate) fn ds_subscriptions_now() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("fits")
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let h = H::new().await;
    let mut target = Receiver::start(200, r#"{"done":true}"#).await;
    let mut rx = Receiver::start(307, "").await;
    rx.reply(307, "", Some(&target.url));
    assert_eq!(
        h.put_sub("redir", webhook_spec(&rx.url, "events/*", 30_000))
            .await
            .status,
        StatusCode::CREATED
    );
    h.create_stream("events/a", r#"{"e":1}"#).await;
    rx.next(WAIT).await.expect("first hop");
    assert!(
        target.next(Duration::from_millis(500)).await.is_none(),
        "redirect followed"
    );
    let failed = h
        .wait_for(WAIT, || async {
            (h.get_sub("redir").await["status"] == "failed").then_some(())
        })
        .await;
    assert!(failed.is_some(), "a 3xx is a failed delivery");
}

#[tokio::test]
async fn delivery_rechecks_the_url_when_development_webhooks_are_turned_off() {
    let h = H::new().await;
    let mut rx = Receiver::start(200, r#"{"done":true}"#).await;
    assert_eq!(
        h.put_sub("dev", webhook_spec(&rx.url, "events/*", 30_000))
            .await
            .status,
        StatusCode::CREATED
    );
    let store = h.stop().await;
    let prod = H::open(store, SubscriptionsConfig::default()).await;
    prod.create_stream("events/a", r#"{"e":1}"#).await;
    assert!(
        rx.next(Duration::from_millis(500)).await.is_none(),
        "delivered to loopback"
    );
    let failed = prod
        .wait_for(WAIT, || async { prod.engine.next_attempt_at_ms("dev") })
        .await;
    assert!(failed.is_some());
}
