//! What the guest runs once every vCPU is online: the platform calibration,
//! the latency probe on every vCPU, and the workload the control block
//! names; then the per-vCPU counters and results are written out.

use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicU64, Ordering};

use abi::{layout, verdict, Control, TestHook, VcpuResults, Workload};

use crate::console::println;
use crate::fmt::Dec;
use crate::sched::{self, Body, Class};
use crate::{cpu, heap, percpu, shared, user};

/// TSC at which the workload ends (user tasks read it with a syscall).
pub static END_TSC: AtomicU64 = AtomicU64::new(0);
/// The CPL3 calibration result (cycles per 1024 iterations).
pub static CPL3_CYCLES: AtomicU64 = AtomicU64::new(0);
static PROBE_PERIOD: AtomicU64 = AtomicU64::new(0);

/// Above this many cycles per 1024 `dec; jnz` at CPL0 (native: ~1024),
/// kernel code is emulated.
const EMULATED_THRESHOLD: u64 = 20 * 1024;

/// Times 1024 x `dec; jnz` at CPL0, best of 8.
fn cpl0_cycles_per_kiter() -> u64 {
    let mut best = u64::MAX;
    for _ in 0..8 {
        let t0 = cpu::rdtsc();
        // SAFETY: a register-only loop.
        unsafe {
            core::arch::asm!("2:", "dec {n}", "jnz 2b", n = inout(reg) 1024u64 => _, options(nomem, nostack))
        };
        best = best.min(cpu::rdtsc() - t0);
    }
    best
}

/// Measures CPL0 and CPL3 speed, picks the tick rate, records both.
pub fn calibrate(control: &Control) -> u32 {
    let cpl0 = cpl0_cycles_per_kiter();
    if let Err(e) = sched::spawn(
        "calibrate",
        Class::Normal,
        Body::User(user::calibrate, 0),
        0,
        true,
    ) {
        panic!("cannot create the calibration task: {:?}", e);
    }
    let give_up = cpu::rdtsc() + 2_000 * sched::PARAMS.cycles_per_us.load(Ordering::Relaxed) * 1000;
    while CPL3_CYCLES.load(Ordering::Relaxed) == 0 && cpu::rdtsc() < give_up {
        sched::sleep_us(1000);
    }
    let cpl3 = CPL3_CYCLES.load(Ordering::Relaxed);
    let emulated = cpl0 > EMULATED_THRESHOLD;
    let v = if emulated {
        verdict::CPL0_EMULATED
    } else {
        verdict::HARDWARE
    };
    let tick_hz = match control.tick_hz {
        0 if emulated => 100,
        0 => 1000,
        hz => hz,
    };
    let r = shared::results();
    // SAFETY: BSP-only fields of the shared page.
    unsafe {
        (*r).cpl0_cycles_per_kiter = cpl0;
        (*r).cpl3_cycles_per_kiter = cpl3;
        (*r).verdict = v;
        (*r).tick_hz = tick_hz;
    }
    println!(
        "calibration: CPL0 {} cycles/1024 iter, CPL3 {} cycles/1024 iter: {}",
        Dec(cpl0),
        Dec(cpl3),
        if emulated {
            "CPL0 emulated: absolute latencies are not representative"
        } else {
            "hardware-accelerated"
        }
    );
    let probe_us = match control.probe_period_us {
        0 if emulated => 10_000,
        0 => 1_000,
        us => u64::from(us),
    };
    PROBE_PERIOD.store(
        probe_us * sched::PARAMS.cycles_per_us.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    tick_hz
}

fn vcpu_results(cpu: u32) -> *mut VcpuResults {
    layout::vcpu_results_addr(cpu) as *mut VcpuResults
}

/// The latency probe: a high-class task pinned to its vCPU that wakes
/// every period and records how late it runs.
fn probe(cpu: usize) {
    let period = PROBE_PERIOD.load(Ordering::Relaxed);
    let end = END_TSC.load(Ordering::Relaxed);
    // SAFETY: only this vCPU's probe writes its histogram; the VMM reads it
    // after Done.
    let hist = unsafe { &mut *addr_of_mut!((*vcpu_results(cpu as u32)).probe) };
    let mut due = cpu::rdtsc() + period;
    while due < end {
        sched::sleep_until(due);
        let now = cpu::rdtsc();
        hist.record(now.saturating_sub(due));
        due += period;
        while due <= now {
            due += period; // missed periods are not recorded twice
        }
    }
}

fn churn_task(_: usize) {}

/// Runs the workload until its end, then waits for its tasks to finish.
pub fn run(control: &Control) {
    let nr = control.nr_vcpus;
    let cycles_per_us = sched::PARAMS.cycles_per_us.load(Ordering::Relaxed);
    let workload = Workload::try_from(control.workload).unwrap_or(Workload::None);
    if workload == Workload::None {
        return;
    }
    let live_before = sched::CREATED.load(Ordering::Relaxed) - sched::FREED.load(Ordering::Relaxed);
    let baseline = heap::used();
    let start = cpu::rdtsc();
    let end = start + control.duration_us * cycles_per_us;
    END_TSC.store(end, Ordering::Relaxed);
    for c in 0..nr {
        // SAFETY: this vCPU's results slot; nobody else writes it yet.
        unsafe { (*vcpu_results(c)).probe = abi::Histogram::new() };
        sched::spawn(
            "probe",
            Class::High,
            Body::Kernel(probe, c as usize),
            c,
            true,
        )
        .expect("probe task");
    }
    if control.test_hook == TestHook::UserFault as u32 {
        sched::spawn(
            "faulty",
            Class::Normal,
            Body::User(user::fault, 0),
            control.test_hook_vcpu,
            true,
        )
        .expect("faulty task");
    }
    let mut churn = 0u64;
    match workload {
        Workload::Hogs => {
            for i in 0..nr * control.tasks_per_cpu.max(1) {
                sched::spawn(
                    "hog",
                    Class::Normal,
                    Body::User(user::hog, i as usize),
                    i % nr,
                    false,
                )
                .expect("hog task");
            }
            sched::sleep_until(end);
        }
        Workload::Churn => {
            while cpu::rdtsc() < end {
                let target = (percpu::random() % u64::from(nr)) as u32;
                sched::spawn(
                    "churn",
                    Class::Normal,
                    Body::Kernel(churn_task, 0),
                    target,
                    false,
                )
                .expect("churn task");
                churn += 1;
                if churn.is_multiple_of(16) {
                    sched::yield_now();
                }
            }
        }
        _ => sched::sleep_until(end),
    }
    // Wait (bounded) for every workload task to exit and be freed.
    let give_up = cpu::rdtsc() + 5_000_000 * cycles_per_us;
    while sched::CREATED.load(Ordering::Relaxed) - sched::FREED.load(Ordering::Relaxed)
        > live_before
        && cpu::rdtsc() < give_up
    {
        sched::sleep_us(1000);
    }
    let r = shared::results();
    // SAFETY: BSP-only fields of the shared page.
    unsafe {
        (*r).workload_start_tsc = start;
        (*r).workload_end_tsc = cpu::rdtsc();
        (*r).heap_baseline = baseline;
        (*r).heap_used = heap::used();
        (*r).churn_cycles = churn;
        for i in 0..64 {
            (*r).hogs[i].iterations = user::HOG_ITERATIONS[i].load(Ordering::Relaxed);
            (*r).hogs[i].cpus_mask = user::HOG_CPUS[i].load(Ordering::Relaxed);
        }
    }
}

/// Copies every vCPU's counters into its status entry, and the task
/// totals into the results.
pub fn write_counters(nr: u32) {
    for c in 0..nr {
        let pc = percpu::of(c);
        let s = shared::vcpu(c);
        // SAFETY: the BSP writes the counter fields of every status entry
        // once the workload is over (the owners only wrote `state` etc.).
        unsafe {
            (*s).context_switches = pc.context_switches.get();
            (*s).preemptions = pc.preemptions.get();
            (*s).migrations_in = pc.migrations_in.load(Ordering::Relaxed);
            (*s).ticks = pc.ticks.get();
            (*s).ipis_sent = pc.ipis_sent.get();
            (*s).ipis_received = pc.ipis_received.get();
        }
    }
    let r = shared::results();
    // SAFETY: BSP-only fields.
    unsafe {
        (*r).tasks_created = sched::CREATED.load(Ordering::Relaxed);
        (*r).tasks_freed = sched::FREED.load(Ordering::Relaxed);
    }
}
