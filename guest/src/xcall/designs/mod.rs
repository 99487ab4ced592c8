//! The IPI wait-mask designs, one file each. After the pinned queueing in
//! [`crate::xcall::smp_call_function_many_cond`], [`wait`] hands the wait to
//! the design in force; each one decides where the set of CPUs to wait for
//! lives and whether the wait may be preempted, and re-enables preemption.
//! Also the per-task hooks of the task-local mask (allocated at task
//! creation when it does not fit a word, freed at exit) and the memory
//! accounting of every design.

mod alloc_in_path;
mod stack;
mod task_local;
mod unsafe_percpu;
mod upstream;

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use abi::Design;
use guest_lib::cpumask::cpumask_size;

use crate::xcall::{self, Cfd};

pub use task_local::{task_created, task_freed};

/// Memory accounting of the current phase.
pub struct MaskStats {
    /// Mask allocations (task-local at task creation, alloc-in-path per call).
    pub allocs: AtomicU64,
    /// Mask frees.
    pub frees: AtomicU64,
    /// alloc-in-path calls that fell back to the pinned wait.
    pub fallbacks: AtomicU64,
}

/// The counters.
pub static STATS: MaskStats = MaskStats {
    allocs: AtomicU64::new(0),
    frees: AtomicU64::new(0),
    fallbacks: AtomicU64::new(0),
};

/// Injected alloc-in-path failures, in 1/65536.
pub static ALLOC_FAIL_PROB: AtomicU32 = AtomicU32::new(0);

/// Resets the phase counters.
pub fn reset_stats() {
    for c in [&STATS.allocs, &STATS.frees, &STATS.fallbacks] {
        c.store(0, Ordering::Relaxed);
    }
}

/// Waits for the call just queued from `cfd` (pinned on entry; preemption
/// re-enabled on return).
pub fn wait(cfd: &'static Cfd) {
    match xcall::design() {
        Design::Upstream => upstream::wait(cfd),
        Design::TaskLocal => task_local::wait(cfd),
        Design::Stack => stack::wait(cfd),
        Design::AllocInPath => alloc_in_path::wait(cfd),
        Design::UnsafePercpu => unsafe_percpu::wait(cfd),
        // The hotplug variants wait as the series does: their bug is in
        // the dying CPU's hook (xcall::cpu_dying).
        Design::FreeCsdOffline | Design::NoDyingFlush => task_local::wait(cfd),
    }
}

/// Whether `smp_call_function_single()`'s synchronous wait stays pinned:
/// only upstream's does (its csd is on the caller's stack, so the series
/// lets that wait move with the task in every other design).
pub fn single_wait_pinned(design: Design) -> bool {
    design == Design::Upstream
}

/// Stack bytes each call of `design` uses for its wait mask.
pub fn stack_bytes_per_call(design: Design) -> u64 {
    match design {
        Design::Stack => cpumask_size() as u64,
        _ => 0,
    }
}

/// Extra bytes every task carries for `design` at this CPU count.
pub fn bytes_per_task(design: Design) -> u64 {
    match design {
        d if task_local::uses_task_mask(d) => task_local::heap_bytes() as u64,
        _ => 0,
    }
}
