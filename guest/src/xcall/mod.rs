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

pub mod checker;
pub mod designs;
pub mod pv;
pub mod tasks;

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use abi::preempt_off::cause as poff;
use abi::{vector, Control, Design, MAX_VCPUS};
use guest_lib::cpumask::{for_each_cpu, next_cpu, nr_cpu_ids, nr_words, CpuMask, SharedMask};
use guest_lib::rng::Prob16;

use crate::kernel::console::println;
use crate::kernel::fmt::Dec;
use crate::kernel::hotplug::{self, HotplugHooks};
use crate::kernel::pv as kernel_pv;
use crate::kernel::sched::{self, TaskHooks};
use crate::kernel::{apic, arch, percpu, trace, trap};

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
            dying: cpu_dying,
            online: cpu_coming_online,
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

/// The csd is in use (set by its writer, cleared by the target).
const CSD_FLAG_LOCK: u32 = 0x01;
/// A waiter spins on this csd: unlock only after the callback ran.
const CSD_TYPE_SYNC: u32 = 0x10;
/// What `free-csd-offline` fills a retired cfd's idle csds with (the slab
/// poison byte; the lock bit set, so a reader spins rather than reuses it).
const CSD_POISON: u32 = 0x6b6b_6b6b;
/// Set by `no-dying-flush` on each csd it drops (still locked): the
/// checker's shadow mark, so that its waiter can tell (and recover).
const CSD_FLAG_DROPPED: u32 = 0x100;

/// A cross-call callback: `func(info)`.
pub type CallFn = fn(usize);
/// A per-CPU condition: run on `cpu` only if `cond(cpu, info)`.
pub type CondFn = fn(u32, usize) -> bool;

fn nop(_: usize) {}

/// `call_single_data`.
pub struct Csd {
    next: UnsafeCell<*mut Csd>,
    flags: AtomicU32,
    func: UnsafeCell<CallFn>,
    info: UnsafeCell<usize>,
    /// The CPU it was last queued to (Linux's CSD_LOCK_WAIT_DEBUG `dst`).
    dst: AtomicU32,
    /// That CPU's hotplug generation when it was queued: once the CPU's
    /// generation moves on, its dying flush has run (and unlocked) it.
    gen: AtomicU32,
}

// SAFETY: `func`, `info` and `next` are written only by the csd's single
// writer while it holds CSD_FLAG_LOCK and the csd is in no queue, or by the
// target that drained it from its queue; the lock flag and the queue
// head (atomics) order those hand-overs.
unsafe impl Sync for Csd {}

impl Csd {
    /// An unlocked csd.
    pub const fn new() -> Self {
        Csd {
            next: UnsafeCell::new(ptr::null_mut()),
            flags: AtomicU32::new(0),
            func: UnsafeCell::new(nop),
            info: UnsafeCell::new(0),
            dst: AtomicU32::new(u32::MAX),
            gen: AtomicU32::new(0),
        }
    }

    /// Whether the csd is locked (a callback pending or running).
    pub fn locked(&self) -> bool {
        // Acquire: pairs with the Release in csd_unlock, so a waiter that
        // sees the flag clear also sees what the callback wrote.
        self.flags.load(Ordering::Acquire) & CSD_FLAG_LOCK != 0
    }
}

/// Per-CPU call queues (llist heads).
static QUEUES: [AtomicPtr<Csd>; MAX_VCPUS] = [const { AtomicPtr::new(ptr::null_mut()) }; MAX_VCPUS];
/// Per-CPU csd for asynchronous single calls (`csd_data`).
static CSD_DATA: [Csd; MAX_VCPUS] = [const { Csd::new() }; MAX_VCPUS];
/// Per-CPU cfd, allocated on first use, never freed.
static CFD: [AtomicPtr<Cfd>; MAX_VCPUS] = [const { AtomicPtr::new(ptr::null_mut()) }; MAX_VCPUS];
/// Set while a CPU runs callbacks (for the csd-lock watchdog report).
static IN_CALLBACK: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];

/// A CPU's `call_function_data`.
pub struct Cfd {
    /// One csd per target CPU.
    pub csd: Box<[Csd]>,
    /// Targets of the current call (`cfd->cpumask`): written by the owner
    /// while pinned; read by the upstream wait and by the unsafe design.
    pub cpumask: SharedMask,
    /// Targets whose queue went from empty to non-empty (owner only).
    cpumask_ipi: UnsafeCell<CpuMask>,
    /// flush-defer's scratch mask (`__pv_cpu_mask`; owner only, pinned).
    flushmask: UnsafeCell<CpuMask>,
    /// `free-csd-offline` only: its CPU went offline and "freed" it (the
    /// shadow state a memory checker keeps; the memory itself is leaked so
    /// the broken variant cannot crash the guest).
    freed: AtomicBool,
}

// SAFETY: `csd` entries are Sync; `cpumask` is atomic; `cpumask_ipi` and
// `flushmask` are only touched by the owning CPU while pinned.
unsafe impl Sync for Cfd {}

/// CPU `cpu`'s cfd. Allocated by that CPU (pinned) on its first call.
pub fn cfd_of(cpu: u32) -> &'static Cfd {
    let slot = &CFD[cpu as usize];
    let mut p = slot.load(Ordering::Acquire);
    if p.is_null() {
        debug_assert_eq!(cpu, percpu::cpu_id(), "only the owner allocates its cfd");
        let csd: Vec<Csd> = (0..nr_cpu_ids()).map(|_| Csd::new()).collect();
        let cfd = Box::new(Cfd {
            csd: csd.into_boxed_slice(),
            cpumask: SharedMask::new(),
            cpumask_ipi: UnsafeCell::new(CpuMask::new()),
            flushmask: UnsafeCell::new(CpuMask::new()),
            freed: AtomicBool::new(false),
        });
        p = Box::into_raw(cfd);
        // Release: the initialised cfd before its pointer.
        slot.store(p, Ordering::Release);
    }
    // SAFETY: cfds are never freed.
    unsafe { &*p }
}

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
static SEND_SEQ: [AtomicU32; MAX_VCPUS] = [const { AtomicU32::new(0) }; MAX_VCPUS];

fn sender_enter(this: u32) {
    // SeqCst, like the dying CPU's clear of the online mask and its read of
    // this counter: either it sees the bracket open, or we see it offline.
    SEND_SEQ[this as usize].fetch_add(1, Ordering::SeqCst);
}

fn sender_exit(this: u32) {
    // Release: our queue pushes before the dying CPU sees the bracket shut.
    SEND_SEQ[this as usize].fetch_add(1, Ordering::Release);
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

/// Whether `csd`, locked, was queued to a CPU that has gone offline since
/// (its dying flush should have unlocked it): `no-dying-flush`'s bug. The
/// generation is read first (Acquire), then the lock again, so a csd the
/// flush did unlock is never taken for a dropped one.
fn dropped(csd: &Csd) -> bool {
    if csd.flags.load(Ordering::Acquire) & CSD_FLAG_DROPPED != 0 {
        return true;
    }
    let dst = csd.dst.load(Ordering::Relaxed);
    (dst as usize) < MAX_VCPUS
        && hotplug::generation(dst) != csd.gen.load(Ordering::Relaxed)
        && csd.locked()
}

/// A dropped csd: recorded, then unlocked here so that the run goes on (a
/// real kernel would hang in this wait).
fn recover_dropped(csd: &Csd) {
    checker::record_dropped(csd.dst.load(Ordering::Relaxed));
    csd_unlock(csd);
}

/// Waits until `csd` is unlocked, then locks it (single writer: we are
/// pinned on the csd's owning CPU, or it is on our stack).
fn csd_lock(csd: &Csd) {
    if csd.locked() {
        let tag = trace::cause(poff::CSD_LOCK);
        while csd.locked() {
            if dropped(csd) {
                recover_dropped(csd);
                break;
            }
            arch::pause();
        }
        trace::cause(tag);
    }
    csd.flags.store(CSD_FLAG_LOCK, Ordering::Relaxed);
}

/// Unlocks `csd` (target side).
fn csd_unlock(csd: &Csd) {
    // Release: the callback's effects (sync) before the waiter sees it done.
    csd.flags.store(0, Ordering::Release);
}

/// Fills a locked csd and queues it on `target`; true if an IPI is needed.
fn queue(target: u32, csd: &Csd, func: CallFn, info: usize, sync: bool) -> bool {
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

fn send_call_ipi(target: u32) {
    hotplug::note_call_ipi_to(target);
    apic::send_ipi(target, vector::CALL_FUNCTION);
}

/// The CALL_FUNCTION IPI: drains this CPU's queue, synchronous entries
/// first. Runs with interrupts off.
pub fn handle_ipi() {
    run_queue();
}

/// [`handle_ipi`]; returns how many callbacks it ran.
fn run_queue() -> u64 {
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

/// The hotplug dying hook, on the dying CPU (interrupts off, out of the
/// online mask already): Linux's `smpcfd_dying_cpu()` flush, preceded by
/// what stop_machine gives Linux for free: every sender bracket open when
/// this CPU left the mask has closed, so nothing can be queued here later.
/// While it waits it keeps running its queue (a sender may be spinning in
/// `csd_lock` for a csd queued here).
fn cpu_dying(me: u32) {
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
    while !QUEUES[me as usize].load(Ordering::Acquire).is_null() {
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

/// `no-dying-flush`: takes the queue and drops every csd in it unrun, each
/// left locked with the checker's dropped mark.
fn drop_queue(me: u32) {
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

/// The hotplug online hook: nothing to do in the safe designs (csds were
/// never freed); kept as the place Linux's `smpcfd_prepare_cpu()` is.
fn cpu_coming_online(_me: u32) {}

/// Spins until `csd` is unlocked. If `preemptible`, the spin may be
/// preempted (and moved to another CPU), and yields with the guest-side
/// forced-preemption probability. A wait past the watchdog threshold is
/// counted and the IPI resent once (CSD_LOCK_WAIT_DEBUG).
pub fn csd_lock_wait(csd: &Csd, target: u32, preemptible: bool) {
    lock_wait(csd, target, preemptible, None);
}

/// A freed cfd read by a waiter (`free-csd-offline`): recorded; true if so
/// (the wait must not trust that memory any further).
fn freed(owner: Option<&Cfd>, target: u32) -> bool {
    if owner.is_some_and(|c| c.freed.load(Ordering::Acquire)) {
        checker::record_csd_freed(target);
        return true;
    }
    false
}

/// [`csd_lock_wait`] for a csd of `owner`'s cfd (None: a csd on the stack).
fn lock_wait(csd: &Csd, target: u32, preemptible: bool, owner: Option<&Cfd>) {
    if freed(owner, target) || !csd.locked() {
        return;
    }
    // For the stall report: what this task waits on.
    let note = tasks::waiting(target);
    // The preempt-off tracer's tag (per CPU: only where the wait is pinned).
    let tag = (!preemptible).then(|| trace::cause(poff::CSD_LOCK_WAIT));
    let start = arch::rdtsc();
    let limit = PARAMS.watchdog_cycles.load(Ordering::Relaxed);
    let chance = Prob16(PARAMS.guest_preempt_prob.load(Ordering::Relaxed));
    let mut resent = false;
    // PV (preempted / sched-yield): one load of the feature word per wait.
    let watch_pv = pv::enabled(abi::pv::PREEMPTED | abi::pv::SCHED_YIELD);
    let mut watch = pv::WaitWatch::new();
    let yield_gap = PARAMS.yield_gap_cycles.load(Ordering::Relaxed);
    while csd.locked() {
        arch::pause();
        if freed(owner, target) {
            break;
        }
        if dropped(csd) {
            recover_dropped(csd);
            break;
        }
        if watch_pv {
            watch.spin(target, yield_gap);
        }
        if preemptible && chance.0 > 0 && chance.hits(percpu::random()) {
            sched::yield_now();
        }
        if !resent && arch::rdtsc().wrapping_sub(start) > limit {
            resent = true;
            let fires = STATS.watchdog_fires.fetch_add(1, Ordering::Relaxed);
            let busy = IN_CALLBACK[target as usize].load(Ordering::Relaxed);
            // Reported on the console for the first few of a phase only;
            // all are counted.
            if fires < 3 {
                let preempted = match kernel_pv::preempted_sources(target) {
                    0 => "no (as far as PV state tells)",
                    kernel_pv::SEEN_KVM => "yes (KVM steal-time flag)",
                    kernel_pv::SEEN_IPIVIRT => "yes (ipivirt PV state)",
                    _ => "yes (KVM flag and ipivirt PV state)",
                };
                println!(
                    "csd-lock watchdog: waiting for vCPU {} (running a callback: {}; preempted: {}); resending the IPI",
                    Dec(target),
                    if busy { "yes" } else { "no" },
                    preempted
                );
            }
            // A sender like any other: inside the bracket, to an online
            // target only (an offline one's flush unlocked all it had).
            sched::preempt_disable();
            let this = percpu::cpu_id();
            sender_enter(this);
            if hotplug::cpu_online(target) {
                send_call_ipi(target);
            }
            sender_exit(this);
            sched::preempt_enable();
        }
    }
    if watch_pv {
        watch.finish();
    }
    tasks::wait_done(note);
    if let Some(tag) = tag {
        trace::cause(tag);
    }
}

/// Where a design's wait reads its mask from.
pub enum WaitSet<'a> {
    /// Words the waiting task owns (task-local, stack, allocated).
    Owned(&'a [u64]),
    /// A mask that can change under the waiter (the per-CPU cfd mask).
    Live(&'a SharedMask),
}

impl WaitSet<'_> {
    fn word(&self, i: usize) -> u64 {
        match self {
            WaitSet::Owned(w) => w.get(i).copied().unwrap_or(0),
            WaitSet::Live(m) => m.word(i),
        }
    }

    /// `cpumask_next()`: the first CPU >= `from` in the set, reading the
    /// mask as it is now (as Linux's for_each_cpu() does at every step; a
    /// per-CPU mask overwritten meanwhile misleads the waiter right here).
    fn next(&self, from: u32) -> Option<u32> {
        next_cpu(|i| self.word(i), from)
    }
}

/// Waits for every csd of `set` in `cfd` (the cfd of the CPU that queued).
pub fn wait_all(set: &WaitSet<'_>, cfd: &Cfd, preemptible: bool) {
    // The stack this wait uses below the design dispatch (see call_many):
    // a local's address here against one in the dispatching frame.
    let mark = 0u8;
    let sp = core::hint::black_box(&mark) as *const u8 as u64;
    if let Some(depth) = tasks::take_wait_base().map(|b| b.wrapping_sub(sp)) {
        if depth < sched::KSTACK_SIZE as u64 {
            designs::record_wait_stack(depth);
        }
    }
    let task = sched::current();
    let (switches, cpu0) = (task.switches.load(Ordering::Relaxed), percpu::cpu_id());
    let mut from = 0;
    while let Some(c) = set.next(from) {
        lock_wait(&cfd.csd[c as usize], c, preemptible, Some(cfd));
        from = c + 1;
    }
    if preemptible {
        if task.switches.load(Ordering::Relaxed) != switches {
            STATS.waits_preempted.fetch_add(1, Ordering::Relaxed);
        }
        if percpu::cpu_id() != cpu0 {
            STATS.waits_migrated.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `smp_call_function_many_cond()`: runs `func(info)` on every CPU of
/// `targets` (and this one if `run_local`) for which `cond` holds; with
/// `wait`, returns only after all of them ran it. Must be called with
/// interrupts enabled (a waiter services incoming calls) and not pinned:
/// it pins itself where it must (invariant 8). Returns the targets left
/// out because they were offline (the caller's checker must not expect
/// them).
pub fn smp_call_function_many_cond(
    targets: &CpuMask,
    func: CallFn,
    info: usize,
    wait: bool,
    run_local: bool,
    cond: Option<CondFn>,
) -> CpuMask {
    call_many(targets, func, info, wait, run_local, cond, false)
}

/// [`smp_call_function_many_cond`]; with `pinned_wait` the wait stays
/// pinned whatever the design (flush-defer's path, as in Linux).
fn call_many(
    targets: &CpuMask,
    func: CallFn,
    info: usize,
    wait: bool,
    run_local: bool,
    cond: Option<CondFn>,
    pinned_wait: bool,
) -> CpuMask {
    assert!(arch::irqs_enabled(), "cross calls need interrupts on");
    // Acquire the csds, queue and send under one pin (invariant 1).
    sched::preempt_disable();
    let tag = trace::cause(poff::SEND);
    let this = percpu::cpu_id();
    sender_enter(this);
    let cfd = cfd_of(this);
    let run_local = run_local && targets.test(this) && cond.is_none_or(|c| c(this, info));
    let mut remote = *targets;
    remote.words[this as usize / 64] &= !(1 << (this % 64));
    // The online mask, sampled pinned inside the bracket: offline targets
    // are left out (Linux's cpumask_and with cpu_online_mask).
    let online = hotplug::online();
    let mut skipped = CpuMask::new();
    for i in 0..nr_words() {
        skipped.words[i] = remote.words[i] & !online.words[i];
        remote.words[i] &= online.words[i];
    }
    let nr_skipped = skipped.weight();
    if nr_skipped > 0 {
        HOTPLUG
            .skipped_targets
            .fetch_add(u64::from(nr_skipped), Ordering::Relaxed);
    }
    cfd.cpumask.store(&remote);
    // SAFETY: owner-only scratch mask, and we are pinned.
    let ipi = unsafe { &mut *cfd.cpumask_ipi.get() };
    *ipi = CpuMask::new();
    let (mut nr_ipi, mut last) = (0u32, 0u32);
    // Sends the IPIs owed so far: with PV send-ipi one hypercall for the
    // whole mask; otherwise one single IPI for one target, a mask send (a
    // loop of ICR writes in x2APIC physical mode) for more.
    let pv_send = pv::enabled(abi::pv::SEND_IPI);
    let send = |ipi: &mut CpuMask, nr_ipi: &mut u32, last: u32| {
        match *nr_ipi {
            0 => {}
            _ if pv_send => {
                for_each_cpu(nr_words(), |i| ipi.words[i], hotplug::note_call_ipi_to);
                pv::send_ipi_mask(ipi, vector::CALL_FUNCTION);
                percpu::this().ipis_sent.add(u64::from(*nr_ipi));
            }
            1 => send_call_ipi(last),
            _ => for_each_cpu(nr_words(), |i| ipi.words[i], send_call_ipi),
        }
        *ipi = CpuMask::new();
        *nr_ipi = 0;
    };
    for_each_cpu(
        nr_words(),
        |i| remote.words[i],
        |c| {
            if cond.is_some_and(|f| !f(c, info)) {
                cfd.cpumask.clear_cpu(c);
                return;
            }
            let csd = &cfd.csd[c as usize];
            if csd.locked() {
                // About to spin on a csd still in use (a preempted waiter's
                // call from this CPU): first send the IPIs we owe for what
                // we already queued. Otherwise two CPUs, each holding back
                // the IPI another one's csd needs while spinning here, can
                // deadlock (seen in the soak with preemptible waits).
                send(ipi, &mut nr_ipi, last);
            }
            csd_lock(csd);
            if queue(c, csd, func, info, wait) {
                ipi.set(c);
                nr_ipi += 1;
                last = c;
            }
        },
    );
    send(ipi, &mut nr_ipi, last);
    trace::cause(tag);
    sender_exit(this);
    if run_local {
        let irq = arch::irq_save();
        // flush-defer: work deferred to this CPU before its own callback.
        pv::run_deferred(false);
        func(info);
        arch::irq_restore(irq);
    }
    if wait && pinned_wait {
        wait_all(&WaitSet::Live(&cfd.cpumask), cfd, false);
        sched::preempt_enable();
    } else if wait {
        // The design decides where the wait set lives and whether the wait
        // is preemptible; it re-enables preemption (invariant 9: after
        // that, the current CPU may differ from `this`). The wait's stack
        // depth is measured from this frame (designs::wait is never
        // inlined, so all of the design's locals lie below it).
        let base = 0u8;
        tasks::set_wait_base(core::hint::black_box(&base) as *const u8 as u64);
        designs::wait(cfd);
    } else {
        sched::preempt_enable();
    }
    STATS.calls.fetch_add(1, Ordering::Relaxed);
    skipped
}

/// `on_each_cpu_cond_mask()`: [`smp_call_function_many_cond`] including
/// this CPU, with no outer pin of its own. Returns the offline targets
/// left out.
pub fn on_each_cpu_cond_mask(
    targets: &CpuMask,
    func: CallFn,
    info: usize,
    wait: bool,
    cond: Option<CondFn>,
) -> CpuMask {
    smp_call_function_many_cond(targets, func, info, wait, true, cond)
}

/// flush-defer's shootdown, as Linux's `kvm_flush_tlb_multi()`: pinned,
/// copy `targets` into this CPU's scratch mask, defer every preempted
/// target (it runs `func` when it resumes: see [`pv::try_defer`]), then
/// call the rest and wait, still pinned. `func` must be the workload's
/// flush callback (the deferred runs call the checker's flush record).
/// Returns the offline targets left out.
pub fn flush_tlb_multi(targets: &CpuMask, func: CallFn, token: usize) -> CpuMask {
    sched::preempt_disable();
    let this = percpu::cpu_id();
    let cfd = cfd_of(this);
    // SAFETY: owner-only scratch mask, and we are pinned.
    let flushmask = unsafe { &mut *cfd.flushmask.get() };
    *flushmask = *targets;
    for_each_cpu(
        nr_words(),
        |i| targets.words[i],
        |c| {
            if c != this && hotplug::cpu_online(c) && pv::try_defer(c, token) {
                flushmask.clear(c);
            }
        },
    );
    // (call_many copies the mask before it touches the cfd.)
    let skipped = call_many(flushmask, func, token, true, true, None, true);
    sched::preempt_enable();
    skipped
}

/// `smp_call_function_single()`: runs `func(info)` on `target`. With
/// `wait`, the csd lives on the caller's stack and the call returns after
/// the callback ran; the wait is preemptible except in the upstream
/// design. Without `wait`, this CPU's `csd_data` is used. A target that is
/// offline (sampled pinned) is an error, as Linux's -ENXIO: nothing ran.
pub fn smp_call_function_single(
    target: u32,
    func: CallFn,
    info: usize,
    wait: bool,
) -> Result<(), TargetOffline> {
    sched::preempt_disable();
    let this = percpu::cpu_id();
    if target == this {
        let irq = arch::irq_save();
        pv::run_deferred(false);
        func(info);
        arch::irq_restore(irq);
        sched::preempt_enable();
        STATS.calls.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    }
    sender_enter(this);
    if !hotplug::cpu_online(target) {
        sender_exit(this);
        sched::preempt_enable();
        return Err(TargetOffline);
    }
    let tag = trace::cause(poff::SEND);
    if wait {
        let csd = Csd::new();
        csd_lock(&csd);
        if queue(target, &csd, func, info, true) {
            send_call_ipi(target);
        }
        trace::cause(tag);
        sender_exit(this);
        if designs::single_wait_pinned(design()) {
            csd_lock_wait(&csd, target, false);
            sched::preempt_enable();
        } else {
            // The csd is ours (on this stack), so the wait may move.
            sched::preempt_enable();
            csd_lock_wait(&csd, target, true);
        }
    } else {
        let csd = &CSD_DATA[this as usize];
        csd_lock(csd);
        if queue(target, csd, func, info, false) {
            send_call_ipi(target);
        }
        trace::cause(tag);
        sender_exit(this);
        sched::preempt_enable();
    }
    STATS.calls.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// One csd per CPU for [`drain_barrier`] (the BSP's only).
static BARRIER_CSD: [Csd; MAX_VCPUS] = [const { Csd::new() }; MAX_VCPUS];

/// The end-of-phase drain barrier, run by one task once no caller is left:
/// two rounds of a synchronous no-op call to every other CPU (and this
/// CPU's own queue drained in place). Synchronous entries run before the
/// asynchronous ones drained with them, so only the second round proves
/// that every CPU has run every callback queued before the barrier. The
/// IPI goes out, as any call's, only when a queue goes from empty to
/// non-empty: a queue whose IPI was lost stays undrained and shows here.
/// Waits at most until `give_up` (TSC), sleeping between polls; returns
/// how many CPUs did not drain and the first of them (u32::MAX: none).
pub fn drain_barrier(give_up: u64) -> (u32, u32) {
    let nr = nr_cpu_ids();
    let mut stuck = CpuMask::new();
    for _round in 0..2 {
        sched::preempt_disable();
        let this = percpu::cpu_id();
        // As every sender: online targets only, inside the sender bracket
        // (an offline CPU's dying flush ran all it had queued).
        sender_enter(this);
        for c in 0..nr {
            let csd = &BARRIER_CSD[c as usize];
            if c == this || stuck.test(c) || !hotplug::cpu_online(c) || csd.locked() {
                continue;
            }
            csd_lock(csd);
            if queue(c, csd, nop, 0, true) {
                send_call_ipi(c);
            }
        }
        sender_exit(this);
        let irq = arch::irq_save();
        handle_ipi();
        arch::irq_restore(irq);
        sched::preempt_enable();
        for c in 0..nr {
            while BARRIER_CSD[c as usize].locked() && arch::rdtsc() < give_up {
                sched::sleep_us(200);
            }
            if BARRIER_CSD[c as usize].locked() {
                stuck.set(c);
            }
        }
    }
    let first = next_cpu(|i| stuck.words[i], 0).unwrap_or(u32::MAX);
    (stuck.weight(), first)
}

/// [`abi::TestHook::StuckTask`]: waits, preemptibly, for a csd of `target`
/// that was locked and never queued, so it never ends: the task keeps its
/// phase from quiescing (the stall report must name it and `target`).
pub fn stuck_wait(target: u32) -> ! {
    let csd = Csd::new();
    csd_lock(&csd);
    loop {
        csd_lock_wait(&csd, target, true);
    }
}
