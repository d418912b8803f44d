//! Small helpers over a pooled connection: every statement is prepared once per connection
//! (deadpool's statement cache), and every driver error becomes a [`ds_storage::Error`]
//! naming the operation.

use deadpool_postgres::ClientWrapper;
use ds_storage::Result;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::error::backend;
use crate::schema::{STREAM_COLUMNS, StreamRow, to_db};

/// Parameters of a statement.
pub(crate) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs a statement returning rows.
pub(crate) async fn query(
    c: &ClientWrapper,
    op: &'static str,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>> {
    let stmt = c.prepare_cached(sql).await.map_err(|e| backend(op, e))?;
    c.query(&stmt, params).await.map_err(|e| backend(op, e))
}

/// Runs a statement returning at most one row.
pub(crate) async fn query_opt(
    c: &ClientWrapper,
    op: &'static str,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>> {
    let stmt = c.prepare_cached(sql).await.map_err(|e| backend(op, e))?;
    c.query_opt(&stmt, params).await.map_err(|e| backend(op, e))
}

/// Runs a statement returning the number of rows it affected.
pub(crate) async fn execute(
    c: &ClientWrapper,
    op: &'static str,
    sql: &str,
    params: Params<'_>,
) -> Result<u64> {
    let stmt = c.prepare_cached(sql).await.map_err(|e| backend(op, e))?;
    c.execute(&stmt, params).await.map_err(|e| backend(op, e))
}

/// Runs statements without parameters (transaction control).
pub(crate) async fn simple(c: &ClientWrapper, op: &'static str, sql: &str) -> Result<()> {
    c.batch_execute(sql).await.map_err(|e| backend(op, e))
}

/// The stream row named `name`; with `lock`, locked `FOR UPDATE` until the transaction ends.
pub(crate) async fn stream_by_name(
    c: &ClientWrapper,
    name: &str,
    lock: bool,
) -> Result<Option<StreamRow>> {
    let sql = format!(
        "SELECT {STREAM_COLUMNS} FROM ds_streams WHERE name = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    query_opt(c, "read stream", &sql, &[&name])
        .await?
        .as_ref()
        .map(StreamRow::decode)
        .transpose()
}

/// The stream row with id `id`; with `lock`, locked `FOR UPDATE`.
pub(crate) async fn stream_by_id(
    c: &ClientWrapper,
    id: u64,
    lock: bool,
) -> Result<Option<StreamRow>> {
    let sql = format!(
        "SELECT {STREAM_COLUMNS} FROM ds_streams WHERE id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    query_opt(c, "read stream", &sql, &[&to_db(id)])
        .await?
        .as_ref()
        .map(StreamRow::decode)
        .transpose()
}
