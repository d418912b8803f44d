//! What only this backend promises: group commit, several nodes on one database (live wakes
//! across nodes, one order of offsets, one sweeper), the re-check safety net under NOTIFY, and
//! migrations that nodes starting at once apply exactly once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ds_protocol::{Expiry, NameLimits, Offset, StreamName};
use ds_storage::rules::ManualClock;
use ds_storage::{AppendOutcome, AppendRequest, CreateRequest, ReadFrom, Storage, Tail};
use ds_storage_postgres::{PostgresOptions, PostgresStorage};

use crate::harness::{Schema, options, url};

const TEXT: &str = "text/plain";

fn name(raw: &str) -> StreamName {
    StreamName::parse(raw, NameLimits::default()).expect("valid name")
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_700_000_000_000))
}

fn create_req() -> CreateRequest {
    CreateRequest {
        content_type: Some(TEXT.to_owned()),
        ..CreateRequest::default()
    }
}

fn append_req(body: impl Into<Bytes>) -> AppendRequest {
    AppendRequest {
        content_type: Some(TEXT.to_owned()),
        body: body.into(),
        ..AppendRequest::default()
    }
}

async fn open(schema: &Schema, clock: &Arc<ManualClock>) -> PostgresStorage {
    PostgresStorage::open(options(&schema.0, clock))
        .await
        .expect("store opens")
}

async fn read_all(store: &PostgresStorage, s: &StreamName) -> Vec<u8> {
    let mut out = Vec::new();
    let mut from = ReadFrom::Start;
    loop {
        let chunk = store.read(s, from, 1 << 20).await.expect("read");
        out.extend(chunk.pieces.concat());
        if chunk.up_to_date {
            return out;
        }
        from = ReadFrom::At(chunk.next);
    }
}

async fn wait_for(
    rx: &mut tokio::sync::watch::Receiver<Tail>,
    want: impl Fn(&Tail) -> bool,
) -> Tail {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let now = *rx.borrow_and_update();
            if want(&now) {
                return now;
            }
            rx.changed().await.expect("the store is alive");
        }
    })
    .await
    .expect("woken within 5 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_commits() {
    let schema = Schema::new();
    let store = open(&schema, &clock()).await;
    let streams: Vec<StreamName> = (0..64).map(|i| name(&format!("s-{i}"))).collect();
    for s in &streams {
        store.create(s, create_req()).await.expect("create");
    }
    let (commits, ops) = (store.commit_count(), store.committed_ops());
    let tasks: Vec<_> = streams
        .iter()
        .map(|s| {
            let (store, s) = (store.clone(), s.clone());
            tokio::spawn(async move { store.append(&s, append_req(vec![b'x'; 256])).await })
        })
        .collect();
    for t in tasks {
        assert!(matches!(
            t.await.expect("task"),
            Ok(AppendOutcome::Appended { .. })
        ));
    }
    let commits = store.commit_count() - commits;
    assert_eq!(store.committed_ops() - ops, 64);
    assert!(
        commits < 64,
        "64 concurrent appends took {commits} commits: they were not grouped"
    );
    for s in &streams {
        assert_eq!(read_all(&store, s).await, vec![b'x'; 256]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_stuck_on_a_row_lock_does_not_hold_up_other_streams() {
    // One batch is in flight per node; a batch that waits on a row lock (another node's
    // transaction) must let the next one start, or every stream of the node would wait.
    let schema = Schema::new();
    let store = open(&schema, &clock()).await;
    for s in ["stuck", "free"] {
        store.create(&name(s), create_req()).await.expect("create");
    }
    let (mut other, conn) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    let conn = tokio::spawn(conn);
    let locker = other.transaction().await.expect("begin");
    locker
        .execute(
            &format!(
                "SELECT 1 FROM \"{}\".ds_streams WHERE name = 'stuck' FOR UPDATE",
                schema.0
            ),
            &[],
        )
        .await
        .expect("lock the row");

    let stuck = {
        let store = store.clone();
        tokio::spawn(async move { store.append(&name("stuck"), append_req("a")).await })
    };
    // Queued behind the stuck batch: it may wait the stall time, not the lock.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let free = tokio::time::timeout(
        Duration::from_secs(2),
        store.append(&name("free"), append_req("b")),
    )
    .await
    .expect("an append to another stream is not held up by the stuck batch")
    .expect("append");
    assert!(matches!(free, AppendOutcome::Appended { .. }));
    assert!(!stuck.is_finished(), "the stuck append waits for the lock");

    locker.rollback().await.expect("release the lock");
    let stuck = tokio::time::timeout(Duration::from_secs(5), stuck)
        .await
        .expect("the stuck append finishes once the lock is released")
        .expect("task")
        .expect("append");
    assert!(matches!(stuck, AppendOutcome::Appended { .. }));
    assert_eq!(read_all(&store, &name("stuck")).await, b"a");
    drop(other);
    let _ = conn.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_on_one_node_is_woken_by_appends_on_another() {
    let schema = Schema::new();
    let clock = clock();
    let (a, b) = (open(&schema, &clock).await, open(&schema, &clock).await);
    let s = name("shared");
    a.create(&s, create_req()).await.expect("create on a");
    let mut rx = b.subscribe(&s).await.expect("subscribe on b");
    for i in 0..20u8 {
        let AppendOutcome::Appended { next, .. } = a
            .append(&s, append_req(vec![i]))
            .await
            .expect("append on a")
        else {
            panic!("expected Appended");
        };
        let seen = wait_for(&mut rx, |t| t.next >= next).await;
        assert_eq!(seen.next, next, "b sees exactly a's tail");
    }
    assert_eq!(read_all(&b, &s).await, (0..20u8).collect::<Vec<_>>());
    a.append(
        &s,
        AppendRequest {
            close: true,
            ..AppendRequest::default()
        },
    )
    .await
    .expect("close on a");
    assert!(wait_for(&mut rx, |t| t.closed).await.closed);
    a.delete(&s).await.expect("delete on a");
    assert!(wait_for(&mut rx, |t| t.gone).await.gone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_through_two_nodes_get_one_strictly_increasing_order() {
    let schema = Schema::new();
    let clock = clock();
    let (a, b) = (open(&schema, &clock).await, open(&schema, &clock).await);
    let s = name("contended");
    a.create(&s, create_req()).await.expect("create");
    let mut tasks = Vec::new();
    for (node, store) in [(b'a', a.clone()), (b'b', b.clone())] {
        for writer in 0..4u8 {
            let (store, s) = (store.clone(), s.clone());
            tasks.push(tokio::spawn(async move {
                let mut offsets = Vec::new();
                for i in 0..25u8 {
                    match store.append(&s, append_req(vec![node, writer, i])).await {
                        Ok(AppendOutcome::Appended { next, .. }) => offsets.push(next),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                offsets
            }));
        }
    }
    let mut all: Vec<Offset> = Vec::new();
    for t in tasks {
        let offsets = t.await.expect("task");
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "one writer's offsets increase"
        );
        all.extend(offsets);
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 200, "no two appends got the same offset");
    assert_eq!(*all.last().expect("offsets"), Offset::new(200, 600));
    let data = read_all(&b, &s).await;
    assert_eq!(data.len(), 600);
    // Every writer's records appear once, in its own order.
    for node in [b'a', b'b'] {
        for writer in 0..4u8 {
            let seq: Vec<u8> = data
                .chunks(3)
                .filter(|r| r[0] == node && r[1] == writer)
                .map(|r| r[2])
                .collect();
            assert_eq!(seq, (0..25).collect::<Vec<u8>>());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_only_delays_the_wake_up() {
    let schema = Schema::new();
    let clock = clock();
    let store = PostgresStorage::open(PostgresOptions {
        recheck_interval: Duration::from_millis(100),
        ..options(&schema.0, &clock)
    })
    .await
    .expect("open");
    let s = name("quiet");
    store.create(&s, create_req()).await.expect("create");
    let mut rx = store.subscribe(&s).await.expect("subscribe");
    // Another writer moves the tail without any NOTIFY (as if the message were lost).
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "UPDATE {}.ds_streams SET tail_seq = 0, tail_byte = 0, closed = true",
            schema.0
        ))
        .await
        .expect("close behind the store's back");
    let seen = wait_for(&mut rx, |t| t.closed).await;
    assert!(seen.closed && !seen.gone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_sweeps() {
    let schema = Schema::new();
    let clock = clock();
    let (a, b) = (open(&schema, &clock).await, open(&schema, &clock).await);
    for i in 0..3 {
        let req = CreateRequest {
            expiry: Expiry::Ttl(1),
            ..create_req()
        };
        a.create(&name(&format!("ttl-{i}")), req)
            .await
            .expect("create");
    }
    assert_eq!(
        a.sweep_expired().await.expect("sweep"),
        0,
        "nothing expired yet"
    );
    clock.advance_ms(2_000);
    assert_eq!(
        b.sweep_expired().await.expect("sweep"),
        0,
        "a holds the lease"
    );
    assert_eq!(a.sweep_expired().await.expect("sweep"), 3);
    // Handing the lease on lets the other node take the chore at once.
    a.close().await;
    b.create(
        &name("ttl-late"),
        CreateRequest {
            expiry: Expiry::Ttl(1),
            ..create_req()
        },
    )
    .await
    .expect("create");
    clock.advance_ms(2_000);
    assert_eq!(b.sweep_expired().await.expect("sweep"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_starting_at_once_migrate_once() {
    let schema = Schema::new();
    let clock = clock();
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let opts = options(&schema.0, &clock);
            tokio::spawn(async move { PostgresStorage::open(opts).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.expect("task").expect("every node opens"));
    }
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let versions: Vec<i32> = client
        .query(
            &format!(
                "SELECT version FROM {}.ds_schema_version ORDER BY version",
                schema.0
            ),
            &[],
        )
        .await
        .expect("versions")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2]);

    // Migrations are idempotent: one applied again (as after a partial manual repair)
    // changes nothing.
    client
        .batch_execute(&format!(
            "DELETE FROM {}.ds_schema_version WHERE version = 2",
            schema.0
        ))
        .await
        .expect("forget version 2");
    drop(
        PostgresStorage::open(options(&schema.0, &clock))
            .await
            .expect("version 2 applies again"),
    );

    // A schema newer than this build is refused, with a reason.
    client
        .batch_execute(&format!(
            "INSERT INTO {}.ds_schema_version (version) VALUES (99)",
            schema.0
        ))
        .await
        .expect("pretend a newer build migrated");
    let err = PostgresStorage::open(options(&schema.0, &clock))
        .await
        .expect_err("a newer schema is refused");
    assert!(
        format!("{err:?}").contains("newer than this build"),
        "{err:?}"
    );
}

#[tokio::test]
async fn bad_options_are_refused_before_connecting() {
    let clock = clock();
    for schema in ["Bad", "a;b", ""] {
        let err = PostgresStorage::open(options(schema, &clock))
            .await
            .expect_err("invalid schema");
        assert!(format!("{err:?}").contains("schema"), "{err:?}");
    }
    let err = PostgresStorage::open(PostgresOptions {
        pool_size: 1,
        ..options("fine", &clock)
    })
    .await
    .expect_err("pool too small");
    assert!(format!("{err:?}").contains("pool_size"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejected_operation_does_not_sink_its_batch() {
    let schema = Schema::new();
    let store = open(&schema, &clock()).await;
    let s = name("mixed");
    store.create(&s, create_req()).await.expect("create");
    let tasks: Vec<_> = (0..32u8)
        .map(|i| {
            let (store, s) = (store.clone(), s.clone());
            // Every other append has the wrong content type.
            let content_type = if i % 2 == 0 { TEXT } else { "application/json" };
            let req = AppendRequest {
                content_type: Some(content_type.to_owned()),
                body: Bytes::from(vec![i]),
                ..AppendRequest::default()
            };
            tokio::spawn(async move { (i, store.append(&s, req).await) })
        })
        .collect();
    let mut accepted = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            (i, Ok(AppendOutcome::Appended { .. })) if i % 2 == 0 => accepted.push(i),
            (i, Err(ds_storage::Error::ContentTypeMismatch { .. })) if i % 2 == 1 => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut data = read_all(&store, &s).await;
    data.sort_unstable();
    accepted.sort_unstable();
    assert_eq!(data, accepted);
    assert_eq!(store.head(&s).await.expect("head").bytes, 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_retry_through_another_node_is_a_duplicate() {
    let schema = Schema::new();
    let clock = clock();
    let (a, b) = (open(&schema, &clock).await, open(&schema, &clock).await);
    let s = name("producer");
    a.create(&s, create_req()).await.expect("create");
    let req = AppendRequest {
        producer: Some(ds_protocol::ProducerHeaders {
            id: "writer-1".to_owned(),
            epoch: 2,
            seq: 0,
        }),
        stream_seq: Some("a".to_owned()),
        ..append_req("once")
    };
    let AppendOutcome::Appended { next, .. } = a.append(&s, req.clone()).await.expect("append")
    else {
        panic!("expected Appended");
    };
    // The acknowledgement was lost; the load balancer sends the retry to node B.
    assert_eq!(
        b.append(&s, req).await.expect("retry"),
        AppendOutcome::Duplicate {
            next,
            closed: false,
            producer: ds_storage::ProducerAck { epoch: 2, seq: 0 },
        }
    );
    // Node B also sees the Stream-Seq node A recorded.
    let regress = AppendRequest {
        stream_seq: Some("a".to_owned()),
        ..append_req("again")
    };
    assert!(matches!(
        b.append(&s, regress).await,
        Err(ds_storage::Error::SeqRegression { .. })
    ));
    assert_eq!(read_all(&b, &s).await, b"once");
}

fn producer_req(id: &str, epoch: u64, seq: u64, body: &'static str) -> AppendRequest {
    AppendRequest {
        producer: Some(ds_protocol::ProducerHeaders {
            id: id.to_owned(),
            epoch,
            seq,
        }),
        ..append_req(body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restoring_writer_state_replaces_existing_producers() {
    use ds_storage::rules::{ProducerState, WriterState};
    let schema = Schema::new();
    let store = open(&schema, &clock()).await;
    let s = name("restored");
    store.create(&s, create_req()).await.expect("create");
    // The stream already has producer "p" (epoch 0, seq 0).
    store
        .append(&s, producer_req("p", 0, 0, "a"))
        .await
        .expect("append");
    let state = |entries: &[(&str, u64, u64)]| WriterState {
        producers: entries
            .iter()
            .map(|(id, epoch, last_seq)| {
                (
                    (*id).to_owned(),
                    ProducerState {
                        epoch: *epoch,
                        last_seq: *last_seq,
                    },
                )
            })
            .collect(),
        ..WriterState::default()
    };
    // Shares producer id "p" with the stream's current state.
    let restored = state(&[("p", 3, 7), ("q", 1, 2)]);
    store
        .restore_writer(&s, restored.clone())
        .await
        .expect("restore over an existing producer");
    // The same state again (every producer already exists).
    store
        .restore_writer(&s, restored.clone())
        .await
        .expect("restore the same state twice");
    assert_eq!(
        store
            .export_meta(&s)
            .await
            .expect("export")
            .writer
            .producers,
        restored.producers
    );
    // A state without "q" removes it; one without producers empties them.
    let fewer = state(&[("p", 4, 0)]);
    store
        .restore_writer(&s, fewer.clone())
        .await
        .expect("restore fewer");
    assert_eq!(
        store
            .export_meta(&s)
            .await
            .expect("export")
            .writer
            .producers,
        fewer.producers
    );
    store
        .restore_writer(&s, WriterState::default())
        .await
        .expect("restore none");
    assert!(
        store
            .export_meta(&s)
            .await
            .expect("export")
            .writer
            .producers
            .is_empty()
    );
    // The restored state is what appends are checked against.
    store.restore_writer(&s, fewer).await.expect("restore");
    assert!(matches!(
        store.append(&s, producer_req("p", 4, 0, "dup")).await,
        Ok(AppendOutcome::Duplicate { .. })
    ));
    assert!(matches!(
        store.append(&s, producer_req("p", 4, 1, "b")).await,
        Ok(AppendOutcome::Appended { .. })
    ));
    assert_eq!(read_all(&store, &s).await, b"ab");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_span_many_pages_of_records() {
    let schema = Schema::new();
    let store = open(&schema, &clock()).await;
    let s = name("long");
    store.create(&s, create_req()).await.expect("create");
    // 700 records (several read pages), each "abc".
    for round in 0..7 {
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let (store, s) = (store.clone(), s.clone());
                tokio::spawn(async move { store.append(&s, append_req("abc")).await })
            })
            .collect();
        for t in tasks {
            assert!(
                matches!(t.await.expect("task"), Ok(AppendOutcome::Appended { .. })),
                "round {round}"
            );
        }
    }
    let whole = b"abc".repeat(700);
    let chunk = store
        .read(&s, ReadFrom::Start, 1 << 20)
        .await
        .expect("read");
    assert_eq!(chunk.pieces.concat(), whole);
    assert!(chunk.up_to_date);
    assert_eq!(chunk.next, Offset::new(700, 2100));
    // From the middle of a record deep in the stream, with a budget ending mid-record.
    let chunk = store
        .read(&s, ReadFrom::At(Offset::new(300, 901)), 1000)
        .await
        .expect("read from the middle");
    assert_eq!(chunk.pieces.concat(), whole[901..1901]);
    assert_eq!(chunk.next, Offset::new(633, 1901));
    // Small budgets walk the whole stream.
    let mut out = Vec::new();
    let mut from = ReadFrom::Start;
    loop {
        let chunk = store.read(&s, from, 500).await.expect("read");
        out.extend(chunk.pieces.concat());
        if chunk.up_to_date {
            break;
        }
        from = ReadFrom::At(chunk.next);
    }
    assert_eq!(out, whole);
}

/// A direct connection to the database, its search path set to `schema`.
async fn sql(schema: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("SET search_path TO \"{schema}\""))
        .await
        .expect("set search path");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_slide_a_ttl_only_once_per_step() {
    let schema = Schema::new();
    let clock = clock();
    let store = open(&schema, &clock).await;
    let db = sql(&schema.0).await;
    let s = name("ttl");
    let created = 1_700_000_000_000_i64;
    store
        .create(
            &s,
            CreateRequest {
                // A tenth of 100 s is 10 s, capped at 2 s.
                expiry: Expiry::Ttl(100),
                ..create_req()
            },
        )
        .await
        .expect("create");
    let last_access = || async {
        db.query_one("SELECT last_access_ms FROM ds_streams", &[])
            .await
            .expect("query")
            .get::<_, i64>(0)
    };
    assert_eq!(last_access().await, created);
    clock.advance_ms(1_500);
    store.read(&s, ReadFrom::Start, 10).await.expect("read");
    assert_eq!(last_access().await, created, "within a step: no write");
    clock.advance_ms(1_000);
    store.read(&s, ReadFrom::Start, 10).await.expect("read");
    assert_eq!(last_access().await, created + 2_500, "a step later: slid");
    clock.advance_ms(99_000);
    store.head(&s).await.expect("alive: read 99 s ago");
    clock.advance_ms(1_000);
    assert!(matches!(
        store.head(&s).await,
        Err(ds_storage::Error::NotFound)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_word_works_as_the_schema() {
    // Shared by concurrent runs of this test: nothing here depends on the schema being fresh.
    let schema = Schema("user".to_owned());
    let clock = clock();
    let (a, b) = (open(&schema, &clock).await, open(&schema, &clock).await);
    let s = name(&format!("reserved-{:08x}", fastrand::u32(..)));
    a.create(&s, create_req()).await.expect("create");
    let mut rx = b.subscribe(&s).await.expect("subscribe");
    a.append(&s, append_req("hello")).await.expect("append");
    wait_for(&mut rx, |t| t.next.byte == 5).await;
    assert_eq!(read_all(&b, &s).await, b"hello");
    a.delete(&s).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_with_a_long_name_wakes_readers_on_another_node() {
    let schema = Schema::new();
    let clock = clock();
    // Notifications are received only by the LISTEN connection: the re-check is slowed so
    // that the wake-up must come from the NOTIFY.
    let open_slow = || async {
        PostgresStorage::open(PostgresOptions {
            recheck_interval: Duration::from_secs(3600),
            ..options(&schema.0, &clock)
        })
        .await
        .expect("store opens")
    };
    let (a, b) = (open_slow().await, open_slow().await);
    let long = "n".repeat(9000);
    let s = StreamName::parse(
        &long,
        NameLimits {
            max_bytes: 16_384,
            ..NameLimits::default()
        },
    )
    .expect("valid long name");
    a.create(&s, create_req()).await.expect("create");
    let mut rx = b.subscribe(&s).await.expect("subscribe");
    a.append(&s, append_req("x")).await.expect("append");
    wait_for(&mut rx, |t| t.next.byte == 1).await;
}
