//! `task-local`, the series: each task owns its wait mask. When the mask
//! fits a word (`cpumask_size() <= size_of::<usize>()`, i.e. at most 64
//! CPUs) the bits live in the task's pointer-sized field itself; otherwise
//! a mask of `cpumask_size()` bytes is allocated when any task is created,
//! whatever design runs (as Linux does at every fork; creation fails if
//! that fails, and `--alloc-fail-prob` injects such failures during design
//! phases), and freed when it exits. What the allocator really reserved
//! for it is counted, so the per-task figure is measured. The wait copies
//! `cfd->cpumask` into it while still pinned, re-enables preemption and
//! waits on the copy: a preempted or migrated waiter keeps its own set.

use alloc::alloc::Layout;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use crate::kernel::sched::{self, Task};
use crate::kernel::{heap, percpu};
use crate::xcall::{self, Cfd, WaitSet};
use guest_lib::cpumask::{cpumask_size, nr_words};
use guest_lib::rng::Prob16;

use super::{ALLOC_FAIL_PROB, CREATE_FAILURES_ARMED, STATS};

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
pub fn uses_task_mask(design: abi::Design) -> bool {
    matches!(
        design,
        abi::Design::TaskLocal | abi::Design::FreeCsdOffline | abi::Design::NoDyingFlush
    )
}

/// Task creation hook: allocates the mask when it does not fit the field,
/// whatever design runs. An error means the task must not be created (an
/// injected or real allocation failure; counted).
pub fn task_created(t: &Task) -> Result<(), ()> {
    if heap_bytes() == 0 {
        return Ok(());
    }
    STATS.hook_tasks.fetch_add(1, Ordering::Relaxed);
    let injected = CREATE_FAILURES_ARMED.load(Ordering::Relaxed)
        && Prob16(ALLOC_FAIL_PROB.load(Ordering::Relaxed)).hits(percpu::random());
    let got = if injected {
        None
    } else {
        heap::alloc_measured(layout())
    };
    let Some((p, bytes)) = got else {
        STATS.hook_failures.fetch_add(1, Ordering::Relaxed);
        return Err(());
    };
    // SAFETY: a fresh allocation of cpumask_size() bytes, ours.
    unsafe { core::ptr::write_bytes(p.as_ptr(), 0, cpumask_size()) };
    t.hook_slot.set(p.as_ptr() as usize);
    STATS.allocs.fetch_add(1, Ordering::Relaxed);
    STATS.hook_bytes.fetch_add(bytes, Ordering::Relaxed);
    Ok(())
}

/// Whether `t`'s slot holds a pointer to a mask allocated with the task
/// (rather than the mask bits; empty: a task built without the hook, a
/// boot or idle task, which never calls).
fn allocated(t: &Task) -> bool {
    heap_bytes() != 0 && t.hook_slot.get() != 0
}

/// Task exit hook: frees an allocated mask.
pub fn task_freed(t: &Task) {
    if allocated(t) {
        let p = t.hook_slot.replace(0);
        // SAFETY: allocated in task_created with the same layout (the CPU
        // count does not change during a run); the slot is now empty, so
        // nothing uses it afterwards.
        let bytes =
            unsafe { heap::dealloc_measured(NonNull::new_unchecked(p as *mut u8), layout()) };
        STATS.frees.fetch_add(1, Ordering::Relaxed);
        STATS.hook_freed_bytes.fetch_add(bytes, Ordering::Relaxed);
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
        // A real check (release builds too): a task without its allocation
        // above 64 CPUs would otherwise wait on word 0 only, an under-wait.
        assert!(n == 1, "a multi-word mask without an allocation");
        // SAFETY: the pointer-sized field itself (usize == u64 here), owned
        // by the task and touched only by it.
        unsafe { core::slice::from_raw_parts_mut(t.hook_slot.as_ptr() as *mut u64, 1) }
    }
}

/// Copy the set (pinned), unpin, wait on the task's own copy.
#[inline(never)] // its own frame: the measured wait stack is the design's
pub fn wait(cfd: &'static Cfd) {
    let t = sched::current();
    let mask = words(t);
    for (i, w) in mask.iter_mut().enumerate() {
        *w = cfd.cpumask.word(i);
    }
    sched::preempt_enable();
    xcall::wait_all(&WaitSet::Owned(mask), cfd, true);
}
