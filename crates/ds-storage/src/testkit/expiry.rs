//! TTL and absolute expiry (PROTOCOL.md sections 4.2 and 5.1), driven by the harness's
//! [`ManualClock`](crate::rules::ManualClock).

use ds_protocol::{Expiry, Offset};

use super::Harness;
use super::support::{
    ALL, TEXT, append, append_req, create_req, created, expires_in, fork_req, name, read_all,
};
use crate::{CreateRequest, Error, ReadFrom, Storage};

const SECOND: u64 = 1000;

fn with_expiry(expiry: Expiry) -> CreateRequest {
    CreateRequest {
        expiry,
        ..create_req(TEXT)
    }
}

/// A stream with a TTL lives while idle for less than the TTL and is gone after it.
pub async fn ttl_stream_expires_after_idle_period<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("ttl");
    let info = created(store.create(&s, with_expiry(Expiry::Ttl(10))).await);
    assert_eq!(info.expiry, Expiry::Ttl(10));
    h.clock().advance_ms(9 * SECOND);
    assert_eq!(
        store.head(&s).await.expect("alive before the TTL").expiry,
        Expiry::Ttl(10)
    );
    h.clock().advance_ms(2 * SECOND);
    assert_matches!(store.head(&s).await, Err(Error::NotFound));
}

/// A read restarts the TTL window.
pub async fn read_slides_ttl<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("ttl-read");
    created(store.create(&s, with_expiry(Expiry::Ttl(10))).await);
    h.clock().advance_ms(6 * SECOND);
    store.read(&s, ReadFrom::Start, ALL).await.expect("read");
    h.clock().advance_ms(6 * SECOND);
    store.head(&s).await.expect("alive: read 6 s ago");
    h.clock().advance_ms(5 * SECOND);
    assert_matches!(store.head(&s).await, Err(Error::NotFound));
}

/// An append restarts the TTL window.
pub async fn append_slides_ttl<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("ttl-append");
    created(store.create(&s, with_expiry(Expiry::Ttl(10))).await);
    h.clock().advance_ms(6 * SECOND);
    append(&store, &s, TEXT, "keepalive").await;
    h.clock().advance_ms(6 * SECOND);
    store.head(&s).await.expect("alive: written 6 s ago");
    h.clock().advance_ms(5 * SECOND);
    assert_matches!(store.head(&s).await, Err(Error::NotFound));
}

/// `head` does not restart the TTL window.
pub async fn head_does_not_slide_ttl<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("ttl-head");
    created(store.create(&s, with_expiry(Expiry::Ttl(10))).await);
    h.clock().advance_ms(6 * SECOND);
    store.head(&s).await.expect("alive");
    h.clock().advance_ms(5 * SECOND);
    assert_matches!(store.head(&s).await, Err(Error::NotFound));
}

/// An absolute expiry is reached at its instant, whatever reads and writes happen before.
pub async fn expires_at_is_absolute<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("expires-at");
    let at = expires_in(h, 10);
    let info = created(store.create(&s, with_expiry(Expiry::ExpiresAt(at))).await);
    assert_eq!(info.expiry, Expiry::ExpiresAt(at));
    h.clock().advance_ms(5 * SECOND);
    append(&store, &s, TEXT, "data").await;
    store.read(&s, ReadFrom::Start, ALL).await.expect("read");
    h.clock().advance_ms(4 * SECOND);
    store.head(&s).await.expect("alive before the instant");
    h.clock().advance_ms(2 * SECOND);
    assert_matches!(store.head(&s).await, Err(Error::NotFound));
}

/// An expired stream is `NotFound` to every operation, and cannot be forked.
pub async fn expired_stream_is_not_found_everywhere<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("expired");
    created(store.create(&s, with_expiry(Expiry::Ttl(10))).await);
    append(&store, &s, TEXT, "data").await;
    h.clock().advance_ms(11 * SECOND);
    assert_matches!(
        store.read(&s, ReadFrom::Start, ALL).await,
        Err(Error::NotFound)
    );
    assert_matches!(
        store.append(&s, append_req(TEXT, "x")).await,
        Err(Error::NotFound)
    );
    assert_matches!(store.subscribe(&s).await, Err(Error::NotFound));
    assert_matches!(
        store.create(&name("fork"), fork_req(&s, None, 0)).await,
        Err(Error::ForkSourceNotFound)
    );
    assert_matches!(store.delete(&s).await, Err(Error::NotFound));
    assert_matches!(store.head(&s).await, Err(Error::NotFound));
}

/// The name of an expired stream can be created again, as a new, empty stream.
pub async fn expired_stream_can_be_recreated<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("expired-reborn");
    let old = created(store.create(&s, with_expiry(Expiry::Ttl(10))).await);
    append(&store, &s, TEXT, "old").await;
    h.clock().advance_ms(11 * SECOND);
    let new = created(store.create(&s, with_expiry(Expiry::Ttl(10))).await);
    assert_ne!(new.stream_id, old.stream_id);
    assert_eq!(new.next, Offset::ZERO);
    assert!(read_all(&store, &s).await.is_empty());
}

/// An expired stream is not listed, even before anything touched it.
pub async fn expired_stream_is_not_listed<H: Harness>(h: &H) {
    let store = h.open().await;
    created(
        store
            .create(&name("short"), with_expiry(Expiry::Ttl(10)))
            .await,
    );
    created(
        store
            .create(&name("long"), with_expiry(Expiry::Ttl(100)))
            .await,
    );
    h.clock().advance_ms(11 * SECOND);
    let listed = store.list().await.expect("list");
    let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["long"]);
}

/// `sweep_expired` reclaims each expired stream once, counts it, and tells its subscribers
/// it is gone.
pub async fn sweep_reclaims_expired_streams<H: Harness>(h: &H) {
    let store = h.open().await;
    let (short, at, long, forever) = (name("short"), name("at"), name("long"), name("forever"));
    created(store.create(&short, with_expiry(Expiry::Ttl(10))).await);
    created(
        store
            .create(&at, with_expiry(Expiry::ExpiresAt(expires_in(h, 10))))
            .await,
    );
    created(store.create(&long, with_expiry(Expiry::Ttl(100))).await);
    created(store.create(&forever, create_req(TEXT)).await);
    let rx = store.subscribe(&short).await.expect("subscribe");
    assert_eq!(store.sweep_expired().await.expect("sweep"), 0);
    h.clock().advance_ms(11 * SECOND);
    assert_eq!(store.sweep_expired().await.expect("sweep"), 2);
    assert!(rx.borrow().gone);
    assert_eq!(store.sweep_expired().await.expect("sweep"), 0);
    let listed = store.list().await.expect("list");
    let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["forever", "long"]);
    assert_matches!(store.head(&short).await, Err(Error::NotFound));
    created(store.create(&short, create_req(TEXT)).await);
}

/// An expired source that forks still reference is `Gone` (like a soft-deleted one) while its
/// forks keep reading the inherited data; the last fork's delete removes it.
pub async fn expired_source_with_live_fork_is_gone<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    created(store.create(&source, with_expiry(Expiry::Ttl(10))).await);
    append(&store, &source, TEXT, "inherited").await;
    let req = CreateRequest {
        expiry: Expiry::Ttl(1000),
        ..fork_req(&source, None, 0)
    };
    created(store.create(&fork, req).await);
    h.clock().advance_ms(11 * SECOND);
    assert_matches!(store.head(&source).await, Err(Error::Gone));
    assert_matches!(
        store.read(&source, ReadFrom::Start, ALL).await,
        Err(Error::Gone)
    );
    assert_matches!(
        store.create(&source, create_req(TEXT)).await,
        Err(Error::NameHeldBySoftDeleted)
    );
    assert_eq!(read_all(&store, &fork).await, b"inherited");
    store.delete(&fork).await.expect("delete fork");
    assert_matches!(store.head(&source).await, Err(Error::NotFound));
}

/// `sweep_expired` soft-deletes an expired source that forks still reference: it counts,
/// the source is `Gone`, and the fork reads on.
pub async fn sweep_keeps_expired_source_for_its_forks<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    created(store.create(&source, with_expiry(Expiry::Ttl(10))).await);
    append(&store, &source, TEXT, "inherited").await;
    let req = CreateRequest {
        expiry: Expiry::Ttl(1000),
        ..fork_req(&source, None, 0)
    };
    created(store.create(&fork, req).await);
    let rx = store.subscribe(&source).await.expect("subscribe");
    h.clock().advance_ms(11 * SECOND);
    assert_eq!(store.sweep_expired().await.expect("sweep"), 1);
    assert!(rx.borrow().gone);
    assert_matches!(store.head(&source).await, Err(Error::Gone));
    assert_eq!(read_all(&store, &fork).await, b"inherited");
    assert_eq!(store.sweep_expired().await.expect("sweep"), 0);
}

/// A fork's expiry follows the table of section 4.2: an explicit request wins, otherwise the
/// fork inherits the source's TTL or Expires-At.
pub async fn fork_expiry_follows_inheritance_table<H: Harness>(h: &H) {
    let store = h.open().await;
    let source_at = expires_in(h, 3600);
    let fork_at = expires_in(h, 7200);
    let sources = [
        ("none", Expiry::None),
        ("ttl", Expiry::Ttl(100)),
        ("at", Expiry::ExpiresAt(source_at)),
    ];
    let requests = [
        ("none", Expiry::None),
        ("ttl", Expiry::Ttl(50)),
        ("at", Expiry::ExpiresAt(fork_at)),
    ];
    let table = [
        // (source, request) -> fork
        (0, 0, Expiry::None),
        (0, 1, Expiry::Ttl(50)),
        (0, 2, Expiry::ExpiresAt(fork_at)),
        (1, 0, Expiry::Ttl(100)),
        (1, 1, Expiry::Ttl(50)),
        (1, 2, Expiry::ExpiresAt(fork_at)),
        (2, 0, Expiry::ExpiresAt(source_at)),
        (2, 1, Expiry::Ttl(50)),
        (2, 2, Expiry::ExpiresAt(fork_at)),
    ];
    for (label, expiry) in sources {
        created(
            store
                .create(&name(&format!("src-{label}")), with_expiry(expiry))
                .await,
        );
    }
    for (s, r, want) in table {
        let (source_label, _) = sources[s];
        let (request_label, request) = requests[r];
        let fork = name(&format!("fork-{source_label}-{request_label}"));
        let req = CreateRequest {
            expiry: request,
            ..fork_req(&name(&format!("src-{source_label}")), None, 0)
        };
        let info = created(store.create(&fork, req).await);
        assert_eq!(
            info.expiry, want,
            "source {source_label}, request {request_label}"
        );
        assert_eq!(store.head(&fork).await.expect("head").expiry, want);
    }
}

/// A fork that inherited its source's TTL slides it on its own: reading the fork keeps the
/// fork alive, not the source.
pub async fn inherited_ttl_slides_independently<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    created(store.create(&source, with_expiry(Expiry::Ttl(10))).await);
    append(&store, &source, TEXT, "data").await;
    created(store.create(&fork, fork_req(&source, None, 0)).await);
    h.clock().advance_ms(6 * SECOND);
    assert_eq!(read_all(&store, &fork).await, b"data");
    h.clock().advance_ms(6 * SECOND);
    assert_matches!(store.head(&source).await, Err(Error::Gone));
    assert_eq!(read_all(&store, &fork).await, b"data");
    h.clock().advance_ms(11 * SECOND);
    assert_matches!(store.head(&fork).await, Err(Error::NotFound));
    assert_matches!(store.head(&source).await, Err(Error::NotFound));
}
