//! Mode `antagonist`: one SCHED_FIFO thread per host CPU, pinned there,
//! that wakes at the scheduled times and busy-runs, so whatever vCPU thread
//! is on that CPU is preempted involuntarily (KVM counts it as steal time).

use std::time::Instant;

use super::schedule::PreemptStream;
use super::trace::EventKind;
use super::{placement, Shared, ThreadOutcome};

/// Priority of the antagonists (the lowest real-time one is enough to
/// preempt every SCHED_OTHER thread).
const PRIORITY: i32 = 1;

/// Runs the antagonist of slot `slot` until stopped.
pub(crate) fn run(
    shared: &Shared,
    slot: usize,
    stream: PreemptStream,
    max_duty: f64,
) -> ThreadOutcome {
    let mut out = ThreadOutcome::default();
    let cpu = shared.host_cpus[slot];
    if let Err(e) = placement::set_affinity(0, &[cpu]) {
        out.errors
            .push(format!("antagonist: cannot pin to host CPU {cpu}: {e}"));
        return out;
    }
    if let Err(e) = placement::set_fifo(PRIORITY) {
        out.errors.push(format!(
            "antagonist on host CPU {cpu}: SCHED_FIFO refused: {e}"
        ));
        return out;
    }
    let mut last_start: Option<Instant> = None;
    for ev in stream {
        // Long overdue (the VMM stalled): dropped, not replayed.
        if Instant::now().saturating_duration_since(shared.t0 + ev.at) > super::STALE_AFTER {
            if shared.stopped() {
                break;
            }
            out.skipped += 1;
            continue;
        }
        // Run-time duty bound: a late wake-up never bunches bursts.
        let min_gap = ev.len.div_f64(max_duty);
        let mut due = shared.t0 + ev.at;
        if let Some(last) = last_start {
            due = due.max(last + min_gap);
        }
        if !shared.sleep_until(due) {
            break;
        }
        let start = Instant::now();
        let end = start + ev.len;
        // The vCPUs placed here are runnable but cannot run: publish them
        // as preempted (not deferrable: they may have interrupts off).
        let vcpus = shared.vcpus_on(slot);
        if let Some(pv) = &shared.pv {
            vcpus.iter().for_each(|&v| pv.begin_preemption(v, false));
        }
        while Instant::now() < end && !shared.stopped() {
            std::hint::spin_loop();
        }
        if let Some(pv) = &shared.pv {
            for &v in &vcpus {
                if let Err(e) = pv.end_preemption(v) {
                    out.errors.push(format!("antagonist: {e}"));
                }
            }
        }
        last_start = Some(start);
        out.push(shared.event(start, EventKind::Antagonist, vcpus, slot, start.elapsed()));
    }
    placement::set_normal();
    out
}
