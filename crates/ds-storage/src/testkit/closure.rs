//! Closing streams (PROTOCOL.md sections 4.1, 5.2 and 5.3).

use bytes::Bytes;

use super::Harness;
use super::support::{ALL, JSON, TEXT, append, append_req, close_req, create, name, read_all};
use crate::{AppendOutcome, AppendRequest, Error, ReadFrom, Storage};

/// Once closed, a stream rejects appends with `Closed`, carrying its final tail.
pub async fn append_after_close_is_rejected_with_final_tail<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("closed");
    create(&store, &s, TEXT).await;
    let tail = append(&store, &s, TEXT, "data").await;
    store.append(&s, close_req()).await.expect("close");
    assert_matches!(
        store.append(&s, append_req(TEXT, "more")).await,
        Err(Error::Closed { next }) if next == tail
    );
    assert_eq!(read_all(&store, &s).await, b"data");
}

/// A closed stream reports `Closed` even when the content type is wrong too.
pub async fn closed_takes_precedence_over_content_type_mismatch<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("closed-ct");
    create(&store, &s, TEXT).await;
    let tail = append(&store, &s, TEXT, "data").await;
    store.append(&s, close_req()).await.expect("close");
    assert_matches!(
        store.append(&s, append_req(JSON, "{}")).await,
        Err(Error::Closed { next }) if next == tail
    );
}

/// A closed stream reports `Closed` for an empty body without `Stream-Closed`.
pub async fn closed_takes_precedence_over_empty_body<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("closed-empty");
    create(&store, &s, TEXT).await;
    store.append(&s, close_req()).await.expect("close");
    assert_matches!(
        store.append(&s, append_req(TEXT, Bytes::new())).await,
        Err(Error::Closed { .. })
    );
}

/// A close-only request closes the stream and leaves its tail where it was.
pub async fn close_only_closes_without_data<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("close-only");
    create(&store, &s, TEXT).await;
    let tail = append(&store, &s, TEXT, "data").await;
    // The content type of an empty close request is not checked.
    let req = AppendRequest {
        content_type: Some(JSON.to_owned()),
        ..close_req()
    };
    assert_matches!(
        store.append(&s, req).await,
        Ok(AppendOutcome::Appended { next, closed: true, producer: None }) if next == tail
    );
    let info = store.head(&s).await.expect("head");
    assert!(info.closed);
    assert_eq!(info.next, tail);
}

/// Closing a closed stream again is `AlreadyClosed` with the final tail, and changes nothing.
pub async fn close_only_on_closed_stream_is_already_closed<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("close-twice");
    create(&store, &s, TEXT).await;
    let tail = append(&store, &s, TEXT, "data").await;
    store.append(&s, close_req()).await.expect("close");
    assert_matches!(
        store.append(&s, close_req()).await,
        Ok(AppendOutcome::AlreadyClosed { next }) if next == tail
    );
    assert_eq!(store.head(&s).await.expect("head").next, tail);
}

/// A body with `Stream-Closed: true` is appended and closes the stream in one step.
pub async fn append_and_close_is_atomic<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("append-close");
    create(&store, &s, TEXT).await;
    append(&store, &s, TEXT, "first ").await;
    let req = AppendRequest {
        close: true,
        ..append_req(TEXT, "last")
    };
    let Ok(AppendOutcome::Appended {
        next, closed: true, ..
    }) = store.append(&s, req).await
    else {
        panic!("append-and-close did not close");
    };
    let chunk = store.read(&s, ReadFrom::Start, ALL).await.expect("read");
    assert_eq!(chunk.pieces.concat(), b"first last");
    assert_eq!(chunk.next, next);
    assert!(chunk.closed);
    assert!(store.head(&s).await.expect("head").closed);
}

/// Append-and-close on a closed stream is not idempotent: without producer headers it is
/// `Closed`.
pub async fn append_and_close_on_closed_stream_is_rejected<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("append-close-twice");
    create(&store, &s, TEXT).await;
    let req = AppendRequest {
        close: true,
        ..append_req(TEXT, "last")
    };
    let tail = super::support::appended(store.append(&s, req.clone()).await);
    assert_matches!(store.append(&s, req).await, Err(Error::Closed { next }) if next == tail);
    assert_eq!(read_all(&store, &s).await, b"last");
}

/// A closed stream's data stays readable from any position, and `head` reports closure.
pub async fn closed_stream_stays_readable<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("closed-readable");
    create(&store, &s, TEXT).await;
    let mid = append(&store, &s, TEXT, "abc").await;
    append(&store, &s, TEXT, "def").await;
    store.append(&s, close_req()).await.expect("close");
    let chunk = store.read(&s, ReadFrom::At(mid), ALL).await.expect("read");
    assert_eq!(chunk.pieces.concat(), b"def");
    assert!(chunk.closed);
    assert!(store.head(&s).await.expect("head").closed);
}
