//! The one error type every backend reports.

use ds_protocol::Offset;

/// A [`Result`](std::result::Result) whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a storage operation did not succeed.
///
/// Each variant names one protocol condition; `ds-server` maps each to exactly one HTTP status.
/// The enum is deliberately exhaustive, so a new variant does not compile until its status is
/// decided there.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No stream at this name (or it expired).
    #[error("stream not found")]
    NotFound,
    /// The stream was deleted but forks still reference its data.
    #[error("stream is deleted (still referenced by forks)")]
    Gone,
    /// A stream exists at this name with a different configuration.
    #[error("stream already exists with a different configuration: {reason}")]
    ConfigMismatch {
        /// Which part of the configuration differs.
        reason: &'static str,
    },
    /// The name belongs to a soft-deleted stream and cannot be re-created yet.
    #[error("stream name is held by a deleted stream that forks still reference")]
    NameHeldBySoftDeleted,
    /// The `Stream-Forked-From` stream does not exist.
    #[error("fork source stream not found")]
    ForkSourceNotFound,
    /// The `Stream-Forked-From` stream is soft-deleted.
    #[error("fork source stream is deleted")]
    ForkSourceGone,
    /// `Stream-Fork-Offset` is past the source's tail.
    #[error("fork offset {offset} is beyond the source stream's tail {tail}")]
    ForkOffsetBeyondTail {
        /// The requested offset.
        offset: Offset,
        /// The source's tail.
        tail: Offset,
    },
    /// `Stream-Fork-Offset` is not a position of the source stream.
    #[error("fork offset {offset} is not a position of the source stream")]
    ForkOffsetInvalid {
        /// The requested offset.
        offset: Offset,
    },
    /// `Stream-Fork-Sub-Offset` names a position past the next data boundary.
    #[error("fork sub-offset {sub_offset} is past the next data boundary ({available} available)")]
    SubOffsetOvershoot {
        /// The requested sub-offset.
        sub_offset: u64,
        /// How many bytes (or JSON messages) are available past the anchor.
        available: u64,
    },
    /// The request's content type differs from the stream's.
    #[error("content type {actual:?} does not match the stream's {expected:?}")]
    ContentTypeMismatch {
        /// The stream's content type.
        expected: String,
        /// The request's content type.
        actual: String,
    },
    /// The stream is closed; nothing more can be appended.
    #[error("stream is closed")]
    Closed {
        /// The stream's final offset.
        next: Offset,
    },
    /// `Stream-Seq` is not greater than the last one accepted.
    #[error("Stream-Seq {received:?} is not greater than the last accepted {last:?}")]
    SeqRegression {
        /// The last accepted value.
        last: String,
        /// The value received.
        received: String,
    },
    /// The producer's epoch is older than the server's (zombie fencing).
    #[error("producer epoch is stale; current epoch is {current}")]
    StaleEpoch {
        /// The server's current epoch for this producer.
        current: u64,
    },
    /// The producer skipped sequence numbers.
    #[error("producer sequence gap: expected {expected}, received {received}")]
    SeqGap {
        /// The next sequence number the server expects.
        expected: u64,
        /// The sequence number received.
        received: u64,
    },
    /// A new producer epoch must start at sequence 0.
    #[error("a new producer epoch must start at Producer-Seq 0, got {seq}")]
    EpochSeqNotZero {
        /// The sequence number received.
        seq: u64,
    },
    /// An append without data and without `Stream-Closed: true`.
    #[error("empty append body")]
    EmptyBody,
    /// A JSON stream received a body that is not valid JSON.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// A JSON append of `[]`.
    #[error("empty JSON array appends nothing")]
    EmptyJsonArray,
    /// A read offset that is not a position of this stream.
    #[error("offset {offset} is not a position of this stream")]
    InvalidOffset {
        /// The requested offset.
        offset: Offset,
    },
    /// The append would take the stream past `limits.max_stream_bytes`.
    #[error("stream would exceed its size limit of {limit} bytes")]
    StreamTooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// The store is full (`limits.max_memory_bytes`, or the disk). Nothing of the operation was
    /// written; it can be retried once space is freed.
    #[error("storage is full (limit {limit} bytes)")]
    StorageFull {
        /// The configured limit in bytes, or 0 when the disk (or a quota) is full rather than
        /// a configured limit reached.
        limit: u64,
    },
    /// An infrastructure failure (I/O, database); the operation named failed.
    #[error("storage backend failed during {op}")]
    Backend {
        /// The operation that failed.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
