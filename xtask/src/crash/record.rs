//! The self-checking records the crash workload appends, and the seeded
//! random numbers that drive it.
//!
//! A record is one line: `p<producer> <seq> <hash> <padding>\n`, where
//! `padding` is 10 to 200 random alphanumeric bytes and `hash` is the
//! 16-hex-digit FNV-1a 64 hash of `p<producer> <seq> <padding>`. A line that
//! was torn, truncated, merged with another or corrupted no longer parses
//! or no longer matches its hash.

/// Shortest padding of a record.
pub(crate) const MIN_PADDING: usize = 10;
/// Longest padding of a record.
pub(crate) const MAX_PADDING: usize = 200;

/// Characters the padding is drawn from.
const PADDING_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A small deterministic random number generator (xorshift64*), seeded
/// through splitmix64 so that nearby seeds give unrelated streams.
#[derive(Debug, Clone)]
pub(crate) struct Rng {
    /// Current state; never zero.
    state: u64,
}

impl Rng {
    /// A generator for `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Self {
            state: if z == 0 { 0x2545_F491_4F6C_DD1D } else { z },
        }
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `low..=high` (`low <= high`); the slight modulo bias is
    /// irrelevant here.
    pub(crate) fn range(&mut self, low: u64, high: u64) -> u64 {
        debug_assert!(low <= high);
        match (high - low).checked_add(1) {
            Some(span) => low + self.next_u64() % span,
            None => self.next_u64(),
        }
    }
}

/// FNV-1a, 64 bits.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01B3);
    }
    hash
}

/// The record of `producer`'s append number `seq`, with random padding,
/// including the final newline.
pub(crate) fn make_line(producer: u32, seq: u64, rng: &mut Rng) -> Vec<u8> {
    let len = rng.range(MIN_PADDING as u64, MAX_PADDING as u64) as usize;
    let padding: String = (0..len)
        .map(|_| {
            let index = rng.range(0, PADDING_ALPHABET.len() as u64 - 1) as usize;
            char::from(PADDING_ALPHABET[index])
        })
        .collect();
    format_line(producer, seq, &padding).into_bytes()
}

/// The record for the given fields, including the final newline.
pub(crate) fn format_line(producer: u32, seq: u64, padding: &str) -> String {
    let hash = fnv1a64(format!("p{producer} {seq} {padding}").as_bytes());
    format!("p{producer} {seq} {hash:016x} {padding}\n")
}

/// Parses one record (without its newline) into `(producer, seq)`, or says
/// why it is not a valid record.
pub(crate) fn parse_line(line: &[u8]) -> Result<(u32, u64), String> {
    let text = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_owned())?;
    let fields: Vec<&str> = text.split(' ').collect();
    let [producer, seq, hash, padding] = fields[..] else {
        return Err(format!("{} fields instead of 4", fields.len()));
    };
    let producer: u32 = producer
        .strip_prefix('p')
        .filter(|digits| is_canonical_number(digits))
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| format!("bad producer field {producer:?}"))?;
    let seq: u64 = Some(seq)
        .filter(|digits| is_canonical_number(digits))
        .and_then(|digits| digits.parse().ok())
        .ok_or_else(|| format!("bad seq field {seq:?}"))?;
    if !(MIN_PADDING..=MAX_PADDING).contains(&padding.len())
        || !padding.bytes().all(|b| PADDING_ALPHABET.contains(&b))
    {
        return Err(format!("bad padding of {} bytes", padding.len()));
    }
    let expected = fnv1a64(format!("p{producer} {seq} {padding}").as_bytes());
    if hash.len() != 16 || u64::from_str_radix(hash, 16).ok() != Some(expected) {
        return Err(format!(
            "checksum {hash:?} does not match (expected {expected:016x})"
        ));
    }
    Ok((producer, seq))
}

/// Whether `digits` is a decimal number without sign or leading zeros.
fn is_canonical_number(digits: &str) -> bool {
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
}

#[cfg(test)]
mod tests {
    use super::{MAX_PADDING, MIN_PADDING, Rng, format_line, make_line, parse_line};

    #[test]
    fn rng_is_deterministic_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            let n = a.range(50, 400);
            assert!((50..=400).contains(&n));
            b.range(50, 400);
        }
        assert_ne!(Rng::new(1).next_u64(), Rng::new(2).next_u64());
        assert_eq!(Rng::new(3).range(5, 5), 5);
        Rng::new(0).range(0, u64::MAX);
    }

    #[test]
    fn lines_round_trip() {
        let mut rng = Rng::new(42);
        for seq in 0..500 {
            let line = make_line(3, seq, &mut rng);
            assert_eq!(line.last(), Some(&b'\n'));
            assert!(!line[..line.len() - 1].contains(&b'\n'));
            let len = line.len();
            assert!(len > MIN_PADDING && len < MAX_PADDING + 40);
            assert_eq!(parse_line(&line[..len - 1]), Ok((3, seq)));
        }
    }

    #[test]
    fn damaged_lines_are_rejected() {
        let line = format_line(1, 17, "abcdefghijklmnop");
        let line = line.trim_end_matches('\n').as_bytes().to_vec();
        assert_eq!(parse_line(&line), Ok((1, 17)));

        // Every proper prefix (a torn write) is rejected.
        for cut in 0..line.len() {
            assert!(
                parse_line(&line[..cut]).is_err(),
                "prefix of {cut} accepted"
            );
        }
        // Every single-byte change is rejected.
        for i in 0..line.len() {
            let mut bad = line.clone();
            bad[i] = if bad[i] == b'x' { b'y' } else { b'x' };
            assert!(parse_line(&bad).is_err(), "change at {i} accepted");
        }
        // Two records run together, and non-canonical numbers.
        let mut merged = line.clone();
        merged.extend_from_slice(&line);
        assert!(parse_line(&merged).is_err());
        for bad in [
            format_line(1, 17, "short"),
            format_line(1, 17, &"a".repeat(MAX_PADDING + 1)),
            format_line(1, 17, "with-dash-padding"),
        ] {
            assert!(parse_line(bad.trim_end().as_bytes()).is_err(), "{bad:?}");
        }
        let leading_zero = String::from_utf8(line.clone())
            .expect("utf-8")
            .replacen(" 17 ", " 017 ", 1);
        assert!(parse_line(leading_zero.as_bytes()).is_err());
    }
}
