//! The side-by-side design table of a per-design run and the lines under
//! it, rendered from the report model ([`Report`], the JSON contract):
//! every figure is read from a [`DesignSummary`], never recomputed from the
//! guest's histograms, so the text and the JSON cannot disagree.

use std::fmt::Write;

use crate::scenario::{DesignSummary, Latency, PreemptOff, PreemptOffCpu, Report};
use crate::stats::{sig3, MIN_SAMPLES};

/// A row of the table: its label and one cell per design.
type Row = (String, Vec<String>);

/// A latency figure (`ns`, one of `l`'s) in us with 3 significant figures:
/// `-` when nothing was measured, a `*` when it rests on fewer than
/// [`MIN_SAMPLES`] samples.
fn lat(l: &Latency, ns: u64) -> String {
    if l.count == 0 {
        return "-".into();
    }
    let mark = if l.count < MIN_SAMPLES { "*" } else { "" };
    format!("{}{mark}", sig3(ns as f64 / 1e3))
}

/// A figure in ns as us with 3 significant figures, `-` when not measured.
fn us3(ns: Option<u64>) -> String {
    ns.map_or("-".into(), |v| sig3(v as f64 / 1e3))
}

/// The [`abi::pv`] bits of a design's feature names.
fn pv_bits(d: &DesignSummary) -> u32 {
    d.pv.iter()
        .filter_map(|n| abi::pv::NAMES.iter().position(|x| x == n))
        .fold(0, |a, i| a | 1 << i)
}

/// The phase did not run (an earlier one stalled): it measured nothing.
fn not_run(d: &DesignSummary) -> bool {
    d.phase_end.as_ref().is_some_and(|e| e.status == "not-run")
}

/// The cause the longest section of the phase is attributed to (`-`: none).
fn longest_cause(d: &DesignSummary) -> &'static str {
    let Some(p) = &d.preempt_off else {
        return "-";
    };
    abi::preempt_off::cause::NAMES
        .iter()
        .filter_map(|n| p.causes.get(*n).map(|c| (n, c)))
        .filter(|(_, c)| c.windows > 0)
        .max_by_key(|(_, c)| c.max_ns)
        .map_or("-", |(n, _)| n)
}

/// The table being built: its rows, one cell per design.
struct Table<'a> {
    designs: &'a [DesignSummary],
    rows: Vec<Row>,
}

impl Table<'_> {
    /// A row of `f` over the designs; a design that did not run measured
    /// nothing, so its cell is `-`, never a zero that looks measured.
    fn row(&mut self, label: &str, f: impl Fn(&DesignSummary) -> String) {
        let cells = self
            .designs
            .iter()
            .map(|d| if not_run(d) { "-".to_string() } else { f(d) })
            .collect();
        self.rows.push((label.to_string(), cells));
    }
}

/// The rows of the table, in print order. A new per-design counter is one
/// `t.row(...)` line here.
fn rows(designs: &[DesignSummary], khz: u64) -> Vec<Row> {
    let mut t = Table {
        designs,
        rows: Vec::new(),
    };
    t.row("calls", |d| d.calls.to_string());
    t.row("calls/s", |d| {
        if d.phase_ms > 0.0 && khz > 0 {
            format!("{:.0}", d.calls_per_s)
        } else {
            "-".into()
        }
    });
    let c = |d: &DesignSummary| d.call_latency_ns;
    t.row("call p50 (us)", |d| lat(&c(d), c(d).p50));
    t.row("call p99 (us)", |d| lat(&c(d), c(d).p99));
    t.row("call p99.9 (us)", |d| lat(&c(d), c(d).p999));
    t.row("call max (us)", |d| lat(&c(d), c(d).max));
    let p = |d: &DesignSummary| d.sched_latency_ns;
    t.row("probe p50 (us)", |d| lat(&p(d), p(d).p50));
    t.row("probe p99 (us)", |d| lat(&p(d), p(d).p99));
    t.row("probe max (us)", |d| lat(&p(d), p(d).max));
    let p99 = |l: Latency| (l.count > 0).then_some(l.p99);
    t.row("probe arrival p99 (us)", |d| us3(p99(d.probe_arrival_ns)));
    t.row("probe dispatch p99 (us)", |d| us3(p99(d.probe_dispatch_ns)));
    let poff = |d: &DesignSummary, f: fn(&PreemptOff) -> Option<u64>| {
        us3(d.preempt_off.as_ref().and_then(f))
    };
    t.row("preempt-off p50 (us)", |d| poff(d, |p| p.p50_ns));
    t.row("preempt-off p99 (us)", |d| poff(d, |p| p.p99_ns));
    t.row("preempt-off max (us)", |d| poff(d, |p| p.max_ns));
    t.row("preempt-off p99 excl. steal (us)", |d| {
        poff(d, |p| p.excl_steal.as_ref()?.p99_ns)
    });
    t.row("preempt-off longest in", |d| longest_cause(d).to_string());
    t.row("waits preempted", |d| d.waits_preempted.to_string());
    t.row("waits migrated", |d| d.waits_migrated.to_string());
    t.row("violations", |d| d.violations.to_string());
    t.row("first violation (ms)", |d| {
        d.first_violation_ms
            .map_or("-".into(), |ms| format!("{ms:.1}"))
    });
    t.rows.push((
        "phase end".to_string(),
        designs
            .iter()
            .map(|d| match d.phase_end.as_ref().map(|e| e.status.as_str()) {
                Some("stalled") => "STALLED".to_string(),
                Some(s) => s.to_string(),
                None => "-".to_string(),
            })
            .collect(),
    ));
    t.row("extra B/task", |d| d.mask_bytes_per_task.to_string());
    t.row("task field B", |d| d.task_field_bytes.to_string());
    t.row("mask B/call on stack", |d| {
        d.stack_bytes_per_call.to_string()
    });
    t.row("mask allocs/frees", |d| {
        format!("{}/{}", d.mask_allocs, d.mask_frees)
    });
    t.row("fallbacks", |d| d.fallbacks.to_string());
    t.row("csd watchdog", |d| d.csd_watchdog_fires.to_string());
    t.row("task create (us)", |d| us3(d.task_create_mean_ns));
    if designs
        .iter()
        .any(|d| d.hotplug.offlines + d.hotplug.refused > 0)
    {
        t.row("hotplug off/on", |d| {
            format!("{}/{}", d.hotplug.offlines, d.hotplug.onlines)
        });
        t.row("hotplug skipped/enxio", |d| {
            let h = &d.hotplug;
            format!("{}/{}", h.skipped_targets, h.single_offline_errors)
        });
        t.row("dying flushed/dropped", |d| {
            format!("{}/{}", d.hotplug.flushed_callbacks, d.hotplug.dropped_csds)
        });
    }
    if designs.iter().any(|d| !d.pv.is_empty()) {
        pv_rows(&mut t, khz);
    }
    t.rows
}

/// The PV rows of the design table (`-` where the phase lacks the feature).
fn pv_rows(t: &mut Table, khz: u64) {
    use abi::pv::{FLUSH_DEFER, PREEMPTED, SCHED_YIELD, SEND_IPI};
    let cell = |d: &DesignSummary, f: u32, v: String| {
        if pv_bits(d) & f != 0 {
            v
        } else {
            "-".to_string()
        }
    };
    t.row("pv send-ipi hypercalls", |d| {
        cell(d, SEND_IPI, d.pv_counts.send_ipi_calls.to_string())
    });
    t.row("pv yields (ended pause)", |d| {
        let c = &d.pv_counts;
        cell(
            d,
            SCHED_YIELD,
            format!("{} ({})", c.yields, c.yields_effective),
        )
    });
    t.row("pv deferred (ran)", |d| {
        let c = &d.pv_counts;
        cell(
            d,
            FLUSH_DEFER,
            format!("{} ({})", c.deferrals, c.deferred_runs),
        )
    });
    t.row("  ran not first", |d| {
        cell(d, FLUSH_DEFER, d.pv_counts.deferred_not_first.to_string())
    });
    t.row("waits on preempted", |d| {
        let n = d.pv_counts.waits_on_preempted;
        cell(d, PREEMPTED | SCHED_YIELD, n.to_string())
    });
    t.row("  their wait after (us)", |d| {
        let c = &d.pv_counts;
        let mean = c.preempted_wait_cycles.checked_div(c.waits_on_preempted);
        let ns = mean.map(|m| crate::scenario::cycles_to_ns(m, khz));
        cell(d, PREEMPTED | SCHED_YIELD, us3(ns))
    });
}

/// vCPUs listed one by one in the preempt-off table; above this, the first
/// ones, the worst and the summary rows.
const POFF_ROWS: usize = 16;

/// The series' table: per vCPU, the P50 and P99 of the window maxima of
/// the longest non-preemptible section, per design; then all vCPUs
/// together. Above [`POFF_ROWS`] vCPUs: the first 8, the vCPU with the
/// worst P99 (per design), and the summary.
fn preempt_off_table(out: &mut String, designs: &[DesignSummary]) {
    let traced: Vec<_> = designs
        .iter()
        .filter_map(|d| d.preempt_off.as_ref().map(|p| (d, p)))
        .collect();
    let Some((_, first)) = traced.first() else {
        return;
    };
    let vcpus = first.per_cpu.len();
    let _ = writeln!(
        out,
        "preempt-off per vCPU: P50/P99 of each {:.0} ms window's longest non-preemptible section (us)",
        first.window_ms
    );
    let _ = write!(out, "{:>6}", "vCPU");
    for (d, _) in &traced {
        let _ = write!(out, " {:>21}", d.design);
    }
    let _ = writeln!(out);
    let cell = |p50: Option<u64>, p99: Option<u64>| format!("{:>10} {:>10}", us3(p50), us3(p99));
    let cpu = |c: &PreemptOffCpu| cell(c.p50_ns, c.p99_ns);
    let shown = if vcpus <= POFF_ROWS { vcpus } else { 8 };
    for i in 0..shown {
        let _ = write!(out, "{i:>6}");
        for (_, p) in &traced {
            let _ = write!(out, " {}", p.per_cpu.get(i).map_or(cell(None, None), cpu));
        }
        let _ = writeln!(out);
    }
    if vcpus > POFF_ROWS {
        let _ = write!(out, "{:>6}", "worst");
        for (_, p) in &traced {
            let worst = p.per_cpu.iter().max_by_key(|c| c.p99_ns);
            let _ = write!(out, " {}", worst.map_or(cell(None, None), cpu));
        }
        let _ = writeln!(out);
    }
    let _ = write!(out, "{:>6}", "all");
    for (_, p) in &traced {
        let _ = write!(out, " {}", cell(p.p50_ns, p.p99_ns));
    }
    let _ = writeln!(out);
    // The sender figure less the host's steal time, where it was tracked.
    if traced.iter().any(|(_, p)| p.excl_steal.is_some()) {
        let figures: Vec<String> = traced
            .iter()
            .map(|(d, p)| {
                let v = p.excl_steal.as_ref().and_then(|e| e.sender_p99_ns);
                format!("{} {}", d.design, us3(v))
            })
            .collect();
        let _ = writeln!(
            out,
            "sender P99 excl. host steal (us): {}",
            figures.join(", ")
        );
    }
}

/// The side-by-side table of a per-design run, one column per design, and
/// the lines under it (the ratios against `upstream` are the answer
/// block's, [`crate::stats::summary_text`], printed first).
pub fn designs_text(report: &Report) -> String {
    let designs = &report.designs;
    let mut out = String::new();
    let mut rows: Vec<Row> = vec![(
        "design".to_string(),
        designs.iter().map(|d| d.design.clone()).collect(),
    )];
    rows.extend(self::rows(designs, report.tsc_khz));
    let widths: Vec<usize> = (0..designs.len())
        .map(|i| rows.iter().map(|r| r.1[i].len()).max().unwrap_or(0).max(8) + 2)
        .collect();
    let label_width = rows
        .iter()
        .map(|r| r.0.len() + 1)
        .max()
        .unwrap_or(0)
        .max(24);
    for (label, cells) in &rows {
        let _ = write!(out, "{label:<label_width$}");
        for (c, w) in cells.iter().zip(&widths) {
            let _ = write!(out, "{c:>w$}");
        }
        let _ = writeln!(out);
    }
    if rows.iter().any(|r| r.1.iter().any(|c| c.ends_with('*'))) {
        let _ = writeln!(
            out,
            "* rests on fewer than {MIN_SAMPLES} samples: a rough figure"
        );
    }
    preempt_off_table(&mut out, designs);
    pv_lines(&mut out, report);
    if !report.guest.torture.is_empty() {
        let _ = writeln!(
            out,
            "torture primitives (all phases): invocations / failed checks"
        );
        for t in &report.guest.torture {
            let _ = writeln!(
                out,
                "  {:<12} {:>10} / {}",
                t.primitive, t.invocations, t.failed_checks
            );
        }
    }
    memory_lines(&mut out, designs);
    stall_lines(&mut out, designs);
    if !report.reliable {
        let why = report.reason.as_deref().unwrap_or("the VMM stalled");
        let _ = writeln!(out, "UNRELIABLE: {why}");
    } else {
        versus_plain(&mut out, designs);
    }
    for d in designs.iter().filter(|d| !d.expected_safe) {
        match d.first_violation_ms {
            Some(ms) => {
                let _ = writeln!(
                    out,
                    "{}: the checker caught it: {} violations, the first {ms:.1} ms into the phase (expected: this design is wrong on purpose)",
                    d.base_design, d.violations
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{}: NOT caught in this run (no violation seen): raise --guest-preempt-prob or --duration",
                    d.base_design
                );
            }
        }
    }
    out
}

/// Each PV column against its plain design, measured in the same run.
fn versus_plain(out: &mut String, designs: &[DesignSummary]) {
    let ratio = |a: u64, b: u64| {
        if b == 0 {
            "n/a".to_string()
        } else {
            format!("{:.2}x", a as f64 / b as f64)
        }
    };
    for d in designs.iter().filter(|d| d.design != d.base_design) {
        let Some(plain) = designs
            .iter()
            .find(|p| p.base_design == d.base_design && p.design == p.base_design)
        else {
            continue;
        };
        let (c, pc) = (&d.call_latency_ns, &plain.call_latency_ns);
        let _ = writeln!(
            out,
            "{} vs {}: call p99 {}, call max {}, probe p99 {}, calls {}",
            d.design,
            plain.design,
            ratio(c.p99, pc.p99),
            ratio(c.max, pc.max),
            ratio(d.sched_latency_ns.p99, plain.sched_latency_ns.p99),
            ratio(d.calls, plain.calls),
        );
    }
}

/// The measured memory of the designs (from the guest allocator's own
/// counter), and what Linux's NR_CPUS=8192 would make of it (computed).
fn memory_lines(out: &mut String, designs: &[DesignSummary]) {
    let named = |n: abi::Design| designs.iter().find(|d| d.base_design == n.name());
    if let Some((t, m)) =
        named(abi::Design::TaskLocal).and_then(|t| t.memory.as_ref().map(|m| (t, &m.measured)))
    {
        let _ = writeln!(
            out,
            "task-local memory (measured, guest allocator): +{} B/task on the heap ({} B reserved for {} mask(s), {} B given back; {} creation(s) refused), +{} B task field in every design",
            t.mask_bytes_per_task,
            m.hook_bytes,
            m.hook_tasks.saturating_sub(m.hook_failures),
            m.hook_freed_bytes,
            m.hook_failures,
            m.task_field_bytes
        );
    } else if let Some(f) = designs.iter().map(|d| d.task_field_bytes).max() {
        let _ = writeln!(
            out,
            "task field: +{f} B per task in every design (measured)"
        );
    }
    let stack_of = |d: &DesignSummary| d.memory.as_ref().map_or(0, |m| m.measured.wait_stack_bytes);
    if let Some(stack) = named(abi::Design::Stack) {
        let mut line = format!(
            "stack: the on-stack mask is {} B per call (the local's size; measured wait stack {} B below the dispatch",
            stack.stack_bytes_per_call,
            stack_of(stack)
        );
        if let Some(t) = named(abi::Design::TaskLocal) {
            let _ = write!(line, ", task-local's {} B", stack_of(t));
        }
        let _ = writeln!(out, "{line})");
    }
    if named(abi::Design::TaskLocal).is_some() || named(abi::Design::Stack).is_some() {
        let c = crate::results::NR_CPUS_8192_MASK_BYTES;
        let _ = writeln!(
            out,
            "computed, not measured, at Linux's NR_CPUS=8192: task-local +{c} B per task (+8 B field), stack {c} B per call"
        );
    }
}

/// The phases that could not quiesce, with the tasks they left.
fn stall_lines(out: &mut String, designs: &[DesignSummary]) {
    for d in designs {
        let Some(e) = d.phase_end.as_ref().filter(|e| e.status == "stalled") else {
            continue;
        };
        let _ = writeln!(
            out,
            "STALLED: {}'s phase did not quiesce within {:.0} ms: {} task(s) still alive, {} vCPU(s) with an undrained call queue{}; its end-of-phase checks did not run and later designs did not run",
            d.design,
            e.bound_ms,
            e.stalled_tasks,
            e.undrained_vcpus,
            e.first_undrained
                .map_or(String::new(), |c| format!(" (first: vCPU {c})"))
        );
        for t in &e.tasks {
            let what = match t.waits_on {
                None => "not in a csd wait".to_string(),
                Some(c) => format!("waits for the csd of vCPU {c}"),
            };
            let _ = writeln!(
                out,
                "  task {} {} on vCPU {} ({}): {what}",
                t.id, t.name, t.cpu, t.state
            );
        }
    }
}

/// Which mechanism served each PV feature, and what the VMM served.
fn pv_lines(out: &mut String, report: &Report) {
    let pv = &report.host.pv;
    if pv.probe_ms.is_some() {
        let parts: Vec<String> = abi::pv::NAMES
            .iter()
            .filter_map(|n| pv.mechanisms.get(*n).map(|m| format!("{n} {m}")))
            .collect();
        let seen = |f: fn(&abi::PvCounts) -> u64| -> u64 {
            report.designs.iter().map(|d| f(&d.pv_counts)).sum()
        };
        let _ = writeln!(
            out,
            "PV mechanisms: {}; waits that saw a preempted target: {} through KVM's flag, {} through ipivirt's state",
            parts.join(", "),
            seen(|c| c.preempted_seen_kvm),
            seen(|c| c.preempted_seen_ipivirt)
        );
    }
    if let Some(h) = &pv.served {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A design entry as the JSON has it (the model read back).
    fn summary(design: &str, calls: u64, poff_p99_ns: u64) -> DesignSummary {
        serde_json::from_value(serde_json::json!({
            "design": design, "base_design": design, "pv": [], "pv_kvm": [],
            "pv_counts": {}, "calls": calls, "violations": 0, "mask_allocs": 3,
            "mask_frees": 3, "first_violation_ms": null,
            "call_latency_ns": {"count": 50, "p50": 1234, "p90": 2000, "p99": 5678,
                                "p999": 6000, "max": 7000, "mean": 1500.0},
            "sched_latency_ns": {"count": 0},
            "phase_ms": 500.0, "calls_per_s": calls as f64 * 2.0, "expected_safe": true,
            "violation_log": [],
            "preempt_off": {"window_ms": 100.0, "windows": 10, "p50_ns": 31_049,
                            "p99_ns": poff_p99_ns, "max_ns": poff_p99_ns, "sections": 99,
                            "unmatched": 0, "per_cpu": [], "causes": {}},
        }))
        .expect("a design entry")
    }

    fn cells<'a>(rows: &'a [Row], label: &str) -> &'a [String] {
        &rows.iter().find(|r| r.0 == label).expect(label).1
    }

    #[test]
    fn test_rows_render_the_model_figures() {
        let designs = [
            summary("upstream", 100, 11_793_412),
            summary("stack", 0, 6_198),
        ];
        let rows = rows(&designs, 2_445_424);
        assert_eq!(cells(&rows, "calls"), ["100", "0"]);
        assert_eq!(cells(&rows, "calls/s"), ["200", "0"]);
        // From the model's ns, 3 significant figures, `*`: under 100 samples.
        assert_eq!(cells(&rows, "call p99 (us)"), ["5.68*", "5.68*"]);
        assert_eq!(cells(&rows, "probe p99 (us)"), ["-", "-"]);
        // Preempt-off rows: 3 significant figures, not one decimal.
        assert_eq!(cells(&rows, "preempt-off p99 (us)"), ["11800", "6.20"]);
        assert_eq!(cells(&rows, "preempt-off p50 (us)"), ["31.0", "31.0"]);
        assert_eq!(cells(&rows, "mask allocs/frees"), ["3/3", "3/3"]);
        assert_eq!(cells(&rows, "phase end"), ["-", "-"]);
        assert!(rows.iter().all(|r| !r.0.starts_with("pv ")), "no PV rows");
        assert_eq!(cells(&rows, "preempt-off p99 excl. steal (us)"), ["-", "-"]);
    }

    #[test]
    fn test_excl_steal_row_and_sender_line() {
        let mut designs = [
            summary("upstream", 100, 11_793_412),
            summary("stack", 0, 6_198),
        ];
        let per_cpu = serde_json::json!([{"cpu": 0, "windows": 10, "p50_ns": 1000,
                                          "p99_ns": 4_321, "max_ns": 4_321}]);
        designs[1].preempt_off.as_mut().unwrap().excl_steal =
            Some(crate::scenario::PreemptOffExclSteal {
                p50_ns: Some(1000),
                p99_ns: Some(4_321),
                max_ns: Some(4_321),
                sender_p99_ns: Some(4_321),
                per_cpu: serde_json::from_value(per_cpu).unwrap(),
            });
        let rows = rows(&designs, 2_445_424);
        assert_eq!(
            cells(&rows, "preempt-off p99 excl. steal (us)"),
            ["-", "4.32"]
        );
        let mut out = String::new();
        preempt_off_table(&mut out, &designs);
        assert!(
            out.contains("sender P99 excl. host steal (us): upstream -, stack 4.32"),
            "{out}"
        );
    }
}
