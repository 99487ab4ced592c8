//! `unsafe-percpu`: WRONG ON PURPOSE. The per-CPU `cfd->cpumask` with a
//! preemptible wait: once this task is switched out, another task on the
//! same CPU may enter smp_call_function_many_cond() and overwrite that
//! mask, and this waiter then waits for the other call's CPUs and returns
//! before its own callbacks ran (under-waiting: a TLB flush reported done
//! while a remote TLB is still stale). It exists so that the checker is
//! shown to catch the bug the series prevents. Never in the default set.

use crate::kernel::sched;
use crate::xcall::{self, Cfd, WaitSet};

/// Unpin, then wait on the live per-CPU mask.
#[inline(never)] // its own frame: the measured wait stack is the design's
pub fn wait(cfd: &'static Cfd) {
    sched::preempt_enable();
    xcall::wait_all(&WaitSet::Live(&cfd.cpumask), cfd, true);
}
