//! The latency probe: a high-class kernel task pinned to each vCPU that
//! wakes every period and records how late it runs. It is the bystander's
//! view of what pinned waits and host delays cost other tasks.

use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicU64, Ordering};

use abi::{layout, VcpuResults};

use crate::kernel::arch;
use crate::kernel::sched;

use super::END_TSC;

/// The probe period in TSC cycles (set by the calibration).
pub static PERIOD: AtomicU64 = AtomicU64::new(0);

/// The probe task of vCPU `cpu`: runs until the workload's end.
pub fn task(cpu: usize) {
    let period = PERIOD.load(Ordering::Relaxed);
    let slot = layout::vcpu_results_addr(cpu as u32) as *mut VcpuResults;
    // SAFETY: only this vCPU's probe writes its histogram; the VMM reads it
    // after Done.
    let hist = unsafe { &mut *addr_of_mut!((*slot).probe) };
    let mut due = arch::rdtsc() + period;
    // The end may move once (when a design phase's clock starts): re-read it.
    while due < END_TSC.load(Ordering::Relaxed) {
        sched::sleep_until(due);
        let now = arch::rdtsc();
        hist.record(now.saturating_sub(due));
        due += period;
        while due <= now {
            due += period; // missed periods are not recorded twice
        }
    }
}
