//! Running a workload: the timed run of the simple workloads (idle, hogs,
//! churn) and the per-design phases of the cross-call workloads, each
//! with the latency probe on every vCPU and its results written to the
//! shared page.

use core::sync::atomic::{AtomicU64, Ordering};

use abi::{
    layout, phase_status, Control, Design, DesignCounts, DesignResults, HotplugCounts,
    MemoryResults, PhaseEnd, PvCounts, StalledTask, TestHook, VcpuResults, Workload, MAX_DESIGNS,
    NO_WAIT, STALL_RECORDS,
};

use super::checker;
use crate::kernel::console::println;
use crate::kernel::fmt::{Dec, Hex};
use crate::kernel::sched::{self, Body, Class};
use crate::kernel::{arch, heap, hotplug, shared, trace};
use crate::xcall::{self, designs, pv, tasks};

use super::{churn, hogs, ping, probe, shootdown, torture, END_TSC};

/// How long a timed workload waits for its tasks to exit before it goes
/// on (the VMM's watchdog bounds the run as a whole; a design phase has
/// its own bound, `Control::quiesce_bound_us`).
const QUIESCE_BOUND_US: u64 = 60_000_000;

/// The end of the running phase (what the workloads' system calls return).
pub fn end_tsc() -> u64 {
    END_TSC.load(Ordering::Relaxed)
}

/// Sleeps until at most `live` tasks are alive, polling every `poll_us`,
/// or until `give_up` (TSC); whether they got there.
fn wait_for_tasks(live: u64, poll_us: u64, give_up: u64) -> bool {
    while sched::live_tasks() > live && arch::rdtsc() < give_up {
        sched::sleep_us(poll_us);
    }
    sched::live_tasks() <= live
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

/// Spawns the latency probe on every vCPU. An injected creation failure
/// (`--alloc-fail-prob` above 64 vCPUs) is counted and the probe created
/// again: the measurement needs one on every vCPU.
fn spawn_probes(nr: u32, sp: &mut Spawner) {
    for c in 0..nr {
        for _ in 0..64 {
            let failed = sp.failed;
            sp.spawn(
                "probe",
                Class::High,
                Body::Kernel(probe::task, c as usize),
                c,
                true,
            );
            if sp.failed == failed {
                break;
            }
        }
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
        unsafe {
            (*vcpu_results(c)).probe.clear();
            (*vcpu_results(c)).probe_split.arrival.clear();
            (*vcpu_results(c)).probe_split.dispatch.clear();
        }
    }
    let mut sp = Spawner::default();
    spawn_probes(nr, &mut sp);
    assert!(sp.created == u64::from(nr), "cannot create the probe tasks");
    // CPU hotplug requests take effect from here on.
    hotplug::set_enabled(true);
    let mut churned = 0;
    match workload {
        Workload::Hogs => hogs::run(control, end),
        Workload::Churn => churned = churn::run(nr, end),
        _ => sched::sleep_until(end),
    }
    let cycles_per_us = sched::PARAMS.cycles_per_us.load(Ordering::Relaxed);
    wait_for_tasks(
        live_before,
        1000,
        arch::rdtsc() + QUIESCE_BOUND_US * cycles_per_us,
    );
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
            (*vcpu_results(c)).probe.clear();
            (*vcpu_results(c)).calls.clear();
            (*vcpu_results(c)).probe_split.arrival.clear();
            (*vcpu_results(c)).probe_split.dispatch.clear();
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
    let mut stalled = false;
    for (i, &code) in designs {
        let Ok(design) = Design::try_from(code) else {
            continue;
        };
        let features = control.pv_flags | control.phase_pv[i];
        // SAFETY: the BSP writes the design slots; nothing else does.
        let d = unsafe { &mut *shared::design_results(i) };
        if stalled {
            // Never start a design under live tasks of the previous one.
            write_not_run(d, design, features);
            continue;
        }
        // Markers for the VMM's trace (host time, beside the injections).
        arch::outl(abi::Port::Phase as u16, i as u32);
        let phase = run_phase(control, workload, design, features);
        arch::outl(abi::Port::Phase as u16, abi::PHASE_END | i as u32);
        write_design_results(d, control, design, features, &phase);
        stalled = phase.end.status != phase_status::QUIESCED;
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
        if stalled {
            print_stall(design, &phase.end);
        }
    }
}

/// Prints a stalled phase's report on the console (the VMM prints it from
/// the results too).
fn print_stall(design: Design, e: &PhaseEnd) {
    println!(
        "design {}: phase STALLED: {} task(s) still alive and {} vCPU(s) with undrained call queues after the quiescence bound; later designs not run",
        design.name(),
        Dec(e.stalled_tasks),
        Dec(e.undrained_vcpus)
    );
    for t in e.stalled.iter().take(e.stalled_tasks as usize) {
        let name = core::str::from_utf8(&t.name)
            .unwrap_or("?")
            .trim_end_matches('\0');
        if t.waits_on == NO_WAIT {
            println!(
                "  task {} {} on vCPU {} (state {}): not in a csd wait",
                Dec(t.id),
                name,
                Dec(t.cpu),
                Dec(t.state)
            );
        } else {
            println!(
                "  task {} {} on vCPU {} (state {}): waits for the csd of vCPU {}",
                Dec(t.id),
                name,
                Dec(t.cpu),
                Dec(t.state),
                Dec(t.waits_on)
            );
        }
    }
}

/// What one phase measured besides the layers' own counters.
struct Phase {
    spawner: Spawner,
    cycles: u64,
    end: PhaseEnd,
    heap_before: u64,
    heap_after: u64,
}

/// [`TestHook::StuckTask`]'s task: waits for a csd of the next vCPU that
/// nobody will ever unlock.
fn stuck_task(target: usize) {
    xcall::stuck_wait(target as u32)
}

/// One design's phase: switch the design and its PV features (no call is
/// in flight between phases: the previous phase quiesced), reset the
/// counters, run the tasks until the phase's end, then quiesce: wait for
/// every task the phase started to exit and for every vCPU to drain its
/// call queue (the drain barrier), within the bound. Only then look for
/// lost calls; a phase that cannot quiesce is a stall, reported with its
/// live tasks, and its checker table is left alone.
fn run_phase(control: &Control, workload: Workload, design: Design, features: u32) -> Phase {
    let nr = control.nr_vcpus;
    let cycles_per_us = sched::PARAMS.cycles_per_us.load(Ordering::Relaxed);
    xcall::start_phase(design);
    pv::start_phase(features, control.pv_kvm);
    reset_vcpu_histograms(nr);
    let live_before = sched::live_tasks();
    let first_id = tasks::next_id();
    let heap_before = heap::reserved();
    checker::reset(arch::rdtsc());
    // Tasks run until END_TSC, which they learn from each call's return
    // value: the phase's clock starts once they all exist.
    END_TSC.store(u64::MAX, Ordering::Relaxed);
    let mut sp = Spawner::default();
    designs::CREATE_FAILURES_ARMED.store(true, Ordering::Relaxed);
    spawn_probes(nr, &mut sp);
    spawn_phase_tasks(workload, control, &mut sp);
    designs::CREATE_FAILURES_ARMED.store(false, Ordering::Relaxed);
    if control.test_hook == TestHook::StuckTask as u32 {
        sp.spawn(
            "stuck",
            Class::Normal,
            Body::Kernel(stuck_task, ((control.test_hook_vcpu + 1) % nr) as usize),
            control.test_hook_vcpu % nr,
            true,
        );
    }
    if workload == Workload::Torture && control.onoff_interval_us != 0 {
        torture::spawn_onoff(control, &mut sp);
    }
    let start = arch::rdtsc();
    let end = start + control.duration_us * cycles_per_us;
    END_TSC.store(end, Ordering::Relaxed);
    // The preempt-off tracer's windows cover the phase's clock.
    let window = u64::from(control.preempt_window_us()) * cycles_per_us;
    trace::begin_phase(window, control.preempt_trace_off == 0);
    probe::arm_pin(control, start, end);
    sched::sleep_until(end);
    let cycles = arch::rdtsc() - start;
    let bound = control.quiesce_bound_us() * cycles_per_us;
    let t0 = arch::rdtsc();
    let give_up = t0 + bound;
    let mut e = PhaseEnd {
        status: phase_status::QUIESCED,
        stalled_tasks: 0,
        undrained_vcpus: 0,
        first_undrained: u32::MAX,
        quiesce_cycles: 0,
        bound_cycles: bound,
        stalled: [StalledTask::EMPTY; STALL_RECORDS],
    };
    let quiesced = wait_for_tasks(live_before, 2000, give_up);
    // The tracer's windows end once the phase's tasks did, before the
    // drain barrier's own calls: a call pinned across the phase's clock
    // (seconds, with hundreds of vCPUs per host CPU) still counts.
    trace::end_phase();
    if quiesced {
        // No caller is left: make every vCPU run what is queued to it.
        (e.undrained_vcpus, e.first_undrained) = xcall::drain_barrier(give_up);
    } else {
        let (_, stalled) = tasks::report(first_id);
        e.stalled = stalled;
        // The exact count (the report's table may miss a task).
        e.stalled_tasks = (sched::live_tasks() - live_before.min(sched::live_tasks())) as u32;
    }
    e.quiesce_cycles = arch::rdtsc() - t0;
    if e.stalled_tasks == 0 && e.undrained_vcpus == 0 {
        checker::check_lost();
    } else {
        e.status = phase_status::STALLED;
    }
    Phase {
        spawner: sp,
        cycles,
        end: e,
        heap_before,
        heap_after: heap::reserved(),
    }
}

/// A design slot whose phase did not run (an earlier one stalled).
fn write_not_run(d: &mut DesignResults, design: Design, features: u32) {
    // SAFETY: DesignResults is Pod: all zeros is a valid value.
    *d = unsafe { core::mem::zeroed() };
    d.design = design as u32;
    d.pv = features;
    d.first_violation_cycles = u64::MAX;
    d.call_latency.clear();
    d.sched_latency.clear();
    d.phase_end.status = phase_status::NOT_RUN;
    d.phase_end.first_undrained = u32::MAX;
    d.valid = 1;
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
    d.counts = DesignCounts {
        calls: l(&x.calls),
        callbacks: l(&c.callbacks),
        violations: l(&c.violations),
        waits_preempted: l(&x.waits_preempted),
        waits_migrated: l(&x.waits_migrated),
        mask_bytes_per_task: designs::bytes_per_task(design),
        stack_bytes_per_call: designs::stack_bytes_per_call(design),
        mask_allocs: l(&m.allocs),
        mask_frees: l(&m.frees),
        fallbacks: l(&m.fallbacks),
        csd_watchdog_fires: l(&x.watchdog_fires),
        unchecked: l(&c.unchecked) + phase.spawner.failed,
        tasks_created: phase.spawner.created,
    };
    d.first_violation_cycles = l(&c.first_violation);
    d.phase_end = phase.end;
    d.memory = MemoryResults {
        hook_bytes: l(&m.hook_bytes),
        hook_freed_bytes: l(&m.hook_freed_bytes),
        hook_tasks: l(&m.hook_tasks),
        hook_failures: l(&m.hook_failures),
        task_field_bytes: designs::task_field_bytes(),
        wait_stack_bytes: l(&m.wait_stack_bytes),
        heap_before: phase.heap_before,
        heap_after: phase.heap_after,
    };
    d.task_create_cycles = phase.spawner.create_cycles;
    d.phase_cycles = phase.cycles;
    d.call_latency.clear();
    d.sched_latency.clear();
    d.probe_split.arrival.clear();
    d.probe_split.dispatch.clear();
    for cpu in 0..control.nr_vcpus {
        // SAFETY: the phase is over: no task records into these slots.
        let v = unsafe { &*vcpu_results(cpu) };
        d.call_latency.merge(&v.calls);
        d.sched_latency.merge(&v.probe);
        d.probe_split.arrival.merge(&v.probe_split.arrival);
        d.probe_split.dispatch.merge(&v.probe_split.dispatch);
    }
    write_preempt_off(&mut d.preempt_off, control);
    d.violation_log = checker::log();
    d.shape = phase.spawner.shape;
    d.pv = features;
    d.pv_kvm = control.pv_kvm & features;
    d.pv_counts = PvCounts {
        send_ipi_calls: l(&p.send_ipi_calls),
        yields: l(&p.yields),
        yields_effective: l(&p.yields_effective),
        deferrals: l(&p.deferrals),
        deferred_runs: l(&p.deferred_runs),
        deferred_not_first: l(&p.deferred_not_first),
        waits_on_preempted: l(&p.waits_on_preempted),
        preempted_wait_cycles: l(&p.preempted_wait_cycles),
        preempted_seen_kvm: l(&p.seen_kvm),
        preempted_seen_ipivirt: l(&p.seen_ipivirt),
    };
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

/// The preempt-off tracer's figures of the phase that just ended: every
/// vCPU's window maxima merged, summarised per vCPU, and the causes.
fn write_preempt_off(p: &mut abi::PreemptOffResults, control: &Control) {
    let cycles_per_us = sched::PARAMS.cycles_per_us.load(Ordering::Relaxed);
    p.enabled = u32::from(trace::enabled());
    p.steal_tracked = u32::from(trace::enabled() && crate::kernel::pv::steal_registered());
    p.window_cycles = u64::from(control.preempt_window_us()) * cycles_per_us;
    p.sections = 0;
    p.unmatched = 0;
    p.window_max.clear();
    p.causes = [abi::PreemptOffCause::default(); abi::preempt_off::cause::COUNT];
    p.per_cpu = [abi::PreemptOffCpu::default(); abi::MAX_VCPUS];
    p.window_max_excl_steal.clear();
    p.per_cpu_excl_steal = [abi::PreemptOffCpu::default(); abi::MAX_VCPUS];
    let excl = p.steal_tracked != 0;
    for cpu in 0..control.nr_vcpus {
        trace::with_snapshot(cpu, |s| {
            p.window_max.merge(&s.windows);
            p.per_cpu[cpu as usize] = abi::PreemptOffCpu::from_histogram(&s.windows);
            if excl {
                p.window_max_excl_steal.merge(&s.windows_excl_steal);
                p.per_cpu_excl_steal[cpu as usize] =
                    abi::PreemptOffCpu::from_histogram(&s.windows_excl_steal);
            }
            for (sum, c) in p.causes.iter_mut().zip(s.causes.iter()) {
                sum.windows += c.windows;
                sum.max = sum.max.max(c.max);
            }
            p.sections += s.sections;
            p.unmatched += s.unmatched;
        });
    }
}
