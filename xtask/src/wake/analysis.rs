//! What the run recorded, and the verdict on it: which claim first covered
//! each acknowledged append, how long after its acknowledgement, and whether
//! a kill lay in between.

use std::fmt;
use std::time::{Duration, Instant};

/// The longest a wake may take in steady state (acceptance: within 1 s).
pub(crate) const WAKE_DEADLINE: Duration = Duration::from_secs(1);

/// A stream offset (`0000000000000002_000000000000001a`): two fixed-width
/// hex numbers, ordered as the protocol orders offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Off(pub(crate) u64, pub(crate) u64);

impl Off {
    /// Parses the server's offset token; `None` for anything else.
    pub(crate) fn parse(text: &str) -> Option<Off> {
        let (high, low) = text.split_once('_')?;
        if high.len() != 16 || low.len() != 16 {
            return None;
        }
        Some(Off(
            u64::from_str_radix(high, 16).ok()?,
            u64::from_str_radix(low, 16).ok()?,
        ))
    }
}

impl fmt::Display for Off {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}_{:016x}", self.0, self.1)
    }
}

/// One acknowledged append.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Append {
    /// Index of the stream.
    pub(crate) stream: usize,
    /// `Stream-Next-Offset` of the response: the tail right after it.
    pub(crate) next: Off,
    /// When the acknowledgement arrived.
    pub(crate) acked_at: Instant,
    /// The same moment in Unix milliseconds, to compare with the server's
    /// wake event timestamps.
    pub(crate) acked_unix_ms: u64,
}

/// One successful claim: what the worker was woken for.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    /// When the claim response arrived.
    pub(crate) at: Instant,
    /// Tail offsets of the streams it reported pending.
    pub(crate) pending: Vec<(usize, Off)>,
    /// The wake events that led to it: when the worker read them, and the
    /// newest `ts` among them (Unix ms, stamped by the server).
    pub(crate) events: Option<(Instant, u64)>,
}

/// One SIGKILL and the moment delivery worked again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Kill {
    /// When the server was killed.
    pub(crate) at: Instant,
    /// The first successful claim after the kill; `None` if none came.
    pub(crate) recovered_at: Option<Instant>,
}

/// When delivery worked again after a kill at `at` (`at_unix_ms` on the server's clock): the
/// first claim after it that was not led by a wake event stamped before it. A claim of an event
/// the killed leader stamped just before dying shows nothing about the new leader (with two
/// nodes, the survivor takes over only when the lease runs out, about 2 s later).
pub(crate) fn recovery(claims: &[Claim], at: Instant, at_unix_ms: u64) -> Option<Instant> {
    claims
        .iter()
        .filter(|c| c.at > at && c.events.is_none_or(|(_, ts)| ts >= at_unix_ms))
        .map(|c| c.at)
        .min()
}

impl Kill {
    /// Whether an append acknowledged at `acked` and covered at `covered`
    /// was disturbed by this kill: the kill fell between the two, or the
    /// append came while delivery was recovering from it.
    fn disturbs(&self, acked: Instant, covered: Instant) -> bool {
        let across = acked < self.at && self.at <= covered;
        let recovering = acked >= self.at && self.recovered_at.is_none_or(|r| acked <= r);
        across || recovering
    }
}

/// Latency figures of a set of appends.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Latencies {
    /// Appends measured.
    pub(crate) count: usize,
    /// Median.
    pub(crate) p50: Duration,
    /// 99th percentile.
    pub(crate) p99: Duration,
    /// Largest.
    pub(crate) max: Duration,
}

impl Latencies {
    /// Nearest-rank percentiles of `values`.
    fn of(mut values: Vec<Duration>) -> Latencies {
        values.sort_unstable();
        let rank = |p: usize| values[(values.len() * p).div_ceil(100).max(1) - 1];
        if values.is_empty() {
            return Latencies::default();
        }
        Latencies {
            count: values.len(),
            p50: rank(50),
            p99: rank(99),
            max: values[values.len() - 1],
        }
    }
}

/// The coverage verdict of a run.
#[derive(Debug, Default)]
pub(crate) struct Coverage {
    /// Appends acknowledged and covered with no kill in the way.
    pub(crate) steady: Latencies,
    /// Appends acknowledged before a kill (or while delivery recovered from
    /// one) and covered afterwards.
    pub(crate) disturbed: Latencies,
    /// Steady appends covered later than [`WAKE_DEADLINE`], described.
    pub(crate) late: Vec<String>,
    /// Appends no claim ever covered, described.
    pub(crate) lost: Vec<String>,
}

/// Matches every append with the first claim whose reported tail reaches
/// it. An append covered by a claim that arrived before its own
/// acknowledgement (the two responses raced) counts as woken at once.
pub(crate) fn analyse(
    appends: &[Append],
    claims: &[Claim],
    kills: &[Kill],
    names: &dyn Fn(usize) -> String,
) -> Coverage {
    // Per stream, in claim order: when, and the highest tail reported so far.
    let streams = appends
        .iter()
        .map(|a| a.stream + 1)
        .chain(
            claims
                .iter()
                .flat_map(|c| c.pending.iter().map(|p| p.0 + 1)),
        )
        .max()
        .unwrap_or(0);
    let mut reach: Vec<Vec<(Instant, Off)>> = vec![Vec::new(); streams];
    let mut ordered: Vec<&Claim> = claims.iter().collect();
    ordered.sort_by_key(|c| c.at);
    for claim in ordered {
        for &(stream, tail) in &claim.pending {
            let list = &mut reach[stream];
            let best = list.last().map_or(tail, |&(_, t)| t.max(tail));
            list.push((claim.at, best));
        }
    }

    let mut steady = Vec::new();
    let mut disturbed = Vec::new();
    let mut coverage = Coverage::default();
    for append in appends {
        let list = &reach[append.stream];
        let first = list.partition_point(|&(_, tail)| tail < append.next);
        let Some(&(covered_at, _)) = list.get(first) else {
            coverage.lost.push(format!(
                "{} up to {}: acknowledged, never reported by a claim",
                names(append.stream),
                append.next
            ));
            continue;
        };
        let latency = covered_at.saturating_duration_since(append.acked_at);
        if kills
            .iter()
            .any(|k| k.disturbs(append.acked_at, covered_at))
        {
            disturbed.push(latency);
        } else {
            if latency > WAKE_DEADLINE {
                let claim = claims.iter().find(|c| c.at == covered_at);
                let how = match claim.and_then(|c| c.events) {
                    Some((read_at, ts)) => format!(
                        " (its wake event was stamped {} ms and read by the worker {} ms after the acknowledgement)",
                        i128::from(ts) - i128::from(append.acked_unix_ms),
                        read_at
                            .saturating_duration_since(append.acked_at)
                            .as_millis()
                    ),
                    None => String::new(),
                };
                coverage.late.push(format!(
                    "{} up to {}: woken {} ms after its acknowledgement{how}",
                    names(append.stream),
                    append.next,
                    latency.as_millis()
                ));
            }
            steady.push(latency);
        }
    }
    coverage.steady = Latencies::of(steady);
    coverage.disturbed = Latencies::of(disturbed);
    coverage
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{Append, Claim, Kill, Latencies, Off, analyse};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn offsets_parse_and_order_like_the_protocol() {
        let a = Off::parse("0000000000000002_000000000000001a").expect("offset");
        assert_eq!(a, Off(2, 0x1a));
        assert_eq!(a.to_string(), "0000000000000002_000000000000001a");
        assert!(Off(2, 0x1a) < Off(3, 0));
        assert!(Off(2, 0x1a) < Off(2, 0x1b));
        for bad in ["", "-1", "now", "2_1a", "000000000000000g_0000000000000000"] {
            assert_eq!(Off::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let l = Latencies::of((1..=100).rev().map(ms).collect());
        assert_eq!(
            (l.count, l.p50, l.p99, l.max),
            (100, ms(50), ms(99), ms(100))
        );
        let l = Latencies::of(vec![ms(7)]);
        assert_eq!((l.p50, l.p99, l.max), (ms(7), ms(7), ms(7)));
        assert_eq!(Latencies::of(Vec::new()), Latencies::default());
    }

    #[test]
    fn appends_are_matched_with_the_first_claim_reaching_them() {
        let t0 = Instant::now();
        let append = |stream, next, at| Append {
            stream,
            next: Off(1, next),
            acked_at: t0 + ms(at),
            acked_unix_ms: 1_000_000 + at,
        };
        let claim = |at, pending: &[(usize, u64)]| Claim {
            at: t0 + ms(at),
            pending: pending.iter().map(|&(s, o)| (s, Off(1, o))).collect(),
            events: Some((t0 + ms(at - 2), 1_000_000 + at - 5)),
        };
        let appends = [
            append(0, 10, 0),   // covered at 20
            append(0, 20, 30),  // covered at 50
            append(1, 5, 40),   // covered at 35, before its ack: 0 ms
            append(1, 9, 100),  // covered at 1300: late
            append(2, 1, 1500), // never covered
        ];
        let claims = [
            claim(20, &[(0, 10)]),
            claim(35, &[(1, 5)]),
            claim(50, &[(0, 25)]),
            claim(1300, &[(1, 9)]),
        ];
        let c = analyse(&appends, &claims, &[], &|s| format!("s{s}"));
        assert_eq!(c.steady.count, 4);
        assert_eq!(c.steady.max, ms(1200));
        assert_eq!(c.steady.p50, ms(20));
        assert_eq!(c.late.len(), 1, "{:?}", c.late);
        assert!(c.late[0].starts_with("s1 up to"), "{:?}", c.late);
        assert!(
            c.late[0].ends_with(
                "woken 1200 ms after its acknowledgement (its wake event was stamped 1195 ms and \
                 read by the worker 1198 ms after the acknowledgement)"
            ),
            "{:?}",
            c.late
        );
        assert_eq!(c.lost.len(), 1);
        assert!(c.lost[0].starts_with("s2 up to"), "{:?}", c.lost);
        assert_eq!(c.disturbed.count, 0);
    }

    #[test]
    fn recovery_ignores_claims_of_events_stamped_before_the_kill() {
        let t0 = Instant::now();
        let claim = |at: u64, ts: Option<u64>| Claim {
            at: t0 + ms(at),
            pending: Vec::new(),
            events: ts.map(|ts| (t0 + ms(at), ts)),
        };
        // Killed at 100 ms (unix 1,000,100): the claim at 150 ms was led by an event the
        // killed leader stamped at 1,000,090; the one at 2,100 ms by the new leader's.
        let claims = [
            claim(50, Some(1_000_040)),
            claim(150, Some(1_000_090)),
            claim(2_100, Some(1_002_050)),
        ];
        assert_eq!(
            super::recovery(&claims, t0 + ms(100), 1_000_100),
            Some(t0 + ms(2_100))
        );
        // A claim without events (a poll) counts as it always did.
        let claims = [claim(150, None), claim(2_100, Some(1_002_050))];
        assert_eq!(
            super::recovery(&claims, t0 + ms(100), 1_000_100),
            Some(t0 + ms(150))
        );
    }

    #[test]
    fn a_kill_in_the_way_moves_an_append_out_of_the_steady_figures() {
        let t0 = Instant::now();
        let appends = [
            // Acknowledged before the kill at 100, covered after recovery.
            Append {
                stream: 0,
                next: Off(1, 1),
                acked_at: t0 + ms(90),
                acked_unix_ms: 0,
            },
            // Acknowledged while recovering (before the first claim at 2000).
            Append {
                stream: 0,
                next: Off(1, 2),
                acked_at: t0 + ms(1500),
                acked_unix_ms: 0,
            },
            // After recovery: steady.
            Append {
                stream: 0,
                next: Off(1, 3),
                acked_at: t0 + ms(2100),
                acked_unix_ms: 0,
            },
        ];
        let claims = [
            Claim {
                at: t0 + ms(2000),
                pending: vec![(0, Off(1, 2))],
                events: None,
            },
            Claim {
                at: t0 + ms(2110),
                pending: vec![(0, Off(1, 3))],
                events: None,
            },
        ];
        let kills = [Kill {
            at: t0 + ms(100),
            recovered_at: Some(t0 + ms(2000)),
        }];
        let c = analyse(&appends, &claims, &kills, &|s| format!("s{s}"));
        assert_eq!(c.disturbed.count, 2);
        assert_eq!(c.disturbed.max, ms(1910));
        assert_eq!(c.steady.count, 1);
        assert_eq!(c.steady.max, ms(10));
        assert!(c.late.is_empty() && c.lost.is_empty());
    }
}
