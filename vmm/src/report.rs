//! Plain-text reports of a run.

use std::fmt::Write;

use abi::Histogram;

use crate::machine::{BootReport, MachineConfig};

/// Converts TSC cycles to microseconds.
pub fn cycles_to_us(cycles: u64, tsc_khz: u64) -> f64 {
    if tsc_khz == 0 {
        return 0.0;
    }
    cycles as f64 * 1000.0 / tsc_khz as f64
}

/// `n=…, p50 …, p99 …, max …` of a histogram in microseconds.
pub fn latency_summary(h: &Histogram, tsc_khz: u64) -> String {
    let us = |c| cycles_to_us(c, tsc_khz);
    format!(
        "n={}, p50 {:.1} us, p99 {:.1} us, max {:.1} us",
        h.count,
        us(h.quantile_ppm(500_000)),
        us(h.quantile_ppm(990_000)),
        us(h.max)
    )
}

/// The scheduler part of `ipivirt run`: platform, probe, per-vCPU counters,
/// task accounting.
pub fn scheduler_text(config: &MachineConfig, r: &BootReport) -> String {
    let g = &r.guest;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "platform: CPL0 {} cycles/1024 iter, CPL3 {} cycles/1024 iter: {}; tick {} Hz",
        g.cpl0_cycles_per_kiter, g.cpl3_cycles_per_kiter, g.verdict, g.tick_hz
    );
    let _ = writeln!(
        out,
        "workload {:?} for {:.2} s (guest-measured {:.2} s), {} task(s) per vCPU, forced migration {}",
        config.workload,
        config.duration.as_secs_f64(),
        cycles_to_us(g.workload_cycles, r.tsc_khz) / 1e6,
        config.tasks_per_cpu,
        config.forced_migration
    );
    let _ = writeln!(
        out,
        "sched latency (probe): {}",
        latency_summary(&g.probe, r.tsc_khz)
    );
    let _ = writeln!(
        out,
        "{:>5} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>10} {:>10}",
        "vCPU",
        "ctxsw",
        "preempt",
        "migr-in",
        "ticks",
        "ipi-tx",
        "ipi-rx",
        "probe-p99",
        "probe-max"
    );
    for (i, c) in g.vcpus.iter().enumerate() {
        let h = g.probe_per_vcpu.get(i).copied().unwrap_or_default();
        let _ = writeln!(
            out,
            "{:>5} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7} {:>8.1}us {:>8.1}us",
            i,
            c.context_switches,
            c.preemptions,
            c.migrations_in,
            c.ticks,
            c.ipis_sent,
            c.ipis_received,
            cycles_to_us(h.quantile_ppm(990_000), r.tsc_khz),
            cycles_to_us(h.max, r.tsc_khz)
        );
    }
    let _ = writeln!(
        out,
        "tasks: created {}, freed {}; heap in use {} B (before the workload {} B)",
        g.tasks_created, g.tasks_freed, g.heap_used, g.heap_baseline
    );
    if g.churn_cycles > 0 {
        let _ = writeln!(out, "churn: {} task create/exit cycles", g.churn_cycles);
    }
    for (i, h) in g.hogs.iter().enumerate() {
        let cpus: Vec<u32> = (0..64).filter(|c| h.cpus_mask & (1 << c) != 0).collect();
        let _ = writeln!(
            out,
            "hog {i}: {} iterations, ran on vCPUs {:?}",
            h.iterations, cpus
        );
    }
    out
}
