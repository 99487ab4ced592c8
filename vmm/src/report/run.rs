//! The text of one run above the design table: the online and boot
//! lines, and the scheduler block (platform, workload, per-vCPU counters,
//! tasks), rendered from the report model ([`Report`]) alone, so that the
//! text says what the JSON says.

use std::fmt::Write;

use abi::Workload;

use crate::scenario::{Latency, Report};
use crate::stats::{sig3, MIN_SAMPLES};

/// The boot line: vCPUs online, how long it took and which kernel ran.
pub fn online_line(r: &Report) -> String {
    format!(
        "online {}/{} vCPUs in {:.1} ms (kernel {})",
        r.online, r.scenario.vcpus, r.boot_ms, r.platform.mode
    )
}

/// The guest's TSC and its own boot time (empty when the TSC frequency is
/// unknown, so that no time could be converted).
pub fn boot_line(r: &Report) -> String {
    if r.tsc_khz == 0 {
        return String::new();
    }
    format!(
        "guest TSC {} kHz; guest-measured boot (BSP entry to all online) {:.3} ms",
        r.tsc_khz, r.guest_boot_ms
    )
}

/// The workload the report ran (`None` for a name this build does not
/// know, as in a report of another version).
fn workload(r: &Report) -> Option<Workload> {
    r.scenario.workload.parse().ok()
}

/// The text report of one run (after the answer block): boot, scheduler,
/// floor, the design table, the host block.
pub fn run_text(r: &Report) -> String {
    let mut lines = vec![online_line(r), boot_line(r)];
    if !matches!(workload(r), Some(Workload::None | Workload::Spin)) {
        lines.push(scheduler_text(r));
    }
    lines.push(r.floor_text());
    if !r.designs.is_empty() {
        lines.push(super::designs_text(r));
    }
    lines.push(super::host_text(r));
    lines.retain(|l| !l.is_empty());
    lines.join("\n")
}

/// `n=…, p50 …, p99 …, max …` of a latency in microseconds (`None`: no
/// samples).
pub fn latency_summary(l: Option<&Latency>) -> String {
    let Some(l) = l.filter(|l| l.count > 0) else {
        // Not a latency of zero: nothing was measured.
        return "n=0, p50 -, p99 -, max - (no samples)".into();
    };
    let s = |ns: u64| sig3(ns as f64 / 1e3);
    format!(
        "n={}, p50 {} us, p99 {} us, max {} us{}",
        l.count,
        s(l.p50),
        s(l.p99),
        s(l.max),
        if l.count < MIN_SAMPLES {
            " (fewer than 100 samples: a rough figure)"
        } else {
            ""
        }
    )
}

/// A latency figure (`ns`, one of `l`'s) in us with 3 significant figures:
/// `-` when nothing was measured, a `*` when it rests on fewer than
/// [`MIN_SAMPLES`] samples.
fn pct(l: Option<&Latency>, ns: impl Fn(&Latency) -> u64) -> String {
    match l.filter(|l| l.count > 0) {
        None => "-".into(),
        Some(l) => {
            let mark = if l.count < MIN_SAMPLES { "*" } else { "" };
            format!("{}{mark}", sig3(ns(l) as f64 / 1e3))
        }
    }
}

/// The guest's calibration: loop speed, verdict, tick, kernel, and the
/// costs it measured (in TSC cycles, as the guest counted them).
fn platform_text(r: &Report, out: &mut String) {
    let p = &r.platform;
    // The model divides the guest's 1024-iteration figure by 1024, exactly.
    let kiter = |per_iter: f64| (per_iter * 1024.0).round() as u64;
    let _ = writeln!(
        out,
        "platform: CPL0 {} cycles/1024 iter, CPL3 {} cycles/1024 iter: {}; tick {} Hz; kernel {}",
        kiter(p.cpl0_cycles_per_iter),
        kiter(p.cpl3_cycles_per_iter),
        crate::results::verdict_words(&p.verdict),
        p.tick_hz,
        p.mode
    );
    // Unmeasured is `-`, never 0 cycles.
    let cycles = |c: Option<u64>| c.map_or_else(|| "-".to_string(), |c| c.to_string());
    if let Some(syscall) = p.syscall_cycles {
        let _ = writeln!(
            out,
            "platform costs: system call {syscall} cycles, ICR write {} cycles, EOI {} cycles",
            cycles(p.icr_write_cycles),
            cycles(p.eoi_write_cycles)
        );
    }
    if let Some(traced) = p.preempt_pair_traced_cycles {
        let _ = writeln!(
            out,
            "preempt-off tracer: a preempt_disable/enable pair costs {traced} cycles traced, {} untraced",
            cycles(p.preempt_pair_cycles)
        );
    }
    if let Some(why) = &p.native_error {
        let _ = writeln!(out, "platform: native mode not entered: {why}");
    }
}

/// The scheduler part of `ipivirt run`: platform, probe, per-vCPU counters,
/// task accounting.
pub fn scheduler_text(r: &Report) -> String {
    let g = &r.guest;
    let s = &r.scenario;
    let per_design = !r.designs.is_empty();
    let mut out = String::new();
    platform_text(r, &mut out);
    let _ = writeln!(
        out,
        "workload {} for {:.2} s{} (guest-measured {:.2} s in all), {}, forced migration {}",
        workload(r).map_or_else(|| s.workload.clone(), |w| format!("{w:?}")),
        s.duration_s,
        if per_design { " per design" } else { "" },
        g.workload_s,
        shape_text(r),
        s.forced_migration
    );
    // With one phase per design, the probe is reported per design (below);
    // here only the whole-run counters.
    if !per_design {
        let _ = writeln!(
            out,
            "sched latency (probe): {}",
            latency_summary(g.probe_latency_ns.as_ref())
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
    for (i, v) in g.vcpus.iter().enumerate().take(16) {
        let c = &v.counters.sched;
        let probe = if per_design {
            String::new()
        } else {
            // Without the TSC frequency no figure is in us.
            let l = v.probe_latency_ns.as_ref().filter(|_| r.tsc_khz > 0);
            format!(" {:>8}us {:>8}us", pct(l, |l| l.p99), pct(l, |l| l.max))
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
        g.tasks_created, g.tasks_freed, g.heap_used_bytes, g.heap_baseline_bytes
    );
    if g.churn_cycles > 0 {
        let _ = writeln!(out, "churn: {} task create/exit cycles", g.churn_cycles);
    }
    for (i, h) in g.hogs.iter().enumerate() {
        let _ = writeln!(
            out,
            "hog {i}: {} iterations, ran on vCPUs {:?}",
            h.iterations, h.vcpus
        );
    }
    out
}

/// The workload's tasks in words: per vCPU as asked, and how many the
/// guest really spawned (the first phase's counts) where it counts them.
fn shape_text(r: &Report) -> String {
    let shape = &r.scenario.shape;
    let on = match &shape.initiators {
        Some(v) => format!("on vCPU(s) {}", crate::inject::placement::list_text(v)),
        None => "on every vCPU".to_string(),
    };
    match (workload(r), r.designs.first()) {
        (Some(Workload::Hogs), _) => format!("{} hog(s) per vCPU", shape.hogs_per_cpu),
        (Some(Workload::Ping), _) => "1 pinger per vCPU".to_string(),
        (Some(Workload::Shootdown | Workload::Torture), Some(d)) => format!(
            "{} issuer(s) per vCPU {on}, {} hog(s) per vCPU (spawned per design: {} issuers, {} hogs)",
            shape.issuers_per_cpu, shape.hogs_per_cpu, d.shape.issuers, d.shape.hogs
        ),
        _ => format!(
            "{} issuer(s) per vCPU {on}, {} hog(s) per vCPU",
            shape.issuers_per_cpu, shape.hogs_per_cpu
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::MachineConfig;

    /// The model of the fuzzer's well-behaved run (CPL0 emulated, two
    /// vCPUs, one hog) with platform costs measured.
    fn model() -> Report {
        let (page, per) = crate::fuzzing::valid_run(2);
        let mut boot = crate::results::parse_and_validate(&page, &per, 2).expect("a valid run");
        boot.tsc_khz = 2_600_000;
        boot.guest.trap_cycles = 4321;
        boot.guest.icr_cycles = 55;
        boot.guest.eoi_cycles = 44;
        boot.guest.preempt_pair_traced_cycles = 80;
        boot.guest.preempt_pair_cycles = 3;
        let mut config = MachineConfig::new(2);
        config.workload = Workload::Hogs;
        Report::new(&config, boot)
    }

    #[test]
    fn test_scheduler_text_has_the_guests_cycles() {
        let text = scheduler_text(&model());
        assert!(
            text.contains(
                "platform: CPL0 1250000 cycles/1024 iter, CPL3 760 cycles/1024 iter: \
                 CPL0 emulated: absolute latencies are not representative; tick 100 Hz; kernel plain"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "platform costs: system call 4321 cycles, ICR write 55 cycles, EOI 44 cycles"
            ),
            "{text}"
        );
        assert!(
            text.contains("a preempt_disable/enable pair costs 80 cycles traced, 3 untraced"),
            "{text}"
        );
        assert!(text.contains("workload Hogs for "), "{text}");
        assert!(
            text.contains("hog 0: 77 iterations, ran on vCPUs [0, 2]"),
            "{text}"
        );
    }

    #[test]
    fn test_run_text_needs_only_the_json() {
        // The JSON leaves the raw read-out out: the same text from it shows
        // that nothing is rendered from anything but the model.
        let r = model();
        assert!(r.raw.is_some());
        let back: Report = serde_json::from_str(&r.to_json()).expect("the report parses");
        assert!(back.raw.is_none());
        assert_eq!(run_text(&back), run_text(&r));
        assert_eq!(back.exit_code(), r.exit_code());
        assert!(
            run_text(&r).starts_with("online 2/2 vCPUs in "),
            "{}",
            run_text(&r)
        );
    }

    #[test]
    fn test_latency_summary_of_no_samples_is_dashes() {
        let dashes = "n=0, p50 -, p99 -, max - (no samples)";
        assert_eq!(latency_summary(None), dashes);
        assert_eq!(latency_summary(Some(&Latency::default())), dashes);
    }
}
