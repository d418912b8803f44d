//! Where things live under the data directory.
//!
//! ```text
//! data_dir/
//!   LOCK                         exclusive lock, holds the owner's PID
//!   CHECKPOINT                   WAL floor and stream-id high-water mark (record.rs)
//!   wal/<segment:016x>.wal       write-ahead log segments, replayed from the floor
//!   wal/spare.tmp, spare.zero    the next segment, being written ahead as zeros / ready
//!   streams/<xx>/<id:016x>.dat   one file per stream incarnation; xx = low byte of the id
//! ```
//!
//! Stream names never reach the file system. A stream's file is named after its numeric
//! stream id (unique for the life of the directory, never reused), and the name is stored
//! inside the file's first record. So no name — `..`, an absolute path, `CON` or `NUL`, a name
//! differing only in case, a name longer than the file system allows — can escape `data_dir`,
//! collide with another stream, or be refused by the file system. The 256 fan-out directories
//! keep directory sizes reasonable with millions of streams; each is created with its first
//! stream.

use std::path::{Path, PathBuf};

/// The lock file.
pub(crate) fn lock_file(root: &Path) -> PathBuf {
    root.join("LOCK")
}

/// The checkpoint file.
pub(crate) fn checkpoint_file(root: &Path) -> PathBuf {
    root.join("CHECKPOINT")
}

/// The checkpoint file being written.
pub(crate) fn checkpoint_tmp(root: &Path) -> PathBuf {
    root.join("CHECKPOINT.tmp")
}

/// The WAL directory.
pub(crate) fn wal_dir(root: &Path) -> PathBuf {
    root.join("wal")
}

/// A WAL segment.
pub(crate) fn wal_segment(root: &Path, segment: u64) -> PathBuf {
    wal_dir(root).join(format!("{segment:016x}.wal"))
}

/// The spare WAL segment, complete (zeros, synced) and waiting for the next rotation.
pub(crate) fn wal_spare(root: &Path) -> PathBuf {
    wal_dir(root).join("spare.zero")
}

/// The spare WAL segment while it is being written.
pub(crate) fn wal_spare_tmp(root: &Path) -> PathBuf {
    wal_dir(root).join("spare.tmp")
}

/// The segment number of a WAL file name.
pub(crate) fn parse_wal_segment(file_name: &str) -> Option<u64> {
    parse_hex16(file_name.strip_suffix(".wal")?)
}

/// The directory of all stream files.
pub(crate) fn streams_dir(root: &Path) -> PathBuf {
    root.join("streams")
}

/// The fan-out directory `index` (0..=255).
pub(crate) fn fanout_dir(root: &Path, index: u8) -> PathBuf {
    streams_dir(root).join(format!("{index:02x}"))
}

/// The index of a fan-out directory name.
pub(crate) fn parse_fanout_dir(name: &str) -> Option<u8> {
    if name.len() != 2 || !name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u8::from_str_radix(name, 16).ok()
}

/// The fan-out directory index of stream `id`.
pub(crate) fn fanout_of(id: u64) -> u8 {
    (id & 0xff) as u8
}

/// The file of stream incarnation `id`.
pub(crate) fn stream_file(root: &Path, id: u64) -> PathBuf {
    fanout_dir(root, fanout_of(id)).join(format!("{id:016x}.dat"))
}

/// The directory holding the file of stream `id`.
pub(crate) fn stream_dir(root: &Path, id: u64) -> PathBuf {
    fanout_dir(root, fanout_of(id))
}

/// The stream id of a stream file name.
pub(crate) fn parse_stream_file(file_name: &str) -> Option<u64> {
    parse_hex16(file_name.strip_suffix(".dat")?)
}

fn parse_hex16(s: &str) -> Option<u64> {
    if s.len() != 16 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let root = Path::new("/data");
        let p = stream_file(root, 0x1_2345);
        assert_eq!(p, Path::new("/data/streams/45/0000000000012345.dat"));
        let name = p.file_name().and_then(|n| n.to_str()).expect("utf-8");
        assert_eq!(parse_stream_file(name), Some(0x1_2345));
        assert_eq!(parse_wal_segment("00000000000000ff.wal"), Some(255));
        assert_eq!(parse_wal_segment("00000000000000FF.wal"), None);
        assert_eq!(parse_stream_file("../x.dat"), None);
    }
}
