//! One design's entry of the report (JSON `designs[]`), built once from
//! the validated readout ([`crate::results::DesignReport`]): the guest's
//! plain-data groups are serialised as they are (the counters flat, the PV
//! counters, hotplug, shape and memory as objects), the latencies and
//! times converted to ns and ms here and nowhere else. The text and SVG
//! renderers read these figures.

use std::ops::Deref;

use abi::DesignCounts;
use serde::{Deserialize, Serialize};

use super::json::{cycles_to_ns, Latency, PreemptOff};
use crate::results::{task_name, DesignReport, NR_CPUS_8192_MASK_BYTES};

/// The workload tasks one phase spawned (`designs[].shape`), as the guest
/// counted them: what `--issuers-per-cpu`, `--hogs-per-cpu` and
/// `--initiators` became.
pub type ShapeCounts = abi::ShapeCounts;

/// One design's figures. Its [`DesignCounts`] read as its own fields
/// (`d.calls`) through [`Deref`], as they stand flat in the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesignSummary {
    /// Column name: the design, plus `+feature` for each PV feature that
    /// changes its path (e.g. `task-local+sched-yield`).
    pub design: String,
    /// The wait-mask design alone.
    pub base_design: String,
    /// PV features of the phase.
    pub pv: Vec<String>,
    /// Those KVM's mechanism served (the rest: ipivirt's).
    pub pv_kvm: Vec<String>,
    /// PV counters of the phase.
    pub pv_counts: abi::PvCounts,
    /// The counters as the guest counted them (`calls`, `violations`,
    /// `mask_allocs`, ...), flat in the entry.
    #[serde(flatten)]
    pub counts: DesignCounts,
    /// Time from phase start to the first violation, in ms.
    pub first_violation_ms: Option<f64>,
    /// Cross-call latency, entry to return (wait=true).
    pub call_latency_ns: Latency,
    /// The latency probe during the phase.
    pub sched_latency_ns: Latency,
    /// Phase length as the guest measured it, in ms.
    pub phase_ms: f64,
    /// Calls per second of guest time.
    pub calls_per_s: f64,
    /// Whether the design is expected to keep every invariant.
    pub expected_safe: bool,
    /// The first violations the guest recorded (at most 8).
    pub violation_log: Vec<Violation>,
    /// Mean time to create one, in ns (null: none created).
    #[serde(default)]
    pub task_create_mean_ns: Option<u64>,
    /// CPU hotplug during the phase (all zero without hotplug).
    #[serde(default)]
    pub hotplug: abi::HotplugCounts,
    /// The workload tasks the phase really spawned, by kind.
    #[serde(default)]
    pub shape: ShapeCounts,
    /// Bytes of the pointer-sized field every task carries in every design
    /// (the series' addition to the task, measured as the field's size).
    #[serde(default)]
    pub task_field_bytes: u64,
    /// How the phase ended: quiesced, or stalled and with what.
    #[serde(default)]
    pub phase_end: Option<PhaseEndJson>,
    /// Memory measured from the guest allocator during the phase.
    #[serde(default)]
    pub memory: Option<MemoryJson>,
    /// The preempt-off tracer: per vCPU the longest non-preemptible section
    /// of each window, summarised (null: the tracer was off).
    #[serde(default)]
    pub preempt_off: Option<PreemptOff>,
    /// Probe lateness from its due time to the timer interrupt that woke it
    /// (host delay, interrupts off, the platform).
    #[serde(default)]
    pub probe_arrival_ns: Latency,
    /// Probe lateness from that interrupt to the probe running (the guest's
    /// pinned sections and scheduler).
    #[serde(default)]
    pub probe_dispatch_ns: Latency,
}

/// How a design's phase ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseEndJson {
    /// `quiesced` (every task finished and every call queue drained: the
    /// end-of-phase checks ran), `stalled` (not within the bound: those
    /// checks did not run, later designs did not run) or `not-run` (an
    /// earlier phase stalled).
    pub status: String,
    /// Time from the phase's end to quiescence (or the give-up), in ms.
    pub quiesce_ms: f64,
    /// The bound, in ms.
    pub bound_ms: f64,
    /// Tasks of the phase still alive at the bound.
    pub stalled_tasks: u32,
    /// vCPUs whose call queue did not drain within the bound.
    pub undrained_vcpus: u32,
    /// The first of them (null: none).
    pub first_undrained: Option<u32>,
    /// The stalled tasks recorded (at most 8).
    pub tasks: Vec<StalledTaskJson>,
}

/// A task still alive when its phase's quiescence bound ran out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StalledTaskJson {
    /// Task id.
    pub id: u64,
    /// Task name.
    pub name: String,
    /// The vCPU it runs or is queued on.
    pub cpu: u32,
    /// `runnable`, `running`, `sleeping` or `dead`.
    pub state: String,
    /// The vCPU whose csd it waits for (null: not in a csd wait).
    pub waits_on: Option<u32>,
}

/// Memory of one design, measured from the guest allocator's own counter
/// (the guest's group, flat: `hook_bytes`, `hook_freed_bytes`,
/// `hook_tasks`, `hook_failures`, `task_field_bytes`, `wait_stack_bytes`,
/// `heap_before`, `heap_after`), and the computed NR_CPUS=8192 costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryJson {
    /// As measured.
    #[serde(flatten)]
    pub measured: abi::MemoryResults,
    /// What the design's mask would cost in a Linux with NR_CPUS=8192 and
    /// 8192 possible CPUs: computed, not measured.
    pub computed_nr_cpus_8192: Computed8192,
}

/// Computed mask costs at NR_CPUS=8192 (1024-byte masks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Computed8192 {
    /// Heap bytes per task (task-local).
    pub mask_bytes_per_task: u64,
    /// Stack bytes per call (stack).
    pub stack_bytes_per_call: u64,
}

/// A design's mask cost at NR_CPUS=8192 (computed): heap bytes per task and
/// stack bytes per call.
pub fn computed_at_8192(design: abi::Design) -> Computed8192 {
    let (task, call) = match design {
        abi::Design::TaskLocal => (NR_CPUS_8192_MASK_BYTES, 0),
        abi::Design::Stack => (0, NR_CPUS_8192_MASK_BYTES),
        _ => (0, 0),
    };
    Computed8192 {
        mask_bytes_per_task: task,
        stack_bytes_per_call: call,
    }
}

fn state_name(state: u32) -> &'static str {
    match state {
        abi::task_state::RUNNING => "running",
        abi::task_state::SLEEPING => "sleeping",
        abi::task_state::DEAD => "dead",
        _ => "runnable",
    }
}

impl PhaseEndJson {
    /// Whether the phase stalled (did not quiesce within its bound).
    pub fn stalled(&self) -> bool {
        self.status == "stalled"
    }

    fn new(e: &crate::results::PhaseEndReport, khz: u64) -> Self {
        PhaseEndJson {
            status: e.status_name().to_string(),
            quiesce_ms: cycles_to_ns(e.quiesce_cycles, khz) as f64 / 1e6,
            bound_ms: cycles_to_ns(e.bound_cycles, khz) as f64 / 1e6,
            stalled_tasks: e.stalled_tasks,
            undrained_vcpus: e.undrained_vcpus,
            first_undrained: e.first_undrained,
            tasks: e
                .stalled
                .iter()
                .map(|t| StalledTaskJson {
                    id: t.id,
                    name: task_name(&t.name),
                    cpu: t.cpu,
                    state: state_name(t.state).to_string(),
                    waits_on: (t.waits_on != abi::NO_WAIT).then_some(t.waits_on),
                })
                .collect(),
        }
    }
}

/// One recorded invariant violation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// `not-run` (the caller returned before a target ran the callback),
    /// `ran-twice`, `ran-after-return`, `wrong-cpu`, `csd-reinit` or
    /// `lost` (an asynchronous call never ran by the end of the phase),
    /// `deferred-late`, `csd-freed` (a waiter read a csd freed by a CPU
    /// going offline) or `dropped-offline` (a csd stayed locked past its
    /// CPU's dying flush).
    pub kind: String,
    /// The target CPU concerned.
    pub cpu: u32,
    /// Request id.
    pub request: u64,
    /// Time since the phase's checker was reset, in ms.
    pub ms: f64,
}

/// The report name of a [`abi::violation`] kind.
pub fn violation_name(kind: u32) -> &'static str {
    use abi::violation::*;
    match kind {
        NOT_RUN => "not-run",
        RAN_TWICE => "ran-twice",
        RAN_AFTER_RETURN => "ran-after-return",
        WRONG_CPU => "wrong-cpu",
        CSD_REINIT => "csd-reinit",
        LOST => "lost",
        DEFERRED_LATE => "deferred-late",
        CSD_FREED => "csd-freed",
        DROPPED_OFFLINE => "dropped-offline",
        _ => "unknown",
    }
}

impl Deref for DesignSummary {
    type Target = DesignCounts;

    fn deref(&self) -> &DesignCounts {
        &self.counts
    }
}

impl DesignSummary {
    /// `initiators`: the vCPUs that ran the issuers (None: every vCPU).
    pub(super) fn new(d: &DesignReport, khz: u64, initiators: Option<&[u32]>) -> Self {
        let phase_ns = cycles_to_ns(d.phase_cycles, khz);
        let names = |bits: u32| {
            let mut v = Vec::new();
            abi::pv::names(bits, |n| v.push(n.to_string()));
            v
        };
        DesignSummary {
            design: d.label(),
            base_design: d.design.name().to_string(),
            pv: names(d.pv),
            pv_kvm: names(d.pv_kvm),
            pv_counts: d.pv_counts,
            counts: d.counts,
            first_violation_ms: d
                .first_violation_cycles
                .map(|c| cycles_to_ns(c, khz) as f64 / 1e6),
            call_latency_ns: Latency::from_histogram(&d.call_latency, khz),
            sched_latency_ns: Latency::from_histogram(&d.sched_latency, khz),
            phase_ms: phase_ns as f64 / 1e6,
            calls_per_s: if phase_ns == 0 {
                0.0
            } else {
                d.calls as f64 * 1e9 / phase_ns as f64
            },
            expected_safe: d.design.expected_safe(),
            task_create_mean_ns: (d.tasks_created > 0)
                .then(|| cycles_to_ns(d.task_create_mean_cycles, khz)),
            preempt_off: PreemptOff::new(&d.preempt_off, khz, initiators),
            probe_arrival_ns: Latency::from_histogram(&d.probe_arrival, khz),
            probe_dispatch_ns: Latency::from_histogram(&d.probe_dispatch, khz),
            hotplug: d.hotplug,
            shape: d.shape,
            task_field_bytes: d.memory.task_field_bytes,
            phase_end: Some(PhaseEndJson::new(&d.phase_end, khz)),
            memory: Some(MemoryJson {
                measured: d.memory,
                computed_nr_cpus_8192: computed_at_8192(d.design),
            }),
            violation_log: d
                .violation_log
                .iter()
                .map(|v| Violation {
                    kind: violation_name(v.kind).to_string(),
                    cpu: v.cpu,
                    request: v.request,
                    ms: cycles_to_ns(v.cycles, khz) as f64 / 1e6,
                })
                .collect(),
        }
    }
}
