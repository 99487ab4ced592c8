//! Picking the next task and switching to it: `schedule`, the context
//! switch (`switch_to`, in assembly) and the bookkeeping for the task
//! switched away from, on the next task's stack.

use core::arch::global_asm;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use super::runqueue::enqueue;
use super::task::free_task;
use super::timer::rearm_timer;
use super::{hooks, Class, TaskRef, DEAD, NO_CPU, RUNNING};
use crate::kernel::arch;
use crate::kernel::hotplug;
use crate::kernel::percpu;
use crate::kernel::trace;

// switch_to(prev_rsp: *mut u64, next_rsp: u64): saves the callee-saved
// registers on the current stack, stores RSP into *prev_rsp, loads
// next_rsp and pops the next task's callee-saved registers. A new task's
// stack is prepared so that the final `ret` lands in task_trampoline.
global_asm!(
    ".global switch_to",
    "switch_to:",
    "push rbp",
    "push rbx",
    "push r12",
    "push r13",
    "push r14",
    "push r15",
    "mov [rdi], rsp",
    "mov rsp, rsi",
    "pop r15",
    "pop r14",
    "pop r13",
    "pop r12",
    "pop rbx",
    "pop rbp",
    "ret",
    ".global task_trampoline",
    "task_trampoline:",
    "call {start}",
    "ud2",
    start = sym super::task::task_start,
);

extern "C" {
    fn switch_to(prev_rsp: *mut u64, next_rsp: u64);
    pub(super) fn task_trampoline();
}

/// Picks the next task and switches to it (or keeps the current one).
pub fn schedule() {
    let irq = arch::irq_save();
    trace::cause(abi::preempt_off::cause::SCHED);
    let pc = percpu::this();
    pc.need_resched.store(false, Ordering::Relaxed);
    let prev = TaskRef(NonNull::new(pc.current.get()).expect("a current task"));
    let p = prev.get();
    let is_idle = prev.ptr() == pc.idle.get();
    // Going offline: only idle runs here; a running task moves away.
    let dying = hotplug::going_down(pc.id.get());
    if dying
        && !is_idle
        && p.state.load(Ordering::Relaxed) == RUNNING
        && p.migrate_to.load(Ordering::Relaxed) == NO_CPU
    {
        p.migrate_to
            .store(hotplug::fallback_cpu(pc.id.get()), Ordering::Relaxed);
    }
    let prev_continues = !is_idle
        && p.state.load(Ordering::Relaxed) == RUNNING
        && p.migrate_to.load(Ordering::Relaxed) == NO_CPU;
    let next = {
        let mut rq = pc.rq.lock();
        if dying {
            TaskRef(NonNull::new(pc.idle.get()).expect("an idle task"))
        } else if let Some(t) = rq.high.pop_front() {
            t
        } else if prev_continues && p.class == Class::High {
            prev
        } else if let Some(t) = rq.normal.pop_front() {
            t
        } else if prev_continues {
            prev
        } else {
            TaskRef(NonNull::new(pc.idle.get()).expect("an idle task"))
        }
    };
    if next != prev {
        // Deferred work of the layers above before another task runs.
        (hooks().drain)();
        switch(prev, next); // rearms the timer in finish_switch
    } else {
        rearm_timer();
    }
    trace::cause(abi::preempt_off::cause::OTHER);
    arch::irq_restore(irq);
}

fn switch(prev: TaskRef, next: TaskRef) {
    let pc = percpu::this();
    let n = next.get();
    let here = pc.id.get();
    if n.cpu.swap(here, Ordering::Relaxed) != here && next.ptr() != pc.idle.get() {
        n.migrations.fetch_add(1, Ordering::Relaxed);
    }
    n.state.store(RUNNING, Ordering::Relaxed);
    prev.get().switches.fetch_add(1, Ordering::Relaxed);
    pc.prev.set(prev.ptr());
    pc.current.set(next.ptr());
    if n.kstack_top != 0 {
        percpu::set_kernel_stack(n.kstack_top);
    }
    pc.context_switches.inc();
    // SAFETY: prev's rsp slot is valid (prev is live until finish_switch),
    // next's saved rsp was written by its own switch_to or by spawn.
    unsafe { switch_to(prev.get().rsp.get(), *n.rsp.get()) };
    // Back in `prev`, possibly on another CPU.
    finish_switch();
}

/// Bookkeeping for the task switched away from, on the new task's stack
/// (new tasks run it first thing, resumed ones on return from switch_to),
/// then the timer for the task now running.
pub(super) fn finish_switch() {
    settle_prev();
    rearm_timer();
}

fn settle_prev() {
    let pc = percpu::this();
    let Some(prev) = NonNull::new(pc.prev.replace(core::ptr::null_mut())).map(TaskRef) else {
        return;
    };
    if prev.ptr() == pc.idle.get() {
        return;
    }
    let p = prev.get();
    match p.state.load(Ordering::Relaxed) {
        RUNNING => {
            let dst = p.migrate_to.swap(NO_CPU, Ordering::Relaxed);
            if dst != NO_CPU && dst != pc.id.get() {
                percpu::of(dst)
                    .migrations_in
                    .fetch_add(1, Ordering::Relaxed);
                enqueue(prev, dst);
            } else {
                enqueue(prev, pc.id.get());
                // Our own push set need_resched; it is not a reason to run
                // schedule again right away.
                pc.need_resched.store(false, Ordering::Relaxed);
            }
        }
        DEAD => free_task(prev),
        _ => {} // SLEEPING: already in this CPU's sleeper list.
    }
}

/// Gives up the CPU.
pub fn yield_now() {
    percpu::this().need_resched.store(true, Ordering::Relaxed);
    schedule();
}
