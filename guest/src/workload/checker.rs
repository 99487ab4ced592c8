//! The invariant checker: every cross call gets a request id and the set of
//! CPUs that must run it; each callback records its run against the
//! request. When a waiting caller returns, every target must have run it
//! exactly once; no callback may run for a waiting request that already
//! returned; asynchronous requests must all run by the end of the phase.
//! Violations are counted per design and the first few recorded.
//!
//! The workloads call it around every checked call and in every callback;
//! what only the cross-call core sees (a csd written unlocked, a freed or
//! dropped csd, flush-defer's deferrals) reaches it as the core's
//! observer, installed once at boot ([`install`]): the core never names
//! the checker. The request bookkeeping itself is
//! `guest_lib::requests`, unit-tested on the host.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use abi::{violation, ViolationRecord};
use guest_lib::cpumask::CpuMask;
use guest_lib::requests::{RequestTable, Violation};

use crate::kernel::arch;
use crate::kernel::percpu;
use crate::xcall::{self, CallObserver};

/// Requests in flight at most (4096 cover every workload's calls in
/// flight at 1024 vCPUs; a call beyond that is counted as unchecked).
const SLOTS: usize = 4096;

/// The request table (the bookkeeping itself is in guest-lib, unit-tested
/// on the host).
static TABLE: RequestTable<SLOTS> = RequestTable::new();

/// Installs the checker as the cross-call layer's observer.
///
/// # Safety
/// As [`xcall::set_observer`]: the BSP, at boot, before any cross call.
pub unsafe fn install() {
    // SAFETY: delegated to the caller.
    unsafe {
        xcall::set_observer(CallObserver {
            csd_reinit: record_csd_reinit,
            csd_freed: record_csd_freed,
            dropped: record_dropped,
            defer,
            undefer,
            deferred_run: on_deferred_callback,
            wait_returned,
        })
    };
}

/// Test-only fault (TestHook::BrokenChecker): record nothing.
pub static BROKEN: AtomicBool = AtomicBool::new(false);

/// Per-phase counters of the checker (reset by [`reset`]).
pub struct CheckerStats {
    /// Callbacks run.
    pub callbacks: AtomicU64,
    /// Violations.
    pub violations: AtomicU64,
    /// Cycles from phase start to the first violation (u64::MAX: none).
    pub first_violation: AtomicU64,
    /// Requests not tracked (table full).
    pub unchecked: AtomicU64,
    log_next: AtomicU32,
    log: [[AtomicU64; 3]; 8],
    phase_start: AtomicU64,
}

/// The checker's counters.
pub static STATS: CheckerStats = CheckerStats {
    callbacks: AtomicU64::new(0),
    violations: AtomicU64::new(0),
    first_violation: AtomicU64::new(u64::MAX),
    unchecked: AtomicU64::new(0),
    log_next: AtomicU32::new(0),
    log: [const { [const { AtomicU64::new(0) }; 3] }; 8],
    phase_start: AtomicU64::new(0),
};

/// Starts a new phase (no request may be in flight).
pub fn reset(start_tsc: u64) {
    STATS.callbacks.store(0, Ordering::Relaxed);
    STATS.violations.store(0, Ordering::Relaxed);
    STATS.first_violation.store(u64::MAX, Ordering::Relaxed);
    STATS.unchecked.store(0, Ordering::Relaxed);
    STATS.log_next.store(0, Ordering::Relaxed);
    STATS.phase_start.store(start_tsc, Ordering::Relaxed);
}

fn record(kind: u32, cpu: u32, request: u64) {
    if BROKEN.load(Ordering::Relaxed) {
        return;
    }
    let cycles = arch::rdtsc().saturating_sub(STATS.phase_start.load(Ordering::Relaxed));
    STATS.violations.fetch_add(1, Ordering::Relaxed);
    STATS.first_violation.fetch_min(cycles, Ordering::Relaxed);
    let i = STATS.log_next.fetch_add(1, Ordering::Relaxed) as usize;
    if let Some(e) = STATS.log.get(i) {
        e[0].store(u64::from(kind) | (u64::from(cpu) << 32), Ordering::Relaxed);
        e[1].store(request, Ordering::Relaxed);
        e[2].store(cycles, Ordering::Relaxed);
    }
}

fn report((kind, cpu, request): Violation) {
    record(kind, cpu, request);
}

/// The value a request's payload must hold (derived from its id).
pub fn expected_payload(token: usize) -> Option<u64> {
    TABLE.expected_payload(token)
}

/// Caller: writes the payload of `token` (plain relaxed store: the cross
/// call itself must publish it to the callbacks).
pub fn set_payload(token: usize) {
    TABLE.set_payload(token);
}

/// Callback: whether the caller's payload is visible here.
pub fn payload_visible(token: usize) -> bool {
    TABLE.payload_visible(token)
}

/// RPC callback: writes the reply for the caller.
pub fn set_reply(token: usize, value: u64) {
    TABLE.set_reply(token, value);
}

/// Whether `cpu` is a target of `token`'s request (true if untracked).
pub fn is_target(token: usize, cpu: u32) -> bool {
    TABLE.is_target(token, cpu)
}

/// RPC caller, after the wait: the reply.
pub fn reply(token: usize) -> Option<u64> {
    TABLE.reply(token)
}

/// A csd was written without its lock held (invariant 2).
fn record_csd_reinit(target: u32) {
    record(violation::CSD_REINIT, target, 0);
}

/// A waiter read a csd of a cfd its CPU freed going offline (hotplug).
fn record_csd_freed(target: u32) {
    record(violation::CSD_FREED, target, 0);
}

/// A csd queued to `target` stayed locked past its dying flush (hotplug).
fn record_dropped(target: u32) {
    record(violation::DROPPED_OFFLINE, target, 0);
}

/// The caller of `token` learnt that the CPUs of `skipped` were offline and
/// left out of its call (or, for a refused single call, its target): they
/// are no longer expected to run it.
pub fn skip(token: usize, skipped: &CpuMask) {
    TABLE.skip(token, skipped);
}

/// The recorded violations of the phase.
pub fn log() -> [ViolationRecord; 8] {
    let mut out = [ViolationRecord {
        kind: 0,
        cpu: 0,
        request: 0,
        cycles: 0,
    }; 8];
    let n = (STATS.log_next.load(Ordering::Relaxed) as usize).min(8);
    for (o, e) in out.iter_mut().zip(STATS.log.iter()).take(n) {
        let k = e[0].load(Ordering::Relaxed);
        *o = ViolationRecord {
            kind: k as u32,
            cpu: (k >> 32) as u32,
            request: e[1].load(Ordering::Relaxed),
            cycles: e[2].load(Ordering::Relaxed),
        };
    }
    out
}

/// Registers a request for `targets`; returns the token callbacks get
/// (0: not tracked because the table is full).
pub fn begin(targets: &CpuMask, wait: bool) -> usize {
    let token = TABLE.begin(targets, wait);
    if token == 0 {
        STATS.unchecked.fetch_add(1, Ordering::Relaxed);
    }
    token
}

/// Records that this CPU ran the callback of `token`.
pub fn on_callback(token: usize) {
    // flush-defer: work deferred to this CPU must have run before any other
    // callback (the cross-call paths drain it first).
    crate::xcall::pv::check_drained(record_deferred_late);
    run(token, false);
}

/// Records that this CPU ran the deferred callback of `token` (flush-defer:
/// after the caller returned, by design).
fn on_deferred_callback(token: usize) {
    run(token, true);
}

/// flush-defer: the caller of `token` deferred `cpu` (it will run the
/// callback when it resumes; the caller does not wait for it).
fn defer(token: usize, cpu: u32) {
    TABLE.defer(token, cpu);
}

/// flush-defer: the deferral of `cpu` was taken back (it resumed first).
fn undefer(token: usize, cpu: u32) {
    TABLE.undefer(token, cpu);
}

/// flush-defer: `cpu` ran something else before the work deferred to it.
fn record_deferred_late(cpu: u32, token: usize) {
    record(violation::DEFERRED_LATE, cpu, TABLE.id(token));
}

fn run(token: usize, deferred: bool) {
    STATS.callbacks.fetch_add(1, Ordering::Relaxed);
    TABLE.run(token, percpu::cpu_id(), deferred, report);
}

/// The caller of `token` is about to make its call with callback argument
/// `info`: a waiting call is then checked where its wait returns
/// ([`wait_returned`]), not only when the caller gets back to [`end`]
/// (after the call's return path and the system call's interrupt-off
/// transition, emulated in the plain kernel, in which an under-wait's
/// skipped callback usually runs unseen).
pub fn expect_return(token: usize, info: usize) {
    if token != 0 {
        xcall::tasks::arm_return(token, info);
    }
}

/// The observer hook: the running task's armed call (if this is it)
/// returned from its wait.
fn wait_returned(info: usize, skipped: &CpuMask) {
    if let Some(token) = xcall::tasks::take_armed(info) {
        TABLE.wait_returned(token, skipped, report);
    }
}

/// The caller of `token` returns: for a waiting call, every target must
/// have run (checked here unless its wait's return was).
pub fn end(token: usize) {
    xcall::tasks::disarm();
    TABLE.end(token, report);
}

/// End of a phase, once it quiesced (every caller returned, and the drain
/// barrier saw every CPU run everything queued before it): a request still
/// pending lost a callback. Only requests whose caller returned are looked
/// at and freed; a slot a caller still holds is left as it is (there is
/// none after quiescence; a stalled phase does not call this at all), so
/// its later `end()` and callbacks cannot underflow it.
pub fn check_lost() {
    TABLE.check_lost(report);
}
