//! The latency probe: a high-class kernel task pinned to each vCPU that
//! wakes every period and records how late it runs. It is the bystander's
//! view of what pinned waits and host delays cost other tasks. Its
//! lateness is also split at the timer interrupt that woke it: arrival (due
//! to the interrupt: the host and the platform, or interrupts off on that
//! vCPU) and dispatch (the interrupt to the probe running: what the guest's
//! pinned sections and scheduler cost).
//!
//! The probe also carries the `pin-preempt` test hook: on the hooked vCPU
//! it disables preemption once for a known time, a section the preempt-off
//! tracer must report.

use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use abi::preempt_off::cause;
use abi::{layout, Control, TestHook, VcpuResults};

use crate::kernel::console::println;
use crate::kernel::fmt::Dec;
use crate::kernel::{arch, sched, trace};

use super::END_TSC;

/// The probe period in TSC cycles (set by the calibration).
pub static PERIOD: AtomicU64 = AtomicU64::new(0);

/// The `pin-preempt` hook: the vCPU, when (TSC) and for how long (cycles).
static PIN_CPU: AtomicU32 = AtomicU32::new(u32::MAX);
static PIN_AT: AtomicU64 = AtomicU64::new(u64::MAX);
static PIN_CYCLES: AtomicU64 = AtomicU64::new(0);
/// Set once the hook's section ran (it runs once per run).
static PINNED: AtomicBool = AtomicBool::new(false);

/// Arms the `pin-preempt` hook for the phase running from `start` to `end`
/// (TSC), if the control block asks for it and it has not run yet: a third
/// into the phase, so that the section ends inside a whole window.
pub fn arm_pin(control: &Control, start: u64, end: u64) {
    if control.test_hook != TestHook::PinPreempt as u32 || PINNED.load(Ordering::Relaxed) {
        return;
    }
    let cycles_per_us = sched::PARAMS.cycles_per_us.load(Ordering::Relaxed);
    PIN_CYCLES.store(
        u64::from(control.pin_preempt_us()) * cycles_per_us,
        Ordering::Relaxed,
    );
    PIN_CPU.store(control.test_hook_vcpu, Ordering::Relaxed);
    PIN_AT.store(start + (end - start) / 3, Ordering::Release);
}

/// The hook's section: preemption off, tagged, for PIN_CYCLES.
fn maybe_pin(cpu: usize, now: u64) {
    if cpu as u32 != PIN_CPU.load(Ordering::Relaxed)
        || now < PIN_AT.load(Ordering::Acquire)
        || PINNED.swap(true, Ordering::Relaxed)
    {
        return;
    }
    let cycles = PIN_CYCLES.load(Ordering::Relaxed);
    sched::preempt_disable();
    let t0 = arch::rdtsc();
    let tag = trace::cause(cause::TEST_HOOK);
    while arch::rdtsc().wrapping_sub(t0) < cycles {
        arch::pause();
    }
    trace::cause(tag);
    let pinned = arch::rdtsc() - t0;
    sched::preempt_enable();
    // The section as the hook itself measured it (longer than asked when
    // the host held the vCPU as the spin ended): the test compares the
    // tracer's figure with this.
    println!(
        "pin-preempt: vCPU {} pinned for {} cycles",
        Dec(cpu as u64),
        Dec(pinned)
    );
}

/// The probe task of vCPU `cpu`: runs until the workload's end.
pub fn task(cpu: usize) {
    let period = PERIOD.load(Ordering::Relaxed);
    let slot = layout::vcpu_results_addr(cpu as u32) as *mut VcpuResults;
    // SAFETY: only this vCPU's probe writes its histograms; the VMM reads
    // them after Done, the BSP between phases.
    let (hist, split) = unsafe {
        (
            &mut *addr_of_mut!((*slot).probe),
            &mut *addr_of_mut!((*slot).probe_split),
        )
    };
    let mut due = arch::rdtsc() + period;
    // The end may move once (when a design phase's clock starts): re-read it.
    while due < END_TSC.load(Ordering::Relaxed) {
        let woken = sched::sleep_until_woken(due);
        let now = arch::rdtsc();
        hist.record(now.saturating_sub(due));
        if woken != 0 {
            split.arrival.record(woken.saturating_sub(due));
            split.dispatch.record(now.saturating_sub(woken));
        }
        maybe_pin(cpu, now);
        due += period;
        while due <= now {
            due += period; // missed periods are not recorded twice
        }
    }
}
