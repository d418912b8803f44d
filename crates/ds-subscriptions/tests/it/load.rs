//! One glob over 1,000 streams under a steady append load: every append is covered by a wake
//! within a second.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use ds_protocol::Offset;

use crate::util::{H, Receiver, webhook_spec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_append_to_a_thousand_matched_streams_is_woken_within_a_second() {
    const STREAMS: usize = 1000;
    const APPENDS: usize = 2000;
    let started = Instant::now();
    let h = H::new().await;
    for i in 0..STREAMS {
        h.create_stream(&format!("load/s{i}"), "[]").await;
    }
    let mut rx = Receiver::start(200, r#"{"done":true}"#).await;
    assert_eq!(
        h.put_sub("load", webhook_spec(&rx.url, "load/*", 30_000))
            .await
            .status,
        StatusCode::CREATED
    );

    let load_started = Instant::now();
    eprintln!("setup took {:?}", started.elapsed());
    // Appends at a steady pace (~1 per ms) round-robin over the streams.
    let mut sent: Vec<(String, Offset, Instant)> = Vec::with_capacity(APPENDS);
    let mut covered: HashMap<String, Offset> = HashMap::new();
    let mut latest_wake = Instant::now();
    let mut worst = Duration::ZERO;
    let mut next_check = 0;
    for n in 0..APPENDS {
        let path = format!("load/s{}", n % STREAMS);
        let next = h.append(&path, r#"{"x":1}"#).await;
        sent.push((path, next, Instant::now()));
        if n % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while let Some(hit) = rx.try_next() {
            latest_wake = Instant::now();
            record(&hit.json, &mut covered);
        }
        // Appends whose wake is overdue.
        while next_check < sent.len() {
            let (path, offset, at) = &sent[next_check];
            if covered.get(path).is_some_and(|c| c >= offset) {
                worst = worst.max(latest_wake.saturating_duration_since(*at));
                next_check += 1;
            } else if at.elapsed() > Duration::from_secs(1) {
                panic!("append {next_check} to {path} not woken within 1 s");
            } else {
                break;
            }
        }
    }
    eprintln!("appends took {:?}", load_started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(2);
    while next_check < sent.len() {
        let (path, offset, at) = &sent[next_check];
        if covered.get(path).is_some_and(|c| c >= offset) {
            next_check += 1;
            continue;
        }
        assert!(
            Instant::now() < deadline,
            "append {next_check} to {path} never woken"
        );
        if let Some(hit) = rx.next(Duration::from_millis(100)).await {
            record(&hit.json, &mut covered);
            worst = worst.max(at.elapsed());
        }
    }
    assert!(
        worst < Duration::from_secs(1),
        "worst wake latency {worst:?}"
    );
    eprintln!("{APPENDS} appends over {STREAMS} streams: worst wake latency {worst:?}");
}

fn record(body: &serde_json::Value, covered: &mut HashMap<String, Offset>) {
    for s in body["streams"].as_array().into_iter().flatten() {
        let (Some(path), Some(tail)) = (s["path"].as_str(), s["tail_offset"].as_str()) else {
            continue;
        };
        if let Ok(tail) = tail.parse::<Offset>() {
            let e = covered.entry(path.to_owned()).or_insert(tail);
            *e = (*e).max(tail);
        }
    }
}
