//! Small helpers the cases share: names, requests, and reading a whole stream back.

use bytes::Bytes;
use ds_protocol::{NameLimits, Offset, ProducerHeaders, StreamName};

use super::Harness;
use crate::rules::Clock;
use crate::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, ForkRequest, ReadFrom, Result,
    Storage, StreamInfo,
};

pub(crate) const BINARY: &str = "application/octet-stream";
pub(crate) const TEXT: &str = "text/plain";
pub(crate) const JSON: &str = "application/json";

/// A read limit larger than anything a case writes.
pub(crate) const ALL: usize = 64 * 1024 * 1024;

/// A stream name (cases only use valid ones).
pub(crate) fn name(raw: &str) -> StreamName {
    StreamName::parse(raw, NameLimits::default()).expect("test stream names are valid")
}

/// A create request for an open, empty stream of `content_type`.
pub(crate) fn create_req(content_type: &str) -> CreateRequest {
    CreateRequest {
        content_type: Some(content_type.to_owned()),
        ..CreateRequest::default()
    }
}

/// A create request for a fork of `source`, inheriting the content type.
pub(crate) fn fork_req(
    source: &StreamName,
    offset: Option<Offset>,
    sub_offset: u64,
) -> CreateRequest {
    CreateRequest {
        fork: Some(ForkRequest {
            source: source.clone(),
            offset,
            sub_offset,
        }),
        ..CreateRequest::default()
    }
}

/// An append of `body` with `content_type`.
pub(crate) fn append_req(content_type: &str, body: impl Into<Bytes>) -> AppendRequest {
    AppendRequest {
        content_type: Some(content_type.to_owned()),
        body: body.into(),
        ..AppendRequest::default()
    }
}

/// A close-only request.
pub(crate) fn close_req() -> AppendRequest {
    AppendRequest {
        close: true,
        ..AppendRequest::default()
    }
}

/// An append of `body` by producer `(id, epoch, seq)`.
pub(crate) fn producer_req(
    content_type: &str,
    body: impl Into<Bytes>,
    id: &str,
    epoch: u64,
    seq: u64,
) -> AppendRequest {
    AppendRequest {
        producer: Some(ProducerHeaders {
            id: id.to_owned(),
            epoch,
            seq,
        }),
        ..append_req(content_type, body)
    }
}

/// The info of a create that must have made a new stream.
pub(crate) fn created(result: Result<CreateOutcome>) -> StreamInfo {
    match result {
        Ok(CreateOutcome::Created(info)) => info,
        other => panic!("expected Created, got {other:?}"),
    }
}

/// The info of a create that must have found a matching stream.
pub(crate) fn existed(result: Result<CreateOutcome>) -> StreamInfo {
    match result {
        Ok(CreateOutcome::Existed(info)) => info,
        other => panic!("expected Existed, got {other:?}"),
    }
}

/// The new tail of an append that must have written.
pub(crate) fn appended(result: Result<AppendOutcome>) -> Offset {
    match result {
        Ok(AppendOutcome::Appended { next, .. }) => next,
        other => panic!("expected Appended, got {other:?}"),
    }
}

/// Creates an open stream of `content_type` and returns its info.
pub(crate) async fn create<S: Storage>(
    store: &S,
    stream: &StreamName,
    content_type: &str,
) -> StreamInfo {
    created(store.create(stream, create_req(content_type)).await)
}

/// Appends `body` (which must succeed) and returns the new tail.
pub(crate) async fn append<S: Storage>(
    store: &S,
    stream: &StreamName,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Offset {
    appended(store.append(stream, append_req(content_type, body)).await)
}

/// Reads the stream from `from` to its tail in chunks of at most `max_bytes`, returning the
/// pieces and the final tail.
pub(crate) async fn read_pieces<S: Storage>(
    store: &S,
    stream: &StreamName,
    from: ReadFrom,
    max_bytes: usize,
) -> (Vec<Bytes>, Offset) {
    let mut pieces = Vec::new();
    let mut from = from;
    for _ in 0..100_000 {
        let chunk = store
            .read(stream, from, max_bytes)
            .await
            .expect("read succeeds");
        pieces.extend(chunk.pieces.iter().cloned());
        if chunk.up_to_date {
            return (pieces, chunk.next);
        }
        assert!(
            chunk.next > chunk.start,
            "a read that is not up to date makes progress"
        );
        from = ReadFrom::At(chunk.next);
    }
    panic!("read did not reach the tail");
}

/// The whole stream's bytes, read from the start.
pub(crate) async fn read_all<S: Storage>(store: &S, stream: &StreamName) -> Vec<u8> {
    let (pieces, _) = read_pieces(store, stream, ReadFrom::Start, ALL).await;
    pieces.concat()
}

/// The whole JSON stream's messages, read from the start, as strings.
pub(crate) async fn read_messages<S: Storage>(store: &S, stream: &StreamName) -> Vec<String> {
    let (pieces, _) = read_pieces(store, stream, ReadFrom::Start, ALL).await;
    pieces
        .iter()
        .map(|p| String::from_utf8(p.to_vec()).expect("JSON messages are UTF-8"))
        .collect()
}

/// Says on stdout that a case did not run, and why.
pub(crate) fn skip(case: &str, reason: &str) {
    println!("skipped {case}: {reason}");
}

/// An absolute expiry `secs` seconds after the harness clock's current second.
pub(crate) fn expires_in<H: Harness>(h: &H, secs: i64) -> time::OffsetDateTime {
    let now_secs = i64::try_from(h.clock().now_ms() / 1000).expect("clock fits i64");
    time::OffsetDateTime::from_unix_timestamp(now_secs + secs).expect("test instants are in range")
}
