//! Property checks of the transfer-format reader, driven by the `transfer` fuzz target in
//! `fuzz/` and replayed by `cargo test` over the committed inputs (see
//! `ds_protocol::fuzzing`). Not part of the supported API.
#![doc(hidden)]

use std::io::Cursor;

use crate::{Event, ForkMeta, MAX_FRAME, ProducerMeta, Reader, StreamEnd, StreamMeta, Writer};

/// The transfer reader on hostile input, and the writer/reader pair on its own output.
///
/// 1. The input itself is read as a transfer file: the reader ends with `None` or an error,
///    never panics, never reports a position past the input or a record over [`MAX_FRAME`],
///    and yields at most one event per five bytes (every frame has a five-byte head).
/// 2. The input is turned into a script for [`Writer`] (streams and records); reading the
///    written file back yields exactly the events written.
/// 3. One byte of that file, chosen by the input, is changed: the reader must then fail
///    rather than read the file to its end (the format promises to catch any changed byte).
///
/// # Panics
///
/// When a property does not hold.
pub fn check_transfer(data: &[u8]) {
    read_hostile(data);

    let (events, file) = write_script(data);
    let (read, end) = read_all(&file);
    assert!(end.is_ok(), "reading a written file failed: {end:?}");
    assert_eq!(
        without_checksums(read),
        events,
        "the written events do not read back"
    );

    if data.len() >= 3 && !file.is_empty() {
        let at = usize::from(u16::from_le_bytes([data[0], data[1]])) % file.len();
        let flip = data[2].max(1);
        let mut changed = file.clone();
        changed[at] ^= flip;
        let (_, end) = read_all(&changed);
        assert!(
            end.is_err(),
            "changing byte {at} (xor {flip:#04x}) of a transfer file went unnoticed"
        );
    }
}

/// Reads `data` as a transfer file, checking the reader's bounds.
fn read_hostile(data: &[u8]) {
    let Ok(mut reader) = Reader::new(Cursor::new(data)) else {
        return;
    };
    let mut events = 0usize;
    loop {
        assert!(reader.position() <= data.len() as u64);
        match reader.next_event() {
            Ok(None) | Err(_) => break,
            Ok(Some(event)) => {
                events += 1;
                assert!(events <= data.len() / 5, "more events than frames");
                if let Event::Data(record) = event {
                    assert!(record.len() <= MAX_FRAME as usize);
                }
            }
        }
    }
}

/// All events of a file and how reading ended (`Ok` after the TRAILER).
fn read_all(file: &[u8]) -> (Vec<Event>, Result<(), String>) {
    let mut reader = match Reader::new(Cursor::new(file)) {
        Ok(reader) => reader,
        Err(e) => return (Vec::new(), Err(e.to_string())),
    };
    let mut events = Vec::new();
    loop {
        match reader.next_event() {
            Ok(Some(event)) => events.push(event),
            Ok(None) => return (events, Ok(())),
            Err(e) => return (events, Err(e.to_string())),
        }
    }
}

/// Writes a transfer file from a script: the input is split on `0x00` into chunks; a chunk
/// starting with `S` opens a stream named after the rest of it (closing the open one), any
/// other chunk is a record of the open stream.
fn write_script(data: &[u8]) -> (Vec<Event>, Vec<u8>) {
    let mut writer = Writer::new(Vec::new(), "fuzz").expect("writing to a Vec");
    let mut events = Vec::new();
    let mut open = false;
    for (i, chunk) in data.split(|&b| b == 0).enumerate() {
        if let Some(name) = chunk.strip_prefix(b"S") {
            if open {
                end_stream(&mut writer, &mut events, i);
            }
            let name = String::from_utf8_lossy(name).into_owned();
            let meta = StreamMeta {
                content_type: "application/octet-stream".to_owned(),
                ttl_secs: (i % 3 == 0).then_some(i as u64),
                expires_at: None,
                closed: i % 2 == 0,
                forked_from: (i % 5 == 0).then(|| ForkMeta {
                    source: name.clone(),
                    offset: "0000000000000000_0000000000000000".to_owned(),
                    sub_offset: i as u64,
                }),
                producers: vec![ProducerMeta {
                    id: name.clone(),
                    epoch: i as u64,
                    seq: 1,
                }],
                stream_seq: (i % 4 == 0).then(|| name.clone()),
                closed_by: (i % 3 == 1).then(|| ProducerMeta {
                    id: name.clone(),
                    epoch: 0,
                    seq: i as u64,
                }),
                name,
            };
            writer.begin_stream(&meta).expect("writing to a Vec");
            events.push(Event::Stream(meta));
            open = true;
        } else if open {
            writer.data(chunk).expect("writing to a Vec");
            events.push(Event::Data(chunk.to_vec()));
        }
    }
    if open {
        end_stream(&mut writer, &mut events, 0);
    }
    let file = writer.finish().expect("writing to a Vec");
    (events, file)
}

/// Closes the open section, recording the END_STREAM the reader should report (its checksum
/// is left out of the comparison: the reader has already verified it).
fn end_stream(writer: &mut Writer<Vec<u8>>, events: &mut Vec<Event>, i: usize) {
    let next_offset = format!("{i:016x}_{i:016x}");
    writer.end_stream(&next_offset).expect("writing to a Vec");
    let records: Vec<usize> = events
        .iter()
        .rev()
        .take_while(|event| matches!(event, Event::Data(_)))
        .map(|event| match event {
            Event::Data(record) => record.len(),
            _ => 0,
        })
        .collect();
    events.push(Event::EndStream(StreamEnd {
        next_offset,
        records: records.len() as u64,
        bytes: records.iter().sum::<usize>() as u64,
        sha256: String::new(),
    }));
}

/// `events` with the END_STREAM checksums blanked, for comparing with a script.
fn without_checksums(mut events: Vec<Event>) -> Vec<Event> {
    for event in &mut events {
        if let Event::EndStream(end) = event {
            end.sha256.clear();
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::check_transfer;

    #[test]
    fn committed_fuzz_inputs_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let ran = ds_protocol::fuzzing::replay(&root, "transfer", check_transfer);
        assert!(ran > 0, "no inputs for transfer");
    }
}
