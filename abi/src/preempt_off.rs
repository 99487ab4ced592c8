//! What the guest's preempt-off tracer reports per design phase
//! ([`PreemptOffResults`]) and the probe-lateness split ([`ProbeSplit`]).
//!
//! The tracer measures, on every vCPU, each section in which the running
//! code could not be preempted (preemption count above zero, or interrupts
//! off), keeps the longest one of every window (`Control::preempt_window_us`)
//! and reports per CPU the median, P99 and maximum of those window maxima:
//! the series' own figure ("the longest preemption-disabled section per
//! window, per CPU"). Beside it, where KVM's steal time is registered, the
//! same figures with each section shortened by the steal time accrued
//! while it was open (the host not running the vCPU): what the guest's
//! code held, apart from what the host took. Values are TSC cycles.

use core::mem::size_of;

use crate::{Histogram, Pod, MAX_VCPUS};

/// What the longest section of a window is attributed to: the part of the
/// code that held the CPU longest inside it (index of
/// [`PreemptOffResults::causes`]).
pub mod cause {
    /// Anything not tagged below (interrupt handlers, locks, the workload).
    pub const OTHER: usize = 0;
    /// The scheduler (`schedule()`, a task switch).
    pub const SCHED: usize = 1;
    /// A cross call's send phase: queueing csds and sending the IPIs.
    pub const SEND: usize = 2;
    /// Spinning in `csd_lock()` on a csd still in use.
    pub const CSD_LOCK: usize = 3;
    /// A pinned `csd_lock_wait()` (upstream's wait, and every design's
    /// fallback to it).
    pub const CSD_LOCK_WAIT: usize = 4;
    /// The `pin-preempt` test hook's section.
    pub const TEST_HOOK: usize = 5;
    /// Number of causes.
    pub const COUNT: usize = 6;
    /// Report names, by index.
    pub const NAMES: [&str; COUNT] = [
        "other",
        "sched",
        "send",
        "csd_lock",
        "csd_lock_wait",
        "test_hook",
    ];
}

/// The window maxima of one vCPU in one phase (TSC cycles).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PreemptOffCpu {
    /// Whole windows seen inside the phase.
    pub windows: u64,
    /// Median of the window maxima.
    pub p50: u64,
    /// 99th percentile of the window maxima.
    pub p99: u64,
    /// Longest section.
    pub max: u64,
}

/// The windows whose longest section had one cause.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PreemptOffCause {
    /// Windows whose longest section was attributed to this cause.
    pub windows: u64,
    /// The longest of those sections (TSC cycles).
    pub max: u64,
}

/// One design phase's preempt-off figures.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PreemptOffResults {
    /// Non-zero: the tracer ran (it is off only for the hidden measurement
    /// of its own cost).
    pub enabled: u32,
    /// 1: the tracer also measured every section without the host's steal
    /// time (KVM's steal-time area was registered on every vCPU), and the
    /// `*_excl_steal` figures hold it; 0: they are all zero, unmeasured.
    pub steal_tracked: u32,
    /// The window length (TSC cycles).
    pub window_cycles: u64,
    /// Sections that ended during the phase, all vCPUs.
    pub sections: u64,
    /// Sections the tracer found open where none could be (an end it
    /// missed); they are dropped, not measured. 0 in a correct kernel.
    pub unmatched: u64,
    /// All vCPUs' window maxima.
    pub window_max: Histogram,
    /// Index: [`cause`].
    pub causes: [PreemptOffCause; cause::COUNT],
    /// Per vCPU (the first `nr_vcpus` entries).
    pub per_cpu: [PreemptOffCpu; MAX_VCPUS],
    /// All vCPUs' window maxima of the sections less the steal time KVM
    /// accrued while each was open (same windows as `window_max`).
    pub window_max_excl_steal: Histogram,
    /// Per vCPU, as `per_cpu` but less the steal time (each entry at
    /// most its `per_cpu` twin).
    pub per_cpu_excl_steal: [PreemptOffCpu; MAX_VCPUS],
}

/// The probe's lateness split at the timer interrupt (TSC cycles).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ProbeSplit {
    /// From the probe's due time to the timer interrupt that woke it
    /// (host delay, interrupts off on that vCPU, the platform).
    pub arrival: Histogram,
    /// From that interrupt to the probe running (the guest: pinned
    /// sections and the scheduler).
    pub dispatch: Histogram,
}

// SAFETY: repr(C) of u64 fields: no padding.
unsafe impl Pod for PreemptOffCpu {}
// SAFETY: as above.
unsafe impl Pod for PreemptOffCause {}
// SAFETY: repr(C): two u32, three u64, two Pod histograms and Pod arrays
// of u64-only structs; the size assert pins the layout without padding.
unsafe impl Pod for PreemptOffResults {}
// SAFETY: two Pod histograms, no padding.
unsafe impl Pod for ProbeSplit {}

const _: () = assert!(
    size_of::<PreemptOffResults>()
        == 8 + 3 * 8
            + size_of::<Histogram>()
            + cause::COUNT * 16
            + 2 * MAX_VCPUS * size_of::<PreemptOffCpu>()
            + size_of::<Histogram>()
);
const _: () = assert!(size_of::<ProbeSplit>() == 2 * size_of::<Histogram>());

impl PreemptOffCpu {
    /// The summary of one vCPU's window maxima.
    pub fn from_histogram(h: &Histogram) -> Self {
        if h.count == 0 {
            return PreemptOffCpu::default();
        }
        PreemptOffCpu {
            windows: h.count,
            p50: h.quantile_ppm(500_000),
            p99: h.quantile_ppm(990_000),
            max: h.max,
        }
    }

    /// Whether the summary is ordered (p50 <= p99 <= max); an entry with no
    /// windows must be all zero.
    pub fn is_consistent(&self) -> bool {
        if self.windows == 0 {
            *self == PreemptOffCpu::default()
        } else {
            self.p50 <= self.p99 && self.p99 <= self.max
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_cpu_summary_of_window_maxima() {
        let mut h = Histogram::new();
        assert_eq!(PreemptOffCpu::from_histogram(&h), PreemptOffCpu::default());
        for v in [100u64, 200, 300, 10_000] {
            h.record(v);
        }
        let s = PreemptOffCpu::from_histogram(&h);
        assert_eq!((s.windows, s.max), (4, 10_000));
        assert!(s.is_consistent() && s.p50 >= 200 && s.p50 <= 212);
        let bad = PreemptOffCpu {
            windows: 0,
            max: 5,
            ..s
        };
        assert!(!bad.is_consistent());
        assert_eq!(cause::NAMES.len(), cause::COUNT);
    }
}
