//! `list`: the streams of a stopped server's data dir, as an aligned table or JSON.

use ds_protocol::Expiry;
use ds_storage::StreamInfo;

/// Whether a stream is one of the server's internal `__ds/` streams (subscription state, the
/// webhook signing key).
pub(crate) fn is_internal(info: &StreamInfo) -> bool {
    info.name.is_reserved()
}

/// The expiry column: `-`, `ttl <secs>s`, or the RFC 3339 deadline.
fn expiry_text(expiry: &Expiry) -> String {
    match expiry {
        Expiry::None => "-".to_owned(),
        Expiry::Ttl(secs) => format!("ttl {secs}s"),
        Expiry::ExpiresAt(at) => ds_protocol::headers::format_expires_at(*at),
    }
}

/// An aligned table, one row per stream, with a header row. Columns are separated by two
/// spaces; `BYTES` is right-aligned; the last column is not padded.
pub(crate) fn table(streams: &[StreamInfo]) -> String {
    const HEAD: [&str; 7] = [
        "NAME",
        "CONTENT-TYPE",
        "BYTES",
        "NEXT-OFFSET",
        "CLOSED",
        "EXPIRY",
        "FORKED-FROM",
    ];
    let rows: Vec<[String; 7]> = streams
        .iter()
        .map(|s| {
            [
                s.name.as_str().to_owned(),
                s.content_type.clone(),
                s.bytes.to_string(),
                s.next.to_string(),
                if s.closed { "yes" } else { "no" }.to_owned(),
                expiry_text(&s.expiry),
                s.forked_from
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |f| f.as_str().to_owned()),
            ]
        })
        .collect();
    let mut widths = HEAD.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let head = HEAD.map(str::to_owned);
    for row in std::iter::once(&head).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = w - cell.chars().count();
            if i == 2 {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A JSON array, one object per stream.
pub(crate) fn json(streams: &[StreamInfo]) -> String {
    let items: Vec<serde_json::Value> = streams
        .iter()
        .map(|s| {
            let (ttl, expires_at) = match &s.expiry {
                Expiry::None => (None, None),
                Expiry::Ttl(secs) => (Some(*secs), None),
                Expiry::ExpiresAt(at) => (None, Some(ds_protocol::headers::format_expires_at(*at))),
            };
            serde_json::json!({
                "name": s.name.as_str(),
                "content_type": s.content_type,
                "bytes": s.bytes,
                "next_offset": s.next.to_string(),
                "closed": s.closed,
                "ttl_secs": ttl,
                "expires_at": expires_at,
                "forked_from": s.forked_from.as_ref().map(ds_protocol::StreamName::as_str),
            })
        })
        .collect();
    let mut out = serde_json::to_string_pretty(&items).expect("JSON values always serialise");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ds_protocol::{NameLimits, Offset, StreamName};

    fn info(name: &str, bytes: u64, expiry: Expiry, forked_from: Option<&str>) -> StreamInfo {
        let limits = NameLimits::default();
        StreamInfo {
            name: StreamName::parse(name, limits).expect("name"),
            stream_id: 1,
            content_type: "application/json".to_owned(),
            expiry,
            next: Offset::ZERO,
            closed: forked_from.is_some(),
            bytes,
            forked_from: forked_from.map(|f| StreamName::parse(f, limits).expect("name")),
        }
    }

    #[test]
    fn table_columns_line_up_and_bytes_are_right_aligned() {
        let rows = [
            info("a", 5, Expiry::Ttl(60), None),
            info("longer/name", 12345, Expiry::None, Some("a")),
        ];
        let out = table(&rows);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].starts_with("NAME         CONTENT-TYPE      BYTES  NEXT-OFFSET"));
        let col = lines[0].find("NEXT-OFFSET").expect("header");
        for line in &lines[1..] {
            assert_eq!(&line[col..col + 16], "0000000000000000", "{out}");
        }
        // Right-aligned: both byte counts end where the BYTES header ends.
        let end = lines[0].find("BYTES").expect("header") + "BYTES".len();
        assert_eq!(&lines[1][end - 1..end], "5");
        assert_eq!(&lines[2][end - 5..end], "12345");
        assert!(
            lines[1].contains("ttl 60s") && lines[1].ends_with('-'),
            "{out}"
        );
        assert!(
            lines[2].contains("yes") && lines[2].ends_with("  a"),
            "{out}"
        );
    }

    #[test]
    fn json_carries_every_column() {
        let out = json(&[info("f", 3, Expiry::Ttl(9), Some("src"))]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        assert_eq!(v[0]["name"], "f");
        assert_eq!(v[0]["content_type"], "application/json");
        assert_eq!(v[0]["bytes"], 3);
        assert_eq!(v[0]["next_offset"], Offset::ZERO.to_string());
        assert_eq!(v[0]["closed"], true);
        assert_eq!(v[0]["ttl_secs"], 9);
        assert_eq!(v[0]["expires_at"], serde_json::Value::Null);
        assert_eq!(v[0]["forked_from"], "src");
    }
}
