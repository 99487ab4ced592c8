//! Cross-CPU function calls with Linux's semantics (kernel/smp.c): a
//! `call_single_data` (csd) per request, locked by its single writer with
//! CSD_FLAG_LOCK and unlocked by the target once the callback ran (sync) or
//! is about to run (async); a lock-free per-CPU call queue (an llist whose
//! push says whether it was empty, so an IPI goes out only when a queue
//! goes from empty to non-empty); the IPI handler that drains it, synchronous
//! entries first ("people are waiting for us").
//!
//! [`smp_call_function_many_cond`] is the core routine; the public wrappers
//! are thin. Queueing and sending always run pinned (preemption disabled):
//! they use this CPU's `cfd` (one csd per target and the `cpumask_ipi`
//! scratch mask). What happens to the final wait is the design's business
//! ([`designs`]): the upstream design stays pinned, the series' designs
//! re-enable preemption first and wait on a mask the task owns.
//!
//! csds are allocated once per CPU (on its first cross call) and never
//! freed, so a waiter that migrated can still poll the csds it queued.
//!
//! CPU hotplug (`kernel::hotplug`): senders sample the online mask while
//! pinned, inside a per-CPU sender bracket; offline targets are left out of
//! masks and `smp_call_function_single()` to one fails ([`TargetOffline`]).
//! A dying CPU waits until every bracket that was open when it left the
//! online mask has closed (so nothing can be queued to it any more: what
//! Linux gets from stop_machine), then runs its queue (the dying flush).
//! Two broken variants break exactly that and are caught by the checks in
//! the waits: `free-csd-offline` (the dying CPU retires its cfd: a migrated
//! waiter still polling it reads freed memory) and `no-dying-flush` (the
//! queue is dropped: a csd queued to the dead CPU stays locked).
//!
//! This layer plugs into the kernel at boot ([`init`]): the CALL_FUNCTION
//! and FLUSH_DEFER interrupt handlers, and the task hooks that give every
//! task its IPI wait mask and drain flush-defer's deferred work.

//!
//! This file holds the layer's entry points at boot, its settings and its
//! counters; the submodules, one concern each: [`csd`] (the csd and the
//! per-CPU cfd, their lock), [`queue`] (the per-CPU call queue and the IPI
//! handler that runs it), [`send`] (the calls: many, single, flush-defer's
//! shootdown, the drain barrier), [`wait`] (the waits on csds and wait
//! sets), [`offline`] (CPU hotplug on the call paths: the sender bracket,
//! the dying flush), [`observer`] (what the core reports to the checker the
//! workload layer installs).

mod csd;
pub mod designs;
mod observer;
mod offline;
pub mod pv;
mod queue;
mod send;
pub mod tasks;
mod wait;

pub use csd::Cfd;
pub use observer::{set_observer, CallObserver};
pub use offline::HOTPLUG;
pub use queue::handle_ipi;
pub use send::{
    drain_barrier, flush_tlb_multi, on_each_cpu_cond_mask, smp_call_function_many_cond,
    smp_call_function_single,
};
pub use wait::{stuck_wait, wait_all, WaitSet};

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use abi::{vector, Control, Design};

use crate::kernel::hotplug::{self, HotplugHooks};
use crate::kernel::sched::{self, TaskHooks};
use crate::kernel::{apic, percpu, trap};

/// Plugs the cross-call layer into the kernel and takes its settings from
/// the control block (BSP, at boot, before any task exists).
pub fn init(control: &Control) {
    // SAFETY: the BSP at boot, before StartAps and before any task or
    // interrupt source exists (Program::init's contract).
    unsafe {
        trap::set_handler(vector::CALL_FUNCTION, on_call_function_ipi);
        trap::set_handler(vector::FLUSH_DEFER, on_flush_defer);
        sched::set_hooks(TaskHooks {
            on_create: designs::task_created,
            on_free: designs::task_freed,
            drain: || pv::run_deferred(false),
        });
        hotplug::set_hooks(HotplugHooks {
            dying: offline::cpu_dying,
            online: offline::cpu_coming_online,
        });
    }
    let cycles_per_us = sched::PARAMS.cycles_per_us.load(Ordering::Relaxed);
    PARAMS
        .guest_preempt_prob
        .store(control.guest_preempt_prob, Ordering::Relaxed);
    PARAMS.watchdog_cycles.store(
        u64::from(control.csd_watchdog_us()) * cycles_per_us,
        Ordering::Relaxed,
    );
    PARAMS
        .yield_gap_cycles
        .store(100 * cycles_per_us, Ordering::Relaxed);
    designs::ALLOC_FAIL_PROB.store(control.alloc_fail_prob, Ordering::Relaxed);
}

fn on_call_function_ipi() {
    apic::eoi();
    percpu::this().ipis_received.inc();
    if hotplug::is_offline(percpu::cpu_id()) {
        // An offline CPU takes no calls: a late IPI sent before it went
        // down finds nothing its flush did not run (one sent after is
        // counted at its sender).
        return;
    }
    handle_ipi();
}

fn on_flush_defer() {
    apic::eoi();
    // The VMM sent it before resuming this vCPU: nothing ran since.
    pv::run_deferred(true);
}

/// A cross-call callback: `func(info)`.
pub type CallFn = fn(usize);
/// A per-CPU condition: run on `cpu` only if `cond(cpu, info)`.
pub type CondFn = fn(u32, usize) -> bool;

fn nop(_: usize) {}
/// Statistics of the current design phase.
pub struct SmpStats {
    /// Calls completed.
    pub calls: AtomicU64,
    /// Waits during which the task was switched out.
    pub waits_preempted: AtomicU64,
    /// Waits that ended on another CPU than they started.
    pub waits_migrated: AtomicU64,
    /// csd-lock waits over the watchdog threshold.
    pub watchdog_fires: AtomicU64,
}

/// Counters of the current phase.
pub static STATS: SmpStats = SmpStats {
    calls: AtomicU64::new(0),
    waits_preempted: AtomicU64::new(0),
    waits_migrated: AtomicU64::new(0),
    watchdog_fires: AtomicU64::new(0),
};

/// Phase settings (BSP, between phases).
pub struct SmpParams {
    /// The [`Design`] code in force.
    pub design: AtomicU32,
    /// Guest forced preemption per wait spin, in 1/65536.
    pub guest_preempt_prob: AtomicU32,
    /// csd-lock watchdog threshold in cycles.
    pub watchdog_cycles: AtomicU64,
    /// sched-yield on KVM's flag alone: at most one yield per this many
    /// cycles per wait.
    pub yield_gap_cycles: AtomicU64,
}

/// `smp_call_function_single()` to an offline CPU (Linux: -ENXIO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetOffline;

/// The settings.
pub static PARAMS: SmpParams = SmpParams {
    design: AtomicU32::new(0),
    guest_preempt_prob: AtomicU32::new(0),
    watchdog_cycles: AtomicU64::new(u64::MAX),
    yield_gap_cycles: AtomicU64::new(u64::MAX),
};

/// The design in force.
pub fn design() -> Design {
    Design::try_from(PARAMS.design.load(Ordering::Relaxed)).unwrap_or(Design::Upstream)
}

/// Starts a design's phase: puts `design` in force and resets the
/// counters. No call may be in flight.
pub fn start_phase(design: Design) {
    PARAMS.design.store(design as u32, Ordering::Relaxed);
    reset_stats();
    designs::reset_stats();
}

/// Resets the phase counters.
fn reset_stats() {
    for c in [
        &STATS.calls,
        &STATS.waits_preempted,
        &STATS.waits_migrated,
        &STATS.watchdog_fires,
        &HOTPLUG.skipped_targets,
        &HOTPLUG.single_offline_errors,
        &HOTPLUG.flushed_callbacks,
        &HOTPLUG.dropped_csds,
    ] {
        c.store(0, Ordering::Relaxed);
    }
    hotplug::reset_stats();
}
