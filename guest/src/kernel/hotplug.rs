//! CPU hotplug: taking a vCPU offline while the workload runs and bringing
//! it back, after Linux's order (kernel/cpu.c, kernel/smp.c).
//!
//! Requests come from the VMM (a word in the vCPU's PV state, polled in the
//! tick and on the HOTPLUG interrupt the VMM sends after writing it) or
//! from the guest itself (torture's onoff mode, [`request`]). Only one
//! vCPU changes state at a time (Linux's `cpu_hotplug_lock`), never the
//! boot vCPU, and at least two stay online.
//!
//! Going offline, on the dying vCPU itself:
//! 1. the request marks it going down; the scheduler then runs only its
//!    idle task there and sends every other task (pinned ones included, as
//!    Linux breaks affinity) to an online vCPU at its next switch;
//! 2. the idle task clears it from the [online mask](online), closes its
//!    run queue (an enqueue there goes elsewhere) and moves what was queued
//!    or sleeping to the online vCPUs;
//! 3. the layer above runs its dying hook (the cross-call layer: wait until
//!    no sender can still hold the old online mask, then flush the call
//!    queue, the part of Linux's `smpcfd_dying_cpu()` that matters here);
//! 4. it is offline: it halts with no timer armed until an online request.
//!
//! Coming online: the online hook, the run queue reopens, the online mask
//! has it again, and it pulls work from the busier vCPUs (the balancer
//! that would not otherwise run on a vCPU with nothing to tick for).
//!
//! Unlike Linux there is no stop_machine: no other vCPU stops while one
//! dies. What stop_machine guarantees to the cross-call layer (no sender is
//! between sampling the online mask and queueing) the layer above provides
//! in its dying hook.

use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use abi::{pv, vector, MAX_VCPUS};
use guest_lib::cpumask::{nr_cpu_ids, nr_words, CpuMask, MAX_WORDS};

use crate::kernel::sync::BootCell;
use crate::kernel::{apic, arch, percpu, pv as kernel_pv, sched};

/// Online (or not yet brought up).
const ONLINE: u8 = 0;
/// Asked to go offline: the scheduler runs only idle here.
const GOING_DOWN: u8 = 1;
/// Offline: flushed and halted.
const OFFLINE: u8 = 2;

static STATE: [AtomicU8; MAX_VCPUS] = [const { AtomicU8::new(ONLINE) }; MAX_VCPUS];
/// The online mask (`cpu_online_mask`); a CPU is in it from boot.
static ONLINE_MASK: [AtomicU64; MAX_WORDS] = [const { AtomicU64::new(u64::MAX) }; MAX_WORDS];
/// Run queues closed to enqueues (set and read under that queue's lock).
static RQ_CLOSED: [AtomicBool; MAX_VCPUS] = [const { AtomicBool::new(false) }; MAX_VCPUS];
/// Times each CPU finished going offline: a csd queued to CPU `c` while its
/// generation was `g` must be unlocked once the generation is past `g`.
static GENERATION: [AtomicU32; MAX_VCPUS] = [const { AtomicU32::new(0) }; MAX_VCPUS];
/// The last host request each CPU acted on.
static HOST_DONE: [AtomicU32; MAX_VCPUS] = [const { AtomicU32::new(0) }; MAX_VCPUS];
/// Guest requests (torture's onoff mode): `seq << 1 | offline`, as the host's.
static GUEST_REQ: [AtomicU32; MAX_VCPUS] = [const { AtomicU32::new(0) }; MAX_VCPUS];
static GUEST_DONE: [AtomicU32; MAX_VCPUS] = [const { AtomicU32::new(0) }; MAX_VCPUS];
/// One CPU changes state at a time.
static BUSY: AtomicBool = AtomicBool::new(false);
/// Requests are acted on only while set (the workload's phases).
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Host requests are read at all (the control block asked for hotplug).
static HOST_REQUESTS: AtomicBool = AtomicBool::new(false);

/// Per-vCPU counters over the whole run (see [`abi::VcpuHotplug`]).
pub struct VcpuCounts {
    /// Times offline.
    pub offlines: AtomicU32,
    /// Times back online.
    pub onlines: AtomicU32,
    /// Cross-call IPIs sent to it while it was offline.
    pub ipis_offline: AtomicU32,
    /// Tasks moved off it.
    pub tasks_moved: AtomicU32,
    /// Its context switch count when it first came back online.
    pub switches_at_online: AtomicU64,
    /// Cycles offline in all.
    pub offline_cycles: AtomicU64,
}

/// The per-vCPU counters.
pub static VCPU: [VcpuCounts; MAX_VCPUS] = [const {
    VcpuCounts {
        offlines: AtomicU32::new(0),
        onlines: AtomicU32::new(0),
        ipis_offline: AtomicU32::new(0),
        tasks_moved: AtomicU32::new(0),
        switches_at_online: AtomicU64::new(0),
        offline_cycles: AtomicU64::new(0),
    }
}; MAX_VCPUS];

/// Counters of the current phase (reset by [`reset_stats`]).
pub struct Stats {
    /// CPUs taken offline.
    pub offlines: AtomicU64,
    /// CPUs brought online.
    pub onlines: AtomicU64,
    /// Requests refused.
    pub refused: AtomicU64,
    /// Tasks moved off dying CPUs.
    pub tasks_moved: AtomicU64,
}

/// The phase's counters.
pub static STATS: Stats = Stats {
    offlines: AtomicU64::new(0),
    onlines: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    tasks_moved: AtomicU64::new(0),
};

/// Resets the phase counters.
pub fn reset_stats() {
    for c in [
        &STATS.offlines,
        &STATS.onlines,
        &STATS.refused,
        &STATS.tasks_moved,
    ] {
        c.store(0, Ordering::Relaxed);
    }
}

/// What the layer above does when a CPU changes state (on that CPU,
/// interrupts off).
#[derive(Clone, Copy)]
pub struct HotplugHooks {
    /// The CPU left the online mask: make sure nothing is or will be
    /// queued to it, and run what was (the dying flush).
    pub dying: fn(u32),
    /// The CPU is about to rejoin the online mask.
    pub online: fn(u32),
}

fn nothing(_: u32) {}

static HOOKS: BootCell<HotplugHooks> = BootCell::new(HotplugHooks {
    dying: nothing,
    online: nothing,
});

/// Sets the hotplug hooks (once).
///
/// # Safety
/// As [`BootCell::set`]: the BSP, at boot, before any AP runs.
pub unsafe fn set_hooks(h: HotplugHooks) {
    // SAFETY: delegated to the caller.
    unsafe { HOOKS.set(h) };
}

/// Takes the settings from the control block (BSP, at boot).
pub fn configure(control: &abi::Control) {
    HOST_REQUESTS.store(control.hotplug != 0, Ordering::Relaxed);
}

/// Lets requests take effect (true) or holds them (false) until enabled
/// again: hotplug runs during the workload only.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

/// Whether `cpu` is in the online mask.
pub fn cpu_online(cpu: u32) -> bool {
    ONLINE_MASK[cpu as usize / 64].load(Ordering::SeqCst) & (1 << (cpu % 64)) != 0
}

/// The online mask as it is now (SeqCst: see the cross-call layer's
/// sender bracket, which pairs with the dying CPU's clear).
pub fn online() -> CpuMask {
    let mut m = CpuMask::new();
    for (i, w) in m.words.iter_mut().enumerate().take(nr_words()) {
        *w = ONLINE_MASK[i].load(Ordering::SeqCst);
    }
    m
}

/// Whether `cpu` finished going offline (and is not back).
pub fn is_offline(cpu: u32) -> bool {
    STATE[cpu as usize].load(Ordering::Acquire) == OFFLINE
}

/// Whether the scheduler must run only idle on this CPU.
pub fn going_down(cpu: u32) -> bool {
    STATE[cpu as usize].load(Ordering::Relaxed) != ONLINE
}

/// `cpu`'s offline generation (Acquire: pairs with the Release after its
/// dying flush, so a csd it flushed is seen unlocked).
pub fn generation(cpu: u32) -> u32 {
    GENERATION[cpu as usize].load(Ordering::Acquire)
}

/// Whether `cpu`'s run queue is closed (call with that queue's lock held).
pub fn rq_closed(cpu: u32) -> bool {
    RQ_CLOSED[cpu as usize].load(Ordering::Relaxed)
}

/// Closes or reopens `cpu`'s run queue (with that queue's lock held).
pub fn set_rq_closed(cpu: u32, closed: bool) {
    RQ_CLOSED[cpu as usize].store(closed, Ordering::Relaxed);
}

/// Whether this online CPU has a request it could not act on yet (another
/// CPU was changing state): its tick must keep running to poll again.
pub fn wants_tick(cpu: u32) -> bool {
    ENABLED.load(Ordering::Relaxed)
        && STATE[cpu as usize].load(Ordering::Relaxed) == ONLINE
        && pending(cpu).is_some()
}

/// An online CPU other than `not` (the next one up from it), for a task
/// that cannot stay where it is.
pub fn fallback_cpu(not: u32) -> u32 {
    let nr = nr_cpu_ids();
    (1..nr)
        .map(|k| (not + k) % nr)
        .find(|&c| cpu_online(c))
        .unwrap_or(0)
}

fn online_count() -> u32 {
    (0..nr_words())
        .map(|i| (ONLINE_MASK[i].load(Ordering::SeqCst) & word_limit(i)).count_ones())
        .sum()
}

fn word_limit(i: usize) -> u64 {
    let nr = nr_cpu_ids() as usize;
    let bits = nr.saturating_sub(i * 64).min(64);
    if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

fn host_word(cpu: u32, done: bool) -> &'static AtomicU32 {
    let s = kernel_pv::pv_state(cpu);
    // SAFETY: the PV state area is identity-mapped guest RAM reserved by
    // the layout, naturally aligned; the VMM and the guest access the
    // hotplug words only atomically.
    unsafe {
        AtomicU32::from_ptr(if done {
            core::ptr::addr_of_mut!((*s).hotplug_done)
        } else {
            core::ptr::addr_of_mut!((*s).hotplug_request)
        })
    }
}

/// Guest-initiated request (torture's onoff mode): take `cpu` offline or
/// bring it back; it acts on it at its next tick or at the HOTPLUG
/// interrupt sent here.
pub fn request(cpu: u32, offline: bool) {
    let r = &GUEST_REQ[cpu as usize];
    let seq = (r.load(Ordering::Relaxed) >> 1).wrapping_add(1);
    r.store(seq << 1 | u32::from(offline), Ordering::Release);
    apic::send_ipi(cpu, vector::HOTPLUG);
}

/// The pending request of this CPU, if any: (value, from the host).
fn pending(cpu: u32) -> Option<(u32, bool)> {
    let i = cpu as usize;
    if HOST_REQUESTS.load(Ordering::Relaxed) {
        let req = host_word(cpu, false).load(Ordering::Acquire);
        if req != 0 && req != HOST_DONE[i].load(Ordering::Relaxed) {
            return Some((req, true));
        }
    }
    let req = GUEST_REQ[i].load(Ordering::Acquire);
    (req != 0 && req != GUEST_DONE[i].load(Ordering::Relaxed)).then_some((req, false))
}

fn mark_done(cpu: u32, req: u32, host: bool, refused: bool) {
    let i = cpu as usize;
    if host {
        HOST_DONE[i].store(req, Ordering::Relaxed);
        let v = if refused {
            req | pv::HOTPLUG_REFUSED
        } else {
            req
        };
        host_word(cpu, true).store(v, Ordering::Release);
    } else {
        GUEST_DONE[i].store(req, Ordering::Relaxed);
    }
}

/// Looks at this CPU's requests (tick, HOTPLUG interrupt; interrupts off).
/// An offline request that may proceed marks the CPU going down and asks
/// for a reschedule; the idle task then takes it down.
pub fn poll() {
    if !ENABLED.load(Ordering::Relaxed) {
        return;
    }
    let me = percpu::cpu_id();
    let Some((req, host)) = pending(me) else {
        return;
    };
    let want_offline = req & pv::HOTPLUG_OFFLINE != 0;
    if STATE[me as usize].load(Ordering::Relaxed) != ONLINE {
        // Going down or offline: cpu_die's loop acts on what comes next.
        return;
    }
    if !want_offline {
        mark_done(me, req, host, false); // online already
        return;
    }
    if me == 0 || online_count() <= 2 {
        STATS.refused.fetch_add(1, Ordering::Relaxed);
        mark_done(me, req, host, true);
        return;
    }
    if BUSY
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return; // another CPU is changing state: at the next poll
    }
    if online_count() <= 2 {
        BUSY.store(false, Ordering::Release);
        STATS.refused.fetch_add(1, Ordering::Relaxed);
        mark_done(me, req, host, true);
        return;
    }
    mark_done(me, req, host, false);
    STATE[me as usize].store(GOING_DOWN, Ordering::Relaxed);
    percpu::this().need_resched.store(true, Ordering::Relaxed);
}

/// The HOTPLUG interrupt: a request was written for this CPU.
pub fn on_hotplug_irq() {
    apic::eoi();
    poll();
}

/// The idle task of a CPU going down: takes it offline, halts until an
/// online request, brings it back. Interrupts off on entry and exit.
pub fn cpu_die() {
    let me = percpu::cpu_id();
    let pc = percpu::this();
    let vc = &VCPU[me as usize];
    // 1. Leave the online mask (SeqCst: a sender that samples it after
    // this sees us gone; the dying hook waits for those that did not).
    ONLINE_MASK[me as usize / 64].fetch_and(!(1 << (me % 64)), Ordering::SeqCst);
    fence(Ordering::SeqCst);
    // 2. Close the run queue and move everything queued or sleeping here.
    let moved = sched::evacuate(me);
    vc.tasks_moved.fetch_add(moved, Ordering::Relaxed);
    STATS
        .tasks_moved
        .fetch_add(u64::from(moved), Ordering::Relaxed);
    // 3. The dying flush (the layer above).
    (HOOKS.get().dying)(me);
    // IPIs the senders we waited for sent before their brackets closed are
    // pending here now (an x2APIC ICR write sets the target's IRR before
    // it returns): take them while still going down, so that what arrives
    // once offline is only what was sent to an offline CPU.
    // SAFETY: interrupts are set up; any handler that runs here sees this
    // CPU going down (the scheduler keeps idle, enqueues go elsewhere).
    unsafe { arch::irq_enable() };
    for _ in 0..64 {
        arch::pause();
    }
    arch::irq_disable();
    // 4. Offline: the generation tells waiters every csd queued here ran.
    GENERATION[me as usize].fetch_add(1, Ordering::Release);
    STATE[me as usize].store(OFFLINE, Ordering::Release);
    vc.offlines.fetch_add(1, Ordering::Relaxed);
    STATS.offlines.fetch_add(1, Ordering::Relaxed);
    BUSY.store(false, Ordering::Release);
    let down_at = arch::rdtsc();
    pc.next_tick.set(0);
    loop {
        apic::arm(0);
        // SAFETY: IDT, APIC and scheduler are set up on this CPU; an
        // interrupt (the HOTPLUG one) ends the halt.
        unsafe { arch::safe_halt() };
        arch::irq_disable();
        if let Some((req, host)) = pending(me) {
            if req & pv::HOTPLUG_OFFLINE == 0
                && BUSY
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                mark_done(me, req, host, false);
                break;
            }
            if req & pv::HOTPLUG_OFFLINE != 0 {
                mark_done(me, req, host, false); // already offline
            } else {
                // Another CPU is changing state: look again shortly.
                apic::arm(
                    arch::rdtsc() + sched::PARAMS.cycles_per_us.load(Ordering::Relaxed) * 100,
                );
            }
        }
    }
    // Online again.
    (HOOKS.get().online)(me);
    vc.offline_cycles
        .fetch_add(arch::rdtsc() - down_at, Ordering::Relaxed);
    sched::reopen(me);
    STATE[me as usize].store(ONLINE, Ordering::Release);
    ONLINE_MASK[me as usize / 64].fetch_or(1 << (me % 64), Ordering::SeqCst);
    // The first comeback sets the base: "it runs tasks again" must not
    // depend on whether the last comeback fell after the workload's end.
    if vc.onlines.fetch_add(1, Ordering::Relaxed) == 0 {
        vc.switches_at_online
            .store(pc.context_switches.get(), Ordering::Relaxed);
    }
    STATS.onlines.fetch_add(1, Ordering::Relaxed);
    BUSY.store(false, Ordering::Release);
    sched::pull_work(me);
}

/// A cross-call IPI is being sent to `cpu`: counted against it if it is
/// offline. Counted at the sender, because only the send time says whether
/// the model broke: an IPI sent before the target went down may still be
/// delivered after (the target ignores it; its flush ran that work).
pub fn note_call_ipi_to(cpu: u32) {
    if is_offline(cpu) {
        VCPU[cpu as usize]
            .ipis_offline
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// The per-vCPU record for the results (BSP, at the end).
pub fn vcpu_record(cpu: u32, context_switches: u64) -> abi::VcpuHotplug {
    let v = &VCPU[cpu as usize];
    let onlines = v.onlines.load(Ordering::Relaxed);
    abi::VcpuHotplug {
        offlines: v.offlines.load(Ordering::Relaxed),
        onlines,
        ipis_offline: v.ipis_offline.load(Ordering::Relaxed),
        tasks_moved: v.tasks_moved.load(Ordering::Relaxed),
        switches_since_online: if onlines == 0 {
            0
        } else {
            context_switches.saturating_sub(v.switches_at_online.load(Ordering::Relaxed))
        },
        offline_cycles: v.offline_cycles.load(Ordering::Relaxed),
    }
}
