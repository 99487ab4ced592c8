//! The per-CPU run queues (high class first, round robin within a class,
//! the sleeper list) and putting a runnable task on one.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use abi::vector;

use super::{Class, TaskRef, RUNNABLE};
use crate::kernel::apic;
use crate::kernel::hotplug;
use crate::kernel::percpu;

/// A CPU's queues.
pub struct RunQueue {
    pub(super) high: VecDeque<TaskRef>,
    pub(super) normal: VecDeque<TaskRef>,
    pub(super) sleepers: Vec<TaskRef>,
}

impl RunQueue {
    /// Empty queues.
    pub const fn new() -> Self {
        RunQueue {
            high: VecDeque::new(),
            normal: VecDeque::new(),
            sleepers: Vec::new(),
        }
    }
    pub(super) fn push(&mut self, t: TaskRef) {
        match t.get().class {
            Class::High => self.high.push_back(t),
            Class::Normal => self.normal.push_back(t),
        }
    }
    pub(super) fn earliest_wake(&self) -> Option<u64> {
        self.sleepers.iter().map(|t| t.get().wake_tsc.get()).min()
    }
    /// Runnable tasks queued.
    pub fn len(&self) -> usize {
        self.high.len() + self.normal.len()
    }
}

/// Queues a runnable task on `cpu` and makes that CPU look at it. A CPU
/// whose run queue hotplug closed (it is going offline) takes nothing: the
/// task goes to an online CPU instead.
pub(super) fn enqueue(t: TaskRef, cpu: u32) {
    let mut cpu = cpu;
    let target = loop {
        let target = percpu::of(cpu);
        let mut rq = target.rq.lock();
        if hotplug::rq_closed(cpu) {
            drop(rq);
            cpu = hotplug::fallback_cpu(cpu);
            continue;
        }
        t.get().cpu.store(cpu, Ordering::Relaxed);
        t.get().state.store(RUNNABLE, Ordering::Release);
        rq.push(t);
        break target;
    };
    // Release: the queue push before the flag the target reads.
    target.need_resched.store(true, Ordering::Release);
    if cpu != percpu::cpu_id() {
        apic::send_ipi(cpu, vector::RESCHEDULE);
    }
}
