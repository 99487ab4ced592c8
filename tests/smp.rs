//! The cross-call layer on real VMs: every safe design keeps the
//! invariants under guest-forced preemption and task migration, the
//! checker catches the per-CPU-mask design that under-waits, the
//! task-local mask costs nothing up to 64 vCPUs and two words at 80 (as the
//! guest allocator's own counter measures it), phases are isolated (0
//! violations at 128 vCPUs) and a phase that cannot quiesce is a stall.
//! Sized by time: guest kernel code may be emulated (about 600 calls/s at
//! 4 vCPUs on the nested host ipivirt's CI uses).

mod common;

use std::time::Duration;

use common::machine::SAFE_DESIGNS;
use common::{quiet_run, NO_INJECTION};
use ipivirt::results::DesignReport;
use ipivirt::{BootReport, Design, MachineConfig, TestHook, Workload};

fn run(
    vcpus: u32,
    workload: Workload,
    designs: &[Design],
    secs: f64,
    tune: impl FnOnce(&mut MachineConfig),
) -> BootReport {
    let timeout = Duration::from_secs(300);
    common::machine::boot_captured(vcpus, workload, secs, timeout, |cfg| {
        cfg.designs = designs.to_vec();
        cfg.guest_preempt_prob = 0.2;
        cfg.forced_migration = 0.2;
        tune(cfg);
    })
}

fn assert_clean(d: &DesignReport) {
    assert_eq!(
        d.violations,
        0,
        "{}: {:?}",
        d.design.name(),
        d.violation_log
    );
    // The mechanism ran (how many calls fit is a benchmark's business).
    assert!(d.calls >= 20, "{}: only {} calls", d.design.name(), d.calls);
    assert!(
        d.callbacks >= d.calls,
        "{}: {} callbacks for {} calls",
        d.design.name(),
        d.callbacks,
        d.calls
    );
    assert_eq!(
        d.mask_allocs,
        d.mask_frees,
        "{}: allocations and frees balance",
        d.design.name()
    );
    assert_eq!(
        d.unchecked,
        0,
        "{}: every request was checked",
        d.design.name()
    );
    assert!(
        d.call_latency.count > 0 && d.sched_latency.count > 0,
        "{}",
        d.design.name()
    );
}

/// A phase that ended well: quiesced, no violation, some calls, and as
/// many mask frees as allocations.
fn assert_quiesced(d: &DesignReport) {
    let name = d.design.name();
    assert_eq!(d.phase_end.status_name(), "quiesced", "{name}");
    assert_eq!(d.violations, 0, "{name}: {:?}", d.violation_log);
    assert!(d.calls > 0, "{name}");
    assert_eq!(d.mask_allocs, d.mask_frees, "{name}");
}

#[test]
fn test_safe_designs_never_violate_under_preemption_and_migration() {
    if !common::kvm_or_skip() {
        return;
    }
    let safe = SAFE_DESIGNS;
    let r = run(4, Workload::Shootdown, &safe, 3.0, |c| {
        c.alloc_fail_prob = 0.1
    });
    assert_eq!(r.guest.designs.len(), 4);
    for d in &r.guest.designs {
        assert_clean(d);
    }
    let by = |d| r.guest.designs.iter().find(|x| x.design == d).unwrap();
    // Only the preemptible designs are preempted in their waits.
    assert_eq!(by(Design::Upstream).waits_preempted, 0);
    for d in [Design::TaskLocal, Design::Stack] {
        assert!(
            by(d).waits_preempted > 0,
            "{}: the wait was never preempted",
            d.name()
        );
    }
    // Injected allocation failures fall back to the pinned wait.
    assert!(by(Design::AllocInPath).fallbacks > 0);
    assert!(by(Design::AllocInPath).mask_allocs > 0);
    // Up to 64 vCPUs the task-local mask lives in the pointer: the
    // allocator reserved nothing for it; every task carries the 8-B field.
    assert_eq!(by(Design::TaskLocal).mask_bytes_per_task, 0);
    for (i, d) in r.guest.designs.iter().enumerate() {
        let m = &d.memory;
        assert_eq!(d.phase_end.status_name(), "quiesced", "{}", d.design.name());
        assert_eq!((m.hook_bytes, m.hook_tasks), (0, 0), "{}", d.design.name());
        assert_eq!(m.task_field_bytes, 8, "{}", d.design.name());
        // The allocator's own count of bytes in use: after the first phase
        // (which allocates every CPU's cfd) a phase leaves nothing of its
        // tasks behind (one task's kernel stack alone is 16 KiB; what may
        // remain is run-queue capacity, which grows and never shrinks).
        if i > 0 {
            assert!(
                m.heap_after < m.heap_before + 1024,
                "{}: {} B before, {} B after",
                d.design.name(),
                m.heap_before,
                m.heap_after
            );
        }
    }
    // The stack design's local is a whole CpuMask, and its wait measurably
    // uses more stack than task-local's.
    assert_eq!(by(Design::Stack).stack_bytes_per_call, 128);
    assert!(
        by(Design::Stack).memory.wait_stack_bytes > by(Design::TaskLocal).memory.wait_stack_bytes,
        "stack {} B, task-local {} B",
        by(Design::Stack).memory.wait_stack_bytes,
        by(Design::TaskLocal).memory.wait_stack_bytes
    );
}

#[test]
fn test_ping_single_target_calls_are_exactly_once() {
    if !common::kvm_or_skip() {
        return;
    }
    let designs = [Design::Upstream, Design::TaskLocal];
    let r = run(4, Workload::Ping, &designs, 2.0, |_| {});
    for d in &r.guest.designs {
        assert_clean(d);
        assert_eq!(
            d.callbacks,
            d.calls,
            "{}: one callback per single call",
            d.design.name()
        );
    }
}

#[test]
fn test_unsafe_percpu_is_caught() {
    if !common::kvm_or_skip() {
        return;
    }
    // How soon the bug shows depends on how often a preempted waiter's CPU
    // runs another caller while one of the waiter's targets is still slow
    // to run its callback, which host load changes. Natively that is many
    // times in one run. In the emulated plain kernel every step of the
    // waiter's CPU is as slow as the target's, so it is about one call in
    // several hundred, and a run makes 100 to 600 calls per 4 s depending
    // on the host's load: there the runs go on until they made enough calls
    // for the race to show many times over. A checker that never catches
    // it fails either way.
    let native = common::native_mode();
    let (secs, min_calls, max_runs) = if native {
        (4.0, 0, 3)
    } else {
        (10.0, 4000, 30)
    };
    let mut seen = Vec::new();
    let mut calls = 0;
    for attempt in 1..=max_runs {
        let r = run(4, Workload::Shootdown, &[Design::UnsafePercpu], secs, |c| {
            c.issuers_per_cpu = 4;
            c.hogs_per_cpu = 0;
            c.guest_preempt_prob = 0.5;
            c.seed = attempt;
        });
        let d = r.guest.designs[0].clone();
        if d.violations > 0 {
            eprintln!(
                "caught in run {attempt} ({} violations in its {} calls, {calls} calls before it)",
                d.violations, d.calls
            );
            assert!(d.first_violation_cycles.is_some());
            assert!(
                d.violation_log.iter().any(|v| v.kind == abi_kind_not_run()),
                "{:?}",
                d.violation_log
            );
            return;
        }
        calls += d.calls;
        seen.push((d.calls, d.waits_preempted));
        if attempt >= 3 && calls >= min_calls {
            break;
        }
    }
    panic!(
        "the checker never caught unsafe-percpu in {} runs, {calls} calls (calls, preempted waits): {seen:?}",
        seen.len()
    );
}

fn abi_kind_not_run() -> u32 {
    1 // abi::violation::NOT_RUN: the caller returned before a target ran
}

#[test]
fn test_task_local_mask_is_allocated_above_64_vcpus() {
    if !common::kvm_or_skip() {
        return;
    }
    // Injected failures of the mask allocation at task creation, in both
    // phases: the mask is allocated at every creation whatever design runs.
    let r = run(
        80,
        Workload::Shootdown,
        &[Design::Upstream, Design::TaskLocal],
        3.0,
        |c| {
            c.issuers_per_cpu = 1;
            c.hogs_per_cpu = 0;
            c.alloc_fail_prob = 0.2;
        },
    );
    for d in &r.guest.designs {
        let (m, name) = (&d.memory, d.design.name());
        assert_quiesced(d);
        assert_eq!(m.task_field_bytes, 8, "{name}");
        // One mask per created task, none for a refused one.
        assert_eq!(m.hook_tasks - m.hook_failures, d.mask_allocs, "{name}");
        assert!(
            d.mask_allocs >= d.tasks_created,
            "{name}: one mask per task"
        );
        // The allocator's own counter: it reserved exactly 16 B per mask
        // (80 CPUs need two words; its minimum block is 16 B) and got all
        // of it back.
        assert_eq!(m.hook_bytes, 16 * d.mask_allocs, "{name}");
        assert_eq!(m.hook_freed_bytes, m.hook_bytes, "{name}: leaked");
        // Creation failures happened, were counted, and refused the task.
        assert!(m.hook_failures > 0, "{name}: no injected failure");
        assert!(d.unchecked >= m.hook_failures, "{name}");
    }
    let by = |d| r.guest.designs.iter().find(|x| x.design == d).unwrap();
    assert_eq!(by(Design::TaskLocal).mask_bytes_per_task, 16);
    assert_eq!(by(Design::Upstream).mask_bytes_per_task, 0);
}

#[test]
fn test_safe_designs_at_128_vcpus_have_isolated_phases_and_no_violations() {
    if !common::kvm_or_skip() {
        return;
    }
    if !common::native_mode() {
        // 128 emulated vCPUs on 2 host CPUs do not finish four phases
        // within the suite's 300-s bound; the native pass runs this test.
        eprintln!("NOT RUN in the plain guest kernel: 128 emulated vCPUs take longer than the test's bound");
        return;
    }
    let safe = SAFE_DESIGNS;
    let r = run(128, Workload::Shootdown, &safe, 0.5, |c| {
        c.issuers_per_cpu = 1;
        c.hogs_per_cpu = 0;
    });
    for d in &r.guest.designs {
        assert_quiesced(d);
        assert_eq!(d.unchecked, 0, "{}", d.design.name());
    }
    // 128 CPUs: two words in task-local's mask, 16 B.
    assert_eq!(r.guest.designs[1].mask_bytes_per_task, 16);
}

#[test]
fn test_a_phase_that_cannot_quiesce_is_a_stall() {
    if !common::kvm_or_skip() {
        return;
    }
    // The hook adds a task on vCPU 1 that waits for a csd of vCPU 2 that
    // nobody unlocks: the first phase (task-local's) cannot quiesce.
    let designs = [Design::TaskLocal, Design::Upstream];
    let r = run(4, Workload::Shootdown, &designs, 0.5, |c| {
        c.test_hook = TestHook::StuckTask;
        c.test_hook_vcpu = 1;
        c.quiesce_bound = Duration::from_secs(1);
    });
    let (first, second) = (&r.guest.designs[0], &r.guest.designs[1]);
    assert_eq!(first.phase_end.status_name(), "stalled");
    assert_eq!(
        first.violations, 0,
        "a stall is no violation: {:?}",
        first.violation_log
    );
    assert!(first.calls > 0);
    assert_eq!(first.phase_end.stalled_tasks, 1);
    let t = &first.phase_end.stalled[0];
    assert_eq!(ipivirt::results::task_name(&t.name), "stuck");
    assert_eq!((t.cpu, t.waits_on), (1, 2));
    // The next design never starts under the stalled one's tasks.
    assert_eq!(second.phase_end.status_name(), "not-run");
    assert_eq!(second.calls, 0);
    // The text is rendered from the report model built from the readout.
    let model = ipivirt::Report::new(&MachineConfig::new(4), r.clone());
    let text = ipivirt::report::designs_text(&model);
    assert!(
        text.contains("STALLED: task-local's phase did not quiesce")
            && text.contains("stuck on vCPU 1 (")
            && text.contains("waits for the csd of vCPU 2"),
        "{text}"
    );
}

#[test]
fn test_cli_designs_table_and_bad_design_name() {
    if !common::kvm_or_skip() {
        return;
    }
    let mut args = quiet_run("2", &["--duration", "500ms"]);
    args.extend(NO_INJECTION);
    args.extend(["--designs", "upstream,task-local"]);
    let (stdout, _) = common::ipivirt_exits(&args, 0);
    for needle in [
        "design",
        "upstream",
        "task-local",
        "call p99 (us)",
        "probe p99 (us)",
        "violations",
        "extra B/task",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?}:\n{stdout}");
    }
    assert!(
        stdout.contains("task-local: +") && stdout.contains("; probe P99 "),
        "the ratio sentence: {stdout}"
    );

    let (_, stderr) = common::ipivirt_exits(&["run", "--designs", "upstream,fast"], 2);
    assert!(stderr.contains("unknown design 'fast': valid designs are upstream, task-local, stack, alloc-in-path, unsafe-percpu, free-csd-offline, no-dying-flush"), "{stderr}");
}

#[test]
fn test_torture_mix_passes_every_check() {
    if !common::kvm_or_skip() {
        return;
    }
    let safe = [Design::Upstream, Design::TaskLocal];
    let r = run(4, Workload::Torture, &safe, 2.0, |c| {
        c.inject = common::host::pause_and_migrate()
    });
    for d in &r.guest.designs {
        assert_clean(d);
    }
    assert_eq!(r.guest.torture.len(), 8);
    for (name, invocations, errors) in &r.guest.torture {
        assert!(*invocations > 0, "{name} never ran");
        assert_eq!(*errors, 0, "{name}: failed checks");
    }
}

#[test]
fn test_broken_checker_misses_unsafe_percpu() {
    if !common::kvm_or_skip() {
        return;
    }
    // The same scenario as test_unsafe_percpu_is_caught, with the
    // checker's test-only fault on: it must see nothing, so the catch test
    // above would fail against a broken checker.
    let r = run(4, Workload::Shootdown, &[Design::UnsafePercpu], 2.0, |c| {
        c.issuers_per_cpu = 4;
        c.hogs_per_cpu = 0;
        c.guest_preempt_prob = 0.5;
        c.test_hook = ipivirt::TestHook::BrokenChecker;
    });
    let d = &r.guest.designs[0];
    assert!(
        d.calls > 0 && d.waits_preempted > 0,
        "the scenario ran: {d:?}"
    );
    assert_eq!(d.violations, 0, "a broken checker records nothing");
}
