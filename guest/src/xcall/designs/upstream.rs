//! `upstream`: Linux before the series. The wait set is the per-CPU
//! `cfd->cpumask` and preemption stays disabled from queueing through the
//! last `csd_lock_wait()`: safe (nobody else runs on this CPU meanwhile),
//! but the CPU is stuck for as long as the slowest target takes.

use crate::kernel::sched;
use crate::xcall::{self, Cfd, WaitSet};

/// Pinned wait on the per-CPU mask.
#[inline(never)] // its own frame: the measured wait stack is the design's
pub fn wait(cfd: &'static Cfd) {
    xcall::wait_all(&WaitSet::Live(&cfd.cpumask), cfd, false);
    sched::preempt_enable();
}
