//! Idempotent producers (PROTOCOL.md section 5.2.1).

use super::Harness;
use super::support::{JSON, TEXT, create, name, producer_req, read_all};
use crate::{AppendOutcome, AppendRequest, Error, ProducerAck, Storage};

fn ack(epoch: u64, seq: u64) -> ProducerAck {
    ProducerAck { epoch, seq }
}

fn req(body: &'static str, id: &str, epoch: u64, seq: u64) -> AppendRequest {
    producer_req(TEXT, body, id, epoch, seq)
}

fn closing(body: &'static str, id: &str, epoch: u64, seq: u64) -> AppendRequest {
    AppendRequest {
        close: true,
        ..req(body, id, epoch, seq)
    }
}

/// A producer the stream has not seen must start at seq 0: anything else is a gap from 0.
pub async fn producer_first_append_must_be_seq_zero<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("first-seq");
    create(&store, &s, TEXT).await;
    assert_matches!(
        store.append(&s, req("a", "p", 0, 1)).await,
        Err(Error::SeqGap {
            expected: 0,
            received: 1
        })
    );
    assert_matches!(
        store.append(&s, req("a", "p", 0, 0)).await,
        Ok(AppendOutcome::Appended { producer, .. }) if producer == Some(ack(0, 0))
    );
}

/// Sequential appends are accepted, each acknowledged with its own seq.
pub async fn producer_sequential_appends_are_accepted<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("sequential");
    create(&store, &s, TEXT).await;
    let mut last = store.head(&s).await.expect("head").next;
    for (seq, body) in [(0, "a"), (1, "b"), (2, "c")] {
        let outcome = store.append(&s, req(body, "p", 0, seq)).await;
        let Ok(AppendOutcome::Appended {
            next,
            closed: false,
            producer,
        }) = outcome
        else {
            panic!("seq {seq}: expected Appended, got {outcome:?}");
        };
        assert_eq!(producer, Some(ack(0, seq)));
        assert!(next > last);
        last = next;
    }
    assert_eq!(read_all(&store, &s).await, b"abc");
}

/// A new producer may start at any epoch, as long as the seq is 0.
pub async fn producer_may_start_at_any_epoch<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("any-epoch");
    create(&store, &s, TEXT).await;
    assert_matches!(
        store.append(&s, req("a", "p", 7, 0)).await,
        Ok(AppendOutcome::Appended { producer, .. }) if producer == Some(ack(7, 0))
    );
    assert_matches!(
        store.append(&s, req("b", "p", 6, 1)).await,
        Err(Error::StaleEpoch { current: 7 })
    );
}

/// A retry of an accepted seq is `Duplicate`, answering with the highest accepted seq (not
/// the request's) and the current tail.
pub async fn producer_duplicate_returns_highest_accepted_seq<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("duplicate");
    create(&store, &s, TEXT).await;
    for (seq, body) in [(0, "a"), (1, "b"), (2, "c")] {
        store
            .append(&s, req(body, "p", 0, seq))
            .await
            .expect("append");
    }
    let tail = store.head(&s).await.expect("head").next;
    for seq in [0, 1, 2] {
        assert_matches!(
            store.append(&s, req("x", "p", 0, seq)).await,
            Ok(AppendOutcome::Duplicate { next, closed: false, producer: ProducerAck { epoch: 0, seq: 2 } })
                if next == tail
        );
    }
}

/// A duplicate writes nothing: the data appears exactly once.
pub async fn producer_duplicate_does_not_duplicate_data<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("no-dup-data");
    create(&store, &s, TEXT).await;
    store
        .append(&s, req("once", "p", 0, 0))
        .await
        .expect("append");
    let tail = store.head(&s).await.expect("head").next;
    for _ in 0..3 {
        assert_matches!(
            store.append(&s, req("once", "p", 0, 0)).await,
            Ok(AppendOutcome::Duplicate { .. })
        );
    }
    assert_eq!(read_all(&store, &s).await, b"once");
    assert_eq!(store.head(&s).await.expect("head").next, tail);
}

/// An epoch older than the producer's current one is fenced with `StaleEpoch`.
pub async fn producer_stale_epoch_is_fenced<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("stale");
    create(&store, &s, TEXT).await;
    store.append(&s, req("a", "p", 0, 0)).await.expect("append");
    store
        .append(&s, req("b", "p", 1, 0))
        .await
        .expect("epoch bump");
    assert_matches!(
        store.append(&s, req("zombie", "p", 0, 1)).await,
        Err(Error::StaleEpoch { current: 1 })
    );
    assert_matches!(
        store.append(&s, req("zombie", "p", 0, 0)).await,
        Err(Error::StaleEpoch { current: 1 })
    );
    assert_eq!(read_all(&store, &s).await, b"ab");
}

/// A seq past the next expected one is a gap, reporting both numbers, and writes nothing.
pub async fn producer_seq_gap_is_rejected<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("gap");
    create(&store, &s, TEXT).await;
    store.append(&s, req("a", "p", 0, 0)).await.expect("append");
    store.append(&s, req("b", "p", 0, 1)).await.expect("append");
    assert_matches!(
        store.append(&s, req("d", "p", 0, 3)).await,
        Err(Error::SeqGap {
            expected: 2,
            received: 3
        })
    );
    assert_matches!(
        store.append(&s, req("c", "p", 0, 2)).await,
        Ok(AppendOutcome::Appended { producer, .. }) if producer == Some(ack(0, 2))
    );
    assert_eq!(read_all(&store, &s).await, b"abc");
}

/// A higher epoch must start at seq 0.
pub async fn producer_epoch_bump_must_start_at_seq_zero<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("bump-nonzero");
    create(&store, &s, TEXT).await;
    store.append(&s, req("a", "p", 0, 0)).await.expect("append");
    assert_matches!(
        store.append(&s, req("b", "p", 1, 1)).await,
        Err(Error::EpochSeqNotZero { seq: 1 })
    );
    assert_eq!(read_all(&store, &s).await, b"a");
}

/// A higher epoch at seq 0 is accepted and restarts the sequence.
pub async fn producer_epoch_bump_resets_sequence<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("bump");
    create(&store, &s, TEXT).await;
    for seq in 0..3 {
        store
            .append(&s, req("a", "p", 0, seq))
            .await
            .expect("append");
    }
    assert_matches!(
        store.append(&s, req("b", "p", 1, 0)).await,
        Ok(AppendOutcome::Appended { producer, .. }) if producer == Some(ack(1, 0))
    );
    assert_matches!(
        store.append(&s, req("c", "p", 1, 1)).await,
        Ok(AppendOutcome::Appended { producer, .. }) if producer == Some(ack(1, 1))
    );
    assert_matches!(
        store.append(&s, req("x", "p", 1, 0)).await,
        Ok(AppendOutcome::Duplicate {
            producer: ProducerAck { epoch: 1, seq: 1 },
            ..
        })
    );
    assert_eq!(read_all(&store, &s).await, b"aaabc");
}

/// Producers on one stream keep separate epochs and sequences.
pub async fn producers_are_independent<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("independent");
    create(&store, &s, TEXT).await;
    store
        .append(&s, req("a", "p1", 0, 0))
        .await
        .expect("append");
    store
        .append(&s, req("b", "p2", 0, 0))
        .await
        .expect("append");
    store
        .append(&s, req("c", "p1", 0, 1))
        .await
        .expect("append");
    store
        .append(&s, req("d", "p2", 3, 0))
        .await
        .expect("append");
    assert_matches!(
        store.append(&s, req("e", "p1", 0, 2)).await,
        Ok(AppendOutcome::Appended { producer, .. }) if producer == Some(ack(0, 2))
    );
    assert_matches!(
        store.append(&s, req("x", "p2", 3, 0)).await,
        Ok(AppendOutcome::Duplicate {
            producer: ProducerAck { epoch: 3, seq: 0 },
            ..
        })
    );
    assert_eq!(read_all(&store, &s).await, b"abcde");
}

/// A rejected append (wrong content type, invalid JSON) does not consume the producer's seq.
pub async fn producer_rejected_append_does_not_advance_state<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("rejected");
    create(&store, &s, JSON).await;
    assert_matches!(
        store.append(&s, producer_req(TEXT, "1", "p", 0, 0)).await,
        Err(Error::ContentTypeMismatch { .. })
    );
    assert_matches!(
        store
            .append(&s, producer_req(JSON, "{bad", "p", 0, 0))
            .await,
        Err(Error::InvalidJson(_))
    );
    assert_matches!(
        store.append(&s, producer_req(JSON, "[]", "p", 0, 0)).await,
        Err(Error::EmptyJsonArray)
    );
    assert_matches!(
        store.append(&s, producer_req(JSON, "1", "p", 0, 0)).await,
        Ok(AppendOutcome::Appended { producer, .. }) if producer == Some(ack(0, 0))
    );
}

/// A producer duplicate is answered as a duplicate even when its `Stream-Seq` would now
/// regress: retries are safe.
pub async fn producer_duplicate_ignores_stream_seq<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("dup-stream-seq");
    create(&store, &s, TEXT).await;
    let with_seq = |seq: &str| AppendRequest {
        stream_seq: Some(seq.to_owned()),
        ..req("a", "p", 0, 0)
    };
    store.append(&s, with_seq("1")).await.expect("append");
    assert_matches!(
        store.append(&s, with_seq("1")).await,
        Ok(AppendOutcome::Duplicate { .. })
    );
    assert_eq!(read_all(&store, &s).await, b"a");
}

/// A producer's final append with `Stream-Closed` closes the stream; retrying that exact
/// tuple is a `Duplicate` reporting the closure.
pub async fn producer_close_retry_of_closing_tuple_is_duplicate<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("close-dup");
    create(&store, &s, TEXT).await;
    store.append(&s, req("a", "p", 0, 0)).await.expect("append");
    let outcome = store.append(&s, closing("end", "p", 0, 1)).await;
    let Ok(AppendOutcome::Appended {
        next: tail,
        closed: true,
        producer,
    }) = outcome
    else {
        panic!("expected a closing Appended, got {outcome:?}");
    };
    assert_eq!(producer, Some(ack(0, 1)));
    assert_matches!(
        store.append(&s, closing("end", "p", 0, 1)).await,
        Ok(AppendOutcome::Duplicate { next, closed: true, producer: ProducerAck { epoch: 0, seq: 1 } })
            if next == tail
    );
    assert_eq!(read_all(&store, &s).await, b"aend");
}

/// A producer's close-only request is idempotent for that tuple too.
pub async fn producer_close_only_retry_is_duplicate<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("close-only-dup");
    create(&store, &s, TEXT).await;
    store.append(&s, req("a", "p", 0, 0)).await.expect("append");
    let close = || AppendRequest {
        body: bytes::Bytes::new(),
        ..closing("", "p", 0, 1)
    };
    let tail = match store.append(&s, close()).await {
        Ok(AppendOutcome::Appended {
            next, closed: true, ..
        }) => next,
        other => panic!("expected a closing Appended, got {other:?}"),
    };
    assert_matches!(
        store.append(&s, close()).await,
        Ok(AppendOutcome::Duplicate { next, closed: true, .. }) if next == tail
    );
}

/// On a closed stream, any producer tuple other than the closing one is `Closed`.
pub async fn producer_other_tuple_on_closed_stream_is_closed<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("closed-other");
    create(&store, &s, TEXT).await;
    store.append(&s, req("a", "p", 0, 0)).await.expect("append");
    let tail = super::support::appended(store.append(&s, closing("b", "p", 0, 1)).await);
    for other in [
        req("c", "p", 0, 2),
        closing("c", "p", 0, 2),
        req("c", "q", 0, 0),
        req("c", "p", 1, 0),
    ] {
        assert_matches!(store.append(&s, other).await, Err(Error::Closed { next }) if next == tail);
    }
    assert_eq!(read_all(&store, &s).await, b"ab");
}

/// On a closed stream, a stale epoch is still fenced with `StaleEpoch`.
pub async fn producer_stale_epoch_on_closed_stream_is_fenced<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("closed-stale");
    create(&store, &s, TEXT).await;
    store.append(&s, req("a", "p", 0, 0)).await.expect("append");
    store
        .append(&s, closing("b", "p", 1, 0))
        .await
        .expect("close");
    assert_matches!(
        store.append(&s, req("zombie", "p", 0, 1)).await,
        Err(Error::StaleEpoch { current: 1 })
    );
}
