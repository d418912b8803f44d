//! Creating streams (PROTOCOL.md section 5.1) and listing them.

use bytes::Bytes;
use ds_protocol::{Expiry, Offset, content_type::DEFAULT_CONTENT_TYPE};

use super::Harness;
use super::support::{
    ALL, BINARY, JSON, TEXT, append, append_req, close_req, create, create_req, created, existed,
    expires_in, fork_req, name, read_all, read_messages,
};
use crate::{CreateRequest, Error, ReadFrom, Storage};

/// A new stream is `Created`, empty, open, and its tail is the zero offset.
pub async fn create_new_stream_starts_empty_and_open<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("fresh");
    let info = created(store.create(&s, create_req(TEXT)).await);
    assert_eq!(info.name, s);
    assert_eq!(info.next, Offset::ZERO);
    assert!(!info.closed);
    assert_eq!(info.content_type, TEXT);
    assert_eq!(info.bytes, 0);
    assert_eq!(info.forked_from, None);
    assert_eq!(store.head(&s).await.expect("head"), info);
    let chunk = store.read(&s, ReadFrom::Start, ALL).await.expect("read");
    assert!(chunk.is_empty());
    assert_eq!(chunk.next, Offset::ZERO);
    assert!(chunk.up_to_date);
    assert!(!chunk.closed);
}

/// Initial content becomes the stream's first data; the tail is just after it.
pub async fn create_with_body_sets_tail_after_it<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("with-body");
    let req = CreateRequest {
        body: Bytes::from_static(b"hello"),
        ..create_req(TEXT)
    };
    let info = created(store.create(&s, req).await);
    assert!(info.next > Offset::ZERO);
    assert_eq!(info.bytes, 5);
    let chunk = store.read(&s, ReadFrom::Start, ALL).await.expect("read");
    assert_eq!(chunk.pieces.concat(), b"hello");
    assert_eq!(chunk.next, info.next);
    assert!(chunk.up_to_date);
}

/// Without a Content-Type the stream gets the default, `application/octet-stream`.
pub async fn create_without_content_type_uses_default<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("default-type");
    let info = created(store.create(&s, CreateRequest::default()).await);
    assert_eq!(info.content_type, DEFAULT_CONTENT_TYPE);
    // A second PUT without Content-Type matches the default.
    existed(store.create(&s, CreateRequest::default()).await);
    existed(store.create(&s, create_req(BINARY)).await);
}

/// A second create with the same configuration is `Existed`, names the same incarnation and
/// writes nothing.
pub async fn create_with_same_config_is_idempotent<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("idem");
    let req = CreateRequest {
        expiry: Expiry::Ttl(3600),
        ..create_req(TEXT)
    };
    let first = created(store.create(&s, req.clone()).await);
    append(&store, &s, TEXT, "data").await;
    let again = existed(store.create(&s, req).await);
    assert_eq!(again.stream_id, first.stream_id);
    assert_eq!(again.next, store.head(&s).await.expect("head").next);
    assert_eq!(read_all(&store, &s).await, b"data");
}

/// A different content type on an existing stream is a configuration conflict.
pub async fn create_with_different_content_type_conflicts<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("ct-conflict");
    create(&store, &s, TEXT).await;
    assert_matches!(
        store.create(&s, create_req(JSON)).await,
        Err(Error::ConfigMismatch { .. })
    );
    assert_eq!(store.head(&s).await.expect("head").content_type, TEXT);
}

/// A different TTL, or a TTL where there was none, is a configuration conflict.
pub async fn create_with_different_ttl_conflicts<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("ttl-conflict");
    let with_ttl = |secs| CreateRequest {
        expiry: Expiry::Ttl(secs),
        ..create_req(TEXT)
    };
    created(store.create(&s, with_ttl(60)).await);
    assert_matches!(
        store.create(&s, with_ttl(120)).await,
        Err(Error::ConfigMismatch { .. })
    );
    assert_matches!(
        store.create(&s, create_req(TEXT)).await,
        Err(Error::ConfigMismatch { .. })
    );
    existed(store.create(&s, with_ttl(60)).await);

    let plain = name("no-ttl");
    create(&store, &plain, TEXT).await;
    assert_matches!(
        store.create(&plain, with_ttl(60)).await,
        Err(Error::ConfigMismatch { .. })
    );
}

/// A different absolute expiry, or a TTL instead of one, is a configuration conflict.
pub async fn create_with_different_expires_at_conflicts<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("expires-conflict");
    let base = expires_in(h, 3600);
    let at = |offset_secs: i64| CreateRequest {
        expiry: Expiry::ExpiresAt(base + time::Duration::seconds(offset_secs)),
        ..create_req(TEXT)
    };
    created(store.create(&s, at(0)).await);
    assert_matches!(
        store.create(&s, at(1)).await,
        Err(Error::ConfigMismatch { .. })
    );
    let ttl = CreateRequest {
        expiry: Expiry::Ttl(3600),
        ..create_req(TEXT)
    };
    assert_matches!(
        store.create(&s, ttl).await,
        Err(Error::ConfigMismatch { .. })
    );
    existed(store.create(&s, at(0)).await);
}

/// Closure status is compared with the stream's current state, both ways.
pub async fn create_with_different_closure_status_conflicts<H: Harness>(h: &H) {
    let store = h.open().await;
    let open = name("open");
    create(&store, &open, TEXT).await;
    let closed_req = CreateRequest {
        closed: true,
        ..create_req(TEXT)
    };
    assert_matches!(
        store.create(&open, closed_req.clone()).await,
        Err(Error::ConfigMismatch { .. })
    );
    assert!(!store.head(&open).await.expect("head").closed);

    let closed = name("closed");
    created(store.create(&closed, closed_req).await);
    assert_matches!(
        store.create(&closed, create_req(TEXT)).await,
        Err(Error::ConfigMismatch { .. })
    );

    // A stream closed after creation no longer matches a plain PUT.
    let later = name("closed-later");
    create(&store, &later, TEXT).await;
    store.append(&later, close_req()).await.expect("close");
    assert_matches!(
        store.create(&later, create_req(TEXT)).await,
        Err(Error::ConfigMismatch { .. })
    );
}

/// `Stream-Closed: true` on a closed stream with matching configuration is idempotent, also
/// when the stream was closed after it was created.
pub async fn create_matching_closed_stream_is_idempotent<H: Harness>(h: &H) {
    let store = h.open().await;
    let closed_req = CreateRequest {
        closed: true,
        ..create_req(TEXT)
    };
    let s = name("closed-idem");
    let first = created(store.create(&s, closed_req.clone()).await);
    let again = existed(store.create(&s, closed_req.clone()).await);
    assert_eq!(again.stream_id, first.stream_id);
    assert!(again.closed);

    let later = name("closed-later-idem");
    create(&store, &later, TEXT).await;
    store.append(&later, close_req()).await.expect("close");
    assert!(existed(store.create(&later, closed_req).await).closed);
}

/// Content types compare case-insensitively and without parameters.
pub async fn create_content_type_compare_ignores_case_and_params<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("ct-case");
    create(&store, &s, TEXT).await;
    existed(store.create(&s, create_req("Text/Plain")).await);
    existed(
        store
            .create(&s, create_req("text/plain; charset=utf-8"))
            .await,
    );
    existed(
        store
            .create(&s, create_req("TEXT/PLAIN;charset=UTF-8"))
            .await,
    );
}

/// A stream created closed with a body holds exactly that body, reads as EOF, and rejects
/// appends with its final tail.
pub async fn create_closed_with_body_holds_final_content<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("closed-body");
    let req = CreateRequest {
        closed: true,
        body: Bytes::from_static(b"final"),
        ..create_req(TEXT)
    };
    let info = created(store.create(&s, req).await);
    assert!(info.closed);
    assert!(info.next > Offset::ZERO);
    let chunk = store.read(&s, ReadFrom::Start, ALL).await.expect("read");
    assert_eq!(chunk.pieces.concat(), b"final");
    assert!(chunk.up_to_date);
    assert!(chunk.closed);
    assert_matches!(
        store.append(&s, append_req(TEXT, "more")).await,
        Err(Error::Closed { next }) if next == info.next
    );
}

/// A stream created closed without a body is empty and at EOF.
pub async fn create_closed_without_body_is_empty_eof<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("closed-empty");
    let req = CreateRequest {
        closed: true,
        ..create_req(TEXT)
    };
    let info = created(store.create(&s, req).await);
    assert!(info.closed);
    assert_eq!(info.next, Offset::ZERO);
    let chunk = store.read(&s, ReadFrom::Start, ALL).await.expect("read");
    assert!(chunk.is_empty());
    assert!(chunk.closed);
}

/// Creating a JSON stream with `[]` is valid and stores no message.
pub async fn create_json_with_empty_array_stores_nothing<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("json-empty");
    let req = CreateRequest {
        body: Bytes::from_static(b"[]"),
        ..create_req(JSON)
    };
    let info = created(store.create(&s, req).await);
    assert_eq!(info.next, Offset::ZERO);
    assert_eq!(info.bytes, 0);
    assert!(read_messages(&store, &s).await.is_empty());
}

/// A JSON array as initial content is flattened one level into messages.
pub async fn create_json_flattens_initial_array<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("json-initial");
    let req = CreateRequest {
        body: Bytes::from_static(br#"[{"a":1},[2,3]]"#),
        ..create_req(JSON)
    };
    created(store.create(&s, req).await);
    assert_eq!(read_messages(&store, &s).await, [r#"{"a":1}"#, "[2,3]"]);
}

/// Invalid JSON as initial content is rejected and creates nothing.
pub async fn create_json_with_invalid_body_is_rejected<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("json-invalid");
    let req = CreateRequest {
        body: Bytes::from_static(b"{not json"),
        ..create_req(JSON)
    };
    assert_matches!(store.create(&s, req).await, Err(Error::InvalidJson(_)));
    assert_matches!(store.head(&s).await, Err(Error::NotFound));
}

/// The name of a soft-deleted stream cannot be created again, whatever the configuration.
pub async fn create_on_soft_deleted_name_is_rejected<H: Harness>(h: &H) {
    let store = h.open().await;
    let source = name("held");
    let fork = name("held-fork");
    create(&store, &source, TEXT).await;
    created(store.create(&fork, fork_req(&source, None, 0)).await);
    store.delete(&source).await.expect("soft delete");
    assert_matches!(
        store.create(&source, create_req(TEXT)).await,
        Err(Error::NameHeldBySoftDeleted)
    );
    assert_matches!(
        store.create(&source, create_req(JSON)).await,
        Err(Error::NameHeldBySoftDeleted)
    );
}

/// `list` returns every live stream once, in name order.
pub async fn list_returns_live_streams_in_name_order<H: Harness>(h: &H) {
    let store = h.open().await;
    assert!(store.list().await.expect("list").is_empty());
    for raw in ["list-c", "list-a", "list-b"] {
        create(&store, &name(raw), TEXT).await;
    }
    append(&store, &name("list-b"), TEXT, "xyz").await;
    let listed = store.list().await.expect("list");
    let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["list-a", "list-b", "list-c"]);
    assert_eq!(listed[1], store.head(&name("list-b")).await.expect("head"));
}
