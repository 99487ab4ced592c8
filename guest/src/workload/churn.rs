//! Workload `churn`: kernel tasks created on random vCPUs and exiting at
//! once, in a loop until the end: what task creation and exit cost, and
//! whether every task's memory (stacks, the IPI wait mask) comes back.

use crate::kernel::arch;
use crate::kernel::percpu;
use crate::kernel::sched::{self, Body, Class};

fn churn_task(_: usize) {}

/// At most this many churn tasks wait to run at once: the creator yields
/// while more do, so the run queues (whose capacity never shrinks) stay
/// small however fast the platform creates tasks.
const MAX_BACKLOG: u64 = 64;

/// Creates tasks until `end`; returns how many.
pub fn run(nr_vcpus: u32, end: u64) -> u64 {
    let mut churn = 0u64;
    let base = sched::live_tasks();
    while arch::rdtsc() < end {
        while sched::live_tasks() > base + MAX_BACKLOG && arch::rdtsc() < end {
            sched::yield_now();
        }
        let target = (percpu::random() % u64::from(nr_vcpus)) as u32;
        sched::spawn(
            "churn",
            Class::Normal,
            Body::Kernel(churn_task, 0),
            target,
            false,
        )
        .expect("churn task");
        churn += 1;
        if churn.is_multiple_of(16) {
            sched::yield_now();
        }
    }
    churn
}
