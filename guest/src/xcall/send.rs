//! The calls: `smp_call_function_many_cond()` and its wrappers,
//! `smp_call_function_single()`, flush-defer's pinned shootdown, and the
//! end-of-phase drain barrier. Queueing and sending always run pinned.

use core::sync::atomic::Ordering;

use abi::preempt_off::cause as poff;
use abi::{vector, MAX_VCPUS};
use guest_lib::cpumask::{for_each_cpu, next_cpu, nr_cpu_ids, nr_words, CpuMask};

use super::csd::{cfd_of, csd_lock, Csd};
use super::observer::observer;
use super::offline::{sender_enter, sender_exit, HOTPLUG};
use super::queue::{handle_ipi, queue, send_call_ipi};
use super::wait::{csd_lock_wait, wait_all, WaitSet};
use super::{design, designs, nop, pv, tasks, CallFn, CondFn, TargetOffline, STATS};
use crate::kernel::{arch, hotplug, percpu, sched, trace};

/// Per-CPU csd for asynchronous single calls (`csd_data`).
static CSD_DATA: [Csd; MAX_VCPUS] = [const { Csd::new() }; MAX_VCPUS];

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
        (observer().wait_returned)(info, &skipped);
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
        // The checker looks at the call here, where it claims done.
        (observer().wait_returned)(info, &skipped);
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
            (observer().wait_returned)(info, &CpuMask::new());
            sched::preempt_enable();
        } else {
            // The csd is ours (on this stack), so the wait may move.
            sched::preempt_enable();
            csd_lock_wait(&csd, target, true);
            (observer().wait_returned)(info, &CpuMask::new());
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
