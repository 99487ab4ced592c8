//! Moving tasks between CPUs: forced migration and the balancer (per
//! tick), and the hotplug moves (evacuating a dying CPU, pulling work to
//! one back online).

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use abi::vector;

use guest_lib::rng::Prob16;

use super::runqueue::enqueue;
use super::{request_migration, TaskRef, PARAMS};
use crate::kernel::apic;
use crate::kernel::hotplug;
use crate::kernel::percpu;

pub(super) fn tick_work(pc: &percpu::PerCpu) {
    if pc.rq.lock().len() > 0 {
        pc.need_resched.store(true, Ordering::Relaxed); // time slice over
    }
    let nr = PARAMS.nr_cpus.load(Ordering::Relaxed);
    if nr < 2 {
        return;
    }
    let cur = pc.current.get();
    let chance = PARAMS.forced_migration.load(Ordering::Relaxed);
    if chance > 0 && cur != pc.idle.get() {
        // SAFETY: current task is live.
        let t = unsafe { &*cur };
        if !t.pinned && Prob16(chance).hits(percpu::random()) {
            let dst = (pc.id.get() + 1 + (percpu::random() % u64::from(nr - 1)) as u32) % nr;
            request_migration(t, dst);
            pc.need_resched.store(true, Ordering::Relaxed);
        }
    }
    if pc.ticks.get().is_multiple_of(16) {
        balance(pc, nr);
    }
}

/// Pulls one normal task from a random busier CPU.
fn balance(pc: &percpu::PerCpu, nr: u32) {
    let here = pc.id.get();
    let other = (here + 1 + (percpu::random() % u64::from(nr - 1)) as u32) % nr;
    let mine = pc.rq.lock().normal.len();
    if let Some(t) = steal_from(other, mine) {
        pc.migrations_in.fetch_add(1, Ordering::Relaxed);
        enqueue(t, here);
    }
}

/// Takes the newest unpinned normal task from CPU `other`'s queue if it
/// holds more than one beyond `mine` (the balancer's and a returning CPU's
/// rule).
fn steal_from(other: u32, mine: usize) -> Option<TaskRef> {
    let mut theirs = percpu::of(other).rq.lock();
    if theirs.normal.len() > mine + 1 {
        let idx = theirs.normal.iter().rposition(|t| !t.get().pinned);
        idx.and_then(|i| theirs.normal.remove(i))
    } else {
        None
    }
}

/// CPU hotplug, on the dying CPU: closes its run queue (enqueues go
/// elsewhere from now on) and moves every queued and sleeping task to the
/// online CPUs, round robin. Returns how many moved.
pub fn evacuate(cpu: u32) -> u32 {
    let (runnable, sleepers) = {
        let mut rq = percpu::of(cpu).rq.lock();
        hotplug::set_rq_closed(cpu, true);
        let mut runnable: Vec<TaskRef> = rq.high.drain(..).collect();
        runnable.extend(rq.normal.drain(..));
        (runnable, core::mem::take(&mut rq.sleepers))
    };
    let mut dst = cpu;
    let mut moved = 0;
    for t in runnable {
        dst = hotplug::fallback_cpu(dst);
        percpu::of(dst)
            .migrations_in
            .fetch_add(1, Ordering::Relaxed);
        enqueue(t, dst);
        moved += 1;
    }
    for t in sleepers {
        dst = hotplug::fallback_cpu(dst);
        loop {
            let target = percpu::of(dst);
            let mut rq = target.rq.lock();
            if hotplug::rq_closed(dst) {
                drop(rq);
                dst = hotplug::fallback_cpu(dst);
                continue;
            }
            t.get().cpu.store(dst, Ordering::Relaxed);
            rq.sleepers.push(t);
            break;
        }
        // Its timer must now cover the sleeper's wake-up.
        percpu::of(dst).need_resched.store(true, Ordering::Release);
        apic::send_ipi(dst, vector::RESCHEDULE);
        moved += 1;
    }
    moved
}

/// CPU hotplug, on a CPU coming back: reopens its run queue.
pub fn reopen(cpu: u32) {
    let _rq = percpu::of(cpu).rq.lock();
    hotplug::set_rq_closed(cpu, false);
}

/// CPU hotplug, on a CPU back online: pulls one movable normal task from
/// every busier online CPU (an idle CPU has no tick, so the periodic
/// balancer would never run here).
pub fn pull_work(cpu: u32) {
    let nr = PARAMS.nr_cpus.load(Ordering::Relaxed);
    for other in (0..nr).filter(|&c| c != cpu && hotplug::cpu_online(c)) {
        let mine = percpu::of(cpu).rq.lock().normal.len();
        if let Some(t) = steal_from(other, mine) {
            percpu::this().migrations_in.fetch_add(1, Ordering::Relaxed);
            enqueue(t, cpu);
        }
    }
}
