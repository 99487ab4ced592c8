//! The injector threads of one run: starting them, the state they share,
//! stopping them and collecting what they did.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::trace::{self, Event, EventKind};
use super::{
    antagonist, hotplug, migrate, pause, placement, schedule, HostReport, InjectError, Plan,
    PreemptMode, VcpuHostFigures, TIMELINE_LIMIT,
};
use crate::pv::PvHost;
use crate::vcpu::Kicker;

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
    /// The PV interface, where antagonists publish whom they preempt.
    pub(crate) pv: Option<Arc<PvHost>>,
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
    /// Planned preemptions skipped because they were long overdue (the
    /// VMM was stalled): never replayed as a burst.
    pub(crate) skipped: u64,
    /// Hotplug cycles whose offline request the guest had acted on by the
    /// time it was asked back, and those it refused.
    pub(crate) hotplug_acked: u64,
    pub(crate) hotplug_refused: u64,
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
    /// With `pv`, antagonists publish the vCPUs they preempt in the PV state
    /// (pauses are published by the vCPU threads themselves). `hotplug` is
    /// the PV state the hotplug injector writes its requests into (needed
    /// when the plan has `hotplug_every`).
    pub fn start(
        plan: Plan,
        seed: u64,
        kickers: &[Arc<Kicker>],
        pv: Option<Arc<PvHost>>,
        hotplug: Option<Arc<PvHost>>,
    ) -> Result<Injector, InjectError> {
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
            pv,
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
        // `pause` holds only the vCPUs named by --preempt-vcpus, and only
        // host CPUs named by --preempt-host-cpus see any preemption.
        let aimed_vcpu = |v: u32| c.preempt_vcpus.as_ref().map_or(true, |l| l.contains(&v));
        let aimed_slot = |slot: usize| {
            c.preempt_host_cpus
                .as_ref()
                .map_or(true, |l| l.contains(&plan.host_cpus[slot]))
        };
        let targets = |slot: usize| -> Vec<u32> {
            (0u32..)
                .zip(&start_slots)
                .filter(|(v, &s)| s == slot && aimed_vcpu(*v))
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
                    for stream in streams(false).into_iter().filter(|s| aimed_slot(s.slot())) {
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
                        .filter(|s| aimed_slot(s.slot()))
                        .filter(|s| !targets(s.slot()).is_empty() || plan.placement.is_none())
                        .collect();
                    let streams = if plan.placement.is_none() {
                        // No placement: one stream over all vCPUs.
                        vec![schedule::PreemptStream::new(
                            seed,
                            0,
                            (0..kickers.len() as u32)
                                .filter(|&v| aimed_vcpu(v))
                                .collect(),
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
            if let Some(every) = c.hotplug_every {
                let host = hotplug.clone().ok_or_else(|| {
                    InjectError::Host("hotplug injection without access to the PV state".into())
                })?;
                let stream =
                    schedule::HotplugStream::new(seed, kickers.len() as u32, every, c.hotplug_len);
                let s = shared.clone();
                injector.threads.push(spawn(
                    "inj-hotplug".into(),
                    Box::new(move || hotplug::run(&s, stream, host)),
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
            started: Some(self.shared.t0),
            ..HostReport::default()
        };
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(o) => {
                    report.timeline.extend(o.events);
                    report.timeline_dropped += o.dropped;
                    report.migrations_coalesced += o.coalesced;
                    report.preemptions_skipped += o.skipped;
                    report.hotplug_acked += o.hotplug_acked;
                    report.hotplug_refused += o.hotplug_refused;
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
                EventKind::Hotplug => report.hotplug_events += 1,
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
