//! Many tasks at once (on a multi-thread runtime): appends are atomic and land exactly once,
//! producers are serialized per stream (PROTOCOL.md section 5.2.1, "Concurrency
//! Requirements"), and deletes racing forks or reads never lose or tear data.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::Harness;
use super::support::{
    ALL, BINARY, append_req, create, create_req, fork_req, name, producer_req, read_all,
};
use crate::{AppendOutcome, CreateOutcome, Error, ReadFrom, Storage};

const TASKS: usize = 16;
const APPENDS_PER_TASK: usize = 50;

/// A fixed-width token naming the writer and its n-th append.
fn token(task: usize, i: usize) -> String {
    format!("[{task:02}:{i:03}]")
}

const TOKEN_LEN: usize = 8;

/// Many tasks appending to one stream: every append lands exactly once and whole, each
/// returned tail is unique, and each writer's appends appear in the order it made them.
pub async fn concurrent_appends_land_exactly_once<H: Harness>(h: &H) {
    let store = Arc::new(h.open().await);
    let s = name("contended");
    create(&*store, &s, BINARY).await;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (store, s) = (Arc::clone(&store), s.clone());
        tasks.push(tokio::spawn(async move {
            let mut tails = Vec::new();
            for i in 0..APPENDS_PER_TASK {
                match store.append(&s, append_req(BINARY, token(task, i))).await {
                    Ok(AppendOutcome::Appended { next, .. }) => tails.push(next),
                    other => panic!("append failed: {other:?}"),
                }
            }
            tails
        }));
    }
    let mut tails = HashSet::new();
    for task in tasks {
        for tail in task.await.expect("writer task") {
            assert!(tails.insert(tail), "tail {tail} returned twice");
        }
    }
    let data = read_all(&*store, &s).await;
    assert_eq!(data.len(), TASKS * APPENDS_PER_TASK * TOKEN_LEN);
    let mut next_of = [0usize; TASKS];
    for raw in data.chunks(TOKEN_LEN) {
        let text = std::str::from_utf8(raw).expect("tokens are ASCII");
        let task: usize = text[1..3].parse().expect("task number");
        let i: usize = text[4..7].parse().expect("append number");
        assert_eq!(text, token(task, i), "a token was torn");
        assert_eq!(
            i, next_of[task],
            "writer {task}'s appends out of order or repeated"
        );
        next_of[task] += 1;
    }
    assert!(next_of.iter().all(|n| *n == APPENDS_PER_TASK));
    let tail = store.head(&s).await.expect("head").next;
    assert!(tails.contains(&tail));
}

/// One producer's seqs 0..N sent concurrently in shuffled order, each retried on `SeqGap`
/// until accepted, end with every batch present once, in seq order.
pub async fn concurrent_producer_appends_end_in_seq_order<H: Harness>(h: &H) {
    const N: u64 = 40;
    let store = Arc::new(h.open().await);
    let s = name("producer-race");
    create(&*store, &s, BINARY).await;
    let seed = seed();
    println!(
        "concurrent_producer_appends_end_in_seq_order: seed {seed} (replay with DS_CONTRACT_SEED={seed})"
    );
    let mut order: Vec<u64> = (0..N).collect();
    shuffle(&mut order, seed);
    let mut tasks = Vec::new();
    for seq in order {
        let (store, s) = (Arc::clone(&store), s.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10_000 {
                let req = producer_req(BINARY, format!("<{seq:03}>"), "p", 0, seq);
                match store.append(&s, req).await {
                    Ok(AppendOutcome::Appended { .. } | AppendOutcome::Duplicate { .. }) => return,
                    Err(Error::SeqGap { received, .. }) if received == seq => {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    other => panic!("seq {seq}: unexpected {other:?}"),
                }
            }
            panic!("seq {seq} was never accepted");
        }));
    }
    for task in tasks {
        task.await.expect("producer task");
    }
    let expected = (0..N)
        .map(|seq| format!("<{seq:03}>"))
        .collect::<Vec<_>>()
        .concat();
    assert_eq!(
        String::from_utf8(read_all(&*store, &s).await).expect("ASCII"),
        expected
    );
}

/// Writers on two streams at once: each stream holds exactly its own writers' data.
pub async fn concurrent_appends_to_two_streams_stay_separate<H: Harness>(h: &H) {
    let store = Arc::new(h.open().await);
    let (left, right) = (name("left"), name("right"));
    create(&*store, &left, BINARY).await;
    create(&*store, &right, BINARY).await;
    let mut tasks = Vec::new();
    for task in 0..8 {
        let store = Arc::clone(&store);
        let s = if task % 2 == 0 {
            left.clone()
        } else {
            right.clone()
        };
        tasks.push(tokio::spawn(async move {
            for i in 0..APPENDS_PER_TASK {
                store
                    .append(&s, append_req(BINARY, token(task, i)))
                    .await
                    .expect("append");
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    for (s, parity) in [(&left, 0), (&right, 1)] {
        let data = read_all(&*store, s).await;
        assert_eq!(data.len(), 4 * APPENDS_PER_TASK * TOKEN_LEN);
        for raw in data.chunks(TOKEN_LEN) {
            let task: usize = std::str::from_utf8(&raw[1..3])
                .expect("ASCII")
                .parse()
                .expect("task number");
            assert_eq!(task % 2, parity, "{s:?} holds another stream's data");
        }
    }
    let chunk = store.read(&left, ReadFrom::Start, ALL).await.expect("read");
    assert!(chunk.up_to_date);
}

/// Concurrent creates of one name make exactly one stream: one `Created`, the rest `Existed`
/// with the same stream id.
pub async fn concurrent_creates_of_one_name_make_one_stream<H: Harness>(h: &H) {
    let store = Arc::new(h.open().await);
    let s = name("raced");
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (store, s) = (Arc::clone(&store), s.clone());
        tasks.push(tokio::spawn(async move {
            store.create(&s, create_req(BINARY)).await.expect("create")
        }));
    }
    let mut created = 0;
    let mut ids = HashSet::new();
    for task in tasks {
        let outcome = task.await.expect("create task");
        if matches!(outcome, CreateOutcome::Created(_)) {
            created += 1;
        }
        ids.insert(outcome.info().stream_id);
    }
    assert_eq!(created, 1);
    assert_eq!(ids.len(), 1);
}

/// A fork created while its source is being deleted either fails (the source was gone
/// first) or keeps the source's data alive, soft-deleted; it never loses the data it inherited.
pub async fn concurrent_fork_and_delete_never_lose_inherited_data<H: Harness>(h: &H) {
    let store = Arc::new(h.open().await);
    for i in 0..300 {
        let (source, fork) = (name(&format!("src-{i}")), name(&format!("fork-{i}")));
        create(&*store, &source, BINARY).await;
        store
            .append(&source, append_req(BINARY, "inherited"))
            .await
            .expect("append");
        let deleter = {
            let (store, source) = (Arc::clone(&store), source.clone());
            tokio::spawn(async move { store.delete(&source).await })
        };
        let forker = {
            let (store, source, fork) = (Arc::clone(&store), source.clone(), fork.clone());
            tokio::spawn(async move { store.create(&fork, fork_req(&source, None, 0)).await })
        };
        deleter
            .await
            .expect("delete task")
            .expect("delete succeeds");
        match forker.await.expect("fork task") {
            Ok(CreateOutcome::Created(_)) => {
                assert_eq!(
                    read_all(&*store, &fork).await,
                    b"inherited",
                    "iteration {i}"
                );
                assert_matches!(store.head(&source).await, Err(Error::Gone));
                store.delete(&fork).await.expect("delete fork");
                assert_matches!(store.head(&source).await, Err(Error::NotFound));
            }
            Err(Error::ForkSourceNotFound | Error::ForkSourceGone) => {
                assert_matches!(store.head(&source).await, Err(Error::NotFound));
            }
            other => panic!("iteration {i}: unexpected fork outcome {other:?}"),
        }
    }
}

/// Reads racing a delete see either the whole stream or `NotFound`, never a partial view
/// or a failure of another kind.
pub async fn reads_racing_a_delete_see_all_or_nothing<H: Harness>(h: &H) {
    let store = Arc::new(h.open().await);
    for i in 0..100 {
        let s = name(&format!("doomed-{i}"));
        create(&*store, &s, BINARY).await;
        store
            .append(&s, append_req(BINARY, "abc"))
            .await
            .expect("append");
        store
            .append(&s, append_req(BINARY, "def"))
            .await
            .expect("append");
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (store, s) = (Arc::clone(&store), s.clone());
                tokio::spawn(async move {
                    loop {
                        match store.read(&s, ReadFrom::Start, ALL).await {
                            Ok(chunk) => assert_eq!(chunk.pieces.concat(), b"abcdef"),
                            Err(Error::NotFound) => return,
                            Err(other) => panic!("read racing a delete failed: {other:?}"),
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        tokio::task::yield_now().await;
        store.delete(&s).await.expect("delete");
        for reader in readers {
            reader.await.expect("reader task");
        }
    }
}

/// The shuffle seed: `DS_CONTRACT_SEED` when set, else taken from the time.
fn seed() -> u64 {
    if let Some(seed) = std::env::var("DS_CONTRACT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return seed;
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1
}

/// Fisher–Yates with xorshift64: enough to scramble arrival order, and replayable.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed.max(1);
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = (state % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}
