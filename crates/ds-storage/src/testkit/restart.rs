//! What survives a restart (PROTOCOL.md section 4: durability, monotonic closure; section
//! 5.2.1: producer state). Skipped on backends that are not persistent.

use ds_protocol::Expiry;

use super::Harness;
use super::support::{
    TEXT, append, append_req, close_req, create, create_req, created, fork_req, name, producer_req,
    read_all, skip,
};
use crate::{AppendOutcome, AppendRequest, CreateRequest, Error, ProducerAck, Storage};

/// Whether the case may run; prints why not when it may not.
fn persistent<H: Harness>(h: &H, case: &str) -> bool {
    let persistent = h.capabilities().persistent;
    if !persistent {
        skip(
            case,
            "the backend keeps nothing across a restart (persistent: false)",
        );
    }
    persistent
}

/// Streams, their data, metadata and offsets are the same after a restart.
pub async fn data_survives_restart<H: Harness>(h: &H) {
    if !persistent(h, "restart::data_survives_restart") {
        return;
    }
    let store = h.open().await;
    let s = name("durable");
    create(&store, &s, TEXT).await;
    let mid = append(&store, &s, TEXT, "hello ").await;
    append(&store, &s, TEXT, "world").await;
    let before = store.head(&s).await.expect("head");
    let store = h.reopen(store).await;
    assert_eq!(store.head(&s).await.expect("head after restart"), before);
    assert_eq!(read_all(&store, &s).await, b"hello world");
    let chunk = store
        .read(&s, crate::ReadFrom::At(mid), super::support::ALL)
        .await
        .expect("read from an offset minted before the restart");
    assert_eq!(chunk.pieces.concat(), b"world");
    let tail = append(&store, &s, TEXT, "!").await;
    assert!(tail > before.next);
}

/// A closed stream is still closed after a restart.
pub async fn closure_survives_restart<H: Harness>(h: &H) {
    if !persistent(h, "restart::closure_survives_restart") {
        return;
    }
    let store = h.open().await;
    let s = name("closed");
    create(&store, &s, TEXT).await;
    let tail = append(&store, &s, TEXT, "final").await;
    store.append(&s, close_req()).await.expect("close");
    let store = h.reopen(store).await;
    assert!(store.head(&s).await.expect("head").closed);
    assert_matches!(
        store.append(&s, append_req(TEXT, "more")).await,
        Err(Error::Closed { next }) if next == tail
    );
}

/// Producer epochs and sequences survive a restart: retries stay duplicates, zombies stay
/// fenced, and the closing tuple is remembered.
pub async fn producer_state_survives_restart<H: Harness>(h: &H) {
    if !persistent(h, "restart::producer_state_survives_restart") {
        return;
    }
    let store = h.open().await;
    let s = name("producer");
    create(&store, &s, TEXT).await;
    store
        .append(&s, producer_req(TEXT, "a", "p", 1, 0))
        .await
        .expect("append");
    store
        .append(&s, producer_req(TEXT, "b", "p", 1, 1))
        .await
        .expect("append");
    let store = h.reopen(store).await;
    assert_matches!(
        store.append(&s, producer_req(TEXT, "b", "p", 1, 1)).await,
        Ok(AppendOutcome::Duplicate {
            producer: ProducerAck { epoch: 1, seq: 1 },
            ..
        })
    );
    assert_matches!(
        store.append(&s, producer_req(TEXT, "z", "p", 0, 5)).await,
        Err(Error::StaleEpoch { current: 1 })
    );
    let closing = AppendRequest {
        close: true,
        ..producer_req(TEXT, "c", "p", 1, 2)
    };
    store.append(&s, closing.clone()).await.expect("close");
    let store = h.reopen(store).await;
    assert_matches!(
        store.append(&s, closing).await,
        Ok(AppendOutcome::Duplicate { closed: true, .. })
    );
    assert_eq!(read_all(&store, &s).await, b"abc");
}

/// The last accepted `Stream-Seq` survives a restart.
pub async fn stream_seq_survives_restart<H: Harness>(h: &H) {
    if !persistent(h, "restart::stream_seq_survives_restart") {
        return;
    }
    let store = h.open().await;
    let s = name("stream-seq");
    create(&store, &s, TEXT).await;
    let with_seq = |seq: &str| AppendRequest {
        stream_seq: Some(seq.to_owned()),
        ..append_req(TEXT, "x")
    };
    store.append(&s, with_seq("5")).await.expect("append");
    let store = h.reopen(store).await;
    assert_matches!(
        store.append(&s, with_seq("5")).await,
        Err(Error::SeqRegression { .. })
    );
    store.append(&s, with_seq("6")).await.expect("append");
}

/// TTL and expiry survive a restart, and the idle time before it counts.
pub async fn expiry_survives_restart<H: Harness>(h: &H) {
    if !persistent(h, "restart::expiry_survives_restart") {
        return;
    }
    let store = h.open().await;
    let s = name("ttl");
    let req = CreateRequest {
        expiry: Expiry::Ttl(10),
        ..create_req(TEXT)
    };
    created(store.create(&s, req).await);
    h.clock().advance_ms(6_000);
    let store = h.reopen(store).await;
    assert_eq!(store.head(&s).await.expect("alive").expiry, Expiry::Ttl(10));
    h.clock().advance_ms(5_000);
    assert_matches!(store.head(&s).await, Err(Error::NotFound));
}

/// Forks, their inherited data, and a soft-deleted source survive a restart, and the
/// cascade still runs afterwards.
pub async fn forks_and_soft_deletes_survive_restart<H: Harness>(h: &H) {
    if !persistent(h, "restart::forks_and_soft_deletes_survive_restart") {
        return;
    }
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, TEXT).await;
    append(&store, &source, TEXT, "hello").await;
    created(
        store
            .create(&fork, fork_req(&source, Some(ds_protocol::Offset::ZERO), 3))
            .await,
    );
    append(&store, &fork, TEXT, "p").await;
    store.delete(&source).await.expect("soft delete");
    let store = h.reopen(store).await;
    assert_eq!(read_all(&store, &fork).await, b"help");
    assert_eq!(
        store.head(&fork).await.expect("head").forked_from.as_ref(),
        Some(&source)
    );
    assert_matches!(store.head(&source).await, Err(Error::Gone));
    assert_matches!(
        store.create(&source, create_req(TEXT)).await,
        Err(Error::NameHeldBySoftDeleted)
    );
    store.delete(&fork).await.expect("delete fork");
    assert_matches!(store.head(&source).await, Err(Error::NotFound));
    let store = h.reopen(store).await;
    assert_matches!(store.head(&source).await, Err(Error::NotFound));
    assert_matches!(store.head(&fork).await, Err(Error::NotFound));
}

/// A stream re-created after a restart gets a stream id no earlier incarnation had, so ETags
/// of the old data never match the new.
pub async fn recreated_stream_after_restart_gets_new_id<H: Harness>(h: &H) {
    if !persistent(h, "restart::recreated_stream_after_restart_gets_new_id") {
        return;
    }
    let store = h.open().await;
    let s = name("reborn");
    let first = create(&store, &s, TEXT).await;
    store.delete(&s).await.expect("delete");
    let store = h.reopen(store).await;
    let second = create(&store, &s, TEXT).await;
    assert_ne!(second.stream_id, first.stream_id);
    let other = create(&store, &name("other"), TEXT).await;
    assert_ne!(other.stream_id, first.stream_id);
    assert_ne!(other.stream_id, second.stream_id);
}
