//! Sleeping until a TSC deadline, the timer interrupt (wake-ups and the
//! tick) and programming the TSC-deadline timer (tickless when idle).

use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use super::balance::tick_work;
use super::switch::schedule;
use super::{hooks, TaskRef, PARAMS, RUNNABLE, SLEEPING};
use crate::kernel::apic;
use crate::kernel::arch;
use crate::kernel::hotplug;
use crate::kernel::percpu;

/// Sleeps until TSC `deadline`.
pub fn sleep_until(deadline: u64) {
    let _ = sleep_until_woken(deadline);
}

/// [`sleep_until`], returning the TSC at which the timer interrupt that
/// woke the task began (the latency probe splits its lateness there:
/// arrival before it, dispatch after).
pub fn sleep_until_woken(deadline: u64) -> u64 {
    let irq = arch::irq_save();
    let pc = percpu::this();
    let t = TaskRef(NonNull::new(pc.current.get()).expect("a current task"));
    t.get().wake_tsc.set(deadline);
    t.get().woken_tsc.set(0);
    t.get().state.store(SLEEPING, Ordering::Relaxed);
    pc.rq.lock().sleepers.push(t);
    schedule();
    arch::irq_restore(irq);
    t.get().woken_tsc.get()
}

/// Sleeps `us` microseconds.
pub fn sleep_us(us: u64) {
    sleep_until(arch::rdtsc() + us * PARAMS.cycles_per_us.load(Ordering::Relaxed));
}

/// Programs the timer for the earliest of: the next tick (while a task
/// other than idle runs or waits) and the earliest sleeper.
pub fn rearm_timer() {
    let pc = percpu::this();
    let (earliest, busy) = {
        let rq = pc.rq.lock();
        (rq.earliest_wake(), rq.len() > 0)
    };
    // A hotplug request that must wait for another CPU keeps the tick on.
    let running_task = pc.current.get() != pc.idle.get() || hotplug::wants_tick(pc.id.get());
    let tick = if running_task || busy {
        if pc.next_tick.get() == 0 {
            pc.next_tick
                .set(arch::rdtsc() + PARAMS.tick_cycles.load(Ordering::Relaxed));
        }
        Some(pc.next_tick.get())
    } else {
        pc.next_tick.set(0); // tickless idle
        None
    };
    let deadline = match (tick, earliest) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(0),
    };
    apic::arm(deadline);
}

/// The timer interrupt: deferred work first, then wake sleepers, run the
/// tick, rearm.
pub fn on_tick() {
    let entered = arch::rdtsc();
    (hooks().drain)();
    hotplug::poll();
    let pc = percpu::this();
    let now = arch::rdtsc();
    {
        let mut rq = pc.rq.lock();
        let mut i = 0;
        while i < rq.sleepers.len() {
            if rq.sleepers[i].get().wake_tsc.get() <= now {
                let t = rq.sleepers.swap_remove(i);
                t.get().woken_tsc.set(entered);
                t.get().state.store(RUNNABLE, Ordering::Relaxed);
                rq.push(t);
                pc.need_resched.store(true, Ordering::Relaxed);
            } else {
                i += 1;
            }
        }
    }
    let next_tick = pc.next_tick.get();
    if next_tick != 0 && now >= next_tick {
        pc.ticks.inc();
        pc.next_tick
            .set(now + PARAMS.tick_cycles.load(Ordering::Relaxed));
        tick_work(pc);
    }
    rearm_timer();
}
