//! Mode `pause`: the VMM kicks a chosen vCPU out of KVM_RUN and holds its
//! thread for the preemption length before it re-enters (see
//! [`crate::vcpu::Kicker::pause_for`]). Needs no privileges and is
//! deterministic for a seed. KVM never marks a vCPU paused this way as
//! `preempted`, and does not count the pause as steal time: the thread
//! sleeps outside KVM_RUN instead of waiting on a run queue.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::placement;
use super::schedule::{PlannedPreempt, PreemptStream};
use super::trace::EventKind;
use super::{Shared, ThreadOutcome};
use crate::vcpu::Kicker;

/// Runs the pause injector over all `streams` (one per host CPU) until
/// stopped. SCHED_FIFO when permitted (else at nice -10, else as it is),
/// as the migration injector: a planned pause more than
/// [`super::STALE_AFTER`] late is dropped, and at normal priority the
/// vCPU threads it competes with can delay it that long on a busy host.
pub(crate) fn run(
    shared: &Shared,
    mut streams: Vec<PreemptStream>,
    kickers: &[Arc<Kicker>],
    max_duty: f64,
) -> ThreadOutcome {
    let mut out = ThreadOutcome::default();
    if placement::set_fifo(1).is_err() {
        placement::set_nice(-10);
    }
    let mut next: Vec<PlannedPreempt> = streams.iter_mut().filter_map(Iterator::next).collect();
    let mut last_start: Vec<Option<Instant>> = vec![None; streams.len()];
    while !next.is_empty() {
        let i = (0..next.len()).min_by_key(|&i| next[i].at).unwrap_or(0);
        let ev = next[i];
        let stale =
            Instant::now().saturating_duration_since(shared.t0 + ev.at) > super::STALE_AFTER;
        let mut due = shared.t0 + ev.at;
        if let Some(last) = last_start[i] {
            due = due.max(last + ev.len.div_f64(max_duty));
        }
        if stale {
            // Long overdue (the VMM stalled): dropped, not replayed.
            if shared.stopped() {
                break;
            }
            out.skipped += 1;
        } else {
            if !shared.wait_precise(due) {
                break;
            }
            let start = Instant::now();
            last_start[i] = Some(start);
            if let Some(k) = kickers.get(ev.vcpu as usize) {
                k.pause_for(ev.len);
                let slot = shared
                    .slots
                    .get(ev.vcpu as usize)
                    .map_or(usize::MAX, |s| s.load(Ordering::Relaxed));
                out.push(shared.event(start, EventKind::Pause, vec![ev.vcpu], slot, ev.len));
            }
        }
        match streams[i].next() {
            Some(n) => next[i] = n,
            None => {
                next.remove(i);
                streams.remove(i);
                last_start.remove(i);
            }
        }
    }
    out
}
