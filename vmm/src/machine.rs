//! One guest run, end to end: build the VM, start the vCPU threads, wait
//! for the guest under a watchdog, stop every thread, read and validate the
//! results.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use abi::{pv, Control, Design, GuestStatus, TestHook, Workload};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::GuestMemoryMmap;

use crate::console::{Console, ConsoleMode};
use crate::guest_mode::{self, GuestMode};
use crate::inject::{self, HostReport, InjectConfig, Injector, Plan};
use crate::pv::{HostPv, PvHost};
pub use crate::results::BootReport;
use crate::results::{self, FailureKind, GuestFailure, WatchdogReport};
use crate::vcpu::{self, RegisterDump, RunControl, VcpuEvent, VcpuHandle};
use crate::{loader, memory, vm, Error};

/// How often the controller looks for a SIGINT/SIGTERM while it waits.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// How long stopped vCPU threads get to leave KVM_RUN after a kick.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// KVM statistics are read for at most this many vCPUs (one fd each).
const STATS_VCPUS: usize = 256;

/// The default KVM device.
pub const DEFAULT_KVM_PATH: &str = "/dev/kvm";

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

impl MachineConfig {
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

/// A probability as the guest's 1/65536 fixed point.
fn per_65536(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * 65536.0).min(65535.0) as u32
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
            duration: Duration::from_secs(2),
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

/// A VM with its memory and vCPU threads.
struct Machine {
    /// Gaps in the controller's own clock (see [`crate::stall`]).
    stalls: crate::stall::StallLog,
    /// Degraded measurements found while setting up (for the host report).
    warnings: Vec<String>,
    /// This run's claim on its host CPUs (see [`inject::lock`]).
    cpu_locks: inject::lock::CpuLocks,
    // Field order is drop order: threads are joined explicitly before, and
    // the VM must go before the memory it maps.
    _vm: Arc<VmFd>,
    /// The PV interface (kept alive by the vCPU threads too).
    pv: Option<Arc<PvHost>>,
    pv_probe: Option<HostPv>,
    mem: GuestMemoryMmap,
    /// The guest may run in the PVM host's native mode (its VIF pages are
    /// then part of every register dump).
    native_possible: bool,
    _kvm: Kvm,
    vcpus: Vec<VcpuHandle>,
    control: Arc<RunControl>,
    console: Arc<Console>,
    events: mpsc::Receiver<VcpuEvent>,
    /// Kept so that `events` never disconnects, even if every thread ends.
    _events_tx: mpsc::Sender<VcpuEvent>,
    created: Instant,
    tsc_khz: u64,
    /// Host-side injectors (stopped first in `stop`).
    injector: Option<Injector>,
    /// KVM binary stats fd of each vCPU (when injecting or running a workload).
    stats: Vec<Option<std::fs::File>>,
    /// What the injectors did (filled by `stop`).
    host: HostReport,
    /// The guest was told to register steal time.
    steal_time: bool,
    /// The guest's design-phase marks (slot, ended, when), bounded.
    phase_marks: Vec<(u32, bool, Instant)>,
}

/// Boots the guest, waits until it reports done, and returns what it
/// reported. Every failure (guest crash, hang, bad results, host problem)
/// is an [`Error`] that says what happened.
pub fn boot(config: &MachineConfig) -> Result<BootReport, Error> {
    let mut machine = Machine::create(config)?;
    let outcome = machine.wait(config.timeout);
    let dumps = machine.stop();
    let page = memory::read_shared(&machine.mem)?;
    let warnings = std::mem::take(&mut machine.warnings);
    machine.host.warnings.extend(warnings);
    machine.host.steal_time = machine.steal_time;
    if let Some(t0) = machine.host.started {
        machine.host.phases = inject::trace::PhaseSlice::from_marks(
            &machine.phase_marks,
            &config.ran_designs(),
            t0,
            Instant::now(),
        );
    }
    for (v, status) in machine.host.vcpus.iter_mut().zip(page.vcpus.iter()) {
        v.steal_ns = status.steal_ns;
        v.preempted_seen = status.preempted_seen;
        v.max_gap_cycles = status.max_gap_cycles;
        v.pv_neighbour_preempted = status.pv_neighbour_preempted;
        v.pv_neighbour_resumed = status.pv_neighbour_resumed;
    }
    if let (Some(path), true) = (&config.inject.trace, machine.host.active) {
        // A trace that cannot be written must not cost the run's results:
        // the error rides along in the host report.
        machine.host.trace_error = inject::trace::write_file(
            path,
            &machine.host.timeline,
            &machine.host.phases,
            &machine.host.host_cpus,
            config.vcpus,
        )
        .err()
        .map(|e| format!("cannot write the trace file {}: {e}", path.display()));
    }
    match outcome {
        Wait::Done { all_online } => results::boot_report(
            &results::Expected::new(config.vcpus, config.ran_designs(), |i| config.phase_pv(i)),
            &page,
            &memory::read_vcpu_results(&machine.mem, config.vcpus)?,
            machine.tsc_khz,
            all_online.map(|t| t - machine.created),
        )
        .map(|mut r| {
            r.console_tail = machine.console.tail();
            r.host = std::mem::take(&mut machine.host);
            r.pv_probe = machine.pv_probe.clone();
            r.pv_host = machine.pv.as_ref().map(|p| p.totals());
            r.vmm_stalls = machine.stalls;
            r
        })
        .map_err(|kind| machine.failure(kind, dumps)),
        Wait::Failed(kind) => Err(machine.failure(results::explain(kind, &page), dumps)),
        Wait::TimedOut => Err(Error::Watchdog(WatchdogReport {
            timeout: config.timeout,
            online: page.results.nr_online.min(config.vcpus),
            vcpus: config.vcpus,
            missing: results::offline_vcpus(&page, config.vcpus, 16),
            dumps,
            console_tail: machine.console.tail(),
            vmm_stalled: machine.stalls.stalled().then_some(machine.stalls.total),
        })),
        Wait::Interrupted { signal, all_online } => {
            let online =
                config.vcpus - results::offline_vcpus(&page, config.vcpus, usize::MAX).len() as u32;
            Err(Error::Interrupted(Box::new(results::PartialReport {
                signal,
                elapsed: machine.created.elapsed(),
                vcpus: config.vcpus,
                online,
                boot_time: all_online.map(|t| t - machine.created),
                tsc_khz: machine.tsc_khz,
                host: std::mem::take(&mut machine.host),
            })))
        }
    }
}

enum Wait {
    Done {
        all_online: Option<Instant>,
    },
    Failed(FailureKind),
    TimedOut,
    /// SIGINT or SIGTERM (see [`crate::signals`]).
    Interrupted {
        signal: i32,
        all_online: Option<Instant>,
    },
}

/// Runs the calling thread as SCHED_FIFO (priority 1) while it lives,
/// where permitted; back to normal on drop.
struct ControllerBoost(bool);

impl ControllerBoost {
    fn new() -> Self {
        ControllerBoost(inject::placement::set_fifo(1).is_ok())
    }
}

impl Drop for ControllerBoost {
    fn drop(&mut self) {
        if self.0 {
            inject::placement::set_normal();
        }
    }
}

/// Address space the threads of a run need: one per vCPU (its stack, its
/// signal stack and guard pages) and a handful of others (injectors, the PV
/// probe, the controller) at Rust's default 2 MiB stacks, plus slack for
/// the heap.
fn thread_room(vcpus: u32) -> u64 {
    const VCPU_THREAD: u64 = 512 << 10;
    const OTHER_THREADS: u64 = 16 * (2 << 20) + (1 << 20);
    const SLACK: u64 = 16 << 20;
    u64::from(vcpus) * VCPU_THREAD + OTHER_THREADS + SLACK
}

impl Machine {
    fn create(config: &MachineConfig) -> Result<Self, Error> {
        let mode = match config.guest_mode {
            Some(m) => m,
            None => GuestMode::from_env().map_err(|e| Error::Scenario(e.to_string()))?,
        };
        let host_pvm = guest_mode::host_offers_pvm();
        let native_possible = guest_mode::resolve(mode, host_pvm).map_err(Error::Scenario)?;
        let kvm = vm::open_kvm(&config.kvm_path)?;
        let max = vm::max_vcpus(&kvm);
        if config.vcpus == 0 || config.vcpus > max {
            return Err(Error::Scenario(format!(
                "--vcpus {} is out of range: this host allows 1..={max}",
                config.vcpus
            )));
        }
        if config.designs.len() > abi::MAX_DESIGNS {
            return Err(Error::Scenario(format!(
                "{} design columns (with the PV columns --pv adds); at most {}: name fewer designs or PV features",
                config.designs.len(),
                abi::MAX_DESIGNS
            )));
        }
        for (i, d) in config.designs.iter().enumerate() {
            let pv = config.phase_pv(i);
            if config.designs[..i]
                .iter()
                .enumerate()
                .any(|(j, e)| e == d && config.phase_pv(j) == pv)
            {
                return Err(Error::Scenario(format!(
                    "design column {} (pv {:#x}) appears twice (a `+pv` column needs --pv)",
                    d.name(),
                    pv
                )));
            }
        }
        if config.test_hook_vcpu >= config.vcpus {
            return Err(Error::Scenario(format!(
                "test hook vCPU {} does not exist (vCPUs 0..{})",
                config.test_hook_vcpu, config.vcpus
            )));
        }
        let plan = if config.inject.is_active() {
            let plan = Plan::new(&config.inject, config.vcpus)?;
            if let Some(why) = &plan.fallback {
                eprintln!("ipivirt: {why}");
            }
            Some(plan)
        } else {
            None
        };
        let created = Instant::now();
        let mem = memory::allocate(memory::ram_size(config.vcpus))?;
        memory::check_room(thread_room(config.vcpus))?;
        memory::write_page_tables(&mem, native_possible)?;
        memory::write_gdt(&mem)?;
        let entry = loader::load(&mem, loader::GUEST_ELF)?;
        // The host capability probe, before the run (cached per process).
        let pv_probe = if config.all_pv() != 0 {
            Some(crate::pv::host_pv(&kvm)?)
        } else {
            None
        };
        let vm_fd = Arc::new(vm::create_vm(&kvm, &mem, config.vcpus)?);
        let cpuid = vm::supported_cpuid(&kvm)?;
        let fds = (0..config.vcpus)
            .map(|id| vm::create_vcpu(&vm_fd, &cpuid, id, config.vcpus, entry))
            .collect::<Result<Vec<_>, _>>()?;
        let tsc_khz = fds[0].get_tsc_khz().map(u64::from).unwrap_or(0);

        let mut control = Control::new(config.vcpus);
        control.seed = config.seed;
        control.tsc_khz = tsc_khz;
        control.mem_size = memory::ram_size(config.vcpus);
        control.test_hook = config.test_hook as u32;
        control.test_hook_vcpu = config.test_hook_vcpu;
        control.test_hook_arg = config.test_hook_arg;
        control.preempt_window_us = u32::try_from(config.preempt_window.as_micros())
            .unwrap_or(u32::MAX)
            .max(1);
        control.preempt_trace_off = u32::from(config.preempt_trace_off);
        control.guest_mode = mode.code();
        control.host_pvm = u32::from(host_pvm);
        control.workload = config.workload as u32;
        control.duration_us = config.duration.as_micros().min(u128::from(u64::MAX)) as u64;
        control.issuers_per_cpu = config.issuers_per_cpu;
        control.shape.hogs_per_cpu = config.hogs_per_cpu;
        for &v in config.initiators.iter().flatten() {
            control.shape.set_initiator(v);
        }
        control.forced_migration =
            (config.forced_migration.clamp(0.0, 1.0) * 65536.0).min(65535.0) as u32;
        control.tick_hz = config.tick_hz.unwrap_or(0);
        control.probe_period_us = config.probe_period.map_or(0, |p| {
            u32::try_from(p.as_micros()).unwrap_or(u32::MAX).max(1)
        });
        control.nr_designs = config.designs.len().min(abi::MAX_DESIGNS) as u32;
        for (slot, d) in control.designs.iter_mut().zip(&config.designs) {
            *slot = *d as u32;
        }
        control.guest_preempt_prob = per_65536(config.guest_preempt_prob);
        control.alloc_fail_prob = per_65536(config.alloc_fail_prob);
        control.quiesce_bound_us = u64::try_from(config.quiesce_bound.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        control.csd_watchdog_us = u32::try_from(config.csd_watchdog.as_micros())
            .unwrap_or(u32::MAX)
            .max(1);
        control.torture_weights = config.torture_weights;
        control.hotplug = u32::from(
            plan.as_ref()
                .is_some_and(|p| p.config.hotplug_every.is_some()),
        );
        control.onoff_interval_us = config.torture_onoff.map_or(0, |d| {
            u32::try_from(d.as_micros()).unwrap_or(u32::MAX).max(1)
        });
        if config.workload == Workload::Spin {
            control.pv_flags |= pv::STEAL_TIME;
        }
        control.pv_flags |= config.pv & (pv::STEAL_TIME | pv::PREEMPTED);
        // Steal time in every run with a workload where KVM offers it (one
        // MSR write per vCPU), so that steal_ms and run_delay_ms compare.
        let steal_offered = vm::kvm_pv_features(&cpuid) & (1 << vm::KVM_FEATURE_STEAL_TIME) != 0
            && pv_probe.as_ref().map_or(true, |p| p.steal_time);
        let steal_time = config.workload != Workload::None && steal_offered;
        if steal_time {
            control.pv_flags |= pv::STEAL_TIME;
        }
        for (i, slot) in control.phase_pv.iter_mut().enumerate() {
            *slot = config.phase_pv(i) & pv::ALL;
        }
        if steal_time {
            control.pv_kvm |= pv::STEAL_TIME;
        }
        if let Some(probe) = &pv_probe {
            control.pv_kvm |= crate::pv::kvm_bits(probe);
            control.pv_amd = u32::from(probe.amd);
            if native_possible {
                // KVM's hypercall instructions are forbidden in native mode
                // (vmcall loops in KVM's emulator).
                control.pv_kvm &= !(pv::SEND_IPI | pv::SCHED_YIELD);
            }
        }
        // The ipivirt PV interface, when a feature beyond steal time asks
        // for it; otherwise its port stays closed (an `in` faults the run).
        let pv_host = if config.all_pv() & !pv::STEAL_TIME != 0 {
            let host = PvHost::new(&mem, vm_fd.clone(), config.vcpus).ok_or_else(|| {
                Error::Scenario("guest RAM does not cover the PV state area".into())
            })?;
            host.set_native(native_possible);
            Some(Arc::new(host))
        } else {
            None
        };
        // CPU hotplug requests go through the PV state area too, with a PV
        // host of their own (the hypercall port stays as --pv leaves it).
        let hotplug_host = if control.hotplug != 0 {
            let host = PvHost::new(&mem, vm_fd.clone(), config.vcpus).ok_or_else(|| {
                Error::Scenario("guest RAM does not cover the PV state area".into())
            })?;
            Some(Arc::new(host))
        } else {
            None
        };
        memory::write_control(&mem, &control)?;
        // One stats fd per vCPU, for the first STATS_VCPUS only (fd limits).
        let stats: Vec<Option<std::fs::File>> =
            if plan.is_some() || config.workload != Workload::None {
                fds.iter()
                    .take(STATS_VCPUS)
                    .map(|fd| inject::kvmstats::open(fd).ok())
                    .collect()
            } else {
                Vec::new()
            };
        // Missing statistics blank report columns: say why, once.
        let missing = stats.iter().filter(|s| s.is_none()).count();
        let mut warnings = Vec::new();
        if missing > 0 {
            warnings.push(format!(
                "KVM statistics of {missing} vCPU(s) unavailable (KVM_GET_STATS_FD failed; ulimit -n \
                 is {}): their kvm: columns show -",
                vm::fd_limit().map_or("unknown".to_string(), |l| l.to_string())
            ));
        }

        let console = Arc::new(Console::new(config.vcpus, config.console));
        console.attach_memory(mem.clone());
        let run_control = Arc::new(RunControl::default());
        let (tx, rx) = mpsc::channel();
        let mut machine = Machine {
            warnings,
            cpu_locks: Default::default(),
            stalls: crate::stall::StallLog::default(),
            _vm: vm_fd,
            pv: pv_host.clone(),
            pv_probe,
            mem,
            native_possible,
            _kvm: kvm,
            vcpus: Vec::with_capacity(fds.len()),
            control: run_control,
            console,
            events: rx,
            _events_tx: tx.clone(),
            created,
            tsc_khz,
            injector: None,
            stats,
            host: HostReport::default(),
            steal_time,
            phase_marks: Vec::new(),
        };
        for (id, fd) in (0..).zip(fds) {
            match vcpu::spawn(
                id,
                fd,
                machine.console.clone(),
                machine.control.clone(),
                tx.clone(),
                plan.as_ref().and_then(|p| p.host_cpu_of(id)),
                pv_host.clone(),
            ) {
                Ok(handle) => machine.vcpus.push(handle),
                Err(e) => {
                    machine.stop();
                    return Err(Error::Thread(e));
                }
            }
        }
        let kickers: Vec<_> = machine.vcpus.iter().map(|v| v.kicker.clone()).collect();
        if let Some(pv) = &pv_host {
            pv.set_kickers(kickers.clone());
        }
        if let Some(plan) = plan {
            let (locks, busy) = inject::lock::claim(&plan.host_cpus);
            machine.cpu_locks = locks;
            machine.warnings.extend(busy);
            match Injector::start(plan, config.seed, &kickers, pv_host.clone(), hotplug_host) {
                Ok(injector) => machine.injector = Some(injector),
                Err(e) => {
                    machine.stop();
                    return Err(e.into());
                }
            }
        }
        Ok(machine)
    }

    /// Waits for the guest's verdict until the watchdog deadline.
    fn wait(&mut self, timeout: Duration) -> Wait {
        // The controller must not be starved by the run's own vCPU threads
        // (hundreds of them on a few host CPUs at boot), or it would take
        // its own wake-up delay for a stall of the VMM: it runs as SCHED_FIFO
        // while it waits, where permitted (it sleeps but for a few
        // microseconds every poll). A SIGSTOP or a host that does not run it
        // still shows as a stall.
        let _boost = ControllerBoost::new();
        let mut deadline = self.created + timeout;
        let mut all_online = None;
        let mut step = (Instant::now(), SIGNAL_POLL);
        loop {
            // A step far longer than it asked for is the VMM stalled: the
            // watchdog counts only the time it was running.
            let now = Instant::now();
            deadline += self.stalls.observe(step.1, now - step.0);
            let left = deadline.saturating_duration_since(now);
            step = (now, left.min(SIGNAL_POLL));
            if let Some(signal) = crate::signals::pending() {
                return Wait::Interrupted { signal, all_online };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Wait::TimedOut;
            }
            match self.events.recv_timeout(left.min(SIGNAL_POLL)) {
                // Only the BSP reports the run's progress.
                Ok(VcpuEvent::Status {
                    status:
                        status @ (GuestStatus::AllOnline | GuestStatus::Done | GuestStatus::StartAps),
                    vcpu,
                    ..
                }) if vcpu != 0 => return Wait::Failed(FailureKind::StatusFromAp { vcpu, status }),
                Ok(VcpuEvent::Status {
                    status: GuestStatus::AllOnline,
                    at,
                    ..
                }) => all_online = Some(at),
                Ok(VcpuEvent::Status {
                    status: GuestStatus::Done,
                    ..
                }) => return Wait::Done { all_online },
                Ok(VcpuEvent::Status {
                    status: GuestStatus::Panic,
                    ..
                }) => return Wait::Failed(FailureKind::Panic(None)),
                Ok(VcpuEvent::Status {
                    status: GuestStatus::StartAps,
                    ..
                }) => self.control.release_aps(),
                Ok(VcpuEvent::Status {
                    status: GuestStatus::Exception,
                    vcpu,
                    ..
                }) => return Wait::Failed(FailureKind::Exception(None, vcpu)),
                Ok(VcpuEvent::Phase { slot, end, at }) => {
                    crate::progress::phase_mark(end, at);
                    // Two per phase; more is a guest's noise, not kept.
                    if self.phase_marks.len() < 2 * abi::MAX_DESIGNS {
                        self.phase_marks.push((slot, end, at));
                    }
                }
                Ok(VcpuEvent::Fault { vcpu, fault }) => {
                    return Wait::Failed(FailureKind::Fault { vcpu, fault })
                }
                Ok(VcpuEvent::Exited(dump)) => {
                    // A thread left its loop without a fault (cannot happen
                    // before stop); keep waiting for the others.
                    let _ = dump;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Wait::TimedOut,
            }
        }
    }

    /// Stops every vCPU thread (kick + stop flag) and returns their final
    /// registers, by vCPU. Threads that do not leave KVM_RUN within
    /// [`STOP_GRACE`] are reported and left behind rather than waited on.
    fn stop(&mut self) -> Vec<RegisterDump> {
        // Injectors first, while the vCPU threads still exist (their
        // affinity is restored and their run delay read).
        if let Some(mut injector) = self.injector.take() {
            self.host = injector.stop();
        }
        self.control.request_stop();
        for v in &self.vcpus {
            v.kicker.release();
            v.kicker.kick();
        }
        if self.host.vcpus.is_empty() && !self.stats.is_empty() {
            self.host.vcpus = vec![Default::default(); self.vcpus.len()];
        }
        for (fig, v) in self.host.vcpus.iter_mut().zip(&self.vcpus) {
            let (pauses, paused) = v.kicker.pause_totals();
            fig.pauses = pauses;
            fig.paused_ns = paused.as_nanos() as u64;
        }
        let mut dumps: Vec<Option<RegisterDump>> = vec![None; self.vcpus.len()];
        let mut left = self.vcpus.len() - dumps.iter().filter(|d| d.is_some()).count();
        let deadline = Instant::now() + STOP_GRACE;
        while left > 0 {
            match self
                .events
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(VcpuEvent::Exited(dump)) => {
                    let i = dump.vcpu as usize;
                    if dumps[i].replace(*dump).is_none() {
                        left -= 1;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        for v in std::mem::take(&mut self.vcpus) {
            if dumps[v.index as usize].is_some() || v.is_finished() {
                v.join();
            } else {
                eprintln!(
                    "ipivirt: vCPU {} thread did not stop within {STOP_GRACE:?}; leaving it",
                    v.index
                );
                std::mem::forget(v);
            }
        }
        for (fig, file) in self.host.vcpus.iter_mut().zip(&self.stats) {
            if let Some(f) = file {
                fig.kvm = inject::kvmstats::read(f, &inject::kvmstats::WANTED).unwrap_or_default();
            }
        }
        self.console.flush();
        let mut dumps: Vec<RegisterDump> = dumps.into_iter().flatten().collect();
        if self.native_possible {
            for d in &mut dumps {
                let mut vif = [0u8; 2];
                let at = vm_memory::GuestAddress(abi::layout::vif_page(d.vcpu));
                if vm_memory::Bytes::read_slice(&self.mem, &mut vif, at).is_ok() {
                    d.vif = Some((vif[0], vif[1]));
                }
            }
        }
        dumps
    }

    fn failure(&self, kind: FailureKind, dumps: Vec<RegisterDump>) -> Error {
        Error::Guest(Box::new(GuestFailure {
            kind,
            dumps,
            console_tail: self.console.tail(),
        }))
    }
}
