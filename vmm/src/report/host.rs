//! The host block of the text report (placement, injected counts, steal
//! time and KVM's statistics per vCPU), rendered from the report model's
//! [`HostInfo`], and the partial report of an interrupted run, which has
//! no model: it renders the host figures collected so far the same way.

use crate::machine::MachineConfig;
use crate::results::PartialReport;
use crate::scenario::{HostInfo, PvInfo, Report};

fn ms(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e6)
}

/// The host block of a finished run (empty when there is nothing to say).
pub fn host_text(r: &Report) -> String {
    host_block(r.scenario.vcpus, &r.scenario.host_cpus, &r.host)
}

/// The plain-text host block of a run of `vcpus` vCPUs placed on
/// `host_cpus`: placement, injected counts, steal time per vCPU, KVM's own
/// statistics.
pub fn host_block(vcpus: u32, host_cpus: &[usize], h: &HostInfo) -> String {
    let mut out = String::new();
    if h.injected() {
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
            "host: {vcpus} vCPUs on host CPUs {host_cpus:?} (placement vCPU->CPU: {}); preempt mode {}\n",
            placed.join(" "),
            h.mode
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
            h.injection_s,
            if h.affinity_restored == Some(true) {
                "yes"
            } else {
                "NO"
            }
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
        for e in &h.injector_errors {
            out += &format!("host: injector error: {e}\n");
        }
    }
    if !h.vcpus.is_empty() {
        out += "vcpu  tid      steal_ms  run_delay_ms  paused_ms  max_gap_us  preempted_seen  \
                kvm: preempt_reported preempt_other halt_exits yield_attempted yield_ok\n";
        let k = |m: Option<&std::collections::BTreeMap<String, u64>>, n: &str| {
            m.and_then(|m| m.get(n)).map_or("-".into(), u64::to_string)
        };
        const ROWS: usize = 16;
        for (i, v) in h.vcpus.iter().enumerate().take(ROWS) {
            let kvm = v.kvm.as_ref();
            out += &format!(
                "{i:<5} {:<8} {:<9} {:<13} {:<10} {:<11} {:<15} {} {} {} {} {}\n",
                v.tid,
                v.steal_ns.map_or("-".into(), ms),
                v.run_delay_ns.map_or("-".into(), ms),
                ms(v.paused_ns),
                v.max_gap_ns
                    .map_or("-".into(), |ns| format!("{:.1}", ns as f64 / 1e3)),
                v.preempted_seen,
                k(kvm, "preemption_reported"),
                k(kvm, "preemption_other"),
                k(kvm, "halt_exits"),
                k(kvm, "directed_yield_attempted"),
                k(kvm, "directed_yield_successful"),
            );
        }
        if h.vcpus.len() > ROWS {
            out += &format!("... {} more vCPUs\n", h.vcpus.len() - ROWS);
        }
        let seen: u64 = h.vcpus.iter().map(|v| v.preempted_seen).sum();
        // `steal_ns` is null exactly when the guest did not register it.
        out += &match &h.steal_ns {
            Some(ns) => format!("steal time total {} ms; ", ms(ns.iter().sum())),
            None => "steal time total - (not registered in this run); ".to_string(),
        };
        out += &if seen == 0 {
            "steal-time preempted flag: never seen set (some hosts, nested ones among them, never set it)".to_string()
        } else {
            format!("steal-time preempted flag seen {seen} times")
        };
    }
    out.trim_end().to_string()
}

/// The partial report of a run of `config` stopped by SIGINT/SIGTERM: the
/// boot figures and the host block collected so far, marked PARTIAL.
pub fn partial_text(p: &PartialReport, config: &MachineConfig) -> String {
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
    // The host figures as a finished run's model has them, no PV probe
    // and no stall record: the block reads only the injectors' part.
    let host = HostInfo::new(
        config,
        &p.host,
        p.tsc_khz,
        PvInfo::default(),
        Default::default(),
    );
    out += &host_block(p.vcpus, &p.host.host_cpus, &host);
    out.trim_end().to_string()
}
