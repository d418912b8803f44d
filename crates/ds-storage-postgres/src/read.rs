//! Reads: bounded range scans over `ds_records`, walking up a fork chain into the source
//! streams' rows for inherited positions.
//!
//! A reader is given the tail it may read up to, read from the stream row first. Records below
//! a committed tail never change, so reading them in a later statement is consistent; a row
//! missing below the tail means the stream was deleted while the read ran, and the read answers
//! `NotFound` rather than a partial view.
//!
//! Each scan fetches only records that start before `from + budget`, in pages of at most
//! [`PAGE_ROWS`] records whose seq range is the index condition, so a chunk costs about its
//! size (plus at most one record, and one page of index entries) whatever the stream's length.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use deadpool_postgres::ClientWrapper;
use ds_protocol::Offset;
use ds_storage::rules::{self, LocateStep, Located};
use ds_storage::{Error, Pieces, Result};

use crate::db;
use crate::error::backend;
use crate::schema::{StreamRow, from_db, to_db};

/// Records one page of a read scans at most: the index range of a page is
/// `seq >= next AND seq < min(tail, next + PAGE_ROWS)`.
const PAGE_ROWS: u64 = 256;

/// One page of a stream's records: `$1` stream, `[$2, $3)` seq range (at most [`PAGE_ROWS`]),
/// `$4` the byte horizon (records starting at or after it are not needed).
pub(crate) const READ_PAGE_SQL: &str = "SELECT seq, start_byte, batch_end, data FROM ds_records \
     WHERE stream_id = $1 AND seq >= $2 AND seq < $3 AND start_byte < $4 ORDER BY seq";

type Boxed<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// Reads over one connection, caching the fork sources it had to load.
pub(crate) struct Reader<'a> {
    client: &'a ClientWrapper,
    sources: HashMap<u64, StreamRow>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(client: &'a ClientWrapper) -> Reader<'a> {
        Reader {
            client,
            sources: HashMap::new(),
        }
    }

    /// The row of fork source `id` (soft-deleted sources keep their rows while forks exist).
    async fn source(&mut self, id: u64) -> Result<StreamRow> {
        if let Some(row) = self.sources.get(&id) {
            return Ok(row.clone());
        }
        let row = db::stream_by_id(self.client, id, false)
            .await?
            .ok_or(Error::NotFound)?;
        self.sources.insert(id, row.clone());
        Ok(row)
    }

    /// Reads `entry`'s view (inherited data included) from `from` up to `limit` (a byte
    /// position; `None` = `tail`), pushing pieces while `budget` lasts. Returns the next
    /// position. `tail` is the stream's committed tail read before.
    pub(crate) fn read_view<'r>(
        &'r mut self,
        entry: &'r StreamRow,
        tail: Offset,
        from: Offset,
        limit: Option<u64>,
        budget: &'r mut usize,
        out: &'r mut Pieces,
    ) -> Boxed<'r, Offset> {
        Box::pin(async move {
            let end = limit.map_or(tail.byte, |l| l.min(tail.byte));
            if from.byte > tail.byte || (limit.is_none() && from.byte == tail.byte && from != tail)
            {
                return Err(Error::InvalidOffset { offset: from });
            }
            let base = entry.base;
            if from.byte < base.byte {
                let link = entry
                    .fork
                    .as_ref()
                    .ok_or(Error::InvalidOffset { offset: from })?;
                let source = self.source(link.source_id).await?;
                let upto = base.byte.min(end);
                let next = self
                    .read_view(&source, source.tail, from, Some(upto), budget, out)
                    .await?;
                if next.byte < base.byte || end <= base.byte {
                    return Ok(if next.byte == base.byte { base } else { next });
                }
                if *budget == 0 {
                    return Ok(base);
                }
                return self.read_own(entry, tail, base, end, budget, out).await;
            }
            self.read_own(entry, tail, from, end, budget, out).await
        })
    }

    /// Reads this stream's own records (positions at or after its base) with one range scan.
    async fn read_own(
        &mut self,
        entry: &StreamRow,
        tail: Offset,
        from: Offset,
        end: u64,
        budget: &mut usize,
        out: &mut Pieces,
    ) -> Result<Offset> {
        if from.byte >= end {
            if from.byte == tail.byte && from.seq != tail.seq {
                return Err(Error::InvalidOffset { offset: from });
            }
            return Ok(if from.byte == tail.byte { tail } else { from });
        }
        // `from.byte < end <= tail.byte`: the record at `from.seq` must hold `from.byte`.
        if from.seq < entry.base.seq || from.seq >= tail.seq {
            return Err(Error::InvalidOffset { offset: from });
        }
        let json = entry.json;
        // Records starting before this byte are all the chunk can use (the first one always
        // qualifies: it starts at or before `from`).
        let horizon = end.min(from.byte.saturating_add((*budget).max(1) as u64));
        let mut pos = from;
        let mut expected = from.seq;
        'pages: while pos.byte < end {
            // One page: a bounded index range on (stream_id, seq); the `start_byte` filter
            // only trims it, so a page never walks towards the tail.
            let page_end = tail.seq.min(expected.saturating_add(PAGE_ROWS));
            if page_end <= expected {
                // Bytes left below the tail but no records: the rows are gone.
                return Err(Error::NotFound);
            }
            let rows = db::query(
                self.client,
                "read records",
                READ_PAGE_SQL,
                &[
                    &to_db(entry.id),
                    &to_db(expected),
                    &to_db(page_end),
                    &to_db(horizon),
                ],
            )
            .await?;
            let mut rows = rows.iter();
            while pos.byte < end {
                // Below the committed tail every row exists unless the stream was deleted.
                let Some(row) = rows.next() else {
                    if pos.byte >= horizon {
                        // The budget ends here (a JSON message that does not fit).
                        break 'pages;
                    }
                    if expected == page_end {
                        // This page is used up: fetch the next one.
                        continue 'pages;
                    }
                    return Err(Error::NotFound);
                };
                let seq = from_db(row.try_get(0).map_err(|e| backend("read records", e))?);
                let start = from_db(row.try_get(1).map_err(|e| backend("read records", e))?);
                let payload: &[u8] = row.try_get(3).map_err(|e| backend("read records", e))?;
                if seq != expected {
                    return Err(Error::NotFound);
                }
                let rec_len = payload.len() as u64;
                if seq == from.seq
                    && (from.byte < start
                        || from.byte >= start + rec_len
                        || (json && start != from.byte))
                {
                    return Err(Error::InvalidOffset { offset: from });
                }
                let rec_end = (start + rec_len).min(end);
                let skip = (pos.byte - start) as usize;
                let avail = (rec_end - pos.byte) as usize;
                if json {
                    if *budget < avail && !out.is_empty() {
                        break 'pages;
                    }
                    out.push(&payload[skip..]);
                    *budget = budget.saturating_sub(avail);
                } else {
                    if *budget == 0 {
                        break 'pages;
                    }
                    let take = avail.min(*budget);
                    out.push(&payload[skip..skip + take]);
                    *budget -= take;
                    if take < avail {
                        return Ok(Offset::new(seq, pos.byte + take as u64));
                    }
                }
                pos = if rec_end == start + rec_len {
                    Offset::new(seq + 1, rec_end)
                } else {
                    Offset::new(seq, rec_end)
                };
                expected += 1;
            }
        }
        Ok(pos)
    }

    /// Resolves `at` in `entry`'s view (inherited data included) for fork creation.
    pub(crate) fn locate<'r>(&'r mut self, entry: &'r StreamRow, at: Offset) -> Boxed<'r, Located> {
        Box::pin(async move {
            let (tail, base) = (entry.tail, entry.base);
            match rules::locate_step(at, tail, base)? {
                LocateStep::At(located) => return Ok(located),
                LocateStep::Inherited => {
                    let link = entry
                        .fork
                        .as_ref()
                        .ok_or(Error::ForkOffsetInvalid { offset: at })?;
                    let source = self.source(link.source_id).await?;
                    return Ok(self.locate(&source, at).await?.inherited(base, at));
                }
                LocateStep::Own => {}
            }
            if at.seq < base.seq || at.seq >= tail.seq {
                return Err(Error::ForkOffsetInvalid { offset: at });
            }
            let row = db::query_opt(
                self.client,
                "read record",
                "SELECT start_byte, length(data)::bigint FROM ds_records \
                 WHERE stream_id = $1 AND seq = $2",
                &[&to_db(entry.id), &to_db(at.seq)],
            )
            .await?
            .ok_or(Error::ForkSourceNotFound)?;
            let start = from_db(row.try_get(0).map_err(|e| backend("read record", e))?);
            let len = from_db(row.try_get(1).map_err(|e| backend("read record", e))?);
            if at.byte < start || at.byte >= start + len || (entry.json && start != at.byte) {
                return Err(Error::ForkOffsetInvalid { offset: at });
            }
            let messages = if entry.json {
                self.messages_to_batch_end(entry, at.seq, tail.seq).await?
            } else {
                1
            };
            Ok(Located {
                bytes_to_boundary: start + len - at.byte,
                messages_to_boundary: messages,
            })
        })
    }

    /// JSON messages from record `seq` to the end of its append batch (inclusive).
    async fn messages_to_batch_end(
        &mut self,
        entry: &StreamRow,
        seq: u64,
        tail_seq: u64,
    ) -> Result<u64> {
        let row = db::query_opt(
            self.client,
            "read records",
            "SELECT min(seq) FROM ds_records \
             WHERE stream_id = $1 AND seq >= $2 AND seq < $3 AND batch_end",
            &[&to_db(entry.id), &to_db(seq), &to_db(tail_seq)],
        )
        .await?;
        let last: Option<i64> = match row {
            Some(r) => r.try_get(0).map_err(|e| backend("read records", e))?,
            None => None,
        };
        // Every batch ends with a `batch_end` record; without one the batch runs to the tail.
        let last = last.map_or(tail_seq.saturating_sub(1), from_db);
        Ok(last + 1 - seq)
    }

    /// The position `count` JSON messages past `anchor` in `entry`'s view.
    pub(crate) async fn json_position(
        &mut self,
        entry: &StreamRow,
        anchor: Offset,
        count: u64,
    ) -> Result<Offset> {
        let mut pos = anchor;
        let mut bytes = 0;
        for _ in 0..count {
            // A JSON read returns at least one whole message: a budget of one byte reads
            // exactly one.
            let tail = entry.tail;
            let mut pieces = Pieces::default();
            let mut budget = 1;
            pos = self
                .read_view(entry, tail, pos, Some(tail.byte), &mut budget, &mut pieces)
                .await?;
            bytes += pieces.len() as u64;
        }
        Ok(Offset::new(anchor.seq + count, anchor.byte + bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `EXPLAIN ANALYZE` of the page query as prepared (generic plan), in a fresh schema over
    /// one stream of `rows` records of 10 bytes: the rows the scan visited (returned plus
    /// filtered out).
    async fn visited(client: &tokio_postgres::Client, sql: &str, params: &str) -> u64 {
        client
            .batch_execute(&format!(
                "DEALLOCATE ALL; SET plan_cache_mode = force_generic_plan; PREPARE p AS {sql}"
            ))
            .await
            .expect("prepare");
        let plan: Vec<String> = client
            .query(
                &format!("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) EXECUTE p({params})"),
                &[],
            )
            .await
            .expect("explain")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plan = plan.join("\n");
        assert!(
            plan.contains("Index Cond: ((stream_id = $1) AND (seq >= $2) AND (seq < $3))"),
            "{plan}"
        );
        let number_after = |key: &str| -> u64 {
            plan.find(key).map_or(0, |i| {
                plan[i + key.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .expect("a number")
            })
        };
        number_after("rows=") + number_after("Rows Removed by Filter: ")
    }

    /// A page scans at most `PAGE_ROWS` index entries however long the rest of the stream
    /// is; the unpaged query (the seq range up to the tail) walks every row to the tail.
    #[tokio::test]
    async fn a_page_scan_is_bounded_by_the_page_not_the_stream() {
        let url = std::env::var("DS_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let (mut client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        let schema = format!("ds_test_read_{:08x}", fastrand::u32(..));
        crate::schema::migrate(&mut client, &schema)
            .await
            .expect("migrate");
        let rows = 100_000;
        let result = async {
            client
                .batch_execute(&format!(
                    "SET search_path TO {schema};
                     INSERT INTO ds_records (stream_id, seq, start_byte, batch_end, data)
                     SELECT 1, g, g * 10, true, '\\x00010203040506070809'::bytea
                     FROM generate_series(0, {rows} - 1) AS g;
                     ANALYZE ds_records;"
                ))
                .await
                .expect("fill");
            // The first chunk of a catch-up read with a 100-byte budget (10 records).
            let paged = visited(&client, READ_PAGE_SQL, &format!("1, 0, {PAGE_ROWS}, 100")).await;
            let unpaged = visited(&client, READ_PAGE_SQL, &format!("1, 0, {rows}, 100")).await;
            (paged, unpaged)
        }
        .await;
        let _ = client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await;
        let (paged, unpaged) = result;
        assert!(paged <= PAGE_ROWS, "a page visited {paged} rows");
        assert_eq!(unpaged, rows, "the unpaged scan walks to the tail");
    }
}
