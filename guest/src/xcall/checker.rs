//! The invariant checker: every cross call gets a request id and the set of
//! CPUs that must run it; each callback records its run against the
//! request. When a waiting caller returns, every target must have run it
//! exactly once; no callback may run for a waiting request that already
//! returned; asynchronous requests must all run by the end of the phase.
//! Violations are counted per design and the first few recorded.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use abi::{violation, ViolationRecord};

use crate::kernel::arch;
use crate::kernel::percpu;
use guest_lib::cpumask::{for_each_cpu, nr_words, CpuMask, MAX_WORDS};

const SLOTS: usize = 4096;

struct Request {
    id: AtomicU64,
    targets: [AtomicU64; MAX_WORDS],
    ran: [AtomicU64; MAX_WORDS],
    /// Targets the caller deferred (flush-defer): they run the callback when
    /// they resume, after the caller returned.
    deferred: [AtomicU64; MAX_WORDS],
    /// Targets still to run, plus one for the caller's return; 0: free.
    remaining: AtomicU32,
    returned: AtomicBool,
    wait: AtomicBool,
    /// Written by the caller before the call; callbacks must see it.
    payload: AtomicU64,
    /// Written by an RPC callback; the caller checks it after the wait.
    reply: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // array initialiser
const REQUEST_INIT: Request = Request {
    id: AtomicU64::new(0),
    targets: [const { AtomicU64::new(0) }; MAX_WORDS],
    ran: [const { AtomicU64::new(0) }; MAX_WORDS],
    deferred: [const { AtomicU64::new(0) }; MAX_WORDS],
    remaining: AtomicU32::new(0),
    returned: AtomicBool::new(false),
    wait: AtomicBool::new(false),
    payload: AtomicU64::new(0),
    reply: AtomicU64::new(0),
};

static TABLE: [Request; SLOTS] = [REQUEST_INIT; SLOTS];
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

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

/// The value a request's payload must hold (derived from its id).
pub fn expected_payload(token: usize) -> Option<u64> {
    let r = TABLE.get(token.checked_sub(1)?)?;
    Some(
        r.id.load(Ordering::Acquire)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15),
    )
}

/// Caller: writes the payload of `token` (plain relaxed store: the cross
/// call itself must publish it to the callbacks).
pub fn set_payload(token: usize) {
    if let (Some(v), Some(r)) = (
        expected_payload(token),
        token.checked_sub(1).and_then(|i| TABLE.get(i)),
    ) {
        r.payload.store(v, Ordering::Relaxed);
    }
}

/// Callback: whether the caller's payload is visible here.
pub fn payload_visible(token: usize) -> bool {
    match (
        expected_payload(token),
        token.checked_sub(1).and_then(|i| TABLE.get(i)),
    ) {
        (Some(v), Some(r)) => r.payload.load(Ordering::Relaxed) == v,
        _ => true,
    }
}

/// RPC callback: writes the reply for the caller.
pub fn set_reply(token: usize, value: u64) {
    if let Some(r) = token.checked_sub(1).and_then(|i| TABLE.get(i)) {
        r.reply.store(value, Ordering::Relaxed);
    }
}

/// Whether `cpu` is a target of `token`'s request (true if untracked).
pub fn is_target(token: usize, cpu: u32) -> bool {
    match token.checked_sub(1).and_then(|i| TABLE.get(i)) {
        Some(r) => r.targets[cpu as usize / 64].load(Ordering::Relaxed) & (1 << (cpu % 64)) != 0,
        None => true,
    }
}

/// RPC caller, after the wait: the reply.
pub fn reply(token: usize) -> Option<u64> {
    token
        .checked_sub(1)
        .and_then(|i| TABLE.get(i))
        .map(|r| r.reply.load(Ordering::Relaxed))
}

/// A csd was written without its lock held (invariant 2).
pub fn record_csd_reinit(target: u32) {
    record(violation::CSD_REINIT, target, 0);
}

/// A waiter read a csd of a cfd its CPU freed going offline (hotplug).
pub fn record_csd_freed(target: u32) {
    record(violation::CSD_FREED, target, 0);
}

/// A csd queued to `target` stayed locked past its dying flush (hotplug).
pub fn record_dropped(target: u32) {
    record(violation::DROPPED_OFFLINE, target, 0);
}

/// The caller of `token` learnt that the CPUs of `skipped` were offline and
/// left out of its call (or, for a refused single call, its target): they
/// are no longer expected to run it.
pub fn skip(token: usize, skipped: &CpuMask) {
    let Some(r) = token.checked_sub(1).and_then(|i| TABLE.get(i)) else {
        return;
    };
    for i in 0..nr_words() {
        let gone = r.targets[i].fetch_and(!skipped.words[i], Ordering::AcqRel) & skipped.words[i];
        for _ in 0..gone.count_ones() {
            release(r);
        }
    }
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
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let slot = (id as usize) % SLOTS;
    let r = &TABLE[slot];
    let weight = targets.weight();
    // Claim the slot only if its previous request is fully done.
    if r.remaining
        .compare_exchange(0, weight + 1, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        STATS.unchecked.fetch_add(1, Ordering::Relaxed);
        return 0;
    }
    for i in 0..nr_words() {
        r.targets[i].store(targets.words[i], Ordering::Relaxed);
        r.ran[i].store(0, Ordering::Relaxed);
        r.deferred[i].store(0, Ordering::Relaxed);
    }
    r.returned.store(false, Ordering::Relaxed);
    r.wait.store(wait, Ordering::Relaxed);
    // Release: the request's fields before the id callbacks check.
    r.id.store(id, Ordering::Release);
    slot + 1
}

fn release(r: &Request) {
    // Release: our accesses to the slot before a new claim reuses it.
    r.remaining.fetch_sub(1, Ordering::Release);
}

/// Records that this CPU ran the callback of `token`.
pub fn on_callback(token: usize) {
    // flush-defer: work deferred to this CPU must have run before any other
    // callback (the cross-call paths drain it first).
    crate::xcall::pv::check_drained();
    run(token, false);
}

/// Records that this CPU ran the deferred callback of `token` (flush-defer:
/// after the caller returned, by design).
pub fn on_deferred_callback(token: usize) {
    run(token, true);
}

/// flush-defer: the caller of `token` deferred `cpu` (it will run the
/// callback when it resumes; the caller does not wait for it).
pub fn defer(token: usize, cpu: u32) {
    if let Some(r) = token.checked_sub(1).and_then(|i| TABLE.get(i)) {
        r.deferred[cpu as usize / 64].fetch_or(1 << (cpu % 64), Ordering::AcqRel);
    }
}

/// flush-defer: the deferral of `cpu` was taken back (it resumed first).
pub fn undefer(token: usize, cpu: u32) {
    if let Some(r) = token.checked_sub(1).and_then(|i| TABLE.get(i)) {
        r.deferred[cpu as usize / 64].fetch_and(!(1 << (cpu % 64)), Ordering::AcqRel);
    }
}

/// flush-defer: `cpu` ran something else before the work deferred to it.
pub fn record_deferred_late(cpu: u32, token: usize) {
    let id = token
        .checked_sub(1)
        .and_then(|i| TABLE.get(i))
        .map_or(0, |r| r.id.load(Ordering::Relaxed));
    record(violation::DEFERRED_LATE, cpu, id);
}

fn run(token: usize, deferred: bool) {
    STATS.callbacks.fetch_add(1, Ordering::Relaxed);
    if token == 0 {
        return;
    }
    let r = &TABLE[token - 1];
    let id = r.id.load(Ordering::Acquire);
    let me = percpu::cpu_id();
    let (w, bit) = (me as usize / 64, 1u64 << (me % 64));
    if !deferred && r.wait.load(Ordering::Relaxed) && r.returned.load(Ordering::Acquire) {
        record(violation::RAN_AFTER_RETURN, me, id);
    }
    if r.targets[w].load(Ordering::Relaxed) & bit == 0 {
        record(violation::WRONG_CPU, me, id);
        return;
    }
    // AcqRel: the caller's check of `ran` sees this run (pairs with end()).
    if r.ran[w].fetch_or(bit, Ordering::AcqRel) & bit != 0 {
        record(violation::RAN_TWICE, me, id);
        return;
    }
    release(r);
}

/// The caller of `token` returns: for a waiting call, every target must
/// have run.
pub fn end(token: usize) {
    if token == 0 {
        return;
    }
    let r = &TABLE[token - 1];
    let id = r.id.load(Ordering::Relaxed);
    if r.wait.load(Ordering::Relaxed) {
        for i in 0..nr_words() {
            // Deferred targets run later, when they resume (flush-defer).
            let missing = r.targets[i].load(Ordering::Relaxed)
                & !r.ran[i].load(Ordering::Acquire)
                & !r.deferred[i].load(Ordering::Acquire);
            for_each_cpu(
                1,
                |_| missing,
                |c| record(violation::NOT_RUN, i as u32 * 64 + c, id),
            );
        }
    }
    r.returned.store(true, Ordering::Release);
    release(r);
}

/// End of a phase, once it quiesced (every caller returned, and the drain
/// barrier saw every CPU run everything queued before it): a request still
/// pending lost a callback. Only requests whose caller returned are looked
/// at and freed; a slot a caller still holds is left as it is (there is
/// none after quiescence; a stalled phase does not call this at all), so
/// its later `end()` and callbacks cannot underflow it.
pub fn check_lost() {
    for r in TABLE.iter() {
        if r.remaining.load(Ordering::Acquire) == 0 || !r.returned.load(Ordering::Acquire) {
            continue;
        }
        let id = r.id.load(Ordering::Relaxed);
        for i in 0..nr_words() {
            let missing = r.targets[i].load(Ordering::Relaxed) & !r.ran[i].load(Ordering::Relaxed);
            for_each_cpu(
                1,
                |_| missing,
                |c| record(violation::LOST, i as u32 * 64 + c, id),
            );
        }
        r.remaining.store(0, Ordering::Release);
    }
}
