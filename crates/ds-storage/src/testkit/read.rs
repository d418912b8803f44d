//! Catch-up reads (PROTOCOL.md sections 5.6 and 8).

use bytes::Bytes;
use ds_protocol::Offset;

use super::Harness;
use super::support::{
    ALL, BINARY, JSON, TEXT, append, appended, close_req, create, created, fork_req, name,
    read_all, read_pieces,
};
use crate::{Error, ReadFrom, Storage};

/// Reading from the start returns every byte, up to date, ending at the tail.
pub async fn read_from_start_returns_all_data<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("all");
    create(&store, &s, TEXT).await;
    append(&store, &s, TEXT, "hello ").await;
    let tail = append(&store, &s, TEXT, "world").await;
    let chunk = store.read(&s, ReadFrom::Start, ALL).await.expect("read");
    assert_eq!(chunk.pieces.concat(), b"hello world");
    assert_eq!(chunk.start, Offset::ZERO);
    assert_eq!(chunk.next, tail);
    assert!(chunk.up_to_date);
    assert!(!chunk.closed);
}

/// An empty stream reads as no data, up to date at the zero offset.
pub async fn read_of_empty_stream_is_up_to_date<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("empty");
    create(&store, &s, TEXT).await;
    for from in [ReadFrom::Start, ReadFrom::At(Offset::ZERO), ReadFrom::Tail] {
        let chunk = store.read(&s, from, ALL).await.expect("read");
        assert!(chunk.is_empty(), "{from:?}");
        assert_eq!(chunk.next, Offset::ZERO, "{from:?}");
        assert!(chunk.up_to_date, "{from:?}");
    }
}

/// Reading from an offset returned by an append yields only what came after it.
pub async fn read_from_mid_stream_offset_returns_the_rest<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("mid");
    create(&store, &s, TEXT).await;
    let after_a = append(&store, &s, TEXT, "aaa").await;
    let after_b = append(&store, &s, TEXT, "bbb").await;
    let tail = append(&store, &s, TEXT, "ccc").await;
    let chunk = store
        .read(&s, ReadFrom::At(after_a), ALL)
        .await
        .expect("read");
    assert_eq!(chunk.pieces.concat(), b"bbbccc");
    assert_eq!(chunk.start, after_a);
    assert_eq!(chunk.next, tail);
    let chunk = store
        .read(&s, ReadFrom::At(after_b), ALL)
        .await
        .expect("read");
    assert_eq!(chunk.pieces.concat(), b"ccc");
    let chunk = store.read(&s, ReadFrom::At(tail), ALL).await.expect("read");
    assert!(chunk.is_empty());
    assert_eq!(chunk.next, tail);
    assert!(chunk.up_to_date);
}

/// A chunk names the stream's incarnation and content type.
pub async fn read_chunk_reports_stream_and_position<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("chunk-meta");
    let info = create(&store, &s, JSON).await;
    let chunk = store.read(&s, ReadFrom::Start, ALL).await.expect("read");
    assert_eq!(chunk.stream_id, info.stream_id);
    assert_eq!(chunk.content_type, JSON);
}

/// With a small limit, a binary read returns a non-empty prefix of at most that many bytes,
/// not up to date, and reading from its `next` continues exactly where it stopped.
pub async fn read_with_small_limit_returns_prefix_and_resumes_exactly<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("prefix");
    create(&store, &s, BINARY).await;
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let tail = append(&store, &s, BINARY, data.clone()).await;
    let first = store.read(&s, ReadFrom::Start, 100).await.expect("read");
    assert!(!first.is_empty());
    assert!(
        first.len() <= 100,
        "chunk of {} bytes for a limit of 100",
        first.len()
    );
    assert_eq!(first.pieces.concat(), data[..first.len()]);
    assert!(!first.up_to_date);
    assert!(first.next > first.start && first.next < tail);
    let rest = store
        .read(&s, ReadFrom::At(first.next), ALL)
        .await
        .expect("read");
    assert_eq!(rest.start, first.next);
    assert_eq!(rest.pieces.concat(), data[first.len()..]);
    assert_eq!(rest.next, tail);
    assert!(rest.up_to_date);
}

/// Reading a binary stream in small chunks, each from the previous `next`, reassembles
/// exactly the appended bytes, across append boundaries.
pub async fn read_in_small_chunks_reassembles_the_bytes<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("chunks");
    create(&store, &s, BINARY).await;
    let mut expected = Vec::new();
    for i in 0..7u8 {
        let body: Vec<u8> = (0..(i * 5 + 3))
            .map(|j| i.wrapping_mul(31).wrapping_add(j))
            .collect();
        append(&store, &s, BINARY, body.clone()).await;
        expected.extend(body);
    }
    for limit in [1, 3, 4, 7, 64] {
        let mut got = Vec::new();
        let mut from = ReadFrom::Start;
        let mut chunks = 0;
        loop {
            let chunk = store.read(&s, from, limit).await.expect("read");
            assert!(
                chunk.len() <= limit,
                "chunk of {} bytes for a limit of {limit}",
                chunk.len()
            );
            got.extend(chunk.pieces.concat());
            chunks += 1;
            if chunk.up_to_date {
                break;
            }
            assert!(
                !chunk.is_empty(),
                "a chunk that is not up to date carries data"
            );
            from = ReadFrom::At(chunk.next);
            assert!(chunks <= expected.len() + 1, "read does not make progress");
        }
        assert_eq!(got, expected, "limit {limit}");
    }
}

/// JSON reads return whole messages only, however small the limit, and reassemble exactly.
pub async fn json_read_returns_whole_messages<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("json-whole");
    create(&store, &s, JSON).await;
    append(&store, &s, JSON, r#"["aaaaaaaaaa","bbbbbbbbbb"]"#).await;
    append(&store, &s, JSON, r#"{"c":"cccccccccc"}"#).await;
    let expected = [
        r#""aaaaaaaaaa""#,
        r#""bbbbbbbbbb""#,
        r#"{"c":"cccccccccc"}"#,
    ];
    for limit in [1, 15, 30, ALL] {
        let (pieces, _) = read_pieces(&store, &s, ReadFrom::Start, limit).await;
        let got: Vec<&[u8]> = pieces.iter().map(Bytes::as_ref).collect();
        let want: Vec<&[u8]> = expected.iter().map(|m| m.as_bytes()).collect();
        assert_eq!(got, want, "limit {limit}");
    }
}

/// A JSON read with a limit smaller than the next message still returns that message.
pub async fn json_read_returns_at_least_one_message<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("json-one");
    create(&store, &s, JSON).await;
    append(&store, &s, JSON, r#"["a long first message","second"]"#).await;
    let chunk = store.read(&s, ReadFrom::Start, 1).await.expect("read");
    assert_eq!(
        chunk.pieces,
        [Bytes::from_static(br#""a long first message""#)]
    );
    assert!(!chunk.up_to_date);
    let rest = store
        .read(&s, ReadFrom::At(chunk.next), 1)
        .await
        .expect("read");
    assert_eq!(rest.pieces, [Bytes::from_static(br#""second""#)]);
    assert!(rest.up_to_date);
}

/// Reading from `Tail` returns no data, up to date at the tail.
pub async fn read_from_tail_returns_no_data<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("from-tail");
    create(&store, &s, TEXT).await;
    let tail = append(&store, &s, TEXT, "existing").await;
    let chunk = store.read(&s, ReadFrom::Tail, ALL).await.expect("read");
    assert!(chunk.is_empty());
    assert_eq!(chunk.next, tail);
    assert!(chunk.up_to_date);
    assert!(!chunk.closed);
}

/// Reading from `Tail` of a closed stream signals the closure at once.
pub async fn read_from_tail_of_closed_stream_reports_closed<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("from-tail-closed");
    create(&store, &s, TEXT).await;
    let tail = append(&store, &s, TEXT, "existing").await;
    store.append(&s, close_req()).await.expect("close");
    let chunk = store.read(&s, ReadFrom::Tail, ALL).await.expect("read");
    assert!(chunk.is_empty());
    assert_eq!(chunk.next, tail);
    assert!(chunk.up_to_date);
    assert!(chunk.closed);
}

/// A partial chunk of a closed stream is neither up to date nor closed; the last chunk is both.
pub async fn read_partial_chunk_is_neither_up_to_date_nor_closed<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("partial-closed");
    create(&store, &s, BINARY).await;
    append(&store, &s, BINARY, vec![7u8; 100]).await;
    append(&store, &s, BINARY, vec![8u8; 100]).await;
    store.append(&s, close_req()).await.expect("close");
    let first = store.read(&s, ReadFrom::Start, 50).await.expect("read");
    assert!(!first.up_to_date);
    assert!(!first.closed);
    let last = store
        .read(&s, ReadFrom::At(first.next), ALL)
        .await
        .expect("read");
    assert!(last.up_to_date);
    assert!(last.closed);
}

/// Reading at the final offset of a closed stream is the EOF signal: no data, closed.
pub async fn read_at_final_offset_of_closed_stream_is_eof<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("eof");
    create(&store, &s, TEXT).await;
    let tail = append(&store, &s, TEXT, "data").await;
    let before_close = store.read(&s, ReadFrom::At(tail), ALL).await.expect("read");
    assert!(before_close.up_to_date);
    assert!(!before_close.closed);
    store.append(&s, close_req()).await.expect("close");
    let chunk = store.read(&s, ReadFrom::At(tail), ALL).await.expect("read");
    assert!(chunk.is_empty());
    assert_eq!(chunk.next, tail);
    assert!(chunk.up_to_date);
    assert!(chunk.closed);
}

/// An offset past the tail is not a position of the stream.
pub async fn read_with_offset_beyond_tail_is_rejected<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("beyond");
    create(&store, &s, TEXT).await;
    let tail = append(&store, &s, TEXT, "data").await;
    let bogus = Offset::new(tail.seq + 5, tail.byte + 100);
    assert_matches!(
        store.read(&s, ReadFrom::At(bogus), ALL).await,
        Err(Error::InvalidOffset { offset }) if offset == bogus
    );
}

/// An offset inside the stream that the server never minted is rejected, not misread.
pub async fn read_with_offset_not_on_a_position_is_rejected<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("bogus");
    create(&store, &s, JSON).await;
    append(&store, &s, JSON, r#"["first","second"]"#).await;
    let tail = append(&store, &s, JSON, r#""third""#).await;
    // One byte into the first message: JSON streams have positions only between messages.
    let inside = Offset::new(0, 1);
    assert_matches!(
        store.read(&s, ReadFrom::At(inside), ALL).await,
        Err(Error::InvalidOffset { offset }) if offset == inside
    );
    // The tail's byte position with a sequence number that does not belong to it.
    let wrong_seq = Offset::new(tail.seq + 1, tail.byte);
    assert_matches!(
        store.read(&s, ReadFrom::At(wrong_seq), ALL).await,
        Err(Error::InvalidOffset { .. })
    );
}

/// Reads return exactly the bytes written, all 256 byte values included.
pub async fn reads_are_byte_exact<H: Harness>(h: &H) {
    let store = h.open().await;
    let s = name("bytes");
    create(&store, &s, BINARY).await;
    let every: Vec<u8> = (0..=255u8).collect();
    let reversed: Vec<u8> = every.iter().rev().copied().collect();
    append(&store, &s, BINARY, every.clone()).await;
    append(&store, &s, BINARY, reversed.clone()).await;
    append(&store, &s, BINARY, b"\r\n\0\r\n".to_vec()).await;
    let expected = [every, reversed, b"\r\n\0\r\n".to_vec()].concat();
    assert_eq!(read_all(&store, &s).await, expected);
}

/// Reading a stream that does not exist is `NotFound`.
pub async fn read_of_missing_stream_is_not_found<H: Harness>(h: &H) {
    let store = h.open().await;
    assert_matches!(
        store.read(&name("missing"), ReadFrom::Start, ALL).await,
        Err(Error::NotFound)
    );
    assert_matches!(store.head(&name("missing")).await, Err(Error::NotFound));
}

/// Compares the two reads at every step of a walk from `from` to the tail.
async fn walk<S: Storage>(store: &S, s: &crate::StreamName, limit: usize, json: bool) {
    let mut from = ReadFrom::Start;
    for _ in 0..10_000 {
        let plain = store.read(s, from, limit).await.expect("read");
        let regions = store
            .read_regions(s, from, limit, limit as u64)
            .await
            .expect("read_regions");
        if json {
            assert!(regions.all_bytes(), "a JSON stream's pieces are bytes");
        }
        let len = regions.len();
        let got = regions.into_bytes().expect("file regions read back");
        assert_eq!(len, got.len() as u64, "region lengths add up");
        let ctx = format!("{s:?} from {from:?} limit {limit}");
        assert_eq!(got.stream_id, plain.stream_id, "{ctx}");
        assert_eq!(got.content_type, plain.content_type, "{ctx}");
        assert_eq!(got.start, plain.start, "{ctx}");
        assert_eq!(got.next, plain.next, "{ctx}");
        assert_eq!(got.up_to_date, plain.up_to_date, "{ctx}");
        assert_eq!(got.closed, plain.closed, "{ctx}");
        if json {
            assert_eq!(got.pieces, plain.pieces, "{ctx}");
        } else {
            assert!(
                got.pieces.concat() == plain.pieces.concat(),
                "{ctx}: bytes differ"
            );
        }
        if plain.up_to_date {
            return;
        }
        from = ReadFrom::At(plain.next);
    }
    panic!("{s:?}: the walk at limit {limit} did not reach the tail");
}

/// Walks with `file_limit` for regions and checks each answer against `read`'s.
async fn walk_far<S: Storage>(store: &S, s: &crate::StreamName, limit: usize, file_limit: u64) {
    let whole = read_all(store, s).await;
    let mut got = Vec::new();
    let mut from = ReadFrom::Start;
    for _ in 0..10_000 {
        let ctx = format!("{s:?} from {from:?} limits {limit}/{file_limit}");
        let chunk = store
            .read_regions(s, from, limit, file_limit)
            .await
            .expect("read_regions");
        let in_memory: u64 = chunk
            .pieces
            .iter()
            .filter(|p| matches!(p, crate::ReadPiece::Bytes(_)))
            .map(crate::ReadPiece::len)
            .sum();
        // A JSON answer holds at least one message, however large.
        assert!(
            in_memory <= limit.max(1) as u64 || chunk.pieces.len() == 1,
            "{ctx}: {in_memory} bytes in memory"
        );
        assert!(
            chunk.len() <= file_limit.max(limit as u64),
            "{ctx}: {} bytes",
            chunk.len()
        );
        let plain = store.read(s, from, limit).await.expect("read");
        let chunk = chunk.into_bytes().expect("file regions read back");
        assert_eq!(chunk.start, plain.start, "{ctx}");
        let (bytes, plain_bytes) = (chunk.pieces.concat(), plain.pieces.concat());
        assert!(
            bytes.starts_with(&plain_bytes),
            "{ctx}: begins with read's answer"
        );
        got.extend_from_slice(&bytes);
        if chunk.up_to_date {
            assert!(got == whole, "{ctx}: the walk reassembles the stream");
            return;
        }
        assert!(
            !bytes.is_empty(),
            "{ctx}: an answer short of the tail carries data"
        );
        from = ReadFrom::At(chunk.next);
    }
    panic!("{s:?}: the walk at limits {limit}/{file_limit} did not reach the tail");
}

/// `read_regions` within `read`'s budget answers exactly what `read` answers (the same bytes,
/// start, next and flags), for binary streams with runs large and small, read whole or in
/// chunks that cut records, through a fork's inherited data, after a close; and for JSON
/// streams, the same messages as bytes. With a larger budget for file regions, a walk still
/// reassembles the stream, each answer starting with what `read` answers and keeping its
/// bytes in memory within `read`'s budget.
pub async fn read_regions_answers_what_read_answers<H: Harness>(h: &H) {
    let store = h.open().await;
    let (s, fork) = (name("regions"), name("regions-fork"));
    create(&store, &s, BINARY).await;
    let mut split = None;
    for (i, len) in [100usize, 40_000, 70_000, 10, 33_000, 200_000]
        .into_iter()
        .enumerate()
    {
        let body: Vec<u8> = (0..len).map(|j| (j * 7 + i * 13) as u8).collect();
        let tail = append(&store, &s, BINARY, body).await;
        if i == 2 {
            split = Some(tail);
        }
    }
    created(store.create(&fork, fork_req(&s, split, 0)).await);
    for len in [50_000usize, 5, 64 * 1024] {
        let body: Vec<u8> = (0..len).map(|j| (j * 3 + 1) as u8).collect();
        append(&store, &fork, BINARY, body).await;
    }
    appended(store.append(&s, close_req()).await);
    let j = name("regions-json");
    create(&store, &j, JSON).await;
    append(&store, &j, JSON, "[1,\"two\",{\"three\":3}]").await;
    let big = format!("[\"{}\"]", "x".repeat(40_000));
    append(&store, &j, JSON, big).await;
    for limit in [1_000, 32 * 1024 + 1, 50_000, ALL] {
        walk(&store, &s, limit, false).await;
        walk(&store, &fork, limit, false).await;
        walk(&store, &j, limit, true).await;
    }
    for (limit, file_limit) in [(1_000, 100_000), (20_000, 150_000), (50_000, 1 << 20)] {
        walk_far(&store, &s, limit, file_limit).await;
        walk_far(&store, &fork, limit, file_limit).await;
        walk_far(&store, &j, limit, file_limit).await;
    }
    let tail = store
        .read_regions(&s, ReadFrom::Tail, ALL, ALL as u64)
        .await
        .expect("read tail");
    assert!(tail.is_empty() && tail.closed);
}
