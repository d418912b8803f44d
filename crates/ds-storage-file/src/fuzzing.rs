//! Property checks of the on-disk file-name encoding, driven by the `file_names` fuzz target in
//! `fuzz/` and replayed by `cargo test` over the committed inputs (see
//! `ds_protocol::fuzzing`). Not part of the supported API.
#![doc(hidden)]

use std::path::{Component, Path};

use crate::layout;

/// File names: every name the store writes parses back to its number, every name the parsers
/// accept is the one the store would write for that number (one spelling per file, so a stray
/// or hand-made file is never mistaken for a stream), and every stream path stays inside its
/// fan-out directory under `streams/`.
///
/// The input is tried as a stream file, WAL segment and fan-out directory name; its first
/// eight bytes are also used as a stream id and a segment number.
///
/// # Panics
///
/// When a property does not hold.
pub fn check_file_names(data: &[u8]) {
    let root = Path::new("/data");
    let name = String::from_utf8_lossy(data);

    if let Some(id) = layout::parse_stream_file(&name) {
        let path = layout::stream_file(root, id);
        assert_eq!(
            path.file_name().and_then(|n| n.to_str()),
            Some(name.as_ref())
        );
    }
    if let Some(segment) = layout::parse_wal_segment(&name) {
        let path = layout::wal_segment(root, segment);
        assert_eq!(
            path.file_name().and_then(|n| n.to_str()),
            Some(name.as_ref())
        );
    }
    if let Some(index) = layout::parse_fanout_dir(&name) {
        let path = layout::fanout_dir(root, index);
        assert_eq!(
            path.file_name().and_then(|n| n.to_str()),
            Some(name.as_ref())
        );
    }

    let mut word = [0u8; 8];
    for (slot, byte) in word.iter_mut().zip(data) {
        *slot = *byte;
    }
    let id = u64::from_le_bytes(word);
    let path = layout::stream_file(root, id);
    assert_eq!(path.parent(), Some(layout::stream_dir(root, id).as_path()));
    let relative = path
        .strip_prefix(layout::streams_dir(root))
        .expect("stream files live under streams/");
    let parts: Vec<&str> = relative
        .components()
        .map(|c| match c {
            Component::Normal(part) => part.to_str().expect("ASCII file names"),
            other => panic!("unexpected path component {other:?} in {}", path.display()),
        })
        .collect();
    assert_eq!(parts.len(), 2, "{}", path.display());
    assert_eq!(
        layout::parse_fanout_dir(parts[0]),
        Some(layout::fanout_of(id))
    );
    assert_eq!(layout::parse_stream_file(parts[1]), Some(id));
    let segment = layout::wal_segment(root, id);
    assert_eq!(segment.parent(), Some(layout::wal_dir(root).as_path()));
    let file = segment.file_name().and_then(|n| n.to_str());
    assert_eq!(file.and_then(layout::parse_wal_segment), Some(id));
}

#[cfg(test)]
mod tests {
    use super::check_file_names;

    #[test]
    fn committed_fuzz_inputs_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let ran = ds_protocol::fuzzing::replay(&root, "file_names", check_file_names);
        assert!(ran > 0, "no inputs for file_names");
    }
}
