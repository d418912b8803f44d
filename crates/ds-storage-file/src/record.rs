//! Record framing: the one byte layout shared by the write-ahead log and the stream files,
//! its checksum and its format version, plus the `CHECKPOINT` file.
//!
//! A record is written byte for byte to its stream's file and to the WAL, so a record found in
//! either place means the same thing. It names the WAL segment it is committed in: recovery
//! trusts a stream-file record from a segment at or above the checkpoint floor only if the WAL
//! still holds it (otherwise its batch never committed, and the record is cut off). Every record names its stream and its position in that
//! stream's file (`rec_no`). A record is never rewritten, and is only taken back (after a full
//! disk) with a durable truncation before anything can reuse its position, so
//! `(stream_id, rec_no)` identifies one record content for the life of the data directory
//! (stream ids are never reused). Recovery relies on that to replay the WAL idempotently.

use std::ops::Range;

use bytes::Bytes;
use ds_protocol::{Expiry, Offset};
use ds_storage::rules::{ProducerState, WriterState};

/// The newest record format version this build reads and writes. Each record carries the
/// oldest version that can describe it ([`Kind::version`]), so data written without newer
/// record kinds stays readable by older builds, and an older build refuses a newer record by
/// its version instead of misreading it.
pub(crate) const VERSION: u8 = 2;

/// Bytes before the message-length table.
pub(crate) const FIXED_LEN: usize = 52;

/// The largest record this format can frame (its length is a `u32`).
pub(crate) const MAX_RECORD_LEN: u64 = u32::MAX as u64;

/// Flag bit: the record closes the stream (`Append` with `Stream-Closed`, or `Create` closed).
pub(crate) const FLAG_CLOSE: u16 = 1;

// Record byte layout, format version 2. All integers are little-endian.
//
//   offset  size   field
//   0       4      len          total record length in bytes, header included
//   4       4      crc          CRC-32 (IEEE, crc32fast) of bytes [0, 4) followed by [8, len)
//   8       1      version      1 for kinds 1-5, 2 for kind 6 (the version that introduced it)
//   9       1      kind         1 Create, 2 Append, 3 Touch, 4 SoftDelete, 5 Delete, 6 Writer
//   10      2      flags        bit 0: the record closes the stream
//   12      4      payload_off  offset of the first payload byte from the record start
//   16      8      stream_id    the stream incarnation (also names its file)
//   24      8      rec_no       index of this record in the stream's file (0 = Create)
//   32      8      at_ms        wall-clock time of the write (TTL last access)
//   40      8      segment      the WAL segment the record was committed in
//   48      4      msg_count    number of messages in the payload
//   52      4*n    msg_len[n]   length of each message
//   ..             metadata     per kind, see below
//   payload_off    payload      the messages, concatenated (len - payload_off bytes)
//
// Metadata of a Create record:
//   u32 name_len, name (the stream name in URL-path form), u32 ct_len, content type,
//   u8 expiry tag (0 none, 1 TTL: u64 seconds, 2 Expires-At: i128 Unix nanoseconds),
//   u8 fork tag (0 none, 1 fork: u64 source_id, u64 anchor.seq, u64 anchor.byte,
//   u64 sub_offset, u64 base.seq, u64 base.byte).
// Metadata of an Append record:
//   u8 has_stream_seq [u32 len, bytes], u8 has_producer [u32 id_len, id, u64 epoch, u64 seq].
// Metadata of a Writer record (format version 2; replaces the whole writer state, as
// `Storage::restore_writer` does):
//   u8 closed_by tag (0 none, 1: u32 id_len, id, u64 epoch, u64 seq),
//   u8 has_stream_seq [u32 len, bytes], u32 producer count, then per producer
//   (in id order) u32 id_len, id, u64 epoch, u64 last_seq.
//   Closure is the record's close flag; it has no messages.
// Touch, SoftDelete and Delete records have no metadata and no messages.
//
// Versions: format 1 had kinds 1-5. Format 2 adds kind 6; a build that reads only format 1
// refuses a version-2 record (and so the data directory) with "unsupported record format
// version 2" rather than skipping it. Records of kinds 1-5 are still written as version 1.
//
// A binary append is one message; a JSON append is one message per JSON value. Delete records
// only ever go to the WAL (the stream's file is unlinked); all others go to both.

/// What a record does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Creates a stream (first record of its file), with its initial content.
    Create = 1,
    /// Appends messages and/or closes, with the producer and `Stream-Seq` update.
    Append = 2,
    /// Persists a TTL last-access time (reads slide TTLs without writing data).
    Touch = 3,
    /// Marks the stream deleted while forks still reference it.
    SoftDelete = 4,
    /// Removes the stream (WAL only).
    Delete = 5,
    /// Replaces the writer state: producers, last `Stream-Seq`, closure (format version 2).
    Writer = 6,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Create,
            2 => Kind::Append,
            3 => Kind::Touch,
            4 => Kind::SoftDelete,
            5 => Kind::Delete,
            6 => Kind::Writer,
            _ => return None,
        })
    }

    /// The format version that introduced this kind, which its records carry.
    pub(crate) fn version(self) -> u8 {
        match self {
            Kind::Create | Kind::Append | Kind::Touch | Kind::SoftDelete | Kind::Delete => 1,
            Kind::Writer => 2,
        }
    }
}

/// Fork parameters stored in a Create record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ForkMeta {
    /// The source incarnation.
    pub source_id: u64,
    /// `Stream-Fork-Offset` as resolved at creation.
    pub anchor: Offset,
    /// `Stream-Fork-Sub-Offset`.
    pub sub_offset: u64,
    /// The fork's first own position.
    pub base: Offset,
}

/// Kind-specific metadata of a decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Meta<'a> {
    /// Create metadata.
    Create {
        /// The name in URL-path form.
        name: &'a str,
        /// The content type.
        content_type: &'a str,
        /// TTL or absolute expiry.
        expiry: Expiry,
        /// Fork parameters.
        fork: Option<ForkMeta>,
    },
    /// Append metadata.
    Append {
        /// `Stream-Seq`, when sent.
        stream_seq: Option<&'a str>,
        /// `(Producer-Id, epoch, seq)`, when sent.
        producer: Option<(&'a str, u64, u64)>,
    },
    /// Writer metadata (closure is the record's close flag).
    Writer {
        /// The producer tuple of the closing request, when closed by a producer.
        closed_by: Option<(&'a str, u64, u64)>,
        /// The last `Stream-Seq`.
        stream_seq: Option<&'a str>,
        /// Every producer, `(id, epoch, last_seq)`.
        producers: Vec<(&'a str, u64, u64)>,
    },
    /// No metadata.
    None,
}

/// A fully decoded record borrowing its bytes.
#[derive(Debug, Clone)]
pub(crate) struct Record<'a> {
    pub kind: Kind,
    pub flags: u16,
    pub stream_id: u64,
    pub rec_no: u64,
    pub at_ms: u64,
    pub segment: u64,
    pub msg_lens: MsgLens<'a>,
    pub meta: Meta<'a>,
    /// The messages, concatenated (checked against `msg_lens` when decoding).
    #[cfg_attr(not(test), allow(dead_code))]
    pub payload: &'a [u8],
}

/// A record's message-length table, read in place (decoding it into a `Vec` was an
/// allocation per record on the commit path, which decodes every record it encodes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MsgLens<'a>(&'a [u8]);

impl MsgLens<'_> {
    /// Whether the record has no messages.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The message lengths, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0
            .chunks_exact(4)
            .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
    }
}

impl Record<'_> {
    /// Whether the record closes its stream.
    pub(crate) fn closes(&self) -> bool {
        self.flags & FLAG_CLOSE != 0
    }
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Too short, bad length, or checksum mismatch: a torn or never-written record.
    Torn,
    /// The checksum is right but the version or kind is unknown to this build.
    Unsupported(String),
}

fn crc_of(rec: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&rec[0..4]);
    h.update(&rec[8..]);
    h.finalize()
}

/// The length a record claims, from its first four bytes (`None` if implausible).
pub(crate) fn claimed_len(head: &[u8]) -> Option<u64> {
    let len = u64::from(u32::from_le_bytes(head.get(0..4)?.try_into().ok()?));
    (len >= FIXED_LEN as u64).then_some(len)
}

/// Decodes and checks a whole record (`rec.len()` must be the claimed length).
pub(crate) fn decode(rec: &[u8]) -> Result<Record<'_>, DecodeError> {
    if rec.len() < FIXED_LEN || claimed_len(rec) != Some(rec.len() as u64) {
        return Err(DecodeError::Torn);
    }
    let stored = u32::from_le_bytes(rec[4..8].try_into().map_err(|_| DecodeError::Torn)?);
    if stored != crc_of(rec) {
        return Err(DecodeError::Torn);
    }
    decode_checked(rec)
}

/// [`decode`] of a record whose length and checksum are known to be right (one this process
/// just encoded): the same parse without a second pass over the payload for the checksum.
pub(crate) fn decode_encoded(rec: &[u8]) -> Result<Record<'_>, DecodeError> {
    if rec.len() < FIXED_LEN || claimed_len(rec) != Some(rec.len() as u64) {
        return Err(DecodeError::Torn);
    }
    debug_assert_eq!(
        rec[4..8],
        crc_of(rec).to_le_bytes(),
        "an encoded record's checksum"
    );
    decode_checked(rec)
}

/// Everything of [`decode`] after the length and checksum checks.
fn decode_checked(rec: &[u8]) -> Result<Record<'_>, DecodeError> {
    if rec[8] == 0 || rec[8] > VERSION {
        return Err(DecodeError::Unsupported(format!(
            "record format version {} (this build reads versions 1 to {VERSION})",
            rec[8]
        )));
    }
    let kind = Kind::from_u8(rec[9])
        .filter(|k| k.version() <= rec[8])
        .ok_or_else(|| {
            DecodeError::Unsupported(format!(
                "record kind {} in format version {}",
                rec[9], rec[8]
            ))
        })?;
    // From here on the checksum vouches for the bytes; a malformed body is a bug or a
    // deliberately forged file, reported as unsupported rather than silently skipped.
    let bad = || DecodeError::Unsupported("malformed record body".to_owned());
    let mut r = Reader { buf: rec, pos: 10 };
    let flags = r.u16().ok_or_else(bad)?;
    let payload_off = r.u32().ok_or_else(bad)? as usize;
    let stream_id = r.u64().ok_or_else(bad)?;
    let rec_no = r.u64().ok_or_else(bad)?;
    let at_ms = r.u64().ok_or_else(bad)?;
    let segment = r.u64().ok_or_else(bad)?;
    let count = r.u32().ok_or_else(bad)? as usize;
    if count > rec.len() / 4 {
        return Err(bad());
    }
    let msg_lens = MsgLens(r.take(4 * count).ok_or_else(bad)?);
    let meta = decode_meta(kind, &mut r).ok_or_else(bad)?;
    if r.pos != payload_off || payload_off > rec.len() {
        return Err(bad());
    }
    let payload = &rec[payload_off..];
    let total: u64 = msg_lens.iter().map(u64::from).sum();
    if total != payload.len() as u64 {
        return Err(bad());
    }
    Ok(Record {
        kind,
        flags,
        stream_id,
        rec_no,
        at_ms,
        segment,
        msg_lens,
        meta,
        payload,
    })
}

/// Decodes the kind-specific metadata (`None` if malformed).
fn decode_meta<'a>(kind: Kind, r: &mut Reader<'a>) -> Option<Meta<'a>> {
    Some(match kind {
        Kind::Create => {
            let name = r.str()?;
            let content_type = r.str()?;
            let expiry = match r.u8()? {
                0 => Expiry::None,
                1 => Expiry::Ttl(r.u64()?),
                2 => Expiry::ExpiresAt(
                    time::OffsetDateTime::from_unix_timestamp_nanos(r.i128()?).ok()?,
                ),
                _ => return None,
            };
            let fork = match r.u8()? {
                0 => None,
                1 => Some(ForkMeta {
                    source_id: r.u64()?,
                    anchor: Offset::new(r.u64()?, r.u64()?),
                    sub_offset: r.u64()?,
                    base: Offset::new(r.u64()?, r.u64()?),
                }),
                _ => return None,
            };
            Meta::Create {
                name,
                content_type,
                expiry,
                fork,
            }
        }
        Kind::Append => {
            let stream_seq = match r.u8()? {
                0 => None,
                _ => Some(r.str()?),
            };
            let producer = match r.u8()? {
                0 => None,
                _ => Some((r.str()?, r.u64()?, r.u64()?)),
            };
            Meta::Append {
                stream_seq,
                producer,
            }
        }
        Kind::Writer => {
            let closed_by = match r.u8()? {
                0 => None,
                _ => Some((r.str()?, r.u64()?, r.u64()?)),
            };
            let stream_seq = match r.u8()? {
                0 => None,
                _ => Some(r.str()?),
            };
            let count = r.u32()? as usize;
            // Each producer takes at least 20 bytes, which bounds the allocation.
            if count > r.buf.len() / 20 {
                return None;
            }
            let mut producers = Vec::with_capacity(count);
            for _ in 0..count {
                producers.push((r.str()?, r.u64()?, r.u64()?));
            }
            Meta::Writer {
                closed_by,
                stream_seq,
                producers,
            }
        }
        Kind::Touch | Kind::SoftDelete | Kind::Delete => Meta::None,
    })
}

/// The part of a record head that reads need: where the payload starts and how it splits.
#[derive(Debug, Clone)]
pub(crate) struct DataHead {
    /// Total record length.
    pub len: u64,
    /// Offset of the payload from the record start.
    pub payload_off: u64,
    /// Message lengths.
    pub msg_lens: Vec<u32>,
}

/// Parses the data head of a record known to be valid (written by this process or checked
/// by recovery). `head` must hold at least the fixed part and the length table; returns
/// `None` when it does not, with the number of bytes needed.
pub(crate) fn data_head(head: &[u8]) -> Result<DataHead, usize> {
    if head.len() < FIXED_LEN {
        return Err(FIXED_LEN);
    }
    let word = |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
    let len = u64::from(word(0));
    let payload_off = u64::from(word(12));
    let count = word(48) as usize;
    let need = FIXED_LEN + 4 * count;
    if head.len() < need {
        return Err(need);
    }
    let msg_lens = (0..count).map(|i| word(FIXED_LEN + 4 * i)).collect();
    Ok(DataHead {
        len,
        payload_off,
        msg_lens,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }
    fn i128(&mut self) -> Option<i128> {
        self.take(16)?.try_into().ok().map(i128::from_le_bytes)
    }
    fn str(&mut self) -> Option<&'a str> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).ok()
    }
}

/// Builds one record in place at the end of a buffer.
pub(crate) struct Encoder<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
}

/// The common header fields of a record to encode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub kind: Kind,
    pub flags: u16,
    pub stream_id: u64,
    pub rec_no: u64,
    pub at_ms: u64,
    pub segment: u64,
}

impl<'b> Encoder<'b> {
    /// Starts a record: writes the fixed header and the message-length table.
    pub(crate) fn begin(buf: &'b mut Vec<u8>, h: Header, messages: &[Bytes]) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&[0; 8]);
        buf.push(h.kind.version());
        buf.push(h.kind as u8);
        buf.extend_from_slice(&h.flags.to_le_bytes());
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&h.stream_id.to_le_bytes());
        buf.extend_from_slice(&h.rec_no.to_le_bytes());
        buf.extend_from_slice(&h.at_ms.to_le_bytes());
        buf.extend_from_slice(&h.segment.to_le_bytes());
        buf.extend_from_slice(&(messages.len() as u32).to_le_bytes());
        for m in messages {
            buf.extend_from_slice(&(m.len() as u32).to_le_bytes());
        }
        Encoder { buf, start }
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn i128(&mut self, v: i128) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        self.buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(s.as_bytes());
        self
    }
    pub(crate) fn expiry(&mut self, e: Expiry) -> &mut Self {
        match e {
            Expiry::None => self.u8(0),
            Expiry::Ttl(secs) => self.u8(1).u64(secs),
            Expiry::ExpiresAt(at) => self.u8(2).i128(at.unix_timestamp_nanos()),
        }
    }

    /// The metadata of a Writer record for `w` (producers in id order, so equal states encode
    /// to equal bytes).
    pub(crate) fn writer(&mut self, w: &WriterState) -> &mut Self {
        match &w.closed_by {
            None => self.u8(0),
            Some((id, epoch, seq)) => self.u8(1).str(id).u64(*epoch).u64(*seq),
        };
        match &w.last_stream_seq {
            None => self.u8(0),
            Some(s) => self.u8(1).str(s),
        };
        let mut producers: Vec<(&String, &ProducerState)> = w.producers.iter().collect();
        producers.sort_unstable_by_key(|(id, _)| *id);
        self.u32(u32::try_from(producers.len()).unwrap_or(u32::MAX));
        for (id, p) in producers {
            self.str(id).u64(p.epoch).u64(p.last_seq);
        }
        self
    }

    /// Appends the payload, fills in length, payload offset and checksum; returns the
    /// record's byte range in the buffer.
    pub(crate) fn finish(self, messages: &[Bytes]) -> Range<usize> {
        let payload_off = (self.buf.len() - self.start) as u32;
        for m in messages {
            self.buf.extend_from_slice(m);
        }
        let len = (self.buf.len() - self.start) as u32;
        let rec = &mut self.buf[self.start..];
        rec[0..4].copy_from_slice(&len.to_le_bytes());
        rec[12..16].copy_from_slice(&payload_off.to_le_bytes());
        let crc = crc_of(rec);
        rec[4..8].copy_from_slice(&crc.to_le_bytes());
        self.start..self.buf.len()
    }
}

/// Upper bound of the encoded size of a record's head (everything but the payload), used to
/// refuse records the `u32` length cannot frame.
pub(crate) fn head_estimate(messages: usize, meta: usize) -> u64 {
    (FIXED_LEN + 4 * messages + meta + 128) as u64
}

/// The encoded size of a Writer record's metadata for `w` (see [`Encoder::writer`]).
pub(crate) fn writer_meta_len(w: &WriterState) -> u64 {
    let str_len = |s: &str| 4 + s.len() as u64;
    let closed_by = w
        .closed_by
        .as_ref()
        .map_or(1, |(id, _, _)| 1 + str_len(id) + 16);
    let stream_seq = w.last_stream_seq.as_deref().map_or(1, |s| 1 + str_len(s));
    let producers: u64 = w.producers.keys().map(|id| str_len(id) + 16).sum();
    closed_by + stream_seq + 4 + producers
}

/// The writer state a Writer record's metadata describes (`closed` is the record's close flag).
pub(crate) fn writer_state(meta: &Meta<'_>, closed: bool) -> Option<WriterState> {
    let Meta::Writer {
        closed_by,
        stream_seq,
        producers,
    } = meta
    else {
        return None;
    };
    Some(WriterState {
        closed,
        closed_by: closed_by.map(|(id, epoch, seq)| (id.to_owned(), epoch, seq)),
        last_stream_seq: stream_seq.map(str::to_owned),
        producers: producers
            .iter()
            .map(|(id, epoch, last_seq)| {
                (
                    (*id).to_owned(),
                    ProducerState {
                        epoch: *epoch,
                        last_seq: *last_seq,
                    },
                )
            })
            .collect(),
    })
}

// CHECKPOINT file byte layout, format version 1 (little-endian), 36 bytes:
//
//   offset  size  field
//   0       8     magic           "DSCKPT\0\x01"
//   8       4     version         = 1
//   12      4     reserved        = 0
//   16      8     wal_floor       WAL segments numbered below this are obsolete
//   24      8     next_stream_id  stream ids below this may have been used
//   32      4     crc             CRC-32 of bytes [0, 32)
//
// It is replaced atomically (write CHECKPOINT.tmp, fdatasync, rename, fsync the directory).

const CHECKPOINT_MAGIC: &[u8; 8] = b"DSCKPT\0\x01";
/// Length of the CHECKPOINT file.
pub(crate) const CHECKPOINT_LEN: usize = 36;

/// What the CHECKPOINT file records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    /// First WAL segment that recovery must replay.
    pub wal_floor: u64,
    /// Lower bound for the next stream id.
    pub next_stream_id: u64,
}

impl Checkpoint {
    /// The file's bytes.
    pub(crate) fn encode(&self) -> [u8; CHECKPOINT_LEN] {
        let mut out = [0u8; CHECKPOINT_LEN];
        out[0..8].copy_from_slice(CHECKPOINT_MAGIC);
        out[8..12].copy_from_slice(&1u32.to_le_bytes());
        out[16..24].copy_from_slice(&self.wal_floor.to_le_bytes());
        out[24..32].copy_from_slice(&self.next_stream_id.to_le_bytes());
        let crc = crc32fast::hash(&out[0..32]);
        out[32..36].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses the file's bytes.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Checkpoint> {
        if bytes.len() != CHECKPOINT_LEN || &bytes[0..8] != CHECKPOINT_MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(bytes[32..36].try_into().ok()?);
        if crc != crc32fast::hash(&bytes[0..32]) || bytes[8..12] != 1u32.to_le_bytes() {
            return None;
        }
        Some(Checkpoint {
            wal_floor: u64::from_le_bytes(bytes[16..24].try_into().ok()?),
            next_stream_id: u64::from_le_bytes(bytes[24..32].try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append_record(buf: &mut Vec<u8>) -> Range<usize> {
        let msgs = [Bytes::from_static(b"hello"), Bytes::from_static(b"!")];
        let mut e = Encoder::begin(
            buf,
            Header {
                kind: Kind::Append,
                flags: FLAG_CLOSE,
                stream_id: 7,
                rec_no: 3,
                at_ms: 99,
                segment: 4,
            },
            &msgs,
        );
        e.u8(1).str("s1").u8(1).str("p").u64(2).u64(5);
        e.finish(&msgs)
    }

    #[test]
    fn append_record_round_trips() {
        let mut buf = vec![0xAA; 3];
        let range = append_record(&mut buf);
        let rec = decode(&buf[range.clone()]).expect("valid");
        assert_eq!(rec.kind, Kind::Append);
        assert!(rec.closes());
        assert_eq!(
            (rec.stream_id, rec.rec_no, rec.at_ms, rec.segment),
            (7, 3, 99, 4)
        );
        assert_eq!(rec.msg_lens.iter().collect::<Vec<_>>(), vec![5, 1]);
        assert_eq!(rec.payload, b"hello!");
        assert_eq!(
            rec.meta,
            Meta::Append {
                stream_seq: Some("s1"),
                producer: Some(("p", 2, 5))
            }
        );
        let head = data_head(&buf[range.clone()]).expect("head");
        assert_eq!(head.len, range.len() as u64);
        assert_eq!(head.msg_lens, vec![5, 1]);
        assert_eq!(head.payload_off as usize, range.len() - 6);
    }

    #[test]
    fn create_record_round_trips() {
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789)
            .expect("valid");
        let fork = ForkMeta {
            source_id: 1,
            anchor: Offset::new(2, 3),
            sub_offset: 4,
            base: Offset::new(3, 7),
        };
        let mut buf = Vec::new();
        let msgs = [Bytes::from_static(b"{}")];
        let mut e = Encoder::begin(
            &mut buf,
            Header {
                kind: Kind::Create,
                flags: 0,
                stream_id: 9,
                rec_no: 0,
                at_ms: 1,
                segment: 1,
            },
            &msgs,
        );
        e.str("a%2Fb")
            .str("application/json")
            .expiry(Expiry::ExpiresAt(at))
            .u8(1)
            .u64(fork.source_id)
            .u64(fork.anchor.seq)
            .u64(fork.anchor.byte)
            .u64(fork.sub_offset)
            .u64(fork.base.seq)
            .u64(fork.base.byte);
        let range = e.finish(&msgs);
        let rec = decode(&buf[range]).expect("valid");
        assert_eq!(
            rec.meta,
            Meta::Create {
                name: "a%2Fb",
                content_type: "application/json",
                expiry: Expiry::ExpiresAt(at),
                fork: Some(fork)
            }
        );
    }

    fn sample_writer() -> WriterState {
        WriterState {
            closed: true,
            closed_by: Some(("p".to_owned(), 3, 8)),
            last_stream_seq: Some("0009".to_owned()),
            producers: [("q", 0, 0), ("p", 3, 8)]
                .into_iter()
                .map(|(id, epoch, last_seq)| (id.to_owned(), ProducerState { epoch, last_seq }))
                .collect(),
        }
    }

    fn writer_record(buf: &mut Vec<u8>, w: &WriterState) -> Range<usize> {
        let header = Header {
            kind: Kind::Writer,
            flags: if w.closed { FLAG_CLOSE } else { 0 },
            stream_id: 4,
            rec_no: 2,
            at_ms: 5,
            segment: 6,
        };
        let mut e = Encoder::begin(buf, header, &[]);
        e.writer(w);
        e.finish(&[])
    }

    #[test]
    fn writer_record_round_trips_as_version_2() {
        for w in [sample_writer(), WriterState::default()] {
            let mut buf = Vec::new();
            let range = writer_record(&mut buf, &w);
            let bytes = &buf[range];
            assert_eq!(bytes[8], 2, "a Writer record carries format version 2");
            assert_eq!(
                bytes.len() as u64,
                FIXED_LEN as u64 + writer_meta_len(&w),
                "writer_meta_len is exact"
            );
            let rec = decode(bytes).expect("valid");
            assert_eq!(rec.kind, Kind::Writer);
            assert!(rec.msg_lens.is_empty());
            assert_eq!(writer_state(&rec.meta, rec.closes()), Some(w));
        }
    }

    #[test]
    fn old_kinds_stay_version_1_and_newer_versions_are_refused() {
        let mut buf = Vec::new();
        let range = append_record(&mut buf);
        assert_eq!(
            buf[range.start + 8],
            1,
            "an Append record stays readable by format 1"
        );
        // A Writer record claiming format 1 (which had no such kind), and a record from a
        // future format, are refused rather than misread.
        let mut wbuf = Vec::new();
        let range = writer_record(&mut wbuf, &sample_writer());
        for (version, what) in [(1u8, "record kind 6 in format version 1"), (3, "version 3")] {
            let mut rec = wbuf[range.clone()].to_vec();
            rec[8] = version;
            let crc = crc_of(&rec);
            rec[4..8].copy_from_slice(&crc.to_le_bytes());
            match decode(&rec) {
                Err(DecodeError::Unsupported(msg)) => assert!(msg.contains(what), "{msg}"),
                other => panic!("version {version}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_torn_prefix_and_flipped_bit_is_rejected() {
        let mut buf = Vec::new();
        let range = append_record(&mut buf);
        let rec = &buf[range];
        for cut in 0..rec.len() {
            assert!(decode(&rec[..cut]).is_err(), "prefix of {cut} bytes");
        }
        for i in 0..rec.len() {
            for bit in 0..8 {
                let mut bad = rec.to_vec();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "byte {i} bit {bit}");
            }
        }
        assert_eq!(
            decode(&vec![0u8; rec.len()]).unwrap_err(),
            DecodeError::Torn
        );
    }

    #[test]
    fn checkpoint_round_trips_and_rejects_damage() {
        let c = Checkpoint {
            wal_floor: 5,
            next_stream_id: 77,
        };
        let bytes = c.encode();
        assert_eq!(Checkpoint::decode(&bytes), Some(c));
        let mut bad = bytes;
        bad[20] ^= 1;
        assert_eq!(Checkpoint::decode(&bad), None);
        assert_eq!(Checkpoint::decode(&bytes[..35]), None);
    }
}
