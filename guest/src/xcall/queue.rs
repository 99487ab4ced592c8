//! The per-CPU call queue (an llist: a push says whether the queue was
//! empty, so an IPI goes out only when it goes from empty to non-empty)
//! and the CALL_FUNCTION handler that runs it, synchronous entries first.

use core::sync::atomic::{AtomicBool, Ordering};

use abi::{vector, MAX_VCPUS};
use guest_lib::llist::Llist;

use super::csd::{csd_unlock, Csd, CSD_FLAG_DROPPED, CSD_FLAG_LOCK, CSD_TYPE_SYNC};
use super::observer::observer;
use super::offline::HOTPLUG;
use super::{pv, CallFn};
use crate::kernel::{apic, hotplug, percpu};

/// Per-CPU call queues (`call_single_queue`).
pub(super) static QUEUES: [Llist<Csd>; MAX_VCPUS] = [const { Llist::new() }; MAX_VCPUS];
/// Set while a CPU runs callbacks (for the csd-lock watchdog report).
pub(super) static IN_CALLBACK: [AtomicBool; MAX_VCPUS] =
    [const { AtomicBool::new(false) }; MAX_VCPUS];

/// Fills a locked csd and queues it on `target`; true if an IPI is needed.
pub(super) fn queue(target: u32, csd: &Csd, func: CallFn, info: usize, sync: bool) -> bool {
    if csd.flags.load(Ordering::Relaxed) & CSD_FLAG_LOCK == 0 {
        // Invariant 2: a csd is written only by the holder of its lock.
        (observer().csd_reinit)(target);
    }
    // SAFETY: we hold CSD_FLAG_LOCK and the csd is in no queue (the target
    // unlinks it before unlocking), so nobody else touches these fields.
    unsafe {
        *csd.func.get() = func;
        *csd.info.get() = info;
    }
    if sync {
        csd.flags
            .store(CSD_FLAG_LOCK | CSD_TYPE_SYNC, Ordering::Relaxed);
    }
    // Inside the sender bracket: the target is online and cannot finish
    // dying before this push is done, so this is its generation then.
    csd.dst.store(target, Ordering::Relaxed);
    csd.gen
        .store(hotplug::generation(target), Ordering::Relaxed);
    // SAFETY: the csd is locked by us and in no queue; it stays valid
    // until the target unlocks it (per-CPU csds are never freed, a stack
    // csd's frame waits for the unlock), and only the llist touches its
    // link. The push is Release: the fields above before the target sees it.
    unsafe { QUEUES[target as usize].push(csd) }
}

pub(super) fn send_call_ipi(target: u32) {
    hotplug::note_call_ipi_to(target);
    apic::send_ipi(target, vector::CALL_FUNCTION);
}

/// The CALL_FUNCTION IPI: drains this CPU's queue, synchronous entries
/// first. Runs with interrupts off.
pub fn handle_ipi() {
    run_queue();
}

/// [`handle_ipi`]; returns how many callbacks it ran.
pub(super) fn run_queue() -> u64 {
    let me = percpu::cpu_id() as usize;
    let mut ran = 0;
    IN_CALLBACK[me].store(true, Ordering::Relaxed);
    // flush-defer: deferred work before any other callback.
    pv::run_deferred(false);
    // llist order is newest first: reverse to queue order.
    let mut chain = QUEUES[me].take_all().reverse();
    // Every csd handed out below is locked and ours until we unlock it;
    // after csd_unlock we never touch it again (its owner may reuse it, or
    // return from the stack frame holding it).
    // First: synchronous callbacks, unlinked before they are unlocked.
    ran += chain.take_where(
        |csd| csd.flags.load(Ordering::Relaxed) & CSD_TYPE_SYNC != 0,
        |csd| {
            // SAFETY: a locked csd we drained: its writer filled func and
            // info before the push and does not touch them until unlocked.
            unsafe { (*csd.func.get())(*csd.info.get()) };
            csd_unlock(csd);
        },
    );
    // Then asynchronous ones: copy, unlock, run.
    ran += chain.for_each(|csd| {
        // SAFETY: as for the synchronous ones, read before the unlock.
        let (func, info) = unsafe { (*csd.func.get(), *csd.info.get()) };
        csd_unlock(csd);
        func(info);
    });
    IN_CALLBACK[me].store(false, Ordering::Relaxed);
    ran
}

/// `no-dying-flush`: takes the queue and drops every csd in it unrun, each
/// left locked with the checker's dropped mark.
pub(super) fn drop_queue(me: u32) {
    // The drained csds are locked and ours until marked: the walk reads each
    // link before the mark lets a waiter take its csd back.
    let n = QUEUES[me as usize].take_all().for_each(|csd| {
        csd.flags.fetch_or(CSD_FLAG_DROPPED, Ordering::Release);
    });
    HOTPLUG.dropped_csds.fetch_add(n, Ordering::Relaxed);
}
