//! Plain-text reports of a run.

use std::fmt::Write;

use abi::{Histogram, Workload};

use crate::machine::{BootReport, MachineConfig};

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
    for (i, c) in g.vcpus.iter().enumerate().take(16) {
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

fn us(cycles: u64, tsc_khz: u64) -> String {
    format!("{:.1}", cycles_to_us(cycles, tsc_khz))
}

/// A percentile of `h` in us, `-` when it holds no value (never a 0 that
/// looks measured).
fn opt_us(h: &abi::Histogram, ppm: u32, khz: u64) -> String {
    if h.count == 0 {
        "-".into()
    } else {
        us(h.quantile_ppm(ppm), khz)
    }
}

/// The cause the longest section of the phase is attributed to (`-`: none).
fn longest_cause(p: &crate::results::PreemptOffReport) -> &'static str {
    p.causes
        .iter()
        .zip(abi::preempt_off::cause::NAMES)
        .filter(|(c, _)| c.windows > 0)
        .max_by_key(|(c, _)| c.max)
        .map_or("-", |(_, n)| n)
}

/// vCPUs listed one by one in the preempt-off table; above this, the first
/// ones, the worst and the summary rows.
const POFF_ROWS: usize = 16;

/// The series' table: per vCPU, the P50 and P99 of the window maxima of
/// the longest non-preemptible section, per design; then all vCPUs
/// together. Above [`POFF_ROWS`] vCPUs: the first 8, the vCPU with the
/// worst P99 (per design), and the summary.
fn preempt_off_table(out: &mut String, designs: &[crate::results::DesignReport], khz: u64) {
    let traced: Vec<_> = designs.iter().filter(|d| d.preempt_off.enabled).collect();
    let Some(first) = traced.first() else {
        return;
    };
    let vcpus = first.preempt_off.per_cpu.len();
    let _ = writeln!(
        out,
        "preempt-off per vCPU: P50/P99 of each {:.0} ms window's longest non-preemptible section (us)",
        cycles_to_us(first.preempt_off.window_cycles, khz) / 1e3
    );
    let _ = write!(out, "{:>6}", "vCPU");
    for d in &traced {
        let _ = write!(out, " {:>21}", d.label());
    }
    let _ = writeln!(out);
    let cell = |c: &abi::PreemptOffCpu| {
        if c.windows == 0 {
            format!("{:>10} {:>10}", "-", "-")
        } else {
            format!("{:>10} {:>10}", us(c.p50, khz), us(c.p99, khz))
        }
    };
    let shown: Vec<usize> = if vcpus <= POFF_ROWS {
        (0..vcpus).collect()
    } else {
        (0..8).collect()
    };
    for i in shown {
        let _ = write!(out, "{i:>6}");
        for d in &traced {
            let _ = write!(out, " {}", cell(&d.preempt_off.per_cpu[i]));
        }
        let _ = writeln!(out);
    }
    if vcpus > POFF_ROWS {
        let _ = write!(out, "{:>6}", "worst");
        for d in &traced {
            let worst = d
                .preempt_off
                .per_cpu
                .iter()
                .max_by_key(|c| c.p99)
                .copied()
                .unwrap_or_default();
            let _ = write!(out, " {}", cell(&worst));
        }
        let _ = writeln!(out);
    }
    let _ = write!(out, "{:>6}", "all");
    for d in &traced {
        let h = &d.preempt_off.window_max;
        let _ = write!(
            out,
            " {:>10} {:>10}",
            opt_us(h, 500_000, khz),
            opt_us(h, 990_000, khz)
        );
    }
    let _ = writeln!(out);
}

/// The side-by-side table of a per-design run, one column per design, and
/// the result as ratios against `upstream` (when it ran).
pub fn designs_text(r: &BootReport) -> String {
    let designs = &r.guest.designs;
    let khz = r.tsc_khz;
    let mut out = String::new();
    // Rows first, then each column as wide as its widest cell.
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let row = |rows: &mut Vec<(String, Vec<String>)>, label: &str, cells: Vec<String>| {
        rows.push((label.to_string(), cells));
    };
    row(
        &mut rows,
        "design",
        designs.iter().map(|d| d.label()).collect(),
    );
    // A design that did not run (an earlier phase stalled) measured
    // nothing: its cells are `-`, never a zero that looks measured.
    let per = |f: &dyn Fn(&crate::results::DesignReport) -> String| {
        designs
            .iter()
            .map(|d| {
                if d.phase_end.status == abi::phase_status::NOT_RUN {
                    "-".to_string()
                } else {
                    f(d)
                }
            })
            .collect::<Vec<_>>()
    };
    row(&mut rows, "calls", per(&|d| d.calls.to_string()));
    row(
        &mut rows,
        "calls/s",
        per(&|d| {
            if d.phase_cycles == 0 || khz == 0 {
                return "-".into();
            }
            format!(
                "{:.0}",
                d.calls as f64 / (cycles_to_us(d.phase_cycles, khz) / 1e6).max(1e-9)
            )
        }),
    );
    row(
        &mut rows,
        "call p50 (us)",
        per(&|d| pct(&d.call_latency, 500_000, khz)),
    );
    row(
        &mut rows,
        "call p99 (us)",
        per(&|d| pct(&d.call_latency, 990_000, khz)),
    );
    row(
        &mut rows,
        "call p99.9 (us)",
        per(&|d| pct(&d.call_latency, 999_000, khz)),
    );
    row(
        &mut rows,
        "call max (us)",
        per(&|d| pct(&d.call_latency, 1_000_000, khz)),
    );
    row(
        &mut rows,
        "probe p50 (us)",
        per(&|d| pct(&d.sched_latency, 500_000, khz)),
    );
    row(
        &mut rows,
        "probe p99 (us)",
        per(&|d| pct(&d.sched_latency, 990_000, khz)),
    );
    row(
        &mut rows,
        "probe max (us)",
        per(&|d| pct(&d.sched_latency, 1_000_000, khz)),
    );
    row(
        &mut rows,
        "probe arrival p99 (us)",
        per(&|d| opt_us(&d.probe_arrival, 990_000, khz)),
    );
    row(
        &mut rows,
        "probe dispatch p99 (us)",
        per(&|d| opt_us(&d.probe_dispatch, 990_000, khz)),
    );
    let poff = |ppm: u32| {
        per(&|d| {
            if d.preempt_off.enabled {
                opt_us(&d.preempt_off.window_max, ppm, khz)
            } else {
                "-".into()
            }
        })
    };
    row(&mut rows, "preempt-off p50 (us)", poff(500_000));
    row(&mut rows, "preempt-off p99 (us)", poff(990_000));
    row(&mut rows, "preempt-off max (us)", poff(1_000_000));
    row(
        &mut rows,
        "preempt-off longest in",
        per(&|d| longest_cause(&d.preempt_off).to_string()),
    );
    row(
        &mut rows,
        "waits preempted",
        per(&|d| d.waits_preempted.to_string()),
    );
    row(
        &mut rows,
        "waits migrated",
        per(&|d| d.waits_migrated.to_string()),
    );
    row(&mut rows, "violations", per(&|d| d.violations.to_string()));
    row(
        &mut rows,
        "first violation (ms)",
        per(&|d| {
            d.first_violation_cycles
                .map_or("-".into(), |c| format!("{:.1}", cycles_to_us(c, khz) / 1e3))
        }),
    );
    row(
        &mut rows,
        "phase end",
        designs
            .iter()
            .map(|d| match d.phase_end.status_name() {
                "stalled" => "STALLED".to_string(),
                s => s.to_string(),
            })
            .collect(),
    );
    row(
        &mut rows,
        "extra B/task",
        per(&|d| d.mask_bytes_per_task.to_string()),
    );
    row(
        &mut rows,
        "task field B",
        per(&|d| d.memory.task_field_bytes.to_string()),
    );
    row(
        &mut rows,
        "mask B/call on stack",
        per(&|d| d.stack_bytes_per_call.to_string()),
    );
    row(
        &mut rows,
        "mask allocs/frees",
        per(&|d| format!("{}/{}", d.mask_allocs, d.mask_frees)),
    );
    row(&mut rows, "fallbacks", per(&|d| d.fallbacks.to_string()));
    row(
        &mut rows,
        "csd watchdog",
        per(&|d| d.csd_watchdog_fires.to_string()),
    );
    row(
        &mut rows,
        "task create (us)",
        per(&|d| {
            if d.tasks_created == 0 {
                "-".into()
            } else {
                crate::stats::sig3(cycles_to_us(d.task_create_mean_cycles, khz))
            }
        }),
    );
    if designs
        .iter()
        .any(|d| d.hotplug.offlines + d.hotplug.refused > 0)
    {
        row(
            &mut rows,
            "hotplug off/on",
            per(&|d| format!("{}/{}", d.hotplug.offlines, d.hotplug.onlines)),
        );
        row(
            &mut rows,
            "hotplug skipped/enxio",
            per(&|d| {
                format!(
                    "{}/{}",
                    d.hotplug.skipped_targets, d.hotplug.single_offline_errors
                )
            }),
        );
        row(
            &mut rows,
            "dying flushed/dropped",
            per(&|d| format!("{}/{}", d.hotplug.flushed_callbacks, d.hotplug.dropped_csds)),
        );
    }
    if designs.iter().any(|d| d.pv != 0) {
        rows.extend(pv_rows(designs, khz));
    }
    let widths: Vec<usize> = (0..designs.len())
        .map(|i| rows.iter().map(|r| r.1[i].len()).max().unwrap_or(0).max(8) + 2)
        .collect();
    for (label, cells) in &rows {
        let _ = write!(out, "{label:<24}");
        for (c, w) in cells.iter().zip(&widths) {
            let _ = write!(out, "{c:>w$}");
        }
        let _ = writeln!(out);
    }
    if rows.iter().any(|r| r.1.iter().any(|c| c.ends_with('*'))) {
        let _ = writeln!(
            out,
            "* rests on fewer than {} samples: a rough figure",
            crate::stats::MIN_SAMPLES
        );
    }
    preempt_off_table(&mut out, designs, khz);
    pv_lines(&mut out, r);
    if !r.guest.torture.is_empty() {
        let _ = writeln!(
            out,
            "torture primitives (all phases): invocations / failed checks"
        );
        for (name, inv, err) in &r.guest.torture {
            let _ = writeln!(out, "  {name:<12} {inv:>10} / {err}");
        }
    }
    memory_lines(&mut out, designs);
    stall_lines(&mut out, designs, khz);
    // The ratios against upstream are the answer block's
    // (crate::stats::summary_text), printed first.
    if r.vmm_stalls.stalled() {
        let _ = writeln!(out, "UNRELIABLE: {}", r.vmm_stalls.describe());
    }
    // Each PV column against its plain design, measured in the same run.
    let compared = if r.vmm_stalls.stalled() {
        &[][..]
    } else {
        designs
    };
    for d in compared.iter().filter(|d| d.label() != d.design.name()) {
        if let Some(plain) = designs
            .iter()
            .find(|p| p.design == d.design && p.label() == p.design.name())
        {
            let ratio = |a: u64, b: u64| {
                if b == 0 {
                    "n/a".to_string()
                } else {
                    format!("{:.2}x", a as f64 / b as f64)
                }
            };
            let _ = writeln!(
                out,
                "{} vs {}: call p99 {}, call max {}, probe p99 {}, calls {}",
                d.label(),
                plain.label(),
                ratio(
                    d.call_latency.quantile_ppm(990_000),
                    plain.call_latency.quantile_ppm(990_000)
                ),
                ratio(d.call_latency.max, plain.call_latency.max),
                ratio(
                    d.sched_latency.quantile_ppm(990_000),
                    plain.sched_latency.quantile_ppm(990_000)
                ),
                ratio(d.calls, plain.calls),
            );
        }
    }
    for d in designs.iter().filter(|d| !d.design.expected_safe()) {
        match d.first_violation_cycles {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "{}: the checker caught it: {} violations, the first {:.1} ms into the phase (expected: this design is wrong on purpose)",
                    d.design.name(),
                    d.violations,
                    cycles_to_us(c, khz) / 1e3
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{}: NOT caught in this run (no violation seen): raise --guest-preempt-prob or --duration",
                    d.design.name()
                );
            }
        }
    }
    out
}

/// The PV rows of the design table ("-" where the phase lacks the feature).
/// The measured memory of the designs (from the guest allocator's own
/// counter), and what Linux's NR_CPUS=8192 would make of it (computed).
fn memory_lines(out: &mut String, designs: &[crate::results::DesignReport]) {
    let field = designs.iter().map(|d| d.memory.task_field_bytes).max();
    if let Some(t) = designs.iter().find(|d| d.design == abi::Design::TaskLocal) {
        let m = &t.memory;
        let _ = writeln!(
            out,
            "task-local memory (measured, guest allocator): +{} B/task on the heap ({} B reserved for {} mask(s), {} B given back; {} creation(s) refused), +{} B task field in every design",
            t.mask_bytes_per_task,
            m.hook_bytes,
            m.hook_tasks - m.hook_failures,
            m.hook_freed_bytes,
            m.hook_failures,
            m.task_field_bytes
        );
    } else if let Some(f) = field {
        let _ = writeln!(
            out,
            "task field: +{f} B per task in every design (measured)"
        );
    }
    if let Some(stack) = designs.iter().find(|d| d.design == abi::Design::Stack) {
        let mut line = format!(
            "stack: the on-stack mask is {} B per call (the local's size; measured wait stack {} B below the dispatch",
            stack.stack_bytes_per_call, stack.memory.wait_stack_bytes
        );
        if let Some(t) = designs.iter().find(|d| d.design == abi::Design::TaskLocal) {
            let _ = write!(line, ", task-local's {} B", t.memory.wait_stack_bytes);
        }
        let _ = writeln!(out, "{line})");
    }
    if designs
        .iter()
        .any(|d| matches!(d.design, abi::Design::TaskLocal | abi::Design::Stack))
    {
        let c = crate::results::NR_CPUS_8192_MASK_BYTES;
        let _ = writeln!(
            out,
            "computed, not measured, at Linux's NR_CPUS=8192: task-local +{c} B per task (+8 B field), stack {c} B per call"
        );
    }
}

/// The phases that could not quiesce, with the tasks they left.
fn stall_lines(out: &mut String, designs: &[crate::results::DesignReport], khz: u64) {
    for d in designs.iter().filter(|d| d.phase_end.stalled()) {
        let e = &d.phase_end;
        let _ = writeln!(
            out,
            "STALLED: {}'s phase did not quiesce within {:.0} ms: {} task(s) still alive, {} vCPU(s) with an undrained call queue{}; its end-of-phase checks did not run and later designs did not run",
            d.label(),
            cycles_to_us(e.bound_cycles, khz) / 1e3,
            e.stalled_tasks,
            e.undrained_vcpus,
            e.first_undrained
                .map_or(String::new(), |c| format!(" (first: vCPU {c})"))
        );
        for t in &e.stalled {
            let name = crate::results::task_name(&t.name);
            let what = if t.waits_on == abi::NO_WAIT {
                "not in a csd wait".to_string()
            } else {
                format!("waits for the csd of vCPU {}", t.waits_on)
            };
            let state = match t.state {
                abi::task_state::RUNNING => "running",
                abi::task_state::SLEEPING => "sleeping",
                abi::task_state::DEAD => "dead",
                _ => "runnable",
            };
            let _ = writeln!(
                out,
                "  task {} {name} on vCPU {} ({state}): {what}",
                t.id, t.cpu
            );
        }
    }
}

fn pv_rows(designs: &[crate::results::DesignReport], khz: u64) -> Vec<(String, Vec<String>)> {
    let cell = |d: &crate::results::DesignReport, f: u32, v: String| {
        if d.pv & f != 0 {
            v
        } else {
            "-".to_string()
        }
    };
    let row = |label: &str, f: &dyn Fn(&crate::results::DesignReport) -> String| {
        (label.to_string(), designs.iter().map(f).collect())
    };
    vec![
        row("pv send-ipi hypercalls", &|d| {
            cell(d, abi::pv::SEND_IPI, d.pv_counts.send_ipi_calls.to_string())
        }),
        row("pv yields (ended pause)", &|d| {
            cell(
                d,
                abi::pv::SCHED_YIELD,
                format!("{} ({})", d.pv_counts.yields, d.pv_counts.yields_effective),
            )
        }),
        row("pv deferred (ran)", &|d| {
            cell(
                d,
                abi::pv::FLUSH_DEFER,
                format!("{} ({})", d.pv_counts.deferrals, d.pv_counts.deferred_runs),
            )
        }),
        row("  ran not first", &|d| {
            cell(
                d,
                abi::pv::FLUSH_DEFER,
                d.pv_counts.deferred_not_first.to_string(),
            )
        }),
        row("waits on preempted", &|d| {
            cell(
                d,
                abi::pv::PREEMPTED | abi::pv::SCHED_YIELD,
                d.pv_counts.waits_on_preempted.to_string(),
            )
        }),
        row("  their wait after (us)", &|d| {
            let c = &d.pv_counts;
            let mean = c.preempted_wait_cycles.checked_div(c.waits_on_preempted);
            cell(
                d,
                abi::pv::PREEMPTED | abi::pv::SCHED_YIELD,
                mean.map_or("-".into(), |m| us(m, khz)),
            )
        }),
    ]
}

/// Which mechanism served each PV feature, and what the VMM served.
fn pv_lines(out: &mut String, r: &BootReport) {
    let used = r.guest.designs.iter().fold(0, |a, d| a | d.pv);
    if let Some(probe) = &r.pv_probe {
        let mut parts = Vec::new();
        abi::pv::names(used, |n| {
            let bit = 1 << abi::pv::NAMES.iter().position(|x| *x == n).unwrap_or(0);
            parts.push(format!("{n} {}", crate::pv::mechanism(bit, probe).name()));
        });
        let seen_kvm: u64 = r
            .guest
            .designs
            .iter()
            .map(|d| d.pv_counts.preempted_seen_kvm)
            .sum();
        let seen_ipv: u64 = r
            .guest
            .designs
            .iter()
            .map(|d| d.pv_counts.preempted_seen_ipivirt)
            .sum();
        let _ = writeln!(
            out,
            "PV mechanisms: {}; waits that saw a preempted target: {seen_kvm} through KVM's flag, {seen_ipv} through ipivirt's state",
            parts.join(", ")
        );
    }
    if let Some(h) = &r.pv_host {
        let _ = writeln!(
            out,
            "PV host: {} hypercalls ({} send-ipi delivering {} IPIs, {} yield-to of which {} ended a pause, {:.1} ms of pauses cut short), {} preemptions published ({} deferrable), {} FLUSH_DEFER sent",
            h.hypercalls,
            h.send_ipi_calls,
            h.ipis_sent,
            h.yields,
            h.yields_effective,
            h.pause_ns_saved as f64 / 1e6,
            h.preemptions_marked,
            h.deferrable,
            h.flushes_signalled
        );
    }
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
