//! The storage seam of the Durable Streams server.
//!
//! This crate owns the [`Storage`] trait every backend implements, the domain types that cross
//! it ([`CreateRequest`], [`AppendRequest`], [`ReadChunk`], [`StreamInfo`], [`Tail`]), the one
//! [`Error`] enum backends report, and the protocol rules that do not depend on how bytes are
//! kept ([`rules`]): idempotent-producer validation, `Stream-Seq` ordering, create idempotency,
//! fork boundary resolution and expiry. Backends keep bytes and state; they call into
//! [`rules`] so every backend answers the same request the same way.
//!
//! It deliberately knows nothing about HTTP: status codes are decided in `ds-server`.
//!
//! With the `testkit` feature, the `testkit` module provides the contract suite every backend
//! runs, and the `contract_tests!` macro that expands it into one test per case.

pub mod cluster;
pub mod error;
pub mod rules;
pub mod types;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use cluster::{Call, Change, Cluster};
pub use error::{Error, Result};
pub use types::{
    AppendOutcome, AppendRequest, CreateOutcome, CreateRequest, ExportMeta, FileRegion, ForkPoint,
    ForkRequest, Pieces, ProducerAck, ReadChunk, ReadFrom, ReadPiece, StorageStats, StreamInfo,
    Tail,
};

use std::future::Future;
use std::sync::Arc;

use ds_protocol::StreamName;
use tokio::sync::watch;

/// A Durable Streams store.
///
/// Every method is atomic with respect to one stream: a reader never observes half an append,
/// and appends to one stream are applied in one order that every reader sees. Appends to
/// different streams never wait on each other.
///
/// Time-based expiry is checked on every access: an expired stream behaves exactly like one that
/// does not exist (or like a soft-deleted one while forks still reference it).
pub trait Storage: Send + Sync + 'static {
    /// Creates a stream (optionally as a fork, closed, or with initial content), or confirms an
    /// existing one whose configuration matches ([`CreateOutcome::Existed`]).
    fn create(
        &self,
        name: &StreamName,
        req: CreateRequest,
    ) -> impl Future<Output = Result<CreateOutcome>> + Send;

    /// Appends to (and/or closes) a stream, applying `Stream-Seq` and idempotent-producer
    /// validation atomically with the write.
    fn append(
        &self,
        name: &StreamName,
        req: AppendRequest,
    ) -> impl Future<Output = Result<AppendOutcome>> + Send;

    /// Reads at most about `max_bytes` of data starting at `from` (at least one JSON message when
    /// any is available). Resets a sliding TTL.
    fn read(
        &self,
        name: &StreamName,
        from: ReadFrom,
        max_bytes: usize,
    ) -> impl Future<Output = Result<ReadChunk>> + Send;

    /// [`read`](Storage::read), for a server that can send runs of a file without reading them
    /// into memory (`sendfile`): a backend that keeps a binary stream's data in files may answer
    /// its larger runs as [`ReadPiece::File`] regions.
    ///
    /// The bytes it reads into memory stay within `max_bytes`, as for `read`; runs answered as
    /// regions cost no memory and count only against `max_file_bytes`, the bound of the whole
    /// answer (when it is larger than `max_bytes`). With `max_file_bytes` at most `max_bytes`
    /// the answer (where it starts and ends, the flags, the bytes the pieces add up to) is
    /// exactly what `read` returns; with more, it may go on further along the stream. A JSON
    /// stream's pieces are always [`ReadPiece::Bytes`], one per message. The default calls
    /// `read`.
    fn read_regions(
        &self,
        name: &StreamName,
        from: ReadFrom,
        max_bytes: usize,
        max_file_bytes: u64,
    ) -> impl Future<Output = Result<ReadChunk<ReadPiece>>> + Send {
        let _ = max_file_bytes;
        async move {
            let chunk = self.read(name, from, max_bytes).await?;
            Ok(chunk.map_pieces(ReadPiece::Bytes))
        }
    }

    /// The stream's metadata. Does not reset a sliding TTL.
    fn head(&self, name: &StreamName) -> impl Future<Output = Result<StreamInfo>> + Send;

    /// Deletes a stream; soft-deletes it while forks still reference it.
    fn delete(&self, name: &StreamName) -> impl Future<Output = Result<()>> + Send;

    /// A receiver of the stream's [`Tail`], for live readers: it changes on every append, close
    /// and delete of this stream (never of its fork source). Subscribe *before* reading so no
    /// append between the read and the wait can be missed.
    fn subscribe(
        &self,
        name: &StreamName,
    ) -> impl Future<Output = Result<watch::Receiver<Tail>>> + Send;

    /// Every live (not deleted, not expired) stream, in name order.
    fn list(&self) -> impl Future<Output = Result<Vec<StreamInfo>>> + Send;

    /// Removes (or soft-deletes, while forks reference them) streams whose TTL or expiry has
    /// passed, and returns how many were affected. Expired streams are already invisible to
    /// clients; this reclaims their space. The server calls it periodically.
    fn sweep_expired(&self) -> impl Future<Output = Result<usize>> + Send;

    /// Everything an export needs to re-create the stream exactly: its metadata, the first
    /// position it owns, its fork point and its writer state (producers, `Stream-Seq`, closure).
    /// Like [`head`](Storage::head), it does not reset a sliding TTL.
    fn export_meta(&self, name: &StreamName) -> impl Future<Output = Result<ExportMeta>> + Send;

    /// Replaces a stream's writer state (idempotent producers, last `Stream-Seq`, closure and
    /// the producer tuple that closed it) with `writer`, as an export recorded it
    /// ([`ExportMeta::writer`]). `import` calls it after re-creating a stream and appending its
    /// data, so producer retries and `Stream-Seq` checks behave on the target exactly as on the
    /// source.
    ///
    /// Like an append, it is durable when it returns, and a closure it applies is seen by live
    /// readers ([`subscribe`](Storage::subscribe)). A closed stream cannot be reopened: restoring
    /// an open state onto a closed stream fails with [`Error::Closed`] and changes nothing.
    fn restore_writer(
        &self,
        name: &StreamName,
        writer: rules::WriterState,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Whether the store can serve requests (for `/readyz`).
    fn is_ready(&self) -> bool {
        true
    }

    /// Counters for operators (`/metrics`). Must be cheap (no I/O, no scan of every stream) and
    /// must not wait on writers. The default reports nothing.
    fn stats(&self) -> StorageStats {
        StorageStats::default()
    }

    /// The coordination handle when several server processes share this store; `None` (the
    /// default) for a store one process owns. See [`cluster`].
    fn cluster(&self) -> Option<Arc<dyn Cluster>> {
        None
    }
}
