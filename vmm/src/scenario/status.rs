//! Whether a run finished, and the JSON of one that did not: a failed or
//! interrupted run writes this in place of the report, so that the path
//! never keeps an earlier run's successful JSON.

use serde::{Deserialize, Serialize};

use super::{HotplugInfo, PreemptInfo, ScenarioInfo};
use crate::inject::{HostReport, PreemptMode};
use crate::machine::MachineConfig;
use crate::Error;

/// How far a run (or sweep) got.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It finished; every figure is measured.
    #[default]
    Ok,
    /// A signal stopped it; what is there is real, the rest is missing.
    Partial,
    /// It failed (guest crash, watchdog, host failure): no figures.
    Failed,
}

impl Status {
    /// The status of a run that ended with `e`.
    pub fn of_error(e: &Error) -> Self {
        match e {
            Error::Interrupted(_) => Status::Partial,
            _ => Status::Failed,
        }
    }
}

impl ScenarioInfo {
    /// The scenario of `config` as run: placement and preemption mode as
    /// the injectors applied them when they ran (`host.active`), as asked
    /// otherwise; `designs` the column labels.
    pub fn new(config: &MachineConfig, host: &HostReport, designs: Vec<String>) -> Self {
        let mode = if host.active {
            host.mode.unwrap_or(PreemptMode::None)
        } else {
            config.inject.preempt
        };
        let mut pv = Vec::new();
        abi::pv::names(config.all_pv() & abi::pv::ALL, |n| pv.push(n.to_string()));
        ScenarioInfo {
            vcpus: config.vcpus,
            host_cpus: if host.active {
                host.host_cpus.clone()
            } else {
                config.inject.host_cpus.clone().unwrap_or_default()
            },
            workload: super::workload_name(config.workload).to_string(),
            duration_s: config.duration.as_secs_f64(),
            tasks_per_cpu: config.issuers_per_cpu,
            name: config.scenario_name.clone(),
            shape: super::ShapeInfo {
                issuers_per_cpu: config.issuers_per_cpu,
                hogs_per_cpu: config.hogs_per_cpu,
                initiators: config.initiators.clone(),
                placement: config.inject.placement.clone(),
                preempt_host_cpus: config.inject.preempt_host_cpus.clone(),
                preempt_vcpus: config.inject.preempt_vcpus.clone(),
            },
            seed: config.seed,
            preempt: PreemptInfo {
                mode: mode.name().to_string(),
                len_us: config.inject.preempt_len.as_micros() as u64,
                every_us: config.inject.preempt_every.as_micros() as u64,
            },
            migrate_every_us: config
                .inject
                .migrate_every
                .map_or(0, |d| d.as_micros() as u64),
            guest_preempt_prob: config.guest_preempt_prob,
            pv,
            designs,
            alloc_fail_prob: config.alloc_fail_prob,
            forced_migration: config.forced_migration,
            hotplug: HotplugInfo {
                every_us: config
                    .inject
                    .hotplug_every
                    .map_or(0, |d| d.as_micros() as u64),
                len_us: config.inject.hotplug_len.as_micros() as u64,
                torture_onoff_us: config.torture_onoff.map_or(0, |d| d.as_micros() as u64),
            },
        }
    }
}

/// The `--json` report of a run that did not finish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedRun {
    /// ipivirt's version.
    pub version: String,
    /// `partial` (interrupted) or `failed`.
    pub status: Status,
    /// What happened, as the error message says it.
    pub reason: String,
    /// The process exit code.
    pub exit_code: u8,
    /// Where the report comes from.
    pub provenance: crate::provenance::Provenance,
    /// The scenario as asked (placement as applied if injection started).
    pub scenario: ScenarioInfo,
    /// VM creation to the stop, in seconds (null: unknown).
    pub elapsed_s: Option<f64>,
    /// vCPUs online at the stop (null: unknown).
    pub online: Option<u32>,
    /// VM creation to every vCPU online, in ms (null: boot did not finish
    /// or is unknown).
    pub boot_ms: Option<f64>,
}

impl FailedRun {
    /// The report of a run of `config` that ended with `e`; `provenance`
    /// as taken when it started.
    pub fn new(
        config: &MachineConfig,
        e: &Error,
        provenance: crate::provenance::Provenance,
    ) -> Self {
        let partial = match e {
            Error::Interrupted(p) => Some(p),
            _ => None,
        };
        let host = partial.map_or_else(HostReport::default, |p| p.host.clone());
        FailedRun {
            version: env!("CARGO_PKG_VERSION").to_string(),
            status: Status::of_error(e),
            reason: e.to_string(),
            exit_code: e.exit_code(),
            provenance: provenance.finish(),
            scenario: ScenarioInfo::new(config, &host, config.column_labels()),
            elapsed_s: partial.map(|p| p.elapsed.as_secs_f64()),
            online: partial.map(|p| p.online),
            boot_ms: partial.and_then(|p| p.boot_time.map(|t| t.as_secs_f64() * 1e3)),
        }
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a failed-run report always serialises")
    }
}
