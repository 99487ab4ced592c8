//! Paravirtual features ([`abi::pv`]) on the cross-call paths. Each one
//! uses KVM's mechanism when the VMM's probe says the host offers it
//! ([`abi::Control::pv_kvm`]) and ipivirt's own otherwise (the mechanisms
//! are the kernel's: `kernel::pv`):
//!
//! - `vcpu_is_preempted()` while waiting: KVM's flag or the VMM-written
//!   [`abi::PvVcpuState`], whichever says so (both are counted);
//! - send-ipi and sched-yield: KVM_HC_SEND_IPI / KVM_HC_SCHED_YIELD, or the
//!   ipivirt port-I/O hypercall;
//! - flush-defer: a shootdown marks a preempted target (compare-and-swap on
//!   its PV state) to run the flush when it resumes instead of waiting for
//!   it, as Linux's `kvm_flush_tlb_multi()` does with KVM_VCPU_FLUSH_TLB.
//!   The VMM sends FLUSH_DEFER to such a vCPU before resuming it; the
//!   deferred callbacks run in that interrupt, before anything else.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use abi::{pv, MAX_VCPUS};
use guest_lib::cpumask::{for_each_cpu, nr_words, CpuMask};

use crate::kernel::pv::{
    ipivirt_hypercall, kvm_hypercall, preempt_seq, preempted_sources, pv_state, state_word,
    APIC_DM_FIXED, KVM_HC_SCHED_YIELD, KVM_HC_SEND_IPI, SEEN_IPIVIRT, SEEN_KVM,
};
use crate::kernel::{arch, percpu};
use crate::xcall::observer::observer;

// ---------------------------------------------------------------------
// Features in force and their counters.

/// Features of the current phase (global ones included).
static FEATURES: AtomicU32 = AtomicU32::new(0);
/// Of those, the ones served by KVM's mechanism.
static KVM: AtomicU32 = AtomicU32::new(0);
/// Per-phase counters (see [`abi::DesignResults`]).
pub struct PvStats {
    /// Send-IPI hypercalls.
    pub send_ipi_calls: AtomicU64,
    /// Directed yields.
    pub yields: AtomicU64,
    /// Yields that ended an injected pause early.
    pub yields_effective: AtomicU64,
    /// Targets deferred by flush-defer.
    pub deferrals: AtomicU64,
    /// Deferred callbacks run.
    pub deferred_runs: AtomicU64,
    /// Of those committed, run at the CPU's next observable action rather
    /// than in the FLUSH_DEFER interrupt.
    pub deferred_not_first: AtomicU64,
    /// Waits that saw their target preempted.
    pub waits_on_preempted: AtomicU64,
    /// Their cycles from the first sighting to the wait's end.
    pub preempted_wait_cycles: AtomicU64,
    /// ... through KVM's flag.
    pub seen_kvm: AtomicU64,
    /// ... through ipivirt's state.
    pub seen_ipivirt: AtomicU64,
}

/// The counters of the current phase.
pub static STATS: PvStats = PvStats {
    send_ipi_calls: AtomicU64::new(0),
    yields: AtomicU64::new(0),
    yields_effective: AtomicU64::new(0),
    deferrals: AtomicU64::new(0),
    deferred_runs: AtomicU64::new(0),
    deferred_not_first: AtomicU64::new(0),
    waits_on_preempted: AtomicU64::new(0),
    preempted_wait_cycles: AtomicU64::new(0),
    seen_kvm: AtomicU64::new(0),
    seen_ipivirt: AtomicU64::new(0),
};

/// Starts a phase with `features` ([`abi::pv`] bits), `kvm` of them
/// served by KVM; resets the counters. No call may be in flight.
pub fn start_phase(features: u32, kvm: u32) {
    FEATURES.store(features, Ordering::Relaxed);
    KVM.store(kvm & features, Ordering::Relaxed);
    for c in [
        &STATS.send_ipi_calls,
        &STATS.yields,
        &STATS.yields_effective,
        &STATS.deferrals,
        &STATS.deferred_runs,
        &STATS.deferred_not_first,
        &STATS.waits_on_preempted,
        &STATS.preempted_wait_cycles,
        &STATS.seen_kvm,
        &STATS.seen_ipivirt,
    ] {
        c.store(0, Ordering::Relaxed);
    }
}

/// The features in force.
#[inline]
pub fn features() -> u32 {
    FEATURES.load(Ordering::Relaxed)
}

/// Whether `feature` is on.
#[inline]
pub fn enabled(feature: u32) -> bool {
    features() & feature != 0
}

fn by_kvm(feature: u32) -> bool {
    KVM.load(Ordering::Relaxed) & feature != 0
}

/// index). Returns the hypercalls made. Interrupts must be off or the
/// caller pinned (the request block is this vCPU's).
pub fn send_ipi_mask(mask: &CpuMask, vector: u8) -> u64 {
    let irq = arch::irq_save();
    let calls = if by_kvm(pv::SEND_IPI) {
        kvm_send_ipi_mask(mask, vector)
    } else {
        let st = pv_state(percpu::cpu_id());
        // SAFETY: this vCPU's own request block; interrupts are off, so
        // nothing else on this vCPU writes it until the hypercall returns.
        unsafe {
            for (i, w) in (*st).bitmap.iter_mut().enumerate() {
                core::ptr::write_volatile(w, if i < nr_words() { mask.words[i] } else { 0 });
            }
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*st).vector), u32::from(vector));
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*st).op), pv::OP_SEND_IPI);
        }
        ipivirt_hypercall();
        1
    };
    arch::irq_restore(irq);
    STATS.send_ipi_calls.fetch_add(calls, Ordering::Relaxed);
    calls
}

/// KVM_HC_SEND_IPI as Linux's `__send_ipi_mask()`: 128-bit bitmaps of
/// APIC ids relative to the lowest one, one hypercall per 128-id window.
fn kvm_send_ipi_mask(mask: &CpuMask, vector: u8) -> u64 {
    let icr = APIC_DM_FIXED | u64::from(vector);
    let (mut min, mut bitmap, mut calls) = (0u32, [0u64; 2], 0u64);
    let flush = |min: u32, bitmap: &mut [u64; 2], calls: &mut u64| {
        if bitmap != &[0, 0] {
            kvm_hypercall(KVM_HC_SEND_IPI, bitmap[0], bitmap[1], u64::from(min), icr);
            *calls += 1;
            *bitmap = [0, 0];
        }
    };
    for_each_cpu(
        nr_words(),
        |i| mask.words[i],
        |c| {
            // CPUs come in ascending order: open a new window when c is past it.
            if bitmap == [0, 0] || c - min >= 128 {
                flush(min, &mut bitmap, &mut calls);
                min = c;
            }
            let off = c - min;
            bitmap[(off / 64) as usize] |= 1 << (off % 64);
        },
    );
    flush(min, &mut bitmap, &mut calls);
    calls
}

/// Directed yield to `target` (sched-yield). Returns whether it ended an
/// injected pause early (ipivirt; KVM does not say).
pub fn yield_to(target: u32) -> bool {
    STATS.yields.fetch_add(1, Ordering::Relaxed);
    let ended = if by_kvm(pv::SCHED_YIELD) {
        kvm_hypercall(KVM_HC_SCHED_YIELD, u64::from(target), 0, 0, 0);
        false
    } else {
        let irq = arch::irq_save();
        let st = pv_state(percpu::cpu_id());
        // SAFETY: this vCPU's own request block, interrupts off.
        unsafe {
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*st).arg), u64::from(target));
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*st).op), pv::OP_YIELD_TO);
        }
        let r = ipivirt_hypercall();
        arch::irq_restore(irq);
        r == 1
    };
    if ended {
        STATS.yields_effective.fetch_add(1, Ordering::Relaxed);
    }
    ended
}

/// The sched-yield policy of one csd wait: yield to a preempted target
/// once per preemption of it (ipivirt's sequence tells them apart), or at
/// most every `min_gap` cycles when only KVM's flag says so; and count
/// what the wait saw.
pub struct WaitWatch {
    /// TSC of the first sighting of the target preempted (0: none yet).
    seen_at: u64,
    yielded_seq: u32,
    last_yield: u64,
}

impl WaitWatch {
    /// A new wait.
    pub const fn new() -> Self {
        WaitWatch {
            seen_at: 0,
            yielded_seq: u32::MAX,
            last_yield: 0,
        }
    }

    /// The wait is over: account its time since the first sighting.
    pub fn finish(&self) {
        if self.seen_at != 0 {
            STATS.preempted_wait_cycles.fetch_add(
                arch::rdtsc().saturating_sub(self.seen_at),
                Ordering::Relaxed,
            );
        }
    }

    /// One spin of the wait for `target`.
    pub fn spin(&mut self, target: u32, min_gap: u64) {
        let src = preempted_sources(target);
        if src == 0 {
            return;
        }
        if self.seen_at == 0 {
            self.seen_at = arch::rdtsc().max(1);
            STATS.waits_on_preempted.fetch_add(1, Ordering::Relaxed);
            if src & SEEN_KVM != 0 {
                STATS.seen_kvm.fetch_add(1, Ordering::Relaxed);
            }
            if src & SEEN_IPIVIRT != 0 {
                STATS.seen_ipivirt.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !enabled(pv::SCHED_YIELD) {
            return;
        }
        if src & SEEN_IPIVIRT != 0 {
            let seq = preempt_seq(target);
            if seq != self.yielded_seq {
                self.yielded_seq = seq;
                yield_to(target);
            }
        } else {
            let now = arch::rdtsc();
            if now.wrapping_sub(self.last_yield) >= min_gap {
                self.last_yield = now;
                yield_to(target);
            }
        }
    }
}

// ---------------------------------------------------------------------
// flush-defer.

/// Deferred work slots per CPU.
const DEFER_SLOTS: usize = 8;
/// A slot entry not yet committed (its caller's compare-and-swap on the
/// target's state has not succeeded yet).
const TENTATIVE: u64 = 1 << 63;

/// Per CPU: checker tokens + 1 of deferred flushes (0: free).
static DEFER: [[AtomicU64; DEFER_SLOTS]; MAX_VCPUS] =
    [const { [const { AtomicU64::new(0) }; DEFER_SLOTS] }; MAX_VCPUS];

/// Tries to defer the flush of `token` to preempted `target` instead of
/// sending it an IPI (caller pinned). True: the target runs it when it
/// resumes (or already ran it); false: send and wait as usual.
///
/// The entry goes in first, then the compare-and-swap that marks the
/// target's state: if the target resumed meanwhile (the VMM clears the
/// state with an exchange before it re-enters), the entry is taken back,
/// unless the target already took it, in which case it ran it.
pub fn try_defer(target: u32, token: usize) -> bool {
    const WANT: u32 = pv::STATE_PREEMPTED | pv::STATE_DEFERRABLE;
    let st = state_word(target);
    let mut cur = st.load(Ordering::Acquire);
    if cur & WANT != WANT {
        return false;
    }
    let entry = token as u64 + 1;
    let slots = &DEFER[target as usize];
    let Some(slot) = slots.iter().find(|s| {
        s.compare_exchange(0, entry | TENTATIVE, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }) else {
        return false;
    };
    (observer().defer)(token, target);
    loop {
        if cur & WANT != WANT {
            // Resumed: take the entry back, unless the target took it.
            if slot
                .compare_exchange(entry | TENTATIVE, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                (observer().undefer)(token, target);
                return false;
            }
            break;
        }
        match st.compare_exchange(
            cur,
            cur | pv::STATE_FLUSH,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                // Committed: the VMM will send FLUSH_DEFER on resume. (If
                // the target already took the entry, this fails: fine.)
                let _ = slot.compare_exchange(
                    entry | TENTATIVE,
                    entry,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
                break;
            }
            Err(now) => cur = now,
        }
    }
    STATS.deferrals.fetch_add(1, Ordering::Relaxed);
    true
}

/// Runs this CPU's deferred flushes (interrupts off). `on_resume`: from
/// the FLUSH_DEFER interrupt the VMM sends before resuming a vCPU it
/// deferred work to. The other callers are this CPU's next observable
/// actions (a cross-call callback, a tick, a task switch): they drain first,
/// so that deferred work always runs before anything else even when the
/// host lets the vCPU run a little before it takes that interrupt (seen on
/// this nested host: counted as `not first`).
pub fn run_deferred(on_resume: bool) {
    if !enabled(pv::FLUSH_DEFER) {
        return;
    }
    let me = percpu::cpu_id();
    for slot in DEFER[me as usize].iter() {
        if slot.load(Ordering::Relaxed) == 0 {
            continue;
        }
        let e = slot.swap(0, Ordering::AcqRel);
        if e == 0 {
            continue;
        }
        let token = ((e & !TENTATIVE) - 1) as usize;
        if !on_resume && e & TENTATIVE == 0 {
            STATS.deferred_not_first.fetch_add(1, Ordering::Relaxed);
        }
        (observer().deferred_run)(token);
        STATS.deferred_runs.fetch_add(1, Ordering::Relaxed);
    }
}

/// The checker's side of flush-defer: before a cross-call callback runs on
/// this CPU, no committed deferred work may be pending here (every path
/// that runs callbacks drains it first). Each pending entry goes to
/// `late(this cpu, its token)`: a DEFERRED_LATE violation, this CPU would
/// run something else before its deferred work.
pub fn check_drained(late: fn(u32, usize)) {
    if !enabled(pv::FLUSH_DEFER) {
        return;
    }
    let me = percpu::cpu_id();
    for slot in DEFER[me as usize].iter() {
        let e = slot.load(Ordering::Acquire);
        if e != 0 && e & TENTATIVE == 0 {
            late(me, ((e & !TENTATIVE) - 1) as usize);
        }
    }
}
