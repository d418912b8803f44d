//! Reads: bounded range scans over `ds_records`, walking up a fork chain into the source
//! streams' rows for inherited positions.
//!
//! A reader is given the tail it may read up to, read from the stream row first. Records below
//! a committed tail never change, so reading them in a later statement is consistent; a row
//! missing below the tail means the stream was deleted while the read ran, and the read answers
//! `NotFound` rather than a partial view.
//!
//! Each scan fetches only records that start before `from + budget`, so a chunk costs about its
//! size (plus at most one record) whatever the stream's length.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;

use bytes::Bytes;
use deadpool_postgres::ClientWrapper;
use ds_protocol::Offset;
use ds_storage::{Error, Result};

use crate::db;
use crate::error::backend;
use crate::schema::{StreamRow, from_db, to_db};

/// Payload pieces gathered into one buffer, handed out as slices of it (one allocation per
/// chunk, not per message).
#[derive(Debug, Default)]
pub(crate) struct Pieces {
    buf: Vec<u8>,
    spans: Vec<Range<usize>>,
}

impl Pieces {
    fn push(&mut self, data: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(data);
        self.spans.push(start..self.buf.len());
    }

    fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Total payload bytes.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn finish(self) -> Vec<Bytes> {
        let all = Bytes::from(self.buf);
        self.spans.into_iter().map(|r| all.slice(r)).collect()
    }
}

/// What lies at a position of a stream's view (used to resolve fork boundaries).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Located {
    /// Bytes from the position to the end of its record (the next data boundary).
    pub(crate) bytes_to_boundary: u64,
    /// JSON messages from the position to the end of its append batch.
    pub(crate) messages_to_boundary: u64,
}

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
        let rows = db::query(
            self.client,
            "read records",
            "SELECT seq, start_byte, batch_end, data FROM ds_records \
             WHERE stream_id = $1 AND seq >= $2 AND seq < $3 AND start_byte < $4 ORDER BY seq",
            &[
                &to_db(entry.id),
                &to_db(from.seq),
                &to_db(tail.seq),
                &to_db(horizon),
            ],
        )
        .await?;
        let mut rows = rows.iter();
        let mut pos = from;
        let mut expected = from.seq;
        while pos.byte < end {
            // Below the committed tail every row exists unless the stream was deleted.
            let Some(row) = rows.next() else {
                if pos.byte >= horizon {
                    // The budget ends here (a JSON message that does not fit).
                    break;
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
                    break;
                }
                out.push(&payload[skip..]);
                *budget = budget.saturating_sub(avail);
            } else {
                if *budget == 0 {
                    break;
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
        Ok(pos)
    }

    /// Resolves `at` in `entry`'s view (inherited data included) for fork creation.
    pub(crate) fn locate<'r>(&'r mut self, entry: &'r StreamRow, at: Offset) -> Boxed<'r, Located> {
        Box::pin(async move {
            let tail = entry.tail;
            if at.byte > tail.byte || at > tail {
                return Err(Error::ForkOffsetBeyondTail { offset: at, tail });
            }
            let base = entry.base;
            if at.byte < base.byte {
                let link = entry
                    .fork
                    .as_ref()
                    .ok_or(Error::ForkOffsetInvalid { offset: at })?;
                let source = self.source(link.source_id).await?;
                let inner = self.locate(&source, at).await?;
                // Inherited records end where this stream's own data begins.
                return Ok(Located {
                    bytes_to_boundary: inner.bytes_to_boundary.min(base.byte - at.byte),
                    messages_to_boundary: inner
                        .messages_to_boundary
                        .min(base.seq.saturating_sub(at.seq)),
                });
            }
            if at.byte == tail.byte {
                if at.seq != tail.seq {
                    return Err(Error::ForkOffsetInvalid { offset: at });
                }
                return Ok(Located {
                    bytes_to_boundary: 0,
                    messages_to_boundary: 0,
                });
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
