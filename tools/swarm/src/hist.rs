//! A log-linear histogram of u64 values (latencies in µs): fixed size, no allocation per
//! sample, mergeable. It does not know about time or connections; `stats` owns one per
//! worker and merges them at the end.
//!
//! Values below `EXACT_MAX` are counted exactly. Above, every power of two is split into
//! `SUB_BUCKETS` buckets, so a reported percentile is at most 1/64 (1.6 %) above the truth.

/// Values below this are counted one bucket per value.
const EXACT_MAX: u64 = 128;
/// Sub-buckets per power of two above `EXACT_MAX`; 64 gives < 1.6 % relative error.
const SUB_BUCKETS: usize = 64;
/// log2(EXACT_MAX): the first power of two that is split into sub-buckets.
const FIRST_SPLIT_EXP: usize = 7;
/// Enough buckets for every u64: exact part + one row per exponent 7..=63.
const BUCKETS: usize = EXACT_MAX as usize + (64 - FIRST_SPLIT_EXP) * SUB_BUCKETS;

#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    min: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            min: u64::MAX,
            max: 0,
            sum: 0,
        }
    }
}

fn index_of(value: u64) -> usize {
    if value < EXACT_MAX {
        return value as usize;
    }
    let exp = 63 - value.leading_zeros() as usize; // >= FIRST_SPLIT_EXP
    let sub = (value >> (exp - 6)) as usize & (SUB_BUCKETS - 1);
    EXACT_MAX as usize + (exp - FIRST_SPLIT_EXP) * SUB_BUCKETS + sub
}

/// The largest value that falls into bucket `index`.
fn upper_bound_of(index: usize) -> u64 {
    if index < EXACT_MAX as usize {
        return index as u64;
    }
    let row = index - EXACT_MAX as usize;
    let exp = row / SUB_BUCKETS + FIRST_SPLIT_EXP;
    let sub = (row % SUB_BUCKETS) as u128;
    // u128 because the last bucket's bound is 2^64 - 1 and the shift would overflow u64.
    let bound = ((SUB_BUCKETS as u128 + sub + 1) << (exp - 6)) - 1;
    bound.min(u64::MAX as u128) as u64
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        self.counts[index_of(value)] += 1;
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += value as u128;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.sum += other.sum;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    pub fn min(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The value at quantile `q` (0.0..=1.0): the upper bound of the bucket holding the
    /// ceil(q * count)-th smallest sample, never above the exact maximum.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let q = q.clamp(0.0, 1.0);
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (index, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(upper_bound_of(index).min(self.max).max(self.min));
            }
        }
        Some(self.max)
    }

    /// The non-empty buckets as `[index, count]` pairs plus min, max and sum: what a
    /// report carries so that another process (the coordinator) can merge histograms
    /// exactly instead of averaging percentiles.
    pub fn to_sparse(&self) -> serde_json::Value {
        let buckets: Vec<[u64; 2]> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| [i as u64, n])
            .collect();
        serde_json::json!({
            "buckets": buckets,
            "min": self.min(),
            "max": self.max(),
            "sum": self.sum.min(u64::MAX as u128) as u64,
        })
    }

    /// Reads what `to_sparse` wrote; `None` if it is malformed.
    pub fn from_sparse(v: &serde_json::Value) -> Option<Histogram> {
        let mut h = Histogram::default();
        for pair in v.get("buckets")?.as_array()? {
            let index = usize::try_from(pair.get(0)?.as_u64()?).ok()?;
            let n = pair.get(1)?.as_u64()?;
            *h.counts.get_mut(index)? += n;
            h.count += n;
        }
        if h.count > 0 {
            h.min = v.get("min")?.as_u64()?;
            h.max = v.get("max")?.as_u64()?;
        }
        h.sum = u128::from(v.get("sum")?.as_u64()?);
        Some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_round_trip_merges_exactly() {
        let mut a = Histogram::default();
        for v in [5, 700, 12_345, 1_000_000] {
            a.record(v);
        }
        let b = Histogram::from_sparse(&a.to_sparse()).expect("parses");
        assert_eq!(b.count(), 4);
        assert_eq!(b.min(), Some(5));
        assert_eq!(b.max(), Some(1_000_000));
        assert_eq!(b.quantile(0.5), a.quantile(0.5));
        assert_eq!(b.mean(), a.mean());
        let empty = Histogram::from_sparse(&Histogram::default().to_sparse()).expect("parses");
        assert_eq!(empty.count(), 0);
        assert!(
            Histogram::from_sparse(&serde_json::json!({"buckets": [[99999999, 1]], "sum": 0}))
                .is_none()
        );
    }

    #[test]
    fn empty_has_no_quantiles() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.5), None);
        assert_eq!(h.max(), None);
        assert_eq!(h.count(), 0);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), Some(50));
        assert_eq!(h.quantile(0.99), Some(99));
        assert_eq!(h.quantile(1.0), Some(100));
        assert_eq!(h.quantile(0.0), Some(1));
        assert_eq!(h.min(), Some(1));
        assert_eq!(h.mean(), Some(50.5));
    }

    #[test]
    fn large_values_within_relative_error() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 10);
        }
        for (q, truth) in [(0.5, 500_000u64), (0.99, 990_000), (0.999, 999_000)] {
            let got = h.quantile(q).unwrap();
            assert!(got >= truth, "q={q}: {got} < {truth}");
            assert!(
                (got - truth) as f64 / truth as f64 <= 1.0 / 64.0,
                "q={q}: {got} vs {truth}"
            );
        }
        assert_eq!(h.quantile(1.0), Some(1_000_000));
    }

    #[test]
    fn buckets_cover_all_of_u64() {
        for v in [
            0,
            1,
            127,
            128,
            129,
            130,
            255,
            256,
            1 << 40,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let i = index_of(v);
            assert!(i < BUCKETS, "{v} -> {i}");
            assert!(upper_bound_of(i) >= v, "{v}: bound {}", upper_bound_of(i));
            if i > 0 {
                assert!(
                    upper_bound_of(i - 1) < v,
                    "{v}: previous bound {}",
                    upper_bound_of(i - 1)
                );
            }
        }
        assert_eq!(upper_bound_of(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn merge_adds_counts_and_keeps_extremes() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(10);
        a.record(20);
        b.record(5);
        b.record(5000);
        a.merge(&b);
        assert_eq!(a.count(), 4);
        assert_eq!(a.min(), Some(5));
        assert_eq!(a.max(), Some(5000));
        assert_eq!(a.quantile(0.5), Some(10));
        // Merging an empty histogram changes nothing.
        a.merge(&Histogram::default());
        assert_eq!(a.count(), 4);
        assert_eq!(a.min(), Some(5));
    }
}
