//! CPU masks sized for the booted vCPU count (`nr_cpu_ids`): words of 64
//! bits, so a mask of at most 64 CPUs fits one pointer-sized word and a
//! larger one does not (the boundary the series' task-local mask stashes
//! itself on).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use abi::MAX_VCPUS;

/// Words of the largest mask.
pub const MAX_WORDS: usize = MAX_VCPUS / 64;

static NR_CPU_IDS: AtomicU32 = AtomicU32::new(1);

/// Sets `nr_cpu_ids` (BSP, at boot).
pub fn set_nr_cpu_ids(n: u32) {
    NR_CPU_IDS.store(n, Ordering::Relaxed);
}

/// Number of CPUs.
pub fn nr_cpu_ids() -> u32 {
    NR_CPU_IDS.load(Ordering::Relaxed)
}

/// Words a mask needs for `nr_cpu_ids` CPUs.
pub fn nr_words() -> usize {
    (nr_cpu_ids() as usize).div_ceil(64)
}

/// Linux's `cpumask_size()`: bytes of a mask for `nr_cpu_ids` CPUs.
pub fn cpumask_size() -> usize {
    nr_words() * 8
}

/// A mask with room for every CPU (on the stack or in a struct).
#[derive(Clone, Copy)]
pub struct CpuMask {
    /// Bit `c % 64` of word `c / 64` is CPU `c`.
    pub words: [u64; MAX_WORDS],
}

impl CpuMask {
    /// The empty mask.
    pub const fn new() -> Self {
        CpuMask {
            words: [0; MAX_WORDS],
        }
    }

    /// Adds CPU `c`.
    pub fn set(&mut self, c: u32) {
        self.words[c as usize / 64] |= 1 << (c % 64);
    }

    /// Removes CPU `c`.
    pub fn clear(&mut self, c: u32) {
        self.words[c as usize / 64] &= !(1 << (c % 64));
    }

    /// Whether CPU `c` is in the mask.
    pub fn test(&self, c: u32) -> bool {
        self.words[c as usize / 64] & (1 << (c % 64)) != 0
    }

    /// Number of CPUs in the mask.
    pub fn weight(&self) -> u32 {
        self.words[..nr_words()]
            .iter()
            .map(|w| w.count_ones())
            .sum()
    }
}

impl Default for CpuMask {
    fn default() -> Self {
        Self::new()
    }
}

/// A mask other CPUs may read while its owner writes it (the per-CPU
/// `cfd->cpumask`): words are atomics, accessed relaxed.
pub struct SharedMask {
    words: [AtomicU64; MAX_WORDS],
}

impl SharedMask {
    /// The empty mask.
    pub const fn new() -> Self {
        SharedMask {
            words: [const { AtomicU64::new(0) }; MAX_WORDS],
        }
    }

    /// Replaces the content with `m` (owner only).
    pub fn store(&self, m: &CpuMask) {
        for (w, v) in self.words[..nr_words()].iter().zip(m.words.iter()) {
            w.store(*v, Ordering::Relaxed);
        }
    }

    /// Removes CPU `c` (owner only).
    pub fn clear_cpu(&self, c: u32) {
        let w = &self.words[c as usize / 64];
        w.store(
            w.load(Ordering::Relaxed) & !(1 << (c % 64)),
            Ordering::Relaxed,
        );
    }

    /// Word `i` as it is now.
    pub fn word(&self, i: usize) -> u64 {
        self.words[i].load(Ordering::Relaxed)
    }
}

impl Default for SharedMask {
    fn default() -> Self {
        Self::new()
    }
}

/// Calls `f` for each CPU set in `words` (word by word, so a mask that
/// changes under the caller is read as it is when each word is reached).
pub fn for_each_cpu(nwords: usize, word: impl Fn(usize) -> u64, mut f: impl FnMut(u32)) {
    for i in 0..nwords {
        let mut w = word(i);
        while w != 0 {
            let bit = w.trailing_zeros();
            w &= w - 1;
            let cpu = i as u32 * 64 + bit;
            if cpu < nr_cpu_ids() {
                f(cpu);
            }
        }
    }
}

/// `cpumask_next()` over a mask given word by word: the first CPU >= `from`
/// that is set, reading each word when it is reached (as Linux's
/// for_each_cpu() does at every step, so a mask that changes under the
/// reader is seen as it is now). `None` past `nr_cpu_ids`.
pub fn next_cpu(word: impl Fn(usize) -> u64, from: u32) -> Option<u32> {
    let nr = nr_cpu_ids();
    if from >= nr {
        return None;
    }
    let mut i = from as usize / 64;
    let mut w = word(i) & (u64::MAX << (from % 64));
    loop {
        if w != 0 {
            let c = i as u32 * 64 + w.trailing_zeros();
            return (c < nr).then_some(c);
        }
        i += 1;
        if i >= nr_words() {
            return None;
        }
        w = word(i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::with_cpus;

    #[test]
    fn one_word_up_to_64_cpus_then_more() {
        for (n, words, bytes) in [(1, 1, 8), (64, 1, 8), (65, 2, 16), (1024, 16, 128)] {
            with_cpus(n, || {
                assert_eq!(nr_words(), words, "{n} CPUs");
                assert_eq!(cpumask_size(), bytes, "{n} CPUs");
            });
        }
    }

    #[test]
    fn set_clear_test_weight() {
        with_cpus(130, || {
            let mut m = CpuMask::new();
            for c in [0, 63, 64, 129] {
                m.set(c);
            }
            assert!(m.test(64) && m.test(129) && !m.test(1));
            assert_eq!(m.weight(), 4);
            m.clear(63);
            assert_eq!(m.weight(), 3);
        });
    }

    #[test]
    fn weight_ignores_words_past_nr_cpu_ids() {
        with_cpus(64, || {
            let mut m = CpuMask::new();
            m.words[1] = u64::MAX; // beyond nr_words()
            m.set(3);
            assert_eq!(m.weight(), 1);
        });
    }

    #[test]
    fn for_each_cpu_visits_set_cpus_below_nr_in_order() {
        with_cpus(70, || {
            let mut seen = Vec::new();
            let words = [1u64 << 5 | 1 << 63, u64::MAX];
            for_each_cpu(2, |i| words[i], |c| seen.push(c));
            assert_eq!(seen, [5, 63, 64, 65, 66, 67, 68, 69]);
        });
    }

    #[test]
    fn next_cpu_walks_words_and_stops_at_nr() {
        with_cpus(130, || {
            let words = [1u64 << 2, 0, 1 << 1 | 1 << 5];
            let w = |i: usize| words[i];
            assert_eq!(next_cpu(w, 0), Some(2));
            assert_eq!(next_cpu(w, 3), Some(129));
            assert_eq!(next_cpu(w, 130), None);
            let full = |_| u64::MAX;
            assert_eq!(next_cpu(full, 129), Some(129));
        });
    }

    #[test]
    fn next_cpu_at_exactly_1024_cpus_stays_in_bounds() {
        with_cpus(1024, || {
            let words = [0u64; MAX_WORDS];
            // Reads only words 0..16: an index past MAX_WORDS would panic.
            assert_eq!(next_cpu(|i| words[i], 1000), None);
            assert_eq!(next_cpu(|i| words[i], 1024), None);
        });
    }

    #[test]
    fn shared_mask_store_and_clear() {
        with_cpus(128, || {
            let s = SharedMask::new();
            let mut m = CpuMask::new();
            m.set(1);
            m.set(100);
            s.store(&m);
            assert_eq!(s.word(1), 1 << 36);
            s.clear_cpu(100);
            assert_eq!(s.word(1), 0);
            assert_eq!(s.word(0), 2);
        });
    }
}
