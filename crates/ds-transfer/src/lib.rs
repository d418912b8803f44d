//! The transfer format of `durable-streams-server export` and `import` (version 1), specified
//! in `docs/transfer-format.md`: a streaming, checksummed file of streams with their data,
//! metadata, producer state and fork relationships. This crate owns the format only (the
//! [`Writer`] and the [`Reader`]); `ds-cli` moves streams between a store and a file with it.
//! It has no async runtime and no server in its dependency tree, so tools and the fuzz targets
//! build it quickly.
//!
//! A file is the magic `DSXFER\0` plus a version byte, then frames, each
//! `kind: u8 | len: u32 little-endian | payload[len]`:
//!
//! ```text
//! 0x01 HEADER      JSON Header        once, first
//! 0x02 STREAM      JSON StreamMeta    opens a stream section
//! 0x03 DATA        raw bytes          one stored record (one message of a JSON stream)
//! 0x04 END_STREAM  JSON StreamEnd     closes the section: counts and SHA-256
//! 0x05 TRAILER     JSON Trailer       once, last: the file is complete
//! ```
//!
//! The per-stream SHA-256 covers the STREAM payload, every DATA frame (kind, length and
//! payload), and END_STREAM's counts and tail offset, so a changed byte anywhere in a section is
//! caught at its END_STREAM; the TRAILER carries the stream count and the HEADER's SHA-256. Both sides
//! stream: the writer never buffers a record, and the reader holds one frame (at most
//! [`MAX_FRAME`] bytes) at a time.
#![doc = ""]
#![doc = include_str!("../README.md")]

pub mod fuzzing;

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file's first seven bytes; the eighth is the format version.
pub const MAGIC: &[u8; 7] = b"DSXFER\0";
/// The version this build writes and reads.
pub const VERSION: u8 = 1;
/// The largest frame a reader accepts (a larger length is corruption).
pub const MAX_FRAME: u32 = 64 * 1024 * 1024;

const HEADER: u8 = 0x01;
const STREAM: u8 = 0x02;
const DATA: u8 = 0x03;
const END_STREAM: u8 = 0x04;
const TRAILER: u8 = 0x05;

/// The HEADER frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Always `durable-streams-transfer`.
    pub format: String,
    /// The format version (also in the magic).
    pub version: u8,
    /// The storage mode the export was taken from (`file-durable`, `acid`, ...).
    pub source_mode: String,
}

/// A fork relationship: the stream is re-created as a fork of `source` at this point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForkMeta {
    /// The source stream's name.
    pub source: String,
    /// The fork offset in the source.
    pub offset: String,
    /// The fork sub-offset (0 when none).
    pub sub_offset: u64,
}

/// One idempotent producer's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerMeta {
    /// `Producer-Id`.
    pub id: String,
    /// The current epoch.
    pub epoch: u64,
    /// The highest sequence number accepted in that epoch.
    pub seq: u64,
}

/// The STREAM frame: everything but the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamMeta {
    /// The stream's name.
    pub name: String,
    /// The stream's content type.
    pub content_type: String,
    /// Sliding TTL in seconds, when the stream has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    /// Absolute expiry (RFC 3339), when the stream has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Whether the stream is closed (the import closes it after its data).
    pub closed: bool,
    /// The fork relationship; the DATA frames then hold only the fork's own records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<ForkMeta>,
    /// Idempotent producer state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub producers: Vec<ProducerMeta>,
    /// The last accepted `Stream-Seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_seq: Option<String>,
    /// The producer tuple whose append closed the stream (a retry of it is a duplicate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_by: Option<ProducerMeta>,
}

/// The END_STREAM frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEnd {
    /// The stream's tail offset at export.
    pub next_offset: String,
    /// DATA frames in the section.
    pub records: u64,
    /// DATA payload bytes in the section.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the section (see the module docs).
    pub sha256: String,
}

/// The TRAILER frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    /// Stream sections in the file.
    pub streams: u64,
    /// Lowercase hex SHA-256 of the HEADER payload.
    pub header_sha256: String,
}

/// What went wrong reading a transfer file, and where.
#[derive(Debug, thiserror::Error)]
#[error("{}at byte {position}: {kind}", stream.as_ref().map(|s| format!("stream `{s}`, ")).unwrap_or_default())]
pub struct Error {
    /// The stream whose section the problem is in, if any.
    pub stream: Option<String>,
    /// Byte position in the file (of the frame or field that failed).
    pub position: u64,
    /// What failed.
    pub kind: ErrorKind,
}

/// The kinds of [`Error`].
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// Not a transfer file.
    #[error("not a durable-streams transfer file (bad magic)")]
    BadMagic,
    /// A version this build does not read.
    #[error("format version {0} is not supported (this build reads version {VERSION})")]
    Version(u8),
    /// The file ends before its TRAILER.
    #[error("truncated: the file ends inside {0}")]
    Truncated(&'static str),
    /// A frame kind that cannot appear here.
    #[error("unexpected frame kind 0x{0:02x}{1}")]
    UnexpectedFrame(u8, &'static str),
    /// A length over [`MAX_FRAME`].
    #[error("frame length {0} exceeds the maximum {MAX_FRAME}")]
    FrameTooLong(u32),
    /// A JSON frame that does not parse.
    #[error("malformed {0} frame: {1}")]
    Json(&'static str, serde_json::Error),
    /// The section's checksum or counts do not match its content.
    #[error("checksum mismatch: {0}")]
    Checksum(String),
    /// Reading failed.
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

/// Writes a transfer file.
pub struct Writer<W: Write> {
    out: W,
    section: Option<Section>,
    streams: u64,
    header_sha256: String,
}

struct Section {
    hash: Sha256,
    records: u64,
    bytes: u64,
}

impl<W: Write> Writer<W> {
    /// Writes the magic and the HEADER.
    pub fn new(mut out: W, source_mode: &str) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        out.write_all(&[VERSION])?;
        let header = Header {
            format: "durable-streams-transfer".to_owned(),
            version: VERSION,
            source_mode: source_mode.to_owned(),
        };
        let payload = to_json(&header);
        let mut w = Writer {
            out,
            section: None,
            streams: 0,
            header_sha256: hex(&Sha256::digest(&payload)),
        };
        w.frame(HEADER, &payload)?;
        Ok(w)
    }

    /// Opens a stream section.
    pub fn begin_stream(&mut self, meta: &StreamMeta) -> io::Result<()> {
        if self.section.is_some() {
            return Err(io::Error::other(
                "begin_stream inside an open stream section",
            ));
        }
        let payload = to_json(meta);
        let mut hash = Sha256::new();
        hash.update(&payload);
        self.frame(STREAM, &payload)?;
        self.section = Some(Section {
            hash,
            records: 0,
            bytes: 0,
        });
        Ok(())
    }

    /// Writes one record of the open section (one message of a JSON stream).
    pub fn data(&mut self, record: &[u8]) -> io::Result<()> {
        let len = frame_len(record)?;
        let Some(section) = self.section.as_mut() else {
            return Err(io::Error::other("data outside a stream section"));
        };
        section.hash.update([DATA]);
        section.hash.update(len.to_le_bytes());
        section.hash.update(record);
        section.records += 1;
        section.bytes += record.len() as u64;
        self.frame(DATA, record)
    }

    /// Closes the open section with the stream's tail offset.
    pub fn end_stream(&mut self, next_offset: &str) -> io::Result<()> {
        let Some(section) = self.section.take() else {
            return Err(io::Error::other("end_stream outside a stream section"));
        };
        let end = StreamEnd {
            next_offset: next_offset.to_owned(),
            records: section.records,
            bytes: section.bytes,
            sha256: section.finish(next_offset),
        };
        self.streams += 1;
        self.frame(END_STREAM, &to_json(&end))
    }

    /// Writes the TRAILER and returns the output, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        if self.section.is_some() {
            return Err(io::Error::other("finish inside an open stream section"));
        }
        let trailer = Trailer {
            streams: self.streams,
            header_sha256: self.header_sha256.clone(),
        };
        self.frame(TRAILER, &to_json(&trailer))?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn frame(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        let len = frame_len(payload)?;
        self.out.write_all(&[kind])?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(payload)
    }
}

impl Section {
    /// The section's checksum: the running hash, then the counts and the tail offset, so no
    /// field of END_STREAM but the checksum itself can change unnoticed.
    fn finish(mut self, next_offset: &str) -> String {
        self.hash.update([END_STREAM]);
        self.hash.update(self.records.to_le_bytes());
        self.hash.update(self.bytes.to_le_bytes());
        self.hash.update(next_offset.as_bytes());
        hex(&self.hash.finalize())
    }
}

fn frame_len(payload: &[u8]) -> io::Result<u32> {
    u32::try_from(payload.len())
        .ok()
        .filter(|n| *n <= MAX_FRAME)
        .ok_or_else(|| io::Error::other(format!("frame of {} bytes is too long", payload.len())))
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("transfer frames always serialise")
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// One step of reading a transfer file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A stream section opens.
    Stream(StreamMeta),
    /// One record of the open section.
    Data(Vec<u8>),
    /// The open section ended and its checksum and counts matched.
    EndStream(StreamEnd),
}

/// Reads a transfer file frame by frame, verifying each section as it ends.
pub struct Reader<R: Read> {
    input: R,
    position: u64,
    header: Header,
    header_sha256: String,
    section: Option<(StreamMeta, Section, u64)>,
    streams: u64,
    done: bool,
}

impl<R: Read> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("position", &self.position)
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Reader<R> {
    /// Reads and checks the magic, the version and the HEADER.
    pub fn new(mut input: R) -> Result<Self, Error> {
        let mut magic = [0u8; 8];
        read_exact(&mut input, &mut magic, 0, None, "the magic")?;
        if &magic[..7] != MAGIC {
            return Err(at(None, 0, ErrorKind::BadMagic));
        }
        if magic[7] != VERSION {
            return Err(at(None, 7, ErrorKind::Version(magic[7])));
        }
        let mut r = Reader {
            input,
            position: 8,
            header: Header {
                format: String::new(),
                version: VERSION,
                source_mode: String::new(),
            },
            header_sha256: String::new(),
            section: None,
            streams: 0,
            done: false,
        };
        let (kind, start, payload) = r.frame("the header")?;
        if kind != HEADER {
            return Err(at(
                None,
                start,
                ErrorKind::UnexpectedFrame(kind, ", expected HEADER"),
            ));
        }
        let header: Header = parse(&payload, "HEADER", None, start)?;
        if header.format != "durable-streams-transfer" || header.version != VERSION {
            return Err(at(None, start, ErrorKind::BadMagic));
        }
        r.header = header;
        r.header_sha256 = hex(&Sha256::digest(&payload));
        Ok(r)
    }

    /// The file's HEADER.
    #[must_use]
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes consumed so far.
    #[must_use]
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next event, or `None` after a TRAILER whose stream count matched.
    pub fn next_event(&mut self) -> Result<Option<Event>, Error> {
        if self.done {
            return Ok(None);
        }
        let what = if self.section.is_some() {
            "a stream section"
        } else {
            "the stream list (no TRAILER)"
        };
        let (kind, start, payload) = self.frame(what)?;
        let stream = self.section.as_ref().map(|(m, _, _)| m.name.clone());
        match (kind, self.section.take()) {
            (STREAM, None) => {
                let meta: StreamMeta = parse(&payload, "STREAM", None, start)?;
                let mut hash = Sha256::new();
                hash.update(&payload);
                let section = Section {
                    hash,
                    records: 0,
                    bytes: 0,
                };
                self.section = Some((meta.clone(), section, start));
                Ok(Some(Event::Stream(meta)))
            }
            (DATA, Some((meta, mut section, section_start))) => {
                section.hash.update([DATA]);
                section.hash.update((payload.len() as u32).to_le_bytes());
                section.hash.update(&payload);
                section.records += 1;
                section.bytes += payload.len() as u64;
                self.section = Some((meta, section, section_start));
                Ok(Some(Event::Data(payload)))
            }
            (END_STREAM, Some((_, section, section_start))) => {
                let end: StreamEnd = parse(&payload, "END_STREAM", stream.clone(), start)?;
                let (records, bytes) = (section.records, section.bytes);
                let actual = section.finish(&end.next_offset);
                let problem = if actual != end.sha256 {
                    Some(format!(
                        "the section starting at byte {section_start} hashes to {actual}, \
                         END_STREAM says {}",
                        end.sha256
                    ))
                } else if (records, bytes) != (end.records, end.bytes) {
                    Some(format!(
                        "{records} records / {bytes} bytes read, END_STREAM says {} / {}",
                        end.records, end.bytes
                    ))
                } else {
                    None
                };
                if let Some(problem) = problem {
                    return Err(at(stream, start, ErrorKind::Checksum(problem)));
                }
                self.streams += 1;
                Ok(Some(Event::EndStream(end)))
            }
            (TRAILER, None) => {
                let trailer: Trailer = parse(&payload, "TRAILER", None, start)?;
                if trailer.header_sha256 != self.header_sha256 {
                    return Err(at(
                        None,
                        start,
                        ErrorKind::Checksum("the HEADER does not match the TRAILER".to_owned()),
                    ));
                }
                if trailer.streams != self.streams {
                    return Err(at(
                        None,
                        start,
                        ErrorKind::Checksum(format!(
                            "{} stream sections read, TRAILER says {}",
                            self.streams, trailer.streams
                        )),
                    ));
                }
                self.done = true;
                Ok(None)
            }
            (kind, Some(_)) => Err(at(
                stream,
                start,
                ErrorKind::UnexpectedFrame(kind, " inside a stream section"),
            )),
            (kind, None) => Err(at(
                None,
                start,
                ErrorKind::UnexpectedFrame(kind, " between stream sections"),
            )),
        }
    }

    /// Reads one frame: its kind, its start position and its payload.
    fn frame(&mut self, what: &'static str) -> Result<(u8, u64, Vec<u8>), Error> {
        let start = self.position;
        let stream = self.section.as_ref().map(|(m, _, _)| m.name.clone());
        let mut head = [0u8; 5];
        read_exact(&mut self.input, &mut head, start, stream.clone(), what)?;
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        if len > MAX_FRAME {
            return Err(at(stream, start, ErrorKind::FrameTooLong(len)));
        }
        // Grown as bytes arrive, so a corrupt length costs nothing until its bytes exist.
        let mut payload = Vec::new();
        let got = (&mut self.input)
            .take(u64::from(len))
            .read_to_end(&mut payload)
            .map_err(|e| at(stream.clone(), start + 5, ErrorKind::Io(e)))?;
        if got < len as usize {
            return Err(at(
                stream,
                start + 5 + got as u64,
                ErrorKind::Truncated(what),
            ));
        }
        self.position = start + 5 + u64::from(len);
        Ok((head[0], start, payload))
    }
}

fn at(stream: Option<String>, position: u64, kind: ErrorKind) -> Error {
    Error {
        stream,
        position,
        kind,
    }
}

/// `read_exact` that reports a short read as truncation at the byte where the input ended.
fn read_exact(
    input: &mut impl Read,
    buf: &mut [u8],
    start: u64,
    stream: Option<String>,
    what: &'static str,
) -> Result<(), Error> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(at(
                    stream,
                    start + filled as u64,
                    ErrorKind::Truncated(what),
                ));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(at(stream, start + filled as u64, ErrorKind::Io(e))),
        }
    }
    Ok(())
}

fn parse<T: for<'de> Deserialize<'de>>(
    payload: &[u8],
    frame: &'static str,
    stream: Option<String>,
    start: u64,
) -> Result<T, Error> {
    serde_json::from_slice(payload).map_err(|e| at(stream, start, ErrorKind::Json(frame, e)))
}

#[cfg(test)]
mod tests;
