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

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use abi::Design;

use crate::kernel::sched::Task;
use crate::xcall::{self, tasks, Cfd};

/// Memory accounting of the current phase.
pub struct MaskStats {
    /// Mask allocations (task-local at task creation, alloc-in-path per call).
    pub allocs: AtomicU64,
    /// Mask frees.
    pub frees: AtomicU64,
    /// alloc-in-path calls that fell back to the pinned wait.
    pub fallbacks: AtomicU64,
    /// Bytes the allocator reserved for task-local's masks at task
    /// creation (its own counter, rounding included).
    pub hook_bytes: AtomicU64,
    /// Bytes it got back when those tasks exited.
    pub hook_freed_bytes: AtomicU64,
    /// Task creations that ran the hook.
    pub hook_tasks: AtomicU64,
    /// Of those, refused: the mask could not be allocated.
    pub hook_failures: AtomicU64,
    /// Deepest stack below the design dispatch seen in a wait (bytes).
    pub wait_stack_bytes: AtomicU64,
}

/// The counters.
pub static STATS: MaskStats = MaskStats {
    allocs: AtomicU64::new(0),
    frees: AtomicU64::new(0),
    fallbacks: AtomicU64::new(0),
    hook_bytes: AtomicU64::new(0),
    hook_freed_bytes: AtomicU64::new(0),
    hook_tasks: AtomicU64::new(0),
    hook_failures: AtomicU64::new(0),
    wait_stack_bytes: AtomicU64::new(0),
};

/// Injected allocation failures (alloc-in-path's per-call mask, and
/// task-local's mask at task creation while a design phase runs), in
/// 1/65536.
pub static ALLOC_FAIL_PROB: AtomicU32 = AtomicU32::new(0);

/// Whether task creations may fail by injection now: only while a design
/// phase creates its tasks (the boot's and the timed workloads' tasks are
/// not the experiment's).
pub static CREATE_FAILURES_ARMED: AtomicBool = AtomicBool::new(false);

/// Resets the phase counters.
pub fn reset_stats() {
    for c in [
        &STATS.allocs,
        &STATS.frees,
        &STATS.fallbacks,
        &STATS.hook_bytes,
        &STATS.hook_freed_bytes,
        &STATS.hook_tasks,
        &STATS.hook_failures,
        &STATS.wait_stack_bytes,
    ] {
        c.store(0, Ordering::Relaxed);
    }
}

/// The task-creation hook (`TaskHooks::on_create`): task-local's mask is
/// allocated for every task whatever design runs, as Linux allocates it at
/// every fork; the task is registered for the stall report.
pub fn task_created(t: &Task) -> Result<(), ()> {
    task_local::task_created(t)?;
    tasks::register(t);
    Ok(())
}

/// The task-exit hook (`TaskHooks::on_free`).
pub fn task_freed(t: &Task) {
    tasks::unregister(t);
    task_local::task_freed(t);
}

/// The bytes every task carries for the series in every design: its
/// pointer-sized field ([`Task::hook_slot`]), the size of that field of
/// the running task.
pub fn task_field_bytes() -> u64 {
    core::mem::size_of_val(&crate::kernel::sched::current().hook_slot) as u64
}

/// A wait measured `depth` bytes of stack below the design dispatch.
pub fn record_wait_stack(depth: u64) {
    if depth > STATS.wait_stack_bytes.load(Ordering::Relaxed) {
        STATS.wait_stack_bytes.fetch_max(depth, Ordering::Relaxed);
    }
}

/// Waits for the call just queued from `cfd` (pinned on entry; preemption
/// re-enabled on return).
/// Never inlined, and neither is any design's wait (each has its own
/// frame, so one design's locals do not enlarge another's): everything the
/// design's wait puts on the stack (the stack design's mask) lies below the
/// caller's frame, where the wait depth is measured from.
#[inline(never)]
pub fn wait(cfd: &'static Cfd) {
    match xcall::design() {
        Design::Upstream => upstream::wait(cfd),
        Design::TaskLocal => task_local::wait(cfd),
        Design::Stack => stack::wait(cfd),
        Design::AllocInPath => alloc_in_path::wait(cfd),
        Design::UnsafePercpu => unsafe_percpu::wait(cfd),
        // The hotplug variants wait as the series does: their bug is in
        // the dying CPU's hook (xcall::offline::cpu_dying).
        Design::FreeCsdOffline | Design::NoDyingFlush => task_local::wait(cfd),
    }
}

/// Whether `smp_call_function_single()`'s synchronous wait stays pinned:
/// only upstream's does (its csd is on the caller's stack, so the series
/// lets that wait move with the task in every other design).
pub fn single_wait_pinned(design: Design) -> bool {
    design == Design::Upstream
}

/// Stack bytes each call of `design` puts on the stack for its wait mask:
/// the size of the stack design's local (a mask of every CPU the guest can
/// have, as Linux's on-stack `cpumask_t` holds NR_CPUS bits), not the
/// bytes this CPU count would need.
pub fn stack_bytes_per_call(design: Design) -> u64 {
    match design {
        Design::Stack => stack::MASK_BYTES as u64,
        _ => 0,
    }
}

/// Bytes per task `design` adds on the heap, measured: what the
/// allocator reserved for the creation hook's allocations of the phase
/// over the tasks it allocated for (task-local's mask; no other design
/// allocates per task).
pub fn bytes_per_task(design: Design) -> u64 {
    let allocated =
        STATS.hook_tasks.load(Ordering::Relaxed) - STATS.hook_failures.load(Ordering::Relaxed);
    match design {
        d if task_local::uses_task_mask(d) && allocated > 0 => {
            STATS.hook_bytes.load(Ordering::Relaxed) / allocated
        }
        _ => 0,
    }
}
