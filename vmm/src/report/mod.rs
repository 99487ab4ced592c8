//! Plain-text reports of a run: the scheduler block here, the design
//! table in [`designs_text`] (`designs.rs`, rendered from the report model).

mod designs;
pub(crate) mod summary;

use std::fmt::Write;

use abi::{Histogram, Workload};

use crate::machine::{BootReport, MachineConfig};

pub use designs::designs_text;

/// Which per-vCPU guest figures a run measured; the others print `-` in
/// the text and null in the JSON, never a zero that looks measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    /// The guest registered steal time (every workload run where KVM
    /// offers it).
    pub steal_time: bool,
    /// The guest recorded its largest TSC gap (`spin`).
    pub max_gap: bool,
}

impl Measured {
    /// Everything measured.
    pub const ALL: Measured = Measured {
        steal_time: true,
        max_gap: true,
    };

    /// What a run of `config` measured, with its host figures `host`.
    pub fn of(config: &MachineConfig, host: &crate::inject::HostReport) -> Self {
        Measured {
            steal_time: host.steal_time,
            max_gap: config.workload == abi::Workload::Spin,
        }
    }
}

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
    if h.count == 0 {
        // Not a latency of zero: nothing was measured.
        return "n=0, p50 -, p99 -, max - (no samples)".into();
    }
    let s = |c| crate::stats::sig3(us(c));
    format!(
        "n={}, p50 {} us, p99 {} us, max {} us{}",
        h.count,
        s(h.quantile_ppm(500_000)),
        s(h.quantile_ppm(990_000)),
        s(h.max),
        if h.count < crate::stats::MIN_SAMPLES {
            " (fewer than 100 samples: a rough figure)"
        } else {
            ""
        }
    )
}

/// The scheduler part of `ipivirt run`: platform, probe, per-vCPU counters,
/// task accounting.
pub fn scheduler_text(config: &MachineConfig, r: &BootReport) -> String {
    let g = &r.guest;
    let per_design = !g.designs.is_empty();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "platform: CPL0 {} cycles/1024 iter, CPL3 {} cycles/1024 iter: {}; tick {} Hz; kernel {}",
        g.cpl0_cycles_per_kiter, g.cpl3_cycles_per_kiter, g.verdict, g.tick_hz, g.mode
    );
    if g.trap_cycles != 0 {
        let _ = writeln!(
            out,
            "platform costs: system call {} cycles, ICR write {} cycles, EOI {} cycles",
            g.trap_cycles, g.icr_cycles, g.eoi_cycles
        );
    }
    if g.preempt_pair_traced_cycles != 0 {
        let _ = writeln!(
            out,
            "preempt-off tracer: a preempt_disable/enable pair costs {} cycles traced, {} untraced",
            g.preempt_pair_traced_cycles, g.preempt_pair_cycles
        );
    }
    if let Some(why) = g.native_error {
        let _ = writeln!(out, "platform: native mode not entered: {why}");
    }
    let _ = writeln!(
        out,
        "workload {:?} for {:.2} s{} (guest-measured {:.2} s in all), {}, forced migration {}",
        config.workload,
        config.duration.as_secs_f64(),
        if per_design { " per design" } else { "" },
        cycles_to_us(g.workload_cycles, r.tsc_khz) / 1e6,
        shape_text(config, r),
        config.forced_migration
    );
    // With one phase per design, the probe is reported per design (below);
    // here only the whole-run counters.
    if !per_design {
        let _ = writeln!(
            out,
            "sched latency (probe): {}",
            latency_summary(&g.probe, r.tsc_khz)
        );
    }
    let probe_cols = if per_design {
        ""
    } else {
        "  probe-p99  probe-max"
    };
    let _ = writeln!(
        out,
        "{:>5} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7}{probe_cols}",
        "vCPU", "ctxsw", "preempt", "migr-in", "ticks", "ipi-tx", "ipi-rx"
    );
    for (i, c) in g.vcpus.iter().map(|v| &v.sched).enumerate().take(16) {
        let h = g.probe_per_vcpu.get(i).copied().unwrap_or_default();
        let probe = if per_design {
            String::new()
        } else {
            format!(
                " {:>8}us {:>8}us",
                pct(&h, 990_000, r.tsc_khz),
                pct(&h, 1_000_000, r.tsc_khz)
            )
        };
        let _ = writeln!(
            out,
            "{:>5} {:>8} {:>8} {:>8} {:>7} {:>7} {:>7}{probe}",
            i,
            c.context_switches,
            c.preemptions,
            c.migrations_in,
            c.ticks,
            c.ipis_sent,
            c.ipis_received
        );
    }
    if g.vcpus.len() > 16 {
        let _ = writeln!(out, "... {} more vCPUs", g.vcpus.len() - 16);
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

/// A percentile (`ppm`; 1_000_000 is the maximum) of `h` in us with 3
/// significant figures: `-` when nothing was measured, a `*` when it rests
/// on fewer than [`crate::stats::MIN_SAMPLES`] samples.
fn pct(h: &Histogram, ppm: u32, tsc_khz: u64) -> String {
    if h.count == 0 || tsc_khz == 0 {
        return "-".into();
    }
    let v = if ppm >= 1_000_000 {
        h.max
    } else {
        h.quantile_ppm(ppm)
    };
    let mark = if h.count < crate::stats::MIN_SAMPLES {
        "*"
    } else {
        ""
    };
    format!("{}{mark}", crate::stats::sig3(cycles_to_us(v, tsc_khz)))
}

/// The workload's tasks in words: per vCPU as asked, and how many the
/// guest really spawned (the first phase's counts) where it counts them.
fn shape_text(config: &MachineConfig, r: &BootReport) -> String {
    let on = match &config.initiators {
        Some(v) => format!("on vCPU(s) {}", crate::inject::placement::list_text(v)),
        None => "on every vCPU".to_string(),
    };
    match (config.workload, r.guest.designs.first()) {
        (Workload::Hogs, _) => format!("{} hog(s) per vCPU", config.hogs_per_cpu),
        (Workload::Ping, _) => "1 pinger per vCPU".to_string(),
        (Workload::Shootdown | Workload::Torture, Some(d)) => format!(
            "{} issuer(s) per vCPU {on}, {} hog(s) per vCPU (spawned per design: {} issuers, {} hogs)",
            config.issuers_per_cpu, config.hogs_per_cpu, d.shape.issuers, d.shape.hogs
        ),
        _ => format!(
            "{} issuer(s) per vCPU {on}, {} hog(s) per vCPU",
            config.issuers_per_cpu, config.hogs_per_cpu
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_latency_summary_of_no_samples_is_dashes() {
        assert_eq!(
            latency_summary(&Histogram::new(), 1000),
            "n=0, p50 -, p99 -, max - (no samples)"
        );
    }
}
