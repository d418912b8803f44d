//! `Stream-Cursor` generation (PROTOCOL.md section 10.1).
//!
//! Time is divided into 20-second intervals counted from 2024-10-09T00:00:00Z; the cursor is
//! the interval number as a decimal string. Live responses carry it so CDNs key collapsed
//! long-polls by time, and a client that echoes a cursor at or ahead of the current interval
//! gets one strictly greater back, so cached responses can never loop.

use crate::util::parse_canonical_u64;

/// Length of one cursor interval, in seconds.
pub const CURSOR_INTERVAL_SECS: u64 = 20;

/// Start of interval 0 as Unix seconds: 2024-10-09T00:00:00Z.
pub const CURSOR_EPOCH_UNIX_SECS: u64 = 1_728_432_000;

/// The interval number at `now_unix_secs` (0 for any time before the epoch).
#[must_use]
pub fn current_interval(now_unix_secs: u64) -> u64 {
    now_unix_secs.saturating_sub(CURSOR_EPOCH_UNIX_SECS) / CURSOR_INTERVAL_SECS
}

/// The cursor to return: the current interval, unless the client echoed a cursor `>=` it, in
/// which case `client + max(1, jitter_secs / CURSOR_INTERVAL_SECS)`, strictly greater than the
/// client's. `jitter_secs` is chosen by the caller uniformly in `1..=3600`. A client cursor
/// that is not a canonical decimal `u64` is ignored. The addition saturates, so only a client
/// cursor of `u64::MAX` gets itself back.
#[must_use]
pub fn next_cursor(now_unix_secs: u64, client_cursor: Option<&str>, jitter_secs: u64) -> u64 {
    let current = current_interval(now_unix_secs);
    match client_cursor.and_then(parse_canonical_u64) {
        Some(client) if client >= current => {
            client.saturating_add((jitter_secs / CURSOR_INTERVAL_SECS).max(1))
        }
        _ => current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = CURSOR_EPOCH_UNIX_SECS + 1000 * CURSOR_INTERVAL_SECS + 7;

    #[test]
    fn interval_table() {
        let cases = [
            (0, 0),
            (CURSOR_EPOCH_UNIX_SECS - 1, 0),
            (CURSOR_EPOCH_UNIX_SECS, 0),
            (CURSOR_EPOCH_UNIX_SECS + 19, 0),
            (CURSOR_EPOCH_UNIX_SECS + 20, 1),
            (NOW, 1000),
        ];
        for (now, want) in cases {
            assert_eq!(current_interval(now), want, "now {now}");
        }
    }

    #[test]
    fn next_cursor_table() {
        let cases: &[(Option<&str>, u64, u64)] = &[
            (None, 1, 1000),
            (Some("999"), 1, 1000),
            (Some("0"), 1, 1000),
            (Some("1000"), 1, 1001),
            (Some("1000"), 19, 1001),
            (Some("1000"), 20, 1001),
            (Some("1000"), 1000, 1050),
            (Some("1000"), 3600, 1180),
            (Some("5000"), 1, 5001),
            (Some("abc"), 1, 1000),
            (Some("01000"), 1, 1000),
            (Some("+1000"), 1, 1000),
            (Some(""), 1, 1000),
            (Some("18446744073709551615"), 1, u64::MAX),
        ];
        for &(client, jitter, want) in cases {
            assert_eq!(
                next_cursor(NOW, client, jitter),
                want,
                "client {client:?} jitter {jitter}"
            );
        }
    }

    proptest! {
        #[test]
        fn cursor_never_goes_backwards(now in CURSOR_EPOCH_UNIX_SECS..CURSOR_EPOCH_UNIX_SECS * 2, client in 0u64..u64::MAX, jitter in 1u64..=3600) {
            let next = next_cursor(now, Some(&client.to_string()), jitter);
            prop_assert!(next >= current_interval(now));
            if client >= current_interval(now) {
                prop_assert!(next > client);
            }
        }
    }
}
