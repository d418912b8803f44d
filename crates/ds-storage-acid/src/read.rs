//! Reads: bounded range scans over `records` in read transactions, walking up a fork chain
//! into the source streams' shards for inherited positions.
//!
//! Everything here blocks on the databases and runs on the blocking pool (reads) or on a
//! committer thread (fork resolution). A reader is given the tail it may read up to; every
//! record below a committed tail is durable, so a row missing below it means the stream was
//! deleted while the read ran, and the read answers `NotFound` rather than a partial view.

use std::collections::HashMap;
use std::sync::Arc;

use ds_protocol::Offset;
use ds_storage::rules::{self, LocateStep, Located};
use ds_storage::{Error, Pieces, Result};
use redb::{ReadOnlyTable, ReadableDatabase};

use crate::cache::Entry;
use crate::error::backend;
use crate::schema::{RECORD_HEADER, RECORDS, RecordHeader, decode_record};
use crate::shard::Shared;

type RecordTable = ReadOnlyTable<(u64, u64), &'static [u8]>;

/// Read transactions on the shards one operation touches, opened on first use.
pub(crate) struct Reader<'a> {
    shared: &'a Shared,
    tables: HashMap<usize, RecordTable>,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(shared: &'a Shared) -> Reader<'a> {
        Reader {
            shared,
            tables: HashMap::new(),
        }
    }

    fn table(&mut self, shard: usize) -> Result<&RecordTable> {
        if !self.tables.contains_key(&shard) {
            let txn = self.shared.shards[shard]
                .db()
                .map_err(|f| f.to_error())?
                .begin_read()
                .map_err(|e| backend("begin read transaction", e))?;
            let table = txn
                .open_table(RECORDS)
                .map_err(|e| backend("open records table", e))?;
            self.tables.insert(shard, table);
        }
        Ok(&self.tables[&shard])
    }

    /// The header of record `seq` of `entry`.
    fn record(&mut self, entry: &Entry, seq: u64) -> Result<Option<RecordHeader>> {
        let table = self.table(entry.shard)?;
        let Some(guard) = table
            .get((entry.id, seq))
            .map_err(|e| backend("read record", e))?
        else {
            return Ok(None);
        };
        decode_record(guard.value())
            .map(Some)
            .ok_or_else(corrupt_record)
    }

    /// Reads `entry`'s view (inherited data included) from `from` up to `limit` (a byte
    /// position; `None` = `tail`), pushing pieces while `budget` lasts. Returns the next
    /// position. `tail` is the stream's committed tail the caller read under its lock.
    pub(crate) fn read_view(
        &mut self,
        entry: &Arc<Entry>,
        tail: Offset,
        from: Offset,
        limit: Option<u64>,
        budget: &mut usize,
        out: &mut Pieces,
    ) -> Result<Offset> {
        let end = limit.map_or(tail.byte, |l| l.min(tail.byte));
        if from.byte > tail.byte || (limit.is_none() && from.byte == tail.byte && from != tail) {
            return Err(Error::InvalidOffset { offset: from });
        }
        let base = entry.base;
        if from.byte < base.byte {
            let link = entry
                .fork
                .as_ref()
                .ok_or(Error::InvalidOffset { offset: from })?;
            let upto = base.byte.min(end);
            let source_tail = link.source.lock().tail;
            let next = self.read_view(&link.source, source_tail, from, Some(upto), budget, out)?;
            if next.byte < base.byte || end <= base.byte {
                return Ok(if next.byte == base.byte { base } else { next });
            }
            if *budget == 0 {
                return Ok(base);
            }
            return self.read_own(entry, tail, base, end, budget, out);
        }
        self.read_own(entry, tail, from, end, budget, out)
    }

    /// Reads this stream's own records (positions at or after its base) with one range scan.
    fn read_own(
        &mut self,
        entry: &Entry,
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
        let table = self.table(entry.shard)?;
        let rows = table
            .range((entry.id, from.seq)..(entry.id, tail.seq))
            .map_err(|e| backend("read records", e))?;
        let mut pos = from;
        let mut expected = from.seq;
        let mut rows = rows.peekable();
        while pos.byte < end {
            // Below the committed tail every row exists unless the stream was deleted.
            let (key, value) = rows
                .next()
                .ok_or(Error::NotFound)?
                .map_err(|e| backend("read records", e))?;
            let (_, seq) = key.value();
            if seq != expected {
                return Err(Error::NotFound);
            }
            let value = value.value();
            let rec = decode_record(value).ok_or_else(corrupt_record)?;
            let payload = &value[RECORD_HEADER..];
            if seq == from.seq
                && (from.byte < rec.start
                    || from.byte >= rec.end()
                    || (json && rec.start != from.byte))
            {
                return Err(Error::InvalidOffset { offset: from });
            }
            let rec_end = rec.end().min(end);
            let skip = (pos.byte - rec.start) as usize;
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
            pos = if rec_end == rec.end() {
                Offset::new(seq + 1, rec_end)
            } else {
                Offset::new(seq, rec_end)
            };
            expected += 1;
        }
        Ok(pos)
    }

    /// Resolves `at` in `entry`'s view (inherited data included) for fork creation.
    pub(crate) fn locate(&mut self, entry: &Arc<Entry>, at: Offset) -> Result<Located> {
        let tail = entry.lock().tail;
        let base = entry.base;
        match rules::locate_step(at, tail, base)? {
            LocateStep::At(located) => return Ok(located),
            LocateStep::Inherited => {
                let link = entry
                    .fork
                    .as_ref()
                    .ok_or(Error::ForkOffsetInvalid { offset: at })?;
                return Ok(self.locate(&link.source, at)?.inherited(base, at));
            }
            LocateStep::Own => {}
        }
        if at.seq < base.seq || at.seq >= tail.seq {
            return Err(Error::ForkOffsetInvalid { offset: at });
        }
        let rec = self
            .record(entry, at.seq)?
            .ok_or(Error::ForkSourceNotFound)?;
        if at.byte < rec.start || at.byte >= rec.end() || (entry.json && rec.start != at.byte) {
            return Err(Error::ForkOffsetInvalid { offset: at });
        }
        let messages = if entry.json {
            self.messages_to_batch_end(entry, at.seq, tail.seq)?
        } else {
            1
        };
        Ok(Located {
            bytes_to_boundary: rec.end() - at.byte,
            messages_to_boundary: messages,
        })
    }

    /// JSON messages from record `seq` to the end of its append batch (inclusive).
    fn messages_to_batch_end(&mut self, entry: &Entry, seq: u64, tail_seq: u64) -> Result<u64> {
        let table = self.table(entry.shard)?;
        let rows = table
            .range((entry.id, seq)..(entry.id, tail_seq))
            .map_err(|e| backend("read records", e))?;
        let mut n = 0;
        for row in rows {
            let (_, value) = row.map_err(|e| backend("read records", e))?;
            n += 1;
            if decode_record(value.value())
                .ok_or_else(corrupt_record)?
                .batch_end
            {
                break;
            }
        }
        Ok(n)
    }

    /// The position `count` JSON messages past `anchor` in `entry`'s view.
    pub(crate) fn json_position(
        &mut self,
        entry: &Arc<Entry>,
        anchor: Offset,
        count: u64,
    ) -> Result<Offset> {
        let mut pos = anchor;
        let mut bytes = 0;
        for _ in 0..count {
            // A JSON read returns at least one whole message: a budget of one byte reads
            // exactly one.
            let tail = entry.lock().tail;
            let mut pieces = Pieces::default();
            let mut budget = 1;
            pos = self.read_view(entry, tail, pos, Some(tail.byte), &mut budget, &mut pieces)?;
            bytes += pieces.len() as u64;
        }
        Ok(Offset::new(anchor.seq + count, anchor.byte + bytes))
    }
}

fn corrupt_record() -> Error {
    Error::Backend {
        op: "decode record",
        source: "record row is shorter than its header".into(),
    }
}
