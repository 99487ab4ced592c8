//! The per-CPU call queue (an llist: a push says whether the queue was
//! empty, so an IPI goes out only when it goes from empty to non-empty)
//! and the CALL_FUNCTION handler that runs it, synchronous entries first.

use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use abi::{vector, MAX_VCPUS};

use super::csd::{csd_unlock, Csd, CSD_FLAG_DROPPED, CSD_FLAG_LOCK, CSD_TYPE_SYNC};
use super::offline::HOTPLUG;
use super::{checker, pv, CallFn};
use crate::kernel::{apic, hotplug, percpu};

/// Per-CPU call queues (llist heads).
pub(super) static QUEUES: [AtomicPtr<Csd>; MAX_VCPUS] =
    [const { AtomicPtr::new(ptr::null_mut()) }; MAX_VCPUS];
/// Set while a CPU runs callbacks (for the csd-lock watchdog report).
pub(super) static IN_CALLBACK: [AtomicBool; MAX_VCPUS] =
    [const { AtomicBool::new(false) }; MAX_VCPUS];
/// Fills a locked csd and queues it on `target`; true if an IPI is needed.
pub(super) fn queue(target: u32, csd: &Csd, func: CallFn, info: usize, sync: bool) -> bool {
    if csd.flags.load(Ordering::Relaxed) & CSD_FLAG_LOCK == 0 {
        // Invariant 2: a csd is written only by the holder of its lock.
        checker::record_csd_reinit(target);
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
    let head = &QUEUES[target as usize];
    let me = csd as *const Csd as *mut Csd;
    let mut old = head.load(Ordering::Relaxed);
    loop {
        // SAFETY: as above: our csd, not yet visible to the target.
        unsafe { *csd.next.get() = old };
        // Release: the csd's fields before the target can see the csd.
        match head.compare_exchange_weak(old, me, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return old.is_null(),
            Err(now) => old = now,
        }
    }
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
    // Acquire: pairs with the Release push in `queue`.
    let mut head = QUEUES[me].swap(ptr::null_mut(), Ordering::Acquire);
    // SAFETY: every csd in the drained list is locked and ours until we
    // unlock it; after csd_unlock we never touch it again (its owner may
    // reuse it, or return from the stack frame holding it).
    unsafe {
        // llist order is newest first: reverse to queue order.
        let mut prev = ptr::null_mut();
        while !head.is_null() {
            let next = *(*head).next.get();
            *(*head).next.get() = prev;
            prev = head;
            head = next;
        }
        head = prev;
        // First: synchronous callbacks, unlinked before they are unlocked.
        let mut link: *mut *mut Csd = &mut head;
        while !(*link).is_null() {
            let csd = &**link;
            if csd.flags.load(Ordering::Relaxed) & CSD_TYPE_SYNC != 0 {
                *link = *csd.next.get();
                (*csd.func.get())(*csd.info.get());
                csd_unlock(csd);
                ran += 1;
            } else {
                link = csd.next.get();
            }
        }
        // Then asynchronous ones: copy, unlock, run.
        let mut cur = head;
        while !cur.is_null() {
            let csd = &*cur;
            cur = *csd.next.get();
            let (func, info) = (*csd.func.get(), *csd.info.get());
            csd_unlock(csd);
            func(info);
            ran += 1;
        }
    }
    IN_CALLBACK[me].store(false, Ordering::Relaxed);
    ran
}

/// `no-dying-flush`: takes the queue and drops every csd in it unrun, each
/// left locked with the checker's dropped mark.
pub(super) fn drop_queue(me: u32) {
    let mut head = QUEUES[me as usize].swap(ptr::null_mut(), Ordering::Acquire);
    let mut n = 0;
    while !head.is_null() {
        // SAFETY: the drained list's csds are locked and ours until marked:
        // the link is read before the mark lets a waiter take the csd back.
        unsafe {
            let csd = &*head;
            head = *csd.next.get();
            csd.flags.fetch_or(CSD_FLAG_DROPPED, Ordering::Release);
        }
        n += 1;
    }
    HOTPLUG.dropped_csds.fetch_add(n, Ordering::Relaxed);
}
