//! What the cross-call workloads share: the checked call (the checker's
//! bracket around one cross call, with interrupts on), the latency record,
//! the callback every call runs, the user tasks' think time and their
//! system calls.

use core::ptr::addr_of_mut;

use abi::{layout, VcpuResults};
use guest_lib::cpumask::CpuMask;

use core::sync::atomic::Ordering;

use super::checker;
use crate::kernel::{arch, percpu};
use crate::xcall::{self, TargetOffline};

/// The callback of the shootdown and ping calls: tell the checker it ran
/// here (a TLB flush would go here; the guest runs on a fixed identity map).
pub fn flush_callback(token: usize) {
    checker::on_callback(token);
}

/// Records a call's latency on the CPU the caller returned on.
pub fn record_latency(cycles: u64) {
    let irq = arch::irq_save();
    let r = layout::vcpu_results_addr(percpu::cpu_id()) as *mut VcpuResults;
    // SAFETY: this CPU's results slot; with interrupts off no other task
    // on this CPU can record at the same time, and only this CPU's tasks
    // record into it during a phase.
    unsafe { (*addr_of_mut!((*r).calls)).record(cycles) };
    arch::irq_restore(irq);
}

/// Runs a cross call with interrupts on (a waiter must service incoming
/// calls), bracketed by the checker; returns the checker's token. `call`
/// returns the targets the call left out because they were offline.
/// System-call context: interrupts off on entry and on return.
pub fn checked_call(targets: &CpuMask, wait: bool, call: impl FnOnce(usize) -> CpuMask) -> usize {
    let token = checker::begin(targets, wait);
    // Every checked call passes its token as the callback's argument.
    checker::expect_return(token, token);
    let start = arch::rdtsc();
    // SAFETY: the kernel is fully set up; cross calls run with interrupts on.
    unsafe { arch::irq_enable() };
    let skipped = call(token);
    arch::irq_disable();
    checker::skip(token, &skipped);
    checker::end(token);
    if wait {
        record_latency(arch::rdtsc() - start);
    }
    token
}

/// What a single call's result means for the checker: a refused call
/// (target offline, Linux's -ENXIO) is counted, and its target is not
/// expected to run it.
pub fn single_outcome(r: Result<(), TargetOffline>, target: u32) -> CpuMask {
    let mut skipped = CpuMask::new();
    if r.is_err() {
        xcall::HOTPLUG
            .single_offline_errors
            .fetch_add(1, Ordering::Relaxed);
        skipped.set(target);
    }
    skipped
}

/// Native think time between calls: a user-mode spin of `cycles`.
pub fn think(cycles: u64) {
    let t0 = arch::rdtsc();
    while arch::rdtsc().wrapping_sub(t0) < cycles {
        core::hint::spin_loop();
    }
}

/// A user task's system call.
pub use crate::kernel::arch::sys;

/// Ends the calling user task.
pub fn exit() -> ! {
    sys(abi::syscall::EXIT, 0);
    unreachable!("EXIT returned")
}
