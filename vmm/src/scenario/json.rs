//! The serialised figures of a report: latency percentiles, the scenario
//! as run, the platform, the host block and each design's preempt-off
//! figures (the JSON of the interface contract; the rest of a design's
//! entry is in [`super::design`]).

use abi::{FloorResults, Histogram};
use serde::{Deserialize, Serialize};

use super::VcpuInfo;

/// Latency percentiles in nanoseconds (converted from TSC cycles with the
/// guest's `tsc_khz`). Percentiles are the upper ends of histogram buckets
/// (at most 0.78% wide), clamped to the exact maximum; all 0 when empty,
/// which the JSON writes as null (an unmeasured latency is not 0 ns), with
/// `few_samples` true when the percentiles rest on fewer than
/// [`crate::stats::MIN_SAMPLES`] values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(into = "LatencyJson", from = "LatencyJson")]
pub struct Latency {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value.
    pub max: u64,
    /// Mean (exact, from the sum of the values).
    pub mean: f64,
}

/// The JSON of a [`Latency`]: null figures when nothing was measured.
#[derive(Serialize, Deserialize)]
struct LatencyJson {
    count: u64,
    p50: Option<u64>,
    p90: Option<u64>,
    p99: Option<u64>,
    p999: Option<u64>,
    max: Option<u64>,
    mean: Option<f64>,
    /// The percentiles rest on fewer than 100 values: read them as rough.
    #[serde(default)]
    few_samples: bool,
}

impl From<Latency> for LatencyJson {
    fn from(l: Latency) -> Self {
        let m = |v: u64| (l.count > 0).then_some(v);
        LatencyJson {
            count: l.count,
            p50: m(l.p50),
            p90: m(l.p90),
            p99: m(l.p99),
            p999: m(l.p999),
            max: m(l.max),
            mean: (l.count > 0).then_some(l.mean),
            few_samples: l.count > 0 && l.count < crate::stats::MIN_SAMPLES,
        }
    }
}

impl From<LatencyJson> for Latency {
    fn from(j: LatencyJson) -> Self {
        Latency {
            count: j.count,
            p50: j.p50.unwrap_or(0),
            p90: j.p90.unwrap_or(0),
            p99: j.p99.unwrap_or(0),
            p999: j.p999.unwrap_or(0),
            max: j.max.unwrap_or(0),
            mean: j.mean.unwrap_or(0.0),
        }
    }
}

/// TSC cycles to nanoseconds (0 when the TSC frequency is unknown).
pub fn cycles_to_ns(cycles: u64, tsc_khz: u64) -> u64 {
    if tsc_khz == 0 {
        return 0;
    }
    (cycles as u128 * 1_000_000 / tsc_khz as u128).min(u64::MAX as u128) as u64
}

impl Latency {
    /// The figures of a histogram of TSC cycles.
    pub fn from_histogram(h: &Histogram, tsc_khz: u64) -> Self {
        let ns = |c| cycles_to_ns(c, tsc_khz);
        if h.count == 0 {
            return Latency::default();
        }
        Latency {
            count: h.count,
            p50: ns(h.quantile_ppm(500_000)),
            p90: ns(h.quantile_ppm(900_000)),
            p99: ns(h.quantile_ppm(990_000)),
            p999: ns(h.quantile_ppm(999_000)),
            max: ns(h.max),
            mean: if tsc_khz == 0 {
                0.0
            } else {
                h.sum as f64 / h.count as f64 * 1e6 / tsc_khz as f64
            },
        }
    }

    /// The figures of the guest's floor summary (None when not measured).
    pub fn from_floor(f: &FloorResults, tsc_khz: u64) -> Option<Self> {
        let ns = |c| cycles_to_ns(c, tsc_khz);
        (f.count > 0).then(|| Latency {
            count: f.count,
            p50: ns(f.p50),
            p90: ns(f.p90),
            p99: ns(f.p99),
            p999: ns(f.p999),
            max: ns(f.max),
            mean: if tsc_khz == 0 {
                0.0
            } else {
                f.sum as f64 / f.count as f64 * 1e6 / tsc_khz as f64
            },
        })
    }
}

/// Host-side preemption settings as run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreemptInfo {
    /// `none`, `pause` or `antagonist` (the mode used, after any fallback).
    pub mode: String,
    /// Length of one preemption, in us.
    pub len_us: u64,
    /// Mean gap between preemptions per host CPU, in us.
    pub every_us: u64,
}

/// The scenario as run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioInfo {
    /// Guest CPUs.
    pub vcpus: u32,
    /// Host CPUs the vCPU threads were placed on.
    pub host_cpus: Vec<usize>,
    /// Workload name (as on the command line).
    pub workload: String,
    /// Measured time per design, in seconds.
    pub duration_s: f64,
    /// IPI-issuing tasks per initiator vCPU: `shape.issuers_per_cpu`
    /// under its first name (report fields are never renamed).
    pub tasks_per_cpu: u32,
    /// The named scenario the run was made from (`series`; null: none).
    #[serde(default)]
    pub name: Option<String>,
    /// The workload's shape and the injection's targets.
    #[serde(default)]
    pub shape: ShapeInfo,
    /// The seed.
    pub seed: u64,
    /// Host-side preemption.
    pub preempt: PreemptInfo,
    /// Mean gap between migrations, in us (0: none).
    pub migrate_every_us: u64,
    /// Guest-side forced preemption probability.
    pub guest_preempt_prob: f64,
    /// Paravirtual features the guest used.
    pub pv: Vec<String>,
    /// Designs run, in order.
    pub designs: Vec<String>,
    /// Injected allocation failure probability (alloc-in-path).
    pub alloc_fail_prob: f64,
    /// Forced guest task migration probability per tick.
    pub forced_migration: f64,
    /// CPU hotplug asked for (all zero: none).
    #[serde(default)]
    pub hotplug: HotplugInfo,
}

/// The scenario's CPU hotplug (`--hotplug-every`, `--hotplug-len`,
/// `--torture-onoff`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HotplugInfo {
    /// Mean gap between the host's hotplug cycles, in us (0: none).
    pub every_us: u64,
    /// Mean time a vCPU stays offline per cycle, in us.
    pub len_us: u64,
    /// Torture's onoff interval, in us (0: off).
    pub torture_onoff_us: u64,
}

/// The guest's calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Platform {
    /// The guest kernel that ran: `plain` or `pvm-native` (see
    /// docs/native-mode.md).
    #[serde(default)]
    pub mode: String,
    /// Why the native mode did not run although it was asked for (null: it
    /// ran, or was not asked for).
    #[serde(default)]
    pub native_error: Option<String>,
    /// TSC cycles per iteration of a `dec; jnz` loop at CPL0 (the guest
    /// times 1024 iterations; this is that figure / 1024).
    pub cpl0_cycles_per_iter: f64,
    /// The same at CPL3 (0: not measured).
    pub cpl3_cycles_per_iter: f64,
    /// `hardware-accelerated`, `CPL0 emulated` or `not measured`.
    pub verdict: String,
    /// Guest scheduler tick, in Hz.
    pub tick_hz: u32,
    /// One system call round trip from a user task, in the running mode
    /// (null: not measured).
    #[serde(default)]
    pub syscall_ns: Option<u64>,
    /// One x2APIC ICR write (null: not measured).
    #[serde(default)]
    pub icr_write_ns: Option<u64>,
    /// One x2APIC EOI write (null: not measured).
    #[serde(default)]
    pub eoi_write_ns: Option<u64>,
    /// One preempt_disable/enable pair with the preempt-off tracer off
    /// (null: not measured).
    #[serde(default)]
    pub preempt_pair_ns: Option<u64>,
    /// The same pair traced (one section each): the tracer's own cost is
    /// the difference (null: not measured).
    #[serde(default)]
    pub preempt_pair_traced_ns: Option<u64>,
    /// `syscall_ns` in TSC cycles, as the guest measured it (the text
    /// report prints cycles; null: not measured).
    #[serde(default)]
    pub syscall_cycles: Option<u64>,
    /// `icr_write_ns` in TSC cycles (null: not measured).
    #[serde(default)]
    pub icr_write_cycles: Option<u64>,
    /// `eoi_write_ns` in TSC cycles (null: not measured).
    #[serde(default)]
    pub eoi_write_cycles: Option<u64>,
    /// `preempt_pair_ns` in TSC cycles (null: not measured).
    #[serde(default)]
    pub preempt_pair_cycles: Option<u64>,
    /// `preempt_pair_traced_ns` in TSC cycles (null: not measured).
    #[serde(default)]
    pub preempt_pair_traced_cycles: Option<u64>,
}

/// Paravirtual features: what the host offers (its probe) and what ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PvInfo {
    /// KVM accepted steal time (the probe; without a probe: whether the
    /// guest registered it).
    pub steal_time: bool,
    /// KVM's steal-time `preempted` flag was seen set: by the probe (which
    /// preempts a vCPU of its own on purpose) or by the guest in the run.
    pub preempted_flag: bool,
    /// What the probe found about the flag, in words (empty: not probed).
    pub preempted_flag_note: String,
    /// Whether a KVM hypercall completed in the probe; `None` (JSON null)
    /// when the run used no PV feature and so did not probe.
    pub kvm_hypercalls: Option<bool>,
    /// Why hypercalls are unavailable (empty when they work or were not
    /// probed).
    pub kvm_hypercalls_note: String,
    /// How long the probe took, in ms (null: not probed).
    pub probe_ms: Option<f64>,
    /// The mechanism that served each feature the run used (`kvm`,
    /// `ipivirt`, `kvm+ipivirt`, `unavailable`).
    pub mechanisms: std::collections::BTreeMap<String, String>,
    /// What the VMM's PV interface served (null when the run had none).
    pub served: Option<crate::pv::PvHostTotals>,
}

/// Host-side injection figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Antagonist bursts or pauses injected.
    pub preemptions_injected: u64,
    /// vCPU thread migrations applied.
    pub migrations_injected: u64,
    /// Steal time per vCPU, in ns; null when the guest did not register
    /// steal time (the `spin` workload and `--pv steal-time` do).
    pub steal_ns: Option<Vec<u64>>,
    /// Paravirtual features.
    pub pv: PvInfo,
    /// Preemption mode used.
    pub mode: String,
    /// Planned migrations folded into later ones.
    pub migrations_coalesced: u64,
    /// Why the `--trace` file could not be written (null: it was, or none
    /// was asked for).
    #[serde(default)]
    pub trace_error: Option<String>,
    /// Planned preemptions dropped because they were long overdue (the
    /// VMM was stalled): never replayed.
    #[serde(default)]
    pub preemptions_skipped: u64,
    /// CPU hotplug cycles the host requested (`--hotplug-every`): a vCPU
    /// asked offline, then back online.
    #[serde(default)]
    pub hotplug_events: u64,
    /// Of those, cycles whose offline request the guest had acted on when
    /// it was asked back.
    #[serde(default)]
    pub hotplug_acked: u64,
    /// Of those, cycles the guest refused.
    #[serde(default)]
    pub hotplug_refused: u64,
    /// Stalls of the VMM itself (SIGSTOP, an overloaded host).
    #[serde(default)]
    pub vmm_stalls: crate::stall::StallInfo,
    /// Measurements the run could not make, and why.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Time the injectors preempted vCPUs in all, in ns.
    #[serde(default)]
    pub preempt_ns_injected: u64,
    /// How long injection ran, in seconds.
    #[serde(default)]
    pub injection_s: f64,
    /// Whether every vCPU thread's affinity was restored at the end (null:
    /// no injector ran).
    #[serde(default)]
    pub affinity_restored: Option<bool>,
    /// Why the preemption mode differs from the one asked for (null: it
    /// does not).
    #[serde(default)]
    pub fallback: Option<String>,
    /// Errors the injectors hit (the run went on).
    #[serde(default)]
    pub injector_errors: Vec<String>,
    /// The host table, one row per vCPU (as many as the text shows and more).
    #[serde(default)]
    pub vcpus: Vec<VcpuInfo>,
}

/// One design's preempt-off figures (`designs[].preempt_off`). Percentiles
/// are of the window maxima (the upper end of a bucket at most 6.25% wide,
/// clamped to the exact maximum); null where no window was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreemptOff {
    /// The window, in ms.
    pub window_ms: f64,
    /// Windows measured, all vCPUs.
    pub windows: u64,
    /// Median of every vCPU's window maxima.
    pub p50_ns: Option<u64>,
    /// P99 of every vCPU's window maxima, all vCPUs.
    pub p99_ns: Option<u64>,
    /// The vCPUs that ran IPI-issuing tasks (`--initiators`; every vCPU
    /// by default; empty in a report from before the field).
    #[serde(default)]
    pub sender_cpus: Vec<u32>,
    /// The series' sender-side figure: the highest per-vCPU P99 among
    /// `sender_cpus` (with one initiator, its P99; null: none of them
    /// measured a window).
    #[serde(default)]
    pub sender_p99_ns: Option<u64>,
    /// The longest section.
    pub max_ns: Option<u64>,
    /// Sections that ended in the phase.
    pub sections: u64,
    /// Sections found open where none could be (0 in a correct kernel).
    pub unmatched: u64,
    /// Per vCPU.
    pub per_cpu: Vec<PreemptOffCpu>,
    /// What the window maxima were spent on: `other`, `sched`, `send`,
    /// `csd_lock`, `csd_lock_wait`, `test_hook`.
    pub causes: std::collections::BTreeMap<String, PreemptOffCause>,
    /// The same figures with each section less the host's steal time
    /// accrued while it was open (null: steal time not tracked; absent in
    /// a report from before the field).
    #[serde(default)]
    pub excl_steal: Option<PreemptOffExclSteal>,
}

/// The preempt-off figures less the host's steal time
/// (`designs[].preempt_off.excl_steal`): same windows as the raw figures,
/// each at most its raw twin; null where no window was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreemptOffExclSteal {
    /// Median of every vCPU's steal-excluded window maxima.
    pub p50_ns: Option<u64>,
    /// Their P99, all vCPUs.
    pub p99_ns: Option<u64>,
    /// The longest section less its steal time.
    pub max_ns: Option<u64>,
    /// The highest per-vCPU P99 among the raw figures' `sender_cpus`.
    pub sender_p99_ns: Option<u64>,
    /// Per vCPU.
    pub per_cpu: Vec<PreemptOffCpu>,
}

/// One vCPU's window maxima.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreemptOffCpu {
    /// vCPU index.
    pub cpu: u32,
    /// Windows measured.
    pub windows: u64,
    /// Median window maximum (null: no window).
    pub p50_ns: Option<u64>,
    /// P99 window maximum (null: no window).
    pub p99_ns: Option<u64>,
    /// Longest section (null: no window).
    pub max_ns: Option<u64>,
}

/// The windows whose longest section had one cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreemptOffCause {
    /// Windows whose longest section it was.
    pub windows: u64,
    /// The longest of those sections (null: none).
    pub max_ns: Option<u64>,
}

impl PreemptOff {
    /// The JSON figures of a validated tracer report (None: tracer off);
    /// `initiators` the vCPUs that sent (None: every vCPU).
    pub fn new(
        p: &crate::results::PreemptOffReport,
        khz: u64,
        initiators: Option<&[u32]>,
    ) -> Option<Self> {
        if !p.enabled {
            return None;
        }
        let ns = |c: u64| cycles_to_ns(c, khz);
        let measured = |n: u64, c: u64| (n > 0).then(|| ns(c));
        let h = &p.window_max;
        let sender_cpus: Vec<u32> = match initiators {
            Some(set) => set.to_vec(),
            None => (0..p.per_cpu.len() as u32).collect(),
        };
        let sender_p99 = |per_cpu: &[abi::PreemptOffCpu]| {
            sender_cpus
                .iter()
                .filter_map(|&c| per_cpu.get(c as usize))
                .filter(|c| c.windows > 0)
                .map(|c| ns(c.p99))
                .max()
        };
        let rows = |per_cpu: &[abi::PreemptOffCpu]| {
            per_cpu
                .iter()
                .enumerate()
                .map(|(i, c)| PreemptOffCpu {
                    cpu: i as u32,
                    windows: c.windows,
                    p50_ns: measured(c.windows, c.p50),
                    p99_ns: measured(c.windows, c.p99),
                    max_ns: measured(c.windows, c.max),
                })
                .collect()
        };
        let sender_p99_ns = sender_p99(&p.per_cpu);
        let excl_steal = p.excl_steal.as_ref().map(|e| {
            let h = &e.window_max;
            PreemptOffExclSteal {
                p50_ns: measured(h.count, h.quantile_ppm(500_000)),
                p99_ns: measured(h.count, h.quantile_ppm(990_000)),
                max_ns: measured(h.count, h.max),
                sender_p99_ns: sender_p99(&e.per_cpu),
                per_cpu: rows(&e.per_cpu),
            }
        });
        Some(PreemptOff {
            window_ms: ns(p.window_cycles) as f64 / 1e6,
            windows: h.count,
            p50_ns: measured(h.count, h.quantile_ppm(500_000)),
            p99_ns: measured(h.count, h.quantile_ppm(990_000)),
            sender_cpus,
            sender_p99_ns,
            max_ns: measured(h.count, h.max),
            sections: p.sections,
            unmatched: p.unmatched,
            per_cpu: rows(&p.per_cpu),
            causes: abi::preempt_off::cause::NAMES
                .iter()
                .zip(p.causes.iter())
                .map(|(n, c)| {
                    (
                        n.to_string(),
                        PreemptOffCause {
                            windows: c.windows,
                            max_ns: measured(c.windows, c.max),
                        },
                    )
                })
                .collect(),
            excl_steal,
        })
    }
}

/// The workload's shape and injection targets as asked (`scenario.shape`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShapeInfo {
    /// IPI-issuing tasks per initiator vCPU.
    pub issuers_per_cpu: u32,
    /// CPU-bound tasks per vCPU that send no IPI.
    pub hogs_per_cpu: u32,
    /// The initiator vCPUs (null: every vCPU).
    pub initiators: Option<Vec<u32>>,
    /// The explicit vCPU -> host CPU placement (null: spread round robin
    /// over `host_cpus`).
    pub placement: Option<Vec<usize>>,
    /// The host CPUs injection preempts (null: every host CPU used).
    pub preempt_host_cpus: Option<Vec<usize>>,
    /// The vCPUs `pause` holds (null: every vCPU).
    pub preempt_vcpus: Option<Vec<u32>>,
}
