//! The per-vCPU host figures of the JSON report: everything the text's
//! host table shows, with null for what the run did not measure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{cycles_to_ns, HostInfo, PvInfo};
use crate::inject::{HostReport, PreemptMode, VcpuHostFigures};
use crate::machine::MachineConfig;
use crate::report::Measured;

/// One vCPU's row of the host table (`host.vcpus[i]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VcpuInfo {
    /// Kernel thread id of the vCPU thread.
    pub tid: i32,
    /// Host CPU it was placed on first (null: not placed).
    pub host_cpu: Option<usize>,
    /// Steal time the guest read, in ns (null: steal time not registered).
    pub steal_ns: Option<u64>,
    /// Host run-queue wait of the thread (schedstat run_delay), in ns
    /// (null: unreadable).
    pub run_delay_ns: Option<u64>,
    /// Pauses served.
    pub pauses: u64,
    /// Time held by pauses, in ns.
    pub paused_ns: u64,
    /// Largest gap between the guest's TSC reads, in ns (null: only
    /// `spin` measures it).
    pub max_gap_ns: Option<u64>,
    /// Times the guest saw the steal-time `preempted` flag set.
    pub preempted_seen: u64,
    /// KVM's own statistics (null: its stats fd could not be opened).
    pub kvm: Option<BTreeMap<String, u64>>,
}

impl HostInfo {
    /// The host figures of a run of `config` with the injectors' report
    /// `h` (TSC at `khz`), its PV figures `pv` and the VMM's own stalls.
    /// Also what an interrupted run's partial text renders from.
    pub fn new(
        config: &MachineConfig,
        h: &HostReport,
        khz: u64,
        pv: PvInfo,
        vmm_stalls: crate::stall::StallInfo,
    ) -> Self {
        let measured = Measured::of(config, h);
        let mode = if h.active {
            h.mode.unwrap_or(PreemptMode::None)
        } else {
            config.inject.preempt
        };
        let steal_ns = measured.steal_time.then(|| {
            let mut ns: Vec<u64> = h.vcpus.iter().map(|v| v.steal_ns).collect();
            ns.resize(config.vcpus as usize, 0);
            ns
        });
        HostInfo {
            preemptions_injected: h.preemptions_injected,
            migrations_injected: h.migrations_injected,
            steal_ns,
            pv,
            mode: mode.name().to_string(),
            migrations_coalesced: h.migrations_coalesced,
            trace_error: h.trace_error.clone(),
            preemptions_skipped: h.preemptions_skipped,
            hotplug_events: h.hotplug_events,
            hotplug_acked: h.hotplug_acked,
            hotplug_refused: h.hotplug_refused,
            vmm_stalls,
            warnings: h.warnings.clone(),
            preempt_ns_injected: h.preempt_ns_injected,
            injection_s: h.elapsed.as_secs_f64(),
            affinity_restored: h.active.then_some(h.affinity_restored),
            fallback: h.fallback.clone(),
            injector_errors: h.errors.clone(),
            vcpus: vcpu_rows(&h.vcpus, khz, measured),
        }
    }

    /// Whether injectors ran (placement, preemption or migration): the
    /// JSON says so by a non-null `affinity_restored`.
    pub fn injected(&self) -> bool {
        self.affinity_restored.is_some()
    }
}

/// The rows of `vcpus` for the JSON.
pub fn vcpu_rows(vcpus: &[VcpuHostFigures], tsc_khz: u64, measured: Measured) -> Vec<VcpuInfo> {
    vcpus
        .iter()
        .map(|v| VcpuInfo {
            tid: v.tid,
            host_cpu: v.host_cpu,
            steal_ns: measured.steal_time.then_some(v.steal_ns),
            run_delay_ns: v.run_delay_ns,
            pauses: v.pauses,
            paused_ns: v.paused_ns,
            max_gap_ns: (measured.max_gap && tsc_khz > 0)
                .then(|| cycles_to_ns(v.max_gap_cycles, tsc_khz)),
            preempted_seen: v.preempted_seen,
            kvm: (!v.kvm.is_empty()).then(|| v.kvm.clone()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_unmeasured_columns_are_null() {
        let v = VcpuHostFigures {
            tid: 7,
            steal_ns: 0,
            max_gap_cycles: 2000,
            ..Default::default()
        };
        let none = Measured {
            steal_time: false,
            max_gap: false,
        };
        let r = &vcpu_rows(std::slice::from_ref(&v), 1_000_000, none)[0];
        assert_eq!(
            (r.steal_ns, r.max_gap_ns, r.kvm.as_ref()),
            (None, None, None)
        );
        let r = &vcpu_rows(&[v], 1_000_000, Measured::ALL)[0];
        assert_eq!((r.steal_ns, r.max_gap_ns), (Some(0), Some(2000)));
    }
}
