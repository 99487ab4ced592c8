//! One design's slot of the results page, validated: the guest's
//! plain-data groups ([`abi::DesignCounts`], [`abi::PvCounts`],
//! [`abi::HotplugCounts`], [`abi::MemoryResults`], [`abi::ShapeCounts`])
//! are checked and copied as a whole, so a new counter in a group needs
//! nothing here.

use std::ops::Deref;

use abi::{Design, DesignCounts, DesignResults, FieldError, Histogram, ViolationRecord};

/// What CPU hotplug did during one design's phase (JSON
/// `designs[].hotplug`): the guest's group as it is.
pub type HotplugReport = abi::HotplugCounts;

/// The PV figures of one design phase (JSON `designs[].pv_counts`): the
/// guest's group as it is.
pub type PvCounts = abi::PvCounts;

/// One design's results, validated. Its [`DesignCounts`] read as its own
/// fields (`d.calls`) through [`Deref`]: the counters are one group the
/// report copies whole, but callers name a counter, not the group.
#[derive(Debug, Clone)]
pub struct DesignReport {
    /// The design.
    pub design: Design,
    /// [`abi::pv`] features of the phase (0: the plain design).
    pub pv: u32,
    /// Those KVM's mechanism served.
    pub pv_kvm: u32,
    /// The counters the report prints as they are.
    pub counts: DesignCounts,
    /// PV counters.
    pub pv_counts: PvCounts,
    /// Time from phase start to the first violation (cycles).
    pub first_violation_cycles: Option<u64>,
    /// Mean task creation time (cycles).
    pub task_create_mean_cycles: u64,
    /// Phase length (cycles).
    pub phase_cycles: u64,
    /// Cross-call latency (cycles).
    pub call_latency: Box<Histogram>,
    /// Probe lateness during the phase (cycles).
    pub sched_latency: Box<Histogram>,
    /// The first violations.
    pub violation_log: Vec<ViolationRecord>,
    /// CPU hotplug during the phase.
    pub hotplug: HotplugReport,
    /// The issuers and hogs the phase spawned.
    pub shape: abi::ShapeCounts,
    /// How the phase ended.
    pub phase_end: PhaseEndReport,
    /// Memory measured from the guest allocator.
    pub memory: abi::MemoryResults,
    /// The preempt-off tracer's figures of the phase.
    pub preempt_off: PreemptOffReport,
    /// Probe lateness, due time to the timer interrupt that woke it (cycles).
    pub probe_arrival: Box<Histogram>,
    /// Probe lateness, that interrupt to the probe running (cycles).
    pub probe_dispatch: Box<Histogram>,
}

impl Deref for DesignReport {
    type Target = DesignCounts;

    fn deref(&self) -> &DesignCounts {
        &self.counts
    }
}

/// The mask bytes of Linux's NR_CPUS=8192 (for the computed figures).
pub const NR_CPUS_8192_MASK_BYTES: u64 = 8192 / 8;

/// A task's name from its NUL-padded bytes.
pub fn task_name(name: &[u8; 16]) -> String {
    String::from_utf8_lossy(name)
        .trim_end_matches('\0')
        .to_string()
}

/// How a design's phase ended ([`abi::PhaseEnd`], validated).
#[derive(Debug, Clone)]
pub struct PhaseEndReport {
    /// An [`abi::phase_status`] value.
    pub status: u32,
    /// Tasks still alive at the bound (stall).
    pub stalled_tasks: u32,
    /// vCPUs whose call queue did not drain within the bound.
    pub undrained_vcpus: u32,
    /// The first of them.
    pub first_undrained: Option<u32>,
    /// Cycles from the phase's end to quiescence or the give-up.
    pub quiesce_cycles: u64,
    /// The bound in cycles.
    pub bound_cycles: u64,
    /// The stalled tasks recorded (at most [`abi::STALL_RECORDS`]).
    pub stalled: Vec<abi::StalledTask>,
}

impl PhaseEndReport {
    /// `quiesced`, `stalled` or `not-run`.
    pub fn status_name(&self) -> &'static str {
        match self.status {
            abi::phase_status::QUIESCED => "quiesced",
            abi::phase_status::STALLED => "stalled",
            _ => "not-run",
        }
    }

    /// Whether the phase stalled.
    pub fn stalled(&self) -> bool {
        self.status == abi::phase_status::STALLED
    }
}

/// The preempt-off tracer's figures of one phase, validated (TSC cycles):
/// per vCPU the longest non-preemptible section of each window, and their
/// P50/P99/max.
#[derive(Debug, Clone, Default)]
pub struct PreemptOffReport {
    /// Whether the tracer ran (it is off only with the hidden
    /// `--no-preempt-trace`).
    pub enabled: bool,
    /// The window (cycles).
    pub window_cycles: u64,
    /// Sections that ended in the phase, all vCPUs.
    pub sections: u64,
    /// Sections the tracer found open where none could be (0 in a correct
    /// kernel; dropped, not measured).
    pub unmatched: u64,
    /// Every vCPU's window maxima.
    pub window_max: Box<Histogram>,
    /// Per cause ([`abi::preempt_off::cause`]): windows whose longest
    /// section it was, and the longest of those.
    pub causes: [abi::PreemptOffCause; abi::preempt_off::cause::COUNT],
    /// Per vCPU, in vCPU order.
    pub per_cpu: Vec<abi::PreemptOffCpu>,
    /// The same figures less the host's steal time (None: steal time was
    /// not tracked, or the tracer was off).
    pub excl_steal: Option<ExclSteal>,
}

/// The tracer's figures with each section shortened by the steal time KVM
/// accrued while it was open (TSC cycles): same windows, each window's
/// maximum at most its raw twin.
#[derive(Debug, Clone, Default)]
pub struct ExclSteal {
    /// Every vCPU's steal-excluded window maxima.
    pub window_max: Box<Histogram>,
    /// Per vCPU, in vCPU order.
    pub per_cpu: Vec<abi::PreemptOffCpu>,
}

impl PreemptOffReport {
    /// The P99 over all vCPUs' window maxima in ns (None: no window was
    /// measured). The figure the series reports, per design.
    pub fn p99_ns(&self, tsc_khz: u64) -> Option<u64> {
        (self.enabled && self.window_max.count > 0)
            .then(|| crate::scenario::cycles_to_ns(self.window_max.quantile_ppm(990_000), tsc_khz))
    }

    /// As [`p99_ns`](Self::p99_ns), of the steal-excluded window maxima
    /// (None: steal not tracked, or no window).
    pub fn p99_excl_steal_ns(&self, tsc_khz: u64) -> Option<u64> {
        let h = &self.excl_steal.as_ref()?.window_max;
        (h.count > 0).then(|| crate::scenario::cycles_to_ns(h.quantile_ppm(990_000), tsc_khz))
    }
}

fn preempt_off_report(
    p: &abi::PreemptOffResults,
    vcpus: u32,
) -> Result<PreemptOffReport, FieldError> {
    let bad = |field, found: u64, expected| FieldError {
        field,
        found,
        expected,
    };
    if p.enabled > 1 {
        return Err(bad(
            "designs[].preempt_off.enabled",
            p.enabled.into(),
            "0 or 1",
        ));
    }
    p.window_max.validate("designs[].preempt_off.window_max")?;
    let n = (vcpus as usize).min(abi::MAX_VCPUS);
    let per_cpu = p.per_cpu[..n].to_vec();
    if let Some(i) = per_cpu.iter().position(|c| !c.is_consistent()) {
        return Err(bad(
            "designs[].preempt_off.per_cpu",
            i as u64,
            "p50 <= p99 <= max, all 0 without windows",
        ));
    }
    let windows: u64 = per_cpu
        .iter()
        .map(|c| c.windows)
        .fold(0, u64::saturating_add);
    if windows != p.window_max.count || per_cpu.iter().any(|c| c.max > p.window_max.max) {
        return Err(bad(
            "designs[].preempt_off.window_max",
            p.window_max.count,
            "the per-vCPU windows merged",
        ));
    }
    let attributed = p
        .causes
        .iter()
        .map(|c| c.windows)
        .fold(0, u64::saturating_add);
    if attributed > windows || p.causes.iter().any(|c| c.max > p.window_max.max) {
        return Err(bad(
            "designs[].preempt_off.causes",
            attributed,
            "at most the windows, none longer than the longest",
        ));
    }
    if p.enabled == 1 && p.window_cycles == 0 {
        return Err(bad("designs[].preempt_off.window_cycles", 0, "above 0"));
    }
    let excl_steal = excl_steal_report(p, &per_cpu)?;
    Ok(PreemptOffReport {
        enabled: p.enabled == 1,
        window_cycles: p.window_cycles,
        sections: p.sections,
        unmatched: p.unmatched,
        window_max: Box::new(p.window_max),
        causes: p.causes,
        per_cpu,
        excl_steal,
    })
}

/// Validates the steal-excluded figures against the raw ones (`raw`: the
/// validated per-vCPU entries): all zero when steal was not tracked; else
/// the same windows per vCPU, each figure at most its raw twin, and the
/// histogram the per-vCPU windows merged.
fn excl_steal_report(
    p: &abi::PreemptOffResults,
    raw: &[abi::PreemptOffCpu],
) -> Result<Option<ExclSteal>, FieldError> {
    let bad = |field, found: u64, expected| FieldError {
        field,
        found,
        expected,
    };
    if p.steal_tracked > 1 || (p.steal_tracked == 1 && p.enabled == 0) {
        return Err(bad(
            "designs[].preempt_off.steal_tracked",
            p.steal_tracked.into(),
            "0, or 1 with the tracer on",
        ));
    }
    let h = &p.window_max_excl_steal;
    if p.steal_tracked == 0 {
        let zero = abi::PreemptOffCpu::default();
        if h.count != 0 || p.per_cpu_excl_steal.iter().any(|c| *c != zero) {
            return Err(bad(
                "designs[].preempt_off.excl_steal",
                h.count,
                "all zero when steal time was not tracked",
            ));
        }
        return Ok(None);
    }
    h.validate("designs[].preempt_off.window_max_excl_steal")?;
    let per_cpu = p.per_cpu_excl_steal[..raw.len()].to_vec();
    let fits = |(e, r): (&abi::PreemptOffCpu, &abi::PreemptOffCpu)| {
        e.is_consistent()
            && e.windows == r.windows
            && e.p50 <= r.p50
            && e.p99 <= r.p99
            && e.max <= r.max
    };
    if let Some(i) = per_cpu.iter().zip(raw).position(|x| !fits(x)) {
        return Err(bad(
            "designs[].preempt_off.per_cpu_excl_steal",
            i as u64,
            "ordered, the raw entry's windows, each figure at most the raw one",
        ));
    }
    // Each vCPU has its raw entry's windows (above), whose sum is the raw
    // histogram's count (checked before): so must this one's be.
    if h.count != p.window_max.count
        || h.max > p.window_max.max
        || per_cpu.iter().any(|c| c.max > h.max)
    {
        return Err(bad(
            "designs[].preempt_off.window_max_excl_steal",
            h.count,
            "the per-vCPU steal-excluded windows merged, at most the raw maximum",
        ));
    }
    Ok(Some(ExclSteal {
        window_max: Box::new(*h),
        per_cpu,
    }))
}

impl DesignReport {
    /// The column name: the design, plus `+feature` for each PV feature
    /// of the phase that changes the cross-call path (steal time and
    /// `preempted` alone only observe), e.g. `task-local+sched-yield`.
    pub fn label(&self) -> String {
        let shown = self.pv & !(abi::pv::STEAL_TIME | abi::pv::PREEMPTED);
        if shown == 0 {
            self.design.name().to_string()
        } else {
            format!("{}+{}", self.design.name(), crate::pv::feature_names(shown))
        }
    }
}

pub(crate) fn design_report(
    d: &DesignResults,
    expected: Design,
    expected_pv: u32,
    index: usize,
    vcpus: u32,
) -> Result<DesignReport, FieldError> {
    let field = |name| FieldError {
        field: name,
        found: 0,
        expected: "",
    };
    if d.valid != 1 {
        return Err(FieldError {
            found: d.valid.into(),
            expected: "1 (results written)",
            ..field("designs[].valid")
        });
    }
    if d.design != expected as u32 {
        return Err(FieldError {
            found: d.design.into(),
            expected: "the design run in this slot",
            ..field("designs[].design")
        });
    }
    // Steal time is run-wide and registered wherever KVM offers it, asked
    // for or not (the VMM decides from KVM's CPUID).
    let beyond_steal = |pv: u32| pv & !abi::pv::STEAL_TIME;
    if beyond_steal(d.pv) != beyond_steal(expected_pv) || d.pv_kvm & !d.pv != 0 {
        return Err(FieldError {
            found: d.pv.into(),
            expected: "the PV features of this slot (pv_kvm a subset)",
            ..field("designs[].pv")
        });
    }
    let pv = &d.pv_counts;
    if pv.yields_effective > pv.yields
        || pv.deferred_not_first > pv.deferred_runs
        || pv.preempted_seen_kvm > pv.waits_on_preempted
        || pv.preempted_seen_ipivirt > pv.waits_on_preempted
    {
        return Err(FieldError {
            found: pv.yields_effective,
            expected: "effective yields <= yields, sightings <= waits on preempted",
            ..field("designs[].pv_yields_effective")
        });
    }
    if u64::from(d.shape.issuers) + u64::from(d.shape.hogs) > d.counts.tasks_created {
        return Err(FieldError {
            found: u64::from(d.shape.issuers) + u64::from(d.shape.hogs),
            expected: "issuers + hogs <= the tasks the phase created",
            ..field("designs[].shape")
        });
    }
    d.call_latency.validate("designs[].call_latency")?;
    d.sched_latency.validate("designs[].sched_latency")?;
    let e = &d.phase_end;
    if !(abi::phase_status::QUIESCED..=abi::phase_status::NOT_RUN).contains(&e.status) {
        return Err(FieldError {
            found: e.status.into(),
            expected: "a phase status (1 quiesced, 2 stalled, 3 not run)",
            ..field("designs[].phase_end.status")
        });
    }
    let m = &d.memory;
    if m.hook_failures > m.hook_tasks {
        return Err(FieldError {
            found: m.hook_failures,
            expected: "hook failures <= hook tasks",
            ..field("designs[].memory.hook_failures")
        });
    }
    let recorded = (e.stalled_tasks as usize).min(abi::STALL_RECORDS);
    let phase_end = PhaseEndReport {
        status: e.status,
        stalled_tasks: e.stalled_tasks,
        undrained_vcpus: e.undrained_vcpus,
        first_undrained: (e.first_undrained != u32::MAX).then_some(e.first_undrained),
        quiesce_cycles: e.quiesce_cycles,
        bound_cycles: e.bound_cycles,
        stalled: e.stalled[..recorded]
            .iter()
            .filter(|t| t.id != 0)
            .copied()
            .collect(),
    };
    d.probe_split
        .arrival
        .validate("designs[].probe_split.arrival")?;
    d.probe_split
        .dispatch
        .validate("designs[].probe_split.dispatch")?;
    let preempt_off = preempt_off_report(&d.preempt_off, vcpus)?;
    let logged = d.counts.violations.min(8) as usize;
    let log = d.violation_log[..logged].to_vec();
    if log
        .iter()
        .any(|v| !(abi::violation::NOT_RUN..=abi::violation::LAST).contains(&v.kind))
    {
        return Err(FieldError {
            found: index as u64,
            expected: "known violation kinds",
            ..field("designs[].violation_log")
        });
    }
    Ok(DesignReport {
        design: expected,
        pv: d.pv,
        pv_kvm: d.pv_kvm,
        counts: d.counts,
        pv_counts: d.pv_counts,
        first_violation_cycles: (d.first_violation_cycles != u64::MAX)
            .then_some(d.first_violation_cycles),
        task_create_mean_cycles: d
            .task_create_cycles
            .checked_div(d.counts.tasks_created)
            .unwrap_or(0),
        phase_cycles: d.phase_cycles,
        shape: d.shape,
        call_latency: Box::new(d.call_latency),
        sched_latency: Box::new(d.sched_latency),
        violation_log: log,
        phase_end,
        memory: d.memory,
        preempt_off,
        probe_arrival: Box::new(d.probe_split.arrival),
        probe_dispatch: Box::new(d.probe_split.dispatch),
        hotplug: d.hotplug,
    })
}
