//! `Storage::cluster` on PostgreSQL: two nodes (two stores on one schema) share leases, see
//! each other's stream changes, and forward calls to the lease holder through the database.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ds_protocol::{Expiry, NameLimits, Offset, StreamName};
use ds_storage::rules::ManualClock;
use ds_storage::{AppendRequest, Call, Change, Cluster, CreateRequest, ForkRequest, Storage};
use ds_storage_postgres::{PostgresOptions, PostgresStorage};
use tokio::sync::{broadcast, mpsc};

use crate::harness::{Schema, options, url};

const TEXT: &str = "text/plain";
const LONG: Duration = Duration::from_secs(30);

fn name(raw: &str) -> StreamName {
    StreamName::parse(raw, NameLimits::default()).expect("valid name")
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_700_000_000_000))
}

async fn open(schema: &Schema, clock: &Arc<ManualClock>) -> PostgresStorage {
    PostgresStorage::open(PostgresOptions {
        pool_size: 8,
        ..options(&schema.0, clock)
    })
    .await
    .expect("store opens")
}

/// Two nodes on one fresh schema, and their cluster handles.
struct Nodes {
    a: PostgresStorage,
    b: PostgresStorage,
    ca: Arc<dyn Cluster>,
    cb: Arc<dyn Cluster>,
    clock: Arc<ManualClock>,
    // Last, so the stores are dropped before their schema.
    schema: Schema,
}

async fn two_nodes() -> Nodes {
    let schema = Schema::new();
    let clock = clock();
    let a = open(&schema, &clock).await;
    let b = open(&schema, &clock).await;
    let ca = a.cluster().expect("PostgreSQL stores have a cluster");
    let cb = b.cluster().expect("PostgreSQL stores have a cluster");
    Nodes {
        a,
        b,
        ca,
        cb,
        clock,
        schema,
    }
}

/// Answers every call on `rx` with `"<tag>:<request>"`, counting them.
fn echo(mut rx: mpsc::Receiver<Call>, tag: &'static str) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        while let Some(call) = rx.recv().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut out = format!("{tag}:").into_bytes();
            out.extend_from_slice(&call.request);
            let _ = call.reply.send(Bytes::from(out));
        }
    });
    count
}

/// Rows left in `ds_calls` (callers delete theirs).
async fn call_rows(schema: &Schema) -> i64 {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .query_one(
            &format!("SELECT count(*) FROM \"{}\".ds_calls", schema.0),
            &[],
        )
        .await
        .expect("count calls")
        .get(0)
}

async fn next_change(rx: &mut broadcast::Receiver<Change>) -> Change {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a change within 5 s")
        .expect("the feed is open and not lagging")
}

/// Checks that the feed's next changes are `expected`, in order, and empties it.
async fn seen_in_order(rx: &mut broadcast::Receiver<Change>, expected: &mut Vec<Change>) {
    for want in expected.drain(..) {
        assert_eq!(next_change(rx).await, want);
    }
}

fn tail(raw: &str, seq: u64, byte: u64) -> Change {
    Change::Tail {
        name: name(raw),
        next: Offset::new(seq, byte),
    }
}

fn gone(raw: &str) -> Change {
    Change::Gone { name: name(raw) }
}

fn text(body: &'static str) -> AppendRequest {
    AppendRequest {
        content_type: Some(TEXT.to_owned()),
        body: Bytes::from_static(body.as_bytes()),
        ..AppendRequest::default()
    }
}

fn create(body: &'static str) -> CreateRequest {
    CreateRequest {
        content_type: Some(TEXT.to_owned()),
        body: Bytes::from_static(body.as_bytes()),
        ..CreateRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_holds_a_lease_and_its_term_grows_with_each_holder() {
    let n = two_nodes().await;
    assert_ne!(n.ca.node_id(), n.cb.node_id());
    let short = Duration::from_millis(300);

    let t1 =
        n.ca.acquire("lead", short)
            .await
            .expect("acquire")
            .expect("a takes the free lease");
    assert_eq!(n.cb.acquire("lead", short).await.expect("acquire"), None);
    assert_eq!(
        n.ca.acquire("lead", short).await.expect("renew"),
        Some(t1),
        "a renewal keeps the term"
    );
    assert_eq!(n.cb.acquire("lead", short).await.expect("acquire"), None);
    // Other lease names are independent.
    assert!(
        n.cb.acquire("other", LONG)
            .await
            .expect("acquire")
            .is_some()
    );

    // a stops renewing: once its lease has expired, b takes it with a larger term.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let t2 =
        n.cb.acquire("lead", LONG)
            .await
            .expect("acquire")
            .expect("b takes the expired lease");
    assert!(t2 > t1, "term {t2} after {t1}");
    assert_eq!(n.ca.acquire("lead", short).await.expect("acquire"), None);

    // Releasing hands it over at once; a release by a non-holder changes nothing.
    n.ca.release("lead").await.expect("release by a non-holder");
    assert_eq!(n.ca.acquire("lead", LONG).await.expect("acquire"), None);
    n.cb.release("lead").await.expect("release");
    let t3 =
        n.ca.acquire("lead", LONG)
            .await
            .expect("acquire")
            .expect("a takes the released lease at once");
    assert!(t3 > t2, "term {t3} after {t2}");

    // Closing a store hands all its leases on.
    n.a.close().await;
    let t4 =
        n.cb.acquire("lead", LONG)
            .await
            .expect("acquire")
            .expect("b takes the lease a closed");
    assert!(t4 > t3, "term {t4} after {t3}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_sees_every_change_in_order() {
    let n = two_nodes().await;
    let mut on_b = n.cb.changes();
    let mut on_a = n.ca.changes();
    let (empty, full, fork, ttl) = (name("empty"), name("full"), name("full-fork"), name("ttl"));

    // Each step waits for b to see it, so the expected order is the order of the steps. a's
    // feed is checked before each step that removes a row: a tail is named by looking its
    // stream up, which finds nothing once the row is gone (a busy machine can delay a's
    // lookup that long, and a's feed then goes straight to `Gone`).
    let mut expected = Vec::new();

    n.a.create(&empty, create("")).await.expect("create empty");
    expected.push(tail("empty", 0, 0));
    assert_eq!(next_change(&mut on_b).await, tail("empty", 0, 0));

    n.a.create(&full, create("abc"))
        .await
        .expect("create with a body");
    expected.push(tail("full", 1, 3));
    assert_eq!(next_change(&mut on_b).await, tail("full", 1, 3));

    n.a.append(&full, text("de")).await.expect("append");
    expected.push(tail("full", 2, 5));
    assert_eq!(next_change(&mut on_b).await, tail("full", 2, 5));

    let fork_req = CreateRequest {
        fork: Some(ForkRequest {
            source: full.clone(),
            offset: None,
            sub_offset: 0,
        }),
        ..CreateRequest::default()
    };
    n.a.create(&fork, fork_req).await.expect("fork");
    expected.push(tail("full-fork", 2, 5));
    assert_eq!(next_change(&mut on_b).await, tail("full-fork", 2, 5));

    let close = AppendRequest {
        close: true,
        ..AppendRequest::default()
    };
    n.a.append(&full, close).await.expect("close");
    expected.push(tail("full", 2, 5));
    assert_eq!(next_change(&mut on_b).await, tail("full", 2, 5));

    seen_in_order(&mut on_a, &mut expected).await;
    n.a.delete(&fork).await.expect("delete the fork");
    expected.push(gone("full-fork"));
    assert_eq!(next_change(&mut on_b).await, gone("full-fork"));

    seen_in_order(&mut on_a, &mut expected).await;
    n.a.delete(&full).await.expect("delete");
    expected.push(gone("full"));
    assert_eq!(next_change(&mut on_b).await, gone("full"));

    let expiring = CreateRequest {
        expiry: Expiry::Ttl(1),
        ..create("x")
    };
    n.a.create(&ttl, expiring).await.expect("create with a TTL");
    expected.push(tail("ttl", 1, 1));
    assert_eq!(next_change(&mut on_b).await, tail("ttl", 1, 1));
    seen_in_order(&mut on_a, &mut expected).await;
    n.clock.advance_ms(2_000);
    assert_eq!(n.a.sweep_expired().await.expect("sweep"), 1);
    expected.push(gone("ttl"));
    assert_eq!(next_change(&mut on_b).await, gone("ttl"));

    // Changes made through b reach b's own feed, and a's.
    seen_in_order(&mut on_a, &mut expected).await;
    n.b.delete(&empty).await.expect("delete through b");
    expected.push(gone("empty"));
    assert_eq!(next_change(&mut on_b).await, gone("empty"));

    // a saw all of it (its own changes included), in the same order.
    seen_in_order(&mut on_a, &mut expected).await;

    // A burst of appends: b's reports of one stream never go back, and end at its tail.
    let busy = name("busy");
    n.a.create(&busy, create("")).await.expect("create");
    for _ in 0..50 {
        n.a.append(&busy, text("xy")).await.expect("append");
    }
    let mut last = Offset::ZERO;
    while last != Offset::new(50, 100) {
        match next_change(&mut on_b).await {
            Change::Tail { name, next } if name == busy => {
                assert!(next >= last, "{next:?} reported after {last:?}");
                last = next;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_receivers_feeds_nothing() {
    let n = two_nodes().await;
    let s = name("quiet");
    n.a.create(&s, create("a")).await.expect("create");
    // Subscribed once the create's notification has reached b (it was sent before `create`
    // returned): only later changes arrive, not a backlog of what nobody read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut on_b = n.cb.changes();
    n.a.append(&s, text("b")).await.expect("append");
    assert_eq!(next_change(&mut on_b).await, tail("quiet", 2, 2));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), on_b.recv())
            .await
            .is_err(),
        "nothing else happened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_any_node_reach_the_lease_holder() {
    let n = two_nodes().await;
    assert!(n.cb.acquire("subs", LONG).await.expect("acquire").is_some());
    let handled = echo(n.cb.serve("subs"), "b");

    let reply =
        n.ca.call("subs", Bytes::from_static(b"hello"), Duration::from_secs(5))
            .await
            .expect("b answers");
    assert_eq!(reply, Bytes::from_static(b"b:hello"));
    // The holder can call itself too (through the database, like everyone else).
    let reply =
        n.cb.call("subs", Bytes::from_static(b"self"), Duration::from_secs(5))
            .await
            .expect("b answers itself");
    assert_eq!(reply, Bytes::from_static(b"b:self"));

    // A 1 MiB request (every byte value) and its 1 MiB answer round-trip intact.
    let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let reply =
        n.ca.call("subs", Bytes::from(big.clone()), Duration::from_secs(10))
            .await
            .expect("b answers a large call");
    assert_eq!(&reply[..2], b"b:");
    assert!(reply[2..] == big[..], "the large request arrived intact");

    // Concurrent calls each get their own answer.
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let ca = Arc::clone(&n.ca);
            tokio::spawn(async move {
                let request = Bytes::from(format!("req-{i}"));
                (i, ca.call("subs", request, Duration::from_secs(20)).await)
            })
        })
        .collect();
    for t in tasks {
        let (i, reply) = t.await.expect("task");
        assert_eq!(
            reply.expect("answered"),
            Bytes::from(format!("b:req-{i}")),
            "call {i}"
        );
    }
    // Woken by the notifications, not by the 250 ms poll underneath.
    let started = Instant::now();
    for i in 0..10 {
        let reply =
            n.ca.call("subs", Bytes::from(format!("q{i}")), Duration::from_secs(5))
                .await
                .expect("answered");
        assert_eq!(reply, Bytes::from(format!("b:q{i}")));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "10 calls took {:?}",
        started.elapsed()
    );
    assert_eq!(handled.load(Ordering::SeqCst), 63, "each call handled once");
    assert_eq!(call_rows(&n.schema).await, 0, "callers delete their rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_nobody_answers_times_out() {
    let n = two_nodes().await;
    let timeout = Duration::from_millis(600);

    // Nobody holds the lease.
    let started = Instant::now();
    let err =
        n.ca.call("nobody", Bytes::from_static(b"x"), timeout)
            .await
            .expect_err("no holder");
    let took = started.elapsed();
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(1),
        "gave up after {took:?}"
    );
    let shown = format!("{err:?} {err}");
    assert!(
        shown.contains("cluster call") && shown.contains("answered"),
        "{shown}"
    );

    // The holder takes the call but drops it unanswered.
    assert!(n.cb.acquire("mute", LONG).await.expect("acquire").is_some());
    let mut rx = n.cb.serve("mute");
    let taken = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&taken);
    tokio::spawn(async move {
        while let Some(call) = rx.recv().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(call);
        }
    });
    let started = Instant::now();
    n.ca.call("mute", Bytes::from_static(b"y"), timeout)
        .await
        .expect_err("dropped unanswered");
    assert!(started.elapsed() < timeout + Duration::from_secs(1));

    // A lease held without a serve receiver: nobody takes the call.
    assert!(
        n.cb.acquire("unserved", LONG)
            .await
            .expect("acquire")
            .is_some()
    );
    n.ca.call("unserved", Bytes::from_static(b"z"), timeout)
        .await
        .expect_err("not served");

    assert_eq!(
        call_rows(&n.schema).await,
        0,
        "timed-out callers delete their rows"
    );
    assert_eq!(
        taken.load(Ordering::SeqCst),
        1,
        "the dropped call was taken once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_taken_by_a_holder_that_then_loses_its_lease_fails_early() {
    let n = two_nodes().await;
    assert!(
        n.cb.acquire("dying", LONG)
            .await
            .expect("acquire")
            .is_some()
    );
    let mut rx = n.cb.serve("dying");
    // b takes the call and keeps it unanswered (a node killed mid-request).
    let held = tokio::spawn(async move { rx.recv().await });
    let ca = Arc::clone(&n.ca);
    let started = Instant::now();
    let pending = tokio::spawn(async move {
        ca.call("dying", Bytes::from_static(b"q"), Duration::from_secs(20))
            .await
    });
    let call = held.await.expect("task").expect("b took the call");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished(), "b still holds the lease");
    // b gives the lease up without answering: the caller stops waiting.
    n.cb.release("dying").await.expect("release");
    let err = pending
        .await
        .expect("task")
        .expect_err("the holder that took the call is gone");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "gave up after {took:?}");
    let shown = format!("{err:?} {err}");
    assert!(shown.contains("lost lease"), "{shown}");
    drop(call);
    assert_eq!(call_rows(&n.schema).await, 0, "the caller deleted its row");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waits_for_a_node_to_take_the_lease() {
    let n = two_nodes().await;
    let ca = Arc::clone(&n.ca);
    let started = Instant::now();
    let pending = tokio::spawn(async move {
        ca.call(
            "late",
            Bytes::from_static(b"early"),
            Duration::from_secs(10),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!pending.is_finished(), "nobody could answer yet");
    // b takes the lease and serves: it finds the call sent before it was holder.
    assert!(n.cb.acquire("late", LONG).await.expect("acquire").is_some());
    let handled = echo(n.cb.serve("late"), "b");
    let reply = pending
        .await
        .expect("task")
        .expect("answered once b serves");
    assert_eq!(reply, Bytes::from_static(b"b:early"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(handled.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_taken_by_exactly_one_node() {
    let n = two_nodes().await;
    // Both nodes serve; calls are queued while nobody holds the lease.
    let on_a = echo(n.ca.serve("one"), "a");
    let on_b = echo(n.cb.serve("one"), "b");
    let calls: Vec<_> = (0..30)
        .map(|i| {
            let c = if i % 2 == 0 {
                Arc::clone(&n.ca)
            } else {
                Arc::clone(&n.cb)
            };
            tokio::spawn(async move {
                let request = Bytes::from(format!("{i}"));
                c.call("one", request, Duration::from_secs(15)).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Both race for the lease; exactly one wins.
    let (ta, tb) = tokio::join!(n.ca.acquire("one", LONG), n.cb.acquire("one", LONG));
    let (ta, tb) = (ta.expect("acquire"), tb.expect("acquire"));
    assert!(ta.is_some() != tb.is_some(), "one holder: {ta:?} {tb:?}");
    let winner = if ta.is_some() { "a" } else { "b" };
    for (i, call) in calls.into_iter().enumerate() {
        let reply = call.await.expect("task").expect("answered");
        assert_eq!(reply, Bytes::from(format!("{winner}:{i}")));
    }
    let (a, b) = (on_a.load(Ordering::SeqCst), on_b.load(Ordering::SeqCst));
    assert_eq!(a + b, 30, "each call handled exactly once (a {a}, b {b})");
    assert_eq!(if winner == "a" { a } else { b }, 30);

    // The lease moves: later calls go to the new holder only.
    if winner == "a" {
        n.ca.release("one").await.expect("release");
        assert!(n.cb.acquire("one", LONG).await.expect("acquire").is_some());
    } else {
        n.cb.release("one").await.expect("release");
        assert!(n.ca.acquire("one", LONG).await.expect("acquire").is_some());
    }
    let other = if winner == "a" { "b" } else { "a" };
    for i in 0..5 {
        let reply =
            n.ca.call("one", Bytes::from(format!("m{i}")), Duration::from_secs(5))
                .await
                .expect("answered by the new holder");
        assert_eq!(reply, Bytes::from(format!("{other}:m{i}")));
    }
    assert_eq!(
        on_a.load(Ordering::SeqCst) + on_b.load(Ordering::SeqCst),
        35
    );
    assert_eq!(call_rows(&n.schema).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_asks_for_a_resync_after_the_listener_reconnects() {
    let n = two_nodes().await;
    let mut on_b = n.cb.changes();
    // Cut this schema's LISTEN connections (the only sessions whose last statement names
    // its channels).
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let cut: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE query LIKE $1) AS t",
            &[&format!("LISTEN \"ds_tail_{}\"%", n.schema.0)],
        )
        .await
        .expect("terminate listeners")
        .get(0);
    assert_eq!(cut, 2, "one LISTEN connection per node");
    assert_eq!(next_change(&mut on_b).await, Change::Resync);
    // The feed works again once it said so.
    n.a.create(&name("after"), create("z"))
        .await
        .expect("create");
    assert_eq!(next_change(&mut on_b).await, tail("after", 1, 1));
}
