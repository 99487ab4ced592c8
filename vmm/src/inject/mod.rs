//! Host-side injection: place vCPU threads on host CPUs, preempt them
//! (SCHED_FIFO antagonists, or VMM pauses), migrate them, and record every
//! injected event.
//!
//! - [`schedule`]: the seeded schedule, as pure functions.
//! - [`placement`]: CPU lists, affinity, scheduling class, /proc readers.
//! - [`antagonist`], [`pause`], [`migrate`]: the injector threads.
//! - [`trace`]: the timeline and its Chrome trace-event export.
//! - [`kvmstats`]: KVM's binary per-vCPU statistics.
//!
//! Safety of the host: an injector never holds a host CPU for more than
//! `max_duty` of the time (enforced by the schedule and again at run time),
//! a scenario above 90% is refused, and [`Injector::stop`] (also run on
//! drop) stops every injector thread and restores the vCPU threads'
//! affinities. Injector threads are threads of this process, so nothing
//! outlives it when it is killed (Ctrl-C).

pub mod antagonist;
pub mod kvmstats;
pub mod migrate;
pub mod pause;
pub mod placement;
pub mod report;
pub mod schedule;
pub mod trace;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::vcpu::Kicker;
pub use report::{HostReport, VcpuHostFigures};
use trace::{Event, EventKind};

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
        }
    }
}

impl InjectConfig {
    /// Whether this config does anything at all.
    pub fn is_active(&self) -> bool {
        self.host_cpus.is_some()
            || self.preempt != PreemptMode::None
            || self.migrate_every.is_some()
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

impl Plan {
    /// Validates `config` for `vcpus` vCPUs on this host. Probes SCHED_FIFO
    /// for `antagonist` and falls back to `pause` (with a reason) if refused.
    pub fn new(config: &InjectConfig, vcpus: u32) -> Result<Plan, InjectError> {
        let original_mask = placement::process_cpus()
            .map_err(|e| InjectError::Host(format!("sched_getaffinity: {e}")))?;
        let host_cpus = match &config.host_cpus {
            Some(cpus) => {
                if cpus.is_empty() {
                    return Err(InjectError::Invalid("--host-cpus is empty".into()));
                }
                let text = cpus
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                placement::check_allowed(&text, cpus, &original_mask)?;
                cpus.clone()
            }
            None => original_mask.clone(),
        };
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
        let placement = config
            .host_cpus
            .as_ref()
            .map(|_| placement::spread(vcpus, host_cpus.len()));
        let mut config = config.clone();
        config.migrate_every = config.migrate_every.filter(|d| !d.is_zero());
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

/// State shared by the injector threads.
pub(crate) struct Shared {
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    /// Start of injection: event times are offsets from it.
    pub(crate) t0: Instant,
    pub(crate) host_cpus: Vec<usize>,
    /// Current slot of each vCPU (updated by the migrator).
    pub(crate) slots: Vec<AtomicUsize>,
}

impl Shared {
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps until `deadline`; false if stopped first.
    pub(crate) fn sleep_until(&self, deadline: Instant) -> bool {
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if self.stopped() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            guard = self
                .wake
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until `deadline` precisely: sleeps, then spins the last
    /// stretch. False if stopped first.
    pub(crate) fn wait_precise(&self, deadline: Instant) -> bool {
        const SPIN: Duration = Duration::from_micros(150);
        if deadline.saturating_duration_since(Instant::now()) > SPIN
            && !self.sleep_until(deadline - SPIN)
        {
            return false;
        }
        while Instant::now() < deadline {
            if self.stopped() {
                return false;
            }
            std::hint::spin_loop();
        }
        !self.stopped()
    }

    fn request_stop(&self) {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_all();
    }

    /// vCPUs currently placed on slot `slot`.
    pub(crate) fn vcpus_on(&self, slot: usize) -> Vec<u32> {
        (0u32..)
            .zip(&self.slots)
            .filter(|(_, s)| s.load(Ordering::Relaxed) == slot)
            .map(|(v, _)| v)
            .collect()
    }

    /// A timeline event at `start`.
    pub(crate) fn event(
        &self,
        start: Instant,
        kind: EventKind,
        vcpus: Vec<u32>,
        slot: usize,
        duration: Duration,
    ) -> Event {
        Event {
            at: start.saturating_duration_since(self.t0),
            kind,
            vcpus,
            host_cpu: self.host_cpus.get(slot).copied().unwrap_or(usize::MAX),
            from_cpu: None,
            duration,
        }
    }
}

/// What one injector thread returns.
#[derive(Debug, Default)]
pub(crate) struct ThreadOutcome {
    pub(crate) events: Vec<Event>,
    pub(crate) dropped: u64,
    pub(crate) coalesced: u64,
    pub(crate) errors: Vec<String>,
}

impl ThreadOutcome {
    pub(crate) fn push(&mut self, e: Event) {
        if self.events.len() < TIMELINE_LIMIT {
            self.events.push(e);
        } else {
            self.dropped += 1;
        }
    }
}

/// The running injector threads of one run.
pub struct Injector {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<ThreadOutcome>>,
    tids: Vec<libc::pid_t>,
    run_delay_start: Vec<Option<u64>>,
    plan: Plan,
    finished: Option<HostReport>,
}

/// How long to wait for vCPU threads to publish their thread ids.
const TID_WAIT: Duration = Duration::from_secs(5);

impl Injector {
    /// Starts the injectors of `plan` for the vCPUs behind `kickers`.
    pub fn start(plan: Plan, seed: u64, kickers: &[Arc<Kicker>]) -> Result<Injector, InjectError> {
        let deadline = Instant::now() + TID_WAIT;
        let mut tids = Vec::with_capacity(kickers.len());
        for (v, k) in kickers.iter().enumerate() {
            loop {
                if let Some(t) = k.tid() {
                    tids.push(t);
                    break;
                }
                if Instant::now() > deadline {
                    return Err(InjectError::Host(format!("vCPU {v} thread did not start")));
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        let start_slots = plan
            .placement
            .clone()
            .unwrap_or_else(|| vec![usize::MAX; kickers.len()]);
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            t0: Instant::now(),
            host_cpus: plan.host_cpus.clone(),
            slots: start_slots.iter().map(|&s| AtomicUsize::new(s)).collect(),
        });
        let run_delay_start = tids.iter().map(|&t| placement::run_delay_ns(t)).collect();
        let mut injector = Injector {
            shared: shared.clone(),
            threads: Vec::new(),
            tids: tids.clone(),
            run_delay_start,
            plan: plan.clone(),
            finished: None,
        };
        let c = &plan.config;
        let targets = |slot: usize| -> Vec<u32> {
            (0u32..)
                .zip(&start_slots)
                .filter(|(_, &s)| s == slot)
                .map(|(v, _)| v)
                .collect()
        };
        let streams = |with_targets: bool| -> Vec<schedule::PreemptStream> {
            (0..plan.host_cpus.len())
                .map(|slot| {
                    schedule::PreemptStream::new(
                        seed,
                        slot,
                        if with_targets {
                            targets(slot)
                        } else {
                            Vec::new()
                        },
                        c.preempt_len,
                        c.preempt_every,
                        c.max_duty,
                    )
                })
                .collect()
        };
        let spawn = |name: String, f: Box<dyn FnOnce() -> ThreadOutcome + Send>| {
            std::thread::Builder::new()
                .name(name)
                .stack_size(256 << 10)
                .spawn(f)
                .map_err(|e| InjectError::Host(format!("cannot start an injector thread: {e}")))
        };
        let result = (|| {
            match plan.mode {
                PreemptMode::None => {}
                PreemptMode::Antagonist => {
                    for stream in streams(false) {
                        let s = shared.clone();
                        let slot = stream.slot();
                        let max_duty = c.max_duty;
                        injector.threads.push(spawn(
                            format!("inj-antag-{}", plan.host_cpus[slot]),
                            Box::new(move || antagonist::run(&s, slot, stream, max_duty)),
                        )?);
                    }
                }
                PreemptMode::Pause => {
                    // Host CPUs without a vCPU have nothing to pause.
                    let streams: Vec<_> = streams(true)
                        .into_iter()
                        .filter(|s| !targets(s.slot()).is_empty() || plan.placement.is_none())
                        .collect();
                    let streams = if plan.placement.is_none() {
                        // No placement: one stream over all vCPUs.
                        vec![schedule::PreemptStream::new(
                            seed,
                            0,
                            (0..kickers.len() as u32).collect(),
                            c.preempt_len,
                            c.preempt_every,
                            c.max_duty,
                        )]
                    } else {
                        streams
                    };
                    let s = shared.clone();
                    let k = kickers.to_vec();
                    let max_duty = c.max_duty;
                    injector.threads.push(spawn(
                        "inj-pause".into(),
                        Box::new(move || pause::run(&s, streams, &k, max_duty)),
                    )?);
                }
            }
            if let (Some(every), Some(p)) = (c.migrate_every, plan.placement.clone()) {
                let stream = schedule::MigrateStream::new(seed, p, plan.host_cpus.len(), every);
                let s = shared.clone();
                let t = tids.clone();
                let max_duty = c.max_duty;
                injector.threads.push(spawn(
                    "inj-migrate".into(),
                    Box::new(move || migrate::run(&s, stream, &t, max_duty)),
                )?);
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(injector),
            Err(e) => {
                injector.stop();
                Err(e)
            }
        }
    }

    /// Stops every injector thread, restores the vCPU threads' affinity to
    /// the process's mask, and returns what was injected (once; later calls
    /// return the same report). Call before the vCPU threads exit.
    pub fn stop(&mut self) -> HostReport {
        if let Some(r) = &self.finished {
            return r.clone();
        }
        self.shared.request_stop();
        let mut report = HostReport {
            active: true,
            mode: Some(self.plan.mode),
            fallback: self.plan.fallback.clone(),
            host_cpus: self.plan.host_cpus.clone(),
            elapsed: self.shared.t0.elapsed(),
            ..HostReport::default()
        };
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(o) => {
                    report.timeline.extend(o.events);
                    report.timeline_dropped += o.dropped;
                    report.migrations_coalesced += o.coalesced;
                    report.errors.extend(o.errors);
                }
                Err(_) => report.errors.push("an injector thread panicked".into()),
            }
        }
        report.errors.truncate(16);
        trace::sort(&mut report.timeline);
        for e in &report.timeline {
            match e.kind {
                EventKind::Antagonist | EventKind::Pause => {
                    report.preemptions_injected += 1;
                    report.preempt_ns_injected += e.duration.as_nanos() as u64;
                }
                EventKind::Migrate => report.migrations_injected += 1,
            }
        }
        // Events beyond the timeline limit were still injected.
        report.vcpus = self
            .tids
            .iter()
            .zip(&self.run_delay_start)
            .enumerate()
            .map(|(v, (&tid, start))| VcpuHostFigures {
                tid,
                host_cpu: self.plan.host_cpu_of(v as u32),
                run_delay_ns: placement::run_delay_ns(tid)
                    .zip(*start)
                    .map(|(end, start)| end.saturating_sub(start)),
                ..VcpuHostFigures::default()
            })
            .collect();
        report.affinity_restored = self.tids.iter().all(|&tid| {
            match placement::set_affinity(tid, &self.plan.original_mask) {
                Ok(()) => true,
                // A thread that has exited has no affinity left to restore.
                Err(e) => e.raw_os_error() == Some(libc::ESRCH),
            }
        });
        self.finished = Some(report.clone());
        report
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        self.stop();
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
    fn test_plan_default_is_inactive_and_zero_migration_disables() {
        assert!(!InjectConfig::default().is_active());
        let c = InjectConfig {
            migrate_every: Some(Duration::ZERO),
            ..InjectConfig::default()
        };
        assert_eq!(Plan::new(&c, 1).unwrap().config.migrate_every, None);
    }
}
