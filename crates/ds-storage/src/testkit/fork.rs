//! Forks (PROTOCOL.md section 4.2): boundaries, sub-offsets, independence, soft delete and the
//! cleanup cascade.

use ds_protocol::Offset;

use super::Harness;
use super::support::{
    ALL, BINARY, JSON, TEXT, append, append_req, close_req, create, create_req, created, existed,
    fork_req, name, producer_req, read_all, read_messages,
};
use crate::{AppendOutcome, AppendRequest, CreateRequest, Error, ReadFrom, Storage};

/// Without `Stream-Fork-Offset` a fork starts at the source's tail, inherits all of its data,
/// shares its offsets, and stores nothing of its own yet.
pub async fn fork_defaults_to_source_tail<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, TEXT).await;
    append(&store, &source, TEXT, "hello ").await;
    let tail = append(&store, &source, TEXT, "world").await;
    let info = created(store.create(&fork, fork_req(&source, None, 0)).await);
    assert_eq!(info.next, tail);
    assert_eq!(info.forked_from.as_ref(), Some(&source));
    assert_eq!(info.content_type, TEXT);
    assert_eq!(info.bytes, 0);
    assert!(!info.closed);
    assert_ne!(
        info.stream_id,
        store.head(&source).await.expect("head").stream_id
    );
    let chunk = store.read(&fork, ReadFrom::Start, ALL).await.expect("read");
    assert_eq!(chunk.pieces.concat(), b"hello world");
    assert_eq!(chunk.next, tail);
    assert!(chunk.up_to_date);
    assert_eq!(chunk.stream_id, info.stream_id);
}

/// A fork at an offset inherits exactly the data before it, and the same offsets address it.
pub async fn fork_at_offset_inherits_data_before_it<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, TEXT).await;
    let after_a = append(&store, &source, TEXT, "aaa").await;
    let after_b = append(&store, &source, TEXT, "bbb").await;
    append(&store, &source, TEXT, "ccc").await;
    let info = created(
        store
            .create(&fork, fork_req(&source, Some(after_b), 0))
            .await,
    );
    assert_eq!(info.next, after_b);
    assert_eq!(read_all(&store, &fork).await, b"aaabbb");
    let chunk = store
        .read(&fork, ReadFrom::At(after_a), ALL)
        .await
        .expect("read");
    assert_eq!(chunk.pieces.concat(), b"bbb");
    assert_eq!(chunk.next, after_b);
}

/// A fork at the zero offset inherits nothing.
pub async fn fork_at_zero_inherits_nothing<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, TEXT).await;
    append(&store, &source, TEXT, "data").await;
    let info = created(
        store
            .create(&fork, fork_req(&source, Some(Offset::ZERO), 0))
            .await,
    );
    assert_eq!(info.next, Offset::ZERO);
    assert!(read_all(&store, &fork).await.is_empty());
    append(&store, &fork, TEXT, "own").await;
    assert_eq!(read_all(&store, &fork).await, b"own");
}

/// A binary sub-offset inherits that many bytes past the anchor, splitting a record.
pub async fn fork_binary_sub_offset_splits_a_record<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, BINARY).await;
    let after_hello = append(&store, &source, BINARY, "hello").await;
    append(&store, &source, BINARY, "world").await;
    let info = created(
        store
            .create(&fork, fork_req(&source, Some(Offset::ZERO), 3))
            .await,
    );
    assert!(info.next > Offset::ZERO);
    assert_eq!(read_all(&store, &fork).await, b"hel");
    let tail = append(&store, &fork, BINARY, "p!").await;
    assert!(tail > info.next);
    assert_eq!(read_all(&store, &fork).await, b"help!");
    // Chunked reads cross the split boundary exactly.
    let (pieces, end) = super::support::read_pieces(&store, &fork, ReadFrom::Start, 2).await;
    assert_eq!(pieces.concat(), b"help!");
    assert_eq!(end, tail);
    // The anchor can be any position; "world" starts after "hello".
    let second = name("fork-2");
    created(
        store
            .create(&second, fork_req(&source, Some(after_hello), 2))
            .await,
    );
    assert_eq!(read_all(&store, &second).await, b"hellowo");
}

/// A sub-offset equal to the record's length inherits the whole record.
pub async fn fork_sub_offset_equal_to_record_length_is_allowed<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, BINARY).await;
    append(&store, &source, BINARY, "hello").await;
    append(&store, &source, BINARY, "world").await;
    created(
        store
            .create(&fork, fork_req(&source, Some(Offset::ZERO), 5))
            .await,
    );
    assert_eq!(read_all(&store, &fork).await, b"hello");
    append(&store, &fork, BINARY, "!").await;
    assert_eq!(read_all(&store, &fork).await, b"hello!");
}

/// A binary sub-offset past the end of the anchor's record is `SubOffsetOvershoot`.
pub async fn fork_binary_sub_offset_overshoot_is_rejected<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, BINARY).await;
    append(&store, &source, BINARY, "hello").await;
    append(&store, &source, BINARY, "world").await;
    assert_matches!(
        store
            .create(&fork, fork_req(&source, Some(Offset::ZERO), 6))
            .await,
        Err(Error::SubOffsetOvershoot {
            sub_offset: 6,
            available: 5
        })
    );
    let source_tail = store.head(&source).await.expect("head").next;
    let at_tail = name("fork-at-tail");
    assert_matches!(
        store
            .create(&at_tail, fork_req(&source, Some(source_tail), 1))
            .await,
        Err(Error::SubOffsetOvershoot {
            sub_offset: 1,
            available: 0
        })
    );
    assert_matches!(store.head(&fork).await, Err(Error::NotFound));
    // The failed forks hold no reference: deleting the source removes it outright.
    store.delete(&source).await.expect("delete");
    assert_matches!(store.head(&source).await, Err(Error::NotFound));
}

/// A JSON sub-offset counts messages of the anchor's append batch.
pub async fn fork_json_sub_offset_counts_messages_of_a_batch<H: Harness>(h: &H) {
    let store = h.open().await;
    let source = name("src");
    create(&store, &source, JSON).await;
    append(&store, &source, JSON, "[1,2,3]").await;
    append(&store, &source, JSON, "[4,5]").await;
    for (sub, expected) in [
        (0, vec![]),
        (1, vec!["1"]),
        (2, vec!["1", "2"]),
        (3, vec!["1", "2", "3"]),
    ] {
        let fork = name(&format!("fork-{sub}"));
        created(
            store
                .create(&fork, fork_req(&source, Some(Offset::ZERO), sub))
                .await,
        );
        assert_eq!(
            read_messages(&store, &fork).await,
            expected,
            "sub-offset {sub}"
        );
        append(&store, &fork, JSON, "9").await;
        let mut with_own = expected.clone();
        with_own.push("9");
        assert_eq!(
            read_messages(&store, &fork).await,
            with_own,
            "sub-offset {sub}"
        );
    }
}

/// A JSON sub-offset past the end of the anchor's batch is `SubOffsetOvershoot`.
pub async fn fork_json_sub_offset_overshoot_is_rejected<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, JSON).await;
    append(&store, &source, JSON, "[1,2,3]").await;
    append(&store, &source, JSON, "[4,5]").await;
    assert_matches!(
        store
            .create(&fork, fork_req(&source, Some(Offset::ZERO), 4))
            .await,
        Err(Error::SubOffsetOvershoot {
            sub_offset: 4,
            available: 3
        })
    );
}

/// A fork of a fork sees the first source's data up to the first fork point, then the
/// middle fork's own data, then its own.
pub async fn fork_of_fork_composes<H: Harness>(h: &H) {
    let store = h.open().await;
    let (a, b, c) = (name("a"), name("b"), name("c"));
    create(&store, &a, TEXT).await;
    let after_abc = append(&store, &a, TEXT, "abc").await;
    append(&store, &a, TEXT, "def").await;
    created(store.create(&b, fork_req(&a, Some(after_abc), 0)).await);
    let after_xy = append(&store, &b, TEXT, "XY").await;
    append(&store, &b, TEXT, "Q").await;
    let info = created(store.create(&c, fork_req(&b, Some(after_xy), 0)).await);
    assert_eq!(info.next, after_xy);
    assert_eq!(info.forked_from.as_ref(), Some(&b));
    assert_eq!(read_all(&store, &c).await, b"abcXY");
    append(&store, &c, TEXT, "Z").await;
    assert_eq!(read_all(&store, &c).await, b"abcXYZ");
    let (pieces, _) = super::support::read_pieces(&store, &c, ReadFrom::Start, 1).await;
    assert_eq!(pieces.concat(), b"abcXYZ");
    assert_eq!(read_all(&store, &a).await, b"abcdef");
    assert_eq!(read_all(&store, &b).await, b"abcXYQ");
}

/// A fork of a fork may split data the middle fork inherited.
pub async fn fork_of_fork_with_sub_offset_in_inherited_data<H: Harness>(h: &H) {
    let store = h.open().await;
    let (a, b, c) = (name("a"), name("b"), name("c"));
    create(&store, &a, BINARY).await;
    append(&store, &a, BINARY, "abc").await;
    created(store.create(&b, fork_req(&a, None, 0)).await);
    append(&store, &b, BINARY, "XY").await;
    created(store.create(&c, fork_req(&b, Some(Offset::ZERO), 2)).await);
    assert_eq!(read_all(&store, &c).await, b"ab");
    append(&store, &c, BINARY, "!").await;
    assert_eq!(read_all(&store, &c).await, b"ab!");
}

/// Appends to the source after the fork point never show up in the fork.
pub async fn fork_does_not_see_source_appends_after_fork<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, TEXT).await;
    append(&store, &source, TEXT, "before").await;
    let info = created(store.create(&fork, fork_req(&source, None, 0)).await);
    append(&store, &source, TEXT, " after").await;
    assert_eq!(read_all(&store, &fork).await, b"before");
    assert_eq!(store.head(&fork).await.expect("head").next, info.next);
    append(&store, &fork, TEXT, " mine").await;
    assert_eq!(read_all(&store, &fork).await, b"before mine");
}

/// Appends to, closure and deletion of a fork leave the source as it was.
pub async fn fork_appends_do_not_affect_source<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, TEXT).await;
    let tail = append(&store, &source, TEXT, "shared").await;
    created(store.create(&fork, fork_req(&source, None, 0)).await);
    append(&store, &fork, TEXT, " fork").await;
    store.append(&fork, close_req()).await.expect("close fork");
    let info = store.head(&source).await.expect("head");
    assert_eq!(info.next, tail);
    assert!(!info.closed);
    assert_eq!(read_all(&store, &source).await, b"shared");
    store.delete(&fork).await.expect("delete fork");
    append(&store, &source, TEXT, " more").await;
    assert_eq!(read_all(&store, &source).await, b"shared more");
}

/// A fork of a closed stream starts open and accepts appends.
pub async fn fork_of_closed_source_starts_open<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, TEXT).await;
    let mid = append(&store, &source, TEXT, "one").await;
    append(&store, &source, TEXT, "two").await;
    store.append(&source, close_req()).await.expect("close");
    let info = created(store.create(&fork, fork_req(&source, Some(mid), 0)).await);
    assert!(!info.closed);
    let chunk = store.read(&fork, ReadFrom::Start, ALL).await.expect("read");
    assert!(!chunk.closed);
    append(&store, &fork, TEXT, "three").await;
    assert_eq!(read_all(&store, &fork).await, b"onethree");
    assert!(store.head(&source).await.expect("head").closed);
}

/// Without a Content-Type a fork inherits the source's, with its semantics; a matching one
/// (in any case, with parameters) is accepted.
pub async fn fork_inherits_content_type<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork, explicit) = (name("src"), name("fork"), name("explicit"));
    create(&store, &source, JSON).await;
    append(&store, &source, JSON, "[1,2]").await;
    let info = created(store.create(&fork, fork_req(&source, None, 0)).await);
    assert_eq!(info.content_type, JSON);
    append(&store, &fork, JSON, "[3,4]").await;
    assert_eq!(read_messages(&store, &fork).await, ["1", "2", "3", "4"]);
    assert_matches!(
        store.append(&fork, append_req(TEXT, "x")).await,
        Err(Error::ContentTypeMismatch { .. })
    );
    let req = CreateRequest {
        content_type: Some("Application/JSON; charset=utf-8".to_owned()),
        ..fork_req(&source, None, 0)
    };
    created(store.create(&explicit, req).await);
    // A re-PUT of the fork without Content-Type still matches.
    existed(
        store
            .create(&fork, fork_req(&source, Some(info.next), 0))
            .await,
    );
}

/// A JSON read across the fork boundary returns inherited and own messages in one chunk.
pub async fn fork_json_read_spans_the_boundary<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, JSON).await;
    append(&store, &source, JSON, r#"[{"n":1},{"n":2}]"#).await;
    created(store.create(&fork, fork_req(&source, None, 0)).await);
    append(&store, &fork, JSON, r#"{"n":3}"#).await;
    let chunk = store.read(&fork, ReadFrom::Start, ALL).await.expect("read");
    assert_eq!(chunk.pieces.len(), 3);
    assert_eq!(chunk.pieces.concat(), br#"{"n":1}{"n":2}{"n":3}"#);
    assert!(chunk.up_to_date);
    // One message at a time, across the boundary too.
    let (pieces, tail) = super::support::read_pieces(&store, &fork, ReadFrom::Start, 1).await;
    assert_eq!(pieces.len(), 3);
    assert_eq!(tail, chunk.next);
}

/// A fork whose Content-Type differs from the source's is rejected and leaves no reference:
/// deleting the source afterwards removes it completely.
pub async fn fork_with_mismatched_content_type_leaves_no_reference<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, TEXT).await;
    append(&store, &source, TEXT, "data").await;
    let req = CreateRequest {
        content_type: Some(JSON.to_owned()),
        ..fork_req(&source, None, 0)
    };
    assert_matches!(
        store.create(&fork, req).await,
        Err(Error::ContentTypeMismatch { expected, actual }) if expected == TEXT && actual == JSON
    );
    assert_matches!(store.head(&fork).await, Err(Error::NotFound));
    store.delete(&source).await.expect("delete");
    assert_matches!(store.head(&source).await, Err(Error::NotFound));
    created(store.create(&source, create_req(TEXT)).await);
}

/// A fork starts with fresh writer state: no producer epochs and no `Stream-Seq` from the
/// source.
pub async fn fork_does_not_inherit_writer_state<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, TEXT).await;
    store
        .append(&source, producer_req(TEXT, "a", "p", 5, 0))
        .await
        .expect("append");
    store
        .append(
            &source,
            AppendRequest {
                stream_seq: Some("9".to_owned()),
                ..append_req(TEXT, "b")
            },
        )
        .await
        .expect("append");
    created(store.create(&fork, fork_req(&source, None, 0)).await);
    assert_matches!(
        store
            .append(&fork, producer_req(TEXT, "c", "p", 0, 0))
            .await,
        Ok(AppendOutcome::Appended { .. })
    );
    store
        .append(
            &fork,
            AppendRequest {
                stream_seq: Some("1".to_owned()),
                ..append_req(TEXT, "d")
            },
        )
        .await
        .expect("Stream-Seq starts afresh on the fork");
    assert_eq!(read_all(&store, &fork).await, b"abcd");
    // And the source's state is untouched by the fork's.
    assert_matches!(
        store
            .append(&source, producer_req(TEXT, "x", "p", 0, 1))
            .await,
        Err(Error::StaleEpoch { current: 5 })
    );
}

/// Deleting a source that forks reference soft-deletes it: every direct operation is `Gone`,
/// the name cannot be created again, and it is no longer listed.
pub async fn deleting_forked_source_soft_deletes_it<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, TEXT).await;
    append(&store, &source, TEXT, "data").await;
    created(store.create(&fork, fork_req(&source, None, 0)).await);
    store.delete(&source).await.expect("soft delete");
    assert_matches!(store.head(&source).await, Err(Error::Gone));
    assert_matches!(
        store.read(&source, ReadFrom::Start, ALL).await,
        Err(Error::Gone)
    );
    assert_matches!(
        store.append(&source, append_req(TEXT, "x")).await,
        Err(Error::Gone)
    );
    assert_matches!(store.append(&source, close_req()).await, Err(Error::Gone));
    assert_matches!(store.subscribe(&source).await, Err(Error::Gone));
    assert_matches!(store.delete(&source).await, Err(Error::Gone));
    assert_matches!(
        store.create(&source, create_req(TEXT)).await,
        Err(Error::NameHeldBySoftDeleted)
    );
    let listed = store.list().await.expect("list");
    let names: Vec<&str> = listed.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["fork"]);
}

/// A fork keeps reading (in chunks, too) the data it inherited from a soft-deleted source,
/// and keeps accepting appends.
pub async fn soft_deleted_source_stays_readable_through_fork<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, TEXT).await;
    append(&store, &source, TEXT, "inherited ").await;
    append(&store, &source, TEXT, "data").await;
    created(store.create(&fork, fork_req(&source, None, 0)).await);
    store.delete(&source).await.expect("soft delete");
    assert_eq!(read_all(&store, &fork).await, b"inherited data");
    append(&store, &fork, TEXT, "!").await;
    let (pieces, _) = super::support::read_pieces(&store, &fork, ReadFrom::Start, 3).await;
    assert_eq!(pieces.concat(), b"inherited data!");
    assert_eq!(
        store.head(&fork).await.expect("head").forked_from.as_ref(),
        Some(&source)
    );
}

/// Deleting the last fork of a soft-deleted source removes the source: its name is then
/// `NotFound` and free to create again.
pub async fn deleting_last_fork_cascades_to_soft_deleted_source<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, f1, f2) = (name("src"), name("fork-1"), name("fork-2"));
    create(&store, &source, TEXT).await;
    append(&store, &source, TEXT, "data").await;
    created(store.create(&f1, fork_req(&source, None, 0)).await);
    created(store.create(&f2, fork_req(&source, None, 0)).await);
    store.delete(&source).await.expect("soft delete");
    store.delete(&f1).await.expect("delete fork 1");
    assert_matches!(store.head(&source).await, Err(Error::Gone));
    assert_eq!(read_all(&store, &f2).await, b"data");
    store.delete(&f2).await.expect("delete fork 2");
    assert_matches!(store.head(&source).await, Err(Error::NotFound));
    let info = created(store.create(&source, create_req(TEXT)).await);
    assert_eq!(info.next, Offset::ZERO);
    assert!(read_all(&store, &source).await.is_empty());
}

/// A source whose forks are all gone is deleted outright, not soft-deleted.
pub async fn deleting_source_after_its_forks_removes_it<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, TEXT).await;
    created(store.create(&fork, fork_req(&source, None, 0)).await);
    store.delete(&fork).await.expect("delete fork");
    store.delete(&source).await.expect("delete source");
    assert_matches!(store.head(&source).await, Err(Error::NotFound));
    created(store.create(&source, create_req(TEXT)).await);
}

/// The cleanup cascade runs up a chain: deleting the last stream of a chain of soft-deleted
/// forks removes every one of them.
pub async fn cascade_runs_up_a_three_level_chain<H: Harness>(h: &H) {
    let store = h.open().await;
    let (a, b, c) = (name("a"), name("b"), name("c"));
    create(&store, &a, TEXT).await;
    append(&store, &a, TEXT, "a").await;
    created(store.create(&b, fork_req(&a, None, 0)).await);
    append(&store, &b, TEXT, "b").await;
    created(store.create(&c, fork_req(&b, None, 0)).await);
    append(&store, &c, TEXT, "c").await;
    store.delete(&a).await.expect("soft delete a");
    store.delete(&b).await.expect("soft delete b");
    assert_matches!(store.head(&a).await, Err(Error::Gone));
    assert_matches!(store.head(&b).await, Err(Error::Gone));
    assert_eq!(read_all(&store, &c).await, b"abc");
    store.delete(&c).await.expect("delete c");
    for s in [&a, &b, &c] {
        assert_matches!(store.head(s).await, Err(Error::NotFound));
    }
    assert!(store.list().await.expect("list").is_empty());
}

/// A fork re-created with the same source, offset and sub-offset is `Existed`.
pub async fn fork_recreate_with_same_config_is_idempotent<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, BINARY).await;
    append(&store, &source, BINARY, "hello").await;
    let req = fork_req(&source, Some(Offset::ZERO), 3);
    let first = created(store.create(&fork, req.clone()).await);
    append(&store, &fork, BINARY, "p").await;
    let again = existed(store.create(&fork, req).await);
    assert_eq!(again.stream_id, first.stream_id);
    assert_eq!(read_all(&store, &fork).await, b"help");
}

/// A fork re-created with a different sub-offset, offset, source or kind is a conflict.
pub async fn fork_recreate_with_different_config_conflicts<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, other, fork) = (name("src"), name("other"), name("fork"));
    create(&store, &source, BINARY).await;
    create(&store, &other, BINARY).await;
    let tail = append(&store, &source, BINARY, "hello").await;
    created(
        store
            .create(&fork, fork_req(&source, Some(Offset::ZERO), 3))
            .await,
    );
    for req in [
        fork_req(&source, Some(Offset::ZERO), 2),
        fork_req(&source, Some(tail), 0),
        fork_req(&other, Some(Offset::ZERO), 3),
        create_req(BINARY),
    ] {
        assert_matches!(
            store.create(&fork, req).await,
            Err(Error::ConfigMismatch { .. })
        );
    }
    // A plain stream re-created as a fork conflicts too.
    assert_matches!(
        store.create(&other, fork_req(&source, None, 0)).await,
        Err(Error::ConfigMismatch { .. })
    );
}

/// Forking a stream that does not exist is `ForkSourceNotFound`.
pub async fn fork_of_missing_source_is_rejected<H: Harness>(h: &H) {
    let store = h.open().await;
    let fork = name("fork");
    assert_matches!(
        store
            .create(&fork, fork_req(&name("missing"), None, 0))
            .await,
        Err(Error::ForkSourceNotFound)
    );
    assert_matches!(store.head(&fork).await, Err(Error::NotFound));
}

/// Forking a soft-deleted stream is `ForkSourceGone`.
pub async fn fork_of_soft_deleted_source_is_rejected<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork, late) = (name("src"), name("fork"), name("late"));
    create(&store, &source, TEXT).await;
    created(store.create(&fork, fork_req(&source, None, 0)).await);
    store.delete(&source).await.expect("soft delete");
    assert_matches!(
        store.create(&late, fork_req(&source, None, 0)).await,
        Err(Error::ForkSourceGone)
    );
    assert_matches!(store.head(&late).await, Err(Error::NotFound));
}

/// A fork offset past the source's tail is `ForkOffsetBeyondTail`.
pub async fn fork_offset_beyond_source_tail_is_rejected<H: Harness>(h: &H) {
    let store = h.open().await;
    let (source, fork) = (name("src"), name("fork"));
    create(&store, &source, TEXT).await;
    let tail = append(&store, &source, TEXT, "data").await;
    let beyond = Offset::new(tail.seq + 1, tail.byte + 10);
    assert_matches!(
        store.create(&fork, fork_req(&source, Some(beyond), 0)).await,
        Err(Error::ForkOffsetBeyondTail { offset, tail: t }) if offset == beyond && t == tail
    );
    assert_matches!(store.head(&fork).await, Err(Error::NotFound));
}
