//! Named scenarios. A [`Preset`] puts a whole shape and its injection
//! behind one name, so that the series' scenario, "the initiator's vCPU
//! alone on a quiet host CPU, its targets overcommitted on another and
//! preempted for 3 ms host slices every 10 ms", is `--scenario series`
//! rather than eight options that must agree. A preset only fills in:
//! the CLI lets every option given explicitly win over it, and the
//! result goes through [`Scenario::validate`] like any other scenario.

use std::time::Duration;

use super::{Scenario, ScenarioError};
use crate::inject::{placement, PreemptMode};
use crate::machine::MachineConfig;
use crate::Error;

/// The named scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScenarioName {
    /// The Linux 7.3 series' benchmark shape: one initiator alone on a
    /// quiet host CPU, the other vCPUs running hogs on a second host CPU
    /// that antagonists take for 3 ms every 10 ms.
    Series,
}

impl ScenarioName {
    /// Every named scenario.
    pub const ALL: [ScenarioName; 1] = [ScenarioName::Series];

    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            ScenarioName::Series => "series",
        }
    }
}

impl std::str::FromStr for ScenarioName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        ScenarioName::ALL
            .into_iter()
            .find(|n| n.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = ScenarioName::ALL.iter().map(|n| n.name()).collect();
                format!("unknown scenario '{s}': valid are {}", names.join(", "))
            })
    }
}

/// What a named scenario sets.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    /// Its name.
    pub name: ScenarioName,
    /// Host CPU of each vCPU.
    pub placement: Vec<usize>,
    /// The vCPUs that issue cross calls.
    pub initiators: Vec<u32>,
    /// Issuers per initiator vCPU.
    pub issuers_per_cpu: u32,
    /// Hogs per vCPU.
    pub hogs_per_cpu: u32,
    /// Preemption mode (antagonist falls back to pause without SCHED_FIFO).
    pub preempt: PreemptMode,
    /// Length of one preemption.
    pub preempt_len: Duration,
    /// Mean gap between preemptions.
    pub preempt_every: Duration,
    /// The host CPUs preempted.
    pub preempt_host_cpus: Vec<usize>,
    /// Migration (None: none, so the placement holds).
    pub migrate_every: Option<Duration>,
    /// Workload time per design: long enough for 100 windows of the
    /// default 100 ms on the one initiator (its P99 is then not its max).
    pub duration: Duration,
}

impl Preset {
    /// The preset `name` for `vcpus` vCPUs on `host_cpus` (the first two are
    /// used: the initiator's quiet one, then the targets' one).
    pub fn new(name: ScenarioName, host_cpus: &[usize], vcpus: u32) -> Result<Self, ScenarioError> {
        match name {
            ScenarioName::Series => {
                let (quiet, busy) = match host_cpus {
                    [a, b, ..] => (*a, *b),
                    _ => {
                        return Err(ScenarioError::Preset(format!(
                            "--scenario series puts the initiator's vCPU alone on one host CPU \
                             and its targets on another: it needs two host CPUs, and this run \
                             has {:?} (give --host-cpus with two or more)",
                            host_cpus
                        )))
                    }
                };
                if vcpus < 2 {
                    return Err(ScenarioError::Preset(
                        "--scenario series needs at least 2 vCPUs: an initiator and a target"
                            .into(),
                    ));
                }
                Ok(Preset {
                    name,
                    placement: (0..vcpus)
                        .map(|v| if v == 0 { quiet } else { busy })
                        .collect(),
                    initiators: vec![0],
                    issuers_per_cpu: 1,
                    hogs_per_cpu: 1,
                    preempt: PreemptMode::Antagonist,
                    preempt_len: Duration::from_millis(3),
                    preempt_every: Duration::from_millis(10),
                    preempt_host_cpus: vec![busy],
                    migrate_every: None,
                    duration: Duration::from_secs(10),
                })
            }
        }
    }

    /// Sets every value of the preset in `config` (and its name).
    pub fn apply(&self, config: &mut MachineConfig) {
        config.scenario_name = Some(self.name.name().to_string());
        config.inject.placement = Some(self.placement.clone());
        config.initiators = Some(self.initiators.clone());
        config.issuers_per_cpu = self.issuers_per_cpu;
        config.hogs_per_cpu = self.hogs_per_cpu;
        config.inject.preempt = self.preempt;
        config.inject.preempt_len = self.preempt_len;
        config.inject.preempt_every = self.preempt_every;
        config.inject.preempt_host_cpus = Some(self.preempt_host_cpus.clone());
        config.inject.migrate_every = self.migrate_every;
        config.duration = self.duration;
    }
}

impl Scenario {
    /// The named scenario `name` on 4 vCPUs and the host CPUs this process
    /// may use, with the defaults of [`Scenario::new`] for the rest;
    /// refused where it cannot be laid out (one host CPU).
    pub fn named(name: ScenarioName) -> Result<Self, Error> {
        let mut s = Scenario::new();
        let host = s.config().inject.host_cpus.clone().unwrap_or_default();
        let preset = Preset::new(name, &host, s.config().vcpus)?;
        preset.apply(s.config_mut());
        Ok(s)
    }

    /// The series' scenario ([`ScenarioName::Series`]): vCPU 0, the only
    /// initiator, alone on the first host CPU; vCPUs 1-3, running hogs
    /// only, on the second, which antagonists take for 3 ms every 10 ms
    /// (mean); no migration.
    pub fn series() -> Result<Self, Error> {
        Scenario::named(ScenarioName::Series)
    }
}

/// The report's header line for a named scenario: its name and the shape
/// as run (explicit options may have changed the preset's values).
pub fn header(config: &MachineConfig) -> Option<String> {
    let name = config.scenario_name.as_deref()?;
    let inj = &config.inject;
    let initiators = config
        .initiators
        .as_ref()
        .map_or("every vCPU".to_string(), |v| {
            format!("vCPU(s) {}", placement::list_text(v))
        });
    let placed = inj
        .placement
        .as_ref()
        .map_or("spread".to_string(), |p| placement::list_text(p));
    let preempt = match inj.preempt {
        PreemptMode::None => "no preemption".to_string(),
        mode => format!(
            "{} {:?} every {:?} on host CPU(s) {}",
            mode.name(),
            inj.preempt_len,
            inj.preempt_every,
            inj.preempt_host_cpus
                .as_ref()
                .map_or("all".to_string(), |c| placement::list_text(c))
        ),
    };
    let migrate = inj.migrate_every.map_or("no migration".to_string(), |d| {
        format!("a migration every {d:?}")
    });
    Some(format!(
        "scenario {name}: {} vCPUs, initiators {initiators} ({} issuer(s) each), {} hog(s) per \
         vCPU; placement vCPU->CPU {placed}; {preempt}; {migrate}; {:?} per design",
        config.vcpus, config.issuers_per_cpu, config.hogs_per_cpu, config.duration
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_series_preset_is_the_series_shape() {
        let p = Preset::new(ScenarioName::Series, &[0, 1], 4).unwrap();
        assert_eq!(p.placement, [0, 1, 1, 1]);
        assert_eq!(p.initiators, [0]);
        assert_eq!(p.preempt_host_cpus, [1]);
        assert_eq!(
            (p.preempt_len, p.preempt_every),
            (Duration::from_millis(3), Duration::from_millis(10))
        );
        assert_eq!(p.migrate_every, None);
        assert_eq!(p.duration, Duration::from_secs(10));
        let p = Preset::new(ScenarioName::Series, &[2, 5, 7], 6).unwrap();
        assert_eq!(p.placement, [2, 5, 5, 5, 5, 5]);
        assert!(Preset::new(ScenarioName::Series, &[0], 4).is_err());
        assert!(Preset::new(ScenarioName::Series, &[0, 1], 1).is_err());
        assert_eq!("series".parse(), Ok(ScenarioName::Series));
        assert!("other".parse::<ScenarioName>().is_err());
    }

    #[test]
    fn test_series_scenario_validates_and_names_itself() {
        let Ok(s) = Scenario::series() else {
            return; // a host with one CPU: refused, as it should be
        };
        s.validate().unwrap();
        let h = header(s.config()).unwrap();
        assert!(h.starts_with("scenario series: 4 vCPUs"), "{h}");
        assert!(h.contains("3ms every 10ms"), "{h}");
        assert!(h.ends_with("; 10s per design"), "{h}");
    }
}
