//! A log-linear latency histogram the guest fills (one per vCPU and
//! measure) and the VMM merges. Values are TSC cycles. Below 16 each value
//! has its own bucket; above, every power of two is split into 128 buckets,
//! so a bucket's width is at most 1/128 (0.78%) of its values: a percentile
//! read from the buckets is within 1% of the true one, which is what a
//! quoted figure of 3 significant figures needs. (At 16 sub-buckets, a
//! 6.25% bucket moved a p99 by more than the effects being measured.)
//! Integer-only: the guest is built without SSE, so no floating point here.

use crate::FieldError;

/// Linear sub-buckets per power of two (as bits).
pub const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Largest power of two tracked: values of 2^MAX_BITS cycles and more
/// (minutes) land in the last bucket.
pub const MAX_BITS: u32 = 40;
/// Number of buckets.
pub const BUCKETS: usize = (SUB + (MAX_BITS - SUB_BITS) as u64 * SUB) as usize;

/// Counts of values per bucket plus exact count, min, max and sum.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Histogram {
    /// Values recorded.
    pub count: u64,
    /// Sum of the values (wrapping).
    pub sum: u64,
    /// Smallest value (u64::MAX when empty).
    pub min: u64,
    /// Largest value (0 when empty).
    pub max: u64,
    /// Per-bucket counts.
    pub buckets: [u32; BUCKETS],
}

// SAFETY: repr(C), u64 fields then a u32 array of even length: no padding.
unsafe impl crate::Pod for Histogram {}

/// The bucket `value` falls in.
pub const fn bucket_of(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let top = 63 - value.leading_zeros(); // >= SUB_BITS
    if top >= MAX_BITS {
        return BUCKETS - 1;
    }
    let shift = top - SUB_BITS;
    let mantissa = (value >> shift) - SUB; // 0..SUB
    (SUB + shift as u64 * SUB + mantissa) as usize
}

/// Smallest value of bucket `i`.
pub const fn bucket_low(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let shift = (i - SUB) / SUB;
    let mantissa = (i - SUB) % SUB;
    (SUB + mantissa) << shift
}

/// Largest value of bucket `i` (the last bucket is open-ended).
pub const fn bucket_high(i: usize) -> u64 {
    if i + 1 >= BUCKETS {
        u64::MAX
    } else {
        bucket_low(i + 1) - 1
    }
}

impl Histogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Histogram {
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
            buckets: [0; BUCKETS],
        }
    }

    /// Empties the histogram in place. Prefer it to `*h = Histogram::new()`
    /// in the guest: the histogram is 17 KiB, and the assignment may build
    /// the temporary on a 16 KiB kernel stack.
    pub fn clear(&mut self) {
        let used = self.used();
        for b in &mut self.buckets[used] {
            *b = 0;
        }
        self.count = 0;
        self.sum = 0;
        self.min = u64::MAX;
        self.max = 0;
    }

    /// The buckets that can be non-zero: those from `min`'s to `max`'s
    /// when the histogram is consistent (as [`Histogram::record`] keeps
    /// it), else all. With 4352 buckets, merging or clearing only these is
    /// what keeps a guest whose kernel code is emulated (thousands of
    /// cycles per loop iteration) from spending seconds per phase there.
    fn used(&self) -> core::ops::Range<usize> {
        if self.count == 0 && self.min == u64::MAX && self.max == 0 {
            // Empty as new() or clear() leave it: no bucket is set.
            0..0
        } else if self.count > 0 && self.min <= self.max {
            bucket_of(self.min)..bucket_of(self.max) + 1
        } else {
            0..BUCKETS
        }
    }

    /// Records one value.
    pub fn record(&mut self, value: u64) {
        let b = &mut self.buckets[bucket_of(value)];
        *b = b.saturating_add(1);
        self.count += 1;
        self.sum = self.sum.wrapping_add(value);
        if value < self.min {
            self.min = value;
        }
        if value > self.max {
            self.max = value;
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        let used = other.used();
        for (a, b) in self.buckets[used.clone()]
            .iter_mut()
            .zip(other.buckets[used].iter())
        {
            *a = a.saturating_add(*b);
        }
        self.count += other.count;
        self.sum = self.sum.wrapping_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `ppm` (parts per million: 500_000 is the
    /// median, 999_000 is p99.9): the upper end of the bucket holding that
    /// rank, clamped to the exact min and max. 0 when empty.
    pub fn quantile_ppm(&self, ppm: u32) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let ppm = u64::from(ppm.min(1_000_000));
        // The rank (1-based) of the value we want, rounded up.
        let rank = ((self.count as u128 * ppm as u128).div_ceil(1_000_000) as u64).max(1);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return bucket_high(i).clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// Checks what a guest wrote: counts add up, min/max consistent.
    pub fn validate(&self, field: &'static str) -> Result<(), FieldError> {
        let total: u64 = self.buckets.iter().map(|&b| u64::from(b)).sum();
        if total != self.count {
            return Err(FieldError {
                field,
                found: total,
                expected: "bucket counts summing to count",
            });
        }
        if self.count > 0 {
            if self.min > self.max {
                return Err(FieldError {
                    field,
                    found: self.min,
                    expected: "min <= max",
                });
            }
            if bucket_of(self.max) < bucket_of(self.min) || self.buckets[bucket_of(self.max)] == 0 {
                return Err(FieldError {
                    field,
                    found: self.max,
                    expected: "max inside a non-empty bucket",
                });
            }
            let (lo, hi) = (bucket_of(self.min), bucket_of(self.max));
            if let Some(i) = (0..BUCKETS).find(|&i| (i < lo || i > hi) && self.buckets[i] != 0) {
                return Err(FieldError {
                    field,
                    found: i as u64,
                    expected: "no value outside the buckets of min..=max",
                });
            }
        }
        Ok(())
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_hist_buckets_are_contiguous_and_tight() {
        for i in 0..BUCKETS - 1 {
            assert_eq!(bucket_of(bucket_low(i)), i, "low of {i}");
            assert_eq!(bucket_of(bucket_high(i)), i, "high of {i}");
            let (lo, hi) = (bucket_low(i), bucket_high(i));
            // Every value v of the bucket is within 1% of the bucket's
            // upper end (what a percentile reports): (hi - v) / v <= 1%.
            assert!(
                i < SUB as usize || (hi - lo + 1) * 100 <= lo,
                "bucket {i} [{lo}, {hi}] wider than 1%"
            );
            assert!((hi - lo) * 100 <= lo.max(100), "bucket {i} [{lo}, {hi}]");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(bucket_of(1 << MAX_BITS), BUCKETS - 1);
    }

    #[test]
    fn test_hist_percentile_within_one_percent() {
        // Whatever the values, the reported percentile is at most 1% above
        // the true one (the rank's own value) and never below it.
        let mut h = Histogram::new();
        let mut values: Vec<u64> = (0..10_000u64)
            .map(|i| 100 + i.wrapping_mul(2_654_435_761) % 50_000_000)
            .collect();
        for &v in &values {
            h.record(v);
        }
        values.sort_unstable();
        for ppm in [500_000u32, 900_000, 990_000, 999_000] {
            let rank = (values.len() as u64 * u64::from(ppm)).div_ceil(1_000_000) as usize;
            let truth = values[rank - 1];
            let got = h.quantile_ppm(ppm);
            assert!(got >= truth, "{ppm}: {got} < {truth}");
            assert!((got - truth) * 100 <= truth, "{ppm}: {got} vs {truth}");
        }
        let mut c = h;
        c.clear();
        assert_eq!((c.count, c.sum, c.max), (0, 0, 0));
        assert!(c.buckets.iter().all(|&b| b == 0) && c.min == u64::MAX);
        // Merging copies every count (only the used buckets are visited).
        let mut m = Histogram::new();
        m.merge(&h);
        m.merge(&h);
        assert_eq!(m.count, 2 * h.count);
        assert!(m.validate("m").is_ok());
        assert!(m
            .buckets
            .iter()
            .zip(h.buckets.iter())
            .all(|(a, b)| *a == 2 * *b));
        // A zeroed (never initialised) histogram clears whole.
        let mut z = Histogram::new();
        z.min = 0;
        z.buckets[7] = 3;
        z.clear();
        assert!(z.buckets.iter().all(|&b| b == 0));
    }

    #[test]
    fn test_hist_quantiles() {
        let mut h = Histogram::new();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count, 1000);
        let p50 = h.quantile_ppm(500_000);
        assert!((500_000..=505_000).contains(&p50), "{p50}");
        let p99 = h.quantile_ppm(990_000);
        assert!((990_000..=1_000_000).contains(&p99), "{p99}");
        assert_eq!(h.quantile_ppm(1_000_000), 1_000_000);
        assert!((1000..=1008).contains(&h.quantile_ppm(0)));
        assert!(h.validate("h").is_ok());
    }

    #[test]
    fn test_hist_merge_and_empty() {
        let mut a = Histogram::new();
        assert_eq!(a.quantile_ppm(500_000), 0);
        let mut b = Histogram::new();
        b.record(5);
        b.record(7_000_000);
        a.merge(&b);
        a.merge(&Histogram::new());
        assert_eq!((a.count, a.min, a.max), (2, 5, 7_000_000));
        assert!(a.validate("a").is_ok());
    }

    #[test]
    fn test_hist_validate_rejects_garbage() {
        let mut h = Histogram::new();
        h.record(100);
        h.count = 3;
        assert_eq!(h.validate("probe").unwrap_err().field, "probe");
        let mut h = Histogram::new();
        h.record(100);
        h.max = 1 << 30;
        assert!(h.validate("probe").is_err());
        let mut h = Histogram::new();
        h.record(100);
        h.record(200);
        h.buckets[bucket_of(5000)] += 1;
        h.count += 1;
        assert_eq!(
            h.validate("probe").unwrap_err().found,
            bucket_of(5000) as u64
        );
    }
}
