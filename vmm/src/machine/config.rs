//! [`MachineConfig`]: everything one guest run needs to know, and its
//! defaults (the library's; [`crate::Scenario::new`] has the CLI's).

use std::path::PathBuf;
use std::time::Duration;

use abi::{pv, Design, TestHook, Workload};

use crate::console::ConsoleMode;
use crate::guest_mode::GuestMode;
use crate::inject::InjectConfig;

/// The default KVM device.
pub const DEFAULT_KVM_PATH: &str = "/dev/kvm";

/// The workload's time per design when none is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(2);

/// Everything one guest run needs to know.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Seed for the guest's random choices.
    pub seed: u64,
    /// Watchdog for the whole run.
    pub timeout: Duration,
    /// KVM device node (the `IPIVIRT_KVM_PATH` variable overrides it in the CLI).
    pub kvm_path: PathBuf,
    /// Where the guest console goes.
    pub console: ConsoleMode,
    /// Fault injection into the guest (tests).
    pub test_hook: TestHook,
    /// vCPU the hook acts on.
    pub test_hook_vcpu: u32,
    /// What the guest runs after boot.
    pub workload: Workload,
    /// How long the workload runs.
    pub duration: Duration,
    /// IPI-issuing tasks on each initiator vCPU (`shootdown`, `torture`).
    pub issuers_per_cpu: u32,
    /// CPU-bound tasks that send no IPI on every vCPU (`shootdown`,
    /// `torture` phases; the `hogs` workload's tasks).
    pub hogs_per_cpu: u32,
    /// The vCPUs that run the issuers (None: every vCPU, and the issuers
    /// may migrate; a set pins them to their vCPU).
    pub initiators: Option<Vec<u32>>,
    /// The named scenario this config was made from (`series`), if any:
    /// the report names it.
    pub scenario_name: Option<String>,
    /// Forced migration: chance per scheduler tick that the running task
    /// is moved to another vCPU (0..=1).
    pub forced_migration: f64,
    /// Scheduler tick in Hz (None: the guest picks from its calibration).
    pub tick_hz: Option<u32>,
    /// Latency probe period (None: the guest picks from its calibration).
    pub probe_period: Option<Duration>,
    /// Host-side placement, preemption and migration (default: none).
    pub inject: InjectConfig,
    /// Wait-mask designs to compare, in run order (ping and shootdown).
    pub designs: Vec<Design>,
    /// Guest-side forced preemption at each spin of a preemptible wait (0..=1).
    pub guest_preempt_prob: f64,
    /// Injected allocation failures (0..=1): alloc-in-path's per-call mask
    /// and task-local's per-task mask at a design phase's task creations.
    pub alloc_fail_prob: f64,
    /// How long a design phase may take past its end to quiesce.
    pub quiesce_bound: Duration,
    /// csd-lock-wait watchdog threshold.
    pub csd_watchdog: Duration,
    /// Relative weights of the torture primitives (index: [`abi::torture`];
    /// all zero: equal).
    pub torture_weights: [u8; abi::torture::COUNT],
    /// Torture's own CPU hotplug (`--torture-onoff`): every this long a
    /// guest task takes a random vCPU offline and back (None: off).
    pub torture_onoff: Option<Duration>,
    /// [`abi::pv`] features for the whole run.
    pub pv: u32,
    /// [`abi::pv`] features of each design phase (index as `designs`;
    /// missing entries: none), on top of `pv`.
    pub design_pv: Vec<u32>,
    /// The guest kernel mode (None: `IPIVIRT_GUEST_MODE`, else auto).
    pub guest_mode: Option<GuestMode>,
    /// The preempt-off tracer's window (`--window`).
    pub preempt_window: Duration,
    /// Run without the preempt-off tracer (to measure its cost).
    pub preempt_trace_off: bool,
    /// The test hook's argument (`pin-preempt`: microseconds; 0: default).
    pub test_hook_arg: u32,
}

/// Why a run's design columns cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ColumnError {
    /// More columns than the guest's results page has room for.
    #[error("{0} design columns: at most {max} per run", max = abi::MAX_DESIGNS)]
    TooMany(usize),
    /// The same design with the same PV features twice.
    #[error("design column '{0}' appears twice (a `+pv` column needs --pv)")]
    Twice(String),
}

impl MachineConfig {
    /// The design column labels (`task-local+sched-yield`): the design,
    /// plus the PV features that change its path.
    pub fn column_labels(&self) -> Vec<String> {
        self.ran_designs()
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let shown = self.phase_pv(i) & !(pv::STEAL_TIME | pv::PREEMPTED);
                if shown == 0 {
                    d.name().to_string()
                } else {
                    format!("{}+{}", d.name(), crate::pv::feature_names(shown))
                }
            })
            .collect()
    }

    /// Refuses design columns the guest cannot run: too many, or one
    /// twice (only where the workload runs per design).
    pub fn check_columns(&self) -> Result<(), ColumnError> {
        if !self.workload.per_design() {
            return Ok(());
        }
        if self.designs.len() > abi::MAX_DESIGNS {
            return Err(ColumnError::TooMany(self.designs.len()));
        }
        let labels = self.column_labels();
        for (i, l) in labels.iter().enumerate() {
            if (0..i)
                .any(|j| self.designs[j] == self.designs[i] && self.phase_pv(j) == self.phase_pv(i))
            {
                return Err(ColumnError::Twice(l.clone()));
            }
        }
        Ok(())
    }

    /// The designs whose results the guest writes (none unless the
    /// workload runs per design).
    pub fn ran_designs(&self) -> Vec<Design> {
        if self.workload.per_design() {
            self.designs
                .iter()
                .copied()
                .take(abi::MAX_DESIGNS)
                .collect()
        } else {
            Vec::new()
        }
    }

    /// The PV features of phase `i` (run-wide ones included).
    pub fn phase_pv(&self, i: usize) -> u32 {
        self.pv | self.design_pv.get(i).copied().unwrap_or(0)
    }

    /// The PV features asked for (`pv` and the per-phase ones).
    pub fn requested_pv(&self) -> u32 {
        self.design_pv.iter().fold(self.pv, |a, b| a | b)
    }

    /// Every PV feature the run uses (the spin workload always reads
    /// steal time).
    pub fn all_pv(&self) -> u32 {
        if self.workload == Workload::Spin {
            self.requested_pv() | pv::STEAL_TIME
        } else {
            self.requested_pv()
        }
    }
}

impl MachineConfig {
    /// A config for `vcpus` vCPUs with defaults for the rest.
    pub fn new(vcpus: u32) -> Self {
        MachineConfig {
            vcpus,
            seed: 1,
            timeout: Duration::from_secs(120),
            kvm_path: PathBuf::from(DEFAULT_KVM_PATH),
            console: ConsoleMode::Capture,
            test_hook: TestHook::None,
            test_hook_vcpu: 0,
            workload: Workload::None,
            duration: DEFAULT_DURATION,
            issuers_per_cpu: 1,
            hogs_per_cpu: 1,
            initiators: None,
            scenario_name: None,
            forced_migration: 0.0,
            tick_hz: None,
            probe_period: None,
            designs: vec![
                Design::Upstream,
                Design::TaskLocal,
                Design::Stack,
                Design::AllocInPath,
            ],
            guest_preempt_prob: 0.0,
            alloc_fail_prob: 0.0,
            quiesce_bound: Duration::from_micros(abi::DEFAULT_QUIESCE_BOUND_US),
            csd_watchdog: Duration::from_micros(u64::from(abi::DEFAULT_CSD_WATCHDOG_US)),
            torture_weights: [0; abi::torture::COUNT],
            torture_onoff: None,
            inject: InjectConfig::default(),
            pv: 0,
            design_pv: Vec::new(),
            guest_mode: None,
            preempt_window: Duration::from_micros(u64::from(abi::DEFAULT_PREEMPT_WINDOW_US)),
            preempt_trace_off: false,
            test_hook_arg: 0,
        }
    }
}
