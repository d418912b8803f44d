//! Appending (PROTOCOL.md section 5.2), `Stream-Seq`, and JSON mode (section 9.1).

use bytes::Bytes;
use ds_protocol::Offset;

use super::Harness;
use super::support::{
    ALL, JSON, TEXT, append, append_req, appended, create, name, read_all, read_messages,
    read_pieces,
};
use crate::{AppendOutcome, AppendRequest, Error, ReadFrom, Storage};

fn with_seq(body: &'static str, seq: &str) -> AppendRequest {
    AppendRequest {
        stream_seq: Some(seq.to_owned()),
        ..append_req(TEXT, body)
    }
}

/// Each append's tail is greater than the one before, and reading from a returned tail yields
/// exactly what was appended after it.
pub async fn append_offsets_strictly_increase<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("increasing");
    create(&store, &s, TEXT).await;
    let bodies = ["a", "bb", "ccc", "d", "eeeee"];
    let mut tails = vec![Offset::ZERO];
    for body in bodies {
        let next = append(&store, &s, TEXT, body).await;
        assert!(
            next > *tails.last().expect("non-empty"),
            "{next} after {tails:?}"
        );
        tails.push(next);
    }
    for (i, from) in tails.iter().enumerate() {
        let (pieces, tail) = read_pieces(&store, &s, ReadFrom::At(*from), ALL).await;
        assert_eq!(pieces.concat(), bodies[i..].concat().as_bytes());
        assert_eq!(tail, *tails.last().expect("non-empty"));
    }
}

/// An append answers with the new tail, which `head` then reports, and counts its bytes.
pub async fn append_returns_new_tail_and_updates_head<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("tail");
    create(&store, &s, TEXT).await;
    let outcome = store.append(&s, append_req(TEXT, "hello")).await;
    let Ok(AppendOutcome::Appended {
        next,
        closed: false,
        producer: None,
    }) = outcome
    else {
        panic!("expected a plain Appended, got {outcome:?}");
    };
    let info = store.head(&s).await.expect("head");
    assert_eq!(info.next, next);
    assert!(!info.closed);
    assert_eq!(info.bytes, 5);
}

/// Appending to a stream that does not exist is `NotFound`.
pub async fn append_to_missing_stream_is_not_found<H: Harness>(h: &H) {
    let store = h.open().await;
    assert_matches!(
        store.append(&name("missing"), append_req(TEXT, "x")).await,
        Err(Error::NotFound)
    );
}

/// A body whose content type differs from the stream's is rejected and not written.
pub async fn append_with_mismatched_content_type_is_rejected<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("ct-mismatch");
    create(&store, &s, TEXT).await;
    assert_matches!(
        store.append(&s, append_req(JSON, "{}")).await,
        Err(Error::ContentTypeMismatch { expected, actual })
            if expected == TEXT && actual == JSON
    );
    assert_eq!(store.head(&s).await.expect("head").next, Offset::ZERO);
}

/// Append content types compare case-insensitively and without parameters.
pub async fn append_content_type_compare_ignores_case_and_params<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("ct-params");
    create(&store, &s, TEXT).await;
    append(&store, &s, "Text/Plain", "a").await;
    append(&store, &s, "text/plain; charset=utf-8", "b").await;
    assert_eq!(read_all(&store, &s).await, b"ab");
}

/// An empty body without `Stream-Closed` is rejected.
pub async fn append_empty_body_without_close_is_rejected<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("empty-body");
    create(&store, &s, TEXT).await;
    assert_matches!(
        store.append(&s, append_req(TEXT, Bytes::new())).await,
        Err(Error::EmptyBody)
    );
    assert!(!store.head(&s).await.expect("head").closed);
}

/// `Stream-Seq` must strictly increase: an equal or smaller value is a regression.
pub async fn append_stream_seq_must_strictly_increase<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("stream-seq");
    create(&store, &s, TEXT).await;
    appended(store.append(&s, with_seq("a", "b")).await);
    assert_matches!(
        store.append(&s, with_seq("x", "b")).await,
        Err(Error::SeqRegression { last, received }) if last == "b" && received == "b"
    );
    assert_matches!(
        store.append(&s, with_seq("x", "a")).await,
        Err(Error::SeqRegression { last, received }) if last == "b" && received == "a"
    );
    appended(store.append(&s, with_seq("c", "c")).await);
    // Appends without Stream-Seq are not ordered against it.
    append(&store, &s, TEXT, "d").await;
    assert_eq!(read_all(&store, &s).await, b"acd");
}

/// `Stream-Seq` compares byte-wise: "10" sorts before "2".
pub async fn append_stream_seq_is_compared_bytewise<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("bytewise");
    create(&store, &s, TEXT).await;
    appended(store.append(&s, with_seq("a", "2")).await);
    assert_matches!(
        store.append(&s, with_seq("b", "10")).await,
        Err(Error::SeqRegression { last, received }) if last == "2" && received == "10"
    );
    appended(store.append(&s, with_seq("c", "3")).await);
    assert_eq!(read_all(&store, &s).await, b"ac");
}

/// A request rejected for another reason does not record its `Stream-Seq`.
pub async fn append_rejected_stream_seq_is_not_recorded<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("seq-not-recorded");
    create(&store, &s, TEXT).await;
    appended(store.append(&s, with_seq("a", "1")).await);
    let wrong_type = AppendRequest {
        content_type: Some(JSON.to_owned()),
        ..with_seq("{}", "5")
    };
    assert_matches!(
        store.append(&s, wrong_type).await,
        Err(Error::ContentTypeMismatch { .. })
    );
    appended(store.append(&s, with_seq("b", "2")).await);
    assert_eq!(read_all(&store, &s).await, b"ab");
}

/// A JSON array body is flattened exactly one level (section 9.1.2's examples).
pub async fn json_append_flattens_one_array_level<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("flatten");
    create(&store, &s, JSON).await;
    append(&store, &s, JSON, r#"{"event":"created"}"#).await;
    append(&store, &s, JSON, r#"[{"event":"a"},{"event":"b"}]"#).await;
    append(&store, &s, JSON, "[[1,2],[3,4]]").await;
    append(&store, &s, JSON, "[[[1,2,3]]]").await;
    append(&store, &s, JSON, r#""text""#).await;
    assert_eq!(
        read_messages(&store, &s).await,
        [
            r#"{"event":"created"}"#,
            r#"{"event":"a"}"#,
            r#"{"event":"b"}"#,
            "[1,2]",
            "[3,4]",
            "[[1,2,3]]",
            r#""text""#,
        ]
    );
}

/// Each message of a JSON stream has its own position: a read from the tail after one append
/// returns exactly the messages of the next.
pub async fn json_append_keeps_each_post_a_distinct_unit<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("json-units");
    create(&store, &s, JSON).await;
    let first = append(&store, &s, JSON, "[1,2]").await;
    append(&store, &s, JSON, "[3]").await;
    let (pieces, _) = read_pieces(&store, &s, ReadFrom::At(first), ALL).await;
    assert_eq!(pieces, [Bytes::from_static(b"3")]);
}

/// A JSON append of `[]` is rejected (section 9.1.3) and writes nothing.
pub async fn json_append_of_empty_array_is_rejected<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("json-empty-append");
    create(&store, &s, JSON).await;
    assert_matches!(
        store.append(&s, append_req(JSON, "[]")).await,
        Err(Error::EmptyJsonArray)
    );
    assert_eq!(store.head(&s).await.expect("head").next, Offset::ZERO);
}

/// Invalid JSON is rejected and writes nothing, not even its valid prefix.
pub async fn json_append_of_invalid_json_is_rejected<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("json-invalid-append");
    create(&store, &s, JSON).await;
    for body in [r#"{"a":"#, "[1,2", "[1,}", "not json", r#"{"a":1} {"b":2}"#] {
        assert_matches!(
            store.append(&s, append_req(JSON, body)).await,
            Err(Error::InvalidJson(_))
        );
    }
    assert_eq!(store.head(&s).await.expect("head").next, Offset::ZERO);
    assert!(read_messages(&store, &s).await.is_empty());
}
