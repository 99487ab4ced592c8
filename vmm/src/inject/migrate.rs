//! Migration: at the scheduled times, move a vCPU thread to another host
//! CPU of the set with sched_setaffinity (swapping with a vCPU there, so
//! the overcommit ratio holds). When the migrator is late (a storm faster
//! than the host can migrate threads), it folds every move that is due
//! into the net placement and applies only the moves that change a
//! thread's CPU: it never falls behind the schedule, and the coalesced
//! moves are counted.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::schedule::MigrateStream;
use super::trace::EventKind;
use super::{placement, Shared, ThreadOutcome};

/// Runs the migrator until stopped. `tids[v]` is vCPU `v`'s thread.
///
/// So that the vCPU threads cannot starve it in a storm, the migrator runs
/// SCHED_FIFO when permitted (else at nice -10, else as it is); in every
/// case it keeps its own CPU time (waiting included) within `max_duty` of
/// the elapsed time, sleeping when it is over.
pub(crate) fn run(
    shared: &Shared,
    stream: MigrateStream,
    tids: &[libc::pid_t],
    max_duty: f64,
) -> ThreadOutcome {
    let mut out = ThreadOutcome::default();
    if placement::set_fifo(1).is_err() {
        placement::set_nice(-10);
    }
    let mut busy = Duration::ZERO;
    let mut stream = stream.peekable();
    while let Some(first) = stream.next() {
        // Duty bound: busy time so far must fit in max_duty of the elapsed.
        let earliest = shared.t0 + busy.div_f64(max_duty);
        if Instant::now() < earliest && !shared.sleep_until(earliest) {
            break;
        }
        let due = (shared.t0 + first.at).max(Instant::now());
        let woke = Instant::now();
        if !shared.wait_precise(due) {
            break;
        }
        // Everything due by now, folded: vCPU -> target slot.
        let mut planned = 0u64;
        let mut target: BTreeMap<u32, usize> = BTreeMap::new();
        for m in first.moves() {
            planned += 1;
            target.insert(m.vcpu, m.to);
        }
        let now = Instant::now();
        while let Some(ev) = stream.next_if(|e| shared.t0 + e.at <= now) {
            for m in ev.moves() {
                planned += 1;
                target.insert(m.vcpu, m.to);
            }
        }
        let mut applied = 0u64;
        for (v, to) in target {
            let Some(cur) = shared.slots.get(v as usize) else {
                continue;
            };
            let from = cur.load(Ordering::Relaxed);
            if from == to {
                continue;
            }
            let start = Instant::now();
            match placement::set_affinity(tids[v as usize], &[shared.host_cpus[to]]) {
                Ok(()) => {
                    cur.store(to, Ordering::Relaxed);
                    applied += 1;
                    // A migration lasts as long as its sched_setaffinity call.
                    let took = start.elapsed();
                    let mut e = shared.event(start, EventKind::Migrate, vec![v], to, took);
                    e.from_cpu = shared.host_cpus.get(from).copied();
                    out.push(e);
                }
                Err(e) => {
                    if out.errors.len() < 4 {
                        out.errors.push(format!(
                            "migrating vCPU {v} to host CPU {}: {e}",
                            shared.host_cpus[to]
                        ));
                    }
                }
            }
        }
        out.coalesced += planned.saturating_sub(applied);
        // Spinning before a close deadline counts as busy; sleeping does not.
        let spun = due
            .saturating_duration_since(woke)
            .min(Duration::from_micros(150));
        busy += spun + now.elapsed();
    }
    placement::set_normal();
    out
}
