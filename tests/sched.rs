//! The guest kernel core on real VMs: calibration, preemption of user
//! tasks, forced migration, task memory accounting, exceptions in tasks and
//! the latency probe. Sized by time (guest kernel code may be emulated).

mod common;

use std::time::Duration;

use common::{quiet_run, NO_INJECTION};
use ipivirt::{BootReport, MachineConfig, Workload};

/// A run of `workload` for `secs` with a 90-s timeout.
fn run(
    vcpus: u32,
    workload: Workload,
    secs: f64,
    tune: impl FnOnce(&mut MachineConfig),
) -> BootReport {
    common::machine::boot_captured(vcpus, workload, secs, Duration::from_secs(90), tune)
}

#[test]
fn test_calibration_reports_both_figures() {
    if !common::kvm_or_skip() {
        return;
    }
    let r = run(2, Workload::Idle, 0.5, |_| {});
    let g = &r.guest;
    assert!(
        g.cpl0_cycles_per_kiter > 0 && g.cpl3_cycles_per_kiter > 0,
        "{g:?}"
    );
    assert!(
        g.verdict == "hardware-accelerated" || g.verdict.starts_with("CPL0 emulated"),
        "{}",
        g.verdict
    );
    assert!(g.tick_hz == 100 || g.tick_hz == 1000, "{}", g.tick_hz);
}

#[test]
fn test_two_cpu_bound_user_tasks_on_one_vcpu_both_progress() {
    if !common::kvm_or_skip() {
        return;
    }
    let r = run(1, Workload::Hogs, 2.0, |c| c.hogs_per_cpu = 2);
    let g = &r.guest;
    assert_eq!(g.hogs.len(), 2, "{:?}", g.hogs);
    for h in &g.hogs {
        assert!(h.iterations > 100_000, "a starved task: {:?}", g.hogs);
        assert_eq!(h.cpus_mask, 1, "only vCPU 0 exists");
    }
    // They share the vCPU through preemption by the tick.
    assert!(g.vcpus[0].sched.preemptions >= 10, "{:?}", g.vcpus[0]);
    assert!(g.vcpus[0].sched.ticks >= 10, "{:?}", g.vcpus[0]);
}

#[test]
fn test_forced_migration_moves_tasks_across_vcpus() {
    if !common::kvm_or_skip() {
        return;
    }
    let r = run(4, Workload::Hogs, 2.0, |c| {
        c.hogs_per_cpu = 1;
        c.forced_migration = 0.5;
    });
    let g = &r.guest;
    let hopped = g
        .hogs
        .iter()
        .filter(|h| h.cpus_mask.count_ones() >= 2)
        .count();
    assert!(hopped >= 2, "tasks seen on several vCPUs: {:?}", g.hogs);
    assert!(
        g.vcpus.iter().map(|v| v.sched.migrations_in).sum::<u64>() >= 4,
        "{:?}",
        g.vcpus
    );
}

#[test]
fn test_task_exit_frees_everything() {
    if !common::kvm_or_skip() {
        return;
    }
    let r = run(4, Workload::Churn, 3.0, |_| {});
    let g = &r.guest;
    assert!(g.churn_cycles >= 200, "{}", g.churn_cycles);
    // Alive at the end: the boot context of each vCPU plus the BSP's idle task.
    assert_eq!(g.tasks_created - g.tasks_freed, 4 + 1, "{g:?}");
    // Kernel stacks and task structs all returned; only queue capacity may grow.
    let grown = g.heap_used.saturating_sub(g.heap_baseline);
    assert!(
        grown < 16 << 10,
        "heap grew by {grown} B over {} create/exit cycles",
        g.churn_cycles
    );
}

#[test]
fn test_probe_histogram_sane_on_idle_guest() {
    if !common::kvm_or_skip() {
        return;
    }
    let r = run(2, Workload::Idle, 2.0, |c| {
        c.probe_period = Some(Duration::from_millis(10))
    });
    let g = &r.guest;
    // 2 vCPUs x 2 s / 10 ms = 400 wake-ups; allow a loaded host to lose half.
    assert!(
        g.probe.count >= 200 && g.probe.count <= 400,
        "{}",
        g.probe.count
    );
    assert!(
        g.probe_per_vcpu.iter().all(|h| h.count > 0),
        "every vCPU's probe ran"
    );
    let p50 = g.probe.quantile_ppm(500_000);
    assert!(p50 <= g.probe.quantile_ppm(990_000) && g.probe.quantile_ppm(990_000) <= g.probe.max);
    // No lateness exceeds the run itself (a structural bound: latency
    // figures are the benchmark's business, not a test's).
    let run_cycles = r.tsc_khz * 1000 * 2;
    assert!(g.probe.max < run_cycles, "probe max {} cycles", g.probe.max);
}

#[test]
fn test_exception_in_user_task_is_reported() {
    if !common::kvm_or_skip() {
        return;
    }
    let (_, stderr) = common::ipivirt_exits(
        &quiet_run("2", &["--test-hook", "user-fault", "--test-hook-vcpu", "1"]),
        3,
    );
    assert!(
        stderr.contains("guest exception #PF (vector 14) on vCPU 1 at rip=0x"),
        "{stderr}"
    );
    assert!(
        stderr.contains("(CPL3), error code 0x4, cr2=0x100000010"),
        "{stderr}"
    );
    assert!(stderr.contains("'faulty'"), "{stderr}");
}

#[test]
fn test_cli_run_idle_prints_counters_and_probe() {
    if !common::kvm_or_skip() {
        return;
    }
    let mut args = quiet_run("2", &["--workload", "idle", "--duration", "500ms"]);
    args.extend(NO_INJECTION);
    let out = common::ipivirt(&args);
    let (stdout, stderr) = common::text(&out);
    assert!(out.status.success(), "{stderr}");
    for needle in [
        "platform: CPL0 ",
        "sched latency (probe): n=",
        "p50 ",
        "p99 ",
        "max ",
        "ctxsw",
        "preempt",
        "migr-in",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    // The counters table: a header, then one row per vCPU.
    let rows: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.contains("ctxsw"))
        .skip(1)
        .take_while(|l| !l.starts_with("tasks:"))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(
        rows.iter()
            .all(|r| r.trim_start().starts_with(|c: char| c.is_ascii_digit())),
        "{stdout}"
    );
}

#[test]
fn test_probe_sees_vcpu_pauses() {
    if !common::kvm_or_skip() {
        return;
    }
    let _serial = common::heavy();
    // 30 ms pauses every ~60 ms on each host CPU: while its vCPU is held
    // out of KVM_RUN the probe cannot run, so some wake-up is late by
    // nearly a pause (a structural bound, not a timing threshold).
    let r = run(2, Workload::Idle, 2.0, |c| {
        c.probe_period = Some(Duration::from_millis(5));
        c.inject = ipivirt::InjectConfig {
            preempt: ipivirt::PreemptMode::Pause,
            preempt_len: Duration::from_millis(30),
            preempt_every: Duration::from_millis(60),
            max_duty: 0.9,
            ..Default::default()
        };
    });
    assert!(r.host.preemptions_injected > 0, "pauses were injected");
    let max_ms = r.guest.probe.max as f64 / r.tsc_khz as f64;
    assert!(
        max_ms >= 20.0,
        "a paused vCPU's probe ran at most {max_ms:.1} ms late"
    );
}
