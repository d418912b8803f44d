//! Request limits enforced at the edge: header count and size, and concurrent live readers
//! (long-poll and SSE) per stream and in total.
//!
//! Each limit answers with a problem+json body naming the limit: `431` for headers, `503` with
//! `Retry-After` for live readers. The live-reader count is an atomic for the total and a
//! sharded map for the per-stream counts; both are touched once when a live read starts and
//! once when it ends, never by appends or catch-up reads.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::http::HeaderMap;
use ds_protocol::StreamName;

use crate::error::ApiError;

/// Bytes a header line adds besides its name and value (`: ` and CRLF).
const HEADER_LINE_OVERHEAD: usize = 4;

/// The header limits of one request (`limits.max_header_count`, `limits.max_header_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Most header fields (each repeated field counts once per value).
    pub max_count: usize,
    /// Most bytes of header fields: names, values, and 4 bytes per field for `: ` and CRLF.
    pub max_bytes: usize,
}

impl HeaderLimits {
    /// Checks `headers` against the limits: `431` with a problem body naming the limit.
    pub(crate) fn check(self, headers: &HeaderMap) -> Result<(), ApiError> {
        let count = headers.len();
        if count > self.max_count {
            return Err(ApiError::HeadersTooLarge {
                detail: format!(
                    "the request has {count} header fields; the limit is {} (limits.max_header_count)",
                    self.max_count
                ),
            });
        }
        let bytes: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + HEADER_LINE_OVERHEAD)
            .sum();
        if bytes > self.max_bytes {
            return Err(ApiError::HeadersTooLarge {
                detail: format!(
                    "the request headers take {bytes} bytes; the limit is {} (limits.max_header_bytes)",
                    self.max_bytes
                ),
            });
        }
        Ok(())
    }
}

/// Seconds a client refused for lack of live-reader room is told to wait (`Retry-After`).
pub(crate) const LIVE_READERS_RETRY_AFTER_SECS: u64 = 5;

/// Shards of the per-stream count: live reads of different streams rarely share a lock.
const SHARDS: usize = 32;

/// Which live-reader limit was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveReaderScope {
    /// `limits.max_live_readers_per_stream`.
    Stream,
    /// `limits.max_live_readers`.
    Total,
}

/// Open live reads per stream, for the streams whose names hash to one shard.
type Shard = Mutex<HashMap<StreamName, usize>>;

/// Counts open live reads and refuses those past the limits.
#[derive(Debug)]
pub(crate) struct LiveReaders {
    max_total: usize,
    max_per_stream: usize,
    total: AtomicUsize,
    /// Open live reads per stream name; `None` when the per-stream limit cannot bind before the
    /// total does (then only the total is counted).
    per_stream: Option<Box<[Shard]>>,
    hasher: RandomState,
}

impl LiveReaders {
    /// Limits of `max_total` live reads in all and `max_per_stream` on one stream.
    pub(crate) fn new(max_total: usize, max_per_stream: usize) -> Self {
        let per_stream = (max_per_stream < max_total).then(|| {
            (0..SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect::<Vec<_>>()
                .into_boxed_slice()
        });
        LiveReaders {
            max_total,
            max_per_stream,
            total: AtomicUsize::new(0),
            per_stream,
            hasher: RandomState::new(),
        }
    }

    /// Takes a live-reader slot on `name`, held until the permit drops; `503` past a limit.
    pub(crate) fn try_acquire(
        self: &Arc<Self>,
        name: &StreamName,
    ) -> Result<LiveReaderPermit, ApiError> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::TooManyLiveReaders {
                scope: LiveReaderScope::Total,
                limit: self.max_total,
            });
        }
        let mut permit = LiveReaderPermit {
            readers: Arc::clone(self),
            name: None,
        };
        if let Some(shard) = self.shard(name) {
            let mut counts = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let open = counts.entry(name.clone()).or_insert(0);
            if *open >= self.max_per_stream {
                drop(counts);
                // Dropping `permit` (without a name) gives the total slot back.
                return Err(ApiError::TooManyLiveReaders {
                    scope: LiveReaderScope::Stream,
                    limit: self.max_per_stream,
                });
            }
            *open += 1;
            permit.name = Some(name.clone());
        }
        Ok(permit)
    }

    fn shard(&self, name: &StreamName) -> Option<&Shard> {
        let shards = self.per_stream.as_ref()?;
        // The modulo keeps the index below `SHARDS`, so the cast cannot truncate.
        #[allow(clippy::cast_possible_truncation)]
        let i = (self.hasher.hash_one(name) % SHARDS as u64) as usize;
        shards.get(i)
    }

    /// Open live reads, in all.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Streams with at least one open live read (the per-stream map's size).
    #[cfg(test)]
    fn streams_tracked(&self) -> usize {
        self.per_stream.as_ref().map_or(0, |shards| {
            shards
                .iter()
                .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
                .sum()
        })
    }
}

/// One open live read; gives its slots back when dropped.
#[derive(Debug)]
pub(crate) struct LiveReaderPermit {
    readers: Arc<LiveReaders>,
    /// The stream counted in the per-stream map, when it is.
    name: Option<StreamName>,
}

impl Drop for LiveReaderPermit {
    fn drop(&mut self) {
        if let Some(name) = self.name.take()
            && let Some(shard) = self.readers.shard(&name)
        {
            let mut counts = shard.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(open) = counts.get_mut(&name) {
                *open -= 1;
                // A stream without live readers leaves no entry behind.
                if *open == 0 {
                    counts.remove(&name);
                }
            }
        }
        self.readers.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use ds_protocol::NameLimits;

    fn name(s: &str) -> StreamName {
        StreamName::parse(s, NameLimits::default()).expect("valid name")
    }

    #[test]
    fn per_stream_and_total_limits_hold_and_slots_come_back() {
        let readers = Arc::new(LiveReaders::new(3, 2));
        let a1 = readers.try_acquire(&name("a")).expect("first on a");
        let _a2 = readers.try_acquire(&name("a")).expect("second on a");
        assert!(matches!(
            readers.try_acquire(&name("a")),
            Err(ApiError::TooManyLiveReaders {
                scope: LiveReaderScope::Stream,
                limit: 2
            })
        ));
        assert_eq!(readers.open(), 2, "a refused reader holds no slot");
        let _b = readers.try_acquire(&name("b")).expect("first on b");
        assert!(matches!(
            readers.try_acquire(&name("c")),
            Err(ApiError::TooManyLiveReaders {
                scope: LiveReaderScope::Total,
                limit: 3
            })
        ));
        drop(a1);
        let _a3 = readers.try_acquire(&name("a")).expect("a slot came back");
        assert_eq!(readers.open(), 3);
    }

    #[test]
    fn streams_without_readers_leave_no_entry() {
        let readers = Arc::new(LiveReaders::new(1000, 10));
        let permits: Vec<_> = (0..100)
            .map(|i| readers.try_acquire(&name(&format!("s{i}"))).expect("room"))
            .collect();
        assert_eq!(readers.streams_tracked(), 100);
        drop(permits);
        assert_eq!(readers.streams_tracked(), 0);
        assert_eq!(readers.open(), 0);
    }

    #[test]
    fn a_per_stream_limit_at_or_above_the_total_only_counts_the_total() {
        let readers = Arc::new(LiveReaders::new(2, 2));
        let _a = readers.try_acquire(&name("a")).expect("room");
        let _b = readers.try_acquire(&name("a")).expect("room");
        assert_eq!(readers.streams_tracked(), 0);
        assert!(matches!(
            readers.try_acquire(&name("b")),
            Err(ApiError::TooManyLiveReaders {
                scope: LiveReaderScope::Total,
                ..
            })
        ));
    }

    #[test]
    fn header_limits_count_fields_and_bytes() {
        let limits = HeaderLimits {
            max_count: 3,
            max_bytes: 40,
        };
        let mut headers = HeaderMap::new();
        headers.insert("a", HeaderValue::from_static("1"));
        headers.append("a", HeaderValue::from_static("2"));
        headers.insert("b", HeaderValue::from_static("3"));
        assert!(limits.check(&headers).is_ok(), "3 fields of 6 bytes each");
        headers.insert("c", HeaderValue::from_static("4"));
        assert!(matches!(
            limits.check(&headers),
            Err(ApiError::HeadersTooLarge { detail }) if detail.contains("max_header_count")
        ));
        let mut big = HeaderMap::new();
        big.insert(
            "x",
            HeaderValue::from_static("0123456789012345678901234567890123456"),
        );
        assert!(matches!(
            limits.check(&big),
            Err(ApiError::HeadersTooLarge { detail }) if detail.contains("42 bytes")
        ));
    }
}
