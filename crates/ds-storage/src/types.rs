//! Domain types that cross the [`Storage`](crate::Storage) seam.

use bytes::Bytes;
use ds_protocol::{Expiry, Offset, ProducerHeaders, StreamName};

/// How a `PUT` asks for a fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkRequest {
    /// The source stream (`Stream-Forked-From`, base path stripped).
    pub source: StreamName,
    /// `Stream-Fork-Offset`; `None` means the source's tail at creation.
    pub offset: Option<Offset>,
    /// `Stream-Fork-Sub-Offset` (0 when absent).
    pub sub_offset: u64,
}

/// A create (`PUT`) request.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// Normalised `Content-Type`; `None` means the default (or, for a fork, the source's type).
    pub content_type: Option<String>,
    /// `Stream-TTL` / `Stream-Expires-At`.
    pub expiry: Expiry,
    /// `Stream-Closed: true`: create the stream closed, with `body` as its whole content.
    pub closed: bool,
    /// Initial content (may be empty). For JSON streams, `[]` is allowed and stores nothing.
    pub body: Bytes,
    /// Fork parameters, when the stream is created as a fork.
    pub fork: Option<ForkRequest>,
}

/// Result of a successful create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateOutcome {
    /// A new stream was created (`201`).
    Created(StreamInfo),
    /// A stream with matching configuration already existed (`200`).
    Existed(StreamInfo),
}

impl CreateOutcome {
    /// The stream's metadata either way.
    #[must_use]
    pub fn info(&self) -> &StreamInfo {
        match self {
            CreateOutcome::Created(info) | CreateOutcome::Existed(info) => info,
        }
    }
}

/// An append (`POST`) request. The server has already rejected an empty body without
/// `close` and a body without a `Content-Type`.
#[derive(Debug, Clone, Default)]
pub struct AppendRequest {
    /// The request's `Content-Type` (checked against the stream's when `body` is not empty).
    pub content_type: Option<String>,
    /// Bytes to append; empty for a close-only request.
    pub body: Bytes,
    /// `Stream-Closed: true`: close the stream atomically after appending `body`.
    pub close: bool,
    /// `Stream-Seq`, compared byte-wise with the last one accepted on this stream.
    pub stream_seq: Option<String>,
    /// Idempotent producer headers.
    pub producer: Option<ProducerHeaders>,
}

/// What the server echoes to an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerAck {
    /// The producer's current epoch.
    pub epoch: u64,
    /// The highest sequence number accepted in that epoch.
    pub seq: u64,
}

/// Result of an append that is not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// New data (or a new closure) was applied.
    Appended {
        /// The new tail.
        next: Offset,
        /// Whether the stream is now closed.
        closed: bool,
        /// Producer state after the append, when producer headers were sent.
        producer: Option<ProducerAck>,
    },
    /// The request was a retry of one already applied; nothing changed.
    Duplicate {
        /// The current tail.
        next: Offset,
        /// Whether the stream is closed.
        closed: bool,
        /// The producer's current state (highest accepted seq, not the request's).
        producer: ProducerAck,
    },
    /// A close-only request on a stream that was already closed; nothing changed.
    AlreadyClosed {
        /// The final tail.
        next: Offset,
    },
}

/// Where a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The beginning of the stream (`-1` or no `offset`).
    Start,
    /// The current tail (`now`): returns no data.
    Tail,
    /// A position previously returned by the server.
    At(Offset),
}

/// One chunk of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadChunk {
    /// Internal id of this incarnation of the stream (changes when a name is re-created).
    pub stream_id: u64,
    /// The stream's content type.
    pub content_type: String,
    /// Where this chunk starts (the resolved `from`).
    pub start: Offset,
    /// Where the next read continues.
    pub next: Offset,
    /// The data: for JSON streams one entry per message; otherwise byte pieces to concatenate.
    pub pieces: Vec<Bytes>,
    /// `next` is the stream's tail at the time of the read.
    pub up_to_date: bool,
    /// The stream is closed and `next` is its final offset.
    pub closed: bool,
}

impl ReadChunk {
    /// Number of payload bytes in the chunk.
    #[must_use]
    pub fn len(&self) -> usize {
        self.pieces.iter().map(Bytes::len).sum()
    }

    /// Whether the chunk carries no data.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pieces.iter().all(Bytes::is_empty)
    }
}

/// A stream's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// The stream's name.
    pub name: StreamName,
    /// Internal id of this incarnation of the stream.
    pub stream_id: u64,
    /// The stream's content type.
    pub content_type: String,
    /// TTL or absolute expiry.
    pub expiry: Expiry,
    /// The tail offset.
    pub next: Offset,
    /// Whether the stream is closed.
    pub closed: bool,
    /// Bytes stored by this stream itself (not counting data inherited from a fork source).
    pub bytes: u64,
    /// The fork source, when the stream is a fork.
    pub forked_from: Option<StreamName>,
}

/// Where a fork was created, as its `PUT` asked (see [`ExportMeta::fork`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkPoint {
    /// The source stream (possibly soft-deleted since).
    pub source: StreamName,
    /// `Stream-Fork-Offset` as resolved at creation.
    pub offset: Offset,
    /// `Stream-Fork-Sub-Offset`.
    pub sub_offset: u64,
}

/// What an export needs beyond [`StreamInfo`] to re-create a stream exactly (see
/// [`Storage::export_meta`](crate::Storage::export_meta)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportMeta {
    /// The stream's metadata, as [`head`](crate::Storage::head) reports it.
    pub info: StreamInfo,
    /// First position the stream owns: a read from here returns only its own records, none
    /// inherited from a fork source. [`Offset::ZERO`] for a stream that is not a fork.
    pub base: Offset,
    /// The fork point, when the stream is a fork.
    pub fork: Option<ForkPoint>,
    /// Closure, the producer tuple that closed it, the last `Stream-Seq`, and producer states.
    pub writer: crate::rules::WriterState,
}

/// The live state a reader waits on (see [`Storage::subscribe`](crate::Storage::subscribe)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// The tail offset.
    pub next: Offset,
    /// The stream is closed: no more data will arrive.
    pub closed: bool,
    /// The stream was deleted (or expired): readers should stop.
    pub gone: bool,
}

/// Counters a backend reports for operators (`/metrics`), read without blocking writers.
///
/// Every field is optional: a backend reports what it can measure and leaves the rest `None`,
/// and the server omits metrics it has no value for. Counters only grow while the store is open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Live streams (not deleted, not expired as of the last sweep).
    pub streams: Option<u64>,
    /// Payload bytes those streams store themselves (not counting data inherited by forks).
    pub bytes: Option<u64>,
    /// Group commits completed: each is one write + one sync, or one durable transaction.
    pub commit_batches: Option<u64>,
    /// Operations (appends, creates, closes, deletes) carried by those group commits; divided by
    /// `commit_batches` this is the average batch size.
    pub commit_ops: Option<u64>,
    /// `fsync`/`fdatasync` calls (or durable transaction commits) completed.
    pub syncs: Option<u64>,
    /// Total time spent waiting for those syncs, in microseconds.
    pub sync_micros: Option<u64>,
}

/// Payload pieces a backend gathers for one read, copied into one buffer and handed out as
/// slices of it ([`ReadChunk::pieces`]): one allocation per chunk, not per message.
#[derive(Debug, Default)]
pub struct Pieces {
    buf: Vec<u8>,
    spans: Vec<std::ops::Range<usize>>,
}

impl Pieces {
    /// Adds one piece (a record's payload, or the part of it the read covers).
    pub fn push(&mut self, data: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(data);
        self.spans.push(start..self.buf.len());
    }

    /// Whether no piece was added.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Total payload bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// The pieces, each a slice of the one buffer.
    #[must_use]
    pub fn finish(self) -> Vec<Bytes> {
        let all = Bytes::from(self.buf);
        self.spans.into_iter().map(|r| all.slice(r)).collect()
    }
}
