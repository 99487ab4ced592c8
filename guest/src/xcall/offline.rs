//! CPU hotplug on the call paths: the per-CPU sender bracket a dying CPU
//! waits out, the dying flush (and the two broken variants of it), the
//! counters.

use core::ptr;
use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use abi::{Design, MAX_VCPUS};
use guest_lib::cpumask::nr_cpu_ids;

use super::csd::{CFD, CSD_POISON};
use super::design;
use super::queue::{drop_queue, run_queue, QUEUES};
use crate::kernel::arch;

/// CPU hotplug on the call paths, per phase.
pub struct HotplugStats {
    /// Targets left out of a mask because they were offline.
    pub skipped_targets: AtomicU64,
    /// `smp_call_function_single()` calls refused (target offline); the
    /// callers count them here.
    pub single_offline_errors: AtomicU64,
    /// Callbacks dying CPUs ran in their flush.
    pub flushed_callbacks: AtomicU64,
    /// csds dying CPUs dropped (`no-dying-flush`).
    pub dropped_csds: AtomicU64,
}

/// The hotplug counters of the current phase.
pub static HOTPLUG: HotplugStats = HotplugStats {
    skipped_targets: AtomicU64::new(0),
    single_offline_errors: AtomicU64::new(0),
    flushed_callbacks: AtomicU64::new(0),
    dropped_csds: AtomicU64::new(0),
};

/// Per CPU: odd while that CPU is between sampling the online mask and its
/// last queue push (pinned), the window a dying CPU waits out.
pub(super) static SEND_SEQ: [AtomicU32; MAX_VCPUS] = [const { AtomicU32::new(0) }; MAX_VCPUS];

pub(super) fn sender_enter(this: u32) {
    // SeqCst, like the dying CPU's clear of the online mask and its read of
    // this counter: either it sees the bracket open, or we see it offline.
    SEND_SEQ[this as usize].fetch_add(1, Ordering::SeqCst);
}

pub(super) fn sender_exit(this: u32) {
    // Release: our queue pushes before the dying CPU sees the bracket shut.
    SEND_SEQ[this as usize].fetch_add(1, Ordering::Release);
}

/// The hotplug dying hook, on the dying CPU (interrupts off, out of the
/// online mask already): Linux's `smpcfd_dying_cpu()` flush, preceded by
/// what stop_machine gives Linux for free: every sender bracket open when
/// this CPU left the mask has closed, so nothing can be queued here later.
/// While it waits it keeps running its queue (a sender may be spinning in
/// `csd_lock` for a csd queued here).
pub(super) fn cpu_dying(me: u32) {
    let design = design();
    // WRONG ON PURPOSE in no-dying-flush: the queue is dropped, not run.
    let flush = |me: u32| {
        if design == Design::NoDyingFlush {
            drop_queue(me);
            0
        } else {
            run_queue()
        }
    };
    let mut flushed = 0;
    for c in 0..nr_cpu_ids() {
        if c == me {
            continue;
        }
        let seq = SEND_SEQ[c as usize].load(Ordering::SeqCst);
        if seq & 1 == 1 {
            while SEND_SEQ[c as usize].load(Ordering::Acquire) == seq {
                flushed += flush(me);
                arch::pause();
            }
        }
    }
    fence(Ordering::Acquire);
    while !QUEUES[me as usize].is_empty() {
        flushed += flush(me);
    }
    HOTPLUG
        .flushed_callbacks
        .fetch_add(flushed, Ordering::Relaxed);
    if design == Design::FreeCsdOffline {
        // WRONG ON PURPOSE: the pre-series kernel freed the per-CPU csds of
        // a CPU going down. Retire the cfd (the next call here allocates a
        // new one), poison its idle csds, and leave it to waiters that
        // migrated away from here with calls still outstanding.
        let old = CFD[me as usize].swap(ptr::null_mut(), Ordering::AcqRel);
        if !old.is_null() {
            // SAFETY: cfds are never really freed (leaked), so the pointer
            // stays valid; only atomics are written.
            let cfd = unsafe { &*old };
            cfd.freed.store(true, Ordering::Release);
            for csd in cfd.csd.iter() {
                let _ =
                    csd.flags
                        .compare_exchange(0, CSD_POISON, Ordering::Relaxed, Ordering::Relaxed);
            }
        }
    }
}

/// The hotplug online hook: nothing to do in the safe designs (csds were
/// never freed); kept as the place Linux's `smpcfd_prepare_cpu()` is.
pub(super) fn cpu_coming_online(_me: u32) {}
