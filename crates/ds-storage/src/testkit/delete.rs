//! Deleting streams (PROTOCOL.md section 5.4). Soft deletes of fork sources are in `fork`.

use super::Harness;
use super::support::{ALL, TEXT, append, append_req, create, name, read_all};
use crate::{Error, ReadFrom, Storage};

/// After a delete every operation on the name is `NotFound`.
pub async fn deleted_stream_is_not_found<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("deleted");
    create(&store, &s, TEXT).await;
    append(&store, &s, TEXT, "data").await;
    store.delete(&s).await.expect("delete");
    assert_matches!(store.head(&s).await, Err(Error::NotFound));
    assert_matches!(
        store.read(&s, ReadFrom::Start, ALL).await,
        Err(Error::NotFound)
    );
    assert_matches!(
        store.append(&s, append_req(TEXT, "x")).await,
        Err(Error::NotFound)
    );
    assert_matches!(store.subscribe(&s).await, Err(Error::NotFound));
    assert_matches!(store.delete(&s).await, Err(Error::NotFound));
}

/// Deleting a stream that does not exist is `NotFound`.
pub async fn delete_of_missing_stream_is_not_found<H: Harness>(h: &H) {
    let store = h.open().await;
    assert_matches!(store.delete(&name("missing")).await, Err(Error::NotFound));
}

/// Creating a deleted name again makes a new incarnation: a new stream id, none of the old
/// data, closure or writer state.
pub async fn recreate_after_delete_is_a_new_stream<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("reborn");
    let old = create(&store, &s, TEXT).await;
    append(&store, &s, TEXT, "old data").await;
    store
        .append(
            &s,
            crate::AppendRequest {
                stream_seq: Some("9".to_owned()),
                close: true,
                ..append_req(TEXT, "end")
            },
        )
        .await
        .expect("close");
    store.delete(&s).await.expect("delete");
    let new = create(&store, &s, TEXT).await;
    assert_ne!(new.stream_id, old.stream_id);
    assert_eq!(new.next, ds_protocol::Offset::ZERO);
    assert!(!new.closed);
    assert!(read_all(&store, &s).await.is_empty());
    // Stream-Seq state went with the old incarnation.
    store
        .append(
            &s,
            crate::AppendRequest {
                stream_seq: Some("1".to_owned()),
                ..append_req(TEXT, "new")
            },
        )
        .await
        .expect("append to the new incarnation");
    assert_eq!(read_all(&store, &s).await, b"new");
}

/// A deleted stream is not listed.
pub async fn deleted_stream_is_not_listed<H: Harness>(h: &H) {
    let store = h.open().await;
    create(&store, &name("kept"), TEXT).await;
    create(&store, &name("gone"), TEXT).await;
    store.delete(&name("gone")).await.expect("delete");
    let listed = store.list().await.expect("list");
    let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["kept"]);
}
