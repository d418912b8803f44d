//! The on-disk format: tables, keys and value encodings of one shard database.
//!
//! ```text
//! Format version 1. One redb database per shard: `<data_dir>/shard-XX.redb` (XX = two hex
//! digits), holding only the streams whose name hashes to that shard (FNV-1a 64 of the decoded
//! name, masked by `shard_count - 1`; the hash is part of the format).
//!
//! table      key                                  value
//! ---------  -----------------------------------  ------------------------------------------
//! meta       &str                                 u64
//!              "format_version"                     1
//!              "shard_count"                        shards of the data dir (must not change)
//!              "shard_index"                        this file's shard
//!              "next_id"                            per-shard stream-id counter
//! streams    &str  decoded stream name            StreamMeta (below), one row per incarnation
//!                                                 that still holds its name (live or
//!                                                 soft-deleted)
//! producers  (u64 stream_id, &str producer_id)    (u64 epoch, u64 last_seq)
//! records    (u64 stream_id, u64 seq)             [u8 flags][u64 start byte][payload...]
//!                                                 flags bit 0: last record of its append
//!                                                 (the batch end, for JSON fork sub-offsets)
//!
//! Stream ids are (next_id << 8) | shard_index: unique across shards and never reused, so rows
//! of an old incarnation can never be mistaken for a new one's.
//!
//! `seq` is the record index of the stream's offsets (`Offset { seq, byte }`): one record per
//! binary append, one per JSON message. A fork's own records start at its base offset's seq;
//! positions below it are read from the source stream's rows (in the source's shard).
//!
//! StreamMeta v1, little-endian; str = u32 length + UTF-8; opt<T> = u8 0 | u8 1 + T:
//!   u8  version (1)
//!   u64 stream_id
//!   u64 last_access_ms        last write (every write to a stream with a sliding TTL) or
//!                             persisted read touch
//!   u8  flags                 bit 0 closed, bit 1 soft-deleted
//!   u64 base.seq, u64 base.byte
//!   u64 tail.seq, u64 tail.byte   as of the row's last write: a plain append writes only
//!   u64 bytes                     its records, so at open the stream's last record (if past
//!                                 this tail) gives the tail, and bytes = tail - base
//!   u8  expiry tag            0 none | 1 ttl: u64 secs | 2 at: i128 unix nanos, i32 utc offset secs
//!   str content_type
//!   opt<str> last Stream-Seq
//!   opt<str producer id, u64 epoch, u64 seq> closed_by
//!   opt<str source name, u64 source id, u64 anchor.seq, u64 anchor.byte, u64 sub_offset> fork
//! ```
//!
//! Fork reference counts are not stored: they are recomputed at open from the fork links of
//! the `streams` rows (see `shard`), so no cross-shard write has to be ordered for them.

use ds_protocol::{Expiry, NameLimits, Offset, StreamName};
use ds_storage::rules::WriterState;
use redb::TableDefinition;

/// The format this code writes and reads.
pub(crate) const FORMAT_VERSION: u64 = 1;

/// Shard metadata (`format_version`, `shard_count`, `shard_index`, `next_id`).
pub(crate) const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
/// Stream metadata by decoded name.
pub(crate) const STREAMS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("streams");
/// Idempotent-producer state by (stream id, producer id).
pub(crate) const PRODUCERS: TableDefinition<'static, (u64, &str), (u64, u64)> =
    TableDefinition::new("producers");
/// Stream data by (stream id, record seq).
pub(crate) const RECORDS: TableDefinition<'static, (u64, u64), &[u8]> =
    TableDefinition::new("records");

pub(crate) const KEY_FORMAT_VERSION: &str = "format_version";
pub(crate) const KEY_SHARD_COUNT: &str = "shard_count";
pub(crate) const KEY_SHARD_INDEX: &str = "shard_index";
pub(crate) const KEY_NEXT_ID: &str = "next_id";

const META_VERSION: u8 = 1;
const FLAG_CLOSED: u8 = 1;
const FLAG_SOFT_DELETED: u8 = 2;
const RECORD_BATCH_END: u8 = 1;
/// Bytes before a record's payload: flags and start byte.
pub(crate) const RECORD_HEADER: usize = 9;

/// The shard a stream name lives in (FNV-1a 64; part of the on-disk format).
pub(crate) fn shard_of(name: &str, shard_count: u32) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash & u64::from(shard_count - 1)) as usize
}

/// A stream id from a shard's counter value.
pub(crate) fn stream_id(counter: u64, shard: usize) -> u64 {
    (counter << 8) | shard as u64
}

/// Rebuilds a [`StreamName`] from its stored (decoded) form.
///
/// `StreamName::parse` percent-decodes, so a literal `%` is escaped first; limits were checked
/// when the stream was created and are not applied again (they may have changed since).
pub(crate) fn stored_name(raw: &str) -> Option<StreamName> {
    let limits = NameLimits {
        max_bytes: usize::MAX,
        max_segments: usize::MAX,
    };
    StreamName::parse(&raw.replace('%', "%25"), limits).ok()
}

/// One record's value: flags, start byte, payload.
pub(crate) fn encode_record(batch_end: bool, start: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + data.len());
    out.push(if batch_end { RECORD_BATCH_END } else { 0 });
    out.extend_from_slice(&start.to_le_bytes());
    out.extend_from_slice(data);
    out
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    /// Last record of its append.
    pub(crate) batch_end: bool,
    /// Byte position of the payload's first byte.
    pub(crate) start: u64,
    /// Payload length.
    pub(crate) len: u64,
}

impl RecordHeader {
    /// The byte position just past the payload.
    pub(crate) fn end(self) -> u64 {
        self.start + self.len
    }
}

/// Decodes a record's header; `None` when the value is too short to be a record.
pub(crate) fn decode_record(value: &[u8]) -> Option<RecordHeader> {
    let flags = *value.first()?;
    let start = u64::from_le_bytes(value.get(1..RECORD_HEADER)?.try_into().ok()?);
    Some(RecordHeader {
        batch_end: flags & RECORD_BATCH_END != 0,
        start,
        len: (value.len() - RECORD_HEADER) as u64,
    })
}

/// A fork link as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredFork {
    pub(crate) source: String,
    pub(crate) source_id: u64,
    pub(crate) anchor: Offset,
    pub(crate) sub_offset: u64,
}

/// A `streams` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamMeta {
    pub(crate) id: u64,
    pub(crate) last_access_ms: u64,
    pub(crate) closed: bool,
    pub(crate) soft_deleted: bool,
    pub(crate) base: Offset,
    pub(crate) tail: Offset,
    pub(crate) bytes: u64,
    pub(crate) expiry: Expiry,
    pub(crate) content_type: String,
    pub(crate) last_stream_seq: Option<String>,
    pub(crate) closed_by: Option<(String, u64, u64)>,
    pub(crate) fork: Option<StoredFork>,
}

impl StreamMeta {
    /// The writer state this row carries (producers live in their own table).
    pub(crate) fn writer(&self) -> WriterState {
        WriterState {
            closed: self.closed,
            closed_by: self.closed_by.clone(),
            last_stream_seq: self.last_stream_seq.clone(),
            producers: std::collections::HashMap::new(),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(128));
        w.u8(META_VERSION);
        w.u64(self.id);
        w.u64(self.last_access_ms);
        let mut flags = 0;
        if self.closed {
            flags |= FLAG_CLOSED;
        }
        if self.soft_deleted {
            flags |= FLAG_SOFT_DELETED;
        }
        w.u8(flags);
        w.offset(self.base);
        w.offset(self.tail);
        w.u64(self.bytes);
        match self.expiry {
            Expiry::None => w.u8(0),
            Expiry::Ttl(secs) => {
                w.u8(1);
                w.u64(secs);
            }
            Expiry::ExpiresAt(at) => {
                w.u8(2);
                w.0.extend_from_slice(&at.unix_timestamp_nanos().to_le_bytes());
                w.0.extend_from_slice(&at.offset().whole_seconds().to_le_bytes());
            }
        }
        w.str(&self.content_type);
        match &self.last_stream_seq {
            None => w.u8(0),
            Some(seq) => {
                w.u8(1);
                w.str(seq);
            }
        }
        match &self.closed_by {
            None => w.u8(0),
            Some((id, epoch, seq)) => {
                w.u8(1);
                w.str(id);
                w.u64(*epoch);
                w.u64(*seq);
            }
        }
        match &self.fork {
            None => w.u8(0),
            Some(f) => {
                w.u8(1);
                w.str(&f.source);
                w.u64(f.source_id);
                w.offset(f.anchor);
                w.u64(f.sub_offset);
            }
        }
        w.0
    }

    /// Decodes a row; `None` when it is not a valid version-1 row.
    pub(crate) fn decode(bytes: &[u8]) -> Option<StreamMeta> {
        let mut r = Reader(bytes);
        if r.u8()? != META_VERSION {
            return None;
        }
        let id = r.u64()?;
        let last_access_ms = r.u64()?;
        let flags = r.u8()?;
        let base = r.offset()?;
        let tail = r.offset()?;
        let stored_bytes = r.u64()?;
        let expiry = match r.u8()? {
            0 => Expiry::None,
            1 => Expiry::Ttl(r.u64()?),
            2 => {
                let nanos = i128::from_le_bytes(r.take(16)?.try_into().ok()?);
                let offset = i32::from_le_bytes(r.take(4)?.try_into().ok()?);
                let at = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
                let offset = time::UtcOffset::from_whole_seconds(offset).ok()?;
                Expiry::ExpiresAt(at.to_offset(offset))
            }
            _ => return None,
        };
        let content_type = r.str()?;
        let last_stream_seq = match r.u8()? {
            0 => None,
            1 => Some(r.str()?),
            _ => return None,
        };
        let closed_by = match r.u8()? {
            0 => None,
            1 => Some((r.str()?, r.u64()?, r.u64()?)),
            _ => return None,
        };
        let fork = match r.u8()? {
            0 => None,
            1 => Some(StoredFork {
                source: r.str()?,
                source_id: r.u64()?,
                anchor: r.offset()?,
                sub_offset: r.u64()?,
            }),
            _ => return None,
        };
        if !r.0.is_empty() {
            return None;
        }
        Some(StreamMeta {
            id,
            last_access_ms,
            closed: flags & FLAG_CLOSED != 0,
            soft_deleted: flags & FLAG_SOFT_DELETED != 0,
            base,
            tail,
            bytes: stored_bytes,
            expiry,
            content_type,
            last_stream_seq,
            closed_by,
            fork,
        })
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn offset(&mut self, o: Offset) {
        self.u64(o.seq);
        self.u64(o.byte);
    }
    fn str(&mut self, s: &str) {
        let len = u32::try_from(s.len()).expect("stored strings are far below 4 GiB");
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn offset(&mut self) -> Option<Offset> {
        Some(Offset::new(self.u64()?, self.u64()?))
    }
    fn str(&mut self) -> Option<String> {
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StreamMeta {
        StreamMeta {
            id: stream_id(7, 3),
            last_access_ms: 1_700_000_000_123,
            closed: true,
            soft_deleted: true,
            base: Offset::new(2, 10),
            tail: Offset::new(5, 99),
            bytes: 89,
            expiry: Expiry::ExpiresAt(
                time::OffsetDateTime::from_unix_timestamp_nanos(1_800_000_000_000_000_001)
                    .expect("in range")
                    .to_offset(time::UtcOffset::from_hms(2, 0, 0).expect("valid offset")),
            ),
            content_type: "application/json".to_owned(),
            last_stream_seq: Some("0042".to_owned()),
            closed_by: Some(("p".to_owned(), 1, 9)),
            fork: Some(StoredFork {
                source: "a/b%c".to_owned(),
                source_id: stream_id(1, 0),
                anchor: Offset::new(1, 8),
                sub_offset: 2,
            }),
        }
    }

    #[test]
    fn stream_meta_round_trips() {
        let meta = sample();
        assert_eq!(StreamMeta::decode(&meta.encode()), Some(meta.clone()));
        let plain = StreamMeta {
            closed: false,
            soft_deleted: false,
            expiry: Expiry::Ttl(60),
            last_stream_seq: None,
            closed_by: None,
            fork: None,
            ..meta
        };
        assert_eq!(StreamMeta::decode(&plain.encode()), Some(plain));
    }

    #[test]
    fn truncated_or_padded_meta_is_rejected() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert_eq!(StreamMeta::decode(&bytes[..len]), None, "length {len}");
        }
        let mut padded = bytes;
        padded.push(0);
        assert_eq!(StreamMeta::decode(&padded), None);
    }

    #[test]
    fn records_round_trip() {
        let value = encode_record(true, 1234, b"payload");
        assert_eq!(
            decode_record(&value),
            Some(RecordHeader {
                batch_end: true,
                start: 1234,
                len: 7
            })
        );
        assert_eq!(&value[RECORD_HEADER..], b"payload");
        assert_eq!(decode_record(&value[..4]), None);
    }

    #[test]
    fn stored_names_survive_percent_signs() {
        for raw in ["a", "chats/42", "100%/done", "%2F", "a b/ü"] {
            assert_eq!(stored_name(raw).expect("valid").as_str(), raw);
        }
    }

    #[test]
    fn shard_hash_is_stable_and_in_range() {
        // The hash is part of the format: these values must never change.
        assert_eq!(shard_of("", 256), 0x25);
        assert_eq!(shard_of("a", 256), 0x8c);
        for count in [1, 2, 16, 256] {
            for name in ["x", "chats/1", "chats/2"] {
                assert!(shard_of(name, count) < count as usize);
            }
        }
    }
}
