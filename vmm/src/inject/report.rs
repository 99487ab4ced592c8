//! What host-side injection did in a run, and what host and guest saw.

use std::collections::BTreeMap;
use std::time::Duration;

use super::trace::{Event, EventKind};
use super::PreemptMode;

/// Host-side figures of one vCPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VcpuHostFigures {
    /// Kernel thread id of the vCPU thread.
    pub tid: i32,
    /// Host CPU it was placed on first.
    pub host_cpu: Option<usize>,
    /// Steal time the guest read from KVM during the workload, in ns.
    pub steal_ns: u64,
    /// Times the guest saw the steal-time `preempted` flag set.
    pub preempted_seen: u64,
    /// Largest gap between consecutive TSC reads in the guest's spin loop.
    pub max_gap_cycles: u64,
    /// `spin` with PV `preempted`: polls that saw the next vCPU preempted
    /// in ipivirt's PV state.
    pub pv_neighbour_preempted: u64,
    /// ... and its transitions back to running.
    pub pv_neighbour_resumed: u64,
    /// Time the vCPU thread waited on a host run queue during injection
    /// (schedstat run_delay), in ns: what KVM turns into steal time.
    pub run_delay_ns: Option<u64>,
    /// Pauses the thread served and the time it was held.
    pub pauses: u64,
    /// Total time held by pauses, in ns.
    pub paused_ns: u64,
    /// KVM's own statistics for the vCPU (see [`super::kvmstats::WANTED`]).
    pub kvm: BTreeMap<String, u64>,
}

/// What host-side injection did in a run, and what the host and guest saw.
#[derive(Debug, Clone, Default)]
pub struct HostReport {
    /// Whether an injector ran.
    pub active: bool,
    /// Preemption mode used.
    pub mode: Option<PreemptMode>,
    /// Why it is not the mode requested.
    pub fallback: Option<String>,
    /// Host CPUs of the placement.
    pub host_cpus: Vec<usize>,
    /// Preemptions injected (antagonist bursts or pauses).
    pub preemptions_injected: u64,
    /// Their total length, in ns.
    pub preempt_ns_injected: u64,
    /// vCPU thread moves injected (each is one sched_setaffinity).
    pub migrations_injected: u64,
    /// Planned moves folded into later ones because the migrator was late
    /// (a storm faster than sched_setaffinity): the VMM never falls behind.
    pub migrations_coalesced: u64,
    /// CPU hotplug cycles requested (offline, then online).
    pub hotplug_events: u64,
    /// Of those, cycles whose offline request the guest had acted on when
    /// the online request went out.
    pub hotplug_acked: u64,
    /// Of those, cycles the guest refused.
    pub hotplug_refused: u64,
    /// Planned preemptions dropped because they were long overdue when
    /// the injector got to them (the VMM was stalled): not replayed.
    pub preemptions_skipped: u64,
    /// Measurements the run could not make, and why (e.g. out of file
    /// descriptors): the report's blanks explained.
    pub warnings: Vec<String>,
    /// Events not kept in the timeline (beyond [`super::TIMELINE_LIMIT`]).
    pub timeline_dropped: u64,
    /// Injector errors (first few).
    pub errors: Vec<String>,
    /// Every vCPU thread's affinity was restored at the end.
    pub affinity_restored: bool,
    /// How long injection ran.
    pub elapsed: Duration,
    /// The timeline, sorted by time.
    pub timeline: Vec<Event>,
    /// When injection started: the time base of `timeline` and `phases`.
    pub started: Option<std::time::Instant>,
    /// The guest's design phases, on the timeline's time base.
    pub phases: Vec<super::trace::PhaseSlice>,
    /// Per-vCPU figures.
    pub vcpus: Vec<VcpuHostFigures>,
    /// The guest registered KVM's steal-time area (every run with a
    /// workload where KVM offers it), so `vcpus[].steal_ns` is measured.
    pub steal_time: bool,
    /// Why the `--trace` file could not be written (None: written, or
    /// none asked for). The run's results stand.
    pub trace_error: Option<String>,
}

impl HostReport {
    /// Migrations in the timeline.
    pub fn timeline_migrations(&self) -> usize {
        self.timeline
            .iter()
            .filter(|e| e.kind == EventKind::Migrate)
            .count()
    }

    /// The `host` object of the JSON report (interface contract), as text.
    pub fn to_json(&self, steal_time: bool) -> String {
        let steal: Vec<String> = self.vcpus.iter().map(|v| v.steal_ns.to_string()).collect();
        let seen = self.vcpus.iter().any(|v| v.preempted_seen > 0);
        format!(
            "{{\"preemptions_injected\": {}, \"migrations_injected\": {}, \"steal_ns\": [{}], \
             \"pv\": {{\"steal_time\": {steal_time}, \"preempted_flag\": {seen}, \"kvm_hypercalls\": null}}, \
             \"mode\": \"{}\"}}",
            self.preemptions_injected,
            self.migrations_injected,
            steal.join(", "),
            self.mode.unwrap_or(PreemptMode::None).name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_host_report_json_names_contract_fields() {
        let r = HostReport {
            preemptions_injected: 3,
            vcpus: vec![VcpuHostFigures {
                steal_ns: 7,
                ..Default::default()
            }],
            ..Default::default()
        };
        let j = r.to_json(true);
        assert!(j.contains("\"preemptions_injected\": 3"), "{j}");
        assert!(j.contains("\"steal_ns\": [7]"), "{j}");
        assert!(j.contains("\"preempted_flag\": false"), "{j}");
    }
}
