//! Checking what the streams hold after the crash loop against what the
//! server acknowledged.

use std::collections::{BTreeMap, HashMap};

use super::record::parse_line;

/// What one producer did, as the workload saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProducerLog {
    /// Producer number `i` (its `Producer-Id` is `p<i>`).
    pub(crate) id: u32,
    /// Index of the stream it appended to.
    pub(crate) stream: usize,
    /// Sequence numbers the server acknowledged (200 or 204).
    pub(crate) acked: Vec<u64>,
    /// A sequence number sent at least once but never acknowledged; it may
    /// or may not be in the stream, but at most once.
    pub(crate) in_flight: Option<u64>,
}

/// Everything found wrong, one human-readable line per finding.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Findings {
    /// Lines that are not a well-formed record with a matching checksum.
    pub(crate) torn: Vec<String>,
    /// Acknowledged appends missing from their stream.
    pub(crate) lost: Vec<String>,
    /// Appends present more than once.
    pub(crate) duplicated: Vec<String>,
    /// Appends that come after a later append of the same producer.
    pub(crate) out_of_order: Vec<String>,
    /// Valid records that should not be there at all: an unknown producer,
    /// the wrong stream, or a sequence number never sent.
    pub(crate) unexpected: Vec<String>,
}

impl Findings {
    /// Whether nothing was found.
    pub(crate) fn is_clean(&self) -> bool {
        self.torn.is_empty()
            && self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.out_of_order.is_empty()
            && self.unexpected.is_empty()
    }
}

/// Per-producer state while scanning its stream.
#[derive(Default)]
struct Seen {
    /// Occurrences of each sequence number.
    counts: BTreeMap<u64, u32>,
    /// Highest sequence number seen so far.
    max: Option<u64>,
}

/// Checks `streams` (name and full content, indexed like
/// [`ProducerLog::stream`]) against the producers' logs.
pub(crate) fn verify(streams: &[(String, Vec<u8>)], producers: &[ProducerLog]) -> Findings {
    let mut findings = Findings::default();
    let by_id: HashMap<u32, &ProducerLog> = producers.iter().map(|p| (p.id, p)).collect();
    let mut seen: HashMap<u32, Seen> = HashMap::new();

    for (index, (name, content)) in streams.iter().enumerate() {
        let mut offset = 0;
        let mut rest = &content[..];
        while !rest.is_empty() {
            let (line, complete) = match rest.iter().position(|&b| b == b'\n') {
                Some(end) => (&rest[..end], true),
                None => (rest, false),
            };
            let at = offset;
            offset += line.len() + 1;
            rest = if complete {
                &rest[line.len() + 1..]
            } else {
                &[]
            };

            let record = if complete {
                parse_line(line)
            } else {
                Err("no final newline (cut off at the end of the stream)".to_owned())
            };
            let (producer, seq) = match record {
                Ok(record) => record,
                Err(reason) => {
                    findings.torn.push(format!(
                        "stream {name}: byte {at}: {reason}: {:?}",
                        snippet(line)
                    ));
                    continue;
                }
            };
            let Some(log) = by_id.get(&producer) else {
                findings.unexpected.push(format!(
                    "stream {name}: byte {at}: record of unknown producer p{producer} seq {seq}"
                ));
                continue;
            };
            if log.stream != index {
                let home = streams.get(log.stream).map_or("?", |(n, _)| n.as_str());
                findings.unexpected.push(format!(
                    "stream {name}: byte {at}: producer p{producer} seq {seq} belongs in stream {home}"
                ));
                continue;
            }
            if !log.acked.contains(&seq) && log.in_flight != Some(seq) {
                findings.unexpected.push(format!(
                    "stream {name}: byte {at}: producer p{producer} seq {seq} was never sent"
                ));
            }
            let state = seen.entry(producer).or_default();
            let count = state.counts.entry(seq).or_insert(0);
            *count += 1;
            // A repeat is a duplicate, not also an ordering error.
            if *count == 1
                && let Some(max) = state.max
                && seq < max
            {
                findings.out_of_order.push(format!(
                    "stream {name}: byte {at}: producer p{producer} seq {seq} after seq {max}"
                ));
            }
            state.max = state.max.max(Some(seq));
        }
    }

    for log in producers {
        let name = streams.get(log.stream).map_or("?", |(n, _)| n.as_str());
        let empty = Seen::default();
        let state = seen.get(&log.id).unwrap_or(&empty);
        let mut acked = log.acked.clone();
        acked.sort_unstable();
        acked.dedup();
        for seq in acked {
            if !state.counts.contains_key(&seq) {
                findings.lost.push(format!(
                    "stream {name}: producer p{} seq {seq} was acknowledged but is missing",
                    log.id
                ));
            }
        }
        for (&seq, &count) in &state.counts {
            if count > 1 {
                findings.duplicated.push(format!(
                    "stream {name}: producer p{} seq {seq} appears {count} times",
                    log.id
                ));
            }
        }
    }
    findings
}

/// The start of `line`, for reports.
fn snippet(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut snippet: String = text.chars().take(60).collect();
    if text.chars().count() > 60 {
        snippet.push_str("...");
    }
    snippet
}

#[cfg(test)]
mod tests {
    use super::{Findings, ProducerLog, verify};
    use crate::crash::record::format_line;

    /// Records of `(producer, seq)` in order, as stream content.
    fn content(records: &[(u32, u64)]) -> Vec<u8> {
        records
            .iter()
            .flat_map(|&(p, s)| format_line(p, s, &format!("pad{p}x{s}xxxxxxxxx")).into_bytes())
            .collect()
    }

    /// Producer `id` on stream `stream` with `0..acked` acknowledged.
    fn log(id: u32, stream: usize, acked: u64, in_flight: Option<u64>) -> ProducerLog {
        ProducerLog {
            id,
            stream,
            acked: (0..acked).collect(),
            in_flight,
        }
    }

    fn streams(contents: Vec<Vec<u8>>) -> Vec<(String, Vec<u8>)> {
        contents
            .into_iter()
            .enumerate()
            .map(|(i, c)| (format!("crash-{i}"), c))
            .collect()
    }

    #[test]
    fn interleaved_complete_streams_are_clean() {
        let s = streams(vec![
            content(&[(0, 0), (1, 0), (0, 1), (1, 1), (1, 2), (0, 2)]),
            content(&[(2, 0)]),
            Vec::new(),
        ]);
        let producers = [
            log(0, 0, 3, None),
            log(1, 0, 2, Some(2)),
            log(2, 1, 0, Some(0)),
            log(3, 2, 0, Some(0)),
        ];
        let findings = verify(&s, &producers);
        assert!(findings.is_clean(), "{findings:?}");
        assert_eq!(findings, Findings::default());
    }

    #[test]
    fn lost_appends_are_detected() {
        let s = streams(vec![content(&[(0, 0), (0, 2)])]);
        let findings = verify(&s, &[log(0, 0, 4, None)]);
        assert_eq!(findings.lost.len(), 2, "{findings:?}");
        assert!(findings.lost[0].contains("p0 seq 1"));
        assert!(findings.lost[1].contains("p0 seq 3"));
        assert!(findings.duplicated.is_empty() && findings.torn.is_empty());
        assert!(findings.out_of_order.is_empty() && findings.unexpected.is_empty());
        // A stream that vanished loses everything acknowledged on it.
        let findings = verify(&streams(vec![Vec::new()]), &[log(0, 0, 3, Some(3))]);
        assert_eq!(findings.lost.len(), 3);
    }

    #[test]
    fn duplicates_are_detected_including_in_flight() {
        let s = streams(vec![content(&[
            (0, 0),
            (0, 1),
            (0, 1),
            (0, 2),
            (0, 2),
            (0, 2),
        ])]);
        let findings = verify(&s, &[log(0, 0, 2, Some(2))]);
        assert_eq!(findings.duplicated.len(), 2, "{findings:?}");
        assert!(findings.duplicated[0].contains("seq 1 appears 2 times"));
        assert!(findings.duplicated[1].contains("seq 2 appears 3 times"));
        assert!(findings.out_of_order.is_empty() && findings.lost.is_empty());
        // A duplicate further back is a duplicate, not an ordering error.
        let s = streams(vec![content(&[(0, 0), (0, 1), (0, 0)])]);
        let findings = verify(&s, &[log(0, 0, 2, None)]);
        assert_eq!(findings.duplicated.len(), 1);
        assert!(findings.out_of_order.is_empty());
    }

    #[test]
    fn torn_records_are_detected() {
        let mut data = content(&[(0, 0)]);
        let second = content(&[(0, 1)]);
        // A torn write: half a record, then the retried record in full.
        data.extend_from_slice(&second[..second.len() / 2]);
        data.extend_from_slice(&second);
        // A flipped byte in the next record.
        let mut third = content(&[(0, 2)]);
        third[3] ^= 0x01;
        data.extend_from_slice(&third);
        // An empty line.
        data.push(b'\n');
        // A record cut off at the end of the stream (its newline missing).
        let fourth = content(&[(0, 3)]);
        data.extend_from_slice(&fourth[..fourth.len() - 1]);
        let findings = verify(&streams(vec![data]), &[log(0, 0, 1, Some(1))]);
        // The merged half+full line, the flipped record, the empty line and
        // the stream's tail.
        assert_eq!(findings.torn.len(), 4, "{findings:?}");
        assert!(findings.torn[3].contains("no final newline"));
        // seq 1 was only in flight, so its absence is fine.
        assert!(findings.lost.is_empty(), "{findings:?}");
    }

    #[test]
    fn out_of_order_appends_are_detected() {
        let s = streams(vec![content(&[(0, 0), (1, 0), (0, 2), (0, 1), (1, 1)])]);
        let findings = verify(&s, &[log(0, 0, 3, None), log(1, 0, 2, None)]);
        assert_eq!(findings.out_of_order.len(), 1, "{findings:?}");
        assert!(findings.out_of_order[0].contains("p0 seq 1 after seq 2"));
        assert!(findings.lost.is_empty() && findings.duplicated.is_empty());
    }

    #[test]
    fn unexpected_records_are_detected() {
        let s = streams(vec![
            content(&[(0, 0), (9, 0), (1, 0), (0, 5)]),
            content(&[(1, 1)]),
        ]);
        let findings = verify(&s, &[log(0, 0, 1, None), log(1, 1, 2, None)]);
        assert_eq!(findings.unexpected.len(), 3, "{findings:?}");
        assert!(findings.unexpected[0].contains("unknown producer p9"));
        assert!(findings.unexpected[1].contains("belongs in stream crash-1"));
        assert!(findings.unexpected[2].contains("p0 seq 5 was never sent"));
        // The misplaced record does not count as present where it belongs.
        assert_eq!(findings.lost.len(), 1);
        assert!(findings.lost[0].contains("p1 seq 0"));
    }
}
