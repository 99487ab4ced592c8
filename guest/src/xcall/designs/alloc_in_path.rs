//! `alloc-in-path`: the wait mask is allocated per call. The allocation
//! cannot sleep (callers historically only needed preemption disabled), so
//! it may fail; injected failures (`--alloc-fail-prob`) and real ones fall
//! back to the upstream pinned wait: the latency win is opportunistic.

use alloc::alloc::{alloc, dealloc, Layout};
use core::sync::atomic::Ordering;

use crate::kernel::percpu;
use crate::kernel::sched;
use crate::xcall::{self, Cfd, WaitSet};
use guest_lib::cpumask::{cpumask_size, nr_words};
use guest_lib::rng::Prob16;

use super::{ALLOC_FAIL_PROB, STATS};

/// Allocate (pinned), copy, unpin, wait; or stay pinned if allocation fails.
#[inline(never)] // its own frame: the measured wait stack is the design's
pub fn wait(cfd: &'static Cfd) {
    let layout = Layout::from_size_align(cpumask_size(), 8).expect("valid layout");
    let fail = Prob16(ALLOC_FAIL_PROB.load(Ordering::Relaxed)).hits(percpu::random());
    let p = if fail {
        core::ptr::null_mut()
    } else {
        // SAFETY: non-zero-sized layout.
        unsafe { alloc(layout) }
    } as *mut u64;
    if p.is_null() {
        STATS.fallbacks.fetch_add(1, Ordering::Relaxed);
        super::upstream::wait(cfd);
        return;
    }
    STATS.allocs.fetch_add(1, Ordering::Relaxed);
    // SAFETY: a fresh allocation of nr_words() words, ours until freed.
    let mask = unsafe { core::slice::from_raw_parts_mut(p, nr_words()) };
    for (i, w) in mask.iter_mut().enumerate() {
        *w = cfd.cpumask.word(i);
    }
    sched::preempt_enable();
    xcall::wait_all(&WaitSet::Owned(mask), cfd, true);
    // SAFETY: allocated above with this layout.
    unsafe { dealloc(p as *mut u8, layout) };
    STATS.frees.fetch_add(1, Ordering::Relaxed);
}
