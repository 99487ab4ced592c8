//! `task-local`, the series: each task owns its wait mask. When the mask
//! fits a word (`cpumask_size() <= size_of::<usize>()`, i.e. at most 64
//! CPUs) the bits live in the task's pointer-sized field itself; otherwise
//! a mask of `cpumask_size()` bytes is allocated when the task is created
//! (creation fails if that fails) and freed when it exits. The wait copies
//! `cfd->cpumask` into it while still pinned, re-enables preemption and
//! waits on the copy: a preempted or migrated waiter keeps its own set.

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::sync::atomic::Ordering;

use abi::Design;

use crate::kernel::sched::{self, Task};
use crate::xcall::{self, Cfd, WaitSet};
use guest_lib::cpumask::{cpumask_size, nr_words};

use super::STATS;

fn layout() -> Layout {
    Layout::from_size_align(cpumask_size(), 8).expect("valid layout")
}

/// Bytes allocated per task (0 when the mask fits the field).
pub fn heap_bytes() -> usize {
    if nr_words() > 1 {
        cpumask_size()
    } else {
        0
    }
}

/// Whether `design` waits on the task's own mask (task-local and the two
/// hotplug variants built on it).
pub fn uses_task_mask(design: Design) -> bool {
    matches!(
        design,
        Design::TaskLocal | Design::FreeCsdOffline | Design::NoDyingFlush
    )
}

/// Task creation hook: allocates the mask when it does not fit the field
/// (task-local designs only). An error means the task must not be created.
pub fn task_created(t: &Task) -> Result<(), ()> {
    if !uses_task_mask(xcall::design()) || heap_bytes() == 0 {
        return Ok(());
    }
    // SAFETY: non-zero-sized layout.
    let p = unsafe { alloc_zeroed(layout()) };
    if p.is_null() {
        return Err(());
    }
    t.hook_slot.set(p as usize);
    STATS.allocs.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Whether `t`'s slot holds a pointer to a mask allocated with the task
/// (rather than the mask bits, or nothing: tasks created in another
/// design's phase have an empty slot).
fn allocated(t: &Task) -> bool {
    heap_bytes() != 0 && t.hook_slot.get() != 0
}

/// Task exit hook: frees an allocated mask.
pub fn task_freed(t: &Task) {
    if allocated(t) {
        let p = t.hook_slot.replace(0);
        // SAFETY: allocated in task_created with the same layout (the CPU
        // count does not change during a run); the slot is now empty.
        unsafe { dealloc(p as *mut u8, layout()) };
        STATS.frees.fetch_add(1, Ordering::Relaxed);
    }
}

/// The running task's mask words. Only the task itself calls this, on its
/// own mask, so the returned slice is never aliased.
#[allow(clippy::mut_from_ref)] // the mask lives in the task's Cell / allocation
fn words(t: &Task) -> &mut [u64] {
    let n = nr_words();
    if allocated(t) {
        // SAFETY: an allocation of nr_words() words owned by this task,
        // touched only by the task itself.
        unsafe { core::slice::from_raw_parts_mut(t.hook_slot.get() as *mut u64, n) }
    } else {
        debug_assert!(n == 1, "a multi-word mask without an allocation");
        // SAFETY: the pointer-sized field itself (usize == u64 here), owned
        // by the task and touched only by it.
        unsafe { core::slice::from_raw_parts_mut(t.hook_slot.as_ptr() as *mut u64, 1) }
    }
}

/// Copy the set (pinned), unpin, wait on the task's own copy.
pub fn wait(cfd: &'static Cfd) {
    let t = sched::current();
    let mask = words(t);
    for (i, w) in mask.iter_mut().enumerate() {
        *w = cfd.cpumask.word(i);
    }
    sched::preempt_enable();
    xcall::wait_all(&WaitSet::Owned(mask), cfd, true);
}
