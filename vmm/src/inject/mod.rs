//! Host-side injection: place vCPU threads on host CPUs, preempt them
//! (SCHED_FIFO antagonists, or VMM pauses), migrate them, and record every
//! injected event.
//!
//! - [`schedule`]: the seeded schedule, as pure functions.
//! - [`placement`]: CPU lists, affinity, scheduling class, /proc readers.
//! - [`antagonist`], [`pause`], [`migrate`]: the injector threads.
//! - [`trace`]: the timeline and its Chrome trace-event export.
//! - [`kvmstats`]: KVM's binary per-vCPU statistics.
//! - [`report`]: the `host` figures of a run; `runner`: [`Injector`], which
//!   starts, stops and collects the injector threads.
//!
//! Safety of the host: an injector never holds a host CPU for more than
//! `max_duty` of the time (enforced by the schedule and again at run time),
//! a scenario above 90% is refused, and [`Injector::stop`] (also run on
//! drop) stops every injector thread and restores the vCPU threads'
//! affinities. Injector threads are threads of this process, so nothing
//! outlives it when it is killed (Ctrl-C).

pub mod antagonist;
pub mod hotplug;
pub mod kvmstats;
pub mod lock;
pub mod migrate;
pub mod pause;
pub mod placement;
pub mod report;
mod runner;
pub mod schedule;
pub mod trace;

use std::path::PathBuf;
use std::time::Duration;

pub use report::{HostReport, VcpuHostFigures};
pub use runner::Injector;
pub(crate) use runner::{Shared, ThreadOutcome};

/// A planned preemption this far past its time is dropped, not run: after
/// a stall of the VMM, replaying every missed one would be a storm the
/// scenario never asked for.
pub const STALE_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// `--hotplug-len`'s default: how long a vCPU stays offline per cycle.
pub const DEFAULT_HOTPLUG_LEN: Duration = Duration::from_millis(10);

/// The highest duty cycle a scenario may ask for.
pub const DUTY_LIMIT: f64 = 0.9;
/// The default bound on an injector's duty cycle per host CPU.
pub const DEFAULT_MAX_DUTY: f64 = 0.5;
/// At most this many events are kept in the timeline (later ones are
/// counted, not stored).
pub const TIMELINE_LIMIT: usize = 4_000_000;

/// How vCPUs are preempted from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreemptMode {
    /// No preemption.
    None,
    /// The VMM kicks a vCPU out of KVM_RUN and holds it (no privileges,
    /// deterministic; KVM never marks such a vCPU `preempted`).
    Pause,
    /// A SCHED_FIFO thread per host CPU busy-runs at random times.
    Antagonist,
}

impl PreemptMode {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            PreemptMode::None => "none",
            PreemptMode::Pause => "pause",
            PreemptMode::Antagonist => "antagonist",
        }
    }
}

/// Injection settings of a run. The default injects nothing and leaves the
/// vCPU threads where the host scheduler puts them.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectConfig {
    /// Host CPUs for the vCPU threads (`None`: no placement).
    pub host_cpus: Option<Vec<usize>>,
    /// Preemption mode requested (`Antagonist` falls back to `Pause` when
    /// SCHED_FIFO is refused).
    pub preempt: PreemptMode,
    /// Length of one preemption.
    pub preempt_len: Duration,
    /// Mean gap between preemptions per host CPU.
    pub preempt_every: Duration,
    /// Mean gap between migrations (`None`: no migration).
    pub migrate_every: Option<Duration>,
    /// Bound on an injector's share of a host CPU, in (0, 0.9].
    pub max_duty: f64,
    /// Chrome trace-event JSON of the injected events.
    pub trace: Option<PathBuf>,
    /// Mean gap between CPU hotplug cycles (`None`: no hotplug).
    pub hotplug_every: Option<Duration>,
    /// Mean time a vCPU stays offline in one cycle.
    pub hotplug_len: Duration,
    /// Explicit host CPU of each vCPU, by vCPU index (`--placement`;
    /// `None`: spread round robin over `host_cpus`). Its CPUs must be in
    /// `host_cpus` when that is given, and are the run's host CPUs when not.
    pub placement: Option<Vec<usize>>,
    /// The host CPUs preemption is injected on (`--preempt-host-cpus`;
    /// `None`: every host CPU of the run): the others stay quiet.
    pub preempt_host_cpus: Option<Vec<usize>>,
    /// The vCPUs `pause` holds (`--preempt-vcpus`; `None`: every vCPU).
    pub preempt_vcpus: Option<Vec<u32>>,
    /// `Antagonist` was asked for by name (`--preempt antagonist`): a
    /// process that may not use SCHED_FIFO is refused (exit 2) instead of
    /// falling back to `Pause`, since a run that silently measures
    /// something else than asked is not the one asked for.
    pub antagonist_required: bool,
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            host_cpus: None,
            preempt: PreemptMode::None,
            preempt_len: Duration::from_micros(200),
            preempt_every: Duration::from_millis(2),
            migrate_every: None,
            max_duty: DEFAULT_MAX_DUTY,
            trace: None,
            hotplug_every: None,
            hotplug_len: DEFAULT_HOTPLUG_LEN,
            placement: None,
            preempt_host_cpus: None,
            preempt_vcpus: None,
            antagonist_required: false,
        }
    }
}

impl InjectConfig {
    /// Whether this config does anything at all.
    pub fn is_active(&self) -> bool {
        self.host_cpus.is_some()
            || self.placement.is_some()
            || self.preempt != PreemptMode::None
            || self.migrate_every.is_some()
            || self.hotplug_every.is_some()
    }
}

/// A scenario the injector refuses, or a host failure while injecting.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// Bad host CPU list.
    #[error(transparent)]
    Placement(#[from] placement::PlacementError),
    /// The duty cycle asked for is above the limit.
    #[error(
        "refused: --preempt-len {len:?} every {every:?} is a {pct:.0}% duty cycle on each host CPU; \
         the limit is 90% (injectors must leave the host CPU to the host)"
    )]
    DutyRefused {
        /// Length of one preemption.
        len: Duration,
        /// Mean gap.
        every: Duration,
        /// The duty cycle in percent.
        pct: f64,
    },
    /// Another invalid setting.
    #[error("invalid injection setting: {0}")]
    Invalid(String),
    /// A host call failed (affinity mask, threads).
    #[error("host injection failed: {0}")]
    Host(String),
}

impl InjectError {
    /// Whether the error is the scenario's fault (exit 2) rather than the host's.
    pub fn is_scenario(&self) -> bool {
        !matches!(self, InjectError::Host(_))
    }
}

/// A validated injection plan for one run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The settings.
    pub config: InjectConfig,
    /// The host CPUs used (placement slots index into this).
    pub host_cpus: Vec<usize>,
    /// Initial slot of each vCPU (`None`: no placement).
    pub placement: Option<Vec<usize>>,
    /// The preemption mode actually used.
    pub mode: PreemptMode,
    /// Why the mode differs from the one requested, if it does.
    pub fallback: Option<String>,
    /// The process's affinity mask, restored on every vCPU thread at the end.
    pub original_mask: Vec<usize>,
}

/// The host CPUs of a run and the initial slot of each vCPU, as
/// [`check_targets`] derives them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Targets {
    /// The host CPUs used (slots index into this).
    pub host_cpus: Vec<usize>,
    /// Initial slot of each vCPU (`None`: no placement).
    pub slots: Option<Vec<usize>>,
}

/// Checks the injection targets of `config` for `vcpus` vCPUs against the
/// host CPUs this process may use (`allowed`): the host CPU list, the
/// explicit placement (one host CPU per vCPU, each in `--host-cpus` when
/// given), the host CPUs preemption is aimed at (host CPUs of the run) and
/// the vCPUs `pause` holds (vCPUs of the run, `pause` only). Pure, so the
/// scenario's validation refuses before anything boots exactly what
/// [`Plan::new`] would.
pub fn check_targets(
    config: &InjectConfig,
    vcpus: u32,
    allowed: &[usize],
) -> Result<Targets, InjectError> {
    let host_cpus = match (&config.host_cpus, &config.placement) {
        (Some(cpus), _) => {
            if cpus.is_empty() {
                return Err(InjectError::Invalid("--host-cpus is empty".into()));
            }
            placement::check_allowed(&placement::list_text(cpus), cpus, allowed)?;
            cpus.clone()
        }
        (None, Some(p)) => {
            let set: std::collections::BTreeSet<usize> = p.iter().copied().collect();
            set.into_iter().collect()
        }
        (None, None) => allowed.to_vec(),
    };
    let slots = match &config.placement {
        Some(p) => {
            if p.len() != vcpus as usize {
                return Err(InjectError::Invalid(format!(
                    "--placement {} names {} host CPU(s) for {vcpus} vCPU(s): give exactly one                      host CPU per vCPU, vCPU 0 first",
                    placement::list_text(p),
                    p.len()
                )));
            }
            placement::check_allowed(&placement::list_text(p), p, allowed).map_err(|e| {
                InjectError::Invalid(format!(
                    "--placement {}: {}",
                    placement::list_text(p),
                    e.to_string().replace("--host-cpus ", "")
                ))
            })?;
            let mut slots = Vec::with_capacity(p.len());
            for (v, cpu) in p.iter().enumerate() {
                let slot = host_cpus.iter().position(|c| c == cpu).ok_or_else(|| {
                    InjectError::Invalid(format!(
                        "--placement puts vCPU {v} on host CPU {cpu}, which is not in --host-cpus {}",
                        placement::list_text(&host_cpus)
                    ))
                })?;
                slots.push(slot);
            }
            Some(slots)
        }
        None => config
            .host_cpus
            .as_ref()
            .map(|_| placement::spread(vcpus, host_cpus.len())),
    };
    if let Some(p) = &config.preempt_host_cpus {
        if config.preempt == PreemptMode::None {
            return Err(InjectError::Invalid(
                "--preempt-host-cpus aims preemption, and --preempt none injects none: this run                  would ignore it"
                    .into(),
            ));
        }
        if p.is_empty() {
            return Err(InjectError::Invalid("--preempt-host-cpus is empty".into()));
        }
        if slots.is_none() && config.preempt == PreemptMode::Pause {
            return Err(InjectError::Invalid(
                "--preempt-host-cpus with --preempt pause needs a placement (--host-cpus or \
                 --placement): unplaced vCPUs are on no host CPU in particular"
                    .into(),
            ));
        }
        let used: Vec<usize> = match &slots {
            Some(s) => s.iter().map(|&i| host_cpus[i]).collect(),
            None => host_cpus.clone(),
        };
        let stray: Vec<usize> = p.iter().copied().filter(|c| !used.contains(c)).collect();
        if !stray.is_empty() {
            return Err(InjectError::Invalid(format!(
                "--preempt-host-cpus {}: host CPU(s) {stray:?} run no vCPU of this run (its vCPUs                  are on host CPUs {})",
                placement::list_text(p),
                placement::list_text(&{
                    let mut u = used.clone();
                    u.sort_unstable();
                    u.dedup();
                    u
                })
            )));
        }
    }
    if let Some(p) = &config.preempt_vcpus {
        if config.preempt != PreemptMode::Pause {
            return Err(InjectError::Invalid(format!(
                "--preempt-vcpus applies to --preempt pause only (an antagonist preempts whatever                  runs on its host CPU: aim it with --preempt-host-cpus); this run uses --preempt {}",
                config.preempt.name()
            )));
        }
        if p.is_empty() {
            return Err(InjectError::Invalid("--preempt-vcpus is empty".into()));
        }
        let stray: Vec<u32> = p.iter().copied().filter(|&v| v >= vcpus).collect();
        if !stray.is_empty() {
            return Err(InjectError::Invalid(format!(
                "--preempt-vcpus {}: vCPU(s) {stray:?} do not exist (this run has vCPUs 0..={})",
                placement::list_text(p),
                vcpus.saturating_sub(1)
            )));
        }
    }
    Ok(Targets { host_cpus, slots })
}

impl Plan {
    /// Validates `config` for `vcpus` vCPUs on this host. Probes SCHED_FIFO
    /// for `antagonist` and falls back to `pause` (with a reason) if refused.
    pub fn new(config: &InjectConfig, vcpus: u32) -> Result<Plan, InjectError> {
        let original_mask = placement::process_cpus()
            .map_err(|e| InjectError::Host(format!("sched_getaffinity: {e}")))?;
        let targets = check_targets(config, vcpus, &original_mask)?;
        let host_cpus = targets.host_cpus;
        if !(config.max_duty > 0.0 && config.max_duty <= DUTY_LIMIT) {
            return Err(InjectError::Invalid(format!(
                "max duty {} must be in (0, {DUTY_LIMIT}]",
                config.max_duty
            )));
        }
        if config.preempt != PreemptMode::None {
            if config.preempt_len.is_zero() || config.preempt_every.is_zero() {
                return Err(InjectError::Invalid(
                    "--preempt-len and --preempt-every must be above zero".into(),
                ));
            }
            let duty = config.preempt_len.as_secs_f64() / config.preempt_every.as_secs_f64();
            if duty > DUTY_LIMIT {
                return Err(InjectError::DutyRefused {
                    len: config.preempt_len,
                    every: config.preempt_every,
                    pct: duty * 100.0,
                });
            }
        }
        if let Some(every) = config.hotplug_every.filter(|d| !d.is_zero()) {
            if vcpus < 3 {
                return Err(InjectError::Invalid(format!(
                    "--hotplug-every needs 3 or more vCPUs (this run has {vcpus}): the boot vCPU \
                     and one other always stay online"
                )));
            }
            if config.hotplug_len.is_zero() {
                return Err(InjectError::Invalid(
                    "--hotplug-len must be above zero".into(),
                ));
            }
            if every < Duration::from_millis(1) {
                return Err(InjectError::Invalid(format!(
                    "--hotplug-every {every:?} is below 1ms: a vCPU takes longer than that to go down"
                )));
            }
        }
        let (mode, fallback) = match config.preempt {
            PreemptMode::Antagonist => match placement::fifo_permitted() {
                Ok(()) => (PreemptMode::Antagonist, None),
                Err(why) => (
                    PreemptMode::Pause,
                    Some(format!(
                        "SCHED_FIFO refused ({why}): --preempt antagonist falls back to pause"
                    )),
                ),
            },
            other => (other, None),
        };
        let placement = targets.slots;
        let mut config = config.clone();
        config.migrate_every = config.migrate_every.filter(|d| !d.is_zero());
        config.hotplug_every = config.hotplug_every.filter(|d| !d.is_zero());
        let mut fallback = fallback;
        if config.migrate_every.is_some() && (host_cpus.len() < 2 || placement.is_none()) {
            let why = "migration needs two or more host CPUs (and a placement): none injected";
            fallback = Some(fallback.map_or(why.to_string(), |f| format!("{f}; {why}")));
        }
        Ok(Plan {
            config,
            host_cpus,
            placement,
            mode,
            fallback,
            original_mask,
        })
    }

    /// The host CPU vCPU `v` is placed on first, if placed.
    pub fn host_cpu_of(&self, v: u32) -> Option<usize> {
        let slot = *self.placement.as_ref()?.get(v as usize)?;
        self.host_cpus.get(slot).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> InjectConfig {
        InjectConfig {
            preempt: PreemptMode::Pause,
            ..InjectConfig::default()
        }
    }

    #[test]
    fn test_plan_refuses_duty_above_90_percent() {
        let mut c = config();
        c.preempt_len = Duration::from_micros(950);
        c.preempt_every = Duration::from_millis(1);
        let e = Plan::new(&c, 2).unwrap_err();
        assert!(matches!(e, InjectError::DutyRefused { .. }), "{e}");
        assert!(e.is_scenario());
        assert!(e.to_string().contains("95%"), "{e}");
        c.preempt_len = Duration::from_micros(900);
        assert!(Plan::new(&c, 2).is_ok());
    }

    #[test]
    fn test_plan_places_round_robin_and_rejects_foreign_cpus() {
        let allowed = placement::process_cpus().unwrap();
        let mut c = config();
        c.host_cpus = Some(vec![allowed[0]]);
        let p = Plan::new(&c, 3).unwrap();
        assert_eq!(p.placement, Some(vec![0, 0, 0]));
        assert_eq!(p.host_cpu_of(2), Some(allowed[0]));
        c.host_cpus = Some(vec![libc::CPU_SETSIZE as usize - 1]);
        assert!(matches!(
            Plan::new(&c, 3),
            Err(InjectError::Placement(
                placement::PlacementError::NotAllowed { .. }
            ))
        ));
    }

    #[test]
    fn test_plan_hotplug_rules() {
        let mut c = InjectConfig {
            hotplug_every: Some(Duration::from_millis(20)),
            ..InjectConfig::default()
        };
        assert!(c.is_active());
        let e = Plan::new(&c, 2).unwrap_err();
        assert!(e.to_string().contains("3 or more vCPUs"), "{e}");
        assert!(Plan::new(&c, 3).is_ok());
        c.hotplug_len = Duration::ZERO;
        assert!(Plan::new(&c, 4)
            .unwrap_err()
            .to_string()
            .contains("--hotplug-len"));
        c.hotplug_len = DEFAULT_HOTPLUG_LEN;
        c.hotplug_every = Some(Duration::from_micros(10));
        assert!(Plan::new(&c, 4).is_err());
        c.hotplug_every = Some(Duration::ZERO);
        assert_eq!(Plan::new(&c, 2).unwrap().config.hotplug_every, None);
    }

    #[test]
    fn test_plan_default_is_inactive_and_zero_migration_disables() {
        assert!(!InjectConfig::default().is_active());
        let c = InjectConfig {
            migrate_every: Some(Duration::ZERO),
            ..InjectConfig::default()
        };
        assert_eq!(Plan::new(&c, 1).unwrap().config.migrate_every, None);
    }
}
