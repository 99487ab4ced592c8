//! The guest kernel's run-wide figures, validated: calibration, the
//! per-vCPU counters, tasks and heap, and each design's slot (through
//! [`super::design`]).

use abi::{
    guest_mode, native_error, verdict, Design, FieldError, Histogram, SharedPage, TaskProgress,
    VcpuResults, VcpuStatus,
};

use super::design::{design_report, DesignReport};
use super::vcpu_statuses;

/// One vCPU's scheduler counters (also the JSON's `guest.vcpus[]` fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VcpuCounters {
    /// The scheduler's counters, flat in the JSON.
    #[serde(flatten)]
    pub sched: abi::SchedCounts,
    /// CPU hotplug of this vCPU (all zero without hotplug).
    #[serde(default)]
    pub hotplug: VcpuHotplugCounts,
}

/// One vCPU's CPU hotplug counters over the run (JSON
/// `guest.vcpus[].hotplug`): the guest's group as it is.
pub type VcpuHotplugCounts = abi::VcpuHotplug;

/// What the guest kernel reported beyond the boot.
#[derive(Debug, Clone, Default)]
pub struct GuestReport {
    /// TSC cycles per 1024 iterations of `dec; jnz` at CPL0.
    pub cpl0_cycles_per_kiter: u64,
    /// The same at CPL3 (0: not measured).
    pub cpl3_cycles_per_kiter: u64,
    /// "hardware-accelerated", "CPL0 emulated: ..." or "not measured".
    pub verdict: &'static str,
    /// Scheduler tick (Hz).
    pub tick_hz: u32,
    /// The kernel mode that ran: `plain` or `pvm-native`.
    pub mode: &'static str,
    /// Why native mode did not run although asked for (None: it ran, or it
    /// was not asked for).
    pub native_error: Option<&'static str>,
    /// One system call round trip from a user task, TSC cycles (0: not
    /// measured).
    pub trap_cycles: u64,
    /// One x2APIC ICR write, TSC cycles (0: not measured).
    pub icr_cycles: u64,
    /// One x2APIC EOI write, TSC cycles (0: not measured).
    pub eoi_cycles: u64,
    /// One preempt_disable/enable pair, preempt-off tracer off, TSC cycles
    /// (0: not measured).
    pub preempt_pair_cycles: u64,
    /// The same with the tracer on (0: not measured).
    pub preempt_pair_traced_cycles: u64,
    /// Per-vCPU counters.
    pub vcpus: Vec<VcpuCounters>,
    /// Latency probe per vCPU (TSC cycles late).
    pub probe_per_vcpu: Vec<Histogram>,
    /// All vCPUs' probes merged.
    pub probe: Histogram,
    /// Tasks created over the run.
    pub tasks_created: u64,
    /// Tasks exited and freed.
    pub tasks_freed: u64,
    /// Heap in use after the workload.
    pub heap_used: u64,
    /// Heap in use before it.
    pub heap_baseline: u64,
    /// Create/exit pairs of the churn workload.
    pub churn_cycles: u64,
    /// Progress of the hog tasks (only those that ran).
    pub hogs: Vec<TaskProgress>,
    /// Workload length as the guest measured it (cycles).
    pub workload_cycles: u64,
    /// Per-design results (ping, shootdown and torture workloads).
    pub designs: Vec<DesignReport>,
    /// Torture workload: (primitive name, invocations, failed checks), over
    /// all design phases; empty for other workloads.
    pub torture: Vec<(&'static str, u64, u64)>,
    /// Raw IPI round trip (floor and ping workloads; zero count otherwise).
    pub floor: abi::FloorResults,
}

/// The calibration verdicts in words, by code. The report model keeps the
/// part before the `:`; [`verdict_words`] gives the text report the rest.
const VERDICTS: [(u32, &str); 3] = [
    (verdict::UNKNOWN, "not measured"),
    (verdict::HARDWARE, "hardware-accelerated"),
    (
        verdict::CPL0_EMULATED,
        "CPL0 emulated: absolute latencies are not representative",
    ),
];

fn verdict_text(v: u32) -> Result<&'static str, FieldError> {
    VERDICTS
        .iter()
        .find(|(code, _)| *code == v)
        .map(|(_, text)| *text)
        .ok_or(FieldError {
            field: "results.verdict",
            found: v.into(),
            expected: "a verdict code",
        })
}

/// The whole verdict whose first part (before any `:`) is `short`, as the
/// report model's `platform.verdict` has it; `short` itself if none is.
pub fn verdict_words(short: &str) -> &str {
    VERDICTS
        .iter()
        .map(|(_, text)| *text)
        .find(|text| text.split(':').next() == Some(short))
        .unwrap_or(short)
}

/// The kernel mode the guest reports: the BSP's, and every vCPU's the same.
pub(super) fn mode_text(
    r: &abi::Results,
    statuses: &[VcpuStatus],
) -> Result<&'static str, FieldError> {
    let mode = r.mode;
    if !matches!(mode, guest_mode::PLAIN | guest_mode::PVM_NATIVE) {
        return Err(FieldError {
            field: "results.mode",
            found: mode.into(),
            expected: "plain (1) or pvm-native (2)",
        });
    }
    if let Some(s) = statuses.iter().find(|s| s.mode != mode) {
        return Err(FieldError {
            field: "vcpu.mode",
            found: s.mode.into(),
            expected: "the BSP's mode on every vCPU",
        });
    }
    Ok(guest_mode::name(mode))
}

pub(super) fn native_error_text(code: u32) -> Result<Option<&'static str>, FieldError> {
    match code {
        native_error::NONE => Ok(None),
        native_error::NOT_DETECTED..=native_error::HYPERCALL_ABI => {
            Ok(Some(native_error::describe(code)))
        }
        other => Err(FieldError {
            field: "results.native_error",
            found: other.into(),
            expected: "a native_error code",
        }),
    }
}

/// Validates the guest kernel's figures.
pub fn guest_report(
    page: &SharedPage,
    per_vcpu: &[VcpuResults],
    vcpus: u32,
    designs: &[Design],
    phase_pv: impl Fn(usize) -> u32,
) -> Result<GuestReport, FieldError> {
    let r = &page.results;
    let statuses = vcpu_statuses(page, vcpus)?;
    let mut probe = Histogram::new();
    let mut probe_per_vcpu = Vec::with_capacity(per_vcpu.len());
    for v in per_vcpu.iter().take(vcpus as usize) {
        v.probe.validate("vcpu_results[].probe")?;
        probe.merge(&v.probe);
        probe_per_vcpu.push(v.probe);
    }
    if r.workload_end_tsc < r.workload_start_tsc {
        return Err(FieldError {
            field: "results.workload_end_tsc",
            found: r.workload_end_tsc,
            expected: ">= start",
        });
    }
    r.floor.validate()?;
    if r.tasks_freed > r.tasks_created {
        return Err(FieldError {
            field: "results.tasks_freed",
            found: r.tasks_freed,
            expected: "<= tasks_created",
        });
    }
    Ok(GuestReport {
        cpl0_cycles_per_kiter: r.cpl0_cycles_per_kiter,
        cpl3_cycles_per_kiter: r.cpl3_cycles_per_kiter,
        verdict: verdict_text(r.verdict)?,
        tick_hz: r.tick_hz,
        mode: mode_text(r, &statuses)?,
        native_error: native_error_text(r.native_error)?,
        trap_cycles: r.trap_cycles,
        icr_cycles: r.icr_cycles,
        eoi_cycles: r.eoi_cycles,
        preempt_pair_cycles: r.preempt_pair_cycles,
        preempt_pair_traced_cycles: r.preempt_pair_traced_cycles,
        vcpus: statuses
            .iter()
            .map(|s| VcpuCounters {
                sched: s.sched,
                hotplug: s.hotplug,
            })
            .collect(),
        probe_per_vcpu,
        probe,
        tasks_created: r.tasks_created,
        tasks_freed: r.tasks_freed,
        heap_used: r.heap_used,
        heap_baseline: r.heap_baseline,
        churn_cycles: r.churn_cycles,
        hogs: r
            .hogs
            .iter()
            .copied()
            .filter(|h| h.iterations > 0)
            .collect(),
        workload_cycles: r.workload_end_tsc - r.workload_start_tsc,
        torture: if r.torture.iter().any(|t| t.invocations > 0) {
            abi::torture::NAMES
                .iter()
                .zip(r.torture.iter())
                .map(|(n, t)| (*n, t.invocations, t.errors))
                .collect()
        } else {
            Vec::new()
        },
        designs: designs
            .iter()
            .enumerate()
            .map(|(i, &d)| design_report(&page.designs[i], d, phase_pv(i) & abi::pv::ALL, i, vcpus))
            .collect::<Result<_, _>>()?,
        floor: r.floor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_verdict_words_give_back_the_whole_verdict() {
        for (code, text) in VERDICTS {
            let short = text.split(':').next().unwrap();
            assert_eq!(verdict_words(short), verdict_text(code).unwrap());
        }
        assert_eq!(verdict_words("something else"), "something else");
        assert!(verdict_text(99).is_err());
    }
}
