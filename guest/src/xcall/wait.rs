//! The waits: on one csd (with the csd-lock watchdog, PV and the guest's
//! forced preemption), and on every csd of a design's wait set.

use core::sync::atomic::Ordering;

use abi::preempt_off::cause as poff;
use guest_lib::cpumask::{next_cpu, SharedMask};
use guest_lib::rng::Prob16;

use super::csd::{csd_lock, dropped, recover_dropped, Cfd, Csd};
use super::observer::observer;
use super::offline::{sender_enter, sender_exit};
use super::queue::{send_call_ipi, IN_CALLBACK};
use super::{designs, pv, tasks, PARAMS, STATS};
use crate::kernel::console::println;
use crate::kernel::fmt::Dec;
use crate::kernel::pv as kernel_pv;
use crate::kernel::{arch, hotplug, percpu, sched, trace};

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
        (observer().csd_freed)(target);
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
