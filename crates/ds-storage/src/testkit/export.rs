//! [`Storage::export_meta`]: what a transfer export needs beyond `head` (fork point, first own
//! position, writer state), the same on every backend and across a restart.

use ds_protocol::{Offset, StreamName};

use super::Harness;
use super::support::{
    ALL, TEXT, append, append_req, appended, close_req, create, created, fork_req, name,
    producer_req, skip,
};
use crate::rules::ProducerState;
use crate::{AppendRequest, Error, ForkPoint, ReadFrom, Storage};

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
