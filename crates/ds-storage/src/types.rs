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
///
/// Its pieces are [`Bytes`] for [`Storage::read`](crate::Storage::read), and [`ReadPiece`]s
/// (bytes, or runs of a file) for [`Storage::read_regions`](crate::Storage::read_regions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadChunk<P = Bytes> {
    /// Internal id of this incarnation of the stream (changes when a name is re-created).
    pub stream_id: u64,
    /// The stream's content type.
    pub content_type: String,
    /// Where this chunk starts (the resolved `from`).
    pub start: Offset,
    /// Where the next read continues.
    pub next: Offset,
    /// The data: for JSON streams one entry per message; otherwise byte pieces to concatenate.
    pub pieces: Vec<P>,
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

impl<P> ReadChunk<P> {
    /// The same chunk with each piece mapped by `f`.
    pub fn map_pieces<Q>(self, f: impl FnMut(P) -> Q) -> ReadChunk<Q> {
        ReadChunk {
            stream_id: self.stream_id,
            content_type: self.content_type,
            start: self.start,
            next: self.next,
            pieces: self.pieces.into_iter().map(f).collect(),
            up_to_date: self.up_to_date,
            closed: self.closed,
        }
    }
}

impl ReadChunk<ReadPiece> {
    /// Number of payload bytes in the chunk.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.pieces.iter().map(ReadPiece::len).sum()
    }

    /// Whether the chunk carries no data.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pieces.iter().all(ReadPiece::is_empty)
    }

    /// Whether every piece is in memory (no [`ReadPiece::File`]).
    #[must_use]
    pub fn all_bytes(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, ReadPiece::Bytes(_)))
    }

    /// The chunk as a plain [`ReadChunk`] when every piece is in memory; itself otherwise.
    ///
    /// # Errors
    ///
    /// Some piece is a [`ReadPiece::File`]: the chunk is handed back unchanged.
    pub fn in_memory(self) -> std::result::Result<ReadChunk, Self> {
        let pieces: Option<Vec<Bytes>> = self
            .pieces
            .iter()
            .map(|p| match p {
                ReadPiece::Bytes(b) => Some(b.clone()),
                ReadPiece::File(_) => None,
            })
            .collect();
        match pieces {
            Some(pieces) => Ok(ReadChunk {
                pieces,
                stream_id: self.stream_id,
                content_type: self.content_type,
                start: self.start,
                next: self.next,
                up_to_date: self.up_to_date,
                closed: self.closed,
            }),
            None => Err(self),
        }
    }

    /// The chunk with every piece in memory: file regions are read (blocking I/O).
    ///
    /// # Errors
    ///
    /// A file region could not be read in full.
    pub fn into_bytes(self) -> std::io::Result<ReadChunk> {
        let mut failed = None;
        let chunk = self.map_pieces(|p| match p {
            ReadPiece::Bytes(b) => b,
            ReadPiece::File(r) => r.read().unwrap_or_else(|e| {
                failed.get_or_insert(e);
                Bytes::new()
            }),
        });
        failed.map_or(Ok(chunk), Err)
    }
}

/// A piece of a [`Storage::read_regions`](crate::Storage::read_regions) answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadPiece {
    /// Bytes in memory.
    Bytes(Bytes),
    /// A run of a file, for a server to send straight from the file (`sendfile`).
    File(FileRegion),
}

impl ReadPiece {
    /// Its length in bytes.
    #[must_use]
    pub fn len(&self) -> u64 {
        match self {
            ReadPiece::Bytes(b) => b.len() as u64,
            ReadPiece::File(r) => r.len(),
        }
    }

    /// Whether it holds no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Bytes> for ReadPiece {
    fn from(b: Bytes) -> Self {
        ReadPiece::Bytes(b)
    }
}

/// `len` bytes of a file from `pos`, which the backend promises never change while the file is
/// open: committed data of an append-only file.
///
/// The region holds its own handle of the file, so it stays readable after the backend closes
/// its handle or deletes the stream (an unlinked file lives on while a handle is open).
#[derive(Debug, Clone)]
pub struct FileRegion {
    file: std::sync::Arc<std::fs::File>,
    pos: u64,
    len: u64,
}

impl FileRegion {
    /// The region of `file` from `pos`, `len` bytes long.
    #[must_use]
    pub fn new(file: std::sync::Arc<std::fs::File>, pos: u64, len: u64) -> Self {
        FileRegion { file, pos, len }
    }

    /// The file.
    #[must_use]
    pub fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// Where the region starts in the file.
    #[must_use]
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// Its length in bytes.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no bytes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The part of the region from `skip` bytes into it, at most `len` bytes long (empty
    /// past its end).
    #[must_use]
    pub fn part(&self, skip: u64, len: u64) -> FileRegion {
        let skip = skip.min(self.len);
        FileRegion {
            file: std::sync::Arc::clone(&self.file),
            pos: self.pos + skip,
            len: (self.len - skip).min(len),
        }
    }

    /// Reads the region into memory (blocking I/O): what a server does when it cannot send
    /// the region from the file itself.
    ///
    /// # Errors
    ///
    /// The read failed, or the file ends before the region does (`UnexpectedEof`).
    pub fn read(&self) -> std::io::Result<Bytes> {
        let len = usize::try_from(self.len)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
        let mut buf = vec![0; len];
        read_exact_at(&self.file, &mut buf, self.pos)?;
        Ok(Bytes::from(buf))
    }
}

#[cfg(unix)]
fn read_exact_at(file: &std::fs::File, buf: &mut [u8], pos: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, pos)
}

#[cfg(windows)]
fn read_exact_at(file: &std::fs::File, mut buf: &mut [u8], mut pos: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(file, buf, pos) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                buf = &mut buf[n..];
                pos += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Regions are equal when they are the same run of the same open file.
impl PartialEq for FileRegion {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.file, &other.file)
            && self.pos == other.pos
            && self.len == other.len
    }
}

impl Eq for FileRegion {}

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
    /// Group commits completed: each is one write (a sync may cover several), or one durable
    /// transaction.
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
