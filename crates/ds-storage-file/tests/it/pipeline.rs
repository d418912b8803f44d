//! file-durable's group commit: requests that arrive while the WAL syncer `fdatasync`s wait,
//! and are written together when the sync returns; a committer that writes several batches in
//! one turn writes the later ones while the earlier ones sync, planning them on the pending
//! state; answers wait until a sync covers them. These tests slow the simulated device's WAL
//! flushes (and stream-file writes) down so that a batch is reliably caught mid-sync.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ds_protocol::Expiry;
use ds_storage::rules::ManualClock;
use ds_storage::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, Error, ReadFrom, Storage,
};
use ds_storage_file::io::SimFs;
use ds_storage_file::{Durability, FileOptions, FileStorage};

use crate::support::{append_req, create_req, name, producer_req, read_all};

/// Long enough that a test's next steps surely happen while one sync runs.
const SLOW_SYNC: Duration = Duration::from_millis(300);

fn options() -> FileOptions {
    options_with(Arc::new(ManualClock::new(1_700_000_000_000)))
}

fn options_with(clock: Arc<ManualClock>) -> FileOptions {
    FileOptions {
        clock,
        ..FileOptions::new("/data", Durability::Durable)
    }
}

/// Bytes in the store's WAL segments.
fn wal_bytes(sim: &SimFs) -> usize {
    sim.files()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .map(|p| sim.read_file(p).map_or(0, |d| d.len()))
        .sum()
}

fn stream_files(sim: &SimFs) -> Vec<PathBuf> {
    sim.files()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "dat"))
        .collect()
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..5000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Opens the store with 4 KiB WAL segments, so that a few appends make a rotation due.
async fn open_small_segments(sim: &SimFs) -> FileStorage {
    let opts = FileOptions {
        wal_segment_bytes: 4096,
        ..options()
    };
    FileStorage::open_with_fs(opts, sim.process())
        .await
        .expect("open")
}

async fn open(sim: &SimFs) -> FileStorage {
    FileStorage::open_with_fs(options(), sim.process())
        .await
        .expect("open")
}

/// Closes the store, opens it again from what the simulated disk holds, and checks each
/// stream's content.
async fn check_after_restart(store: FileStorage, sim: &SimFs, expected: &[(&str, &[u8])]) {
    store.close().await;
    let store = open(sim).await;
    for (stream, bytes) in expected {
        assert_content(&store, stream, bytes).await;
    }
    store.close().await;
}

/// Starts a request and returns once its batch is in the WAL (so, with slow flushes, while
/// its sync runs).
async fn written<T>(sim: &SimFs, start: impl FnOnce() -> T) -> T {
    let before = wal_bytes(sim);
    let task = start();
    eventually("the batch is in the WAL", || wal_bytes(sim) > before).await;
    task
}

fn spawn_append(
    store: &FileStorage,
    stream: &str,
    req: AppendRequest,
) -> tokio::task::JoinHandle<ds_storage::Result<AppendOutcome>> {
    let (store, stream) = (store.clone(), name(stream));
    tokio::spawn(async move { store.append(&stream, req).await })
}

async fn assert_content(store: &FileStorage, stream: &str, expected: &[u8]) {
    let got = read_all(store, &name(stream)).await.expect("read");
    assert_eq!(got, expected, "{stream}");
}

async fn create_with(store: &FileStorage, stream: &str, body: &'static [u8]) {
    let req = CreateRequest {
        body: body.into(),
        ..create_req()
    };
    store.create(&name(stream), req).await.expect("create");
}

/// How long a WAL write takes in the tests that catch a second batch being planned and
/// written while the first one syncs.
const SLOW_WRITE: Duration = Duration::from_millis(200);

/// Slows WAL writes down (and syncs more): a request that arrives while the first batch is
/// being written waits in the queue, and the same turn of committing plans it on the first
/// batch's pending state and writes it while the first one syncs.
fn slow_wal(sim: &SimFs) {
    sim.slow_syncs(Some((".wal", SLOW_SYNC * 2)));
    sim.slow_writes(Some((".wal", SLOW_WRITE)));
}

/// Starts an append to `first`, then one to `second` while the first is being written (see
/// [`slow_wal`]). Returns once both are in the WAL.
async fn two_pending(
    store: &FileStorage,
    sim: &SimFs,
    (first, first_req): (&'static str, AppendRequest),
    (second, second_req): (&'static str, AppendRequest),
) -> (
    tokio::task::JoinHandle<ds_storage::Result<AppendOutcome>>,
    tokio::task::JoinHandle<ds_storage::Result<AppendOutcome>>,
) {
    sim.slow_syncs(Some((".wal", SLOW_SYNC * 2)));
    sim.slow_writes(Some((".dat", SLOW_WRITE)));
    let before = wal_bytes(sim);
    let first = spawn_append(store, first, first_req);
    tokio::time::sleep(SLOW_WRITE / 4).await;
    assert_eq!(
        wal_bytes(sim),
        before,
        "the first batch's stream file is being written"
    );
    let second = spawn_append(store, second, second_req);
    eventually("the first batch is in the WAL", || wal_bytes(sim) > before).await;
    let one = wal_bytes(sim);
    eventually("the second batch is in the WAL", || wal_bytes(sim) > one).await;
    sim.slow_writes(None);
    (first, second)
}

/// A committer with two batches to write writes the second while the first one syncs (the
/// WAL grows before the first sync returns); neither is visible to readers or answered before
/// a sync covers it, and the second is answered after the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_written_while_the_one_before_it_syncs() {
    let sim = SimFs::new(41);
    let store = open(&sim).await;
    create_with(&store, "one", b"1").await;
    create_with(&store, "two", b"2").await;
    let (first, second) = two_pending(
        &store,
        &sim,
        ("one", append_req("aaaa")),
        ("two", append_req("bbbb")),
    )
    .await;
    assert!(
        !first.is_finished(),
        "the second batch was written while the first one's sync ran"
    );
    // Written, not yet durable: readers do not see either.
    assert_content(&store, "one", b"1").await;
    assert_content(&store, "two", b"2").await;

    let first = first.await.expect("task").expect("first append");
    assert!(matches!(first, AppendOutcome::Appended { .. }));
    assert!(
        !second.is_finished(),
        "the second batch waits for a sync that started after it was written"
    );
    assert_content(&store, "one", b"1aaaa").await;
    let second = second.await.expect("task").expect("second append");
    assert!(matches!(second, AppendOutcome::Appended { .. }));
    assert_content(&store, "two", b"2bbbb").await;
    sim.slow_syncs(None);
    check_after_restart(store, &sim, &[("one", b"1aaaa"), ("two", b"2bbbb")]).await;
}

/// Requests that arrive while a sync runs are not written during it: they wait, and are
/// written together, as one batch, when it returns (one WAL write for everything that arrived
/// during a sync), then synced by the next sync before they are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_arrive_during_a_sync_are_written_together_after_it() {
    let sim = SimFs::new(46);
    let store = open(&sim).await;
    for s in ["one", "two", "three"] {
        create_with(&store, s, b"").await;
    }
    sim.slow_syncs(Some((".wal", SLOW_SYNC)));
    let first = written(&sim, || spawn_append(&store, "one", append_req("1"))).await;
    let during = wal_bytes(&sim);
    let batches = store.commit_stats().batches;
    let second = spawn_append(&store, "two", append_req("2"));
    let third = spawn_append(&store, "three", append_req("3"));
    tokio::time::sleep(SLOW_SYNC / 3).await;
    assert_eq!(
        wal_bytes(&sim),
        during,
        "nothing is written while the sync runs"
    );
    assert!(!first.is_finished() && !second.is_finished() && !third.is_finished());
    assert!(matches!(
        first.await.expect("task"),
        Ok(AppendOutcome::Appended { .. })
    ));
    eventually("the waiting requests are in the WAL", || {
        wal_bytes(&sim) > during
    })
    .await;
    assert_eq!(
        store.commit_stats().batches,
        batches + 1,
        "one batch for both"
    );
    assert!(
        !second.is_finished() && !third.is_finished(),
        "their sync runs"
    );
    assert_content(&store, "two", b"").await;
    for task in [second, third] {
        assert!(matches!(
            task.await.expect("task"),
            Ok(AppendOutcome::Appended { .. })
        ));
    }
    sim.slow_syncs(None);
    check_after_restart(
        store,
        &sim,
        &[("one", b"1"), ("two", b"2"), ("three", b"3")],
    )
    .await;
}

/// Many requests that arrive while a sync runs do not all wait for it: once enough are queued
/// (16), their caller writes them during the sync, and the syncer's next sync starts without
/// planning and writing them first. They are still answered, and visible to readers, only
/// once a sync covers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_queue_during_a_sync_is_written_during_it() {
    const WRITERS: usize = 64;
    let sim = SimFs::new(47);
    let store = open(&sim).await;
    let names: Vec<String> = (0..=WRITERS).map(|i| format!("s{i}")).collect();
    for s in &names {
        create_with(&store, s, b"").await;
    }
    sim.slow_syncs(Some((".wal", SLOW_SYNC * 3)));
    let first = written(&sim, || spawn_append(&store, "s0", append_req("0"))).await;
    let during = wal_bytes(&sim);
    let waiting: Vec<_> = names[1..]
        .iter()
        .map(|s| spawn_append(&store, s, append_req("x")))
        .collect();
    eventually("the queued requests are in the WAL", || {
        wal_bytes(&sim) > during
    })
    .await;
    assert!(
        !first.is_finished(),
        "they were written while the first sync ran"
    );
    assert_content(&store, "s1", b"").await;
    sim.slow_syncs(None);
    assert!(matches!(
        first.await.expect("task"),
        Ok(AppendOutcome::Appended { .. })
    ));
    for task in waiting {
        assert!(matches!(
            task.await.expect("task"),
            Ok(AppendOutcome::Appended { .. })
        ));
    }
    let mut expected: Vec<(&str, &[u8])> = vec![("s0", b"0")];
    expected.extend(names[1..].iter().map(|s| (s.as_str(), &b"x"[..])));
    check_after_restart(store, &sim, &expected).await;
}

/// A producer's retry of an append that is written but not yet durable is a duplicate, and
/// is answered only after the original is durable: answering it first would acknowledge data
/// a power loss could still take. A power loss at that point takes both: the original was
/// never acknowledged, and neither was the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_of_a_pending_append_waits_for_it() {
    let sim = SimFs::new(42);
    let store = open(&sim).await;
    create_with(&store, "s", b"").await;
    sim.slow_syncs(Some((".wal", SLOW_SYNC)));
    let send = |seq| spawn_append(&store, "s", producer_req("once", "p", 0, seq));
    let original = written(&sim, || send(0)).await;
    let retry = send(0);
    tokio::time::sleep(SLOW_SYNC / 3).await;
    assert!(!original.is_finished(), "the original's sync is running");
    assert!(
        !retry.is_finished(),
        "the retry is not answered before the original is durable"
    );
    let original = original.await.expect("task").expect("original");
    assert!(matches!(original, AppendOutcome::Appended { .. }));
    let retry = retry.await.expect("task").expect("retry");
    assert!(
        matches!(retry, AppendOutcome::Duplicate { .. }),
        "{retry:?}"
    );
    sim.slow_syncs(None);
    assert_content(&store, "s", b"once").await;

    // Again, and the power goes out during the original's sync.
    sim.slow_syncs(Some((".wal", SLOW_SYNC)));
    let original = written(&sim, || send(1)).await;
    let retry = send(1);
    tokio::time::sleep(SLOW_SYNC / 3).await;
    sim.power_loss();
    assert!(original.await.expect("task").is_err());
    assert!(retry.await.expect("task").is_err());
    drop(store);
    sim.slow_syncs(None);
    let store = open(&sim).await;
    let data = read_all(&store, &name("s")).await.expect("read");
    assert!(
        data == b"once" || data == b"onceonce",
        "at most once: {:?}",
        String::from_utf8_lossy(&data)
    );
    store.close().await;
}

/// A failed sync fails the batch it covered and every batch written behind it, and stops the
/// store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_fails_every_pending_batch() {
    let sim = SimFs::new(43);
    let store = open(&sim).await;
    create_with(&store, "one", b"").await;
    create_with(&store, "two", b"").await;
    let (first, second) = two_pending(
        &store,
        &sim,
        ("one", append_req("x")),
        ("two", append_req("x")),
    )
    .await;
    sim.fail_syncs(Some(5));
    for (what, task) in [("first", first), ("second", second)] {
        let outcome = task.await.expect("task");
        assert!(
            matches!(outcome, Err(Error::Backend { .. })),
            "{what}: {outcome:?}"
        );
    }
    assert!(!store.is_ready());
    assert!(matches!(
        store.append(&name("one"), append_req("later")).await,
        Err(Error::Backend { .. })
    ));
}

/// A batch that runs out of space while another is pending is taken back and answered at
/// once; the pending one is unaffected, and the stream takes later appends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_behind_a_pending_batch_takes_back_only_its_own() {
    let sim = SimFs::new(44);
    let store = open(&sim).await;
    create_with(&store, "one", b"1").await;
    let files = stream_files(&sim);
    create_with(&store, "two", b"2").await;
    let two = stream_files(&sim)
        .into_iter()
        .find(|p| !files.contains(p))
        .expect("the second stream's file");
    // The second append waits while the first is written, is planned on the first's pending
    // state in the same turn, and finds no room while the first one syncs.
    slow_wal(&sim);
    sim.refuse_writes_to(Some(
        two.file_name().and_then(|n| n.to_str()).expect("name"),
    ));
    let first = spawn_append(&store, "one", append_req("aaaa"));
    tokio::time::sleep(SLOW_WRITE / 4).await;
    let full = store.append(&name("two"), append_req("bbbb")).await;
    assert!(matches!(full, Err(Error::StorageFull { .. })), "{full:?}");
    assert!(!first.is_finished(), "answered while the first batch syncs");
    sim.slow_writes(None);
    sim.refuse_writes_to(None);
    let first = first.await.expect("task").expect("first");
    assert!(matches!(first, AppendOutcome::Appended { .. }));
    sim.slow_syncs(None);
    store
        .append(&name("two"), append_req("cccc"))
        .await
        .expect("after the disk has room");
    assert_content(&store, "one", b"1aaaa").await;
    assert_content(&store, "two", b"2cccc").await;
    check_after_restart(store, &sim, &[("one", b"1aaaa"), ("two", b"2cccc")]).await;
}

/// Many writers, slow flushes and small WAL segments: rotations wait for the pending batches,
/// and every append is there exactly once, in order, after a restart. Creates and deletes in
/// pending batches are seen by the batches behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_wait_for_pending_batches_and_lose_nothing() {
    let sim = SimFs::new(45);
    let store = open_small_segments(&sim).await;
    sim.slow_syncs(Some((".wal", Duration::from_millis(3))));
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = name(&format!("s{t}"));
                let scratch = name(&format!("scratch{t}"));
                store.create(&stream, create_req()).await.expect("create");
                for i in 0..40u64 {
                    let body = format!("{t}:{i};");
                    let out = store
                        .append(&stream, producer_req(body, "p", 0, i))
                        .await
                        .expect("append");
                    assert!(matches!(out, AppendOutcome::Appended { .. }), "{out:?}");
                    if i % 10 == 0 {
                        store.create(&scratch, create_req()).await.expect("scratch");
                        store.delete(&scratch).await.expect("delete scratch");
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    assert!(
        store.commit_stats().fsyncs < store.commit_stats().batches,
        "some syncs covered more than one batch"
    );
    sim.slow_syncs(None);
    store.close().await;
    assert!(
        sim.files()
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .count()
            <= 2,
        "old segments were checkpointed away: {:?}",
        sim.files()
    );
    let store = open_small_segments(&sim).await;
    for t in 0..8 {
        let expected = (0..40).fold(String::new(), |mut s, i| {
            let _ = write!(s, "{t}:{i};");
            s
        });
        let got = read_all(&store, &name(&format!("s{t}")))
            .await
            .expect("read");
        assert_eq!(String::from_utf8_lossy(&got), expected);
        assert!(matches!(
            store.head(&name(&format!("scratch{t}"))).await,
            Err(Error::NotFound)
        ));
    }
    store.close().await;
}

/// Batches planned on pending ones: a second create of a name whose create is pending finds
/// it (and is answered only once it is durable); an append planned behind a pending delete
/// finds the stream gone (answered once the delete is durable), and the name can then be
/// created again, which a restart keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_plan_on_the_creates_and_deletes_pending_before_them() {
    let sim = SimFs::new(48);
    let store = open(&sim).await;
    create_with(&store, "other", b"").await;
    slow_wal(&sim);
    let create = |body: &'static [u8]| {
        let store = store.clone();
        tokio::spawn(async move {
            let req = CreateRequest {
                body: body.into(),
                ..create_req()
            };
            store.create(&name("x"), req).await
        })
    };
    let first = create(b"old");
    tokio::time::sleep(SLOW_WRITE / 4).await;
    let second = create(b"old");
    tokio::time::sleep(SLOW_WRITE).await;
    assert!(!first.is_finished() && !second.is_finished());
    assert!(matches!(
        first.await.expect("task").expect("create"),
        CreateOutcome::Created(_)
    ));
    assert!(matches!(
        second.await.expect("task").expect("create again"),
        CreateOutcome::Existed(_)
    ));

    // Delete, and append while the delete is being written.
    let delete = tokio::spawn({
        let store = store.clone();
        async move { store.delete(&name("x")).await }
    });
    tokio::time::sleep(SLOW_WRITE / 4).await;
    let append = spawn_append(&store, "x", append_req("late"));
    tokio::time::sleep(SLOW_WRITE).await;
    assert!(
        !append.is_finished(),
        "not answered before the delete is durable"
    );
    delete.await.expect("task").expect("delete");
    let late = append.await.expect("task");
    assert!(matches!(late, Err(Error::NotFound)), "{late:?}");
    sim.slow_writes(None);
    assert!(matches!(
        create(b"new").await.expect("task").expect("re-create"),
        CreateOutcome::Created(_)
    ));
    assert_content(&store, "x", b"new").await;
    sim.slow_syncs(None);
    store.close().await;
    let store = FileStorage::open_with_fs(options(), sim.process())
        .await
        .expect("reopen");
    assert_content(&store, "x", b"new").await;
    store.close().await;
}

/// A request larger than a whole batch, held back while a rotation waits for the pending
/// batch, is committed once that batch's sync returns (a review found the committer thread
/// spinning there: the full held batch kept it from taking the sync's report).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_a_batch_held_for_a_rotation_is_committed() {
    let sim = SimFs::new(49);
    let store = open_small_segments(&sim).await;
    create_with(&store, "big", b"").await;
    sim.slow_syncs(Some((".wal", SLOW_SYNC)));
    // Fills the segment: the rotation waits for this batch's sync.
    let first = written(&sim, || {
        spawn_append(&store, "big", append_req(vec![1u8; 5000]))
    })
    .await;
    let big = spawn_append(&store, "big", append_req(vec![2u8; 9 << 20]));
    let answered =
        tokio::time::timeout(Duration::from_secs(30), async { (first.await, big.await) })
            .await
            .expect("both appends answered");
    assert!(matches!(
        answered.0.expect("task"),
        Ok(AppendOutcome::Appended { .. })
    ));
    assert!(matches!(
        answered.1.expect("task"),
        Ok(AppendOutcome::Appended { .. })
    ));
    sim.slow_syncs(None);
    let len = read_all(&store, &name("big")).await.expect("read").len();
    assert_eq!(len, 5000 + (9 << 20));
    store.close().await;
}

/// A TTL stream read while a batch that wrote to it is pending lives on from that read: a
/// sweep planned behind the pending batch judges its expiry by the newer of the two access
/// times, not by the pending batch's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_behind_a_pending_write_counts_reads_since() {
    let sim = SimFs::new(47);
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let store = FileStorage::open_with_fs(options_with(Arc::clone(&clock)), sim.process())
        .await
        .expect("open");
    let req = CreateRequest {
        expiry: Expiry::Ttl(10),
        ..create_req()
    };
    store.create(&name("t"), req).await.expect("create");
    slow_wal(&sim);
    let append = spawn_append(&store, "t", append_req("a"));
    tokio::time::sleep(SLOW_WRITE / 4).await;
    // The sweep below waits while the append is written, and is planned on its pending state.
    // Sooner than the stream's touch interval (1 s), so the read records no access time of its
    // own: only the installed state knows of it.
    clock.advance_ms(500);
    store
        .read(&name("t"), ReadFrom::Start, 1024)
        .await
        .expect("read keeps the stream alive");
    // 10.25 s after the append, 9.75 s after the read: live.
    clock.advance_ms(9_750);
    let swept = store.sweep_expired().await.expect("sweep");
    assert_eq!(swept, 0, "the read 9.75 s ago keeps the stream");
    append.await.expect("task").expect("append");
    sim.slow_writes(None);
    sim.slow_syncs(None);
    assert_content(&store, "t", b"a").await;
    store.close().await;
}

/// Reads the stream on another thread when woken, and waits (up to 2 s) for that read.
struct ReadOnWake {
    store: FileStorage,
    runtime: tokio::runtime::Handle,
    /// Whether the read finished while the wake was running (`None`: never woken).
    read_during_wake: std::sync::Mutex<Option<bool>>,
}

impl std::task::Wake for ReadOnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (store, runtime) = (self.store.clone(), self.runtime.clone());
        std::thread::spawn(move || {
            let read = runtime.block_on(async { read_all(&store, &name("s")).await });
            let _ = done_tx.send(read.is_ok());
        });
        let done = done_rx
            .recv_timeout(Duration::from_secs(2))
            .unwrap_or(false);
        *self
            .read_during_wake
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(done);
    }
}

/// A live reader woken by a commit can read the stream at once: the committer sends the new
/// tail after it releases the stream's lock. (Sent under it, a woken reader's first read
/// waited for the last of the stream's readers to be woken, and with thousands of SSE
/// subscribers so did the async workers they ran on.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_readers_are_woken_outside_the_streams_lock() {
    use std::future::Future as _;
    let sim = SimFs::new(60);
    let store = open(&sim).await;
    create_with(&store, "s", b"a").await;
    let mut rx = store.subscribe(&name("s")).await.expect("subscribe");
    let reader = Arc::new(ReadOnWake {
        store: store.clone(),
        runtime: tokio::runtime::Handle::current(),
        read_during_wake: std::sync::Mutex::new(None),
    });
    let waker = std::task::Waker::from(Arc::clone(&reader));
    let mut changed = Box::pin(rx.changed());
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(changed.as_mut().poll(&mut cx).is_pending(), "no change yet");
    store
        .append(&name("s"), append_req("b"))
        .await
        .expect("append");
    let outcome = *reader
        .read_during_wake
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    assert_eq!(
        outcome,
        Some(true),
        "the woken reader read the stream while it was being woken"
    );
    drop(changed);
    assert_content(&store, "s", b"ab").await;
    store.close().await;
}
