//! What a scenario must satisfy before anything boots: a run that cannot
//! measure what it is asked to (a cross-CPU workload on one vCPU, a
//! duty cycle the injector would silently cap, a watchdog shorter than
//! the run) is refused with the reason (exit 2), by the library and the
//! CLI alike.

use crate::guest_mode::{self, GuestMode};
use std::time::Duration;

use abi::Workload;

use super::Scenario;
use crate::inject::{InjectError, PreemptMode, DUTY_LIMIT};
use crate::Error;

/// The shortest `--duration` that gives timed calls or probe samples.
pub const MIN_DURATION: Duration = Duration::from_millis(10);
/// The shortest watchdog: time to create the VM and boot a few vCPUs.
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
/// Allowance for boot and calibration on top of the workload's length.
const BOOT_ALLOWANCE: Duration = Duration::from_secs(1);
/// Workload tasks per vCPU, issuers and hogs together (the guest's task
/// table bounds it).
pub const MAX_TASKS_PER_CPU: u32 = 64;

/// Why a scenario is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScenarioError {
    /// vCPU count out of range.
    #[error("--vcpus {0} is out of range: give 1..={max}", max = abi::MAX_VCPUS)]
    Vcpus(u32),
    /// A cross-CPU workload on one vCPU sends no IPI.
    #[error(
        "--workload {0} needs at least 2 vCPUs: with 1 every call is local and no IPI is sent \
         (give --vcpus 2 or more)"
    )]
    NeedsTwoVcpus(&'static str),
    /// A probability outside 0..=1 (or NaN).
    #[error("--{name} {value} is not a probability between 0 and 1")]
    Probability {
        /// The option, without dashes.
        name: &'static str,
        /// The value given.
        value: f64,
    },
    /// Issuer count out of range.
    #[error("--issuers-per-cpu {0} is out of range: give 1..={MAX_TASKS_PER_CPU}")]
    Tasks(u32),
    /// Issuers and hogs together above the per-vCPU bound.
    #[error(
        "--issuers-per-cpu {issuers} and --hogs-per-cpu {hogs} make {total} tasks per vCPU: give \
         at most {MAX_TASKS_PER_CPU} together",
        total = issuers + hogs
    )]
    TooManyTasks {
        /// Issuers per vCPU.
        issuers: u32,
        /// Hogs per vCPU.
        hogs: u32,
    },
    /// A bad initiator set.
    #[error("--initiators {list}: {why}")]
    Initiators {
        /// The set as given.
        list: String,
        /// What is wrong with it.
        why: String,
    },
    /// A per-design workload with no design.
    #[error("no design to run: name at least one")]
    NoDesigns,
    /// Design columns the guest cannot run (too many, or one twice).
    #[error(transparent)]
    Columns(crate::machine::ColumnError),
    /// A duty cycle the injector would cap at `--max-duty`.
    #[error(
        "--preempt-len {len:?} every {every:?} is a {pct:.0}% duty cycle on each host CPU, above \
         --max-duty {max_pct:.0}%: the injector would cap it and the run would not be the one asked \
         for (lengthen --preempt-every, shorten --preempt-len or raise --max-duty)"
    )]
    DutyAboveMax {
        /// Length of one preemption.
        len: Duration,
        /// Mean gap.
        every: Duration,
        /// Duty cycle asked for, in percent.
        pct: f64,
        /// `--max-duty`, in percent.
        max_pct: f64,
    },
    /// A watchdog too short for anything.
    #[error("--timeout {0:?} is too short: give at least {MIN_TIMEOUT:?}")]
    TimeoutTooSmall(Duration),
    /// A watchdog that would fire before the workload ends.
    #[error(
        "--timeout {timeout:?} is shorter than the run: its workload alone takes about {expected:?} \
         (give --timeout {need}s or more)"
    )]
    TimeoutTooShort {
        /// The timeout.
        timeout: Duration,
        /// The workload's expected length.
        expected: Duration,
        /// A timeout that would do, in whole seconds.
        need: u64,
    },
    /// A duration too short for one timed call or probe sample.
    #[error(
        "--duration {duration:?} is too short to time anything: give at least {MIN_DURATION:?}"
    )]
    DurationTooShort {
        /// The duration.
        duration: Duration,
    },
    /// A named scenario that cannot be laid out here.
    #[error("{0}")]
    Preset(String),
    /// An option the scenario would silently ignore.
    #[error("{0}")]
    Unused(&'static str),
    /// A guest mode that cannot run here (or a bad `IPIVIRT_GUEST_MODE`).
    #[error("{0}")]
    GuestMode(String),
    /// A value outside the range the CLI's parser accepts for its option
    /// (the library's setters take any value; the CLI cannot give these).
    #[error("--{option} {value} is out of range: give {range}")]
    OutOfRange {
        /// The option, without dashes.
        option: &'static str,
        /// The value given.
        value: String,
        /// What would do.
        range: &'static str,
    },
    /// An `Antagonist` preemption required where SCHED_FIFO is refused.
    #[error(
        "--preempt antagonist needs SCHED_FIFO, which this process may not use ({0}): give \
         --preempt pause, or leave --preempt out to fall back to pause"
    )]
    NeedsFifo(String),
    /// `--svg` for a workload without per-design latencies.
    #[error(
        "--svg: the {0} workload has no per-design latency to plot (ping, shootdown and torture do)"
    )]
    NothingToPlot(&'static str),
}

fn probability(name: &'static str, value: f64) -> Result<(), ScenarioError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(ScenarioError::Probability { name, value })
    }
}

impl Scenario {
    /// Refuses a scenario that cannot be measured as asked (see the
    /// module doc). [`Scenario::run`] calls it first; the CLI calls it
    /// before anything slow.
    pub fn validate(&self) -> Result<(), Error> {
        let c = self.config();
        let workload = super::workload_name(c.workload);
        self.check_issuers_used()?;
        if c.vcpus == 0 || c.vcpus as usize > abi::MAX_VCPUS {
            return Err(ScenarioError::Vcpus(c.vcpus).into());
        }
        if c.vcpus < 2
            && matches!(
                c.workload,
                Workload::Floor | Workload::Ping | Workload::Shootdown
            )
        {
            return Err(ScenarioError::NeedsTwoVcpus(workload).into());
        }
        probability("guest-preempt-prob", c.guest_preempt_prob)?;
        probability("alloc-fail-prob", c.alloc_fail_prob)?;
        probability("forced-migration", c.forced_migration)?;
        self.check_ranges()?;
        self.validate_shape()?;
        if c.quiesce_bound.is_zero() {
            return Err(ScenarioError::Unused(
                "--quiesce-timeout must be above 0 (a phase needs time to let its tasks finish)",
            )
            .into());
        }
        let per_design = c.workload.per_design();
        if per_design {
            if c.designs.is_empty() {
                return Err(ScenarioError::NoDesigns.into());
            }
            c.check_columns().map_err(ScenarioError::Columns)?;
        }
        if c.torture_weights.iter().any(|&w| w != 0) && c.workload != Workload::Torture {
            return Err(ScenarioError::Unused(
                "--torture-weights applies to --workload torture only: this run would ignore it",
            )
            .into());
        }
        if c.torture_onoff.is_some() && c.workload != Workload::Torture {
            return Err(ScenarioError::Unused(
                "--torture-onoff applies to --workload torture only: this run would ignore it",
            )
            .into());
        }
        if c.torture_onoff
            .is_some_and(|d| d < std::time::Duration::from_millis(1))
        {
            return Err(ScenarioError::Unused(
                "--torture-onoff must be 1ms or more (0 is off): a vCPU takes longer than that to go down",
            )
            .into());
        }
        if (c.torture_onoff.is_some() || c.inject.hotplug_every.is_some()) && c.vcpus < 3 {
            return Err(ScenarioError::Unused(
                "CPU hotplug (--hotplug-every, --torture-onoff) needs 3 or more vCPUs: the boot vCPU \
                 and one other always stay online",
            )
            .into());
        }
        // Task-local's mask is allocated at every task creation above 64
        // vCPUs (whatever design runs); below, only alloc-in-path allocates.
        if c.alloc_fail_prob > 0.0
            && (!per_design || !(c.designs.contains(&abi::Design::AllocInPath) || c.vcpus > 64))
        {
            return Err(ScenarioError::Unused(
                "--alloc-fail-prob applies to the alloc-in-path design, and above 64 vCPUs to the \
                 task-local mask allocated at task creation; this run has neither: it would ignore it",
            )
            .into());
        }
        let inj = &c.inject;
        if inj.preempt != PreemptMode::None
            && !inj.preempt_every.is_zero()
            && !inj.preempt_len.is_zero()
        {
            let duty = inj.preempt_len.as_secs_f64() / inj.preempt_every.as_secs_f64();
            if duty > DUTY_LIMIT {
                return Err(InjectError::DutyRefused {
                    len: inj.preempt_len,
                    every: inj.preempt_every,
                    pct: duty * 100.0,
                }
                .into());
            }
            if duty > inj.max_duty {
                return Err(ScenarioError::DutyAboveMax {
                    len: inj.preempt_len,
                    every: inj.preempt_every,
                    pct: duty * 100.0,
                    max_pct: inj.max_duty * 100.0,
                }
                .into());
            }
        }
        if c.workload != Workload::None && c.duration < MIN_DURATION {
            return Err(ScenarioError::DurationTooShort {
                duration: c.duration,
            }
            .into());
        }
        if c.timeout < MIN_TIMEOUT {
            return Err(ScenarioError::TimeoutTooSmall(c.timeout).into());
        }
        let expected = self.expected_duration();
        if c.timeout < expected + BOOT_ALLOWANCE {
            return Err(ScenarioError::TimeoutTooShort {
                timeout: c.timeout,
                expected,
                need: (expected + BOOT_ALLOWANCE).as_secs_f64().ceil() as u64 + 1,
            }
            .into());
        }
        if let Some(path) = &inj.trace {
            crate::output::check("--trace", path)?;
        }
        let mode = match c.guest_mode {
            Some(m) => m,
            None => GuestMode::from_env().map_err(|e| ScenarioError::GuestMode(e.to_string()))?,
        };
        guest_mode::resolve(mode, guest_mode::host_offers_pvm())
            .map_err(ScenarioError::GuestMode)?;
        self.check_fifo()?;
        Ok(())
    }

    /// The knobs the CLI's parser bounds: the guest's tick, the probe
    /// period and the preempt-off tracer's window (the guest's fields).
    fn check_ranges(&self) -> Result<(), ScenarioError> {
        let c = self.config();
        let out = |option, value: String, range| ScenarioError::OutOfRange {
            option,
            value,
            range,
        };
        if let Some(hz) = c.tick_hz.filter(|hz| !(10..=10_000).contains(hz)) {
            return Err(out("tick-hz", hz.to_string(), "10..=10000 Hz"));
        }
        if let Some(p) = c.probe_period.filter(|p| p.is_zero()) {
            return Err(out("probe-period", format!("{p:?}"), "a period above 0"));
        }
        let window = c.preempt_window.as_micros();
        if window == 0 || window > u128::from(u32::MAX) {
            return Err(out(
                "window",
                format!("{:?}", c.preempt_window),
                "1us..=4000s",
            ));
        }
        Ok(())
    }

    /// The part of [`Scenario::validate`] that no vCPU count or host CPU
    /// set changes: what a sweep refuses once, before it plans its cells
    /// (the rest is checked per cell, and a cell that fails it is skipped).
    pub fn validate_options(&self) -> Result<(), Error> {
        self.check_fifo()?;
        Ok(self.check_issuers_used()?)
    }

    /// Issuers other than the default one on the `hogs` workload, which
    /// sends no IPI: the run would ignore them.
    fn check_issuers_used(&self) -> Result<(), ScenarioError> {
        let c = self.config();
        if c.workload == Workload::Hogs && c.issuers_per_cpu != 1 {
            return Err(ScenarioError::Unused(
                "--issuers-per-cpu (or --tasks-per-cpu): the hogs workload sends no IPI; its \
                 tasks are --hogs-per-cpu",
            ));
        }
        Ok(())
    }

    /// A required antagonist ([`crate::InjectConfig::antagonist_required`])
    /// where this process may not use SCHED_FIFO.
    fn check_fifo(&self) -> Result<(), ScenarioError> {
        let inj = &self.config().inject;
        if inj.antagonist_required && inj.preempt == PreemptMode::Antagonist {
            crate::inject::placement::fifo_permitted().map_err(ScenarioError::NeedsFifo)?;
        }
        Ok(())
    }

    /// The workload's shape: issuer and hog counts, the initiator set, and
    /// the injection's targets (placement, preempted host CPUs and vCPUs:
    /// [`crate::inject::check_targets`], as the injector applies them).
    fn validate_shape(&self) -> Result<(), Error> {
        let c = self.config();
        if !(1..=MAX_TASKS_PER_CPU).contains(&c.issuers_per_cpu) {
            return Err(ScenarioError::Tasks(c.issuers_per_cpu).into());
        }
        if c.issuers_per_cpu.saturating_add(c.hogs_per_cpu) > MAX_TASKS_PER_CPU {
            return Err(ScenarioError::TooManyTasks {
                issuers: c.issuers_per_cpu,
                hogs: c.hogs_per_cpu,
            }
            .into());
        }
        if c.workload == Workload::Hogs && c.hogs_per_cpu == 0 {
            return Err(ScenarioError::Unused(
                "--workload hogs runs --hogs-per-cpu hogs on each vCPU: give 1 or more",
            )
            .into());
        }
        if let Some(set) = &c.initiators {
            let list = crate::inject::placement::list_text(set);
            let bad = |why: String| ScenarioError::Initiators {
                list: list.clone(),
                why,
            };
            if !matches!(c.workload, Workload::Shootdown | Workload::Torture) {
                return Err(bad(format!(
                    "the {} workload has no initiators (shootdown and torture do): this run \
                     would ignore it",
                    super::workload_name(c.workload)
                ))
                .into());
            }
            if set.is_empty() {
                return Err(bad("name at least one vCPU".into()).into());
            }
            let stray: Vec<u32> = set.iter().copied().filter(|&v| v >= c.vcpus).collect();
            if !stray.is_empty() {
                return Err(bad(format!(
                    "vCPU(s) {stray:?} do not exist (this run has vCPUs 0..={})",
                    c.vcpus - 1
                ))
                .into());
            }
        }
        if let Ok(allowed) = crate::inject::placement::process_cpus() {
            crate::inject::check_targets(&c.inject, c.vcpus, &allowed)?;
        }
        Ok(())
    }

    /// Refuses an `--svg` plot of a workload with nothing to plot.
    pub fn check_plot(&self) -> Result<(), Error> {
        let w = self.config().workload;
        if w.per_design() {
            Ok(())
        } else {
            Err(ScenarioError::NothingToPlot(super::workload_name(w)).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::Design;

    fn refused(s: Scenario) -> String {
        let e = s.validate().expect_err("refused");
        assert_eq!(e.exit_code(), crate::exit_code::USAGE, "{e}");
        e.to_string()
    }

    fn base() -> Scenario {
        Scenario::new()
            .vcpus(2)
            .duration(Duration::from_millis(100))
            .timeout(Duration::from_secs(30))
    }

    #[test]
    fn test_validate_refuses_bad_targets() {
        let cpu = crate::inject::placement::process_cpus().unwrap()[0];
        let placed = |p: &[usize]| base().host_cpus(&[cpu]).placement(p);
        placed(&[cpu, cpu]).validate().unwrap();
        assert!(refused(placed(&[cpu])).contains("1 host CPU(s) for 2 vCPU(s)"));
        assert!(refused(placed(&[cpu, cpu, cpu])).contains("for 2 vCPU(s)"));
        let far = libc::CPU_SETSIZE as usize - 1;
        assert!(refused(placed(&[cpu, far])).contains("affinity mask"));
        let pause = || base().host_cpus(&[cpu]).preempt(PreemptMode::Pause);
        assert!(refused(pause().preempt_host_cpus(&[far])).contains("run no vCPU"));
        pause().preempt_host_cpus(&[cpu]).validate().unwrap();
        assert!(refused(pause().preempt_vcpus(&[2])).contains("[2] do not exist"));
        pause().preempt_vcpus(&[1]).validate().unwrap();
        let antagonist = base().preempt(PreemptMode::Antagonist).preempt_vcpus(&[1]);
        assert!(refused(antagonist).contains("pause only"));
        let none = base().preempt(PreemptMode::None).preempt_host_cpus(&[cpu]);
        assert!(refused(none).contains("injects none"));
    }

    #[test]
    fn test_validate_accepts_the_defaults() {
        Scenario::new().validate().unwrap();
        base().validate().unwrap();
    }

    #[test]
    fn test_validate_refuses_what_cannot_be_measured() {
        for w in [Workload::Floor, Workload::Ping, Workload::Shootdown] {
            assert!(refused(base().vcpus(1).workload(w)).contains("at least 2 vCPUs"));
        }
        base().vcpus(1).workload(Workload::Idle).validate().unwrap();
        for p in [f64::NAN, -0.1, 2.0, f64::INFINITY] {
            assert!(refused(base().guest_preempt_prob(p)).contains("guest-preempt-prob"));
            assert!(refused(base().alloc_fail_prob(p)).contains("alloc-fail-prob"));
            assert!(refused(base().forced_migration(p)).contains("forced-migration"));
        }
        let mut weighted = base();
        weighted.config_mut().torture_weights[0] = 1;
        assert!(refused(weighted).contains("--torture-weights applies"));
        let no_alloc = base().designs(&[Design::Upstream]).alloc_fail_prob(0.5);
        assert!(refused(no_alloc).contains("--alloc-fail-prob applies"));
        base()
            .designs(&[Design::AllocInPath])
            .alloc_fail_prob(0.5)
            .validate()
            .unwrap();
        for n in [0, 65, 1000] {
            assert!(refused(base().issuers_per_cpu(n)).contains("--issuers-per-cpu"));
        }
        assert!(refused(base().issuers_per_cpu(40).hogs_per_cpu(40)).contains("at most 64"));
        base().hogs_per_cpu(0).validate().unwrap();
        assert!(refused(base().workload(Workload::Hogs).hogs_per_cpu(0)).contains("1 or more"));
        let hogs = || base().workload(Workload::Hogs);
        assert!(refused(hogs().issuers_per_cpu(2)).contains("sends no IPI"));
        let e = hogs().issuers_per_cpu(2).validate_options().unwrap_err();
        assert!(e.to_string().contains("sends no IPI"), "{e}");
        hogs().issuers_per_cpu(1).validate().unwrap();
        let mut knob = base();
        knob.config_mut().tick_hz = Some(5);
        assert!(refused(knob).contains("--tick-hz 5 is out of range"));
        let mut knob = base();
        knob.config_mut().probe_period = Some(Duration::ZERO);
        assert!(refused(knob).contains("--probe-period"));
        for w in [Duration::ZERO, Duration::from_secs(5000)] {
            let mut knob = base();
            knob.config_mut().preempt_window = w;
            assert!(refused(knob).contains("--window"));
        }
        let fifo = crate::inject::placement::fifo_permitted();
        let required = base()
            .preempt(PreemptMode::Antagonist)
            .antagonist_required(true);
        assert_eq!(required.validate().is_ok(), fifo.is_ok());
        base().preempt(PreemptMode::Antagonist).validate().unwrap();
        assert!(refused(base().initiators(&[2])).contains("[2] do not exist"));
        assert!(refused(base().initiators(&[])).contains("at least one"));
        let ping = base().workload(Workload::Ping).initiators(&[0]);
        assert!(refused(ping).contains("no initiators"));
        base().initiators(&[1]).validate().unwrap();
        assert!(refused(base().designs(&[])).contains("no design"));
        assert!(refused(base().designs(&[Design::Stack, Design::Stack])).contains("appears twice"));
        assert!(refused(base().timeout(Duration::ZERO)).contains("too short"));
        let long = base()
            .duration(Duration::from_secs(60))
            .timeout(Duration::from_secs(5));
        assert!(refused(long).contains("shorter than the run"));
        assert!(refused(base().duration(Duration::ZERO)).contains("--duration"));
        let capped = base()
            .preempt(PreemptMode::Pause)
            .preempt_len(Duration::from_micros(1500))
            .preempt_every(Duration::from_millis(2));
        assert!(refused(capped).contains("above --max-duty 50%"));
        assert!(matches!(
            base().workload(Workload::Idle).check_plot(),
            Err(Error::Invalid(ScenarioError::NothingToPlot("idle")))
        ));
        base().check_plot().unwrap();
    }
}
