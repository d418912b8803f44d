use super::*;

fn json_meta() -> StreamMeta {
    StreamMeta {
        name: "a/json".to_owned(),
        content_type: "application/json".to_owned(),
        ttl_secs: Some(3600),
        expires_at: None,
        closed: false,
        forked_from: None,
        producers: vec![ProducerMeta {
            id: "p1".to_owned(),
            epoch: 2,
            seq: 7,
        }],
        stream_seq: Some("0009".to_owned()),
        closed_by: None,
    }
}

fn bytes_meta() -> StreamMeta {
    StreamMeta {
        name: "b".to_owned(),
        content_type: "application/octet-stream".to_owned(),
        ttl_secs: None,
        expires_at: Some("2030-01-01T00:00:00Z".to_owned()),
        closed: true,
        forked_from: Some(ForkMeta {
            source: "a/json".to_owned(),
            offset: "0000000000000001_0000000000000005".to_owned(),
            sub_offset: 1,
        }),
        producers: Vec::new(),
        stream_seq: None,
        closed_by: Some(ProducerMeta {
            id: "closer".to_owned(),
            epoch: 0,
            seq: 3,
        }),
    }
}

/// Two sections: JSON messages (one per record) and binary records with every byte value.
fn sample() -> (Vec<u8>, Vec<Event>) {
    let binary: Vec<u8> = (0..=255u8).collect();
    let mut w = Writer::new(Vec::new(), "acid").expect("header");
    let mut events = Vec::new();
    w.begin_stream(&json_meta()).expect("stream");
    events.push(Event::Stream(json_meta()));
    for msg in [&br#"{"a":1}"#[..], b"[1,2]", b"\"x\""] {
        w.data(msg).expect("data");
        events.push(Event::Data(msg.to_vec()));
    }
    w.end_stream("0000000000000003_0000000000000010")
        .expect("end");
    w.begin_stream(&bytes_meta()).expect("stream");
    events.push(Event::Stream(bytes_meta()));
    for record in [&binary[..], b"", &binary[..10]] {
        w.data(record).expect("data");
        events.push(Event::Data(record.to_vec()));
    }
    w.end_stream("0000000000000004_0000000000000200")
        .expect("end");
    (w.finish().expect("finish"), events)
}

fn read_all(file: &[u8]) -> Result<(Header, Vec<Event>), Error> {
    let mut r = Reader::new(file)?;
    let mut events = Vec::new();
    while let Some(e) = r.next_event()? {
        // END_STREAM carries the checksum; compare sections by their other events.
        if !matches!(e, Event::EndStream(_)) {
            events.push(e);
        }
    }
    Ok((r.header().clone(), events))
}

#[test]
fn a_written_file_reads_back_byte_exact_with_record_boundaries() {
    let (file, events) = sample();
    let (header, read) = read_all(&file).expect("valid file");
    assert_eq!(header.version, VERSION);
    assert_eq!(header.source_mode, "acid");
    assert_eq!(read, events);
}

#[test]
fn end_stream_reports_the_tail_offset_and_counts() {
    let (file, _) = sample();
    let mut r = Reader::new(&file[..]).expect("header");
    let mut ends = Vec::new();
    while let Some(e) = r.next_event().expect("valid") {
        if let Event::EndStream(end) = e {
            ends.push((end.next_offset, end.records, end.bytes));
        }
    }
    assert_eq!(
        ends,
        [
            ("0000000000000003_0000000000000010".to_owned(), 3, 15),
            ("0000000000000004_0000000000000200".to_owned(), 3, 266),
        ]
    );
    assert_eq!(r.position(), file.len() as u64);
}

#[test]
fn every_truncation_is_refused_naming_the_position_and_the_stream() {
    let (file, _) = sample();
    // The second section is open from its first DATA frame (the STREAM frame before it is whole).
    let second = find(&file, &(0..=255u8).collect::<Vec<u8>>()) - 5;
    let trailer = find(&file, br#"{"streams":2"#) - 5;
    for cut in 0..file.len() {
        let err = read_all(&file[..cut]).expect_err("a truncated file is refused");
        assert!(
            matches!(err.kind, ErrorKind::Truncated(_)),
            "cut {cut}: {err}"
        );
        assert_eq!(err.position, cut as u64, "cut {cut}: {err}");
        // Once the second STREAM frame is whole, and until its END_STREAM is, the error names
        // that stream.
        if cut >= second && cut < trailer {
            assert_eq!(err.stream.as_deref(), Some("b"), "cut {cut}: {err}");
            assert!(err.to_string().contains("stream `b`"), "{err}");
        }
    }
}

#[test]
fn a_changed_data_byte_is_a_checksum_mismatch_of_its_stream() {
    let (file, _) = sample();
    // Every byte of the binary stream's first record.
    let start = find(&file, &(0..=255u8).collect::<Vec<u8>>());
    for i in start..start + 256 {
        let mut bad = file.clone();
        bad[i] ^= 0x40;
        let err = read_all(&bad).expect_err("corruption is refused");
        assert_eq!(err.stream.as_deref(), Some("b"), "byte {i}: {err}");
        assert!(
            matches!(err.kind, ErrorKind::Checksum(_)),
            "byte {i}: {err}"
        );
        assert!(
            err.position > i as u64,
            "reported at the section's end: {err}"
        );
    }
}

#[test]
fn any_changed_byte_is_refused() {
    let (file, _) = sample();
    for i in 0..file.len() {
        let mut bad = file.clone();
        bad[i] ^= 0x01;
        assert!(read_all(&bad).is_err(), "flipping byte {i} went unnoticed");
    }
}

#[test]
fn a_dropped_section_is_caught_by_the_trailer() {
    let (file, _) = sample();
    let mut w = Writer::new(Vec::new(), "acid").expect("header");
    w.begin_stream(&json_meta()).expect("stream");
    w.end_stream("0000000000000000_0000000000000000")
        .expect("end");
    let one = w.finish().expect("finish");
    // The first file's body with the second file's trailer (one stream instead of two).
    let mut spliced = file[..find(&file, br#"{"streams":2"#) - 5].to_vec();
    spliced.extend_from_slice(&one[find(&one, br#"{"streams":1"#) - 5..]);
    let err = read_all(&spliced).expect_err("count mismatch");
    assert!(err.to_string().contains("TRAILER says 1"), "{err}");
}

#[test]
fn bad_magic_and_unknown_versions_are_refused() {
    let (mut file, _) = sample();
    file[7] = 2;
    let err = read_all(&file).expect_err("version 2");
    assert!(matches!(err.kind, ErrorKind::Version(2)), "{err}");
    let err = read_all(b"PK\x03\x04 not ours").expect_err("not ours");
    assert!(matches!(err.kind, ErrorKind::BadMagic), "{err}");
}

#[test]
fn the_writer_refuses_misnested_calls() {
    let mut w = Writer::new(Vec::new(), "acid").expect("header");
    assert!(w.data(b"x").is_err());
    assert!(w.end_stream("0").is_err());
    w.begin_stream(&json_meta()).expect("stream");
    assert!(w.begin_stream(&json_meta()).is_err());
    assert!(w.finish().is_err());
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("present")
}
