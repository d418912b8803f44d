//! Size limits every backend enforces (`limits.max_stream_bytes`). Limits on the whole store
//! depend on the backend (memory, disk) and are tested in the backend's own crate.

use bytes::Bytes;
use ds_protocol::Offset;

use super::support::{BINARY, append, append_req, create, create_req, name, read_all};
use super::{Harness, Limits};
use crate::{CreateRequest, Error, Storage};

/// An append that would take a stream past `max_stream_bytes` is `StreamTooLarge` and writes
/// nothing; filling the stream exactly to the limit is allowed.
pub async fn append_beyond_max_stream_bytes_is_rejected_and_writes_nothing<H: Harness>(h: &H) {
    let store = h
        .open_with(Limits {
            max_stream_bytes: 100,
        })
        .await;
    let s = name("big");
    create(&store, &s, BINARY).await;
    let tail = append(&store, &s, BINARY, vec![1u8; 60]).await;
    assert_matches!(
        store.append(&s, append_req(BINARY, vec![2u8; 41])).await,
        Err(Error::StreamTooLarge { limit: 100 })
    );
    let info = store.head(&s).await.expect("head");
    assert_eq!(info.next, tail);
    assert_eq!(info.bytes, 60);
    append(&store, &s, BINARY, vec![3u8; 40]).await;
    assert_eq!(
        read_all(&store, &s).await,
        [vec![1u8; 60], vec![3u8; 40]].concat()
    );
    assert_matches!(
        store.append(&s, append_req(BINARY, vec![4u8; 1])).await,
        Err(Error::StreamTooLarge { limit: 100 })
    );
    // Other streams have their own budget.
    let other = name("other");
    create(&store, &other, BINARY).await;
    append(&store, &other, BINARY, vec![5u8; 100]).await;
}

/// A create whose initial content exceeds `max_stream_bytes` is rejected and creates nothing.
pub async fn create_beyond_max_stream_bytes_is_rejected<H: Harness>(h: &H) {
    let store = h
        .open_with(Limits {
            max_stream_bytes: 100,
        })
        .await;
    let s = name("big-create");
    let req = CreateRequest {
        body: Bytes::from(vec![0u8; 101]),
        ..create_req(BINARY)
    };
    assert_matches!(
        store.create(&s, req).await,
        Err(Error::StreamTooLarge { limit: 100 })
    );
    assert_matches!(store.head(&s).await, Err(Error::NotFound));
    let req = CreateRequest {
        body: Bytes::from(vec![0u8; 100]),
        ..create_req(BINARY)
    };
    let info = super::support::created(store.create(&s, req).await);
    assert!(info.next > Offset::ZERO);
}
