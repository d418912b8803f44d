//! Reads from stream files: catch-up reads across fork chains, and the fork-boundary
//! resolution of fork creation.
//!
//! Everything here does blocking I/O and runs on tokio's blocking pool. A read looks up the
//! sparse-index entry at or before its start, walks record heads from there, and reads at most
//! about `max_bytes` of payload, so serving a huge stream never holds more than one chunk of it
//! in memory. The file is read in blocks sized to what the read still wants (at least
//! [`BLOCK`], at most [`BIG_BLOCK`]; a larger piece is read exactly): a 1 MiB catch-up read of
//! 256 KiB appends is one `pread`, and its pieces are slices of that block, not copies. Blocks
//! of at least [`RECYCLE_MIN`] come from a small set of recycled buffers: a fresh allocation
//! that large is a fresh `mmap`, and zeroing and faulting in its pages cost more than the
//! `pread` itself. Smaller blocks are allocated to size, so a slow client holding a slice of
//! one pins only that block, not a whole recycled [`BIG_BLOCK`] buffer.
//!
//! A read for a server that sends from files ([`ReadPiece`], `Storage::read_regions`) answers
//! a binary stream's payload runs of at least [`REGION_MIN`] bytes as regions of the stream
//! file instead of reading them: only the record heads around them are read, in
//! [`HEAD_BLOCK`]s, and the server's `sendfile` moves the payload from the page cache to the
//! socket without it ever being copied into the process. Smaller runs are read as above. Record heads are
//! trusted (they were checksummed when written or recovered); data past the length captured
//! under the stream's lock is never looked at, so a read never sees a record the committer is
//! still writing.

use std::io;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ds_protocol::Offset;
use ds_storage::rules::{self, LocateStep, Located};
use ds_storage::{Error, FileRegion, ReadPiece, Result};

use crate::io::{FsFile, OpenMode, read_exact_at};
use crate::pool::FilePool;
use crate::record::{self, DataHead};
use crate::stream::{Entry, IdxEntry};

/// Smallest disk read while walking a stream file (and the size used where the read does not
/// say how much it wants).
pub(crate) const BLOCK: usize = 64 * 1024;

/// Largest block read at once: a default 1 MiB response plus the record heads between its
/// pieces. Also the size of every recycled buffer.
pub(crate) const BIG_BLOCK: usize = 1024 * 1024 + 64 * 1024;

/// Room for record heads when a block is sized to a read's remaining payload budget.
const HEAD_SLACK: usize = 64 * 1024;

/// Smallest payload run answered as a file region (a region read): below this, copying the
/// bytes costs less than a `sendfile` call of their own.
pub(crate) const REGION_MIN: u64 = 32 * 1024;

/// Block read for a record head while a region read is stepping over large payloads.
const HEAD_BLOCK: usize = 4 * 1024;

/// Smallest block read into a recycled [`BIG_BLOCK`] buffer. A slice of a block keeps the
/// whole buffer alive until it is dropped (after a possibly slow client got the response),
/// so a block much smaller than the buffer would pin far more memory than it uses.
const RECYCLE_MIN: usize = 512 * 1024;

/// Most recycled buffers kept between reads (about 18 MiB).
const RECYCLED_MAX: usize = 16;

/// Idle [`BIG_BLOCK`] buffers, shared by every store of the process. Their bytes are never
/// shown before a read overwrites them: a block exposes only what its `pread` filled.
static RECYCLED: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

fn recycled() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    RECYCLED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A recycled buffer holding one block; goes back to [`RECYCLED`] when the last `Bytes` slice
/// of the block is dropped (after the response carrying it is written).
struct Recycled {
    buf: Vec<u8>,
    len: usize,
}

impl Recycled {
    fn take(len: usize) -> Recycled {
        debug_assert!(recycles(len));
        let buf = recycled().pop().unwrap_or_else(|| vec![0; BIG_BLOCK]);
        Recycled { buf, len }
    }
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut free = recycled();
        if free.len() < RECYCLED_MAX {
            free.push(buf);
        }
    }
}

/// Whether a block of `len` bytes is read into a recycled buffer.
fn recycles(len: usize) -> bool {
    (RECYCLE_MIN..=BIG_BLOCK).contains(&len)
}

/// Reads `len` bytes at `pos` into a new block.
fn read_block(file: &dyn FsFile, pos: u64, len: usize) -> io::Result<Bytes> {
    if !recycles(len) {
        let mut buf = BytesMut::zeroed(len);
        read_exact_at(file, &mut buf, pos)?;
        return Ok(buf.freeze());
    }
    let mut block = Recycled::take(len);
    read_exact_at(file, &mut block.buf[..len], pos)?;
    Ok(Bytes::from_owner(block))
}

/// One message (JSON) or one append (binary) of a stream's own data.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unit {
    /// Its index (the `seq` of offsets inside it).
    pub seq: u64,
    /// Its first byte position.
    pub start: u64,
    /// Its length.
    pub len: u64,
    /// File position of its first payload byte.
    payload_pos: u64,
    /// Messages from this one to the end of its record (its append batch), inclusive.
    pub rest_in_record: u64,
}

/// Walks the units of a stream file from a sparse-index entry.
pub(crate) struct UnitCursor {
    file: Arc<dyn FsFile>,
    end: u64,
    pos: u64,
    next_at: Offset,
    current: Option<(u64, Vec<u32>, usize)>,
    block_start: u64,
    block: Bytes,
    /// File bytes the read still expects to need from here (sizes the next block).
    want: usize,
    /// Read heads in [`HEAD_BLOCK`]s: the payloads around them are not read (a region read
    /// stepping over large payloads).
    small_blocks: bool,
}

impl UnitCursor {
    fn new(file: Arc<dyn FsFile>, from: IdxEntry, end: u64) -> Self {
        UnitCursor {
            file,
            end,
            pos: from.pos,
            next_at: from.at,
            current: None,
            block_start: 0,
            block: Bytes::new(),
            want: BLOCK,
            small_blocks: false,
        }
    }

    /// `len` bytes at file position `pos` (which must lie below `end`).
    fn bytes(&mut self, pos: u64, len: usize) -> io::Result<Bytes> {
        let in_block = pos >= self.block_start
            && pos + len as u64 <= self.block_start + self.block.len() as u64;
        if in_block {
            let at = (pos - self.block_start) as usize;
            return Ok(self.block.slice(at..at + len));
        }
        if len > BIG_BLOCK {
            return read_block(&*self.file, pos, len);
        }
        let avail = usize::try_from(self.end.saturating_sub(pos)).unwrap_or(usize::MAX);
        let want = if self.small_blocks {
            HEAD_BLOCK
        } else {
            self.want.clamp(BLOCK, BIG_BLOCK)
        };
        let size = avail.min(want).max(len);
        self.block = read_block(&*self.file, pos, size)?;
        self.block_start = pos;
        Ok(self.block.slice(0..len))
    }

    fn head(&mut self, pos: u64) -> io::Result<DataHead> {
        let mut want = record::FIXED_LEN;
        loop {
            let avail = (self.end - pos) as usize;
            if want > avail {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "record head runs past the end of the stream file",
                ));
            }
            let head = self.bytes(pos, want)?;
            match record::data_head(&head) {
                Ok(h) => return Ok(h),
                Err(need) if need > want => want = need,
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed record head",
                    ));
                }
            }
        }
    }

    fn next_unit(&mut self) -> io::Result<Option<Unit>> {
        loop {
            if let Some((payload_pos, lens, i)) = &mut self.current {
                if *i < lens.len() {
                    let len = u64::from(lens[*i]);
                    let unit = Unit {
                        seq: self.next_at.seq,
                        start: self.next_at.byte,
                        len,
                        payload_pos: *payload_pos,
                        rest_in_record: (lens.len() - *i) as u64,
                    };
                    *payload_pos += len;
                    *i += 1;
                    self.next_at = Offset::new(unit.seq + 1, unit.start + len);
                    return Ok(Some(unit));
                }
                self.current = None;
            }
            if self.pos >= self.end {
                return Ok(None);
            }
            let head = self.head(self.pos)?;
            if head.len < head.payload_off || self.pos + head.len > self.end {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "record runs past the end of the stream file",
                ));
            }
            self.current = Some((self.pos + head.payload_off, head.msg_lens, 0));
            self.pos += head.len;
        }
    }

    fn payload(&mut self, unit: &Unit, skip: u64, take: u64) -> io::Result<Bytes> {
        self.bytes(unit.payload_pos + skip, take as usize)
    }

    /// A region of the file for `take` bytes from `skip` into `unit`, when that is at least
    /// [`REGION_MIN`] and the file has an operating-system handle.
    fn region(&mut self, unit: &Unit, skip: u64, take: u64) -> Option<FileRegion> {
        if take < REGION_MIN {
            return None;
        }
        let file = self.file.shared_file()?;
        self.small_blocks = true;
        Some(FileRegion::new(file, unit.payload_pos + skip, take))
    }

    /// Advances to the unit containing byte `byte`.
    fn seek(&mut self, byte: u64) -> io::Result<Option<Unit>> {
        while let Some(unit) = self.next_unit()? {
            if unit.start + unit.len > byte {
                return Ok(Some(unit));
            }
        }
        Ok(None)
    }
}

/// What a read hands out: [`Bytes`] (a plain read), or [`ReadPiece`]s (a region read).
pub(crate) trait Piece: From<Bytes> + Send + 'static {
    /// Whether this read answers large runs as file regions.
    const REGIONS: bool;

    /// The piece for up to `avail` bytes from `skip` into `unit` (a binary stream's data)
    /// that `budget` allows, with its length; `None` when the budget is spent.
    fn binary(
        cursor: &mut UnitCursor,
        unit: &Unit,
        skip: u64,
        avail: u64,
        budget: &mut Budget<'_>,
    ) -> io::Result<Option<(Self, u64)>>;

    /// Whether `budget` can take nothing more.
    fn spent(budget: &Budget<'_>) -> bool;

    /// Settles a finished read's pieces before they are handed out.
    fn finish(pieces: &mut [Self]);
}

impl Piece for Bytes {
    const REGIONS: bool = false;

    fn binary(
        cursor: &mut UnitCursor,
        unit: &Unit,
        skip: u64,
        avail: u64,
        budget: &mut Budget<'_>,
    ) -> io::Result<Option<(Self, u64)>> {
        if *budget.bytes == 0 {
            return Ok(None);
        }
        let take = avail.min(*budget.bytes as u64);
        *budget.bytes -= take as usize;
        Ok(Some((cursor.payload(unit, skip, take)?, take)))
    }

    fn spent(budget: &Budget<'_>) -> bool {
        *budget.bytes == 0
    }

    fn finish(_: &mut [Self]) {}
}

impl Piece for ReadPiece {
    const REGIONS: bool = true;

    fn binary(
        cursor: &mut UnitCursor,
        unit: &Unit,
        skip: u64,
        avail: u64,
        budget: &mut Budget<'_>,
    ) -> io::Result<Option<(Self, u64)>> {
        let take = avail.min(budget.total);
        if let Some(region) = cursor.region(unit, skip, take) {
            budget.total -= take;
            return Ok(Some((ReadPiece::File(region), take)));
        }
        // Read into memory: within both budgets.
        let take = take.min(*budget.bytes as u64);
        if take == 0 {
            return Ok(None);
        }
        cursor.small_blocks = false;
        *budget.bytes -= take as usize;
        budget.total -= take;
        Ok(Some((
            ReadPiece::Bytes(cursor.payload(unit, skip, take)?),
            take,
        )))
    }

    fn spent(budget: &Budget<'_>) -> bool {
        budget.total == 0 || (*budget.bytes == 0 && budget.total < REGION_MIN)
    }

    /// When the answer has regions, its bytes are copied into one buffer of exactly their size:
    /// each was cut from a block that also held the runs sent as regions (or a head block
    /// around a small payload), and a response holding those blocks would keep far more memory
    /// than the payload its budget counts, for as long as a slow client takes.
    fn finish(pieces: &mut [Self]) {
        if !pieces.iter().any(|p| matches!(p, ReadPiece::File(_))) {
            return;
        }
        let mut len = 0;
        for p in pieces.iter() {
            if let ReadPiece::Bytes(b) = p {
                len += b.len();
            }
        }
        let mut buf = BytesMut::with_capacity(len);
        for p in pieces.iter() {
            if let ReadPiece::Bytes(b) = p {
                buf.extend_from_slice(b);
            }
        }
        let mut buf = buf.freeze();
        for p in pieces.iter_mut() {
            if let ReadPiece::Bytes(b) = p {
                *b = buf.split_to(b.len());
            }
        }
    }
}

fn read_error(e: io::Error) -> Error {
    crate::backend("read stream file", e)
}

/// A consistent view of a stream's own data, captured under its lock.
struct Snapshot {
    tail: Offset,
    file_len: u64,
    start: Option<IdxEntry>,
}

fn snapshot(entry: &Entry, byte: u64) -> Snapshot {
    let st = entry.lock();
    Snapshot {
        tail: st.s.tail,
        file_len: st.s.file_len,
        start: st.index_before(byte),
    }
}

fn cursor_at(pool: &FilePool, entry: &Entry, snap: &Snapshot) -> Result<UnitCursor> {
    let start = snap
        .start
        .ok_or(Error::InvalidOffset { offset: snap.tail })?;
    let file = pool.get(entry.id, OpenMode::Existing).map_err(read_error)?;
    Ok(UnitCursor::new(file, start, snap.file_len))
}

/// Resolves `at` in `entry`'s view (inherited data included) for fork creation.
pub(crate) fn locate(pool: &FilePool, entry: &Arc<Entry>, at: Offset) -> Result<Located> {
    let snap = snapshot(entry, at.byte);
    match rules::locate_step(at, snap.tail, entry.base)? {
        LocateStep::At(located) => return Ok(located),
        LocateStep::Inherited => {
            let link = entry
                .fork
                .as_ref()
                .ok_or(Error::ForkOffsetInvalid { offset: at })?;
            return Ok(locate(pool, &link.source, at)?.inherited(entry.base, at));
        }
        LocateStep::Own => {}
    }
    let mut cursor = cursor_at(pool, entry, &snap)?;
    let unit = cursor
        .seek(at.byte)
        .map_err(read_error)?
        .ok_or(Error::ForkOffsetInvalid { offset: at })?;
    if unit.seq != at.seq || (entry.json && unit.start != at.byte) {
        return Err(Error::ForkOffsetInvalid { offset: at });
    }
    Ok(Located {
        bytes_to_boundary: unit.start + unit.len - at.byte,
        messages_to_boundary: if entry.json { unit.rest_in_record } else { 1 },
    })
}

/// The position `count` JSON messages past `anchor` in `entry`'s view.
pub(crate) fn json_position(
    pool: &FilePool,
    entry: &Arc<Entry>,
    anchor: Offset,
    count: u64,
) -> Result<Offset> {
    let tail = entry.lock().s.tail;
    let mut budget = usize::MAX;
    let mut units = count as usize;
    let mut pieces = Vec::<Bytes>::new();
    read_view(
        pool,
        entry,
        anchor,
        Some(tail.byte),
        &mut Budget {
            bytes: &mut budget,
            units: &mut units,
            total: u64::MAX,
            by_units: true,
        },
        &mut pieces,
    )?;
    let bytes: u64 = pieces.iter().map(|p| p.len() as u64).sum();
    Ok(Offset::new(anchor.seq + count, anchor.byte + bytes))
}

/// What a read may still take.
pub(crate) struct Budget<'a> {
    /// Payload bytes read into memory.
    pub bytes: &'a mut usize,
    /// Units (messages or appends).
    pub units: &'a mut usize,
    /// Payload bytes in all, file regions included (a region read; at least `bytes`).
    pub total: u64,
    /// The read is capped by `units` (fork resolution), not by bytes: it keeps to small
    /// blocks.
    pub by_units: bool,
}

/// Reads `entry`'s view from `from` up to `limit` (a byte position; `None` = the tail),
/// pushing pieces into `out` while the budget lasts. Returns the next position.
pub(crate) fn read_view<P: Piece>(
    pool: &FilePool,
    entry: &Arc<Entry>,
    from: Offset,
    limit: Option<u64>,
    budget: &mut Budget<'_>,
    out: &mut Vec<P>,
) -> Result<Offset> {
    let snap = snapshot(entry, from.byte);
    let tail = snap.tail;
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
        let next = read_view(pool, &link.source, from, Some(upto), budget, out)?;
        if next.byte < base.byte || end <= base.byte {
            return Ok(if next.byte == base.byte { base } else { next });
        }
        if P::spent(budget) {
            return Ok(base);
        }
        let snap = snapshot(entry, base.byte);
        return read_own(pool, entry, &snap, base, end, budget, out);
    }
    read_own(pool, entry, &snap, from, end, budget, out)
}

/// Reads this stream's own data (positions at or after its base).
fn read_own<P: Piece>(
    pool: &FilePool,
    entry: &Entry,
    snap: &Snapshot,
    from: Offset,
    end: u64,
    budget: &mut Budget<'_>,
    out: &mut Vec<P>,
) -> Result<Offset> {
    let tail = snap.tail;
    if from.byte >= end {
        if from.byte == tail.byte && from.seq != tail.seq {
            return Err(Error::InvalidOffset { offset: from });
        }
        return Ok(if from.byte == tail.byte { tail } else { from });
    }
    // A read capped by message count (fork resolution) keeps to small blocks.
    let want = |budget: &Budget<'_>| {
        if budget.by_units {
            BLOCK
        } else {
            budget.bytes.saturating_add(HEAD_SLACK)
        }
    };
    let mut cursor = cursor_at(pool, entry, snap)?;
    cursor.want = want(budget);
    // A region read of a binary stream starts by reading heads only; the first small payload
    // turns the large blocks back on.
    cursor.small_blocks = P::REGIONS && !entry.json;
    let mut unit = cursor
        .seek(from.byte)
        .map_err(read_error)?
        .ok_or(Error::InvalidOffset { offset: from })?;
    if unit.seq != from.seq || (entry.json && unit.start != from.byte) {
        return Err(Error::InvalidOffset { offset: from });
    }
    let mut pos = from;
    while pos.byte < end && *budget.units > 0 {
        cursor.want = want(budget);
        let unit_end = unit.start + unit.len;
        let piece_end = unit_end.min(end);
        let skip = pos.byte - unit.start;
        let avail = piece_end - pos.byte;
        if entry.json {
            if (*budget.bytes as u64) < avail && !out.is_empty() {
                break;
            }
            out.push(P::from(
                cursor.payload(&unit, 0, unit.len).map_err(read_error)?,
            ));
            *budget.bytes = budget.bytes.saturating_sub(avail as usize);
        } else {
            let Some((piece, take)) =
                P::binary(&mut cursor, &unit, skip, avail, budget).map_err(read_error)?
            else {
                break;
            };
            out.push(piece);
            if take < avail {
                pos = Offset::new(unit.seq, pos.byte + take);
                break;
            }
        }
        *budget.units -= 1;
        pos = if piece_end == unit_end {
            Offset::new(unit.seq + 1, piece_end)
        } else {
            Offset::new(unit.seq, piece_end)
        };
        match cursor.next_unit().map_err(read_error)? {
            Some(next) => unit = next,
            None => break,
        }
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_large_blocks_take_a_recycled_buffer() {
        assert!(!recycles(BLOCK));
        assert!(!recycles(BLOCK + 1));
        assert!(!recycles(RECYCLE_MIN - 1));
        assert!(recycles(RECYCLE_MIN));
        assert!(recycles(BIG_BLOCK));
        assert!(!recycles(BIG_BLOCK + 1));
    }
}
