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
pub(crate) fn run(shared: &Shared, stream: MigrateStream, tids: &[libc::pid_t]) -> ThreadOutcome {
    let mut out = ThreadOutcome::default();
    let mut stream = stream.peekable();
    while let Some(first) = stream.next() {
        if !shared.wait_precise(shared.t0 + first.at) {
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
                    let mut e =
                        shared.event(start, EventKind::Migrate, vec![v], to, Duration::ZERO);
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
    }
    out
}
