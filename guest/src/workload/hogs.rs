//! Workload `hogs`: `shape.hogs_per_cpu` CPU-bound user tasks per vCPU,
//! preempted by the tick and moved by the balancer; each counts its
//! iterations and notes every CPU it finds itself on
//! ([`abi::Results::hogs`]). Also the hogs of the per-design phases
//! ([`phase_hog`]): the tasks that send no IPI beside the issuers.

use core::sync::atomic::{AtomicU64, Ordering};

use abi::{syscall, Control, Results, MAX_HOGS};

use crate::kernel::arch;
use crate::kernel::sched::{self, Body, Class};

use super::calls::{exit, sys};

/// Per-task progress of the hog workload, indexed by task slot.
static HOG_ITERATIONS: [AtomicU64; MAX_HOGS] = [const { AtomicU64::new(0) }; MAX_HOGS];
/// CPUs each hog task was seen on (bit per CPU < 64).
static HOG_CPUS: [AtomicU64; MAX_HOGS] = [const { AtomicU64::new(0) }; MAX_HOGS];

/// A CPU-bound user task: spins at CPL3 until the workload ends, counting
/// iterations and noting each CPU it finds itself on (a GETCPU syscall
/// every 4096 iterations).
extern "C" fn hog(slot: usize) -> ! {
    let end = sys(syscall::WORKLOAD_END, 0);
    let slot = slot % MAX_HOGS;
    let mut n = 0u64;
    loop {
        n += 1;
        if n.is_multiple_of(4096) {
            let cpu = sys(syscall::GETCPU, 0);
            if cpu < 64 {
                HOG_CPUS[slot].fetch_or(1 << cpu, Ordering::Relaxed);
            }
            HOG_ITERATIONS[slot].store(n, Ordering::Relaxed);
            if arch::rdtsc() >= end {
                break;
            }
        }
    }
    exit()
}

/// How long a phase hog spins at CPL3 between two looks at the phase's
/// end (TSC cycles): about a millisecond, so its system calls cost it a
/// few percent at most and it ends within a tick of the phase.
const PHASE_HOG_SLICE: u64 = 2_000_000;

/// A hog of a per-design phase: CPU-bound at CPL3, sending no IPI, until
/// the phase ends (its end moves once, when the phase's clock starts, so
/// it asks again after every slice).
pub extern "C" fn phase_hog(_: usize) -> ! {
    let mut end = u64::MAX;
    while arch::rdtsc() < end {
        let t0 = arch::rdtsc();
        while arch::rdtsc().wrapping_sub(t0) < PHASE_HOG_SLICE {
            core::hint::spin_loop();
        }
        end = sys(syscall::WORKLOAD_END, 0);
    }
    exit()
}

/// Spawns the hogs, spread over the vCPUs, and lets them run until `end`.
pub fn run(control: &Control, end: u64) {
    let nr = control.nr_vcpus;
    for i in 0..nr * control.shape.hogs_per_cpu.max(1) {
        sched::spawn(
            "hog",
            Class::Normal,
            Body::User(hog, i as usize),
            i % nr,
            false,
        )
        .expect("hog task");
    }
    sched::sleep_until(end);
}

/// Writes the hogs' progress into the results.
pub fn write_results(r: &mut Results) {
    for (i, h) in r.hogs.iter_mut().enumerate() {
        h.iterations = HOG_ITERATIONS[i].load(Ordering::Relaxed);
        h.cpus_mask = HOG_CPUS[i].load(Ordering::Relaxed);
    }
}
