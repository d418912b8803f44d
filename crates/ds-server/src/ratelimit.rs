//! Optional per-client rate limiting (`limits.rate_limit_*`): `429` with `Retry-After` past a
//! client's rate, keyed by the client address that proxy trust resolved.
//!
//! The algorithm is GCRA (the "generic cell rate algorithm", a token bucket kept as one
//! timestamp per client): a client may send `burst` requests at once and then one every
//! `1 / requests_per_sec` seconds. IPv6 clients are keyed by their `/64`, the block one host
//! usually holds, so a client cannot escape its limit by rotating addresses inside it.
//!
//! Memory is bounded: the table holds at most about `max_clients` entries. A client whose
//! bucket has refilled carries no information and is dropped first; when every entry is still
//! draining, the one closest to refilled is evicted (so a flood of new addresses can at worst
//! forgive a client the smallest debt, never grow the table). The `governor` crate was
//! considered: its keyed store grows with every new key until `retain_recent` is called, which
//! is the bound this module needs to guarantee itself.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Shards of the table: requests from different clients rarely share a lock.
const SHARDS: usize = 64;

/// Rate-limit settings (`limits.rate_limit_requests_per_sec`, `_burst`, `_max_clients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// Sustained requests per second one client may send.
    pub requests_per_sec: u32,
    /// Requests one client may send at once before the rate applies.
    pub burst: u32,
    /// Most clients remembered at once.
    pub max_clients: usize,
}

/// A request refused by the limiter: the client may try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limited {
    pub(crate) retry_after: Duration,
}

impl Limited {
    /// `Retry-After` in whole seconds, rounded up (at least 1).
    pub(crate) fn retry_after_secs(self) -> u64 {
        let secs = self.retry_after.as_secs();
        let secs = if self.retry_after.subsec_nanos() > 0 {
            secs + 1
        } else {
            secs
        };
        secs.max(1)
    }
}

/// A per-client GCRA limiter with a bounded table.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    /// Nanoseconds between two requests at the sustained rate.
    interval: u64,
    /// How far ahead of now a client's theoretical arrival time may run (`burst - 1` intervals).
    tolerance: u64,
    per_shard: usize,
    base: Instant,
    hasher: RandomState,
    /// Per client: its theoretical arrival time, in nanoseconds since `base`.
    shards: Box<[Mutex<HashMap<IpAddr, u64>>]>,
}

impl RateLimiter {
    /// A limiter with `settings` (a zero rate, burst or table size is taken as 1).
    pub(crate) fn new(settings: RateLimitSettings) -> Self {
        let interval = 1_000_000_000 / u64::from(settings.requests_per_sec.max(1));
        let tolerance = interval.saturating_mul(u64::from(settings.burst.max(1) - 1));
        RateLimiter {
            interval: interval.max(1),
            tolerance,
            per_shard: settings.max_clients.max(1).div_ceil(SHARDS),
            base: Instant::now(),
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        }
    }

    /// Counts one request of `client`; `Err` when it is over its rate.
    pub(crate) fn check(&self, client: IpAddr) -> Result<(), Limited> {
        self.check_at(client, Instant::now())
    }

    fn check_at(&self, client: IpAddr, now: Instant) -> Result<(), Limited> {
        let key = bucket_key(client);
        let now =
            u64::try_from(now.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX);
        // The modulo keeps the index below `SHARDS`, so the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        let mut table = self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tat = if let Some(&tat) = table.get(&key) {
            tat.max(now)
        } else {
            if table.len() >= self.per_shard {
                make_room(&mut table, now, self.per_shard);
            }
            now
        };
        let ahead = tat - now;
        if ahead > self.tolerance {
            return Err(Limited {
                retry_after: Duration::from_nanos(ahead - self.tolerance),
            });
        }
        table.insert(key, tat.saturating_add(self.interval));
        Ok(())
    }

    /// Clients remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }
}

/// Frees at least one slot in a full shard of `cap` entries: refilled clients first, else the
/// one nearest to refilled.
fn make_room(table: &mut HashMap<IpAddr, u64>, now: u64, cap: usize) {
    table.retain(|_, tat| *tat > now);
    if table.len() >= cap
        && let Some(victim) = table.iter().min_by_key(|(_, tat)| **tat).map(|(k, _)| *k)
    {
        table.remove(&victim);
    }
}

/// The table key of a client: IPv4 addresses as they are, IPv6 addresses by their `/64`.
fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                IpAddr::V4(v4)
            } else {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::from(octets)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(requests_per_sec: u32, burst: u32, max_clients: usize) -> RateLimiter {
        RateLimiter::new(RateLimitSettings {
            requests_per_sec,
            burst,
            max_clients,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_burst_passes_then_the_rate_applies() {
        let l = limiter(10, 3, 100);
        let t0 = l.base;
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            assert!(l.check_at(a, t0).is_ok());
        }
        let refused = l.check_at(a, t0).expect_err("past the burst");
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        assert_eq!(refused.retry_after_secs(), 1);
        // Another client is not affected.
        assert!(l.check_at(ip("10.0.0.2"), t0).is_ok());
        // One interval later, one more request passes, and only one.
        let t1 = t0 + Duration::from_millis(100);
        assert!(l.check_at(a, t1).is_ok());
        assert!(l.check_at(a, t1).is_err());
        // Long idle refills the whole burst.
        let t2 = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            assert!(l.check_at(a, t2).is_ok());
        }
        assert!(l.check_at(a, t2).is_err());
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let l = limiter(1, 1, 100);
        let t0 = l.base;
        assert!(l.check_at(ip("2001:db8:1:2::1"), t0).is_ok());
        assert!(l.check_at(ip("2001:db8:1:2::ffff"), t0).is_err());
        assert!(l.check_at(ip("2001:db8:1:3::1"), t0).is_ok());
        assert!(l.check_at(ip("::ffff:10.0.0.9"), t0).is_ok());
        assert!(l.check_at(ip("10.0.0.9"), t0).is_err(), "v4-mapped is v4");
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood_of_addresses() {
        let l = limiter(1, 1, 128);
        let t0 = l.base;
        for i in 0..50_000u32 {
            let _ = l.check_at(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(l.len() <= 128, "table holds {} entries", l.len());
    }

    #[test]
    fn refilled_clients_are_dropped_before_draining_ones() {
        // Two entries per shard.
        let l = limiter(1, 1, 2 * SHARDS);
        let t0 = l.base;
        let shard = |a: IpAddr| l.hasher.hash_one(bucket_key(a)) % SHARDS as u64;
        let a = ip("10.1.0.1");
        let mut same = (1..u32::MAX)
            .map(|i| IpAddr::from((0x0b00_0000 + i).to_be_bytes()))
            .filter(|c| shard(*c) == shard(a));
        let (b, c) = (same.next().expect("b"), same.next().expect("c"));
        assert!(l.check_at(b, t0).is_ok(), "b refills by t0 + 1 s");
        let t1 = t0 + Duration::from_millis(1500);
        assert!(l.check_at(a, t1).is_ok(), "a drains until t1 + 1 s");
        // The shard is full: c takes b's place, not a's.
        assert!(l.check_at(c, t1).is_ok());
        assert!(l.check_at(a, t1).is_err(), "a is still limited");
        assert_eq!(l.len(), 2);
    }
}
