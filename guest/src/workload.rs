//! What the guest runs once every vCPU is online: the platform calibration,
//! the latency probe on every vCPU, and the workload the control block
//! names; then the per-vCPU counters and results are written out.

use core::ptr::addr_of_mut;
use core::sync::atomic::{AtomicU64, Ordering};

use abi::{layout, verdict, Control, Design, TestHook, VcpuResults, Workload, MAX_DESIGNS};

use crate::console::println;
use crate::fmt::Dec;
use crate::sched::{self, Body, Class};
use crate::{checker, cpu, cpumask, heap, mask, percpu, pv, shared, smp, user};

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
    let live = || sched::CREATED.load(Ordering::Relaxed) - sched::FREED.load(Ordering::Relaxed);
    let live_before = live();
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
    // The task reports before it exits: wait until it is gone too, so that
    // the workload's "all my tasks exited" accounting starts from a quiet
    // scheduler (a late free would end a phase's wait one task early).
    while live() > live_before && cpu::rdtsc() < give_up {
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
    // Where kernel code is emulated every probe wake-up costs about half a
    // millisecond of host CPU: 10 ms per 8 vCPUs keeps the probes of a large
    // guest from saturating the host.
    let probe_us = match control.probe_period_us {
        0 if emulated => 10_000 * u64::from(control.nr_vcpus.div_ceil(8)),
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
    // SAFETY: only this vCPU's probe writes its histogram; the VMM reads it
    // after Done.
    let hist = unsafe { &mut *addr_of_mut!((*vcpu_results(cpu as u32)).probe) };
    let mut due = cpu::rdtsc() + period;
    // The end may move once (when a design phase's clock starts): re-read it.
    while due < END_TSC.load(Ordering::Relaxed) {
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

/// Starts the user task of the `user-fault` test hook, if asked for.
pub fn start_test_hook_task(control: &Control) {
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
}

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
    let give_up = cpu::rdtsc() + 60_000_000 * cycles_per_us; // the VMM watchdog bounds the run
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
            // The spin workload writes its own (workload-only) figure.
            if pv::steal_registered() && (*s).steal_ns == 0 {
                (*s).steal_ns = pv::steal_ns(c);
            }
        }
    }
    let r = shared::results();
    // SAFETY: BSP-only fields.
    unsafe {
        (*r).tasks_created = sched::CREATED.load(Ordering::Relaxed);
        (*r).tasks_freed = sched::FREED.load(Ordering::Relaxed);
    }
}

fn reset_vcpu_histograms(nr: u32) {
    for c in 0..nr {
        // SAFETY: between phases no task records into these slots.
        unsafe {
            (*vcpu_results(c)).probe = abi::Histogram::new();
            (*vcpu_results(c)).calls = abi::Histogram::new();
        }
    }
}

/// Runs the cross-call workload once per design of the control block and
/// writes each design's results.
pub fn run_designs(control: &Control) {
    let nr = control.nr_vcpus;
    let cycles_per_us = sched::PARAMS.cycles_per_us.load(Ordering::Relaxed);
    let workload = Workload::try_from(control.workload).unwrap_or(Workload::None);
    smp::PARAMS
        .guest_preempt_prob
        .store(control.guest_preempt_prob, Ordering::Relaxed);
    let watchdog_us = if control.csd_watchdog_us == 0 {
        100_000
    } else {
        u64::from(control.csd_watchdog_us)
    };
    smp::PARAMS
        .watchdog_cycles
        .store(watchdog_us * cycles_per_us, Ordering::Relaxed);
    smp::PARAMS
        .yield_gap_cycles
        .store(100 * cycles_per_us, Ordering::Relaxed);
    mask::ALLOC_FAIL_PROB.store(control.alloc_fail_prob, Ordering::Relaxed);
    checker::BROKEN.store(
        control.test_hook == TestHook::BrokenChecker as u32,
        Ordering::Relaxed,
    );
    for (w, &v) in crate::torture::WEIGHTS
        .iter()
        .zip(control.torture_weights.iter())
    {
        w.store(v, Ordering::Relaxed);
    }
    let heap_baseline = heap::used();
    let run_start = cpu::rdtsc();
    for (i, &code) in control
        .designs
        .iter()
        .enumerate()
        .take((control.nr_designs as usize).min(MAX_DESIGNS))
    {
        let Ok(design) = Design::try_from(code) else {
            continue;
        };
        // No call is in flight between phases: switch the design and its
        // PV features.
        smp::PARAMS.design.store(design as u32, Ordering::Relaxed);
        let features = control.pv_flags | control.phase_pv[i];
        pv::start_phase(features, control.pv_kvm);
        smp::reset_stats();
        mask::reset_stats();
        reset_vcpu_histograms(nr);
        let live_before =
            sched::CREATED.load(Ordering::Relaxed) - sched::FREED.load(Ordering::Relaxed);
        checker::reset(cpu::rdtsc());
        // Tasks run until END_TSC, which they learn from each call's return
        // value: the phase's clock starts once they all exist.
        END_TSC.store(u64::MAX, Ordering::Relaxed);
        let (mut created, mut create_cycles, mut failed) = (0u64, 0u64, 0u64);
        let mut spawn = |name: &str, class: Class, body: Body, cpu: u32, pinned: bool| {
            let t0 = cpu::rdtsc();
            match sched::spawn(name, class, body, cpu, pinned) {
                Ok(_) => {
                    create_cycles += cpu::rdtsc() - t0;
                    created += 1;
                }
                Err(e) => {
                    failed += 1;
                    println!("cannot create task {} on vCPU {}: {:?}", name, Dec(cpu), e);
                }
            }
        };
        for c in 0..nr {
            spawn(
                "probe",
                Class::High,
                Body::Kernel(probe, c as usize),
                c,
                true,
            );
        }
        match workload {
            Workload::Ping => {
                for c in 0..nr {
                    spawn(
                        "pinger",
                        Class::Normal,
                        Body::User(user::pinger, c as usize),
                        c,
                        false,
                    );
                }
            }
            _ => {
                for k in 0..nr * control.tasks_per_cpu.max(1) {
                    let seed = (control.seed as usize)
                        .wrapping_mul(31)
                        .wrapping_add(k as usize + 1);
                    let (name, body): (&str, extern "C" fn(usize) -> !) =
                        if workload == Workload::Torture {
                            ("torturer", user::torturer)
                        } else {
                            ("shooter", user::shooter)
                        };
                    spawn(name, Class::Normal, Body::User(body, seed), k % nr, false);
                }
            }
        }
        let start = cpu::rdtsc();
        let end = start + control.duration_us * cycles_per_us;
        END_TSC.store(end, Ordering::Relaxed);
        sched::sleep_until(end);
        let give_up = cpu::rdtsc() + 60_000_000 * cycles_per_us; // the VMM watchdog bounds the run
        while sched::CREATED.load(Ordering::Relaxed) - sched::FREED.load(Ordering::Relaxed)
            > live_before
            && cpu::rdtsc() < give_up
        {
            sched::sleep_us(2000);
        }
        // Let asynchronous calls still in flight land, then look for lost ones.
        sched::sleep_us(20_000);
        checker::check_lost();
        let phase_end = cpu::rdtsc();
        let d = shared::design_results(i);
        // SAFETY: the BSP writes the design slots; nothing else does.
        unsafe {
            let d = &mut *d;
            d.design = design as u32;
            d.calls = smp::STATS.calls.load(Ordering::Relaxed);
            d.callbacks = checker::STATS.callbacks.load(Ordering::Relaxed);
            d.violations = checker::STATS.violations.load(Ordering::Relaxed);
            d.first_violation_cycles = checker::STATS.first_violation.load(Ordering::Relaxed);
            d.waits_preempted = smp::STATS.waits_preempted.load(Ordering::Relaxed);
            d.waits_migrated = smp::STATS.waits_migrated.load(Ordering::Relaxed);
            d.mask_bytes_per_task = mask::bytes_per_task(design);
            d.stack_bytes_per_call = if design == Design::Stack {
                cpumask::cpumask_size() as u64
            } else {
                0
            };
            d.mask_allocs = mask::STATS.allocs.load(Ordering::Relaxed);
            d.mask_frees = mask::STATS.frees.load(Ordering::Relaxed);
            d.fallbacks = mask::STATS.fallbacks.load(Ordering::Relaxed);
            d.csd_watchdog_fires = smp::STATS.watchdog_fires.load(Ordering::Relaxed);
            d.unchecked = checker::STATS.unchecked.load(Ordering::Relaxed) + failed;
            d.tasks_created = created;
            d.task_create_cycles = create_cycles;
            d.phase_cycles = phase_end - start;
            d.call_latency = abi::Histogram::new();
            d.sched_latency = abi::Histogram::new();
            for c in 0..nr {
                d.call_latency.merge(&(*vcpu_results(c)).calls);
                d.sched_latency.merge(&(*vcpu_results(c)).probe);
            }
            d.violation_log = checker::log();
            d.pv = features;
            d.pv_kvm = control.pv_kvm & features;
            let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
            d.pv_send_ipi_calls = l(&pv::STATS.send_ipi_calls);
            d.pv_yields = l(&pv::STATS.yields);
            d.pv_yields_effective = l(&pv::STATS.yields_effective);
            d.pv_deferrals = l(&pv::STATS.deferrals);
            d.pv_deferred_runs = l(&pv::STATS.deferred_runs);
            d.pv_deferred_not_first = l(&pv::STATS.deferred_not_first);
            d.waits_on_preempted = l(&pv::STATS.waits_on_preempted);
            d.preempted_wait_cycles = l(&pv::STATS.preempted_wait_cycles);
            d.preempted_seen_kvm = l(&pv::STATS.seen_kvm);
            d.preempted_seen_ipivirt = l(&pv::STATS.seen_ipivirt);
            d.valid = 1;
        }
        let r = shared::results();
        // SAFETY: BSP-only fields.
        unsafe {
            let counts = crate::torture::INVOCATIONS
                .iter()
                .zip(&crate::torture::ERRORS);
            for (t, (inv, err)) in (*r).torture.iter_mut().zip(counts) {
                t.invocations = inv.load(Ordering::Relaxed);
                t.errors = err.load(Ordering::Relaxed);
            }
            (*r).heap_baseline = heap_baseline;
            (*r).heap_used = heap::used();
            (*r).workload_start_tsc = run_start;
            (*r).workload_end_tsc = cpu::rdtsc();
        }
        println!(
            "design {} (pv {}): {} calls, {} violations",
            design.name(),
            crate::fmt::Hex(u64::from(features)),
            Dec(smp::STATS.calls.load(Ordering::Relaxed)),
            Dec(checker::STATS.violations.load(Ordering::Relaxed))
        );
    }
}
