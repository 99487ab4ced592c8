//! Workload `floor`: the raw x2APIC IPI ping-pong round trip between
//! vCPU 0 and vCPU 1, with no cross-call layer: vCPU 0 writes the ICR,
//! vCPU 1's handler writes it back, vCPU 0's handler counts the answer.
//! It is the floor under which no cross call can go in this VM, so a `ping`
//! run measures it first and states its latency as a ratio to it. vCPU 1
//! busy-waits in a kernel task meanwhile (as a `ping` target runs its own
//! task): a halted target would add the host's wake-up from `hlt`.
//!
//! Guest kernel code may be emulated (about 1000x slower than native): the
//! handler and the loop are kept to a handful of instructions, and the
//! measurement is bounded by time, not round trips.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use abi::{layout, vector, Control, FloorResults, VcpuResults, Workload};

use crate::kernel::apic;
use crate::kernel::arch;
use crate::kernel::console::println;
use crate::kernel::fmt::Dec;
use crate::kernel::percpu;
use crate::kernel::sched::{self, Body, Class};
use crate::kernel::shared;

/// Answers vCPU 0 has received.
static PONGS: AtomicU64 = AtomicU64::new(0);

/// Set while vCPU 1's busy task should keep spinning.
static SPIN: AtomicBool = AtomicBool::new(false);
/// Set once the busy task runs (and cleared when it ends).
static SPINNING: AtomicBool = AtomicBool::new(false);

/// vCPU 1's busy task: keeps the target out of `hlt`, interrupts on.
fn busy(_: usize) {
    SPINNING.store(true, Ordering::Release);
    while SPIN.load(Ordering::Acquire) {
        arch::pause();
    }
    SPINNING.store(false, Ordering::Release);
}

/// Longest floor measurement in a `ping` run (the `floor` workload itself
/// runs for the whole duration).
const PING_FLOOR_US: u64 = 200_000;

/// The [`vector::FLOOR`] handler: vCPU 1 answers, vCPU 0 counts the answer.
pub fn on_ipi() {
    apic::eoi();
    if percpu::cpu_id() == 0 {
        PONGS.fetch_add(1, Ordering::Release);
    } else {
        apic::send_ipi(0, vector::FLOOR);
    }
}

/// On the BSP with interrupts on, for the `floor` and `ping` workloads:
/// measures round trips to vCPU 1 and writes [`abi::Results::floor`]. Does
/// nothing with fewer than 2 vCPUs or for other workloads.
pub fn run(control: &Control) {
    let floor = control.workload == Workload::Floor as u32;
    if control.nr_vcpus < 2 || !(floor || control.workload == Workload::Ping as u32) {
        return;
    }
    let us = if floor {
        control.duration_us
    } else {
        control.duration_us.min(PING_FLOOR_US)
    };
    let cycles_per_us = (control.tsc_khz / 1000).max(1);
    // vCPU 0's cross-call scratch histogram: unused until the design
    // phases, which reset it first.
    let slot = layout::vcpu_results_addr(0) as *mut VcpuResults;
    // SAFETY: vCPU 0's results slot; only this code (on vCPU 0) writes it
    // now, and the VMM reads it after Done.
    let hist = unsafe { &mut (*slot).calls };
    hist.clear();
    SPIN.store(true, Ordering::Release);
    let spinner = sched::spawn("floor", Class::High, Body::Kernel(busy, 0), 1, true).is_ok();
    while spinner && !SPINNING.load(Ordering::Acquire) {
        sched::sleep_us(1000);
    }
    let end = arch::rdtsc() + us * cycles_per_us;
    loop {
        let want = PONGS.load(Ordering::Relaxed) + 1;
        let t0 = arch::rdtsc();
        if t0 >= end {
            break;
        }
        apic::send_ipi(1, vector::FLOOR);
        while PONGS.load(Ordering::Acquire) < want {
            arch::pause();
        }
        hist.record(arch::rdtsc() - t0);
    }
    SPIN.store(false, Ordering::Release);
    while SPINNING.load(Ordering::Acquire) {
        sched::sleep_us(1000);
    }
    let summary = FloorResults::from_histogram(hist);
    hist.clear();
    // SAFETY: BSP-only field of the shared page.
    unsafe { (*shared::results()).floor = summary };
    println!(
        "floor: {} IPI round trips vCPU 0 -> 1 -> 0, median {} cycles",
        Dec(summary.count),
        Dec(summary.p50)
    );
}
