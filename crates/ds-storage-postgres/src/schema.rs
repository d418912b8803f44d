//! The database schema, its migrations, and the decoding of a stream row.
//!
//! Every table lives in one PostgreSQL schema (`PostgresOptions::schema`), so several
//! deployments (or test runs) can share a database. Version 1:
//!
//! ```text
//! ds_schema_version (version PK, applied_at)         one row per applied migration
//! ds_streams        (id PK, name UNIQUE, ...)        one row per incarnation of a stream:
//!     content_type, json, expiry (kind, a, nanos, offset), base/tail (seq, byte), bytes,
//!     closed, closed_by (id, epoch, seq), last_stream_seq, last_access_ms,
//!     fork_source_id/name, fork_anchor (seq, byte), fork_sub_offset, fork_refs, soft_deleted
//! ds_records        (stream_id, seq) PK              one row per append (binary) or message
//!     start_byte, batch_end, data                    (JSON); a stream's rows are contiguous
//!                                                    in seq and in bytes from its base to its tail
//! ds_producers      (stream_id, producer_id) PK      idempotent producer state
//!     epoch, last_seq
//! ds_leases         (name PK, holder, expires_at)    who runs cluster-wide chores (expiry sweep)
//! ```
//!
//! Version 2 (cluster coordination, see `cluster`):
//!
//! ```text
//! ds_leases         + term bigint (default 0)        grows on every change of holder; a
//!                                                    released lease keeps its row (holder '')
//!                                                    so the next holder's term is still larger
//! ds_calls          (id bigserial PK, lease,         requests forwarded to a lease holder:
//!     request bytea, response bytea NULL,            taken_by is set once, by the one node that
//!     taken_by text NULL, created_at)                claims the row; the caller deletes it
//!     index (lease, id) WHERE taken_by IS NULL       the holder's scan for unclaimed calls
//! ```
//!
//! u64 values are stored bit for bit in `bigint` columns ([`to_db`], [`from_db`]); offsets stay
//! far below 2^63, so SQL comparisons on them keep their order.
//!
//! A removed stream's rows are deleted; a soft-deleted one keeps them (forks read them) until
//! its last fork is gone. The name is unique among rows, so a soft-deleted stream holds its
//! name, as the protocol requires.

use ds_protocol::{Expiry, Offset};
use ds_storage::Result;
use ds_storage::rules::WriterState;
use tokio_postgres::Row;

use crate::error::{backend, invalid};

/// Migrations in order; index + 1 is the version each one brings the schema to.
const MIGRATIONS: &[&str] = &[
    // Version 1.
    "CREATE SEQUENCE ds_stream_ids;
     CREATE TABLE ds_streams (
         id bigint PRIMARY KEY,
         name text NOT NULL UNIQUE,
         content_type text NOT NULL,
         json boolean NOT NULL,
         expiry_kind smallint NOT NULL,
         expiry_a bigint NOT NULL,
         expiry_nanos integer NOT NULL,
         expiry_offset integer NOT NULL,
         base_seq bigint NOT NULL,
         base_byte bigint NOT NULL,
         tail_seq bigint NOT NULL,
         tail_byte bigint NOT NULL,
         bytes bigint NOT NULL,
         closed boolean NOT NULL,
         closed_by_id text,
         closed_by_epoch bigint,
         closed_by_seq bigint,
         last_stream_seq text,
         last_access_ms bigint NOT NULL,
         fork_source_id bigint,
         fork_source_name text,
         fork_anchor_seq bigint,
         fork_anchor_byte bigint,
         fork_sub_offset bigint,
         fork_refs integer NOT NULL DEFAULT 0,
         soft_deleted boolean NOT NULL DEFAULT false
     );
     CREATE INDEX ds_streams_expiring ON ds_streams (expiry_kind) WHERE expiry_kind <> 0;
     CREATE TABLE ds_records (
         stream_id bigint NOT NULL,
         seq bigint NOT NULL,
         start_byte bigint NOT NULL,
         batch_end boolean NOT NULL,
         data bytea NOT NULL,
         PRIMARY KEY (stream_id, seq)
     );
     -- Payloads are mostly incompressible or small; skipping compression keeps appends cheap.
     ALTER TABLE ds_records ALTER COLUMN data SET STORAGE EXTERNAL;
     CREATE TABLE ds_producers (
         stream_id bigint NOT NULL,
         producer_id text NOT NULL,
         epoch bigint NOT NULL,
         last_seq bigint NOT NULL,
         PRIMARY KEY (stream_id, producer_id)
     );
     CREATE TABLE ds_leases (
         name text PRIMARY KEY,
         holder text NOT NULL,
         expires_at timestamptz NOT NULL
     );",
    // Version 2: lease terms and forwarded calls. Each statement is idempotent on its own
    // (the advisory lock already applies every migration once; this only makes a partial
    // manual repair harmless).
    "ALTER TABLE ds_leases ADD COLUMN IF NOT EXISTS term bigint NOT NULL DEFAULT 0;
     CREATE TABLE IF NOT EXISTS ds_calls (
         id bigserial PRIMARY KEY,
         lease text NOT NULL,
         request bytea NOT NULL,
         response bytea,
         taken_by text,
         created_at timestamptz NOT NULL DEFAULT now()
     );
     CREATE INDEX IF NOT EXISTS ds_calls_untaken ON ds_calls (lease, id) WHERE taken_by IS NULL;",
];

/// The schema version this build writes.
fn version() -> i32 {
    i32::try_from(MIGRATIONS.len()).expect("fewer than 2^31 migrations")
}

/// Whether `schema` is a plain lower-case identifier, safe in SQL text (quoted, see
/// [`quoted`]) and in a NOTIFY channel name.
pub(crate) fn valid_schema_name(schema: &str) -> bool {
    let mut chars = schema.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 40
}

/// `schema` as a quoted SQL identifier, so reserved words (`user`, `order`) work too. (Valid
/// names hold no `"`, see [`valid_schema_name`].)
pub(crate) fn quoted(schema: &str) -> String {
    format!("\"{}\"", schema.replace('"', "\"\""))
}

/// Creates the schema if needed and applies every migration it lacks, in one transaction
/// under an advisory lock: nodes starting at once apply each migration exactly once, and a
/// node finding a newer schema than it knows refuses to start.
pub(crate) async fn migrate(client: &mut tokio_postgres::Client, name: &str) -> Result<()> {
    let schema = &quoted(name);
    let txn = client
        .transaction()
        .await
        .map_err(|e| backend("begin migration", e))?;
    // Two-key form: the first key names this crate, the second the schema.
    txn.execute(
        "SELECT pg_advisory_xact_lock(1685287796, hashtext($1))",
        &[&name],
    )
    .await
    .map_err(|e| backend("take migration lock", e))?;
    txn.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.ds_schema_version (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(|e| backend("create schema", e))?;
    let current: i32 = txn
        .query_one(
            &format!("SELECT coalesce(max(version), 0) FROM {schema}.ds_schema_version"),
            &[],
        )
        .await
        .map_err(|e| backend("read schema version", e))?
        .get(0);
    let version = version();
    if current > version {
        return Err(invalid(
            "check schema version",
            format!(
                "schema {name} is at version {current}, newer than this build's {version}; \
                 upgrade the server"
            ),
        ));
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(current).unwrap_or(0))
    {
        txn.batch_execute(&format!("SET LOCAL search_path TO {schema}; {sql}"))
            .await
            .map_err(|e| backend("apply migration", e))?;
        txn.execute(
            &format!("INSERT INTO {schema}.ds_schema_version (version) VALUES ($1)"),
            &[&i32::try_from(i + 1).expect("fewer than 2^31 migrations")],
        )
        .await
        .map_err(|e| backend("record migration", e))?;
    }
    txn.commit()
        .await
        .map_err(|e| backend("commit migration", e))
}

/// A u64 as stored in a `bigint` column (bit for bit).
pub(crate) fn to_db(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

/// A `bigint` column read back as the u64 it stores.
pub(crate) fn from_db(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
}

/// The columns of `ds_streams`, in the order [`StreamRow::decode`] reads them.
pub(crate) const STREAM_COLUMNS: &str = "id, name, content_type, json, expiry_kind, expiry_a, \
    expiry_nanos, expiry_offset, base_seq, base_byte, tail_seq, tail_byte, bytes, closed, \
    closed_by_id, closed_by_epoch, closed_by_seq, last_stream_seq, last_access_ms, \
    fork_source_id, fork_source_name, fork_anchor_seq, fork_anchor_byte, fork_sub_offset, \
    fork_refs, soft_deleted";

/// Where a fork was taken from.
#[derive(Debug, Clone)]
pub(crate) struct ForkCols {
    pub(crate) source_id: u64,
    pub(crate) source_name: String,
    pub(crate) anchor: Offset,
    pub(crate) sub_offset: u64,
}

/// One row of `ds_streams`.
#[derive(Debug, Clone)]
pub(crate) struct StreamRow {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) content_type: String,
    pub(crate) json: bool,
    pub(crate) expiry: Expiry,
    pub(crate) base: Offset,
    pub(crate) tail: Offset,
    pub(crate) bytes: u64,
    pub(crate) closed: bool,
    pub(crate) closed_by: Option<(String, u64, u64)>,
    pub(crate) last_stream_seq: Option<String>,
    pub(crate) last_access_ms: u64,
    pub(crate) fork: Option<ForkCols>,
    pub(crate) fork_refs: i32,
    pub(crate) soft_deleted: bool,
}

/// Expiry as its four columns: kind (0 none, 1 TTL, 2 absolute), TTL seconds or Unix
/// seconds, nanoseconds, and the UTC offset in seconds (kept so the value reads back equal).
pub(crate) fn expiry_cols(expiry: Expiry) -> (i16, i64, i32, i32) {
    match expiry {
        Expiry::None => (0, 0, 0, 0),
        Expiry::Ttl(secs) => (1, to_db(secs), 0, 0),
        Expiry::ExpiresAt(at) => (
            2,
            at.unix_timestamp(),
            // Below 10^9: always fits.
            i32::try_from(at.nanosecond()).unwrap_or_default(),
            at.offset().whole_seconds(),
        ),
    }
}

fn expiry_from_cols(kind: i16, a: i64, nanos: i32, offset: i32) -> Result<Expiry> {
    Ok(match kind {
        0 => Expiry::None,
        1 => Expiry::Ttl(from_db(a)),
        2 => {
            let at = time::OffsetDateTime::from_unix_timestamp(a)
                .and_then(|t| t.replace_nanosecond(nanos.unsigned_abs()))
                .map_err(|e| backend("decode expiry", e))?;
            let offset = time::UtcOffset::from_whole_seconds(offset)
                .map_err(|e| backend("decode expiry", e))?;
            Expiry::ExpiresAt(at.to_offset(offset))
        }
        other => {
            return Err(invalid(
                "decode expiry",
                format!("unknown expiry kind {other}"),
            ));
        }
    })
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i).map_err(|e| backend("decode stream row", e))
}

impl StreamRow {
    /// Decodes a row selected with [`STREAM_COLUMNS`].
    pub(crate) fn decode(row: &Row) -> Result<StreamRow> {
        let offset = |s: usize| -> Result<Offset> {
            Ok(Offset::new(
                from_db(get(row, s)?),
                from_db(get(row, s + 1)?),
            ))
        };
        let closed_by = match get::<Option<String>>(row, 14)? {
            None => None,
            Some(id) => Some((
                id,
                from_db(get::<Option<i64>>(row, 15)?.unwrap_or_default()),
                from_db(get::<Option<i64>>(row, 16)?.unwrap_or_default()),
            )),
        };
        let fork = match get::<Option<i64>>(row, 19)? {
            None => None,
            Some(source_id) => Some(ForkCols {
                source_id: from_db(source_id),
                source_name: get::<Option<String>>(row, 20)?.unwrap_or_default(),
                anchor: Offset::new(
                    from_db(get::<Option<i64>>(row, 21)?.unwrap_or_default()),
                    from_db(get::<Option<i64>>(row, 22)?.unwrap_or_default()),
                ),
                sub_offset: from_db(get::<Option<i64>>(row, 23)?.unwrap_or_default()),
            }),
        };
        Ok(StreamRow {
            id: from_db(get(row, 0)?),
            name: get(row, 1)?,
            content_type: get(row, 2)?,
            json: get(row, 3)?,
            expiry: expiry_from_cols(get(row, 4)?, get(row, 5)?, get(row, 6)?, get(row, 7)?)?,
            base: offset(8)?,
            tail: offset(10)?,
            bytes: from_db(get(row, 12)?),
            closed: get(row, 13)?,
            closed_by,
            last_stream_seq: get(row, 17)?,
            last_access_ms: from_db(get(row, 18)?),
            fork,
            fork_refs: get(row, 24)?,
            soft_deleted: get(row, 25)?,
        })
    }

    /// The writer state stored on the row itself (producers live in `ds_producers`).
    pub(crate) fn writer_without_producers(&self) -> WriterState {
        WriterState {
            closed: self.closed,
            closed_by: self.closed_by.clone(),
            last_stream_seq: self.last_stream_seq.clone(),
            producers: std::collections::HashMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u64_round_trips_through_bigint() {
        for v in [0, 1, u64::MAX, u64::MAX / 2, 1 << 63] {
            assert_eq!(from_db(to_db(v)), v);
        }
        assert_eq!(to_db(42), 42);
    }

    #[test]
    fn expiry_round_trips_through_its_columns() {
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789)
            .expect("valid instant")
            .to_offset(time::UtcOffset::from_hms(2, 30, 0).expect("valid offset"));
        for expiry in [Expiry::None, Expiry::Ttl(3600), Expiry::ExpiresAt(at)] {
            let (k, a, n, o) = expiry_cols(expiry);
            let back = expiry_from_cols(k, a, n, o).expect("decodes");
            assert_eq!(back, expiry);
            if let (Expiry::ExpiresAt(x), Expiry::ExpiresAt(y)) = (back, expiry) {
                assert_eq!(x.offset(), y.offset());
            }
        }
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(valid_schema_name("durable_streams"));
        assert!(valid_schema_name("_t1"));
        assert!(!valid_schema_name("1abc"));
        assert!(!valid_schema_name("Public"));
        assert!(!valid_schema_name("a;drop"));
        assert!(!valid_schema_name(""));
    }
}
