//! The plain-text parts of the report that the CLI prints itself (the
//! host block, the partial report of an interrupted run).

use crate::inject::{HostReport, PreemptMode};
use crate::machine::BootReport;
use crate::report::Measured;

/// The boot line: vCPUs online, how long it took and which kernel ran.
pub fn online_line(r: &BootReport) -> String {
    format!(
        "online {}/{} vCPUs in {:.1} ms (kernel {})",
        r.online,
        r.vcpus,
        r.boot_time.as_secs_f64() * 1e3,
        r.guest.mode
    )
}

/// The partial report of a run stopped by SIGINT/SIGTERM: the boot
/// figures and the host block collected so far, marked PARTIAL.
pub fn partial_text(p: &crate::results::PartialReport, measured: Measured) -> String {
    let mut out = format!(
        "PARTIAL report: interrupted by {} after {:.2} s; the run did not finish\n",
        crate::signals::name(p.signal),
        p.elapsed.as_secs_f64()
    );
    match p.boot_time {
        Some(t) => {
            out += &format!(
                "online {}/{} vCPUs in {:.1} ms\n",
                p.online,
                p.vcpus,
                t.as_secs_f64() * 1e3
            )
        }
        None => {
            out += &format!(
                "online {}/{} vCPUs (boot not finished)\n",
                p.online, p.vcpus
            )
        }
    }
    if p.tsc_khz > 0 {
        out += &format!("guest TSC {} kHz\n", p.tsc_khz);
    }
    out += &host_block(&p.host, p.tsc_khz, p.vcpus, measured);
    out.trim_end().to_string()
}

fn ms(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e6)
}

/// The plain-text host block of a run: placement, injected counts, steal
/// time per vCPU, KVM's own statistics.
pub fn host_block(h: &HostReport, tsc_khz: u64, vcpus: u32, measured: Measured) -> String {
    let mut out = String::new();
    if h.active {
        let mut placed: Vec<String> = h
            .vcpus
            .iter()
            .take(32)
            .map(|v| v.host_cpu.map_or("-".into(), |c| c.to_string()))
            .collect();
        if h.vcpus.len() > 32 {
            placed.push("...".into());
        }
        out += &format!(
            "host: {vcpus} vCPUs on host CPUs {:?} (placement vCPU->CPU: {}); preempt mode {}\n",
            h.host_cpus,
            placed.join(" "),
            h.mode.unwrap_or(PreemptMode::None).name()
        );
        if let Some(why) = &h.fallback {
            out += &format!("host: {why}\n");
        }
        out += &format!(
            "host: preemptions_injected {} ({} ms), migrations_injected {} ({} coalesced), over {:.2} s; \
             affinities restored: {}\n",
            h.preemptions_injected,
            ms(h.preempt_ns_injected),
            h.migrations_injected,
            h.migrations_coalesced,
            h.elapsed.as_secs_f64(),
            if h.affinity_restored { "yes" } else { "NO" }
        );
        if h.hotplug_events > 0 {
            out += &format!(
                "host: hotplug_events {} (vCPU offline then online; the guest had acted on {} by the online request, refused {})\n",
                h.hotplug_events, h.hotplug_acked, h.hotplug_refused
            );
        }
        if h.preemptions_skipped > 0 {
            out += &format!(
                "host: {} planned preemptions dropped, long overdue after a stall of the VMM (not replayed)\n",
                h.preemptions_skipped
            );
        }
        for w in &h.warnings {
            out += &format!("host: warning: {w}\n");
        }
        for e in &h.errors {
            out += &format!("host: injector error: {e}\n");
        }
    }
    if !h.vcpus.is_empty() {
        out += "vcpu  tid      steal_ms  run_delay_ms  paused_ms  max_gap_us  preempted_seen  \
                kvm: preempt_reported preempt_other halt_exits yield_attempted yield_ok\n";
        let gap_us = |c: u64| {
            if tsc_khz > 0 {
                format!("{:.1}", c as f64 * 1e3 / tsc_khz as f64)
            } else {
                "?".into()
            }
        };
        let k = |m: &std::collections::BTreeMap<String, u64>, n: &str| {
            m.get(n).map_or("-".into(), u64::to_string)
        };
        const ROWS: usize = 16;
        for (i, v) in h.vcpus.iter().enumerate().take(ROWS) {
            out += &format!(
                "{i:<5} {:<8} {:<9} {:<13} {:<10} {:<11} {:<15} {} {} {} {} {}\n",
                v.tid,
                if measured.steal_time {
                    ms(v.steal_ns)
                } else {
                    "-".into()
                },
                v.run_delay_ns.map_or("-".into(), ms),
                ms(v.paused_ns),
                if measured.max_gap {
                    gap_us(v.max_gap_cycles)
                } else {
                    "-".into()
                },
                v.preempted_seen,
                k(&v.kvm, "preemption_reported"),
                k(&v.kvm, "preemption_other"),
                k(&v.kvm, "halt_exits"),
                k(&v.kvm, "directed_yield_attempted"),
                k(&v.kvm, "directed_yield_successful"),
            );
        }
        if h.vcpus.len() > ROWS {
            out += &format!("... {} more vCPUs\n", h.vcpus.len() - ROWS);
        }
        let total: u64 = h.vcpus.iter().map(|v| v.steal_ns).sum();
        let seen: u64 = h.vcpus.iter().map(|v| v.preempted_seen).sum();
        out += &if measured.steal_time {
            format!("steal time total {} ms; ", ms(total))
        } else {
            "steal time total - (not registered in this run); ".to_string()
        };
        out += &if seen == 0 {
            "steal-time preempted flag: never seen set (some hosts, nested ones among them, never set it)".to_string()
        } else {
            format!("steal-time preempted flag seen {seen} times")
        };
    }
    out.trim_end().to_string()
}
