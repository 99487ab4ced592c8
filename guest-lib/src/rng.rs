//! Pseudo-random numbers for the guest: cheap, seeded, reproducible. One
//! copy of each generator (they were written out in four places), and the
//! probability and weighted-draw helpers the scheduler, the designs and the
//! workloads share.

/// One step of Marsaglia's xorshift64 (13, 7, 17): the workloads' per-task
/// generators. `x` must be non-zero (the sequence never leaves 0).
#[inline]
pub fn xorshift64(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^ (x << 17)
}

/// A per-CPU xorshift64* generator (Vigna): the state advances by
/// xorshift (12, 25, 27) and the output is multiplied, which fixes
/// xorshift's weak low bits (the probability tests use the low 16).
#[derive(Clone, Copy, Debug)]
pub struct XorShift64Star(u64);

impl XorShift64Star {
    /// A generator in state `seed | 1` (never the absorbing 0).
    pub const fn new(seed: u64) -> Self {
        XorShift64Star(seed | 1)
    }

    /// A generator resumed from a [`state`](Self::state) kept elsewhere.
    pub const fn from_state(state: u64) -> Self {
        XorShift64Star(state)
    }

    /// The raw state (to keep it in a `Cell`).
    pub const fn state(self) -> u64 {
        self.0
    }

    /// The next output.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The seed of CPU `cpu`'s generator for scenario seed `seed`: distinct per
/// CPU, reproducible per seed.
pub const fn cpu_seed(seed: u64, cpu: u32) -> u64 {
    (seed ^ 0x9e37_79b9_7f4a_7c15).wrapping_add((cpu as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9))
        | 1
}

/// A probability in units of 1/65536, as the control block carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prob16(pub u32);

impl Prob16 {
    /// Whether a draw `r` (any u64 of a uniform generator) hits: its low 16
    /// bits fall below the probability. 0 never hits, 65536 always does.
    #[inline]
    pub fn hits(self, r: u64) -> bool {
        (r & 0xffff) < u64::from(self.0)
    }
}

/// Index drawn from `weights` by `r`: index `i` with probability
/// `weights[i] / sum`; all zero (or empty sum) means uniform.
pub fn weighted_pick(weights: &[u64], r: u64) -> usize {
    let n = weights.len().max(1);
    let total: u64 = weights.iter().sum();
    if total == 0 {
        return (r % n as u64) as usize;
    }
    let mut x = r % total;
    for (i, &w) in weights.iter().enumerate() {
        if x < w {
            return i;
        }
        x -= w;
    }
    n - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift64_matches_the_reference_sequence() {
        // 1 -> 8193 (<<13) -> 8257 (>>7) -> 8257 * 131073 (<<17, no overlap).
        assert_eq!(xorshift64(1), 1_082_269_761);
        assert_ne!(xorshift64(xorshift64(1)), xorshift64(1));
    }

    #[test]
    fn xorshift64_star_never_sticks_at_zero_and_is_seeded() {
        let mut g = XorShift64Star::new(0);
        let first: Vec<u64> = (0..4).map(|_| g.next_u64()).collect();
        assert!(first.iter().all(|&x| x != 0));
        let mut h = XorShift64Star::new(0);
        assert_eq!(first, (0..4).map(|_| h.next_u64()).collect::<Vec<_>>());
        let mut other = XorShift64Star::new(cpu_seed(7, 1));
        assert_ne!(first[0], other.next_u64());
    }

    #[test]
    fn cpu_seeds_differ_per_cpu_and_are_odd() {
        let s: Vec<u64> = (0..64).map(|c| cpu_seed(42, c)).collect();
        for (i, a) in s.iter().enumerate() {
            assert_eq!(a & 1, 1);
            assert!(s[i + 1..].iter().all(|b| b != a));
        }
    }

    #[test]
    fn prob16_bounds_and_rate() {
        assert!(!Prob16(0).hits(0));
        assert!(Prob16(65536).hits(u64::MAX));
        let mut g = XorShift64Star::new(3);
        let hits = (0..100_000)
            .filter(|_| Prob16(16384).hits(g.next_u64()))
            .count();
        assert!(
            (23_000..27_000).contains(&hits),
            "{hits} hits of 100000 at 1/4"
        );
    }

    #[test]
    fn weighted_pick_follows_the_weights() {
        assert_eq!(weighted_pick(&[0, 0, 5, 0], 12345), 2);
        assert_eq!(weighted_pick(&[0, 0, 0], 7), 1); // uniform: 7 % 3
        let mut g = XorShift64Star::new(9);
        let mut n = [0u32; 3];
        for _ in 0..30_000 {
            n[weighted_pick(&[1, 2, 0], g.next_u64())] += 1;
        }
        assert_eq!(n[2], 0);
        assert!((9_000..11_000).contains(&n[0]), "{n:?}");
    }
}
