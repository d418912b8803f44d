//! [`Storage::export_meta`]: what a transfer export needs beyond `head` (fork point, first own
//! position, writer state), the same on every backend and across a restart; and what an import
//! needs: [`Storage::restore_writer`], and byte reads that keep append boundaries.

use ds_protocol::{Offset, StreamName};

use super::Harness;
use super::support::{
    ALL, TEXT, append, append_req, appended, close_req, create, created, fork_req, name,
    producer_req, read_all, skip,
};
use crate::rules::{ProducerState, WriterState};
use crate::{AppendOutcome, AppendRequest, Error, ForkPoint, ProducerAck, ReadFrom, Storage};

/// A source with a `Stream-Seq` append and two producer appends, and a closed fork of it at
/// `after "bbb"` plus one byte, with one record of its own. Returns the fork offset.
async fn setup<S: Storage>(store: &S, source: &StreamName, fork: &StreamName) -> Offset {
    create(store, source, TEXT).await;
    appended(
        store
            .append(
                source,
                AppendRequest {
                    stream_seq: Some("0001".to_owned()),
                    ..append_req(TEXT, "aaa")
                },
            )
            .await,
    );
    let after_b = appended(
        store
            .append(source, producer_req(TEXT, "bbb", "p", 1, 0))
            .await,
    );
    appended(
        store
            .append(source, producer_req(TEXT, "ccc", "p", 1, 1))
            .await,
    );
    created(store.create(fork, fork_req(source, Some(after_b), 1)).await);
    append(store, fork, TEXT, "ddd").await;
    appended(store.append(fork, close_req()).await);
    after_b
}

/// The source reports no fork, base zero, its producers and `Stream-Seq`; the fork reports its
/// fork point as requested, no inherited writer state, its closure, and a base from which a read
/// returns only its own records.
pub async fn export_meta_reports_fork_point_base_and_writer_state<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    let after_b = setup(&store, &source, &fork).await;

    let src = store.export_meta(&source).await.expect("export_meta");
    assert_eq!(src.info, store.head(&source).await.expect("head"));
    assert_eq!(src.base, Offset::ZERO);
    assert_eq!(src.fork, None);
    assert!(!src.writer.closed);
    assert_eq!(src.writer.last_stream_seq.as_deref(), Some("0001"));
    assert_eq!(
        src.writer.producers.get("p"),
        Some(&ProducerState {
            epoch: 1,
            last_seq: 1
        })
    );

    let f = store.export_meta(&fork).await.expect("export_meta");
    assert_eq!(f.info, store.head(&fork).await.expect("head"));
    assert_eq!(
        f.fork,
        Some(ForkPoint {
            source: source.clone(),
            offset: after_b,
            sub_offset: 1,
        })
    );
    assert!(f.writer.closed);
    assert!(f.writer.producers.is_empty(), "{:?}", f.writer);
    assert_eq!(f.writer.last_stream_seq, None);
    let own = store
        .read(&fork, ReadFrom::At(f.base), ALL)
        .await
        .expect("read from base");
    assert_eq!(own.pieces.concat(), b"ddd");
    assert_eq!(own.next, f.info.next);

    assert!(matches!(
        store.export_meta(&name("missing")).await,
        Err(Error::NotFound)
    ));
}

/// `export_meta` reports the same after a restart.
pub async fn export_meta_survives_restart<H: Harness>(h: &H) {
    if !h.capabilities().persistent {
        skip(
            "export::export_meta_survives_restart",
            "the backend keeps nothing across a restart (persistent: false)",
        );
        return;
    }
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    setup(&store, &source, &fork).await;
    let before = (
        store.export_meta(&source).await.expect("source"),
        store.export_meta(&fork).await.expect("fork"),
    );
    let store = h.reopen(store).await;
    let after = (
        store.export_meta(&source).await.expect("source"),
        store.export_meta(&fork).await.expect("fork"),
    );
    assert_eq!(before, after);
}

/// The writer state an import restores in the cases below: producer `p` at epoch 3 seq 7,
/// producer `q` at epoch 0 seq 0, last `Stream-Seq` `0009`.
fn restored_state(closed_by: Option<(&str, u64, u64)>) -> WriterState {
    WriterState {
        closed: closed_by.is_some(),
        closed_by: closed_by.map(|(id, epoch, seq)| (id.to_owned(), epoch, seq)),
        last_stream_seq: Some("0009".to_owned()),
        producers: [
            (
                "p".to_owned(),
                ProducerState {
                    epoch: 3,
                    last_seq: 7,
                },
            ),
            (
                "q".to_owned(),
                ProducerState {
                    epoch: 0,
                    last_seq: 0,
                },
            ),
        ]
        .into_iter()
        .collect(),
    }
}

/// Restored producers dedup retries and demand the next sequence number, a restored
/// `Stream-Seq` rejects regressions, and `export_meta` reports exactly what was restored; it
/// replaces the stream's previous producers rather than merging with them.
pub async fn restore_writer_applies_producers_and_stream_seq<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("restored");
    create(&store, &s, TEXT).await;
    appended(store.append(&s, producer_req(TEXT, "x", "old", 0, 0)).await);
    let tail = append(&store, &s, TEXT, "data").await;
    store
        .restore_writer(&s, restored_state(None))
        .await
        .expect("restore_writer");
    assert_eq!(
        store.export_meta(&s).await.expect("meta").writer,
        restored_state(None)
    );
    assert_eq!(
        store.head(&s).await.expect("head").next,
        tail,
        "no data written"
    );

    assert_matches!(
        store.append(&s, producer_req(TEXT, "dup", "p", 3, 7)).await,
        Ok(AppendOutcome::Duplicate { producer, .. }) if producer == ProducerAck { epoch: 3, seq: 7 }
    );
    assert_matches!(
        store.append(&s, producer_req(TEXT, "gap", "p", 3, 9)).await,
        Err(Error::SeqGap {
            expected: 8,
            received: 9
        })
    );
    assert_matches!(
        store
            .append(&s, producer_req(TEXT, "stale", "p", 2, 0))
            .await,
        Err(Error::StaleEpoch { current: 3 })
    );
    appended(
        store
            .append(&s, producer_req(TEXT, "next", "p", 3, 8))
            .await,
    );
    // The producer the stream had before the restore is gone: it must start again at 0.
    assert_matches!(
        store
            .append(&s, producer_req(TEXT, "old", "old", 0, 1))
            .await,
        Err(Error::SeqGap {
            expected: 0,
            received: 1
        })
    );
    assert_matches!(
        store
            .append(
                &s,
                AppendRequest {
                    stream_seq: Some("0009".to_owned()),
                    ..append_req(TEXT, "seq")
                },
            )
            .await,
        Err(Error::SeqRegression { .. })
    );
    assert_eq!(read_all(&store, &s).await, b"xdatanext");
}

/// Restoring a closed state closes the stream (live readers see it), keeps the closing producer
/// tuple so a retry of the closing request is a duplicate, and a closed stream cannot be
/// reopened by restoring an open state. Restoring onto a missing stream is `NotFound`.
pub async fn restore_writer_closes_and_never_reopens<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("restored-closed");
    create(&store, &s, TEXT).await;
    let tail = append(&store, &s, TEXT, "all").await;
    let mut live = store.subscribe(&s).await.expect("subscribe");
    store
        .restore_writer(&s, restored_state(Some(("p", 3, 8))))
        .await
        .expect("restore_writer");
    assert!(
        live.borrow_and_update().closed,
        "live readers see the closure"
    );
    let info = store.head(&s).await.expect("head");
    assert!(info.closed);
    assert_eq!(info.next, tail);
    assert_matches!(
        store
            .append(
                &s,
                AppendRequest {
                    close: true,
                    ..producer_req(TEXT, "", "p", 3, 8)
                }
            )
            .await,
        Ok(AppendOutcome::Duplicate { .. })
    );
    assert_matches!(
        store.append(&s, append_req(TEXT, "more")).await,
        Err(Error::Closed { next }) if next == tail
    );
    assert_matches!(
        store.restore_writer(&s, restored_state(None)).await,
        Err(Error::Closed { next }) if next == tail
    );
    assert!(store.head(&s).await.expect("head").closed, "still closed");
    assert_matches!(
        store
            .restore_writer(&name("missing"), restored_state(None))
            .await,
        Err(Error::NotFound)
    );
}

/// What `restore_writer` applied is still there after a restart.
pub async fn restore_writer_survives_restart<H: Harness>(h: &H) {
    if !h.capabilities().persistent {
        skip(
            "export::restore_writer_survives_restart",
            "the backend keeps nothing across a restart (persistent: false)",
        );
        return;
    }
    let store = h.open().await;
    let (open, closed) = (name("restored-open"), name("restored-closed"));
    create(&store, &open, TEXT).await;
    create(&store, &closed, TEXT).await;
    append(&store, &closed, TEXT, "x").await;
    store
        .restore_writer(&open, restored_state(None))
        .await
        .expect("restore open");
    store
        .restore_writer(&closed, restored_state(Some(("q", 0, 1))))
        .await
        .expect("restore closed");
    let store = h.reopen(store).await;
    assert_eq!(
        store.export_meta(&open).await.expect("meta").writer,
        restored_state(None)
    );
    assert_eq!(
        store.export_meta(&closed).await.expect("meta").writer,
        restored_state(Some(("q", 0, 1)))
    );
    assert_matches!(
        store
            .append(&open, producer_req(TEXT, "dup", "p", 3, 7))
            .await,
        Ok(AppendOutcome::Duplicate { .. })
    );
}

/// A byte stream's read hands out one piece per append (cut short only where the byte budget
/// ends mid-append), so an export can re-create the same appends and with them the same
/// offsets.
pub async fn byte_reads_keep_append_boundaries<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("boundaries");
    create(&store, &s, TEXT).await;
    for body in ["aa", "bbb", "c", "dddd"] {
        append(&store, &s, TEXT, body).await;
    }
    let all = store.read(&s, ReadFrom::Start, ALL).await.expect("read");
    assert_eq!(all.pieces, ["aa", "bbb", "c", "dddd"].map(str::as_bytes));
    let part = store.read(&s, ReadFrom::Start, 4).await.expect("read");
    assert_eq!(part.pieces, ["aa", "bb"].map(str::as_bytes));
    assert_eq!(
        part.next,
        Offset::new(1, 4),
        "the cut is inside the second append"
    );
    let rest = store
        .read(&s, ReadFrom::At(part.next), ALL)
        .await
        .expect("read");
    assert_eq!(rest.pieces, ["b", "c", "dddd"].map(str::as_bytes));
}
