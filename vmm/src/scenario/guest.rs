//! The guest's own figures in the JSON report: what the text's scheduler
//! part shows (the latency probe of every workload, per-vCPU counters,
//! task accounting, hogs, torture checks), so that the JSON holds
//! everything the text does.

use serde::{Deserialize, Serialize};

use super::{cycles_to_ns, Latency};
use crate::results::GuestReport;

/// The `guest` object of the JSON report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestInfo {
    /// The latency probe over the whole run, all vCPUs merged (null: no
    /// samples; per design, see `designs[].sched_latency_ns`).
    pub probe_latency_ns: Option<Latency>,
    /// Workload length as the guest measured it, in seconds.
    pub workload_s: f64,
    /// Per-vCPU scheduler counters and probe.
    pub vcpus: Vec<GuestVcpu>,
    /// Tasks created over the run.
    pub tasks_created: u64,
    /// Tasks exited and freed.
    pub tasks_freed: u64,
    /// Guest heap in use after the workload, in bytes.
    pub heap_used_bytes: u64,
    /// ... and before it.
    pub heap_baseline_bytes: u64,
    /// Create/exit pairs of the churn workload.
    pub churn_cycles: u64,
    /// The hog tasks that ran: iterations and the vCPUs they ran on.
    pub hogs: Vec<Hog>,
    /// Torture workload: per primitive, invocations and failed checks.
    pub torture: Vec<TortureCount>,
}

/// One vCPU's guest counters (the same fields as the text's vCPU table).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestVcpu {
    /// Context switches, preemptions, migrations in, ticks, IPIs.
    #[serde(flatten)]
    pub counters: crate::results::VcpuCounters,
    /// The vCPU's latency probe (null: no samples).
    pub probe_latency_ns: Option<Latency>,
}

/// A hog task's progress.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hog {
    /// Loop iterations done.
    pub iterations: u64,
    /// vCPUs it was seen running on (of the first 64).
    pub vcpus: Vec<u32>,
}

/// A torture primitive's totals over all design phases.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TortureCount {
    /// Its name (`single-rpc`, ...).
    pub primitive: String,
    /// Invocations.
    pub invocations: u64,
    /// Failed checks.
    pub failed_checks: u64,
}

fn latency(h: &abi::Histogram, khz: u64) -> Option<Latency> {
    (h.count > 0).then(|| Latency::from_histogram(h, khz))
}

impl GuestInfo {
    /// The figures of `g` (TSC at `khz`).
    pub fn new(g: &GuestReport, khz: u64) -> Self {
        GuestInfo {
            probe_latency_ns: latency(&g.probe, khz),
            workload_s: cycles_to_ns(g.workload_cycles, khz) as f64 / 1e9,
            vcpus: g
                .vcpus
                .iter()
                .enumerate()
                .map(|(i, c)| GuestVcpu {
                    counters: c.clone(),
                    probe_latency_ns: g.probe_per_vcpu.get(i).and_then(|h| latency(h, khz)),
                })
                .collect(),
            tasks_created: g.tasks_created,
            tasks_freed: g.tasks_freed,
            heap_used_bytes: g.heap_used,
            heap_baseline_bytes: g.heap_baseline,
            churn_cycles: g.churn_cycles,
            hogs: g
                .hogs
                .iter()
                .map(|h| Hog {
                    iterations: h.iterations,
                    vcpus: (0..64).filter(|c| h.cpus_mask & (1 << c) != 0).collect(),
                })
                .collect(),
            torture: g
                .torture
                .iter()
                .map(|&(primitive, invocations, failed_checks)| TortureCount {
                    primitive: primitive.to_string(),
                    invocations,
                    failed_checks,
                })
                .collect(),
        }
    }
}
