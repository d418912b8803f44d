//! The tail watch live readers wait on ([`Storage::subscribe`]).

use std::time::Duration;

use tokio::sync::watch;

use super::Harness;
use super::support::{TEXT, append, close_req, create, created, fork_req, name};
use crate::{Error, Storage, Tail};

/// Waits (bounded) for the next change and returns the latest value. A closed channel counts
/// as a change: a waiter must wake up when the stream goes away.
async fn next_change(rx: &mut watch::Receiver<Tail>) -> Tail {
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("the subscriber is woken within 5 s")
        .ok();
    *rx.borrow_and_update()
}

/// A new subscription reports the current tail, open and not gone.
pub async fn subscribe_starts_at_current_tail<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("sub");
    create(&store, &s, TEXT).await;
    let tail = append(&store, &s, TEXT, "data").await;
    let rx = store.subscribe(&s).await.expect("subscribe");
    assert_eq!(
        *rx.borrow(),
        Tail {
            next: tail,
            closed: false,
            gone: false
        }
    );
}

/// An append wakes subscribers with the new tail.
pub async fn subscriber_sees_append<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("sub-append");
    create(&store, &s, TEXT).await;
    let mut rx = store.subscribe(&s).await.expect("subscribe");
    let tail = append(&store, &s, TEXT, "data").await;
    assert_eq!(
        next_change(&mut rx).await,
        Tail {
            next: tail,
            closed: false,
            gone: false
        }
    );
    let tail = append(&store, &s, TEXT, "more").await;
    assert_eq!(next_change(&mut rx).await.next, tail);
}

/// A close wakes subscribers and reports the closure at the final tail.
pub async fn subscriber_sees_close<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("sub-close");
    create(&store, &s, TEXT).await;
    let tail = append(&store, &s, TEXT, "data").await;
    let mut rx = store.subscribe(&s).await.expect("subscribe");
    store.append(&s, close_req()).await.expect("close");
    assert_eq!(
        next_change(&mut rx).await,
        Tail {
            next: tail,
            closed: true,
            gone: false
        }
    );
}

/// A delete wakes subscribers and reports the stream gone.
pub async fn subscriber_sees_delete<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("sub-delete");
    create(&store, &s, TEXT).await;
    let mut rx = store.subscribe(&s).await.expect("subscribe");
    store.delete(&s).await.expect("delete");
    assert!(next_change(&mut rx).await.gone);
}

/// A soft delete wakes the source's subscribers and reports it gone.
pub async fn subscriber_sees_soft_delete<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, TEXT).await;
    created(store.create(&fork, fork_req(&source, None, 0)).await);
    let mut rx = store.subscribe(&source).await.expect("subscribe");
    let fork_rx = store.subscribe(&fork).await.expect("subscribe");
    store.delete(&source).await.expect("soft delete");
    assert!(next_change(&mut rx).await.gone);
    assert!(!fork_rx.borrow().gone);
}

/// A fork's subscription does not change when its source is appended to.
pub async fn fork_subscriber_ignores_source_appends<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, TEXT).await;
    append(&store, &source, TEXT, "shared").await;
    let info = created(store.create(&fork, fork_req(&source, None, 0)).await);
    let mut rx = store.subscribe(&fork).await.expect("subscribe");
    append(&store, &source, TEXT, "source only").await;
    store
        .append(&source, close_req())
        .await
        .expect("close source");
    assert!(!rx.has_changed().expect("fork is alive"));
    assert_eq!(rx.borrow().next, info.next);
    let tail = append(&store, &fork, TEXT, "fork").await;
    assert_eq!(next_change(&mut rx).await.next, tail);
}

/// Subscribing to a stream that does not exist is `NotFound`.
pub async fn subscribe_to_missing_stream_is_not_found<H: Harness>(h: &H) {
    let store = h.open().await;
    assert_matches!(
        store.subscribe(&name("missing")).await,
        Err(Error::NotFound)
    );
}
