//! redb's errors at the crate boundary: each becomes a [`ds_storage::Error`] that names the
//! failed operation and keeps the source.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use ds_storage::Error;

/// Whether an I/O error means the disk (or the user's quota) is full.
fn is_full(kind: io::ErrorKind) -> bool {
    matches!(
        kind,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded | io::ErrorKind::FileTooLarge
    )
}

/// A redb failure that may have to be reported to many waiters (every op of a failed batch).
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    op: &'static str,
    source: Arc<redb::Error>,
}

impl Failure {
    pub(crate) fn new(op: &'static str, err: impl Into<redb::Error>) -> Failure {
        Failure {
            op,
            source: Arc::new(err.into()),
        }
    }

    /// The error one waiter receives.
    pub(crate) fn to_error(&self) -> Error {
        if let redb::Error::Io(e) = &*self.source
            && is_full(e.kind())
        {
            // The limit is the disk's, not a configured one.
            return Error::StorageFull { limit: 0 };
        }
        Error::Backend {
            op: self.op,
            source: Box::new(Shared(Arc::clone(&self.source))),
        }
    }

    /// The failure of a commit whose outcome is not known: it failed (on a full disk, say)
    /// after redb may have written its new header, and the database could not be reopened
    /// and checked against the last committed state (`why`). Reported as a `Backend` error,
    /// never as "nothing was written".
    pub(crate) fn outcome_unknown(&self, why: &str) -> Failure {
        Failure::new(
            self.op,
            redb::StorageError::Io(io::Error::other(format!(
                "{} failed ({}) and whether it reached the disk is not known: {why}",
                self.op, self.source
            ))),
        )
    }

    /// A failure that needs a restart: the reopened database does not hold what the cache
    /// says is committed (`why`), say because a failed commit did reach the disk.
    pub(crate) fn needs_restart(why: &str) -> Failure {
        Failure::new(
            "reopen shard database",
            redb::StorageError::Io(io::Error::other(format!(
                "{why}; restart the store to load what the database holds"
            ))),
        )
    }

    /// Whether the failure is a full disk (or quota), after which the shard reopens its
    /// database to carry on.
    pub(crate) fn is_full(&self) -> bool {
        matches!(&*self.source, redb::Error::Io(e) if is_full(e.kind()))
    }

    /// Whether redb refuses further writes until the database is reopened.
    pub(crate) fn is_io(&self) -> bool {
        matches!(&*self.source, redb::Error::Io(_) | redb::Error::PreviousIo)
    }
}

/// Converts a redb error into the crate-boundary error for one caller.
pub(crate) fn backend(op: &'static str, err: impl Into<redb::Error>) -> Error {
    Failure::new(op, err).to_error()
}

/// A redb error shared by several waiters.
#[derive(Debug)]
struct Shared(Arc<redb::Error>);

impl std::fmt::Display for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Why a data directory could not be opened, beyond what redb says.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// Another process (or another store in this one) holds the shard files' locks.
    #[error(
        "data directory {} is in use by another process ({} is locked)",
        dir.display(),
        file.display()
    )]
    InUse {
        dir: PathBuf,
        file: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    /// Another process (or another store in this one) holds the data dir's `LOCK` file.
    #[error(
        "data directory {} is in use by another process (pid {pid}, lock file {})",
        dir.display(),
        file.display()
    )]
    Locked {
        dir: PathBuf,
        file: PathBuf,
        pid: String,
    },
    /// `shard_count` is not a power of two in 1..=256.
    #[error("shard_count {0} must be a power of two in 1..=256")]
    ShardCount(u32),
    /// The data dir was created with another shard count (resharding is not supported).
    #[error("{} was created with shard_count {stored}, not {requested}", dir.display())]
    ShardCountChanged {
        dir: PathBuf,
        stored: u64,
        requested: u32,
    },
    /// A shard file from a larger shard count is present.
    #[error("{} belongs to a data dir with more shards than {requested}", file.display())]
    StrayShard { file: PathBuf, requested: u32 },
    /// The shard was written by an unknown format version.
    #[error("{} has format version {found}; this build reads version {expected}", file.display())]
    FormatVersion {
        file: PathBuf,
        found: u64,
        expected: u64,
    },
    /// A row could not be decoded, or a fork's source is missing.
    #[error("{} is corrupt: {what}", file.display())]
    Corrupt { file: PathBuf, what: String },
    /// Creating the data directory failed.
    #[error("cannot create data directory {}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<OpenError> for Error {
    fn from(err: OpenError) -> Error {
        let op = match &err {
            OpenError::InUse { .. } | OpenError::Locked { .. } => "open data dir (in use)",
            OpenError::ShardCount(_)
            | OpenError::ShardCountChanged { .. }
            | OpenError::StrayShard { .. } => "open data dir (shard count)",
            OpenError::FormatVersion { .. } | OpenError::Corrupt { .. } => "open data dir (load)",
            OpenError::CreateDir { .. } => "open data dir (create)",
        };
        Error::Backend {
            op,
            source: Box::new(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_is_storage_full_and_other_errors_keep_their_source() {
        let full = Failure::new(
            "commit",
            redb::StorageError::Io(io::Error::from(io::ErrorKind::StorageFull)),
        );
        assert!(matches!(full.to_error(), Error::StorageFull { limit: 0 }));
        assert!(full.is_io());
        let other = Failure::new("commit", redb::StorageError::Corrupted("bad page".into()));
        match other.to_error() {
            Error::Backend { op, source } => {
                assert_eq!(op, "commit");
                assert!(source.to_string().contains("bad page"));
                assert!(std::error::Error::source(&*source).is_some());
            }
            e => panic!("unexpected {e:?}"),
        }
        assert!(!other.is_io());
    }
}
