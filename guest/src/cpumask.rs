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
