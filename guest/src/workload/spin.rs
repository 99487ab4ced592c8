//! Workload `spin`: every vCPU busy-loops for `duration_us`, tracking the
//! largest gap between consecutive TSC reads (a host-side preemption or
//! pause shows as a gap) and polling the steal-time `preempted` flag. At the
//! end it writes `steal_ns`, `preempted_seen` and `max_gap_cycles` into its
//! VcpuStatus. The loop is bounded by time, not iterations: guest kernel
//! code may be emulated, ~1000x slower than native.

use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicU32, Ordering};

use abi::Control;

use crate::kernel::arch;
use crate::kernel::pv;
use crate::kernel::shared;

/// vCPUs that finished their spin.
static DONE: AtomicU32 = AtomicU32::new(0);

/// Runs the spin workload on vCPU `index` (every vCPU calls it once).
pub fn run(control: &Control, index: u32) {
    // Registered at boot (where the VMM's probe saw KVM accept it).
    let steal = pv::steal_registered();
    let steal_start = if steal { pv::steal_ns(index) } else { 0 };
    let cycles = control.duration_us.saturating_mul(control.tsc_khz) / 1000;
    let mut prev = arch::rdtsc();
    let end = prev.saturating_add(cycles);
    let mut max_gap = 0u64;
    let mut seen = 0u64;
    // PV `preempted`: watch the next vCPU in ipivirt's PV state.
    let neighbour = (index + 1) % control.nr_vcpus;
    let watch = control.pv_flags & abi::pv::PREEMPTED != 0 && neighbour != index;
    let (mut n_preempted, mut n_resumed, mut was) = (0u64, 0u64, false);
    while prev < end {
        if watch {
            let now_preempted = pv::preempted_sources(neighbour) & pv::SEEN_IPIVIRT != 0;
            n_preempted += u64::from(now_preempted);
            n_resumed += u64::from(was && !now_preempted);
            was = now_preempted;
        }
        let now = arch::rdtsc();
        let gap = now.wrapping_sub(prev);
        if gap > max_gap {
            max_gap = gap;
        }
        if steal && pv::preempted(index) {
            seen += 1;
        }
        prev = now;
    }
    let steal_ns = if steal {
        pv::steal_ns(index).saturating_sub(steal_start)
    } else {
        0
    };
    let status = shared::vcpu(index);
    // SAFETY: this vCPU is the only writer of its own status entry; the
    // VMM reads it after the guest reports Done (ordered by the Release
    // increment below and the BSP's Acquire wait).
    unsafe {
        addr_of_mut!((*status).steal_ns).write_volatile(steal_ns);
        addr_of_mut!((*status).preempted_seen).write_volatile(seen);
        addr_of_mut!((*status).max_gap_cycles).write_volatile(max_gap);
        addr_of_mut!((*status).pv_neighbour_preempted).write_volatile(n_preempted);
        addr_of_mut!((*status).pv_neighbour_resumed).write_volatile(n_resumed);
    }
    DONE.fetch_add(1, Ordering::Release);
}

/// On the BSP: waits until all `nr_vcpus` vCPUs finished their spin.
pub fn wait_all(nr_vcpus: u32) {
    while DONE.load(Ordering::Acquire) < nr_vcpus {
        arch::pause();
    }
}
