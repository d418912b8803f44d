//! Turning database and pool errors into [`ds_storage::Error`], and deciding which failures a
//! transaction may simply run again.

use ds_storage::Error;
use tokio_postgres::error::SqlState;

/// A database failure during `op`, keeping the driver's error as the source.
pub(crate) fn backend(
    op: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Backend {
        op,
        source: Box::new(e),
    }
}

/// A failure described by a message (a row that does not decode, a bad option).
pub(crate) fn invalid(op: &'static str, msg: impl Into<String>) -> Error {
    Error::Backend {
        op,
        source: msg.into().into(),
    }
}

/// The same failure again, for each operation of a batch that shared it (the error type is
/// not `Clone`; the operation name and the message survive).
pub(crate) fn again(e: &Error) -> Error {
    match e {
        Error::Backend { op, source } => Error::Backend {
            op,
            source: source.to_string().into(),
        },
        other => invalid("append batch", other.to_string()),
    }
}

/// Whether a transaction failed only because it raced another one (deadlock, serialization
/// failure, or a unique key another transaction took first): running it again is safe
/// because nothing of it committed.
pub(crate) fn is_retryable(e: &Error) -> bool {
    let Error::Backend { source, .. } = e else {
        return false;
    };
    source
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
        .is_some_and(|code| {
            *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::UNIQUE_VIOLATION
        })
}
