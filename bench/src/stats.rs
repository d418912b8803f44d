//! Latency histograms and medians: the pure arithmetic behind every figure in the table.

/// Values below this are counted exactly (one bucket per value).
const EXACT: u64 = 128;
/// Sub-buckets per power of two above `EXACT`: relative error under 1/64.
const HALF: u64 = 64;
/// Buckets needed to cover all of `u64`.
const BUCKETS: usize = (EXACT + 57 * HALF) as usize;

/// A log-linear histogram of nanosecond values: exact below 128 ns, within 1.6% above.
///
/// Fixed size (about 30 KiB), so recording never allocates; one per load-generator
/// connection, merged at the end.
#[derive(Clone)]
pub(crate) struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("total", &self.total)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let msb = v.ilog2();
    // `v >> shift` lands in [64, 128): the top seven bits pick the sub-bucket.
    let shift = msb - 6;
    (EXACT + u64::from(shift - 1) * HALF + ((v >> shift) - HALF)) as usize
}

/// The smallest and largest value that map to bucket `i`.
fn bounds(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < EXACT {
        return (i, i);
    }
    let rel = i - EXACT;
    let shift = rel / HALF + 1;
    let low = (rel % HALF + HALF) << shift;
    (low, low + ((1u64 << shift) - 1))
}

impl Histogram {
    /// Counts one value.
    pub(crate) fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Adds every count of `other`.
    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Values recorded.
    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    /// The largest value recorded, exactly; `None` when empty.
    pub(crate) fn max(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max)
    }

    /// The value at quantile `q` (0..=1), as the midpoint of its bucket (never above the
    /// maximum); `None` when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = rank(q, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = bounds(i);
                return Some((lo + (hi - lo) / 2).min(self.max));
            }
        }
        Some(self.max)
    }
}

/// The 1-based rank of quantile `q` among `total` values (nearest-rank method).
fn rank(q: f64, total: u64) -> u64 {
    let q = q.clamp(0.0, 1.0);
    let r = (q * as_f64(total)).ceil();
    // In range: q ≤ 1 and total fits in f64's integer range for any count we record.
    #[expect(clippy::cast_sign_loss, reason = "r is clamped to be non-negative")]
    let r = r as u64;
    r.clamp(1, total)
}

/// `u64` to `f64` for reporting; counts and byte totals here stay far below 2^53.
#[expect(
    clippy::cast_precision_loss,
    reason = "report figures; values stay below 2^53"
)]
pub(crate) fn as_f64(v: u64) -> f64 {
    v as f64
}

/// The median of the given values (mean of the middle two for an even count); `None` when
/// empty. NaNs are ignored.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lands_in_a_bucket_that_contains_it() {
        let mut v = 0u64;
        while v < u64::MAX / 3 {
            let (lo, hi) = bounds(index(v));
            assert!(lo <= v && v <= hi, "{v} not in [{lo}, {hi}]");
            // Relative width stays under 1/64 above the exact range.
            if v >= EXACT {
                assert!(as_f64(hi - lo) / as_f64(lo) <= 1.0 / 64.0 + 1e-12);
            }
            v = v + v / 4 + 1;
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        assert_eq!(bounds(BUCKETS - 1).1, u64::MAX);
    }

    #[test]
    fn buckets_are_contiguous() {
        for i in 1..BUCKETS {
            assert_eq!(bounds(i - 1).1 + 1, bounds(i).0, "gap before bucket {i}");
        }
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.5), Some(50));
        assert_eq!(h.quantile(0.99), Some(99));
        assert_eq!(h.quantile(1.0), Some(100));
        assert_eq!(h.quantile(0.0), Some(1));
        assert_eq!(h.max(), Some(100));
    }

    #[test]
    fn large_values_are_within_two_percent() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v * 1_000);
        }
        for (q, want) in [
            (0.5, 5_000_000.0),
            (0.99, 9_900_000.0),
            (0.999, 9_990_000.0),
        ] {
            let got = as_f64(h.quantile(q).unwrap());
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.max(), Some(10_000_000));
        assert_eq!(h.quantile(1.0), Some(10_000_000));
    }

    #[test]
    fn empty_histogram_has_no_quantiles() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.max(), None);
    }

    #[test]
    fn merge_adds_counts_and_keeps_the_max() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(10);
        b.record(20);
        b.record(30);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.quantile(0.5), Some(20));
        assert_eq!(a.max(), Some(30));
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 7.0]), Some(7.0));
    }

    #[test]
    fn nearest_rank() {
        assert_eq!(rank(0.5, 10), 5);
        assert_eq!(rank(0.99, 10), 10);
        assert_eq!(rank(0.0, 10), 1);
        assert_eq!(rank(2.0, 10), 10);
    }
}
