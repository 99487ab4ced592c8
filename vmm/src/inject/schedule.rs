//! The injection schedule as pure functions of the seed: when each host
//! CPU is preempted, which vCPU a `pause` hits, and which vCPU threads move
//! where. Nothing here reads a clock or touches a thread, so the same seed
//! gives the same schedule, and the generators are tested directly.

use std::time::Duration;

/// A small, fast, seedable generator (SplitMix64). Not for cryptography.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`, made distinct per `stream` (host CPU, kind).
    pub fn new(seed: u64, stream: u64) -> Self {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// `mean` with uniform jitter of +-50%: uniform in `[mean/2, 3*mean/2)`.
    pub fn jittered(&mut self, mean: Duration) -> Duration {
        let ns = mean.as_nanos().min(u128::from(u64::MAX / 2)) as u64;
        Duration::from_nanos(ns / 2 + self.below(ns.max(1)))
    }
}

/// Stream ids, so that preemption and migration draws never share a stream.
const PREEMPT_STREAM: u64 = 0x5052_4545_0000_0000;
const MIGRATE_STREAM: u64 = 0x4d49_4752_0000_0000;
const HOTPLUG_STREAM: u64 = 0x484f_5450_0000_0000;

/// One planned CPU hotplug cycle: `vcpu` is asked to go offline at `at`
/// and to come back `len` later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedHotplug {
    /// Offset from the start of injection.
    pub at: Duration,
    /// The vCPU (never 0, the boot vCPU).
    pub vcpu: u32,
    /// How long it stays offline.
    pub len: Duration,
}

/// The hotplug cycles of a run, as an endless iterator: start-to-start gaps
/// `every` +-50%, offline lengths `len` +-50%; the vCPU is drawn among
/// those not already offline, never vCPU 0, and at least two vCPUs stay
/// online (a slot where none may go is skipped). Empty below 3 vCPUs.
#[derive(Debug, Clone)]
pub struct HotplugStream {
    rng: Rng,
    every: Duration,
    len: Duration,
    next_at: Duration,
    /// When each vCPU is back online (ZERO: online).
    back_at: Vec<Duration>,
}

impl HotplugStream {
    /// The stream for `vcpus` vCPUs.
    pub fn new(seed: u64, vcpus: u32, every: Duration, len: Duration) -> Self {
        let mut rng = Rng::new(seed, HOTPLUG_STREAM);
        let next_at = rng.jittered(every);
        HotplugStream {
            rng,
            every,
            len,
            next_at,
            back_at: vec![Duration::ZERO; vcpus as usize],
        }
    }
}

impl Iterator for HotplugStream {
    type Item = PlannedHotplug;

    fn next(&mut self) -> Option<PlannedHotplug> {
        let n = self.back_at.len();
        if n < 3 || self.every.is_zero() {
            return None;
        }
        // A slot with no vCPU allowed to go is skipped; some later slot
        // always has one (every offline period ends).
        loop {
            let at = self.next_at;
            self.next_at += self
                .rng
                .jittered(self.every)
                .max(Duration::from_micros(100));
            let offline = self.back_at.iter().filter(|&&b| b > at).count();
            let free: Vec<u32> = (1..n as u32)
                .filter(|&v| self.back_at[v as usize] <= at)
                .collect();
            if free.is_empty() || offline + 2 >= n {
                continue;
            }
            let vcpu = free[self.rng.below(free.len() as u64) as usize];
            let len = self.rng.jittered(self.len).max(Duration::from_micros(100));
            self.back_at[vcpu as usize] = at + len;
            return Some(PlannedHotplug { at, vcpu, len });
        }
    }
}

/// One planned preemption on one host CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedPreempt {
    /// Offset from the start of injection.
    pub at: Duration,
    /// Index of the host CPU in the placement's CPU list.
    pub slot: usize,
    /// The vCPU a `pause` holds (chosen among the vCPUs initially placed on
    /// this host CPU); unused by `antagonist`, which preempts whatever runs.
    pub vcpu: u32,
    /// How long the preemption lasts.
    pub len: Duration,
}

/// The preemptions of one host CPU, as an endless iterator. Start-to-start
/// gaps are `every` +-50%, but never shorter than `len / max_duty`, so the
/// injector never holds the CPU for more than `max_duty` of any gap.
#[derive(Debug, Clone)]
pub struct PreemptStream {
    rng: Rng,
    slot: usize,
    targets: Vec<u32>,
    len: Duration,
    every: Duration,
    min_gap: Duration,
    next_at: Duration,
}

impl PreemptStream {
    /// The stream of host CPU `slot`; `targets` are the vCPUs initially
    /// placed there (may be empty for `antagonist`). `max_duty` is in (0, 1].
    pub fn new(
        seed: u64,
        slot: usize,
        targets: Vec<u32>,
        len: Duration,
        every: Duration,
        max_duty: f64,
    ) -> Self {
        let mut rng = Rng::new(seed, PREEMPT_STREAM | slot as u64);
        let min_gap = len.div_f64(max_duty.clamp(0.01, 1.0));
        let first = rng.jittered(every).max(min_gap);
        PreemptStream {
            rng,
            slot,
            targets,
            len,
            every,
            min_gap,
            next_at: first,
        }
    }
}

impl PreemptStream {
    /// The host CPU slot of this stream.
    pub fn slot(&self) -> usize {
        self.slot
    }
}

impl Iterator for PreemptStream {
    type Item = PlannedPreempt;

    fn next(&mut self) -> Option<PlannedPreempt> {
        let vcpu = if self.targets.is_empty() {
            u32::MAX
        } else {
            self.targets[self.rng.below(self.targets.len() as u64) as usize]
        };
        let ev = PlannedPreempt {
            at: self.next_at,
            slot: self.slot,
            vcpu,
            len: self.len,
        };
        self.next_at += self.rng.jittered(self.every).max(self.min_gap);
        Some(ev)
    }
}

/// One vCPU thread moved from one host CPU to another (slots of the
/// placement's CPU list).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    /// The vCPU whose thread moves.
    pub vcpu: u32,
    /// Slot it leaves.
    pub from: usize,
    /// Slot it goes to.
    pub to: usize,
}

/// One planned migration: a vCPU moves to another host CPU; if that CPU
/// has vCPUs, one of them moves back in exchange (a swap), so the number
/// of vCPUs per host CPU, i.e. the overcommit ratio, never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedMigration {
    /// Offset from the start of injection.
    pub at: Duration,
    /// The first move.
    pub first: Move,
    /// The exchange, if the target CPU had a vCPU.
    pub second: Option<Move>,
}

impl PlannedMigration {
    /// The moves of this migration (one or two).
    pub fn moves(&self) -> impl Iterator<Item = Move> {
        std::iter::once(self.first).chain(self.second)
    }
}

/// The migrations, as an endless iterator over a simulated placement
/// (`placement[v]` = slot of vCPU `v`). Empty with fewer than two host CPUs.
#[derive(Debug, Clone)]
pub struct MigrateStream {
    rng: Rng,
    placement: Vec<usize>,
    slots: usize,
    every: Duration,
    next_at: Duration,
}

impl MigrateStream {
    /// Migrations every `every` (+-50%) starting from `placement` over
    /// `slots` host CPUs.
    pub fn new(seed: u64, placement: Vec<usize>, slots: usize, every: Duration) -> Self {
        let mut rng = Rng::new(seed, MIGRATE_STREAM);
        let first = rng.jittered(every);
        MigrateStream {
            rng,
            placement,
            slots,
            every,
            next_at: first,
        }
    }

    /// The simulated placement after the migrations generated so far.
    pub fn placement(&self) -> &[usize] {
        &self.placement
    }
}

impl Iterator for MigrateStream {
    type Item = PlannedMigration;

    fn next(&mut self) -> Option<PlannedMigration> {
        if self.slots < 2 || self.placement.is_empty() || self.every.is_zero() {
            return None;
        }
        let v = self.rng.below(self.placement.len() as u64) as usize;
        let from = self.placement[v];
        // Any other slot, uniformly.
        let mut to = self.rng.below(self.slots as u64 - 1) as usize;
        if to >= from {
            to += 1;
        }
        let there: Vec<usize> = (0..self.placement.len())
            .filter(|&w| self.placement[w] == to)
            .collect();
        let second = if there.is_empty() {
            None
        } else {
            let w = there[self.rng.below(there.len() as u64) as usize];
            self.placement[w] = from;
            Some(Move {
                vcpu: w as u32,
                from: to,
                to: from,
            })
        };
        self.placement[v] = to;
        let ev = PlannedMigration {
            at: self.next_at,
            first: Move {
                vcpu: v as u32,
                from,
                to,
            },
            second,
        };
        self.next_at += self.rng.jittered(self.every);
        Some(ev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn test_preempt_stream_same_seed_same_schedule() {
        let a: Vec<_> = PreemptStream::new(7, 0, vec![0, 2], 200 * US, 2000 * US, 0.5)
            .take(500)
            .collect();
        let b: Vec<_> = PreemptStream::new(7, 0, vec![0, 2], 200 * US, 2000 * US, 0.5)
            .take(500)
            .collect();
        assert_eq!(a, b);
        let c: Vec<_> = PreemptStream::new(8, 0, vec![0, 2], 200 * US, 2000 * US, 0.5)
            .take(500)
            .collect();
        assert_ne!(a, c);
        let other_cpu: Vec<_> = PreemptStream::new(7, 1, vec![0, 2], 200 * US, 2000 * US, 0.5)
            .take(500)
            .collect();
        assert_ne!(a.iter().map(|e| e.at).collect::<Vec<_>>(), {
            other_cpu.iter().map(|e| e.at).collect::<Vec<_>>()
        });
    }

    #[test]
    fn test_preempt_stream_mean_gap_and_targets() {
        let evs: Vec<_> = PreemptStream::new(1, 3, vec![1, 5], 200 * US, 2000 * US, 0.5)
            .take(10_000)
            .collect();
        let mean = evs.last().unwrap().at.as_secs_f64() / evs.len() as f64;
        assert!((mean - 0.002).abs() < 0.0001, "mean gap {mean}");
        assert!(evs
            .iter()
            .all(|e| e.slot == 3 && (e.vcpu == 1 || e.vcpu == 5)));
        assert!(evs.iter().any(|e| e.vcpu == 1) && evs.iter().any(|e| e.vcpu == 5));
    }

    #[test]
    fn test_preempt_stream_respects_duty_cap() {
        // len 400us every 500us would be 80%; the cap holds it to 50%.
        let evs: Vec<_> = PreemptStream::new(3, 0, vec![], 400 * US, 500 * US, 0.5)
            .take(1000)
            .collect();
        assert!(evs.windows(2).all(|w| w[1].at - w[0].at >= 800 * US));
        assert!(evs[0].at >= 800 * US);
        assert!(evs.iter().all(|e| e.vcpu == u32::MAX));
    }

    #[test]
    fn test_migrate_stream_keeps_ratio_and_is_deterministic() {
        let start = vec![0, 1, 0, 1, 0];
        let mut s = MigrateStream::new(9, start.clone(), 2, 5000 * US);
        let evs: Vec<_> = s.by_ref().take(1000).collect();
        let again: Vec<_> = MigrateStream::new(9, start.clone(), 2, 5000 * US)
            .take(1000)
            .collect();
        assert_eq!(evs, again);
        let count = |p: &[usize], slot| p.iter().filter(|&&x| x == slot).count();
        assert_eq!(count(s.placement(), 0), 3);
        assert_eq!(count(s.placement(), 1), 2);
        // Replaying the moves gives the same placement.
        let mut p = start;
        for m in evs.iter().flat_map(PlannedMigration::moves) {
            assert_eq!(p[m.vcpu as usize], m.from);
            assert_ne!(m.from, m.to);
            p[m.vcpu as usize] = m.to;
        }
        assert_eq!(p, s.placement());
        assert!(evs.windows(2).all(|w| w[1].at > w[0].at));
    }

    #[test]
    fn test_migrate_stream_moves_into_empty_cpu_and_needs_two_cpus() {
        let mut s = MigrateStream::new(1, vec![0], 3, 10 * US);
        let e = s.next().unwrap();
        assert_eq!(e.second, None);
        assert_ne!(e.first.to, 0);
        assert!(MigrateStream::new(1, vec![0, 0], 1, 10 * US)
            .next()
            .is_none());
        assert!(MigrateStream::new(1, vec![0, 1], 2, Duration::ZERO)
            .next()
            .is_none());
    }

    #[test]
    fn test_hotplug_stream_rules() {
        let cycles: Vec<_> =
            HotplugStream::new(7, 4, Duration::from_millis(20), Duration::from_millis(30))
                .take(200)
                .collect();
        assert_eq!(cycles.len(), 200);
        for (i, c) in cycles.iter().enumerate() {
            assert!(c.vcpu >= 1 && c.vcpu < 4, "never the boot vCPU: {c:?}");
            // At most 2 of 4 offline at once (two stay online).
            let overlapping = cycles[..i].iter().filter(|p| p.at + p.len > c.at).count();
            assert!(overlapping < 2, "{c:?} with {overlapping} offline");
            assert!(cycles[..i]
                .iter()
                .all(|p| p.vcpu != c.vcpu || p.at + p.len <= c.at));
        }
        let again: Vec<_> =
            HotplugStream::new(7, 4, Duration::from_millis(20), Duration::from_millis(30))
                .take(200)
                .collect();
        assert_eq!(cycles, again, "seeded");
        assert_eq!(
            HotplugStream::new(7, 2, Duration::from_millis(1), Duration::from_millis(1)).next(),
            None
        );
    }
}
