//! Running a workload: the timed run of the simple workloads (idle, hogs,
//! churn) and the per-design phases of the cross-call workloads, each
//! with the latency probe on every vCPU and its results written to the
//! shared page.

use core::sync::atomic::{AtomicU64, Ordering};

use abi::{
    layout, Control, Design, DesignResults, HotplugCounts, VcpuResults, Workload, MAX_DESIGNS,
};

use crate::kernel::console::println;
use crate::kernel::fmt::{Dec, Hex};
use crate::kernel::sched::{self, Body, Class};
use crate::kernel::{arch, heap, hotplug, shared};
use crate::xcall::{self, checker, designs, pv};

use super::{churn, hogs, ping, probe, shootdown, torture, END_TSC};

/// How long the guest waits for a phase's tasks to exit before it goes on
/// (the VMM's watchdog bounds the run as a whole).
const QUIESCE_BOUND_US: u64 = 60_000_000;

/// The end of the running phase (what the workloads' system calls return).
pub fn end_tsc() -> u64 {
    END_TSC.load(Ordering::Relaxed)
}

/// Sleeps until at most `live` tasks are alive, polling every `poll_us`,
/// or until the bound.
fn wait_for_tasks(live: u64, poll_us: u64) {
    let cycles_per_us = sched::PARAMS.cycles_per_us.load(Ordering::Relaxed);
    let give_up = arch::rdtsc() + QUIESCE_BOUND_US * cycles_per_us;
    while sched::live_tasks() > live && arch::rdtsc() < give_up {
        sched::sleep_us(poll_us);
    }
}

/// Creates a phase's tasks and counts what that took and what failed.
#[derive(Default)]
pub struct Spawner {
    created: u64,
    create_cycles: u64,
    failed: u64,
    /// What the phase started, by kind (reported as the design's shape).
    pub(super) shape: abi::ShapeCounts,
}

impl Spawner {
    /// Creates one task (see [`sched::spawn`]); a failure is counted and
    /// printed, not fatal. Returns whether the task exists.
    pub fn spawn(&mut self, name: &str, class: Class, body: Body, cpu: u32, pinned: bool) -> bool {
        let t0 = arch::rdtsc();
        match sched::spawn(name, class, body, cpu, pinned) {
            Ok(_) => {
                self.create_cycles += arch::rdtsc() - t0;
                self.created += 1;
                true
            }
            Err(e) => {
                self.failed += 1;
                println!("cannot create task {} on vCPU {}: {:?}", name, Dec(cpu), e);
                false
            }
        }
    }
}

/// Spawns the phase's IPI issuers: `issuers_per_cpu` user tasks running
/// `body` on each initiator vCPU, each with its own seed. With an explicit
/// initiator set they are pinned there (the balancer would otherwise move
/// an issuer onto a target and the shape asked for would not be the one
/// run); with every vCPU an initiator they may migrate, as before.
pub fn spawn_user_tasks(
    control: &Control,
    sp: &mut Spawner,
    name: &str,
    body: extern "C" fn(usize) -> !,
) {
    let nr = control.nr_vcpus;
    let pinned = control.shape.explicit_initiators != 0;
    let mut k = 0usize;
    for _ in 0..control.issuers_per_cpu.max(1) {
        for c in (0..nr).filter(|&c| control.shape.is_initiator(c)) {
            k += 1;
            let seed = (control.seed as usize).wrapping_mul(31).wrapping_add(k);
            if sp.spawn(name, Class::Normal, Body::User(body, seed), c, pinned) {
                sp.shape.issuers += 1;
            }
        }
    }
}

/// Spawns `shape.hogs_per_cpu` CPU-bound tasks on every vCPU, pinned: the
/// load that a preemptible wait lets run and a pinned one holds off.
pub fn spawn_hogs(control: &Control, sp: &mut Spawner) {
    for _ in 0..control.shape.hogs_per_cpu {
        for c in 0..control.nr_vcpus {
            if sp.spawn(
                "hog",
                Class::Normal,
                Body::User(hogs::phase_hog, 0),
                c,
                true,
            ) {
                sp.shape.hogs += 1;
            }
        }
    }
}

fn vcpu_results(cpu: u32) -> *mut VcpuResults {
    layout::vcpu_results_addr(cpu) as *mut VcpuResults
}

fn spawn_probes(nr: u32, sp: &mut Spawner) {
    for c in 0..nr {
        sp.spawn(
            "probe",
            Class::High,
            Body::Kernel(probe::task, c as usize),
            c,
            true,
        );
    }
}

/// Runs a simple workload (idle, hogs, churn) with the probe until its
/// end, then waits for its tasks to finish and writes its results.
pub fn run_timed(control: &Control, workload: Workload) {
    let nr = control.nr_vcpus;
    let cycles_per_us = sched::PARAMS.cycles_per_us.load(Ordering::Relaxed);
    let live_before = sched::live_tasks();
    let baseline = heap::used();
    let start = arch::rdtsc();
    let end = start + control.duration_us * cycles_per_us;
    END_TSC.store(end, Ordering::Relaxed);
    for c in 0..nr {
        // SAFETY: this vCPU's results slot; nobody else writes it yet.
        unsafe { (*vcpu_results(c)).probe = abi::Histogram::new() };
    }
    let mut sp = Spawner::default();
    spawn_probes(nr, &mut sp);
    assert!(sp.failed == 0, "cannot create the probe tasks");
    // CPU hotplug requests take effect from here on.
    hotplug::set_enabled(true);
    let mut churned = 0;
    match workload {
        Workload::Hogs => hogs::run(control, end),
        Workload::Churn => churned = churn::run(nr, end),
        _ => sched::sleep_until(end),
    }
    wait_for_tasks(live_before, 1000);
    // SAFETY: BSP-only fields of the shared page.
    let r = unsafe { &mut *shared::results() };
    r.workload_start_tsc = start;
    r.workload_end_tsc = arch::rdtsc();
    r.heap_baseline = baseline;
    r.heap_used = heap::used();
    r.churn_cycles = churned;
    hogs::write_results(r);
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

/// The per-design workloads: how each spawns its tasks for one phase.
fn spawn_phase_tasks(workload: Workload, control: &Control, sp: &mut Spawner) {
    match workload {
        Workload::Ping => ping::spawn(control, sp),
        Workload::Torture => torture::spawn(control, sp),
        _ => shootdown::spawn(control, sp),
    }
    if workload != Workload::Ping {
        spawn_hogs(control, sp);
    }
}

/// Runs the cross-call workload once per design of the control block and
/// writes each design's results.
pub fn run_designs(control: &Control, workload: Workload) {
    let heap_baseline = heap::used();
    let run_start = arch::rdtsc();
    // CPU hotplug requests take effect from here on (between phases too:
    // the next phase's tasks go to the CPUs online then).
    hotplug::set_enabled(true);
    let designs = control
        .designs
        .iter()
        .enumerate()
        .take((control.nr_designs as usize).min(MAX_DESIGNS));
    for (i, &code) in designs {
        let Ok(design) = Design::try_from(code) else {
            continue;
        };
        let features = control.pv_flags | control.phase_pv[i];
        // Markers for the VMM's trace (host time, beside the injections).
        arch::outl(abi::Port::Phase as u16, i as u32);
        let phase = run_phase(control, workload, design, features);
        arch::outl(abi::Port::Phase as u16, abi::PHASE_END | i as u32);
        // SAFETY: the BSP writes the design slots; nothing else does.
        let d = unsafe { &mut *shared::design_results(i) };
        write_design_results(d, control, design, features, &phase);
        // SAFETY: BSP-only fields of the shared page.
        let r = unsafe { &mut *shared::results() };
        torture::write_results(r);
        r.heap_baseline = heap_baseline;
        r.heap_used = heap::used();
        r.workload_start_tsc = run_start;
        r.workload_end_tsc = arch::rdtsc();
        println!(
            "design {} (pv {}): {} calls, {} violations",
            design.name(),
            Hex(u64::from(features)),
            Dec(xcall::STATS.calls.load(Ordering::Relaxed)),
            Dec(checker::STATS.violations.load(Ordering::Relaxed))
        );
    }
}

/// What one phase measured besides the layers' own counters.
struct Phase {
    spawner: Spawner,
    cycles: u64,
}

/// One design's phase: switch the design and its PV features (no call is in
/// flight between phases), reset the counters, run the tasks until the
/// phase's end, wait for them to exit, then check for lost calls.
fn run_phase(control: &Control, workload: Workload, design: Design, features: u32) -> Phase {
    let nr = control.nr_vcpus;
    let cycles_per_us = sched::PARAMS.cycles_per_us.load(Ordering::Relaxed);
    xcall::start_phase(design);
    pv::start_phase(features, control.pv_kvm);
    reset_vcpu_histograms(nr);
    let live_before = sched::live_tasks();
    checker::reset(arch::rdtsc());
    // Tasks run until END_TSC, which they learn from each call's return
    // value: the phase's clock starts once they all exist.
    END_TSC.store(u64::MAX, Ordering::Relaxed);
    let mut sp = Spawner::default();
    spawn_probes(nr, &mut sp);
    spawn_phase_tasks(workload, control, &mut sp);
    if workload == Workload::Torture && control.onoff_interval_us != 0 {
        torture::spawn_onoff(control, &mut sp);
    }
    let start = arch::rdtsc();
    let end = start + control.duration_us * cycles_per_us;
    END_TSC.store(end, Ordering::Relaxed);
    sched::sleep_until(end);
    wait_for_tasks(live_before, 2000);
    // Let asynchronous calls still in flight land, then look for lost ones.
    sched::sleep_us(20_000);
    checker::check_lost();
    Phase {
        spawner: sp,
        cycles: arch::rdtsc() - start,
    }
}

fn write_design_results(
    d: &mut DesignResults,
    control: &Control,
    design: Design,
    features: u32,
    phase: &Phase,
) {
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let x = &xcall::STATS;
    let c = &checker::STATS;
    let m = &designs::STATS;
    let p = &pv::STATS;
    d.design = design as u32;
    d.calls = l(&x.calls);
    d.callbacks = l(&c.callbacks);
    d.violations = l(&c.violations);
    d.first_violation_cycles = l(&c.first_violation);
    d.waits_preempted = l(&x.waits_preempted);
    d.waits_migrated = l(&x.waits_migrated);
    d.mask_bytes_per_task = designs::bytes_per_task(design);
    d.stack_bytes_per_call = designs::stack_bytes_per_call(design);
    d.mask_allocs = l(&m.allocs);
    d.mask_frees = l(&m.frees);
    d.fallbacks = l(&m.fallbacks);
    d.csd_watchdog_fires = l(&x.watchdog_fires);
    d.unchecked = l(&c.unchecked) + phase.spawner.failed;
    d.tasks_created = phase.spawner.created;
    d.task_create_cycles = phase.spawner.create_cycles;
    d.phase_cycles = phase.cycles;
    d.call_latency = abi::Histogram::new();
    d.sched_latency = abi::Histogram::new();
    for cpu in 0..control.nr_vcpus {
        // SAFETY: the phase is over: no task records into these slots.
        let v = unsafe { &*vcpu_results(cpu) };
        d.call_latency.merge(&v.calls);
        d.sched_latency.merge(&v.probe);
    }
    d.violation_log = checker::log();
    d.shape = phase.spawner.shape;
    d.pv = features;
    d.pv_kvm = control.pv_kvm & features;
    d.pv_send_ipi_calls = l(&p.send_ipi_calls);
    d.pv_yields = l(&p.yields);
    d.pv_yields_effective = l(&p.yields_effective);
    d.pv_deferrals = l(&p.deferrals);
    d.pv_deferred_runs = l(&p.deferred_runs);
    d.pv_deferred_not_first = l(&p.deferred_not_first);
    d.waits_on_preempted = l(&p.waits_on_preempted);
    d.preempted_wait_cycles = l(&p.preempted_wait_cycles);
    d.preempted_seen_kvm = l(&p.seen_kvm);
    d.preempted_seen_ipivirt = l(&p.seen_ipivirt);
    let h = &hotplug::STATS;
    let xh = &xcall::HOTPLUG;
    d.hotplug = HotplugCounts {
        offlines: l(&h.offlines),
        onlines: l(&h.onlines),
        refused: l(&h.refused),
        tasks_moved: l(&h.tasks_moved),
        skipped_targets: l(&xh.skipped_targets),
        single_offline_errors: l(&xh.single_offline_errors),
        flushed_callbacks: l(&xh.flushed_callbacks),
        dropped_csds: l(&xh.dropped_csds),
    };
    d.valid = 1;
}
