//! The crate's error type: what can stop the engine from opening or persisting its state.

/// A [`Result`](std::result::Result) whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the subscription engine could not open or persist its state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage backend failed while the engine read or wrote an internal stream.
    #[error("storage failed during {op}")]
    Storage {
        /// What the engine was doing.
        op: &'static str,
        /// The backend's error.
        #[source]
        source: ds_storage::Error,
    },
    /// An internal stream holds data this version cannot read.
    #[error("internal stream {stream} is corrupt: {reason}")]
    Corrupt {
        /// The internal stream.
        stream: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The operating system's random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),
    /// The configuration is invalid.
    #[error("invalid subscriptions configuration: {0}")]
    Config(String),
    /// The engine's state log writer has stopped (the engine is shutting down, or in cluster
    /// mode this node is no longer the active one).
    #[error("subscription state log writer has stopped")]
    WriterStopped,
    /// Cluster mode: the state log was fenced by a node holding a newer term of the
    /// `subscriptions` lease, so this node must not act on it.
    #[error("subscription state log was taken over by another node (fenced by {by})")]
    Fenced {
        /// What fenced it (the newer `Stream-Seq`, or what happened to the epoch).
        by: String,
    },
}

impl Error {
    pub(crate) fn storage(op: &'static str) -> impl FnOnce(ds_storage::Error) -> Error {
        move |source| Error::Storage { op, source }
    }
}
