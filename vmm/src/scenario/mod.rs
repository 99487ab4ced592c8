//! The library API of an experiment: a [`Scenario`] (built with setters,
//! defaults as the CLI's) runs once with [`Scenario::run`] and returns a
//! [`Report`], whose serde serialisation is the `--json` report of the
//! interface contract. The CLI, the tests and the benches all go through
//! here; it wraps [`MachineConfig`] and [`crate::boot`].
//!
//! ```
//! use std::time::Duration;
//! use ipivirt_vmm::{Design, PreemptMode, Scenario, Workload};
//!
//! # if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() { return; }
//! let report = Scenario::new()
//!     .vcpus(2)
//!     .workload(Workload::Shootdown)
//!     .designs(&[Design::Upstream, Design::TaskLocal])
//!     .duration(Duration::from_millis(200))
//!     .preempt(PreemptMode::None)
//!     .migrate_every(None)
//!     .timeout(Duration::from_secs(120))
//!     .run()
//!     .expect("a KVM host");
//! assert_eq!(report.designs.len(), 2);
//! for d in &report.designs {
//!     println!("{}: {} calls, p99 {} ns", d.design, d.calls, d.call_latency_ns.p99);
//! }
//! println!("{}", serde_json::to_string_pretty(&report).unwrap());
//! ```

use std::path::PathBuf;
use std::time::Duration;

use abi::{Design, Workload};
use serde::{Deserialize, Serialize};

use crate::inject::{self, PreemptMode};
use crate::machine::{BootReport, MachineConfig};
use crate::{ConsoleMode, Error};

mod columns;
mod design;
mod guest;
mod host;
mod json;
mod preset;
mod status;
mod validate;
pub use columns::{parse_columns, phases, set_columns, ColumnPv, DesignColumn};
pub use design::{
    computed_at_8192, violation_name, Computed8192, DesignSummary, MemoryJson, PhaseEndJson,
    ShapeCounts, StalledTaskJson, Violation,
};
pub use guest::{GuestInfo, GuestVcpu, Hog, TortureCount};
pub use host::VcpuInfo;
pub use json::{
    cycles_to_ns, HostInfo, HotplugInfo, Latency, Platform, PreemptInfo, PreemptOff,
    PreemptOffCause, PreemptOffCpu, PreemptOffExclSteal, PvInfo, ScenarioInfo, ShapeInfo,
};
pub use preset::{header as scenario_header, Preset, ScenarioName};
pub use status::{FailedRun, Status};
pub use validate::{ScenarioError, MAX_TASKS_PER_CPU, MIN_DURATION, MIN_TIMEOUT};

/// One experiment: the guest's workload, the designs compared, and the
/// host-side injection. Every setter consumes and returns the scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    config: MachineConfig,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario::new()
    }
}

impl Scenario {
    /// The CLI's default scenario: 4 vCPUs on every host CPU the process may
    /// use, the four safe designs, `shootdown` for 2 s per design, 2 tasks
    /// per vCPU, antagonist preemption (pause where SCHED_FIFO is refused)
    /// of 200 us every 2 ms, a migration every 5 ms, seed 1, 120 s timeout.
    pub fn new() -> Self {
        let mut config = MachineConfig::new(4);
        config.workload = Workload::Shootdown;
        config.inject = inject::InjectConfig {
            host_cpus: inject::placement::process_cpus().ok(),
            preempt: PreemptMode::Antagonist,
            migrate_every: Some(Duration::from_millis(5)),
            ..Default::default()
        };
        Scenario { config }
    }

    /// A scenario running exactly `config` (the CLI builds it this way).
    pub fn from_config(config: MachineConfig) -> Self {
        Scenario { config }
    }

    /// The machine configuration the run uses.
    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// Mutable access to the configuration, for the settings without a
    /// setter (tick, probe period, csd watchdog, test hooks).
    pub fn config_mut(&mut self) -> &mut MachineConfig {
        &mut self.config
    }

    /// Guest CPUs (1..=1024, at most what the host's KVM allows).
    pub fn vcpus(mut self, n: u32) -> Self {
        self.config.vcpus = n;
        self
    }

    /// Host CPUs the vCPU threads are placed on (`vcpus : len` is the
    /// overcommit ratio).
    pub fn host_cpus(mut self, cpus: &[usize]) -> Self {
        self.config.inject.host_cpus = Some(cpus.to_vec());
        self
    }

    /// Wait-mask designs to compare, in run order.
    pub fn designs(mut self, designs: &[Design]) -> Self {
        self.config.designs = designs.to_vec();
        self.config.design_pv.clear();
        self
    }

    /// Design phases with their own [`abi::pv`] features (e.g.
    /// `(Design::TaskLocal, pv::SCHED_YIELD)` is `task-local+sched-yield`),
    /// in run order.
    pub fn variants(mut self, variants: &[(Design, u32)]) -> Self {
        self.config.designs = variants.iter().map(|v| v.0).collect();
        self.config.design_pv = variants.iter().map(|v| v.1).collect();
        self
    }

    /// [`abi::pv`] features for every phase (steal time and `preempted`
    /// are run-wide by nature).
    pub fn pv(mut self, features: u32) -> Self {
        self.config.pv = features;
        self
    }

    /// What the guest runs.
    pub fn workload(mut self, workload: Workload) -> Self {
        self.config.workload = workload;
        self
    }

    /// Measured time (per design for `ping` and `shootdown`).
    pub fn duration(mut self, d: Duration) -> Self {
        self.config.duration = d;
        self
    }

    /// IPI-issuing tasks on each initiator vCPU (`shootdown`, `torture`;
    /// default 1).
    pub fn issuers_per_cpu(mut self, n: u32) -> Self {
        self.config.issuers_per_cpu = n;
        self
    }

    /// CPU-bound tasks that send no IPI on every vCPU (`shootdown`,
    /// `torture`, and the `hogs` workload's tasks; default 1): what a
    /// preemptible wait lets run and a pinned one holds off.
    pub fn hogs_per_cpu(mut self, n: u32) -> Self {
        self.config.hogs_per_cpu = n;
        self
    }

    /// The vCPUs that run the issuers (default: every vCPU). A set pins
    /// each issuer to its vCPU, so the other vCPUs are only targets.
    pub fn initiators(mut self, vcpus: &[u32]) -> Self {
        self.config.initiators = Some(vcpus.to_vec());
        self
    }

    /// The host CPU of each vCPU, vCPU 0 first (default: spread round robin
    /// over the host CPUs).
    pub fn placement(mut self, host_cpus: &[usize]) -> Self {
        self.config.inject.placement = Some(host_cpus.to_vec());
        self
    }

    /// The host CPUs preemption is injected on (default: all of the run's).
    pub fn preempt_host_cpus(mut self, host_cpus: &[usize]) -> Self {
        self.config.inject.preempt_host_cpus = Some(host_cpus.to_vec());
        self
    }

    /// The vCPUs `pause` holds (default: every vCPU; `pause` only).
    pub fn preempt_vcpus(mut self, vcpus: &[u32]) -> Self {
        self.config.inject.preempt_vcpus = Some(vcpus.to_vec());
        self
    }

    /// Host-side preemption mode.
    pub fn preempt(mut self, mode: PreemptMode) -> Self {
        self.config.inject.preempt = mode;
        self
    }

    /// Whether an `Antagonist` preemption must be one: refused where
    /// SCHED_FIFO is not permitted rather than falling back to `Pause`
    /// (the CLI's `--preempt antagonist`; default false).
    pub fn antagonist_required(mut self, required: bool) -> Self {
        self.config.inject.antagonist_required = required;
        self
    }

    /// Length of one injected preemption.
    pub fn preempt_len(mut self, d: Duration) -> Self {
        self.config.inject.preempt_len = d;
        self
    }

    /// Mean gap between preemptions per host CPU.
    pub fn preempt_every(mut self, d: Duration) -> Self {
        self.config.inject.preempt_every = d;
        self
    }

    /// Mean gap between vCPU thread migrations (`None` or zero: none).
    pub fn migrate_every(mut self, d: Option<Duration>) -> Self {
        self.config.inject.migrate_every = d.filter(|d| !d.is_zero());
        self
    }

    /// CPU hotplug from the host: a vCPU offline every `every` (`None` or
    /// zero: none) for `len` each (docs/hotplug.md).
    pub fn hotplug(mut self, every: Option<Duration>, len: Duration) -> Self {
        self.config.inject.hotplug_every = every.filter(|d| !d.is_zero());
        self.config.inject.hotplug_len = len;
        self
    }

    /// Guest-side forced preemption at each spin of a preemptible wait.
    pub fn guest_preempt_prob(mut self, p: f64) -> Self {
        self.config.guest_preempt_prob = p;
        self
    }

    /// Injected allocation failures of `alloc-in-path`.
    pub fn alloc_fail_prob(mut self, p: f64) -> Self {
        self.config.alloc_fail_prob = p;
        self
    }

    /// Chance per guest tick that the running task moves to another vCPU.
    pub fn forced_migration(mut self, p: f64) -> Self {
        self.config.forced_migration = p;
        self
    }

    /// Seed of every random choice, host and guest.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }

    /// The guest kernel: [`GuestMode::Auto`](crate::guest_mode::GuestMode::Auto) (the PVM host's native mode
    /// where it is offered, plain elsewhere), `Pvm` or `Plain`. Unset: the
    /// `IPIVIRT_GUEST_MODE` variable, else auto.
    pub fn guest_mode(mut self, mode: crate::guest_mode::GuestMode) -> Self {
        self.config.guest_mode = Some(mode);
        self
    }

    /// Watchdog for the whole run.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.config.timeout = d;
        self
    }

    /// Where the guest console goes (default: captured, not printed).
    pub fn console(mut self, mode: ConsoleMode) -> Self {
        self.config.console = mode;
        self
    }

    /// Chrome trace-event JSON of the injected events.
    pub fn trace(mut self, path: Option<PathBuf>) -> Self {
        self.config.inject.trace = path;
        self
    }

    /// About how long the run takes (boot and calibration excluded): the
    /// workload's duration, once per design where it runs per design, plus
    /// the floor measurement of a `ping` run.
    pub fn expected_duration(&self) -> Duration {
        let c = &self.config;
        let phases = c.ran_designs().len().max(1) as u32;
        let floor = if c.workload == Workload::Ping && c.vcpus > 1 {
            c.duration.min(Duration::from_millis(200))
        } else {
            Duration::ZERO
        };
        match c.workload {
            Workload::None => Duration::ZERO,
            _ => c.duration * phases + floor,
        }
    }

    /// Boots the guest, runs the scenario and returns the report; a
    /// scenario [`Scenario::validate`] refuses does not boot.
    pub fn run(&self) -> Result<Report, Error> {
        self.validate()?;
        let provenance = crate::provenance::Provenance::start();
        let boot = crate::machine::boot(&self.config)?;
        let mut report = Report::new(&self.config, boot);
        report.provenance = provenance.finish();
        report.provenance.guest_mode = report.platform.mode.clone();
        Ok(report)
    }
}

/// Runs `scenario` (the same as [`Scenario::run`]).
pub fn run(scenario: &Scenario) -> Result<Report, Error> {
    scenario.run()
}

/// What a run produced: the `--json` report (interface contract), which
/// the text report renders from alone. The raw guest report (histograms)
/// rides along for the SVG's CDFs and the bootstrap intervals of the
/// summary, and is not serialised.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// ipivirt's version.
    pub version: String,
    /// `ok`: the run finished (violations, if any, are results). Reports
    /// of runs that did not finish are [`FailedRun`]s.
    #[serde(default)]
    pub status: Status,
    /// Why the status is not `ok`, or why the run is not reliable (null
    /// when neither).
    #[serde(default)]
    pub reason: Option<String>,
    /// False when the VMM itself stalled during the run (see
    /// `host.vmm_stalls`): its figures do not compare designs fairly.
    #[serde(default = "yes")]
    pub reliable: bool,
    /// Where the report comes from (command, build, host, load).
    #[serde(default)]
    pub provenance: crate::provenance::Provenance,
    /// The scenario as run.
    pub scenario: ScenarioInfo,
    /// Guest TSC frequency (kHz) as KVM reports it.
    pub tsc_khz: u64,
    /// vCPUs online after boot, as the guest counted them (0 in a report
    /// from before the field).
    #[serde(default)]
    pub online: u32,
    /// From VM creation to every vCPU online, as the VMM measured it, in ms.
    pub boot_ms: f64,
    /// The same, guest-measured from BSP entry, in ms.
    pub guest_boot_ms: f64,
    /// Raw x2APIC IPI ping-pong round trip between vCPUs 0 and 1 (`ping`
    /// and `floor` runs; null otherwise).
    pub floor_latency_ns: Option<Latency>,
    /// The guest's calibration.
    pub platform: Platform,
    /// Host-side injection.
    pub host: HostInfo,
    /// The guest's scheduler figures (probe, counters, tasks).
    #[serde(default)]
    pub guest: GuestInfo,
    /// One entry per design, in run order.
    pub designs: Vec<DesignSummary>,
    /// The answer block: one entry per design against upstream, each ratio
    /// with its spread over the repeats ([`crate::stats`]).
    #[serde(default)]
    pub summary: Vec<crate::stats::SummaryEntry>,
    /// Figures of the summary or the tables to read with care (percentiles
    /// on fewer than 100 samples, repeats left out).
    #[serde(default)]
    pub stats_warnings: Vec<String>,
    /// Every repeat (`--repeat N`; one for a single run): its seed, design
    /// order and designs. The other fields are the first repeat's.
    #[serde(default)]
    pub repeats: Vec<crate::stats::RepeatInfo>,
    /// The guest's report with its histograms (not serialised).
    #[serde(skip)]
    pub raw: Option<Box<BootReport>>,
}

impl Report {
    /// Builds the report of a finished run of `config`.
    pub fn new(config: &MachineConfig, boot: BootReport) -> Self {
        let khz = boot.tsc_khz;
        let g = &boot.guest;
        let h = &boot.host;
        let probe = boot.pv_probe.as_ref();
        let steal_time = probe.map_or(h.steal_time, |p| p.steal_time);
        let used_pv = config.all_pv() & abi::pv::ALL;
        let mechanisms = probe
            .map(|p| {
                (0..abi::pv::NAMES.len())
                    .filter(|i| used_pv & (1 << i) != 0)
                    .map(|i| {
                        (
                            abi::pv::NAMES[i].to_string(),
                            crate::pv::mechanism(1 << i, p).name().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let seen_kvm = h.vcpus.iter().any(|v| v.preempted_seen > 0)
            || g.designs.iter().any(|d| d.pv_counts.preempted_seen_kvm > 0);
        // A guest cost of 0 cycles is one it did not measure.
        let measured = |c: u64| (c != 0).then_some(c);
        let report = Report {
            version: env!("CARGO_PKG_VERSION").to_string(),
            status: Status::Ok,
            reason: boot
                .vmm_stalls
                .stalled()
                .then(|| boot.vmm_stalls.describe()),
            reliable: !boot.vmm_stalls.stalled(),
            provenance: crate::provenance::Provenance::default(),
            scenario: ScenarioInfo::new(config, h, g.designs.iter().map(|d| d.label()).collect()),
            tsc_khz: khz,
            online: boot.online,
            boot_ms: boot.boot_time.as_secs_f64() * 1e3,
            guest_boot_ms: cycles_to_ns(boot.guest_boot_cycles, khz) as f64 / 1e6,
            floor_latency_ns: Latency::from_floor(&g.floor, khz),
            platform: Platform {
                mode: g.mode.to_string(),
                native_error: g.native_error.map(str::to_string),
                cpl0_cycles_per_iter: g.cpl0_cycles_per_kiter as f64 / 1024.0,
                cpl3_cycles_per_iter: g.cpl3_cycles_per_kiter as f64 / 1024.0,
                verdict: g.verdict.split(':').next().unwrap_or("").to_string(),
                tick_hz: g.tick_hz,
                syscall_ns: (g.trap_cycles != 0).then(|| cycles_to_ns(g.trap_cycles, khz)),
                icr_write_ns: (g.icr_cycles != 0).then(|| cycles_to_ns(g.icr_cycles, khz)),
                eoi_write_ns: (g.eoi_cycles != 0).then(|| cycles_to_ns(g.eoi_cycles, khz)),
                // The untraced pair is measured with the traced one, and
                // natively may round to 0 cycles: 0 there is a figure.
                preempt_pair_ns: (g.preempt_pair_traced_cycles != 0)
                    .then(|| cycles_to_ns(g.preempt_pair_cycles, khz)),
                preempt_pair_traced_ns: (g.preempt_pair_traced_cycles != 0)
                    .then(|| cycles_to_ns(g.preempt_pair_traced_cycles, khz)),
                syscall_cycles: measured(g.trap_cycles),
                icr_write_cycles: measured(g.icr_cycles),
                eoi_write_cycles: measured(g.eoi_cycles),
                preempt_pair_cycles: (g.preempt_pair_traced_cycles != 0)
                    .then_some(g.preempt_pair_cycles),
                preempt_pair_traced_cycles: measured(g.preempt_pair_traced_cycles),
            },
            host: HostInfo::new(
                config,
                h,
                khz,
                PvInfo {
                    steal_time,
                    preempted_flag: seen_kvm
                        || probe.is_some_and(|p| p.preempted_flag == Some(true)),
                    preempted_flag_note: probe
                        .map(|p| p.preempted_flag_note.clone())
                        .unwrap_or_default(),
                    kvm_hypercalls: probe.map(|p| p.kvm_hypercalls),
                    kvm_hypercalls_note: probe
                        .map(|p| p.hypercall_note.clone())
                        .unwrap_or_default(),
                    probe_ms: probe.map(|p| p.elapsed.as_secs_f64() * 1e3),
                    mechanisms,
                    served: boot.pv_host,
                },
                boot.vmm_stalls.into(),
            ),
            guest: GuestInfo::new(g, khz),
            designs: g
                .designs
                .iter()
                .map(|d| DesignSummary::new(d, khz, config.initiators.as_deref()))
                .collect(),
            summary: Vec::new(),
            stats_warnings: Vec::new(),
            repeats: Vec::new(),
            raw: Some(Box::new(boot)),
        };
        // A single run is one repeat in its given order.
        let given: Vec<usize> = (0..report.designs.len()).collect();
        crate::stats::combine(vec![report], &[given])
    }

    /// The CLI's exit code for this report: [`crate::exit_code::VIOLATION`]
    /// when a design expected to be safe violated an invariant.
    pub fn exit_code(&self) -> u8 {
        // Torture checks are counted over all phases: they are violations
        // only when every design of the run is expected to be safe.
        let torture_errors: u64 = self.guest.torture.iter().map(|t| t.failed_checks).sum();
        let all_safe = self.designs.iter().all(|d| d.expected_safe);
        if self
            .designs
            .iter()
            .any(|d| d.expected_safe && d.violations > 0)
            || (torture_errors > 0 && all_safe)
        {
            crate::exit_code::VIOLATION
        } else if !self.reliable {
            crate::exit_code::HOST_FAILURE
        } else {
            crate::exit_code::OK
        }
    }

    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }

    /// The floor and, for a `ping` run, each design's call latency as a
    /// ratio to it (empty when the floor was not measured).
    pub fn floor_text(&self) -> String {
        let Some(f) = &self.floor_latency_ns else {
            return String::new();
        };
        let us = |ns: u64| crate::stats::sig3(ns as f64 / 1e3);
        let mut out = format!(
            "floor (raw x2APIC IPI round trip vCPU 0 -> 1 -> 0, no cross-call layer): n={}, p50 {} us, p99 {} us, max {} us\n",
            f.count,
            us(f.p50),
            us(f.p99),
            us(f.max)
        );
        let ratio = |a: u64, b: u64| {
            if b == 0 {
                "n/a".to_string()
            } else {
                format!("{}x", crate::stats::sig3(a as f64 / b as f64))
            }
        };
        for d in &self.designs {
            out += &format!(
                "ping {}: p50 {} us = {} the floor, p99 {} us = {} the floor's p99\n",
                d.design,
                us(d.call_latency_ns.p50),
                ratio(d.call_latency_ns.p50, f.p50),
                us(d.call_latency_ns.p99),
                ratio(d.call_latency_ns.p99, f.p99)
            );
        }
        out.trim_end().to_string()
    }
}

fn yes() -> bool {
    true
}

/// The command-line name of a workload (abi's).
pub fn workload_name(w: Workload) -> &'static str {
    w.name()
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::{FloorResults, Histogram};

    #[test]
    fn test_latency_from_histogram_monotone_ns() {
        let mut h = Histogram::new();
        for v in [2600u64, 5200, 26_000, 260_000, 2_600_000] {
            h.record(v);
        }
        let l = Latency::from_histogram(&h, 2_600_000);
        assert_eq!(l.count, 5);
        assert!(l.p50 <= l.p90 && l.p90 <= l.p99 && l.p99 <= l.p999 && l.p999 <= l.max);
        assert_eq!(l.max, 1_000_000);
        assert!(
            (l.mean - (2_893_800.0 / 5.0) / 2.6).abs() < 1.0,
            "{}",
            l.mean
        );
    }

    #[test]
    fn test_latency_from_histogram_empty_is_zero() {
        assert_eq!(
            Latency::from_histogram(&Histogram::new(), 1000),
            Latency::default()
        );
        assert_eq!(cycles_to_ns(5, 0), 0);
    }

    #[test]
    fn test_latency_from_floor_none_when_unmeasured() {
        assert!(Latency::from_floor(&FloorResults::default(), 1000).is_none());
        let f = FloorResults {
            count: 2,
            sum: 4000,
            min: 1000,
            max: 3000,
            p50: 1000,
            p90: 3000,
            p99: 3000,
            p999: 3000,
        };
        let l = Latency::from_floor(&f, 1_000_000).unwrap();
        assert_eq!((l.p50, l.max, l.mean), (1000, 3000, 2000.0));
    }

    #[test]
    fn test_violation_name_every_kind() {
        assert_eq!(violation_name(abi::violation::NOT_RUN), "not-run");
        assert_eq!(violation_name(abi::violation::LOST), "lost");
        assert_eq!(violation_name(99), "unknown");
    }

    #[test]
    fn test_scenario_builder_sets_config() {
        let s = Scenario::new()
            .vcpus(2)
            .host_cpus(&[0])
            .designs(&[Design::Stack])
            .workload(Workload::Ping)
            .duration(Duration::from_millis(300))
            .preempt(PreemptMode::None)
            .migrate_every(Some(Duration::ZERO))
            .seed(7);
        let c = s.config();
        assert_eq!((c.vcpus, c.seed), (2, 7));
        assert_eq!(c.inject.host_cpus, Some(vec![0]));
        assert_eq!(c.inject.migrate_every, None);
        assert_eq!(c.designs, vec![Design::Stack]);
        assert_eq!(
            s.expected_duration(),
            Duration::from_millis(300) + Duration::from_millis(200)
        );
    }
}
